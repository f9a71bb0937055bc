//! The TPM quote against a software TPM (Debian's `swtpm`): a fresh quote verifies, and changing
//! the attest bytes, the nonce or a PCR value fails the check that names it. When swtpm is not
//! installed or cannot start here, the test prints `SKIPPED: <reason>` and returns.
#![cfg(feature = "tpm")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;

#[path = "../../audit/tests/common/swtpm.rs"]
mod swtpm;
use swtpm::{free_port_pair, swtpm_or_skip};

use govbox_attestation::tpm::{self, TpmQuote, verify_quote};
use govbox_attestation::{
    BackendMeasurement, Expectations, Measurements, Nonce, Outcome, ReportBody, sign_report, verify_report_bytes,
};
use govbox_audit::SignedTreeHead;
use govbox_provisioning::SigningKey;

fn random_nonce() -> Vec<u8> {
    use ring::rand::SecureRandom;
    let mut n = vec![0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut n).unwrap();
    n
}

fn measurements(dir: &std::path::Path) -> Measurements {
    let f = dir.join("f");
    std::fs::write(&f, b"the daemon").unwrap();
    Measurements::builder()
        .binary(&f)
        .unwrap()
        .config(None)
        .unwrap()
        .trust_root(&f)
        .unwrap()
        .boot_id(&f)
        .unwrap()
        .model("tiny-qwen2", "1.0.0", "sha256-1111111111111111111111111111111111111111111111111111111111111111")
        .build()
        .unwrap()
}

fn outcome(checks: &[govbox_attestation::Check], name: &str) -> Outcome {
    checks.iter().find(|c| c.name == name).unwrap_or_else(|| panic!("no check {name}: {checks:?}")).outcome
}

fn failed(checks: &[govbox_attestation::Check]) -> Vec<&str> {
    checks.iter().filter(|c| c.outcome == Outcome::Fail).map(|c| c.name.as_str()).collect()
}

const CHECKS: [&str; 5] = ["tpm-signature", "tpm-attest", "tpm-nonce", "tpm-pcr-digest", "tpm-measurements"];

#[test]
fn a_swtpm_quote_verifies_and_each_tampering_fails_its_check() {
    let Some(swtpm) = swtpm_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let m = measurements(dir.path());
    let digest = tpm::measurements_digest(&m).unwrap();
    let nonce = random_nonce();
    let q = tpm::quote(&swtpm.tcti(), &nonce, digest).unwrap();

    let checks = verify_quote(&q, &nonce, Some(&m));
    for name in CHECKS {
        assert_eq!(outcome(&checks, name), Outcome::Pass, "{name}: {checks:?}");
    }
    assert_eq!(q.pcrs.len(), 9);
    assert_eq!(q.pcrs[8].value, govbox_attestation::to_hex(&tpm::expected_govbox_pcr(&digest)));

    // The AK is a primary key: the same on the next quote from this TPM.
    let again = tpm::quote(&swtpm.tcti(), &random_nonce(), digest).unwrap();
    assert_eq!(again.ak_public_key, q.ak_public_key);

    // One byte of the attest blob flipped (inside the clock info, so it still parses).
    let mut t = q.clone();
    let mut bytes = t.attest.into_bytes();
    let i = bytes.len() - 2 * (32 + 2 + 10 + 8 + 17) + 4; // a hex digit in clockInfo
    bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
    t.attest = String::from_utf8(bytes).unwrap();
    assert_eq!(failed(&verify_quote(&t, &nonce, Some(&m))), ["tpm-signature"]);

    // Another nonce than the one quoted.
    let other = random_nonce();
    assert_eq!(failed(&verify_quote(&q, &other, Some(&m))), ["tpm-nonce"]);

    // A reported PCR value changed.
    let mut t = q.clone();
    t.pcrs[0].value = "11".repeat(32);
    assert_eq!(failed(&verify_quote(&t, &nonce, Some(&m))), ["tpm-pcr-digest"]);

    // Other measurements than those PCR 23 was extended with.
    let mut other_m = m.clone();
    other_m.binary_sha256 = "22".repeat(32);
    assert_eq!(failed(&verify_quote(&q, &nonce, Some(&other_m))), ["tpm-measurements"]);
}

