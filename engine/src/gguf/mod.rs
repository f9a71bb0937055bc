//! GGUF v3: the metadata and tensor directory of a llama.cpp model file.
//!
//! [`parse_gguf`] reads the header of a whole (mapped) file. Every count, length and offset is
//! checked against fixed caps and against the file's length before anything is allocated, so a
//! truncated or hostile file gives a [`GgufError`] that says what is wrong, never a panic or a
//! huge allocation. Tensor data is not copied: [`GgufTensorInfo::offset`] and
//! [`GgufTensorInfo::n_bytes`] locate it in the file.
//!
//! The layout (all little-endian): magic `GGUF`, `u32` version, `u64` tensor count, `u64`
//! key/value count, the key/value pairs, one directory entry per tensor, padding up to the
//! alignment, then the tensor data. Tensor offsets in the directory are relative to the start of
//! the data section.

use govbox_drivers::DType;

mod error;
mod read;
mod value;
pub mod writer;

pub use error::GgufError;
pub use read::parse_gguf;
pub use value::{GgufArray, GgufValue};

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// The only GGUF version govbox reads.
pub const GGUF_VERSION: u32 = 3;
/// Most tensors a file may declare. The largest real models have a few thousand.
pub const MAX_TENSORS: u64 = 65_536;
/// Most metadata key/value pairs a file may declare. Real files have well under a hundred.
pub const MAX_KVS: u64 = 1_048_576;
/// Longest string (key, value, tensor name or array element), in bytes. Chat templates, the
/// longest real strings, are tens of KiB.
pub const MAX_STRING_LEN: u64 = 1 << 20;
/// Most elements one metadata array may hold. Token lists are at most a few hundred thousand.
pub const MAX_ARRAY_LEN: u64 = 1 << 24;
/// Most dimensions a tensor may have (ggml's `GGML_MAX_DIMS`).
pub const MAX_DIMS: u32 = 4;
/// Data alignment when `general.alignment` is absent, as the GGUF specification says.
pub const DEFAULT_ALIGNMENT: usize = 32;

/// Metadata value type ids, as written in the file.
pub mod value_type {
    /// `u8`.
    pub const U8: u32 = 0;
    /// `i8`.
    pub const I8: u32 = 1;
    /// `u16`.
    pub const U16: u32 = 2;
    /// `i16`.
    pub const I16: u32 = 3;
    /// `u32`.
    pub const U32: u32 = 4;
    /// `i32`.
    pub const I32: u32 = 5;
    /// `f32`.
    pub const F32: u32 = 6;
    /// One byte, 0 or 1.
    pub const BOOL: u32 = 7;
    /// `u64` length, then UTF-8 bytes.
    pub const STRING: u32 = 8;
    /// `u32` element type, `u64` count, then the elements.
    pub const ARRAY: u32 = 9;
    /// `u64`.
    pub const U64: u32 = 10;
    /// `i64`.
    pub const I64: u32 = 11;
    /// `f64`.
    pub const F64: u32 = 12;
}

/// One entry of the tensor directory.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufTensorInfo {
    /// Tensor name (`blk.0.attn_q.weight`).
    pub name: String,
    /// Dimensions in GGUF (ggml `ne`) order: `dims[0]` is the innermost, contiguous one.
    pub dims: Vec<u64>,
    /// The ggml type id as written in the file.
    pub ggml_type: u32,
    /// The storage type.
    pub dtype: DType,
    /// Absolute offset of the data in the file.
    pub offset: u64,
    /// Length of the data in bytes.
    pub n_bytes: usize,
}

impl GgufTensorInfo {
    /// Row-major shape, outermost first (the dims reversed), as safetensors and PyTorch write it.
    pub fn shape(&self) -> Vec<usize> {
        // The parser checked that the product of the dims fits in usize, so each one does.
        self.dims.iter().rev().map(|&d| usize::try_from(d).unwrap_or(usize::MAX)).collect()
    }

