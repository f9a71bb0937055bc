//! AVX-512 kernels for the 4- and 5-bit formats, where AVX2 is compute-bound.
//!
//! The trick: `vpermps` picks one of 16 `f32` by the low four bits of each 32-bit lane (and
//! `vpermt2ps` one of 32 by the low five bits), ignoring the rest. Zero-extending the raw
//! bytes of a block to lanes and permuting a 16-entry table of the block's possible values
//! turns 16 nibbles into 16 weights with two instructions, with no masking and no integer to
//! float conversion. The table is `k · scale - min` for `k` in 0..16 (or 0..32): built with a
//! fused multiply-add for the dot products, with a separate product and difference for
//! de-quantisation, which then matches gguf-py bitwise (each value depends only on `k`).
//!
//! A group of 32 values is two `__m512`; as in the AVX2 kernels, each group's partial dot is
//! formed first and added to the accumulator, identically for every `M`.

use std::arch::x86_64::*;

use super::{G, load_u8x16, scales8};

/// Blocks whose scales are converted together by [`scales8`].
const CHUNK: usize = 8;

/// Values per K super-block.
const QK_K: usize = 256;

/// Loads 16 `f32` from the start of `x`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn load16(x: &[f32]) -> __m512 {
    let x = &x[..16];
    // SAFETY: `x` has 16 readable `f32` (the indexing above panics otherwise); the load has no
    // alignment requirement.
    unsafe { _mm512_loadu_ps(x.as_ptr()) }
}

/// Stores a group of 32 `f32` to `out`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn store_group(out: &mut [f32; G], w: [__m512; 2]) {
    let (a, b) = out.split_at_mut(16);
    // SAFETY: `a` and `b` are 16 writable `f32` each; the stores need no alignment.
    unsafe {
        _mm512_storeu_ps(a.as_mut_ptr(), w[0]);
        _mm512_storeu_ps(b.as_mut_ptr(), w[1]);
    }
}

/// `Σ w·x` over a group, as 16 lanes.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dot_group(w: [__m512; 2], x: &[f32; G]) -> __m512 {
    _mm512_fmadd_ps(w[1], load16(&x[16..]), _mm512_mul_ps(w[0], load16(x)))
}

/// The weights `k` for `k` in 0..16.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn iota() -> __m512 {
    _mm512_setr_ps(0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.)
}

/// The table `k · scale + min` for the dot products (fused).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn table_fused(k: __m512, scale: f32, min: f32) -> __m512 {
    _mm512_fmadd_ps(k, _mm512_set1_ps(scale), _mm512_set1_ps(min))
}

/// The table `k * scale + min` for de-quantisation (two roundings, as gguf-py).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn table_exact(k: __m512, scale: f32, min: f32) -> __m512 {
    _mm512_add_ps(_mm512_mul_ps(k, _mm512_set1_ps(scale)), _mm512_set1_ps(min))
}

/// The 16 bytes at the start of `qs`, one per lane.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn lanes(qs: &[u8]) -> __m512i {
    _mm512_cvtepu8_epi32(load_u8x16(qs))
}

/// Looks up the low nibble of each lane of `v` (the rest of the lane is ignored) in `table`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn low(v: __m512i, table: __m512) -> __m512 {
    _mm512_permutexvar_ps(v, table)
}

/// Looks up the high nibble of each byte lane of `v` in `table`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn high(v: __m512i, table: __m512) -> __m512 {
    _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(v), table)
}

/// Runs `f(block, group index, d, m)` over a row of 32-value blocks, with the `f16` scale at
/// byte 0 and, when `with_min`, the min at byte 2 (else `m` is 0).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn blocks32<const B: usize>(row: &[u8], with_min: bool, mut f: impl FnMut(&[u8; B], usize, f32, f32)) {
    for (ci, chunk) in row.as_chunks::<B>().0.chunks(CHUNK).enumerate() {
        let d = scales8(chunk, 0);
        let m = if with_min { scales8(chunk, 2) } else { [0.0; 8] };
        for (k, b) in chunk.iter().enumerate() {
            f(b, CHUNK * ci + k, d[k], m[k]);
        }
    }
}

/// The fifth bits of 16 values, moved to bit 4 of their lanes: bit `i` of `bits` for lane `i`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn fifth_bits(bits: u32) -> __m512i {
    // Rotating lane i right by i - 4 (mod 32) brings bit i to bit 4.
    let rot = _mm512_setr_epi32(28, 29, 30, 31, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11);
    let moved = _mm512_rorv_epi32(_mm512_set1_epi32(bits as i32), rot);
    _mm512_and_si512(moved, _mm512_set1_epi32(16))
}

/// Replaces bit 4 of each lane of `v` (the high nibble's bit 0, for the low nibble) by `h`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn with_bit4(v: __m512i, h: __m512i) -> __m512i {
    // Bitwise select: bit 4 from `h`, all others from `v` (0xd8 = c ? b : a for a, b, c).
    _mm512_ternarylogic_epi32::<0xd8>(v, h, _mm512_set1_epi32(16))
}

