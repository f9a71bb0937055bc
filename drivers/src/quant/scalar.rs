//! Portable reference kernels for every weight format.
//!
//! De-quantisation repeats gguf-py's numpy arithmetic operation by operation (each product and
//! sum rounded to `f32`, nothing fused), so its output is bitwise equal to
//! `gguf.quants.dequantize`. The dot product de-quantises a stretch of the row into a stack
//! buffer and multiplies it with the activations in sixteen interleaved `f32` lanes, which the
//! compiler can vectorise on any target.

use half::{bf16, f16};

use super::kquants;
use crate::DType;

/// Values de-quantised per step of [`dot`]: a multiple of every block length.
const STEP: usize = 256;

/// Lanes of the interleaved accumulation in [`dot`].
const LANES: usize = 16;

/// Reads the little-endian `f16` at `b[off..off + 2]` as `f32`.
#[inline]
pub(super) fn f16_at(b: &[u8], off: usize) -> f32 {
    f16::from_le_bytes([b[off], b[off + 1]]).to_f32()
}

/// De-quantises whole blocks of `dtype` from `src` into `dst` (lengths checked by the caller).
pub(super) fn dequantize_row(dtype: DType, src: &[u8], dst: &mut [f32]) {
    let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
    let blocks = dst.chunks_exact_mut(bl).zip(src.chunks_exact(bb));
    match dtype {
        DType::F32 => blocks.for_each(|(d, b)| d[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        DType::F16 => blocks.for_each(|(d, b)| d[0] = f16::from_le_bytes([b[0], b[1]]).to_f32()),
        DType::BF16 => blocks.for_each(|(d, b)| d[0] = bf16::from_le_bytes([b[0], b[1]]).to_f32()),
        DType::Q8_0 => blocks.for_each(|(d, b)| q8_0(b, d)),
        DType::Q4_0 => blocks.for_each(|(d, b)| q4_0(b, d)),
        DType::Q4_1 => blocks.for_each(|(d, b)| q4_1(b, d)),
        DType::Q5_0 => blocks.for_each(|(d, b)| q5_0(b, d)),
        DType::Q5_1 => blocks.for_each(|(d, b)| q5_1(b, d)),
        DType::Q4K => blocks.for_each(|(d, b)| kquants::q4_k(b, d)),
        DType::Q5K => blocks.for_each(|(d, b)| kquants::q5_k(b, d)),
        DType::Q6K => blocks.for_each(|(d, b)| kquants::q6_k(b, d)),
        DType::U32 | DType::I64 => {
            debug_assert!(false, "quant: {dtype} is not a weight format");
            dst.fill(0.0);
        }
    }
}

/// Dots the row with `M` activation vectors by de-quantising [`STEP`] values at a time.
///
/// The sums for each vector are formed the same way whatever `M` is, so results do not depend
/// on how vectors are grouped.
pub(super) fn dot<const M: usize>(dtype: DType, row: &[u8], xs: [&[f32]; M]) -> [f32; M] {
    let n = xs.first().map_or(0, |x| x.len());
    assert!(xs.iter().all(|x| x.len() == n), "quant::dot: activation lengths differ");
    let step_bytes = STEP / dtype.block_len() * dtype.block_bytes();
    let mut buf = [0f32; STEP];
    let mut lanes = [[0f32; LANES]; M];
    for (s, src) in row.chunks(step_bytes).enumerate() {
        let start = s * STEP;
        let len = (n - start).min(STEP);
        let w = &mut buf[..len];
        dequantize_row(dtype, src, w);
        for (acc, x) in lanes.iter_mut().zip(&xs) {
            accumulate(acc, w, &x[start..start + len]);
        }
    }
    lanes.map(|acc| sum_lanes(&acc))
}

/// Adds `w[i] * x[i]` into `acc[i % LANES]`.
#[inline]
fn accumulate(acc: &mut [f32; LANES], w: &[f32], x: &[f32]) {
    let mut wc = w.chunks_exact(LANES);
    let mut xc = x.chunks_exact(LANES);
    for (wl, xl) in (&mut wc).zip(&mut xc) {
        for i in 0..LANES {
            acc[i] += wl[i] * xl[i];
        }
    }
    for (i, (a, b)) in wc.remainder().iter().zip(xc.remainder()).enumerate() {
        acc[i] += a * b;
    }
}

/// Sums the lanes pairwise.
fn sum_lanes(acc: &[f32; LANES]) -> f32 {
    let mut v = *acc;
    let mut width = LANES;
    while width > 1 {
        width /= 2;
        for i in 0..width {
            v[i] += v[i + width];
        }
    }
    v[0]
}

/// `block_q8_0`: `f16 d; i8 qs[32]`. Value `i` is `qs[i] * d`.
pub(super) fn q8_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    for (o, &q) in out.iter_mut().zip(&b[2..34]) {
        *o = f32::from(q as i8) * d;
    }
}

/// `block_q4_0`: `f16 d; u8 qs[16]`. Value `i < 16` is `d * ((qs[i] & 15) - 8)`, value
/// `i + 16` is `d * ((qs[i] >> 4) - 8)`.
pub(super) fn q4_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let (lo, hi) = out.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[2..18]) {
        *l = d * f32::from((q & 15) as i8 - 8);
        *h = d * f32::from((q >> 4) as i8 - 8);
    }
}

/// `block_q4_1`: `f16 d; f16 m; u8 qs[16]`. Value `i` is `d * q + m`, nibbles as in Q4_0.
pub(super) fn q4_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let (lo, hi) = out.split_at_mut(16);
    for ((l, h), &q) in lo.iter_mut().zip(hi).zip(&b[4..20]) {
        *l = d * f32::from(q & 15) + m;
        *h = d * f32::from(q >> 4) + m;
    }
}