    /// Number of values.
    pub fn n_elements(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A parsed GGUF header: metadata and tensor directory.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufFile {
    /// Format version (always [`GGUF_VERSION`]).
    pub version: u32,
    /// Metadata in file order. Keys are unique.
    pub metadata: Vec<(String, GgufValue)>,
    /// Tensor directory in file order. Names are unique.
    pub tensors: Vec<GgufTensorInfo>,
    /// Data alignment in bytes (`general.alignment`, default [`DEFAULT_ALIGNMENT`]).
    pub alignment: usize,
    /// Absolute offset of the data section.
    pub data_offset: usize,
}

impl GgufFile {
    /// A metadata value by key.
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }

    /// An integer value of any integer type, if it fits in `u32`.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        u32::try_from(self.get(key)?.as_u64()?).ok()
    }

    /// An integer value of any integer type, if it fits in `u64`.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }

    /// An integer value of any integer type, if it fits in `usize`.
    pub fn get_usize(&self, key: &str) -> Option<usize> {
        usize::try_from(self.get(key)?.as_u64()?).ok()
    }

    /// A float value (`f32`, `f64`, or an integer).
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get(key)?.as_f64().map(|v| v as f32)
    }

    /// A boolean value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }

    /// A string array.
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?.as_array()?.as_strs()
    }

    /// An integer array of any integer element type, if every element fits in `i32`.
    pub fn get_i32_array(&self, key: &str) -> Option<Vec<i32>> {
        let v = self.get(key)?.as_array()?.to_i64_vec()?;
        v.into_iter().map(|x| i32::try_from(x).ok()).collect()
    }

    /// An integer array of any integer element type, if every element fits in `u32`.
    pub fn get_u32_array(&self, key: &str) -> Option<Vec<u32>> {
        let v = self.get(key)?.as_array()?.to_i64_vec()?;
        v.into_iter().map(|x| u32::try_from(x).ok()).collect()
    }

    /// A float array (`f32` or `f64` elements).
    pub fn get_f32_array(&self, key: &str) -> Option<Vec<f32>> {
        match self.get(key)?.as_array()? {
            GgufArray::F32(v) => Some(v.clone()),
            GgufArray::F64(v) => Some(v.iter().map(|&x| x as f32).collect()),
            _ => None,
        }
    }

    /// A tensor's directory entry by name.
    pub fn tensor(&self, name: &str) -> Option<&GgufTensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// `general.architecture` (`llama`, `qwen2`, ...).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }
}

/// The storage type of a ggml type id, for the ids govbox computes with.
pub fn dtype_of_ggml_type(type_id: u32) -> Option<DType> {
    Some(match type_id {
        0 => DType::F32,
        1 => DType::F16,
        2 => DType::Q4_0,
        3 => DType::Q4_1,
        6 => DType::Q5_0,
        7 => DType::Q5_1,
        8 => DType::Q8_0,
        12 => DType::Q4K,
        13 => DType::Q5K,
        14 => DType::Q6K,
        30 => DType::BF16,
        _ => return None,
    })
}

