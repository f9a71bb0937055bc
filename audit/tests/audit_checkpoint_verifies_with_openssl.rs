//! A signed tree head verifies with nothing but OpenSSL and the audit public key.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{Fixture, fill};
use govbox_audit::{ExportRange, SignedTreeHead};
use govbox_provisioning::{HexCase, unhex_vec};

fn openssl_verify(dir: &std::path::Path) -> std::process::Output {
    Command::new("openssl")
        .args(["pkeyutl", "-verify", "-pubin", "-inkey", "audit.pub", "-rawin", "-in", "msg", "-sigfile", "sig.bin"])
        .current_dir(dir)
        .output()
        .unwrap()
}

#[test]
fn openssl_pkeyutl_verifies_the_export_head() {
    if Command::new("openssl").arg("version").output().is_err() {
        println!("NOTICE: openssl is not installed; skipping the OpenSSL cross-check");
        return;
    }
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 9);
    let export = log.export(ExportRange::default()).unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&export).unwrap();
    let head: SignedTreeHead = serde_json::from_value(doc["head"].clone()).unwrap();

    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("audit.pub"), doc["device"]["audit_key_pem"].as_str().unwrap()).unwrap();
    std::fs::write(dir.path().join("msg"), head.message()).unwrap();
    std::fs::write(dir.path().join("sig.bin"), unhex_vec(&head.signature, HexCase::Lower).unwrap()).unwrap();
    let out = openssl_verify(dir.path());
    assert!(
        out.status.success(),
        "openssl refused: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Signature Verified Successfully"));
    let text = String::from_utf8(head.message()).unwrap();
    assert!(text.starts_with("govbox-audit-sth/1\n9\n"), "{text}");

    // The same signature over another tree size is refused.
    let mut other = head.clone();
    other.tree_size = 8;
    std::fs::write(dir.path().join("msg"), other.message()).unwrap();
    assert!(!openssl_verify(dir.path()).status.success());
}
