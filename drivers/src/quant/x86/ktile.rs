//! The tile kernel for Q4_K and Q5_K weights (AVX-512 VNNI), summing each result in exactly the
//! order of the panel kernel (`panel`), so that a row's result is bitwise the same whether its
//! pass has few rows (decode: tiles) or many (prefill: panels).
//!
//! The panel kernel forms, per weight row, activation row and block `b` of 32 values, the exact
//! integer sum `I_b` of the 32 products, and then `acc = fma(c_b, s_b, fma(f32(I_b), d_b · dx_b,
//! acc))` block after block (`d_b` the block's weight scale, `dx_b` the activation block's,
//! `c_b` the negated K-format min and `s_b` the activation block sum). The tiles here keep that
//! order: a tile of 4 weight rows by up to 4 activation rows holds its 16 results in the 16
//! lanes of one register (lane `4j + i`; lane `j` for one activation row). Each pair of blocks
//! is multiplied as in `tile` (`vpdpbusd` of 64 weight bytes with 64 activation bytes, 16
//! partial sums of 4 products), the 16 partial sums of every pair are then added up in integers
//! (exact, so in any order) by a tree of unpacks and 128-bit shuffles into one register per
//! block, and the scaling runs once per block for all 16 pairs. The integer tree costs about
//! what the per-pair conversions and multiplies it replaces did.

use std::arch::x86_64::*;

use super::tile::{Q4K, Q5K, pair, prepare, sizes};
use crate::DType;
use crate::quant::int8::ActRow;

/// Weight rows per tile.
const R: usize = 4;
/// Activation rows per tile (at most).
const A: usize = 4;
/// Activation rows worked on against one pass over a chunk of weight rows (as in `tile`).
const ACT_GROUP: usize = 64;

