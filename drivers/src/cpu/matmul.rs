//! `x · wᵀ` for f32 activations and weights of any dtype.
//!
//! Precision contract: each output row depends only on its own activation row and the weights,
//! bitwise, whatever the number of rows `m` and whatever the other rows are. Greedy and seeded
//! generation rely on it: a prompt's logits must not change with what else shares its forward
//! pass (other streams, a decode step beside a prefill chunk) nor with how its prefill is cut
//! (a fresh prompt against the suffix after a cached prefix). So every path below picks its
//! kernel by the weight format only, never by `m`, and each kernel sums a row in an order that
//! does not depend on `m`:
//! - Weights of the simple quantised formats (Q8_0, Q4_0/1, Q5_0/1) are packed once at upload
//!   where the CPU has AVX-512 VNNI (`quant::packed`) and go through `packed_path`, 32 weight
//!   rows per panel.
//! - The other quantised formats take the 8-bit-activation path (`small_m`): the activations are
//!   quantised per row (blocks of 32 with an `f32` scale, see `quant::int8`) and
//!   `quant::matmul_q8` dots them with each weight row (see there for its kernels).
//! - F32, F16 and BF16 weights go through `panel_path`: panels of weight rows de-quantised to
//!   `f32` and multiplied by `cpu::panel` (with AVX-512: one multiply-add chain per output in
//!   the order of the values; elsewhere: 16 lanes of products added in a fixed order), in
//!   parallel over panels.
//!
//! Decode is bound by memory bandwidth: reading the weights once per step in their stored form
//! is what matters, and every path reads each weight row once per call.

use rayon::prelude::*;

use super::norm::{for_row_blocks, gelu_erf};
use super::simd::simd_kernel;
use super::{CpuData, check_f32, cpu_buf, f32_values, new_f32};
use crate::{DType, DriverError, Result, Tensor};

/// Weight rows per de-quantised panel on the float path (`panel_path`).
const PANEL: usize = 64;

pub(super) fn matmul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    linear(x, w, None, false)
}

/// `x · wᵀ`, plus the bias row `bias` and then GELU when asked (one pass over the output).
pub(super) fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, gelu: bool) -> Result<Tensor> {
    check_f32(x, "matmul")?;
    let k = x.last_dim();
    let m = x.rows();
    if w.shape().len() != 2 || w.last_dim() != k {
        return Err(DriverError::Shape {
            op: "matmul",
            detail: format!("activations {:?} against weight {:?}", x.shape(), w.shape()),
        });
    }
    let n = w.shape()[0];
    let dt = w.dtype();
    if matches!(dt, DType::U32 | DType::I64) {
        return Err(DriverError::DType { op: "matmul", dtype: dt });
    }
    let xv = f32_values(x, "matmul")?;
    let wb = cpu_buf(w, "matmul")?;
    let (wbytes, dt): (&[u8], DType) = match &wb.data {
        CpuData::Host(h) => (h.as_slice(), dt),
        CpuData::F32(v) => (bytemuck::cast_slice(v.as_slice()), DType::F32),
        CpuData::Packed(_) => (&[], dt),
    };
    let rb = dt.row_bytes(k).ok_or(DriverError::DType { op: "matmul", dtype: dt })?;
    let mut out_shape = x.shape().to_vec();
    if let Some(l) = out_shape.last_mut() {
        *l = n;
    }
    let bias = match bias {
        Some(b) => {
            let bv = f32_values(b, "linear")?;
            if bv.len() != n {
                return Err(DriverError::Shape {
                    op: "linear",
                    detail: format!("bias {:?} for a weight {:?}", b.shape(), w.shape()),
                });
            }
            Some(bv)
        }
        None => None,
    };
    if m == 0 || n == 0 {
        return Ok(new_f32(vec![0.0; m * n], out_shape));
    }
    let bias = bias.as_deref();
    // The kernel depends on the weight format only, never on `m` (see the module documentation).
    let mut out = if let CpuData::Packed(p) = &wb.data {
        packed_path(&xv, p, m)
    } else if crate::quant::int8_supported(dt) && k.is_multiple_of(32) {
        q8_path(&xv, wbytes, dt, rb, m, n, k)
    } else {
        panel_path(&xv, wbytes, dt, rb, m, n, k)
    };
    if bias.is_some() || gelu {
        for_row_blocks(&mut out, n, |rows| bias_gelu(rows, bias, gelu));
    }
    Ok(new_f32(out, out_shape))
}

