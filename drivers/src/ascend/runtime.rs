//! The safe core over AscendCL: library loading, the once-per-process `aclInit`, the per-thread
//! `aclrtSetDevice`, one stream per device handle, device memory, tensor descriptors and the
//! two-phase aclnn calls with a workspace pool ordered on that stream.
//!
//! Ordering model: all device work of one [`Device`] goes to its single stream, so work is
//! ordered. Host-to-device copies of new data are synchronous (`aclrtMemcpy`) into fresh
//! buffers that no queued work references yet. Device-to-host reads synchronise the stream
//! first. Freed buffers, the descriptors of queued ops and an outgrown workspace are kept until
//! the next stream synchronisation, so queued work never sees memory or descriptors vanish.

use std::collections::HashSet;
use std::ffi::{CStr, c_void};
use std::path::{Path, PathBuf};
use std::ptr::{NonNull, null_mut};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::sys;
use crate::{DriverError, Result};

/// `ACL_ERROR_REPEAT_INITIALIZE`: `aclInit` was already called in this process.
const ACL_ERROR_REPEAT_INITIALIZE: i32 = 100002;

/// Pending frees above this many bytes force a synchronisation at the next op.
const PENDING_FREE_LIMIT: u64 = 256 << 20;

/// The vendor libraries (or the simulator, standing in for all of them).
pub(crate) struct Libs {
    pub(crate) cl: sys::AscendCl,
    pub(crate) nn: sys::NnopBase,
    pub(crate) op: sys::OpApi,
    pub(crate) dcmi: Option<sys::Dcmi>,
    /// What `govbox_sim_identify` returned, when the library is govbox's simulator.
    pub(crate) sim: Option<String>,
    /// Where libascendcl was loaded from (the key of the once-per-process `aclInit`).
    pub(crate) path: PathBuf,
}

impl std::fmt::Debug for Libs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Libs").field("path", &self.path).field("sim", &self.sim).finish_non_exhaustive()
    }
}

/// The environment variable naming one library file (the simulator) that stands in for all of
/// AscendCL, nnopbase, opapi and DCMI.
pub const SIM_ENV: &str = "GOVBOX_ASCEND_SIM_LIB";

fn search_dirs(driver: bool) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    for var in ["ASCEND_HOME_PATH", "ASCEND_TOOLKIT_HOME"] {
        if let Some(v) = std::env::var_os(var) {
            dirs.push(PathBuf::from(v).join("lib64"));
        }
    }
    dirs.push(PathBuf::from("/usr/local/Ascend/ascend-toolkit/latest/lib64"));
    if driver {
        dirs.push(PathBuf::from("/usr/local/Ascend/driver/lib64"));
    }
    dirs
}

/// Opens `name` through the dynamic loader's own search, then in the CANN directories.
/// Returns the library and the path it was opened by, or the loader's first error.
fn open_lib(name: &str, driver: bool) -> std::result::Result<(libloading::Library, PathBuf), String> {
    let mut candidates = vec![PathBuf::from(name)];
    candidates.extend(search_dirs(driver).into_iter().map(|d| d.join(name)));
    let mut first_err = None;
    for c in candidates {
        // SAFETY: loading a library runs its initialisers; the AscendCL libraries (and the
        // simulator) are ordinary shared objects whose initialisers have no preconditions.
        match unsafe { libloading::Library::new(&c) } {
            Ok(l) => return Ok((l, c)),
            Err(e) => {
                first_err.get_or_insert_with(|| e.to_string());
            }
        }
    }
    // dlerror names the file: "libascendcl.so: cannot open shared object file: ...".
    Err(first_err.unwrap_or_else(|| format!("{name}: not found")))
}

fn open_path(p: &Path) -> std::result::Result<libloading::Library, String> {
    // SAFETY: as in `open_lib`: a shared object with no initialiser preconditions.
    unsafe { libloading::Library::new(p) }.map_err(|e| e.to_string())
}

impl Libs {
    /// Loads the libraries: the file named by `GOVBOX_ASCEND_SIM_LIB` for all of them when set,
    /// otherwise libascendcl.so, libnnopbase.so, libopapi.so and (optionally) libdcmi.so.
    pub(crate) fn load() -> std::result::Result<Libs, String> {
        match std::env::var_os(SIM_ENV) {
            Some(p) if !p.is_empty() => Self::load_single(Path::new(&p)),
            _ => Self::load_vendor(),
        }
    }

