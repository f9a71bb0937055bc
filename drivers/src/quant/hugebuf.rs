//! Zeroed byte buffers for the CPU backend's weights (packed, or copied out of the file in their
//! own format), backed by transparent huge pages from their first byte to their last.
//!
//! A decode step streams every weight matrix once, so what each 4 KiB page costs in TLB misses
//! is paid on every byte of the model. On a virtual machine a TLB miss walks two page tables
//! (the guest's and the host's), and it shows: on the 2-core Firecracker VM the benchmarks run
//! on, `bench/readbw.c` read a 1.6 GB buffer at 20.5 GB/s from 4 KiB pages and 28.5 GB/s from
//! 2 MiB pages with one thread, 27.4–29.9 against 30.7–32.8 GB/s with two.
//!
//! A `Vec<u8>` from malloc gets huge pages only on the 2 MiB-aligned middle of its own mapping,
//! and none where malloc hands back heap memory that an earlier, freed allocation had already
//! faulted in as small pages (`calloc` clears it by writing). On a 1.5B Q8_0 model that left
//! 35 % of the packed weights in small pages (`AnonHugePages` against `Anonymous` in
//! `/proc/PID/smaps_rollup` while decoding). So [`HugeBuf`]s are carved, end to end at
//! cache-line offsets, out of regions of their own: anonymous `mmap`s of [`CHUNK`] bytes (or
//! more for a larger buffer), aligned to 2 MiB and advised `MADV_HUGEPAGE` before any page is
//! touched. A buffer that does not fit in what is left of the current region starts a new one;
//! the rest stays untouched address space, so no buffer rounds up to a whole huge page and
//! resident memory grows only by the part of a huge page past a region's last buffer. A region
//! is unmapped when its last buffer is dropped, and a dropped buffer gives back at once the huge
//! pages that lie wholly inside it (`MADV_DONTNEED`), so that a model unloaded beside one still
//! loaded leaves only the pages it shared with it.
//!
//! Where `mmap` fails, and off Linux, a buffer is a plain zeroed `Vec<u8>`.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, Weak};

/// The huge page size this aims for (x86-64's 2 MiB).
const HUGE: usize = 2 << 20;
/// Bytes of a region, unless one buffer needs more.
const CHUNK: usize = 256 << 20;
/// Alignment of each buffer inside a shared region (a cache line: the kernels' records start
/// on one).
const ALIGN: usize = 64;

/// An anonymous mapping, unmapped on drop.
#[derive(Debug)]
struct Region {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: a `Region` is only an address range that this process owns; it is read and written
// through the `HugeBuf`s carved from it, whose ranges are disjoint (see `HugeBuf`).
unsafe impl Send for Region {}
// SAFETY: as above; `Region` itself has no interior state that `&Region` could change.
unsafe impl Sync for Region {}

impl Region {
    /// A zeroed mapping of `len` bytes (a multiple of [`HUGE`]) starting on a [`HUGE`]
    /// boundary, advised to be backed by huge pages. `None` where the kernel refuses.
    #[cfg(target_os = "linux")]
    fn map(len: usize) -> Option<Self> {
        debug_assert!(len.is_multiple_of(HUGE));
        let over = len.checked_add(HUGE)?;
        // SAFETY: a fresh private anonymous mapping; no existing memory is named or changed.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                over,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return None;
        }
        let start = p as usize;
        let aligned = start.next_multiple_of(HUGE);
        let (head, tail) = (aligned - start, start + over - (aligned + len));
        // SAFETY: the head `[start, aligned)` and the tail after `aligned + len` lie inside the
        // mapping just made, which nothing else knows of yet; unmapping them keeps `[aligned,
        // aligned + len)`. MADV_HUGEPAGE changes only how those pages will be backed.
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((aligned + len) as *mut libc::c_void, tail);
            }
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        Some(Self { ptr: aligned as *mut u8, len })
    }

    #[cfg(not(target_os = "linux"))]
    fn map(_len: usize) -> Option<Self> {
        None
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: `[ptr, ptr + len)` is the mapping `map` kept, and every buffer carved from it
        // holds an `Arc` of this region, so none is left to use it.
        unsafe {
            libc::munmap(self.ptr.cast(), self.len);
        }
    }
}

/// The region that buffers are being carved from, and its first free byte. Held weakly, so that
/// a region whose buffers have all been dropped is unmapped rather than kept for the next load.
static CURRENT: Mutex<Option<(Weak<Region>, usize)>> = Mutex::new(None);

/// A zeroed, fixed-size byte buffer (see the module documentation).
pub struct HugeBuf {
    inner: Inner,
}

enum Inner {
    /// Bytes `[off, off + len)` of `region`, which no other buffer overlaps.
    Region { region: Arc<Region>, off: usize, len: usize },
    /// Where no region could be mapped.
    Vec(Vec<u8>),
}

