//! The CUDA backend: cudarc over the driver API, cuBLAS and NVRTC, all loaded at run time.
//!
//! Nothing is linked: `libcuda`, `libcublas` and `libnvrtc` are opened with dlopen when a
//! backend is probed or opened, so a binary built with `cuda` runs (on the CPU) where they are
//! absent. [`probe`] and [`CudaBackend::open`] check that the libraries are there before the
//! first call, and every entry point runs under `catch_unwind`, because cudarc panics when a
//! library or symbol it needs is missing; a panic becomes [`DriverError::Unavailable`] or
//! [`DriverError::Device`].
//!
//! Storage and precision:
//! - Weights stay in their stored form when a kernel reads it: F32, F16, BF16 and Q8_0 (the
//!   34-byte GGUF blocks). Every other block format (Q4_0, Q4_1, Q5_x, K-quants) is
//!   de-quantised to BF16 at upload with [`crate::quant::dequantize_row`], and
//!   [`DeviceInfo::notes`] says so ("Q4_1 weights de-quantised to BF16 at upload").
//! - `matmul` with at most 8 activation rows (decode) runs the `matvec` kernel, which reads each
//!   weight row once in its stored dtype and accumulates in f32. With more rows (prefill) it
//!   runs cuBLAS SGEMM: F32 weights directly, F16/BF16/Q8_0 weights de-quantised to f32 panels
//!   of at most 64 MiB first. The activations are never rounded to 16 bits, so the result has
//!   the CPU backend's precision contract (as if the weights were de-quantised to f32), at the
//!   price of the conversion pass and f32 rather than tensor-core BF16 GEMM throughput.
//! - Small weights used as rows (norm weights, biases, the second operand of `add`/`mul`) are
//!   converted to f32 once, on first use, and the copy is kept with the tensor.
//! - The KV cache is f32 on the device (see [`kv`]).

mod kernels;
mod kv;
mod nvml;

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, DevicePtrMut, LaunchConfig, PushKernelArg,
};
use rayon::prelude::*;

use crate::device::Probe;
use crate::{
    Backend, Buffer, Caps, DType, DenseAttn, DeviceInfo, DeviceKind, DriverError, HostBytes, KvCache, KvSpec,
    PagedAttn, Result, Rope, RopeStyle, Tensor,
};

pub use kv::CudaKvCache;

const BACKEND: &str = "cuda";
/// Threads of the elementwise and row kernels.
const THREADS: u32 = 256;
/// Largest f32 panel a de-quantised weight takes on the prefill GEMM path.
const PANEL_BYTES: usize = 64 << 20;

/// The reason a library did not load, as the dynamic loader words it.
fn dlopen_reason(names: &[&str]) -> String {
    let mut last = String::new();
    for n in names {
        // SAFETY: loading a vendor library runs its initialisers; the CUDA libraries are made
        // to be loaded this way (cudarc does the same), and the handle is dropped at once.
        match unsafe { libloading::Library::new(n) } {
            Ok(_) => return format!("{n}: loads, but cudarc found none of its names"),
            Err(e) => last = e.to_string(),
        }
    }
    last
}

fn panic_text(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".into()
    }
}

/// Runs `f`, turning a panic inside cudarc (a missing library or symbol) into an error.
fn guard<T>(op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|p| {
        Err(DriverError::Device { backend: BACKEND, call: op.into(), code: 0, message: panic_text(p.as_ref()) })
    })
}

fn drv(call: &'static str) -> impl Fn(cudarc::driver::DriverError) -> DriverError {
    move |e| DriverError::Device { backend: BACKEND, call: call.into(), code: e.0 as i64, message: format!("{e:?}") }
}

fn blas_err(call: &'static str) -> impl Fn(cudarc::cublas::result::CublasError) -> DriverError {
    move |e| DriverError::Device { backend: BACKEND, call: call.into(), code: e.0 as i64, message: format!("{e:?}") }
}

/// Whether cudarc finds each library, and which one it misses first.
fn missing_library() -> Option<&'static str> {
    // SAFETY: these only try dlopen on cudarc's candidate names and drop the handles.
    let (cuda, blas, rtc) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
        )
    };
    if !cuda {
        Some("libcuda.so")
    } else if !blas {
        Some("libcublas.so")
    } else if !rtc {
        Some("libnvrtc.so")
    } else {
        None
    }
}

fn lib_candidates(lib: &str) -> Vec<&'static str> {
    match lib {
        "libcuda.so" => vec!["libcuda.so.1", "libcuda.so"],
        "libcublas.so" => vec!["libcublas.so.13", "libcublas.so.12", "libcublas.so"],
        _ => vec!["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
    }
}