    /// Loads one file (the simulator) for every library.
    pub(crate) fn load_single(p: &Path) -> std::result::Result<Libs, String> {
        let cl = open_path(p)?;
        // The runtime's state (aclInit, devices) lives in the library: keep it resident for the
        // life of the process, or a later load would find it uninitialised.
        std::mem::forget(open_path(p)?);
        let (nn, op, dcmi, marker) = (open_path(p)?, open_path(p)?, open_path(p)?, open_path(p)?);
        Self::assemble(cl, nn, op, Some(dcmi), marker, p.to_path_buf())
    }

    fn load_vendor() -> std::result::Result<Libs, String> {
        let (cl, path) = open_lib("libascendcl.so", false)?;
        // Kept resident for the life of the process, as in `load_single`.
        std::mem::forget(open_lib("libascendcl.so", false)?);
        let (nn, _) = open_lib("libnnopbase.so", false)?;
        let (op, _) = open_lib("libopapi.so", false)?;
        let dcmi = open_lib("libdcmi.so", true).ok().map(|(l, _)| l);
        let (marker, _) = open_lib("libascendcl.so", false)?;
        Self::assemble(cl, nn, op, dcmi, marker, path)
    }

    fn assemble(
        cl: libloading::Library,
        nn: libloading::Library,
        op: libloading::Library,
        dcmi: Option<libloading::Library>,
        marker: libloading::Library,
        path: PathBuf,
    ) -> std::result::Result<Libs, String> {
        let e = |what: &str, err: libloading::Error| format!("{}: {what}: {err}", path.display());
        // SAFETY: `from_library` only looks symbols up (each missing one is kept as an error in
        // its field); the function types are those of govbox_acl.h, which the libraries follow.
        let cl = unsafe { sys::AscendCl::from_library(cl) }.map_err(|x| e("AscendCL", x))?;
        // SAFETY: as above.
        let nn = unsafe { sys::NnopBase::from_library(nn) }.map_err(|x| e("nnopbase", x))?;
        // SAFETY: as above.
        let op = unsafe { sys::OpApi::from_library(op) }.map_err(|x| e("opapi", x))?;
        // SAFETY: as above.
        let dcmi = dcmi.and_then(|l| unsafe { sys::Dcmi::from_library(l) }.ok());
        // SAFETY: as above.
        let marker = unsafe { sys::SimMarker::from_library(marker) }.map_err(|x| e("marker", x))?;
        let sim = match &marker.govbox_sim_identify {
            Ok(f) => {
                // SAFETY: `govbox_sim_identify` takes nothing and returns a static string.
                let p = unsafe { f() };
                Some(if p.is_null() {
                    "govbox ascend simulator".to_owned()
                } else {
                    // SAFETY: non-null, a static NUL-terminated string (the header's contract).
                    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
                })
            }
            Err(_) => None,
        };
        // A vendor library whose DCMI does not have dcmi_init is no DCMI at all.
        let dcmi = dcmi.filter(|d| d.dcmi_init.is_ok());
        Ok(Libs { cl, nn, op, dcmi, sim, path })
    }

    /// The runtime's most recent error message, or a placeholder.
    pub(crate) fn recent_error(&self) -> String {
        let Ok(f) = &self.cl.aclGetRecentErrMsg else {
            return "(aclGetRecentErrMsg is missing)".to_owned();
        };
        // SAFETY: takes nothing; returns null or a NUL-terminated string owned by the runtime.
        let p = unsafe { f() };
        if p.is_null() {
            return "(no message)".to_owned();
        }
        // SAFETY: non-null, NUL-terminated, valid until the next ACL call on this thread.
        let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
        if s.is_empty() { "(no message)".to_owned() } else { s }
    }

    /// Maps a non-zero status of `call` to [`DriverError::Device`] with the runtime's message.
    pub(crate) fn check(&self, code: i32, call: &str) -> Result<()> {
        if code == 0 {
            return Ok(());
        }
        Err(DriverError::Device {
            backend: "ascend",
            call: call.to_owned(),
            code: code.into(),
            message: self.recent_error(),
        })
    }

