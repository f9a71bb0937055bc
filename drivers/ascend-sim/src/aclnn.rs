//! libopapi.so: the aclnn ops. `XxxGetWorkspaceSize` validates shapes, dtypes and strides and
//! builds a single-use executor; `Xxx` checks workspace, executor and stream and queues the op.

use std::ffi::c_void;

use crate::dtype::DType;
use crate::error::codes::*;
use crate::error::{SimResult, bail, guard};
use crate::kernels::{Binary, Kernel, Unary};
use crate::runtime::enqueue_kernel;
use crate::state::{Executor, Handle, State, Work, hex, lock};
use crate::view::{View, broadcast_shapes, shape_str};
use crate::{aclDataType, aclIntArray, aclOpExecutor, aclScalar, aclTensor, aclnnStatus, aclrtStream};

const INVALID: i32 = ACLNN_ERR_PARAM_INVALID;

fn tensor(st: &State, p: *const aclTensor, name: &str, dev: i32) -> SimResult<View> {
    let h = p.addr();
    if h == 0 {
        bail!(ACLNN_ERR_PARAM_NULLPTR, "{name} is NULL");
    }
    match st.handles.get(&h) {
        Some(Handle::Tensor(v)) => {
            st.check_view(v, name, dev)?;
            Ok(v.clone())
        }
        Some(other) => bail!(INVALID, "{name} {} is {}, not an aclTensor", hex(h), other.kind()),
        None => bail!(
            INVALID,
            "{name} {} is not a live aclTensor (destroyed with aclDestroyTensor, or never created)",
            hex(h)
        ),
    }
}

fn opt_tensor(st: &State, p: *const aclTensor, name: &str, dev: i32) -> SimResult<Option<View>> {
    if p.is_null() { Ok(None) } else { tensor(st, p, name, dev).map(Some) }
}

fn scalar(st: &State, p: *const aclScalar, name: &str) -> SimResult<f64> {
    let h = p.addr();
    if h == 0 {
        bail!(ACLNN_ERR_PARAM_NULLPTR, "{name} is NULL");
    }
    match st.handles.get(&h) {
        Some(Handle::Scalar { value }) => Ok(*value),
        Some(other) => bail!(INVALID, "{name} {} is {}, not an aclScalar", hex(h), other.kind()),
        None => bail!(INVALID, "{name} {} is not a live aclScalar", hex(h)),
    }
}

fn int_array(st: &State, p: *const aclIntArray, name: &str) -> SimResult<Vec<i64>> {
    let h = p.addr();
    if h == 0 {
        bail!(ACLNN_ERR_PARAM_NULLPTR, "{name} is NULL");
    }
    match st.handles.get(&h) {
        Some(Handle::IntArray(v)) => Ok(v.clone()),
        Some(other) => bail!(INVALID, "{name} {} is {}, not an aclIntArray", hex(h), other.kind()),
        None => bail!(INVALID, "{name} {} is not a live aclIntArray", hex(h)),
    }
}

fn float(v: &View, name: &str) -> SimResult<()> {
    if !v.dtype.is_float() {
        bail!(INVALID, "{name} has dtype {}; this op takes ACL_FLOAT, ACL_FLOAT16 or ACL_BF16", v.dtype.name());
    }
    Ok(())
}

fn numeric(v: &View, name: &str) -> SimResult<()> {
    if v.dtype == DType::Bool {
        bail!(INVALID, "{name} has dtype ACL_BOOL; this op takes numeric tensors");
    }
    Ok(())
}

fn same_dtype(a: &View, an: &str, b: &View, bn: &str) -> SimResult<()> {
    if a.dtype != b.dtype {
        bail!(INVALID, "{an} is {} but {bn} is {}: they must have the same dtype", a.dtype.name(), b.dtype.name());
    }
    Ok(())
}

fn expect_shape(v: &View, name: &str, want: &[usize], why: &str) -> SimResult<()> {
    if v.dims != want {
        bail!(INVALID, "{name} is {} but must be {} ({why})", v.shape(), shape_str(want));
    }
    Ok(())
}

fn norm_dim(dim: i64, rank: usize, name: &str) -> SimResult<usize> {
    let r = rank as i64;
    if rank == 0 || dim < -r || dim >= r {
        bail!(INVALID, "{name} {dim} is out of range for a tensor of rank {rank} (valid {}..{})", -r, r - 1);
    }
    Ok(if dim < 0 { (dim + r) as usize } else { dim as usize })
}

