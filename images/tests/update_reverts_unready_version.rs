//! A new version that never becomes ready is reverted: at once by `apply`, or, when the apply
//! died during the trial, by `boot-check` after [`BOOT_LIMIT`] unconfirmed starts. A trial that
//! did become ready is committed by `boot-ok`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod update_support;

use std::panic::{AssertUnwindSafe, catch_unwind};

use govbox_images::update::{BOOT_LIMIT, BootAction, FaultPoint, Phase, Slot, apply, boot_check, boot_ok};
use update_support::{Fixture, TestHost};

#[test]
fn apply_reverts_a_version_that_is_not_ready() {
    let f = Fixture::new();
    apply(&f.root, &f.bundle("1.0.0", 1), &mut TestHost::ready()).unwrap();
    let mut host = TestHost::never_ready();
    let e = apply(&f.root, &f.bundle("2.0.0", 2), &mut host).unwrap_err();
    assert_eq!(e.code(), "update_reverted", "{e}");
    assert_eq!(f.current(), Some(Slot::A));
    assert_eq!(host.restarts, 2, "restarted on the new slot, then on the old one");
    let steps: Vec<&str> = host.steps.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(steps, ["staged", "switched", "reverted"]);
    let st = f.root.state().unwrap().unwrap();
    assert_eq!((st.phase, st.current, st.previous), (Phase::Reverted, Slot::A, Some(Slot::B)));
    // The failed version's security version was never stored.
    assert_eq!(f.root.security_version().unwrap(), 1);
    assert!(f.slot_file(Slot::A, "bin/govboxd").contains("govboxd 1.0.0"));
}

/// Applies `version` and dies while waiting for readiness, as a power loss would.
fn die_during_trial(f: &Fixture, version: &str, sv: u64) {
    let mut host = TestHost { fault: Some(FaultPoint::DuringTrial), ..TestHost::ready() };
    let bundle = f.bundle(version, sv);
    assert!(catch_unwind(AssertUnwindSafe(|| apply(&f.root, &bundle, &mut host))).is_err());
    assert_eq!(f.root.state().unwrap().unwrap().phase, Phase::Trial);
}

#[test]
fn boot_check_reverts_a_crash_loop_after_the_limit() {
    let f = Fixture::new();
    apply(&f.root, &f.bundle("1.0.0", 1), &mut TestHost::ready()).unwrap();
    die_during_trial(&f, "2.0.0", 2);
    assert_eq!(f.current(), Some(Slot::B));
    let trust = f.trust();
    for n in 1..=BOOT_LIMIT {
        let mut host = TestHost::ready();
        assert_eq!(boot_check(&f.root, Some(&trust), &mut host).unwrap(), BootAction::Counted { boot_count: n });
        assert!(host.has_step("trial_boot"));
        assert_eq!(f.current(), Some(Slot::B));
    }
    let mut host = TestHost::ready();
    let r = boot_check(&f.root, Some(&trust), &mut host).unwrap();
    assert!(matches!(r, BootAction::Reverted { .. }), "{r:?}");
    assert!(host.has_step("reverted"));
    assert_eq!(host.restarts, 0, "boot-check runs before a start and restarts nothing");
    assert_eq!(f.current(), Some(Slot::A));
    assert_eq!(f.root.security_version().unwrap(), 1);
    // Nothing more to do afterwards.
    assert_eq!(boot_check(&f.root, Some(&trust), &mut TestHost::ready()).unwrap(), BootAction::Nothing);
}

#[test]
fn boot_ok_commits_a_trial_whose_apply_died() {
    let f = Fixture::new();
    apply(&f.root, &f.bundle("1.0.0", 1), &mut TestHost::ready()).unwrap();
    die_during_trial(&f, "2.0.0", 3);
    let trust = f.trust();
    assert_eq!(
        boot_check(&f.root, Some(&trust), &mut TestHost::ready()).unwrap(),
        BootAction::Counted { boot_count: 1 }
    );
    let mut host = TestHost::ready();
    assert_eq!(boot_ok(&f.root, &mut host).unwrap(), BootAction::Committed);
    assert!(host.has_step("committed"));
    assert_eq!((f.current(), f.root.security_version().unwrap()), (Some(Slot::B), 3));
    assert_eq!(f.root.state().unwrap().unwrap().phase, Phase::Committed);
    assert_eq!(boot_check(&f.root, Some(&trust), &mut TestHost::ready()).unwrap(), BootAction::Nothing);
}

#[test]
fn boot_check_stays_out_of_a_running_apply() {
    let f = Fixture::new();
    apply(&f.root, &f.bundle("1.0.0", 1), &mut TestHost::ready()).unwrap();
    let _lock = f.root.lock().unwrap();
    assert_eq!(boot_check(&f.root, None, &mut TestHost::ready()).unwrap(), BootAction::ApplyRunning);
    assert_eq!(boot_ok(&f.root, &mut TestHost::ready()).unwrap(), BootAction::ApplyRunning);
    let e = apply(&f.root, &f.bundle("2.0.0", 1), &mut TestHost::ready()).unwrap_err();
    assert_eq!(e.code(), "update_busy");
}