simd_kernel! {
    /// Adds `bias` (when given) to every row of `rows` and applies GELU (when asked), in place.
    fn bias_gelu(rows: &mut [f32], bias: Option<&[f32]>, gelu: bool) {
        match (bias, gelu) {
            (Some(b), false) => {
                for r in rows.chunks_exact_mut(b.len()) {
                    r.iter_mut().zip(b).for_each(|(x, &y)| *x += y);
                }
            }
            (Some(b), true) => {
                for r in rows.chunks_exact_mut(b.len()) {
                    r.iter_mut().zip(b).for_each(|(x, &y)| *x = gelu_erf(*x + y));
                }
            }
            (None, true) => rows.iter_mut().for_each(|x| *x = gelu_erf(*x)),
            (None, false) => {}
        }
    }
}

/// `x · wᵀ` for a packed weight (`quant::packed`), any number of rows: the activations are
/// quantised once, and the panels are shared out between the threads.
fn packed_path(x: &[f32], w: &crate::quant::PackedWeights, m: usize) -> Vec<f32> {
    let (n, k) = (w.rows(), w.row_len());
    let acts = crate::quant::Q8Acts::quantize(x, k);
    let mut t = vec![0f32; n * m];
    let chunk_panels = (n / (rayon::current_num_threads() * 8)).clamp(16, 512).div_ceil(crate::quant::PACK_ROWS);
    let rows = chunk_panels * crate::quant::PACK_ROWS;
    t.par_chunks_mut(rows * m).enumerate().for_each(|(ci, tc)| {
        let p0 = ci * chunk_panels;
        let p1 = (p0 + chunk_panels).min(w.panels());
        crate::quant::matmul_packed(w, p0..p1, &acts, tc);
    });
    if m == 1 {
        return t;
    }
    transpose(&t, n, m)
}

/// `x · wᵀ` for the formats of `quant::int8_supported`: the activations are quantised to 8 bits
/// once (each row on its own), then `quant::matmul_q8` dots them with chunks of weight rows in
/// parallel.
fn q8_path(x: &[f32], w: &[u8], dt: DType, rb: usize, m: usize, n: usize, k: usize) -> Vec<f32> {
    // Output computed transposed, [n, m], so that each weight row's results are contiguous.
    let mut t = vec![0f32; n * m];
    // Whole panels for `matmul_q8`'s panel kernel.
    let chunk_rows = (n / (rayon::current_num_threads() * 8)).clamp(16, 512).next_multiple_of(crate::quant::PANEL_ROWS);
    let acts = crate::quant::Q8Acts::quantize(x, k);
    t.par_chunks_mut(chunk_rows * m).enumerate().for_each(|(ci, tc)| {
        let r0 = ci * chunk_rows;
        let rows = tc.len() / m;
        crate::quant::matmul_q8(dt, &w[r0 * rb..(r0 + rows) * rb], &acts, tc);
    });
    if m == 1 {
        return t;
    }
    transpose(&t, n, m)
}

/// `[m, n]` from the row-major `[n, m]` slice `t`, in tiles that stay in cache, in parallel
/// over blocks of output rows.
fn transpose(t: &[f32], n: usize, m: usize) -> Vec<f32> {
    const T: usize = 32;
    let mut out = vec![0f32; m * n];
    if n == 0 {
        return out;
    }
    out.par_chunks_mut(T * n).enumerate().for_each(|(bi, block)| {
        let i0 = bi * T;
        let rows = block.len() / n;
        for j0 in (0..n).step_by(T) {
            for j in j0..(j0 + T).min(n) {
                let src = &t[j * m + i0..j * m + i0 + rows];
                for (r, &v) in src.iter().enumerate() {
                    block[r * n + j] = v;
                }
            }
        }
    });
    out
}

/// Columns `c0..c1` of a row-major `[m, n]` output, for one thread to write while other threads
/// write other columns of the same output ([`OutCols::split`]).
pub(super) struct OutCols<'a> {
    ptr: *mut f32,
    m: usize,
    n: usize,
    c0: usize,
    c1: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: an `OutCols` writes only inside its own columns (checked in `write`), and the values
// `split` makes from one exclusive borrow have disjoint columns, so moving one to another thread
// can never let two threads write the same element, nor anyone read while they write.
unsafe impl Send for OutCols<'_> {}

impl<'a> OutCols<'a> {
    /// `out` (`[m, n]`) cut into ranges of `width` columns (the last may be narrower).
    pub(super) fn split(out: &'a mut [f32], m: usize, n: usize, width: usize) -> Vec<Self> {
        assert!(out.len() == m * n && width > 0, "OutCols::split: {} values for [{m}, {n}]", out.len());
        let ptr = out.as_mut_ptr();
        (0..n)
            .step_by(width)
            .map(|c0| OutCols { ptr, m, n, c0, c1: (c0 + width).min(n), _out: std::marker::PhantomData })
            .collect()
    }

    /// The number of columns.
    pub(super) fn width(&self) -> usize {
        self.c1 - self.c0
    }

