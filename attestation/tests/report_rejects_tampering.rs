//! A signed report verifies offline with every named check, and each kind of tampering or
//! mismatch fails exactly the check that names it.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use govbox_attestation::{
    AttestError, BackendMeasurement, Expectations, Measurements, Nonce, Outcome, ReportBody, SignedReport,
    Verification, sha256_bytes, sign_report, verify_report, verify_report_bytes,
};
use govbox_audit::SignedTreeHead;
use govbox_provisioning::SigningKey;
use serde_json::{Value, json};

struct Fixture {
    device: SigningKey,
    audit: SigningKey,
    nonce: Nonce,
    report: SignedReport,
    _dir: tempfile::TempDir,
}

const QWEN_DIGEST: &str = "sha256-1111111111111111111111111111111111111111111111111111111111111111";

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let file = |n: &str, b: &[u8]| {
        let p = dir.path().join(n);
        std::fs::write(&p, b).unwrap();
        p
    };
    let m = Measurements::builder()
        .binary(&file("govboxd", b"the daemon"))
        .unwrap()
        .config(Some(&file("govbox.toml", b"config_version = 2\n")))
        .unwrap()
        .trust_root(&file("root.json", b"{\"signed\":{}}"))
        .unwrap()
        .boot_id(&file("boot_id", b"0b0e4a4e-0000-4000-8000-000000000000\n"))
        .unwrap()
        .model("tiny-qwen2", "1.0.0", QWEN_DIGEST)
        .model("minilm", "1.0.0", "sha256-2222222222222222222222222222222222222222222222222222222222222222")
        .build()
        .unwrap();
    let device = SigningKey::generate().unwrap();
    let audit = SigningKey::generate().unwrap();
    let head = SignedTreeHead::sign(
        &audit,
        govbox_provisioning::HashAlgorithm::Sha256,
        5,
        &[9; 32],
        "2026-01-01T00:00:00.000Z".into(),
    );
    let nonce = Nonce::parse(&"5a".repeat(32)).unwrap();
    let backend = BackendMeasurement { kind: "cpu".into(), name: "cpu".into(), simulated: false };
    let body = ReportBody::new(&nonce, &device.public_key(), m, head, backend, false)
        .with_tpm(Err(AttestError::TpmAbsent("none in this test".into())));
    let report = sign_report(&device, body).unwrap();
    Fixture { device, audit, nonce, report, _dir: dir }
}

fn full_expectations(f: &Fixture) -> Expectations {
    let mut e = Expectations::new(f.nonce.clone());
    e.device_key = Some(f.device.public_key());
    e.binary_sha256 = Some(sha256_bytes(b"the daemon"));
    e.models = vec![("tiny-qwen2".into(), QWEN_DIGEST.trim_start_matches("sha256-").into())];
    e.audit_key = Some(f.audit.public_key());
    e
}

fn bytes(r: &SignedReport) -> Vec<u8> {
    r.to_json_pretty().unwrap().into_bytes()
}

/// Edits the file's JSON as an attacker would, without re-signing.
fn edited(r: &SignedReport, edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = serde_json::to_value(r).unwrap();
    edit(&mut v);
    serde_json::to_vec_pretty(&v).unwrap()
}

fn outcome(v: &Verification, name: &str) -> Outcome {
    v.check(name).unwrap_or_else(|| panic!("no check {name}: {:?}", v.checks)).outcome
}

/// Asserts the report fails, and fails at `name` (the line printed names the check).
fn fails_at(v: &Verification, name: &str) -> String {
    assert!(!v.passed(), "expected a failure at {name}: {:?}", v.checks);
    assert_eq!(outcome(v, name), Outcome::Fail, "{:?}", v.checks);
    v.check(name).unwrap().to_string()
}

