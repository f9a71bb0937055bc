//! Each misuse the simulator exists to catch: a non-zero code and a clear message.

mod common;

use std::ptr::{null, null_mut};

use common::*;
use govbox_ascend_sim::codes::*;
use govbox_ascend_sim::memcpy_kind::*;
use govbox_ascend_sim::*;

/// A built Silu executor over fresh [2,2] tensors: (executor, workspace size, input, output).
fn silu_exec() -> (*mut aclOpExecutor, u64, Buf, Buf) {
    let x = upload(&[1.0f32, 2.0, 3.0, 4.0]);
    let o = zeros::<f32>(4);
    let (tx, to) = (tensor(&x, &[2, 2]), tensor(&o, &[2, 2]));
    let mut ws = 0u64;
    let mut ex = null_mut();
    // SAFETY: live handles; writable outputs.
    assert_eq!(unsafe { aclnnSiluGetWorkspaceSize(tx, to, &mut ws, &mut ex) }, 0, "{}", msg());
    assert!(ws >= 512);
    (ex, ws, x, o)
}

#[test]
fn reading_output_before_sync_is_caught() {
    init();
    let (ex, ws, _x, o) = silu_exec();
    let w = malloc(ws as usize);
    let mut stream = null_mut();
    // SAFETY: writable out pointer; w is device memory of ws bytes.
    unsafe {
        assert_eq!(aclrtCreateStream(&mut stream), 0);
        assert_eq!(aclnnSilu(w, ws, ex, stream), 0, "{}", msg());
    }
    let mut host = [0f32; 4];
    // SAFETY: host buffer of 16 bytes.
    let r = unsafe { aclrtMemcpy(host.as_mut_ptr().cast(), 16, o.ptr, 16, ACL_MEMCPY_DEVICE_TO_HOST) };
    assert_eq!(r, ACL_ERROR_RT_DRV_INTERNAL_ERROR);
    let m = msg();
    assert!(m.contains("read before aclrtSynchronizeStream: pending work on stream"), "{m}");
    assert_eq!(host, [0.0; 4], "a refused copy changes nothing");
    // Freeing memory the queued op still uses is caught too.
    // SAFETY: w came from aclrtMalloc.
    assert_eq!(unsafe { aclrtFree(w) }, ACL_ERROR_RT_DRV_INTERNAL_ERROR);
    assert!(msg().contains("freed before aclrtSynchronizeStream"));
    // After the sync the data is there and the memory can go.
    // SAFETY: live stream.
    unsafe {
        assert_eq!(aclrtSynchronizeStream(stream), 0, "{}", msg());
        assert_eq!(aclrtMemcpy(host.as_mut_ptr().cast(), 16, o.ptr, 16, ACL_MEMCPY_DEVICE_TO_HOST), 0);
        assert_eq!(aclrtDestroyStream(stream), 0);
    }
    assert!((host[0] - 1.0 / (1.0 + (-1.0f32).exp())).abs() < 1e-6);
    free(w);
}

#[test]
fn async_copies_are_lazy_until_sync() {
    init();
    let d = zeros::<f32>(2);
    let src = [5.0f32, 6.0];
    let mut back = [0f32; 2];
    // SAFETY: host buffers outlive the synchronisation; d is device memory of 8 bytes.
    unsafe {
        assert_eq!(aclrtMemcpyAsync(d.ptr, 8, src.as_ptr().cast(), 8, ACL_MEMCPY_HOST_TO_DEVICE, null_mut()), 0);
        assert_eq!(aclrtMemcpyAsync(back.as_mut_ptr().cast(), 8, d.ptr, 8, ACL_MEMCPY_DEVICE_TO_HOST, null_mut()), 0);
        assert_eq!(back, [0.0, 0.0], "nothing runs before the sync");
        assert_eq!(aclrtSynchronizeStream(null_mut()), 0, "{}", msg());
    }
    assert_eq!(back, [5.0, 6.0]);
    // A memset queued then synchronised.
    // SAFETY: d is device memory of 8 bytes.
    unsafe {
        assert_eq!(aclrtMemsetAsync(d.ptr, 8, 0, 8, null_mut()), 0);
        assert_eq!(aclrtSynchronizeStream(null_mut()), 0);
    }
    assert_eq!(download::<f32>(&d), vec![0.0, 0.0]);
}

