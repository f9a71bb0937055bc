//! The kernel for K-format weights (Q4_K, Q5_K, Q6_K) packed by `quant::packed` (layout in
//! `quant::packed_k`), with AVX-512 VNNI.
//!
//! As for the simple formats (`packed`), per panel of 32 weight rows and block of 32 values an
//! activation row costs 16 `vpdpbusd` into 16 per-row integer sums per register; the block's
//! scales come from the record's 6-bit (Q4_K, Q5_K) or `i8` (Q6_K) sub-block scales, decoded
//! for 16 rows at a time once per block and panel pass, whatever the number of activation rows.
//!
//! - Q4_K, Q5_K: `acc = fma(-dmin · m, s, fma(f32(I), (d · sc) · dₓ, acc))` per block, with `I`
//!   the exact integer sum of the unsigned values times the activation bytes and `s = dₓ · Σ q`
//!   the activation block sum: the order and roundings of the panel kernel (`panel`) and its
//!   tiles (`ktile`), so a row's result is bitwise theirs.
//! - Q6_K: a value is `u - 32` for the unsigned 6 bits `u`; each half of 16 values has its own scale, so its
//!   integer sum `Σ u · q - 32 · Σ q` (exact) goes through `acc = fma(f32(I), (d · sc) · dₓ,
//!   acc)`, the first half and then the second. The half sums `Σ q` of every activation block
//!   are formed once per call.
//!
//! The operations on one activation row are the same whatever other rows share the call, so a
//! row's result does not depend on the batch: decode and prefill give each row the same bits.

use std::arch::x86_64::*;

use super::tile::{Q4K, Q5K, Q6K};
use crate::DType;
use crate::quant::int8::ActRow;
use crate::quant::packed_k::{KLayout, klayout};

/// Weight rows per panel.
const ROWS: usize = crate::quant::packed::PACK_ROWS;
/// Activation rows per micro-tile (at most).
const A: usize = 4;
/// Blocks of 32 values per super-block.
const BLOCKS: usize = 8;

/// The record layout of the K format with tile code `f`.
const fn record(f: u8) -> KLayout {
    let dtype = match f {
        Q4K => DType::Q4K,
        Q5K => DType::Q5K,
        _ => DType::Q6K,
    };
    match klayout(dtype) {
        Some(l) => l,
        None => panic!("quant::packed_k: every K format code has a layout"),
    }
}

/// An activation row with, per block, the sums of its two halves of 16 bytes (Q6_K only;
/// empty otherwise).
#[derive(Clone, Copy)]
struct KAct<'a> {
    a: ActRow<'a>,
    halves: &'a [[i32; 2]],
}

/// `out[i · n + j] =` row `j` (of the first `n` rows) of the packed K panels `w` (`nb` blocks
/// of 32 values per row) dotted with activation row `i` of `acts` (`m` rows).
///
/// # Safety
///
/// The CPU must support AVX-512F/BW/VL/DQ/VNNI, AVX2, FMA and F16C. Sizes are checked here
/// (a mismatch panics), so they are not a safety condition.
pub(super) unsafe fn rows(dtype: DType, w: &[u8], nb: usize, n: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    // SAFETY: the caller guarantees the features these functions enable.
    unsafe {
        match dtype {
            DType::Q4K => rows_f::<Q4K>(w, nb, n, acts, out),
            DType::Q5K => rows_f::<Q5K>(w, nb, n, acts, out),
            DType::Q6K => rows_f::<Q6K>(w, nb, n, acts, out),
            _ => panic!("quant::packed_k: {dtype} is not a K format"),
        }
    }
}

#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn rows_f<const F: u8>(w: &[u8], nb: usize, n: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
    let m = acts.len();
    let pb = nb / BLOCKS * record(F).size;
    assert!(
        pb > 0
            && nb.is_multiple_of(BLOCKS)
            && w.len().is_multiple_of(pb)
            && n <= w.len() / pb * ROWS
            && out.len() == n * m
            && acts.iter().all(|a| a.qs.len() == nb && a.d.len() == nb && a.s.len() == nb),
        "quant::packed_k: {} bytes of panels of {nb} blocks for {n} rows against {m} activation rows, {} outputs",
        w.len(),
        out.len()
    );
    let halves: Vec<Vec<[i32; 2]>> = if F == Q6K {
        let sum = |q: &[i8]| q.iter().map(|&v| i32::from(v)).sum::<i32>();
        acts.iter().map(|a| a.qs.iter().map(|q| [sum(&q[..16]), sum(&q[16..])]).collect()).collect()
    } else {
        vec![Vec::new(); m]
    };
    let kacts: Vec<KAct<'_>> = acts.iter().zip(&halves).map(|(&a, h)| KAct { a, halves: h }).collect();
    for (p, panel) in w.chunks_exact(pb).enumerate() {
        let j0 = p * ROWS;
        if j0 >= n {
            break;
        }
        let nr = (n - j0).min(ROWS);
        by_quads!(rows: kacts, out, n, j0, nr, |quad, res, first| micro::<F, _>(panel, nb, quad, &mut res, first));
    }
}

