//! libnnopbase.so: aclTensor, aclScalar, aclIntArray, aclTensorList (opaque, never-reused
//! handles; destroying twice is an error).

use std::ffi::c_void;

use crate::dtype::DType;
use crate::error::codes::*;
use crate::error::{SimResult, bail, guard, guard_ptr};
use crate::state::{Handle, State, hex, lock};
use crate::view::View;
use crate::{aclDataType, aclFormat, aclIntArray, aclScalar, aclTensor, aclTensorList, aclnnStatus};

const INVALID: i32 = ACLNN_ERR_PARAM_INVALID;

/// Reads `n` i64 values from `p` (NULL allowed when n == 0).
///
/// # Safety
/// `p` points to `n` readable i64 values when n > 0.
unsafe fn read_i64s(p: *const i64, n: u64, name: &str) -> SimResult<Vec<i64>> {
    if n == 0 {
        return Ok(Vec::new());
    }
    if p.is_null() {
        bail!(ACLNN_ERR_PARAM_NULLPTR, "{name} is NULL but its length is {n}");
    }
    if n > 64 {
        bail!(INVALID, "{name} has {n} entries; at most 64 are supported");
    }
    // SAFETY: non-NULL (checked), `n` readable values by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n as usize) }.to_vec())
}

#[allow(clippy::too_many_arguments)] // mirrors the C call's arguments
fn make_view(
    st: &State,
    dims: &[i64],
    dtype: aclDataType,
    strides: &[i64],
    offset: i64,
    format: aclFormat,
    storage: &[i64],
    data: usize,
) -> SimResult<View> {
    let dev = st.bound_device()?;
    let Some(dt) = DType::from_acl(dtype) else {
        bail!(INVALID, "dataType {dtype} is not an aclDataType the simulator supports");
    };
    if !(-1..=2).contains(&format) {
        bail!(INVALID, "format {format} is not supported by the simulator (ND = 2, NCHW = 0, NHWC = 1)");
    }
    if dims.len() != strides.len() {
        bail!(INVALID, "viewDims has {} entries but stride has {}", dims.len(), strides.len());
    }
    if let Some(d) = dims.iter().find(|d| **d < 0) {
        bail!(INVALID, "viewDims {dims:?} has a negative dimension {d}");
    }
    if let Some(s) = strides.iter().find(|s| **s < 0) {
        bail!(INVALID, "stride {strides:?} has a negative stride {s} (not supported)");
    }
    if offset < 0 {
        bail!(INVALID, "offset {offset} is negative");
    }
    if let Some(d) = storage.iter().find(|d| **d < 0) {
        bail!(INVALID, "storageDims {storage:?} has a negative dimension {d}");
    }
    let v = View {
        dims: dims.iter().map(|&d| d as usize).collect(),
        strides: strides.iter().map(|&s| s as usize).collect(),
        offset: offset as usize,
        dtype: dt,
        base: data,
        alloc_id: 0,
        handle: 0,
    };
    let storage_elems: usize = storage.iter().map(|&d| d as usize).product();
    let Some(max) = v.max_elem() else { return Ok(v) };
    if max >= storage_elems {
        bail!(
            INVALID,
            "view {} with strides {strides:?} and offset {offset} reaches element {max}, outside storageDims {storage:?} ({storage_elems} elements)",
            v.shape()
        );
    }
    let es = dt.size();
    let start = st.device_range(data, storage_elems * es, "tensorData", dev).map_err(|mut e| {
        e.code = INVALID;
        e.msg = format!("{} (view {}, storageDims {storage:?}, {})", e.msg, v.shape(), dt.name());
        e
    })?;
    Ok(View { alloc_id: st.allocs[&start].id, ..v })
}

/// Creates a tensor: a view of device memory. viewDims/stride in elements, offset in elements
/// from tensorData; storageDims describe the memory from tensorData on, which must lie in one
/// live allocation of the calling thread's device. NULL on error (see aclGetRecentErrMsg).
///
/// # Safety
/// Array pointers point to the given number of i64 values; tensorData is only checked against
/// the registry here.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclCreateTensor(
    viewDims: *const i64,
    viewDimsNum: u64,
    dataType: aclDataType,
    stride: *const i64,
    offset: i64,
    format: aclFormat,
    storageDims: *const i64,
    storageDimsNum: u64,
    tensorData: *mut c_void,
) -> *mut aclTensor {
    guard_ptr("aclCreateTensor", || {
        let mut st = lock();
        st.require_init()?;
        // SAFETY: caller contract: each array has the given number of values.
        let (dims, strides, storage) = unsafe {
            (
                read_i64s(viewDims, viewDimsNum, "viewDims")?,
                read_i64s(stride, viewDimsNum, "stride")?,
                read_i64s(storageDims, storageDimsNum, "storageDims")?,
            )
        };
        let v = make_view(&st, &dims, dataType, &strides, offset, format, &storage, tensorData.expose_provenance())?;
        let h = st.new_handle(Handle::Tensor(v));
        if let Some(Handle::Tensor(v)) = st.handles.get_mut(&h) {
            v.handle = h;
        }
        Ok(std::ptr::without_provenance_mut(h))
    })
}

