//! Helpers for the simulator's tests: they call the exported C functions directly.
#![allow(dead_code, missing_docs)]

use std::ffi::{CStr, c_void};

use govbox_ascend_sim::dt::*;
use govbox_ascend_sim::memcpy_kind::*;
use govbox_ascend_sim::*;
use half::{bf16, f16};

/// aclInit (tolerating an earlier test's aclInit in this process) and aclrtSetDevice(0) for the
/// calling thread.
pub fn init() {
    // SAFETY: NULL config path is allowed.
    let r = unsafe { aclInit(std::ptr::null()) };
    assert!(r == 0 || r == codes::ACL_ERROR_REPEAT_INITIALIZE, "aclInit: {r}");
    // SAFETY: plain call.
    assert_eq!(unsafe { aclrtSetDevice(0) }, 0, "{}", msg());
}

/// This thread's newest error message ("" when none).
pub fn msg() -> String {
    // SAFETY: returns NULL or a valid C string.
    let p = unsafe { aclGetRecentErrMsg() };
    if p.is_null() {
        String::new()
    } else {
        // SAFETY: non-NULL, NUL-terminated, valid until the next call on this thread.
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

pub fn malloc(n: usize) -> *mut c_void {
    let mut p = std::ptr::null_mut();
    // SAFETY: p is writable.
    assert_eq!(unsafe { aclrtMalloc(&mut p, n, 0) }, 0, "{}", msg());
    p
}

pub fn free(p: *mut c_void) {
    // SAFETY: p came from aclrtMalloc.
    assert_eq!(unsafe { aclrtFree(p) }, 0, "{}", msg());
}

pub fn upload_bytes(b: &[u8]) -> *mut c_void {
    let p = malloc(b.len().max(1));
    // SAFETY: p is device memory of b.len() bytes; b is host memory.
    let r = unsafe { aclrtMemcpy(p, b.len(), b.as_ptr().cast(), b.len(), ACL_MEMCPY_HOST_TO_DEVICE) };
    assert_eq!(r, 0, "{}", msg());
    p
}

pub fn download_bytes(p: *const c_void, n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    // SAFETY: v is host memory of n bytes; p device memory.
    assert_eq!(unsafe { aclrtMemcpy(v.as_mut_ptr().cast(), n, p, n, ACL_MEMCPY_DEVICE_TO_HOST) }, 0, "{}", msg());
    v
}

/// Element types the tests move through device memory.
pub trait Elem: Copy {
    const DT: i32;
    fn to_bytes(v: &[Self]) -> Vec<u8>;
    fn from_bytes(b: &[u8]) -> Vec<Self>;
}

macro_rules! elem {
    ($t:ty, $dt:expr, $n:expr) => {
        impl Elem for $t {
            const DT: i32 = $dt;
            fn to_bytes(v: &[Self]) -> Vec<u8> {
                v.iter().flat_map(|x| x.to_le_bytes()).collect()
            }
            fn from_bytes(b: &[u8]) -> Vec<Self> {
                b.chunks_exact($n).map(|c| <$t>::from_le_bytes(c.try_into().unwrap())).collect()
            }
        }
    };
}
elem!(f32, ACL_FLOAT, 4);
elem!(f16, ACL_FLOAT16, 2);
elem!(bf16, ACL_BF16, 2);
elem!(i8, ACL_INT8, 1);
elem!(i32, ACL_INT32, 4);
elem!(i64, ACL_INT64, 8);

/// A device buffer with its element type.
pub struct Buf {
    pub ptr: *mut c_void,
    pub len: usize,
    pub dt: i32,
    pub es: usize,
}

pub fn upload<T: Elem>(v: &[T]) -> Buf {
    let b = T::to_bytes(v);
    Buf { ptr: upload_bytes(&b), len: v.len(), dt: T::DT, es: std::mem::size_of::<T>() }
}

pub fn zeros<T: Elem>(n: usize) -> Buf {
    let es = std::mem::size_of::<T>();
    Buf { ptr: upload_bytes(&vec![0u8; n * es]), len: n, dt: T::DT, es }
}

pub fn download<T: Elem>(b: &Buf) -> Vec<T> {
    T::from_bytes(&download_bytes(b.ptr, b.len * b.es))
}

pub fn contiguous_strides(dims: &[i64]) -> Vec<i64> {
    let mut s = vec![1i64; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

/// A tensor over the whole buffer with the given view (storage = the whole buffer, 1-D).
pub fn view(b: &Buf, dims: &[i64], strides: &[i64], offset: i64) -> *mut aclTensor {
    let storage = [b.len as i64];
    // SAFETY: arrays have the stated lengths.
    let t = unsafe {
        aclCreateTensor(dims.as_ptr(), dims.len() as u64, b.dt, strides.as_ptr(), offset, 2, storage.as_ptr(), 1, b.ptr)
    };
    assert!(!t.is_null(), "aclCreateTensor: {}", msg());
    t
}

/// A contiguous tensor over the buffer.
pub fn tensor(b: &Buf, dims: &[i64]) -> *mut aclTensor {
    view(b, dims, &contiguous_strides(dims), 0)
}

pub fn destroy(t: *mut aclTensor) {
    // SAFETY: t is a live tensor handle.
    assert_eq!(unsafe { aclDestroyTensor(t) }, 0, "{}", msg());
}

pub fn scalar_f32(v: f32) -> *mut aclScalar {
    let mut x = v;
    // SAFETY: x is a readable f32.
    let s = unsafe { aclCreateScalar((&mut x as *mut f32).cast(), ACL_FLOAT) };
    assert!(!s.is_null(), "{}", msg());
    s
}

/// A new stream (tests run in parallel threads, and the default stream is shared by them all).
pub fn stream() -> aclrtStream {
    let mut s = std::ptr::null_mut();
    // SAFETY: s is writable.
    assert_eq!(unsafe { aclrtCreateStream(&mut s) }, 0, "{}", msg());
    s
}

/// Runs a built op: allocates its workspace, launches it on a new stream, synchronises.
/// Returns the synchronisation's status.
pub fn launch_and_sync(
    status: i32,
    ws: u64,
    exec: *mut aclOpExecutor,
    launch: unsafe extern "C" fn(*mut c_void, u64, *mut aclOpExecutor, aclrtStream) -> i32,
) -> i32 {
    assert_eq!(status, 0, "GetWorkspaceSize: {}", msg());
    assert!(ws >= 512, "workspace size {ws} must be non-zero (at least 512)");
    let w = malloc(ws as usize);
    let s = stream();
    // SAFETY: w is device memory of ws bytes; exec is a fresh executor.
    assert_eq!(unsafe { launch(w, ws, exec, s) }, 0, "launch: {}", msg());
    // SAFETY: a live stream.
    let r = unsafe { aclrtSynchronizeStream(s) };
    // SAFETY: a live, synchronised stream.
    assert_eq!(unsafe { aclrtDestroyStream(s) }, 0, "{}", msg());
    free(w);
    r
}

pub fn assert_close(got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "length: got {got:?} want {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol * (1.0 + w.abs()), "element {i}: got {g}, want {w} (got {got:?}, want {want:?})");
    }
}
