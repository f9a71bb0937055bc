//! The backend's ops as aclnn calls on device views, attention over the paged KV cache (`kv.rs`) included.

use std::sync::Arc;

use super::runtime::{DevMem, Device, Launch, View, aclnn};
use super::{Store, f32_mem, store, sys};
use crate::{DType, DenseAttn, DriverError, KvCache, PagedAttn, Result, Rope, RopeStyle, Tensor};

pub(super) const F32: sys::aclDataType = sys::aclDataType_ACL_FLOAT;
pub(super) const F16: sys::aclDataType = sys::aclDataType_ACL_FLOAT16;
pub(super) const I8: sys::aclDataType = sys::aclDataType_ACL_INT8;
const I64: sys::aclDataType = sys::aclDataType_ACL_INT64;

/// The additive mask value for positions that get no weight (finite, so no `inf - inf`).
const MASKED: f32 = -1e30;

pub(super) fn vf(m: &DevMem, dims: &[usize]) -> View {
    View::contiguous(m, F32, 4, dims)
}

fn shape_err(op: &'static str, detail: String) -> DriverError {
    DriverError::Shape { op, detail }
}

fn check_f32<'a>(t: &'a Tensor, op: &'static str) -> Result<&'a DevMem> {
    if t.dtype() != DType::F32 {
        return Err(DriverError::DType { op, dtype: t.dtype() });
    }
    f32_mem(t, op)
}

fn upload_i64(dev: &Arc<Device>, v: impl Iterator<Item = usize>) -> Result<DevMem> {
    let b: Vec<u8> = v.flat_map(|x| (x as i64).to_le_bytes()).collect();
    dev.upload_bytes(&b)
}

fn upload_f32(dev: &Arc<Device>, v: &[f32]) -> Result<DevMem> {
    let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    dev.upload_bytes(&b)
}

/// `out = src` over two views of equal shape.
pub(super) fn copy(l: &mut Launch<'_>, dst: &View, src: &View) -> Result<()> {
    let (d, s) = (l.tensor(dst)?, l.tensor(src)?);
    aclnn!(l, aclnnInplaceCopy, aclnnInplaceCopyGetWorkspaceSize(d, s));
    Ok(())
}

/// `out = a @ b` for 2-D views.
fn mm(l: &mut Launch<'_>, a: &View, b: &View, out: &View) -> Result<()> {
    let (a, b, o) = (l.tensor(a)?, l.tensor(b)?, l.tensor(out)?);
    aclnn!(l, aclnnMm, aclnnMmGetWorkspaceSize(a, b, o, 0));
    Ok(())
}

fn muls(l: &mut Launch<'_>, x: &View, s: f32, out: &View) -> Result<()> {
    let (x, o, s) = (l.tensor(x)?, l.tensor(out)?, l.scalar_f32(s)?);
    aclnn!(l, aclnnMuls, aclnnMulsGetWorkspaceSize(x, s, o));
    Ok(())
}

fn add(l: &mut Launch<'_>, a: &View, b: &View, out: &View) -> Result<()> {
    let (a, b, o, one) = (l.tensor(a)?, l.tensor(b)?, l.tensor(out)?, l.scalar_f32(1.0)?);
    aclnn!(l, aclnnAdd, aclnnAddGetWorkspaceSize(a, b, one, o));
    Ok(())
}

pub(super) fn mul(l: &mut Launch<'_>, a: &View, b: &View, out: &View) -> Result<()> {
    let (a, b, o) = (l.tensor(a)?, l.tensor(b)?, l.tensor(out)?);
    aclnn!(l, aclnnMul, aclnnMulGetWorkspaceSize(a, b, o));
    Ok(())
}

fn softmax_last(l: &mut Launch<'_>, x: &View, out: &View) -> Result<()> {
    let dim = x.dims.len() as i64 - 1;
    let (x, o) = (l.tensor(x)?, l.tensor(out)?);
    aclnn!(l, aclnnSoftmax, aclnnSoftmaxGetWorkspaceSize(x, dim, o));
    Ok(())
}

pub(super) fn index_select(l: &mut Launch<'_>, x: &View, idx: &View, out: &View) -> Result<()> {
    let (x, i, o) = (l.tensor(x)?, l.tensor(idx)?, l.tensor(out)?);
    aclnn!(l, aclnnIndexSelect, aclnnIndexSelectGetWorkspaceSize(x, 0, i, o));
    Ok(())
}

