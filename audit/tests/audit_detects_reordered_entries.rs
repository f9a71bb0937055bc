//! Swapping two entries, in the store or in an export, is detected and the seqs are named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, assert_fails_with, edit_export, fill, open_sled};
use govbox_audit::{ExportRange, verify_export};

#[test]
fn entries_swapped_in_the_store_are_named_by_seq() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 20);
    log.close().unwrap();
    drop(log);

    let db = open_sled(&fx.db_path());
    let entries = db.open_tree("entries").unwrap();
    let (a, b) = (entries.get(3u64.to_be_bytes()).unwrap().unwrap(), entries.get(4u64.to_be_bytes()).unwrap().unwrap());
    entries.insert(3u64.to_be_bytes(), b).unwrap();
    entries.insert(4u64.to_be_bytes(), a).unwrap();
    db.flush().unwrap();
    drop((entries, db));

    let report = fx.open().verify_store().unwrap();
    assert_fails_with(&report, "seq 3: entry hash mismatch");
    assert_fails_with(&report, "seq 3: entry seq field is 4");
    assert_fails_with(&report, "seq 4: entry seq field is 3");
}

#[test]
fn entries_and_leaves_swapped_in_the_store_break_the_signed_roots() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 20);
    log.close().unwrap();
    drop(log);

    let db = open_sled(&fx.db_path());
    for tree in ["entries", "leaves"] {
        let t = db.open_tree(tree).unwrap();
        let (a, b) = (t.get(3u64.to_be_bytes()).unwrap().unwrap(), t.get(4u64.to_be_bytes()).unwrap().unwrap());
        t.insert(3u64.to_be_bytes(), b).unwrap();
        t.insert(4u64.to_be_bytes(), a).unwrap();
    }
    db.flush().unwrap();
    drop(db);

    let report = fx.open().verify_store().unwrap();
    assert_fails_with(&report, "seq 3: entry seq field is 4");
    assert_fails_with(&report, "checkpoint 20: root differs from the leaves");
}

#[test]
fn entries_swapped_in_an_export_are_named_by_seq() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 20);
    let export = log.export(ExportRange::default()).unwrap();

    // Whole wrappers swapped: the order is wrong.
    let bad = edit_export(&export, |v| v["entries"].as_array_mut().unwrap().swap(3, 4));
    assert_fails_with(&verify_export(&bad, None, None).unwrap(), "seq 3: out of order");

    // Contents swapped under the original seqs and leaves.
    let bad = edit_export(&export, |v| {
        let list = v["entries"].as_array_mut().unwrap();
        let (a, b) = (list[3]["entry"].clone(), list[4]["entry"].clone());
        list[3]["entry"] = b;
        list[4]["entry"] = a;
    });
    let report = verify_export(&bad, None, None).unwrap();
    assert_fails_with(&report, "seq 3: entry hash mismatch");
    assert_fails_with(&report, "seq 3: entry seq field is 4");

    // Contents and leaves swapped, seqs renumbered: the root no longer matches.
    let bad = edit_export(&export, |v| {
        let list = v["entries"].as_array_mut().unwrap();
        list.swap(3, 4);
        list[3]["seq"] = 3.into();
        list[4]["seq"] = 4.into();
    });
    let report = verify_export(&bad, None, None).unwrap();
    assert_fails_with(&report, "seq 3: entry seq field is 4");
    assert_fails_with(&report, "does not equal the signed root");
}
