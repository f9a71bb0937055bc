//! [`SlotSink`]: writes a verified bundle's members into a staging folder under `ROOT/slots`,
//! created only once the signatures and the pre-checks passed. (Its own sink rather than the
//! model store's: a slot's files are few and written directly, each fsynced when complete.)

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::error::{PackageError, Result};
use crate::fsutil::sync_dir;
use crate::manifest::{FileEntry, Manifest};
use crate::path::{MANIFEST_NAME, SIGNATURES_NAME};
use crate::staging::{PAYLOAD_DIR, Staging};
use crate::verify::MemberSink;

/// See the module documentation.
pub(crate) struct SlotSink<'a> {
    slots_dir: &'a Path,
    precheck: &'a dyn Fn(&Manifest) -> Result<()>,
    pub(crate) staging: Option<Staging>,
    dirs: BTreeSet<PathBuf>,
    current: Option<(File, PathBuf)>,
}

impl<'a> SlotSink<'a> {
    pub(crate) fn new(slots_dir: &'a Path, precheck: &'a dyn Fn(&Manifest) -> Result<()>) -> Self {
        Self { slots_dir, precheck, staging: None, dirs: BTreeSet::new(), current: None }
    }

    fn root(&self) -> Result<&Path> {
        self.staging
            .as_ref()
            .map(Staging::path)
            .ok_or_else(|| PackageError::io("staging", self.slots_dir, std::io::Error::other("no staging folder yet")))
    }

    /// fsyncs every folder created, deepest first, then the staging folder.
    pub(crate) fn sync_dirs(&self) -> Result<()> {
        for d in self.dirs.iter().rev() {
            sync_dir(d)?;
        }
        sync_dir(self.root()?)
    }
}

fn create(path: &Path) -> Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| PackageError::io("creating", path, e))
}

fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = create(path)?;
    f.write_all(bytes).map_err(|e| PackageError::io("writing", path, e))?;
    f.sync_all().map_err(|e| PackageError::io("syncing", path, e))
}

impl MemberSink for SlotSink<'_> {
    fn head(&mut self, manifest: &Manifest, manifest_bytes: &[u8], sig_bytes: &[u8]) -> Result<()> {
        (self.precheck)(manifest)?;
        let staging = Staging::create(self.slots_dir)?;
        write_file(&staging.path().join(MANIFEST_NAME), manifest_bytes)?;
        write_file(&staging.path().join(SIGNATURES_NAME), sig_bytes)?;
        let payload = staging.path().join(PAYLOAD_DIR);
        fs::DirBuilder::new().mode(0o755).create(&payload).map_err(|e| PackageError::io("creating", &payload, e))?;
        self.dirs.insert(payload);
        self.staging = Some(staging);
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
        self.current = Some((create(&path)?, path));
        Ok(())
    }

    fn data(&mut self, chunk: &[u8]) -> Result<()> {
        if let Some((f, path)) = &mut self.current {
            f.write_all(chunk).map_err(|e| PackageError::io("writing", path.as_path(), e))?;
        }
        Ok(())
    }

    fn end(&mut self, _: &FileEntry) -> Result<()> {
        if let Some((f, path)) = self.current.take() {
            f.sync_all().map_err(|e| PackageError::io("syncing", &path, e))?;
        }
        Ok(())
    }
}
