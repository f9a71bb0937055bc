//! NEON kernels for aarch64: every weight format against `f32` activations (`simple` for the
//! float and 32-value block formats, `kquants` for the 256-value K formats), and the
//! 8-bit-activation kernels in `int8` (one build with the `dotprod` extension's `sdot`, one
//! with plain NEON multiply-accumulates for ARMv8.0 cores).
//!
//! Every kernel is a safe `#[target_feature(enable = "neon")]` function: the only `unsafe`
//! operations are the unaligned loads and stores in the helpers below, each on a slice whose
//! length was checked by indexing just before, and the register-only conversion instructions
//! written as inline assembly (their intrinsics are not stable Rust yet). Calling an entry point
//! is `unsafe` only because the CPU must have the features; [`dot`] and [`dequantize_row`] are
//! the two for `f32` activations.
//!
//! Each format has an integer decoder that turns a 32-value block (or a K format's 32-value
//! sub-block) into two `int8x16_t` (values 0..16 and 16..32), shared by the float kernels
//! (which widen them to eight `float32x4_t` and apply the scales) and the 8-bit ones (which
//! multiply them with the activation bytes). De-quantisation multiplies and adds without fusing,
//! as gguf-py does, and is bitwise equal to `scalar::dequantize_row`; the dot products fuse and
//! reorder the additions. The `M` activation vectors of [`dot`] are handled in the same pass
//! over the weights, and each vector's sum is formed exactly as for `M = 1`.

pub(super) mod int8;
mod kquants;
mod simple;

use std::arch::aarch64::*;
use std::arch::asm;

use crate::DType;

/// Values per register group: eight `float32x4_t`.
const G: usize = 32;

/// The 32 values of a group, four per register.
type Group = [float32x4_t; 8];

/// Dots one row with `M` activation vectors, each as long as the row has values.
///
/// # Safety
///
/// The CPU must support NEON (Advanced SIMD), which every aarch64 Linux CPU does. Lengths are
/// checked by the kernels (they panic on a mismatch), so they are not a safety condition.
pub(super) unsafe fn dot<const M: usize>(dtype: DType, row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    // SAFETY: the caller guarantees NEON, the only feature these kernels enable.
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

/// De-quantises whole blocks of `dtype` from `src` into `dst`, bitwise as the scalar reference.
///
/// # Safety
///
/// As for [`dot`].
pub(super) unsafe fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) {
    // SAFETY: the caller guarantees NEON, the only feature these kernels enable.
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

/// Loads 4 `f32` from the start of `x`.
#[inline]
#[target_feature(enable = "neon")]
fn load_f32(x: &[f32]) -> float32x4_t {
    let x = &x[..4];
    // SAFETY: `x` has 4 readable `f32` (the indexing above panics otherwise), and the pointer
    // of a `&[f32]` is aligned for `f32`.
    unsafe { vld1q_f32(x.as_ptr()) }
}

/// Stores 4 `f32` to the start of `out`.
#[inline]
#[target_feature(enable = "neon")]
fn store_f32(out: &mut [f32], v: float32x4_t) {
    let out = &mut out[..4];
    // SAFETY: `out` has 4 writable `f32` (the indexing above panics otherwise), and the pointer
    // of a `&mut [f32]` is aligned for `f32`.
    unsafe { vst1q_f32(out.as_mut_ptr(), v) }
}

/// Loads the first 16 bytes of `b`.
#[inline]
#[target_feature(enable = "neon")]
fn load_u8x16(b: &[u8]) -> uint8x16_t {
    let b = &b[..16];
    // SAFETY: `b` has 16 readable bytes (checked by the indexing above); bytes need no alignment.
    unsafe { vld1q_u8(b.as_ptr()) }
}

/// Loads the first 16 bytes of `b` as signed bytes.
#[inline]
#[target_feature(enable = "neon")]
fn load_i8x16(b: &[u8]) -> int8x16_t {
    vreinterpretq_s8_u8(load_u8x16(b))
}

/// Converts 8 `f16` (as bits) to `f32`, exactly (`FCVTL`/`FCVTL2`, part of base NEON).
///
/// NaNs come out quiet with their payload kept, as in the `half` crate's conversion.
#[inline]
#[target_feature(enable = "neon")]
fn f16x8_to_f32(h: uint16x8_t) -> [float32x4_t; 2] {
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: FCVTL/FCVTL2 are ARMv8.0 Advanced SIMD instructions (the `neon` feature enabled
    // here); they only read `h` and write the two output registers (`out`, so never `h`'s).
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack),
        );
    }
    [lo, hi]
}

