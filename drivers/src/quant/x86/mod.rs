//! SIMD kernels for x86-64, chosen at run time by the parent module: AVX2 + FMA + F16C for
//! every format (`simple`, `kquants`), and AVX-512 for the 4- and 5-bit formats (`avx512`),
//! where AVX2 cannot keep up with memory.
//!
//! Every kernel is a safe `#[target_feature]` function: the only `unsafe` operations are the
//! unaligned loads and stores in the helpers below, each reading or writing a slice whose
//! length was checked by indexing just before. Calling a kernel is `unsafe` only because the
//! CPU must have the features; [`dot`] and [`dequantize_row`] are the two entry points.
//!
//! The dot kernels work on groups of 32 values held in four `__m256` registers. For a group,
//! the partial dot `p = Σ w·x` is formed first and then added to the running accumulator (or
//! fused with the block scale), which keeps the loop-carried chain to one instruction per
//! group. The `M` activation vectors of [`dot`] are handled in the same pass over the weights,
//! and each vector's sum is formed exactly as for `M = 1`.
//!
//! On the target Xeon (one thread, weights in L2) the AVX-512 table lookup made Q4_0 about 1.6
//! times faster than AVX2, Q4_1 and Q4_K about 1.4 times. F32, F16, BF16 and Q8_0 are already
//! faster than memory with AVX2; Q6_K has no AVX-512 kernel yet.

/// Calls `$func::<F>($args)` for the tile format code `$f` (`tile::code`): the one place that
/// turns the code into the const parameter of a kernel. A macro so that `tile` and `panel`
/// both use it (defined before them, it is in their scope).
macro_rules! by_format {
    ($f:expr, $func:ident($($args:expr),*)) => {
        match $f {
            $crate::quant::x86::tile::Q8_0 => $func::<{ $crate::quant::x86::tile::Q8_0 }>($($args),*),
            $crate::quant::x86::tile::Q4_0 => $func::<{ $crate::quant::x86::tile::Q4_0 }>($($args),*),
            $crate::quant::x86::tile::Q4_1 => $func::<{ $crate::quant::x86::tile::Q4_1 }>($($args),*),
            $crate::quant::x86::tile::Q5_0 => $func::<{ $crate::quant::x86::tile::Q5_0 }>($($args),*),
            $crate::quant::x86::tile::Q5_1 => $func::<{ $crate::quant::x86::tile::Q5_1 }>($($args),*),
            $crate::quant::x86::tile::Q4K => $func::<{ $crate::quant::x86::tile::Q4K }>($($args),*),
            $crate::quant::x86::tile::Q5K => $func::<{ $crate::quant::x86::tile::Q5K }>($($args),*),
            _ => $func::<{ $crate::quant::x86::tile::Q6K }>($($args),*),
        }
    };
}

/// The panel kernels' loop over activation rows (`panel`, `packed`): for each group of up to 4
/// rows, `$call` with `$quad` bound to the group as an array (its length picks the micro-kernel),
/// `$res` to a zeroed `[[f32; 32]; 4]` it fills as `res[i][j]` (activation `i`, panel row `j`)
/// and `$first` to whether this is the first group (the one that reads the panel first); then the first `$nr` panel rows of `$res` go to `$out[(j0 + j) · m + i]`
/// (the transposed `[n, m]` layout), or, in the `rows:` form, to `$out[i · ld + j0 + j]` (row-major
/// `[m, ld]`: each activation row's results side by side, copied as one run).
macro_rules! by_quads {
    ($acts:expr, $out:expr, $m:expr, $j0:expr, $nr:expr, |$quad:ident, $res:ident, $first:ident| $call:expr) => {
        by_quads!(@groups $acts, |$quad, $res, $first| $call, |i0, group, res| {
            for j in 0..$nr {
                let o = &mut $out[($j0 + j) * $m + i0..($j0 + j) * $m + i0 + group.len()];
                for (i, v) in o.iter_mut().enumerate() {
                    *v = res[i][j];
                }
            }
        });
    };
    (rows: $acts:expr, $out:expr, $ld:expr, $j0:expr, $nr:expr, |$quad:ident, $res:ident, $first:ident| $call:expr) => {
        by_quads!(@groups $acts, |$quad, $res, $first| $call, |i0, group, res| {
            for (i, r) in res.iter().enumerate().take(group.len()) {
                let at = (i0 + i) * $ld + $j0;
                $out[at..at + $nr].copy_from_slice(&r[..$nr]);
            }
        });
    };
    (@groups $acts:expr, |$quad:ident, $res:ident, $first:ident| $call:expr, |$i0:ident, $group:ident, $r:ident| $store:block) => {
        for (q, $group) in $acts.chunks(4).enumerate() {
            let mut $res = [[0f32; 32]; 4];
            let $first = q == 0;
            match $group {
                [a] => {
                    let $quad = [*a];
                    $call
                }
                [a, b] => {
                    let $quad = [*a, *b];
                    $call
                }
                [a, b, c] => {
                    let $quad = [*a, *b, *c];
                    $call
                }
                [a, b, c, d] => {
                    let $quad = [*a, *b, *c, *d];
                    $call
                }
                _ => {}
            }
            let $i0 = q * 4;
            let $r = &$res;
            $store
        }
    };
}

