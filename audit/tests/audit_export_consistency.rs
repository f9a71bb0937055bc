//! Successive exports prove that the log only grew; a forked, rewritten or truncated history
//! fails against the previous export.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, assert_fails_with, edit_export, fill, open_sled, request};
use govbox_audit::{AuditOptions, ExportRange, verify_export};
use govbox_provisioning::SigningKey;
use serde_json::Value;

#[test]
fn a_second_export_verifies_against_the_first() {
    let fx = Fixture::new();
    let log = fx.open_with(AuditOptions { checkpoint_every: 7, ..Default::default() });
    fill(&log, 30);
    let first = log.export(ExportRange::default()).unwrap();
    let r1 = verify_export(&first, None, Some(&fx.public())).unwrap();
    assert!(r1.ok, "{r1:#?}");
    assert_eq!((r1.from, r1.to, r1.count, r1.tree_size), (0, 29, 30, 30));
    assert!(r1.checks.iter().any(|c| c.name == "checkpoint" && c.ok), "stored checkpoints are included and checked");

    fill(&log, 25);
    // Only what is new since the first export: the range starts at seq 30, and the root is
    // recomputed from the left frontier.
    let second = log.export(ExportRange { from_seq: Some(30), ..Default::default() }).unwrap();
    let r2 = verify_export(&second, Some(&first), Some(&fx.public())).unwrap();
    assert!(r2.ok, "{r2:#?}");
    assert_eq!((r2.from, r2.to, r2.count), (30, 54, 25));
    let doc: Value = serde_json::from_slice(&second).unwrap();
    assert_eq!(doc["previous"]["tree_size"], 30);
    assert_eq!(doc["device"]["device_keyid"], fx.device.keyid());

    // A middle range, not the newest: verifies alone, does not move "last export".
    let middle = log.export(ExportRange { from_seq: Some(5), to_seq: Some(12), ..Default::default() }).unwrap();
    let r = verify_export(&middle, None, None).unwrap();
    assert!(r.ok && r.tree_size == 13, "{r:#?}");
    let third = log
        .export(ExportRange {
            since: Some(time::OffsetDateTime::now_utc() + time::Duration::hours(-1)),
            ..Default::default()
        })
        .unwrap();
    let r3 = verify_export(&third, Some(&second), None).unwrap();
    assert!(r3.ok, "{r3:#?}");
    assert_eq!(r3.from, 0);

    // The previous export given out of turn is named as such.
    let r = verify_export(&third, Some(&first), None).unwrap();
    assert_fails_with(&r, "continues from a later export");
}

#[test]
fn a_forked_log_with_the_same_key_fails_consistency() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 10);
    let first = log.export(ExportRange::default()).unwrap();

    // Another log with the same key, a different history of the same length, then more.
    let fork = fx.same_keys();
    let other = fork.open();
    for i in 0..10 {
        other.append_blocking(request(1000 + i)).unwrap();
    }
    let fork_first = other.export(ExportRange::default()).unwrap();
    fill(&other, 5);
    let fork_second = other.export(ExportRange::default()).unwrap();
    assert!(verify_export(&fork_second, Some(&fork_first), None).unwrap().ok, "the fork is consistent with itself");

    let r = verify_export(&fork_second, Some(&first), Some(&fx.public())).unwrap();
    assert_fails_with(&r, "previous export");
    // Splicing the genuine previous head in with the fork's proof: the proof fails.
    let spliced = edit_export(&fork_second, |v| {
        let first: Value = serde_json::from_slice(&first).unwrap();
        v["previous"] = first["head"].clone();
    });
    let r = verify_export(&spliced, Some(&first), None).unwrap();
    assert_fails_with(&r, "is NOT consistent with the previous export at size 10");
}

#[test]
fn rewritten_entries_resigned_with_the_key_fail_consistency() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 12);
    let first = log.export(ExportRange::default()).unwrap();
    fill(&log, 4);
    log.close().unwrap();
    drop(log);

    // An attacker with the key rewrites seq 2 and its leaf, and removes every checkpoint; the
    // log then re-signs a consistent-looking head over the rewritten tree.
    let db = open_sled(&fx.db_path());
    let (entries, leaves) = (db.open_tree("entries").unwrap(), db.open_tree("leaves").unwrap());
    let old = entries.get(2u64.to_be_bytes()).unwrap().unwrap();
    let edited = String::from_utf8(old.to_vec()).unwrap().replace("req-2", "req-Z");
    entries.insert(2u64.to_be_bytes(), edited.as_bytes()).unwrap();
    leaves
        .insert(
            2u64.to_be_bytes(),
            &govbox_audit::merkle::leaf_hash(govbox_audit::merkle::HashAlgorithm::Sha256, edited.as_bytes()),
        )
        .unwrap();
    db.drop_tree("checkpoints").unwrap();
    db.open_tree("meta").unwrap().remove("frontier").unwrap();
    db.flush().unwrap();
    drop((entries, leaves, db));

    let log = fx.open();
    let second = log.export(ExportRange::default()).unwrap();
    let alone = verify_export(&second, None, None).unwrap();
    assert_fails_with(&alone, "is NOT consistent with the previous export at size 12");
    assert_fails_with(&verify_export(&second, Some(&first), None).unwrap(), "NOT consistent");
}