impl HugeBuf {
    /// A buffer of `len` zero bytes.
    pub fn zeroed(len: usize) -> Self {
        let inner = Self::carve(len)
            .map_or_else(|| Inner::Vec(vec![0; len]), |(region, off)| Inner::Region { region, off, len });
        Self { inner }
    }

    /// A region and an offset in it with `len` free bytes, never handed out before: the next
    /// bytes of the current region where they fit, else the start of a new one (of [`CHUNK`]
    /// bytes, or `len` rounded up to whole huge pages when that is more, whose rest later
    /// buffers then fill).
    fn carve(len: usize) -> Option<(Arc<Region>, usize)> {
        if len == 0 {
            return None;
        }
        let mut current = CURRENT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((weak, used)) = current.as_mut()
            && let Some(region) = weak.upgrade()
            && let Some(end) = used.checked_add(len)
            && end <= region.len
        {
            let off = *used;
            *used = end.next_multiple_of(ALIGN);
            return Some((region, off));
        }
        let region = Arc::new(Region::map(len.checked_next_multiple_of(HUGE)?.max(CHUNK))?);
        *current = Some((Arc::downgrade(&region), len.next_multiple_of(ALIGN)));
        Some((region, 0))
    }

    /// Whether this buffer lies in a mapping advised for huge pages (false where it fell back
    /// to a `Vec`).
    #[cfg(test)]
    fn huge(&self) -> bool {
        matches!(self.inner, Inner::Region { .. })
    }
}

impl Deref for HugeBuf {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match &self.inner {
            // SAFETY: `[off, off + len)` lies inside the region (`carve` checked it), which the
            // `Arc` keeps mapped, and only this buffer ever hands out references into it.
            Inner::Region { region, off, len } => unsafe { std::slice::from_raw_parts(region.ptr.add(*off), *len) },
            Inner::Vec(v) => v,
        }
    }
}

impl DerefMut for HugeBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        match &mut self.inner {
            // SAFETY: as in `deref`; `&mut self` makes this the only reference to the range,
            // because no other buffer's range overlaps it.
            Inner::Region { region, off, len } => unsafe { std::slice::from_raw_parts_mut(region.ptr.add(*off), *len) },
            Inner::Vec(v) => v,
        }
    }
}

impl Drop for HugeBuf {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if let Inner::Region { region, off, len } = &self.inner {
            let start = region.ptr as usize + off;
            let (first, end) = (start.next_multiple_of(HUGE), (start + len) / HUGE * HUGE);
            if end > first && Arc::strong_count(region) > 1 {
                // SAFETY: `[first, end)` lies inside this buffer's own range, which no other
                // buffer overlaps and nothing reads after this drop; MADV_DONTNEED drops those
                // pages, and the range would read as zeros if it were ever faulted in again.
                unsafe { libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_DONTNEED) };
            }
        }
    }
}

impl AsRef<[u8]> for HugeBuf {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl std::fmt::Debug for HugeBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HugeBuf({} bytes{})",
            self.len(),
            if matches!(self.inner, Inner::Region { .. }) { "" } else { ", heap" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buffers come zeroed, keep what is written to them apart from their neighbours, start on
    /// a cache line, and one larger than a region starts a region of its own, on a huge page.
    #[test]
    fn buffers_are_zeroed_disjoint_and_aligned() {
        let sizes = [1, 100, 4096, 400_000, 3 << 20, CHUNK + 5, 7];
        let mut bufs: Vec<HugeBuf> = sizes.iter().map(|&n| HugeBuf::zeroed(n)).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            assert_eq!(b.len(), sizes[i]);
            assert!(b.iter().all(|&x| x == 0), "buffer {i} of {} bytes is not zeroed", sizes[i]);
            b.fill(i as u8 + 1);
        }
        for (i, b) in bufs.iter().enumerate() {
            assert!(b.iter().all(|&x| x == i as u8 + 1), "buffer {i} was overwritten by another");
            if cfg!(target_os = "linux") {
                assert!(b.huge(), "buffer {i} fell back to the heap");
                assert_eq!(b.as_ptr() as usize % ALIGN, 0, "buffer {i} is not cache-line aligned");
                if sizes[i] > CHUNK {
                    assert_eq!(b.as_ptr() as usize % HUGE, 0, "buffer {i} does not start on a huge page");
                }
            }
        }
        // A buffer dropped beside live ones in the same region leaves them as they were.
        bufs.remove(4);
        let again = HugeBuf::zeroed(3 << 20);
        assert!(again.iter().all(|&x| x == 0), "a new buffer is not zeroed");
        for (b, fill) in bufs.iter().zip([1u8, 2, 3, 4, 6, 7]) {
            assert!(b.iter().all(|&x| x == fill), "a live buffer changed when its neighbour was dropped");
        }
        assert_eq!(HugeBuf::zeroed(0).len(), 0);
    }
}