/// `x [m, k] · wᵀ` for `w [n, k]`: returns the memory and shape `[.., n]`.
pub(super) fn matmul(dev: &Arc<Device>, x: &Tensor, w: &Tensor) -> Result<(DevMem, Vec<usize>)> {
    let xm = check_f32(x, "matmul")?;
    let crate::backend::MatmulShape { m, k, n, out: shape } = crate::backend::MatmulShape::check(x, w)?;
    let out = dev.alloc(m * n * 4)?;
    if m == 0 || n == 0 {
        return Ok((out, shape));
    }
    let xv = vf(xm, &[m, k]);
    let ov = vf(&out, &[m, n]);
    match store(w, "matmul")? {
        Store::F32(wm) => {
            // The weight [n, k] seen as its transpose [k, n] (strides [1, k]).
            let wv = vf(wm, &[n, k]).strided(&[k, n], &[1, k], 0);
            let mut l = dev.launch()?;
            mm(&mut l, &xv, &wv, &ov)?;
        }
        Store::Q8 { q, scales } => {
            let g = k / 32;
            let wv = View::contiguous(q, I8, 1, &[n, k]).strided(&[k, n], &[1, k], 0);
            let sv = vf(scales, &[n, g]).strided(&[g, n], &[1, g], 0);
            // One group per row is per-channel quantisation (group size 0): the op requires a
            // group size below k.
            let group: i32 = if g == 1 { 0 } else { 32 };
            let mut l = dev.launch()?;
            let (xt, wt, st, ot) = (l.tensor(&xv)?, l.tensor(&wv)?, l.tensor(&sv)?, l.tensor(&ov)?);
            let null = std::ptr::null();
            aclnn!(
                &mut l,
                aclnnWeightQuantBatchMatmulV2,
                aclnnWeightQuantBatchMatmulV2GetWorkspaceSize(xt, wt, st, null, null, null, null, group, ot)
            );
        }
        Store::Raw(_) => return Err(DriverError::DType { op: "matmul", dtype: w.dtype() }),
    }
    Ok((out, shape))
}

fn check_row_param<'a>(t: &'a Tensor, n: usize, op: &'static str) -> Result<&'a DevMem> {
    let m = f32_mem(t, op)?;
    if t.elem_count() != n {
        return Err(shape_err(op, format!("parameter {:?} for rows of {n}", t.shape())));
    }
    Ok(m)
}

pub(super) fn rms_norm(dev: &Arc<Device>, x: &Tensor, w: &Tensor, eps: f32) -> Result<DevMem> {
    let xm = check_f32(x, "rms_norm")?;
    let (r, n) = (x.rows(), x.last_dim());
    let wm = check_row_param(w, n, "rms_norm")?;
    let out = dev.alloc(r * n * 4)?;
    let rstd = dev.alloc(r * 4)?;
    if r == 0 {
        return Ok(out);
    }
    let mut l = dev.launch()?;
    let (xt, wt) = (l.tensor(&vf(xm, &[r, n]))?, l.tensor(&vf(wm, &[n]))?);
    let (ot, st) = (l.tensor(&vf(&out, &[r, n]))?, l.tensor(&vf(&rstd, &[r, 1]))?);
    aclnn!(&mut l, aclnnRmsNorm, aclnnRmsNormGetWorkspaceSize(xt, wt, f64::from(eps), ot, st));
    Ok(out)
}

pub(super) fn layer_norm(dev: &Arc<Device>, x: &Tensor, w: &Tensor, b: &Tensor, eps: f32) -> Result<DevMem> {
    let xm = check_f32(x, "layer_norm")?;
    let (r, n) = (x.rows(), x.last_dim());
    let wm = check_row_param(w, n, "layer_norm")?;
    let bm = check_row_param(b, n, "layer_norm")?;
    let out = dev.alloc(r * n * 4)?;
    if r == 0 {
        return Ok(out);
    }
    let mut l = dev.launch()?;
    let (xt, wt, bt) = (l.tensor(&vf(xm, &[r, n]))?, l.tensor(&vf(wm, &[n]))?, l.tensor(&vf(bm, &[n]))?);
    let ot = l.tensor(&vf(&out, &[r, n]))?;
    let shape = l.int_array(&[n as i64])?;
    let null = std::ptr::null_mut();
    aclnn!(&mut l, aclnnLayerNorm, aclnnLayerNormGetWorkspaceSize(xt, shape, wt, bt, f64::from(eps), ot, null, null));
    Ok(out)
}

