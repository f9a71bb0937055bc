//! Quantisation of `f32` values into the simple round-to-nearest formats.
//!
//! Each quantiser repeats gguf-py's `gguf/quants.py` (itself bit-exact with llama.cpp's
//! `quantize_row_*_ref`) in `f32` arithmetic, operation by operation, so that the bytes match
//! exactly. The K formats use llama.cpp's iterative scale search, which is not implemented:
//! they give [`DriverError::DType`].

use half::f16;

use crate::{DType, DriverError};

const OP: &str = "quantize_row";

/// Quantises `src` to `dtype`, appending `dtype.row_bytes(src.len())` bytes to `dst`.
///
/// Supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0 and Q5_1, byte-for-byte as gguf-py's
/// `gguf.quants.quantize` (F16 and BF16 round to nearest even, BF16 quiets NaNs). Fails with
/// [`DriverError::Shape`] when `src.len()` is not a whole number of blocks and with
/// [`DriverError::DType`] for the K formats, U32 and I64. `dst` is left unchanged on error.
pub fn quantize_row(dtype: DType, src: &[f32], dst: &mut Vec<u8>) -> Result<(), DriverError> {
    let unsupported = || DriverError::DType { op: OP, dtype };
    if matches!(dtype, DType::Q4K | DType::Q5K | DType::Q6K | DType::U32 | DType::I64) {
        return Err(unsupported());
    }
    let bytes = dtype.row_bytes(src.len()).ok_or_else(|| DriverError::Shape {
        op: OP,
        detail: format!("{} values are not a whole number of {dtype} blocks of {}", src.len(), dtype.block_len()),
    })?;
    dst.reserve(bytes);
    let blocks = src.chunks_exact(dtype.block_len());
    match dtype {
        DType::F32 => src.iter().for_each(|v| dst.extend(v.to_le_bytes())),
        DType::F16 => src.iter().for_each(|&v| dst.extend(f16::from_f32(v).to_le_bytes())),
        DType::BF16 => src.iter().for_each(|&v| dst.extend(bf16_bits(v).to_le_bytes())),
        DType::Q8_0 => blocks.for_each(|b| q8_0(b, dst)),
        DType::Q4_0 => blocks.for_each(|b| q4_0(b, dst)),
        DType::Q4_1 => blocks.for_each(|b| q4_1(b, dst)),
        DType::Q5_0 => blocks.for_each(|b| q5_0(b, dst)),
        DType::Q5_1 => blocks.for_each(|b| q5_1(b, dst)),
        _ => return Err(unsupported()),
    }
    Ok(())
}

/// `f32` to bfloat16 bits, rounding to nearest even; NaNs become quiet NaNs
/// (ggml's `ggml_compute_fp32_to_bf16`).
fn bf16_bits(v: f32) -> u16 {
    let n = v.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        return ((n >> 16) | 64) as u16;
    }
    // Non-NaN inputs are at most 0xff80_0000, so the sum cannot overflow.
    ((n + 0x7fff + ((n >> 16) & 1)) >> 16) as u16
}

/// `1 / d`, or 0 when `d` is 0 (gguf-py's `np.where(d == 0, 0, 1 / d)`).
#[inline]
fn inverse(d: f32) -> f32 {
    if d == 0.0 { 0.0 } else { 1.0 / d }
}

/// The value of largest magnitude, the first one on ties (numpy's `argmax` of `abs`).
fn signed_absmax(b: &[f32]) -> f32 {
    let mut best = b[0];
    for &v in &b[1..] {
        if v.abs() > best.abs() {
            best = v;
        }
    }
    best
}

/// The smallest and largest value.
fn min_max(b: &[f32]) -> (f32, f32) {
    b.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)))
}

/// Packs 32 values of at most four bits as Q4 nibbles: value `i < 16` in the low nibble of
/// byte `i`, value `i + 16` in its high nibble.
fn push_nibbles(q: &[u8; 32], dst: &mut Vec<u8>) {
    dst.extend((0..16).map(|i| (q[i] & 15) | (q[i + 16] << 4)));
}

/// Packs the fifth bits of 32 values into the little-endian `u32` of a Q5 block.
fn push_high_bits(q: &[u8; 32], dst: &mut Vec<u8>) {
    let qh = q.iter().enumerate().fold(0u32, |acc, (i, &v)| acc | (u32::from(v >> 4) << i));
    dst.extend(qh.to_le_bytes());
}

