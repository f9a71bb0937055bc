//! The ops' arithmetic, run at aclrtSynchronizeStream. Naive and independent of govbox's CPU
//! backend: gather the inputs through their strides into contiguous vectors, compute with plain
//! loops (f32 products with f32 accumulation for matmuls, f64 elsewhere), scatter the results
//! through the output's strides.

use crate::error::codes::ACL_ERROR_RT_AICORE_EXCEPTION;
use crate::error::{SimResult, bail};
use crate::view::View;

/// Element-wise one-input functions.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Unary {
    Silu,
    Gelu,
    Scale(f64),
}

/// Element-wise two-input functions (inputs already broadcast to the output shape).
#[derive(Clone, Copy, Debug)]
pub(crate) enum Binary {
    /// a + alpha * b
    Add(f64),
    Mul,
}

/// A validated op, ready to run.
pub(crate) enum Kernel {
    /// out[B.., m, n] = a[B.., m, k] @ b[B.., k, n]; batch dims already broadcast (stride 0).
    Matmul {
        a: View,
        b: View,
        out: View,
    },
    /// y[M, n] = x[M, k] @ ((w[k, n] + offset[g, n]) * scale[g, n]) + bias[n], g = row / group.
    WeightQuantMatmul {
        x: View,
        w: View,
        scale: View,
        offset: Option<View>,
        bias: Option<View>,
        /// Rows of w per scale row (k for per-channel).
        group: usize,
        y: View,
    },
    /// Normalise over the trailing `d` elements.
    RmsNorm {
        x: View,
        gamma: View,
        eps: f64,
        d: usize,
        y: View,
        rstd: Option<View>,
    },
    LayerNorm {
        x: View,
        weight: Option<View>,
        bias: Option<View>,
        eps: f64,
        d: usize,
        out: View,
        mean: Option<View>,
        rstd: Option<View>,
    },
    /// cos/sin already broadcast to x's shape.
    Rope {
        x: View,
        cos: View,
        sin: View,
        interleave: bool,
        out: View,
    },
    Softmax {
        x: View,
        dim: usize,
        out: View,
    },
    SwiGlu {
        x: View,
        dim: usize,
        out: View,
    },
    Unary {
        op: Unary,
        x: View,
        out: View,
    },
    /// a, b already broadcast to out's shape.
    Binary {
        op: Binary,
        a: View,
        b: View,
        out: View,
    },
    /// dst = src (converted when dtypes differ; src already broadcast to dst's shape).
    Convert {
        src: View,
        dst: View,
    },
    Embedding {
        weight: View,
        indices: View,
        out: View,
    },
    IndexSelect {
        x: View,
        dim: usize,
        index: View,
        out: View,
    },
    ArgMax {
        x: View,
        dim: usize,
        out: View,
    },
    /// Per row of x's last dim: scale[r] = max |x[r]| / 127, y[r] = round(x[r] / scale[r]).
    DynamicQuant {
        x: View,
        y: View,
        scale: View,
    },
}

fn align512(n: usize) -> usize {
    n.div_ceil(512) * 512
}

/// (outer, len, inner) sizes around `dim`.
fn split(dims: &[usize], dim: usize) -> (usize, usize, usize) {
    (dims[..dim].iter().product(), dims[dim], dims[dim + 1..].iter().product())
}

