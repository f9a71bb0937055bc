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
//! - The KV cache is f32 or f16 on the device (see [`kv`]; the f16 kernels have not run on a GPU).
//!
//! Files: [`probe`] finds the libraries and devices, `matmul` and `ops` hold the op bodies,
//! `kv` the cache and attention, `kernels` the CUDA C source; this file holds the backend's
//! memory and the thin [`Backend`] impl, which runs each op under `guard`.

mod kernels;
mod kv;
mod matmul;
mod nvml;
mod ops;
pub mod probe;

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig};

use crate::{
    Backend, Buffer, Caps, DType, DenseAttn, DeviceInfo, DeviceKind, DriverError, HostBytes, KvCache, KvSpec,
    PagedAttn, Result, Rope, Tensor,
};

pub use kv::CudaKvCache;
pub use probe::probe;

const BACKEND: &str = "cuda";
/// Threads of the elementwise and row kernels.
const THREADS: u32 = 256;

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
        if let Some(lib) = probe::missing_library() {
            return Err(DriverError::Unavailable {
                backend: BACKEND,
                reason: format!(
                    "{lib}: not found ({}); install the NVIDIA driver and CUDA toolkit libraries or set LD_LIBRARY_PATH",
                    probe::dlopen_reason(&probe::lib_candidates(lib))
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
            probe::keep_pool_memory(&ctx);
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
        let nvml = probe::pci_bus_id(&ctx).and_then(|id| nvml::Nvml::open(&id));
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

    fn empty_f32(&self, shape: Vec<usize>) -> Result<Tensor> {
        let d = self.alloc(0)?;
        Ok(self.wrap(d, 0, DType::F32, shape))
    }

    fn note(&self, s: String) {
        if let Ok(mut n) = self.notes.lock() {
            n.insert(s);
        }
    }

    /// Runs op `f` under [`guard`], with this backend's context current on the calling thread.
    fn run<T>(&self, op: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        guard(op, || {
            self.ctx.bind_to_thread().map_err(drv("cuCtxSetCurrent"))?;
            f()
        })
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
        self.run("upload", || self.upload_impl(data, dtype, shape))
    }

    fn upload_f32(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        self.run("upload_f32", || {
            crate::backend::check_upload(DType::F32, shape, std::mem::size_of_val(data))?;
            let d = self.htod(bytemuck::cast_slice(data))?;
            Ok(self.wrap(d, data.len() * 4, DType::F32, shape.to_vec()))
        })
    }

    fn download_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        self.run("download_f32", || {
            let b = self.f32_buf(t, "download_f32")?;
            let n = t.elem_count();
            let mut out = vec![0f32; n];
            if n > 0 {
                let host: &mut [u8] = bytemuck::cast_slice_mut(&mut out);
                self.stream.memcpy_dtoh(&b.slice(0..n * 4), host).map_err(drv("cuMemcpyDtoHAsync"))?;
                self.stream.synchronize().map_err(drv("cuStreamSynchronize"))?;
            }
            Ok(out)
        })
    }

    fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        self.run("matmul", || self.matmul_impl(x, w))
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        self.run("rms_norm", || self.rms_norm_impl(x, weight, eps))
    }

    fn layer_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        self.run("layer_norm", || self.layer_norm_impl(x, None, weight, bias, eps, "layer_norm"))
    }

    fn rope(&self, x: &Tensor, rope: &Rope<'_>) -> Result<Tensor> {
        self.run("rope", || self.rope_impl(x, rope))
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        self.run("swiglu", || self.binary_impl(gate, up, "swiglu", 2))
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        self.run("gelu", || self.unary_impl(x, "gelu", 0, 0.0))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.run("add", || self.binary_impl(a, b, "add", 0))
    }

    fn scale(&self, a: &Tensor, s: f32) -> Result<Tensor> {
        self.run("scale", || self.unary_impl(a, "scale", 1, s))
    }

    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        self.run("embedding", || self.embedding_impl(table, ids))
    }

    fn gather_rows(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        self.run("gather_rows", || self.gather_rows_impl(x, rows))
    }

    fn new_kv_cache(&self, spec: KvSpec) -> Result<Box<dyn KvCache>> {
        self.run("new_kv_cache", || {
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
        self.run("attention", || kv::paged(self, q, k, v, cache, spec))
    }

    fn attention_dense(&self, q: &Tensor, k: &Tensor, v: &Tensor, spec: &DenseAttn<'_>) -> Result<Tensor> {
        self.run("attention_dense", || kv::dense(self, q, k, v, spec))
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
        self.run("linear", || {
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
        self.run("add_layer_norm", || self.layer_norm_impl(a, Some(b), weight, bias, eps, "add_layer_norm"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::{DeviceSpec, open};

    /// Whether this machine has a CUDA driver library at all (then the no-GPU assertions below
    /// do not apply).
    fn libcuda_installed() -> bool {
        // SAFETY: see `probe::missing_library`.
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
        // SAFETY: see `probe::missing_library`.
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
