//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use govbox_images::corpus::CorpusKeys;
use govbox_provisioning::TrustRoot;
use time::{Duration, OffsetDateTime};

/// The workspace's `tests/fixtures/`.
pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures")
}

/// The tiny Qwen2 model folder (1.8 MB).
pub fn tiny_qwen2() -> PathBuf {
    fixtures().join("tiny-qwen2")
}

/// Fresh corpus keys and their trust root, valid for a year.
pub fn keys_and_root() -> (CorpusKeys, TrustRoot) {
    let keys = CorpusKeys::generate().unwrap();
    let root = keys.trust_root(OffsetDateTime::now_utc() + Duration::days(365)).unwrap();
    (keys, root)
}

/// A small synthetic model folder: three files, one in a subfolder.
pub fn synthetic_model(dir: &Path) -> PathBuf {
    let m = dir.join("synthetic-model");
    std::fs::create_dir_all(m.join("sub")).unwrap();
    std::fs::write(m.join("config.json"), br#"{"model_type":"synthetic","max_position_embeddings":64}"#).unwrap();
    let weights: Vec<u8> = (0..3000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    std::fs::write(m.join("model.bin"), weights).unwrap();
    std::fs::write(m.join("sub/tokenizer.json"), br#"{"vocab":{"a":0,"b":1}}"#).unwrap();
    m
}

/// Every path under `dir` with its size and content digest, sorted: a snapshot to compare.
pub fn snapshot(dir: &Path) -> Vec<(String, u64, String)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, u64, String)>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let rel = e.path().strip_prefix(base).unwrap().display().to_string();
            if e.file_type().unwrap().is_dir() {
                out.push((rel + "/", 0, String::new()));
                walk(base, &e.path(), out);
            } else {
                let bytes = std::fs::read(e.path()).unwrap();
                let d = ring::digest::digest(&ring::digest::SHA256, &bytes);
                out.push((rel, bytes.len() as u64, format!("{d:?}")));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// `openssl`, if it is there and has SM2 and SM3 (OpenSSL 3); otherwise says why the test is
/// skipped.
pub fn openssl() -> Option<String> {
    let out = std::process::Command::new("openssl").args(["list", "-public-key-algorithms"]).output().ok();
    let has_sm2 = out.is_some_and(|o| String::from_utf8_lossy(&o.stdout).to_lowercase().contains("sm2"));
    if !has_sm2 {
        eprintln!(
            "SKIPPED: `openssl list -public-key-algorithms` shows no SM2; install OpenSSL 3 with SM2 to run this"
        );
    }
    has_sm2.then(|| "openssl".to_string())
}

/// `openssl dgst -sm3` of `bytes`, lower-case hex: OpenSSL's SM3, not ours.
pub fn openssl_sm3(openssl: &str, bytes: &[u8]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in"), bytes).unwrap();
    let out = std::process::Command::new(openssl)
        .current_dir(dir.path())
        .args(["dgst", "-sm3", "-r", "in"])
        .output()
        .unwrap();
    assert!(out.status.success(), "openssl dgst -sm3: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap_or_default().to_string()
}
