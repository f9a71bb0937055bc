//! The narrow, object-safe accelerator interface.
//!
//! The engine expresses a model as a sequence of these coarse ops; each backend implements them
//! on its own memory. Activations are always `f32` tensors of shape `[rows, cols]`; weights may be
//! any [`DType`]. Every op returns a fresh tensor, except the KV-cache write inside
//! [`Backend::attention`].

use std::any::Any;
use std::fmt;

use crate::{DType, DriverError, HostBytes, Result, Tensor};

/// What kind of device a backend drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DeviceKind {
    /// The host CPU.
    Cpu,
    /// An NVIDIA GPU through CUDA.
    Cuda,
    /// A Huawei Ascend NPU through CANN.
    Ascend,
}

/// Static and live facts about a device.
#[derive(Clone, Debug)]
pub struct DeviceInfo {
    /// Device kind.
    pub kind: DeviceKind,
    /// Human-readable device name (for the CPU, the processor's model name).
    pub name: String,
    /// Worker threads (CPU) or compute units.
    pub threads: usize,
    /// Bytes of device memory in use by this backend's allocations, when known.
    pub memory_used: Option<u64>,
    /// Total device memory, when known.
    pub memory_total: Option<u64>,
    /// True when the backend is a simulator rather than real hardware.
    pub simulated: bool,
    /// Device temperature in degrees Celsius, where the runtime reports it.
    pub temperature_c: Option<f32>,
    /// Device health as the vendor runtime words it ("ok", "warning", ...), where it reports it.
    pub health: Option<String>,
    /// Facts an operator should know about how models run here, such as weight formats that
    /// are de-quantised at upload.
    pub notes: Vec<String>,
}

/// Optional capabilities.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Caps {
    /// Weight dtypes that [`Backend::matmul`] accepts without conversion at upload.
    pub native_quantized_matmul: bool,
    /// The CPU SIMD level in use ("avx512", "avx2", "neon", "scalar"), or empty for devices.
    pub simd: &'static str,
}

/// How rotary position embedding pairs up the values of a head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeStyle {
    /// HF's `rotate_half`: value `i` pairs with value `i + head_dim / 2` (GGML's NeoX mode).
    Half,
    /// Adjacent pairs `(2i, 2i + 1)` (GGML's normal mode, used with llama.cpp's permuted llama
    /// Q/K weights).
    Interleaved,
}

/// Rotary position embedding parameters.
#[derive(Clone, Debug)]
pub struct Rope<'a> {
    /// Heads in each row of the input.
    pub n_heads: usize,
    /// Dimension of one head; `inv_freq.len() * 2` of it is rotated.
    pub head_dim: usize,
    /// Inverse frequencies, one per rotated pair (any scaling already applied by the engine).
    pub inv_freq: &'a [f32],
    /// Pairing layout.
    pub style: RopeStyle,
    /// Position of each row.
    pub positions: &'a [u32],
}

impl Rope<'_> {
    /// The check every backend makes before it rotates `x`: rows of `n_heads * head_dim` values,
    /// at most `head_dim / 2` frequencies, one position per row. Returns the row width.
    pub(crate) fn check(&self, x: &Tensor) -> Result<usize> {
        let width = self.n_heads * self.head_dim;
        let half = self.inv_freq.len();
        if x.last_dim() != width || half * 2 > self.head_dim || self.positions.len() != x.rows() {
            return Err(DriverError::Shape {
                op: "rope",
                detail: format!(
                    "input {:?}, {} heads of {}, {half} frequencies, {} positions",
                    x.shape(),
                    self.n_heads,
                    self.head_dim,
                    self.positions.len()
                ),
            });
        }
        Ok(width)
    }
}

/// The element type a KV pool stores keys and values in (`[serving] kv_dtype`). Attention reads
/// the stored type directly; new keys and values are rounded to it once, when written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KvDType {
    /// IEEE binary32: exact, twice the memory of `F16`.
    F32,
    /// IEEE binary16 (round to nearest even on write): half the memory of `F32`, llama.cpp's
    /// default cache type.
    F16,
    /// GGUF's `Q8_0`: blocks of 32 values as `i8` with one `f16` scale, 34 bytes per 32 values
    /// (53 % of `F16`), quantised on write as llama.cpp's `-ctk q8_0 -ctv q8_0`. Needs a head
    /// dimension that is a multiple of 32.
    Q8_0,
}

