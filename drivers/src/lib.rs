//! govbox-drivers: the accelerator [`Backend`] trait and its implementations.
//!
//! The engine describes models as a sequence of coarse ops (matmul over quantised weights,
//! norms, rotary embedding, paged attention, ...) on [`Tensor`]s owned by one backend. The CPU
//! backend is pure Rust, multi-threaded with rayon, with SIMD kernels picked at run time, and is
//! always built. It trusts nothing about tensor contents except what it checks itself: shapes
//! and byte sizes are validated on every upload and op, so a malformed model gives an error, not
//! undefined behaviour. `unsafe` is confined to this crate (SIMD intrinsics and FFI), and every
//! block carries a `SAFETY` comment.

#[cfg(feature = "ascend")]
pub mod ascend;
mod backend;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod device;
mod dtype;
mod error;
pub mod quant;
mod tensor;

pub use backend::{
    Backend, Caps, DenseAttn, DeviceInfo, DeviceKind, KvCache, KvDType, KvSpec, PagedAttn, Rope, RopeStyle, SeqAttn,
    gelu_tanh,
};
pub use device::{DeviceSpec, Opened, Probe};
pub use dtype::DType;
pub use error::{DriverError, Result};
pub use tensor::{Buffer, HostBytes, Tensor};
