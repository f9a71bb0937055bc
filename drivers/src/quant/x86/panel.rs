//! Panels of 32 weight rows, re-laid out once per call, against many activation rows: the
//! prefill matmul for the formats of `quant::int8` with AVX-512 VNNI.
//!
//! The tile kernel (`tile`) keeps the weights as stored: one `vpdpbusd` multiplies 64 values of
//! one weight row with 64 of one activation row, so every product still needs its own
//! conversion, scaling and horizontal sum. With many activation rows the weights can be laid
//! out for the instruction instead. Each panel of 32 weight rows is decoded once into unsigned
//! bytes in the order `[block][4-value step][row]`: one 64-byte register then holds 4 values of
//! 16 rows, and `vpdpbusd` against 4 values of one activation row broadcast to every lane adds
//! 64 products into 16 per-row sums. A block of 32 values is 8 such steps per row half; only
//! then are the per-row sums converted and scaled, once per block for 16 rows at a time: about
//! 12 instructions per 512 products, against some 50 in the tile kernel.
//!
//! Every format is brought to one form per block: `Σ_lanes d · (u · x) + c · s`, with `u` the
//! unsigned values `tile::pair` gives, `d` the block's (or sub-block's) scale and `c` a
//! per-block coefficient of the activation block sum `s = dₓ · Σ q`: the minimum of Q4_1/Q5_1,
//! the negated K-format min, or `-k · d` for a format whose values are stored with a constant
//! offset `k` (Q8_0's bytes shifted to unsigned, Q4_0, Q5_0). Q6_K, whose scales cover 16
//! values, stays with the tile kernel.
//!
//! The integer sums are exact; the float sums run in another order than the tile kernel's, so
//! a row's result here may differ from it in the last bits. The caller uses this kernel only
//! for passes of many rows (prefill), never for the decode passes whose rows must equal each
//! row alone.

use std::arch::x86_64::*;

use super::tile::{self, Q4_0, Q4_1, Q4K, Q5_0, Q5_1, Q5K, Q6K, Q8_0};
use crate::DType;
use crate::quant::int8::{ActRow, QK};

/// Weight rows per panel: two registers of 16 lanes.
pub(in crate::quant) const ROWS: usize = crate::quant::PANEL_ROWS;
/// Activation rows per micro-tile (at most).
const A: usize = 4;
/// Bytes of one block of a panel: 8 steps of 4 values, each 32 rows by 4 bytes.
const BLOCK_BYTES: usize = 8 * ROWS * 4;