/// Converts 4 `f16` (as bits) to `f32`, as [`f16x8_to_f32`] does.
#[inline]
#[target_feature(enable = "neon")]
fn f16x4_to_f32(bits: [u16; 4]) -> [f32; 4] {
    let h = vcreate_u16(
        u64::from(bits[0]) | u64::from(bits[1]) << 16 | u64::from(bits[2]) << 32 | u64::from(bits[3]) << 48,
    );
    let v: float32x4_t;
    // SAFETY: FCVTL is an ARMv8.0 Advanced SIMD instruction (the `neon` feature enabled here);
    // it only reads `h` and writes `v`.
    unsafe { asm!("fcvtl {v:v}.4s, {h:v}.4h", h = in(vreg) h, v = out(vreg) v, options(pure, nomem, nostack)) };
    let mut out = [0f32; 4];
    store_f32(&mut out, v);
    out
}

/// Reads the `f16` at byte `off` of each of up to 4 blocks, converted to `f32`.
#[inline]
#[target_feature(enable = "neon")]
fn scales4<const B: usize>(blocks: &[[u8; B]], off: usize) -> [f32; 4] {
    let mut bits = [0u16; 4];
    for (h, b) in bits.iter_mut().zip(blocks) {
        *h = u16::from_le_bytes([b[off], b[off + 1]]);
    }
    f16x4_to_f32(bits)
}

/// Sums the 4 lanes.
#[inline]
#[target_feature(enable = "neon")]
fn hsum(v: float32x4_t) -> f32 {
    vaddvq_f32(v)
}

/// Sign-extends 16 bytes to 16 `f32` in four registers.
#[inline]
#[target_feature(enable = "neon")]
fn i8x16_to_f32(v: int8x16_t) -> [float32x4_t; 4] {
    let (lo, hi) = (vmovl_s8(vget_low_s8(v)), vmovl_high_s8(v));
    [
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(lo))),
        vcvtq_f32_s32(vmovl_high_s16(lo)),
        vcvtq_f32_s32(vmovl_s16(vget_low_s16(hi))),
        vcvtq_f32_s32(vmovl_high_s16(hi)),
    ]
}

/// The 32 values of a block, as two registers of bytes, widened to a group of `f32`.
#[inline]
#[target_feature(enable = "neon")]
fn ints_to_group(q: [int8x16_t; 2]) -> Group {
    let [a, b] = q.map(|v| i8x16_to_f32(v));
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3]]
}

/// `Σ w[r] · x[4r..4r + 4]` over the eight registers of a group, as 4 lanes (two chains).
#[inline]
#[target_feature(enable = "neon")]
fn dot_group(w: &Group, x: &[f32; G]) -> float32x4_t {
    let mut p0 = vmulq_f32(w[0], load_f32(&x[0..]));
    let mut p1 = vmulq_f32(w[1], load_f32(&x[4..]));
    for r in (2..8).step_by(2) {
        p0 = vfmaq_f32(p0, w[r], load_f32(&x[4 * r..]));
        p1 = vfmaq_f32(p1, w[r + 1], load_f32(&x[4 * r + 4..]));
    }
    vaddq_f32(p0, p1)
}

/// Adds the dot of the weight group `w` with group `gi` of every activation vector.
#[inline]
#[target_feature(enable = "neon")]
fn add_group<const M: usize>(acc: &mut [float32x4_t; M], w: &Group, xs: &[&[[f32; G]]; M], gi: usize) {
    for (a, x) in acc.iter_mut().zip(xs) {
        *a = vaddq_f32(*a, dot_group(w, &x[gi]));
    }
}

/// Adds `d ·` the dot of the integer group `q` with group `gi` of every activation vector.
#[inline]
#[target_feature(enable = "neon")]
fn add_group_scaled<const M: usize>(acc: &mut [float32x4_t; M], q: &Group, d: f32, xs: &[&[[f32; G]]; M], gi: usize) {
    for (a, x) in acc.iter_mut().zip(xs) {
        *a = vfmaq_n_f32(*a, dot_group(q, &x[gi]), d);
    }
}

/// Stores the group `w` to `out`.
#[inline]
#[target_feature(enable = "neon")]
fn store_group(out: &mut [f32; G], w: &Group) {
    for (o, v) in out.chunks_exact_mut(4).zip(w) {
        store_f32(o, *v);
    }
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
