//! NEON kernels for the 256-value K formats: Q4_K, Q5_K and Q6_K.
//!
//! A super-block is decoded as eight 32-value sub-blocks of integers (two `int8x16_t` each,
//! shared with `super::int8`). The float kernels widen each to a group of `f32` and make the
//! weights `w = q·scale - min` with one fused multiply-add (dot products) or with a separate
//! product and difference (de-quantisation, bitwise as gguf-py).

use std::arch::aarch64::*;

use super::{G, Group, add_group, f16x4_to_f32, groups, hsum, i8x16_to_f32, ints_to_group, load_u8x16, store_group};

/// Values per super-block.
const QK_K: usize = 256;

/// Groups of [`G`] values per super-block.
const GROUPS: usize = QK_K / G;

/// The eight 6-bit scales and mins of a Q4_K/Q5_K super-block (the 12 packed bytes `s`), as two
/// little-endian `u64` holding one byte per sub-block.
///
/// The layout is the one of [`crate::quant::kquants::scale_min_k4`], done on 32-bit words: the
/// low six bits of bytes 0..4 (4..8) are scales (mins) 0..4; scales (mins) 4..8 take their low
/// nibble from the low (high) nibbles of bytes 8..12 and their top two bits from the top two
/// bits of bytes 0..4 (4..8).
#[inline]
pub(super) fn unpack_scales_mins(s: &[u8]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (sc_lo, mn_lo, packed) = (word(0), word(4), word(8));
    let six = 0x3f3f_3f3f;
    let (nibble, top) = (0x0f0f_0f0f, 0x3030_3030);
    let sc_hi = (packed & nibble) | ((sc_lo >> 2) & top);
    let mn_hi = ((packed >> 4) & nibble) | ((mn_lo >> 2) & top);
    let join = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
    (join(sc_lo & six, sc_hi), join(mn_lo & six, mn_hi))
}

/// The two `f16` at the start of `b` (`d` and `dmin`) as `f32`.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn f16_pair(b: &[u8]) -> (f32, f32) {
    let v = f16x4_to_f32([u16::from_le_bytes([b[0], b[1]]), u16::from_le_bytes([b[2], b[3]]), 0, 0]);
    (v[0], v[1])
}

/// 8 bytes (one per value, as a little-endian `u64`) times `d`, as `f32`.
#[inline]
#[target_feature(enable = "neon")]
fn scale_bytes(bytes: u64, d: f32) -> [f32; 8] {
    let v = vmovl_u8(vcreate_u8(bytes));
    let lo = vmulq_n_f32(vcvtq_f32_u32(vmovl_u16(vget_low_u16(v))), d);
    let hi = vmulq_n_f32(vcvtq_f32_u32(vmovl_high_u16(v)), d);
    let mut out = [0f32; 8];
    super::store_f32(&mut out[..4], lo);
    super::store_f32(&mut out[4..], hi);
    out
}

/// The sub-block scales `d·sc` and offsets `dmin·m` of a Q4_K/Q5_K super-block.
#[inline]
#[target_feature(enable = "neon")]
fn k4_scales(b: &[u8]) -> ([f32; 8], [f32; 8]) {
    let (d, dmin) = f16_pair(b);
    let (sc, mn) = unpack_scales_mins(&b[4..16]);
    (scale_bytes(sc, d), scale_bytes(mn, dmin))
}

