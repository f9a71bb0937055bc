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
    /// Whether `owner` is a read-only private mapping of a file (see [`HostBytes::file_mapping`]).
    file_backed: bool,
}

impl HostBytes {
    /// A view of `owner[start..start + len]`. Returns `None` when the range is out of bounds.
    pub fn new(owner: Arc<dyn AsRef<[u8]> + Send + Sync>, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len)?;
        if end > (*owner).as_ref().len() {
            return None;
        }
        Some(Self { owner, start, len, file_backed: false })
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
        Self::new(owner, start, len).map(|h| Self { file_backed: true, ..h })
    }

    /// The bytes `start..start + len` of this view, sharing its owner (and its file mapping,
    /// if any). Returns `None` when the range is out of bounds.
    pub fn slice(&self, start: usize, len: usize) -> Option<Self> {
        let end = start.checked_add(len)?;
        if end > self.len {
            return None;
        }
        Some(Self { owner: self.owner.clone(), start: self.start + start, len, file_backed: self.file_backed })
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
        Self { owner: Arc::new(owner), start: 0, len, file_backed: false }
    }

    /// Tells the kernel these bytes will not be read soon. For a view of a file mapping the
    /// whole pages inside it leave the process's memory (they read back from the file, unchanged,
    /// if touched again); for any other owner this does nothing. A backend that has copied the
    /// bytes into a layout of its own calls it, so that the copy does not count twice.
    pub fn release_pages(&self) {
        self.release_pages_in(0..self.len);
    }

    /// [`HostBytes::release_pages`] for the bytes `range` of this view only (clamped to it).
    pub fn release_pages_in(&self, range: std::ops::Range<usize>) {
        let end = range.end.min(self.len);
        let start = range.start.min(end);
        #[cfg(unix)]
        if self.file_backed {
            // SAFETY: sysconf has no preconditions.
            let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
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
