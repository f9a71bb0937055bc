//! NEON kernels for the float formats and the 32-value block formats.
//!
//! Each block format has an integer decoder (`*_ints`) that returns the block's 32 integers as
//! two `int8x16_t`, already offset for the symmetric formats (Q4_0: `-8..8`, Q5_0: `-16..16`);
//! the 8-bit-activation kernels use them as they are. The drivers below widen them to `f32`
//! and apply the block's `f16` scale `d` (and min `m`): the dot products use `d · Σ q·x` (or the
//! fused weights `m + q·d`), de-quantisation uses `q * d` (`+ m`) without fusing, as gguf-py does.

use std::arch::aarch64::*;

use super::{
    G, Group, add_group, add_group_scaled, f16x8_to_f32, groups, hsum, ints_to_group, load_i8x16, load_u8x16, scales4,
    store_group, tail_dot,
};
use crate::DType;

/// Blocks whose scales are converted together by [`scales4`].
const CHUNK: usize = 4;

// ---------------------------------------------------------------------------------------------
// Integer decoders (also used by `super::int8`)

/// `block_q8_0`: `f16 d; i8 qs[32]`.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn q8_0_ints(b: &[u8]) -> [int8x16_t; 2] {
    [load_i8x16(&b[2..]), load_i8x16(&b[18..])]
}

/// The low and high nibbles of 16 bytes: values 0..16 and 16..32 of a Q4/Q5 block.
#[inline]
#[target_feature(enable = "neon")]
fn nibbles(qs: &[u8]) -> [uint8x16_t; 2] {
    let v = load_u8x16(qs);
    [vandq_u8(v, vdupq_n_u8(15)), vshrq_n_u8::<4>(v)]
}

/// `16` in byte `i` of the pair (values 0..16, then 16..32) where bit `i` of the little-endian
/// `u32` at the start of `qh` is set, else `0`: the fifth bits of a Q5_0/Q5_1 block.
#[inline]
#[target_feature(enable = "neon")]
fn fifth_bits(qh: &[u8]) -> [uint8x16_t; 2] {
    let h = vreinterpretq_u8_u32(vdupq_n_u32(u32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]])));
    // Byte i of the result takes byte i / 8 of `qh` and tests bit i % 8.
    let bit = vreinterpretq_u8_u64(vdupq_n_u64(0x8040_2010_0804_0201));
    let sixteen = vdupq_n_u8(16);
    let pick = |lo: u64, hi: u64| {
        let bytes = vqtbl1q_u8(h, vcombine_u8(vcreate_u8(lo), vcreate_u8(hi)));
        vandq_u8(vtstq_u8(bytes, bit), sixteen)
    };
    [pick(0, 0x0101_0101_0101_0101), pick(0x0202_0202_0202_0202, 0x0303_0303_0303_0303)]
}

/// `block_q4_0`: `f16 d; u8 qs[16]`; `q = nibble - 8`.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn q4_0_ints(b: &[u8]) -> [int8x16_t; 2] {
    nibbles(&b[2..]).map(|v| vsubq_s8(vreinterpretq_s8_u8(v), vdupq_n_s8(8)))
}

/// `block_q4_1`: `f16 d; f16 m; u8 qs[16]`; `q = nibble`.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn q4_1_ints(b: &[u8]) -> [int8x16_t; 2] {
    nibbles(&b[4..]).map(|v| vreinterpretq_s8_u8(v))
}

/// `block_q5_0`: `f16 d; u8 qh[4]; u8 qs[16]`; `q = (nibble | fifth bit << 4) - 16`.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn q5_0_ints(b: &[u8]) -> [int8x16_t; 2] {
    let (n, h) = (nibbles(&b[6..]), fifth_bits(&b[2..]));
    [0, 1].map(|i| vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(n[i], h[i])), vdupq_n_s8(16)))
}

/// `block_q5_1`: `f16 d; f16 m; u8 qh[4]; u8 qs[16]`; `q = nibble | fifth bit << 4`.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn q5_1_ints(b: &[u8]) -> [int8x16_t; 2] {
    let (n, h) = (nibbles(&b[8..]), fifth_bits(&b[4..]));
    [0, 1].map(|i| vreinterpretq_s8_u8(vorrq_u8(n[i], h[i])))
}

