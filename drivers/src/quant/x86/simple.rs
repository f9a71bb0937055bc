//! AVX2 kernels for the float formats and the 32-value block formats.
//!
//! Each block format has a decoder that turns one block's integers into a group of four
//! `__m256` (`q`, already offset for the symmetric formats). The drivers below then apply the
//! block's `f16` scale `d` (and min `m`): the dot products use `d · Σ q·x` (or the fused
//! weights `q·d + m`), de-quantisation uses `q * d` (`+ m`) without fusing, as gguf-py does.

use std::arch::x86_64::*;

use super::{
    G, add_group, add_group_scaled, groups, hsum, i8x16_to_f32, join, load_u8x8, load_u8x16, load_u8x32, scales8,
    splat, store_group, tail_dot, u8x16_to_f32,
};
use crate::DType;

/// Blocks whose scales are converted together by [`scales8`].
const CHUNK: usize = 8;

// ---------------------------------------------------------------------------------------------
// Drivers

/// Dot of a row of symmetric blocks (`value = d · q`, `d` the `f16` at byte 0).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_scaled<const B: usize, const M: usize>(
    row: &[u8],
    xs: [&[f32]; M],
    q: impl Fn(&[u8; B]) -> [__m256; 4],
) -> [f32; M] {
    let xg = groups(xs);
    let mut acc = [_mm256_setzero_ps(); M];
    for (ci, chunk) in row.as_chunks::<B>().0.chunks(CHUNK).enumerate() {
        let d = scales8(chunk, 0);
        for (k, b) in chunk.iter().enumerate() {
            add_group_scaled(&mut acc, &q(b), splat(&d[k]), &xg, CHUNK * ci + k);
        }
    }
    acc.map(|a| hsum(a))
}

/// Dot of a row of blocks with a min (`value = d · q + m`, `d` and `m` the `f16` at 0 and 2).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_affine<const B: usize, const M: usize>(
    row: &[u8],
    xs: [&[f32]; M],
    q: impl Fn(&[u8; B]) -> [__m256; 4],
) -> [f32; M] {
    let xg = groups(xs);
    let mut acc = [_mm256_setzero_ps(); M];
    for (ci, chunk) in row.as_chunks::<B>().0.chunks(CHUNK).enumerate() {
        let (d, m) = (scales8(chunk, 0), scales8(chunk, 2));
        for (k, b) in chunk.iter().enumerate() {
            let (dv, mv) = (splat(&d[k]), splat(&m[k]));
            let w = q(b).map(|q| _mm256_fmadd_ps(q, dv, mv));
            add_group(&mut acc, &w, &xg, CHUNK * ci + k);
        }
    }
    acc.map(|a| hsum(a))
}

/// De-quantises a row of symmetric blocks: `q * d`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dequant_scaled<const B: usize>(src: &[u8], dst: &mut [f32], q: impl Fn(&[u8; B]) -> [__m256; 4]) {
    let out = dst.as_chunks_mut::<G>().0.chunks_mut(CHUNK);
    for (chunk, oc) in src.as_chunks::<B>().0.chunks(CHUNK).zip(out) {
        let d = scales8(chunk, 0);
        for ((b, o), d) in chunk.iter().zip(oc).zip(&d) {
            let dv = splat(d);
            store_group(o, &q(b).map(|q| _mm256_mul_ps(q, dv)));
        }
    }
}

/// De-quantises a row of blocks with a min: `q * d + m`, rounded twice as gguf-py does.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dequant_affine<const B: usize>(src: &[u8], dst: &mut [f32], q: impl Fn(&[u8; B]) -> [__m256; 4]) {
    let out = dst.as_chunks_mut::<G>().0.chunks_mut(CHUNK);
    for (chunk, oc) in src.as_chunks::<B>().0.chunks(CHUNK).zip(out) {
        let (d, m) = (scales8(chunk, 0), scales8(chunk, 2));
        for (k, (b, o)) in chunk.iter().zip(oc).enumerate() {
            let (dv, mv) = (splat(&d[k]), splat(&m[k]));
            store_group(o, &q(b).map(|q| _mm256_add_ps(_mm256_mul_ps(q, dv), mv)));
        }
    }
}

