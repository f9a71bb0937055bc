//! The pure-Rust CPU backend: rayon for threads, runtime-selected SIMD for the weight kernels.

mod affinity;
mod allocator;
mod attention;
mod dot;
mod flash;
mod kv_pool;
mod matmul;
mod norm;
mod panel;
mod simd;
mod warm;

pub use allocator::give_back_freed_memory;

use std::any::Any;
use std::borrow::Cow;
use std::sync::Arc;

use rayon::prelude::*;

use crate::{
    Backend, Buffer, Caps, DType, DenseAttn, DeviceInfo, DeviceKind, DriverError, HostBytes, KvCache, KvSpec,
    PagedAttn, Result, Rope, Tensor,
};

pub use attention::CpuKvCache;

/// Tensors of a file mapping up to this size that stay in their own layout are copied into
/// owned memory at upload (see `CpuBackend::upload`): half a 2 MiB huge page.
const COPY_BELOW_BYTES: usize = 1 << 20;
/// The largest folio the page cache maps whole on a read (x86-64's PMD size, 2 MiB): what
/// `upload` gives back around a small tensor it has copied.
const FOLIO_BYTES: usize = 2 << 20;

/// Storage of a CPU tensor.
#[derive(Debug)]
pub(crate) enum CpuData {
    /// Owned `f32` values (activations, converted weights).
    F32(Vec<f32>),
    /// Bytes of any dtype kept where they are (a memory-mapped model file).
    Host(HostBytes),
    /// A 2-D weight of a simple quantised format re-laid out for the packed kernel
    /// (`quant::packed`), where this CPU runs it.
    Packed(crate::quant::PackedWeights),
}

#[derive(Debug)]
pub(crate) struct CpuBuffer {
    pub(crate) data: CpuData,
}

impl Buffer for CpuBuffer {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> Option<&mut dyn Any> {
        Some(self)
    }
    fn size_bytes(&self) -> usize {
        match &self.data {
            CpuData::F32(v) => v.len() * 4,
            CpuData::Host(h) => h.len(),
            CpuData::Packed(p) => p.size_bytes(),
        }
    }
}

/// The CPU backend. Each instance owns a rayon pool of `threads` workers, so the engine's
/// compute never competes with the daemon's async runtime for the same threads.
#[derive(Debug)]
pub struct CpuBackend {
    pool: rayon::ThreadPool,
    threads: usize,
    name: String,
    batch_invariant: bool,
}

/// Choices of the CPU backend beyond its thread count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuOptions {
    /// Every matmul row's result the same whatever else shares its pass, for every weight
    /// format: F32, F16 and BF16 weights go through one family of dot tiles (`dot`) for any
    /// number of rows, and Q4_K/Q5_K decode passes through tiles that sum in the prefill panels'
    /// order (`quant::x86::ktile`). Off: the faster kernels, invariant for Q8_0, Q4_0/1 and
    /// Q5_0/1 only. Needs AVX-512 (F/BW/VL) on x86-64; elsewhere [`CpuBackend::with_options`]
    /// refuses it.
    pub batch_invariant: bool,
}

impl CpuBackend {
    /// A backend with `threads` workers (0 means one per available core) and the default
    /// options (the fastest kernels).
    pub fn new(threads: usize) -> Result<Self> {
        Self::with_options(threads, CpuOptions::default())
    }

    /// A backend with `threads` workers (0 means one per available core) and `options`. Fails
    /// when `options.batch_invariant` is set on a CPU without AVX-512, whose float kernels are
    /// not invariant: a caller that needs invariance must not silently lose it.
    pub fn with_options(threads: usize, options: CpuOptions) -> Result<Self> {
        if options.batch_invariant && !simd::avx512() {
            return Err(DriverError::Unavailable {
                backend: "cpu",
                reason: "batch_invariant = true needs AVX-512 (F, BW and VL) for F32/F16/BF16 weights, \
                         which this CPU lacks"
                    .into(),
            });
        }
        allocator::tune();
        let threads = if threads == 0 { std::thread::available_parallelism().map_or(1, |n| n.get()) } else { threads };
        let mut builder =
            rayon::ThreadPoolBuilder::new().num_threads(threads).thread_name(|i| format!("govbox-cpu-{i}"));
        // One worker per core when the affinity mask has enough of them (see `affinity`).
        if let Some(cores) = affinity::plan(threads) {
            builder = builder.start_handler(move |i| {
                if let Some(&c) = cores.get(i) {
                    affinity::pin_current(c);
                }
            });
        }
        let pool = builder.build().map_err(|e| DriverError::Unavailable { backend: "cpu", reason: e.to_string() })?;
        Ok(Self { pool, threads, name: cpu_model_name(), batch_invariant: options.batch_invariant })
    }

    fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        self.pool.install(f)
    }
}

fn cpu_model_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

fn mem_total() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    let l = s.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

pub(crate) fn cpu_buf<'a>(t: &'a Tensor, op: &'static str) -> Result<&'a CpuBuffer> {
    t.buffer().as_any().downcast_ref::<CpuBuffer>().ok_or(DriverError::ForeignTensor { op })
}

/// The values of an `f32` activation tensor, or of any weight tensor de-quantised to `f32`.
pub(crate) fn f32_values<'a>(t: &'a Tensor, op: &'static str) -> Result<Cow<'a, [f32]>> {
    let b = cpu_buf(t, op)?;
    match &b.data {
        CpuData::F32(v) => Ok(Cow::Borrowed(v.as_slice())),
        CpuData::Packed(p) => {
            let k = p.row_len();
            let mut out = vec![0f32; p.rows() * k];
            for (r, o) in out.chunks_exact_mut(k.max(1)).enumerate() {
                p.dequantize_row(r, o);
            }
            Ok(Cow::Owned(out))
        }
        CpuData::Host(h) => {
            let dt = t.dtype();
            if dt == DType::F32
                && let Ok(s) = bytemuck::try_cast_slice::<u8, f32>(h.as_slice())
            {
                return Ok(Cow::Borrowed(s));
            }
            if matches!(dt, DType::U32 | DType::I64) {
                return Err(DriverError::DType { op, dtype: dt });
            }
            let mut out = vec![0f32; t.elem_count()];
            let k = t.last_dim();
            let rb = dt.row_bytes(k).ok_or(DriverError::DType { op, dtype: dt })?;
            for (o, r) in out.chunks_exact_mut(k.max(1)).zip(h.as_slice().chunks_exact(rb.max(1))) {
                crate::quant::dequantize_row(dt, r, o);
            }
            Ok(Cow::Owned(out))
        }
    }
}

pub(crate) fn new_f32(v: Vec<f32>, shape: Vec<usize>) -> Tensor {
    Tensor::from_buffer(Arc::new(CpuBuffer { data: CpuData::F32(v) }), DType::F32, shape)
}

fn check_f32(t: &Tensor, op: &'static str) -> Result<()> {
    if t.dtype() != DType::F32 {
        return Err(DriverError::DType { op, dtype: t.dtype() });
    }
    Ok(())
}

/// SwiGLU's `silu(g) · u`, one formula for [`Backend::swiglu`] and [`Backend::swiglu_into`].
fn silu_times(g: f32, u: f32) -> f32 {
    g / (1.0 + (-g).exp()) * u
}

/// Applies `f` elementwise to `a` and `b`, where `b` is either the same shape or one row.
fn binary(a: &Tensor, b: &Tensor, op: &'static str, f: impl Fn(f32, f32) -> f32 + Sync) -> Result<Tensor> {
    check_f32(a, op)?;
    let av = f32_values(a, op)?;
    let bv = f32_values(b, op)?;
    let n = a.last_dim();
    let out: Vec<f32> = if bv.len() == av.len() {
        av.par_iter().zip(bv.par_iter()).map(|(&x, &y)| f(x, y)).collect()
    } else if bv.len() == n && n > 0 {
        let mut out = av.to_vec();
        out.par_chunks_mut(n).for_each(|row| row.iter_mut().zip(bv.iter()).for_each(|(x, &y)| *x = f(*x, y)));
        out
    } else {
        return Err(DriverError::Shape {
            op,
            detail: format!("{:?} and {:?} neither match nor broadcast by row", a.shape(), b.shape()),
        });
    };
    Ok(new_f32(out, a.shape().to_vec()))
}

