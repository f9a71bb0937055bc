//! `x · wᵀ` for f32 activations and weights of any dtype.
//!
//! Two paths:
//! - few rows (decode): each weight row is read once and dotted with every activation row, in
//!   parallel over weight rows. Decode is bound by memory bandwidth, so reading the weights once
//!   in their stored (quantised) form is what matters.
//! - many rows (prefill): weight rows are de-quantised a panel at a time into a per-thread f32
//!   buffer and multiplied, in parallel over panels: with AVX-512 by `cpu::panel` (activations
//!   read in place, nothing packed), elsewhere with the `gemm` crate.
//!
//! Weights of the quantised formats with 8-bit-activation kernels (Q8_0, Q4_0/1, Q5_0/1, Q4_K,
//! Q5_K, Q6_K) are packed once at upload where the CPU has AVX-512 VNNI (`quant::packed`): they
//! go through `packed_path` for any number of rows, 32 weight rows per panel, and a row's result
//! is the same whatever else shares its pass.
//!
//! Unpacked, those formats (`quant::int8_supported`: on other CPUs, or weights that did not come
//! through upload) take the first path for any number of rows: the activations are quantised
//! once per call, and
//! `quant::matmul_q8` works through each chunk of weight rows in tiles of four weight rows by
//! up to four activation rows (with AVX-512 VNNI), decoding each weight block once per tile;
//! from `quant::PANEL_MIN_M` rows on (prefill) it re-lays each chunk out in panels of 32 rows
//! instead, so chunks are then whole panels.

use rayon::prelude::*;

use super::norm::{for_row_blocks, gelu_erf};
use super::simd::simd_kernel;
use super::{CpuData, check_f32, cpu_buf, f32_values, new_f32};
use crate::{DType, DriverError, Result, Tensor};

/// Below this many activation rows the row-by-row kernel wins over de-quantise + GEMM.
const SMALL_M: usize = 8;
/// From this many activation rows on, f32 weights go through one whole-matrix GEMM that the gemm
/// crate parallelises itself; below it, panels parallelised by us do better (measured on MiniLM:
/// a 24-row sentence and a 760-row batch).
const WHOLE_GEMM_M: usize = 128;
/// Weight rows per de-quantised panel on the GEMM path.
const PANEL: usize = 64;