/// The fifth bits of a Q5 block: bit `i` of the little-endian `u32` belongs to value `i`.
#[inline]
fn high_bits(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

/// `block_q5_0`: `f16 d; u8 qh[4]; u8 qs[16]`. Value `i` is `d * (q - 16)`, where `q` is the
/// nibble (as in Q4_0) with bit `i` of `qh` as its fifth bit.
pub(super) fn q5_0(b: &[u8], out: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = high_bits(b, 2);
    let (lo, hi) = out.split_at_mut(16);
    for (i, ((l, h), &q)) in lo.iter_mut().zip(hi).zip(&b[6..22]).enumerate() {
        let ql = (q & 15) | (((qh >> i) & 1) as u8) << 4;
        let qu = (q >> 4) | (((qh >> (i + 16)) & 1) as u8) << 4;
        *l = d * f32::from(ql as i8 - 16);
        *h = d * f32::from(qu as i8 - 16);
    }
}

/// `block_q5_1`: `f16 d; f16 m; u8 qh[4]; u8 qs[16]`. Value `i` is `d * q + m`, `q` as in Q5_0
/// without the offset.
pub(super) fn q5_1(b: &[u8], out: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = high_bits(b, 4);
    let (lo, hi) = out.split_at_mut(16);
    for (i, ((l, h), &q)) in lo.iter_mut().zip(hi).zip(&b[8..24]).enumerate() {
        let ql = (q & 15) | (((qh >> i) & 1) as u8) << 4;
        let qu = (q >> 4) | (((qh >> (i + 16)) & 1) as u8) << 4;
        *l = d * f32::from(ql) + m;
        *h = d * f32::from(qu) + m;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The scalar kernels against gguf-py's fixtures (written by
    /// `tests/gen_quant_fixtures.py`; `tests/quant_matches_gguf_py.rs` checks the public API,
    /// which may use SIMD kernels instead).
    #[test]
    fn matches_gguf_py_fixtures() {
        use DType::*;
        let formats = [
            ("f32", F32),
            ("f16", F16),
            ("bf16", BF16),
            ("q8_0", Q8_0),
            ("q4_0", Q4_0),
            ("q4_1", Q4_1),
            ("q5_0", Q5_0),
            ("q5_1", Q5_1),
            ("q4_k", Q4K),
            ("q5_k", Q5K),
            ("q6_k", Q6K),
        ];
        for (name, dtype) in formats {
            let path = format!("{}/tests/fixtures/quant/{name}.bin", env!("CARGO_MANIFEST_DIR"));
            let data = std::fs::read(&path).unwrap();
            let word = |i: usize| u32::from_le_bytes(data[i..i + 4].try_into().unwrap()) as usize;
            assert_eq!(&data[..4], b"GBQF");
            let (rows, n, has_source) = (word(8), word(12), word(16) & 1 == 1);
            let f32s = |b: &[u8]| -> Vec<f32> {
                b.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
            };
            let mut pos = 20;
            for r in 0..rows {
                pos += if has_source { 4 * n } else { 0 };
                let rb = dtype.row_bytes(n).unwrap();
                let bytes = &data[pos..pos + rb];
                let want = f32s(&data[pos + rb..pos + rb + 4 * n]);
                let x = f32s(&data[pos + rb + 4 * n..pos + rb + 8 * n]);
                let dot_ref = f64::from_le_bytes(data[pos + rb + 8 * n..][..8].try_into().unwrap());
                pos += rb + 8 * n + 8;

                let mut got = vec![0f32; n];
                dequantize_row(dtype, bytes, &mut got);
                assert!(
                    got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()),
                    "{name} row {r}: dequantisation differs from gguf-py"
                );
                let [dot] = dot(dtype, bytes, [&x]);
                assert!(
                    (f64::from(dot) - dot_ref).abs() <= 1e-4 * dot_ref.abs(),
                    "{name} row {r}: dot {dot} vs {dot_ref}"
                );
            }
            assert_eq!(pos, data.len(), "{name}");
        }
    }

    #[test]
    fn q4_0_nibble_order() {
        // d = 1.0; byte i holds low nibble i % 16 and high nibble 15 - i % 16.
        let mut b = vec![0x00, 0x3c];
        b.extend((0..16u8).map(|i| i | ((15 - i) << 4)));
        let mut out = [0f32; 32];
        q4_0(&b, &mut out);
        for i in 0..16 {
            assert_eq!(out[i], i as f32 - 8.0);
            assert_eq!(out[i + 16], 7.0 - i as f32);
        }
    }

    #[test]
    fn q5_0_high_bits() {
        // d = 1.0; all nibbles 0; fifth bits set for values 0 and 31 only.
        let mut b = vec![0x00, 0x3c, 0x01, 0x00, 0x00, 0x80];
        b.extend([0u8; 16]);
        let mut out = [0f32; 32];
        q5_0(&b, &mut out);
        assert_eq!(out[0], 0.0);
        assert_eq!(out[31], 0.0);
        assert!(out[1..31].iter().all(|&v| v == -16.0));
    }

    #[test]
    fn dot_handles_partial_steps() {
        let w: Vec<f32> = (0..300).map(|i| i as f32 * 0.5).collect();
        let x: Vec<f32> = (0..300).map(|i| 1.0 - i as f32 * 0.01).collect();
        let row: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
        let expect: f64 = w.iter().zip(&x).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
        let [got] = dot(DType::F32, &row, [&x]);
        assert!((f64::from(got) - expect).abs() < 1e-3 * expect.abs());
    }
}
