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
    panic!("the Ascend simulator was not found: build the simulator: cargo build -p govbox-ascend-sim");
}
