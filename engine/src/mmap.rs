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
    /// Whether `map` is a private copy of the file ([`copy_model_files`]) rather than a mapping
    /// of it: a page given back then reads as zeros, not from the file.
    copied: bool,
}

impl MappedFile {
    /// Maps `path` read-only and starts reading the whole file into the page cache on a thread
    /// of its own, front to back (see `read_ahead`), so that the disk read overlaps the load:
    /// the loader packs the first tensors while later ones are still being read. Until December
    /// 2026 the mapping was made with `MAP_POPULATE`, which mapped every page of the file into
    /// the process before the first tensor was packed: loading the 7B Q4_K_M benchmark file
    /// (4.7 GB, `govbox model bench -p 0 -n 0`, 2 threads) took 8.2-12.2 s from a cold page cache
    /// and 3.8-4.1 s from a warm one that way, 3.7-5.3 s and 1.7-1.8 s with read-ahead (in
    /// requests of 32 MiB then, of which the kernel read only part: see `READ_AHEAD_STEP`), most
    /// of the difference in the kernel (mapping, then unmapping, pages already packed). Pages are now
    /// mapped as the loader reads them; a backend that keeps a tensor in the mapping instead of
    /// copying it maps that tensor's pages at once (`HostBytes::populate`), so that a daemon's
    /// resident size is still flat from the start.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|source| EngineError::Io { path: path.into(), source })?;
        if COPY_MODEL_FILES.load(Ordering::Acquire) {
            return Self::copy(file, path);
        }
        Self::map(&file, path)
    }

    /// The mapping half of [`Self::open`].
    fn map(file: &File, path: &Path) -> Result<Self> {
        // SAFETY: the mapping is read-only and private to this process. Model files are
        // immutable once imported (the package store writes them once and never modifies them
        // in place), so no other writer truncates or changes the bytes while they are mapped.
        // Files that may change (development folders) are copied instead (`open`).
        // Every read through the mapping is bounds-checked against its length.
        let map =
            unsafe { MmapOptions::new().map(file) }.map_err(|source| EngineError::Io { path: path.into(), source })?;
        let map = Arc::new(map);
        read_ahead(&map);
        Ok(Self { map, name: path.display().to_string(), copied: false })
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
        Ok(Self { map: Arc::new(map), name: path.display().to_string(), copied: true })
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
        if self.copied {
            // SAFETY: the copy is a private anonymous mapping made read-only (`copy`), and a
            // backend gives back only pages it has copied and does not read again (each tensor
            // is uploaded once; a tied head shares the embedding's upload).
            return unsafe { HostBytes::discardable_copy(self.map.clone(), start, len) };
        }
        // SAFETY: the mapping is read-only and private, and its file is not modified while it is
        // mapped (see `open`), which is `file_mapping`'s contract.
        unsafe { HostBytes::file_mapping(self.map.clone(), start, len) }
    }
}

/// How much of the file each read-ahead request asks for. The kernel reads at most its
/// read-ahead size per request (the larger of the device's `read_ahead_kb` and its largest I/O,
/// 128 KiB at least on common devices) and drops the rest: with 32 MiB requests only the first
/// 8 MiB of each were read on a device with `read_ahead_kb` = 8192. Requests of 128 KiB and of
/// 1 MiB loaded the 7B Q4_K_M file from a cold page cache equally fast (4.6-4.9 s, against
/// 5.7-6.9 s with 32 MiB and 6.3-10.1 s with none, 3 runs each, alternating).
const READ_AHEAD_STEP: usize = 128 << 10;

/// Asks the kernel to read `map`'s file into the page cache (`madvise(MADV_WILLNEED)`, which
/// for a file mapping starts the reads without mapping any page into the process), a step at a
/// time from the front, on a thread of its own that stops at the end of the file or as soon as
/// the mapping has been dropped (it holds only a weak reference between steps, so it never keeps
/// a mapping alive). Each request returns once its reads are queued, so the thread runs ahead
/// of the disk, and the loader's page faults then wait, if at all, for reads already under way.
/// Nothing depends on it: without it (a thread that cannot start, a kernel that ignores the
/// advice) the loader's own page faults read the file.
fn read_ahead(map: &Arc<Mmap>) {
    let len = map.len();
    let weak = Arc::downgrade(map);
    let spawned = std::thread::Builder::new().name("govbox-readahead".into()).spawn(move || {
        let mut at = 0;
        while at < len {
            let Some(map) = weak.upgrade() else { return };
            let n = READ_AHEAD_STEP.min(len - at);
            if map.advise_range(memmap2::Advice::WillNeed, at, n).is_err() {
                return;
            }
            at += n;
        }
    });
    // Not joined: it ends by itself, and a thread that could not start only loses the head start.
    drop(spawned);
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

    /// How many of the pages of `f` (of `len` bytes) are in the page cache (`mincore` over a
    /// mapping of it, which maps no page itself).
    #[cfg(target_os = "linux")]
    fn cached_pages(f: &File, len: usize) -> usize {
        // SAFETY: a read-only mapping of the test's own temporary file, which nothing writes
        // while it is mapped; its bytes are never read (only `mincore` looks at it).
        let probe = unsafe { Mmap::map(f) }.unwrap();
        let mut vec = vec![0u8; len.div_ceil(4096)];
        // SAFETY: `probe` maps `len` bytes; `vec` has one byte per 4 KiB page of them.
        let rc = unsafe { libc::mincore(probe.as_ptr() as *mut libc::c_void, len, vec.as_mut_ptr()) };
        assert_eq!(rc, 0, "mincore failed");
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    /// A mapped model file is read into the page cache in the background: without that, the
    /// loader's page faults would read it a piece at a time, only as it gets to each tensor.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_mapped_file_is_read_ahead_into_the_page_cache() {
        use std::io::Write;
        use std::os::fd::AsRawFd;
        let len = 32 << 20;
        let mut f = tempfile::NamedTempFile::new_in(std::env::temp_dir()).unwrap();
        f.write_all(&vec![3u8; len]).unwrap();
        f.as_file().sync_all().unwrap();
        // SAFETY: advice on a file descriptor this test owns; it changes no data.
        unsafe { libc::posix_fadvise(f.as_file().as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let pages = len / 4096;
        if cached_pages(f.as_file(), len) > pages / 2 {
            // A file system whose pages cannot be dropped (tmpfs): nothing to see here.
            eprintln!("the temporary folder keeps files in memory; read-ahead not observable");
            return;
        }
        let m = MappedFile::map(f.as_file(), f.path()).unwrap();
        let start = std::time::Instant::now();
        let mut cached = 0;
        while start.elapsed() < std::time::Duration::from_secs(20) {
            cached = cached_pages(f.as_file(), len);
            if cached == pages {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(cached, pages, "only {cached} of {pages} pages were read ahead");
        assert_eq!(m.bytes()[len - 1], 3);
    }

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