/// `x · wᵀ`, plus the bias row `bias` and then GELU when asked, without extra passes where the
/// GEMM can start from the bias. `invariant` (`CpuOptions::batch_invariant`): F32/F16/BF16
/// weights through `cpu::dot` and Q4_K/Q5_K through tiles in the panels' order, so that every
/// row's result is the same whatever the number of rows.
pub(super) fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>, gelu: bool, invariant: bool) -> Result<Tensor> {
    check_f32(x, "matmul")?;
    let crate::backend::MatmulShape { m, k, n, out: out_shape } = crate::backend::MatmulShape::check(x, w)?;
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
    // Batch-invariant: F32, F16 and BF16 weights in one order of sums for any number of rows.
    let dot = if invariant && !matches!(wb.data, CpuData::Packed(_)) {
        super::dot::matmul(&xv, wbytes, dt, m, n, k)
    } else {
        None
    };
    let whole = if dot.is_none() && dt == DType::F32 && m >= WHOLE_GEMM_M {
        bytemuck::try_cast_slice::<u8, f32>(wbytes).ok()
    } else {
        None
    };
    let mut out = if let CpuData::Packed(p) = &wb.data {
        packed_path(&xv, p, m)
    } else if let Some(t) = dot {
        if m == 1 { t } else { transpose(&t, n, m) }
    } else if let Some(wf) = whole {
        // Plain f32 weights need no conversion: one GEMM over the whole output, parallelised by
        // the gemm crate itself inside our pool, starting from the bias.
        let out = gemm_whole(&xv, wf, bias, m, n, k);
        if gelu {
            let mut out = out;
            for_row_blocks(&mut out, n, |rows| bias_gelu(rows, None, true));
            return Ok(new_f32(out, out_shape));
        }
        out
    } else if dt == DType::F32
        && m > SMALL_M
        && m <= DOT_TILES_MAX_M
        && k.is_multiple_of(16)
        && let Ok(wf) = bytemuck::try_cast_slice::<u8, f32>(wbytes)
        && super::simd::avx512()
    {
        small_m_f32(&xv, wf, m, n, k)
    } else if m <= SMALL_M || (crate::quant::int8_supported(dt) && k.is_multiple_of(32)) {
        // The quantised formats always take the 8-bit-activation path, so that a decode row's
        // result does not depend on how many other decode rows come with it (a batch of up to
        // `quant::PANEL_MIN_M - 1` rows equals each row alone bitwise; prefill passes agree
        // within rounding).
        small_m(&xv, wbytes, dt, rb, m, n, k, invariant)
    } else {
        gemm_path(&xv, wbytes, dt, rb, m, n, k)
    };
    if whole.is_none() && (bias.is_some() || gelu) {
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

/// Up to this many activation rows, f32 weights whose rows are whole SIMD vectors go through
/// [`dot_tiles`] (no packing) instead of the gemm crate.
const DOT_TILES_MAX_M: usize = 96;

/// `x [m, k] · wᵀ` for f32 `w [n, k]` with `k` a multiple of 16, as tiles of dot products: the
/// weight rows are used as stored, so nothing is packed (which dominates the gemm crate's time
/// for a few dozen rows). Parallel over blocks of weight rows.
fn small_m_f32(x: &[f32], w: &[f32], m: usize, n: usize, k: usize) -> Vec<f32> {
    // Transposed result [n, m]: each block of weight rows writes a contiguous slice.
    let mut t = vec![0f32; n * m];
    let threads = rayon::current_num_threads();
    let rows = (n / (threads * 4)).clamp(8, 256).next_multiple_of(4);
    if threads == 1 || n * m * k < 1 << 18 {
        dot_tiles(x, w, m, k, &mut t);
    } else {
        t.par_chunks_mut(rows * m).enumerate().for_each(|(ci, tc)| {
            let r0 = ci * rows;
            let nr = tc.len() / m;
            dot_tiles(x, &w[r0 * k..(r0 + nr) * k], m, k, tc);
        });
    }
    transpose(&t, n, m)
}

/// `t [rows, m] = w [rows, k] · xᵀ` for `x [m, k]`, `k` a multiple of 16.
fn dot_tiles(x: &[f32], w: &[f32], m: usize, k: usize, t: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512() {
        // SAFETY: the CPU has AVX-512F (checked at run time); the function checks its slices.
        unsafe { dot_tiles_avx512(x, w, m, k, t) };
        return;
    }
    for (j, wr) in w.chunks_exact(k).enumerate() {
        for (i, xr) in x.chunks_exact(k).take(m).enumerate() {
            t[j * m + i] = xr.iter().zip(wr).map(|(a, b)| a * b).sum();
        }
    }
}

/// [`dot_tiles`] with AVX-512: tiles of 4 weight rows by 4 activation rows in 16 vector
/// accumulators, reduced once at the end.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn dot_tiles_avx512(x: &[f32], w: &[f32], m: usize, k: usize, t: &mut [f32]) {
    use std::arch::x86_64::*;
    let rows = w.len() / k.max(1);
    assert!(k.is_multiple_of(16) && x.len() >= m * k && t.len() >= rows * m, "dot_tiles: buffer sizes");
    let (xp, wp) = (x.as_ptr(), w.as_ptr());
    // Tile of A activation rows from i0 by B weight rows from j0.
    let tile = |i0: usize, j0: usize, a_n: usize, b_n: usize, t: &mut [f32]| {
        let mut acc = [_mm512_setzero_ps(); 16];
        let mut c = 0;
        while c < k {
            // SAFETY: i0 + a < m and j0 + b < rows (the callers' loop bounds) and c + 16 <= k,
            // so every 16-value load lies inside x (m·k values) or w (rows·k values).
            unsafe {
                let wv: [__m512; 4] = std::array::from_fn(|b| {
                    if b < b_n { _mm512_loadu_ps(wp.add((j0 + b) * k + c)) } else { _mm512_setzero_ps() }
                });
                for a in 0..a_n {
                    let xv = _mm512_loadu_ps(xp.add((i0 + a) * k + c));
                    for b in 0..4 {
                        acc[a * 4 + b] = _mm512_fmadd_ps(xv, wv[b], acc[a * 4 + b]);
                    }
                }
            }
            c += 16;
        }
        for a in 0..a_n {
            for b in 0..b_n {
                t[(j0 + b) * m + i0 + a] = _mm512_reduce_add_ps(acc[a * 4 + b]);
            }
        }
    };
    let mut j0 = 0;
    while j0 < rows {
        let b_n = (rows - j0).min(4);
        let mut i0 = 0;
        while i0 + 4 <= m {
            if b_n == 4 {
                // SAFETY: i0 + 4 <= m and j0 + 4 <= rows here, x and w were checked above, and
                // k is a multiple of 16.
                unsafe { full_tile(xp, wp, i0, j0, m, k, t) };
            } else {
                tile(i0, j0, 4, b_n, t);
            }
            i0 += 4;
        }
        if i0 < m {
            tile(i0, j0, m - i0, b_n, t);
        }
        j0 += 4;
    }
}

/// The common 4×4 tile of [`dot_tiles_avx512`], with constant bounds so the accumulators stay
/// in registers.
///
/// # Safety
/// `xp` must point to at least `(i0 + 4) · k` readable values, `wp` to at least `(j0 + 4) · k`,
/// `k` must be a multiple of 16, and `t` must hold `(j0 + 4) · m` values with `i0 + 4 <= m`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn full_tile(xp: *const f32, wp: *const f32, i0: usize, j0: usize, m: usize, k: usize, t: &mut [f32]) {
    use std::arch::x86_64::*;
    let mut acc = [_mm512_setzero_ps(); 16];
    let mut c = 0;
    while c < k {
        // SAFETY: by the function's contract rows i0..i0 + 4 of x and j0..j0 + 4 of w are
        // readable, and c + 16 <= k since k is a multiple of 16.
        unsafe {
            let w0 = _mm512_loadu_ps(wp.add(j0 * k + c));
            let w1 = _mm512_loadu_ps(wp.add((j0 + 1) * k + c));
            let w2 = _mm512_loadu_ps(wp.add((j0 + 2) * k + c));
            let w3 = _mm512_loadu_ps(wp.add((j0 + 3) * k + c));
            for a in 0..4 {
                let xv = _mm512_loadu_ps(xp.add((i0 + a) * k + c));
                acc[a * 4] = _mm512_fmadd_ps(xv, w0, acc[a * 4]);
                acc[a * 4 + 1] = _mm512_fmadd_ps(xv, w1, acc[a * 4 + 1]);
                acc[a * 4 + 2] = _mm512_fmadd_ps(xv, w2, acc[a * 4 + 2]);
                acc[a * 4 + 3] = _mm512_fmadd_ps(xv, w3, acc[a * 4 + 3]);
            }
        }
        c += 16;
    }
    for a in 0..4 {
        for b in 0..4 {
            t[(j0 + b) * m + i0 + a] = _mm512_reduce_add_ps(acc[a * 4 + b]);
        }
    }
}

