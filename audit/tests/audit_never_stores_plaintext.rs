//! The log holds keyed hashes of prompts, never the text, nor the text's bare SHA-256.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::Fixture;
use govbox_audit::{Event, ExportRange};

const MARKER: &str = "GOVBOX-MARKER-prompt-4b1d9e: the minister's private question";

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn all_files(dir: &Path, out: &mut Vec<Vec<u8>>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            all_files(&p, out);
        } else {
            out.push(std::fs::read(&p).unwrap());
        }
    }
}

#[test]
fn a_hashed_marker_never_appears_in_the_store_or_the_export() {
    let fx = Fixture::new();
    let log = fx.open();
    let hmac = log.hmac(MARKER.as_bytes());
    let mut stream = log.hmac_context();
    stream.update(&MARKER.as_bytes()[..10]);
    stream.update(&MARKER.as_bytes()[10..]);
    assert_eq!(stream.finish(), hmac);
    let sha = govbox_provisioning::hex(ring::digest::digest(&ring::digest::SHA256, MARKER.as_bytes()).as_ref());
    assert_ne!(hmac, sha);

    for i in 0..50 {
        log.append_blocking(Event::InferenceRequest {
            request_id: format!("r{i}"),
            client: "hr-app".into(),
            model: "qwen2".into(),
            model_digest: "00".repeat(32),
            prompt_hmac: hmac.clone(),
            endpoint: "/v1/chat/completions".into(),
            user_hmac: None,
        })
        .unwrap();
    }
    let export = log.export(ExportRange::default()).unwrap();
    log.close().unwrap();
    drop(log);

    let mut files = Vec::new();
    all_files(&fx.audit_dir(), &mut files);
    files.push(export);
    let mut hmac_seen = false;
    for f in &files {
        for needle in [MARKER.as_bytes(), &MARKER.as_bytes()[..24], sha.as_bytes(), sha.to_uppercase().as_bytes()] {
            assert!(!contains(f, needle), "a stored file or the export holds the marker or its bare hash");
        }
        hmac_seen |= contains(f, hmac.as_bytes());
    }
    assert!(hmac_seen, "the HMAC itself is recorded (else this test proves nothing)");
}