/// `a + b`, where `b` is either the same shape or one row (a bias).
fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    check_f32(a, "add")?;
    let bv = f32_values(b, "add")?;
    let n = a.last_dim();
    let mut out = f32_values(a, "add")?.into_owned();
    if bv.len() == out.len() {
        if out.len() < norm::PAR_MIN_VALUES {
            norm::add_in_place(&mut out, &bv);
        } else {
            out.par_chunks_mut(norm::PAR_MIN_VALUES / 4)
                .zip(bv.par_chunks(norm::PAR_MIN_VALUES / 4))
                .for_each(|(o, b)| norm::add_in_place(o, b));
        }
    } else if bv.len() == n && n > 0 {
        norm::for_row_blocks(&mut out, n, |rows| add_row_in_place(rows, &bv));
    } else {
        return Err(DriverError::Shape {
            op: "add",
            detail: format!("{:?} and {:?} neither match nor broadcast by row", a.shape(), b.shape()),
        });
    }
    Ok(new_f32(out, a.shape().to_vec()))
}

simd::simd_kernel! {
    /// Adds `row` to every `row.len()`-value row of `a`.
    fn add_row_in_place(a: &mut [f32], row: &[f32]) {
        for r in a.chunks_exact_mut(row.len()) {
            r.iter_mut().zip(row).for_each(|(x, &y)| *x += y);
        }
    }
}

impl Backend for CpuBackend {
    fn info(&self) -> DeviceInfo {
        DeviceInfo {
            kind: DeviceKind::Cpu,
            name: self.name.clone(),
            threads: self.threads,
            memory_used: None,
            memory_total: mem_total(),
            simulated: false,
            temperature_c: None,
            health: None,
            notes: if self.batch_invariant {
                vec!["batch-invariant matmul: every weight format (slower F16/BF16/F32 and Q4_K/Q5_K)".into()]
            } else {
                Vec::new()
            },
        }
    }

    fn caps(&self) -> Caps {
        Caps { native_quantized_matmul: true, simd: crate::quant::simd_level() }
    }

    fn run_within(&self, f: &mut (dyn FnMut() + Send)) {
        self.pool.install(|| warm::with_workers_polling(self.threads, f))
    }

    fn concurrent_calls(&self) -> bool {
        true
    }

    fn upload(&self, data: HostBytes, dtype: DType, shape: &[usize]) -> Result<Tensor> {
        crate::backend::check_upload(dtype, shape, data.len())?;
        // The weight matrices of the simple quantised formats are re-laid out once for the packed
        // kernel, where this CPU has one; the file's pages are then given back (they are not
        // read again). f32 data that is not 4-byte aligned in the file is copied once so kernels
        // can read it as &[f32]. Small tensors of a file mapping (norms, biases) are copied too:
        // the page cache may hold the file in 2 MiB folios, and the first read of a few KiB there
        // maps the whole folio into the process (a Qwen2.5-0.5B Q8_0 server grew 66 MB of
        // file-backed RSS on its first request, 2 MiB per layer's norms). Copying reads them,
        // which maps those folios too, so the 2 MiB around each copied tensor is given back at
        // once (`release_pages_around`; the neighbours' pages in it read back from the page
        // cache if they are needed): until December 2026 they stayed mapped until the load
        // ended, 170 MB of a Qwen2.5-1.5B Q8_0 load's peak RSS when another process had just
        // read the file through a mapping (1,845,820 KB against 1,673,128 KB after). The other
        // weight matrices are copied onto huge pages (below); everything else is kept where it is.
        let copy = data.is_file_backed() && data.len() <= COPY_BELOW_BYTES;
        let packed = match shape {
            [n, k] if crate::quant::packable(dtype) => {
                let release = |r| data.release_pages_in(r);
                self.run(|| crate::quant::PackedWeights::pack_releasing(dtype, data.as_slice(), *n, *k, release))
            }
            _ => None,
        };
        // What a copied tensor's file pages get once it is copied.
        let copied =
            |data: &HostBytes| if copy { data.release_pages_around(FOLIO_BYTES) } else { data.release_pages() };
        let buf = if let Some(p) = packed {
            copied(&data);
            CpuBuffer { data: CpuData::Packed(p) }
        } else if dtype == DType::F32 && (copy || bytemuck::try_cast_slice::<u8, f32>(data.as_slice()).is_err()) {
            let v: Vec<f32> =
                data.as_slice().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            copied(&data);
            CpuBuffer { data: CpuData::F32(v) }
        } else if copy {
            let v = data.as_slice().to_vec();
            copied(&data);
            CpuBuffer { data: CpuData::Host(HostBytes::from_vec(v)) }
        } else if data.is_file_backed() && shape.len() == 2 {
            // A weight matrix kept in its own format (F16, BF16, F32, the formats with no packed
            // kernel) is read whole on every decode step: copied once into memory on huge pages
            // (see `quant::HugeBuf`) rather than read from the page cache's small pages; a few
            // MiB at a time, each piece's file pages given back once copied, so that the copy
            // and the mapping are not both resident.
            const PIECE: usize = 4 << 20;
            let mut h = crate::quant::HugeBuf::zeroed(data.len());
            for (i, piece) in h.chunks_mut(PIECE).enumerate() {
                let at = i * PIECE;
                piece.copy_from_slice(&data.as_slice()[at..at + piece.len()]);
                data.release_pages_in(at..at + piece.len());
            }
            CpuBuffer { data: CpuData::Host(HostBytes::from_owned(h)) }
        } else {
            data.populate();
            CpuBuffer { data: CpuData::Host(data) }
        };
        Ok(Tensor::from_buffer(Arc::new(buf), dtype, shape.to_vec()))
    }