#[test]
fn a_signed_report_passes_every_named_check_from_a_file() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("report.json");
    std::fs::write(&path, bytes(&f.report)).unwrap();
    let v = verify_report(&path, &full_expectations(&f)).unwrap();
    assert!(v.passed(), "{:?}", v.checks);
    for name in ["format", "keyid", "signature", "device-key", "nonce", "binary", "model tiny-qwen2", "audit-head"] {
        assert_eq!(outcome(&v, name), Outcome::Pass, "{name}: {:?}", v.checks);
    }
    assert_eq!(outcome(&v, "tpm"), Outcome::Skip);
    let r = v.report.unwrap();
    assert_eq!(r.report.device.keyid, f.device.public_key().keyid());
    assert_eq!(r.report.format, "govbox-attestation/1");
    // Digests with the prefix are accepted too.
    let mut e = full_expectations(&f);
    e.models = vec![("tiny-qwen2".into(), QWEN_DIGEST.into())];
    e.binary_sha256 = Some(format!("sha256-{}", sha256_bytes(b"the daemon")));
    assert!(verify_report_bytes(&bytes(&f.report), &e).passed());
}

#[test]
fn without_pins_the_unchecked_properties_are_skipped_not_passed() {
    let f = fixture();
    let v = verify_report_bytes(&bytes(&f.report), &Expectations::new(f.nonce.clone()));
    assert!(v.passed(), "{:?}", v.checks);
    assert_eq!(outcome(&v, "device-key"), Outcome::Skip);
    assert_eq!(outcome(&v, "binary"), Outcome::Skip);
    assert!(v.check("audit-head").unwrap().detail.contains("not checked without --audit-key"));
}

#[test]
fn an_edited_measurement_fails_the_signature() {
    let f = fixture();
    let b = edited(&f.report, |v| v["report"]["measurements"]["binary_sha256"] = json!(sha256_bytes(b"evil")));
    let v = verify_report_bytes(&b, &full_expectations(&f));
    let line = fails_at(&v, "signature");
    assert!(line.starts_with("FAIL signature: does not verify"), "{line}");
    // The pinned key is named in the report, but it did not sign this body.
    fails_at(&v, "device-key");
    for (path, value) in [
        ("/report/measurements/models/1/digest", json!("sha256-00")),
        ("/report/insecure_dev_models", json!(true)),
        ("/report/time", json!("2020-01-01T00:00:00Z")),
        ("/report/audit_head/tree_size", json!(6)),
    ] {
        let b = edited(&f.report, |v| *v.pointer_mut(path).unwrap() = value);
        fails_at(&verify_report_bytes(&b, &full_expectations(&f)), "signature");
    }
}

#[test]
fn another_nonce_fails_the_nonce_check() {
    let f = fixture();
    let mut e = full_expectations(&f);
    e.nonce = Nonce::parse(&"11".repeat(32)).unwrap();
    let line = fails_at(&verify_report_bytes(&bytes(&f.report), &e), "nonce");
    assert!(
        line.contains(&format!("report nonce {} differs from the expected {}", "5a".repeat(32), "11".repeat(32))),
        "{line}"
    );
    assert_eq!(
        verify_report_bytes(&bytes(&f.report), &e).checks.iter().filter(|c| c.outcome == Outcome::Fail).count(),
        1
    );
}

#[test]
fn another_device_fails_the_device_key_check_even_with_a_valid_signature() {
    let f = fixture();
    let mut e = full_expectations(&f);
    e.device_key = Some(SigningKey::generate().unwrap().public_key());
    let v = verify_report_bytes(&bytes(&f.report), &e);
    assert_eq!(outcome(&v, "signature"), Outcome::Pass);
    fails_at(&v, "device-key");
    // A report re-signed by an impostor key verifies against the key it carries, never the pin.
    let impostor = SigningKey::generate().unwrap();
    let forged = sign_report(&impostor, f.report.report.clone()).unwrap();
    let v = verify_report_bytes(&bytes(&forged), &full_expectations(&f));
    assert_eq!(outcome(&v, "signature"), Outcome::Pass);
    fails_at(&v, "device-key");
}

