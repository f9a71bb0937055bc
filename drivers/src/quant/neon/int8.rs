//! Integer dot products of weight rows with 8-bit activations (`quant::int8`), in two builds:
//! `dotprod` (the `SDOT` instruction of the dotprod extension, ARMv8.2+) and `plain` (ARMv8.0
//! NEON: `SMULL`/`SMULL2` into 16-bit products, `SADALP` to add their pairs into 32 bits).
//!
//! Each 32-value block becomes two registers of signed weight bytes (the decoders of
//! `simple` and `kquants`, already offset for Q4_0, Q5_0 and Q6_K) multiplied with the block's
//! 32 activation bytes into four `i32` lanes. Both builds are exact: a product is at most
//! `128 · 127` in magnitude, so it fits `i16`, and a lane sums at most 16 of them. The lanes are
//! converted to `f32` and fused into the accumulator with the product of the scales; the
//! Q4_1/Q5_1 minimum and the K mins are applied once per block through the activation block
//! sums `s = d · Σ q`. `SDOT`'s intrinsic is not stable Rust yet, so it is written as inline
//! assembly.

use std::arch::aarch64::*;
use std::arch::asm;

use super::kquants::{f16_pair, k45_ints, q6_ints, unpack_scales_mins};
use super::scales4;
use super::simple::{q4_0_ints, q4_1_ints, q5_0_ints, q5_1_ints, q8_0_ints};
use crate::DType;
use crate::quant::int8::{ActRow, QK};

/// Blocks whose scales are converted together by [`scales4`].
const CHUNK: usize = 4;

/// Loads the 32 activation bytes of a block (values 0..16 and 16..32).
#[inline]
#[target_feature(enable = "neon")]
fn load_x(q: &[i8; QK]) -> [int8x16_t; 2] {
    // SAFETY: `q` is 32 readable bytes, so both 16-byte loads are in bounds; bytes need no
    // alignment.
    unsafe { [vld1q_s8(q.as_ptr()), vld1q_s8(q.as_ptr().add(16))] }
}

/// `acc + Σ w·x` over each group of four bytes, with `SDOT`.
#[inline]
#[target_feature(enable = "neon,dotprod")]
fn dp_sdot(mut acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    // SAFETY: SDOT (vector) belongs to the dotprod extension, enabled on this function; it only
    // reads `w`, `x` and `acc` and writes `acc`.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {x:v}.16b",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            x = in(vreg) x,
            options(pure, nomem, nostack, preserves_flags),
        );
    }
    acc
}

/// `acc +` the products `w·x` summed in fours (a different grouping from [`dp_sdot`], the same
/// total), with ARMv8.0 NEON.
#[inline]
#[target_feature(enable = "neon")]
fn dp_plain(acc: int32x4_t, w: int8x16_t, x: int8x16_t) -> int32x4_t {
    let lo = vmull_s8(vget_low_s8(w), vget_low_s8(x));
    let hi = vmull_high_s8(w, x);
    vpadalq_s16(vpadalq_s16(acc, lo), hi)
}

