//! Encrypted content retention against a real govboxd. With the default config nothing of a
//! request is stored. With `[retention] store_content = true`, a chat request's prompt and the
//! exact response bytes can be read back with `govbox audit content`, each read becomes an audit
//! entry, and no file under the state folder holds the plaintext.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use govbox_e2e::{TestBox, bin, govbox, repo};

/// POSTs a chat request; returns the request id and the exact response body.
fn chat(b: &TestBox, marker: &str) -> (String, String) {
    let body = format!(
        r#"{{"model": "tiny-qwen2", "messages": [{{"role": "user", "content": "{marker}"}}], "max_tokens": 5}}"#
    );
    let auth = format!("Authorization: Bearer {}", b.token);
    let o = b.curl(&[
        "-i",
        "-H",
        &auth,
        "-H",
        "Content-Type: application/json",
        "-d",
        &body,
        &b.url("/v1/chat/completions"),
    ]);
    let text = String::from_utf8(o.stdout).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{text}");
    let id = head
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: ").or_else(|| l.strip_prefix("X-Request-Id: ")))
        .expect("x-request-id")
        .trim()
        .to_string();
    (id, body.to_string())
}

fn content_raw(b: &TestBox, id: &str) -> std::process::Output {
    Command::new(bin("govbox")).arg("--state").arg(&b.state).args(["audit", "content", id, "--json"]).output().unwrap()
}

/// Every file under `dir`, recursively, whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            hits.extend(files_containing(&p, needle));
        } else if meta.is_file() {
            let bytes = std::fs::read(&p).unwrap();
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

fn stop(d: &mut govbox_e2e::Daemon) {
    let pid = d.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "govboxd did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn stored_content_is_sealed_read_back_only_through_the_audited_admin_socket() {
    let b = TestBox::provisioned("content");
    let qwen = b.build_package(&repo().join("tests/fixtures/tiny-qwen2"), "tiny-qwen2", "1.0.0", true);
    b.import(&qwen);

    // Default config: nothing is stored, and there is nothing to read.
    let mut d = b.start();
    let (id, _) = chat(&b, "default-config-marker-5521");
    let o = content_raw(&b, &id);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("content_not_stored"), "{err}");
    assert!(!b.state.join("content").exists(), "no content store with the default config");
    assert!(!b.state.join("identity/content.key").exists(), "no content key with the default config");
    stop(&mut d);

    // Retention on.
    let mut config = std::fs::read_to_string(&b.config).unwrap();
    config.push_str("[retention]\nstore_content = true\ncontent_days = 7\n");
    std::fs::write(&b.config, config).unwrap();
    let d = b.start();
    let marker = "quokka-zebra-sealed-4417";
    let (id, response) = chat(&b, marker);
    let response_id = serde_json::from_str::<serde_json::Value>(&response).unwrap()["id"].as_str().unwrap().to_string();

    let o = content_raw(&b, &id);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["request_id"], id.as_str());
    let prompt = v["prompt"]["text"].as_str().unwrap();
    assert!(prompt.contains(marker), "{v}");
    assert_eq!(v["prompt"]["hmac_matches"], true, "{v}");
    assert_eq!(v["response"]["text"].as_str().unwrap(), response, "the exact bytes the client received");
    assert_eq!(v["response"]["hmac_matches"], true, "{v}");
    assert_eq!(v["response"]["truncated"], false);
    let human = govbox(&b.state, &["audit", "content", &id]);
    assert!(human.contains(marker) && human.contains("matches the audit log's HMAC"), "{human}");

    // Each read is an audit entry naming who and which request.
    let tail = govbox(&b.state, &["audit", "tail", "-n", "10", "--json"]);
    let reads: Vec<&str> = tail.lines().filter(|l| l.contains("content_read") && l.contains(&id)).collect();
    assert_eq!(reads.len(), 2, "two reads, two entries:\n{tail}");
    assert!(reads[0].contains("admin-socket uid"), "{}", reads[0]);

    // Bad and unknown ids.
    let o = content_raw(&b, "not-an-id");
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid_request"));
    let o = content_raw(&b, "req-00000000000000ff");
    assert!(String::from_utf8_lossy(&o.stderr).contains("content_not_found"), "{}", String::from_utf8_lossy(&o.stderr));

    // Sealed at rest: no state file holds the prompt or the response; nor does the log.
    let key = b.state.join("identity/content.key");
    assert_eq!(std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&key).unwrap().permissions()) & 0o777, 0o600);
    assert_eq!(std::fs::read(&key).unwrap().len(), 32);
    assert!(b.state.join("content").is_dir());
    for needle in [marker, response_id.as_str()] {
        let hits = files_containing(&b.state, needle.as_bytes());
        assert!(hits.is_empty(), "{needle} in plaintext in {hits:?}");
        assert!(!d.log_text().contains(needle), "{needle} in the daemon's log");
    }
}
