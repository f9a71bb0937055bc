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

use std::collections::HashSet;

use govbox_drivers::DType;

use crate::EngineError;

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

/// Why a GGUF file was refused. Each message names what is wrong, and the tensor or key where
/// there is one.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum GgufError {
    /// The file does not start with `GGUF`.
    #[error("not a GGUF file: bad magic {found:?} (expected \"GGUF\")")]
    BadMagic {
        /// The first bytes of the file, escaped.
        found: String,
    },
    /// The file is a GGUF version other than 3.
    #[error("{}", version_message(*version))]
    UnsupportedVersion {
        /// The version field as read (little-endian).
        version: u32,
    },
    /// The file ends in the middle of something.
    #[error("truncated file: {what} needs {needed} bytes at offset {offset}, but the file is {file_len} bytes")]
    Truncated {
        /// What was being read.
        what: String,
        /// Where it starts.
        offset: usize,
        /// How many bytes it needs.
        needed: u64,
        /// The file's length.
        file_len: usize,
    },
    /// The tensor count is over [`MAX_TENSORS`].
    #[error("absurd tensor count {count} (the limit is {MAX_TENSORS})")]
    TooManyTensors {
        /// The count declared.
        count: u64,
    },
    /// The key/value count is over [`MAX_KVS`].
    #[error("absurd metadata key/value (KV) count {count} (the limit is {MAX_KVS})")]
    TooManyKvs {
        /// The count declared.
        count: u64,
    },
    /// A string is longer than [`MAX_STRING_LEN`].
    #[error("{what}: string length {len} exceeds the limit of {MAX_STRING_LEN} bytes")]
    StringTooLong {
        /// Which string.
        what: String,
        /// Its declared length.
        len: u64,
    },
    /// A string is not UTF-8.
    #[error("{what}: string is not valid UTF-8")]
    BadUtf8 {
        /// Which string.
        what: String,
    },
    /// A metadata array is longer than [`MAX_ARRAY_LEN`].
    #[error("metadata key '{key}': array length {len} exceeds the limit of {MAX_ARRAY_LEN} elements")]
    ArrayTooLong {
        /// The key.
        key: String,
        /// Its declared length.
        len: u64,
    },
    /// A metadata value has a type id that GGUF does not define, or an array holds arrays.
    #[error("metadata key '{key}': {detail}")]
    BadValueType {
        /// The key.
        key: String,
        /// What is wrong.
        detail: String,
    },
    /// The same metadata key appears twice.
    #[error("duplicate metadata key '{key}'")]
    DuplicateKey {
        /// The key.
        key: String,
    },
    /// `general.alignment` is not a power of two (or not an integer).
    #[error("general.alignment: {detail}")]
    BadAlignment {
        /// What is wrong.
        detail: String,
    },
    /// The same tensor name appears twice.
    #[error("duplicate tensor name '{tensor}'")]
    DuplicateTensor {
        /// The name.
        tensor: String,
    },
    /// A tensor's dimensions are unusable: too many, or their product overflows.
    #[error("tensor '{tensor}': {detail}")]
    BadDims {
        /// The tensor.
        tensor: String,
        /// What is wrong.
        detail: String,
    },
    /// A tensor's ggml type is unknown or one govbox does not compute with.
    #[error("tensor '{tensor}': unknown/unsupported tensor type {type_id}")]
    UnsupportedType {
        /// The tensor.
        tensor: String,
        /// The ggml type id.
        type_id: u32,
    },
    /// A quantised tensor's rows are not a whole number of blocks.
    #[error("tensor '{tensor}': row length {row_len} is not a multiple of the {dtype} block size {block}")]
    PartialBlock {
        /// The tensor.
        tensor: String,
        /// Values per row (`dims[0]`).
        row_len: u64,
        /// The type.
        dtype: DType,
        /// Values per block.
        block: usize,
    },
    /// A tensor's offset is not a multiple of the alignment.
    #[error("tensor '{tensor}': misaligned offset {offset} (not a multiple of the alignment {alignment})")]
    Misaligned {
        /// The tensor.
        tensor: String,
        /// Its offset, relative to the data section.
        offset: u64,
        /// The file's alignment.
        alignment: usize,
    },
    /// A tensor's data runs past the end of the file.
    #[error(
        "tensor '{tensor}': data [{start}, {end}) lies beyond the end of the file ({file_len} bytes; truncated file?)"
    )]
    BeyondEof {
        /// The tensor.
        tensor: String,
        /// Absolute start offset.
        start: u64,
        /// Absolute end offset (exclusive), saturated on overflow.
        end: u64,
        /// The file's length.
        file_len: usize,
    },
}