fn destroy(func: &'static str, h: usize, kind: &'static str, is: fn(&Handle) -> bool) -> aclnnStatus {
    guard(func, || {
        let mut st = lock();
        st.require_init()?;
        if h == 0 {
            return Ok(());
        }
        match st.handles.get(&h) {
            Some(x) if is(x) => {
                st.handles.remove(&h);
                Ok(())
            }
            Some(other) => bail!(INVALID, "{} is {}, not {kind}", hex(h), other.kind()),
            None => bail!(INVALID, "{kind} {} was already destroyed (double destroy) or never created", hex(h)),
        }
    })
}

/// Destroys a tensor handle (the device memory stays). NULL is a no-op; a second destroy fails.
///
/// # Safety
/// The handle is looked up, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclDestroyTensor(tensor: *const aclTensor) -> aclnnStatus {
    destroy("aclDestroyTensor", tensor.addr(), "an aclTensor", |h| matches!(h, Handle::Tensor(_)))
}

/// Creates a scalar from `*value` of `dataType` (float, double, f16, bf16, int8/16/32/64,
/// uint8/16/32/64, bool). NULL on error.
///
/// # Safety
/// `value` points to one readable value of `dataType`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclCreateScalar(value: *mut c_void, dataType: aclDataType) -> *mut aclScalar {
    guard_ptr("aclCreateScalar", || {
        let mut st = lock();
        st.require_init()?;
        if value.is_null() {
            bail!(ACLNN_ERR_PARAM_NULLPTR, "value is NULL");
        }
        let Some(dt) = DType::from_acl(dataType) else {
            bail!(INVALID, "dataType {dataType} is not an aclDataType the simulator supports");
        };
        // SAFETY: caller contract: one readable value of `dataType` at `value`.
        let v = unsafe { dt.load_f64(value.cast::<u8>()) };
        let h = st.new_handle(Handle::Scalar { value: v });
        Ok(std::ptr::without_provenance_mut(h))
    })
}

/// Destroys a scalar. NULL is a no-op; a second destroy fails.
///
/// # Safety
/// The handle is looked up, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclDestroyScalar(scalar: *const aclScalar) -> aclnnStatus {
    destroy("aclDestroyScalar", scalar.addr(), "an aclScalar", |h| matches!(h, Handle::Scalar { .. }))
}

/// Creates an int array (copied). NULL on error.
///
/// # Safety
/// `value` points to `size` readable i64 values (may be NULL when size is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclCreateIntArray(value: *const i64, size: u64) -> *mut aclIntArray {
    guard_ptr("aclCreateIntArray", || {
        let mut st = lock();
        st.require_init()?;
        // SAFETY: caller contract: `size` readable values.
        let v = unsafe { read_i64s(value, size, "value")? };
        let h = st.new_handle(Handle::IntArray(v));
        Ok(std::ptr::without_provenance_mut(h))
    })
}

/// Destroys an int array. NULL is a no-op; a second destroy fails.
///
/// # Safety
/// The handle is looked up, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclDestroyIntArray(array: *const aclIntArray) -> aclnnStatus {
    destroy("aclDestroyIntArray", array.addr(), "an aclIntArray", |h| matches!(h, Handle::IntArray(_)))
}

/// Creates a tensor list of live tensor handles (the list refers to them). NULL on error.
///
/// # Safety
/// `value` points to `size` handle values.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclCreateTensorList(value: *const *const aclTensor, size: u64) -> *mut aclTensorList {
    guard_ptr("aclCreateTensorList", || {
        let mut st = lock();
        st.require_init()?;
        if size > 0 && value.is_null() {
            bail!(ACLNN_ERR_PARAM_NULLPTR, "value is NULL but size is {size}");
        }
        let hs: Vec<usize> = if size == 0 {
            Vec::new()
        } else {
            // SAFETY: non-NULL (checked), `size` readable handles by the caller's contract.
            unsafe { std::slice::from_raw_parts(value, size as usize) }.iter().map(|p| p.addr()).collect()
        };
        for (i, &h) in hs.iter().enumerate() {
            if !matches!(st.handles.get(&h), Some(Handle::Tensor(_))) {
                bail!(INVALID, "value[{i}] {} is not a live aclTensor", hex(h));
            }
        }
        let h = st.new_handle(Handle::TensorList(hs));
        Ok(std::ptr::without_provenance_mut(h))
    })
}

/// Destroys a tensor list AND the tensors in it (as aclnn does). NULL is a no-op.
///
/// # Safety
/// The handle is looked up, never dereferenced.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn aclDestroyTensorList(array: *const aclTensorList) -> aclnnStatus {
    let h = array.addr();
    let tensors = match lock().handles.get(&h) {
        Some(Handle::TensorList(t)) => t.clone(),
        _ => Vec::new(),
    };
    let r = destroy("aclDestroyTensorList", h, "an aclTensorList", |h| matches!(h, Handle::TensorList(_)));
    if r == 0 {
        let mut st = lock();
        for t in tensors {
            st.handles.remove(&t);
        }
    }
    r
}
