//! Dying at any step of `apply` (here: a panic at each fault point, in process; the CLI test
//! kills a real process) leaves `current` on a complete slot that verifies against its signed
//! manifest, and the stored security version never falls. `boot-check` then cleans up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod update_support;

use std::panic::{AssertUnwindSafe, catch_unwind};

use govbox_images::update::{FaultPoint, Phase, Slot, apply, boot_check, status};
use update_support::{Fixture, TestHost};

#[test]
fn every_fault_point_leaves_a_complete_verified_current_slot() {
    let points = [FaultPoint::AfterStage, FaultPoint::MidSwitch, FaultPoint::AfterSwitch, FaultPoint::DuringTrial];
    for point in points {
        let f = Fixture::new();
        apply(&f.root, &f.bundle("1.0.0", 1), &mut TestHost::ready()).unwrap();
        let trust = f.trust();
        let mut host = TestHost { fault: Some(point), ..TestHost::ready() };
        let bundle = f.bundle("2.0.0", 2);
        assert!(catch_unwind(AssertUnwindSafe(|| apply(&f.root, &bundle, &mut host))).is_err());

        let expect_new = matches!(point, FaultPoint::AfterSwitch | FaultPoint::DuringTrial);
        let cur = f.current().unwrap();
        assert_eq!(cur, if expect_new { Slot::B } else { Slot::A }, "{point:?}");
        f.root.verify_slot(cur, Some(&trust)).unwrap();
        assert_eq!(f.root.security_version().unwrap(), 1, "{point:?}: not raised before a commit");

        boot_check(&f.root, Some(&trust), &mut TestHost::ready()).unwrap();
        f.assert_no_leftovers();
        let cur = f.current().unwrap();
        let s = status(&f.root, Some(&trust), true).unwrap();
        assert!(s.slots.iter().all(|s| s.problem.is_none()), "{point:?}: {s:?}");
        let st = s.state.unwrap();
        assert_eq!(st.current, cur, "{point:?}: the state agrees with the link");
        if expect_new {
            assert_eq!((st.phase, st.boot_count), (Phase::Trial, 1), "{point:?}");
        } else {
            assert_ne!(st.phase, Phase::Trial, "{point:?}");
        }
        assert_eq!(s.security_version, 1);

        // The box can be updated again; an unconfirmed trial is reverted first.
        apply(&f.root, &f.bundle("3.0.0", 3), &mut TestHost::ready()).unwrap();
        let cur = f.current().unwrap();
        assert!(f.slot_file(cur, "bin/govboxd").contains("govboxd 3.0.0"), "{point:?}");
        assert_eq!(f.root.security_version().unwrap(), 3);
        f.root.verify_slot(cur, Some(&trust)).unwrap();
    }
}

#[test]
fn a_damaged_trial_slot_is_reverted_at_boot() {
    let f = Fixture::new();
    apply(&f.root, &f.bundle("1.0.0", 1), &mut TestHost::ready()).unwrap();
    let mut host = TestHost { fault: Some(FaultPoint::AfterSwitch), ..TestHost::ready() };
    let bundle = f.bundle("2.0.0", 2);
    assert!(catch_unwind(AssertUnwindSafe(|| apply(&f.root, &bundle, &mut host))).is_err());
    std::fs::write(f.root.slot_dir(Slot::B).join("payload/bin/govbox"), "#!/bin/sh\necho evil\n").unwrap();
    let r = boot_check(&f.root, Some(&f.trust()), &mut TestHost::ready()).unwrap();
    assert!(format!("{r:?}").contains("does not verify"), "{r:?}");
    assert_eq!(f.current(), Some(Slot::A));
}