// ---------------------------------------------------------------------------------------------
// Entry points

/// Q4_0: table `k - 8`, the block scale applied to the partial dot.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_q4_0<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    let xg = super::groups(xs);
    let table = _mm512_sub_ps(iota(), _mm512_set1_ps(8.0));
    let mut acc = [_mm512_setzero_ps(); M];
    blocks32::<18>(row, false, |b, gi, d, _| {
        let v = lanes(&b[2..]);
        let q = [low(v, table), high(v, table)];
        let d = _mm512_set1_ps(d);
        for (a, x) in acc.iter_mut().zip(&xg) {
            *a = _mm512_fmadd_ps(d, dot_group(q, &x[gi]), *a);
        }
    });
    acc.map(|a| _mm512_reduce_add_ps(a))
}

/// Q4_0 de-quantisation: table `d * (k - 8)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dequant_q4_0(src: &[u8], dst: &mut [f32]) {
    let out = dst.as_chunks_mut::<G>().0;
    let k8 = _mm512_sub_ps(iota(), _mm512_set1_ps(8.0));
    blocks32::<18>(src, false, |b, gi, d, _| {
        let table = _mm512_mul_ps(k8, _mm512_set1_ps(d));
        let v = lanes(&b[2..]);
        store_group(&mut out[gi], [low(v, table), high(v, table)]);
    });
}

/// Q4_1 and Q5_1 share this: weights straight from the table `k · d + m`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn add_weights<const M: usize>(acc: &mut [__m512; M], w: [__m512; 2], xg: &[&[[f32; G]]; M], gi: usize) {
    for (a, x) in acc.iter_mut().zip(xg) {
        *a = _mm512_add_ps(*a, dot_group(w, &x[gi]));
    }
}

/// Q4_1: table `k · d + m`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_q4_1<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    let xg = super::groups(xs);
    let k = iota();
    let mut acc = [_mm512_setzero_ps(); M];
    blocks32::<20>(row, true, |b, gi, d, m| {
        let table = table_fused(k, d, m);
        let v = lanes(&b[4..]);
        add_weights(&mut acc, [low(v, table), high(v, table)], &xg, gi);
    });
    acc.map(|a| _mm512_reduce_add_ps(a))
}

/// Q4_1 de-quantisation.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dequant_q4_1(src: &[u8], dst: &mut [f32]) {
    let out = dst.as_chunks_mut::<G>().0;
    let k = iota();
    blocks32::<20>(src, true, |b, gi, d, m| {
        let table = table_exact(k, d, m);
        let v = lanes(&b[4..]);
        store_group(&mut out[gi], [low(v, table), high(v, table)]);
    });
}

/// The weights of a Q5 block from its 32-entry table (`lo` for `k` < 16, `hi` above).
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn q5_weights(qh: &[u8], qs: &[u8], lo: __m512, hi: __m512) -> [__m512; 2] {
    let bits = u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let v = lanes(qs);
    let i0 = with_bit4(v, fifth_bits(bits));
    let i1 = _mm512_or_si512(_mm512_srli_epi32::<4>(v), fifth_bits(bits >> 16));
    [_mm512_permutex2var_ps(lo, i0, hi), _mm512_permutex2var_ps(lo, i1, hi)]
}

/// Q5_0: table `k - 16`, the block scale applied to the partial dot.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_q5_0<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    let xg = super::groups(xs);
    let (lo, hi) = (_mm512_sub_ps(iota(), _mm512_set1_ps(16.0)), iota());
    let mut acc = [_mm512_setzero_ps(); M];
    blocks32::<22>(row, false, |b, gi, d, _| {
        let q = q5_weights(&b[2..], &b[6..], lo, hi);
        let d = _mm512_set1_ps(d);
        for (a, x) in acc.iter_mut().zip(&xg) {
            *a = _mm512_fmadd_ps(d, dot_group(q, &x[gi]), *a);
        }
    });
    acc.map(|a| _mm512_reduce_add_ps(a))
}

/// Q5_0 de-quantisation: table `d * (k - 16)`.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dequant_q5_0(src: &[u8], dst: &mut [f32]) {
    let out = dst.as_chunks_mut::<G>().0;
    let (lo, hi) = (_mm512_sub_ps(iota(), _mm512_set1_ps(16.0)), iota());
    blocks32::<22>(src, false, |b, gi, d, _| {
        let d = _mm512_set1_ps(d);
        let w = q5_weights(&b[2..], &b[6..], _mm512_mul_ps(lo, d), _mm512_mul_ps(hi, d));
        store_group(&mut out[gi], w);
    });
}

/// Q5_1: table `k · d + m` for `k` in 0..32.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_q5_1<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    let xg = super::groups(xs);
    let (k, k16) = (iota(), _mm512_add_ps(iota(), _mm512_set1_ps(16.0)));
    let mut acc = [_mm512_setzero_ps(); M];
    blocks32::<24>(row, true, |b, gi, d, m| {
        let w = q5_weights(&b[4..], &b[8..], table_fused(k, d, m), table_fused(k16, d, m));
        add_weights(&mut acc, w, &xg, gi);
    });
    acc.map(|a| _mm512_reduce_add_ps(a))
}