    /// `aclInit` once per process and library (a repeat-initialise answer counts as done).
    pub(crate) fn init(&self) -> Result<()> {
        static INITIALISED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
        let mut done = INITIALISED.lock().unwrap_or_else(|p| p.into_inner());
        if done.contains(&self.path) {
            return Ok(());
        }
        let f = sym(&self.cl.aclInit, "aclInit", &self.path)?;
        // SAFETY: a null config path means "no configuration file", as documented.
        let code = unsafe { f(std::ptr::null()) };
        if code != ACL_ERROR_REPEAT_INITIALIZE {
            self.check(code, "aclInit")?;
        }
        done.push(self.path.clone());
        Ok(())
    }

    /// `aclrtSetDevice(device)` on this thread, once per thread, library and device.
    pub(crate) fn set_device(&self, device: i32) -> Result<()> {
        thread_local! {
            static SET: std::cell::RefCell<HashSet<(PathBuf, i32)>> = std::cell::RefCell::new(HashSet::new());
        }
        let key = (self.path.clone(), device);
        if SET.with(|s| s.borrow().contains(&key)) {
            return Ok(());
        }
        let f = sym(&self.cl.aclrtSetDevice, "aclrtSetDevice", &self.path)?;
        // SAFETY: plain integer argument.
        let code = unsafe { f(device) };
        self.check(code, "aclrtSetDevice")?;
        SET.with(|s| s.borrow_mut().insert(key));
        Ok(())
    }

    /// `aclrtGetDeviceCount`.
    pub(crate) fn device_count(&self) -> Result<u32> {
        let f = sym(&self.cl.aclrtGetDeviceCount, "aclrtGetDeviceCount", &self.path)?;
        let mut n = 0u32;
        // SAFETY: `n` is a valid out pointer.
        let code = unsafe { f(&mut n) };
        self.check(code, "aclrtGetDeviceCount")?;
        Ok(n)
    }

    /// `aclrtGetSocName`, when it answers.
    pub(crate) fn soc_name(&self) -> Option<String> {
        let f = self.cl.aclrtGetSocName.as_ref().ok()?;
        // SAFETY: takes nothing; returns null or a static NUL-terminated string.
        let p = unsafe { f() };
        if p.is_null() {
            return None;
        }
        // SAFETY: non-null and NUL-terminated (the API's contract).
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned())
    }

    /// `aclrtGetVersion` as "major.minor.patch", when it answers.
    pub(crate) fn version(&self) -> Option<String> {
        let f = self.cl.aclrtGetVersion.as_ref().ok()?;
        let (mut a, mut b, mut c) = (0i32, 0i32, 0i32);
        // SAFETY: three valid out pointers.
        let code = unsafe { f(&mut a, &mut b, &mut c) };
        (code == 0).then(|| format!("{a}.{b}.{c}"))
    }
}

/// The function in `field`, or a [`DriverError::Device`] naming the missing symbol.
pub(crate) fn sym<T: Copy>(field: &std::result::Result<T, libloading::Error>, name: &str, lib: &Path) -> Result<T> {
    match field {
        Ok(f) => Ok(*f),
        Err(e) => Err(DriverError::Device {
            backend: "ascend",
            call: name.to_owned(),
            code: 0,
            message: format!("symbol {name} is missing from {}: {e}", lib.display()),
        }),
    }
}

/// A device pointer from `aclrtMalloc`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DevPtr(pub(crate) NonNull<c_void>);

// SAFETY: a device address is plain data; the runtime allows any thread that has set the device
// to use it.
unsafe impl Send for DevPtr {}
// SAFETY: as above; nothing is reachable through it from the host.
unsafe impl Sync for DevPtr {}

/// A tensor descriptor (`aclTensor`), or a scalar or int-array, kept until the stream is synced.
#[derive(Debug)]
pub(crate) enum Desc {
    Tensor(NonNull<sys::aclTensor>),
    Scalar(NonNull<sys::aclScalar>),
    IntArray(NonNull<sys::aclIntArray>),
}

// SAFETY: descriptors are host-side objects of nnopbase with no thread affinity; we only destroy
// them, under the device's lock.
unsafe impl Send for Desc {}

