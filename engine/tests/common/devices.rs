//! Running one test body on every backend, in the manner of candle's `test_device!`.
//!
//! `test_device!(name, |backend| body)` expands to a module `name` with the tests `name::cpu`,
//! `name::ascend` and, with the engine's `cuda` feature, `name::cuda`:
//! * `cpu`: the CPU backend.
//! * `ascend`: the Ascend backend on govbox's simulator (engine test builds always enable the
//!   drivers' `ascend` feature through the dev-dependency). The simulator is
//!   `GOVBOX_ASCEND_SIM_LIB`, else `target/{debug,debug/deps,release}/libgovbox_ascend_sim.so`
//!   (the dev-dependency on govbox-ascend-sim builds it); none found fails the test.
//! * `cuda`: CUDA device 0; without one the test prints "SKIPPED: no CUDA device" and passes,
//!   unless `GOVBOX_REQUIRE_CUDA=1`, when it fails.

use std::path::PathBuf;
use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_drivers::ascend::AscendBackend;
use govbox_drivers::cpu::CpuBackend;

/// The CPU backend (two threads).
pub fn cpu() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new(2).unwrap())
}

/// Where the simulator library is, or a failure saying how to build it.
pub fn sim_lib() -> PathBuf {
    if let Some(p) = std::env::var_os("GOVBOX_ASCEND_SIM_LIB").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| super::repo().join("target"), PathBuf::from);
    // The newest build wins: the dev-dependency rebuilds debug/deps on every test build, while a
    // `cargo build -p govbox-ascend-sim` copy in debug/ may be older.
    let newest = ["debug", "debug/deps", "release", "release/deps"]
        .iter()
        .map(|d| target.join(d).join("libgovbox_ascend_sim.so"))
        .filter_map(|p| Some((std::fs::metadata(&p).ok()?.modified().ok()?, p)))
        .max();
    if let Some((_, p)) = newest {
        return p;
    }
    panic!("no Ascend simulator under {}: build the simulator: cargo build -p govbox-ascend-sim", target.display());
}

/// The Ascend backend on the simulator. Prints the device name, so a log shows what ran.
pub fn ascend() -> Arc<dyn Backend> {
    let lib = sim_lib();
    let b = AscendBackend::open_with_library(&lib, 0).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    let info = b.info();
    assert!(info.simulated, "{} is not the simulator: {info:?}", lib.display());
    eprintln!("backend: {} (simulated: {})", info.name, info.simulated);
    Arc::new(b)
}

/// CUDA device 0, or `None` (after saying so) when there is none and GOVBOX_REQUIRE_CUDA is not 1.
pub fn cuda() -> Option<Arc<dyn Backend>> {
    match govbox_drivers::device::open(govbox_drivers::DeviceSpec::Cuda(0), 1) {
        Ok(o) => {
            eprintln!("backend: {}", o.backend.info().name);
            Some(o.backend)
        }
        Err(e) if std::env::var("GOVBOX_REQUIRE_CUDA").as_deref() != Ok("1") => {
            eprintln!("SKIPPED: no CUDA device ({e})");
            None
        }
        Err(e) => panic!("GOVBOX_REQUIRE_CUDA=1 but CUDA device 0 did not open: {e}"),
    }
}

/// Defines `name::cpu`, `name::ascend` and (feature `cuda`) `name::cuda`, each calling `body`
/// (a closure taking an `Arc<dyn Backend>`) with that backend.
#[allow(unused_macros)]
macro_rules! test_device {
    ($name:ident, $body:expr) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[test]
            fn cpu() {
                ($body)($crate::common::devices::cpu())
            }

            #[test]
            fn ascend() {
                ($body)($crate::common::devices::ascend())
            }

            #[cfg(feature = "cuda")]
            #[test]
            fn cuda() {
                if let Some(b) = $crate::common::devices::cuda() {
                    ($body)(b)
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use test_device;
