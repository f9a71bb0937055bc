//! Integer dot products of weight rows with 8-bit activations (`quant::int8`), in two builds:
//! `vnni` (AVX-512 VNNI `vpdpbusd` on 256-bit registers) and `avx2` (`vpmaddubsw` + `vpmaddwd`).
//!
//! Each 32-value block becomes one register of unsigned weight bytes (0..63; Q8_0 uses the
//! sign trick instead: `|w|` against `x` carrying `w`'s sign) multiplied with the block's 32
//! activation bytes into eight `i32` lanes of four products each, which is exact in both
//! builds (no pair of products exceeds `i16` in the AVX2 one). The lanes are converted to `f32`
//! and fused into the accumulator with the product of the scales; the constant offsets of the
//! formats (`-8`, `-16`, the Q4_1/Q5_1 minimum, the K mins) are applied once per block through
//! the activation block sums `s = d · Σ q`.

use std::arch::x86_64::*;

use super::{hsum, load_u8x16, load_u8x32, scales8};
use crate::DType;
use crate::quant::int8::{ActRow, QK};
use crate::quant::kquants::scale_min_k4;
use crate::quant::scalar::f16_at;

/// Loads the 32 activation bytes of a block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn load_x(q: &[i8; QK]) -> __m256i {
    // SAFETY: `q` is 32 readable bytes; the load has no alignment requirement.
    unsafe { _mm256_loadu_si256(q.as_ptr().cast()) }
}

/// The 32 unsigned 4-bit values of a 16-byte block: low nibbles (values 0..16), then high ones.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles(qs: &[u8]) -> __m256i {
    let q = load_u8x16(qs);
    let m = _mm_set1_epi8(15);
    _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(q), m), _mm_and_si128(q, m))
}

/// `16` in byte `i` where bit `i` of the little-endian `qh[0..4]` is set, else `0`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn fifth_bits(qh: &[u8]) -> __m256i {
    let h = i32::from_le_bytes([qh[0], qh[1], qh[2], qh[3]]);
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(h),
        _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(16))
}

/// `a[i] · b[i]` for up to 8 values (missing ones are 0).
#[inline]
fn mul8(a: &[f32; 8], b: &[f32]) -> [f32; 8] {
    let mut out = [0f32; 8];
    for ((o, &x), &y) in out.iter_mut().zip(a).zip(b) {
        *o = x * y;
    }
    out
}

