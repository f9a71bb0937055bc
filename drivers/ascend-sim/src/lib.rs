//! **This crate is a SIMULATOR of Huawei's Ascend CANN runtime (AscendCL, aclnn, DCMI) for CI
//! machines without an NPU. It is not Huawei hardware and not Huawei software.** Its numerics are
//! naive plain loops (f32/f64), written independently of govbox's CPU backend, so that the Ascend
//! backend can be checked against a second implementation.
//!
//! It builds `libgovbox_ascend_sim.so`, which exports with C ABI every function declared in
//! `drivers/src/ascend/include/govbox_acl.h`; the govbox Ascend backend dlopens it when
//! `GOVBOX_ASCEND_SIM_LIB` names it. `govbox_sim_identify()` tells it apart from a vendor runtime.
//!
//! # What it checks (each misuse returns a non-zero code and sets `aclGetRecentErrMsg()`)
//!
//! - `aclInit` once per process before anything else (a second call returns 100002); `aclFinalize`
//!   ends it and frees every allocation, stream, handle and executor (a later `aclInit` starts
//!   afresh).
//! - Each thread that allocates, creates streams, copies, builds or launches ops, or synchronises,
//!   must have called `aclrtSetDevice` itself (107002 otherwise).
//! - Device memory is a registry of real heap allocations. Every device-pointer argument must lie in
//!   a live allocation of the calling thread's device; host pointers passed as device pointers,
//!   device pointers passed as host pointers, out-of-bounds ranges and freed pointers are errors.
//!   Fresh allocations are filled with `0xFF` bytes (NaN for float types) so that reading memory
//!   nobody wrote shows up, as garbage would on real hardware; `GOVBOX_ASCEND_SIM_POISON=0` fills
//!   them with zeros instead.
//! - Streams are queues: `aclrtMemcpyAsync`, `aclrtMemsetAsync` and every aclnn launch only enqueue
//!   work, which runs at `aclrtSynchronizeStream`. Host memory given to an async copy is read (H2D)
//!   or written (D2H) at that synchronisation, so it must stay valid until then. Pending accesses
//!   are tracked per byte range: a synchronous copy or a free touching memory with unsynchronised
//!   pending writes (or, for writes and frees, any pending access), and work on one stream touching
//!   memory another stream has pending conflicting work on, are errors. The NULL stream is the
//!   device's default stream, synchronised with `aclrtSynchronizeStream(NULL)`.
//! - aclnn executors are single-use, must be launched by the matching `aclnnXxx` on the device they
//!   were built for, with a device workspace of at least the size `aclnnXxxGetWorkspaceSize` asked
//!   for (always at least 512 bytes, never zero). Ops read and write their tensors at
//!   synchronisation; errors found then (an out-of-range embedding index) are returned by
//!   `aclrtSynchronizeStream`.
//! - Handles (tensors, scalars, int arrays, tensor lists, executors, streams) are opaque numbers
//!   that are never reused, so double destroys and use after destroy are reported.
//!
//! # Environment
//!
//! - `GOVBOX_ASCEND_SIM_DEVICES=N`: device count (default 1), read at `aclInit`.
//! - `GOVBOX_ASCEND_SIM_HBM_MB=M`: simulated HBM per device in MiB (default 65536).
//! - `GOVBOX_ASCEND_SIM_POISON=0`: zero-fill new allocations instead of `0xFF`.
//!
//! # Error codes (AscendCL / aclnn / DCMI values as publicly documented)
//!
//! | code | name | when |
//! |---|---|---|
//! | 100000 | ACL_ERROR_INVALID_PARAM | bad runtime argument (pointer, size, kind) |
//! | 100001 | ACL_ERROR_UNINITIALIZE | called before `aclInit` or after `aclFinalize` |
//! | 100002 | ACL_ERROR_REPEAT_INITIALIZE | second `aclInit` |
//! | 107000 | ACL_ERROR_RT_PARAM_INVALID | invalid stream handle, pending work on destroy |
//! | 107001 | ACL_ERROR_RT_INVALID_DEVICEID | `aclrtSetDevice(id >= count)` |
//! | 107002 | ACL_ERROR_RT_CONTEXT_NULL | no device bound to the calling thread |
//! | 207001 | ACL_ERROR_RT_MEMORY_ALLOCATION | `aclrtMalloc` beyond the simulated HBM |
//! | 500000 | ACL_ERROR_INTERNAL_ERROR | a panic inside the simulator (a simulator bug) |
//! | 507015 | ACL_ERROR_RT_AICORE_EXCEPTION | an op failed while running at synchronisation |
//! | 507899 | ACL_ERROR_RT_DRV_INTERNAL_ERROR | memory read/freed with pending (unsynchronised) work |
//! | 161001 | ACLNN_ERR_PARAM_NULLPTR | NULL tensor/workspace/executor argument |
//! | 161002 | ACLNN_ERR_PARAM_INVALID | bad shapes, dtypes, strides; executor reuse; small workspace |
//! | 561000 | ACLNN_ERR_INNER | a panic inside an aclnn function (a simulator bug) |
//! | -8001 | DCMI_ERR_CODE_INVALID_PARAMETER | bad DCMI argument |
//! | -8005 | DCMI_ERR_CODE_INNER_ERR | DCMI call before `dcmi_init`, or a panic |
//! | -8007 | DCMI_ERR_CODE_INVALID_DEVICE_ID | unknown card or device id |
//!
//! # Simulator limits (documented rather than silently wrong)
//!
//! - `aclnnWeightQuantBatchMatmulV2` accepts x in f32 as well; real hardware wants f16/bf16.
//!   `quantScaleOptional`/`quantOffsetOptional` (int8 output) are refused.
//! - Int64 values go through f64 in arithmetic ops and casts between different dtypes (exact up to
//!   2^53); copies between equal dtypes are bit-exact.
//! - `aclnnRmsNorm` accepts a NULL `rstdOut`.
//! - `aclnnDynamicQuant` accepts x in f32 (real hardware: f16/bf16) and strided `yOut`/`scaleOut`,
//!   rounds `x / scale` half away from zero (CANN documents only `round`), and refuses
//!   `smoothScalesOptional`.