mod avx512;
pub(super) mod int8;
mod kquants;
pub(super) mod ktile;
pub(super) mod packed;
mod packed_k;
pub(super) mod panel;
mod simple;
pub(super) mod tile;
pub(super) mod tile_avx2;

use std::arch::x86_64::*;

use crate::DType;

/// Values per register group.
const G: usize = 32;

/// Dots one row with `M` activation vectors, each as long as the row has values, using the
/// AVX-512 kernels where there are some when `avx512` is set.
///
/// # Safety
///
/// The CPU must support AVX2, FMA and F16C, and AVX-512F/BW/VL as well when `avx512` is set.
/// Lengths are checked by the kernels (they panic on a mismatch), so they are not a safety
/// condition.
pub(super) unsafe fn dot<const M: usize>(avx512: bool, dtype: DType, row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    if avx512 {
        // SAFETY: the caller guarantees AVX-512F/BW/VL, AVX2, FMA and F16C when `avx512` is
        // set, the only features these kernels enable.
        let done = unsafe {
            match dtype {
                DType::Q4_0 => Some(avx512::dot_q4_0(row, xs)),
                DType::Q4_1 => Some(avx512::dot_q4_1(row, xs)),
                DType::Q5_0 => Some(avx512::dot_q5_0(row, xs)),
                DType::Q5_1 => Some(avx512::dot_q5_1(row, xs)),
                DType::Q4K => Some(avx512::dot_q4_k(row, xs)),
                DType::Q5K => Some(avx512::dot_q5_k(row, xs)),
                _ => None,
            }
        };
        if let Some(out) = done {
            return out;
        }
    }
    // SAFETY: the caller guarantees AVX2, FMA and F16C, the only features these kernels enable.
    unsafe {
        match dtype {
            DType::F32 => simple::dot_f32(row, xs),
            DType::F16 => simple::dot_f16(row, xs),
            DType::BF16 => simple::dot_bf16(row, xs),
            DType::Q8_0 => simple::dot_q8_0(row, xs),
            DType::Q4_0 => simple::dot_q4_0(row, xs),
            DType::Q4_1 => simple::dot_q4_1(row, xs),
            DType::Q5_0 => simple::dot_q5_0(row, xs),
            DType::Q5_1 => simple::dot_q5_1(row, xs),
            DType::Q4K => kquants::dot_q4_k(row, xs),
            DType::Q5K => kquants::dot_q5_k(row, xs),
            DType::Q6K => kquants::dot_q6_k(row, xs),
            DType::U32 | DType::I64 => super::scalar::dot(dtype, row, xs),
        }
    }
}

/// De-quantises whole blocks of `dtype` from `src` into `dst`, bitwise as the scalar reference,
/// using the AVX-512 kernels where there are some when `avx512` is set.
///
/// # Safety
///
/// As for [`dot`].
pub(super) unsafe fn dequantize_row(avx512: bool, dtype: DType, src: &[u8], dst: &mut [f32]) {
    if avx512 {
        // SAFETY: the caller guarantees AVX-512F/BW/VL, AVX2, FMA and F16C when `avx512` is
        // set, the only features these kernels enable.
        unsafe {
            match dtype {
                DType::Q4_0 => return avx512::dequant_q4_0(src, dst),
                DType::Q4_1 => return avx512::dequant_q4_1(src, dst),
                DType::Q5_0 => return avx512::dequant_q5_0(src, dst),
                DType::Q5_1 => return avx512::dequant_q5_1(src, dst),
                DType::Q4K => return avx512::dequant_q4_k(src, dst),
                DType::Q5K => return avx512::dequant_q5_k(src, dst),
                _ => {}
            }
        }
    }
    // SAFETY: the caller guarantees AVX2, FMA and F16C, the only features these kernels enable.
    unsafe {
        match dtype {
            DType::F32 => simple::dequant_f32(src, dst),
            DType::F16 => simple::dequant_f16(src, dst),
            DType::BF16 => simple::dequant_bf16(src, dst),
            DType::Q8_0 => simple::dequant_q8_0(src, dst),
            DType::Q4_0 => simple::dequant_q4_0(src, dst),
            DType::Q4_1 => simple::dequant_q4_1(src, dst),
            DType::Q5_0 => simple::dequant_q5_0(src, dst),
            DType::Q5_1 => simple::dequant_q5_1(src, dst),
            DType::Q4K => kquants::dequant_q4_k(src, dst),
            DType::Q5K => kquants::dequant_q5_k(src, dst),
            DType::Q6K => kquants::dequant_q6_k(src, dst),
            DType::U32 | DType::I64 => super::scalar::dequantize_row(dtype, src, dst),
        }
    }
}

/// The activation vectors split into groups of [`G`] values (any tail is left out).
#[inline]
fn groups<const M: usize>(xs: [&[f32]; M]) -> [&[[f32; G]]; M] {
    xs.map(|x| x.as_chunks::<G>().0)
}