/// `out[j · m + i] =` weight row `j` of `w` (rows of `rb` bytes of `dtype`) dotted with
/// activation row `i` of `acts` (`m` rows): the transposed `[n, m]` product, as `tile::rows`
/// gives it. Returns `false`, leaving `out` alone, for a format this kernel does not take.
///
/// # Safety
///
/// The CPU must support AVX-512F/BW/VL/DQ/VNNI, AVX2, FMA and F16C. Sizes are checked here
/// (a mismatch panics), so they are not a safety condition.
pub(in crate::quant) unsafe fn rows(dtype: DType, w: &[u8], rb: usize, acts: &[ActRow<'_>], out: &mut [f32]) -> bool {
    let Some(f) = tile::code(dtype).filter(|&f| f != Q6K) else { return false };
    // SAFETY: the caller guarantees the features these functions enable.
    unsafe { by_format!(f, rows_f(dtype, w, rb, acts, out)) };
    true
}

/// A panel: the re-laid-out values (`BLOCK_BYTES` per block) and, per block, 32 scales and 32
/// coefficients of the activation block sum.
struct Panel {
    u: Vec<u8>,
    d: Vec<f32>,
    c: Vec<f32>,
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn rows_f<const F: u8>(dtype: DType, w: &[u8], rb: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    let (n, m, nb) = tile::sizes("panel", dtype, w, rb, acts, out);
    if n == 0 || m == 0 {
        return;
    }
    let mut p = Panel { u: vec![0u8; nb * BLOCK_BYTES], d: vec![0f32; nb * ROWS], c: vec![0f32; nb * ROWS] };
    let mut dwh = vec![0f32; 2 * nb + 4];
    let mut coef = vec![0f32; nb];
    for j0 in (0..n).step_by(ROWS) {
        let nr = (n - j0).min(ROWS);
        for j in 0..ROWS {
            // Missing rows of the last panel repeat its last row; their results are dropped.
            let r = j0 + j.min(nr - 1);
            lay_out::<F>(&w[r * rb..(r + 1) * rb], j, nb, &mut p, &mut dwh, &mut coef);
        }
        by_quads!(acts, out, m, j0, nr, |quad, res, _first| micro(&p, nb, quad, &mut res));
    }
}

/// Writes weight row `row` (`nb` blocks) as row `j` of panel `p`: its unsigned values, and per
/// block its scale and sum coefficient. `dwh` and `coef` are scratch for `tile::prepare`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn lay_out<const F: u8>(row: &[u8], j: usize, nb: usize, p: &mut Panel, dwh: &mut [f32], coef: &mut [f32]) {
    if matches!(F, Q4K | Q5K) {
        tile::prepare::<F>(row, dwh, coef);
    }
    let mut b = 0;
    while b < nb {
        let two = b + 1 < nb;
        let mut tmp = [0u8; 64];
        // SAFETY: `tmp` is 64 writable bytes; no alignment needed.
        unsafe { _mm512_storeu_si512(tmp.as_mut_ptr().cast(), tile::pair::<F>(row, b, two)) };
        for (h, half) in tmp.chunks_exact(QK).enumerate().take(if two { 2 } else { 1 }) {
            let blk = &mut p.u[(b + h) * BLOCK_BYTES..(b + h + 1) * BLOCK_BYTES];
            for (t, v) in half.chunks_exact(4).enumerate() {
                let dst = t * ROWS * 4 + j * 4;
                blk[dst..dst + 4].copy_from_slice(v);
            }
        }
        b += 2;
    }
    for b in 0..nb {
        let (d, c) = match F {
            Q8_0 => {
                let d = tile::h(row, 34 * b);
                (d, -128.0 * d)
            }
            Q4_0 => {
                let d = tile::h(row, 18 * b);
                (d, -8.0 * d)
            }
            Q5_0 => {
                let d = tile::h(row, 22 * b);
                (d, -16.0 * d)
            }
            Q4_1 => (tile::h(row, 20 * b), tile::h(row, 20 * b + 2)),
            Q5_1 => (tile::h(row, 24 * b), tile::h(row, 24 * b + 2)),
            _ => (dwh[2 * b], coef[b]),
        };
        p.d[b * ROWS + j] = d;
        p.c[b * ROWS + j] = c;
    }
}

/// The 32 rows of panel `p` against the `N` activation rows `acts`, into `res[i][j]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn micro<const N: usize>(p: &Panel, nb: usize, acts: [ActRow<'_>; N], res: &mut [[f32; ROWS]; A]) {
    assert!(
        p.u.len() >= nb * BLOCK_BYTES
            && p.d.len() >= nb * ROWS
            && p.c.len() >= nb * ROWS
            && acts.iter().all(|a| a.qs.len() >= nb && a.d.len() >= nb && a.s.len() >= nb),
        "quant::panel::micro: sizes"
    );
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    let (up, dp, cp) = (p.u.as_ptr(), p.d.as_ptr(), p.c.as_ptr());
    for b in 0..nb {
        let mut s = [[zero; 2]; N];
        // SAFETY: `b < nb` and the assertion above: the block's `BLOCK_BYTES` bytes of `p.u`
        // and its 32 scales and coefficients are in bounds; each activation row has block `b`.
        unsafe {
            let blk = up.add(b * BLOCK_BYTES);
            for t in 0..8 {
                let w0 = _mm512_loadu_si512(blk.add(t * ROWS * 4).cast());
                let w1 = _mm512_loadu_si512(blk.add(t * ROWS * 4 + 64).cast());
                for i in 0..N {
                    let x = _mm512_set1_epi32(acts[i].qs.as_ptr().add(b).cast::<i32>().add(t).read_unaligned());
                    s[i][0] = _mm512_dpbusd_epi32(s[i][0], w0, x);
                    s[i][1] = _mm512_dpbusd_epi32(s[i][1], w1, x);
                }
            }
            let d = [_mm512_loadu_ps(dp.add(b * ROWS)), _mm512_loadu_ps(dp.add(b * ROWS + 16))];
            let c = [_mm512_loadu_ps(cp.add(b * ROWS)), _mm512_loadu_ps(cp.add(b * ROWS + 16))];
            for i in 0..N {
                let dx = _mm512_set1_ps(*acts[i].d.as_ptr().add(b));
                let sx = _mm512_set1_ps(*acts[i].s.as_ptr().add(b));
                for h in 0..2 {
                    let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s[i][h]), _mm512_mul_ps(d[h], dx), acc[i][h]);
                    acc[i][h] = _mm512_fmadd_ps(c[h], sx, v);
                }
            }
        }
    }
    for i in 0..N {
        for h in 0..2 {
            let dst = &mut res[i][16 * h..16 * h + 16];
            // SAFETY: `dst` is 16 writable `f32`; no alignment needed.
            unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), acc[i][h]) };
        }
    }
}