/// Builds an executor: the common part of every XxxGetWorkspaceSize.
fn build(
    func: &'static str,
    launch: &'static str,
    workspace_size: *mut u64,
    executor: *mut *mut aclOpExecutor,
    f: impl FnOnce(&State, i32) -> SimResult<Kernel>,
) -> aclnnStatus {
    guard(func, || {
        let mut st = lock();
        let dev = st.bound_device()?;
        if workspace_size.is_null() {
            bail!(ACLNN_ERR_PARAM_NULLPTR, "workspaceSize is NULL");
        }
        if executor.is_null() {
            bail!(ACLNN_ERR_PARAM_NULLPTR, "executor is NULL");
        }
        let kernel = f(&st, dev)?;
        let size = kernel.workspace_size();
        let h = st.new_handle(Handle::Executor(Box::new(Executor { launch, workspace: size, device: dev, kernel })));
        // SAFETY: both non-NULL (checked) and writable (caller contract).
        unsafe {
            *workspace_size = size;
            *executor = std::ptr::without_provenance_mut(h);
        }
        Ok(())
    })
}

/// Queues a built op: the common part of every aclnn launch.
fn launch(
    name: &'static str,
    workspace: *mut c_void,
    workspace_size: u64,
    executor: *mut aclOpExecutor,
    stream: aclrtStream,
) -> aclnnStatus {
    guard(name, || {
        let mut st = lock();
        let dev = st.bound_device()?;
        if executor.is_null() {
            bail!(ACLNN_ERR_PARAM_NULLPTR, "executor is NULL");
        }
        let h = executor.addr();
        let key = st.stream_key(stream.addr(), dev)?;
        let (need, accesses) = {
            let e = match st.handles.get(&h) {
                Some(Handle::Executor(e)) if e.launch == name => e,
                Some(Handle::Executor(e)) => bail!(
                    INVALID,
                    "executor {} was built by {}GetWorkspaceSize; launch it with {}, not {name}",
                    hex(h),
                    e.launch,
                    e.launch
                ),
                Some(Handle::UsedExecutor(op)) => bail!(
                    INVALID,
                    "executor {} (from {op}GetWorkspaceSize) was already used; executors are single-use: call {name}GetWorkspaceSize again",
                    hex(h)
                ),
                Some(other) => bail!(INVALID, "{} is {}, not an aclOpExecutor", hex(h), other.kind()),
                None => bail!(
                    INVALID,
                    "executor {} is not a live aclOpExecutor (never built, or aclFinalize ran since)",
                    hex(h)
                ),
            };
            if e.device != dev {
                bail!(
                    INVALID,
                    "executor {} was built on device {} but this thread is bound to device {dev}",
                    hex(h),
                    e.device
                );
            }
            let mut acc = Vec::new();
            for (v, write) in e.kernel.views() {
                st.check_view(v, "tensor", dev)?;
                if let Some((lo, hi)) = v.byte_range() {
                    st.check_pending(lo, hi, write, Some(key), &format!("tensor {} {}", hex(v.handle), v.shape()))?;
                    acc.push((lo, hi, write));
                }
            }
            (e.workspace, acc)
        };
        let ws = workspace.expose_provenance();
        if workspace_size < need {
            bail!(
                INVALID,
                "workspaceSize {workspace_size} is smaller than the {need} bytes {name}GetWorkspaceSize asked for"
            );
        }
        if ws == 0 {
            bail!(
                ACLNN_ERR_PARAM_NULLPTR,
                "workspace is NULL but {name}GetWorkspaceSize asked for {need} bytes: aclrtMalloc a workspace of at least that size"
            );
        }
        st.device_range(ws, need as usize, "workspace", dev).map_err(|mut e| {
            e.code = INVALID;
            e
        })?;
        st.check_pending(ws, ws + need as usize, true, Some(key), "workspace")?;
        let exec = match st.handles.insert(h, Handle::UsedExecutor(name)) {
            Some(Handle::Executor(e)) => e,
            _ => bail!(ACLNN_ERR_INNER, "executor {} vanished", hex(h)),
        };
        let mut accesses = accesses;
        accesses.push((ws, ws + need as usize, true));
        enqueue_kernel(&mut st, key, Work::Kernel { exec, workspace: ws, workspace_len: need as usize }, &accesses);
        Ok(())
    })
}

macro_rules! launch_fn {
    ($name:ident) => {
        #[doc = concat!(
                    "Queues the op built by `", stringify!($name), "GetWorkspaceSize` on `stream` (NULL = default \
             stream); it runs at aclrtSynchronizeStream. The executor is single-use; `workspace` must be \
             device memory of at least the size asked for."
                )]
        ///
        /// # Safety
        /// `workspace` is checked against the device-memory registry; handles are never dereferenced.
        #[unsafe(no_mangle)]
        pub unsafe extern "C" fn $name(
            workspace: *mut c_void,
            workspaceSize: u64,
            executor: *mut aclOpExecutor,
            stream: aclrtStream,
        ) -> aclnnStatus {
            launch(stringify!($name), workspace, workspaceSize, executor, stream)
        }
    };
}

