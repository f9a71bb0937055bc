//! The simulator catches the misuses a real NPU punishes, and our wrapper reports each as
//! `DriverError::Device` naming the call, with the simulator's message.
#![cfg(feature = "ascend")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common {
    pub mod ascend_sim;
}

use govbox_drivers::DriverError;
use govbox_drivers::ascend::raw::Runtime;

fn runtime() -> Runtime {
    let rt = Runtime::open_with_library(&common::ascend_sim::sim_lib(), 0).unwrap();
    assert!(rt.simulated());
    rt
}

fn f32s(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// The error is `Device` for `call`, with a non-empty runtime message; returns the message.
fn device_error(e: DriverError, call: &str) -> String {
    match e {
        DriverError::Device { backend, call: c, code, message } => {
            assert_eq!(backend, "ascend");
            assert_eq!(c, call, "the failing call is named (message: {message})");
            assert_ne!(code, 0);
            assert!(!message.is_empty() && !message.starts_with("(no message"), "{message}");
            eprintln!("{call} refused (code {code}): {message}");
            message
        }
        other => panic!("expected a Device error from {call}, got {other}"),
    }
}

#[test]
fn reading_back_before_a_sync_is_refused() {
    let rt = runtime();
    // An async host-to-device copy still queued.
    let m = rt.alloc(16).unwrap();
    rt.copy_to_device_async(&m, f32s(&[1.0, 2.0, 3.0, 4.0])).unwrap();
    let mut out = [0u8; 16];
    device_error(rt.read_unsynchronized(&m, &mut out).unwrap_err(), "aclrtMemcpy");
    rt.synchronize().unwrap();
    rt.read_unsynchronized(&m, &mut out).unwrap();
    assert_eq!(out.to_vec(), f32s(&[1.0, 2.0, 3.0, 4.0]), "after the sync the copy has landed");

    // A queued op writing its output.
    let x = rt.upload(&f32s(&[1.0, -2.0])).unwrap();
    let y = rt.alloc(8).unwrap();
    rt.prepare_muls(&x, 3.0, &y, 2).unwrap().launch().unwrap();
    let mut out = [0u8; 8];
    device_error(rt.read_unsynchronized(&y, &mut out).unwrap_err(), "aclrtMemcpy");
    rt.synchronize().unwrap();
    rt.read_unsynchronized(&y, &mut out).unwrap();
    assert_eq!(out.to_vec(), f32s(&[3.0, -6.0]));
}

#[test]
fn a_reused_executor_is_refused() {
    let rt = runtime();
    let x = rt.upload(&f32s(&[1.0, 2.0])).unwrap();
    let y = rt.alloc(8).unwrap();
    let op = rt.prepare_muls(&x, 2.0, &y, 2).unwrap();
    // SAFETY: the first launch of this executor.
    unsafe { op.launch_unchecked() }.unwrap();
    // SAFETY: the second launch is the misuse under test; the simulator refuses it before
    // touching any memory.
    let e = unsafe { op.launch_unchecked() }.unwrap_err();
    device_error(e, "aclnnMuls");
    rt.synchronize().unwrap();
    let mut out = [0u8; 8];
    rt.read_unsynchronized(&y, &mut out).unwrap();
    assert_eq!(out.to_vec(), f32s(&[2.0, 4.0]), "the first launch ran once");
}

#[test]
fn a_host_pointer_passed_as_device_memory_is_refused() {
    let rt = runtime();
    let mut host = vec![0u8; 64];
    // SAFETY: the misuse under test: `host` is host memory. The simulator checks the address
    // against its device allocations and fails the call without writing.
    let e = unsafe { rt.copy_to_address_async(host.as_mut_ptr().cast(), host.len(), vec![7u8; 64]) }.unwrap_err();
    device_error(e, "aclrtMemcpyAsync");
    rt.synchronize().unwrap();
    assert!(host.iter().all(|&b| b == 0), "host memory was not written");
}