/// State behind the device lock: the workspace pool and what waits for the next sync.
#[derive(Debug, Default)]
struct Queue {
    workspace: Option<(DevPtr, u64)>,
    pending_free: Vec<(DevPtr, u64)>,
    pending_bytes: u64,
    descs: Vec<Desc>,
    /// Host buffers read by queued asynchronous copies.
    host_keep: Vec<Arc<[u8]>>,
}

/// One device, one stream. Every op of a backend goes through here.
#[derive(Debug)]
pub(crate) struct Device {
    pub(crate) libs: Libs,
    pub(crate) id: i32,
    stream: sys::aclrtStream,
    queue: Mutex<Queue>,
    allocated: AtomicU64,
}

// SAFETY: the stream handle is used only under `queue`'s lock (every launch takes it) or for
// synchronisation, which AscendCL allows from any thread that has set the device.
unsafe impl Send for Device {}
// SAFETY: as above.
unsafe impl Sync for Device {}

/// The lock on a device's queue, held while an op builds descriptors and launches.
pub(crate) struct Launch<'a> {
    pub(crate) dev: &'a Device,
    q: MutexGuard<'a, Queue>,
}

impl Device {
    /// Loads nothing: takes loaded libraries, initialises, sets the device and makes a stream.
    pub(crate) fn open(libs: Libs, device: u32) -> Result<Arc<Device>> {
        libs.init()?;
        let count = libs.device_count()?;
        if device >= count {
            return Err(DriverError::Unavailable {
                backend: "ascend",
                reason: format!("device {device} requested, the runtime reports {count} device(s)"),
            });
        }
        let id = i32::try_from(device).map_err(|_| DriverError::Unavailable {
            backend: "ascend",
            reason: format!("device index {device} out of range"),
        })?;
        libs.set_device(id)?;
        let f = sym(&libs.cl.aclrtCreateStream, "aclrtCreateStream", &libs.path)?;
        let mut stream: sys::aclrtStream = null_mut();
        // SAFETY: `stream` is a valid out pointer.
        let code = unsafe { f(&mut stream) };
        libs.check(code, "aclrtCreateStream")?;
        Ok(Arc::new(Device { libs, id, stream, queue: Mutex::new(Queue::default()), allocated: AtomicU64::new(0) }))
    }

    /// Sets the device on the calling thread (once per thread).
    pub(crate) fn enter(&self) -> Result<()> {
        self.libs.set_device(self.id)
    }

    pub(crate) fn sym<T: Copy>(&self, f: &std::result::Result<T, libloading::Error>, name: &str) -> Result<T> {
        sym(f, name, &self.libs.path)
    }

    pub(crate) fn check(&self, code: i32, call: &str) -> Result<()> {
        self.libs.check(code, call)
    }

    /// Bytes of device memory this handle's allocations hold.
    pub(crate) fn allocated(&self) -> u64 {
        self.allocated.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the device lock for launching work; syncs first when too much memory waits to be
    /// freed.
    pub(crate) fn launch(&self) -> Result<Launch<'_>> {
        self.enter()?;
        let mut q = self.lock();
        if q.pending_bytes > PENDING_FREE_LIMIT {
            self.sync_locked(&mut q, true)?;
        }
        Ok(Launch { dev: self, q })
    }

    /// Waits for the stream, then releases what waited for it.
    pub(crate) fn synchronize(&self) -> Result<()> {
        self.enter()?;
        let mut q = self.lock();
        self.sync_locked(&mut q, true)
    }

    /// Syncs the stream and frees what waited for it; descriptors too when `descs` (not while
    /// an op between its two phases holds some).
    fn sync_locked(&self, q: &mut Queue, descs: bool) -> Result<()> {
        let f = self.sym(&self.libs.cl.aclrtSynchronizeStream, "aclrtSynchronizeStream")?;
        // SAFETY: `self.stream` is the live stream this handle created.
        let code = unsafe { f(self.stream) };
        self.check(code, "aclrtSynchronizeStream")?;
        for (p, bytes) in q.pending_free.drain(..) {
            self.free_now(p, bytes);
        }
        q.pending_bytes = 0;
        if descs {
            for d in q.descs.drain(..) {
                self.destroy_desc(d);
            }
        }
        q.host_keep.clear();
        Ok(())
    }