launch_fn!(aclnnMm);
launch_fn!(aclnnMatmul);
launch_fn!(aclnnWeightQuantBatchMatmulV2);
launch_fn!(aclnnRmsNorm);
launch_fn!(aclnnLayerNorm);
launch_fn!(aclnnRotaryPositionEmbedding);
launch_fn!(aclnnSoftmax);
launch_fn!(aclnnSwiGlu);
launch_fn!(aclnnSilu);
launch_fn!(aclnnGelu);
launch_fn!(aclnnAdd);
launch_fn!(aclnnMul);
launch_fn!(aclnnMuls);
launch_fn!(aclnnCast);
launch_fn!(aclnnInplaceCopy);
launch_fn!(aclnnEmbedding);
launch_fn!(aclnnIndexSelect);
launch_fn!(aclnnArgMax);
launch_fn!(aclnnDynamicQuant);

fn check_cube(cube: i8) -> SimResult<()> {
    if !(0..=3).contains(&cube) {
        bail!(
            INVALID,
            "cubeMathType {cube} is not one of 0 KEEP_DTYPE, 1 ALLOW_FP32_DOWN_PRECISION, 2 USE_FP16, 3 USE_HF32"
        );
    }
    Ok(())
}

fn matmul_dtypes(a: &View, b: &View, out: &View) -> SimResult<()> {
    float(a, "self")?;
    same_dtype(a, "self", b, "mat2")?;
    same_dtype(a, "self", out, "out")
}

/// Builds out = self @ mat2 for 2-D self [m,k], mat2 [k,n], out [m,n] (any strides, e.g. a
/// transposed weight view). self, mat2 and out share one float dtype.
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnMmGetWorkspaceSize(
    self_: *const aclTensor,
    mat2: *const aclTensor,
    out: *mut aclTensor,
    cubeMathType: i8,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnMmGetWorkspaceSize", "aclnnMm", workspaceSize, executor, |st, dev| {
        let a = tensor(st, self_, "self", dev)?;
        let b = tensor(st, mat2, "mat2", dev)?;
        let o = tensor(st, out, "out", dev)?;
        check_cube(cubeMathType)?;
        if a.rank() != 2 || b.rank() != 2 {
            bail!(INVALID, "self {} and mat2 {} must both be 2-D (use aclnnMatmul for batches)", a.shape(), b.shape());
        }
        if a.dims[1] != b.dims[0] {
            bail!(INVALID, "self {} and mat2 {}: inner dimensions differ", a.shape(), b.shape());
        }
        expect_shape(&o, "out", &[a.dims[0], b.dims[1]], "[self rows, mat2 columns]")?;
        matmul_dtypes(&a, &b, &o)?;
        Ok(Kernel::Matmul { a, b, out: o })
    })
}

/// Builds a matmul with torch.matmul semantics: 1-D operands, and leading (batch) dimensions
/// broadcast with numpy rules. self, mat2 and out share one float dtype.
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnMatmulGetWorkspaceSize(
    self_: *const aclTensor,
    mat2: *const aclTensor,
    out: *mut aclTensor,
    cubeMathType: i8,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnMatmulGetWorkspaceSize", "aclnnMatmul", workspaceSize, executor, |st, dev| {
        let a = tensor(st, self_, "self", dev)?;
        let b = tensor(st, mat2, "mat2", dev)?;
        let o = tensor(st, out, "out", dev)?;
        check_cube(cubeMathType)?;
        if a.rank() == 0 || b.rank() == 0 {
            bail!(INVALID, "self {} and mat2 {} must have at least one dimension", a.shape(), b.shape());
        }
        matmul_dtypes(&a, &b, &o)?;
        // Promote 1-D operands: [k] -> [1,k] for self, [k] -> [k,1] for mat2 (stride 0 on the new dim).
        let an =
            if a.rank() == 1 { a.reshaped(vec![1, a.dims[0]], vec![0, a.strides[0]], a.offset) } else { a.clone() };
        let bn =
            if b.rank() == 1 { b.reshaped(vec![b.dims[0], 1], vec![b.strides[0], 0], b.offset) } else { b.clone() };
        let (ra, rb) = (an.rank(), bn.rank());
        let (m, k, k2, n) = (an.dims[ra - 2], an.dims[ra - 1], bn.dims[rb - 2], bn.dims[rb - 1]);
        if k != k2 {
            bail!(INVALID, "self {} and mat2 {}: inner dimensions differ", a.shape(), b.shape());
        }
        let Some(batch) = broadcast_shapes(&an.dims[..ra - 2], &bn.dims[..rb - 2]) else {
            bail!(INVALID, "self {} and mat2 {}: batch dimensions do not broadcast", a.shape(), b.shape());
        };
        let mut want = batch.clone();
        if a.rank() > 1 {
            want.push(m);
        }
        if b.rank() > 1 {
            want.push(n);
        }
        expect_shape(&o, "out", &want, "torch.matmul shape of self and mat2")?;
        let mut os = o.strides.clone();
        if b.rank() == 1 {
            os.push(0);
        }
        if a.rank() == 1 {
            os.insert(os.len() - 1, 0);
        }
        let mut full = batch.clone();
        full.extend([m, n]);
        let on = o.reshaped(full, os, o.offset);
        let mut ad = batch.clone();
        ad.extend([m, k]);
        let mut bd = batch;
        bd.extend([k, n]);
        Ok(Kernel::Matmul { a: an.broadcast_to(&ad), b: bn.broadcast_to(&bd), out: on })
    })
}

