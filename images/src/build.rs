//! [`PackageBuilder`]: makes a signed package from a model folder, a `.gguf` file, or an update
//! payload, in constant memory.
//!
//! Pass 1 hashes the files, and each file larger than one piece (64 MiB by default) in pieces as
//! well ([`ChunkDigests`]), all in parallel. Pass 2 writes the archive, hashing each file again
//! as it is copied, so that a file that changed between the passes fails the build instead of
//! producing a package that would fail verification. (A file that changes during pass 1 and
//! changes back before pass 2 can leave piece digests that disagree with its whole digest; the
//! box checks both at import and refuses such a package.)

use std::fs::{self, File};
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use govbox_provisioning::{HashAlgorithm, SigningKey};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{PackageError, Result};
use crate::fsutil::{self, AtomicFile, Piece};
use crate::manifest::{
    CHUNK_SIZE_RANGE, ChunkDigests, FORMAT, FileEntry, Manifest, ModelInfo, ModelKind, PackageKind, PolicyInfo,
    UpdateInfo, check_name,
};
use crate::path::PackagePath;
use crate::selftest::SelfTest;
use crate::signature::{SignatureFile, hex};
use crate::tar::{TarWriter, header_block};
use crate::version::Version;

/// Copy size of pass 2.
const COPY_CHUNK: usize = 4 << 20;

/// The piece size of [`ChunkDigests`] unless the vendor asks for another: 75 pieces for a 5 GB
/// model, 6 KB of manifest, and enough pieces to keep 16 cores busy.
pub const DEFAULT_CHUNK_SIZE: u64 = 64 << 20;

/// What the vendor says about a model (the builder adds `load` and the self-test).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelMeta {
    /// Chat or embedding.
    pub kind: ModelKind,
    /// e.g. `qwen2`.
    pub architecture: String,
    /// In tokens.
    pub context_length: u64,
    /// e.g. `bf16`, `q8_0`.
    pub dtype: String,
}

#[derive(Debug, Clone)]
struct Source {
    path: PackagePath,
    file: PathBuf,
    size: u64,
    sha256: Option<String>,
    chunks: Option<Vec<String>>,
}

/// Builds one package; see the module documentation.
#[derive(Debug, Clone)]
pub struct PackageBuilder {
    name: String,
    version: Version,
    created: OffsetDateTime,
    sources: Vec<Source>,
    model: Option<ModelInfo>,
    update: Option<UpdateInfo>,
    policy: Option<PolicyInfo>,
    /// The hash of the payload files' digests, named in the manifest.
    hash: HashAlgorithm,
    /// The piece size of files' [`ChunkDigests`], or `None` for whole-file digests only.
    chunk_size: Option<u64>,
}

/// A package written by [`PackageBuilder::write`].
#[derive(Debug, Clone)]
pub struct Built {
    /// Its manifest.
    pub manifest: Manifest,
    /// The package's digest: hex of the manifest's `hash` over its bytes ([`Manifest::digest`]).
    pub digest: String,
    /// Archive size in bytes.
    pub archive_bytes: u64,
}