impl Kernel {
    /// The views the op reads (false) and writes (true).
    pub(crate) fn views(&self) -> Vec<(&View, bool)> {
        let mut v: Vec<(&View, bool)> = Vec::new();
        match self {
            Kernel::Matmul { a, b, out } => v.extend([(a, false), (b, false), (out, true)]),
            Kernel::WeightQuantMatmul { x, w, scale, offset, bias, y, .. } => {
                v.extend([(x, false), (w, false), (scale, false), (y, true)]);
                v.extend(offset.iter().chain(bias.iter()).map(|t| (t, false)));
            }
            Kernel::RmsNorm { x, gamma, y, rstd, .. } => {
                v.extend([(x, false), (gamma, false), (y, true)]);
                v.extend(rstd.iter().map(|t| (t, true)));
            }
            Kernel::LayerNorm { x, weight, bias, out, mean, rstd, .. } => {
                v.extend([(x, false), (out, true)]);
                v.extend(weight.iter().chain(bias.iter()).map(|t| (t, false)));
                v.extend(mean.iter().chain(rstd.iter()).map(|t| (t, true)));
            }
            Kernel::Rope { x, cos, sin, out, .. } => v.extend([(x, false), (cos, false), (sin, false), (out, true)]),
            Kernel::Softmax { x, out, .. }
            | Kernel::SwiGlu { x, out, .. }
            | Kernel::Unary { x, out, .. }
            | Kernel::ArgMax { x, out, .. } => v.extend([(x, false), (out, true)]),
            Kernel::Binary { a, b, out, .. } => v.extend([(a, false), (b, false), (out, true)]),
            Kernel::Convert { src, dst } => v.extend([(src, false), (dst, true)]),
            Kernel::Embedding { weight, indices, out } => v.extend([(weight, false), (indices, false), (out, true)]),
            Kernel::IndexSelect { x, index, out, .. } => v.extend([(x, false), (index, false), (out, true)]),
            Kernel::DynamicQuant { x, y, scale } => v.extend([(x, false), (y, true), (scale, true)]),
        }
        v
    }

    /// Device workspace the op asks for: never zero (at least 512 bytes), growing with the work
    /// (f32 staging of the outputs, plus the dequantised weight tile for the quantised matmul).
    pub(crate) fn workspace_size(&self) -> u64 {
        let out_elems: usize = self.views().iter().filter(|(_, w)| *w).map(|(v, _)| v.numel()).sum();
        let extra = match self {
            Kernel::WeightQuantMatmul { w, .. } => w.dims[0].min(256) * w.dims[1] * 2,
            _ => 0,
        };
        (512 + align512(out_elems * 4 + extra)) as u64
    }