/// Normalises a [n] or [1,n] (or [groups,n]) parameter to [rows, n] (stride 0 for one row).
fn per_column(v: &View, name: &str, rows: usize, n: usize, what: &str) -> SimResult<View> {
    match v.dims.as_slice() {
        [c] if *c == n && rows == 1 => Ok(v.reshaped(vec![1, n], vec![0, v.strides[0]], v.offset)),
        [r, c] if *r == rows && *c == n => Ok(v.clone()),
        _ => bail!(INVALID, "{name} is {} but must be {what}", v.shape()),
    }
}

/// Builds y = x @ dequant(weight) (+ bias): weight int8 [k, n] (any strides, e.g. a transposed
/// view of an [n, k] buffer), w = (int8 + antiquantOffset) * antiquantScale with one scale row per
/// `antiquantGroupSize` rows of weight ([ceil(k/group), n]); group 0 = per-channel ([n] or [1, n]).
/// Real hardware wants x in f16/bf16; the simulator also takes f32. quantScale/quantOffset
/// (int8 output) are refused.
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnWeightQuantBatchMatmulV2GetWorkspaceSize(
    x: *const aclTensor,
    weight: *const aclTensor,
    antiquantScale: *const aclTensor,
    antiquantOffsetOptional: *const aclTensor,
    quantScaleOptional: *const aclTensor,
    quantOffsetOptional: *const aclTensor,
    biasOptional: *const aclTensor,
    antiquantGroupSize: i32,
    y: *const aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build(
        "aclnnWeightQuantBatchMatmulV2GetWorkspaceSize",
        "aclnnWeightQuantBatchMatmulV2",
        workspaceSize,
        executor,
        |st, dev| {
            let xv = tensor(st, x, "x", dev)?;
            let w = tensor(st, weight, "weight", dev)?;
            let sc = tensor(st, antiquantScale, "antiquantScale", dev)?;
            let off = opt_tensor(st, antiquantOffsetOptional, "antiquantOffsetOptional", dev)?;
            let bias = opt_tensor(st, biasOptional, "biasOptional", dev)?;
            let yv = tensor(st, y, "y", dev)?;
            if !quantScaleOptional.is_null() || !quantOffsetOptional.is_null() {
                bail!(
                    INVALID,
                    "quantScaleOptional/quantOffsetOptional (int8 output) are not supported by the simulator; pass NULL"
                );
            }
            float(&xv, "x")?;
            if w.dtype != DType::I8 {
                bail!(INVALID, "weight has dtype {}; this op needs ACL_INT8", w.dtype.name());
            }
            float(&sc, "antiquantScale")?;
            same_dtype(&xv, "x", &yv, "y")?;
            if xv.rank() < 2 || w.rank() != 2 {
                bail!(INVALID, "x {} must be at least 2-D and weight {} 2-D [k, n]", xv.shape(), w.shape());
            }
            let (k, n) = (w.dims[0], w.dims[1]);
            if xv.dims[xv.rank() - 1] != k {
                bail!(INVALID, "x {} and weight {}: inner dimensions differ (weight is [k, n])", xv.shape(), w.shape());
            }
            let mut want = xv.dims.clone();
            *want.last_mut().unwrap_or(&mut 0) = n;
            expect_shape(&yv, "y", &want, "x's shape with the last dim replaced by weight's n")?;
            let (group, rows) = match antiquantGroupSize {
                0 => (k, 1),
                g if g > 0 && g % 32 == 0 && (g as usize) < k => (g as usize, k.div_ceil(g as usize)),
                g => bail!(
                    INVALID,
                    "antiquantGroupSize {g} is invalid: 0 (per-channel) or a multiple of 32 in [32, k-1] with k = {k}"
                ),
            };
            let what = if rows == 1 {
                format!("[{n}] or [1,{n}] (per-channel)")
            } else {
                format!("[{rows},{n}] (ceil(k / antiquantGroupSize), n)")
            };
            let scale = per_column(&sc, "antiquantScale", rows, n, &what)?;
            let offset = match off {
                Some(o) => {
                    same_dtype(&sc, "antiquantScale", &o, "antiquantOffsetOptional")?;
                    Some(per_column(&o, "antiquantOffsetOptional", rows, n, &what)?)
                }
                None => None,
            };
            let bias = match bias {
                Some(b) => {
                    float(&b, "biasOptional")?;
                    let b2 = per_column(&b, "biasOptional", 1, n, &format!("[{n}] or [1,{n}]"))?;
                    Some(b2.reshaped(vec![n], vec![b2.strides[1]], b2.offset))
                }
                None => None,
            };
            Ok(Kernel::WeightQuantMatmul { x: xv, w, scale, offset, bias, group, y: yv })
        },
    )
}

