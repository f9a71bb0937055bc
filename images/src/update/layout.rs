//! The install folder (`/opt/govbox` in production) and its files:
//!
//! ```text
//! ROOT/current            -> slots/a   (symlink; replaced only by rename)
//! ROOT/slots/{a,b}/       slot.json, govbox-manifest.json, govbox-manifest.sig, payload/...,
//!                         govboxd -> payload/bin/govboxd, govbox -> payload/bin/govbox
//! ROOT/security_version   the stored security version (decimal; only ever rises)
//! ROOT/update-state.json  the trial marker, boot counter and previous slot
//! ROOT/.update.lock       held by the one `govbox update` that may change any of this
//! ```
//!
//! Every file here is replaced atomically (temporary file, fsync, rename, folder fsync), and a
//! slot appears under its name only complete and fsynced, so a power loss at any instant leaves
//! `current` on a complete slot.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use govbox_provisioning::{Role, TrustRoot};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::error::UpdateError;
use crate::fsutil::{hash_files, hash_threads, random_hex, sync_dir, write_atomic};
use crate::manifest::Manifest;
use crate::path::{MANIFEST_NAME, SIGNATURES_NAME};
use crate::signature::{Policy, SignatureFile, check_signatures};
use crate::staging::PAYLOAD_DIR;

/// Slot metadata file name.
pub const SLOT_META: &str = "slot.json";
/// How many starts an unconfirmed trial gets before `boot-check` reverts it.
pub const BOOT_LIMIT: u32 = 3;

type Result<T> = std::result::Result<T, UpdateError>;

/// One of the two install slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Slot {
    /// `slots/a`.
    A,
    /// `slots/b`.
    B,
}

impl Slot {
    /// `a` or `b`.
    pub fn as_str(self) -> &'static str {
        match self {
            Slot::A => "a",
            Slot::B => "b",
        }
    }

    /// The other slot.
    pub fn other(self) -> Slot {
        match self {
            Slot::A => Slot::B,
            Slot::B => Slot::A,
        }
    }

    fn parse(s: &str) -> Option<Slot> {
        match s {
            "a" => Some(Slot::A),
            "b" => Some(Slot::B),
            _ => None,
        }
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `slots/X/slot.json` says about the bundle staged there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotMeta {
    /// The bundle's version.
    pub version: String,
    /// The bundle's security version.
    pub security_version: u64,
    /// The bundle's digest: hex of its manifest's own `hash` (SHA-256 or SM3) over the manifest
    /// bytes.
    pub digest: String,
    /// When it was staged (RFC 3339).
    pub staged: String,
}

/// Where an update stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// `current` runs a version that was confirmed ready (or the first install).
    Committed,
    /// `current` runs a new version that has not been confirmed ready yet.
    Trial,
    /// The last trial failed and `current` is back on the previous slot.
    Reverted,
    /// An operator went back to the previous slot.
    RolledBack,
}

/// `ROOT/update-state.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateState {
    /// Where the update stands.
    pub phase: Phase,
    /// The slot `current` should point at.
    pub current: Slot,
    /// The slot that ran before (where a revert or rollback goes).
    pub previous: Option<Slot>,
    /// Starts of `current` counted by `boot-check` while in [`Phase::Trial`].
    #[serde(default)]
    pub boot_count: u32,
    /// When this state was written (RFC 3339).
    pub since: String,
}

/// The install folder.
#[derive(Debug, Clone)]
pub struct InstallRoot {
    root: PathBuf,
}

/// The exclusive lock on an install folder; released when dropped.
#[derive(Debug)]
pub struct UpdateLock {
    _file: File,
}

pub(crate) fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_default()
}

fn pkg_io(e: crate::error::PackageError) -> UpdateError {
    UpdateError::Bundle(e)
}

impl InstallRoot {
    /// The install folder at `root` (created, with `slots/`, on first use by [`InstallRoot::lock`]).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `ROOT/slots`.
    pub fn slots_dir(&self) -> PathBuf {
        self.root.join("slots")
    }

    /// `ROOT/slots/X`.
    pub fn slot_dir(&self, slot: Slot) -> PathBuf {
        self.slots_dir().join(slot.as_str())
    }

    /// `ROOT/current`.
    pub fn current_link(&self) -> PathBuf {
        self.root.join("current")
    }

    /// `ROOT/security_version`.
    pub fn security_version_file(&self) -> PathBuf {
        self.root.join("security_version")
    }

    /// `ROOT/update-state.json`.
    pub fn state_file(&self) -> PathBuf {
        self.root.join("update-state.json")
    }