#[test]
fn executors_are_single_use() {
    init();
    let (ex, ws, _x, _o) = silu_exec();
    let w = malloc(ws as usize);
    // SAFETY: w is device memory of ws bytes.
    unsafe {
        assert_eq!(aclnnSilu(w, ws, ex, null_mut()), 0, "{}", msg());
        assert_eq!(aclnnSilu(w, ws, ex, null_mut()), ACLNN_ERR_PARAM_INVALID);
        let m = msg();
        assert!(m.contains("was already used; executors are single-use"), "{m}");
        assert_eq!(aclrtSynchronizeStream(null_mut()), 0);
    }
    free(w);
}

#[test]
fn executor_must_be_launched_by_its_own_op() {
    init();
    let (ex, ws, _x, _o) = silu_exec();
    let w = malloc(ws as usize);
    // SAFETY: w is device memory of ws bytes.
    assert_eq!(unsafe { aclnnGelu(w, ws, ex, null_mut()) }, ACLNN_ERR_PARAM_INVALID);
    assert!(msg().contains("launch it with aclnnSilu, not aclnnGelu"));
    free(w);
}

#[test]
fn workspace_null_or_too_small_is_caught() {
    init();
    let (ex, ws, _x, _o) = silu_exec();
    // SAFETY: deliberately bad workspaces; nothing is dereferenced.
    unsafe {
        assert_eq!(aclnnSilu(null_mut(), ws, ex, null_mut()), ACLNN_ERR_PARAM_NULLPTR);
        assert!(msg().contains("workspace is NULL"));
        assert_eq!(aclnnSilu(null_mut(), 0, ex, null_mut()), ACLNN_ERR_PARAM_INVALID);
        assert!(msg().contains("smaller than the"));
    }
    let small = malloc(ws as usize - 1);
    // SAFETY: small is device memory, one byte short.
    assert_eq!(unsafe { aclnnSilu(small, ws, ex, null_mut()) }, ACLNN_ERR_PARAM_INVALID);
    let m = msg();
    assert!(m.contains("runs past the end of its allocation"), "{m}");
    let mut host = vec![0u8; ws as usize];
    // SAFETY: a host buffer passed as the workspace.
    assert_eq!(unsafe { aclnnSilu(host.as_mut_ptr().cast(), ws, ex, null_mut()) }, ACLNN_ERR_PARAM_INVALID);
    assert!(msg().contains("not device memory"));
    // The executor was not consumed by the refused launches.
    let ok = malloc(ws as usize);
    // SAFETY: ok is device memory of ws bytes.
    unsafe {
        assert_eq!(aclnnSilu(ok, ws, ex, null_mut()), 0, "{}", msg());
        assert_eq!(aclrtSynchronizeStream(null_mut()), 0);
    }
    free(ok);
    free(small);
}

#[test]
fn host_pointers_where_device_memory_is_expected() {
    init();
    let mut host = [1.0f32, 2.0, 3.0, 4.0];
    let dims = [4i64];
    let strides = [1i64];
    // SAFETY: arrays have the stated lengths; host is only checked against the registry.
    let t = unsafe {
        aclCreateTensor(
            dims.as_ptr(),
            1,
            dt::ACL_FLOAT,
            strides.as_ptr(),
            0,
            2,
            dims.as_ptr(),
            1,
            host.as_mut_ptr().cast(),
        )
    };
    assert!(t.is_null());
    let m = msg();
    assert!(m.contains("is not device memory (host pointer passed as a device pointer?)"), "{m}");

    let other = [0f32; 4];
    // SAFETY: both host buffers of 16 bytes; the H2D kind is the mistake.
    let r = unsafe { aclrtMemcpy(host.as_mut_ptr().cast(), 16, other.as_ptr().cast(), 16, ACL_MEMCPY_HOST_TO_DEVICE) };
    assert_eq!(r, ACL_ERROR_INVALID_PARAM);
    assert!(msg().contains("dst (device)"));

    // A device pointer as the host side of a D2H copy.
    let a = zeros::<f32>(4);
    let b = zeros::<f32>(4);
    // SAFETY: both device buffers; nothing is copied.
    let r = unsafe { aclrtMemcpy(a.ptr, 16, b.ptr, 16, ACL_MEMCPY_DEVICE_TO_HOST) };
    assert_eq!(r, ACL_ERROR_INVALID_PARAM);
    assert!(msg().contains("is device memory"));
    // SAFETY: a host pointer freed as device memory.
    assert_eq!(unsafe { aclrtFree(host.as_mut_ptr().cast()) }, ACL_ERROR_INVALID_PARAM);
    assert!(msg().contains("not device memory"));
}