/// Loads 8 `f32` from the start of `x`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_f32(x: &[f32]) -> __m256 {
    let x = &x[..8];
    // SAFETY: `x` has 8 readable `f32` (the indexing above panics otherwise); the load has no
    // alignment requirement.
    unsafe { _mm256_loadu_ps(x.as_ptr()) }
}

/// Stores 8 `f32` to the start of `out`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_f32(out: &mut [f32], v: __m256) {
    let out = &mut out[..8];
    // SAFETY: `out` has 8 writable `f32` (the indexing above panics otherwise); the store has
    // no alignment requirement.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), v) }
}

/// Loads the first 8 bytes of `b` into the low half of a register.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x8(b: &[u8]) -> __m128i {
    let b = &b[..8];
    // SAFETY: `b` has 8 readable bytes (checked by the indexing above); no alignment needed.
    unsafe { _mm_loadl_epi64(b.as_ptr().cast()) }
}

/// Loads the first 16 bytes of `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x16(b: &[u8]) -> __m128i {
    let b = &b[..16];
    // SAFETY: `b` has 16 readable bytes (checked by the indexing above); no alignment needed.
    unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
}

/// Loads the first 32 bytes of `b`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn load_u8x32(b: &[u8]) -> __m256i {
    let b = &b[..32];
    // SAFETY: `b` has 32 readable bytes (checked by the indexing above); no alignment needed.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// Converts 8 little-endian `f16` values to `f32`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x8(bits: [u16; 8]) -> [f32; 8] {
    let mut out = [0f32; 8];
    // SAFETY: `bits` is 16 readable bytes and `out` 32 writable bytes; neither access needs
    // alignment.
    unsafe {
        let h = _mm_loadu_si128(bits.as_ptr().cast());
        _mm256_storeu_ps(out.as_mut_ptr(), _mm256_cvtph_ps(h));
    }
    out
}

/// Reads the `f16` at byte `off` of each of up to 8 blocks, converted to `f32`.
///
/// Converting the scales of 8 blocks with one instruction keeps the shuffle port free for the
/// weights; the kernels then broadcast each scale straight from memory.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales8<const B: usize>(blocks: &[[u8; B]], off: usize) -> [f32; 8] {
    let mut bits = [0u16; 8];
    for (h, b) in bits.iter_mut().zip(blocks) {
        *h = u16::from_le_bytes([b[off], b[off + 1]]);
    }
    f16x8(bits)
}

/// Broadcasts `*v` to all lanes (a load, no shuffle).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn splat(v: &f32) -> __m256 {
    _mm256_broadcast_ss(v)
}

/// Sums the 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// `Σ w[g] · x[8g..8g + 8]` over the four registers of a group, as 8 lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn dot_group(w: &[__m256; 4], x: &[f32; G]) -> __m256 {
    let p = _mm256_mul_ps(w[0], load_f32(&x[0..]));
    let p = _mm256_fmadd_ps(w[1], load_f32(&x[8..]), p);
    let p = _mm256_fmadd_ps(w[2], load_f32(&x[16..]), p);
    _mm256_fmadd_ps(w[3], load_f32(&x[24..]), p)
}

/// Adds the dot of the weight group `w` with group `gi` of every activation vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_group<const M: usize>(acc: &mut [__m256; M], w: &[__m256; 4], xs: &[&[[f32; G]]; M], gi: usize) {
    for (a, x) in acc.iter_mut().zip(xs) {
        *a = _mm256_add_ps(*a, dot_group(w, &x[gi]));
    }
}

/// Adds `d ·` the dot of the integer group `q` with group `gi` of every activation vector.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn add_group_scaled<const M: usize>(
    acc: &mut [__m256; M],
    q: &[__m256; 4],
    d: __m256,
    xs: &[&[[f32; G]]; M],
    gi: usize,
) {
    for (a, x) in acc.iter_mut().zip(xs) {
        *a = _mm256_fmadd_ps(d, dot_group(q, &x[gi]), *a);
    }
}

/// Stores the group `w` to `out`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn store_group(out: &mut [f32; G], w: &[__m256; 4]) {
    for (o, v) in out.chunks_exact_mut(8).zip(w) {
        store_f32(o, *v);
    }
}

/// Sign-extends 16 bytes to 16 `f32` in two registers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn i8x16_to_f32(v: __m128i) -> [__m256; 2] {
    [_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(v)), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_unpackhi_epi64(v, v)))]
}

/// Zero-extends 16 bytes to 16 `f32` in two registers.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn u8x16_to_f32(v: __m128i) -> [__m256; 2] {
    [_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(v)), _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_unpackhi_epi64(v, v)))]
}

/// Joins two pairs of registers into a group.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn join(a: [__m256; 2], b: [__m256; 2]) -> [__m256; 4] {
    [a[0], a[1], b[0], b[1]]
}

/// The scalar tail of a float row: `Σ w·x` over the values after the last whole group.
fn tail_dot(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let start = x.len() / G * G;
    if start == x.len() {
        return 0.0;
    }
    let [t] = super::scalar::dot(dtype, &row[start * dtype.block_bytes()..], [&x[start..]]);
    t
}

#[cfg(test)]
mod tests;
