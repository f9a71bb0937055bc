//! Finding govbox's Ascend simulator library for tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The simulator: `GOVBOX_ASCEND_SIM_LIB`, else target/{debug,debug/deps,release,release/deps}
/// (the dev-dependency on govbox-ascend-sim builds it). Panics with how to build it when none is
/// found.
pub fn sim_lib() -> PathBuf {
    if let Some(p) = std::env::var_os("GOVBOX_ASCEND_SIM_LIB").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    for dir in ["debug", "debug/deps", "release", "release/deps"] {
        let p = target.join(dir).join("libgovbox_ascend_sim.so");
        if p.exists() {
            return p;
        }
    }
    panic!("the Ascend simulator was not found: build the simulator: cargo build -p govbox-ascend-sim");
}