// ---------------------------------------------------------------------------------------------
// Drivers

/// Dot of a row of symmetric blocks (`value = d · q`, `d` the `f16` at byte 0).
#[inline]
#[target_feature(enable = "neon")]
fn dot_scaled<const B: usize, const M: usize>(
    row: &[u8],
    xs: [&[f32]; M],
    q: impl Fn(&[u8; B]) -> [int8x16_t; 2],
) -> [f32; M] {
    let xg = groups(xs);
    let mut acc = [vdupq_n_f32(0.0); M];
    for (ci, chunk) in row.as_chunks::<B>().0.chunks(CHUNK).enumerate() {
        let d = scales4(chunk, 0);
        for (k, b) in chunk.iter().enumerate() {
            add_group_scaled(&mut acc, &ints_to_group(q(b)), d[k], &xg, CHUNK * ci + k);
        }
    }
    acc.map(|a| hsum(a))
}

/// Dot of a row of blocks with a min (`value = d · q + m`, `d` and `m` the `f16` at 0 and 2).
#[inline]
#[target_feature(enable = "neon")]
fn dot_affine<const B: usize, const M: usize>(
    row: &[u8],
    xs: [&[f32]; M],
    q: impl Fn(&[u8; B]) -> [int8x16_t; 2],
) -> [f32; M] {
    let xg = groups(xs);
    let mut acc = [vdupq_n_f32(0.0); M];
    for (ci, chunk) in row.as_chunks::<B>().0.chunks(CHUNK).enumerate() {
        let (d, m) = (scales4(chunk, 0), scales4(chunk, 2));
        for (k, b) in chunk.iter().enumerate() {
            let mv = vdupq_n_f32(m[k]);
            let w = ints_to_group(q(b)).map(|q| vfmaq_n_f32(mv, q, d[k]));
            add_group(&mut acc, &w, &xg, CHUNK * ci + k);
        }
    }
    acc.map(|a| hsum(a))
}

/// De-quantises a row of symmetric blocks: `q * d`.
#[inline]
#[target_feature(enable = "neon")]
fn dequant_scaled<const B: usize>(src: &[u8], dst: &mut [f32], q: impl Fn(&[u8; B]) -> [int8x16_t; 2]) {
    let out = dst.as_chunks_mut::<G>().0.chunks_mut(CHUNK);
    for (chunk, oc) in src.as_chunks::<B>().0.chunks(CHUNK).zip(out) {
        let d = scales4(chunk, 0);
        for ((b, o), &d) in chunk.iter().zip(oc).zip(&d) {
            store_group(o, &ints_to_group(q(b)).map(|q| vmulq_n_f32(q, d)));
        }
    }
}

/// De-quantises a row of blocks with a min: `q * d + m`, rounded twice as gguf-py does.
#[inline]
#[target_feature(enable = "neon")]
fn dequant_affine<const B: usize>(src: &[u8], dst: &mut [f32], q: impl Fn(&[u8; B]) -> [int8x16_t; 2]) {
    let out = dst.as_chunks_mut::<G>().0.chunks_mut(CHUNK);
    for (chunk, oc) in src.as_chunks::<B>().0.chunks(CHUNK).zip(out) {
        let (d, m) = (scales4(chunk, 0), scales4(chunk, 2));
        for (k, (b, o)) in chunk.iter().zip(oc).enumerate() {
            let mv = vdupq_n_f32(m[k]);
            store_group(o, &ints_to_group(q(b)).map(|q| vaddq_f32(vmulq_n_f32(q, d[k]), mv)));
        }
    }
}

