//! Errors of the drivers crate.

use crate::{DType, KvDType};

/// Why a backend operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The inputs of an op have shapes it cannot combine.
    #[error("{op}: shape mismatch: {detail}")]
    Shape {
        /// The op.
        op: &'static str,
        /// What did not fit.
        detail: String,
    },
    /// The op does not support this dtype.
    #[error("{op}: unsupported dtype {dtype}")]
    DType {
        /// The op.
        op: &'static str,
        /// The dtype.
        dtype: DType,
    },
    /// Uploaded data does not have the size that its dtype and shape need.
    #[error("upload: {dtype} tensor of shape {shape:?} needs {expected} bytes, got {got}")]
    UploadSize {
        /// Declared dtype.
        dtype: DType,
        /// Declared shape.
        shape: Vec<usize>,
        /// Bytes the dtype and shape need.
        expected: usize,
        /// Bytes given.
        got: usize,
    },
    /// A tensor from another backend was passed in.
    #[error("{op}: tensor belongs to another backend")]
    ForeignTensor {
        /// The op.
        op: &'static str,
    },
    /// A KV-cache access outside the cache.
    #[error("kv cache: {0}")]
    KvCache(String),
    /// The backend's KV cache cannot store this element type.
    #[error("kv_dtype = \"{dtype}\" is not supported by the {backend} backend's KV cache (it stores {supported})")]
    KvDType {
        /// The element type asked for.
        dtype: KvDType,
        /// The backend.
        backend: &'static str,
        /// The types it does store.
        supported: &'static str,
    },
    /// A token id outside the embedding table.
    #[error("embedding: token id {id} is outside the vocabulary of {vocab}")]
    TokenOutOfRange {
        /// The id.
        id: u32,
        /// Vocabulary size.
        vocab: usize,
    },
    /// An optional operation this backend does not implement.
    #[error("{op} is not implemented on the {backend} backend")]
    Unsupported {
        /// The operation.
        op: &'static str,
        /// The backend.
        backend: &'static str,
    },
    /// The backend was not compiled in.
    #[error("{0} support was not compiled into this build")]
    NotCompiled(&'static str),
    /// A vendor runtime call failed (CUDA driver/cuBLAS/NVRTC, AscendCL/aclnn).
    #[error("{backend}: {call} failed (code {code}): {message}")]
    Device {
        /// The backend ("cuda", "ascend").
        backend: &'static str,
        /// The runtime call that failed.
        call: String,
        /// The runtime's error code (0 when it has none).
        code: i64,
        /// The runtime's message, or ours when it gives none.
        message: String,
    },
    /// The backend's runtime library or device is absent.
    #[error("{backend} is not available: {reason}")]
    Unavailable {
        /// The backend.
        backend: &'static str,
        /// Why.
        reason: String,
    },
}

impl DriverError {
    /// A stable short code for metrics and the audit log.
    pub fn code(&self) -> &'static str {
        match self {
            DriverError::Shape { .. } => "shape_mismatch",
            DriverError::DType { .. } => "unsupported_dtype",
            DriverError::UploadSize { .. } => "upload_size",
            DriverError::ForeignTensor { .. } => "foreign_tensor",
            DriverError::KvCache(_) => "kv_cache",
            DriverError::KvDType { .. } => "unsupported_kv_dtype",
            DriverError::TokenOutOfRange { .. } => "token_out_of_range",
            DriverError::Unsupported { .. } => "unsupported_op",
            DriverError::NotCompiled(_) => "not_compiled",
            DriverError::Device { .. } => "device",
            DriverError::Unavailable { .. } => "unavailable",
        }
    }
}

/// Result alias for driver operations.
pub type Result<T> = std::result::Result<T, DriverError>;
