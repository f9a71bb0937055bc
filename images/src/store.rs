//! [`ModelStore`]: the content-addressed model store under `STATE/models/`.
//!
//! ```text
//! models/.lock                        flock'd while the registry or the folders change
//! models/registry.json                names, versions, active version, rollback history
//! models/sha256-<manifest digest>/    govbox-manifest.json  govbox-manifest.sig  payload/...
//! models/sm3-<manifest digest>/       the same, for a package whose manifest says "hash":"sm3"
//! models/.staging-<random>/           an import in progress (or one that crashed)
//! ```
//!
//! A package's digest is its manifest's own `hash` over the manifest bytes ([`Manifest::digest`]),
//! and its folder is named for that algorithm, so an SM3 package never sits under a SHA-256 name.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use govbox_provisioning::{HashAlgorithm, Role, StatePaths, TrustRoot};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{PackageError, Result};
use crate::fsutil::{self, Piece, read_capped, write_atomic};
use crate::manifest::{MANIFEST_LIMIT, Manifest, SIGNATURES_LIMIT};
use crate::path::{MANIFEST_NAME, SIGNATURES_NAME};
use crate::registry::{ModelRecord, Registry, VersionRecord};
use crate::signature::{Policy, SignatureFile, check_signatures};
use crate::staging::{OWNER_FILE, PAYLOAD_DIR, STAGING_PREFIX, StagingSink};
use crate::verify::{file_label, verify_into};

const LOCK_FILE: &str = ".lock";
const REGISTRY_FILE: &str = "registry.json";

/// How to import.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportOptions {
    /// Make the imported version the active one. Off by default, so that importing never
    /// changes what is served, except that the first version of a name always becomes active
    /// (there is nothing else to serve).
    pub activate: bool,
}

/// A completed import.
#[derive(Debug, Clone)]
pub struct Imported {
    /// Model name.
    pub name: String,
    /// Its version.
    pub version: String,
    /// Hex digest of the manifest under its own `hash` ([`Manifest::digest`]).
    pub digest: String,
    /// Payload bytes.
    pub size: u64,
    /// What the engine loads.
    pub load_path: PathBuf,
    /// The manifest.
    pub manifest: Manifest,
    /// Archive bytes read.
    pub bytes: u64,
    /// Seconds spent, from the first byte read to the registry update.
    pub secs: f64,
    /// Whether this import made it the active version.
    pub activated: bool,
    /// Whether the same package was already in the store (nothing changed then).
    pub already_present: bool,
    /// Set only by [`ModelStore::import_file_held`]: the version was stored inactive and is to
    /// become active (it was asked to, or it is the first of its name) once its caller has
    /// recorded the change, with [`ModelStore::activate`].
    pub pending_activation: bool,
    /// Key ids whose signatures counted.
    pub signers: Vec<String>,
}

impl Imported {
    /// The digest as people and records name it ([`Manifest::digest_label`]).
    pub fn digest_label(&self) -> String {
        self.manifest.digest_label(&self.digest)
    }
}

/// The active version of a model, ready to load.
#[derive(Debug, Clone)]
pub struct ActiveModel {
    /// Model name.
    pub name: String,
    /// Active version.
    pub version: String,
    /// Hex digest of its manifest under its own `hash` ([`Manifest::digest`]).
    pub digest: String,
    /// The file or folder the engine loads.
    pub load_path: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl ActiveModel {
    /// The digest as people and records name it ([`Manifest::digest_label`]).
    pub fn digest_label(&self) -> String {
        self.manifest.digest_label(&self.digest)
    }
}

/// A stored package checked again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reverified {
    /// Its digest.
    pub digest: String,
    /// Key ids whose signatures counted.
    pub signers: Vec<String>,
    /// Payload files hashed (0 without `full_payload`).
    pub files_checked: usize,
    /// Payload bytes hashed.
    pub bytes_hashed: u64,
}

