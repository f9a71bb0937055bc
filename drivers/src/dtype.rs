//! Element and block types of tensors, with their storage sizes.

use std::fmt;

/// The storage type of a tensor.
///
/// Activations are always [`DType::F32`]. Weights may use any of these. The block formats are
/// GGUF's (llama.cpp's `ggml_type`): a row of `k` values is stored as `k / block_len()` blocks of
/// `block_bytes()` bytes each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    /// IEEE binary32.
    F32,
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// 32 values: f16 scale, 32 × i8.
    Q8_0,
    /// 32 values: f16 scale, 16 bytes of 4-bit values (offset 8).
    Q4_0,
    /// 32 values: f16 scale, f16 min, 16 bytes of 4-bit values.
    Q4_1,
    /// 32 values: f16 scale, 4 bytes of high bits, 16 bytes of low nibbles (offset 16).
    Q5_0,
    /// 32 values: f16 scale, f16 min, 4 bytes of high bits, 16 bytes of low nibbles.
    Q5_1,
    /// 256 values: f16 d, f16 dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles.
    Q4K,
    /// 256 values: f16 d, f16 dmin, 12 bytes of scales/mins, 32 bytes high bits, 128 bytes nibbles.
    Q5K,
    /// 256 values: 128 bytes low nibbles, 64 bytes high 2 bits, 16 × i8 scales, f16 d.
    Q6K,
    /// Unsigned 32-bit integers (token ids).
    U32,
    /// Signed 64-bit integers (only ever read from files, never computed with).
    I64,
}

impl DType {
    /// How many values one block holds (1 for plain element types).
    pub const fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 | DType::U32 | DType::I64 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 | DType::Q5_0 | DType::Q5_1 => 32,
            DType::Q4K | DType::Q5K | DType::Q6K => 256,
        }
    }

    /// How many bytes one block takes.
    pub const fn block_bytes(self) -> usize {
        match self {
            DType::F32 | DType::U32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I64 => 8,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q5_0 => 22,
            DType::Q5_1 => 24,
            DType::Q4K => 144,
            DType::Q5K => 176,
            DType::Q6K => 210,
        }
    }

    /// Whether this is a GGUF block-quantised format.
    pub const fn is_quantized(self) -> bool {
        self.block_len() > 1
    }

    /// Bytes needed for a row of `n` values, or `None` when `n` is not a whole number of blocks.
    pub const fn row_bytes(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_len()) {
            return None;
        }
        Some(n / self.block_len() * self.block_bytes())
    }

    /// Bytes a tensor of `shape` takes in this type, or `None` when its rows (the last
    /// dimension) are not whole blocks or the size overflows. The empty shape is one value.
    pub fn bytes_for(self, shape: &[usize]) -> Option<usize> {
        let count = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d))?;
        let last = shape.last().copied().unwrap_or(1);
        if last == 0 {
            return Some(0);
        }
        self.row_bytes(last)?.checked_mul(count / last)
    }

    /// The lower-case name used in GGUF tooling and in our CLI output.
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q5_0 => "q5_0",
            DType::Q5_1 => "q5_1",
            DType::Q4K => "q4_K",
            DType::Q5K => "q5_K",
            DType::Q6K => "q6_K",
            DType::U32 => "u32",
            DType::I64 => "i64",
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_bytes_requires_whole_blocks() {
        assert_eq!(DType::Q8_0.row_bytes(64), Some(68));
        assert_eq!(DType::Q8_0.row_bytes(48), None);
        assert_eq!(DType::Q6K.row_bytes(512), Some(420));
        assert_eq!(DType::F16.row_bytes(3), Some(6));
    }

    #[test]
    fn bytes_for_counts_whole_rows_and_refuses_partial_blocks_and_overflow() {
        assert_eq!(DType::Q8_0.bytes_for(&[3, 64]), Some(3 * 68));
        assert_eq!(DType::F32.bytes_for(&[2, 3, 4]), Some(96));
        assert_eq!(DType::F32.bytes_for(&[]), Some(4));
        assert_eq!(DType::Q8_0.bytes_for(&[5, 0]), Some(0));
        assert_eq!(DType::Q8_0.bytes_for(&[1, 33]), None);
        assert_eq!(DType::F32.bytes_for(&[usize::MAX, 2]), None);
        assert_eq!(DType::F32.bytes_for(&[usize::MAX / 2, 1]), None);
    }
}
