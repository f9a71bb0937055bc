//! The weight formats agree with gguf-py, the reference numpy implementation of GGUF.
//!
//! The fixtures in `tests/fixtures/quant/` are written by `tests/gen_quant_fixtures.py` (see
//! its docstring for the layout) from `gguf.quants.quantize` / `gguf.quants.dequantize`. For
//! each format this checks that:
//!
//! * `dequantize_row` gives gguf-py's values (within 1e-6 relative, per value; in practice
//!   bitwise);
//! * `vec_dot` is within 1e-4 relative of the float64 dot product of gguf-py's values with the
//!   activations;
//! * `vec_dot_multi` gives exactly `vec_dot`'s results;
//! * `quantize_row` reproduces gguf-py's bytes exactly, for the formats gguf-py quantises.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;

use govbox_drivers::DType;
use govbox_drivers::quant::{dequantize_row, quantize_row, vec_dot, vec_dot_multi};

/// One row of a fixture file.
struct Row {
    /// The `f32` values gguf-py quantised, when it could.
    source: Option<Vec<f32>>,
    /// The quantised row.
    bytes: Vec<u8>,
    /// gguf-py's de-quantised values.
    values: Vec<f32>,
    /// Random activations.
    x: Vec<f32>,
    /// The float64 dot product of `values` and `x`.
    dot: f64,
}

/// A little-endian reader over a fixture file.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        s
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take(4).try_into().unwrap())
    }
    fn f32s(&mut self, n: usize) -> Vec<f32> {
        self.take(4 * n).chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
    }
    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take(8).try_into().unwrap())
    }
}

fn load(name: &str, dtype: DType) -> Vec<Row> {
    let path: PathBuf =
        [env!("CARGO_MANIFEST_DIR"), "tests", "fixtures", "quant", &format!("{name}.bin")].iter().collect();
    let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut r = Reader { data: &data, pos: 0 };
    assert_eq!(r.take(4), b"GBQF", "{name}: bad magic");
    assert_eq!(r.u32(), 1, "{name}: unknown version");
    let (rows, len, flags) = (r.u32() as usize, r.u32() as usize, r.u32());
    let row_bytes = dtype.row_bytes(len).unwrap();
    let rows = (0..rows)
        .map(|_| Row {
            source: (flags & 1 == 1).then(|| r.f32s(len)),
            bytes: r.take(row_bytes).to_vec(),
            values: r.f32s(len),
            x: r.f32s(len),
            dot: r.f64(),
        })
        .collect();
    assert_eq!(r.pos, data.len(), "{name}: trailing bytes");
    rows
}

fn check_format(name: &str, dtype: DType) {
    let rows = load(name, dtype);
    assert!(!rows.is_empty());
    for (i, row) in rows.iter().enumerate() {
        let n = row.values.len();

        let mut got = vec![f32::NAN; n];
        dequantize_row(dtype, &row.bytes, &mut got);
        for (j, (g, w)) in got.iter().zip(&row.values).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs(), "{name} row {i} value {j}: dequantize_row gave {g}, gguf-py {w}");
        }

        let dot = f64::from(vec_dot(dtype, &row.bytes, &row.x));
        let sum_abs: f64 = row.values.iter().zip(&row.x).map(|(w, x)| f64::from(w * x).abs()).sum();
        // Relative to the reference dot; a dot that cancels to almost nothing is judged against
        // the size of its terms instead.
        let tol = 1e-4 * row.dot.abs().max(1e-3 * sum_abs);
        assert!(
            (dot - row.dot).abs() <= tol,
            "{name} row {i}: vec_dot gave {dot}, reference {} (tolerance {tol})",
            row.dot
        );

        // Six vectors: one full group of four and a group of two.
        let xs: Vec<&[f32]> = rows.iter().chain(&rows).map(|r| r.x.as_slice()).take(6).collect();
        let flat: Vec<f32> = xs.concat();
        let mut multi = vec![f32::NAN; xs.len()];
        vec_dot_multi(dtype, &row.bytes, &flat, n, &mut multi);
        for (j, (m, x)) in multi.iter().zip(&xs).enumerate() {
            let single = vec_dot(dtype, &row.bytes, x);
            assert_eq!(m.to_bits(), single.to_bits(), "{name} row {i}: vec_dot_multi[{j}] {m} vs vec_dot {single}");
        }

        if let Some(source) = &row.source {
            let mut bytes = Vec::new();
            quantize_row(dtype, source, &mut bytes).unwrap();
            assert_eq!(bytes.len(), row.bytes.len(), "{name} row {i}: quantize_row length");
            if let Some(at) = bytes.iter().zip(&row.bytes).position(|(a, b)| a != b) {
                let block = at / dtype.block_bytes();
                panic!(
                    "{name} row {i}: quantize_row differs from gguf-py at byte {at} (block {block}): {:?} vs {:?}",
                    &bytes[block * dtype.block_bytes()..(block + 1) * dtype.block_bytes()],
                    &row.bytes[block * dtype.block_bytes()..(block + 1) * dtype.block_bytes()],
                );
            }
        }
    }
}

#[test]
fn f32_matches() {
    check_format("f32", DType::F32);
}

#[test]
fn f16_matches() {
    check_format("f16", DType::F16);
}

#[test]
fn bf16_matches() {
    check_format("bf16", DType::BF16);
}

#[test]
fn q8_0_matches() {
    check_format("q8_0", DType::Q8_0);
}

#[test]
fn q4_0_matches() {
    check_format("q4_0", DType::Q4_0);
}

#[test]
fn q4_1_matches() {
    check_format("q4_1", DType::Q4_1);
}

#[test]
fn q5_0_matches() {
    check_format("q5_0", DType::Q5_0);
}

#[test]
fn q5_1_matches() {
    check_format("q5_1", DType::Q5_1);
}

#[test]
fn q4_k_matches() {
    check_format("q4_k", DType::Q4K);
}

#[test]
fn q5_k_matches() {
    check_format("q5_k", DType::Q5K);
}

#[test]
fn q6_k_matches() {
    check_format("q6_k", DType::Q6K);
}

#[test]
fn k_formats_cannot_be_quantised() {
    for dtype in [DType::Q4K, DType::Q5K, DType::Q6K, DType::U32] {
        let mut out = Vec::new();
        assert!(quantize_row(dtype, &[0.0; 256], &mut out).is_err(), "{dtype}");
        assert!(out.is_empty());
    }
}
