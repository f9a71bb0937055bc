//! Editing an entry's bytes, in the store or in an export, is detected and the seq is named.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, assert_fails_with, edit_export, fill, open_sled};
use govbox_audit::{ExportRange, verify_export};

#[test]
fn an_entry_edited_in_the_store_is_named_by_seq() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 20);
    log.close().unwrap();
    drop(log);

    let db = open_sled(&fx.db_path());
    let entries = db.open_tree("entries").unwrap();
    let old = entries.get(7u64.to_be_bytes()).unwrap().unwrap();
    let edited = String::from_utf8(old.to_vec()).unwrap().replace("client-1", "client-2");
    assert_ne!(edited.as_bytes(), old.as_ref());
    entries.insert(7u64.to_be_bytes(), edited.as_bytes()).unwrap();
    db.flush().unwrap();
    drop((entries, db));

    let log = fx.open();
    let report = log.verify_store().unwrap();
    assert_fails_with(&report, "seq 7: entry hash mismatch");
    assert_eq!(common::failures(&report).len(), 1, "{report:#?}");
    // An export of the edited store carries the mismatch to the auditor.
    let export = log.export(ExportRange::default()).unwrap();
    assert_fails_with(&verify_export(&export, None, None).unwrap(), "seq 7: entry hash mismatch");
}

#[test]
fn an_entry_and_its_leaf_edited_in_the_store_break_the_signed_roots() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 20);
    log.close().unwrap();
    drop(log);

    let db = open_sled(&fx.db_path());
    let (entries, leaves) = (db.open_tree("entries").unwrap(), db.open_tree("leaves").unwrap());
    let old = entries.get(3u64.to_be_bytes()).unwrap().unwrap();
    let edited = String::from_utf8(old.to_vec()).unwrap().replace("req-3", "req-X");
    entries.insert(3u64.to_be_bytes(), edited.as_bytes()).unwrap();
    leaves
        .insert(
            3u64.to_be_bytes(),
            &govbox_audit::merkle::leaf_hash(govbox_audit::merkle::HashAlgorithm::Sha256, edited.as_bytes()),
        )
        .unwrap();
    db.flush().unwrap();
    drop((entries, leaves, db));

    let report = fx.open().verify_store().unwrap();
    assert_fails_with(&report, "checkpoint 20: root differs from the leaves");
}

#[test]
fn an_entry_edited_in_an_export_is_named_by_seq() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 20);
    let export = log.export(ExportRange::default()).unwrap();
    assert!(verify_export(&export, None, Some(&fx.public())).unwrap().ok);

    let bad = edit_export(&export, |v| {
        let e = v["entries"][12]["entry"].as_str().unwrap().replace("req-12", "req-99");
        v["entries"][12]["entry"] = e.into();
    });
    let report = verify_export(&bad, None, None).unwrap();
    assert_fails_with(&report, "seq 12: entry hash mismatch");

    // Re-hashing the leaf too moves the failure to the signed root.
    let bad = edit_export(&export, |v| {
        let e = v["entries"][12]["entry"].as_str().unwrap().replace("req-12", "req-99");
        let leaf = govbox_provisioning::hex(&govbox_audit::merkle::leaf_hash(
            govbox_audit::merkle::HashAlgorithm::Sha256,
            e.as_bytes(),
        ));
        v["entries"][12]["entry"] = e.into();
        v["entries"][12]["leaf"] = leaf.into();
    });
    let report = verify_export(&bad, None, None).unwrap();
    assert_fails_with(&report, "does not equal the signed root");
    assert!(report.checks.iter().any(|c| c.name == "entries" && c.ok), "the entries themselves are consistent");
}