/// Rounds half away from zero, as gguf-py's `np_roundf` (and C's `roundf`).
#[inline]
fn round_away(v: f32) -> f32 {
    v.round()
}

fn q8_0(b: &[f32], dst: &mut Vec<u8>) {
    let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    dst.extend(f16::from_f32(d).to_le_bytes());
    dst.extend(b.iter().map(|&v| round_away(v * id) as i8 as u8));
}

/// Shared by Q4_0 (`levels` 16) and Q5_0 (32): `d = max / -(levels / 2)` where `max` is the
/// signed value of largest magnitude, `q = trunc(v / d + levels / 2 + 0.5)` clamped.
fn symmetric(b: &[f32], levels: u8) -> (f32, [u8; 32]) {
    let half = f32::from(levels / 2);
    let d = signed_absmax(b) / -half;
    let id = inverse(d);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(b) {
        // `as u8` saturates; the value is in 0..=levels for finite input.
        *q = ((v * id + (half + 0.5)).trunc() as u8).min(levels - 1);
    }
    (d, q)
}

/// Shared by Q4_1 (`levels` 16) and Q5_1 (32): `d = (max - min) / (levels - 1)`,
/// `q = trunc((v - min) / d + 0.5)` clamped.
fn asymmetric(b: &[f32], levels: u8) -> (f32, f32, [u8; 32]) {
    let (min, max) = min_max(b);
    let d = (max - min) / f32::from(levels - 1);
    let id = inverse(d);
    let mut q = [0u8; 32];
    for (q, &v) in q.iter_mut().zip(b) {
        *q = (((v - min) * id + 0.5).trunc() as u8).min(levels - 1);
    }
    (d, min, q)
}

fn q4_0(b: &[f32], dst: &mut Vec<u8>) {
    let (d, q) = symmetric(b, 16);
    dst.extend(f16::from_f32(d).to_le_bytes());
    push_nibbles(&q, dst);
}

fn q4_1(b: &[f32], dst: &mut Vec<u8>) {
    let (d, m, q) = asymmetric(b, 16);
    dst.extend(f16::from_f32(d).to_le_bytes());
    dst.extend(f16::from_f32(m).to_le_bytes());
    push_nibbles(&q, dst);
}

fn q5_0(b: &[f32], dst: &mut Vec<u8>) {
    let (d, q) = symmetric(b, 32);
    dst.extend(f16::from_f32(d).to_le_bytes());
    push_high_bits(&q, dst);
    push_nibbles(&q, dst);
}

fn q5_1(b: &[f32], dst: &mut Vec<u8>) {
    let (d, m, q) = asymmetric(b, 32);
    dst.extend(f16::from_f32(d).to_le_bytes());
    dst.extend(f16::from_f32(m).to_le_bytes());
    push_high_bits(&q, dst);
    push_nibbles(&q, dst);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rejects_partial_blocks_and_k_formats() {
        let mut out = vec![7u8];
        assert!(matches!(quantize_row(DType::Q8_0, &[0.0; 31], &mut out), Err(DriverError::Shape { .. })));
        assert!(matches!(
            quantize_row(DType::Q4K, &[0.0; 256], &mut out),
            Err(DriverError::DType { dtype: DType::Q4K, .. })
        ));
        assert_eq!(out, [7]);
    }

    #[test]
    fn appends_whole_blocks() {
        let src: Vec<f32> = (0..64).map(|i| i as f32 - 20.0).collect();
        let mut out = vec![1u8, 2];
        quantize_row(DType::Q5_1, &src, &mut out).unwrap();
        assert_eq!(out.len(), 2 + 48);
        assert_eq!(&out[..2], &[1, 2]);
    }

    #[test]
    fn q4_0_round_trip_is_close() {
        let src: Vec<f32> = (0..32).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut q = Vec::new();
        quantize_row(DType::Q4_0, &src, &mut q).unwrap();
        let mut back = [0f32; 32];
        super::super::scalar::q4_0(&q, &mut back);
        for (a, b) in src.iter().zip(back) {
            assert!((a - b).abs() <= 1.0 / 8.0 + 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        assert_eq!(bf16_bits(f32::from_bits(0x3f80_8000)), 0x3f80);
        assert_eq!(bf16_bits(f32::from_bits(0x3f81_8000)), 0x3f82);
        assert_eq!(bf16_bits(f32::from_bits(0x7f80_0001)), 0x7fc0);
    }
}