/// Q5_1 de-quantisation.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dequant_q5_1(src: &[u8], dst: &mut [f32]) {
    let out = dst.as_chunks_mut::<G>().0;
    let (k, k16) = (iota(), _mm512_add_ps(iota(), _mm512_set1_ps(16.0)));
    blocks32::<24>(src, true, |b, gi, d, m| {
        let w = q5_weights(&b[4..], &b[8..], table_exact(k, d, m), table_exact(k16, d, m));
        store_group(&mut out[gi], w);
    });
}

/// Runs `f(group index in block, w)` over the eight groups of a Q4_K (`q5 == false`) or Q5_K
/// super-block, with tables built by `table(k, scale, min)`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn k45_groups(b: &[u8], q5: bool, table: impl Fn(__m512, f32, f32) -> __m512, mut f: impl FnMut(usize, [__m512; 2])) {
    let (scales, mins) = super::kquants::k4_scales(b);
    let (k, k16) = (iota(), _mm512_add_ps(iota(), _mm512_set1_ps(16.0)));
    let qs = if q5 { &b[48..176] } else { &b[16..144] };
    // Fifth-bit bytes of values 0..16 and 16..32 of every sub-block, one per lane; sub-block
    // `s` uses bit `s`, moved to bit 4 below.
    let mut qh = if q5 { [lanes(&b[16..]), lanes(&b[32..])] } else { [_mm512_setzero_si512(); 2] };
    qh = qh.map(|h| _mm512_slli_epi32::<4>(h));
    for c in 0..4 {
        let (s0, s1) = (2 * c, 2 * c + 1);
        let v = [lanes(&qs[32 * c..]), lanes(&qs[32 * c + 16..])];
        let mut lo = [_mm512_setzero_ps(); 2];
        let mut hi = [_mm512_setzero_ps(); 2];
        if q5 {
            let (t0, t0h) = (table(k, scales[s0], mins[s0]), table(k16, scales[s0], mins[s0]));
            let (t1, t1h) = (table(k, scales[s1], mins[s1]), table(k16, scales[s1], mins[s1]));
            let m16 = _mm512_set1_epi32(16);
            for i in 0..2 {
                let i0 = with_bit4(v[i], qh[i]);
                let i1 =
                    _mm512_or_si512(_mm512_srli_epi32::<4>(v[i]), _mm512_and_si512(_mm512_srli_epi32::<1>(qh[i]), m16));
                lo[i] = _mm512_permutex2var_ps(t0, i0, t0h);
                hi[i] = _mm512_permutex2var_ps(t1, i1, t1h);
            }
            qh = qh.map(|h| _mm512_srli_epi32::<2>(h));
        } else {
            let (t0, t1) = (table(k, scales[s0], mins[s0]), table(k, scales[s1], mins[s1]));
            for i in 0..2 {
                lo[i] = low(v[i], t0);
                hi[i] = high(v[i], t1);
            }
        }
        f(s0, lo);
        f(s1, hi);
    }
}

/// Dot of a Q4_K (`q5 == false`) or Q5_K row.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dot_k45<const B: usize, const M: usize>(row: &[u8], xs: [&[f32]; M], q5: bool) -> [f32; M] {
    let xg = super::groups(xs);
    let mut acc = [_mm512_setzero_ps(); M];
    for (i, b) in row.as_chunks::<B>().0.iter().enumerate() {
        let table = |k, s, m: f32| table_fused(k, s, -m);
        k45_groups(b, q5, table, |g, w| add_weights(&mut acc, w, &xg, QK_K / G * i + g));
    }
    acc.map(|a| _mm512_reduce_add_ps(a))
}

/// De-quantises a Q4_K (`q5 == false`) or Q5_K row: table `k * scale - min`.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn dequant_k45<const B: usize>(src: &[u8], dst: &mut [f32], q5: bool) {
    for (b, o) in src.as_chunks::<B>().0.iter().zip(dst.as_chunks_mut::<QK_K>().0) {
        let (out, _) = o.as_chunks_mut::<G>();
        let table = |k, s, m| _mm512_sub_ps(_mm512_mul_ps(k, _mm512_set1_ps(s)), _mm512_set1_ps(m));
        k45_groups(b, q5, table, |g, w| store_group(&mut out[g], w));
    }
}

/// Dot kernel for Q4_K rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_q4_k<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    dot_k45::<144, M>(row, xs, false)
}

/// Dot kernel for Q5_K rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dot_q5_k<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    dot_k45::<176, M>(row, xs, true)
}

/// De-quantisation kernel for Q4_K rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dequant_q4_k(src: &[u8], dst: &mut [f32]) {
    dequant_k45::<144>(src, dst, false);
}

/// De-quantisation kernel for Q5_K rows.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn dequant_q5_k(src: &[u8], dst: &mut [f32]) {
    dequant_k45::<176>(src, dst, true);
}
