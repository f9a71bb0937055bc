//! Tiles of weight rows by activation rows with 8-bit activations and AVX-512 VNNI: the matmul
//! kernel for every format of `quant::int8`.
//!
//! The per-row kernels of `x86::int8` decode a weight block once per activation row. Here a
//! tile of four weight rows by up to four activation rows shares the work: each pair of 32-value
//! blocks of a weight row is decoded once into one 512-bit register of unsigned bytes and then
//! multiplied (`vpdpbusd`, 64 products into 16 `i32` lanes) with the same two blocks of every
//! activation row of the tile. Per weight-by-activation pair and pair of blocks that is four
//! instructions: the integer dot product, its conversion to `f32`, the product of the two scale
//! vectors and the fused multiply-add into that pair's accumulator.
//!
//! The integer sums are exact, as in the reference (`int8::dot_ref`). Scales are applied per
//! lane: the simple formats read their block scale inline, the K formats from a per-row table
//! of half-block scales (16 values, what Q6_K needs) made once per tile. Constant offsets (`-8`,
//! `-16`, `-32`, and `+128` for Q8_0, whose signed bytes are shifted to unsigned) are taken off
//! the integer sums as `Σ c·x`, which depends only on the activations and so is formed once per
//! activation row; the Q4_1/Q5_1 minimums and the K mins are added once per block through the
//! activation block sums `s = d · Σ q` (a per-row table made once per tile). Taking the constant
//! offsets the same way instead was measured slower here: the per-pair reductions it adds cost
//! more than the integer subtraction it saves.
//!
//! A row's result depends only on that row and its activations, never on how many rows share
//! its tile, so a batch of decode rows gives each row's result bitwise. (Passes of many rows
//! go through `panel` instead.)

use std::arch::x86_64::*;

use crate::DType;
use crate::quant::int8::{ActRow, QK};
use crate::quant::kquants::scale_min_k4;

/// Weight rows per tile.
const R: usize = 4;
/// Activation rows per tile (at most).
const A: usize = 4;
/// Activation rows worked on against one pass over a chunk of weight rows; sized so that their
/// 8-bit values stay in L2 (64 rows of 4,864 values are 311 KB).
const ACT_GROUP: usize = 64;

pub(super) const Q8_0: u8 = 0;
pub(super) const Q4_0: u8 = 1;
pub(super) const Q4_1: u8 = 2;
pub(super) const Q5_0: u8 = 3;
pub(super) const Q5_1: u8 = 4;
pub(super) const Q4K: u8 = 5;
pub(super) const Q5K: u8 = 6;
pub(super) const Q6K: u8 = 7;

/// The format code of `dtype` for [`rows`], or `None` where there is no tile kernel.
pub(super) fn code(dtype: DType) -> Option<u8> {
    Some(match dtype {
        DType::Q8_0 => Q8_0,
        DType::Q4_0 => Q4_0,
        DType::Q4_1 => Q4_1,
        DType::Q5_0 => Q5_0,
        DType::Q5_1 => Q5_1,
        DType::Q4K => Q4K,
        DType::Q5K => Q5K,
        DType::Q6K => Q6K,
        _ => return None,
    })
}