impl PackageBuilder {
    /// A model package from a model folder (every regular file under it, recursively, sorted;
    /// hidden files and folders, whose names start with `.`, are left out) or a single `.gguf`
    /// file. Symbolic links to files are followed, as Hugging Face snapshot folders consist of
    /// them; links to folders are refused.
    pub fn model(name: &str, version: &str, source: &Path, meta: ModelMeta) -> Result<Self> {
        let mut b = Self::new(name, version, source)?;
        let load = if source.is_dir() {
            ".".to_string()
        } else if source.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            b.sources[0].path.to_string()
        } else {
            return Err(b.err(format!("{} is neither a model folder nor a .gguf file", source.display())));
        };
        let ModelMeta { kind, architecture, context_length, dtype } = meta;
        b.model = Some(ModelInfo { kind, architecture, context_length, dtype, load, selftest: None });
        Ok(b)
    }

    /// An update bundle from a payload folder or file.
    pub fn update(name: &str, version: &str, source: &Path, info: UpdateInfo) -> Result<Self> {
        let mut b = Self::new(name, version, source)?;
        b.update = Some(info);
        Ok(b)
    }

    /// A content-safety policy package from a library folder (its `policy.toml` at the top).
    /// The caller compiles the library first and passes what it found, so that a library that
    /// does not compile is never signed.
    pub fn policy(name: &str, version: &str, source: &Path, info: PolicyInfo) -> Result<Self> {
        let mut b = Self::new(name, version, source)?;
        if !source.is_dir() {
            return Err(b.err(format!("{} is not a policy library folder", source.display())));
        }
        b.policy = Some(info);
        Ok(b)
    }

    fn new(name: &str, version: &str, source: &Path) -> Result<Self> {
        let label = format!("{name} {version}");
        let err = |reason: String| PackageError::Build { package: label.clone(), reason };
        check_name(name).map_err(err)?;
        let version = Version::parse(version).map_err(err)?;
        let mut sources = Vec::new();
        let meta = fs::metadata(source).map_err(|e| PackageError::io("reading model source", source, e))?;
        if meta.is_dir() {
            collect_dir(source, "", &mut sources).map_err(err)?;
        } else if meta.is_file() {
            let name = source.file_name().and_then(|n| n.to_str()).unwrap_or_default();
            let path = PackagePath::new(name).map_err(|e| err(format!("{}: {e}", source.display())))?;
            sources.push(Source { path, file: source.to_path_buf(), size: meta.len(), sha256: None, chunks: None });
        } else {
            return Err(err(format!("{} is not a regular file or folder", source.display())));
        }
        if sources.is_empty() {
            return Err(err(format!("{} holds no files", source.display())));
        }
        sources.sort_by(|a, b| a.path.cmp(&b.path));
        let created = OffsetDateTime::now_utc().replace_nanosecond(0).unwrap_or(OffsetDateTime::UNIX_EPOCH);
        Ok(Self {
            name: name.to_string(),
            version,
            created,
            sources,
            model: None,
            update: None,
            policy: None,
            hash: HashAlgorithm::Sha256,
            chunk_size: Some(DEFAULT_CHUNK_SIZE),
        })
    }

    fn err(&self, reason: String) -> PackageError {
        PackageError::Build { package: format!("{} {}", self.name, self.version), reason }
    }

    /// Hashes the payload files with `hash` (SHA-256 by default; SM3 for a `gm` vendor), which
    /// the manifest names.
    pub fn with_hash(mut self, hash: HashAlgorithm) -> Self {
        self.hash = hash;
        self.forget_digests();
        self
    }

    /// Cuts files larger than `size` bytes into pieces of that size and signs each piece's
    /// digest too, so that a box checks them on all its cores ([`ChunkDigests`]); `None` signs
    /// whole-file digests only, which govbox versions before piece digests also read. `size`
    /// must be a power of two from 1 MiB to 1 GiB.
    pub fn with_chunk_size(mut self, size: Option<u64>) -> Result<Self> {
        if let Some(n) = size.filter(|&n| !ChunkDigests::is_valid_size(n)) {
            return Err(self.err(format!(
                "the piece size {n} must be a power of two from {} MiB to {} MiB",
                CHUNK_SIZE_RANGE.start() >> 20,
                CHUNK_SIZE_RANGE.end() >> 20
            )));
        }
        self.chunk_size = size;
        self.forget_digests();
        Ok(self)
    }

    fn forget_digests(&mut self) {
        for s in &mut self.sources {
            s.sha256 = None;
            s.chunks = None;
        }
    }

    /// Records a self-test (model packages only).
    pub fn with_selftest(mut self, test: SelfTest) -> Self {
        if let Some(m) = &mut self.model {
            m.selftest = Some(test);
        }
        self
    }

    /// Sets the `created` time (default: now).
    pub fn with_created(mut self, t: OffsetDateTime) -> Self {
        self.created = t;
        self
    }

    /// What the engine will load, relative to the payload folder (model packages).
    pub fn load_path(&self) -> Option<&str> {
        self.model.as_ref().map(|m| m.load.as_str())
    }

    /// The payload files: package path, source file, size.
    pub fn files(&self) -> impl Iterator<Item = (&PackagePath, &Path, u64)> {
        self.sources.iter().map(|s| (&s.path, s.file.as_path(), s.size))
    }

    /// Payload bytes in all.
    pub fn payload_bytes(&self) -> u64 {
        self.sources.iter().map(|s| s.size).sum()
    }

    /// Pass 1: hashes every file, and the pieces of every file larger than one piece, all in
    /// parallel; `progress` counts every byte hashed (so a chunked file's bytes twice).
    pub fn hash(&mut self, progress: &mut dyn FnMut(u64, u64)) -> Result<()> {
        let paths: Vec<PathBuf> = self.sources.iter().map(|s| s.file.clone()).collect();
        let mut pieces: Vec<Piece> = (0..paths.len()).map(Piece::whole).collect();
        let mut total = self.payload_bytes();
        for (i, s) in self.sources.iter().enumerate() {
            if let Some(c) = self.chunk_size.filter(|&c| s.size > c) {
                pieces.extend(Piece::chunks(i, s.size, c));
                total += s.size;
            }
        }
        let results = fsutil::hash_pieces(self.hash, &paths, &pieces, total, fsutil::hash_threads(), progress);
        let package = format!("{} {}", self.name, self.version);
        let changed = |file: &Path| PackageError::Build {
            package: package.clone(),
            reason: format!("{} changed size while the package was built", file.display()),
        };
        let mut results = pieces.iter().zip(results);
        for (s, (_, r)) in self.sources.iter_mut().zip(results.by_ref()) {
            let (size, digest) = r.map_err(|e| PackageError::io("hashing", &s.file, e))?;
            if size != s.size {
                return Err(changed(&s.file));
            }
            s.sha256 = Some(digest);
            s.chunks = None;
        }
        for (piece, r) in results {
            let s = &mut self.sources[piece.file];
            let (size, digest) = r.map_err(|e| PackageError::io("hashing", &s.file, e))?;
            if piece.offset + size != s.size && piece.len != Some(size) {
                return Err(changed(&s.file));
            }
            s.chunks.get_or_insert_with(Vec::new).push(digest);
        }
        Ok(())
    }

    /// The manifest (after [`PackageBuilder::hash`]), validated as verification will.
    pub fn manifest(&self) -> Result<Manifest> {
        let mut files = Vec::with_capacity(self.sources.len());
        for s in &self.sources {
            let sha256 = s.sha256.clone().ok_or_else(|| self.err("the files are not hashed yet".into()))?;
            let chunks = match (&s.chunks, self.chunk_size) {
                (Some(d), Some(size)) => Some(ChunkDigests { size, digests: d.clone() }),
                _ => None,
            };
            files.push(FileEntry { path: s.path.clone(), size: s.size, sha256, chunks });
        }
        let m = Manifest {
            format: FORMAT.into(),
            kind: match (&self.model, &self.policy) {
                (Some(_), _) => PackageKind::Model,
                (None, Some(_)) => PackageKind::Policy,
                (None, None) => PackageKind::Update,
            },
            name: self.name.clone(),
            version: self.version.clone(),
            created: self.created.format(&Rfc3339).map_err(|e| self.err(e.to_string()))?,
            files,
            hash: self.hash,
            model: self.model.clone(),
            update: self.update.clone(),
            policy: self.policy.clone(),
        };
        m.validate()?;
        Ok(m)
    }

    /// Pass 2: writes the package signed by `keys` to `out` atomically (temporary file, fsync,
    /// rename). Hashes first if [`PackageBuilder::hash`] was not called.
    pub fn write(&mut self, out: &Path, keys: &[&SigningKey], progress: &mut dyn FnMut(u64, u64)) -> Result<Built> {
        if self.sources.iter().any(|s| s.sha256.is_none()) {
            self.hash(&mut |_, _| {})?;
        }
        let mut file = AtomicFile::create(out, 0o644)?;
        let tmp = file.tmp_path().to_path_buf();
        let mut w = BufWriter::with_capacity(COPY_CHUNK, file.file()?);
        let built = self.write_to(&mut w, keys, progress)?;
        w.flush().map_err(|e| PackageError::io("writing package", &tmp, e))?;
        drop(w);
        file.commit()?;
        Ok(built)
    }

    /// Pass 2 into any writer (after [`PackageBuilder::hash`]).
    pub fn write_to<W: Write>(&self, w: W, keys: &[&SigningKey], progress: &mut dyn FnMut(u64, u64)) -> Result<Built> {
        if keys.is_empty() {
            return Err(self.err("a package needs at least one signing key".into()));
        }
        let manifest = self.manifest()?;
        let manifest_bytes = manifest.to_canonical_bytes()?;
        let sigs = SignatureFile::sign(&manifest_bytes, keys).to_bytes();
        let archive_bytes = self.write_members(w, &manifest_bytes, &sigs, progress)?;
        let digest = manifest.digest(&manifest_bytes);
        Ok(Built { manifest, digest, archive_bytes })
    }

    /// Writes the archive with the given first two members (the corpus passes altered ones).
    pub(crate) fn write_members<W: Write>(
        &self,
        w: W,
        manifest_bytes: &[u8],
        sig_bytes: &[u8],
        progress: &mut dyn FnMut(u64, u64),
    ) -> Result<u64> {
        let werr = |e: io::Error| PackageError::io("writing package", "output", e);
        let mut tar = TarWriter::new(w);
        tar.append(crate::path::MANIFEST_NAME, manifest_bytes).map_err(werr)?;
        tar.append(crate::path::SIGNATURES_NAME, sig_bytes).map_err(werr)?;
        let total = self.payload_bytes();
        let mut done = 0;
        let mut buf = vec![0u8; COPY_CHUNK];
        progress(0, total);
        for s in &self.sources {
            tar.begin(s.path.as_str(), s.size).map_err(werr)?;
            let mut f = File::open(&s.file).map_err(|e| PackageError::io("reading", &s.file, e))?;
            let mut ctx = self.hash.hasher();
            let mut left = s.size;
            while left > 0 {
                let want = usize::try_from(left).map_or(buf.len(), |l| l.min(buf.len()));
                let n = f.read(&mut buf[..want]).map_err(|e| PackageError::io("reading", &s.file, e))?;
                if n == 0 {
                    return Err(self.err(format!("{} shrank while the package was built", s.file.display())));
                }
                ctx.update(&buf[..n]);
                tar.write_data(&buf[..n]).map_err(werr)?;
                left -= n as u64;
                done += n as u64;
                progress(done, total);
            }
            let grew = f.read(&mut buf[..1]).map_err(|e| PackageError::io("reading", &s.file, e))? != 0;
            if grew || s.sha256.as_deref() != Some(hex(&ctx.finish()).as_str()) {
                return Err(self.err(format!("{} changed while the package was built", s.file.display())));
            }
        }
        let written = tar.written() + 1024;
        tar.finish().map_err(werr)?;
        Ok(written)
    }
}

