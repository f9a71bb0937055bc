//! Whether CUDA is here: the libraries cudarc loads, the devices libcuda reports, and the
//! device facts the backend reads once at open (its PCI bus id, its memory pool).

use std::panic::catch_unwind;

use cudarc::driver::CudaContext;

use super::panic_text;
use crate::DeviceKind;
use crate::device::Probe;

/// The reason a library did not load, as the dynamic loader words it.
pub(super) fn dlopen_reason(names: &[&str]) -> String {
    let mut last = String::new();
    for n in names {
        // SAFETY: loading a vendor library runs its initialisers; the CUDA libraries are made
        // to be loaded this way (cudarc does the same), and the handle is dropped at once.
        match unsafe { libloading::Library::new(n) } {
            Ok(_) => return format!("{n}: loads, but cudarc found none of its names"),
            Err(e) => last = e.to_string(),
        }
    }
    last
}

/// Whether cudarc finds each library, and which one it misses first.
pub(super) fn missing_library() -> Option<&'static str> {
    // SAFETY: these only try dlopen on cudarc's candidate names and drop the handles.
    let (cuda, blas, rtc) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
        )
    };
    if !cuda {
        Some("libcuda.so")
    } else if !blas {
        Some("libcublas.so")
    } else if !rtc {
        Some("libnvrtc.so")
    } else {
        None
    }
}

pub(super) fn lib_candidates(lib: &str) -> Vec<&'static str> {
    match lib {
        "libcuda.so" => vec!["libcuda.so.1", "libcuda.so"],
        "libcublas.so" => vec!["libcublas.so.13", "libcublas.so.12", "libcublas.so"],
        _ => vec!["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"],
    }
}

/// Probes for CUDA: whether libcuda loads and how many devices it reports. Never panics.
pub fn probe() -> Probe {
    let absent = |detail: String| Probe {
        kind: DeviceKind::Cuda,
        compiled: true,
        present: false,
        devices: 0,
        simulated: false,
        detail,
    };
    let found = catch_unwind(|| {
        // SAFETY: see `missing_library`.
        unsafe { cudarc::driver::sys::is_culib_present() }
    });
    match found {
        Ok(true) => {}
        Ok(false) => {
            return absent(format!("libcuda.so: not found ({})", dlopen_reason(&lib_candidates("libcuda.so"))));
        }
        Err(p) => return absent(format!("libcuda.so: {}", panic_text(p.as_ref()))),
    }
    let r = catch_unwind(|| -> std::result::Result<(u32, String), String> {
        cudarc::driver::result::init().map_err(|e| format!("cuInit: {e:?}"))?;
        let n = cudarc::driver::result::device::get_count().map_err(|e| format!("cuDeviceGetCount: {e:?}"))?;
        let mut v = 0i32;
        // SAFETY: `v` is a valid out-pointer for the duration of the call.
        let version = unsafe { cudarc::driver::sys::cuDriverGetVersion(&mut v) }.result();
        let version = match version {
            Ok(()) => format!("driver API {}.{}", v / 1000, v % 1000 / 10),
            Err(e) => format!("driver version unknown: {e:?}"),
        };
        let name = if n > 0 {
            cudarc::driver::result::device::get(0)
                .and_then(cudarc::driver::result::device::get_name)
                .unwrap_or_else(|e| format!("device 0 name unknown: {e:?}"))
        } else {
            String::new()
        };
        Ok((n.max(0) as u32, format!("libcuda, {version}{}{name}", if name.is_empty() { "" } else { ", " })))
    });
    match r {
        Ok(Ok((n, detail))) if n > 0 => {
            let missing = missing_library();
            match missing {
                None => Probe {
                    kind: DeviceKind::Cuda,
                    compiled: true,
                    present: true,
                    devices: n,
                    simulated: false,
                    detail,
                },
                Some(lib) => absent(format!(
                    "{detail}; but {lib}: not found ({}) - install the CUDA toolkit libraries or set LD_LIBRARY_PATH",
                    dlopen_reason(&lib_candidates(lib))
                )),
            }
        }
        Ok(Ok((_, detail))) => absent(format!("{detail}: no CUDA device")),
        Ok(Err(e)) => absent(e),
        Err(p) => absent(format!("libcuda: {}", panic_text(p.as_ref()))),
    }
}

/// Lets the device's default memory pool keep freed memory instead of returning it to the
/// driver at every synchronisation (its default), so that the per-op allocations of decode are
/// served from the pool. Best effort: a failure only costs speed.
pub(super) fn keep_pool_memory(ctx: &CudaContext) {
    let mut pool: cudarc::driver::sys::CUmemoryPool = std::ptr::null_mut();
    // SAFETY: `pool` is a valid out-pointer; the device handle comes from a live context.
    let r = unsafe { cudarc::driver::sys::cuDeviceGetDefaultMemPool(&mut pool, ctx.cu_device()) }.result();
    if r.is_err() || pool.is_null() {
        log::debug!("cuda: no default memory pool ({r:?})");
        return;
    }
    let mut threshold: u64 = u64::MAX;
    // SAFETY: the release threshold attribute takes a pointer to a cuuint64_t, which
    // `threshold` is, alive for the call.
    let r = unsafe {
        cudarc::driver::sys::cuMemPoolSetAttribute(
            pool,
            cudarc::driver::sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
            (&mut threshold as *mut u64).cast(),
        )
    }
    .result();
    if let Err(e) = r {
        log::debug!("cuda: memory pool release threshold not set: {e:?}");
    }
}

/// The device's PCI bus id ("0000:3b:00.0"), which NVML knows it by.
pub(super) fn pci_bus_id(ctx: &CudaContext) -> Option<String> {
    let mut buf = [0 as std::ffi::c_char; 32];
    // SAFETY: `buf` has room for the 32 bytes we say it has; the driver NUL-terminates.
    let r = unsafe { cudarc::driver::sys::cuDeviceGetPCIBusId(buf.as_mut_ptr(), buf.len() as i32, ctx.cu_device()) };
    r.result().ok()?;
    // SAFETY: the driver wrote a NUL-terminated string into `buf` (checked above).
    let s = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    s.to_str().ok().map(str::to_owned)
}