/// The 64 values of step `t` of block `vals` (its `blk` bytes in a record): rows 0..16 and
/// rows 16..32, as unsigned bytes (Q4_K's rows 16..32 as 16 times their values).
///
/// # Safety
/// `vals` must point to a whole block of a record of format `F`, and `t < 8`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
unsafe fn step<const F: u8>(vals: *const u8, t: usize) -> (__m512i, __m512i) {
    // SAFETY: by the contract every offset below is inside the block (`quant::packed_k`).
    unsafe {
        let low4 = _mm512_set1_epi8(15);
        let p = _mm512_loadu_si512(vals.add(t * 64).cast());
        let w0 = _mm512_and_si512(p, low4);
        if F == Q4K {
            // Rows 16..32 as 16 times their values, the high nibbles where they are: one
            // operation fewer per step; the block's sum is divided by 16 exactly (`micro`).
            return (w0, _mm512_andnot_si512(low4, p));
        }
        let w1 = _mm512_and_si512(_mm512_srli_epi16::<4>(p), low4);
        if F == Q5K {
            let hb = vals.add(512 + t * 16);
            let k0 = hb.cast::<u64>().read_unaligned();
            let k1 = hb.add(8).cast::<u64>().read_unaligned();
            let sixteen = _mm512_set1_epi8(16);
            return (_mm512_mask_add_epi8(w0, k0, w0, sixteen), _mm512_mask_add_epi8(w1, k1, w1, sixteen));
        }
        if F == Q6K {
            // Bits 2·(t % 4).. of each byte are the top two bits of this step's value: moved
            // to bits 4–5 (16-bit shifts: what crosses into the next byte is masked off) and
            // or-ed in (`0xF8`: a | (b & c)).
            let top = vals.add(512 + t / 4 * 128);
            let (h0, h1) = (_mm512_loadu_si512(top.cast()), _mm512_loadu_si512(top.add(64).cast()));
            let at = |h: __m512i| match t % 4 {
                0 => _mm512_slli_epi16::<4>(h),
                1 => _mm512_slli_epi16::<2>(h),
                2 => h,
                _ => _mm512_srli_epi16::<2>(h),
            };
            let bits = _mm512_set1_epi8(0x30);
            return (
                _mm512_ternarylogic_epi32::<0xF8>(w0, at(h0), bits),
                _mm512_ternarylogic_epi32::<0xF8>(w1, at(h1), bits),
            );
        }
        (w0, w1)
    }
}

/// The 6-bit scales and minimums of a Q4_K/Q5_K record's 8 blocks as bytes, from its scale
/// bytes at `sc` (`quant::packed_k`): `sc` of rows 0..16, `sc` of rows 16..32, `m` of rows
/// 0..16 and `m` of rows 16..32, 16 bytes per block in each: four blocks per 64-byte operation,
/// once per record (decode; prefill uses [`scales_q45_block`], which widens each block's bytes
/// to 32-bit lanes).
///
/// # Safety
/// `sc` must point to the 384 scale bytes of a record.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
unsafe fn six_bit(sc: *const u8) -> [[u8; 128]; 4] {
    let mut out = [[0u8; 128]; 4];
    let (low4, top) = (_mm512_set1_epi8(15), _mm512_set1_epi8(0x30));
    // `(low & 15) | (high & 0x30)`: the 16-bit shifts move bits between bytes only where the
    // masks drop them.
    let six = |low: __m512i, high: __m512i| _mm512_or_si512(_mm512_and_si512(low, low4), _mm512_and_si512(high, top));
    for g in 0..2 {
        // SAFETY: by the contract the three 128-byte runs are inside the record, and `out`'s
        // rows have 128 bytes.
        unsafe {
            let lo = _mm512_loadu_si512(sc.add(64 * g).cast());
            let mlo = _mm512_loadu_si512(sc.add(128 + 64 * g).cast());
            let hi = _mm512_loadu_si512(sc.add(256 + 64 * g).cast());
            let v = [
                six(lo, _mm512_slli_epi16::<4>(hi)),
                six(_mm512_srli_epi16::<4>(lo), _mm512_slli_epi16::<2>(hi)),
                six(mlo, hi),
                six(_mm512_srli_epi16::<4>(mlo), _mm512_srli_epi16::<2>(hi)),
            ];
            for (o, v) in out.iter_mut().zip(v) {
                _mm512_storeu_si512(o.as_mut_ptr().add(64 * g).cast(), v);
            }
        }
    }
    out
}

