//! Issue 19: the TPM anchor, against a software TPM (Debian's `swtpm`) and the real
//! `govbox-auditd`.
//!
//! Entries are made and anchored, the store is copied, more entries are made and anchored, and
//! then the copy is put back: a store cut back with file access alone, consistent in itself, that
//! every check inside the box would pass. Opened in-process it is refused (`audit_corrupt`);
//! `govbox-auditd` opens it held (nothing served, govboxd's handle refuses to connect) until an
//! operator acknowledges it over the socket; the acknowledgement is the next entry, in the export,
//! and re-anchors the TPM, so the next start serves at once. When swtpm cannot start here, the
//! test prints `SKIPPED: <reason>` and returns.
#![cfg(feature = "tpm")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::path::Path;

use common::swtpm::swtpm_or_skip;
use common::{request, start_auditd_with};
use govbox_audit::remote::AuditClient;
use govbox_audit::{
    AuditHandle, AuditKeys, AuditLog, AuditOptions, ExportRange, HmacKey, TpmAnchorConfig, read_hmac_secret,
    verify_export,
};
use govbox_provisioning::{PublicKey, SigningKey};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to.join(e.file_name()));
        } else {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn append(client: &AuditClient, n: u64) {
    let start = client.tree_size();
    for i in start..start + n {
        client.append_blocking(request(i)).unwrap();
    }
}

#[test]
fn a_store_cut_back_behind_its_tpm_anchor_is_refused_until_acknowledged() {
    let Some(swtpm) = swtpm_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("govbox.toml");
    let toml = format!("[audit]\ntpm_anchor = \"{}\"\ncheckpoint_interval_secs = 3600\n", swtpm.tcti());
    std::fs::write(&config, toml).unwrap();
    let db = dir.path().join("audit/db");

    // Five entries, anchored by the checkpoint; the insider copies the store.
    let (d, socket) = start_auditd_with(dir.path(), Some(&config));
    let client = AuditClient::connect(&socket).unwrap();
    append(&client, 5);
    assert_eq!(client.checkpoint().unwrap().tree_size, 5);
    let status = client.status().unwrap();
    assert_eq!(status.held, None);
    let anchor = status.anchor.unwrap();
    assert_eq!((anchor.anchored_size, anchor.last_error), (5, None));
    let first_counter = anchor.counter;
    drop((client, d));
    copy_dir(&db, &dir.path().join("db-copy"));

    // Five more, anchored; then the copy is put back.
    let (d, socket) = start_auditd_with(dir.path(), Some(&config));
    let client = AuditClient::connect(&socket).unwrap();
    assert_eq!(client.status().unwrap().held, None, "an untouched store is not held");
    append(&client, 5);
    client.checkpoint().unwrap();
    let anchor = client.status().unwrap().anchor.unwrap();
    assert_eq!(anchor.anchored_size, 10);
    assert!(anchor.counter > first_counter, "the counter went up: {anchor:?}");
    drop((client, d));
    std::fs::remove_dir_all(&db).unwrap();
    std::fs::rename(dir.path().join("db-copy"), &db).unwrap();

    // Opened in-process: refused.
    let keys_dir = dir.path().join("keys");
    let keys = || AuditKeys {
        device_key: Some(PublicKey::load_pem(keys_dir.join("device.pub")).unwrap()),
        ..AuditKeys::new(
            SigningKey::load_pem(keys_dir.join("audit.key")).unwrap(),
            read_hmac_secret(&keys_dir.join("audit-hmac.key")).unwrap(),
        )
    };
    let opts = AuditOptions { tpm_anchor: Some(TpmAnchorConfig::new(swtpm.tcti())), ..AuditOptions::default() };
    let err = AuditLog::open(dir.path().join("audit"), keys(), opts.clone()).unwrap_err();
    assert_eq!(err.code(), "audit_corrupt", "{err}");
    let msg = err.to_string();
    assert!(msg.contains("has 5 entries") && msg.contains("of 10 entries"), "{msg}");
    assert!(msg.contains("govbox audit acknowledge"), "{msg}");

    // govbox-auditd holds it: the status says why, nothing else is served, govboxd's handle
    // does not connect.
    let (d, socket) = start_auditd_with(dir.path(), Some(&config));
    let client = AuditClient::connect(&socket).unwrap();
    let held = client.status().unwrap().held.expect("the cut store is held");
    assert!(held.contains("entries were removed"), "{held}");
    let err = client.append_blocking(request(99)).unwrap_err();
    assert_eq!(err.code(), "audit_corrupt", "{err}");
    assert_eq!(client.checkpoint().unwrap_err().code(), "audit_corrupt");
    assert_eq!(client.export(ExportRange::default()).unwrap_err().code(), "audit_corrupt");
    let secret = read_hmac_secret(&keys_dir.join("audit-hmac.key")).unwrap();
    let err = AuditHandle::connect(&socket, HmacKey::new(&secret)).unwrap_err();
    assert_eq!(err.code(), "audit_corrupt", "{err}");

    // The operator acknowledges; the acknowledgement is entry 5.
    let reason = "store restored from the 09:00 backup after a disk fault, ticket 4711";
    let head = client.acknowledge(reason).unwrap();
    assert_eq!(head.tree_size, 6);
    assert!(client.acknowledge("again").unwrap_err().to_string().contains("nothing to acknowledge"));
    assert_eq!(client.status().unwrap().held, None);
    assert_eq!(client.append_blocking(request(6)).unwrap(), 6);
    let export = client.export(ExportRange::default()).unwrap();
    let report = verify_export(&export, None, Some(&client.public_key())).unwrap();
    assert!(report.ok && report.count == 7, "{report:#?}");
    let doc: serde_json::Value = serde_json::from_slice(&export).unwrap();
    let entry: serde_json::Value = serde_json::from_str(doc["entries"][5]["entry"].as_str().unwrap()).unwrap();
    assert_eq!((entry["kind"].as_str(), entry["action"].as_str()), (Some("admin"), Some("audit_anchor_acknowledged")));
    let uid = nix::unistd::getuid().as_raw();
    assert_eq!(entry["actor"], format!("audit-socket uid {uid}"));
    let subject = entry["subject"].as_str().unwrap();
    assert!(subject.contains(reason) && subject.contains("has 5 entries"), "{subject}");
    drop((client, d));

    // The TPM now anchors the acknowledged log: the next start serves at once, in-process too.
    let log = AuditLog::open(dir.path().join("audit"), keys(), opts).unwrap();
    assert_eq!(log.held(), None);
    assert!(log.anchor_status().unwrap().anchored_size >= 7);
}
