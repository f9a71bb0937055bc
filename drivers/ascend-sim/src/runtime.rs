//! libascendcl.so: aclInit/aclFinalize, devices, streams, memory.

use std::ffi::{c_char, c_void};

use crate::error::codes::*;
use crate::error::{SimResult, bail, guard, take_error_ptr};
use crate::state::{Queued, State, Work, env_devices, env_hbm_bytes, hex, lock};
use crate::{aclError, aclrtMemAttr, aclrtMemMallocPolicy, aclrtMemcpyKind, aclrtStream};

/// The simulated runtime version reported by `aclrtGetVersion`.
pub const SIM_VERSION: (i32, i32, i32) = (1, 0, 0);

fn out_ptr<T>(p: *mut T, name: &str) -> SimResult<()> {
    if p.is_null() {
        bail!(ACL_ERROR_INVALID_PARAM, "{name} is NULL");
    }
    Ok(())
}

/// Starts the runtime (once per process; a second call returns ACL_ERROR_REPEAT_INITIALIZE).
/// `configPath` may be NULL; a non-NULL path must name a readable file.
///
/// # Safety
/// `configPath` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclInit(configPath: *const c_char) -> aclError {
    guard("aclInit", || {
        let mut st = lock();
        if st.initialized {
            bail!(ACL_ERROR_REPEAT_INITIALIZE, "aclInit was already called in this process (repeat initialize)");
        }
        if !configPath.is_null() {
            // SAFETY: the caller passes NULL or a NUL-terminated string.
            let path = unsafe { std::ffi::CStr::from_ptr(configPath) }.to_string_lossy().into_owned();
            if !path.is_empty() && std::fs::metadata(&path).is_err() {
                bail!(ACL_ERROR_INVALID_PARAM, "config file {path:?} cannot be read");
            }
        }
        st.initialized = true;
        st.generation += 1;
        st.devices = env_devices();
        st.hbm_bytes = env_hbm_bytes();
        st.poison = std::env::var("GOVBOX_ASCEND_SIM_POISON").map_or(true, |v| v.trim() != "0");
        Ok(())
    })
}

/// Ends the runtime: frees every allocation, stream, handle and executor.
///
/// # Safety
/// No pointer arguments; unsafe only for uniformity with the other exports.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclFinalize() -> aclError {
    guard("aclFinalize", || {
        let mut st = lock();
        st.require_init()?;
        if st.running > 0 {
            bail!(ACL_ERROR_RT_PARAM_INVALID, "aclrtSynchronizeStream is running on another thread");
        }
        let starts: Vec<usize> = st.allocs.keys().copied().collect();
        for s in starts {
            st.release(s);
        }
        st.handles.clear();
        st.streams.clear();
        st.initialized = false;
        Ok(())
    })
}

/// This thread's newest error message (cleared by reading); NULL when there is none. The
/// pointer stays valid until the next `aclGetRecentErrMsg` call on this thread.
///
/// # Safety
/// No pointer arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclGetRecentErrMsg() -> *const c_char {
    take_error_ptr()
}

/// The simulator's fixed version, [`SIM_VERSION`].
///
/// # Safety
/// Each pointer is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtGetVersion(
    majorVersion: *mut i32,
    minorVersion: *mut i32,
    patchVersion: *mut i32,
) -> aclError {
    guard("aclrtGetVersion", || {
        lock().require_init()?;
        out_ptr(majorVersion, "majorVersion")?;
        out_ptr(minorVersion, "minorVersion")?;
        out_ptr(patchVersion, "patchVersion")?;
        // SAFETY: non-NULL (checked) and writable (caller contract).
        unsafe {
            *majorVersion = SIM_VERSION.0;
            *minorVersion = SIM_VERSION.1;
            *patchVersion = SIM_VERSION.2;
        }
        Ok(())
    })
}

/// "Ascend910B-sim" (NULL before aclInit).
///
/// # Safety
/// No pointer arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtGetSocName() -> *const c_char {
    let r = guard("aclrtGetSocName", || lock().require_init());
    if r != 0 { std::ptr::null() } else { c"Ascend910B-sim".as_ptr() }
}

/// Device count (GOVBOX_ASCEND_SIM_DEVICES, default 1).
///
/// # Safety
/// `count` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtGetDeviceCount(count: *mut u32) -> aclError {
    guard("aclrtGetDeviceCount", || {
        let st = lock();
        st.require_init()?;
        out_ptr(count, "count")?;
        // SAFETY: non-NULL (checked) and writable (caller contract).
        unsafe { *count = st.devices };
        Ok(())
    })
}

