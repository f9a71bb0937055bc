//! AVX2 kernels for the 256-value K formats: Q4_K, Q5_K and Q6_K.
//!
//! A super-block is decoded as eight groups of 32 values. Each group's integers `q` become the
//! weights `w = q·scale - min` with one fused multiply-add (dot products) or with a separate
//! product and difference (de-quantisation, bitwise as gguf-py). The sub-block scales and mins
//! are unpacked once per super-block into small arrays and broadcast from there.

use std::arch::x86_64::*;
use std::hint::black_box;

use super::{G, add_group, groups, hsum, i8x16_to_f32, join, load_u8x8, load_u8x16, store_group, u8x16_to_f32};

/// Values per super-block.
const QK_K: usize = 256;

/// Groups of [`G`] values per super-block.
const GROUPS: usize = QK_K / G;

/// The eight 6-bit scales and mins of a Q4_K/Q5_K super-block (12 packed bytes at `s`), as two
/// little-endian `u64` of one byte per sub-block.
///
/// Word arithmetic on the layout described at [`super::super::kquants::scale_min_k4`]: the low
/// six bits of bytes 0..4 and 4..8 are scales and mins 0..4; scales and mins 4..8 take their
/// low nibble from bytes 8..12 and their top two bits from the top of bytes 0..4 and 4..8.
#[inline]
fn unpack_scales_mins(s: &[u8]) -> (u64, u64) {
    let word = |i: usize| u32::from_le_bytes([s[i], s[i + 1], s[i + 2], s[i + 3]]);
    let (w0, w1, w2) = (word(0), word(4), word(8));
    let low6 = 0x3f3f_3f3f;
    let nib = 0x0f0f_0f0f;
    let top2 = 0x3030_3030;
    let sc = (w0 & low6, (w2 & nib) | ((w0 >> 2) & top2));
    let mn = (w1 & low6, ((w2 >> 4) & nib) | ((w1 >> 2) & top2));
    let join = |(lo, hi): (u32, u32)| u64::from(lo) | (u64::from(hi) << 32);
    (join(sc), join(mn))
}

/// 8 bytes (one per lane, as a little-endian `u64`) times `d`, as `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale_bytes(bytes: u64, d: f32) -> [f32; 8] {
    let v = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_cvtsi64_si128(bytes as i64)));
    let mut out = [0f32; 8];
    super::store_f32(&mut out, _mm256_mul_ps(v, _mm256_set1_ps(d)));
    out
}

/// The two `f16` at the start of `b` (`d` and `dmin`) as `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16_pair(b: &[u8]) -> (f32, f32) {
    let bits = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// The sub-block scales `d·sc` and offsets `dmin·m` of a Q4_K/Q5_K super-block.
///
/// The arrays go through [`black_box`] so that they are kept in memory: the kernels broadcast
/// each entry with a plain load, where the compiler would otherwise shuffle it out of a
/// register on the port that the weights' unpacking needs.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn k4_scales(b: &[u8]) -> ([f32; 8], [f32; 8]) {
    let (d, dmin) = f16_pair(b);
    let (sc, mn) = unpack_scales_mins(&b[4..16]);
    (black_box(scale_bytes(sc, d)), black_box(scale_bytes(mn, dmin)))
}