/// The scales of block `b` (`b < 8`) of a Q4_K/Q5_K record, given its scale bytes from
/// [`six_bit`] and its `d` and `dmin` as `f32`, each for rows 0..16 and 16..32:
/// `[d · sc, dmin · m]`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn scales_q45(six: &[[u8; 128]; 4], b: usize, d: [__m512; 2], dmin: [__m512; 2]) -> [[__m512; 2]; 2] {
    let f = |k: usize| {
        let bytes: &[u8; 16] = six[k][16 * b..16 * b + 16].try_into().unwrap_or(&[0; 16]);
        // SAFETY: `bytes` is 16 readable bytes.
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(bytes.as_ptr().cast()) }))
    };
    [
        [_mm512_mul_ps(d[0], f(0)), _mm512_mul_ps(d[1], f(1))],
        [_mm512_mul_ps(dmin[0], f(2)), _mm512_mul_ps(dmin[1], f(3))],
    ]
}

/// As [`scales_q45`], from the record's scale bytes at `sc` directly: block `b`'s three runs of
/// 16 bytes widened to 32-bit lanes and taken apart there. With three or four activation rows
/// (prefill) this was the faster way (1.5B Q4_K_M pp512 3.5 % ahead of `six_bit`, whose
/// stores the first block's loads then wait for); with one or two (decode) `six_bit` is.
///
/// # Safety
/// `sc` must point to the 384 scale bytes of a record, and `b < 8`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
unsafe fn scales_q45_block(sc: *const u8, b: usize, d: [__m512; 2], dmin: [__m512; 2]) -> [[__m512; 2]; 2] {
    // SAFETY: by the contract the three runs of block `b` are inside the record.
    let bytes = |at: usize| unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(sc.add(at + 16 * b).cast())) };
    let (lo, mlo, hi) = (bytes(0), bytes(128), bytes(256));
    let (f, three) = (_mm512_set1_epi32(15), _mm512_set1_epi32(3));
    let six = |low: __m512i, top: __m512i| {
        _mm512_cvtepi32_ps(_mm512_or_si512(
            _mm512_and_si512(low, f),
            _mm512_slli_epi32::<4>(_mm512_and_si512(top, three)),
        ))
    };
    let sc0 = six(lo, hi);
    let sc1 = six(_mm512_srli_epi32::<4>(lo), _mm512_srli_epi32::<2>(hi));
    let m0 = six(mlo, _mm512_srli_epi32::<4>(hi));
    let m1 = six(_mm512_srli_epi32::<4>(mlo), _mm512_srli_epi32::<6>(hi));
    [[_mm512_mul_ps(d[0], sc0), _mm512_mul_ps(d[1], sc1)], [_mm512_mul_ps(dmin[0], m0), _mm512_mul_ps(dmin[1], m1)]]
}

/// The scales of block `b` of the Q6_K record `rec`, given its `d` as `f32` for rows 0..16 and
/// 16..32: `d · sc` of the block's values 0..16 and then of its values 16..32.
///
/// # Safety
/// `rec` must point to a whole Q6_K record, and `b < 8`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
unsafe fn scales_q6(rec: *const u8, b: usize, d: [__m512; 2]) -> [[__m512; 2]; 2] {
    let at = record(Q6K).sc + 64 * b;
    // SAFETY: by the contract the scale bytes of block `b` are inside the record.
    let s = |o: usize| unsafe { _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(rec.add(at + o).cast()))) };
    // [half of the block][half of the rows]
    [[_mm512_mul_ps(d[0], s(0)), _mm512_mul_ps(d[1], s(16))], [_mm512_mul_ps(d[0], s(32)), _mm512_mul_ps(d[1], s(48))]]
}