fn collect_dir(dir: &Path, prefix: &str, out: &mut Vec<Source>) -> std::result::Result<(), String> {
    let rd = fs::read_dir(dir).map_err(|e| format!("reading folder {}: {e}", dir.display()))?;
    for entry in rd {
        let entry = entry.map_err(|e| format!("reading folder {}: {e}", dir.display()))?;
        let file = entry.path();
        let name = entry.file_name();
        let name = name.to_str().ok_or_else(|| format!("{}: the name is not valid UTF-8", file.display()))?;
        if name.starts_with('.') {
            continue;
        }
        let rel = if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
        let lmeta = fs::symlink_metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        let meta = fs::metadata(&file).map_err(|e| format!("{}: {e}", file.display()))?;
        if meta.is_dir() && lmeta.file_type().is_symlink() {
            return Err(format!("{}: links to folders are not followed; copy the folder instead", file.display()));
        } else if meta.is_dir() {
            collect_dir(&file, &rel, out)?;
        } else if meta.is_file() {
            let path = PackagePath::new(&rel).map_err(|e| format!("{}: {e}", file.display()))?;
            header_block(rel.as_bytes(), meta.len(), b'0').map_err(|e| format!("{}: {e}", file.display()))?;
            out.push(Source { path, file, size: meta.len(), sha256: None, chunks: None });
        } else {
            return Err(format!("{}: not a regular file; a package holds regular files only", file.display()));
        }
    }
    Ok(())
}
