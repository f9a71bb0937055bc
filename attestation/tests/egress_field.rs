//! The `egress` field: signed like the rest of the body, checked by the verifier's `egress` check
//! (PASS when the box cannot open connections, FAIL when it can unless accepted, SKIP when a
//! report from an older govboxd does not say), and optional so that older reports still verify.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use govbox_attestation::{
    AttestError, BackendMeasurement, EgressMeasurement, Expectations, Measurements, Nonce, Outcome, ReportBody,
    SignedReport, Verification, sign_report, verify_report_bytes,
};
use govbox_audit::SignedTreeHead;
use govbox_provisioning::SigningKey;
use serde_json::Value;

fn landlock() -> EgressMeasurement {
    EgressMeasurement {
        mechanism: "landlock".into(),
        abi: Some(7),
        connect: "denied".into(),
        bind_ports: Some(vec![8443]),
        other_inet: "denied".into(),
    }
}

fn report(egress: Option<EgressMeasurement>) -> (SignedReport, Nonce) {
    let dir = tempfile::tempdir().unwrap();
    let file = |n: &str, b: &[u8]| {
        let p = dir.path().join(n);
        std::fs::write(&p, b).unwrap();
        p
    };
    let m = Measurements::builder()
        .binary(&file("govboxd", b"the daemon"))
        .unwrap()
        .config(None)
        .unwrap()
        .trust_root(&file("root.json", b"{}"))
        .unwrap()
        .boot_id(&file("boot_id", b"0b0e4a4e-0000-4000-8000-000000000000\n"))
        .unwrap()
        .build()
        .unwrap();
    let device = SigningKey::generate().unwrap();
    let audit = SigningKey::generate().unwrap();
    let head = SignedTreeHead::sign(
        &audit,
        govbox_provisioning::HashAlgorithm::Sha256,
        1,
        &[7; 32],
        "2026-01-01T00:00:00.000Z".into(),
    );
    let nonce = Nonce::parse(&"3c".repeat(16)).unwrap();
    let backend = BackendMeasurement { kind: "cpu".into(), name: "cpu".into(), simulated: false };
    let mut body = ReportBody::new(&nonce, &device.public_key(), m, head, backend, false)
        .with_tpm(Err(AttestError::TpmAbsent("none in this test".into())));
    if let Some(e) = egress {
        body = body.with_egress(e);
    }
    (sign_report(&device, body).unwrap(), nonce)
}

fn verify(bytes: &[u8], nonce: &Nonce, allow_egress: bool) -> Verification {
    let mut e = Expectations::new(nonce.clone());
    e.allow_egress = allow_egress;
    verify_report_bytes(bytes, &e)
}

fn check(v: &Verification, name: &str) -> (Outcome, String) {
    let c = v.check(name).unwrap_or_else(|| panic!("no check {name}: {:?}", v.checks));
    (c.outcome, c.detail.clone())
}

#[test]
fn a_locked_down_box_passes_the_egress_check() {
    let (r, nonce) = report(Some(landlock()));
    let json: Value = serde_json::from_str(&r.to_json_pretty().unwrap()).unwrap();
    assert_eq!(json["report"]["egress"]["mechanism"], "landlock", "{json}");
    assert_eq!(json["report"]["egress"]["bind_ports"], serde_json::json!([8443]), "{json}");
    let v = verify(r.to_json_pretty().unwrap().as_bytes(), &nonce, false);
    assert!(v.passed(), "{:?}", v.checks);
    let (o, detail) = check(&v, "egress");
    assert_eq!(o, Outcome::Pass);
    assert_eq!(
        detail,
        "landlock ABI 7: TCP connect denied, bind allowed only on port 8443; other internet sockets denied"
    );
}

#[test]
fn a_box_with_the_lockdown_off_fails_unless_accepted() {
    let (r, nonce) = report(Some(EgressMeasurement::off()));
    let bytes = r.to_json_pretty().unwrap();
    let v = verify(bytes.as_bytes(), &nonce, false);
    assert!(!v.passed());
    assert_eq!(check(&v, "egress").0, Outcome::Fail, "{:?}", v.checks);
    let v = verify(bytes.as_bytes(), &nonce, true);
    assert!(v.passed(), "{:?}", v.checks);
    assert_eq!(check(&v, "egress").0, Outcome::Skip);
}

#[test]
fn a_report_without_the_field_still_verifies_and_says_so() {
    let (r, nonce) = report(None);
    let bytes = r.to_json_pretty().unwrap();
    assert!(!bytes.contains("egress"), "absent, not null, so that older reports keep their signed bytes");
    let v = verify(bytes.as_bytes(), &nonce, false);
    assert!(v.passed(), "{:?}", v.checks);
    assert_eq!(check(&v, "egress").0, Outcome::Skip);
}

#[test]
fn the_egress_field_is_under_the_signature() {
    let (r, nonce) = report(Some(EgressMeasurement::off()));
    let mut v: Value = serde_json::to_value(&r).unwrap();
    // An attacker turns an open box into a locked one without re-signing.
    v["report"]["egress"] = serde_json::to_value(landlock()).unwrap();
    let out = verify(&serde_json::to_vec(&v).unwrap(), &nonce, false);
    assert_eq!(check(&out, "signature").0, Outcome::Fail, "{:?}", out.checks);
    // Removing the field is a change too.
    let mut v: Value = serde_json::to_value(&r).unwrap();
    v["report"].as_object_mut().unwrap().remove("egress");
    let out = verify(&serde_json::to_vec(&v).unwrap(), &nonce, true);
    assert_eq!(check(&out, "signature").0, Outcome::Fail, "{:?}", out.checks);
}

#[test]
fn an_unknown_egress_key_is_not_a_well_formed_report() {
    let (r, nonce) = report(Some(landlock()));
    let mut v: Value = serde_json::to_value(&r).unwrap();
    v["report"]["egress"]["audited"] = Value::Bool(true);
    let out = verify(&serde_json::to_vec(&v).unwrap(), &nonce, false);
    assert_eq!(check(&out, "format").0, Outcome::Fail, "{:?}", out.checks);
}