/// Probes for CUDA: whether libcuda loads and how many devices it reports. Never panics.
pub fn probe() -> Probe {
    let absent = |detail: String| Probe {
        kind: DeviceKind::Cuda,
        compiled: true,
        present: false,
        devices: 0,
        simulated: false,
        detail,
    };
    let found = catch_unwind(|| {
        // SAFETY: see `missing_library`.
        unsafe { cudarc::driver::sys::is_culib_present() }
    });
    match found {
        Ok(true) => {}
        Ok(false) => {
            return absent(format!("libcuda.so: not found ({})", dlopen_reason(&lib_candidates("libcuda.so"))));
        }
        Err(p) => return absent(format!("libcuda.so: {}", panic_text(p.as_ref()))),
    }
    let r = catch_unwind(|| -> std::result::Result<(u32, String), String> {
        cudarc::driver::result::init().map_err(|e| format!("cuInit: {e:?}"))?;
        let n = cudarc::driver::result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {e:?}"))?;
        let mut v = 0i32;
        // SAFETY: `v` is a valid out-pointer for the duration of the call.
        let version = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }.result();
        let version = match version {
            Ok(()) => format!("driver API {}.{}", v / 1000, v % 1000 / 10),
            Err(e) => format!("driver version unknown: {e:?}"),
        };
        let name = if n > 0 {
            cudarc::driver::result::device::get(0)
                .and_then(cudarc::driver::result::device::get_name)
                .unwrap_or_else(|e| format!("device 0 name unknown: {e:?}"))
        } else {
            String::new()
        };
        Ok((n.max(0) as u32, format!("libcuda, {version}{}{name}", if name.is_empty() { "" } else { ", " })))
    });
    match r {
        Ok(Ok((n, detail))) if n > 0 => {
            let missing = missing_library();
            match missing {
                None => Probe {
                    kind: DeviceKind::Cuda,
                    compiled: true,
                    present: true,
                    devices: n,
                    simulated: false,
                    detail,
                },
                Some(lib) => absent(format!(
                    "{detail}; but {lib}: not found ({}) - install the CUDA toolkit libraries or set LD_LIBRARY_PATH",
                    dlopen_reason(&lib_candidates(lib))
                )),
            }
        }
        Ok(Ok((_, detail))) => absent(format!("{detail}: no CUDA device")),
        Ok(Err(e)) => absent(e),
        Err(p) => absent(format!("libcuda: {}", panic_text(p.as_ref()))),
    }
}

/// Lets the device's default memory pool keep freed memory instead of returning it to the
/// driver at every synchronisation (its default), so that the per-op allocations of decode are
/// served from the pool. Best effort: a failure only costs speed.
fn keep_pool_memory(ctx: &CudaContext) {
    let mut pool: cudarc::driver::sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer; the device handle comes from a live context.
    let r = unsafe { cudarc::driver::sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }.result();
    if r.is_err() || pool.is_null() {
        log::debug!("cuda: no default memory pool ({r:?})");
        return;
    }
    let mut threshold: u64 = u64::MAX;
    // SAFETY: the release threshold attribute takes a pointer to a cuuint64_t, which
    // `threshold` is, alive for the call.
    let r = unsafe {
        cudarc::driver::sys::cuMemPoolSetAttribute(
            pool,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    }
    .result();
    if let Err(e) = r {
        log::debug!("cuda: memory pool release threshold not set: {e:?}");
    }
}

/// The device's PCI bus id ("0000:3b:00.0"), which NVML knows it by.
fn pci_bus_id(ctx: &CudaContext) -> Option<String> {
    let mut buf = [0 as std::ffi::c_char; 32];
    // SAFETY: `buf` has room for the 32 bytes we say it has; the driver NUL-terminates.
    let r = unsafe { cudarc::driver::sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as i32, ctx.cu_device()) };
    r.result().ok()?;
    // SAFETY: the driver wrote a NUL-terminated string into `buf` (checked above).
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    s.to_str().ok().map(str::to_owned)
}

/// Device memory of one tensor.
#[derive(Debug)]
pub(crate) struct CudaBuffer {
    pub(crate) data: CudaSlice<u8>,
    bytes: usize,
    /// The values as f32, made on first use as a row operand (norm weight, bias).
    f32_copy: Mutex<Option<Arc<CudaSlice<u8>>>>,
    counter: Arc<AtomicU64>,
}

impl Buffer for CudaBuffer {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn size_bytes(&self) -> usize {
        self.bytes
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        let extra = match self.f32_copy.get_mut() {
            Ok(Some(c)) => c.len(),
            _ => 0,
        };
        self.counter.fetch_sub((self.data.len() + extra) as u64, Ordering::Relaxed);
    }
}

/// An f32 operand: a tensor's own memory, or its converted copy.
enum Operand<'a> {
    Own(&'a CudaSlice<u8>),
    Converted(Arc<CudaSlice<u8>>),
}

impl AsRef<CudaSlice<u8>> for Operand<'_> {
    fn as_ref(&self) -> &CudaSlice<u8> {
        match self {
            Operand::Own(s) => s,
            Operand::Converted(s) => s,
        }
    }
}

/// The weight dtype code the kernels take, for the formats they read directly.
fn dtype_code(dt: DType) -> Option<i32> {
    match dt {
        DType::F32 => Some(0),
        DType::F16 => Some(1),
        DType::BF16 => Some(2),
        DType::Q8_0 => Some(3),
        _ => None,
    }
}

fn to_i32(v: usize, op: &'static str, what: &str) -> Result<i32> {
    i32::try_from(v)
        .map_err(|_| DriverError::Shape { op, detail: format!("{what} {v} exceeds the kernels' 2^31 limit") })
}

fn elementwise_cfg(total: usize) -> LaunchConfig {
    let blocks = total.div_ceil(THREADS as usize).clamp(1, 1 << 20) as u32;
    LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 }
}

fn rows_cfg(rows: usize, op: &'static str) -> Result<LaunchConfig> {
    let g = u32::try_from(rows)
        .ok()
        .filter(|&g| g < i32::MAX as u32)
        .ok_or_else(|| DriverError::Shape { op, detail: format!("{rows} rows exceed one launch grid") })?;
    Ok(LaunchConfig { grid_dim: (g, 1, 1), block_dim: (THREADS, 1, 1), shared_mem_bytes: 0 })
}

/// The CUDA backend for one device.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: Mutex<CudaBlas>,
    funcs: HashMap<&'static str, CudaFunction>,
    name: String,
    sms: usize,
    memory_total: Option<u64>,
    used: Arc<AtomicU64>,
    notes: Mutex<BTreeSet<String>>,
    /// NVML for this device, when the driver's libnvidia-ml loads (temperature).
    nvml: Option<nvml::Nvml>,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBackend").field("device", &self.ctx.ordinal()).field("name", &self.name).finish()
    }
}