fn version_message(version: u32) -> String {
    match version {
        1 | 2 => format!(
            "GGUF version {version} is not supported: only version 3 is (re-convert the model with a current llama.cpp)"
        ),
        v if v.swap_bytes() == GGUF_VERSION => {
            "big-endian GGUF files are not supported: only little-endian version 3 is".to_string()
        }
        v => format!("unknown GGUF version {v}: only version 3 is supported"),
    }
}

impl GgufError {
    /// A stable short code for metrics and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            GgufError::BadMagic { .. } => "gguf_bad_magic",
            GgufError::UnsupportedVersion { .. } => "gguf_unsupported_version",
            GgufError::Truncated { .. } => "gguf_truncated",
            GgufError::TooManyTensors { .. } | GgufError::TooManyKvs { .. } => "gguf_count_limit",
            GgufError::StringTooLong { .. } | GgufError::ArrayTooLong { .. } => "gguf_length_limit",
            GgufError::BadUtf8 { .. } => "gguf_bad_utf8",
            GgufError::BadValueType { .. } => "gguf_bad_value_type",
            GgufError::DuplicateKey { .. } => "gguf_duplicate_key",
            GgufError::BadAlignment { .. } => "gguf_bad_alignment",
            GgufError::DuplicateTensor { .. } => "gguf_duplicate_tensor",
            GgufError::BadDims { .. } => "gguf_bad_dims",
            GgufError::UnsupportedType { .. } => "gguf_unsupported_type",
            GgufError::PartialBlock { .. } => "gguf_partial_block",
            GgufError::Misaligned { .. } => "gguf_misaligned",
            GgufError::BeyondEof { .. } => "gguf_beyond_eof",
        }
    }

    /// The engine error for this failure in `file`.
    pub fn in_file(self, file: &str) -> EngineError {
        EngineError::Format { file: file.to_string(), detail: self.to_string() }
    }
}

/// One metadata value.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum GgufValue {
    /// `u8`.
    U8(u8),
    /// `i8`.
    I8(i8),
    /// `u16`.
    U16(u16),
    /// `i16`.
    I16(i16),
    /// `u32`.
    U32(u32),
    /// `i32`.
    I32(i32),
    /// `f32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// UTF-8 string.
    String(String),
    /// An array of one element type.
    Array(GgufArray),
    /// `u64`.
    U64(u64),
    /// `i64`.
    I64(i64),
    /// `f64`.
    F64(f64),
}

/// A metadata array, stored by element type so that a 150,000-entry token list costs one
/// `String` per entry and a token-type list four bytes per entry.
///
/// GGUF allows arrays of arrays; no model uses them and llama.cpp refuses them, so the parser
/// does too.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum GgufArray {
    /// `u8` elements.
    U8(Vec<u8>),
    /// `i8` elements.
    I8(Vec<i8>),
    /// `u16` elements.
    U16(Vec<u16>),
    /// `i16` elements.
    I16(Vec<i16>),
    /// `u32` elements.
    U32(Vec<u32>),
    /// `i32` elements.
    I32(Vec<i32>),
    /// `f32` elements.
    F32(Vec<f32>),
    /// `bool` elements.
    Bool(Vec<bool>),
    /// String elements.
    String(Vec<String>),
    /// `u64` elements.
    U64(Vec<u64>),
    /// `i64` elements.
    I64(Vec<i64>),
    /// `f64` elements.
    F64(Vec<f64>),
}