/// Generates the kernels for one instruction set: `$feat` are the target features and `$dp`
/// the signed byte dot product accumulating into four `i32` lanes.
macro_rules! int8_kernels {
    ($name:ident, $feat:literal, $dp:ident) => {
        pub(in crate::quant) mod $name {
            use super::*;

            /// Dots `row` (`dtype`, as many values as `a`) with the quantised activations `a`.
            /// Returns `None` for formats without a kernel.
            #[target_feature(enable = $feat)]
            pub(in crate::quant) fn dot(dtype: DType, row: &[u8], a: ActRow<'_>) -> Option<f32> {
                let n = a.qs.len();
                assert!(
                    dtype.row_bytes(n * QK) == Some(row.len()) && a.d.len() == n && a.s.len() == n,
                    "quant::int8: {} values of {dtype} against {} bytes",
                    n * QK,
                    row.len()
                );
                Some(match dtype {
                    DType::Q8_0 => simple::<34, false>(row, a, |b| q8_0_ints(b)),
                    DType::Q4_0 => simple::<18, false>(row, a, |b| q4_0_ints(b)),
                    DType::Q4_1 => simple::<20, true>(row, a, |b| q4_1_ints(b)),
                    DType::Q5_0 => simple::<22, false>(row, a, |b| q5_0_ints(b)),
                    DType::Q5_1 => simple::<24, true>(row, a, |b| q5_1_ints(b)),
                    DType::Q4K => q4_k::<144>(row, a, false),
                    DType::Q5K => q4_k::<176>(row, a, true),
                    DType::Q6K => q6_k(row, a),
                    _ => return None,
                })
            }

            /// `Σ w·x` of a 32-value block, in four lanes.
            #[inline]
            #[target_feature(enable = $feat)]
            fn block(w: [int8x16_t; 2], x: &[i8; QK]) -> int32x4_t {
                let x = load_x(x);
                $dp($dp(vdupq_n_s32(0), w[0], x[0]), w[1], x[1])
            }

            /// The 32-value block formats: `B` bytes a block, the `f16` scale `d` at 0, the
            /// `f16` minimum `m` at 2 when `MIN`, and `ints` the block's integers (offset
            /// included): `Σ (d·q + m)·x = d·Σ q·x + m·s`.
            #[inline]
            #[target_feature(enable = $feat)]
            fn simple<const B: usize, const MIN: bool>(
                row: &[u8],
                a: ActRow<'_>,
                ints: impl Fn(&[u8; B]) -> [int8x16_t; 2],
            ) -> f32 {
                let blocks = row.as_chunks::<B>().0;
                let mut acc = [vdupq_n_f32(0.0); 2];
                let mut mins = 0f32;
                for (ci, chunk) in blocks.chunks(CHUNK).enumerate() {
                    let d = scales4(chunk, 0);
                    let m = if MIN { scales4(chunk, 2) } else { [0.0; CHUNK] };
                    for (k, b) in chunk.iter().enumerate() {
                        let i = CHUNK * ci + k;
                        let p = vcvtq_f32_s32(block(ints(b), &a.qs[i]));
                        acc[k & 1] = vfmaq_n_f32(acc[k & 1], p, d[k] * a.d[i]);
                        if MIN {
                            mins += m[k] * a.s[i];
                        }
                    }
                }
                vaddvq_f32(vaddq_f32(acc[0], acc[1])) + mins
            }

            /// Q4_K (`B = 144`), and Q5_K (`B = 176`) when `q5`:
            /// `Σ (d·sc·q - dmin·m)·x = d·sc·Σ q·x - dmin·m·s` per sub-block.
            #[inline]
            #[target_feature(enable = $feat)]
            fn q4_k<const B: usize>(row: &[u8], a: ActRow<'_>, q5: bool) -> f32 {
                let mut acc = [vdupq_n_f32(0.0); 2];
                let mut mins = 0f32;
                for (sb, b) in row.as_chunks::<B>().0.iter().enumerate() {
                    let (d, dmin) = f16_pair(b);
                    let (sc, mn) = unpack_scales_mins(&b[4..16]);
                    for (j, w) in k45_ints(b, q5).into_iter().enumerate() {
                        let ai = 8 * sb + j;
                        let (sc, m) = (f32::from((sc >> (8 * j)) as u8), f32::from((mn >> (8 * j)) as u8));
                        let p = vcvtq_f32_s32(block(w, &a.qs[ai]));
                        acc[j & 1] = vfmaq_n_f32(acc[j & 1], p, d * sc * a.d[ai]);
                        mins += dmin * m * a.s[ai];
                    }
                }
                vaddvq_f32(vaddq_f32(acc[0], acc[1])) - mins
            }

            /// Q6_K: each 16 values have an `i8` scale, applied to the exact integer sums of
            /// the two halves of a sub-block before they are converted to `f32`.
            #[inline]
            #[target_feature(enable = $feat)]
            fn q6_k(row: &[u8], a: ActRow<'_>) -> f32 {
                let mut acc = [vdupq_n_f32(0.0); 2];
                for (sb, b) in row.as_chunks::<210>().0.iter().enumerate() {
                    let d = super::super::f16x4_to_f32([u16::from_le_bytes([b[208], b[209]]), 0, 0, 0])[0];
                    for (g, w) in q6_ints(b).into_iter().enumerate() {
                        let ai = 8 * sb + g;
                        let x = load_x(&a.qs[ai]);
                        let zero = vdupq_n_s32(0);
                        let (p0, p1) = ($dp(zero, w[0], x[0]), $dp(zero, w[1], x[1]));
                        let (s0, s1) = (i32::from(b[192 + 2 * g] as i8), i32::from(b[193 + 2 * g] as i8));
                        // At most 2 · 4 · 32 · 127 · 128 in magnitude: exact in `i32` and `f32`.
                        let p = vmlaq_n_s32(vmulq_n_s32(p0, s0), p1, s1);
                        acc[g & 1] = vfmaq_n_f32(acc[g & 1], vcvtq_f32_s32(p), d * a.d[ai]);
                    }
                }
                vaddvq_f32(vaddq_f32(acc[0], acc[1]))
            }
        }
    };
}

int8_kernels!(dotprod, "neon,dotprod", dp_sdot);
int8_kernels!(plain, "neon", dp_plain);