    fn destroy_desc(&self, d: Desc) {
        let nn = &self.libs.nn;
        // Each pointer came from the matching aclCreate* and is destroyed once, after the work
        // that used it finished.
        let code = match d {
            Desc::Tensor(p) => nn.aclDestroyTensor.as_ref().map(|f| {
                // SAFETY: see above.
                unsafe { f(p.as_ptr()) }
            }),
            Desc::Scalar(p) => nn.aclDestroyScalar.as_ref().map(|f| {
                // SAFETY: see above.
                unsafe { f(p.as_ptr()) }
            }),
            Desc::IntArray(p) => nn.aclDestroyIntArray.as_ref().map(|f| {
                // SAFETY: see above.
                unsafe { f(p.as_ptr()) }
            }),
        };
        if let Ok(c) = code
            && c != 0
        {
            log::warn!("ascend: destroying a descriptor failed (code {c}): {}", self.libs.recent_error());
        }
    }

    fn free_now(&self, p: DevPtr, bytes: u64) {
        let Ok(f) = self.libs.cl.aclrtFree.as_ref() else { return };
        // SAFETY: `p` came from aclrtMalloc and no queued work uses it (the stream is synced).
        let code = unsafe { f(p.0.as_ptr()) };
        if code != 0 {
            log::warn!("ascend: aclrtFree failed (code {code}): {}", self.libs.recent_error());
        }
        self.allocated.fetch_sub(bytes, Ordering::Relaxed);
    }

    /// Allocates `bytes` (at least one byte) of device memory.
    pub(crate) fn alloc(self: &Arc<Self>, bytes: usize) -> Result<DevMem> {
        self.enter()?;
        let f = self.sym(&self.libs.cl.aclrtMalloc, "aclrtMalloc")?;
        let size = bytes.max(1);
        let mut p: *mut c_void = null_mut();
        // SAFETY: `p` is a valid out pointer; the policy is one of the header's values.
        let code = unsafe { f(&mut p, size, sys::aclrtMemMallocPolicy_ACL_MEM_MALLOC_HUGE_FIRST) };
        self.check(code, "aclrtMalloc")?;
        let ptr = NonNull::new(p).ok_or_else(|| DriverError::Device {
            backend: "ascend",
            call: "aclrtMalloc".into(),
            code: 0,
            message: format!("returned success and a null pointer for {size} bytes"),
        })?;
        self.allocated.fetch_add(size as u64, Ordering::Relaxed);
        Ok(DevMem { dev: self.clone(), ptr: DevPtr(ptr), bytes: size })
    }

    /// Allocates and fills from the host (synchronous copy into the fresh buffer).
    pub(crate) fn upload_bytes(self: &Arc<Self>, data: &[u8]) -> Result<DevMem> {
        let m = self.alloc(data.len())?;
        if !data.is_empty() {
            let f = self.sym(&self.libs.cl.aclrtMemcpy, "aclrtMemcpy")?;
            // SAFETY: the destination holds `m.bytes >= data.len()` bytes; the source is a live
            // host slice of `data.len()` bytes.
            let code = unsafe {
                f(
                    m.ptr.0.as_ptr(),
                    m.bytes,
                    data.as_ptr().cast(),
                    data.len(),
                    sys::aclrtMemcpyKind_ACL_MEMCPY_HOST_TO_DEVICE,
                )
            };
            self.check(code, "aclrtMemcpy")?;
        }
        Ok(m)
    }

    /// Synchronises, then copies `out.len()` bytes from the start of `m` to the host.
    pub(crate) fn download_bytes(&self, m: &DevMem, out: &mut [u8]) -> Result<()> {
        self.synchronize()?;
        self.read_unsynced(m.ptr, m.bytes, out)
    }

    /// Copies device bytes to the host without synchronising first (the runtime rejects this
    /// when queued work writes them).
    pub(crate) fn read_unsynced(&self, p: DevPtr, bytes: usize, out: &mut [u8]) -> Result<()> {
        if out.len() > bytes {
            return Err(DriverError::Shape { op: "download", detail: format!("{} bytes of {bytes}", out.len()) });
        }
        if out.is_empty() {
            return Ok(());
        }
        self.enter()?;
        let f = self.sym(&self.libs.cl.aclrtMemcpy, "aclrtMemcpy")?;
        // SAFETY: `out` is a live host buffer of `out.len()` bytes; the source holds at least as
        // many (checked above).
        let code = unsafe {
            f(
                out.as_mut_ptr().cast(),
                out.len(),
                p.0.as_ptr(),
                out.len(),
                sys::aclrtMemcpyKind_ACL_MEMCPY_DEVICE_TO_HOST,
            )
        };
        self.check(code, "aclrtMemcpy")
    }

