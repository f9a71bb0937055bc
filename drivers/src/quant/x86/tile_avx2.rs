//! Tiles of weight rows by activation rows for Q8_0 with AVX2 alone: the matmul kernel for Q8_0
//! on x86-64 CPUs without AVX-512 VNNI, such as AMD's Zen 1 and 2 and the Hygon C86 processors
//! derived from them (where the weights are not packed, see `quant::packed`).
//!
//! The row kernel (`int8::avx2`) takes one weight row against one activation row per call: in a
//! prefill each weight block is loaded and made absolute once per activation row, each
//! activation block is loaded once per weight row, and every pair pays a call, the size checks
//! and a horizontal sum. Here a tile of four weight rows by up to two activation rows shares that
//! work. Each pair of blocks still costs the sign trick (`vpsignb` puts the weight's sign on the
//! activation, `vpmaddubsw` multiplies those bytes with the weight's absolute values and
//! `vpmaddwd` adds the pairs into eight `i32` lanes: exact, as no pair of products exceeds
//! `i16`), a conversion to `f32`, the product of the two blocks' scales and a fused multiply-add
//! into the pair's own accumulator.
//!
//! A pair's result depends only on its weight row and its activation row: each pair has its own
//! accumulator, fed the same operations in the same order whatever else shares the tile (missing
//! rows of the last tile repeat its last row, and their results are dropped), so a row's result
//! is the same, bitwise, in any batch. It is also bitwise the result of the row kernel
//! (`int8::avx2`), which sums a row's blocks into one accumulator in the same order and which
//! `quant::matmul_q8` takes for a single activation row: a decode step streams its weights from
//! memory, and there the row kernel, which prefetches the row after next, was faster (6.6-6.7
//! tokens/s of a Qwen2.5-1.5B Q8_0 decode on a 2-core AMD EPYC (Zen 1) VM, against 4.8-5.7 with
//! tiles of four weight rows by one activation row). Both agree with the reference
//! (`int8::dot_ref`) within float rounding, not bitwise: it sums the blocks in another order.

use std::arch::x86_64::*;

use super::int8::load_x;
use super::{hsum, load_u8x32, scales8};
use crate::DType;
use crate::quant::int8::ActRow;

/// Weight rows per tile.
const R: usize = 4;
/// Activation rows per tile (at most).
const A: usize = 2;
/// Activation rows worked on against one pass over the weight rows: their 8-bit values stay in
/// L2 (64 rows of 8,960 values are 573 KB with their scales; of 1,536 values, 98 KB).
const ACT_GROUP: usize = 64;
/// Bytes of a Q8_0 block: an `f16` scale and 32 signed bytes.
const BLOCK: usize = 34;

/// `out[j · m + i] =` weight row `j` of `w` (rows of `rb` bytes of `dtype`) dotted with
/// activation row `i` of `acts` (`m` rows): the transposed `[n, m]` product. Returns `false`,
/// leaving `out` alone, for any format but Q8_0.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C. Sizes are checked here (a mismatch panics), so they
/// are not a safety condition.
pub(in crate::quant) unsafe fn rows(dtype: DType, w: &[u8], rb: usize, acts: &[ActRow<'_>], out: &mut [f32]) -> bool {
    if dtype != DType::Q8_0 {
        return false;
    }
    // SAFETY: the caller guarantees the features that this function enables.
    unsafe { rows_q8_0(w, rb, acts, out) };
    true
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rows_q8_0(w: &[u8], rb: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    let (n, m, nb) = super::tile::sizes("tile_avx2", DType::Q8_0, w, rb, acts, out);
    if n == 0 || m == 0 {
        return;
    }
    // The scale of each block of the tile's weight rows, converted once per tile and group
    // (eight at a time, with F16C).
    let mut dw = vec![0f32; R * nb];
    for g0 in (0..m).step_by(ACT_GROUP) {
        let group = &acts[g0..(g0 + ACT_GROUP).min(m)];
        for j0 in (0..n).step_by(R) {
            let nr = (n - j0).min(R);
            let rows: [&[[u8; BLOCK]]; R] = std::array::from_fn(|j| {
                let r = j0 + j.min(nr - 1);
                w[r * rb..(r + 1) * rb].as_chunks::<BLOCK>().0
            });
            for (row, d) in rows.iter().zip(dw.chunks_exact_mut(nb)) {
                for (blocks, s) in row.chunks(8).zip(d.chunks_mut(8)) {
                    s.copy_from_slice(&scales8(blocks, 0)[..s.len()]);
                }
            }
            for (q, pair) in group.chunks(A).enumerate() {
                let i0 = g0 + q * A;
                let mut res = [[0f32; A]; R];
                match pair {
                    [a] => tile::<1>(rows, [*a], &dw, nb, &mut res),
                    [a, b] => tile::<2>(rows, [*a, *b], &dw, nb, &mut res),
                    _ => {}
                }
                for (j, r) in res.iter().enumerate().take(nr) {
                    out[(j0 + j) * m + i0..][..pair.len()].copy_from_slice(&r[..pair.len()]);
                }
            }
        }
    }
}

/// One tile: `res[r][a]` = weight row `r` (`nb` blocks, scales `dw[r · nb..]`) dotted with
/// activation row `a`, for the first `N` activation rows.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const N: usize>(
    rows: [&[[u8; BLOCK]]; R],
    acts: [ActRow<'_>; N],
    dw: &[f32],
    nb: usize,
    res: &mut [[f32; A]; R],
) {
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); N]; R];
    for b in 0..nb {
        let wv: [__m256i; R] = std::array::from_fn(|r| load_u8x32(&rows[r][b][2..]));
        let wa: [__m256i; R] = std::array::from_fn(|r| _mm256_sign_epi8(wv[r], wv[r]));
        let dr: [__m256; R] = std::array::from_fn(|r| _mm256_set1_ps(dw[r * nb + b]));
        for (a, act) in acts.iter().enumerate() {
            let x = load_x(&act.qs[b]);
            let dx = _mm256_set1_ps(act.d[b]);
            for r in 0..R {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wa[r], _mm256_sign_epi8(x, wv[r])), ones);
                acc[r][a] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dr[r], dx), acc[r][a]);
            }
        }
    }
    for (out, acc) in res.iter_mut().zip(&acc) {
        for (o, &v) in out.iter_mut().zip(acc) {
            *o = hsum(v);
        }
    }
}