    /// Runs the op (at synchronisation). Errors are data errors found while running.
    pub(crate) fn run(&self) -> SimResult<()> {
        match self {
            Kernel::Matmul { a, b, out } => run_matmul(a, b, out),
            Kernel::WeightQuantMatmul { x, w, scale, offset, bias, group, y } => {
                run_wqbmm(x, w, scale, offset.as_ref(), bias.as_ref(), *group, y)
            }
            Kernel::RmsNorm { x, gamma, eps, d, y, rstd } => {
                let xs = x.gather_f64();
                let g = gamma.gather_f64();
                let rows = xs.len() / d;
                let mut out = vec![0f64; xs.len()];
                let mut rs = vec![0f64; rows];
                for r in 0..rows {
                    let row = &xs[r * d..(r + 1) * d];
                    let ms = row.iter().map(|v| v * v).sum::<f64>() / *d as f64;
                    let inv = 1.0 / (ms + eps).sqrt();
                    rs[r] = inv;
                    for c in 0..*d {
                        out[r * d + c] = row[c] * inv * g[c];
                    }
                }
                y.scatter_f64(|i| out[i]);
                if let Some(t) = rstd {
                    t.scatter_f64(|i| rs[i]);
                }
                Ok(())
            }
            Kernel::LayerNorm { x, weight, bias, eps, d, out, mean, rstd } => {
                let xs = x.gather_f64();
                let w = weight.as_ref().map(View::gather_f64);
                let b = bias.as_ref().map(View::gather_f64);
                let rows = xs.len() / d;
                let mut o = vec![0f64; xs.len()];
                let (mut ms, mut rs) = (vec![0f64; rows], vec![0f64; rows]);
                for r in 0..rows {
                    let row = &xs[r * d..(r + 1) * d];
                    let mu = row.iter().sum::<f64>() / *d as f64;
                    let var = row.iter().map(|v| (v - mu) * (v - mu)).sum::<f64>() / *d as f64;
                    let inv = 1.0 / (var + eps).sqrt();
                    ms[r] = mu;
                    rs[r] = inv;
                    for c in 0..*d {
                        let mut v = (row[c] - mu) * inv;
                        if let Some(w) = &w {
                            v *= w[c];
                        }
                        if let Some(b) = &b {
                            v += b[c];
                        }
                        o[r * d + c] = v;
                    }
                }
                out.scatter_f64(|i| o[i]);
                if let Some(t) = mean {
                    t.scatter_f64(|i| ms[i]);
                }
                if let Some(t) = rstd {
                    t.scatter_f64(|i| rs[i]);
                }
                Ok(())
            }
            Kernel::Rope { x, cos, sin, interleave, out } => {
                let xs = x.gather_f64();
                let c = cos.gather_f64();
                let s = sin.gather_f64();
                let d = *x.dims.last().unwrap_or(&1);
                let h = d / 2;
                let mut o = vec![0f64; xs.len()];
                for r in 0..xs.len() / d.max(1) {
                    let base = r * d;
                    for i in 0..d {
                        let rot = if *interleave {
                            if i % 2 == 0 { -xs[base + i + 1] } else { xs[base + i - 1] }
                        } else if i < h {
                            -xs[base + i + h]
                        } else {
                            xs[base + i - h]
                        };
                        o[base + i] = xs[base + i] * c[base + i] + rot * s[base + i];
                    }
                }
                out.scatter_f64(|i| o[i]);
                Ok(())
            }
            Kernel::Softmax { x, dim, out } => {
                let xs = x.gather_f64();
                let (outer, len, inner) = split(&x.dims, *dim);
                let mut o = vec![0f64; xs.len()];
                for a in 0..outer {
                    for b in 0..inner {
                        let at = |j: usize| (a * len + j) * inner + b;
                        let m = (0..len).map(|j| xs[at(j)]).fold(f64::NEG_INFINITY, f64::max);
                        let sum: f64 = (0..len).map(|j| (xs[at(j)] - m).exp()).sum();
                        for j in 0..len {
                            o[at(j)] = (xs[at(j)] - m).exp() / sum;
                        }
                    }
                }
                out.scatter_f64(|i| o[i]);
                Ok(())
            }
            Kernel::SwiGlu { x, dim, out } => {
                let xs = x.gather_f64();
                let (outer, len, inner) = split(&x.dims, *dim);
                let h = len / 2;
                let mut o = vec![0f64; outer * h * inner];
                for a in 0..outer {
                    for j in 0..h {
                        for b in 0..inner {
                            let g = xs[(a * len + j) * inner + b];
                            let u = xs[(a * len + j + h) * inner + b];
                            o[(a * h + j) * inner + b] = g / (1.0 + (-g).exp()) * u;
                        }
                    }
                }
                out.scatter_f64(|i| o[i]);
                Ok(())
            }
            Kernel::Unary { op, x, out } => {
                let xs = x.gather_f64();
                let f = |v: f64| match op {
                    Unary::Silu => v / (1.0 + (-v).exp()),
                    Unary::Gelu => 0.5 * v * (1.0 + libm::erf(v / std::f64::consts::SQRT_2)),
                    Unary::Scale(s) => v * s,
                };
                out.scatter_f64(|i| f(xs[i]));
                Ok(())
            }
            Kernel::Binary { op, a, b, out } => {
                let (xa, xb) = (a.gather_f64(), b.gather_f64());
                match op {
                    Binary::Add(alpha) => out.scatter_f64(|i| xa[i] + alpha * xb[i]),
                    Binary::Mul => out.scatter_f64(|i| xa[i] * xb[i]),
                }
                Ok(())
            }
            Kernel::Convert { src, dst } => {
                if src.dtype == dst.dtype {
                    dst.scatter_raw(&src.gather_raw());
                } else if src.dtype.is_index() && dst.dtype.is_index() {
                    dst.scatter_i64(&src.gather_i64());
                } else {
                    let v = src.gather_f64();
                    dst.scatter_f64(|i| v[i]);
                }
                Ok(())
            }
            Kernel::Embedding { weight, indices, out } => {
                let idx = indices.gather_i64();
                let (vocab, d) = (weight.dims[0], weight.dims[1]);
                if let Some((pos, bad)) = idx.iter().enumerate().find(|(_, v)| **v < 0 || **v as usize >= vocab) {
                    bail!(
                        ACL_ERROR_RT_AICORE_EXCEPTION,
                        "aclnnEmbedding (run at aclrtSynchronizeStream): indices[{pos}] = {bad} is out of range for weight {} (valid 0..{vocab}); the output was not written",
                        weight.shape()
                    );
                }
                let es = weight.dtype.size();
                let mut buf = Vec::with_capacity(idx.len() * d * es);
                for &i in &idx {
                    let row = weight.reshaped(
                        vec![d],
                        vec![weight.strides[1]],
                        weight.offset + i as usize * weight.strides[0],
                    );
                    buf.extend_from_slice(&row.gather_raw());
                }
                out.scatter_raw(&buf);
                Ok(())
            }
            Kernel::IndexSelect { x, dim, index, out } => {
                let idx = index.gather_i64();
                let (outer, len, inner) = split(&x.dims, *dim);
                if let Some((pos, bad)) = idx.iter().enumerate().find(|(_, v)| **v < 0 || **v as usize >= len) {
                    bail!(
                        ACL_ERROR_RT_AICORE_EXCEPTION,
                        "aclnnIndexSelect (run at aclrtSynchronizeStream): index[{pos}] = {bad} is out of range for dim {dim} of self {} (valid 0..{len}); the output was not written",
                        x.shape()
                    );
                }
                let src = x.gather_raw();
                let es = x.dtype.size();
                let mut buf = Vec::with_capacity(outer * idx.len() * inner * es);
                for a in 0..outer {
                    for &i in &idx {
                        let from = ((a * len + i as usize) * inner) * es;
                        buf.extend_from_slice(&src[from..from + inner * es]);
                    }
                }
                out.scatter_raw(&buf);
                Ok(())
            }
            Kernel::DynamicQuant { x, y, scale } => {
                run_dynamic_quant(x, y, scale);
                Ok(())
            }
            Kernel::ArgMax { x, dim, out } => {
                let xs = x.gather_f64();
                let (outer, len, inner) = split(&x.dims, *dim);
                let mut o = vec![0i64; outer * inner];
                for a in 0..outer {
                    for b in 0..inner {
                        let mut best = 0usize;
                        for j in 1..len {
                            let (v, bv) = (xs[(a * len + j) * inner + b], xs[(a * len + best) * inner + b]);
                            // NaN wins (as in torch); ties keep the first index.
                            if (v > bv || v.is_nan()) && !bv.is_nan() {
                                best = j;
                            }
                        }
                        o[a * inner + b] = best as i64;
                    }
                }
                out.scatter_i64(&o);
                Ok(())
            }
        }
    }
}