/// `out[j · m + i] =` weight row `j` of `w` (rows of `rb` bytes of `dtype`) dotted with
/// activation row `i` of `acts` (`m` rows): the transposed `[n, m]` product. Returns `false`,
/// leaving `out` alone, for a format without a tile kernel.
///
/// # Safety
///
/// The CPU must support AVX-512F/BW/VL/DQ/VNNI, AVX2, FMA and F16C. Sizes are checked here
/// (a mismatch panics), so they are not a safety condition.
pub(in crate::quant) unsafe fn rows(dtype: DType, w: &[u8], rb: usize, acts: &[ActRow<'_>], out: &mut [f32]) -> bool {
    let Some(f) = code(dtype) else { return false };
    // SAFETY: the caller guarantees the features these functions enable.
    unsafe { by_format!(f, rows_f(dtype, w, rb, acts, out)) };
    true
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn rows_f<const F: u8>(dtype: DType, w: &[u8], rb: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    let (n, m, nb) = sizes("tile", dtype, w, rb, acts, out);
    if n == 0 || m == 0 {
        return;
    }
    // Per weight row of the tile: the scale of each half block (plus 4 zeros read by the last
    // pair of an odd block count) and the offset coefficient of each block.
    let hs = 2 * nb + 4;
    let mut dwh = vec![0f32; R * hs];
    let mut coef = vec![0f32; R * nb];
    for g0 in (0..m).step_by(ACT_GROUP) {
        let group = &acts[g0..(g0 + ACT_GROUP).min(m)];
        for j0 in (0..n).step_by(R) {
            let nr = (n - j0).min(R);
            // Missing rows of the last tile repeat its last row; their results are dropped.
            let rows: [&[u8]; R] = std::array::from_fn(|j| {
                let r = j0 + j.min(nr - 1);
                &w[r * rb..(r + 1) * rb]
            });
            for (j, row) in rows.iter().enumerate().filter(|_| matches!(F, Q4_1 | Q5_1 | Q4K | Q5K | Q6K)) {
                prepare::<F>(row, &mut dwh[j * hs..(j + 1) * hs], &mut coef[j * nb..(j + 1) * nb]);
            }
            for (q, quad) in group.chunks(A).enumerate() {
                let i0 = g0 + q * A;
                let mut res = [[0f32; A]; R];
                match quad {
                    [a] => tile::<F, 1>(rows, rb, nb, q == 0, [*a], &dwh, hs, &coef, &mut res),
                    [a, b] => tile::<F, 2>(rows, rb, nb, q == 0, [*a, *b], &dwh, hs, &coef, &mut res),
                    [a, b, c] => tile::<F, 3>(rows, rb, nb, q == 0, [*a, *b, *c], &dwh, hs, &coef, &mut res),
                    [a, b, c, d] => tile::<F, 4>(rows, rb, nb, q == 0, [*a, *b, *c, *d], &dwh, hs, &coef, &mut res),
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

/// Checks the sizes of a `rows` call (`kernel` names it in the panic): `w` whole rows of `rb`
/// bytes of `dtype`, each as many values as every activation row, and `out` one value per
/// pair. Returns the weight rows, activation rows and blocks per row.
pub(super) fn sizes(
    kernel: &str,
    dtype: DType,
    w: &[u8],
    rb: usize,
    acts: &[ActRow<'_>],
    out: &[f32],
) -> (usize, usize, usize) {
    let m = acts.len();
    let nb = acts.first().map_or(0, |a| a.qs.len());
    assert!(
        dtype.row_bytes(nb * QK) == Some(rb)
            && rb > 0
            && w.len().is_multiple_of(rb)
            && out.len() == w.len() / rb * m
            && acts.iter().all(|a| a.qs.len() == nb && a.d.len() == nb && a.s.len() == nb),
        "quant::{kernel}: {} weight bytes in rows of {rb} ({dtype}) against {m} activation rows of {} values, {} outputs",
        w.len(),
        nb * QK,
        out.len()
    );
    (w.len() / rb, m, nb)
}

/// The `f16` at `b[off..off + 2]` as `f32`, with F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
pub(super) fn h(b: &[u8], off: usize) -> f32 {
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(u16::from_le_bytes([b[off], b[off + 1]])))))
}

/// Fills the half-block scales `dwh` (`2 · nb` used) and the per-block offset coefficients
/// `coef` (`nb`) of one K-format weight row: block `b` contributes `Σ_lanes dwh · (u · q) +
/// coef[b] · s[b]` where `u` are the unsigned values [`pair`] gives and `s` the activation block
/// sums. (The simple formats read their one or two scales per block inline.)
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
pub(super) fn prepare<const F: u8>(row: &[u8], dwh: &mut [f32], coef: &mut [f32]) {
    if matches!(F, Q4_1 | Q5_1) {
        // Only the minimums: the scales are read inline.
        let bb = if F == Q4_1 { 20 } else { 24 };
        let nb = row.len() / bb;
        assert!(coef.len() >= nb, "quant::tile::prepare: table too short");
        for b0 in (0..nb).step_by(16) {
            let cnt = (nb - b0).min(16);
            let mut bits = [0u16; 16];
            for (l, blk) in row[b0 * bb..].chunks_exact(bb).take(cnt).enumerate() {
                bits[l] = u16::from_le_bytes([blk[2], blk[3]]);
            }
            // SAFETY: `bits` is 16 readable `u16`.
            let v = _mm512_cvtph_ps(unsafe { _mm256_loadu_si256(bits.as_ptr().cast()) });
            let mut f = [0f32; 16];
            // SAFETY: `f` is 16 writable `f32`.
            unsafe { _mm512_storeu_ps(f.as_mut_ptr(), v) };
            coef[b0..b0 + cnt].copy_from_slice(&f[..cnt]);
        }
        return;
    }
    if F == Q6K {
        for (sb, blk) in row.chunks_exact(210).enumerate() {
            let d = h(blk, 208);
            for (i, &sc) in blk[192..208].iter().enumerate() {
                dwh[16 * sb + i] = d * f32::from(sc as i8);
            }
            coef[8 * sb..8 * sb + 8].fill(0.0);
        }
        return;
    }
    let bb = if F == Q5K { 176 } else { 144 };
    for (sb, blk) in row.chunks_exact(bb).enumerate() {
        let (d, dmin) = (h(blk, 0), h(blk, 2));
        for j in 0..8 {
            let (sc, mn) = scale_min_k4(j, &blk[4..16]);
            let b = 8 * sb + j;
            dwh[2 * b] = d * f32::from(sc);
            dwh[2 * b + 1] = d * f32::from(sc);
            coef[b] = -dmin * f32::from(mn);
        }
    }
}

/// 32 bytes of `b` from `off`, unaligned.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn ld32(b: &[u8], off: usize) -> __m256i {
    let s = &b[off..off + 32];
    // SAFETY: `s` is 32 readable bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

/// 16 bytes of `b` from `off`, unaligned.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn ld16(b: &[u8], off: usize) -> __m128i {
    let s = &b[off..off + 16];
    // SAFETY: `s` is 16 readable bytes; the load has no alignment requirement.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// The little-endian `u32` at `b[off..off + 4]`.
#[inline]
fn le32(b: &[u8], off: usize) -> u64 {
    u64::from(u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]]))
}

/// Two 256-bit halves as one 512-bit register (`lo` in the low half).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn join(lo: __m256i, hi: __m256i) -> __m512i {
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// Blocks `b` and `b + 1` (when `two`; else zeros in the high half) of a weight row as 64
/// unsigned bytes in value order.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
pub(super) fn pair<const F: u8>(row: &[u8], b: usize, two: bool) -> __m512i {
    let low4 = _mm512_set1_epi8(15);
    // The 16 nibble bytes of two simple blocks as [lows b, highs b, lows b+1, highs b+1].
    let nibbles = |bb: usize, qs: usize| {
        let q0 = ld16(row, b * bb + qs);
        let q1 = if two { ld16(row, (b + 1) * bb + qs) } else { _mm_setzero_si128() };
        let q = _mm256_set_m128i(q1, q0);
        let z = join(q, _mm256_srli_epi16::<4>(q));
        _mm512_and_si512(_mm512_shuffle_i64x2::<0xD8>(z, z), low4)
    };
    let fifth = |bb: usize, qh: usize| {
        let bits = le32(row, b * bb + qh) | if two { le32(row, (b + 1) * bb + qh) << 32 } else { 0 };
        _mm512_maskz_mov_epi8(bits, _mm512_set1_epi8(16))
    };
    match F {
        Q8_0 => {
            let lo = ld32(row, b * 34 + 2);
            let hi = if two { ld32(row, (b + 1) * 34 + 2) } else { _mm256_set1_epi8(-128) };
            _mm512_xor_si512(join(lo, hi), _mm512_set1_epi8(-128))
        }
        Q4_0 => nibbles(18, 2),
        Q4_1 => nibbles(20, 4),
        Q5_0 => _mm512_or_si512(nibbles(22, 6), fifth(22, 2)),
        Q5_1 => _mm512_or_si512(nibbles(24, 8), fifth(24, 4)),
        Q4K | Q5K => {
            // Blocks 2c and 2c+1 of a super-block share 32 bytes: low nibbles, then high ones.
            let (sb, c) = (b / 8, (b % 8) / 2);
            let bb = if F == Q5K { 176 } else { 144 };
            let base = sb * bb;
            let q = ld32(row, base + if F == Q5K { 48 } else { 16 } + 32 * c);
            let l4 = _mm256_set1_epi8(15);
            let u = join(_mm256_and_si256(q, l4), _mm256_and_si256(_mm256_srli_epi16::<4>(q), l4));
            if F == Q5K {
                let qh = ld32(row, base + 16);
                let lo = _mm256_test_epi8_mask(qh, _mm256_set1_epi8((1u8 << (2 * c)) as i8));
                let hi = _mm256_test_epi8_mask(qh, _mm256_set1_epi8((1u8 << (2 * c + 1)) as i8));
                let bits = u64::from(lo) | (u64::from(hi) << 32);
                _mm512_or_si512(u, _mm512_maskz_mov_epi8(bits, _mm512_set1_epi8(16)))
            } else {
                u
            }
        }
        _ => {
            // Q6_K: sub-blocks 4h + t and 4h + t + 1 (t = 0 or 2) of a super-block.
            let (sb, ai) = (b / 8, b % 8);
            let (hh, t) = (ai / 4, ai % 4);
            let base = sb * 210;
            let l = join(ld32(row, base + 64 * hh), ld32(row, base + 64 * hh + 32));
            let nib = if t == 0 { l } else { _mm512_srli_epi16::<4>(l) };
            let qh = ld32(row, base + 128 + 32 * hh);
            let z = join(qh, _mm256_srli_epi16::<2>(qh));
            let z = if t == 0 { z } else { _mm512_srli_epi16::<4>(z) };
            let high = _mm512_slli_epi16::<4>(_mm512_and_si512(z, _mm512_set1_epi8(3)));
            _mm512_or_si512(_mm512_and_si512(nib, low4), high)
        }
    }
}

/// The scales of blocks `b` and `b + 1` of `dwh` (per half block) spread over the 16 lanes of
/// a `vpdpbusd` result (4 lanes per half block).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn wscale(dwh: &[f32], b: usize) -> __m512 {
    let s = &dwh[2 * b..2 * b + 4];
    // SAFETY: `s` is 4 readable `f32`; no alignment needed.
    let v = unsafe { _mm_loadu_ps(s.as_ptr()) };
    _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3), _mm512_castps128_ps512(v))
}

