//! Memory-mapped model files: the engine's only `unsafe`.

use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use govbox_drivers::HostBytes;
use memmap2::{Mmap, MmapOptions};

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
        // SAFETY: the mapping is read-only and private to this process. Model files are
        // immutable once imported (the package store writes them once and never modifies them
        // in place), so no other writer truncates or changes the bytes while they are mapped.
        // Every read through the mapping is bounds-checked against its length.
        let map = unsafe { MmapOptions::new().populate().map(&file) }
            .map_err(|source| EngineError::Io { path: path.into(), source })?;
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