    /// Writes `vals` to row `i`, from column `j` of this range on. Panics when that runs outside
    /// the range.
    pub(super) fn write(&mut self, i: usize, j: usize, vals: &[f32]) {
        assert!(
            i < self.m && j + vals.len() <= self.width(),
            "OutCols::write: row {i}, columns {j}..{} of {}",
            j + vals.len(),
            self.width()
        );
        // SAFETY: row `i < m` and columns `c0 + j..c0 + j + len <= c1 <= n` lie inside the
        // `[m, n]` output this range was split from, in columns no other range has; `&mut self`
        // keeps this range to one writer at a time.
        unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), self.ptr.add(i * self.n + self.c0 + j), vals.len()) };
    }
}

fn panel_path(x: &[f32], w: &[u8], dt: DType, rb: usize, m: usize, n: usize, k: usize) -> Vec<f32> {
    // Each panel of weight rows writes its own columns of the [m, n] result.
    let mut out = vec![0f32; m * n];
    let cols = OutCols::split(&mut out, m, n, PANEL);
    cols.into_par_iter().enumerate().for_each_init(Vec::new, |panel, (pi, mut oc)| {
        let r0 = pi * PANEL;
        let rows = oc.width();
        if super::panel::product(x, &w[r0 * rb..(r0 + rows) * rb], dt, m, k, &mut oc, panel) {
            return;
        }
        let wf: &[f32] = match bytemuck::try_cast_slice::<u8, f32>(&w[r0 * rb..(r0 + rows) * rb]) {
            Ok(s) if dt == DType::F32 => s,
            _ => {
                panel.resize(rows * k, 0f32);
                for (r, dst) in panel.chunks_exact_mut(k.max(1)).enumerate().take(rows) {
                    crate::quant::dequantize_row(dt, &w[(r0 + r) * rb..(r0 + r + 1) * rb], dst);
                }
                panel
            }
        };
        let mut res = vec![0f32; rows];
        for (i, xr) in x.chunks_exact(k.max(1)).enumerate().take(m) {
            dot_rows(xr, wf, &mut res);
            oc.write(i, 0, &res);
        }
    });
    out
}