/// Builds y = x * rsqrt(mean(x^2 over gamma's trailing dims) + epsilon) * gamma. rstdOut (f32,
/// one value per normalised row) may be NULL in the simulator.
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnRmsNormGetWorkspaceSize(
    x: *const aclTensor,
    gamma: *const aclTensor,
    epsilon: f64,
    yOut: *const aclTensor,
    rstdOut: *const aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnRmsNormGetWorkspaceSize", "aclnnRmsNorm", workspaceSize, executor, |st, dev| {
        let xv = tensor(st, x, "x", dev)?;
        let g = tensor(st, gamma, "gamma", dev)?;
        let yv = tensor(st, yOut, "yOut", dev)?;
        let rstd = opt_tensor(st, rstdOut, "rstdOut", dev)?;
        float(&xv, "x")?;
        float(&g, "gamma")?;
        same_dtype(&xv, "x", &yv, "yOut")?;
        let r = g.rank();
        if r == 0 || r > xv.rank() || xv.dims[xv.rank() - r..] != g.dims[..] {
            bail!(INVALID, "gamma {} must equal the trailing dimensions of x {}", g.shape(), xv.shape());
        }
        expect_shape(&yv, "yOut", &xv.dims, "the shape of x")?;
        let d: usize = g.dims.iter().product();
        if d == 0 {
            bail!(INVALID, "gamma {} is empty", g.shape());
        }
        let rows = xv.numel() / d;
        if let Some(t) = &rstd
            && (t.dtype != DType::F32 || t.numel() != rows)
        {
            bail!(
                INVALID,
                "rstdOut {} {} must be ACL_FLOAT with one value per row ({rows})",
                t.shape(),
                t.dtype.name()
            );
        }
        Ok(Kernel::RmsNorm { x: xv, gamma: g, eps: epsilon, d, y: yv, rstd })
    })
}

/// Builds out = (x - mean) * rsqrt(var + eps) * weight + bias over the trailing
/// `normalizedShape` dims; weight, bias, meanOut and rstdOut are optional (NULL).
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnLayerNormGetWorkspaceSize(
    input: *const aclTensor,
    normalizedShape: *const aclIntArray,
    weightOptional: *const aclTensor,
    biasOptional: *const aclTensor,
    eps: f64,
    out: *mut aclTensor,
    meanOutOptional: *mut aclTensor,
    rstdOutOptional: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnLayerNormGetWorkspaceSize", "aclnnLayerNorm", workspaceSize, executor, |st, dev| {
        let x = tensor(st, input, "input", dev)?;
        let shape = int_array(st, normalizedShape, "normalizedShape")?;
        let w = opt_tensor(st, weightOptional, "weightOptional", dev)?;
        let b = opt_tensor(st, biasOptional, "biasOptional", dev)?;
        let o = tensor(st, out, "out", dev)?;
        let mean = opt_tensor(st, meanOutOptional, "meanOutOptional", dev)?;
        let rstd = opt_tensor(st, rstdOutOptional, "rstdOutOptional", dev)?;
        float(&x, "input")?;
        same_dtype(&x, "input", &o, "out")?;
        let r = shape.len();
        let ns: Vec<usize> = shape.iter().map(|&v| v.max(0) as usize).collect();
        if r == 0 || r > x.rank() || shape.iter().any(|&v| v <= 0) || x.dims[x.rank() - r..] != ns[..] {
            bail!(
                INVALID,
                "normalizedShape {shape:?} must be non-empty and equal the trailing dimensions of input {}",
                x.shape()
            );
        }
        expect_shape(&o, "out", &x.dims, "the shape of input")?;
        for (t, name) in [(&w, "weightOptional"), (&b, "biasOptional")] {
            if let Some(t) = t {
                float(t, name)?;
                expect_shape(t, name, &ns, "normalizedShape")?;
            }
        }
        let d: usize = ns.iter().product();
        let rows = x.numel() / d;
        for (t, name) in [(&mean, "meanOutOptional"), (&rstd, "rstdOutOptional")] {
            if let Some(t) = t {
                float(t, name)?;
                if t.numel() != rows {
                    bail!(INVALID, "{name} {} must hold one value per normalised row ({rows})", t.shape());
                }
            }
        }
        Ok(Kernel::LayerNorm { x, weight: w, bias: b, eps, d, out: o, mean, rstd })
    })
}