#[test]
fn a_report_built_against_swtpm_carries_a_quote_that_verifies() {
    let Some(swtpm) = swtpm_or_skip() else { return };
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let nonce = Nonce::parse(&govbox_attestation::to_hex(&random_nonce())).unwrap();
    let head = SignedTreeHead::sign(
        &key,
        govbox_provisioning::HashAlgorithm::Sha256,
        1,
        &[1; 32],
        "2026-01-01T00:00:00.000Z".into(),
    );
    let backend = BackendMeasurement { kind: "cpu".into(), name: "cpu".into(), simulated: false };
    let m = measurements(dir.path());
    let digest = tpm::measurements_digest(&m).unwrap();
    let q = tpm::quote(&swtpm.tcti(), &nonce.to_bytes(), digest).unwrap();
    let body = ReportBody::new(&nonce, &key.public_key(), m, head, backend, false)
        .with_tpm(Ok(serde_json::to_value(&q).unwrap()));
    let report = sign_report(&key, body).unwrap();
    assert_eq!(report.report.tpm_status, "quoted");
    let bytes = report.to_json_pretty().unwrap();
    let v = verify_report_bytes(bytes.as_bytes(), &Expectations::new(nonce.clone()));
    assert!(v.passed(), "{:?}", v.checks);
    assert_eq!(v.check("tpm").unwrap().outcome, Outcome::Pass, "{:?}", v.checks);
    for name in CHECKS {
        assert_eq!(v.check(name).unwrap().outcome, Outcome::Pass, "{name}: {:?}", v.checks);
    }
    let parsed: TpmQuote = serde_json::from_value(report.report.tpm.clone().unwrap()).unwrap();
    assert_eq!(parsed, q);

    // Verified for another nonce: the report's nonce and the quote's nonce both fail.
    let other = Nonce::parse(&"ab".repeat(32)).unwrap();
    let v = verify_report_bytes(bytes.as_bytes(), &Expectations::new(other));
    assert_eq!(v.check("nonce").unwrap().outcome, Outcome::Fail);
    assert_eq!(v.check("tpm-nonce").unwrap().outcome, Outcome::Fail);
}

/// The report builder's own path (`GOVBOX_TPM_TCTI` → detect → quote → `tpm_status`), run in a
/// child test process so that the variable is set for that process alone.
#[test]
fn the_report_builder_quotes_when_the_tcti_variable_is_set() {
    let Some(swtpm) = swtpm_or_skip() else { return };
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .args(["--ignored", "--exact", "report_builder_child", "--nocapture", "--test-threads=1"])
        .env(tpm::TCTI_ENV, swtpm.tcti())
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "{text}");

    // A TCTI that reaches nothing: the report still comes out, and says why it has no quote.
    drop(swtpm);
    let port = free_port_pair().unwrap();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "report_builder_child_unreachable", "--nocapture", "--test-threads=1"])
        .env(tpm::TCTI_ENV, format!("swtpm:host=127.0.0.1,port={port}"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}

fn child_report() -> (Nonce, govbox_attestation::SignedReport) {
    let dir = tempfile::tempdir().unwrap();
    let key = SigningKey::generate().unwrap();
    let nonce = Nonce::parse(&govbox_attestation::to_hex(&random_nonce())).unwrap();
    let head = SignedTreeHead::sign(
        &key,
        govbox_provisioning::HashAlgorithm::Sha256,
        1,
        &[1; 32],
        "2026-01-01T00:00:00.000Z".into(),
    );
    let backend = BackendMeasurement { kind: "cpu".into(), name: "cpu".into(), simulated: false };
    let body =
        ReportBody::new(&nonce, &key.public_key(), measurements(dir.path()), head, backend, false).with_tpm_quote();
    (nonce, sign_report(&key, body).unwrap())
}

#[test]
#[ignore = "run by the_report_builder_quotes_when_the_tcti_variable_is_set, with a swtpm TCTI"]
fn report_builder_child() {
    let (nonce, report) = child_report();
    assert_eq!(report.report.tpm_status, "quoted");
    let v = verify_report_bytes(report.to_json_pretty().unwrap().as_bytes(), &Expectations::new(nonce));
    assert!(v.passed(), "{:?}", v.checks);
    for name in CHECKS {
        assert_eq!(v.check(name).unwrap().outcome, Outcome::Pass, "{name}: {:?}", v.checks);
    }
}

#[test]
#[ignore = "run by the_report_builder_quotes_when_the_tcti_variable_is_set, with an unreachable TCTI"]
fn report_builder_child_unreachable() {
    let (nonce, report) = child_report();
    eprintln!("tpm_status: {}", report.report.tpm_status);
    assert!(report.report.tpm.is_none());
    assert!(report.report.tpm_status.starts_with("TPM quote failed: opening TPM"), "{}", report.report.tpm_status);
    let v = verify_report_bytes(report.to_json_pretty().unwrap().as_bytes(), &Expectations::new(nonce));
    assert!(v.passed(), "{:?}", v.checks);
    assert_eq!(v.check("tpm").unwrap().outcome, Outcome::Skip, "{:?}", v.checks);
}
