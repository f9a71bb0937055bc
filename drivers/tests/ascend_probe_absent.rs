//! With `GOVBOX_ASCEND_SIM_LIB` naming a file that does not exist, probing reports Ascend absent
//! (no panic) and `device = "auto"` falls back to the CPU. One test per binary: it sets an
//! environment variable.
#![cfg(feature = "ascend")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use govbox_drivers::device::{self, DeviceSpec};
use govbox_drivers::{DeviceKind, DriverError};

#[test]
fn a_missing_library_is_absent_and_auto_picks_the_cpu() {
    let missing = std::env::temp_dir().join("govbox-no-such-dir/libgovbox_ascend_sim.so");
    // SAFETY: this test binary has this one test, so no other thread reads the environment.
    unsafe { std::env::set_var("GOVBOX_ASCEND_SIM_LIB", &missing) };
    let p = govbox_drivers::ascend::probe();
    eprintln!("{}", p.summary());
    assert_eq!(p.kind, DeviceKind::Ascend);
    assert!(p.compiled && !p.present && !p.simulated && p.devices == 0, "{p:?}");
    assert!(p.detail.contains("govbox-no-such-dir/libgovbox_ascend_sim.so"), "{}", p.detail);
    let o = device::open(DeviceSpec::Auto, 1).unwrap();
    assert_eq!(o.chosen, DeviceSpec::Cpu);
    assert_eq!(o.backend.info().kind, DeviceKind::Cpu);
    match device::open(DeviceSpec::Ascend(0), 1) {
        Err(DriverError::Unavailable { backend: "ascend", reason }) => assert!(reason.contains("govbox-no-such-dir")),
        other => panic!("an explicit ascend:0 must fail with the reason, got {other:?}"),
    }
}