impl GgufValue {
    /// The GGUF name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            GgufValue::U8(_) => "u8",
            GgufValue::I8(_) => "i8",
            GgufValue::U16(_) => "u16",
            GgufValue::I16(_) => "i16",
            GgufValue::U32(_) => "u32",
            GgufValue::I32(_) => "i32",
            GgufValue::F32(_) => "f32",
            GgufValue::Bool(_) => "bool",
            GgufValue::String(_) => "string",
            GgufValue::Array(_) => "array",
            GgufValue::U64(_) => "u64",
            GgufValue::I64(_) => "i64",
            GgufValue::F64(_) => "f64",
        }
    }

    /// The value as a signed integer, for any integer type whose value fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::U64(v) => i64::try_from(v).ok(),
            GgufValue::I64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as an unsigned integer, for any integer type whose value is not negative.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U64(v) => Some(v),
            _ => self.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }

    /// The value as a float, for float and integer types.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            GgufValue::U64(v) => Some(v as f64),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The string, if this is one.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The boolean, if this is one.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The array, if this is one.
    pub fn as_array(&self) -> Option<&GgufArray> {
        match self {
            GgufValue::Array(a) => Some(a),
            _ => None,
        }
    }
}

impl GgufArray {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            GgufArray::U8(v) => v.len(),
            GgufArray::I8(v) => v.len(),
            GgufArray::U16(v) => v.len(),
            GgufArray::I16(v) => v.len(),
            GgufArray::U32(v) => v.len(),
            GgufArray::I32(v) => v.len(),
            GgufArray::F32(v) => v.len(),
            GgufArray::Bool(v) => v.len(),
            GgufArray::String(v) => v.len(),
            GgufArray::U64(v) => v.len(),
            GgufArray::I64(v) => v.len(),
            GgufArray::F64(v) => v.len(),
        }
    }

    /// Whether the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The elements as signed integers, for any integer element type; `None` for other types or
    /// when a `u64` element does not fit.
    pub fn to_i64_vec(&self) -> Option<Vec<i64>> {
        fn conv<T: Copy + Into<i64>>(v: &[T]) -> Option<Vec<i64>> {
            Some(v.iter().map(|&x| x.into()).collect())
        }
        match self {
            GgufArray::U8(v) => conv(v),
            GgufArray::I8(v) => conv(v),
            GgufArray::U16(v) => conv(v),
            GgufArray::I16(v) => conv(v),
            GgufArray::U32(v) => conv(v),
            GgufArray::I32(v) => conv(v),
            GgufArray::I64(v) => Some(v.clone()),
            GgufArray::U64(v) => v.iter().map(|&x| i64::try_from(x).ok()).collect(),
            _ => None,
        }
    }

    /// The elements as string slices, if this is a string array.
    pub fn as_strs(&self) -> Option<Vec<&str>> {
        match self {
            GgufArray::String(v) => Some(v.iter().map(String::as_str).collect()),
            _ => None,
        }
    }
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

/// A bounds-checked little-endian cursor over the file.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    /// `n` bytes, or `Truncated` naming `what` (built only on failure).
    fn take(&mut self, n: u64, what: &dyn Fn() -> String) -> std::result::Result<&'a [u8], GgufError> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .and_then(|end| self.buf.get(self.pos..end).map(|s| (s, end)));
        match slice {
            Some((s, end)) => {
                self.pos = end;
                Ok(s)
            }
            None => Err(GgufError::Truncated { what: what(), offset: self.pos, needed: n, file_len: self.buf.len() }),
        }
    }

    fn array<const N: usize>(&mut self, what: &dyn Fn() -> String) -> std::result::Result<[u8; N], GgufError> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &dyn Fn() -> String) -> std::result::Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn string(&mut self, what: &dyn Fn() -> String) -> std::result::Result<String, GgufError> {
        let len = self.u64(&|| format!("length of {}", what()))?;
        if len > MAX_STRING_LEN {
            return Err(GgufError::StringTooLong { what: what(), len });
        }
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::BadUtf8 { what: what() })
    }

    /// `n` fixed-size elements, each converted by `conv`. The bytes are bounds-checked before the
    /// vector is allocated.
    fn elements<T, const N: usize>(
        &mut self,
        n: u64,
        conv: fn([u8; N]) -> T,
        what: &dyn Fn() -> String,
    ) -> std::result::Result<Vec<T>, GgufError> {
        let bytes = self.take(n.saturating_mul(N as u64), what)?;
        Ok(bytes
            .chunks_exact(N)
            .map(|c| {
                let mut a = [0u8; N];
                a.copy_from_slice(c);
                conv(a)
            })
            .collect())
    }
}