/// `x · wᵀ` for a packed weight (`quant::packed`), any number of rows: the activations are
/// quantised once, and the panels are shared out between the threads. Each thread's kernel
/// writes its weight rows' results row-major into a buffer of its own, copied into its columns
/// of the `[m, n]` output a row at a time: no transpose afterwards.
fn packed_path(x: &[f32], w: &crate::quant::PackedWeights, m: usize) -> Vec<f32> {
    let (n, k) = (w.rows(), w.row_len());
    let acts = crate::quant::Q8Acts::quantize(x, k);
    let mut out = vec![0f32; m * n];
    let chunk_panels = (n / (rayon::current_num_threads() * 8)).clamp(16, 512).div_ceil(crate::quant::PACK_ROWS);
    let cols = OutCols::split(&mut out, m, n, chunk_panels * crate::quant::PACK_ROWS);
    cols.into_par_iter().enumerate().for_each_init(Vec::new, |buf, (ci, mut oc)| {
        let p0 = ci * chunk_panels;
        let p1 = (p0 + chunk_panels).min(w.panels());
        let width = oc.width();
        buf.resize(m * width, 0.0);
        crate::quant::matmul_packed(w, p0..p1, &acts, buf);
        for (i, row) in buf.chunks_exact(width).enumerate() {
            oc.write(i, 0, row);
        }
    });
    out
}