/// `out[j · m + i] =` weight row `j` of `w` (Q4_K or Q5_K rows of `rb` bytes) dotted with
/// activation row `i` of `acts`, as `panel::rows` computes it. Returns `false`, leaving `out`
/// alone, for any other format.
///
/// # Safety
///
/// The CPU must support AVX-512F/BW/VL/DQ/VNNI, AVX2, FMA and F16C. Sizes are checked (a
/// mismatch panics), so they are not a safety condition.
pub(in crate::quant) unsafe fn rows(dtype: DType, w: &[u8], rb: usize, acts: &[ActRow<'_>], out: &mut [f32]) -> bool {
    // SAFETY: the caller guarantees the features these functions enable.
    unsafe {
        match dtype {
            DType::Q4K => rows_f::<Q4K>(dtype, w, rb, acts, out),
            DType::Q5K => rows_f::<Q5K>(dtype, w, rb, acts, out),
            _ => return false,
        }
    }
    true
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn rows_f<const F: u8>(dtype: DType, w: &[u8], rb: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    let (n, m, nb) = sizes("ktile", dtype, w, rb, acts, out);
    if n == 0 || m == 0 {
        return;
    }
    let hs = 2 * nb + 4;
    let mut dwh = vec![0f32; hs];
    let mut coef = vec![0f32; nb];
    // Per block: the 4 weight rows' scales, then their min coefficients.
    let mut wt = vec![0f32; 8 * nb];
    // Per quad of activation rows and block: their 4 scales, then their 4 block sums.
    let mut at = vec![0f32; ACT_GROUP.div_ceil(A) * 8 * nb];
    for g0 in (0..m).step_by(ACT_GROUP) {
        let group = &acts[g0..(g0 + ACT_GROUP).min(m)];
        for (q, quad) in group.chunks(A).enumerate() {
            let t = &mut at[q * 8 * nb..(q + 1) * 8 * nb];
            t.fill(0.0);
            for (i, a) in quad.iter().enumerate() {
                for b in 0..nb {
                    t[8 * b + i] = a.d[b];
                    t[8 * b + 4 + i] = a.s[b];
                }
            }
        }
        for j0 in (0..n).step_by(R) {
            let nr = (n - j0).min(R);
            // Missing rows of the last tile repeat its last row; their results are dropped.
            let rows: [&[u8]; R] = std::array::from_fn(|j| {
                let r = j0 + j.min(nr - 1);
                &w[r * rb..(r + 1) * rb]
            });
            for (j, row) in rows.iter().enumerate() {
                prepare::<F>(row, &mut dwh, &mut coef);
                for b in 0..nb {
                    wt[8 * b + j] = dwh[2 * b];
                    wt[8 * b + 4 + j] = coef[b];
                }
            }
            for (q, quad) in group.chunks(A).enumerate() {
                let i0 = g0 + q * A;
                let t = &at[q * 8 * nb..(q + 1) * 8 * nb];
                let mut res = [[0f32; A]; R];
                match quad {
                    [a] => tile::<F, 1>(rows, rb, nb, q == 0, [*a], &wt, t, &mut res),
                    [a, b] => tile::<F, 2>(rows, rb, nb, q == 0, [*a, *b], &wt, t, &mut res),
                    [a, b, c] => tile::<F, 3>(rows, rb, nb, q == 0, [*a, *b, *c], &wt, t, &mut res),
                    [a, b, c, d] => tile::<F, 4>(rows, rb, nb, q == 0, [*a, *b, *c, *d], &wt, t, &mut res),
                    _ => {}
                }
                for (j, r) in res.iter().enumerate().take(nr) {
                    let o = &mut out[(j0 + j) * m + i0..(j0 + j) * m + i0 + quad.len()];
                    o.copy_from_slice(&r[..quad.len()]);
                }
            }
        }
    }
}

/// Activation blocks `b` and `b + 1` (when `two`; else zeros in the high half) of `a`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn act_bytes(a: &ActRow<'_>, b: usize, two: bool) -> __m512i {
    if two {
        let q = &a.qs[b..b + 2];
        // SAFETY: `q` is two 32-byte blocks (64 readable bytes); no alignment needed.
        unsafe { _mm512_loadu_si512(q.as_ptr().cast()) }
    } else {
        let q = &a.qs[b];
        // SAFETY: `q` is 32 readable bytes; no alignment needed.
        _mm512_zextsi256_si512(unsafe { _mm256_loadu_si256(q.as_ptr().cast()) })
    }
}

/// Adds the four 128-bit lanes' partial sums of `p[0..4]` so that 128-bit lane `L` holds, in
/// its 4 lanes, the sums of lanes `4L..4L + 4` of `p[0]`, `p[1]`, `p[2]` and `p[3]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn fold4(p: [__m512i; 4]) -> __m512i {
    let a = _mm512_add_epi32(_mm512_unpacklo_epi32(p[0], p[1]), _mm512_unpackhi_epi32(p[0], p[1]));
    let b = _mm512_add_epi32(_mm512_unpacklo_epi32(p[2], p[3]), _mm512_unpackhi_epi32(p[2], p[3]));
    _mm512_add_epi32(_mm512_unpacklo_epi64(a, b), _mm512_unpackhi_epi64(a, b))
}

/// For a register `r` from [`fold4`] of two (`r`) and another two (`s`) 128-bit lane layouts:
/// `[r block b, r block b + 1, s block b, s block b + 1]` (block `b` is lanes 0 and 1 of the
/// `vpdpbusd` results, block `b + 1` lanes 2 and 3).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn halves(r: __m512i, s: __m512i) -> __m512i {
    _mm512_add_epi32(_mm512_shuffle_i32x4::<0x88>(r, s), _mm512_shuffle_i32x4::<0xDD>(r, s))
}