#[test]
fn out_of_bounds_views_and_use_after_free() {
    init();
    let b = zeros::<f32>(4);
    // A [2,3] view over 4 floats.
    let dims = [2i64, 3];
    let strides = [3i64, 1];
    let storage = [6i64];
    // SAFETY: arrays have the stated lengths.
    let t =
        unsafe { aclCreateTensor(dims.as_ptr(), 2, dt::ACL_FLOAT, strides.as_ptr(), 0, 2, storage.as_ptr(), 1, b.ptr) };
    assert!(t.is_null());
    assert!(msg().contains("runs past the end of its allocation"));
    // Inside storage but past the storageDims.
    let storage4 = [4i64];
    // SAFETY: as above.
    let t = unsafe {
        aclCreateTensor(dims.as_ptr(), 2, dt::ACL_FLOAT, strides.as_ptr(), 0, 2, storage4.as_ptr(), 1, b.ptr)
    };
    assert!(t.is_null());
    assert!(msg().contains("outside storageDims"));

    let x = upload(&[1.0f32, 2.0]);
    let tx = tensor(&x, &[2]);
    free(x.ptr);
    let o = zeros::<f32>(2);
    let to = tensor(&o, &[2]);
    let mut ws = 0u64;
    let mut ex = null_mut();
    // SAFETY: live handles; tx's memory was freed (the mistake).
    assert_eq!(unsafe { aclnnSiluGetWorkspaceSize(tx, to, &mut ws, &mut ex) }, ACLNN_ERR_PARAM_INVALID);
    let m = msg();
    assert!(m.contains("use after free"), "{m}");
    // SAFETY: freeing twice.
    assert_eq!(unsafe { aclrtFree(x.ptr) }, ACL_ERROR_INVALID_PARAM);
    assert!(msg().contains("use after free"));
}

#[test]
fn shape_errors_name_the_shapes() {
    init();
    let a = zeros::<f32>(6);
    let b = zeros::<f32>(20);
    let o = zeros::<f32>(10);
    let (ta, tb, to) = (tensor(&a, &[2, 3]), tensor(&b, &[4, 5]), tensor(&o, &[2, 5]));
    let mut ws = 0u64;
    let mut ex = null_mut();
    // SAFETY: live handles; writable outputs.
    assert_eq!(unsafe { aclnnMmGetWorkspaceSize(ta, tb, to, 0, &mut ws, &mut ex) }, ACLNN_ERR_PARAM_INVALID);
    let m = msg();
    assert!(m.contains("aclnnMmGetWorkspaceSize: self [2,3] and mat2 [4,5]: inner dimensions differ"), "{m}");
    // SAFETY: NULL tensor argument.
    assert_eq!(unsafe { aclnnMmGetWorkspaceSize(ta, null(), to, 0, &mut ws, &mut ex) }, ACLNN_ERR_PARAM_NULLPTR);
    assert!(msg().contains("mat2 is NULL"));
}

#[test]
fn double_destroy_is_caught() {
    init();
    let a = zeros::<f32>(2);
    let t = tensor(&a, &[2]);
    destroy(t);
    // SAFETY: destroying an already destroyed handle (the mistake).
    assert_eq!(unsafe { aclDestroyTensor(t) }, ACLNN_ERR_PARAM_INVALID);
    assert!(msg().contains("double destroy"));
}