/// Dot of a float row whose groups of 32 values take `B` bytes; the tail is done in scalar.
#[inline]
#[target_feature(enable = "neon")]
fn dot_float<const B: usize, const M: usize>(
    dtype: DType,
    row: &[u8],
    xs: [&[f32]; M],
    w: impl Fn(&[u8; B]) -> Group,
) -> [f32; M] {
    let xg = groups(xs);
    let mut acc = [vdupq_n_f32(0.0); M];
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
#[target_feature(enable = "neon")]
fn dequant_float<const B: usize>(dtype: DType, src: &[u8], dst: &mut [f32], w: impl Fn(&[u8; B]) -> Group) {
    let (groups_in, tail_in) = src.as_chunks::<B>();
    let (groups_out, tail_out) = dst.as_chunks_mut::<G>();
    for (b, o) in groups_in.iter().zip(groups_out) {
        store_group(o, &w(b));
    }
    super::super::scalar::dequantize_row(dtype, tail_in, tail_out);
}

// ---------------------------------------------------------------------------------------------
// Float decoders

/// 32 little-endian `f32`.
#[inline]
#[target_feature(enable = "neon")]
fn f32_group(b: &[u8; 128]) -> Group {
    std::array::from_fn(|r| vreinterpretq_f32_u8(load_u8x16(&b[16 * r..])))
}

/// 32 little-endian `f16`.
#[inline]
#[target_feature(enable = "neon")]
fn f16_group(b: &[u8; 64]) -> Group {
    let h = [0, 16, 32, 48].map(|o| f16x8_to_f32(vreinterpretq_u16_u8(load_u8x16(&b[o..]))));
    [h[0][0], h[0][1], h[1][0], h[1][1], h[2][0], h[2][1], h[3][0], h[3][1]]
}

/// 32 little-endian `bf16`: each is the top half of an `f32`. NaNs are made quiet (their top
/// mantissa bit set), as the `half` crate's conversion does.
#[inline]
#[target_feature(enable = "neon")]
fn bf16_group(b: &[u8; 64]) -> Group {
    let widen = |w: uint32x4_t| {
        let nan = vcgtq_u32(vandq_u32(w, vdupq_n_u32(0x7fff_0000)), vdupq_n_u32(0x7f80_0000));
        vreinterpretq_f32_u32(vorrq_u32(w, vandq_u32(nan, vdupq_n_u32(0x0040_0000))))
    };
    let h = [0, 16, 32, 48].map(|o| {
        let v = vreinterpretq_u16_u8(load_u8x16(&b[o..]));
        [widen(vshll_n_u16::<16>(vget_low_u16(v))), widen(vshll_high_n_u16::<16>(v))]
    });
    [h[0][0], h[0][1], h[1][0], h[1][1], h[2][0], h[2][1], h[3][0], h[3][1]]
}

// ---------------------------------------------------------------------------------------------
// Entry points (called by `super::dot` and `super::dequantize_row`)

macro_rules! kernels {
    ($($dot:ident, $dequant:ident => $driver:ident, $dq_driver:ident, $dec:ident, $bytes:literal;)*) => {$(
        #[doc = concat!("Dot kernel using [`", stringify!($dec), "`].")]
        #[target_feature(enable = "neon")]
        pub(super) fn $dot<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
            $driver::<$bytes, M>(row, xs, |b| $dec(b))
        }

        #[doc = concat!("De-quantisation kernel using [`", stringify!($dec), "`].")]
        #[target_feature(enable = "neon")]
        pub(super) fn $dequant(src: &[u8], dst: &mut [f32]) {
            $dq_driver::<$bytes>(src, dst, |b| $dec(b))
        }
    )*};
}

kernels! {
    dot_q8_0, dequant_q8_0 => dot_scaled, dequant_scaled, q8_0_ints, 34;
    dot_q4_0, dequant_q4_0 => dot_scaled, dequant_scaled, q4_0_ints, 18;
    dot_q5_0, dequant_q5_0 => dot_scaled, dequant_scaled, q5_0_ints, 22;
    dot_q4_1, dequant_q4_1 => dot_affine, dequant_affine, q4_1_ints, 20;
    dot_q5_1, dequant_q5_1 => dot_affine, dequant_affine, q5_1_ints, 24;
}

macro_rules! float_kernels {
    ($($dot:ident, $dequant:ident => $dtype:expr, $dec:ident, $bytes:literal;)*) => {$(
        #[doc = concat!("Dot kernel using [`", stringify!($dec), "`].")]
        #[target_feature(enable = "neon")]
        pub(super) fn $dot<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
            dot_float::<$bytes, M>($dtype, row, xs, |b| $dec(b))
        }

        #[doc = concat!("Conversion kernel using [`", stringify!($dec), "`].")]
        #[target_feature(enable = "neon")]
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