/// Dot of a float row whose groups of 32 values take `B` bytes; the tail is done in scalar.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_float<const B: usize, const M: usize>(
    dtype: DType,
    row: &[u8],
    xs: [&[f32]; M],
    w: impl Fn(&[u8; B]) -> [__m256; 4],
) -> [f32; M] {
    let xg = groups(xs);
    let mut acc = [_mm256_setzero_ps(); M];
    for (gi, b) in row.as_chunks::<B>().0.iter().enumerate() {
        add_group(&mut acc, &w(b), &xg, gi);
    }
    let mut out = [0f32; M];
    for ((o, a), x) in out.iter_mut().zip(acc).zip(xs) {
        *o = hsum(a) + tail_dot(dtype, row, x);
    }
    out
}

/// Converts a float row group by group, the tail in scalar.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dequant_float<const B: usize>(dtype: DType, src: &[u8], dst: &mut [f32], w: impl Fn(&[u8; B]) -> [__m256; 4]) {
    let (groups_in, tail_in) = src.as_chunks::<B>();
    let (groups_out, tail_out) = dst.as_chunks_mut::<G>();
    for (b, o) in groups_in.iter().zip(groups_out) {
        store_group(o, &w(b));
    }
    super::super::scalar::dequantize_row(dtype, tail_in, tail_out);
}

// ---------------------------------------------------------------------------------------------
// Decoders

/// 32 little-endian `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f32_group(b: &[u8; 128]) -> [__m256; 4] {
    let v = |o: usize| _mm256_castsi256_ps(load_u8x32(&b[o..]));
    [v(0), v(32), v(64), v(96)]
}

/// 32 little-endian `f16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_group(b: &[u8; 64]) -> [__m256; 4] {
    let v = |o: usize| _mm256_cvtph_ps(load_u8x16(&b[o..]));
    [v(0), v(16), v(32), v(48)]
}

/// 32 little-endian `bf16`: each is the top half of an `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn bf16_group(b: &[u8; 64]) -> [__m256; 4] {
    let v = |o: usize| {
        let wide = _mm256_cvtepu16_epi32(load_u8x16(&b[o..]));
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(wide))
    };
    [v(0), v(16), v(32), v(48)]
}

/// `block_q8_0`: `f16 d; i8 qs[32]`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0(b: &[u8; 34]) -> [__m256; 4] {
    let v = |o: usize| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load_u8x8(&b[o..])));
    [v(2), v(10), v(18), v(26)]
}

/// The low and high nibbles of 16 bytes: values 0..16 and 16..32 of a Q4/Q5 block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: &[u8]) -> (__m128i, __m128i) {
    let v = load_u8x16(qs);
    let m4 = _mm_set1_epi8(15);
    (_mm_and_si128(v, m4), _mm_and_si128(_mm_srli_epi16::<4>(v), m4))
}

/// `block_q4_0`: `f16 d; u8 qs[16]`; `q = nibble - 8`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_0(b: &[u8; 18]) -> [__m256; 4] {
    let (lo, hi) = nibbles(&b[2..]);
    let eight = _mm_set1_epi8(8);
    join(i8x16_to_f32(_mm_sub_epi8(lo, eight)), i8x16_to_f32(_mm_sub_epi8(hi, eight)))
}

/// `block_q4_1`: `f16 d; f16 m; u8 qs[16]`; `q = nibble`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q4_1(b: &[u8; 20]) -> [__m256; 4] {
    let (lo, hi) = nibbles(&b[4..]);
    join(u8x16_to_f32(lo), u8x16_to_f32(hi))
}

