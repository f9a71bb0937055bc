//! Helpers shared by the SIMD kernels' property tests (`x86::tests`, `neon::tests`): the
//! formats, random rows with finite scales, random activations, and the scale of rounding.

#![allow(clippy::unwrap_used)]

use half::{bf16, f16};
use rand::Rng;
use rand::rngs::StdRng;

use crate::DType;
use crate::quant::scalar;

/// Every weight format.
pub(super) const FORMATS: [DType; 11] = [
    DType::F32,
    DType::F16,
    DType::BF16,
    DType::Q8_0,
    DType::Q4_0,
    DType::Q4_1,
    DType::Q5_0,
    DType::Q5_1,
    DType::Q4K,
    DType::Q5K,
    DType::Q6K,
];

/// The formats with 8-bit-activation kernels.
pub(super) const INT8_FORMATS: [DType; 8] =
    [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1, DType::Q4K, DType::Q5K, DType::Q6K];

/// A random `f16` scale: mostly ±0.01..0.1, sometimes subnormal or zero.
pub(super) fn random_scale(rng: &mut StdRng) -> [u8; 2] {
    let bits = match rng.random_range(0..20) {
        0 => 0,
        1 => rng.random_range(1..0x400),
        _ => {
            let v = rng.random_range(0.01f32..0.1);
            f16::from_f32(if rng.random() { v } else { -v }).to_bits()
        }
    };
    bits.to_le_bytes()
}

/// Byte offsets of the `f16` scale fields of each block format.
pub(super) fn scale_offsets(dtype: DType) -> &'static [usize] {
    match dtype {
        DType::Q8_0 | DType::Q4_0 | DType::Q5_0 => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4K | DType::Q5K => &[0, 2],
        DType::Q6K => &[208],
        _ => &[],
    }
}

/// A random row of `n` values of `dtype`: random bytes with finite scales, or random floats.
pub(super) fn random_row(dtype: DType, n: usize, rng: &mut StdRng) -> Vec<u8> {
    match dtype {
        DType::F32 => (0..n).flat_map(|_| rng.random_range(-2f32..2.0).to_le_bytes()).collect(),
        DType::F16 => (0..n).flat_map(|_| f16::from_f32(rng.random_range(-2f32..2.0)).to_le_bytes()).collect(),
        DType::BF16 => (0..n).flat_map(|_| bf16::from_f32(rng.random_range(-2f32..2.0)).to_le_bytes()).collect(),
        _ => {
            let bytes = dtype.row_bytes(n).unwrap();
            let mut row: Vec<u8> = (0..bytes).map(|_| rng.random()).collect();
            for block in row.chunks_exact_mut(dtype.block_bytes()) {
                for &off in scale_offsets(dtype) {
                    block[off..off + 2].copy_from_slice(&random_scale(rng));
                }
            }
            row
        }
    }
}

pub(super) fn random_x(n: usize, rng: &mut StdRng) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1f32..1.0)).collect()
}

/// Σ|w·x| of the de-quantised row with `x`: the scale of the rounding differences.
pub(super) fn magnitude(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let mut w = vec![0f32; x.len()];
    scalar::dequantize_row(dtype, row, &mut w);
    w.iter().zip(x).map(|(a, b)| (a * b).abs()).sum()
}