/// Binds the CALLING THREAD to `deviceId`.
///
/// # Safety
/// No pointer arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtSetDevice(deviceId: i32) -> aclError {
    guard("aclrtSetDevice", || {
        let st = lock();
        st.require_init()?;
        if deviceId < 0 || deviceId as u32 >= st.devices {
            bail!(
                ACL_ERROR_RT_INVALID_DEVICEID,
                "device {deviceId} does not exist: {} simulated device(s) (GOVBOX_ASCEND_SIM_DEVICES)",
                st.devices
            );
        }
        st.bind(deviceId);
        Ok(())
    })
}

/// Unbinds the calling thread from `deviceId` (which must be the bound device). Fails while that
/// device's streams have unsynchronised work.
///
/// # Safety
/// No pointer arguments.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtResetDevice(deviceId: i32) -> aclError {
    guard("aclrtResetDevice", || {
        let st = lock();
        let dev = st.bound_device()?;
        if dev != deviceId {
            bail!(ACL_ERROR_RT_INVALID_DEVICEID, "device {deviceId} is not the device this thread is bound to ({dev})");
        }
        if let Some((k, _)) = st.streams.iter().find(|(_, s)| s.device == dev && !s.queue.is_empty()) {
            bail!(
                ACL_ERROR_RT_PARAM_INVALID,
                "stream {} of device {dev} has unsynchronised work: call aclrtSynchronizeStream first",
                State::stream_name(*k)
            );
        }
        st.unbind();
        Ok(())
    })
}

/// The calling thread's device.
///
/// # Safety
/// `deviceId` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtGetDevice(deviceId: *mut i32) -> aclError {
    guard("aclrtGetDevice", || {
        let dev = lock().bound_device()?;
        out_ptr(deviceId, "deviceId")?;
        // SAFETY: non-NULL (checked) and writable (caller contract).
        unsafe { *deviceId = dev };
        Ok(())
    })
}

/// Creates a stream (a work queue) on the calling thread's device.
///
/// # Safety
/// `stream` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtCreateStream(stream: *mut aclrtStream) -> aclError {
    guard("aclrtCreateStream", || {
        let mut st = lock();
        let dev = st.bound_device()?;
        out_ptr(stream, "stream")?;
        let h = st.new_stream_handle(dev);
        // SAFETY: non-NULL (checked) and writable (caller contract).
        unsafe { *stream = std::ptr::without_provenance_mut(h) };
        Ok(())
    })
}

/// Destroys a stream; fails while it has unsynchronised work.
///
/// # Safety
/// `stream` is a handle (never dereferenced).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtDestroyStream(stream: aclrtStream) -> aclError {
    guard("aclrtDestroyStream", || {
        let mut st = lock();
        let dev = st.bound_device()?;
        let h = stream.addr();
        if h == 0 {
            bail!(ACL_ERROR_INVALID_PARAM, "stream is NULL (the default stream cannot be destroyed)");
        }
        let key = st.stream_key(h, dev)?;
        if st.streams[&key].busy > 0 {
            bail!(ACL_ERROR_RT_PARAM_INVALID, "stream {} is being synchronised by another thread", hex(h));
        }
        if !st.streams[&key].queue.is_empty() {
            bail!(
                ACL_ERROR_RT_PARAM_INVALID,
                "stream {} has {} unsynchronised work item(s): call aclrtSynchronizeStream before destroying it",
                hex(h),
                st.streams[&key].queue.len()
            );
        }
        st.streams.remove(&key);
        Ok(())
    })
}

fn run_work(w: &Work) -> SimResult<()> {
    match w {
        Work::Copy { dst, src, count } => {
            // SAFETY: both ranges were validated at enqueue (device ranges in live allocations that
            // cannot be freed while this work is pending; host ranges valid until synchronisation
            // by the aclrtMemcpyAsync contract). ptr::copy tolerates overlap.
            unsafe {
                std::ptr::copy(
                    std::ptr::with_exposed_provenance::<u8>(*src),
                    std::ptr::with_exposed_provenance_mut::<u8>(*dst),
                    *count,
                )
            };
            Ok(())
        }
        Work::Set { dst, value, count } => {
            // SAFETY: validated device range in a live allocation (see Copy).
            unsafe { std::ptr::write_bytes(std::ptr::with_exposed_provenance_mut::<u8>(*dst), *value, *count) };
            Ok(())
        }
        Work::Kernel { exec, workspace, workspace_len } => {
            let r = exec.kernel.run();
            // A real kernel leaves its workspace in an undefined state.
            // SAFETY: validated device range in a live allocation (see Copy).
            unsafe {
                std::ptr::write_bytes(std::ptr::with_exposed_provenance_mut::<u8>(*workspace), 0xA5, *workspace_len)
            };
            r.map_err(|mut e| {
                e.msg = format!("{} failed: {}", exec.launch, e.msg);
                e
            })
        }
    }
}