/// What [`ModelStore::recover`] cleaned up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovered {
    /// Staging folders of imports that did not finish.
    pub staging_removed: Vec<PathBuf>,
    /// Package folders that no registry entry names.
    pub orphans_removed: Vec<PathBuf>,
}

/// The model store; see the module documentation. The same store, opened on `STATE/policies`
/// with the `policy` role, keeps content-safety policy packages: one implementation of import,
/// activation, rollback and re-verification for both kinds.
#[derive(Debug, Clone)]
pub struct ModelStore {
    dir: PathBuf,
    /// The role whose signatures this store accepts (and so the kind of package it keeps).
    role: Role,
}

/// The store lock, released on drop.
struct Lock(#[allow(dead_code)] File);

impl ModelStore {
    /// The store at `STATE/models`, created if missing.
    pub fn open(paths: &StatePaths) -> Result<Self> {
        Self::open_dir(&paths.models_dir())
    }

    /// The policy package store at `STATE/policies`, created if missing.
    pub fn open_policies(paths: &StatePaths) -> Result<Self> {
        Self::open_dir_for(&paths.policies_dir(), Role::Policy)
    }

    /// The model store in `dir`, created (mode 0700) if missing, with its lock file.
    pub fn open_dir(dir: &Path) -> Result<Self> {
        Self::open_dir_for(dir, Role::Models)
    }

    /// The store in `dir` for packages signed by `role` (`models` or `policy`).
    pub fn open_dir_for(dir: &Path, role: Role) -> Result<Self> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| PackageError::io("creating", dir, e))?;
        let store = Self { dir: dir.to_path_buf(), role };
        drop(store.lock()?);
        Ok(store)
    }

    /// The store folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The folder of the stored package with manifest digest `digest`: `sha256-<digest>`, or
    /// `sm3-<digest>` for an SM3 package (`sha256-<digest>` when neither exists).
    pub fn package_dir(&self, digest: &str) -> PathBuf {
        HashAlgorithm::ALL
            .into_iter()
            .map(|hash| self.package_dir_for(hash, digest))
            .find(|dir| fs::symlink_metadata(dir).is_ok())
            .unwrap_or_else(|| self.package_dir_for(HashAlgorithm::Sha256, digest))
    }

    /// The folder of a package whose manifest's `hash` is `hash`: `<hash>-<digest>`.
    pub fn package_dir_for(&self, hash: HashAlgorithm, digest: &str) -> PathBuf {
        self.dir.join(format!("{hash}-{digest}"))
    }

    fn lock(&self) -> Result<Lock> {
        let path = self.dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| PackageError::io("opening store lock", &path, e))?;
        f.lock().map_err(|e| PackageError::io("locking", &path, e))?;
        Ok(Lock(f))
    }

    fn registry(&self) -> Result<Registry> {
        let path = self.dir.join(REGISTRY_FILE);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Registry::default()),
            _ => Registry::parse(&read_capped(&path, 16 << 20, "model registry")?, &path),
        }
    }

    fn save(&self, reg: &Registry) -> Result<()> {
        write_atomic(&self.dir.join(REGISTRY_FILE), &reg.to_bytes(), 0o644)
    }

    /// Runs `f` on the registry under the lock and saves it if `f` succeeds.
    fn mutate<T>(&self, f: impl FnOnce(&mut Registry) -> Result<T>) -> Result<T> {
        let _lock = self.lock()?;
        let mut reg = self.registry()?;
        let out = f(&mut reg)?;
        self.save(&reg)?;
        Ok(out)
    }

    fn load_path(&self, digest: &str, manifest: &Manifest) -> PathBuf {
        let payload = self.package_dir_for(manifest.hash, digest).join(PAYLOAD_DIR);
        match manifest.model.as_ref().map(|m| m.load.as_str()) {
            Some(".") | None => payload,
            Some(p) => payload.join(p),
        }
    }

    /// Imports the package file at `path`; see [`ModelStore::import`].
    pub fn import_file(
        &self,
        path: &Path,
        root: &TrustRoot,
        opts: &ImportOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Imported> {
        self.import_path(path, root, opts, false, progress)
    }

    /// [`ModelStore::import_file`] for a caller that records the change before it takes effect
    /// (the admin operations, `govbox_admin::ops`): the version is stored but never made active
    /// here, not even as the first of its name; [`Imported::pending_activation`] says whether it
    /// is to be. A crash before the caller activates it leaves a stored, inactive version, which
    /// nothing serves.
    pub fn import_file_held(
        &self,
        path: &Path,
        root: &TrustRoot,
        opts: &ImportOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Imported> {
        self.import_path(path, root, opts, true, progress)
    }

    /// Makes the version that [`ModelStore::import_file_held`] stored active, when it is to be
    /// ([`Imported::pending_activation`]); otherwise changes nothing.
    pub fn activate_held(&self, imported: &Imported) -> Result<()> {
        if imported.pending_activation {
            self.activate(&imported.name, Some(&imported.version))?;
        }
        Ok(())
    }

    fn import_path(
        &self,
        path: &Path,
        root: &TrustRoot,
        opts: &ImportOptions,
        held: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Imported> {
        let file = File::open(path).map_err(|e| PackageError::io("opening package", path, e))?;
        self.import_as(file, &file_label(path), root, opts, held, progress)
    }

    /// Verifies a package against the store's role of `root` (`models`, or `policy` for the
    /// policy store) and adds it to the store.
    ///
    /// The signatures are checked before any payload byte is read; the payload is hashed while
    /// it is extracted into a staging folder, whose files and folders are fsynced and which is
    /// then renamed to `<hash>-<digest>` under the store lock. On any failure the staging folder
    /// is removed and the store and registry are unchanged. The same package imported again is
    /// a no-op; the same name and version with another digest is refused.
    pub fn import<R: Read + Send>(
        &self,
        reader: R,
        label: &str,
        root: &TrustRoot,
        opts: &ImportOptions,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Imported> {
        self.import_as(reader, label, root, opts, false, progress)
    }

    fn import_as<R: Read + Send>(
        &self,
        reader: R,
        label: &str,
        root: &TrustRoot,
        opts: &ImportOptions,
        held: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Imported> {
        let start = std::time::Instant::now();
        // Fail fast, before extracting, on a name and version taken by other content; checked
        // again under the lock below.
        let precheck = |m: &Manifest, bytes: &[u8]| conflict(&self.registry()?, m, &m.digest(bytes));
        let mut sink = StagingSink::new(&self.dir, &precheck);
        let verified = verify_into(reader, label, &Policy::Trust(root, self.role), &mut sink, progress)?;
        sink.finish()?;
        let staging = sink.staging.take();
        let head = &verified.head;
        let m = &head.manifest;

        let _lock = self.lock()?;
        let mut reg = self.registry()?;
        conflict(&reg, m, &head.digest)?;
        let target = self.package_dir_for(m.hash, &head.digest);
        let already_present = target.exists();
        if let Some(staging) = staging
            && !already_present
        {
            staging.commit_to(&target)?;
        }
        let (mut activated, mut pending_activation) = (false, false);
        if reg.by_digest(&head.digest).is_none() {
            let imported = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
            let rec = VersionRecord {
                version: m.version.to_string(),
                digest: head.digest.clone(),
                size: m.payload_bytes(),
                imported,
            };
            match held {
                true => pending_activation = reg.add_held(&m.name, rec, opts.activate),
                false => activated = reg.add(&m.name, rec, opts.activate),
            }
            if let Err(e) = self.save(&reg) {
                if !already_present {
                    let _ = fs::remove_dir_all(&target);
                }
                return Err(e);
            }
        }
        Ok(Imported {
            name: m.name.clone(),
            version: m.version.to_string(),
            digest: head.digest.clone(),
            size: verified.payload_bytes,
            load_path: self.load_path(&head.digest, m),
            manifest: m.clone(),
            bytes: verified.archive_bytes,
            secs: start.elapsed().as_secs_f64(),
            activated,
            already_present,
            pending_activation,
            signers: verified.signature_check.signers.clone(),
        })
    }

    /// Every model name with its versions, active version and history.
    pub fn list(&self) -> Result<Vec<ModelRecord>> {
        Ok(self.registry()?.models)
    }

    /// [`ModelStore::list`] as answers and tables show it: each version's digest given as its
    /// label, `sha256-<hex>` or `sm3-<hex>` ([`ModelStore::digest_label`]).
    pub fn list_labelled(&self) -> Result<Vec<ModelRecord>> {
        let mut models = self.list()?;
        for v in models.iter_mut().flat_map(|m| m.versions.iter_mut()) {
            v.digest = self.digest_label(&v.digest);
        }
        Ok(models)
    }

    /// Activates `version` of `name`, or its highest version when `None`; returns the version.
    pub fn activate(&self, name: &str, version: Option<&str>) -> Result<String> {
        self.mutate(|r| r.activate(name, version))
    }

    /// What [`ModelStore::activate`] would make active, changing nothing: the version, ready to
    /// load, so that a caller can check and record it before the change.
    pub fn plan_activate(&self, name: &str, version: Option<&str>) -> Result<ActiveModel> {
        self.plan(name, |r| r.activate(name, version))
    }

    /// What [`ModelStore::rollback`] would make active, changing nothing.
    pub fn plan_rollback(&self, name: &str) -> Result<ActiveModel> {
        self.plan(name, |r| r.rollback(name))
    }

    fn plan(&self, name: &str, change: impl FnOnce(&mut Registry) -> Result<String>) -> Result<ActiveModel> {
        let mut reg = self.registry()?;
        let version = change(&mut reg)?;
        let digest = reg
            .models
            .iter()
            .find(|m| m.name == name)
            .and_then(|m| m.versions.iter().find(|v| v.version == version))
            .map(|v| v.digest.clone())
            .ok_or_else(|| PackageError::NotFound {
                action: format!("activating model '{name}'"),
                what: format!("version {version} of '{name}'"),
            })?;
        self.active_model(name, &version, &digest)
    }

    fn active_model(&self, name: &str, version: &str, digest: &str) -> Result<ActiveModel> {
        let (manifest, _) = self.read_manifest(digest)?;
        Ok(ActiveModel {
            name: name.to_string(),
            version: version.to_string(),
            digest: digest.to_string(),
            load_path: self.load_path(digest, &manifest),
            manifest,
        })
    }

    /// Takes `name` out of service, or puts it back (`disabled` false); returns its record. The
    /// store only records it: whoever serves the models skips a disabled one.
    pub fn set_disabled(&self, name: &str, disabled: bool) -> Result<ModelRecord> {
        self.mutate(|r| r.set_disabled(name, disabled))
    }

    /// Returns `name` to its previous active version; an error when there is none.
    pub fn rollback(&self, name: &str) -> Result<String> {
        self.mutate(|r| r.rollback(name))
    }

    /// Removes a version that is not active, and its folder; returns its digest as
    /// [`ModelStore::digest_label`] names it (`sha256-<hex>` or `sm3-<hex>`).
    pub fn remove(&self, name: &str, version: &str) -> Result<String> {
        let rec = self.mutate(|r| r.remove(name, version))?;
        let label = self.digest_label(&rec.digest);
        self.delete_package(&rec.digest)?;
        Ok(label)
    }

    /// How people and records name the stored package of manifest digest `digest`: its folder's
    /// name, `sha256-<hex>` or `sm3-<hex>` after the manifest's `hash` (`sha256-` when no such
    /// package is stored).
    pub fn digest_label(&self, digest: &str) -> String {
        let dir = self.package_dir(digest);
        dir.file_name().map_or_else(|| format!("sha256-{digest}"), |n| n.to_string_lossy().into_owned())
    }

    /// Undoes an import (a self-test failed right after it): removes the version stored under
    /// `digest` and its folder; if the import activated it, the previously active version (if
    /// any) is active again. The store is then as it was before the import.
    pub fn discard(&self, digest: &str) -> Result<()> {
        let rec = self.mutate(|r| r.discard(digest))?;
        self.delete_package(&rec.digest)
    }

    fn delete_package(&self, digest: &str) -> Result<()> {
        let dir = self.package_dir(digest);
        fs::remove_dir_all(&dir).map_err(|e| PackageError::io("removing", &dir, e))?;
        fsutil::sync_dir(&self.dir)
    }

    /// The stored manifest of `digest`. The folder's name, the manifest's `hash` and the digest
    /// must agree: a folder named for one algorithm never passes with the other's digest.
    fn read_manifest(&self, digest: &str) -> Result<(Manifest, Vec<u8>)> {
        let dir = self.package_dir(digest);
        let path = dir.join(MANIFEST_NAME);
        let bytes = read_capped(&path, MANIFEST_LIMIT, "stored manifest")?;
        let folder = dir.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
        let manifest = Manifest::parse(&bytes, &folder)?;
        if self.package_dir_for(manifest.hash, digest) != dir || manifest.digest(&bytes) != digest {
            return Err(PackageError::CorruptStore {
                path,
                reason: format!("the manifest's {} digest is not the folder's ({folder})", manifest.hash),
            });
        }
        Ok((manifest, bytes))
    }

    /// The active version of every model, with what the engine should load.
    pub fn active_models(&self) -> Result<Vec<ActiveModel>> {
        let reg = self.registry()?;
        let mut out = Vec::new();
        for m in &reg.models {
            let Some(active) = &m.active else { continue };
            let Some(v) = m.versions.iter().find(|v| &v.version == active) else { continue };
            out.push(self.active_model(&m.name, active, &v.digest)?);
        }
        Ok(out)
    }

    /// Checks a stored package again: its manifest digest and signatures (against `root`'s
    /// `models` role) always; with `full_payload`, every payload file's size and digest too (in
    /// parallel across files), and that the payload folder holds nothing else.
    pub fn reverify(
        &self,
        digest: &str,
        root: &TrustRoot,
        full_payload: bool,
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<Reverified> {
        let (manifest, bytes) = self.read_manifest(digest)?;
        let package = manifest.label();
        let sig_path = self.package_dir(digest).join(SIGNATURES_NAME);
        let sigs = SignatureFile::parse(&read_capped(&sig_path, SIGNATURES_LIMIT, "stored signatures")?, &package)?;
        let policy = Policy::Trust(root, self.role);
        let check = check_signatures(&bytes, &sigs, &policy, OffsetDateTime::now_utc(), &package)?;
        let mut out = Reverified { digest: digest.into(), signers: check.signers, files_checked: 0, bytes_hashed: 0 };
        if !full_payload {
            return Ok(out);
        }
        let payload = self.package_dir(digest).join(PAYLOAD_DIR);
        let files: Vec<PathBuf> = manifest.files.iter().map(|f| payload.join(f.path.as_str())).collect();
        // A file with signed piece digests is checked piece by piece, on every hashing thread at
        // once; others as one stream each, in parallel across files.
        let mut pieces = Vec::new();
        for (i, f) in manifest.files.iter().enumerate() {
            match &f.chunks {
                Some(c) => pieces.extend(Piece::chunks(i, f.size, c.size)),
                None => pieces.push(Piece::whole(i)),
            }
        }
        let total = manifest.payload_bytes();
        let results = fsutil::hash_pieces(manifest.hash, &files, &pieces, total, fsutil::hash_threads(), progress);
        let mut index_in_file = 0;
        for (k, (piece, r)) in pieces.iter().zip(results).enumerate() {
            let entry = &manifest.files[piece.file];
            index_in_file = if k > 0 && pieces[k - 1].file == piece.file { index_in_file + 1 } else { 0 };
            let member = entry.path.to_string();
            let (size, sha) = r.map_err(|e| PackageError::MissingMember {
                package: package.clone(),
                member: member.clone(),
                found: format!("cannot read the stored file: {e}"),
            })?;
            let want_len = piece.len.unwrap_or(entry.size.saturating_sub(piece.offset));
            if size != want_len {
                let actual = piece.offset + size;
                return Err(PackageError::SizeMismatch { package, member, expected: entry.size, actual });
            }
            // A parsed manifest lists exactly as many piece digests as `Piece::chunks` cuts.
            let (expected, member) = match entry.chunks.as_ref().and_then(|c| c.digests.get(index_in_file)) {
                Some(d) => (d, entry.piece_label(index_in_file)),
                None => (&entry.sha256, member),
            };
            if &sha != expected {
                return Err(PackageError::DigestMismatch { package, member, expected: expected.clone(), actual: sha });
            }
            out.bytes_hashed += size;
        }
        out.files_checked = manifest.files.len();
        let listed: BTreeSet<String> = manifest.files.iter().map(|f| f.path.to_string()).collect();
        if let Some(extra) = walk_files(&payload, "")?.into_iter().find(|p| !listed.contains(p)) {
            return Err(PackageError::UnexpectedMember { package, member: extra });
        }
        Ok(out)
    }

    /// Removes what interrupted operations left: staging folders whose importer is gone, and
    /// package folders no registry entry names. Safe while other processes import.
    pub fn recover(&self) -> Result<Recovered> {
        let _lock = self.lock()?;
        let reg = self.registry()?;
        let mut out = Recovered::default();
        let entries = fs::read_dir(&self.dir).map_err(|e| PackageError::io("listing", &self.dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with(STAGING_PREFIX) {
                // A live importer holds its owner file locked; it also removes that file only
                // under the store lock, which we hold.
                let live = File::open(path.join(OWNER_FILE)).is_ok_and(|f| f.try_lock().is_err());
                if !live && fs::remove_dir_all(&path).is_ok() {
                    out.staging_removed.push(path);
                }
            } else if let Some(digest) = HashAlgorithm::ALL.iter().find_map(|h| name.strip_prefix(&format!("{h}-"))) {
                if reg.by_digest(digest).is_none() && fs::remove_dir_all(&path).is_ok() {
                    out.orphans_removed.push(path);
                }
            } else if name.starts_with(&format!(".{REGISTRY_FILE}.")) && name.ends_with(".tmp") {
                let _ = fs::remove_file(&path);
            }
        }
        fsutil::sync_dir(&self.dir)?;
        Ok(out)
    }
}

/// The same name and version may not be stored with two different digests.
fn conflict(reg: &Registry, m: &Manifest, digest: &str) -> Result<()> {
    let version = m.version.to_string();
    match reg.get(&m.name).and_then(|r| r.versions.iter().find(|v| v.version == version)) {
        Some(v) if v.digest != digest => Err(PackageError::VersionConflict {
            name: m.name.clone(),
            version,
            existing: v.digest.clone(),
            new: digest.to_string(),
        }),
        _ => Ok(()),
    }
}

/// Every regular file under `dir`, as `/`-joined relative paths.
fn walk_files(dir: &Path, prefix: &str) -> Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| PackageError::io("listing", dir, e))? {
        let entry = entry.map_err(|e| PackageError::io("listing", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() { name } else { format!("{prefix}/{name}") };
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            out.extend(walk_files(&entry.path(), &rel)?);
        } else {
            out.push(rel);
        }
    }
    Ok(out)
}
