//! A report without a TPM quote says so, in the signed body, rather than passing for one that
//! has it. (The quote itself is tested against a software TPM in `tpm_swtpm.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use govbox_attestation::{
    AttestError, BackendMeasurement, Expectations, Measurements, Nonce, Outcome, ReportBody, sign_report,
    verify_report_bytes,
};
use govbox_audit::SignedTreeHead;
use govbox_provisioning::SigningKey;

#[test]
fn a_report_without_a_quote_says_why_under_the_signature() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("f");
    std::fs::write(&f, b"x").unwrap();
    let m = Measurements::builder()
        .binary(&f)
        .unwrap()
        .config(None)
        .unwrap()
        .trust_root(&f)
        .unwrap()
        .boot_id(&f)
        .unwrap()
        .build()
        .unwrap();
    let key = SigningKey::generate().unwrap();
    let nonce = Nonce::parse(&"42".repeat(32)).unwrap();
    let head = SignedTreeHead::sign(
        &key,
        govbox_provisioning::HashAlgorithm::Sha256,
        1,
        &[1; 32],
        "2026-01-01T00:00:00.000Z".into(),
    );
    let backend = BackendMeasurement { kind: "cpu".into(), name: "cpu".into(), simulated: false };
    let body =
        ReportBody::new(&nonce, &key.public_key(), m, head, backend, false).with_tpm(Err(AttestError::TpmNotCompiled));
    let report = sign_report(&key, body).unwrap();
    assert!(report.report.tpm.is_none());
    assert!(report.report.tpm_status.contains("not compiled with TPM support"), "{}", report.report.tpm_status);
    let v = verify_report_bytes(report.to_json_pretty().unwrap().as_bytes(), &Expectations::new(nonce.clone()));
    let tpm = v.check("tpm").unwrap();
    assert_eq!(tpm.outcome, Outcome::Skip);
    assert!(tpm.detail.contains("not compiled with TPM support"), "{tpm}");
    // Removing the reason, or claiming a quote, breaks the signature.
    let mut value = serde_json::to_value(&report).unwrap();
    value["report"]["tpm_status"] = serde_json::json!("quoted");
    let v = verify_report_bytes(&serde_json::to_vec(&value).unwrap(), &Expectations::new(nonce));
    assert_eq!(v.check("signature").unwrap().outcome, Outcome::Fail);
}
