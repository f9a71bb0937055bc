//! The simulator's global state: initialisation, per-thread device binding, the device-memory
//! registry with pending-access tracking, streams and opaque handles.

use std::alloc::Layout;
use std::cell::Cell;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Mutex, MutexGuard};

use crate::error::codes::*;
use crate::error::{SimResult, bail};
use crate::kernels::Kernel;
use crate::view::View;

/// Alignment of simulated device allocations.
pub(crate) const ALLOC_ALIGN: usize = 64;
/// First opaque handle address (tensors, scalars, executors, streams...). Handles are numbers,
/// never dereferenced, and never reused.
const HANDLE_BASE: usize = 0x5e00_0000_0000;
/// Keys of the per-device default (NULL) streams.
const DEFAULT_STREAM_BASE: usize = 0x5d00_0000_0000;
/// How many freed ranges are remembered to name use-after-free.
const FREED_MEMORY: usize = 4096;

/// One queued or in-flight access to device memory.
#[derive(Clone, Debug)]
pub(crate) struct Pending {
    pub stream: usize,
    pub seq: u64,
    pub lo: usize,
    pub hi: usize,
    pub write: bool,
}

/// A simulated device allocation (a real heap allocation).
pub(crate) struct Alloc {
    pub id: u64,
    pub size: usize,
    pub device: i32,
    pub pending: Vec<Pending>,
}

/// A built aclnn op waiting for its launch.
pub(crate) struct Executor {
    /// The launch function that must run it, e.g. "aclnnMm".
    pub launch: &'static str,
    pub workspace: u64,
    pub device: i32,
    pub kernel: Kernel,
}

/// Work queued on a stream.
pub(crate) enum Work {
    /// memcpy of `count` bytes (addresses are device or host memory as validated at enqueue).
    Copy { dst: usize, src: usize, count: usize },
    /// memset of `count` bytes.
    Set { dst: usize, value: u8, count: usize },
    /// An aclnn op; `workspace` is scribbled over as a real kernel would.
    Kernel { exec: Box<Executor>, workspace: usize, workspace_len: usize },
}

pub(crate) struct Queued {
    pub seq: u64,
    pub work: Work,
}

pub(crate) struct Stream {
    pub device: i32,
    pub queue: Vec<Queued>,
    /// Synchronisations of this stream running their work outside the lock.
    pub busy: usize,
}

/// What an opaque handle refers to.
pub(crate) enum Handle {
    Tensor(View),
    Scalar {
        value: f64,
    },
    IntArray(Vec<i64>),
    TensorList(Vec<usize>),
    Executor(Box<Executor>),
    /// An executor already launched (kept to name a reuse).
    UsedExecutor(&'static str),
}

impl Handle {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Handle::Tensor(_) => "an aclTensor",
            Handle::Scalar { .. } => "an aclScalar",
            Handle::IntArray(_) => "an aclIntArray",
            Handle::TensorList(_) => "an aclTensorList",
            Handle::Executor(_) | Handle::UsedExecutor(_) => "an aclOpExecutor",
        }
    }
}

pub(crate) struct State {
    pub initialized: bool,
    /// Bumped by every aclInit; thread bindings from older generations are void.
    pub generation: u64,
    pub devices: u32,
    pub hbm_bytes: usize,
    pub poison: bool,
    pub allocs: BTreeMap<usize, Alloc>,
    pub freed: VecDeque<(usize, usize)>,
    pub handles: BTreeMap<usize, Handle>,
    pub streams: BTreeMap<usize, Stream>,
    pub next_id: u64,
    pub next_seq: u64,
    /// Synchronisations running their work outside the lock.
    pub running: usize,
}

static STATE: Mutex<State> = Mutex::new(State {
    initialized: false,
    generation: 0,
    devices: 1,
    hbm_bytes: 0,
    poison: true,
    allocs: BTreeMap::new(),
    freed: VecDeque::new(),
    handles: BTreeMap::new(),
    streams: BTreeMap::new(),
    next_id: 1,
    next_seq: 1,
    running: 0,
});

thread_local! {
    /// (generation, device) of this thread's aclrtSetDevice; generation 0 = never.
    static BOUND: Cell<(u64, i32)> = const { Cell::new((0, 0)) };
}

/// The global state (a poisoned lock is taken over: every mutation leaves it consistent).
pub(crate) fn lock() -> MutexGuard<'static, State> {
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