/// Activation blocks `b` and `b + 1` (when `two`) of `a`: the bytes and the scale lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn act(a: &ActRow<'_>, b: usize, two: bool) -> (__m512i, __m512) {
    let idx = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    if two {
        let q = &a.qs[b..b + 2];
        let d = &a.d[b..b + 2];
        // SAFETY: `q` is two 32-byte blocks (64 readable bytes) and `d` two readable `f32`.
        unsafe {
            let x = _mm512_loadu_si512(q.as_ptr().cast());
            let dv = _mm_castpd_ps(_mm_load_sd(d.as_ptr().cast()));
            (x, _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(dv)))
        }
    } else {
        let q = &a.qs[b];
        // SAFETY: `q` is 32 readable bytes; no alignment needed.
        let x = unsafe { _mm256_loadu_si256(q.as_ptr().cast()) };
        (_mm512_zextsi256_si512(x), _mm512_permutexvar_ps(idx, _mm512_castps128_ps512(_mm_set_ss(a.d[b]))))
    }
}

/// `Σ_b coef[b] · s[b]`: the offsets and minimums of one weight row against one activation row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn offsets(coef: &[f32], s: &[f32]) -> f32 {
    let mut acc = _mm512_setzero_ps();
    let (cc, ct) = coef.as_chunks::<16>();
    let (sc, st) = s.as_chunks::<16>();
    for (c, x) in cc.iter().zip(sc) {
        // SAFETY: `c` and `x` are 16 readable `f32` each; no alignment needed.
        acc = unsafe { _mm512_fmadd_ps(_mm512_loadu_ps(c.as_ptr()), _mm512_loadu_ps(x.as_ptr()), acc) };
    }
    if !ct.is_empty() {
        let mask: __mmask16 = (1u16 << ct.len()) - 1;
        // SAFETY: the mask selects the `ct.len()` (< 16) readable values of `ct` and of `st`
        // (as long); masked-off lanes are not read.
        acc = unsafe {
            _mm512_fmadd_ps(_mm512_maskz_loadu_ps(mask, ct.as_ptr()), _mm512_maskz_loadu_ps(mask, st.as_ptr()), acc)
        };
    }
    _mm512_reduce_add_ps(acc)
}