pub(super) fn rope(dev: &Arc<Device>, x: &Tensor, r: &Rope<'_>) -> Result<DevMem> {
    let xm = check_f32(x, "rope")?;
    r.check(x)?;
    let (hd, nh) = (r.head_dim, r.n_heads);
    let half = r.inv_freq.len();
    let rows = x.rows();
    // aclnnRotaryPositionEmbedding needs something to rotate.
    if half == 0 && hd > 0 {
        return Err(shape_err("rope", format!("{nh} heads of {hd} with no frequencies")));
    }
    let out = dev.alloc(rows * nh * hd * 4)?;
    if rows == 0 || nh == 0 {
        return Ok(out);
    }
    // cos/sin [rows, 1, 2 * half], laid out as the mode expects.
    let rd = 2 * half;
    let (mut cos, mut sin) = (vec![0f32; rows * rd], vec![0f32; rows * rd]);
    for (i, &pos) in r.positions.iter().enumerate() {
        for (j, &f) in r.inv_freq.iter().enumerate() {
            let a = pos as f32 * f;
            let (c, s) = (a.cos(), a.sin());
            let (p0, p1) = match r.style {
                RopeStyle::Half => (j, j + half),
                RopeStyle::Interleaved => (2 * j, 2 * j + 1),
            };
            cos[i * rd + p0] = c;
            cos[i * rd + p1] = c;
            sin[i * rd + p0] = s;
            sin[i * rd + p1] = s;
        }
    }
    let (cm, sm) = (upload_f32(dev, &cos)?, upload_f32(dev, &sin)?);
    let mode: i64 = match r.style {
        RopeStyle::Half => 0,
        RopeStyle::Interleaved => 1,
    };
    let xv = vf(xm, &[rows, nh, hd]);
    let ov = vf(&out, &[rows, nh, hd]);
    let mut l = dev.launch()?;
    let (xr, or) = if rd == hd {
        (xv, ov)
    } else {
        // Only the first `rd` values of each head rotate: copy all, then rope that part.
        copy(&mut l, &ov, &xv)?;
        let st = [nh * hd, hd, 1];
        (xv.strided(&[rows, nh, rd], &st, 0), ov.strided(&[rows, nh, rd], &st, 0))
    };
    let (xt, ct, stt, ot) =
        (l.tensor(&xr)?, l.tensor(&vf(&cm, &[rows, 1, rd]))?, l.tensor(&vf(&sm, &[rows, 1, rd]))?, l.tensor(&or)?);
    aclnn!(&mut l, aclnnRotaryPositionEmbedding, aclnnRotaryPositionEmbeddingGetWorkspaceSize(xt, ct, stt, mode, ot));
    Ok(out)
}

pub(super) fn swiglu(dev: &Arc<Device>, gate: &Tensor, up: &Tensor) -> Result<DevMem> {
    let (gm, um) = (check_f32(gate, "swiglu")?, check_f32(up, "swiglu")?);
    if gate.shape() != up.shape() {
        return Err(shape_err("swiglu", format!("gate {:?} and up {:?}", gate.shape(), up.shape())));
    }
    let (r, n) = (gate.rows(), gate.last_dim());
    let silu = dev.alloc(r * n * 4)?;
    let out = dev.alloc(r * n * 4)?;
    if r * n == 0 {
        return Ok(out);
    }
    let mut l = dev.launch()?;
    let (gt, st) = (l.tensor(&vf(gm, &[r, n]))?, l.tensor(&vf(&silu, &[r, n]))?);
    aclnn!(&mut l, aclnnSilu, aclnnSiluGetWorkspaceSize(gt, st));
    mul(&mut l, &vf(&silu, &[r, n]), &vf(um, &[r, n]), &vf(&out, &[r, n]))?;
    Ok(out)
}

pub(super) fn gelu(dev: &Arc<Device>, x: &Tensor) -> Result<DevMem> {
    let xm = check_f32(x, "gelu")?;
    let (r, n) = (x.rows(), x.last_dim());
    let out = dev.alloc(r * n * 4)?;
    if r * n > 0 {
        let mut l = dev.launch()?;
        let (xt, ot) = (l.tensor(&vf(xm, &[r, n]))?, l.tensor(&vf(&out, &[r, n]))?);
        aclnn!(&mut l, aclnnGelu, aclnnGeluGetWorkspaceSize(xt, ot));
    }
    Ok(out)
}