/// Runs every work item queued on `stream` (NULL = the default stream), in order. Returns the
/// first error an item hit (the remaining items still run).
///
/// # Safety
/// `stream` is a handle (never dereferenced). Host buffers given to aclrtMemcpyAsync on this
/// stream must still be valid.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtSynchronizeStream(stream: aclrtStream) -> aclError {
    guard("aclrtSynchronizeStream", || {
        let (key, queue) = loop {
            let mut st = lock();
            let dev = st.bound_device()?;
            let key = st.stream_key(stream.addr(), dev)?;
            // Work another thread's synchronisation took from this stream must finish first, so
            // that everything queued before this call has completed when it returns.
            if st.streams.get(&key).is_some_and(|s| s.busy > 0) {
                drop(st);
                std::thread::sleep(std::time::Duration::from_millis(1));
                continue;
            }
            let queue = match st.streams.get_mut(&key) {
                Some(s) => {
                    s.busy += 1;
                    std::mem::take(&mut s.queue)
                }
                None => Vec::new(),
            };
            st.running += 1;
            break (key, queue);
        };
        let last_seq = queue.last().map_or(0, |q| q.seq);
        let mut first_err = None;
        for Queued { work, .. } in &queue {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_work(work))).unwrap_or_else(|_| {
                Err(crate::error::err!(ACL_ERROR_INTERNAL_ERROR, "internal simulator panic in queued work"))
            });
            if let Err(e) = r
                && first_err.is_none()
            {
                first_err = Some(e);
            }
        }
        let mut st = lock();
        st.running -= 1;
        if let Some(s) = st.streams.get_mut(&key) {
            s.busy -= 1;
        }
        for a in st.allocs.values_mut() {
            a.pending.retain(|p| !(p.stream == key && p.seq <= last_seq));
        }
        drop(st);
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    })
}

/// Allocates `size` bytes of simulated device memory on the calling thread's device.
///
/// # Safety
/// `devPtr` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtMalloc(devPtr: *mut *mut c_void, size: usize, policy: aclrtMemMallocPolicy) -> aclError {
    guard("aclrtMalloc", || {
        let mut st = lock();
        let dev = st.bound_device()?;
        out_ptr(devPtr, "devPtr")?;
        if !(0..=2).contains(&policy) {
            bail!(ACL_ERROR_INVALID_PARAM, "policy {policy} is not an aclrtMemMallocPolicy (0, 1 or 2)");
        }
        let addr = st.malloc(size, dev)?;
        // SAFETY: non-NULL (checked) and writable (caller contract).
        unsafe { *devPtr = std::ptr::with_exposed_provenance_mut(addr) };
        Ok(())
    })
}

/// Frees an allocation (the pointer aclrtMalloc returned). Fails while queued work still uses it.
///
/// # Safety
/// `devPtr` is only compared with the registry, never dereferenced by this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtFree(devPtr: *mut c_void) -> aclError {
    guard("aclrtFree", || {
        let mut st = lock();
        let dev = st.bound_device()?;
        let addr = devPtr.addr();
        let start = st.device_range(addr, 0, "devPtr", dev)?;
        if start != addr {
            bail!(
                ACL_ERROR_INVALID_PARAM,
                "devPtr {} is {} bytes inside the allocation at {}: pass the pointer aclrtMalloc returned",
                hex(addr),
                addr - start,
                hex(start)
            );
        }
        if let Some(p) = st.allocs[&start].pending.first() {
            bail!(
                ACL_ERROR_RT_DRV_INTERNAL_ERROR,
                "devPtr {} freed before aclrtSynchronizeStream: pending work on stream {} still {} it",
                hex(addr),
                State::stream_name(p.stream),
                if p.write { "writes" } else { "reads" }
            );
        }
        st.release(start);
        Ok(())
    })
}

/// Validates a copy and returns nothing; `stream` = None for the synchronous copy.
#[allow(clippy::too_many_arguments)] // mirrors the C call's arguments
fn check_copy(
    st: &State,
    dst: usize,
    dest_max: usize,
    src: usize,
    count: usize,
    kind: aclrtMemcpyKind,
    dev: i32,
    stream: Option<usize>,
) -> SimResult<()> {
    if count > dest_max {
        bail!(ACL_ERROR_INVALID_PARAM, "count {count} is larger than destMax {dest_max}");
    }
    let (dst_dev, src_dev) = match kind {
        0 => (false, false),
        1 => (true, false),
        2 => (false, true),
        3 => (true, true),
        _ => bail!(ACL_ERROR_INVALID_PARAM, "kind {kind} is not an aclrtMemcpyKind (0..=3)"),
    };
    if dst_dev {
        st.device_range(dst, count, "dst (device)", dev)?;
        st.check_pending(dst, dst + count, true, stream, "dst")?;
    } else {
        st.host_range(dst, count, "dst (host)")?;
    }
    if src_dev {
        st.device_range(src, count, "src (device)", dev)?;
        st.check_pending(src, src + count, false, stream, "src")?;
    } else {
        st.host_range(src, count, "src (host)")?;
    }
    Ok(())
}