/// The `f16` at byte `$off` of blocks `$b` and `$b + 1` (when `$two`, else 0) of a
/// simple-format row with `$bb`-byte blocks, spread over the 16 lanes of a `vpdpbusd` result
/// (8 lanes per block). A macro so that it is inlined into the kernel loop (a closure is not).
macro_rules! scale_pair {
    ($row:expr, $bb:expr, $off:expr, $b:expr, $two:expr) => {{
        let (row, o0): (&[u8], usize) = ($row, $b * $bb + $off);
        let lo = u32::from(u16::from_le_bytes([row[o0], row[o0 + 1]]));
        let hi = if $two { u32::from(u16::from_le_bytes([row[o0 + $bb], row[o0 + $bb + 1]])) } else { 0 };
        let v = _mm_cvtph_ps(_mm_cvtsi32_si128((lo | (hi << 16)) as i32));
        _mm512_permutexvar_ps(
            _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
            _mm512_castps128_ps512(v),
        )
    }};
}

/// One tile: weight rows `rows` (`rb` bytes, `nb` blocks; for the K formats their half-block
/// scales `dwh`, `hs` apart, and offset coefficients `coef`, `nb` apart) against the `N`
/// activation rows `acts`, into `res[j][i]`. With `pf`, the rows `R` further on (the next tile)
/// are prefetched as these are read, a line or so per pair of blocks.
#[inline]
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn tile<const F: u8, const N: usize>(
    rows: [&[u8]; R],
    rb: usize,
    nb: usize,
    pf: bool,
    acts: [ActRow<'_>; N],
    dwh: &[f32],
    hs: usize,
    coef: &[f32],
    res: &mut [[f32; A]; R],
) {
    let zero = _mm512_setzero_si512();
    // The simple formats read their scales inline; the K formats from `dwh`.
    let simple = matches!(F, Q8_0 | Q4_0 | Q4_1 | Q5_0 | Q5_1);
    // The constant added to every stored value: `Σ (u - c)·x = Σ u·x - Σ c·x`.
    let shift = match F {
        Q8_0 => Some(_mm512_set1_epi8(-128)),
        Q4_0 => Some(_mm512_set1_epi8(8)),
        Q5_0 => Some(_mm512_set1_epi8(16)),
        Q6K => Some(_mm512_set1_epi8(32)),
        _ => None,
    };
    let bb = match F {
        Q8_0 => 34,
        Q4_0 => 18,
        Q4_1 => 20,
        Q5_0 => 22,
        _ => 24,
    };
    let mut acc = [[_mm512_setzero_ps(); N]; R];
    // Bytes per block, rounded down (Q6_K's 210 bytes hold 8 blocks): where to prefetch, by a
    // running sum rather than a division per step.
    let step = 2 * (rb / nb.max(1));
    let mut ahead_off = R * rb;
    let mut b = 0;
    while b < nb {
        let two = b + 1 < nb;
        if pf {
            for row in rows {
                let ahead = row.as_ptr().wrapping_add(ahead_off);
                // A prefetch is only a hint: it never faults, so an address past the weights
                // (from the last tile) is harmless.
                _mm_prefetch::<_MM_HINT_T0>(ahead.cast());
            }
        }
        // Plain loops: `array::from_fn` closures are not inlined into this target-feature
        // function.
        let mut u = [zero; R];
        let mut dw = [_mm512_setzero_ps(); R];
        for j in 0..R {
            u[j] = pair::<F>(rows[j], b, two);
            dw[j] = if simple { scale_pair!(rows[j], bb, 0, b, two) } else { wscale(&dwh[j * hs..(j + 1) * hs], b) };
        }
        for (i, a) in acts.iter().enumerate() {
            let (x, dx) = act(a, b, two);
            let xc = shift.map_or(zero, |c| _mm512_dpbusd_epi32(zero, c, x));
            for j in 0..R {
                let mut p = _mm512_dpbusd_epi32(zero, u[j], x);
                if shift.is_some() {
                    p = _mm512_sub_epi32(p, xc);
                }
                acc[j][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_mul_ps(dw[j], dx), acc[j][i]);
            }
        }
        b += 2;
        ahead_off += step;
    }
    for j in 0..R {
        for (i, a) in acts.iter().enumerate() {
            let off =
                if !matches!(F, Q4_1 | Q5_1 | Q4K | Q5K) { 0.0 } else { offsets(&coef[j * nb..(j + 1) * nb], a.s) };
            res[j][i] = _mm512_reduce_add_ps(acc[j][i]) + off;
        }
    }
}

/// Quantises `xs` to 8 bits in blocks of 32 (`qs`, scales `d`, sums `s`), bitwise as
/// `Q8Acts::quantize_ref`: the same `f32` operations, with round-half-away-from-zero done as
/// truncation plus a step where the (exact) remainder is at least one half.
///
/// # Safety
///
/// The CPU must support the features of this module. `xs` must hold 32 values per block of
/// `qs`, `d` and `s` (checked: a mismatch panics).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
pub(in crate::quant) fn quantize(xs: &[f32], qs: &mut [[i8; QK]], d: &mut [f32], s: &mut [f32]) {
    assert!(xs.len() == qs.len() * QK && d.len() == qs.len() && s.len() == qs.len(), "quant::tile::quantize: sizes");
    let half = _mm512_set1_ps(0.5);
    let one = _mm512_set1_ps(1.0);
    let lim = _mm512_set1_ps(127.0);
    for (((x, q), d), s) in xs.as_chunks::<QK>().0.iter().zip(qs.iter_mut()).zip(d.iter_mut()).zip(s.iter_mut()) {
        // SAFETY: `x` is 32 readable `f32`; no alignment needed.
        let v = unsafe { [_mm512_loadu_ps(x.as_ptr()), _mm512_loadu_ps(x.as_ptr().add(16))] };
        let amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v[0]), _mm512_abs_ps(v[1])));
        let scale = amax / 127.0;
        let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
        let mut sum = _mm512_setzero_si512();
        for (h, v) in v.into_iter().enumerate() {
            let y = _mm512_mul_ps(v, _mm512_set1_ps(inv));
            let t = _mm512_roundscale_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(y);
            let frac = _mm512_abs_ps(_mm512_sub_ps(y, t));
            let step = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(frac, half);
            // ±1 with the sign of y where the remainder is at least one half.
            let sign = _mm512_or_ps(_mm512_and_ps(y, _mm512_set1_ps(-0.0)), one);
            let r = _mm512_mask_add_ps(t, step, t, sign);
            let r = _mm512_min_ps(_mm512_max_ps(r, _mm512_sub_ps(_mm512_setzero_ps(), lim)), lim);
            let qi = _mm512_cvtps_epi32(r);
            sum = _mm512_add_epi32(sum, qi);
            let b = _mm512_cvtepi32_epi8(qi);
            let dst = &mut q[16 * h..16 * h + 16];
            // SAFETY: `dst` is 16 writable bytes; no alignment needed.
            unsafe { _mm_storeu_si128(dst.as_mut_ptr().cast(), b) };
        }
        *d = scale;
        *s = scale * _mm512_reduce_add_epi32(sum) as f32;
    }
}
