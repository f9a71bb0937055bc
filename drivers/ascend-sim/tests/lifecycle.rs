//! Process-wide lifecycle (its own test binary, one test, so that aclFinalize and the
//! environment do not disturb other tests): calls before aclInit, device count from the
//! environment, per-device memory accounting, DCMI, aclFinalize and a fresh aclInit.

mod common;

use std::ptr::{null, null_mut};

use common::msg;
use govbox_ascend_sim::codes::*;
use govbox_ascend_sim::*;

#[test]
fn lifecycle_devices_memory_and_dcmi() {
    // SAFETY: this binary has a single test, so no other thread reads the environment now.
    unsafe {
        std::env::set_var("GOVBOX_ASCEND_SIM_DEVICES", "2");
        std::env::set_var("GOVBOX_ASCEND_SIM_HBM_MB", "64");
    }
    // SAFETY: plain calls and writable out pointers throughout.
    unsafe {
        let mut p = null_mut();
        assert_eq!(aclrtSetDevice(0), ACL_ERROR_UNINITIALIZE);
        assert!(msg().contains("call aclInit first"));
        assert_eq!(aclrtMalloc(&mut p, 16, 0), ACL_ERROR_UNINITIALIZE);
        assert!(aclrtGetSocName().is_null());

        assert_eq!(aclInit(null()), 0);
        assert_eq!(aclInit(null()), ACL_ERROR_REPEAT_INITIALIZE);
        let mut n = 0u32;
        assert_eq!(aclrtGetDeviceCount(&mut n), 0);
        assert_eq!(n, 2);
        assert_eq!(aclrtSetDevice(2), ACL_ERROR_RT_INVALID_DEVICEID);
        assert!(msg().contains("device 2 does not exist"));
        assert_eq!(aclrtSetDevice(1), 0);
        let mut dev = -1;
        assert_eq!(aclrtGetDevice(&mut dev), 0);
        assert_eq!(dev, 1);

        // Per-device accounting: 64 MiB total, free drops by exactly what is allocated.
        let (mut free0, mut total) = (0usize, 0usize);
        assert_eq!(aclrtGetMemInfo(1, &mut free0, &mut total), 0);
        assert_eq!((free0, total), (64 << 20, 64 << 20));
        assert_eq!(aclrtMalloc(&mut p, 10 << 20, 0), 0);
        let mut free1 = 0usize;
        assert_eq!(aclrtGetMemInfo(1, &mut free1, &mut total), 0);
        assert_eq!(free1, free0 - (10 << 20));
        let mut q = null_mut();
        assert_eq!(aclrtMalloc(&mut q, 60 << 20, 0), ACL_ERROR_RT_MEMORY_ALLOCATION);

        // Memory of device 1 used from a thread bound to device 0.
        let addr = p.addr();
        let r = std::thread::spawn(move || {
            assert_eq!(aclrtSetDevice(0), 0);
            let r = aclrtFree(std::ptr::with_exposed_provenance_mut(addr));
            (r, msg())
        })
        .join()
        .unwrap();
        assert_eq!(r.0, ACL_ERROR_INVALID_PARAM);
        assert!(r.1.contains("memory of device 1"), "{}", r.1);

        // DCMI: needs dcmi_init; cards 0..2; health OK; HBM from the registry.
        let mut t = 0;
        assert_eq!(dcmi_get_device_temperature(0, 0, &mut t), DCMI_ERR_CODE_INNER_ERR);
        assert_eq!(dcmi_init(), 0);
        let (mut num, mut list) = (0, [0i32; 4]);
        assert_eq!(dcmi_get_card_num_list(&mut num, list.as_mut_ptr(), 4), 0);
        assert_eq!((num, &list[..2]), (2, &[0, 1][..]));
        assert_eq!(dcmi_get_device_temperature(1, 0, &mut t), 0);
        assert!((20..100).contains(&t));
        let mut h = 99u32;
        assert_eq!(dcmi_get_device_health(0, 0, &mut h), 0);
        assert_eq!(h, 0);
        let mut info = dcmi_hbm_info::default();
        assert_eq!(dcmi_get_device_hbm_info(1, 0, &mut info), 0);
        assert_eq!((info.memory_size, info.memory_usage), (64, 10));
        assert_eq!(dcmi_get_device_hbm_info(2, 0, &mut info), DCMI_ERR_CODE_INVALID_DEVICE_ID);

        // aclFinalize frees everything; calls fail until a fresh aclInit, which needs a new
        // aclrtSetDevice on this thread.
        assert_eq!(aclFinalize(), 0);
        assert_eq!(aclrtFree(p), ACL_ERROR_UNINITIALIZE);
        assert_eq!(aclInit(null()), 0);
        assert_eq!(aclrtMalloc(&mut q, 16, 0), ACL_ERROR_RT_CONTEXT_NULL);
        assert_eq!(aclrtSetDevice(0), 0);
        assert_eq!(aclrtMalloc(&mut q, 16, 0), 0);
        let mut f = 0usize;
        assert_eq!(aclrtGetMemInfo(1, &mut f, &mut total), 0);
        assert_eq!(f, (64 << 20) - 16);
        assert_eq!(aclrtFree(q), 0);
        assert_eq!(aclFinalize(), 0);
    }
}