/// Synchronous copy. Device memory with pending (unsynchronised) conflicting work is an error.
///
/// # Safety
/// Host pointers are valid for `count` bytes (dst writable); device pointers are checked.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtMemcpy(
    dst: *mut c_void,
    destMax: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
) -> aclError {
    guard("aclrtMemcpy", || {
        let st = lock();
        let dev = st.bound_device()?;
        check_copy(&st, dst.expose_provenance(), destMax, src.expose_provenance(), count, kind, dev, None)?;
        if count > 0 {
            // SAFETY: device ranges are checked live allocations (the lock is held, so none is
            // freed meanwhile); host ranges are valid by the caller's contract.
            unsafe { std::ptr::copy(src.cast::<u8>(), dst.cast::<u8>(), count) };
        }
        Ok(())
    })
}

fn enqueue(st: &mut State, key: usize, work: Work, accesses: &[(usize, usize, bool)]) {
    let seq = st.new_seq();
    for &(lo, hi, write) in accesses {
        st.add_pending(key, seq, lo, hi, write);
    }
    if let Some(s) = st.streams.get_mut(&key) {
        s.queue.push(Queued { seq, work });
    }
}

pub(crate) fn enqueue_kernel(st: &mut State, key: usize, work: Work, accesses: &[(usize, usize, bool)]) {
    enqueue(st, key, work, accesses);
}

/// Queues a copy on `stream`; it runs at aclrtSynchronizeStream. Host memory is read (H2D) or
/// written (D2H) at that synchronisation, so it must stay valid until then.
///
/// # Safety
/// Host pointers stay valid for `count` bytes until the stream is synchronised.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtMemcpyAsync(
    dst: *mut c_void,
    destMax: usize,
    src: *const c_void,
    count: usize,
    kind: aclrtMemcpyKind,
    stream: aclrtStream,
) -> aclError {
    guard("aclrtMemcpyAsync", || {
        let mut st = lock();
        let dev = st.bound_device()?;
        let key = st.stream_key(stream.addr(), dev)?;
        let (d, s) = (dst.expose_provenance(), src.expose_provenance());
        check_copy(&st, d, destMax, s, count, kind, dev, Some(key))?;
        let mut acc = Vec::new();
        if kind == 1 || kind == 3 {
            acc.push((d, d + count, true));
        }
        if kind == 2 || kind == 3 {
            acc.push((s, s + count, false));
        }
        enqueue(&mut st, key, Work::Copy { dst: d, src: s, count }, &acc);
        Ok(())
    })
}

/// Queues a memset of `count` bytes to `value` (its low byte) on `stream`.
///
/// # Safety
/// `devPtr` is checked against the registry.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtMemsetAsync(
    devPtr: *mut c_void,
    maxCount: usize,
    value: i32,
    count: usize,
    stream: aclrtStream,
) -> aclError {
    guard("aclrtMemsetAsync", || {
        let mut st = lock();
        let dev = st.bound_device()?;
        let key = st.stream_key(stream.addr(), dev)?;
        if count > maxCount {
            bail!(ACL_ERROR_INVALID_PARAM, "count {count} is larger than maxCount {maxCount}");
        }
        let d = devPtr.expose_provenance();
        st.device_range(d, count, "devPtr", dev)?;
        st.check_pending(d, d + count, true, Some(key), "devPtr")?;
        enqueue(&mut st, key, Work::Set { dst: d, value: value as u8, count }, &[(d, d + count, true)]);
        Ok(())
    })
}

/// Free and total simulated HBM of the calling thread's device (GOVBOX_ASCEND_SIM_HBM_MB).
///
/// # Safety
/// `free` and `total` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclrtGetMemInfo(attr: aclrtMemAttr, free: *mut usize, total: *mut usize) -> aclError {
    guard("aclrtGetMemInfo", || {
        let st = lock();
        let dev = st.bound_device()?;
        out_ptr(free, "free")?;
        out_ptr(total, "total")?;
        if !(0..=5).contains(&attr) {
            bail!(ACL_ERROR_INVALID_PARAM, "attr {attr} is not an aclrtMemAttr (0..=5)");
        }
        let t = st.hbm_bytes;
        // SAFETY: non-NULL (checked) and writable (caller contract).
        unsafe {
            *total = t;
            *free = t.saturating_sub(st.allocated(dev));
        }
        Ok(())
    })
}