impl KvDType {
    /// Every KV dtype this build knows, in the config's spelling.
    pub const ALL: [KvDType; 3] = [KvDType::F32, KvDType::F16, KvDType::Q8_0];

    /// The config's name: `"f32"`, `"f16"`, `"q8_0"`.
    pub const fn name(self) -> &'static str {
        match self {
            KvDType::F32 => "f32",
            KvDType::F16 => "f16",
            KvDType::Q8_0 => "q8_0",
        }
    }

    /// Values stored together (a `q8_0` block shares one scale); head dimensions must be a
    /// multiple of it.
    pub const fn block_len(self) -> usize {
        match self {
            KvDType::F32 | KvDType::F16 => 1,
            KvDType::Q8_0 => 32,
        }
    }

    /// Bytes `values` stored values take (a multiple of [`KvDType::block_len`]), or `None` on
    /// overflow.
    pub const fn bytes_for(self, values: usize) -> Option<usize> {
        match self {
            KvDType::F32 => values.checked_mul(4),
            KvDType::F16 => values.checked_mul(2),
            KvDType::Q8_0 => (values / 32).checked_mul(34),
        }
    }

    /// The type for a config name, or `None` for a name this build does not store.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }
}

/// A `kv_dtype` name this build does not store.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("\"{name}\" is not a KV cache type this build stores (expected \"f32\", \"f16\" or \"q8_0\")")]
pub struct UnknownKvDType {
    /// The name given.
    pub name: String,
}

impl std::str::FromStr for KvDType {
    type Err = UnknownKvDType;

    fn from_str(s: &str) -> std::result::Result<Self, UnknownKvDType> {
        Self::from_name(s).ok_or_else(|| UnknownKvDType { name: s.to_string() })
    }
}

impl fmt::Display for KvDType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Shape of a paged KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvSpec {
    /// Decoder layers.
    pub n_layers: usize,
    /// KV heads per layer.
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the pool.
    pub n_blocks: usize,
    /// The stored element type.
    pub dtype: KvDType,
}

impl KvSpec {
    /// Values one layer's K (or V) pool holds, or `None` on overflow.
    pub fn values_per_layer(&self) -> Option<usize> {
        self.n_blocks
            .checked_mul(self.block_size)
            .and_then(|a| a.checked_mul(self.n_kv_heads))
            .and_then(|a| a.checked_mul(self.head_dim))
    }

    /// Bytes the pool's data takes (both K and V, all layers, at [`KvSpec::dtype`]), or `None`
    /// on overflow.
    pub fn bytes(&self) -> Option<usize> {
        self.values_per_layer().and_then(|v| self.dtype.bytes_for(v)).and_then(|b| b.checked_mul(2 * self.n_layers))
    }

    /// An error naming `head_dim` when a head is not whole blocks of the stored type (`q8_0`
    /// stores 32 values per block; a pool of any backend keeps each head's values in whole
    /// blocks, so that a position's row is whole blocks too).
    pub(crate) fn check_whole_blocks(&self) -> Result<()> {
        if !self.head_dim.is_multiple_of(self.dtype.block_len()) {
            return Err(DriverError::KvCache(format!(
                "kv_dtype {} stores blocks of {} values: head_dim {} is not a multiple of it",
                self.dtype,
                self.dtype.block_len(),
                self.head_dim
            )));
        }
        Ok(())
    }

    /// The pool slot of position `pos` of a sequence whose blocks are `table`: an error when
    /// the table has no block for it, or names one outside the pool. (Only the Ascend backend
    /// looks slots up one by one, so without it the function is not built.)
    #[cfg(feature = "ascend")]
    pub(crate) fn slot(&self, table: &[u32], pos: usize) -> Result<usize> {
        let bs = self.block_size;
        let b = *table.get(pos / bs).ok_or_else(|| DriverError::KvCache(format!("position {pos} has no block")))?;
        if b as usize >= self.n_blocks {
            return Err(DriverError::KvCache(format!("block {b} of {}", self.n_blocks)));
        }
        Ok(b as usize * bs + pos % bs)
    }
}