/// The 32 rows of `panel` (`nb / 8` records) against the `N` activation rows `acts`, into
/// `res[i][j]`; with `prefetch`, the record ahead is asked for as this one is read.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx512dq,avx2,fma,f16c")]
fn micro<const F: u8, const N: usize>(
    panel: &[u8],
    nb: usize,
    acts: [KAct<'_>; N],
    res: &mut [[f32; ROWS]; A],
    prefetch: bool,
) {
    let KLayout { vals: v0, blk, sc: scoff, d: doff, m: moff, size } = record(F);
    let nsb = nb / BLOCKS;
    assert!(
        panel.len() >= nsb * size
            && acts.iter().all(|k| {
                k.a.qs.len() >= nb && k.a.d.len() >= nb && k.a.s.len() >= nb && (F != Q6K || k.halves.len() >= nb)
            }),
        "quant::packed_k::micro: sizes"
    );
    let zero = _mm512_setzero_si512();
    let mut acc = [[_mm512_setzero_ps(); 2]; N];
    // Two chains of integer sums: the two halves (Q6_K), else even and odd steps when the
    // activation rows are few (as in `packed`).
    let split = F == Q6K || N <= 2;
    let lines = size.div_ceil(64);
    let base = panel.as_ptr();
    for sb in 0..nsb {
        // SAFETY: `sb < nsb` and the assertion above: record `sb` is inside `panel`, and every
        // activation row has blocks `8sb..8sb + 8` (32 bytes, 8 words each), their scales and
        // sums (and half sums for Q6_K).
        unsafe {
            let rec = base.add(sb * size);
            let half = |off: usize| _mm512_cvtph_ps(_mm256_loadu_si256(rec.add(off).cast()));
            let d = [half(doff), half(doff + 32)];
            let dmin = if F == Q6K { d } else { [half(moff), half(moff + 32)] };
            // The 6-bit scales taken apart once per record for decode (see `scales_q45_block`).
            let whole = F != Q6K && N <= 2;
            let six = if whole { six_bit(rec.add(scoff)) } else { [[0; 128]; 4] };
            for b in 0..BLOCKS {
                let ab = BLOCKS * sb + b;
                let vals = rec.add(v0 + b * blk);
                let mut s = [[[zero; 2]; N]; 2];
                // Step `t` into chain `e`.
                let mut go = |t: usize, e: usize| {
                    // The first pass over a panel reads it from memory: the record ahead, a
                    // 64th per step, into the L2 cache. Into L1 (`T0`) each prefetch holds one
                    // of the core's few line-fill buffers until memory answers, and on an Intel
                    // Xeon VM decode stalled on them: 1.5B-shaped Q4_K products streamed 20.6
                    // GB/s with `T0`, 24.3 with no prefetch and 24.6 with `T1` (matvec_stream).
                    // A prefetch never faults, so an address past the panel is harmless.
                    if prefetch {
                        let ahead = rec.wrapping_add(size);
                        let it = 8 * b + t;
                        for l in it * lines / 64..(it + 1) * lines / 64 {
                            _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * l).cast());
                        }
                    }
                    let (w0, w1) = step::<F>(vals, t);
                    for i in 0..N {
                        let x = _mm512_set1_epi32(acts[i].a.qs.as_ptr().add(ab).cast::<i32>().add(t).read_unaligned());
                        s[e][i][0] = _mm512_dpbusd_epi32(s[e][i][0], w0, x);
                        s[e][i][1] = _mm512_dpbusd_epi32(s[e][i][1], w1, x);
                    }
                };
                // The chains are Q6_K's two halves (steps 0..4 and 4..8), else the even and the
                // odd steps when split, else one. Spelled out so that `t` and `e` are constants:
                // a loop over `t` that the compiler kept as a loop put Q6_K's chains (`e = t / 4`)
                // on the stack. Integer sums: the order of the steps does not change them.
                let (ta, tb) = if F == Q6K { ([0, 1, 2, 3], [4, 5, 6, 7]) } else { ([0, 2, 4, 6], [1, 3, 5, 7]) };
                let eb = usize::from(split);
                go(ta[0], 0);
                go(tb[0], eb);
                go(ta[1], 0);
                go(tb[1], eb);
                go(ta[2], 0);
                go(tb[2], eb);
                go(ta[3], 0);
                go(tb[3], eb);
                let [ds0, ds1] = if F == Q6K {
                    scales_q6(rec, b, d)
                } else if whole {
                    scales_q45(&six, b, d, dmin)
                } else {
                    scales_q45_block(rec.add(scoff), b, d, dmin)
                };
                for i in 0..N {
                    let dx = _mm512_set1_ps(*acts[i].a.d.as_ptr().add(ab));
                    if F == Q6K {
                        let hs = *acts[i].halves.as_ptr().add(ab);
                        for (q, ds) in [ds0, ds1].iter().enumerate() {
                            let off = _mm512_set1_epi32(32 * hs[q]);
                            for h in 0..2 {
                                let si = _mm512_sub_epi32(s[q][i][h], off);
                                acc[i][h] =
                                    _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(ds[h], dx), acc[i][h]);
                            }
                        }
                        continue;
                    }
                    let sx = _mm512_set1_ps(*acts[i].a.s.as_ptr().add(ab));
                    for h in 0..2 {
                        let si = if split { _mm512_add_epi32(s[0][i][h], s[1][i][h]) } else { s[0][i][h] };
                        // Q4_K's rows 16..32 were summed as 16 times their values (`step`).
                        let si = if F == Q4K && h == 1 { _mm512_srai_epi32::<4>(si) } else { si };
                        let v = _mm512_fmadd_ps(_mm512_cvtepi32_ps(si), _mm512_mul_ps(ds0[h], dx), acc[i][h]);
                        // `v - (dmin · m) · s` rounded once: the panel kernel's
                        // `fma(-dmin * m, s, v)` (the negation is exact).
                        acc[i][h] = _mm512_fnmadd_ps(ds1[h], sx, v);
                    }
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