/// Byte masks (`0xff` where set) of the fifth bits of values 0..16 and 16..32, from the
/// little-endian `u32` at the start of `qh`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(qh: &[u8]) -> (__m128i, __m128i) {
    let h = _mm_set1_epi32(i32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]));
    // Byte i of the result takes byte i / 8 of `qh` and tests bit i % 8.
    let bit = _mm_set1_epi64x(0x8040_2010_0804_0201_u64 as i64);
    let pick = |lo: i64, hi: i64| {
        let bytes = _mm_shuffle_epi8(h, _mm_set_epi64x(hi, lo));
        _mm_cmpeq_epi8(_mm_and_si128(bytes, bit), bit)
    };
    (pick(0, 0x0101_0101_0101_0101), pick(0x0202_0202_0202_0202, 0x0303_0303_0303_0303))
}

/// `block_q5_0`: `f16 d; u8 qh[4]; u8 qs[16]`; `q = (nibble | fifth bit << 4) - 16`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_0(b: &[u8; 22]) -> [__m256; 4] {
    let (lo, hi) = nibbles(&b[6..]);
    let (hl, hh) = fifth_bits(&b[2..]);
    // Where the fifth bit is clear, `q - 16 = nibble - 16`, whose byte is `nibble | 0xf0`.
    let neg = _mm_set1_epi8(-16);
    let lo = _mm_or_si128(lo, _mm_andnot_si128(hl, neg));
    let hi = _mm_or_si128(hi, _mm_andnot_si128(hh, neg));
    join(i8x16_to_f32(lo), i8x16_to_f32(hi))
}

/// `block_q5_1`: `f16 d; f16 m; u8 qh[4]; u8 qs[16]`; `q = nibble | fifth bit << 4`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q5_1(b: &[u8; 24]) -> [__m256; 4] {
    let (lo, hi) = nibbles(&b[8..]);
    let (hl, hh) = fifth_bits(&b[4..]);
    let sixteen = _mm_set1_epi8(16);
    let lo = _mm_or_si128(lo, _mm_and_si128(hl, sixteen));
    let hi = _mm_or_si128(hi, _mm_and_si128(hh, sixteen));
    join(u8x16_to_f32(lo), u8x16_to_f32(hi))
}

// ---------------------------------------------------------------------------------------------
// Entry points (called by `super::dot` and `super::dequantize_row`)

macro_rules! kernels {
    ($($dot:ident, $dequant:ident => $driver:ident, $dq_driver:ident, $dec:ident, $bytes:literal;)*) => {$(
        #[doc = concat!("Dot kernel using [`", stringify!($dec), "`].")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) fn $dot<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
            $driver::<$bytes, M>(row, xs, |b| $dec(b))
        }

        #[doc = concat!("De-quantisation kernel using [`", stringify!($dec), "`].")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) fn $dequant(src: &[u8], dst: &mut [f32]) {
            $dq_driver::<$bytes>(src, dst, |b| $dec(b))
        }
    )*};
}

kernels! {
    dot_q8_0, dequant_q8_0 => dot_scaled, dequant_scaled, q8_0, 34;
    dot_q4_0, dequant_q4_0 => dot_scaled, dequant_scaled, q4_0, 18;
    dot_q5_0, dequant_q5_0 => dot_scaled, dequant_scaled, q5_0, 22;
    dot_q4_1, dequant_q4_1 => dot_affine, dequant_affine, q4_1, 20;
    dot_q5_1, dequant_q5_1 => dot_affine, dequant_affine, q5_1, 24;
}

macro_rules! float_kernels {
    ($($dot:ident, $dequant:ident => $dtype:expr, $dec:ident, $bytes:literal;)*) => {$(
        #[doc = concat!("Dot kernel using [`", stringify!($dec), "`].")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) fn $dot<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
            dot_float::<$bytes, M>($dtype, row, xs, |b| $dec(b))
        }

        #[doc = concat!("Conversion kernel using [`", stringify!($dec), "`].")]
        #[target_feature(enable = "avx2,fma,f16c")]
        pub(super) fn $dequant(src: &[u8], dst: &mut [f32]) {
            dequant_float::<$bytes>($dtype, src, dst, |b| $dec(b))
        }
    )*};
}

float_kernels! {
    dot_f32, dequant_f32 => DType::F32, f32_group, 128;
    dot_f16, dequant_f16 => DType::F16, f16_group, 64;
    dot_bf16, dequant_bf16 => DType::BF16, bf16_group, 64;
}