/// `a + b`, where `b` may be one row broadcast over `a`'s rows.
pub(super) fn add_rows(dev: &Arc<Device>, a: &Tensor, b: &Tensor) -> Result<DevMem> {
    let name = "add";
    let am = check_f32(a, name)?;
    let bm = f32_mem(b, name)?;
    let (r, n) = (a.rows(), a.last_dim());
    let bv = if b.elem_count() == a.elem_count() {
        vf(bm, &[r, n])
    } else if b.elem_count() == n && n > 0 {
        vf(bm, &[1, n])
    } else {
        return Err(shape_err(name, format!("{:?} and {:?} neither match nor broadcast by row", a.shape(), b.shape())));
    };
    let out = dev.alloc(r * n * 4)?;
    if r * n > 0 {
        let mut l = dev.launch()?;
        add(&mut l, &vf(am, &[r, n]), &bv, &vf(&out, &[r, n]))?;
    }
    Ok(out)
}

pub(super) fn scale(dev: &Arc<Device>, a: &Tensor, s: f32) -> Result<DevMem> {
    let am = check_f32(a, "scale")?;
    let n = a.elem_count();
    let out = dev.alloc(n * 4)?;
    if n > 0 {
        muls(&mut dev.launch()?, &vf(am, &[n]), s, &vf(&out, &[n]))?;
    }
    Ok(out)
}

pub(super) fn embedding(dev: &Arc<Device>, table: &Tensor, ids: &[u32]) -> Result<DevMem> {
    let (vocab, dim) = (table.rows(), table.last_dim());
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(DriverError::TokenOutOfRange { id, vocab });
    }
    let n = ids.len();
    let out = dev.alloc(n * dim * 4)?;
    if n == 0 || dim == 0 {
        return Ok(out);
    }
    let idx = upload_i64(dev, ids.iter().map(|&i| i as usize))?;
    let iv = View::contiguous(&idx, I64, 8, &[n]);
    match store(table, "embedding")? {
        Store::F32(tm) => {
            let mut l = dev.launch()?;
            let (wt, it, ot) = (l.tensor(&vf(tm, &[vocab, dim]))?, l.tensor(&iv)?, l.tensor(&vf(&out, &[n, dim]))?);
            aclnn!(&mut l, aclnnEmbedding, aclnnEmbeddingGetWorkspaceSize(wt, it, ot));
        }
        Store::Q8 { q, scales } => {
            // Select the int8 rows and their scales, cast to f32, multiply per group of 32.
            let g = dim / 32;
            let (qs, ss, qf) = (dev.alloc(n * dim)?, dev.alloc(n * g * 4)?, dev.alloc(n * dim * 4)?);
            let mut l = dev.launch()?;
            let qsv = View::contiguous(&qs, I8, 1, &[n, dim]);
            index_select(&mut l, &View::contiguous(q, I8, 1, &[vocab, dim]), &iv, &qsv)?;
            index_select(&mut l, &vf(scales, &[vocab, g]), &iv, &vf(&ss, &[n, g]))?;
            let (qt, ft) = (l.tensor(&qsv)?, l.tensor(&vf(&qf, &[n, dim]))?);
            aclnn!(&mut l, aclnnCast, aclnnCastGetWorkspaceSize(qt, F32, ft));
            mul(&mut l, &vf(&qf, &[n, g, 32]), &vf(&ss, &[n, g, 1]), &vf(&out, &[n, g, 32]))?;
        }
        Store::Raw(_) => return Err(DriverError::DType { op: "embedding", dtype: table.dtype() }),
    }
    Ok(out)
}

pub(super) fn gather_rows(dev: &Arc<Device>, x: &Tensor, rows: &[usize]) -> Result<DevMem> {
    let xm = check_f32(x, "gather_rows")?;
    let (total, n) = (x.rows(), x.last_dim());
    if let Some(&r) = rows.iter().find(|&&r| r >= total) {
        return Err(shape_err("gather_rows", format!("row {r} of {total}")));
    }
    let out = dev.alloc(rows.len() * n * 4)?;
    if rows.is_empty() || n == 0 {
        return Ok(out);
    }
    let idx = upload_i64(dev, rows.iter().copied())?;
    let mut l = dev.launch()?;
    index_select(
        &mut l,
        &vf(xm, &[total, n]),
        &View::contiguous(&idx, I64, 8, &[rows.len()]),
        &vf(&out, &[rows.len(), n]),
    )?;
    Ok(out)
}