/// One tile: weight rows `rows` (`rb` bytes, `nb` blocks; their scales and min coefficients in
/// `wt`) against the `N` activation rows `acts` (their scales and block sums in `at`), into
/// `res[j][i]`. With `pf`, the rows `R` further on (the next tile) are prefetched.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn tile<const F: u8, const N: usize>(
    rows: [&[u8]; R],
    rb: usize,
    nb: usize,
    pf: bool,
    acts: [ActRow<'_>; N],
    wt: &[f32],
    at: &[f32],
    res: &mut [[f32; A]; R],
) {
    assert!(wt.len() >= 8 * nb && at.len() >= 8 * nb, "quant::ktile::tile: tables");
    let zero = _mm512_setzero_si512();
    // Which table entry each result lane takes: weight row j and activation row i of lane
    // 4j + i (lane j with one activation row).
    let (jx, ix) = if N == 1 {
        (_mm512_setr_epi32(0, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0), _mm512_setzero_si512())
    } else {
        (
            _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3),
            _mm512_setr_epi32(0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3),
        )
    };
    let four = _mm512_set1_epi32(4);
    let (jc, is) = (_mm512_add_epi32(jx, four), _mm512_add_epi32(ix, four));
    let mut acc = _mm512_setzero_ps();
    let step = 2 * (rb / nb.max(1));
    let mut ahead_off = R * rb;
    let mut b = 0;
    while b < nb {
        let two = b + 1 < nb;
        if pf {
            for row in rows {
                // A prefetch is only a hint: it never faults, so an address past the weights
                // (from the last tile) is harmless.
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(ahead_off).cast());
            }
        }
        let mut u = [zero; R];
        for j in 0..R {
            u[j] = pair::<F>(rows[j], b, two);
        }
        // `p[i][j]`: 16 partial sums of 4 products, blocks b (lanes 0..8) and b + 1 (8..16).
        let mut p = [[zero; R]; A];
        for i in 0..N {
            let x = act_bytes(&acts[i], b, two);
            for j in 0..R {
                p[i][j] = _mm512_dpbusd_epi32(zero, u[j], x);
            }
        }
        let (lo, hi) = if N == 1 {
            // Lanes 0..4: weight rows 0..4 for block b; lanes 4..8: for block b + 1.
            let f = fold4(p[0]);
            let t = halves(f, f);
            (t, _mm512_shuffle_i32x4::<0x55>(t, t))
        } else {
            // Per weight row j, the 4 activation rows: fold4 over i, for each j.
            let f: [__m512i; R] = [
                fold4([p[0][0], p[1][0], p[2][0], p[3][0]]),
                fold4([p[0][1], p[1][1], p[2][1], p[3][1]]),
                fold4([p[0][2], p[1][2], p[2][2], p[3][2]]),
                fold4([p[0][3], p[1][3], p[2][3], p[3][3]]),
            ];
            let (s01, s23) = (halves(f[0], f[1]), halves(f[2], f[3]));
            (_mm512_shuffle_i32x4::<0x88>(s01, s23), _mm512_shuffle_i32x4::<0xDD>(s01, s23))
        };
        acc = scale(acc, lo, &wt[8 * b..8 * b + 8], &at[8 * b..8 * b + 8], [jx, ix, jc, is]);
        if two {
            acc = scale(acc, hi, &wt[8 * b + 8..8 * b + 16], &at[8 * b + 8..8 * b + 16], [jx, ix, jc, is]);
        }
        b += 2;
        ahead_off += step;
    }
    let mut lanes = [0f32; 16];
    // SAFETY: `lanes` is 16 writable `f32`; no alignment needed.
    unsafe { _mm512_storeu_ps(lanes.as_mut_ptr(), acc) };
    for (j, r) in res.iter_mut().enumerate() {
        for (i, v) in r.iter_mut().enumerate().take(N) {
            *v = if N == 1 { lanes[j] } else { lanes[4 * j + i] };
        }
    }
}

/// The scaling of one block in every lane: `acc = fma(c, s, fma(f32(I), d · dx, acc))`, with
/// `I` the block's integer sums `sums`, `d` and `c` from `w8` (4 scales, 4 min coefficients) at
/// lane indices `idx[0]` and `idx[2]`, `dx` and `s` from `a8` at `idx[1]` and `idx[3]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn scale(acc: __m512, sums: __m512i, w8: &[f32], a8: &[f32], idx: [__m512i; 4]) -> __m512 {
    let (w8, a8) = (&w8[..8], &a8[..8]);
    // SAFETY: `w8` and `a8` are 8 readable `f32` each; no alignment needed.
    let (wv, av) = unsafe { (_mm256_loadu_ps(w8.as_ptr()), _mm256_loadu_ps(a8.as_ptr())) };
    // The indices are below 8: only the defined low halves are read.
    let (wv, av) = (_mm512_castps256_ps512(wv), _mm512_castps256_ps512(av));
    let d = _mm512_mul_ps(_mm512_permutexvar_ps(idx[0], wv), _mm512_permutexvar_ps(idx[1], av));
    let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), d, acc);
    _mm512_fmadd_ps(_mm512_permutexvar_ps(idx[2], wv), _mm512_permutexvar_ps(idx[3], av), v)
}
