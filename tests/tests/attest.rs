//! Attestation end to end: the running govboxd signs a report for the verifier's nonce with the
//! device key, `govbox attest verify` passes it offline against the pinned device key, the real
//! govboxd binary's digest and the imported package's digest, and fails, naming the check, for a
//! tampered report, another nonce, another device key, another binary and another model digest.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::{Command, Output};

use govbox_e2e::{TestBox, bin, govbox};
use govbox_provisioning::{KeyAlgorithm, Suite};
use ring::rand::SecureRandom;

fn govbox_raw(state: &Path, args: &[&str]) -> Output {
    Command::new(bin("govbox")).arg("--state").arg(state).args(args).output().unwrap()
}

use govbox_provisioning::hex;

fn random_nonce() -> String {
    let mut n = [0u8; 32];
    ring::rand::SystemRandom::new().fill(&mut n).unwrap();
    hex(&n)
}

/// The file's digest under the box's suite's hash (SHA-256, or SM3 on a gm box).
fn digest_file(suite: Suite, p: &Path) -> String {
    hex(&suite.hash_algorithm().digest(&std::fs::read(p).unwrap()))
}

/// `openssl ARGS` in `dir`: (success, stdout + stderr).
fn openssl(dir: &Path, args: &[&str]) -> (bool, String) {
    let o = Command::new("openssl").current_dir(dir).args(args).output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// Runs `govbox attest verify` and returns (success, stdout + stderr).
fn verify(state: &Path, report: &Path, extra: &[&str]) -> (bool, String) {
    let mut args = vec!["attest", "verify", report.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = govbox_raw(state, &args);
    let text = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    (o.status.success(), text)
}

fn assert_fails_at(state: &Path, report: &Path, args: &[&str], check: &str) -> String {
    let (ok, out) = verify(state, report, args);
    assert!(!ok, "verify {args:?} must fail at {check}:\n{out}");
    assert!(out.lines().any(|l| l.starts_with(&format!("FAIL {check}: "))), "no 'FAIL {check}:' line:\n{out}");
    out
}

#[test]
fn a_report_from_the_running_daemon_verifies_offline_and_each_mismatch_names_its_check() {
    report_verifies_offline_and_each_mismatch_names_its_check(Suite::Intl);
}

/// The same on a `gm` box: SM2 device and audit keys, SM3 measurements; and OpenSSL 3 verifies
/// the report's SM2 signature and reproduces its SM3 measurement of the govboxd binary.
#[test]
fn a_gm_report_verifies_offline_and_with_openssl() {
    report_verifies_offline_and_each_mismatch_names_its_check(Suite::Gm);
}

fn report_verifies_offline_and_each_mismatch_names_its_check(suite: Suite) {
    let b = TestBox::new_with_suite("attest", suite);
    let d = b.start();
    let nonce = random_nonce();
    let report = b.dir.join("r.json");
    let out = Command::new(bin("govbox"))
        .arg("--state")
        .arg(&b.state)
        .args(["attest", "--nonce", &nonce, "-o", report.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "govbox attest: {}\nlog:\n{}", String::from_utf8_lossy(&out.stderr), d.log_text());

    // What the verifier knows independently: the device key taken at install, the binary it
    // shipped, the package it imported.
    let device_pub = b.state.join("identity/device.pub");
    let binary = digest_file(suite, &bin("govboxd"));
    let list: serde_json::Value = serde_json::from_str(&govbox(&b.state, &["model", "list", "--json"])).unwrap();
    let qwen = list["models"].as_array().unwrap().iter().find(|m| m["name"] == "tiny-qwen2").unwrap();
    let active = qwen["active"].as_str().unwrap();
    let digest = qwen["versions"].as_array().unwrap().iter().find(|v| v["version"] == active).unwrap()["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let model = format!("tiny-qwen2@{digest}");
    let good: Vec<&str> = vec![
        "--nonce",
        &nonce,
        "--device-key",
        device_pub.to_str().unwrap(),
        "--expect-binary",
        &binary,
        "--expect-model",
        &model,
    ];

    // The report itself: the daemon's own measurements, and the state's.
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    let r = &v["report"];
    assert_eq!(r["format"], "govbox-attestation/1", "{v}");
    assert_eq!(r["nonce"], nonce.as_str());
    assert_eq!(r["measurements"]["binary_sha256"], binary.as_str(), "/proc/self/exe is the built govboxd");
    assert_eq!(r["measurements"]["config_sha256"], digest_file(suite, &b.config).as_str());
    assert_eq!(r["measurements"]["trust_root_sha256"], digest_file(suite, &b.state.join("trust/root.json")).as_str());
    assert_eq!(r["measurements"]["hash"], suite.hash_algorithm().as_str(), "{v}");
    assert_eq!(v["alg"], suite.signature_algorithm().as_str(), "{v}");
    assert_eq!(r["audit_head"]["alg"], suite.signature_algorithm().as_str(), "{v}");
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    assert_eq!(r["measurements"]["boot_id"], boot_id.trim());
    let names: Vec<&str> =
        r["measurements"]["models"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["minilm", "tiny-qwen2"], "{v}");
    assert_eq!(r["insecure_dev_models"], false);
    assert_eq!(r["backend"]["kind"], "cpu", "{v}");
    assert!(r["audit_head"]["tree_size"].as_u64().unwrap() > 0, "{v}");
    assert!(r["tpm"].is_null() && !r["tpm_status"].as_str().unwrap().is_empty(), "{v}");

    // All of it verifies, the audit head too with the audit key.
    let (ok, out) = verify(&b.state, &report, &good);
    assert!(ok, "{out}");
    for check in ["format", "keyid", "signature", "device-key", "nonce", "binary", "model tiny-qwen2", "audit-head"] {
        assert!(out.lines().any(|l| l.starts_with(&format!("PASS {check}: "))), "no PASS {check}:\n{out}");
    }
    let audit_pub = b.state.join("identity/audit.pub");
    let mut with_audit = good.clone();
    with_audit.extend_from_slice(&["--audit-key", audit_pub.to_str().unwrap()]);
    let (ok, out) = verify(&b.state, &report, &with_audit);
    assert!(ok && out.contains("PASS audit-head: tree_size"), "{out}");

    if suite == Suite::Gm {
        openssl_checks_the_gm_report(&b, &v);
    }

    // The request itself is on the audit record.
    let tail = govbox(&b.state, &["audit", "tail", "--json"]);
    assert!(tail.contains(&format!("attestation report for nonce {nonce}")), "{tail}");

    // A tampered report: one measurement changed, without the device key to re-sign.
    let mut t = v.clone();
    t["report"]["measurements"]["binary_sha256"] = serde_json::json!("00".repeat(32));
    let tampered = b.dir.join("tampered.json");
    std::fs::write(&tampered, serde_json::to_string_pretty(&t).unwrap()).unwrap();
    assert_fails_at(&b.state, &tampered, &good, "signature");

    // Another nonce: a replayed report.
    let other_nonce = random_nonce();
    let mut args = good.clone();
    args[1] = &other_nonce;
    let out = assert_fails_at(&b.state, &report, &args, "nonce");
    assert!(out.contains(&format!("report nonce {nonce} differs from the expected {other_nonce}")), "{out}");

    // Another device: a fresh key from `govbox keygen`.
    let other_key = b.dir.join("other.key");
    let alg = suite.signature_algorithm().as_str();
    govbox(&b.state, &["keygen", "--algorithm", alg, "--out", other_key.to_str().unwrap()]);
    let other_pub = b.dir.join("other.pub");
    let mut args = good.clone();
    args[3] = other_pub.to_str().unwrap();
    assert_fails_at(&b.state, &report, &args, "device-key");

    // Nothing pinned: the report would pass for any key, so the verdict is FAIL and says why,
    // unless the caller explicitly trusts the embedded key, and then the verdict warns.
    let unpinned: Vec<&str> = good.iter().enumerate().filter(|(i, _)| !(2..=3).contains(i)).map(|(_, a)| *a).collect();
    let out = assert_fails_at(&b.state, &report, &unpinned, "device-key");
    assert!(out.contains("no device key pinned") && out.contains("FAILED: device-key"), "{out}");
    let mut args = unpinned.clone();
    args.push("--insecure-embedded-key");
    let (ok, out) = verify(&b.state, &report, &args);
    assert!(ok && out.lines().any(|l| l.starts_with("WARNING: no device key pinned")), "{out}");

    // Another binary.
    let other_binary = "ab".repeat(32);
    let mut args = good.clone();
    args[5] = &other_binary;
    assert_fails_at(&b.state, &report, &args, "binary");

    // Another model package.
    let other_model = format!("tiny-qwen2@{}-{}", suite.hash_algorithm(), "cd".repeat(32));
    let mut args = good.clone();
    args[7] = &other_model;
    assert_fails_at(&b.state, &report, &args, "model tiny-qwen2");

    // A nonce that is no nonce is refused before the daemon is asked.
    let o = govbox_raw(&b.state, &["attest", "--nonce", "abcd", "-o", b.dir.join("x.json").to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("16 to 64 bytes"));
    drop(d);
    let _ = std::fs::remove_dir_all(&b.dir);
}

/// OpenSSL, which nobody here wrote, checks a gm report: the device's SM2 signature over the
/// canonical report body with `identity/device.pub` (`-pkeyopt distid:1234567812345678`), and
/// `openssl dgst -sm3` of the govboxd binary is its measurement.
fn openssl_checks_the_gm_report(b: &TestBox, v: &serde_json::Value) {
    let body = govbox_provisioning::to_canonical_json(&v["report"]);
    let sig = KeyAlgorithm::Sm2.decode_signature_hex(v["signature"].as_str().unwrap()).unwrap();
    std::fs::write(b.dir.join("body.json"), &body).unwrap();
    std::fs::write(b.dir.join("changed.json"), body.replace("\"nonce\":\"", "\"nonce\":\"0")).unwrap();
    std::fs::write(b.dir.join("report.sig"), sig).unwrap();
    let device = b.state.join("identity/device.pub");
    let verify = |msg: &str| {
        let args = ["pkeyutl", "-verify", "-pubin", "-inkey", device.to_str().unwrap(), "-rawin", "-in", msg];
        openssl(&b.dir, &[&args[..], &["-sigfile", "report.sig", "-pkeyopt", "distid:1234567812345678"]].concat())
    };
    let (ok, said) = verify("body.json");
    assert!(ok && said.contains("Signature Verified Successfully"), "openssl: {said}");
    assert!(!verify("changed.json").0, "openssl accepted a changed report");
    let (ok, out) = openssl(&b.dir, &["dgst", "-sm3", "-r", bin("govboxd").to_str().unwrap()]);
    assert!(ok, "{out}");
    assert_eq!(out.split_whitespace().next(), v["report"]["measurements"]["binary_sha256"].as_str(), "{out}");
}