#![allow(non_camel_case_types, non_snake_case)]

mod aclnn;
mod dcmi;
mod dtype;
mod error;
mod kernels;
mod objects;
mod runtime;
mod state;
mod view;

pub use aclnn::*;
pub use dcmi::*;
pub use error::codes;
pub use objects::*;
pub use runtime::*;

/// AscendCL status (`aclError`); 0 is success.
pub type aclError = i32;
/// aclnn status (`aclnnStatus`); 0 is success.
pub type aclnnStatus = i32;
/// A stream handle (`aclrtStream`); NULL is the device's default stream.
pub type aclrtStream = *mut std::ffi::c_void;
/// `aclDataType` (a C enum, passed as int); see [`dt`] for the values.
pub type aclDataType = i32;
/// `aclFormat` (a C enum, passed as int): -1 undefined, 0 NCHW, 1 NHWC, 2 ND.
pub type aclFormat = i32;
/// `aclrtMemMallocPolicy` (a C enum, passed as int): 0 huge first, 1 huge only, 2 normal only.
pub type aclrtMemMallocPolicy = i32;
/// `aclrtMemcpyKind` (a C enum, passed as int); see [`memcpy_kind`].
pub type aclrtMemcpyKind = i32;
/// `aclrtMemAttr` (a C enum, passed as int): 0 DDR, 1 HBM, 2..5 their huge/normal variants.
pub type aclrtMemAttr = i32;

/// `aclDataType` values.
pub mod dt {
    /// 32-bit float.
    pub const ACL_FLOAT: i32 = 0;
    /// IEEE half.
    pub const ACL_FLOAT16: i32 = 1;
    /// int8.
    pub const ACL_INT8: i32 = 2;
    /// int32.
    pub const ACL_INT32: i32 = 3;
    /// uint8.
    pub const ACL_UINT8: i32 = 4;
    /// int16.
    pub const ACL_INT16: i32 = 6;
    /// uint16.
    pub const ACL_UINT16: i32 = 7;
    /// uint32.
    pub const ACL_UINT32: i32 = 8;
    /// int64.
    pub const ACL_INT64: i32 = 9;
    /// uint64.
    pub const ACL_UINT64: i32 = 10;
    /// 64-bit float.
    pub const ACL_DOUBLE: i32 = 11;
    /// bool (one byte).
    pub const ACL_BOOL: i32 = 12;
    /// bfloat16.
    pub const ACL_BF16: i32 = 27;
}

/// `aclrtMemcpyKind` values.
pub mod memcpy_kind {
    /// Host to host.
    pub const ACL_MEMCPY_HOST_TO_HOST: i32 = 0;
    /// Host to device.
    pub const ACL_MEMCPY_HOST_TO_DEVICE: i32 = 1;
    /// Device to host.
    pub const ACL_MEMCPY_DEVICE_TO_HOST: i32 = 2;
    /// Device to device.
    pub const ACL_MEMCPY_DEVICE_TO_DEVICE: i32 = 3;
}

/// Opaque `aclOpExecutor` (handles are never dereferenced by callers).
#[repr(C)]
pub struct aclOpExecutor {
    _opaque: [u8; 0],
}
/// Opaque `aclTensor`.
#[repr(C)]
pub struct aclTensor {
    _opaque: [u8; 0],
}
/// Opaque `aclScalar`.
#[repr(C)]
pub struct aclScalar {
    _opaque: [u8; 0],
}
/// Opaque `aclIntArray`.
#[repr(C)]
pub struct aclIntArray {
    _opaque: [u8; 0],
}
/// Opaque `aclTensorList`.
#[repr(C)]
pub struct aclTensorList {
    _opaque: [u8; 0],
}

/// `struct dcmi_hbm_info`: sizes in MB, frequency in MHz, temperature in degrees Celsius.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct dcmi_hbm_info {
    /// Total HBM in MB.
    pub memory_size: u64,
    /// HBM frequency in MHz.
    pub freq: u32,
    /// HBM in use in MB.
    pub memory_usage: u64,
    /// HBM temperature in degrees Celsius.
    pub temp: i32,
    /// Bandwidth utilisation in percent.
    pub bandwith_util_rate: u32,
}

/// The string `govbox_sim_identify` returns.
pub const SIM_IDENTITY: &str = "govbox ascend-sim 0.1 (SIMULATED, not Huawei hardware)";

/// Names this library as govbox's simulator (a vendor runtime has no such symbol). Returns a
/// static NUL-terminated string.
///
/// # Safety
/// No arguments; unsafe only for uniformity with the other exports.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn govbox_sim_identify() -> *const std::ffi::c_char {
    c"govbox ascend-sim 0.1 (SIMULATED, not Huawei hardware)".as_ptr()
}