pub(super) fn paged_attention(
    dev: &Arc<Device>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    cache: &mut dyn KvCache,
    a: &PagedAttn<'_>,
    window: Option<usize>,
) -> Result<DevMem> {
    let (qm, km, vm) = (check_f32(q, "attention")?, check_f32(k, "attention")?, check_f32(v, "attention")?);
    let cache = cache
        .as_any_mut()
        .downcast_mut::<super::kv::AscendKvCache>()
        .ok_or(DriverError::ForeignTensor { op: "attention (kv cache)" })?;
    let spec = cache.spec;
    let rows = a.check(&spec, q, k, v)?;
    let (hd, nh, nkv) = (a.head_dim, a.n_heads, a.n_kv_heads);
    let slot = |table: &[u32], pos: usize| spec.slot(table, pos);
    // Every slot first, so that a bad block table changes nothing.
    let slots: Vec<Vec<usize>> = a
        .seqs
        .iter()
        .map(|s| (0..s.start_pos + s.n_new).map(|p| slot(s.block_table, p)).collect::<Result<_>>())
        .collect::<Result<_>>()?;
    let (w, qw, group) = (nkv * hd, nh * hd, nh / nkv);
    let out = dev.alloc(rows * qw * 4)?;
    let qv = vf(qm, &[rows.max(1), qw]);
    let ov = vf(&out, &[rows.max(1), qw]);
    let mut row0 = 0;
    for (s, slots) in a.seqs.iter().zip(&slots) {
        let n = s.n_new;
        if n == 0 {
            continue;
        }
        let end = s.start_pos + n;
        // With a window, the first row sees positions from `lo` on and later rows fewer (the
        // mask below); without one every row starts at 0.
        let lo = window.map_or(0, |w| (s.start_pos + 1).saturating_sub(w.max(1)));
        let total = end - lo;
        // 1. Write the new rows in the stored type.
        cache.store(dev, a.layer, (km, vm), row0, &slots[s.start_pos..end])?;
        // 2. Gather this sequence's keys and values [total, w], widened to f32 (only this
        // sequence's rows, never the pool).
        let idx = upload_i64(dev, slots[lo..].iter().copied())?;
        let (kc, vc) = (dev.alloc(total * w * 4)?, dev.alloc(total * w * 4)?);
        cache.load(dev, a.layer, &View::contiguous(&idx, I64, 8, &[total]), total, &kc, &vc)?;
        let scores = dev.alloc(nh * n * total * 4)?;
        let scaled = dev.alloc(nh * n * total * 4)?;
        let probs = dev.alloc(nh * n * total * 4)?;
        let heads = dev.alloc(nh * n * hd * 4)?;
        let mask = if n > 1 {
            let mut m = vec![0f32; n * total];
            for i in 0..n {
                let p = s.start_pos + i;
                for j in lo..end {
                    if j > p || window.is_some_and(|w| p - j >= w.max(1)) {
                        m[i * total + (j - lo)] = MASKED;
                    }
                }
            }
            Some(upload_f32(dev, &m)?)
        } else {
            None
        };
        let mut l = dev.launch()?;
        // 3. Scores per head: q_h [n, hd] · k_gᵀ [hd, total].
        let (kcv, vcv, sv) = (vf(&kc, &[total, w]), vf(&vc, &[total, w]), vf(&scores, &[nh * n, total]));
        for h in 0..nh {
            let g = h / group;
            let qh = qv.strided(&[n, hd], &[qw, 1], row0 * qw + h * hd);
            let kt = kcv.strided(&[hd, total], &[1, w], g * hd);
            mm(&mut l, &qh, &kt, &sv.strided(&[n, total], &[total, 1], h * n * total))?;
        }
        let scv = vf(&scaled, &[nh, n, total]);
        muls(&mut l, &vf(&scores, &[nh, n, total]), a.scale, &scv)?;
        let pre = match &mask {
            Some(m) => {
                add(&mut l, &scv, &vf(m, &[1, n, total]), &vf(&scores, &[nh, n, total]))?;
                vf(&scores, &[nh * n, total])
            }
            None => vf(&scaled, &[nh * n, total]),
        };
        softmax_last(&mut l, &pre, &vf(&probs, &[nh * n, total]))?;
        // 4. Per head: probs [n, total] · v_g [total, hd], then into the output rows.
        let (pv, hv) = (vf(&probs, &[nh * n, total]), vf(&heads, &[nh * n, hd]));
        for h in 0..nh {
            let g = h / group;
            let ph = pv.strided(&[n, total], &[total, 1], h * n * total);
            let vh = vcv.strided(&[total, hd], &[w, 1], g * hd);
            mm(&mut l, &ph, &vh, &hv.strided(&[n, hd], &[hd, 1], h * n * hd))?;
        }
        copy(&mut l, &ov.strided(&[nh, n, hd], &[hd, qw, 1], row0 * qw), &vf(&heads, &[nh, n, hd]))?;
        row0 += n;
    }
    Ok(out)
}