/// Parses and validates the header of a whole GGUF v3 file.
///
/// Checks, in file order: the magic; the version (3 only); the tensor and key/value counts
/// against [`MAX_TENSORS`] and [`MAX_KVS`]; every string against [`MAX_STRING_LEN`] and UTF-8;
/// every array against [`MAX_ARRAY_LEN`]; unique keys; `general.alignment` a power of two; then
/// for each tensor: a unique name, at most [`MAX_DIMS`] dims whose product fits, a supported
/// type, rows of whole blocks, an aligned offset, and data that lies inside the file.
pub fn parse_gguf(bytes: &[u8]) -> std::result::Result<GgufFile, GgufError> {
    let mut r = Reader { buf: bytes, pos: 0 };
    let magic: [u8; 4] = r.array(&|| "magic".to_string()).map_err(|_| GgufError::BadMagic {
        found: bytes.iter().take(4).flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect(),
    })?;
    if magic != GGUF_MAGIC {
        return Err(GgufError::BadMagic {
            found: magic.iter().flat_map(|b| std::ascii::escape_default(*b)).map(char::from).collect(),
        });
    }
    let version = r.u32(&|| "version".to_string())?;
    if version != GGUF_VERSION {
        return Err(GgufError::UnsupportedVersion { version });
    }
    let n_tensors = r.u64(&|| "tensor count".to_string())?;
    if n_tensors > MAX_TENSORS {
        return Err(GgufError::TooManyTensors { count: n_tensors });
    }
    let n_kv = r.u64(&|| "metadata key/value count".to_string())?;
    if n_kv > MAX_KVS {
        return Err(GgufError::TooManyKvs { count: n_kv });
    }

    let metadata = read_metadata(&mut r, n_kv)?;
    let alignment = alignment_of(&metadata)?;
    let infos = read_tensor_infos(&mut r, n_tensors, alignment)?;

    // The data section starts at the first aligned offset after the directory.
    let data_offset = r.pos.checked_next_multiple_of(alignment).ok_or_else(|| GgufError::BadAlignment {
        detail: format!("aligning the data section to {alignment} overflows"),
    })?;
    let file_len = bytes.len();
    let mut tensors = Vec::with_capacity(infos.len());
    for (name, dims, ggml_type, dtype, rel, n_bytes) in infos {
        let start = (data_offset as u64).checked_add(rel);
        let end = start.and_then(|s| s.checked_add(n_bytes as u64));
        match (start, end) {
            (Some(start), Some(end)) if end <= file_len as u64 => {
                tensors.push(GgufTensorInfo { name, dims, ggml_type, dtype, offset: start, n_bytes })
            }
            _ => {
                let start = start.unwrap_or(u64::MAX);
                return Err(GgufError::BeyondEof {
                    tensor: name,
                    start,
                    end: start.saturating_add(n_bytes as u64),
                    file_len,
                });
            }
        }
    }
    Ok(GgufFile { version, metadata, tensors, alignment, data_offset })
}

fn read_metadata(r: &mut Reader<'_>, n_kv: u64) -> std::result::Result<Vec<(String, GgufValue)>, GgufError> {
    // Each pair takes at least 12 bytes (key length and type), which bounds the allocation by the
    // file rather than by the declared count.
    let mut out = Vec::with_capacity((n_kv as usize).min(r.remaining() / 12));
    let mut seen = HashSet::new();
    for i in 0..n_kv {
        let key = r.string(&|| format!("metadata key #{i}"))?;
        if !seen.insert(key.clone()) {
            return Err(GgufError::DuplicateKey { key });
        }
        let type_id = r.u32(&|| format!("type of metadata key '{key}'"))?;
        let value = read_value(r, &key, type_id)?;
        out.push((key, value));
    }
    Ok(out)
}