/// Offset of batch element `bi` (row-major over `batch`) in a view with those leading dims.
fn batch_offset(v: &View, batch: &[usize], mut bi: usize) -> usize {
    let mut off = v.offset;
    for d in (0..batch.len()).rev() {
        off += (bi % batch[d]) * v.strides[d];
        bi /= batch[d];
    }
    off
}

fn run_matmul(a: &View, b: &View, out: &View) -> SimResult<()> {
    let r = a.rank();
    let batch = &a.dims[..r - 2];
    let nb: usize = batch.iter().product();
    let (m, k, n) = (a.dims[r - 2], a.dims[r - 1], b.dims[r - 1]);
    let mut c = vec![0f32; nb * m * n];
    for bi in 0..nb {
        let a2 = a.reshaped(vec![m, k], a.strides[r - 2..].to_vec(), batch_offset(a, batch, bi));
        let b2 = b.reshaped(vec![k, n], b.strides[r - 2..].to_vec(), batch_offset(b, batch, bi));
        // Dense f32 operands are read in place; others are gathered (and converted) first. The
        // output is written only after the product is complete, so in-place reads never see it.
        let a_owned;
        let av = match a2.as_f32_slice() {
            Some(s) => s,
            None => {
                a_owned = a2.gather_f32();
                &a_owned
            }
        };
        let part = if b2.strides[0] < b2.strides[1] && k > 1 && n > 1 {
            // Column-major weight (e.g. a transposed view): read it as [n, k] and use dot products.
            let bt2 = b2.reshaped(vec![n, k], vec![b2.strides[1], b2.strides[0]], b2.offset);
            match bt2.as_f32_slice() {
                Some(bt) => matmul_nt(av, bt, m, k, n),
                None => matmul_nt(av, &bt2.gather_f32(), m, k, n),
            }
        } else {
            match b2.as_f32_slice() {
                Some(bv) => matmul_nn(av, bv, m, k, n),
                None => matmul_nn(av, &b2.gather_f32(), m, k, n),
            }
        };
        c[bi * m * n..(bi + 1) * m * n].copy_from_slice(&part);
    }
    out.scatter_f64(|i| f64::from(c[i]));
    Ok(())
}

