//! Deleting an entry, in the store or in an export, is detected as a gap at that seq.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, assert_fails_with, edit_export, fill, open_sled};
use govbox_audit::{ExportRange, verify_export};

#[test]
fn an_entry_deleted_from_the_store_is_a_gap_at_its_seq() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 20);
    log.close().unwrap();
    drop(log);

    let db = open_sled(&fx.db_path());
    db.open_tree("entries").unwrap().remove(9u64.to_be_bytes()).unwrap();
    db.flush().unwrap();
    drop(db);

    let log = fx.open();
    let report = log.verify_store().unwrap();
    assert_fails_with(&report, "seq 9: missing (gap)");
    assert_eq!(report.gaps, vec![(9, 9)]);
    assert_eq!(report.count, 19);
    let err = log.export(ExportRange::default()).unwrap_err();
    assert!(err.to_string().contains("seq 9: missing"), "{err}");
}

#[test]
fn a_leaf_deleted_from_the_store_is_a_gap_too() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 20);
    log.close().unwrap();
    drop(log);

    let db = open_sled(&fx.db_path());
    db.open_tree("leaves").unwrap().remove(4u64.to_be_bytes()).unwrap();
    db.flush().unwrap();
    drop(db);

    let report = fx.open().verify_store().unwrap();
    assert_fails_with(&report, "seq 4: leaf missing (gap)");
}

#[test]
fn an_unacknowledged_tail_deleted_after_a_crash_refuses_to_open() {
    // Entries after the last checkpoint are replayed on open; one missing there stops the log
    // from signing over a hole.
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 10);
    log.checkpoint().unwrap();
    fill(&log, 5);
    drop(log); // Drop closes too, making a checkpoint at 15: remove it and the frontier with it.
    let db = open_sled(&fx.db_path());
    db.open_tree("checkpoints").unwrap().remove(15u64.to_be_bytes()).unwrap();
    let meta = db.open_tree("meta").unwrap();
    meta.remove("frontier").unwrap();
    db.open_tree("entries").unwrap().remove(12u64.to_be_bytes()).unwrap();
    db.flush().unwrap();
    drop((meta, db));

    let err = govbox_audit::AuditLog::open(fx.audit_dir(), fx.keys(), Default::default()).unwrap_err();
    assert_eq!(err.code(), "audit_corrupt");
    assert!(err.to_string().contains("seq 12: missing"), "{err}");
}

#[test]
fn an_entry_deleted_from_an_export_is_a_gap_at_its_seq() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 20);
    let export = log.export(ExportRange::default()).unwrap();

    let bad = edit_export(&export, |v| {
        v["entries"].as_array_mut().unwrap().remove(5);
    });
    let report = verify_export(&bad, None, None).unwrap();
    assert_fails_with(&report, "seq 5: missing (gap)");
    assert_eq!(report.gaps, vec![(5, 5)]);
    assert_eq!(report.count, 19);

    // The last entry: still a gap, at seq 19.
    let bad = edit_export(&export, |v| {
        v["entries"].as_array_mut().unwrap().pop();
    });
    assert_fails_with(&verify_export(&bad, None, None).unwrap(), "seq 19: missing (gap)");

    // Renumbering the wrappers to hide the gap: the entry's own seq field disagrees.
    let bad = edit_export(&export, |v| {
        let list = v["entries"].as_array_mut().unwrap();
        list.remove(5);
        for (i, e) in list.iter_mut().enumerate() {
            e["seq"] = (i as u64).into();
        }
        v["to"] = 18.into();
    });
    assert_fails_with(&verify_export(&bad, None, None).unwrap(), "seq 5: entry seq field is 6");
}
