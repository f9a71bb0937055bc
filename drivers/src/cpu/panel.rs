//! The many-row product for weights without an 8-bit-activation kernel (F16, BF16, F32 and the
//! rest), with AVX-512: panels of 32 weight rows de-quantised to `f32` and laid out as
//! `[value][row]`, against the activations as they are.
//!
//! For one value index the 32 weights of a panel are two registers; each activation row's value
//! is broadcast from memory and multiplied into two accumulators of 16 rows. Eight activation
//! rows at a time keep 16 accumulators busy (two FMA ports with four cycles of latency need at
//! least eight). Unlike a general GEMM nothing is packed on the activation side: they are read
//! in place, once per panel, so the cost beyond the multiply-adds is the de-quantisation and
//! re-layout of each weight row once per call.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use crate::DType;

/// Weight rows per panel (two registers of 16 `f32`).
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 32;
/// Activation rows per micro-tile (at most).
#[cfg(target_arch = "x86_64")]
const A: usize = 8;

/// `t[j · m + i] =` weight row `j` of `w` (rows of `k` values of `dt`) dotted
/// with row `i` of `x` (`m` rows of `k`): the transposed `[rows, m]` product. `scratch` is
/// reused between calls. Returns `false`, leaving `t` alone, where the CPU lacks AVX-512.
pub(super) fn product(
    x: &[f32],
    w: &[u8],
    dt: DType,
    m: usize,
    k: usize,
    t: &mut [f32],
    scratch: &mut Vec<f32>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512() {
        // SAFETY: the CPU has AVX-512F/BW/VL, AVX2 and FMA (checked at run time).
        unsafe { product_avx512(x, w, dt, m, k, t, scratch) };
        return true;
    }
    let _ = (x, w, dt, m, k, t, scratch);
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn product_avx512(x: &[f32], w: &[u8], dt: DType, m: usize, k: usize, t: &mut [f32], scratch: &mut Vec<f32>) {
    let rb = dt.row_bytes(k).unwrap_or(0);
    assert!(
        rb > 0 && w.len().is_multiple_of(rb) && x.len() == m * k,
        "cpu::panel: {} weight bytes in rows of {rb} ({dt}, {k} values) against {} activations of {m} rows",
        w.len(),
        x.len()
    );
    let n = w.len() / rb;
    assert!(t.len() == n * m, "cpu::panel: {} outputs for {n} by {m}", t.len());
    if n == 0 || m == 0 || k == 0 {
        t.fill(0.0);
        return;
    }
    scratch.resize(2 * ROWS * k, 0.0);
    let (rowwise, laid) = scratch.split_at_mut(ROWS * k);
    for j0 in (0..n).step_by(ROWS) {
        let nr = (n - j0).min(ROWS);
        // Missing rows of the last panel repeat its last row; their results are dropped.
        for (r, dst) in rowwise.chunks_exact_mut(k).enumerate() {
            let src = j0 + r.min(nr - 1);
            crate::quant::dequantize_row(dt, &w[src * rb..(src + 1) * rb], dst);
        }
        for (c, col) in laid.chunks_exact_mut(ROWS).enumerate() {
            for (r, v) in col.iter_mut().enumerate() {
                *v = rowwise[r * k + c];
            }
        }
        for i0 in (0..m).step_by(A) {
            let na = (m - i0).min(A);
            let xs = &x[i0 * k..(i0 + na) * k];
            let mut res = [[0f32; ROWS]; A];
            match na {
                1 => micro::<1>(laid, xs, k, &mut res),
                2 => micro::<2>(laid, xs, k, &mut res),
                3 => micro::<3>(laid, xs, k, &mut res),
                4 => micro::<4>(laid, xs, k, &mut res),
                5 => micro::<5>(laid, xs, k, &mut res),
                6 => micro::<6>(laid, xs, k, &mut res),
                7 => micro::<7>(laid, xs, k, &mut res),
                _ => micro::<8>(laid, xs, k, &mut res),
            }
            for j in 0..nr {
                let o = &mut t[(j0 + j) * m + i0..(j0 + j) * m + i0 + na];
                for (i, v) in o.iter_mut().enumerate() {
                    *v = res[i][j];
                }
            }
        }
    }
}

/// The panel `laid` (`[value][row]`, `k` values of 32 rows) against the `N` activation rows
/// `xs` (`k` values each), into `res[i][row]`.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn micro<const N: usize>(laid: &[f32], xs: &[f32], k: usize, res: &mut [[f32; ROWS]; A]) {
    assert!(laid.len() >= ROWS * k && xs.len() >= N * k, "cpu::panel::micro: sizes");
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    let (lp, xp) = (laid.as_ptr(), xs.as_ptr());
    for c in 0..k {
        // SAFETY: c < k, so the 32 values at `c · 32` lie in `laid` (at least 32·k values) and
        // value `c` of each of the N rows (`i · k + c < N · k`) in `xs`: checked above.
        unsafe {
            let w0 = _mm512_loadu_ps(lp.add(c * ROWS));
            let w1 = _mm512_loadu_ps(lp.add(c * ROWS + 16));
            for (i, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_ps(*xp.add(i * k + c));
                a[0] = _mm512_fmadd_ps(w0, xv, a[0]);
                a[1] = _mm512_fmadd_ps(w1, xv, a[1]);
            }
        }
    }
    for (r, a) in res.iter_mut().zip(&acc) {
        for h in 0..2 {
            let dst = &mut r[16 * h..16 * h + 16];
            // SAFETY: `dst` is 16 writable `f32`; no alignment needed.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), a[h]) };
        }
    }
}
