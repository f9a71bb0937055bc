//! A log of the `gm` suite (SM2 audit key): its tree is SM3, its heads are SM2 with SM3 and name
//! both, its export verifies offline and is never read as `intl`; and OpenSSL 3, which nobody here
//! wrote, verifies a tree-head signature with the audit public key and reproduces the SM3 leaf
//! hashes and root.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use common::{Fixture, assert_fails_with, edit_export, fill};
use govbox_audit::merkle::{HashAlgorithm, leaf_hash, node_hash};
use govbox_audit::{AuditKeys, AuditLog, AuditOptions, ExportRange, SignedTreeHead, verify_export};
use govbox_provisioning::{KeyAlgorithm, Overwrite, SigningKey, Suite, hex};
use serde_json::Value;

/// `openssl`, if it is there and has SM2; otherwise says why the test is skipped.
fn openssl() -> Option<&'static str> {
    let out = Command::new("openssl").args(["list", "-public-key-algorithms"]).output().ok();
    let has_sm2 = out.is_some_and(|o| String::from_utf8_lossy(&o.stdout).to_lowercase().contains("sm2"));
    if !has_sm2 {
        eprintln!(
            "SKIPPED: `openssl list -public-key-algorithms` shows no SM2; install OpenSSL 3 with SM2 to run this"
        );
    }
    has_sm2.then_some("openssl")
}

/// `openssl dgst -sm3` of `bytes`, lower-case hex.
fn openssl_sm3(openssl: &str, dir: &Path, bytes: &[u8]) -> String {
    let f = dir.join("dgst.in");
    std::fs::write(&f, bytes).unwrap();
    let out = Command::new(openssl).args(["dgst", "-sm3", "-r"]).arg(&f).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}

fn gm_export(fx: &Fixture, n: u64) -> Vec<u8> {
    let log = fx.open();
    fill(&log, n);
    let bytes = log.export(ExportRange::default()).unwrap();
    log.close().unwrap();
    bytes
}

#[test]
fn a_gm_log_is_sm3_and_sm2_and_its_export_verifies_but_never_as_intl() {
    let fx = Fixture::with_alg(KeyAlgorithm::Sm2);
    assert_eq!(fx.keys().suite, Suite::Gm);
    let bytes = gm_export(&fx, 5);
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!((doc["head"]["alg"].as_str(), doc["head"]["hash"].as_str()), (Some("sm2"), Some("sm3")));
    // Leaves are SM3(0x00 || entry), not SHA-256.
    let e0 = &doc["entries"][0];
    let entry = e0["entry"].as_str().unwrap().as_bytes();
    assert_eq!(e0["leaf"].as_str().unwrap(), hex(&leaf_hash(HashAlgorithm::Sm3, entry)));
    assert_ne!(e0["leaf"].as_str().unwrap(), hex(&leaf_hash(HashAlgorithm::Sha256, entry)));

    let r = verify_export(&bytes, None, Some(&fx.public())).unwrap();
    assert!(r.ok, "{r:#?}");
    assert!(r.checks.iter().any(|c| c.name == "algorithms" && c.detail.contains("suite gm")), "{r:#?}");

    // Read as intl (the head claims a SHA-256 tree): the signature covers the hash, and the
    // algorithm check names the mix.
    let as_intl = edit_export(&bytes, |v| v["head"]["hash"] = "sha256".into());
    let r = verify_export(&as_intl, None, Some(&fx.public())).unwrap();
    assert_fails_with(&r, "suite gm, sm3 tree");
    assert_fails_with(&r, "does not match the message");
    // An Ed25519 claim under the pinned SM2 key is refused as a mix, not checked.
    let as_ed = edit_export(&bytes, |v| v["head"]["alg"] = "ed25519".into());
    let r = verify_export(&as_ed, None, Some(&fx.public())).unwrap();
    assert_fails_with(&r, "refusing to mix");
}

#[test]
fn a_store_never_changes_suite() {
    let fx = Fixture::with_alg(KeyAlgorithm::Sm2);
    drop(gm_export(&fx, 2));
    // The same store opened with an Ed25519 audit key (an intl box) is refused, naming both hashes.
    let keys = AuditKeys::new(SigningKey::generate().unwrap(), [42; 32]);
    let err = AuditLog::open(fx.audit_dir(), keys, AuditOptions::default()).unwrap_err();
    assert!(err.to_string().contains("hashed with sm3, but the box's suite hashes with sha256"), "{err}");
    // A key of the other suite's algorithm than the keys say is refused before anything opens.
    let mut keys = AuditKeys::new(SigningKey::generate().unwrap(), [42; 32]);
    keys.suite = Suite::Gm;
    let err = AuditLog::open(fx.audit_dir(), keys, AuditOptions::default()).unwrap_err();
    assert!(err.to_string().contains("refusing to mix suites"), "{err}");
}

#[test]
fn openssl_verifies_an_sm2_tree_head_and_reproduces_the_sm3_tree() {
    let Some(openssl) = openssl() else { return };
    let fx = Fixture::with_alg(KeyAlgorithm::Sm2);
    let bytes = gm_export(&fx, 2);
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    let head: SignedTreeHead = serde_json::from_value(doc["head"].clone()).unwrap();
    assert_eq!(head.tree_size, 2);

    let dir = fx.dir.path();
    std::fs::write(dir.join("sth.txt"), head.message()).unwrap();
    std::fs::write(dir.join("changed.txt"), head.message().repeat(2)).unwrap();
    std::fs::write(dir.join("sig.der"), KeyAlgorithm::Sm2.decode_signature_hex(&head.signature).unwrap()).unwrap();
    fx.public().write_pem(&dir.join("audit.pub"), Overwrite::Refuse).unwrap();
    let verify = |msg: &str| {
        Command::new(openssl)
            .current_dir(dir)
            .args(["pkeyutl", "-verify", "-pubin", "-inkey", "audit.pub", "-rawin", "-in", msg, "-sigfile"])
            .args(["sig.der", "-pkeyopt", "distid:1234567812345678"])
            .output()
            .unwrap()
    };
    let ok = verify("sth.txt");
    let said = String::from_utf8_lossy(&ok.stdout).to_string() + &String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success() && said.contains("Signature Verified Successfully"), "openssl: {said}");
    assert!(!verify("changed.txt").status.success(), "openssl accepted another message");

    // The tree, by OpenSSL's SM3: each leaf SM3(00 || entry), the root SM3(01 || leaf0 || leaf1).
    let mut leaves = Vec::new();
    for e in doc["entries"].as_array().unwrap() {
        let entry = e["entry"].as_str().unwrap().as_bytes();
        let theirs = openssl_sm3(openssl, dir, &[&[0u8][..], entry].concat());
        assert_eq!(theirs, e["leaf"].as_str().unwrap());
        leaves.push(leaf_hash(HashAlgorithm::Sm3, entry));
    }
    let root_theirs = openssl_sm3(openssl, dir, &[&[1u8][..], &leaves[0], &leaves[1]].concat());
    assert_eq!(root_theirs, head.root_hash);
    assert_eq!(hex(&node_hash(HashAlgorithm::Sm3, &leaves[0], &leaves[1])), head.root_hash);
}