    /// Queues a host-to-device copy of `data` to `dst`; `data` is kept alive until the next sync.
    ///
    /// # Safety
    /// `dst` must be the start of at least `dst_bytes` bytes that the caller means to overwrite.
    /// The runtime checks that it is device memory; a vendor runtime may not.
    pub(crate) unsafe fn copy_h2d_async(&self, dst: *mut c_void, dst_bytes: usize, data: Arc<[u8]>) -> Result<()> {
        let mut l = self.launch()?;
        let f = self.sym(&self.libs.cl.aclrtMemcpyAsync, "aclrtMemcpyAsync")?;
        // SAFETY: the caller vouches for `dst`; `data` stays alive in `host_keep` until the
        // stream is synced.
        let code = unsafe {
            f(
                dst,
                dst_bytes,
                data.as_ptr().cast(),
                data.len(),
                sys::aclrtMemcpyKind_ACL_MEMCPY_HOST_TO_DEVICE,
                self.stream,
            )
        };
        l.q.host_keep.push(data);
        self.check(code, "aclrtMemcpyAsync")
    }

    /// Queues `aclrtMemsetAsync` of all of `m` to `value`.
    pub(crate) fn memset(&self, m: &DevMem, value: u8) -> Result<()> {
        let _l = self.launch()?;
        let f = self.sym(&self.libs.cl.aclrtMemsetAsync, "aclrtMemsetAsync")?;
        // SAFETY: `m` is a live allocation of `m.bytes` bytes; the stream is ours.
        let code = unsafe { f(m.ptr.0.as_ptr(), m.bytes, i32::from(value), m.bytes, self.stream) };
        self.check(code, "aclrtMemsetAsync")
    }

    fn defer_free(&self, p: DevPtr, bytes: usize) {
        let mut q = self.lock();
        q.pending_free.push((p, bytes as u64));
        q.pending_bytes += bytes as u64;
    }

    /// `aclrtGetMemInfo(ACL_HBM_MEM)` as (free, total).
    pub(crate) fn mem_info(&self) -> Option<(u64, u64)> {
        self.enter().ok()?;
        let f = self.libs.cl.aclrtGetMemInfo.as_ref().ok()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: two valid out pointers.
        let code = unsafe { f(sys::aclrtMemAttr_ACL_HBM_MEM, &mut free, &mut total) };
        (code == 0).then_some((free as u64, total as u64))
    }

    /// Temperature and health from DCMI, for this device's card, when DCMI is loaded.
    pub(crate) fn dcmi_status(&self) -> (Option<f32>, Option<String>) {
        let Some(d) = &self.libs.dcmi else { return (None, None) };
        let (Ok(init), Ok(list)) = (&d.dcmi_init, &d.dcmi_get_card_num_list) else { return (None, None) };
        // SAFETY: takes nothing.
        if unsafe { init() } != 0 {
            return (None, None);
        }
        let mut n = 0i32;
        let mut cards = [0i32; 64];
        // SAFETY: `cards` holds 64 ints, the length passed.
        if unsafe { list(&mut n, cards.as_mut_ptr(), 64) } != 0 || n <= 0 {
            return (None, None);
        }
        let Some(&card) = cards.get(self.id as usize).filter(|_| self.id < n) else { return (None, None) };
        let temp = d.dcmi_get_device_temperature.as_ref().ok().and_then(|f| {
            let mut t = 0i32;
            // SAFETY: `t` is a valid out pointer.
            (unsafe { f(card, 0, &mut t) } == 0).then_some(t as f32)
        });
        let health = d.dcmi_get_device_health.as_ref().ok().and_then(|f| {
            let mut h = 0u32;
            // SAFETY: `h` is a valid out pointer.
            (unsafe { f(card, 0, &mut h) } == 0).then(|| {
                match h {
                    0 => "ok",
                    1 => "warning (minor alarm)",
                    2 => "major alarm",
                    3 => "critical alarm",
                    _ => "unknown",
                }
                .to_owned()
            })
        });
        (temp, health)
    }
}

