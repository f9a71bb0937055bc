//! Tensors: a backend-owned buffer plus a dtype and a shape.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

use crate::DType;

/// Bytes on the host that a backend may keep a reference to instead of copying.
///
/// Weights are memory-mapped by the engine; the CPU backend keeps a `HostBytes` pointing into the
/// mapping, so loading a model costs no copy, except for the weight matrices it re-lays out for
/// its packed kernel (`quant::PackedWeights`), whose file pages it then gives back
/// ([`HostBytes::release_pages`]). Accelerator backends copy them to the device.
#[derive(Clone)]
pub struct HostBytes {
    owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
    start: usize,
    len: usize,
    /// Whether `owner` is a read-only private mapping of a file (see [`HostBytes::file_mapping`])
    /// or a private copy of one whose copied pages may be given back
    /// ([`HostBytes::discardable_copy`]).
    file_backed: bool,
    /// Whether a page given back reads back with the same bytes (a mapping of a file), rather
    /// than as zeros (a discardable copy): only then may a view give back other views' pages.
    reads_back: bool,
}

impl HostBytes {
    /// A view of `owner[start..start + len]`. Returns `None` when the range is out of bounds.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len)?;
        if end > (*owner).as_ref().len() {
            return None;
        }
        Some(Self { owner, start, len, file_backed: false, reads_back: false })
    }

    /// As [`HostBytes::new`], for a view of a file mapping: [`HostBytes::release_pages`] may
    /// then drop its pages from memory.
    ///
    /// # Safety
    ///
    /// `owner` must be a read-only, private memory mapping of a file that nothing modifies while
    /// it is mapped, so that a page dropped from memory reads back from the file with the same
    /// bytes the next time it is touched.
    pub unsafe fn file_mapping(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, start: usize, len: usize) -> Option<Self> {
        Self::new(owner, start, len).map(|h| Self { file_backed: true, reads_back: true, ..h })
    }

    /// As [`HostBytes::file_mapping`], for a view of a file's bytes copied into private anonymous
    /// memory (the engine's copy of a file that may change while it is read): a backend treats
    /// it as a file mapping, copying what it keeps and then giving back the pages of what it
    /// copied ([`HostBytes::release_pages`]), which then read as zeros.
    /// [`HostBytes::release_pages_around`] gives back only the view's own pages here.
    ///
    /// # Safety
    ///
    /// `owner` must be a read-only private anonymous mapping, and no view of its bytes may be
    /// read again once a view holding them has been released.
    pub unsafe fn discardable_copy(
        owner: Arc<dyn AsRef<[u8]> + Send + Sync>,
        start: usize,
        len: usize,
    ) -> Option<Self> {
        Self::new(owner, start, len).map(|h| Self { file_backed: true, ..h })
    }

    /// The bytes `start..start + len` of this view, sharing its owner (and its file mapping,
    /// if any). Returns `None` when the range is out of bounds.
    pub fn slice(&self, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(Self { start: self.start + start, len, ..self.clone() })
    }

    /// Whether this is a view of a file mapping ([`HostBytes::file_mapping`]).
    pub fn is_file_backed(&self) -> bool {
        self.file_backed
    }

    /// Owned bytes.
    pub fn from_vec(v: Vec<u8>) -> Self {
        Self::from_owned(v)
    }

    /// All the bytes of `owner`, which this view then owns.
    pub(crate) fn from_owned(owner: impl AsRef<[u8]> + Send + Sync + 'static) -> Self {
        let len = owner.as_ref().len();
        Self { owner: Arc::new(owner), start: 0, len, file_backed: false, reads_back: false }
    }

    /// Tells the kernel these bytes will not be read soon. For a view of a file mapping the
    /// whole pages inside it leave the process's memory (they read back from the file, unchanged,
    /// if touched again); for any other owner this does nothing. A backend that has copied the
    /// bytes into a layout of its own calls it, so that the copy does not count twice.
    pub fn release_pages(&self) {
        self.release_pages_in(0..self.len);
    }

    /// Maps every page of this view of a file mapping into the process now (Linux's
    /// `MADV_POPULATE_READ`, reading from the file what is not yet in the page cache), for a
    /// backend that keeps the bytes where they are: the model files are mapped without
    /// `MAP_POPULATE`, and without this the process would grow as rarely read parts (an
    /// embedding table's rows of tokens not yet seen) are first touched, long after the load.
    /// For any other owner, or where the kernel refuses it (before Linux 5.14), it does nothing:
    /// the pages are then mapped when first read, as before.
    pub fn populate(&self) {
        #[cfg(target_os = "linux")]
        if self.file_backed {
            let page = page_size();
            if page == 0 || self.len == 0 {
                return;
            }
            let p = self.as_slice().as_ptr() as usize;
            let first = p / page * page;
            // SAFETY: `[first, p + len)` is the pages that hold this view, all inside the
            // mapping (a mapping starts on a page and covers its last page whole).
            // MADV_POPULATE_READ only faults them in for reading, as a read of each would; it
            // changes no byte. A failure leaves them to be faulted in when read.
            unsafe { libc::madvise(first as *mut libc::c_void, p + self.len - first, libc::MADV_POPULATE_READ) };
        }
    }

    /// [`HostBytes::release_pages`] for the bytes `range` of this view only (clamped to it).
    pub fn release_pages_in(&self, range: std::ops::Range<usize>) {
        let end = range.end.min(self.len);
        let start = range.start.min(end);
        #[cfg(unix)]
        if self.file_backed {
            let page = page_size();
            let p = self.as_slice()[start..end].as_ptr() as usize;
            if page == 0 {
                return;
            }
            let first = p.next_multiple_of(page);
            let end = (p + (end - start)) / page * page;
            if end > first {
                // SAFETY: `[first, end)` is whole pages inside `range` of this view of the mapping. By the
                // contract of `file_mapping` the mapping is private, read-only and its file is
                // not modified, so MADV_DONTNEED only drops pages that read back with the same
                // bytes: no reference into the mapping sees a change. A failure leaves the
                // pages where they are, which is harmless.
                unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) };
            }
        }
    }

    /// [`HostBytes::release_pages`] for the whole span of the owner around this view whose ends
    /// are multiples of `align` bytes from the owner's start (the file's first byte, for a
    /// mapping of a whole file), clamped to the owner: other views' pages in that span go too,
    /// and read back unchanged when next touched. For a small view of a file that the page cache
    /// holds in large folios, where reading a few bytes maps a whole folio into the process (2 MiB
    /// on Linux 6.18 with ext4, aligned in the file) and dropping the view's own pages leaves the
    /// rest of the folio mapped. `align` must be a power of two; anything else does nothing. For
    /// a discardable copy ([`HostBytes::discardable_copy`]) it is [`HostBytes::release_pages`].
    pub fn release_pages_around(&self, align: usize) {
        if !self.reads_back {
            return self.release_pages();
        }
        #[cfg(unix)]
        if self.file_backed && align.is_power_of_two() && self.len > 0 {
            let page = page_size();
            let all = (*self.owner).as_ref();
            if page == 0 {
                return;
            }
            let base = all.as_ptr() as usize;
            let first = base + (self.start & !(align - 1)).next_multiple_of(page);
            let end = base + (self.start + self.len).next_multiple_of(align).min(all.len()) / page * page;
            if end > first {
                // SAFETY: `[first, end)` is whole pages inside the owner's mapping, which by the
                // contract of `file_mapping` is private, read-only and of a file nothing
                // modifies: MADV_DONTNEED only drops pages that read back with the same bytes,
                // whichever view reads them next. A failure leaves them mapped, which is harmless.
                unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) };
            }
        }
    }

    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &(*self.owner).as_ref()[self.start..self.start + self.len]
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl fmt::Debug for HostBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HostBytes({} bytes)", self.len)
    }
}