/// Builds rotary position embedding over the last dim D of x: mode 0 = half (rotate_half, HF
/// layout: out = x*cos + [-x2, x1]*sin), mode 1 = interleave (pairs (2i, 2i+1)). cos and sin
/// (same shape) broadcast to x; x, cos, sin and out share one float dtype.
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnRotaryPositionEmbeddingGetWorkspaceSize(
    x: *const aclTensor,
    cos: *const aclTensor,
    sin: *const aclTensor,
    mode: i64,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build(
        "aclnnRotaryPositionEmbeddingGetWorkspaceSize",
        "aclnnRotaryPositionEmbedding",
        workspaceSize,
        executor,
        |st, dev| {
            let xv = tensor(st, x, "x", dev)?;
            let c = tensor(st, cos, "cos", dev)?;
            let s = tensor(st, sin, "sin", dev)?;
            let o = tensor(st, out, "out", dev)?;
            float(&xv, "x")?;
            same_dtype(&xv, "x", &c, "cos")?;
            same_dtype(&xv, "x", &s, "sin")?;
            same_dtype(&xv, "x", &o, "out")?;
            let interleave = match mode {
                0 => false,
                1 => true,
                m => bail!(INVALID, "mode {m} is not supported (0 = half/rotate_half, 1 = interleave)"),
            };
            let d = xv.dims.last().copied().unwrap_or(0);
            if xv.rank() == 0 || d == 0 || d % 2 != 0 {
                bail!(INVALID, "x {} must have an even, non-zero last dimension", xv.shape());
            }
            if c.dims != s.dims {
                bail!(INVALID, "cos {} and sin {} must have the same shape", c.shape(), s.shape());
            }
            if c.dims.last() != Some(&d) || broadcast_shapes(&c.dims, &xv.dims).as_deref() != Some(&xv.dims[..]) {
                bail!(INVALID, "cos/sin {} do not broadcast to x {} (last dim must be {d})", c.shape(), xv.shape());
            }
            expect_shape(&o, "out", &xv.dims, "the shape of x")?;
            let (cb, sb) = (c.broadcast_to(&xv.dims), s.broadcast_to(&xv.dims));
            Ok(Kernel::Rope { x: xv, cos: cb, sin: sb, interleave, out: o })
        },
    )
}

/// Builds softmax along `dim` (negative counts from the end).
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnSoftmaxGetWorkspaceSize(
    self_: *const aclTensor,
    dim: i64,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnSoftmaxGetWorkspaceSize", "aclnnSoftmax", workspaceSize, executor, |st, dev| {
        let x = tensor(st, self_, "self", dev)?;
        let o = tensor(st, out, "out", dev)?;
        float(&x, "self")?;
        float(&o, "out")?;
        let d = norm_dim(dim, x.rank(), "dim")?;
        expect_shape(&o, "out", &x.dims, "the shape of self")?;
        Ok(Kernel::Softmax { x, dim: d, out: o })
    })
}

/// Builds out = silu(first half) * second half, x split along `dim` (even size).
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnSwiGluGetWorkspaceSize(
    x: *const aclTensor,
    dim: i64,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnSwiGluGetWorkspaceSize", "aclnnSwiGlu", workspaceSize, executor, |st, dev| {
        let xv = tensor(st, x, "x", dev)?;
        let o = tensor(st, out, "out", dev)?;
        float(&xv, "x")?;
        same_dtype(&xv, "x", &o, "out")?;
        let d = norm_dim(dim, xv.rank(), "dim")?;
        if xv.dims[d] % 2 != 0 {
            bail!(
                INVALID,
                "x {} has odd size {} along dim {dim}; it must split into two halves",
                xv.shape(),
                xv.dims[d]
            );
        }
        let mut want = xv.dims.clone();
        want[d] /= 2;
        expect_shape(&o, "out", &want, "x with dim halved")?;
        Ok(Kernel::SwiGlu { x: xv, dim: d, out: o })
    })
}

fn unary(st: &State, dev: i32, x: *const aclTensor, out: *mut aclTensor, op: Unary) -> SimResult<Kernel> {
    let xv = tensor(st, x, "self", dev)?;
    let o = tensor(st, out, "out", dev)?;
    if matches!(op, Unary::Scale(_)) {
        numeric(&xv, "self")?;
        numeric(&o, "out")?;
    } else {
        float(&xv, "self")?;
        float(&o, "out")?;
    }
    expect_shape(&o, "out", &xv.dims, "the shape of self")?;
    Ok(Kernel::Unary { op, x: xv, out: o })
}

/// Builds out = silu(self) = self * sigmoid(self).
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnSiluGetWorkspaceSize(
    self_: *const aclTensor,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnSiluGetWorkspaceSize", "aclnnSilu", workspaceSize, executor, |st, dev| {
        unary(st, dev, self_, out, Unary::Silu)
    })
}