impl Drop for Device {
    fn drop(&mut self) {
        if self.enter().is_err() {
            return;
        }
        let mut q = std::mem::take(&mut *self.lock());
        if let Err(e) = self.sync_locked(&mut q, true) {
            log::warn!("ascend: synchronising the stream at shutdown failed: {e}");
            return;
        }
        if let Some((p, bytes)) = q.workspace.take() {
            self.free_now(p, bytes);
        }
        if let Ok(f) = self.libs.cl.aclrtDestroyStream.as_ref() {
            // SAFETY: the stream is ours, idle, and used by nothing after this.
            unsafe { f(self.stream) };
        }
    }
}

/// An owned device allocation, freed after the next stream sync once dropped.
#[derive(Debug)]
pub(crate) struct DevMem {
    pub(crate) dev: Arc<Device>,
    pub(crate) ptr: DevPtr,
    pub(crate) bytes: usize,
}

impl Drop for DevMem {
    fn drop(&mut self) {
        self.dev.defer_free(self.ptr, self.bytes);
    }
}

/// A view of device memory for an aclnn call: dims and strides in elements, offset in elements.
#[derive(Clone, Debug)]
pub(crate) struct View {
    pub(crate) ptr: DevPtr,
    /// Elements in the whole allocation.
    pub(crate) storage: usize,
    pub(crate) dtype: sys::aclDataType,
    pub(crate) dims: Vec<i64>,
    pub(crate) strides: Vec<i64>,
    pub(crate) offset: i64,
}

impl View {
    /// The contiguous view of `dims` at the start of `m`, with elements of `dtype` (`esize` bytes).
    pub(crate) fn contiguous(m: &DevMem, dtype: sys::aclDataType, esize: usize, dims: &[usize]) -> View {
        let dims: Vec<i64> = dims.iter().map(|&d| d as i64).collect();
        let mut strides = vec![1i64; dims.len()];
        for i in (0..dims.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * dims[i + 1];
        }
        View { ptr: m.ptr, storage: m.bytes / esize, dtype, dims, strides, offset: 0 }
    }

    /// The same memory with other dims, strides and offset.
    pub(crate) fn strided(&self, dims: &[usize], strides: &[usize], offset: usize) -> View {
        View {
            dims: dims.iter().map(|&d| d as i64).collect(),
            strides: strides.iter().map(|&d| d as i64).collect(),
            offset: offset as i64,
            ..self.clone()
        }
    }
}