/// The integer groups of chunk `c` (values `64c..64c + 64`) of a Q4_K/Q5_K super-block: the
/// low and high nibbles of the 32 bytes at `qs`, plus 16 where the fifth-bit bytes `qh` (if
/// any, already shifted right by `2c`) have bit 0 (low nibbles) or bit 1 (high nibbles) set.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k_chunk(qs: &[u8], qh: Option<[__m128i; 2]>) -> [[__m256; 4]; 2] {
    let m4 = _mm_set1_epi8(15);
    let a = load_u8x16(qs);
    let b = load_u8x16(&qs[16..]);
    let mut lo = [_mm_and_si128(a, m4), _mm_and_si128(b, m4)];
    let mut hi = [_mm_and_si128(_mm_srli_epi16::<4>(a), m4), _mm_and_si128(_mm_srli_epi16::<4>(b), m4)];
    if let Some(h) = qh {
        let (one, two) = (_mm_set1_epi8(1), _mm_set1_epi8(2));
        for i in 0..2 {
            // Bit 0 moved to bit 4, bit 1 to bit 4: within each byte, as the values are tiny.
            lo[i] = _mm_or_si128(lo[i], _mm_slli_epi16::<4>(_mm_and_si128(h[i], one)));
            hi[i] = _mm_or_si128(hi[i], _mm_slli_epi16::<3>(_mm_and_si128(h[i], two)));
        }
    }
    [join(u8x16_to_f32(lo[0]), u8x16_to_f32(lo[1])), join(u8x16_to_f32(hi[0]), u8x16_to_f32(hi[1]))]
}

/// Calls `f(group index in block, q, scale, min)` for the eight groups of a Q4_K
/// (`q5 == false`) or Q5_K super-block.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn k45_groups(b: &[u8], q5: bool, mut f: impl FnMut(usize, [__m256; 4], &f32, &f32)) {
    let (scales, mins) = k4_scales(b);
    let (qs, mut qh) =
        if q5 { (&b[48..176], Some([load_u8x16(&b[16..]), load_u8x16(&b[32..])])) } else { (&b[16..144], None) };
    for c in 0..4 {
        let [lo, hi] = k_chunk(&qs[32 * c..], qh);
        f(2 * c, lo, &scales[2 * c], &mins[2 * c]);
        f(2 * c + 1, hi, &scales[2 * c + 1], &mins[2 * c + 1]);
        qh = qh.map(|h| h.map(|h| _mm_srli_epi16::<2>(h)));
    }
}

/// Dot of a Q4_K (`q5 == false`) or Q5_K row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_k45<const B: usize, const M: usize>(row: &[u8], xs: [&[f32]; M], q5: bool) -> [f32; M] {
    let xg = groups(xs);
    let mut acc = [_mm256_setzero_ps(); M];
    for (i, b) in row.as_chunks::<B>().0.iter().enumerate() {
        k45_groups(b, q5, |g, q, sc, mn| {
            let (sc, mn) = (_mm256_broadcast_ss(sc), _mm256_broadcast_ss(mn));
            let w = q.map(|q| _mm256_fmsub_ps(q, sc, mn));
            add_group(&mut acc, &w, &xg, GROUPS * i + g);
        });
    }
    acc.map(|a| hsum(a))
}

/// De-quantises a Q4_K (`q5 == false`) or Q5_K row: `q * scale - min`, rounded twice.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dequant_k45<const B: usize>(src: &[u8], dst: &mut [f32], q5: bool) {
    for (b, o) in src.as_chunks::<B>().0.iter().zip(dst.as_chunks_mut::<QK_K>().0) {
        let (out, _) = o.as_chunks_mut::<G>();
        k45_groups(b, q5, |g, q, sc, mn| {
            let (sc, mn) = (_mm256_broadcast_ss(sc), _mm256_broadcast_ss(mn));
            store_group(&mut out[g], &q.map(|q| _mm256_sub_ps(_mm256_mul_ps(q, sc), mn)));
        });
    }
}