pub(super) fn dense_attention(
    dev: &Arc<Device>,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    a: &DenseAttn<'_>,
) -> Result<DevMem> {
    let (qm, km, vm) =
        (check_f32(q, "attention_dense")?, check_f32(k, "attention_dense")?, check_f32(v, "attention_dense")?);
    let (b, len, nh, hd) = (a.batch, a.seq_len, a.n_heads, a.head_dim);
    let qw = nh * hd;
    let shape = [b * len, qw];
    if q.shape() != shape || k.shape() != shape || v.shape() != shape || a.key_mask.len() != b * len {
        return Err(shape_err(
            "attention_dense",
            format!(
                "q {:?} k {:?} v {:?} mask {} for batch {b} x {len}, {nh} heads of {hd}",
                q.shape(),
                k.shape(),
                v.shape(),
                a.key_mask.len()
            ),
        ));
    }
    let out = dev.alloc(b * len * qw * 4)?;
    if b * len * qw == 0 {
        return Ok(out);
    }
    let (qv, kv, vv, ov) = (vf(qm, &shape), vf(km, &shape), vf(vm, &shape), vf(&out, &shape));
    for s in 0..b {
        let mask = &a.key_mask[s * len..(s + 1) * len];
        let kmask: Vec<f32> = mask.iter().map(|&m| if m { 0.0 } else { MASKED }).collect();
        // Padding query rows give zeros, as on the CPU.
        let qmask: Vec<f32> = mask.iter().map(|&m| if m { 1.0 } else { 0.0 }).collect();
        let (kmm, qmm) = (upload_f32(dev, &kmask)?, upload_f32(dev, &qmask)?);
        let (scores, scaled, probs) =
            (dev.alloc(nh * len * len * 4)?, dev.alloc(nh * len * len * 4)?, dev.alloc(nh * len * len * 4)?);
        let (heads, masked) = (dev.alloc(nh * len * hd * 4)?, dev.alloc(nh * len * hd * 4)?);
        let base = s * len * qw;
        let mut l = dev.launch()?;
        let sv = vf(&scores, &[nh * len, len]);
        for h in 0..nh {
            let qh = qv.strided(&[len, hd], &[qw, 1], base + h * hd);
            let kt = kv.strided(&[hd, len], &[1, qw], base + h * hd);
            mm(&mut l, &qh, &kt, &sv.strided(&[len, len], &[len, 1], h * len * len))?;
        }
        muls(&mut l, &vf(&scores, &[nh, len, len]), a.scale, &vf(&scaled, &[nh, len, len]))?;
        add(&mut l, &vf(&scaled, &[nh, len, len]), &vf(&kmm, &[1, 1, len]), &vf(&scores, &[nh, len, len]))?;
        softmax_last(&mut l, &vf(&scores, &[nh * len, len]), &vf(&probs, &[nh * len, len]))?;
        let (pv, hv) = (vf(&probs, &[nh * len, len]), vf(&heads, &[nh * len, hd]));
        for h in 0..nh {
            let ph = pv.strided(&[len, len], &[len, 1], h * len * len);
            let vh = vv.strided(&[len, hd], &[qw, 1], base + h * hd);
            mm(&mut l, &ph, &vh, &hv.strided(&[len, hd], &[hd, 1], h * len * hd))?;
        }
        mul(&mut l, &vf(&heads, &[nh, len, hd]), &vf(&qmm, &[1, len, 1]), &vf(&masked, &[nh, len, hd]))?;
        copy(&mut l, &ov.strided(&[nh, len, hd], &[hd, qw, 1], base), &vf(&masked, &[nh, len, hd]))?;
    }
    Ok(out)
}