/// The unsigned integers (0..32) of the eight sub-blocks of a Q4_K (`q5 == false`) or Q5_K
/// super-block, each as values 0..16 and 16..32.
///
/// Bytes `qs[32c..32c + 32]` hold sub-block `2c` in their low nibbles and `2c + 1` in their high
/// nibbles; for Q5_K, bit `j` of `qh[i]` is the fifth bit of value `i` of sub-block `j`.
///
/// Returning all eight (rather than calling back per sub-block) keeps the kernels' loops free
/// of calls: the compiler would not inline a large callback and would keep the accumulators in
/// memory across it.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn k45_ints(b: &[u8], q5: bool) -> [[int8x16_t; 2]; 8] {
    let mut out = [[vdupq_n_s8(0); 2]; 8];
    let (qs, mut qh) = if q5 {
        (&b[48..176], [load_u8x16(&b[16..]), load_u8x16(&b[32..])])
    } else {
        (&b[16..144], [vdupq_n_u8(0); 2])
    };
    let (m4, one, two) = (vdupq_n_u8(15), vdupq_n_u8(1), vdupq_n_u8(2));
    for c in 0..4 {
        let v = [load_u8x16(&qs[32 * c..]), load_u8x16(&qs[32 * c + 16..])];
        let mut lo = v.map(|v| vandq_u8(v, m4));
        let mut hi = v.map(|v| vshrq_n_u8::<4>(v));
        if q5 {
            for i in 0..2 {
                lo[i] = vorrq_u8(lo[i], vshlq_n_u8::<4>(vandq_u8(qh[i], one)));
                hi[i] = vorrq_u8(hi[i], vshlq_n_u8::<3>(vandq_u8(qh[i], two)));
            }
            qh = qh.map(|h| vshrq_n_u8::<2>(h));
        }
        out[2 * c] = lo.map(|v| vreinterpretq_s8_u8(v));
        out[2 * c + 1] = hi.map(|v| vreinterpretq_s8_u8(v));
    }
    out
}

/// The signed integers `q - 32` (`-32..32`) of the eight sub-blocks of a Q6_K super-block,
/// each as values 0..16 and 16..32.
///
/// Sub-block `4h + t` (half `h`, quarter `t`) takes its low four bits from
/// `ql[64h + 32 (t & 1)..][..32]` (low nibbles for `t < 2`, high ones otherwise) and its top two
/// bits from bits `2t..2t + 2` of `qh[32h..][..32]`.
#[inline]
#[target_feature(enable = "neon")]
pub(super) fn q6_ints(b: &[u8]) -> [[int8x16_t; 2]; 8] {
    let mut out = [[vdupq_n_s8(0); 2]; 8];
    let (m4, three, off) = (vdupq_n_u8(15), vdupq_n_u8(3), vdupq_n_s8(32));
    for h in 0..2 {
        let ql = [0, 16, 32, 48].map(|o| load_u8x16(&b[64 * h + o..]));
        let mut qh = [load_u8x16(&b[128 + 32 * h..]), load_u8x16(&b[144 + 32 * h..])];
        for t in 0..4 {
            let q: [int8x16_t; 2] = std::array::from_fn(|i| {
                let low = ql[2 * (t & 1) + i];
                let low = if t < 2 { vandq_u8(low, m4) } else { vshrq_n_u8::<4>(low) };
                let top = vshlq_n_u8::<4>(vandq_u8(qh[i], three));
                vsubq_s8(vreinterpretq_s8_u8(vorrq_u8(low, top)), off)
            });
            out[4 * h + t] = q;
            qh = qh.map(|h| vshrq_n_u8::<2>(h));
        }
    }
    out
}

/// The sixteen scales `d · sc` of a Q6_K super-block (`i8 scales[16]` at 192, `f16 d` at 208).
#[inline]
#[target_feature(enable = "neon")]
fn q6_scales(b: &[u8]) -> [f32; 16] {
    let d = f16x4_to_f32([u16::from_le_bytes([b[208], b[209]]), 0, 0, 0])[0];
    let v = i8x16_to_f32(super::load_i8x16(&b[192..]));
    let mut out = [0f32; 16];
    for (o, v) in out.chunks_exact_mut(4).zip(v) {
        super::store_f32(o, vmulq_n_f32(v, d));
    }
    out
}