/// Generates the kernels for one instruction set: `$feat` are the target features and `$dp`
/// the unsigned-by-signed byte dot product into eight `i32` lanes.
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
                    DType::Q8_0 => q8_0(row, a),
                    DType::Q4_0 => simple::<18, 2, false, false>(row, a, 8.0),
                    DType::Q4_1 => simple::<20, 4, false, true>(row, a, 0.0),
                    DType::Q5_0 => simple::<22, 6, true, false>(row, a, 16.0),
                    DType::Q5_1 => simple::<24, 8, true, true>(row, a, 0.0),
                    DType::Q4K => q4_k::<false>(row, a),
                    DType::Q5K => q4_k::<true>(row, a),
                    DType::Q6K => q6_k(row, a),
                    _ => return None,
                })
            }

            /// Adds `scale ·` the lanes of `p` to `acc`.
            #[inline]
            #[target_feature(enable = $feat)]
            fn fuse(acc: __m256, p: __m256i, scale: f32) -> __m256 {
                _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(scale), acc)
            }

            /// One accumulator, fed the blocks in order: the AVX2 build's sums are then those of
            /// the AVX2 tile kernel (`tile_avx2`), bitwise, so a decode row (which takes this
            /// kernel) gets the same result as in a batch (which takes the tiles).
            #[target_feature(enable = $feat)]
            fn q8_0(row: &[u8], a: ActRow<'_>) -> f32 {
                let blocks = row.as_chunks::<34>().0;
                let mut acc = _mm256_setzero_ps();
                for ((bs, qx), dx) in blocks.chunks(8).zip(a.qs.chunks(8)).zip(a.d.chunks(8)) {
                    let sc = mul8(&scales8(bs, 0), dx);
                    for (i, (b, q)) in bs.iter().zip(qx).enumerate() {
                        let w = load_u8x32(&b[2..]);
                        let p = $dp(_mm256_sign_epi8(w, w), _mm256_sign_epi8(load_x(q), w));
                        acc = fuse(acc, p, sc[i]);
                    }
                }
                hsum(acc)
            }

            /// Q4_0, Q4_1, Q5_0 and Q5_1: `B` bytes a block with the nibbles at `QS`, the fifth
            /// bits at 2 or 4 when `FIVE`, the minimum at 2 when `MIN`, and `off` subtracted
            /// from every value otherwise.
            #[target_feature(enable = $feat)]
            fn simple<const B: usize, const QS: usize, const FIVE: bool, const MIN: bool>(
                row: &[u8],
                a: ActRow<'_>,
                off: f32,
            ) -> f32 {
                let blocks = row.as_chunks::<B>().0;
                let mut acc = [_mm256_setzero_ps(); 2];
                let mut corr = _mm256_setzero_ps();
                let qh = if MIN { 4 } else { 2 };
                for (((bs, qx), dx), sx) in blocks.chunks(8).zip(a.qs.chunks(8)).zip(a.d.chunks(8)).zip(a.s.chunks(8)) {
                    let dw = scales8(bs, 0);
                    let sc = mul8(&dw, dx);
                    // Per block: `Σ (q - off)·x = Σ q·x - off·s` or `Σ (q + m/d)·x = Σ q·x + m·s`.
                    let k = if MIN { scales8(bs, 2) } else { dw };
                    let mut s8 = [0f32; 8];
                    s8[..sx.len()].copy_from_slice(sx);
                    // SAFETY: `k` and `s8` are 8 readable `f32`; no alignment needed.
                    corr = unsafe { _mm256_fmadd_ps(_mm256_loadu_ps(k.as_ptr()), _mm256_loadu_ps(s8.as_ptr()), corr) };
                    for (i, (b, q)) in bs.iter().zip(qx).enumerate() {
                        let mut w = nibbles(&b[QS..]);
                        if FIVE {
                            w = _mm256_or_si256(w, fifth_bits(&b[qh..]));
                        }
                        acc[i & 1] = fuse(acc[i & 1], $dp(w, load_x(q)), sc[i]);
                    }
                }
                let c = hsum(corr);
                hsum(_mm256_add_ps(acc[0], acc[1])) + if MIN { c } else { -off * c }
            }

            /// Q4_K, and Q5_K when `FIVE`.
            #[target_feature(enable = $feat)]
            fn q4_k<const FIVE: bool>(row: &[u8], a: ActRow<'_>) -> f32 {
                let bb = if FIVE { 176 } else { 144 };
                let qs0 = if FIVE { 48 } else { 16 };
                let low = _mm256_set1_epi8(15);
                let one = _mm256_set1_epi8(1);
                let mut acc = [_mm256_setzero_ps(); 2];
                let mut mins = 0f32;
                for (sb, b) in row.chunks_exact(bb).enumerate() {
                    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
                    let ai = 8 * sb;
                    let mut sc = [0f32; 8];
                    for (j, s) in sc.iter_mut().enumerate() {
                        let (scale, m) = scale_min_k4(j, &b[4..16]);
                        *s = d * f32::from(scale) * a.d[ai + j];
                        mins += dmin * f32::from(m) * a.s[ai + j];
                    }
                    let mut hb = if FIVE { load_u8x32(&b[16..]) } else { _mm256_setzero_si256() };
                    for c in 0..4 {
                        let q = load_u8x32(&b[qs0 + 32 * c..]);
                        let mut lo = _mm256_and_si256(q, low);
                        let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), low);
                        if FIVE {
                            lo = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(_mm256_and_si256(hb, one)));
                            hi = _mm256_or_si256(
                                hi,
                                _mm256_slli_epi16::<4>(_mm256_and_si256(_mm256_srli_epi16::<1>(hb), one)),
                            );
                            hb = _mm256_srli_epi16::<2>(hb);
                        }
                        acc[0] = fuse(acc[0], $dp(lo, load_x(&a.qs[ai + 2 * c])), sc[2 * c]);
                        acc[1] = fuse(acc[1], $dp(hi, load_x(&a.qs[ai + 2 * c + 1])), sc[2 * c + 1]);
                    }
                }
                hsum(_mm256_add_ps(acc[0], acc[1])) - mins
            }

            #[target_feature(enable = $feat)]
            fn q6_k(row: &[u8], a: ActRow<'_>) -> f32 {
                let low = _mm256_set1_epi8(15);
                let three = _mm256_set1_epi8(3);
                let off = _mm256_set1_epi8(32);
                let mut acc = [_mm256_setzero_ps(); 2];
                for (sb, b) in row.chunks_exact(210).enumerate() {
                    let d = f16_at(b, 208);
                    for h in 0..2 {
                        let ql = [load_u8x32(&b[64 * h..]), load_u8x32(&b[64 * h + 32..])];
                        let mut qh = load_u8x32(&b[128 + 32 * h..]);
                        for t in 0..4 {
                            let ai = 8 * sb + 4 * h + t;
                            let l = ql[t & 1];
                            let nib = if t < 2 {
                                _mm256_and_si256(l, low)
                            } else {
                                _mm256_and_si256(_mm256_srli_epi16::<4>(l), low)
                            };
                            let w = _mm256_or_si256(nib, _mm256_slli_epi16::<4>(_mm256_and_si256(qh, three)));
                            qh = _mm256_srli_epi16::<2>(qh);
                            let x = load_x(&a.qs[ai]);
                            let p = _mm256_sub_epi32($dp(w, x), $dp(off, x));
                            let dd = d * a.d[ai];
                            let s0 = dd * f32::from(b[192 + 8 * h + 2 * t] as i8);
                            let s1 = dd * f32::from(b[193 + 8 * h + 2 * t] as i8);
                            let sv = _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0));
                            acc[t & 1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sv, acc[t & 1]);
                        }
                    }
                }
                hsum(_mm256_add_ps(acc[0], acc[1]))
            }
        }
    };
}

/// `Σ u·x` over each group of four bytes, with AVX-512 VNNI.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
fn dp_vnni(u: __m256i, x: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, x)
}

/// `Σ u·x` over each group of four bytes, with AVX2 (exact while `u·x` pairs fit in `i16`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dp_avx2(u: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(u, x), _mm256_set1_epi16(1))
}

int8_kernels!(vnni, "avx2,fma,f16c,avx512vnni,avx512vl", dp_vnni);
int8_kernels!(avx2, "avx2,fma,f16c", dp_avx2);