fn run_wqbmm(
    x: &View,
    w: &View,
    scale: &View,
    offset: Option<&View>,
    bias: Option<&View>,
    group: usize,
    y: &View,
) -> SimResult<()> {
    let (k, n) = (w.dims[0], w.dims[1]);
    let m = x.numel() / k;
    let xs = x.gather_f32();
    let sc = scale.gather_f32();
    let off = offset.map(View::gather_f32);
    let deq = |q: f32, kk: usize, j: usize| {
        let g = (kk / group) * n + j;
        let o = off.as_ref().map_or(0.0, |o| o[g]);
        (q + o) * sc[g]
    };
    let mut c = if w.strides[0] < w.strides[1] && k > 1 && n > 1 {
        let mut wt = w.reshaped(vec![n, k], vec![w.strides[1], w.strides[0]], w.offset).gather_f32();
        for j in 0..n {
            for kk in 0..k {
                wt[j * k + kk] = deq(wt[j * k + kk], kk, j);
            }
        }
        matmul_nt(&xs, &wt, m, k, n)
    } else {
        let mut wv = w.gather_f32();
        for kk in 0..k {
            for j in 0..n {
                wv[kk * n + j] = deq(wv[kk * n + j], kk, j);
            }
        }
        matmul_nn(&xs, &wv, m, k, n)
    };
    if let Some(b) = bias {
        let bv = b.gather_f32();
        for i in 0..m {
            for j in 0..n {
                c[i * n + j] += bv[j];
            }
        }
    }
    y.scatter_f64(|i| f64::from(c[i]));
    Ok(())
}

/// Threads for a product of m*k*n multiply-adds: 1 for small ones, else up to 8.
fn threads_for(work: usize, n: usize) -> usize {
    if work < (1 << 21) || n < 128 {
        return 1;
    }
    std::thread::available_parallelism().map_or(1, |p| p.get()).clamp(1, 8)
}

/// Splits columns 0..n among threads; `f(j0, j1)` returns the [m, j1-j0] block.
fn by_columns(m: usize, n: usize, threads: usize, f: impl Fn(usize, usize) -> Vec<f32> + Sync) -> Vec<f32> {
    let chunk = n.div_ceil(threads);
    let ranges: Vec<(usize, usize)> = (0..n).step_by(chunk.max(1)).map(|j0| (j0, (j0 + chunk).min(n))).collect();
    let blocks: Vec<Vec<f32>> = if ranges.len() == 1 {
        vec![f(0, n)]
    } else {
        std::thread::scope(|s| {
            let f = &f;
            let hs: Vec<_> = ranges.iter().map(|&(j0, j1)| s.spawn(move || f(j0, j1))).collect();
            hs.into_iter().map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))).collect()
        })
    };
    let mut c = vec![0f32; m * n];
    for (&(j0, j1), blk) in ranges.iter().zip(&blocks) {
        let w = j1 - j0;
        for i in 0..m {
            c[i * n + j0..i * n + j1].copy_from_slice(&blk[i * w..(i + 1) * w]);
        }
    }
    c
}

/// c[m,n] = a[m,k] @ b[k,n], all row-major (i-k-j loops over column blocks).
pub(crate) fn matmul_nn(a: &[f32], b: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    by_columns(m, n, threads_for(m * k * n, n), |j0, j1| {
        let w = j1 - j0;
        let mut c = vec![0f32; m * w];
        for jb in (j0..j1).step_by(512) {
            let je = (jb + 512).min(j1);
            for i in 0..m {
                let crow = &mut c[i * w + (jb - j0)..i * w + (je - j0)];
                for p in 0..k {
                    let av = a[i * k + p];
                    let brow = &b[p * n + jb..p * n + je];
                    for (cv, bv) in crow.iter_mut().zip(brow) {
                        *cv += av * bv;
                    }
                }
            }
        }
        c
    })
}