/// The weights of sub-block `g` of a Q6_K super-block: `scale · q` per 16 values.
#[inline]
#[target_feature(enable = "neon")]
fn q6_weights(q: [int8x16_t; 2], scales: &[f32; 16], g: usize) -> Group {
    let (a, b) = (i8x16_to_f32(q[0]), i8x16_to_f32(q[1]));
    let (sa, sb) = (scales[2 * g], scales[2 * g + 1]);
    let (a, b) = (a.map(|v| vmulq_n_f32(v, sa)), b.map(|v| vmulq_n_f32(v, sb)));
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
}

/// Dot of a Q4_K (`q5 == false`) or Q5_K row.
#[inline]
#[target_feature(enable = "neon")]
fn dot_k45<const B: usize, const M: usize>(row: &[u8], xs: [&[f32]; M], q5: bool) -> [f32; M] {
    let xg = groups(xs);
    let mut acc = [vdupq_n_f32(0.0); M];
    for (i, b) in row.as_chunks::<B>().0.iter().enumerate() {
        let (scales, mins) = k4_scales(b);
        for (j, q) in k45_ints(b, q5).into_iter().enumerate() {
            let neg_min = vdupq_n_f32(-mins[j]);
            let w = ints_to_group(q).map(|q| vfmaq_n_f32(neg_min, q, scales[j]));
            add_group(&mut acc, &w, &xg, GROUPS * i + j);
        }
    }
    acc.map(|a| hsum(a))
}

/// De-quantises a Q4_K (`q5 == false`) or Q5_K row: `q * scale - min`, rounded twice.
#[inline]
#[target_feature(enable = "neon")]
fn dequant_k45<const B: usize>(src: &[u8], dst: &mut [f32], q5: bool) {
    for (b, o) in src.as_chunks::<B>().0.iter().zip(dst.as_chunks_mut::<QK_K>().0) {
        let (out, _) = o.as_chunks_mut::<G>();
        let (scales, mins) = k4_scales(b);
        for (j, (q, o)) in k45_ints(b, q5).into_iter().zip(out).enumerate() {
            let min = vdupq_n_f32(mins[j]);
            store_group(o, &ints_to_group(q).map(|q| vsubq_f32(vmulq_n_f32(q, scales[j]), min)));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points (called by `super::dot` and `super::dequantize_row`)

/// Dot kernel for Q4_K rows.
#[target_feature(enable = "neon")]
pub(super) fn dot_q4_k<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    dot_k45::<144, M>(row, xs, false)
}

/// Dot kernel for Q5_K rows.
#[target_feature(enable = "neon")]
pub(super) fn dot_q5_k<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    dot_k45::<176, M>(row, xs, true)
}

/// Dot kernel for Q6_K rows.
#[target_feature(enable = "neon")]
pub(super) fn dot_q6_k<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    let xg = groups(xs);
    let mut acc = [vdupq_n_f32(0.0); M];
    for (i, b) in row.as_chunks::<210>().0.iter().enumerate() {
        let scales = q6_scales(b);
        for (g, q) in q6_ints(b).into_iter().enumerate() {
            add_group(&mut acc, &q6_weights(q, &scales, g), &xg, GROUPS * i + g);
        }
    }
    acc.map(|a| hsum(a))
}

/// De-quantisation kernel for Q4_K rows.
#[target_feature(enable = "neon")]
pub(super) fn dequant_q4_k(src: &[u8], dst: &mut [f32]) {
    dequant_k45::<144>(src, dst, false);
}

/// De-quantisation kernel for Q5_K rows.
#[target_feature(enable = "neon")]
pub(super) fn dequant_q5_k(src: &[u8], dst: &mut [f32]) {
    dequant_k45::<176>(src, dst, true);
}

/// De-quantisation kernel for Q6_K rows.
#[target_feature(enable = "neon")]
pub(super) fn dequant_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, o) in src.as_chunks::<210>().0.iter().zip(dst.as_chunks_mut::<QK_K>().0) {
        let (out, _) = o.as_chunks_mut::<G>();
        let scales = q6_scales(b);
        for (g, (q, o)) in q6_ints(b).into_iter().zip(out).enumerate() {
            store_group(o, &q6_weights(q, &scales, g));
        }
    }
}
