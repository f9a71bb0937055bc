//! Memory-mapped model files: the engine's only `unsafe`.
//!
//! A mapping of a file that another process truncates or rewrites while it is mapped turns the
//! next read of a vanished page into `SIGBUS`, which kills the process. Imported packages are
//! immutable (the store writes each file once), so they are mapped. Unsigned development folders
//! (`govboxd --insecure-dev-models`) are files a developer may be rewriting: after
//! [`copy_model_files`]`(true)` every model file is instead read into private anonymous memory
//! (then made read-only), and a file whose size changes while it is read is refused, so an edit
//! can at worst make a load fail, never crash the daemon.

use std::fs::File;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use govbox_drivers::HostBytes;
use memmap2::{Mmap, MmapMut, MmapOptions};

/// Whether [`MappedFile::open`] copies instead of mapping; see the module documentation.
static COPY_MODEL_FILES: AtomicBool = AtomicBool::new(false);

/// From now on, read model files into private memory instead of mapping them (govboxd sets this
/// when it serves unsigned development folders, which may change while served).
pub fn copy_model_files(on: bool) {
    COPY_MODEL_FILES.store(on, Ordering::Release);
}

use crate::{EngineError, Result};

/// A read-only mapping of a whole model file, shared by every tensor that points into it.
#[derive(Clone)]
pub struct MappedFile {
    map: Arc<Mmap>,
    name: String,
}

impl MappedFile {
    /// Maps `path` read-only and faults every page in at once (`MAP_POPULATE` on Linux), as
    /// llama.cpp does: a model's weights are all read by its first requests anyway, so loading
    /// them up front keeps that disk read out of the first answers' latency, and the daemon's
    /// resident size is flat from the start instead of creeping up as rarely used rows (e.g.
    /// embedding rows of tokens not yet seen) are first touched.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| EngineError::Io { path: path.into(), source })?;
        if COPY_MODEL_FILES.load(Ordering::Acquire) {
            return Self::copy(file, path);
        }
        // SAFETY: the mapping is read-only and private to this process. Model files are
        // immutable once imported (the package store writes them once and never modifies them
        // in place), so no other writer truncates or changes the bytes while they are mapped.
        // Files that may change (development folders) are copied instead, above.
        // Every read through the mapping is bounds-checked against its length.
        let map = unsafe { MmapOptions::new().populate().map(&file) }
            .map_err(|source| EngineError::Io { path: path.into(), source })?;
        Ok(Self { map: Arc::new(map), name: path.display().to_string() })
    }

    /// Reads the whole file into an anonymous private mapping, which no other process can
    /// shrink or change, and refuses a file whose size changed while it was read.
    fn copy(mut file: File, path: &Path) -> Result<Self> {
        let io = |source| EngineError::Io { path: path.into(), source };
        let changed = || {
            io(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "the file changed size while it was being read; load it again once it is written",
            ))
        };
        let len = file.metadata().map_err(io)?.len();
        let len = usize::try_from(len).map_err(|_| changed())?;
        if len == 0 {
            return Err(io(std::io::Error::new(std::io::ErrorKind::InvalidData, "the file is empty")));
        }
        let mut anon = MmapMut::map_anon(len).map_err(io)?;
        file.read_exact(&mut anon).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => changed(),
            _ => io(e),
        })?;
        let mut probe = [0u8; 1];
        if file.read(&mut probe).map_err(io)? != 0 || file.metadata().map_err(io)?.len() != len as u64 {
            return Err(changed());
        }
        let map = anon.make_read_only().map_err(io)?;
        Ok(Self { map: Arc::new(map), name: path.display().to_string() })
    }

    /// The file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }

    /// The path, for error messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A zero-copy view of `len` bytes at `start`, or `None` when out of bounds.
    pub fn slice(&self, start: usize, len: usize) -> Option<HostBytes> {
        // SAFETY: the mapping is read-only and private, and its file is not modified while it is
        // mapped (see `open`), which is `file_mapping`'s contract.
        unsafe { HostBytes::file_mapping(self.map.clone(), start, len) }
    }
}

impl std::fmt::Debug for MappedFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MappedFile({}, {} bytes)", self.name, self.map.len())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_copied_file_survives_being_truncated_and_rewritten_while_loaded() {
        let path = std::env::temp_dir().join(format!("govbox-mmap-copy-{}.gguf", std::process::id()));
        let bytes: Vec<u8> = (0..(1u32 << 20)).map(|i| (i % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        copy_model_files(true);
        let f = MappedFile::open(&path).unwrap();
        // A developer rewrites the file in place: a shared mapping would now raise SIGBUS.
        std::fs::OpenOptions::new().write(true).truncate(true).open(&path).unwrap();
        assert_eq!(f.bytes(), &bytes[..]);
        assert_eq!(f.slice(1 << 19, 4).map(|h| h.as_slice().to_vec()), Some(bytes[1 << 19..(1 << 19) + 4].to_vec()));
        std::fs::write(&path, b"").unwrap();
        let e = MappedFile::open(&path).unwrap_err();
        std::fs::remove_file(&path).unwrap();
        assert!(e.to_string().contains("empty"), "{e}");
    }
}