#[test]
fn a_truncated_tail_is_detected_only_against_the_previous_export() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 20);
    let first = log.export(ExportRange::default()).unwrap();
    fill(&log, 10);
    log.close().unwrap();
    drop(log);

    // Remove seqs 15.. with their leaves, every checkpoint, the saved frontier and the record of
    // the last export: the store is then a consistent, shorter log.
    let db = open_sled(&fx.db_path());
    for tree in ["entries", "leaves"] {
        let t = db.open_tree(tree).unwrap();
        for seq in 15u64..30 {
            t.remove(seq.to_be_bytes()).unwrap();
        }
    }
    db.drop_tree("checkpoints").unwrap();
    let meta = db.open_tree("meta").unwrap();
    meta.remove("frontier").unwrap();
    meta.remove("last_export").unwrap();
    db.flush().unwrap();
    drop((meta, db));

    let log = fx.open();
    assert!(log.verify_store().unwrap().ok, "the shorter store is consistent in itself");
    let second = log.export(ExportRange::default()).unwrap();
    let alone = verify_export(&second, None, Some(&fx.public())).unwrap();
    assert!(alone.ok, "alone, the truncated export verifies: {alone:#?}");
    let against = verify_export(&second, Some(&first), Some(&fx.public())).unwrap();
    assert_fails_with(&against, "covers 20 entries but this export's log has only 15: the log was truncated");
}

#[test]
fn a_truncated_tail_with_its_export_record_left_refuses_to_open() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 20);
    log.export(ExportRange::default()).unwrap();
    drop(log);
    let db = open_sled(&fx.db_path());
    for tree in ["entries", "leaves"] {
        let t = db.open_tree(tree).unwrap();
        (15u64..20).for_each(|s| drop(t.remove(s.to_be_bytes()).unwrap()));
    }
    db.drop_tree("checkpoints").unwrap();
    db.open_tree("meta").unwrap().remove("frontier").unwrap();
    db.flush().unwrap();
    drop(db);
    let err = govbox_audit::AuditLog::open(fx.audit_dir(), fx.keys(), Default::default()).unwrap_err();
    assert!(err.to_string().contains("last export covers 20 entries but the log has 15"), "{err}");
}

#[test]
fn the_pinned_key_must_be_the_audit_key() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 3);
    let export = log.export(ExportRange::default()).unwrap();
    let stranger = SigningKey::generate().unwrap().public_key();
    assert_fails_with(&verify_export(&export, None, Some(&stranger)).unwrap(), "is not the pinned key");
    assert_fails_with(&verify_export(&export, None, Some(&fx.device)).unwrap(), "is the device identity key");

    // Swapping in another key (and re-signing everything with it) is caught by the pin only.
    let other = SigningKey::generate().unwrap();
    let forged = edit_export(&export, |v| {
        v["device"]["audit_key_pem"] = other.public_key().to_spki_pem().into();
        v["device"]["audit_keyid"] = other.public_key().keyid().into();
        let mut head: govbox_audit::SignedTreeHead = serde_json::from_value(v["head"].clone()).unwrap();
        let root = head.root().unwrap();
        head = govbox_audit::SignedTreeHead::sign(
            &other,
            govbox_provisioning::HashAlgorithm::Sha256,
            head.tree_size,
            &root,
            head.time,
        );
        v["head"] = serde_json::to_value(head).unwrap();
    });
    assert!(verify_export(&forged, None, None).unwrap().ok);
    assert_fails_with(&verify_export(&forged, None, Some(&fx.public())).unwrap(), "is not the pinned key");
}

#[test]
fn bad_ranges_and_inputs_are_clear_errors() {
    let fx = Fixture::new();
    let log = fx.open();
    assert!(log.export(ExportRange::default()).unwrap_err().to_string().contains("the log is empty"));
    fill(&log, 5);
    let e = log.export(ExportRange { to_seq: Some(9), ..Default::default() }).unwrap_err();
    assert_eq!(e.code(), "audit_bad_range");
    assert!(e.to_string().contains("the log ends at seq 4"), "{e}");
    let e = log.export(ExportRange { from_seq: Some(3), to_seq: Some(2), ..Default::default() }).unwrap_err();
    assert!(e.to_string().contains("no entries"), "{e}");

    for (bytes, needle) in [
        (&b"not json"[..], "not a valid export"),
        (&b"{}"[..], "not a valid export"),
        (&br#"{"format":"x"}"#[..], "not a valid export"),
    ] {
        let e = verify_export(bytes, None, None).unwrap_err();
        assert_eq!(e.code(), "audit_export_malformed");
        assert!(e.to_string().contains(needle), "{e}");
    }
    let good = log.export(ExportRange::default()).unwrap();
    let wrong = edit_export(&good, |v| v["format"] = "govbox-audit-export/9".into());
    assert!(verify_export(&wrong, None, None).unwrap_err().to_string().contains("expected 'govbox-audit-export/1'"));
    let e = verify_export(&good, Some(b"[]"), None).unwrap_err();
    assert!(e.to_string().contains("previous export"), "{e}");
}