fn read_value(r: &mut Reader<'_>, key: &str, type_id: u32) -> std::result::Result<GgufValue, GgufError> {
    let what = || format!("value of metadata key '{key}'");
    Ok(match type_id {
        value_type::U8 => GgufValue::U8(u8::from_le_bytes(r.array(&what)?)),
        value_type::I8 => GgufValue::I8(i8::from_le_bytes(r.array(&what)?)),
        value_type::U16 => GgufValue::U16(u16::from_le_bytes(r.array(&what)?)),
        value_type::I16 => GgufValue::I16(i16::from_le_bytes(r.array(&what)?)),
        value_type::U32 => GgufValue::U32(u32::from_le_bytes(r.array(&what)?)),
        value_type::I32 => GgufValue::I32(i32::from_le_bytes(r.array(&what)?)),
        value_type::F32 => GgufValue::F32(f32::from_le_bytes(r.array(&what)?)),
        value_type::BOOL => GgufValue::Bool(read_bool(r.array(&what)?, key)?),
        value_type::STRING => GgufValue::String(r.string(&what)?),
        value_type::U64 => GgufValue::U64(u64::from_le_bytes(r.array(&what)?)),
        value_type::I64 => GgufValue::I64(i64::from_le_bytes(r.array(&what)?)),
        value_type::F64 => GgufValue::F64(f64::from_le_bytes(r.array(&what)?)),
        value_type::ARRAY => GgufValue::Array(read_array(r, key)?),
        t => return Err(GgufError::BadValueType { key: key.to_string(), detail: format!("unknown value type {t}") }),
    })
}

fn read_bool(b: [u8; 1], key: &str) -> std::result::Result<bool, GgufError> {
    match b[0] {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(GgufError::BadValueType { key: key.to_string(), detail: format!("bool byte is {v}, not 0 or 1") }),
    }
}

fn read_array(r: &mut Reader<'_>, key: &str) -> std::result::Result<GgufArray, GgufError> {
    let elem_type = r.u32(&|| format!("element type of array '{key}'"))?;
    let n = r.u64(&|| format!("length of array '{key}'"))?;
    if n > MAX_ARRAY_LEN {
        return Err(GgufError::ArrayTooLong { key: key.to_string(), len: n });
    }
    let what = || format!("elements of array '{key}'");
    Ok(match elem_type {
        value_type::U8 => GgufArray::U8(r.elements(n, u8::from_le_bytes, &what)?),
        value_type::I8 => GgufArray::I8(r.elements(n, i8::from_le_bytes, &what)?),
        value_type::U16 => GgufArray::U16(r.elements(n, u16::from_le_bytes, &what)?),
        value_type::I16 => GgufArray::I16(r.elements(n, i16::from_le_bytes, &what)?),
        value_type::U32 => GgufArray::U32(r.elements(n, u32::from_le_bytes, &what)?),
        value_type::I32 => GgufArray::I32(r.elements(n, i32::from_le_bytes, &what)?),
        value_type::F32 => GgufArray::F32(r.elements(n, f32::from_le_bytes, &what)?),
        value_type::U64 => GgufArray::U64(r.elements(n, u64::from_le_bytes, &what)?),
        value_type::I64 => GgufArray::I64(r.elements(n, i64::from_le_bytes, &what)?),
        value_type::F64 => GgufArray::F64(r.elements(n, f64::from_le_bytes, &what)?),
        value_type::BOOL => {
            let raw: Vec<[u8; 1]> = r.elements(n, |b| b, &what)?;
            GgufArray::Bool(raw.into_iter().map(|b| read_bool(b, key)).collect::<std::result::Result<_, _>>()?)
        }
        value_type::STRING => {
            // Each string takes at least its 8-byte length.
            let mut v = Vec::with_capacity((n as usize).min(r.remaining() / 8));
            for j in 0..n {
                v.push(r.string(&|| format!("element {j} of array '{key}'"))?);
            }
            GgufArray::String(v)
        }
        value_type::ARRAY => {
            return Err(GgufError::BadValueType {
                key: key.to_string(),
                detail: "arrays of arrays are not supported".into(),
            });
        }
        t => {
            return Err(GgufError::BadValueType {
                key: key.to_string(),
                detail: format!("unknown array element type {t}"),
            });
        }
    })
}

