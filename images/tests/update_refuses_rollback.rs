//! Anti-rollback: a bundle below the stored security version is refused before anything is
//! written, and `rollback` refuses a slot below it; the stored version only rises.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod update_support;

use govbox_images::update::{Phase, Slot, apply, rollback};
use update_support::{Fixture, TestHost};

#[test]
fn lower_security_version_is_refused_and_current_is_untouched() {
    let f = Fixture::new();
    apply(&f.root, &f.bundle("1.0.0", 5), &mut TestHost::ready()).unwrap();
    assert_eq!(f.current(), Some(Slot::A));
    assert_eq!(f.root.security_version().unwrap(), 5);

    let mut host = TestHost::ready();
    let e = apply(&f.root, &f.bundle("2.0.0", 4), &mut host).unwrap_err();
    assert_eq!(e.code(), "security_version_too_low", "{e}");
    assert!(e.to_string().contains("security_version 4 is below the box's stored security version 5"), "{e}");
    assert!(host.has_step("refused"));
    assert_eq!(host.restarts, 0);
    assert_eq!(f.current(), Some(Slot::A));
    assert!(f.root.slot_meta(Slot::B).unwrap().is_none(), "nothing was staged");
    f.assert_no_leftovers();
    assert_eq!(f.root.security_version().unwrap(), 5);
    // An equal security version is allowed (a re-release without a security fix).
    apply(&f.root, &f.bundle("1.0.1", 5), &mut TestHost::ready()).unwrap();
    assert_eq!(f.current(), Some(Slot::B));
}

#[test]
fn rollback_refuses_a_slot_below_the_stored_security_version() {
    let f = Fixture::new();
    apply(&f.root, &f.bundle("1.0.0", 1), &mut TestHost::ready()).unwrap();
    apply(&f.root, &f.bundle("2.0.0", 2), &mut TestHost::ready()).unwrap();
    assert_eq!((f.current(), f.root.security_version().unwrap()), (Some(Slot::B), 2));

    let mut host = TestHost::ready();
    let e = rollback(&f.root, &f.trust(), &mut host).unwrap_err();
    assert_eq!(e.code(), "rollback_refused", "{e}");
    assert!(e.to_string().contains("security_version 1 is below the stored security version 2"), "{e}");
    assert!(host.has_step("rollback_refused"));
    assert_eq!(host.restarts, 0);
    assert_eq!(f.current(), Some(Slot::B));

    // Same security version: the rollback is allowed, and the stored version does not fall.
    apply(&f.root, &f.bundle("2.0.1", 2), &mut TestHost::ready()).unwrap();
    assert_eq!(f.current(), Some(Slot::A));
    let mut host = TestHost::ready();
    let meta = rollback(&f.root, &f.trust(), &mut host).unwrap();
    assert_eq!(meta.version, "2.0.0");
    assert_eq!(f.current(), Some(Slot::B));
    assert_eq!(host.restarts, 1);
    assert!(host.has_step("rolled_back"));
    let st = f.root.state().unwrap().unwrap();
    assert_eq!((st.phase, st.current, st.previous), (Phase::RolledBack, Slot::B, Some(Slot::A)));
    assert_eq!(f.root.security_version().unwrap(), 2);
}

#[test]
fn the_stored_security_version_only_rises() {
    let f = Fixture::new();
    assert_eq!(f.root.security_version().unwrap(), 0);
    assert_eq!(f.root.raise_security_version(7).unwrap(), 7);
    assert_eq!(f.root.raise_security_version(3).unwrap(), 7);
    assert_eq!(std::fs::read_to_string(f.root.security_version_file()).unwrap(), "7\n");
}