/// The ggml type id of a storage type, when GGUF has one.
pub fn ggml_type_of_dtype(dtype: DType) -> Option<u32> {
    Some(match dtype {
        DType::F32 => 0,
        DType::F16 => 1,
        DType::Q4_0 => 2,
        DType::Q4_1 => 3,
        DType::Q5_0 => 6,
        DType::Q5_1 => 7,
        DType::Q8_0 => 8,
        DType::Q4K => 12,
        DType::Q5K => 13,
        DType::Q6K => 14,
        DType::BF16 => 30,
        _ => return None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::writer::{GgufWriter, f32_bytes};
    use super::*;

    fn small() -> GgufWriter {
        let mut w = GgufWriter::new();
        w.kv("general.architecture", GgufValue::String("llama".into()))
            .kv("llama.block_count", GgufValue::U32(2))
            .kv("small.i8", GgufValue::I8(-3))
            .kv("small.f64", GgufValue::F64(0.5))
            .kv("flag", GgufValue::Bool(true))
            .kv("tokens", GgufValue::Array(GgufArray::String(vec!["a".into(), "<|x|>".into()])))
            .kv("types", GgufValue::Array(GgufArray::I32(vec![1, 3])))
            .tensor("w", &[3, 2], 0, f32_bytes(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]))
            .tensor("q", &[32, 1], 8, vec![7u8; 34]);
        w
    }

    #[test]
    fn round_trips_metadata_and_tensors() {
        let bytes = small().to_bytes();
        let g = parse_gguf(&bytes).unwrap();
        assert_eq!(g.version, 3);
        assert_eq!(g.alignment, 32);
        assert_eq!(g.data_offset % 32, 0);
        assert_eq!(g.architecture(), Some("llama"));
        assert_eq!(g.get_u32("llama.block_count"), Some(2));
        assert_eq!(g.get_usize("llama.block_count"), Some(2));
        assert_eq!(g.get_u32("small.i8"), None, "negative values do not fit u32");
        assert_eq!(g.get_f32("small.f64"), Some(0.5));
        assert_eq!(g.get_bool("flag"), Some(true));
        assert_eq!(g.get_str_array("tokens"), Some(vec!["a", "<|x|>"]));
        assert_eq!(g.get_i32_array("types"), Some(vec![1, 3]));
        assert_eq!(g.get_u32_array("types"), Some(vec![1, 3]));
        let w = g.tensor("w").unwrap();
        assert_eq!(w.dims, vec![3, 2]);
        assert_eq!(w.shape(), vec![2, 3]);
        assert_eq!(w.dtype, DType::F32);
        assert_eq!(w.n_bytes, 24);
        let start = w.offset as usize;
        assert_eq!(&bytes[start..start + 4], &1.0f32.to_le_bytes());
        let q = g.tensor("q").unwrap();
        assert_eq!((q.dtype, q.n_bytes, q.offset % 32), (DType::Q8_0, 34, 0));
        assert_eq!(&bytes[q.offset as usize..q.offset as usize + 34], &[7u8; 34]);
    }

    #[test]
    fn every_truncation_fails_without_panicking() {
        let bytes = small().to_bytes();
        for n in 0..bytes.len() {
            assert!(parse_gguf(&bytes[..n]).is_err(), "prefix of {n} bytes parsed");
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let bytes = small().to_bytes();
        for i in 0..bytes.len() {
            for v in [0u8, 0x7f, 0xff] {
                let mut b = bytes.clone();
                b[i] = v;
                let _ = parse_gguf(&b);
            }
        }
    }

    #[test]
    fn custom_alignment_is_used_and_checked() {
        let mut w = GgufWriter::new();
        w.kv("general.alignment", GgufValue::U32(64)).tensor("t", &[4], 0, f32_bytes(&[0.0; 4]));
        let g = parse_gguf(&w.to_bytes()).unwrap();
        assert_eq!((g.alignment, g.data_offset % 64), (64, 0));

        let mut w = GgufWriter::new();
        w.kv("general.alignment", GgufValue::U32(48));
        let e = parse_gguf(&w.to_bytes()).unwrap_err();
        assert!(e.to_string().contains("48 is not a power of two"), "{e}");

        let mut w = GgufWriter::new();
        w.kv("general.alignment", GgufValue::String("32".into()));
        assert!(matches!(parse_gguf(&w.to_bytes()), Err(GgufError::BadAlignment { .. })));
    }

    #[test]
    fn rejects_bad_tensor_entries() {
        let check = |w: &GgufWriter, needle: &str| {
            let e = parse_gguf(&w.to_bytes()).unwrap_err().to_string();
            assert!(e.contains(needle), "expected '{needle}' in '{e}'");
            assert!(e.contains("'t'") || e.contains("'x'"), "error does not name the tensor: {e}");
        };
        let mut w = GgufWriter::new();
        w.tensor_at("t", &[1, 1, 1, 1, 1], 0, 0);
        check(&w, "5 dimensions");
        let mut w = GgufWriter::new();
        w.tensor_at("t", &[1 << 40, 1 << 40], 0, 0);
        check(&w, "overflows");
        let mut w = GgufWriter::new();
        w.tensor_at("t", &[48, 2], 8, 0);
        check(&w, "row length 48 is not a multiple of the q8_0 block size 32");
        let mut w = GgufWriter::new();
        w.tensor_at("t", &[4], 0, 8);
        check(&w, "misaligned offset 8");
        let mut w = GgufWriter::new();
        w.tensor_at("t", &[4], 0, u64::MAX - 31);
        check(&w, "beyond the end of the file");
        let mut w = GgufWriter::new();
        w.tensor_at("t", &[4], 16, 0);
        check(&w, "unknown/unsupported tensor type 16");
        let mut w = GgufWriter::new();
        w.tensor("x", &[4], 0, f32_bytes(&[0.0; 4])).tensor("x", &[4], 0, f32_bytes(&[0.0; 4]));
        check(&w, "duplicate tensor name");
    }

    #[test]
    fn rejects_bad_metadata() {
        let mut w = GgufWriter::new();
        w.kv("k", GgufValue::U8(1)).kv("k", GgufValue::U8(2));
        assert!(parse_gguf(&w.to_bytes()).unwrap_err().to_string().contains("duplicate metadata key 'k'"));

        // A string whose declared length is over the cap: rejected before reading it.
        let mut b = GgufWriter::new().to_bytes();
        b[16..24].copy_from_slice(&1u64.to_le_bytes());
        b.truncate(24);
        b.extend_from_slice(&(MAX_STRING_LEN + 1).to_le_bytes());
        assert!(matches!(parse_gguf(&b), Err(GgufError::StringTooLong { .. })));

        // An array whose declared length is over the cap.
        let mut w = GgufWriter::new();
        w.kv("arr", GgufValue::Array(GgufArray::U8(vec![1])));
        let mut b = w.to_bytes();
        let n = b.windows(8).position(|x| x == 1u64.to_le_bytes()).unwrap();
        let pos = b[n + 8..].windows(8).position(|x| x == 1u64.to_le_bytes()).unwrap() + n + 8;
        b[pos..pos + 8].copy_from_slice(&(MAX_ARRAY_LEN + 1).to_le_bytes());
        let e = parse_gguf(&b).unwrap_err().to_string();
        assert!(e.contains("array length") && e.contains("'arr'"), "{e}");

        // A huge in-cap array in a small file fails on truncation, without a huge allocation.
        b[pos..pos + 8].copy_from_slice(&MAX_ARRAY_LEN.to_le_bytes());
        assert!(matches!(parse_gguf(&b), Err(GgufError::Truncated { .. })));

        let mut b = small().to_bytes();
        let key = b"flag";
        let at = b.windows(4).position(|x| x == key).unwrap() + 4;
        b[at..at + 4].copy_from_slice(&99u32.to_le_bytes());
        assert!(parse_gguf(&b).unwrap_err().to_string().contains("unknown value type 99"));
    }

    #[test]
    fn version_and_magic_messages() {
        let mut w = GgufWriter::new();
        w.version(0x0300_0000);
        assert!(parse_gguf(&w.to_bytes()).unwrap_err().to_string().contains("big-endian"));
        w.version(7);
        assert!(parse_gguf(&w.to_bytes()).unwrap_err().to_string().contains("unknown GGUF version 7"));
        assert!(parse_gguf(b"GG").unwrap_err().to_string().contains("bad magic"));
    }

    #[test]
    fn maps_every_supported_type_both_ways() {
        for id in [0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 30] {
            let d = dtype_of_ggml_type(id).unwrap();
            assert_eq!(ggml_type_of_dtype(d), Some(id));
        }
        assert_eq!(dtype_of_ggml_type(4), None, "Q4_2 was removed from ggml");
    }
}