#[test]
fn a_swapped_key_or_keyid_fails_keyid_or_signature() {
    let f = fixture();
    let other = SigningKey::generate().unwrap().public_key();
    let b = edited(&f.report, |v| v["report"]["device"]["public_key"] = json!(other.to_spki_pem()));
    let v = verify_report_bytes(&b, &Expectations::new(f.nonce.clone()));
    fails_at(&v, "keyid");
    fails_at(&v, "signature");
    let b = edited(&f.report, |v| v["keyid"] = json!("00".repeat(32)));
    fails_at(&verify_report_bytes(&b, &Expectations::new(f.nonce.clone())), "keyid");
    let b = edited(&f.report, |v| v["signature"] = json!("zz"));
    fails_at(&verify_report_bytes(&b, &Expectations::new(f.nonce.clone())), "signature");
}

#[test]
fn another_binary_fails_the_binary_check() {
    let f = fixture();
    let mut e = full_expectations(&f);
    e.binary_sha256 = Some(sha256_bytes(b"another build"));
    let line = fails_at(&verify_report_bytes(&bytes(&f.report), &e), "binary");
    assert!(line.contains("differs from the expected"), "{line}");
}

#[test]
fn another_or_missing_model_fails_that_model_check() {
    let f = fixture();
    let mut e = full_expectations(&f);
    e.models = vec![("tiny-qwen2".into(), "ab".repeat(32))];
    let line = fails_at(&verify_report_bytes(&bytes(&f.report), &e), "model tiny-qwen2");
    assert!(line.contains("not the expected"), "{line}");
    e.models = vec![("qwen2-7b".into(), "ab".repeat(32))];
    let line = fails_at(&verify_report_bytes(&bytes(&f.report), &e), "model qwen2-7b");
    assert!(line.contains("not served"), "{line}");
}

#[test]
fn another_audit_key_fails_the_audit_head_check() {
    let f = fixture();
    let mut e = full_expectations(&f);
    e.audit_key = Some(SigningKey::generate().unwrap().public_key());
    let line = fails_at(&verify_report_bytes(&bytes(&f.report), &e), "audit-head");
    assert!(line.contains("not by the audit key"), "{line}");
}

#[test]
fn a_box_serving_unsigned_folders_fails_unless_accepted() {
    let f = fixture();
    let mut body = f.report.report.clone();
    body.insecure_dev_models = true;
    let r = sign_report(&f.device, body).unwrap();
    fails_at(&verify_report_bytes(&bytes(&r), &full_expectations(&f)), "signed-models-only");
    let mut e = full_expectations(&f);
    e.allow_dev_models = true;
    assert!(verify_report_bytes(&bytes(&r), &e).passed());
}

#[test]
fn malformed_documents_fail_the_format_check_and_nothing_else_runs() {
    let f = fixture();
    let e = Expectations::new(f.nonce.clone());
    for b in [
        b"not json".to_vec(),
        edited(&f.report, |v| v["report"]["format"] = json!("govbox-attestation/2")),
        edited(&f.report, |v| v["report"]["extra"] = json!(1)),
        edited(&f.report, |v| {
            v.as_object_mut().unwrap().remove("signature");
        }),
    ] {
        let v = verify_report_bytes(&b, &e);
        fails_at(&v, "format");
        assert_eq!(v.checks.len(), 1, "{:?}", v.checks);
    }
}

#[test]
fn an_oversized_file_is_refused_before_parsing() {
    let f = fixture();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.json");
    std::fs::write(&path, vec![b' '; (govbox_attestation::MAX_REPORT_BYTES + 1) as usize]).unwrap();
    let e = verify_report(&path, &Expectations::new(f.nonce.clone())).unwrap_err();
    assert_eq!(e.code(), "too_large");
}
