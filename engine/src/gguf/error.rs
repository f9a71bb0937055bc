//! Why a GGUF file was refused.

use govbox_drivers::DType;

use super::{GGUF_VERSION, MAX_ARRAY_LEN, MAX_KVS, MAX_STRING_LEN, MAX_TENSORS};
use crate::EngineError;

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