/// Device memory owned by one backend. Backends downcast through [`Buffer::as_any`].
pub trait Buffer: Send + Sync + fmt::Debug {
    /// For the owning backend to downcast.
    fn as_any(&self) -> &dyn Any;
    /// For the owning backend to write into a buffer that only one tensor holds
    /// ([`Tensor::buffer_mut`]); `None` where the backend never does.
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        None
    }
    /// Size in bytes.
    fn size_bytes(&self) -> usize;
}

/// A tensor: shared ownership of a backend buffer, a dtype and a row-major shape.
///
/// Cloning is cheap (the buffer is reference-counted). Tensors are immutable once made: every op
/// returns a new tensor, except the KV-cache writes, which go through [`crate::KvCache`].
#[derive(Clone, Debug)]
pub struct Tensor {
    buf: Arc<dyn Buffer>,
    dtype: DType,
    shape: Vec<usize>,
}

impl Tensor {
    /// Wraps a backend buffer. Backends call this; the engine does not.
    pub fn from_buffer(buf: Arc<dyn Buffer>, dtype: DType, shape: Vec<usize>) -> Self {
        Self { buf, dtype, shape }
    }

    /// The buffer, for the owning backend to downcast.
    pub fn buffer(&self) -> &dyn Buffer {
        self.buf.as_ref()
    }

    /// The buffer, for the owning backend to write into, when no other tensor shares it.
    pub fn buffer_mut(&mut self) -> Option<&mut (dyn Buffer + 'static)> {
        Arc::get_mut(&mut self.buf)
    }