pub(crate) fn env_devices() -> u32 {
    std::env::var("GOVBOX_ASCEND_SIM_DEVICES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(1)
}

pub(crate) fn env_hbm_bytes() -> usize {
    let mb: usize = std::env::var("GOVBOX_ASCEND_SIM_HBM_MB").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(65536);
    mb.saturating_mul(1 << 20)
}

pub(crate) fn hex(a: usize) -> String {
    format!("{a:#x}")
}

impl State {
    pub(crate) fn require_init(&self) -> SimResult<()> {
        if !self.initialized {
            bail!(
                ACL_ERROR_UNINITIALIZE,
                "aclInit has not been called (or aclFinalize ended the session): call aclInit first"
            );
        }
        Ok(())
    }

    pub(crate) fn bind(&self, device: i32) {
        BOUND.with(|b| b.set((self.generation, device)));
    }

    pub(crate) fn unbind(&self) {
        BOUND.with(|b| b.set((0, 0)));
    }

    /// The calling thread's device (aclInit done and aclrtSetDevice called on this thread).
    pub(crate) fn bound_device(&self) -> SimResult<i32> {
        self.require_init()?;
        let (generation, dev) = BOUND.with(|b| b.get());
        if generation != self.generation {
            bail!(
                ACL_ERROR_RT_CONTEXT_NULL,
                "no device bound to this thread: call aclrtSetDevice on each thread (device binding is per thread)"
            );
        }
        Ok(dev)
    }

    pub(crate) fn new_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    pub(crate) fn new_handle(&mut self, h: Handle) -> usize {
        let addr = HANDLE_BASE + self.new_id() as usize * 16;
        self.handles.insert(addr, h);
        addr
    }

    pub(crate) fn new_stream_handle(&mut self, device: i32) -> usize {
        let addr = HANDLE_BASE + self.new_id() as usize * 16;
        self.streams.insert(addr, Stream { device, queue: Vec::new(), busy: 0 });
        addr
    }

    pub(crate) fn new_seq(&mut self) -> u64 {
        let s = self.next_seq;
        self.next_seq += 1;
        s
    }

    /// Key of the stream `handle` (NULL = default stream of `dev`), checked to belong to `dev`.
    pub(crate) fn stream_key(&mut self, handle: usize, dev: i32) -> SimResult<usize> {
        if handle == 0 {
            let key = DEFAULT_STREAM_BASE + dev as usize * 16;
            self.streams.entry(key).or_insert_with(|| Stream { device: dev, queue: Vec::new(), busy: 0 });
            return Ok(key);
        }
        match self.streams.get(&handle) {
            None => bail!(
                ACL_ERROR_RT_PARAM_INVALID,
                "stream {} is not a live stream (destroyed, or not created by aclrtCreateStream)",
                hex(handle)
            ),
            Some(s) if s.device != dev => bail!(
                ACL_ERROR_RT_PARAM_INVALID,
                "stream {} belongs to device {} but this thread is bound to device {dev}",
                hex(handle),
                s.device
            ),
            Some(_) => Ok(handle),
        }
    }

    pub(crate) fn stream_name(key: usize) -> String {
        if (DEFAULT_STREAM_BASE..HANDLE_BASE).contains(&key) {
            format!("the default (NULL) stream of device {}", (key - DEFAULT_STREAM_BASE) / 16)
        } else {
            hex(key)
        }
    }

    /// The live allocation containing `addr` (start, alloc).
    pub(crate) fn find_alloc(&self, addr: usize) -> Option<(usize, &Alloc)> {
        let (&start, a) = self.allocs.range(..=addr).next_back()?;
        (addr < start + a.size).then_some((start, a))
    }

    fn was_freed(&self, addr: usize) -> bool {
        self.freed.iter().any(|&(s, n)| addr >= s && addr < s + n.max(1))
    }

    /// Checks that [addr, addr+len) is device memory of `dev`; returns the allocation start.
    pub(crate) fn device_range(&self, addr: usize, len: usize, what: &str, dev: i32) -> SimResult<usize> {
        if addr == 0 {
            bail!(ACL_ERROR_INVALID_PARAM, "{what} is NULL");
        }
        let Some((start, a)) = self.find_alloc(addr) else {
            if self.was_freed(addr) {
                bail!(ACL_ERROR_INVALID_PARAM, "{what} {} was freed by aclrtFree (use after free)", hex(addr));
            }
            bail!(
                ACL_ERROR_INVALID_PARAM,
                "{what} {} is not device memory (host pointer passed as a device pointer?)",
                hex(addr)
            );
        };
        if a.device != dev {
            bail!(
                ACL_ERROR_INVALID_PARAM,
                "{what} {} is memory of device {} but this thread is bound to device {dev}",
                hex(addr),
                a.device
            );
        }
        if len > start + a.size - addr {
            bail!(
                ACL_ERROR_INVALID_PARAM,
                "{what} {} + {len} bytes runs past the end of its allocation ({} bytes at {}, {} bytes left)",
                hex(addr),
                a.size,
                hex(start),
                start + a.size - addr
            );
        }
        Ok(start)
    }

    /// Checks that [addr, addr+len) is host memory (not inside any device allocation).
    pub(crate) fn host_range(&self, addr: usize, len: usize, what: &str) -> SimResult<()> {
        if addr == 0 {
            bail!(ACL_ERROR_INVALID_PARAM, "{what} is NULL");
        }
        let end = addr.saturating_add(len.max(1));
        if let Some((&start, a)) = self.allocs.range(..end).next_back()
            && start + a.size > addr
        {
            bail!(
                ACL_ERROR_INVALID_PARAM,
                "{what} {} is device memory (allocation of {} bytes at {}) but a host pointer is expected: check the memcpy kind",
                hex(addr),
                a.size,
                hex(start)
            );
        }
        Ok(())
    }

    /// Checks that a view still lies in its live allocation on device `dev`.
    pub(crate) fn check_view(&self, v: &View, what: &str, dev: i32) -> SimResult<()> {
        let Some((lo, hi)) = v.byte_range() else { return Ok(()) };
        let start = self.device_range(lo, hi - lo, what, dev).map_err(|mut e| {
            e.code = ACLNN_ERR_PARAM_INVALID;
            e.msg = format!("tensor {} {}: {}", hex(v.handle), v.shape(), e.msg);
            e
        })?;
        let a = &self.allocs[&start];
        if a.id != v.alloc_id {
            bail!(
                ACLNN_ERR_PARAM_INVALID,
                "{what} (tensor {}): its device memory was freed by aclrtFree after aclCreateTensor (use after free)",
                hex(v.handle)
            );
        }
        Ok(())
    }

    /// An error if [lo,hi) has pending accesses that conflict with a new access: a write conflicts
    /// with any pending access, a read with pending writes. `stream` = Some(s) ignores s's own
    /// pending work (same-stream work is ordered).
    pub(crate) fn check_pending(
        &self,
        lo: usize,
        hi: usize,
        write: bool,
        stream: Option<usize>,
        what: &str,
    ) -> SimResult<()> {
        let Some((start, a)) = self.find_alloc(lo) else { return Ok(()) };
        for p in &a.pending {
            if Some(p.stream) == stream || !(write || p.write) || p.hi <= lo || p.lo >= hi {
                continue;
            }
            let access = if write { "written" } else { "read" };
            let theirs = if p.write { "writes" } else { "reads" };
            let hint = match stream {
                None => "call aclrtSynchronizeStream on that stream first".to_string(),
                Some(s) => format!(
                    "streams are not ordered with each other: synchronise that stream before queuing this work on {}",
                    State::stream_name(s)
                ),
            };
            bail!(
                ACL_ERROR_RT_DRV_INTERNAL_ERROR,
                "{what} {} ({} bytes into allocation {}) {access} before aclrtSynchronizeStream: pending work on stream {} {theirs} it; {hint}",
                hex(lo),
                lo - start,
                hex(start),
                State::stream_name(p.stream)
            );
        }
        Ok(())
    }

    pub(crate) fn add_pending(&mut self, stream: usize, seq: u64, lo: usize, hi: usize, write: bool) {
        let start = self.find_alloc(lo).map(|(s, _)| s);
        if let Some(a) = start.and_then(|s| self.allocs.get_mut(&s)) {
            a.pending.push(Pending { stream, seq, lo, hi, write });
        }
    }

    /// Bytes allocated on `dev`.
    pub(crate) fn allocated(&self, dev: i32) -> usize {
        self.allocs.values().filter(|a| a.device == dev).map(|a| a.size).sum()
    }

    /// Allocates `size` bytes on `dev` (a real heap allocation), returns its address.
    pub(crate) fn malloc(&mut self, size: usize, dev: i32) -> SimResult<usize> {
        if size == 0 {
            bail!(ACL_ERROR_INVALID_PARAM, "size is 0 (device allocations must be at least 1 byte)");
        }
        let used = self.allocated(dev);
        if size > self.hbm_bytes.saturating_sub(used) {
            bail!(
                ACL_ERROR_RT_MEMORY_ALLOCATION,
                "out of device memory on device {dev}: {size} bytes requested, {} of {} bytes free (simulated HBM, GOVBOX_ASCEND_SIM_HBM_MB)",
                self.hbm_bytes.saturating_sub(used),
                self.hbm_bytes
            );
        }
        let Ok(layout) = Layout::from_size_align(size, ALLOC_ALIGN) else {
            bail!(ACL_ERROR_INVALID_PARAM, "size {size} is too large");
        };
        // SAFETY: layout has a non-zero size (checked above).
        let p = unsafe { std::alloc::alloc(layout) };
        if p.is_null() {
            bail!(ACL_ERROR_RT_MEMORY_ALLOCATION, "the host could not back a simulated allocation of {size} bytes");
        }
        let fill = if self.poison { 0xFF } else { 0 };
        // SAFETY: p points to `size` freshly allocated writable bytes.
        unsafe { std::ptr::write_bytes(p, fill, size) };
        let addr = p.expose_provenance();
        let id = self.new_id();
        self.allocs.insert(addr, Alloc { id, size, device: dev, pending: Vec::new() });
        Ok(addr)
    }

    /// Releases the allocation starting at `start` (must be in the registry).
    pub(crate) fn release(&mut self, start: usize) {
        if let Some(a) = self.allocs.remove(&start) {
            if let Ok(layout) = Layout::from_size_align(a.size, ALLOC_ALIGN) {
                // SAFETY: `start` was returned by `alloc` with this same layout and is removed from
                // the registry, so it is freed exactly once.
                unsafe { std::alloc::dealloc(std::ptr::with_exposed_provenance_mut::<u8>(start), layout) };
            }
            self.freed.push_back((start, a.size));
            if self.freed.len() > FREED_MEMORY {
                self.freed.pop_front();
            }
        }
    }
}