fn alignment_of(metadata: &[(String, GgufValue)]) -> std::result::Result<usize, GgufError> {
    let Some((_, v)) = metadata.iter().find(|(k, _)| k == "general.alignment") else {
        return Ok(DEFAULT_ALIGNMENT);
    };
    let a = v.as_u64().ok_or_else(|| GgufError::BadAlignment {
        detail: format!("must be an unsigned integer, not {}", v.type_name()),
    })?;
    match usize::try_from(a) {
        Ok(a) if a.is_power_of_two() => Ok(a),
        _ => Err(GgufError::BadAlignment { detail: format!("{a} is not a power of two") }),
    }
}

/// A checked directory entry: name, dims, ggml type, dtype, offset relative to the data section,
/// byte length.
type RawTensor = (String, Vec<u64>, u32, DType, u64, usize);

fn read_tensor_infos(
    r: &mut Reader<'_>,
    n_tensors: u64,
    alignment: usize,
) -> std::result::Result<Vec<RawTensor>, GgufError> {
    // Each entry takes at least 24 bytes (name length, n_dims, type, offset).
    let mut out = Vec::with_capacity((n_tensors as usize).min(r.remaining() / 24));
    let mut seen = HashSet::new();
    for i in 0..n_tensors {
        let name = r.string(&|| format!("name of tensor #{i}"))?;
        if !seen.insert(name.clone()) {
            return Err(GgufError::DuplicateTensor { tensor: name });
        }
        let n_dims = r.u32(&|| format!("dimension count of tensor '{name}'"))?;
        if n_dims > MAX_DIMS {
            return Err(GgufError::BadDims {
                tensor: name,
                detail: format!("{n_dims} dimensions (n_dims), more than the {MAX_DIMS} that ggml allows"),
            });
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&|| format!("dimensions of tensor '{name}'"))?);
        }
        let ggml_type = r.u32(&|| format!("type of tensor '{name}'"))?;
        let offset = r.u64(&|| format!("offset of tensor '{name}'"))?;

        let n_elements = dims
            .iter()
            .try_fold(1u64, |acc, &d| if d > i64::MAX as u64 { None } else { acc.checked_mul(d) })
            .filter(|&n| n <= i64::MAX as u64 && usize::try_from(n).is_ok());
        let Some(n_elements) = n_elements else {
            return Err(GgufError::BadDims { tensor: name, detail: format!("dims {dims:?}: product overflows") });
        };
        let Some(dtype) = dtype_of_ggml_type(ggml_type) else {
            return Err(GgufError::UnsupportedType { tensor: name, type_id: ggml_type });
        };
        let row_len = dims.first().copied().unwrap_or(1);
        if row_len % dtype.block_len() as u64 != 0 {
            return Err(GgufError::PartialBlock { tensor: name, row_len, dtype, block: dtype.block_len() });
        }
        // Whole rows of whole blocks, so the element count is a whole number of blocks.
        let n_bytes = (n_elements / dtype.block_len() as u64)
            .checked_mul(dtype.block_bytes() as u64)
            .and_then(|b| usize::try_from(b).ok());
        let Some(n_bytes) = n_bytes else {
            return Err(GgufError::BadDims { tensor: name, detail: format!("dims {dims:?}: byte size overflows") });
        };
        if offset % alignment as u64 != 0 {
            return Err(GgufError::Misaligned { tensor: name, offset, alignment });
        }
        out.push((name, dims, ggml_type, dtype, offset, n_bytes));
    }
    Ok(out)
}

pub mod writer;

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