    /// Storage type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Row-major shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }

    /// The last dimension (1 for a scalar).
    pub fn last_dim(&self) -> usize {
        self.shape.last().copied().unwrap_or(1)
    }

    /// Number of rows when seen as a 2-D `[rows, last_dim]` matrix.
    pub fn rows(&self) -> usize {
        self.elem_count().checked_div(self.last_dim()).unwrap_or(0)
    }

    /// The same buffer seen with another shape of equal element count.
    pub fn reshape(&self, shape: &[usize]) -> Option<Tensor> {
        if shape.iter().product::<usize>() != self.elem_count() {
            return None;
        }
        Some(Self { buf: self.buf.clone(), dtype: self.dtype, shape: shape.to_vec() })
    }
}

/// The system's page size in bytes, 0 when it cannot be read (callers then leave pages alone).
#[cfg(unix)]
fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0)
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The resident kB of this process's mapping that starts at `base` (its `Rss:` in
    /// /proc/self/smaps): pages of the file mapped into the process, not the page cache.
    fn mapped_kb(base: usize) -> u64 {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines().skip_while(|l| !l.starts_with(&format!("{base:x}-")));
        assert!(lines.next().is_some(), "no mapping at {base:x} in /proc/self/smaps");
        let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
        rss.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// `populate` maps a file view's pages into the process at once (the model files are mapped
    /// without `MAP_POPULATE`), and `release_pages` takes them out again.
    #[test]
    fn populate_maps_a_views_pages_and_release_unmaps_them() {
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &vec![7u8; 8 << 20]).unwrap();
        // SAFETY: a read-only mapping of the test's own temporary file, which nothing writes
        // while it is mapped.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.unwrap());
        let base = map.as_ptr() as usize;
        // SAFETY: as above: a private read-only mapping of a file that is not modified.
        let view = unsafe { HostBytes::file_mapping(map, 1 << 20, 4 << 20) }.unwrap();
        assert_eq!(mapped_kb(base), 0, "a fresh mapping has no page mapped yet");
        view.populate();
        // The page cache may hold the file in large folios, which are mapped whole: up to the
        // 2 MiB around each end of the view come with it.
        let kb = mapped_kb(base);
        assert!((4096..=8192).contains(&kb), "populate mapped {kb} kB of a 4096 kB view");
        // Released: at least the view's pages go (a huge mapping of a folio at an end goes whole).
        view.release_pages();
        let left = mapped_kb(base);
        assert!(left <= kb - 4096, "release_pages left {left} of {kb} kB mapped");
        // Owned bytes: nothing to map, and nothing happens.
        HostBytes::from_vec(vec![1; 1 << 20]).populate();
    }

    /// `release_pages_around` unmaps the whole aligned span of the file around a small view,
    /// its neighbours' pages included, clamped to the file's end, and nothing outside it; the
    /// bytes read back unchanged.
    #[test]
    fn release_around_unmaps_the_aligned_span_around_a_view() {
        const MIB: usize = 1 << 20;
        let len = 8 * MIB + 12 * 1024;
        let mut f = tempfile::tempfile().unwrap();
        std::io::Write::write_all(&mut f, &vec![7u8; len]).unwrap();
        // SAFETY: a read-only mapping of the test's own temporary file, which nothing writes
        // while it is mapped.
        let map = Arc::new(unsafe { memmap2::Mmap::map(&f) }.unwrap());
        let base = map.as_ptr() as usize;
        // SAFETY: as above: a private read-only mapping of a file that is not modified.
        let view = |start, n| unsafe { HostBytes::file_mapping(map.clone(), start, n) }.unwrap();
        let (all, norm, tail) = (view(0, len), view(3 * MIB + 100, 6000), view(8 * MIB + 8 * 1024 + 10, 100));
        all.populate();
        let kb = mapped_kb(base);
        assert_eq!(kb, len as u64 / 1024, "populate maps the whole file");
        // A 6000-byte view at 3 MiB: the span is 2..4 MiB, all 2,048 kB of it.
        norm.release_pages_around(2 * MIB);
        assert_eq!(mapped_kb(base), kb - 2048, "the 2 MiB around the view, and no more");
        // At the end of the file the span stops there: 8 MiB to the end, 12 kB.
        tail.release_pages_around(2 * MIB);
        assert_eq!(mapped_kb(base), kb - 2048 - 12);
        // Not a power of two: nothing happens.
        all.release_pages_around(3 * MIB);
        assert_eq!(mapped_kb(base), kb - 2048 - 12);
        assert!(all.as_slice().iter().all(|&b| b == 7), "the bytes read back unchanged");
    }
}