/// Builds out = gelu(self), exact erf form.
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnGeluGetWorkspaceSize(
    self_: *const aclTensor,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnGeluGetWorkspaceSize", "aclnnGelu", workspaceSize, executor, |st, dev| {
        unary(st, dev, self_, out, Unary::Gelu)
    })
}

fn binary(
    st: &State,
    dev: i32,
    a: *const aclTensor,
    b: *const aclTensor,
    out: *mut aclTensor,
    op: Binary,
) -> SimResult<Kernel> {
    let av = tensor(st, a, "self", dev)?;
    let bv = tensor(st, b, "other", dev)?;
    let o = tensor(st, out, "out", dev)?;
    numeric(&av, "self")?;
    numeric(&bv, "other")?;
    numeric(&o, "out")?;
    let Some(shape) = broadcast_shapes(&av.dims, &bv.dims) else {
        bail!(INVALID, "self {} and other {} do not broadcast", av.shape(), bv.shape());
    };
    expect_shape(&o, "out", &shape, "the broadcast shape of self and other")?;
    Ok(Kernel::Binary { op, a: av.broadcast_to(&shape), b: bv.broadcast_to(&shape), out: o })
}

/// Builds out = self + alpha * other (numpy broadcasting).
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnAddGetWorkspaceSize(
    self_: *const aclTensor,
    other: *const aclTensor,
    alpha: *const aclScalar,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnAddGetWorkspaceSize", "aclnnAdd", workspaceSize, executor, |st, dev| {
        let a = scalar(st, alpha, "alpha")?;
        binary(st, dev, self_, other, out, Binary::Add(a))
    })
}

/// Builds out = self * other (numpy broadcasting).
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnMulGetWorkspaceSize(
    self_: *const aclTensor,
    other: *const aclTensor,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnMulGetWorkspaceSize", "aclnnMul", workspaceSize, executor, |st, dev| {
        binary(st, dev, self_, other, out, Binary::Mul)
    })
}

/// Builds out = self * other (a scalar).
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnMulsGetWorkspaceSize(
    self_: *const aclTensor,
    other: *const aclScalar,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnMulsGetWorkspaceSize", "aclnnMuls", workspaceSize, executor, |st, dev| {
        let s = scalar(st, other, "other")?;
        unary(st, dev, self_, out, Unary::Scale(s))
    })
}

/// Builds out = self converted to `dtype` (out's dtype must be `dtype`; same shape).
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnCastGetWorkspaceSize(
    self_: *const aclTensor,
    dtype: aclDataType,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnCastGetWorkspaceSize", "aclnnCast", workspaceSize, executor, |st, dev| {
        let x = tensor(st, self_, "self", dev)?;
        let o = tensor(st, out, "out", dev)?;
        let Some(want) = DType::from_acl(dtype) else {
            bail!(INVALID, "dtype {dtype} is not an aclDataType the simulator knows");
        };
        if o.dtype != want {
            bail!(INVALID, "out has dtype {} but dtype asks for {}", o.dtype.name(), want.name());
        }
        expect_shape(&o, "out", &x.dims, "the shape of self")?;
        Ok(Kernel::Convert { src: x, dst: o })
    })
}

/// Builds selfRef = src element-wise (src broadcasts to selfRef; dtypes may differ; arbitrary
/// strides on both sides: the strided copy).
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnInplaceCopyGetWorkspaceSize(
    selfRef: *mut aclTensor,
    src: *const aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnInplaceCopyGetWorkspaceSize", "aclnnInplaceCopy", workspaceSize, executor, |st, dev| {
        let d = tensor(st, selfRef, "selfRef", dev)?;
        let s = tensor(st, src, "src", dev)?;
        if broadcast_shapes(&s.dims, &d.dims).as_deref() != Some(&d.dims[..]) {
            bail!(INVALID, "src {} does not broadcast to selfRef {}", s.shape(), d.shape());
        }
        Ok(Kernel::Convert { src: s.broadcast_to(&d.dims), dst: d })
    })
}

fn index_dtype(v: &View, name: &str) -> SimResult<()> {
    if !v.dtype.is_index() {
        bail!(INVALID, "{name} has dtype {}; it must be ACL_INT32 or ACL_INT64", v.dtype.name());
    }
    Ok(())
}

/// Builds out[..., :] = weight[indices[...], :] (weight [V, D]; indices int32/int64; out
/// indices.shape + [D]). An index outside 0..V makes the synchronisation fail.
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnEmbeddingGetWorkspaceSize(
    weight: *const aclTensor,
    indices: *const aclTensor,
    out: *const aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnEmbeddingGetWorkspaceSize", "aclnnEmbedding", workspaceSize, executor, |st, dev| {
        let w = tensor(st, weight, "weight", dev)?;
        let i = tensor(st, indices, "indices", dev)?;
        let o = tensor(st, out, "out", dev)?;
        if w.rank() != 2 {
            bail!(INVALID, "weight {} must be 2-D [num_embeddings, embedding_dim]", w.shape());
        }
        index_dtype(&i, "indices")?;
        same_dtype(&w, "weight", &o, "out")?;
        let mut want = i.dims.clone();
        want.push(w.dims[1]);
        expect_shape(&o, "out", &want, "indices' shape + [embedding_dim]")?;
        Ok(Kernel::Embedding { weight: w, indices: i, out: o })
    })
}