/// A backend-owned pool of KV blocks. The engine owns the block tables; the pool owns the data.
pub trait KvCache: Send + fmt::Debug {
    /// The pool's shape.
    fn spec(&self) -> KvSpec;
    /// For the owning backend to downcast.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// One sequence's part of a batched attention call.
#[derive(Clone, Copy, Debug)]
pub struct SeqAttn<'a> {
    /// The blocks holding this sequence's positions, in order.
    pub block_table: &'a [u32],
    /// Positions already in the cache (the new rows start at this position).
    pub start_pos: usize,
    /// New rows of this sequence in the batch.
    pub n_new: usize,
}

/// A batched causal attention over a paged KV cache.
///
/// The rows of `q`, `k` and `v` are the new tokens of each sequence in turn.
#[derive(Clone, Copy, Debug)]
pub struct PagedAttn<'a> {
    /// Layer index into the cache.
    pub layer: usize,
    /// Query heads.
    pub n_heads: usize,
    /// KV heads (divides `n_heads`; grouped-query attention when smaller).
    pub n_kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Score scale, normally `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// The sequences.
    pub seqs: &'a [SeqAttn<'a>],
}

impl PagedAttn<'_> {
    /// The argument check every backend makes before it touches the pool `spec`: the call's
    /// heads and head size are the pool's, the layer is one of its layers, the query heads are a
    /// whole multiple of the KV heads, and `q`, `k` and `v` hold one row per new position.
    /// Returns the number of rows.
    pub(crate) fn check(&self, spec: &KvSpec, q: &Tensor, k: &Tensor, v: &Tensor) -> Result<usize> {
        let (hd, nh, nkv) = (self.head_dim, self.n_heads, self.n_kv_heads);
        let rows: usize = self.seqs.iter().map(|s| s.n_new).sum();
        if spec.head_dim != hd
            || spec.n_kv_heads != nkv
            || nkv == 0
            || nh % nkv != 0
            || self.layer >= spec.n_layers
            || q.shape() != [rows, nh * hd]
            || k.shape() != [rows, nkv * hd]
            || v.shape() != [rows, nkv * hd]
        {
            return Err(DriverError::Shape {
                op: "attention",
                detail: format!(
                    "q {:?} k {:?} v {:?} for {rows} rows, {nh} heads, {nkv} kv heads of {hd}, layer {}, cache {spec:?}",
                    q.shape(),
                    k.shape(),
                    v.shape(),
                    self.layer
                ),
            });
        }
        Ok(rows)
    }
}

/// The sizes of `x [m, k] · wᵀ` for `w [n, k]`, after the check every backend makes: `w` is 2-D
/// with rows as long as `x`'s. `out` is `x`'s shape with `n` last.
pub(crate) struct MatmulShape {
    pub m: usize,
    pub k: usize,
    pub n: usize,
    pub out: Vec<usize>,
}

impl MatmulShape {
    pub(crate) fn check(x: &Tensor, w: &Tensor) -> Result<Self> {
        let (m, k) = (x.rows(), x.last_dim());
        if w.shape().len() != 2 || w.last_dim() != k {
            return Err(DriverError::Shape {
                op: "matmul",
                detail: format!("activations {:?} against weight {:?}", x.shape(), w.shape()),
            });
        }
        let n = w.shape()[0];
        let mut out = x.shape().to_vec();
        if let Some(l) = out.last_mut() {
            *l = n;
        }
        Ok(MatmulShape { m, k, n, out })
    }
}

/// The check every backend makes before it makes a tensor of `dtype` and `shape` from `len`
/// bytes: rows are whole blocks, and the bytes are exactly what the shape needs.
pub(crate) fn check_upload(dtype: DType, shape: &[usize], len: usize) -> Result<()> {
    let expected = dtype.bytes_for(shape).ok_or_else(|| DriverError::Shape {
        op: "upload",
        detail: format!(
            "{dtype} rows of {} values are not whole blocks of {}, or {shape:?} overflows",
            shape.last().copied().unwrap_or(1),
            dtype.block_len()
        ),
    })?;
    if expected != len {
        return Err(DriverError::UploadSize { dtype, shape: shape.to_vec(), expected, got: len });
    }
    Ok(())
}

/// Bidirectional (encoder) attention over a padded batch.
#[derive(Clone, Copy, Debug)]
pub struct DenseAttn<'a> {
    /// Sequences in the batch.
    pub batch: usize,
    /// Padded length of every sequence; rows are `batch * seq_len`.
    pub seq_len: usize,
    /// Heads.
    pub n_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// Score scale, normally `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// `[batch * seq_len]`: true for real tokens, false for padding (padding keys get no weight).
    pub key_mask: &'a [bool],
}