/// Calls `f(group index in block, w)` with the de-quantised groups of a Q6_K super-block.
///
/// Group `4h + t` (half `h`, quarter `t`) takes its low nibbles from
/// `ql[64h + 32 (t & 1)..][..32]` (low nibbles for `t < 2`, high otherwise) and its top two bits
/// from bits `2t..2t + 2` of `qh[32h..][..32]`; each 16 values share an `i8` scale.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6_groups(b: &[u8; 210], mut f: impl FnMut(usize, [__m256; 4])) {
    let d = _mm256_set1_ps(super::super::scalar::f16_at(b, 208));
    let sc = |o: usize| {
        let v = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(load_u8x8(&b[192 + o..])));
        _mm256_mul_ps(d, v)
    };
    let mut scales = [0f32; 16];
    super::store_f32(&mut scales[..8], sc(0));
    super::store_f32(&mut scales[8..], sc(8));
    // Kept in memory for plain broadcast loads, as in `k4_scales`.
    let scales = black_box(scales);
    let (m4, m2, off) = (_mm_set1_epi8(15), _mm_set1_epi8(3), _mm_set1_epi8(32));
    for h in 0..2 {
        let ql = &b[64 * h..64 * h + 64];
        let l = [0, 16, 32, 48].map(|o| load_u8x16(&ql[o..]));
        let mut qh = [load_u8x16(&b[128 + 32 * h..]), load_u8x16(&b[144 + 32 * h..])];
        for t in 0..4 {
            let mut q = [_mm_setzero_si128(); 2];
            for (i, q) in q.iter_mut().enumerate() {
                let low = l[2 * (t & 1) + i];
                let low = if t < 2 { low } else { _mm_srli_epi16::<4>(low) };
                let top = _mm_slli_epi16::<4>(_mm_and_si128(qh[i], m2));
                *q = _mm_sub_epi8(_mm_or_si128(_mm_and_si128(low, m4), top), off);
            }
            let s = 8 * h + 2 * t;
            let (sa, sb) = (_mm256_broadcast_ss(&scales[s]), _mm256_broadcast_ss(&scales[s + 1]));
            let [a, b] = q.map(|q| i8x16_to_f32(q));
            let w =
                [_mm256_mul_ps(a[0], sa), _mm256_mul_ps(a[1], sa), _mm256_mul_ps(b[0], sb), _mm256_mul_ps(b[1], sb)];
            f(4 * h + t, w);
            qh = qh.map(|h| _mm_srli_epi16::<2>(h));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points (called by `super::dot` and `super::dequantize_row`)

/// Dot kernel for Q4_K rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q4_k<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    dot_k45::<144, M>(row, xs, false)
}

/// Dot kernel for Q5_K rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q5_k<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    dot_k45::<176, M>(row, xs, true)
}

/// Dot kernel for Q6_K rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dot_q6_k<const M: usize>(row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    let xg = groups(xs);
    let mut acc = [_mm256_setzero_ps(); M];
    for (i, b) in row.as_chunks::<210>().0.iter().enumerate() {
        q6_groups(b, |g, w| add_group(&mut acc, &w, &xg, GROUPS * i + g));
    }
    acc.map(|a| hsum(a))
}

/// De-quantisation kernel for Q4_K rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dequant_q4_k(src: &[u8], dst: &mut [f32]) {
    dequant_k45::<144>(src, dst, false);
}

/// De-quantisation kernel for Q5_K rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dequant_q5_k(src: &[u8], dst: &mut [f32]) {
    dequant_k45::<176>(src, dst, true);
}

/// De-quantisation kernel for Q6_K rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dequant_q6_k(src: &[u8], dst: &mut [f32]) {
    for (b, o) in src.as_chunks::<210>().0.iter().zip(dst.as_chunks_mut::<QK_K>().0) {
        let (out, _) = o.as_chunks_mut::<G>();
        q6_groups(b, |g, w| store_group(&mut out[g], &w));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_unpacking_matches_get_scale_min_k4() {
        let mut state = 0x1234_5678_9abc_def0_u64;
        for _ in 0..1000 {
            let mut s = [0u8; 12];
            for b in &mut s {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                *b = (state >> 56) as u8;
            }
            let (sc, mn) = unpack_scales_mins(&s);
            for j in 0..8 {
                let want = super::super::super::kquants::scale_min_k4(j, &s);
                assert_eq!(((sc >> (8 * j)) as u8, (mn >> (8 * j)) as u8), want, "{s:?} j={j}");
            }
        }
    }
}
