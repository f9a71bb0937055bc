//! The official `openai` Python SDK, `curl` and `openssl s_client` against a real govboxd over
//! HTTPS: with the box CA and a client certificate, and again with a bearer token.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::{Command, Stdio};

use govbox_e2e::{TestBox, python_check, python_with_openai, repo};

#[test]
fn openai_sdk_with_client_certificate_and_with_bearer_token() {
    let py = python_with_openai();
    let b = TestBox::new("sdk");
    let d = b.start();
    let base = b.url("/v1");
    let ca = b.certs.join("ca.crt").display().to_string();
    let cert = b.certs.join("app.crt").display().to_string();
    let key = b.certs.join("app.key").display().to_string();
    for creds in [vec!["--cert".to_string(), cert, key], vec!["--token".to_string(), b.token.clone()]] {
        let mut args = vec![base.clone(), ca.clone()];
        args.extend(creds);
        args.extend(["tiny-qwen2".to_string(), "minilm".to_string()]);
        python_check(&py, "openai_client_check.py", &args, &[], &d);
    }
}

/// logprobs, n = 2, logit_bias, completions prompt lists and echo, and field-naming errors
/// through the SDK, every request and answer validated against daemon/openapi.yaml's schemas.
#[test]
fn openai_sdk_logprobs_n_and_openapi_schemas() {
    let py = python_with_openai();
    let b = TestBox::new("surface");
    let d = b.start();
    let args = [
        repo().join("daemon/openapi.yaml").display().to_string(),
        b.url("/v1"),
        b.certs.join("ca.crt").display().to_string(),
        b.token.clone(),
        "tiny-qwen2".to_string(),
    ];
    python_check(&py, "openai_surface_check.py", &args, &[], &d);
}

#[test]
fn curl_with_token_and_certificate_and_error_shapes() {
    let b = TestBox::new("curl");
    let _d = b.start();
    let body = r#"{"model":"tiny-qwen2","messages":[{"role":"user","content":"hello"}],"max_tokens":4}"#;
    let auth = format!("Authorization: Bearer {}", b.token);
    let o = b.curl(&["-H", &auth, "-H", "Content-Type: application/json", "-d", body, &b.url("/v1/chat/completions")]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["object"], "chat.completion", "{v}");
    let cert = b.certs.join("app.crt");
    let key = b.certs.join("app.key");
    let o = b.curl(&[
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &b.url("/v1/chat/completions"),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 4, "{v}");
    // No credentials: 401 in OpenAI's error shape.
    let o = b.curl(&[
        "-w",
        "\n%{http_code}",
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &b.url("/v1/chat/completions"),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    let (json, code) = text.rsplit_once('\n').unwrap();
    assert_eq!(code, "401", "{text}");
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    assert!(v["error"]["message"].is_string() && v["error"]["type"].is_string(), "{v}");
}

#[test]
fn openssl_s_client_negotiates_tls13_and_a_foreign_ca_cert_is_refused() {
    let b = TestBox::new("tls");
    let _d = b.start();
    let connect = format!("127.0.0.1:{}", b.port);
    let o = Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-tls1_3", "-CAfile"])
        .arg(b.certs.join("ca.crt"))
        .args(["-verify_return_error", "-brief"])
        .stdin(Stdio::null())
        .output()
        .expect("openssl must be installed (.ci/run installs it)");
    let all = format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(all.contains("Protocol version: TLSv1.3"), "{all}");
    assert!(all.contains("Verification: OK"), "{all}");
    // TLS 1.1 is refused outright.
    let o = Command::new("openssl")
        .args(["s_client", "-connect", &connect, "-tls1_1", "-brief"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!o.status.success(), "TLS 1.1 must not be negotiated");

    // A client certificate from another CA (a second box) is refused.
    let other = TestBox::new("tls-other");
    let cert = other.certs.join("app.crt");
    let key = other.certs.join("app.key");
    let body = r#"{"model":"tiny-qwen2","prompt":"hi","max_tokens":2}"#;
    let o = b.curl(&[
        "-w",
        "\n%{http_code}",
        "--cert",
        cert.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
        "-H",
        "Content-Type: application/json",
        "-d",
        body,
        &b.url("/v1/completions"),
    ]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(!text.ends_with("\n200"), "a foreign CA's certificate must not be served: {text}");
}