/// Builds out = self.index_select(dim, index) (index 1-D int32/int64). An index out of range
/// makes the synchronisation fail.
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnIndexSelectGetWorkspaceSize(
    self_: *const aclTensor,
    dim: i64,
    index: *const aclTensor,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnIndexSelectGetWorkspaceSize", "aclnnIndexSelect", workspaceSize, executor, |st, dev| {
        let x = tensor(st, self_, "self", dev)?;
        let i = tensor(st, index, "index", dev)?;
        let o = tensor(st, out, "out", dev)?;
        index_dtype(&i, "index")?;
        if i.rank() > 1 {
            bail!(INVALID, "index {} must be 1-D", i.shape());
        }
        let d = norm_dim(dim, x.rank(), "dim")?;
        same_dtype(&x, "self", &o, "out")?;
        let mut want = x.dims.clone();
        want[d] = i.numel();
        expect_shape(&o, "out", &want, "self with dim sized like index")?;
        Ok(Kernel::IndexSelect { x, dim: d, index: i, out: o })
    })
}

/// Builds out = argmax of self along `dim` (first index on ties; keepdim keeps a size-1 dim);
/// out is int64 or int32.
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnArgMaxGetWorkspaceSize(
    self_: *const aclTensor,
    dim: i64,
    keepdim: bool,
    out: *mut aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnArgMaxGetWorkspaceSize", "aclnnArgMax", workspaceSize, executor, |st, dev| {
        let x = tensor(st, self_, "self", dev)?;
        let o = tensor(st, out, "out", dev)?;
        numeric(&x, "self")?;
        index_dtype(&o, "out")?;
        let d = norm_dim(dim, x.rank(), "dim")?;
        if x.dims[d] == 0 {
            bail!(INVALID, "self {} is empty along dim {dim}", x.shape());
        }
        let mut want = x.dims.clone();
        if keepdim {
            want[d] = 1;
        } else {
            want.remove(d);
        }
        expect_shape(&o, "out", &want, if keepdim { "self with dim = 1" } else { "self without dim" })?;
        Ok(Kernel::ArgMax { x, dim: d, out: o })
    })
}

/// Builds per-token symmetric int8 quantisation: for each row r of x's last dim,
/// scaleOut[r] = row_max(abs(x[r])) / 127 and yOut[r] = round(x[r] / scaleOut[r]) (CANN's
/// documented formula; the simulator rounds half away from zero). x is 2-D to 8-D; yOut int8 of
/// x's shape; scaleOut f32 of x's shape without its last dim. Real hardware takes x in
/// f16/bf16 only and wants yOut and scaleOut contiguous; the simulator also takes f32 x (as
/// for aclnnWeightQuantBatchMatmulV2) and any strides. smoothScalesOptional is refused.
///
/// # Safety
/// Handles are looked up, never dereferenced; `workspaceSize` and `executor` are writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclnnDynamicQuantGetWorkspaceSize(
    x: *const aclTensor,
    smoothScalesOptional: *const aclTensor,
    yOut: *const aclTensor,
    scaleOut: *const aclTensor,
    workspaceSize: *mut u64,
    executor: *mut *mut aclOpExecutor,
) -> aclnnStatus {
    build("aclnnDynamicQuantGetWorkspaceSize", "aclnnDynamicQuant", workspaceSize, executor, |st, dev| {
        let xv = tensor(st, x, "x", dev)?;
        let y = tensor(st, yOut, "yOut", dev)?;
        let s = tensor(st, scaleOut, "scaleOut", dev)?;
        if !smoothScalesOptional.is_null() {
            bail!(INVALID, "smoothScalesOptional is not supported by the simulator; pass NULL");
        }
        float(&xv, "x")?;
        if !(2..=8).contains(&xv.rank()) {
            bail!(INVALID, "x {} must be 2-D to 8-D", xv.shape());
        }
        if y.dtype != DType::I8 {
            bail!(INVALID, "yOut has dtype {}; this op writes ACL_INT8", y.dtype.name());
        }
        if s.dtype != DType::F32 {
            bail!(INVALID, "scaleOut has dtype {}; this op writes ACL_FLOAT", s.dtype.name());
        }
        expect_shape(&y, "yOut", &xv.dims, "the shape of x")?;
        expect_shape(&s, "scaleOut", &xv.dims[..xv.rank() - 1], "x's shape without its last dim")?;
        Ok(Kernel::DynamicQuant { x: xv, y, scale: s })
    })
}