#[test]
fn a_thread_without_set_device_is_refused() {
    init();
    let h = std::thread::spawn(|| {
        let mut p = null_mut();
        // SAFETY: writable out pointer.
        let r = unsafe { aclrtMalloc(&mut p, 64, 0) };
        (r, msg())
    });
    let (r, m) = h.join().unwrap();
    assert_eq!(r, ACL_ERROR_RT_CONTEXT_NULL);
    assert!(m.contains("no device bound to this thread: call aclrtSetDevice on each thread"), "{m}");
    // The same thread after aclrtSetDevice is fine.
    let ok = std::thread::spawn(|| {
        // SAFETY: plain calls.
        unsafe {
            assert_eq!(aclrtSetDevice(0), 0);
            let mut p = null_mut();
            assert_eq!(aclrtMalloc(&mut p, 64, 0), 0);
            aclrtFree(p)
        }
    });
    assert_eq!(ok.join().unwrap(), 0);
}

#[test]
fn second_acl_init_is_repeat_initialize() {
    init();
    // SAFETY: NULL config path.
    assert_eq!(unsafe { aclInit(null()) }, ACL_ERROR_REPEAT_INITIALIZE);
    assert!(msg().contains("repeat initialize"));
}

#[test]
fn streams_do_not_order_with_each_other() {
    init();
    let (ex, ws, x, _o) = silu_exec();
    let w = malloc(ws as usize);
    let (mut s1, mut s2) = (null_mut(), null_mut());
    let host = [0f32; 4];
    // SAFETY: writable out pointers; device buffers of the stated sizes.
    unsafe {
        assert_eq!(aclrtCreateStream(&mut s1), 0);
        assert_eq!(aclrtCreateStream(&mut s2), 0);
        assert_eq!(aclnnSilu(w, ws, ex, s1), 0);
        // Overwriting the op's input from another stream before s1 is synchronised.
        let r = aclrtMemcpyAsync(x.ptr, 16, host.as_ptr().cast(), 16, ACL_MEMCPY_HOST_TO_DEVICE, s2);
        assert_eq!(r, ACL_ERROR_RT_DRV_INTERNAL_ERROR);
        assert!(msg().contains("streams are not ordered"));
        // Destroying a stream with queued work is refused.
        assert_eq!(aclrtDestroyStream(s1), ACL_ERROR_RT_PARAM_INVALID);
        assert_eq!(aclrtSynchronizeStream(s1), 0);
        assert_eq!(aclrtDestroyStream(s1), 0);
        assert_eq!(aclrtDestroyStream(s2), 0);
        // A destroyed stream is no longer valid.
        assert_eq!(aclrtSynchronizeStream(s1), ACL_ERROR_RT_PARAM_INVALID);
    }
    free(w);
}

#[test]
fn memory_accounting_and_out_of_memory() {
    init();
    let (mut free_before, mut total) = (0usize, 0usize);
    // SAFETY: writable out pointers.
    unsafe { assert_eq!(aclrtGetMemInfo(1, &mut free_before, &mut total), 0) };
    assert_eq!(total, 65536usize << 20);
    let mut p = null_mut();
    // SAFETY: writable out pointer; more than the simulated HBM.
    assert_eq!(unsafe { aclrtMalloc(&mut p, total + 1, 0) }, ACL_ERROR_RT_MEMORY_ALLOCATION);
    assert!(msg().contains("out of device memory"));
    assert!(free_before <= total);
    // SAFETY: zero-size allocation is refused.
    assert_eq!(unsafe { aclrtMalloc(&mut p, 0, 0) }, ACL_ERROR_INVALID_PARAM);
}

#[test]
fn identity_names_a_simulator() {
    init();
    // SAFETY: static strings.
    unsafe {
        let id = std::ffi::CStr::from_ptr(govbox_sim_identify()).to_str().unwrap();
        assert!(id.contains("SIMULATED"), "{id}");
        let soc = std::ffi::CStr::from_ptr(aclrtGetSocName()).to_str().unwrap();
        assert!(soc.ends_with("-sim"), "{soc}");
    }
}