    /// Takes the install folder's lock without waiting; [`UpdateError::Busy`] when another
    /// `govbox update` holds it.
    pub fn lock(&self) -> Result<UpdateLock> {
        for d in [self.root.clone(), self.slots_dir()] {
            fs::DirBuilder::new()
                .recursive(true)
                .create(&d)
                .map_err(|e| UpdateError::io("creating install folder", &d, e))?;
        }
        let path = self.root.join(".update.lock");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(|e| UpdateError::io("opening", &path, e))?;
        match file.try_lock() {
            Ok(()) => Ok(UpdateLock { _file: file }),
            Err(fs::TryLockError::WouldBlock) => Err(UpdateError::Busy { root: self.root.clone() }),
            Err(fs::TryLockError::Error(e)) => Err(UpdateError::io("locking", &path, e)),
        }
    }

    /// The slot `current` points at, if the link exists.
    pub fn current(&self) -> Result<Option<Slot>> {
        let link = self.current_link();
        match fs::read_link(&link) {
            Ok(target) => {
                let slot =
                    target.strip_prefix("slots").ok().and_then(|s| s.to_str()).and_then(Slot::parse).ok_or_else(
                        || UpdateError::CorruptState {
                            path: link.clone(),
                            reason: format!("points at '{}', not slots/a or slots/b", target.display()),
                        },
                    )?;
                Ok(Some(slot))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(UpdateError::io("reading link", &link, e)),
        }
    }

    /// Points `current` at `slot`: a new link under a temporary name, renamed over the old one
    /// (rename is atomic, so `current` is at every instant either the old or the new link), then
    /// the folder is fsynced. `mid` runs between the two (the fault-injection hook).
    pub fn switch_current(&self, slot: Slot, mid: &mut dyn FnMut()) -> Result<()> {
        let tmp = self.root.join(format!(".current.tmp-{}", random_hex(8).map_err(pkg_io)?));
        let target = PathBuf::from("slots").join(slot.as_str());
        std::os::unix::fs::symlink(&target, &tmp).map_err(|e| UpdateError::io("creating link", &tmp, e))?;
        mid();
        let link = self.current_link();
        if let Err(e) = fs::rename(&tmp, &link) {
            let _ = fs::remove_file(&tmp);
            return Err(UpdateError::io("switching link", &link, e));
        }
        sync_dir(&self.root).map_err(pkg_io)
    }

    /// The stored security version; 0 before the first commit.
    pub fn security_version(&self) -> Result<u64> {
        read_counter(&self.security_version_file(), "a security version")
    }

    /// Raises the stored security version to `to` (durably); a lower `to` changes nothing.
    pub fn raise_security_version(&self, to: u64) -> Result<u64> {
        let stored = self.security_version()?;
        if to <= stored {
            return Ok(stored);
        }
        fs::create_dir_all(&self.root).map_err(|e| UpdateError::io("creating install folder", &self.root, e))?;
        write_atomic(&self.security_version_file(), format!("{to}\n").as_bytes(), 0o644).map_err(pkg_io)?;
        Ok(to)
    }

    /// `update-state.json`, if written yet.
    pub fn state(&self) -> Result<Option<UpdateState>> {
        let path = self.state_file();
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| UpdateError::CorruptState { path: path.clone(), reason: e.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(UpdateError::io("reading", &path, e)),
        }
    }

    /// Replaces `update-state.json` atomically.
    pub fn write_state(&self, state: &UpdateState) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(state)
            .map_err(|e| UpdateError::CorruptState { path: self.state_file(), reason: e.to_string() })?;
        write_atomic(&self.state_file(), &bytes, 0o644).map_err(pkg_io)
    }

    /// A slot's metadata, `None` when the slot does not exist.
    pub fn slot_meta(&self, slot: Slot) -> Result<Option<SlotMeta>> {
        let path = self.slot_dir(slot).join(SLOT_META);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| UpdateError::CorruptState { path: path.clone(), reason: e.to_string() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(UpdateError::io("reading", &path, e)),
        }
    }