simd_kernel! {
    /// `res[j] =` row `j` of `w` (rows of `x.len()` values) dotted with `x`, each in one fixed
    /// order: 16 lanes of products (rounded, not fused) by value index modulo 16, added in
    /// order, then the values past the last whole 16. Where `cpu::panel` has no kernel.
    fn dot_rows(x: &[f32], w: &[f32], res: &mut [f32]) {
        let k = x.len();
        let whole = k / 16 * 16;
        for (r, wr) in res.iter_mut().zip(w.chunks_exact(k.max(1))) {
            let mut acc = [0f32; 16];
            for (xc, wc) in x[..whole].chunks_exact(16).zip(wr[..whole].chunks_exact(16)) {
                for l in 0..16 {
                    acc[l] += xc[l] * wc[l];
                }
            }
            let mut s = 0f32;
            for a in acc {
                s += a;
            }
            for (a, b) in x[whole..].iter().zip(&wr[whole..]) {
                s += a * b;
            }
            *r = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn naive(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
        let mut o = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                o[i * n + j] = (0..k).map(|p| x[i * k + p] * w[j * k + p]).sum();
            }
        }
        o
    }

    /// The many-row path for F16 and BF16 weights (the panel kernel with AVX-512) against the
    /// naive product of the de-quantised weights, for panels and micro-tiles cut every way.
    #[test]
    fn many_row_path_matches_naive_f16_bf16() {
        for &(m, n, k) in &[(9, 33, 32), (40, 65, 64), (17, 100, 48), (64, 31, 7)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0).collect();
            for dt in [DType::F16, DType::BF16] {
                let wb: Vec<u8> = match dt {
                    DType::F16 => w.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
                    _ => w.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
                };
                let mut wd = vec![0f32; n * k];
                crate::quant::dequantize_row(dt, &wb, &mut wd);
                let e = naive(&x, &wd, m, n, k);
                let got = panel_path(&x, &wb, dt, k * 2, m, n, k);
                for i in 0..m * n {
                    assert!((got[i] - e[i]).abs() < 1e-4, "{dt} ({m},{n},{k}) at {i}: {} vs {}", got[i], e[i]);
                }
            }
        }
    }

    /// Packed weights (where this CPU packs them) against the stored ones through the
    /// row-by-row path, for several panels and chunks, and each activation row of a batch equal
    /// bitwise to the same row alone; embedding rows de-quantise as stored.
    #[test]
    fn packed_path_matches_stored_and_each_row_alone() {
        let (n, k) = (200, 96);
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0).collect();
        for dt in [DType::Q8_0, DType::Q4_1, DType::Q5_0] {
            let mut wb = Vec::new();
            crate::quant::quantize_row(dt, &w, &mut wb).unwrap();
            let Some(p) = crate::quant::PackedWeights::pack(dt, &wb, n, k) else {
                eprintln!("skipping {dt}: this CPU has no packed kernel");
                continue;
            };
            let mut row = vec![0f32; k];
            let mut want = vec![0f32; k];
            p.dequantize_row(n - 1, &mut row);
            crate::quant::dequantize_row(dt, &wb[(n - 1) * wb.len() / n..], &mut want);
            assert_eq!(row, want, "{dt}: last row de-quantised");
            let rb = wb.len() / n;
            for m in [1, 5, 40] {
                let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
                let got = packed_path(&x, &p, m);
                let stored = q8_path(&x, &wb, dt, rb, m, n, k);
                for (i, (a, b)) in got.iter().zip(&stored).enumerate() {
                    assert!((a - b).abs() < 1e-3 * b.abs().max(1.0), "{dt} m={m} at {i}: packed {a} vs stored {b}");
                }
                for r in [0, m / 2, m - 1] {
                    let alone = packed_path(&x[r * k..(r + 1) * k], &p, 1);
                    assert_eq!(alone, got[r * n..(r + 1) * n], "{dt} m={m}: row {r} alone");
                }
            }
        }
    }

    #[test]
    fn float_path_matches_naive_f32() {
        for &(m, n, k) in &[(1, 70, 64), (3, 33, 32), (9, 130, 96), (40, 65, 64), (7, 1030, 48), (24, 387, 384)] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0).collect();
            let e = naive(&x, &w, m, n, k);
            let got = panel_path(&x, bytemuck::cast_slice(&w), DType::F32, k * 4, m, n, k);
            for i in 0..m * n {
                assert!((got[i] - e[i]).abs() < 1e-4, "({m},{n},{k}) at {i}: {} vs {}", got[i], e[i]);
            }
            let mut res = vec![0f32; n];
            dot_rows(&x[..k], &w, &mut res);
            for j in 0..n {
                assert!((res[j] - e[j]).abs() < 1e-4, "dot_rows ({m},{n},{k}) at {j}");
            }
        }
    }

    /// The precision contract of the module: through `linear`, for every kind of weight, an
    /// activation row's result is bitwise the same alone and in batches of every size (across
    /// each size at which a kernel used to change), with a bias and GELU too.
    #[test]
    fn each_row_is_the_same_in_any_batch() {
        use std::sync::Arc;
        let (n, k) = (100, 96);
        let wv: Vec<f32> = (0..n * k).map(|i| (((i * 37 + 11) % 101) as f32 - 50.0) / 61.0).collect();
        let bias: Vec<f32> = (0..n).map(|i| i as f32 / 50.0 - 1.0).collect();
        let bias = new_f32(bias, vec![n]);
        // Row r of every batch is the same vector, whatever the batch's size.
        let row = |r: usize| (0..k).map(move |c| (((r * 131 + c * 17) % 97) as f32 - 48.0) / 37.0);
        for dt in [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_1, DType::Q5_0] {
            let bytes: Vec<u8> = match dt {
                DType::F32 => bytemuck::cast_slice(&wv).to_vec(),
                DType::F16 => wv.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
                DType::BF16 => wv.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
                _ => {
                    let mut out = Vec::new();
                    crate::quant::quantize_row(dt, &wv, &mut out).unwrap();
                    out
                }
            };
            let stored = Tensor::from_buffer(
                Arc::new(super::super::CpuBuffer { data: CpuData::Host(crate::HostBytes::from_vec(bytes.clone())) }),
                dt,
                vec![n, k],
            );
            let mut weights = vec![("stored", stored)];
            if let Some(p) = crate::quant::PackedWeights::pack(dt, &bytes, n, k) {
                let t =
                    Tensor::from_buffer(Arc::new(super::super::CpuBuffer { data: CpuData::Packed(p) }), dt, vec![n, k]);
                weights.push(("packed", t));
            }
            for (how, w) in &weights {
                for (b, gelu) in [(None, false), (Some(&bias), true)] {
                    let out = |m: usize| {
                        let x: Vec<f32> = (0..m).flat_map(row).collect();
                        f32_values(&linear(&new_f32(x, vec![m, k]), w, b, gelu).unwrap(), "test").unwrap().to_vec()
                    };
                    let alone: Vec<Vec<f32>> = (0..3)
                        .map(|r| {
                            let x: Vec<f32> = row(r).collect();
                            f32_values(&linear(&new_f32(x, vec![1, k]), w, b, gelu).unwrap(), "test").unwrap().to_vec()
                        })
                        .collect();
                    for m in [2, 3, 4, 5, 8, 9, 31, 32, 33, 96, 97, 128, 130] {
                        let got = out(m);
                        for (r, a) in alone.iter().enumerate().take(m) {
                            assert!(got[r * n..(r + 1) * n] == a[..], "{dt} {how}: row {r} differs in a batch of {m}");
                        }
                    }
                }
            }
        }
    }
}