impl Launch<'_> {
    /// Makes an `aclTensor` for `v`, kept until the next sync.
    pub(crate) fn tensor(&mut self, v: &View) -> Result<*mut sys::aclTensor> {
        let f = self.dev.sym(&self.dev.libs.nn.aclCreateTensor, "aclCreateTensor")?;
        let storage = [v.storage as i64];
        // SAFETY: dims and strides have `dims.len()` entries, storage one; `ptr` is a live
        // device allocation of `storage` elements. The descriptor copies the arrays.
        let t = unsafe {
            f(
                v.dims.as_ptr(),
                v.dims.len() as u64,
                v.dtype,
                v.strides.as_ptr(),
                v.offset,
                sys::aclFormat_ACL_FORMAT_ND,
                storage.as_ptr(),
                1,
                v.ptr.0.as_ptr(),
            )
        };
        let t = NonNull::new(t).ok_or_else(|| DriverError::Device {
            backend: "ascend",
            call: "aclCreateTensor".into(),
            code: 0,
            message: format!(
                "dims {:?} strides {:?} offset {}: {}",
                v.dims,
                v.strides,
                v.offset,
                self.dev.libs.recent_error()
            ),
        })?;
        self.q.descs.push(Desc::Tensor(t));
        Ok(t.as_ptr())
    }

    /// Makes an `f32` `aclScalar`, kept until the next sync.
    pub(crate) fn scalar_f32(&mut self, x: f32) -> Result<*mut sys::aclScalar> {
        let f = self.dev.sym(&self.dev.libs.nn.aclCreateScalar, "aclCreateScalar")?;
        let mut v = x;
        // SAFETY: `v` is a live f32 matching the dtype; the scalar copies the value.
        let s = unsafe { f((&mut v as *mut f32).cast(), sys::aclDataType_ACL_FLOAT) };
        let s = NonNull::new(s).ok_or_else(|| DriverError::Device {
            backend: "ascend",
            call: "aclCreateScalar".into(),
            code: 0,
            message: self.dev.libs.recent_error(),
        })?;
        self.q.descs.push(Desc::Scalar(s));
        Ok(s.as_ptr())
    }

    /// Makes an `aclIntArray`, kept until the next sync.
    pub(crate) fn int_array(&mut self, v: &[i64]) -> Result<*mut sys::aclIntArray> {
        let f = self.dev.sym(&self.dev.libs.nn.aclCreateIntArray, "aclCreateIntArray")?;
        // SAFETY: `v` has `v.len()` entries; the array copies them.
        let a = unsafe { f(v.as_ptr(), v.len() as u64) };
        let a = NonNull::new(a).ok_or_else(|| DriverError::Device {
            backend: "ascend",
            call: "aclCreateIntArray".into(),
            code: 0,
            message: self.dev.libs.recent_error(),
        })?;
        self.q.descs.push(Desc::IntArray(a));
        Ok(a.as_ptr())
    }

    /// A workspace of at least `size` bytes, ordered on the stream: grown (after a sync, since
    /// queued work may still use the old one) and reused, never shrunk.
    pub(crate) fn workspace(&mut self, size: u64) -> Result<*mut c_void> {
        if size == 0 {
            return Ok(null_mut());
        }
        if let Some((p, have)) = self.q.workspace
            && have >= size
        {
            return Ok(p.0.as_ptr());
        }
        self.dev.sync_locked(&mut self.q, false)?;
        if let Some((p, bytes)) = self.q.workspace.take() {
            self.dev.free_now(p, bytes);
        }
        let f = self.dev.sym(&self.dev.libs.cl.aclrtMalloc, "aclrtMalloc")?;
        let want = size.next_power_of_two().max(1 << 16);
        let mut p: *mut c_void = null_mut();
        // SAFETY: valid out pointer, a header policy value.
        let code = unsafe { f(&mut p, want as usize, sys::aclrtMemMallocPolicy_ACL_MEM_MALLOC_HUGE_FIRST) };
        self.dev.check(code, "aclrtMalloc")?;
        let p = NonNull::new(p).ok_or_else(|| DriverError::Device {
            backend: "ascend",
            call: "aclrtMalloc".into(),
            code: 0,
            message: "null workspace".into(),
        })?;
        self.dev.allocated.fetch_add(want, Ordering::Relaxed);
        self.q.workspace = Some((DevPtr(p), want));
        Ok(p.as_ptr())
    }

    /// The stream to launch on.
    pub(crate) fn stream(&self) -> sys::aclrtStream {
        self.dev.stream
    }
}

/// Runs one two-phase aclnn op: `$ws(args..., &mut size, &mut executor)`, then `$op(workspace,
/// size, executor, stream)`, each status checked and named. `$l` is a [`Launch`].
macro_rules! aclnn {
    ($l:expr, $op:ident, $ws:ident ( $($arg:expr),* $(,)? )) => {{
        let l: &mut $crate::ascend::runtime::Launch<'_> = $l;
        let get = l.dev.sym(&l.dev.libs.op.$ws, stringify!($ws))?;
        let run = l.dev.sym(&l.dev.libs.op.$op, stringify!($op))?;
        let mut size: u64 = 0;
        let mut exec: *mut $crate::ascend::sys::aclOpExecutor = ::std::ptr::null_mut();
        // SAFETY: every descriptor argument was made by this launch and lives until the next
        // stream sync; `size` and `exec` are valid out pointers.
        let code = unsafe { get($($arg),*, &mut size, &mut exec) };
        l.dev.check(code, stringify!($ws))?;
        let ws = l.workspace(size)?;
        let stream = l.stream();
        // SAFETY: `exec` is the fresh executor from the call above, used once; `ws` holds at
        // least `size` bytes and is only reused by work ordered after this on the same stream.
        let code = unsafe { run(ws, size, exec, stream) };
        l.dev.check(code, stringify!($op))?;
    }};
}
pub(crate) use aclnn;