impl CudaBackend {
    /// Opens CUDA device `ordinal`: creates its context and stream, compiles the kernels with
    /// NVRTC and makes a cuBLAS handle. Fails with [`DriverError::Unavailable`] when a library
    /// or the device is missing; never panics.
    pub fn open(ordinal: u32) -> Result<Self> {
        if let Some(lib) = missing_library() {
            return Err(DriverError::Unavailable {
                backend: BACKEND,
                reason: format!(
                    "{lib}: not found ({}); install the NVIDIA driver and CUDA toolkit libraries or set LD_LIBRARY_PATH",
                    dlopen_reason(&lib_candidates(lib))
                ),
            });
        }
        match catch_unwind(|| Self::open_inner(ordinal)) {
            Ok(r) => r,
            Err(p) => Err(DriverError::Unavailable { backend: BACKEND, reason: panic_text(p.as_ref()) }),
        }
    }

    fn open_inner(ordinal: u32) -> Result<Self> {
        let unavailable = |what: String| DriverError::Unavailable { backend: BACKEND, reason: what };
        cudarc::driver::result::init().map_err(|e| unavailable(format!("cuInit: {e:?}")))?;
        let count =
            cudarc::driver::result::device::get_count().map_err(|e| unavailable(format!("cuDeviceGetCount: {e:?}")))?;
        if ordinal as i64 >= count as i64 {
            return Err(unavailable(format!("device cuda:{ordinal} does not exist ({count} device(s))")));
        }
        let ctx = CudaContext::new(ordinal as usize).map_err(drv("cuDevicePrimaryCtxRetain"))?;
        // SAFETY: this backend uses one stream only, so cudarc's per-allocation events (which
        // order uses across streams) are not needed; nothing is allocated before this call.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.default_stream();
        if ctx.has_async_alloc() {
            keep_pool_memory(&ctx);
        }
        let name = ctx.name().unwrap_or_else(|_| format!("CUDA device {ordinal}"));
        let (major, minor) = ctx.compute_capability().map_err(drv("cuDeviceGetAttribute"))?;
        let sms = ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_or(0, |v| v.max(0) as usize);
        let memory_total = ctx.total_mem().ok().map(|v| v as u64);
        let opts = cudarc::nvrtc::CompileOptions {
            options: vec![format!("--gpu-architecture=compute_{major}{minor}"), "--std=c++17".into()],
            name: Some("govbox_kernels.cu".into()),
            ..Default::default()
        };
        let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernels::SOURCE, opts).map_err(|e| DriverError::Device {
            backend: BACKEND,
            call: "nvrtcCompileProgram".into(),
            code: 0,
            message: match e {
                cudarc::nvrtc::CompileError::CompileError { nvrtc, log, .. } => {
                    format!("{nvrtc:?}: {}", log.to_string_lossy())
                }
                other => format!("{other:?}"),
            },
        })?;
        let module = ctx.load_module(ptx).map_err(drv("cuModuleLoadData"))?;
        let mut funcs = HashMap::new();
        for &n in kernels::NAMES {
            funcs.insert(n, module.load_function(n).map_err(drv("cuModuleGetFunction"))?);
        }
        let blas = CudaBlas::new(stream.clone()).map_err(blas_err("cublasCreate"))?;
        let nvml = pci_bus_id(&ctx).and_then(|id| nvml::Nvml::open(&id));
        Ok(Self {
            ctx,
            stream,
            blas: Mutex::new(blas),
            funcs,
            name,
            sms,
            memory_total,
            used: Arc::new(AtomicU64::new(0)),
            notes: Mutex::new(BTreeSet::new()),
            nvml,
        })
    }

    fn func(&self, name: &'static str) -> Result<&CudaFunction> {
        self.funcs.get(name).ok_or_else(|| DriverError::Device {
            backend: BACKEND,
            call: "kernel lookup".into(),
            code: 0,
            message: format!("kernel {name} was not loaded"),
        })
    }

    /// Uninitialised device memory of `bytes` bytes (at least 4, so no allocation is empty).
    /// Only what tensors and caches keep counts towards [`DeviceInfo::memory_used`].
    fn alloc(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        // SAFETY: every caller fills the whole allocation (a kernel writing all of its output,
        // or a copy) before anything reads it.
        unsafe { self.stream.alloc::<u8>(bytes.max(4)) }.map_err(drv("cuMemAllocAsync"))
    }

    fn wrap(&self, data: CudaSlice<u8>, bytes: usize, dtype: DType, shape: Vec<usize>) -> Tensor {
        self.used.fetch_add(data.len() as u64, Ordering::Relaxed);
        let b = CudaBuffer { data, bytes, f32_copy: Mutex::new(None), counter: self.used.clone() };
        Tensor::from_buffer(Arc::new(b), dtype, shape)
    }

    fn htod(&self, bytes: &[u8]) -> Result<CudaSlice<u8>> {
        let mut s = self.alloc(bytes.len())?;
        if !bytes.is_empty() {
            let mut view = s.slice_mut(0..bytes.len());
            self.stream.memcpy_htod(bytes, &mut view).map_err(drv("cuMemcpyHtoDAsync"))?;
        }
        Ok(s)
    }

    fn htod_u32(&self, v: &[u32]) -> Result<CudaSlice<u8>> {
        self.htod(bytemuck::cast_slice(v))
    }

    fn buf<'a>(&self, t: &'a Tensor, op: &'static str) -> Result<&'a CudaBuffer> {
        t.buffer().as_any().downcast_ref::<CudaBuffer>().ok_or(DriverError::ForeignTensor { op })
    }

    fn f32_buf<'a>(&self, t: &'a Tensor, op: &'static str) -> Result<&'a CudaSlice<u8>> {
        if t.dtype() != DType::F32 {
            return Err(DriverError::DType { op, dtype: t.dtype() });
        }
        Ok(&self.buf(t, op)?.data)
    }

    /// The values of any weight tensor as f32 on the device: the tensor itself when it is
    /// f32, else a converted copy made on first use and kept with it.
    fn as_f32<'a>(&self, t: &'a Tensor, op: &'static str) -> Result<Operand<'a>> {
        let b = self.buf(t, op)?;
        let code = dtype_code(t.dtype()).ok_or(DriverError::DType { op, dtype: t.dtype() })?;
        if code == 0 {
            return Ok(Operand::Own(&b.data));
        }
        let mut slot = b.f32_copy.lock().map_err(|_| DriverError::Device {
            backend: BACKEND,
            call: op.into(),
            code: 0,
            message: "a previous conversion panicked".into(),
        })?;
        if let Some(c) = slot.as_ref() {
            return Ok(Operand::Converted(c.clone()));
        }
        let mut out = self.alloc(t.elem_count() * 4)?;
        self.dequant(&b.data, code, &mut out, 0, t.rows(), t.last_dim())?;
        b.counter.fetch_add(out.len() as u64, Ordering::Relaxed);
        let out = Arc::new(out);
        *slot = Some(out.clone());
        Ok(Operand::Converted(out))
    }

    /// De-quantises rows `row0 .. row0 + nrows` of a weight with `k` values per row into `out`.
    fn dequant(
        &self,
        w: &CudaSlice<u8>,
        code: i32,
        out: &mut CudaSlice<u8>,
        row0: usize,
        nrows: usize,
        k: usize,
    ) -> Result<()> {
        let total = nrows * k;
        if total == 0 {
            return Ok(());
        }
        let (row0, nrows, k) = (row0 as i64, nrows as i64, to_i32(k, "matmul", "row length")?);
        let f = self.func("dequant_rows")?;
        let mut b = self.stream.launch_builder(f);
        b.arg(w).arg(&code).arg(out).arg(&row0).arg(&nrows).arg(&k);
        // SAFETY: the kernel writes `nrows * k` f32 values to `out` (callers size it so) and
        // reads rows below the weight's row count (callers check it).
        unsafe { b.launch(elementwise_cfg(total)) }.map_err(drv("cuLaunchKernel(dequant_rows)"))?;
        Ok(())
    }

    fn empty_f32(&self, shape: Vec<usize>) -> Result<Tensor> {
        let d = self.alloc(0)?;
        Ok(self.wrap(d, 0, DType::F32, shape))
    }

    fn matmul_impl(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        let xb = self.f32_buf(x, "matmul")?;
        let k = x.last_dim();
        let m = x.rows();
        if w.shape().len() != 2 || w.last_dim() != k {
            return Err(DriverError::Shape {
                op: "matmul",
                detail: format!("activations {:?} against weight {:?}", x.shape(), w.shape()),
            });
        }
        let n = w.shape()[0];
        let code = dtype_code(w.dtype()).ok_or(DriverError::DType { op: "matmul", dtype: w.dtype() })?;
        let wb = self.buf(w, "matmul")?;
        let mut out_shape = x.shape().to_vec();
        if let Some(l) = out_shape.last_mut() {
            *l = n;
        }
        if m == 0 || n == 0 {
            return self.empty_f32(out_shape);
        }
        let mut out = self.alloc(m * n * 4)?;
        if k == 0 {
            self.stream.memset_zeros(&mut out).map_err(drv("cuMemsetD8Async"))?;
            return Ok(self.wrap(out, m * n * 4, DType::F32, out_shape));
        }
        let (mi, ni, ki) =
            (to_i32(m, "matmul", "rows")?, to_i32(n, "matmul", "outputs")?, to_i32(k, "matmul", "inputs")?);
        if m <= kernels::MATVEC_MAX_M {
            let f = self.func("matvec")?;
            let blocks = n.div_ceil(kernels::MATVEC_WARPS as usize);
            let cfg = LaunchConfig {
                grid_dim: (
                    u32::try_from(blocks)
                        .map_err(|_| DriverError::Shape { op: "matmul", detail: format!("{n} outputs") })?,
                    1,
                    1,
                ),
                block_dim: (kernels::MATVEC_WARPS * 32, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = self.stream.launch_builder(f);
            b.arg(xb).arg(&wb.data).arg(&code).arg(&mut out).arg(&mi).arg(&ni).arg(&ki);
            // SAFETY: x holds m * k f32 values, w n rows of k values of dtype `code` (checked at
            // upload), out m * n f32 values; the kernel's warps stop at row n.
            unsafe { b.launch(cfg) }.map_err(drv("cuLaunchKernel(matvec)"))?;
            return Ok(self.wrap(out, m * n * 4, DType::F32, out_shape));
        }
        // Prefill: cuBLAS SGEMM, on f32 panels of the weight when it is stored otherwise.
        // Row-major out [m, n] is column-major [n, m]; it is W [n, k] (column-major [k, n],
        // transposed) times x (column-major [k, m]).
        let panel_rows = if code == 0 { n } else { (PANEL_BYTES / (4 * k)).clamp(1, n) };
        let mut scratch = if code == 0 { None } else { Some(self.alloc(panel_rows * k * 4)?) };
        let blas = self.blas.lock().map_err(|_| DriverError::Device {
            backend: BACKEND,
            call: "cublasSgemm".into(),
            code: 0,
            message: "cuBLAS handle poisoned by an earlier panic".into(),
        })?;
        let handle = *blas.handle();
        let mut r0 = 0;
        while r0 < n {
            let pn = panel_rows.min(n - r0);
            let (wptr, _g) = match scratch.as_mut() {
                Some(s) => {
                    self.dequant(&wb.data, code, s, r0, pn, k)?;
                    let (p, g) = s.device_ptr(&self.stream);
                    (p, Some(g))
                }
                None => {
                    let (p, g) = wb.data.device_ptr(&self.stream);
                    (p, Some(g))
                }
            };
            let (xptr, _gx) = xb.device_ptr(&self.stream);
            let (optr, _go) = out.device_ptr_mut(&self.stream);
            let (alpha, beta) = (1.0f32, 0.0f32);
            // SAFETY: A is `pn` weight rows of k f32 values (lda k, transposed), B is x (k × m,
            // ldb k), C starts at output column r0 of the row-major [m, n] result (ldc n), so
            // it writes m rows of pn values inside `out`; all three live until the stream work
            // is done (they are freed stream-ordered).
            unsafe {
                cudarc::cublas::result::sgemm(
                    handle,
                    cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_T,
                    cudarc::cublas::sys::cublasOperation_t::CUBLAS_OP_N,
                    pn as i32,
                    mi,
                    ki,
                    &alpha,
                    wptr as *const f32,
                    ki,
                    xptr as *const f32,
                    ki,
                    &beta,
                    (optr as usize + r0 * 4) as *mut f32,
                    ni,
                )
            }
            .map_err(blas_err("cublasSgemm"))?;
            r0 += pn;
        }
        drop(blas);
        drop(scratch);
        Ok(self.wrap(out, m * n * 4, DType::F32, out_shape))
    }

    /// A row-weight operand of `n` values as f32 on the device.
    fn row_operand<'a>(&self, w: &'a Tensor, n: usize, op: &'static str) -> Result<Operand<'a>> {
        if w.elem_count() != n {
            return Err(DriverError::Shape {
                op,
                detail: format!("weight of {} values for rows of {n}", w.elem_count()),
            });
        }
        self.as_f32(w, op)
    }

    fn binary_impl(&self, a: &Tensor, b: &Tensor, op: &'static str, code: i32) -> Result<Tensor> {
        let ab = self.f32_buf(a, op)?;
        let total = a.elem_count();
        let n = a.last_dim();
        let bn = b.elem_count();
        if !(bn == total || (bn == n && n > 0)) {
            return Err(DriverError::Shape {
                op,
                detail: format!("{:?} and {:?} neither match nor broadcast by row", a.shape(), b.shape()),
            });
        }
        let bv = self.as_f32(b, op)?;
        if total == 0 {
            return self.empty_f32(a.shape().to_vec());
        }
        let mut out = self.alloc(total * 4)?;
        let (t, bn) = (total as i64, bn as i64);
        let f = self.func("binary")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(ab).arg(bv.as_ref()).arg(&mut out).arg(&t).arg(&bn).arg(&code);
        // SAFETY: a and out hold `total` f32 values, b holds `bn` (total or one row).
        unsafe { l.launch(elementwise_cfg(total)) }.map_err(drv("cuLaunchKernel(binary)"))?;
        Ok(self.wrap(out, total * 4, DType::F32, a.shape().to_vec()))
    }

    fn unary_impl(&self, x: &Tensor, op: &'static str, code: i32, s: f32) -> Result<Tensor> {
        let xb = self.f32_buf(x, op)?;
        let total = x.elem_count();
        if total == 0 {
            return self.empty_f32(x.shape().to_vec());
        }
        let mut out = self.alloc(total * 4)?;
        let t = total as i64;
        let f = self.func("unary")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(xb).arg(&mut out).arg(&t).arg(&code).arg(&s);
        // SAFETY: x and out hold `total` f32 values.
        unsafe { l.launch(elementwise_cfg(total)) }.map_err(drv("cuLaunchKernel(unary)"))?;
        Ok(self.wrap(out, total * 4, DType::F32, x.shape().to_vec()))
    }

    fn layer_norm_impl(
        &self,
        x: &Tensor,
        r: Option<&Tensor>,
        w: &Tensor,
        bias: &Tensor,
        eps: f32,
        op: &'static str,
    ) -> Result<Tensor> {
        let xb = self.f32_buf(x, op)?;
        let n = x.last_dim();
        let rb = match r {
            Some(r) => {
                if r.shape() != x.shape() {
                    return Err(DriverError::Shape {
                        op,
                        detail: format!("{:?} and {:?} differ", x.shape(), r.shape()),
                    });
                }
                Some(self.f32_buf(r, op)?)
            }
            None => None,
        };
        let wv = self.row_operand(w, n, op)?;
        let bv = self.row_operand(bias, n, op)?;
        let rows = x.rows();
        if rows == 0 || n == 0 {
            return self.empty_f32(x.shape().to_vec());
        }
        let mut out = self.alloc(rows * n * 4)?;
        let (has_r, ni) = (i32::from(rb.is_some()), to_i32(n, op, "row length")?);
        let f = self.func("layer_norm")?;
        let mut l = self.stream.launch_builder(f);
        l.arg(xb).arg(rb.unwrap_or(xb)).arg(&has_r).arg(wv.as_ref()).arg(bv.as_ref()).arg(&mut out).arg(&ni).arg(&eps);
        // SAFETY: x, r (or x again, unread) and out hold rows * n f32 values, w and b n each.
        unsafe { l.launch(rows_cfg(rows, op)?) }.map_err(drv("cuLaunchKernel(layer_norm)"))?;
        Ok(self.wrap(out, rows * n * 4, DType::F32, x.shape().to_vec()))
    }

    fn rows_kernel(&self, x: &Tensor, op: &'static str, kernel: &'static str) -> Result<Tensor> {
        let xb = self.f32_buf(x, op)?;
        let n = x.last_dim();
        let rows = x.rows();
        if rows == 0 || n == 0 {
            return self.empty_f32(x.shape().to_vec());
        }
        let mut out = self.alloc(rows * n * 4)?;
        let ni = to_i32(n, op, "row length")?;
        let f = self.func(kernel)?;
        let mut l = self.stream.launch_builder(f);
        l.arg(xb).arg(&mut out).arg(&ni);
        // SAFETY: x and out hold rows * n f32 values; one block per row.
        unsafe { l.launch(rows_cfg(rows, op)?) }.map_err(drv("cuLaunchKernel"))?;
        Ok(self.wrap(out, rows * n * 4, DType::F32, x.shape().to_vec()))
    }

    fn note(&self, s: String) {
        if let Ok(mut n) = self.notes.lock() {
            n.insert(s);
        }
    }
}

impl Backend for CudaBackend {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: DeviceKind::Cuda,
            name: self.name.clone(),
            threads: self.sms,
            memory_used: Some(self.used.load(Ordering::Relaxed)),
            memory_total: self.memory_total,
            simulated: false,
            temperature_c: self.nvml.as_ref().and_then(nvml::Nvml::temperature_c),
            health: None,
            notes: self.notes.lock().map(|n| n.iter().cloned().collect()).unwrap_or_default(),
        }
    }

    fn caps(&self) -> Caps {
        // Q8_0 is read natively; the other block formats become BF16 at upload.
        Caps { native_quantized_matmul: false, simd: "" }
    }

    fn upload(&self, data: HostBytes, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        guard("upload", || {
            let count: Option<usize> = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
            let last = shape.last().copied().unwrap_or(1);
            let expected = count.and_then(|c| {
                if last == 0 {
                    return Some(0);
                }
                dtype.row_bytes(last).and_then(|rb| rb.checked_mul(c / last))
            });
            let expected = expected.ok_or_else(|| DriverError::Shape {
                op: "upload",
                detail: format!("{dtype} rows of {last} values are not whole blocks of {}", dtype.block_len()),
            })?;
            if expected != data.len() {
                return Err(DriverError::UploadSize { dtype, shape: shape.to_vec(), expected, got: data.len() });
            }
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            let keep = dtype_code(dtype).is_some() || matches!(dtype, DType::U32 | DType::I64);
            if keep {
                let d = self.htod(data.as_slice())?;
                return Ok(self.wrap(d, data.len(), dtype, shape.to_vec()));
            }
            // Other block formats: de-quantised to BF16 here, once.
            let rb = dtype.row_bytes(last).unwrap_or(0);
            let mut bf = vec![half::bf16::ZERO; count.unwrap_or(0)];
            if last > 0 && rb > 0 {
                bf.par_chunks_mut(last).zip(data.as_slice().par_chunks(rb)).for_each_init(
                    || vec![0f32; last],
                    |tmp, (o, r)| {
                        crate::quant::dequantize_row(dtype, r, tmp);
                        o.iter_mut().zip(tmp.iter()).for_each(|(o, &v)| *o = half::bf16::from_f32(v));
                    },
                );
            }
            self.note(format!("{} weights de-quantised to BF16 at upload", dtype.name().to_uppercase()));
            let bytes: &[u8] = bytemuck::cast_slice(&bf);
            let d = self.htod(bytes)?;
            Ok(self.wrap(d, bytes.len(), DType::BF16, shape.to_vec()))
        })
    }

    fn upload_f32(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        guard("upload_f32", || {
            if shape.iter().product::<usize>() != data.len() {
                return Err(DriverError::UploadSize {
                    dtype: DType::F32,
                    shape: shape.to_vec(),
                    expected: shape.iter().product::<usize>() * 4,
                    got: data.len() * 4,
                });
            }
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            let d = self.htod(bytemuck::cast_slice(data))?;
            Ok(self.wrap(d, data.len() * 4, DType::F32, shape.to_vec()))
        })
    }

    fn download_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        guard("download_f32", || {
            let b = self.f32_buf(t, "download_f32")?;
            let n = t.elem_count();
            let mut out = vec![0f32; n];
            if n > 0 {
                self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
                let host: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
                self.stream.memcpy_dtoh(&b.slice(0..n * 4), host).map_err(drv("cuMemcpyDtoHAsync"))?;
                self.stream.synchronize().map_err(drv("cuStreamSynchronize"))?;
            }
            Ok(out)
        })
    }

    fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        guard("matmul", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            self.matmul_impl(x, w)
        })
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        guard("rms_norm", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            let xb = self.f32_buf(x, "rms_norm")?;
            let n = x.last_dim();
            let wv = self.row_operand(weight, n, "rms_norm")?;
            let rows = x.rows();
            if rows == 0 || n == 0 {
                return self.empty_f32(x.shape().to_vec());
            }
            let mut out = self.alloc(rows * n * 4)?;
            let ni = to_i32(n, "rms_norm", "row length")?;
            let f = self.func("rms_norm")?;
            let mut l = self.stream.launch_builder(f);
            l.arg(xb).arg(wv.as_ref()).arg(&mut out).arg(&ni).arg(&eps);
            // SAFETY: x and out hold rows * n f32 values, w n; one block per row.
            unsafe { l.launch(rows_cfg(rows, "rms_norm")?) }.map_err(drv("cuLaunchKernel(rms_norm)"))?;
            Ok(self.wrap(out, rows * n * 4, DType::F32, x.shape().to_vec()))
        })
    }

    fn layer_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        guard("layer_norm", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            self.layer_norm_impl(x, None, weight, bias, eps, "layer_norm")
        })
    }

    fn rope(&self, x: &Tensor, rope: &Rope<'_>) -> Result<Tensor> {
        guard("rope", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            let xb = self.f32_buf(x, "rope")?;
            let width = rope.n_heads * rope.head_dim;
            let half = rope.inv_freq.len();
            if x.last_dim() != width || half * 2 > rope.head_dim || rope.positions.len() != x.rows() {
                return Err(DriverError::Shape {
                    op: "rope",
                    detail: format!(
                        "input {:?}, {} heads of {}, {} frequencies, {} positions",
                        x.shape(),
                        rope.n_heads,
                        rope.head_dim,
                        half,
                        rope.positions.len()
                    ),
                });
            }
            let rows = x.rows();
            if rows == 0 || width == 0 {
                return self.empty_f32(x.shape().to_vec());
            }
            let pos = self.htod_u32(rope.positions)?;
            let freq = self.htod(bytemuck::cast_slice(rope.inv_freq))?;
            let mut out = self.alloc(rows * width * 4)?;
            let (nh, hd, hf) = (
                to_i32(rope.n_heads, "rope", "heads")?,
                to_i32(rope.head_dim, "rope", "head_dim")?,
                to_i32(half, "rope", "frequencies")?,
            );
            let inter = i32::from(rope.style == RopeStyle::Interleaved);
            let f = self.func("rope")?;
            let mut l = self.stream.launch_builder(f);
            l.arg(xb).arg(&mut out).arg(&pos).arg(&freq).arg(&nh).arg(&hd).arg(&hf).arg(&inter);
            // SAFETY: x and out hold rows * n_heads * head_dim f32 values, pos one u32 per row,
            // freq `half` f32 with 2 * half <= head_dim (checked above).
            unsafe { l.launch(rows_cfg(rows, "rope")?) }.map_err(drv("cuLaunchKernel(rope)"))?;
            Ok(self.wrap(out, rows * width * 4, DType::F32, x.shape().to_vec()))
        })
    }

    fn softmax(&self, x: &Tensor) -> Result<Tensor> {
        guard("softmax", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            self.rows_kernel(x, "softmax", "softmax")
        })
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        guard("swiglu", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            self.binary_impl(gate, up, "swiglu", 2)
        })
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        guard("gelu", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            self.unary_impl(x, "gelu", 0, 0.0)
        })
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        guard("add", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            self.binary_impl(a, b, "add", 0)
        })
    }

    fn mul(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        guard("mul", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            self.binary_impl(a, b, "mul", 1)
        })
    }

    fn scale(&self, a: &Tensor, s: f32) -> Result<Tensor> {
        guard("scale", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            self.unary_impl(a, "scale", 1, s)
        })
    }

    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        guard("embedding", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            let vocab = table.rows();
            let dim = table.last_dim();
            let code = dtype_code(table.dtype()).ok_or(DriverError::DType { op: "embedding", dtype: table.dtype() })?;
            let tb = self.buf(table, "embedding")?;
            if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(DriverError::TokenOutOfRange { id, vocab });
            }
            if ids.is_empty() || dim == 0 {
                return self.empty_f32(vec![ids.len(), dim]);
            }
            let idb = self.htod_u32(ids)?;
            let mut out = self.alloc(ids.len() * dim * 4)?;
            let di = to_i32(dim, "embedding", "dim")?;
            let f = self.func("embedding")?;
            let mut l = self.stream.launch_builder(f);
            l.arg(&tb.data).arg(&code).arg(&idb).arg(&mut out).arg(&di);
            // SAFETY: every id is below the table's row count (checked above), out holds
            // ids.len() * dim f32 values; one block per id.
            unsafe { l.launch(rows_cfg(ids.len(), "embedding")?) }.map_err(drv("cuLaunchKernel(embedding)"))?;
            Ok(self.wrap(out, ids.len() * dim * 4, DType::F32, vec![ids.len(), dim]))
        })
    }

    fn gather_rows(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        guard("gather_rows", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            let xb = self.f32_buf(x, "gather_rows")?;
            let n = x.last_dim();
            let total = x.rows();
            let mut idx = Vec::with_capacity(rows.len());
            for &r in rows {
                if r >= total {
                    return Err(DriverError::Shape { op: "gather_rows", detail: format!("row {r} of {total}") });
                }
                idx.push(
                    u32::try_from(r)
                        .map_err(|_| DriverError::Shape { op: "gather_rows", detail: format!("row {r}") })?,
                );
            }
            if rows.is_empty() || n == 0 {
                return self.empty_f32(vec![rows.len(), n]);
            }
            let ib = self.htod_u32(&idx)?;
            let mut out = self.alloc(rows.len() * n * 4)?;
            let ni = to_i32(n, "gather_rows", "row length")?;
            let f = self.func("gather_rows")?;
            let mut l = self.stream.launch_builder(f);
            l.arg(xb).arg(&ib).arg(&mut out).arg(&ni);
            // SAFETY: every index is below x's row count (checked above); out holds
            // rows.len() * n f32 values.
            unsafe { l.launch(rows_cfg(rows.len(), "gather_rows")?) }.map_err(drv("cuLaunchKernel(gather_rows)"))?;
            Ok(self.wrap(out, rows.len() * n * 4, DType::F32, vec![rows.len(), n]))
        })
    }

    fn new_kv_cache(&self, spec: KvSpec) -> Result<Box<dyn KvCache>> {
        guard("new_kv_cache", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            let c: Box<dyn KvCache> = Box::new(kv::CudaKvCache::new(self, spec)?);
            Ok(c)
        })
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut dyn KvCache,
        spec: &PagedAttn<'_>,
    ) -> Result<Tensor> {
        guard("attention", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            kv::paged(self, q, k, v, cache, spec)
        })
    }

    fn attention_dense(&self, q: &Tensor, k: &Tensor, v: &Tensor, spec: &DenseAttn<'_>) -> Result<Tensor> {
        guard("attention_dense", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            kv::dense(self, q, k, v, spec)
        })
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
        guard("linear", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            let y = self.matmul_impl(x, w)?;
            if b.elem_count() != y.last_dim() {
                return Err(DriverError::Shape {
                    op: "linear",
                    detail: format!("bias {:?} for a weight {:?}", b.shape(), w.shape()),
                });
            }
            // Bias and GELU in one pass.
            self.binary_impl(&y, b, "linear", if gelu { 3 } else { 0 })
        })
    }

    fn add_layer_norm(&self, a: &Tensor, b: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        guard("add_layer_norm", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            self.layer_norm_impl(a, Some(b), weight, bias, eps, "add_layer_norm")
        })
    }

    fn argmax(&self, x: &Tensor) -> Result<Vec<u32>> {
        guard("argmax", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            let xb = self.f32_buf(x, "argmax")?;
            let n = x.last_dim();
            let rows = x.rows();
            if rows == 0 {
                return Ok(Vec::new());
            }
            if n == 0 {
                return Ok(vec![0; rows]);
            }
            let mut out = self.alloc(rows * 4)?;
            let ni = to_i32(n, "argmax", "row length")?;
            let f = self.func("argmax")?;
            let mut l = self.stream.launch_builder(f);
            l.arg(xb).arg(&mut out).arg(&ni);
            // SAFETY: x holds rows * n f32 values, out one u32 per row.
            unsafe { l.launch(rows_cfg(rows, "argmax")?) }.map_err(drv("cuLaunchKernel(argmax)"))?;
            let mut host = vec![0u32; rows];
            self.stream
                .memcpy_dtoh(&out.slice(0..rows * 4), bytemuck::cast_slice_mut::<u32, u8>(&mut host))
                .map_err(drv("cuMemcpyDtoHAsync"))?;
            self.stream.synchronize().map_err(drv("cuStreamSynchronize"))?;
            Ok(host)
        })
    }

    fn synchronize(&self) -> Result<()> {
        guard("synchronize", || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            self.stream.synchronize().map_err(drv("cuStreamSynchronize"))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceSpec, open};

    /// Whether this machine has a CUDA driver library at all (then the no-GPU assertions below
    /// do not apply).
    fn libcuda_installed() -> bool {
        // SAFETY: see `missing_library`.
        unsafe { cudarc::driver::sys::is_culib_present() }
    }

    #[test]
    fn probe_without_libcuda_reports_absent_with_the_reason() {
        let p = probe();
        assert_eq!(p.kind, DeviceKind::Cuda);
        assert!(p.compiled);
        if libcuda_installed() {
            eprintln!("libcuda is installed here; probe: {}", p.summary());
            return;
        }
        assert!(!p.present);
        assert_eq!(p.devices, 0);
        assert!(p.detail.starts_with("libcuda.so: not found"), "{}", p.detail);
        assert!(p.summary().starts_with("cuda: absent (libcuda.so: not found"), "{}", p.summary());
    }

    #[test]
    fn opening_cuda_without_libcuda_is_a_clear_error_and_auto_picks_the_cpu() {
        if libcuda_installed() {
            eprintln!("SKIPPED: libcuda is installed here");
            return;
        }
        let e = open(DeviceSpec::Cuda(0), 1).unwrap_err();
        match &e {
            DriverError::Unavailable { backend, reason } => {
                assert_eq!(*backend, "cuda");
                assert!(reason.contains("libcuda.so: not found"), "{reason}");
            }
            other => panic!("expected Unavailable, got {other:?}"),
        }
        assert!(e.to_string().starts_with("cuda is not available: libcuda.so: not found"), "{e}");
        let e = CudaBackend::open(3).unwrap_err();
        assert!(matches!(e, DriverError::Unavailable { .. }), "{e:?}");
        let auto = open(DeviceSpec::Auto, 1).unwrap();
        assert_eq!(auto.chosen, DeviceSpec::Cpu);
        assert_eq!(auto.backend.info().kind, DeviceKind::Cpu);
        let cuda = auto.probes.iter().find(|p| p.kind == DeviceKind::Cuda).unwrap();
        assert!(cuda.compiled && !cuda.present, "{cuda:?}");
    }

    /// NVRTC needs no GPU: where libnvrtc is installed (a CUDA toolkit, or a pip wheel on
    /// LD_LIBRARY_PATH), the kernels must compile for the architectures we run on.
    #[test]
    fn kernels_compile_with_nvrtc_where_it_is_installed() {
        // SAFETY: see `missing_library`.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("SKIPPED: libnvrtc not found");
            return;
        }
        for arch in ["compute_80", "compute_90"] {
            let opts = cudarc::nvrtc::CompileOptions {
                options: vec![format!("--gpu-architecture={arch}"), "--std=c++17".into()],
                ..Default::default()
            };
            let ptx = cudarc::nvrtc::compile_ptx_with_opts(kernels::SOURCE, opts);
            let ptx = match ptx {
                Ok(p) => p.to_src(),
                Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
                    panic!("{arch}: {}", log.to_string_lossy())
                }
                Err(e) => panic!("{arch}: {e:?}"),
            };
            for n in kernels::NAMES {
                assert!(ptx.contains(&format!(".entry {n}(")), "{arch}: no entry {n}");
            }
        }
    }

    #[test]
    fn guard_turns_a_panic_into_a_device_error() {
        let r: Result<()> = guard("test op", || panic!("Missing symbol cuFoo"));
        match r {
            Err(DriverError::Device { call, message, .. }) => {
                assert_eq!(call, "test op");
                assert!(message.contains("cuFoo"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_directly_read_formats_have_kernel_codes() {
        for (dt, c) in [(DType::F32, 0), (DType::F16, 1), (DType::BF16, 2), (DType::Q8_0, 3)] {
            assert_eq!(dtype_code(dt), Some(c));
        }
        for dt in [DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4K, DType::Q5K, DType::Q6K, DType::U32] {
            assert_eq!(dtype_code(dt), None);
        }
        for (i, n) in kernels::NAMES.iter().enumerate() {
            assert!(kernels::SOURCE.contains(&format!("extern \"C\" __global__ void {n}(")), "{n}");
            assert!(!kernels::NAMES[..i].contains(n));
        }
    }
}