/// c[m,n] = a[m,k] @ bt[n,k]^T (dot products, 8 partial sums).
pub(crate) fn matmul_nt(a: &[f32], bt: &[f32], m: usize, k: usize, n: usize) -> Vec<f32> {
    by_columns(m, n, threads_for(m * k * n, n), |j0, j1| {
        let w = j1 - j0;
        let mut c = vec![0f32; m * w];
        for j in j0..j1 {
            let brow = &bt[j * k..(j + 1) * k];
            for i in 0..m {
                c[i * w + (j - j0)] = dot(&a[i * k..(i + 1) * k], brow);
            }
        }
        c
    })
}

/// Dot product with 32 independent f32 partial sums (so the loop vectorises and is not bound by
/// the latency of one accumulator chain).
fn dot(x: &[f32], y: &[f32]) -> f32 {
    const L: usize = 32;
    let mut acc = [0f32; L];
    let (xc, yc) = (x.chunks_exact(L), y.chunks_exact(L));
    let (xr, yr) = (xc.remainder(), yc.remainder());
    for (a, b) in xc.zip(yc) {
        for l in 0..L {
            acc[l] += a[l] * b[l];
        }
    }
    let mut s: f32 = acc.iter().sum();
    for (a, b) in xr.iter().zip(yr) {
        s += a * b;
    }
    s
}

/// aclnnDynamicQuant without smooth scales, as CANN documents it: `scaleOut = row_max(abs(x)) /
/// 127`, `yOut = round(x / scaleOut)`. Computed in f32 (scaleOut's type), the division as
/// written, `round` half away from zero (C's `roundf`); a row of zeros gets scale 0 and zeros.
fn run_dynamic_quant(x: &View, y: &View, scale: &View) {
    let xs = x.gather_f32();
    let n = x.dims.last().copied().unwrap_or(0);
    let mut q = vec![0i64; xs.len()];
    // One scale per row, rows of zero length included (their scale is 0).
    let scales: Vec<f32> = (0..scale.numel())
        .map(|r| {
            let (row, out) = (&xs[r * n..(r + 1) * n], &mut q[r * n..(r + 1) * n]);
            let s = row.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
            if s > 0.0 {
                for (o, &v) in out.iter_mut().zip(row) {
                    *o = (v / s).round().clamp(-127.0, 127.0) as i64;
                }
            }
            s
        })
        .collect();
    y.scatter_i64(&q);
    scale.scatter_f64(|i| f64::from(scales[i]));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nn_and_nt_agree_with_a_hand_product() {
        // [[1,2],[3,4]] @ [[5,6,7],[8,9,10]] = [[21,24,27],[47,54,61]]
        let a = [1.0, 2.0, 3.0, 4.0];
        let b = [5.0, 6.0, 7.0, 8.0, 9.0, 10.0];
        let bt = [5.0, 8.0, 6.0, 9.0, 7.0, 10.0];
        let want = vec![21.0, 24.0, 27.0, 47.0, 54.0, 61.0];
        assert_eq!(matmul_nn(&a, &b, 2, 2, 3), want);
        assert_eq!(matmul_nt(&a, &bt, 2, 2, 3), want);
    }

    #[test]
    fn threaded_split_matches_single_thread() {
        let (m, k, n) = (3, 700, 1100);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 13) as f32 - 6.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| ((i * 5) % 11) as f32 - 5.0).collect();
        let mut bt = vec![0f32; k * n];
        for p in 0..k {
            for j in 0..n {
                bt[j * k + p] = b[p * n + j];
            }
        }
        let c = matmul_nn(&a, &b, m, k, n);
        let single = by_columns(m, n, 1, |j0, j1| {
            let mut c = vec![0f32; m * (j1 - j0)];
            for i in 0..m {
                for j in j0..j1 {
                    c[i * (j1 - j0) + j - j0] = (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum();
                }
            }
            c
        });
        assert_eq!(c, single);
        assert_eq!(matmul_nt(&a, &bt, m, k, n), single);
    }
}