/// The accelerator interface. Object-safe: the daemon picks a backend at run time.
pub trait Backend: Send + Sync + fmt::Debug {
    /// Device facts, including live memory use.
    fn info(&self) -> DeviceInfo;
    /// Optional capabilities.
    fn caps(&self) -> Caps;

    /// Makes a tensor of `dtype` and `shape` from host bytes. The CPU backend keeps a reference
    /// to `data` rather than copying it when its alignment allows.
    fn upload(&self, data: HostBytes, dtype: DType, shape: &[usize]) -> Result<Tensor>;
    /// Makes an `f32` tensor from host values.
    fn upload_f32(&self, data: &[f32], shape: &[usize]) -> Result<Tensor>;
    /// Copies an `f32` tensor back to the host.
    fn download_f32(&self, t: &Tensor) -> Result<Vec<f32>>;

    /// `x [m, k] · wᵀ` for `w [n, k]` of any weight dtype: `[m, n]`.
    fn matmul(&self, x: &Tensor, w: &Tensor) -> Result<Tensor>;
    /// RMSNorm over the last dimension, times `weight`.
    fn rms_norm(&self, x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor>;
    /// LayerNorm over the last dimension, with `weight` and `bias`.
    fn layer_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor>;
    /// Rotary position embedding of each row.
    fn rope(&self, x: &Tensor, rope: &Rope<'_>) -> Result<Tensor>;
    /// `silu(gate) * up`.
    fn swiglu(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor>;
    /// [`Backend::swiglu`], the same values, written over `gate`'s memory where the backend can
    /// and no other tensor holds it (the CPU backend does), so that a prefill chunk's widest
    /// activations are held twice at a time, not three times.
    fn swiglu_into(&self, gate: Tensor, up: &Tensor) -> Result<Tensor> {
        self.swiglu(&gate, up)
    }
    /// Exact (erf) GELU.
    fn gelu(&self, x: &Tensor) -> Result<Tensor>;
    /// `a + b`; `b` may be one row, broadcast over `a`'s rows.
    fn add(&self, a: &Tensor, b: &Tensor) -> Result<Tensor>;
    /// `a * s`.
    fn scale(&self, a: &Tensor, s: f32) -> Result<Tensor>;
    /// Rows of `table [vocab, dim]` (any weight dtype) for `ids`: `[ids.len(), dim]` in `f32`.
    fn embedding(&self, table: &Tensor, ids: &[u32]) -> Result<Tensor>;
    /// Selects rows of an `f32` tensor.
    fn gather_rows(&self, x: &Tensor, rows: &[usize]) -> Result<Tensor>;

    /// Allocates a paged KV pool.
    fn new_kv_cache(&self, spec: KvSpec) -> Result<Box<dyn KvCache>>;
    /// Writes `k` and `v` (`[rows, n_kv_heads * head_dim]`, roped) into the cache at each
    /// sequence's new positions, then computes causal attention of `q` (`[rows, n_heads *
    /// head_dim]`, roped) over each sequence's cached positions: `[rows, n_heads * head_dim]`.
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut dyn KvCache,
        spec: &PagedAttn<'_>,
    ) -> Result<Tensor>;
    /// Bidirectional attention over a padded batch (encoders).
    fn attention_dense(&self, q: &Tensor, k: &Tensor, v: &Tensor, spec: &DenseAttn<'_>) -> Result<Tensor>;

    /// `x · wᵀ + b` for a bias row `b [n]`, then exact GELU when `gelu`: the same values as
    /// `matmul`, `add` and `gelu` in turn. Backends may fuse them; this default does not.
    fn linear(&self, x: &Tensor, w: &Tensor, b: &Tensor, gelu: bool) -> Result<Tensor> {
        let y = self.add(&self.matmul(x, w)?, b)?;
        if gelu { self.gelu(&y) } else { Ok(y) }
    }
    /// LayerNorm of `a + b` (same shapes): the same values as `add`, then `layer_norm`.
    /// Backends may fuse them; this default does not.
    fn add_layer_norm(&self, a: &Tensor, b: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
        self.layer_norm(&self.add(a, b)?, weight, bias, eps)
    }

    /// `gelu_tanh(gate) * up`, with the tanh approximation of GELU (PyTorch's
    /// `gelu(approximate="tanh")`, Gemma's GeGLU). This default computes it on the host between a
    /// download and an upload, so that every backend has it; backends may do it on the device.
    fn geglu_tanh(&self, gate: &Tensor, up: &Tensor) -> Result<Tensor> {
        if gate.shape() != up.shape() {
            return Err(DriverError::Shape {
                op: "geglu_tanh",
                detail: format!("gate {:?} and up {:?}", gate.shape(), up.shape()),
            });
        }
        let (g, u) = (self.download_f32(gate)?, self.download_f32(up)?);
        let out: Vec<f32> = g.iter().zip(&u).map(|(&g, &u)| gelu_tanh(g) * u).collect();
        self.upload_f32(&out, gate.shape())
    }

    /// Columns `start..start + len` of each row of an `f32` tensor: `[rows, len]`. This default
    /// goes through the host; backends may copy on the device.
    fn slice_cols(&self, x: &Tensor, start: usize, len: usize) -> Result<Tensor> {
        let (rows, n) = (x.rows(), x.last_dim());
        if start.checked_add(len).is_none_or(|e| e > n) {
            return Err(DriverError::Shape {
                op: "slice_cols",
                detail: format!("columns {start}..{} of {:?}", start.saturating_add(len), x.shape()),
            });
        }
        let v = self.download_f32(x)?;
        let out: Vec<f32> =
            v.chunks_exact(n.max(1)).take(rows).flat_map(|r| r[start..start + len].iter().copied()).collect();
        self.upload_f32(&out, &[rows, len])
    }

    /// The `f32` tensors `parts` (same rows) side by side: `[rows, sum of their columns]`. This
    /// default goes through the host; backends may copy on the device.
    fn concat_cols(&self, parts: &[&Tensor]) -> Result<Tensor> {
        let rows = parts.first().map_or(0, |t| t.rows());
        if parts.iter().any(|t| t.rows() != rows) {
            let shapes: Vec<_> = parts.iter().map(|t| t.shape().to_vec()).collect();
            return Err(DriverError::Shape { op: "concat_cols", detail: format!("row counts differ: {shapes:?}") });
        }
        let width: usize = parts.iter().map(|t| t.last_dim()).sum();
        let host = parts.iter().map(|t| self.download_f32(t)).collect::<Result<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows * width);
        for r in 0..rows {
            for (t, v) in parts.iter().zip(&host) {
                let n = t.last_dim();
                out.extend_from_slice(&v[r * n..(r + 1) * n]);
            }
        }
        self.upload_f32(&out, &[rows, width])
    }

    /// [`Backend::attention`] where each query row sees only the last `window` positions of its
    /// sequence, itself included (sliding-window layers). Backends that cannot restrict the keys
    /// answer [`DriverError::Unsupported`].
    fn attention_windowed(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        cache: &mut dyn KvCache,
        spec: &PagedAttn<'_>,
        window: usize,
    ) -> Result<Tensor> {
        let _ = (q, k, v, cache, spec, window);
        Err(DriverError::Unsupported { op: "sliding-window attention", backend: self.backend_name() })
    }

    /// A short name of this backend for messages ("cpu", "ascend", "cuda").
    fn backend_name(&self) -> &'static str {
        match self.info().kind {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Cuda => "cuda",
            DeviceKind::Ascend => "ascend",
        }
    }

    /// Runs `f`, which calls this backend's operations, as one unit of work. The CPU backend
    /// runs it on one of its own worker threads, so that each operation's parallel loop starts
    /// from inside the pool instead of waking the workers from outside (a futex round trip per
    /// operation, most of a small model's decode step). The default just calls `f`.
    fn run_within(&self, f: &mut (dyn FnMut() + Send)) {
        f()
    }

    /// Whether operations may be called from several threads at once inside [`Backend::run_within`]
    /// (the CPU backend's own pool, where an operation's parallel loop nests in the caller's).
    /// The default is no: a device backend's calls go one after another.
    fn concurrent_calls(&self) -> bool {
        false
    }
}

/// GELU with the tanh approximation, `0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))`, computed
/// in `f64` and rounded once.
pub fn gelu_tanh(x: f32) -> f32 {
    let x = f64::from(x);
    let c = (2.0 / std::f64::consts::PI).sqrt();
    (0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())) as f32
}
