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

use super::matmul::OutCols;
use crate::DType;

/// Weight rows per panel (two registers of 16 `f32`).
#[cfg(target_arch = "x86_64")]
const ROWS: usize = 32;
/// Activation rows per micro-tile (at most).
#[cfg(target_arch = "x86_64")]
const A: usize = 8;

/// Column `j` of `out`, row `i` = weight row `j` of `w` (rows of `k` values of `dt`) dotted
/// with row `i` of `x` (`m` rows of `k`): `out` is the range of columns of the `[m, n]` product
/// that these weight rows give. `scratch` is reused between calls. Returns `false`, leaving
/// `out` alone, where the CPU lacks AVX-512.
pub(super) fn product(
    x: &[f32],
    w: &[u8],
    dt: DType,
    m: usize,
    k: usize,
    out: &mut OutCols<'_>,
    scratch: &mut Vec<f32>,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if super::simd::avx512() {
        // SAFETY: the CPU has AVX-512F/BW/VL, AVX2 and FMA (checked at run time).
        unsafe { product_avx512(x, w, dt, m, k, out, scratch) };
        return true;
    }
    let _ = (x, w, dt, m, k, out, scratch);
    false
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn product_avx512(x: &[f32], w: &[u8], dt: DType, m: usize, k: usize, out: &mut OutCols<'_>, scratch: &mut Vec<f32>) {
    let rb = dt.row_bytes(k).unwrap_or(0);
    assert!(
        rb > 0 && w.len().is_multiple_of(rb) && x.len() == m * k,
        "cpu::panel: {} weight bytes in rows of {rb} ({dt}, {k} values) against {} activations of {m} rows",
        w.len(),
        x.len()
    );
    let n = w.len() / rb;
    assert!(out.width() == n, "cpu::panel: {} output columns for {n} weight rows", out.width());
    if n == 0 || m == 0 {
        return;
    }
    if k == 0 {
        let zeros = vec![0f32; n];
        for i in 0..m {
            out.write(i, 0, &zeros);
        }
        return;
    }
    scratch.resize(2 * ROWS * k, 0.0);
    let (rowwise, laid) = scratch.split_at_mut(ROWS * k);
    // F16, BF16 and F32 are converted and transposed 16 by 16 in registers; any other format
    // (and the last values of a row that is not whole groups of 16) is de-quantised row by row
    // and transposed one value at a time.
    let direct = matches!(dt, DType::F16 | DType::BF16 | DType::F32);
    let k16 = if direct { k / 16 * 16 } else { 0 };
    for j0 in (0..n).step_by(ROWS) {
        let nr = (n - j0).min(ROWS);
        // Missing rows of the last panel repeat its last row; their results are dropped.
        let rows: [&[u8]; ROWS] = std::array::from_fn(|r| {
            let src = j0 + r.min(nr - 1);
            &w[src * rb..(src + 1) * rb]
        });
        for half in 0..2 {
            for c0 in (0..k16).step_by(16) {
                transpose16(dt, &rows[16 * half..16 * half + 16], c0, &mut laid[c0 * ROWS + 16 * half..]);
            }
        }
        if k16 < k {
            for (r, dst) in rowwise.chunks_exact_mut(k).enumerate() {
                crate::quant::dequantize_row(dt, rows[r], dst);
            }
            for (c, col) in laid.chunks_exact_mut(ROWS).enumerate().skip(k16) {
                for (r, v) in col.iter_mut().enumerate() {
                    *v = rowwise[r * k + c];
                }
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
            for (i, r) in res.iter().enumerate().take(na) {
                out.write(i0 + i, j0, &r[..nr]);
            }
        }
    }
}

/// Values `c0..c0 + 16` of the 16 rows `rows` (F16, BF16 or F32) as `f32`, transposed into
/// `laid[c · 32 + r]` for `c` in `0..16` (relative to `c0`): one register per row, then a
/// 16 × 16 transpose in registers.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma")]
fn transpose16(dt: DType, rows: &[&[u8]], c0: usize, laid: &mut [f32]) {
    assert!(rows.len() == 16 && laid.len() > 15 * ROWS + 15, "cpu::panel::transpose16: sizes");
    let mut v = [_mm512_setzero_ps(); 16];
    for (r, row) in rows.iter().enumerate() {
        v[r] = match dt {
            DType::F16 => {
                let b = &row[2 * c0..2 * c0 + 32];
                // SAFETY: `b` is 32 readable bytes; no alignment needed.
                _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(b.as_ptr().cast()) })
            }
            DType::BF16 => {
                let b = &row[2 * c0..2 * c0 + 32];
                // SAFETY: as above. A bf16 is the high half of an f32.
                let h = unsafe { _mm256_loadu_si256(b.as_ptr().cast()) };
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            }
            _ => {
                let b = &row[4 * c0..4 * c0 + 64];
                // SAFETY: `b` is 64 readable bytes; no alignment needed.
                unsafe { _mm512_loadu_ps(b.as_ptr().cast()) }
            }
        };
    }
    // Stage 1: pairs of rows interleaved by element; stage 2: by pairs of elements; stages 3
    // and 4: by 128-bit lanes. Afterwards register `c` holds value `c` of every row.
    let mut t = [_mm512_setzero_ps(); 16];
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    for i in 0..4 {
        for j in 0..2 {
            let (a, b) = (t[4 * i + j], t[4 * i + j + 2]);
            v[4 * i + 2 * j] = _mm512_shuffle_ps::<0x44>(a, b);
            v[4 * i + 2 * j + 1] = _mm512_shuffle_ps::<0xEE>(a, b);
        }
    }
    for i in 0..2 {
        for j in 0..4 {
            let (a, b) = (v[8 * i + j], v[8 * i + j + 4]);
            t[8 * i + j] = _mm512_shuffle_f32x4::<0x88>(a, b);
            t[8 * i + j + 4] = _mm512_shuffle_f32x4::<0xDD>(a, b);
        }
    }
    for j in 0..8 {
        let (a, b) = (t[j], t[j + 8]);
        v[j] = _mm512_shuffle_f32x4::<0x88>(a, b);
        v[j + 8] = _mm512_shuffle_f32x4::<0xDD>(a, b);
    }
    for (c, x) in v.iter().enumerate() {
        let dst = &mut laid[c * ROWS..c * ROWS + 16];
        // SAFETY: `dst` is 16 writable `f32`; no alignment needed.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), *x) };
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
    let lp = laid.as_ptr();
    // One pointer per activation row, so that each value is one indexed load (no address
    // arithmetic per row and value in the loop).
    let mut xr = [xs.as_ptr(); N];
    for (i, p) in xr.iter_mut().enumerate() {
        *p = p.wrapping_add(i * k);
    }
    for c in 0..k {
        // SAFETY: c < k, so the 32 values at `c · 32` lie in `laid` (at least 32·k values) and
        // value `c` of each of the N rows (`xr[i] + c`, `i · k + c < N · k`) in `xs`: checked
        // above.
        unsafe {
            let w0 = _mm512_loadu_ps(lp.add(c * ROWS));
            let w1 = _mm512_loadu_ps(lp.add(c * ROWS + 16));
            for i in 0..N {
                let xv = _mm512_set1_ps(*xr[i].add(c));
                acc[i][0] = _mm512_fmadd_ps(w0, xv, acc[i][0]);
                acc[i][1] = _mm512_fmadd_ps(w1, xv, acc[i][1]);
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
