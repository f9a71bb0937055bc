//! The staging folder an import extracts into: `models/.staging-<random>/`, removed unless it
//! is committed by one rename into the store.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{PackageError, Result};
use crate::fsutil::{random_hex, sync_dir};
use crate::manifest::{FileEntry, Manifest};
use crate::path::{MANIFEST_NAME, SIGNATURES_NAME};
use crate::verify::MemberSink;
use crate::writer::FileWriter;

/// Staging folder names start with this.
pub(crate) const STAGING_PREFIX: &str = ".staging-";
/// Held locked by the importing process for as long as its staging folder lives, so that
/// recovery can tell a live import from one that crashed.
pub(crate) const OWNER_FILE: &str = ".owner";
/// The payload folder inside a stored package.
pub(crate) const PAYLOAD_DIR: &str = "payload";

/// A staging folder; dropped uncommitted, it is removed with everything in it.
#[derive(Debug)]
pub(crate) struct Staging {
    path: PathBuf,
    owner: Option<File>,
    committed: bool,
}

impl Staging {
    pub(crate) fn create(models_dir: &Path) -> Result<Self> {
        let path = models_dir.join(format!("{STAGING_PREFIX}{}", random_hex(8)?));
        fs::DirBuilder::new().mode(0o700).create(&path).map_err(|e| PackageError::io("creating", &path, e))?;
        let mut s = Self { path, owner: None, committed: false };
        let owner_path = s.path.join(OWNER_FILE);
        let owner = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&owner_path)
            .map_err(|e| PackageError::io("creating", &owner_path, e))?;
        owner.lock().map_err(|e| PackageError::io("locking", &owner_path, e))?;
        s.owner = Some(owner);
        Ok(s)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the folder to `target` in one rename (the caller holds the store lock) and makes
    /// the rename durable.
    pub(crate) fn commit_to(mut self, target: &Path) -> Result<()> {
        let owner = self.path.join(OWNER_FILE);
        fs::remove_file(&owner).map_err(|e| PackageError::io("removing", &owner, e))?;
        sync_dir(&self.path)?;
        fs::rename(&self.path, target).map_err(|e| PackageError::io("moving staged package to", target, e))?;
        self.committed = true;
        if let Some(parent) = target.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// Buffers in flight to the writer thread.
const WRITE_BUFFERS: usize = 4;

/// Writes verified members into a staging folder that it creates once the signatures passed.
pub(crate) struct StagingSink<'a> {
    models_dir: &'a Path,
    /// Called with the manifest once trusted, before anything is written (conflict checks).
    precheck: &'a dyn Fn(&Manifest, &[u8]) -> Result<()>,
    pub(crate) staging: Option<Staging>,
    dirs: BTreeSet<PathBuf>,
    writer: Option<FileWriter>,
}

impl<'a> StagingSink<'a> {
    pub(crate) fn new(models_dir: &'a Path, precheck: &'a dyn Fn(&Manifest, &[u8]) -> Result<()>) -> Self {
        Self { models_dir, precheck, staging: None, dirs: BTreeSet::new(), writer: None }
    }

    fn root(&self) -> Result<&Path> {
        self.staging
            .as_ref()
            .map(Staging::path)
            .ok_or_else(|| PackageError::io("staging", self.models_dir, std::io::Error::other("no staging folder yet")))
    }

    fn writer(&mut self) -> Result<&mut FileWriter> {
        let dir = self.models_dir;
        self.writer.as_mut().ok_or_else(|| PackageError::io("staging", dir, std::io::Error::other("no writer")))
    }

    /// Waits for every file to be written and fsynced, then fsyncs every folder created,
    /// deepest first, and the staging folder.
    pub(crate) fn finish(&mut self) -> Result<()> {
        if let Some(w) = self.writer.take() {
            w.finish()?;
        }
        self.sync_dirs()
    }

    fn sync_dirs(&self) -> Result<()> {
        for d in self.dirs.iter().rev() {
            sync_dir(d)?;
        }
        sync_dir(self.root()?)
    }
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| PackageError::io("creating", path, e))?;
    f.write_all(bytes).map_err(|e| PackageError::io("writing", path, e))?;
    f.sync_all().map_err(|e| PackageError::io("syncing", path, e))
}

impl MemberSink for StagingSink<'_> {
    fn head(&mut self, manifest: &Manifest, manifest_bytes: &[u8], sig_bytes: &[u8]) -> Result<()> {
        (self.precheck)(manifest, manifest_bytes)?;
        let staging = Staging::create(self.models_dir)?;
        write_file(&staging.path().join(MANIFEST_NAME), manifest_bytes)?;
        write_file(&staging.path().join(SIGNATURES_NAME), sig_bytes)?;
        let payload = staging.path().join(PAYLOAD_DIR);
        fs::DirBuilder::new().mode(0o755).create(&payload).map_err(|e| PackageError::io("creating", &payload, e))?;
        self.dirs.insert(payload);
        self.staging = Some(staging);
        self.writer = Some(FileWriter::spawn(WRITE_BUFFERS, crate::verify::CHUNK));
        Ok(())
    }

    fn begin(&mut self, entry: &FileEntry) -> Result<()> {
        let payload = self.root()?.join(PAYLOAD_DIR);
        for a in entry.path.ancestors() {
            let dir = payload.join(a);
            if self.dirs.insert(dir.clone()) {
                fs::DirBuilder::new().mode(0o755).create(&dir).map_err(|e| PackageError::io("creating", &dir, e))?;
            }
        }
        let path = payload.join(entry.path.as_str());
        self.writer()?.create(path)
    }

    fn data(&mut self, chunk: &[u8]) -> Result<()> {
        self.writer()?.write(chunk)
    }

    fn end(&mut self, _: &FileEntry) -> Result<()> {
        self.writer()?.close()
    }
}

impl Drop for StagingSink<'_> {
    fn drop(&mut self) {
        // The writer thread stops before the staging folder (if uncommitted) is removed.
        drop(self.writer.take());
        drop(self.staging.take());
    }
}