    fn upload_f32(&self, data: &[f32], shape: &[usize]) -> Result<Tensor> {
        crate::backend::check_upload(DType::F32, shape, std::mem::size_of_val(data))?;
        Ok(new_f32(data.to_vec(), shape.to_vec()))
    }

    fn download_f32(&self, t: &Tensor) -> Result<Vec<f32>> {
        check_f32(t, "download_f32")?;
        Ok(f32_values(t, "download_f32")?.into_owned())
    }

    fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        self.run(|| matmul::linear(x, w, None, false, self.batch_invariant))
    }

    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
        self.run(|| norm::rms_norm(x, weight, eps))
    }

    fn layer_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        self.run(|| norm::layer_norm(x, weight, bias, eps))
    }

    fn rope(&self, x: &Tensor, rope: &Rope<'_>) -> Result<Tensor> {
        self.run(|| norm::rope(x, rope))
    }

    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        self.run(|| binary(gate, up, "swiglu", silu_times))
    }

    fn swiglu_into(&self, mut gate: Tensor, up: &Tensor) -> Result<Tensor> {
        if gate.dtype() == DType::F32 && gate.shape() == up.shape() {
            let u = f32_values(up, "swiglu")?;
            let own = gate.buffer_mut().and_then(|b| b.as_any_mut()).and_then(|a| a.downcast_mut::<CpuBuffer>());
            if let Some(CpuBuffer { data: CpuData::F32(g) }) = own
                && g.len() == u.len()
            {
                self.run(|| g.par_iter_mut().zip(u.par_iter()).for_each(|(g, &u)| *g = silu_times(*g, u)));
                return Ok(gate);
            }
        }
        self.swiglu(&gate, up)
    }

    fn gelu(&self, x: &Tensor) -> Result<Tensor> {
        check_f32(x, "gelu")?;
        let v = f32_values(x, "gelu")?;
        let mut out = v.into_owned();
        self.run(|| norm::for_row_blocks(&mut out, 1, norm::gelu_in_place));
        Ok(new_f32(out, x.shape().to_vec()))
    }

    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor> {
        self.run(|| add(a, b))
    }

    fn scale(&self, a: &Tensor, s: f32) -> Result<Tensor> {
        check_f32(a, "scale")?;
        let v = f32_values(a, "scale")?;
        Ok(new_f32(v.iter().map(|&x| x * s).collect(), a.shape().to_vec()))
    }

    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor> {
        let vocab = table.rows();
        let dim = table.last_dim();
        let dt = table.dtype();
        let rb = dt.row_bytes(dim).ok_or(DriverError::DType { op: "embedding", dtype: dt })?;
        let mut out = vec![0f32; ids.len() * dim];
        let b = cpu_buf(table, "embedding")?;
        for (o, &id) in out.chunks_exact_mut(dim.max(1)).zip(ids) {
            if id as usize >= vocab {
                return Err(DriverError::TokenOutOfRange { id, vocab });
            }
            let i = id as usize;
            match &b.data {
                CpuData::F32(v) => o.copy_from_slice(&v[i * dim..(i + 1) * dim]),
                CpuData::Host(h) => crate::quant::dequantize_row(dt, &h.as_slice()[i * rb..(i + 1) * rb], o),
                CpuData::Packed(p) => p.dequantize_row(i, o),
            }
        }
        Ok(new_f32(out, vec![ids.len(), dim]))
    }

    fn gather_rows(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor> {
        check_f32(x, "gather_rows")?;
        let v = f32_values(x, "gather_rows")?;
        let n = x.last_dim();
        let total = x.rows();
        let mut out = Vec::with_capacity(rows.len() * n);
        for &r in rows {
            if r >= total {
                return Err(DriverError::Shape { op: "gather_rows", detail: format!("row {r} of {total}") });
            }
            out.extend_from_slice(&v[r * n..(r + 1) * n]);
        }
        Ok(new_f32(out, vec![rows.len(), n]))
    }

    fn new_kv_cache(&self, spec: KvSpec) -> Result<Box<dyn KvCache>> {
        Ok(Box::new(CpuKvCache::new(spec)?))
    }

    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut dyn KvCache,
        spec: &PagedAttn<'_>,
    ) -> Result<Tensor> {
        self.run(|| attention::paged(q, k, v, cache, spec))
    }

    fn attention_windowed(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut dyn KvCache,
        spec: &PagedAttn<'_>,
        window: usize,
    ) -> Result<Tensor> {
        self.run(|| attention::paged_windowed(q, k, v, cache, spec, Some(window)))
    }

    fn attention_dense(&self, q: &Tensor, k: &Tensor, v: &Tensor, spec: &DenseAttn<'_>) -> Result<Tensor> {
        self.run(|| attention::dense(q, k, v, spec))
    }

    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
        self.run(|| matmul::linear(x, w, Some(b), gelu, self.batch_invariant))
    }

    fn add_layer_norm(&self, a: &Tensor, b: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        self.run(|| norm::add_layer_norm(a, b, weight, bias, eps))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn data_ptr(t: &Tensor) -> *const f32 {
        match &cpu_buf(t, "test").unwrap().data {
            CpuData::F32(v) => v.as_ptr(),
            _ => panic!("not an f32 activation"),
        }
    }

    /// `swiglu_into` gives `swiglu`'s bits, in the gate's own memory when nothing else holds
    /// it, and leaves a gate that another tensor shares as it was.
    #[test]
    fn swiglu_into_reuses_a_gate_it_owns_and_matches_swiglu() {
        let b = CpuBackend::new(2).unwrap();
        let g: Vec<f32> = (0..3 * 1000).map(|i| (i as f32 * 0.37).sin() * 6.0).collect();
        let u: Vec<f32> = (0..3 * 1000).map(|i| (i as f32 * 0.11).cos() * 2.0).collect();
        let (gate, up) = (b.upload_f32(&g, &[3, 1000]).unwrap(), b.upload_f32(&u, &[3, 1000]).unwrap());
        let want = b.download_f32(&b.swiglu(&gate, &up).unwrap()).unwrap();

        let at = data_ptr(&gate);
        let got = b.swiglu_into(gate, &up).unwrap();
        assert_eq!(data_ptr(&got), at, "an owned gate was not written in place");
        assert!(b.download_f32(&got).unwrap().iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()));

        let gate = b.upload_f32(&g, &[3, 1000]).unwrap();
        let shared = gate.clone();
        let got = b.swiglu_into(gate, &up).unwrap();
        assert_ne!(data_ptr(&got), data_ptr(&shared), "a shared gate was written over");
        assert_eq!(b.download_f32(&shared).unwrap(), g);
        assert!(b.download_f32(&got).unwrap().iter().zip(&want).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