    /// Re-checks a slot against its own signed manifest: the manifest's digest is the one in
    /// `slot.json`, its signatures meet `trust`'s `updates` threshold (when given), and every
    /// payload file has the listed size and digest. Digests are the manifest's own `hash`
    /// (SHA-256, or SM3 for a `gm` bundle). Returns the metadata.
    pub fn verify_slot(&self, slot: Slot, trust: Option<&TrustRoot>) -> Result<SlotMeta> {
        let invalid = |reason: String| UpdateError::SlotInvalid { slot: slot.to_string(), reason };
        let dir = self.slot_dir(slot);
        let meta = self.slot_meta(slot)?.ok_or_else(|| invalid("missing (no slot.json)".into()))?;
        let manifest_path = dir.join(MANIFEST_NAME);
        let bytes = crate::fsutil::read_capped(&manifest_path, crate::manifest::MANIFEST_LIMIT, "manifest")
            .map_err(|e| invalid(e.to_string()))?;
        let manifest = Manifest::parse(&bytes, slot.as_str()).map_err(|e| invalid(e.to_string()))?;
        let digest = manifest.digest(&bytes);
        if digest != meta.digest {
            return Err(invalid(format!(
                "manifest {} digest {digest} is not slot.json's {}",
                manifest.hash, meta.digest
            )));
        }
        if let Some(root) = trust {
            let sig_path = dir.join(SIGNATURES_NAME);
            let sig_bytes = crate::fsutil::read_capped(&sig_path, crate::manifest::SIGNATURES_LIMIT, "signatures")
                .map_err(|e| invalid(e.to_string()))?;
            let sigs = SignatureFile::parse(&sig_bytes, &manifest.label()).map_err(|e| invalid(e.to_string()))?;
            check_signatures(
                &bytes,
                &sigs,
                &Policy::Trust(root, Role::Updates),
                OffsetDateTime::now_utc(),
                &manifest.label(),
            )
            .map_err(|e| invalid(e.to_string()))?;
        }
        let payload = dir.join(PAYLOAD_DIR);
        let files: Vec<PathBuf> = manifest.files.iter().map(|f| payload.join(f.path.as_str())).collect();
        let digests = hash_files(manifest.hash, &files, manifest.payload_bytes(), hash_threads(), &mut |_, _| {});
        for (f, r) in manifest.files.iter().zip(digests) {
            let (size, sha) = r.map_err(|e| invalid(format!("{}: {e}", f.path)))?;
            if size != f.size || sha != f.sha256 {
                return Err(invalid(format!("{}: does not match the signed manifest", f.path)));
            }
        }
        Ok(meta)
    }

    /// Removes what a killed `govbox update` left behind: staging folders, half-removed old
    /// slots and temporary links. The caller holds the lock.
    pub fn clean_leftovers(&self, _lock: &UpdateLock) -> Result<()> {
        let remove_dirs = |dir: &Path, prefixes: &[&str]| -> Result<()> {
            let rd = match fs::read_dir(dir) {
                Ok(rd) => rd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) => return Err(UpdateError::io("reading folder", dir, e)),
            };
            for entry in rd {
                let entry = entry.map_err(|e| UpdateError::io("reading folder", dir, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if prefixes.iter().any(|p| name.starts_with(p)) {
                    let p = entry.path();
                    let r = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
                    r.map_err(|e| UpdateError::io("removing leftover", &p, e))?;
                }
            }
            Ok(())
        };
        remove_dirs(&self.slots_dir(), &[crate::staging::STAGING_PREFIX, ".old-"])?;
        remove_dirs(&self.root, &[".current.tmp-"])
    }
}

/// A file holding one decimal number that only rises; 0 when it does not exist yet.
pub(crate) fn read_counter(path: &Path, what: &str) -> Result<u64> {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map_err(|_| UpdateError::CorruptState {
            path: path.to_path_buf(),
            reason: format!("'{}' is not {what}", s.trim()),
        }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(UpdateError::io("reading", path, e)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn switch_replaces_the_link_and_a_foreign_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = InstallRoot::new(dir.path().join("opt"));
        let lock = root.lock().unwrap();
        assert_eq!(root.current().unwrap(), None);
        let mut calls = 0;
        root.switch_current(Slot::B, &mut || calls += 1).unwrap();
        root.switch_current(Slot::A, &mut || calls += 1).unwrap();
        assert_eq!((root.current().unwrap(), calls), (Some(Slot::A), 2));
        assert_eq!(fs::read_link(root.current_link()).unwrap(), Path::new("slots/a"));
        root.clean_leftovers(&lock).unwrap();
        assert_eq!(fs::read_dir(root.path()).unwrap().count(), 3, "current, slots, .update.lock, nothing else");

        fs::remove_file(root.current_link()).unwrap();
        std::os::unix::fs::symlink("/usr/bin", root.current_link()).unwrap();
        let e = root.current().unwrap_err();
        assert_eq!(e.code(), "corrupt_update_state", "{e}");
        assert!(matches!(root.lock(), Err(UpdateError::Busy { .. })));
    }

    #[test]
    fn state_and_security_version_round_trip_and_refuse_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let root = InstallRoot::new(dir.path());
        let s = UpdateState {
            phase: Phase::Trial,
            current: Slot::B,
            previous: Some(Slot::A),
            boot_count: 2,
            since: now_rfc3339(),
        };
        root.write_state(&s).unwrap();
        assert_eq!(root.state().unwrap(), Some(s));
        assert!(fs::read_to_string(root.state_file()).unwrap().contains("\"phase\": \"trial\""));
        fs::write(root.security_version_file(), "seven").unwrap();
        assert_eq!(root.security_version().unwrap_err().code(), "corrupt_update_state");
        assert_eq!(Slot::A.other(), Slot::B);
    }
}