#[allow(clippy::too_many_arguments)]
fn small_m(x: &[f32], w: &[u8], dt: DType, rb: usize, m: usize, n: usize, k: usize, invariant: bool) -> Vec<f32> {
    // Output computed transposed, [n, m], so that each weight row's results are contiguous.
    let mut t = vec![0f32; n * m];
    let mut chunk_rows = (n / (rayon::current_num_threads() * 8)).clamp(16, 512);
    if m >= crate::quant::PANEL_MIN_M {
        // Whole panels for the prefill kernel.
        chunk_rows = chunk_rows.next_multiple_of(crate::quant::PANEL_ROWS);
    }
    // The quantised formats dot with 8-bit activations, quantised once here for all rows.
    let acts = (crate::quant::int8_supported(dt) && k.is_multiple_of(32)).then(|| crate::quant::Q8Acts::quantize(x, k));
    t.par_chunks_mut(chunk_rows * m).enumerate().for_each(|(ci, tc)| {
        let r0 = ci * chunk_rows;
        if let Some(a) = &acts {
            let rows = tc.len() / m;
            crate::quant::matmul_q8(dt, &w[r0 * rb..(r0 + rows) * rb], a, tc, invariant);
            return;
        }
        for (j, o) in tc.chunks_exact_mut(m).enumerate() {
            let row = &w[(r0 + j) * rb..(r0 + j + 1) * rb];
            if let Some(ahead) = w.get((r0 + j + 2) * rb..(r0 + j + 3) * rb) {
                crate::quant::prefetch(ahead);
            }
            if m == 1 {
                o[0] = crate::quant::vec_dot(dt, row, x);
            } else {
                crate::quant::vec_dot_multi(dt, row, x, k, o);
            }
        }
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

fn gemm_path(x: &[f32], w: &[u8], dt: DType, rb: usize, m: usize, n: usize, k: usize) -> Vec<f32> {
    // Each panel of weight rows writes its own columns of the [m, n] result.
    let mut out = vec![0f32; m * n];
    let cols = OutCols::split(&mut out, m, n, PANEL);
    cols.into_par_iter().enumerate().for_each_init(Vec::new, |panel, (pi, mut oc)| {
        let r0 = pi * PANEL;
        let rows = oc.width();
        if super::panel::product(x, &w[r0 * rb..(r0 + rows) * rb], dt, m, k, &mut oc, panel) {
            return;
        }
        let wf: &[f32] = if dt == DType::F32 {
            match bytemuck::try_cast_slice::<u8, f32>(&w[r0 * rb..(r0 + rows) * rb]) {
                Ok(s) => s,
                Err(_) => {
                    panel.resize(rows * k, 0f32);
                    crate::quant::dequantize_row(dt, &w[r0 * rb..(r0 + rows) * rb], panel);
                    panel
                }
            }
        } else {
            panel.resize(rows * k, 0f32);
            for (r, dst) in panel.chunks_exact_mut(k).enumerate().take(rows) {
                crate::quant::dequantize_row(dt, &w[(r0 + r) * rb..(r0 + r + 1) * rb], dst);
            }
            panel
        };
        // Computed as [rows, m] = W · xᵀ, then written out by columns.
        let mut tc = vec![0f32; rows * m];
        gemm_nt(&mut tc, wf, x, rows, m, k);
        let mut col = vec![0f32; rows];
        for i in 0..m {
            for (j, c) in col.iter_mut().enumerate() {
                *c = tc[j * m + i];
            }
            oc.write(i, 0, &col);
        }
    });
    out
}

/// `x [m, k] · wᵀ (+ bias)` for `w [n, k]`: `[m, n]`, parallel over the current rayon pool.
fn gemm_whole(x: &[f32], w: &[f32], bias: Option<&[f32]>, m: usize, n: usize, k: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(m * n);
    match bias {
        Some(b) => (0..m).for_each(|_| out.extend_from_slice(b)),
        None => out.resize(m * n, 0.0),
    }
    assert!(out.len() == m * n && x.len() >= m * k && w.len() >= n * k, "gemm_whole: buffer sizes");
    // SAFETY: the assertion proves every index the strides form is in bounds: out is m×n
    // row-major (row stride n, column stride 1), x is m×k row-major, and wᵀ is read as k×n with
    // row stride 1 and column stride k from w's n×k row-major storage. `out` is exclusively
    // borrowed and initialised; with read_dst it is the bias the products are added to.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            out.as_mut_ptr(),
            1,
            n as isize,
            bias.is_some(),
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        );
    }
    out
}

/// `dst [rows, m] = a [rows, k] · bᵀ` for `b [m, k]`, single-threaded (the caller parallelises).
fn gemm_nt(dst: &mut [f32], a: &[f32], b: &[f32], rows: usize, m: usize, k: usize) {
    assert!(dst.len() >= rows * m && a.len() >= rows * k && b.len() >= m * k, "gemm_nt: buffer sizes");
    // SAFETY: the assertion above proves that every index the strides below can form lies inside
    // `dst`, `a` and `b`: dst is rows×m row-major (row stride m, column stride 1), a is rows×k
    // row-major, and bᵀ is read as k×m with row stride 1 and column stride k from b's m×k
    // row-major storage. `dst` is exclusively borrowed, so nothing else reads or writes it, and
    // read_dst=false means its prior contents are never read.
    unsafe {
        gemm::gemm(
            rows,
            m,
            k,
            dst.as_mut_ptr(),
            1,
            m as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
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
                let got = gemm_path(&x, &wb, dt, k * 2, m, n, k);
                for i in 0..m * n {
                    assert!((got[i] - e[i]).abs() < 1e-4, "{dt} ({m},{n},{k}) at {i}: {} vs {}", got[i], e[i]);
                }
                if let Some(t) = super::super::dot::matmul(&x, &wb, dt, m, n, k) {
                    let got = transpose(&t, n, m);
                    for i in 0..m * n {
                        assert!((got[i] - e[i]).abs() < 1e-4, "{dt} dot ({m},{n},{k}) at {i}: {} vs {}", got[i], e[i]);
                    }
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
                let stored = small_m(&x, &wb, dt, rb, m, n, k, false);
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
    fn both_paths_match_naive_f32() {
        for &(m, n, k) in &[
            (1, 70, 64),
            (3, 33, 32),
            (9, 130, 96),
            (40, 65, 64),
            (7, 1030, 48),
            (24, 387, 384),
            (5, 9, 7),
            (13, 21, 40),
        ] {
            let x: Vec<f32> = (0..m * k).map(|i| ((i * 7 % 13) as f32 - 6.0) / 7.0).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 5 % 11) as f32 - 5.0) / 9.0).collect();
            let wb: &[u8] = bytemuck::cast_slice(&w);
            let rb = k * 4;
            let e = naive(&x, &w, m, n, k);
            let a = small_m(&x, wb, DType::F32, rb, m, n, k, false);
            let b = gemm_path(&x, wb, DType::F32, rb, m, n, k);
            if k % 16 == 0 {
                let c = small_m_f32(&x, &w, m, n, k);
                for i in 0..m * n {
                    assert!((c[i] - e[i]).abs() < 1e-4, "dot tiles ({m},{n},{k}) at {i}");
                }
            }
            if let Some(c) = super::super::dot::matmul(&x, wb, DType::F32, m, n, k) {
                let c = transpose(&c, n, m);
                for i in 0..m * n {
                    assert!((c[i] - e[i]).abs() < 1e-4, "invariant dot tiles ({m},{n},{k}) at {i}");
                }
            }
            for i in 0..m * n {
                assert!((a[i] - e[i]).abs() < 1e-4 && (b[i] - e[i]).abs() < 1e-4, "({m},{n},{k}) at {i}");
            }
        }
    }

    /// `rows` of the test activations (`k` values each) through `linear`.
    fn lin(rows: std::ops::Range<usize>, k: usize, w: &Tensor, b: Option<&Tensor>, gelu: bool, inv: bool) -> Vec<f32> {
        let m = rows.len();
        let x: Vec<f32> =
            rows.flat_map(|r| (0..k).map(move |c| (((r * 131 + c * 17) % 97) as f32 - 48.0) / 37.0)).collect();
        f32_values(&linear(&new_f32(x, vec![m, k]), w, b, gelu, inv).unwrap(), "test").unwrap().to_vec()
    }

    /// Each weight of `weights` (`[n, k]`) through `linear` (`inv`: batch-invariant kernels)
    /// with batches of every size across each size at which a kernel changes or used to, with
    /// no bias and with a bias and GELU: rows 0, 1, 2 and the last must equal the same rows
    /// alone, bitwise.
    fn check_rows_alone(weights: &[(String, Tensor)], n: usize, k: usize, inv: bool) {
        let bias = new_f32((0..n).map(|i| i as f32 / 50.0 - 1.0).collect(), vec![n]);
        for (how, w) in weights {
            for (b, gelu) in [(None, false), (Some(&bias), true)] {
                let alone: Vec<Vec<f32>> = (0..3).map(|r| lin(r..r + 1, k, w, b, gelu, inv)).collect();
                for m in [1, 2, 3, 4, 5, 8, 9, 31, 32, 33, 96, 97, 128, 130, 200] {
                    let got = lin(0..m, k, w, b, gelu, inv);
                    for (r, a) in alone.iter().enumerate().take(m) {
                        assert!(got[r * n..(r + 1) * n] == a[..], "{how}: row {r} differs in a batch of {m}");
                    }
                    let last = lin(m - 1..m, k, w, b, gelu, inv);
                    assert!(got[(m - 1) * n..] == last[..], "{how}: the last row differs in a batch of {m}");
                }
            }
        }
    }

    /// A weight tensor of `dt` stored as the file's bytes `bytes`.
    fn stored(dt: DType, bytes: Vec<u8>, n: usize, k: usize) -> Tensor {
        let host = CpuData::Host(crate::HostBytes::from_vec(bytes));
        Tensor::from_buffer(std::sync::Arc::new(super::super::CpuBuffer { data: host }), dt, vec![n, k])
    }

    fn test_weights(n: usize, k: usize) -> Vec<f32> {
        (0..n * k).map(|i| (((i * 37 + 11) % 101) as f32 - 50.0) / 61.0).collect()
    }

    /// The quantised formats' rows through `linear`: bitwise the same alone and in batches of
    /// every size, stored and packed, with a bias and GELU too, with the default kernels.
    #[test]
    fn quantised_rows_are_the_same_in_any_batch() {
        let (n, k) = (100, 96);
        let wv = test_weights(n, k);
        let mut weights = Vec::new();
        for dt in [DType::Q8_0, DType::Q4_1, DType::Q5_0] {
            let mut bytes = Vec::new();
            crate::quant::quantize_row(dt, &wv, &mut bytes).unwrap();
            if let Some(p) = crate::quant::PackedWeights::pack(dt, &bytes, n, k) {
                let buf = std::sync::Arc::new(super::super::CpuBuffer { data: CpuData::Packed(p) });
                weights.push((format!("{dt} packed"), Tensor::from_buffer(buf, dt, vec![n, k])));
            }
            weights.push((format!("{dt} stored"), stored(dt, bytes, n, k)));
        }
        check_rows_alone(&weights, n, k, false);
    }

    /// Q4_K and Q5_K weights with the batch-invariant option (tiles in the panels' order for
    /// decode where the CPU has AVX-512 VNNI): the same; and Q4_K, Q5_K and Q6_K weights packed
    /// (where this CPU packs them), with or without the option. The bytes are arbitrary but for
    /// each super-block's `f16` scales, kept small and finite.
    #[test]
    fn k_quant_rows_are_the_same_in_any_batch() {
        for (n, k) in [(100, 512), (70, 768)] {
            let mut weights = Vec::new();
            let mut packed = Vec::new();
            for (dt, bb) in [(DType::Q4K, 144), (DType::Q5K, 176), (DType::Q6K, 210)] {
                let mut state = 0x2545_f491_4f6c_dd1du64;
                let mut bytes: Vec<u8> = (0..n * k / 256 * bb)
                    .map(|_| {
                        state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                        (state >> 56) as u8
                    })
                    .collect();
                for (i, blk) in bytes.chunks_exact_mut(bb).enumerate() {
                    let d = half::f16::from_f32(0.01 + (i % 7) as f32 / 500.0).to_le_bytes();
                    let dmin = half::f16::from_f32(0.005 + (i % 5) as f32 / 900.0).to_le_bytes();
                    if dt == DType::Q6K {
                        blk[208..].copy_from_slice(&d);
                    } else {
                        blk[..4].copy_from_slice(&[d[0], d[1], dmin[0], dmin[1]]);
                    }
                }
                if let Some(p) = crate::quant::PackedWeights::pack(dt, &bytes, n, k) {
                    let buf = std::sync::Arc::new(super::super::CpuBuffer { data: CpuData::Packed(p) });
                    packed.push((format!("{dt} packed, k {k}"), Tensor::from_buffer(buf, dt, vec![n, k])));
                }
                if dt != DType::Q6K {
                    weights.push((format!("{dt}, k {k}"), stored(dt, bytes, n, k)));
                }
            }
            check_rows_alone(&weights, n, k, true);
            check_rows_alone(&packed, n, k, false);
            check_rows_alone(&packed, n, k, true);
        }
    }

    /// F32, F16 and BF16 weights with the batch-invariant option (where the CPU has AVX-512,
    /// which the option requires): the same, with rows that are whole SIMD vectors and rows
    /// that end in a partial one.
    #[test]
    fn float_rows_are_the_same_in_any_batch() {
        if !super::super::simd::avx512() {
            eprintln!("skipping: the batch-invariant float kernel needs AVX-512");
            return;
        }
        for (n, k) in [(100, 96), (70, 72)] {
            let wv = test_weights(n, k);
            let f32_bytes: Vec<u8> = wv.iter().flat_map(|v| v.to_le_bytes()).collect();
            let f16: Vec<u8> = wv.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
            let bf16: Vec<u8> = wv.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect();
            let weights = vec![
                (format!("F32 stored, k {k}"), stored(DType::F32, f32_bytes, n, k)),
                (format!("F32 converted, k {k}"), new_f32(wv.clone(), vec![n, k])),
                (format!("F16, k {k}"), stored(DType::F16, f16, n, k)),
                (format!("BF16, k {k}"), stored(DType::BF16, bf16, n, k)),
            ];
            check_rows_alone(&weights, n, k, true);
        }
    }
}
