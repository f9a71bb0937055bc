//! Property: at the most verbose log level, nothing a client sends or receives reaches the
//! daemon's output: not a prompt, not an answer, not a malformed body (serde quotes those), not
//! a presented token, not a model name that is not configured; nor the secrets the admin socket
//! hands out.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Box_, Creds, Daemon, tiny_qwen2, wait_for};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_request_content_in_logs_at_trace_level() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let cfg = b.config(&[("tiny", &tiny_qwen2())], "log_level = \"trace\"");
    let d = Daemon::start_with(&b, &cfg, &["-vv"], &[]);
    d.wait_ready().await;
    let m = "ZQXMARKER";
    let t = app.token_only();
    let mut answers = Vec::new();

    // Valid requests carrying the marker everywhere a client can put text.
    let chat = json!({"model": "tiny", "max_tokens": 24, "temperature": 0, "user": format!("{m}-user"),
                      "stop": [format!("{m}-stop")],
                      "messages": [{"role": "system", "content": format!("{m} system")},
                                   {"role": "user", "content": format!("tell me about {m}")}]});
    let r = d.post(&t, "/v1/chat/completions", &chat).await;
    assert_eq!(r.status, 200);
    answers.push(r.json()["choices"][0]["message"]["content"].as_str().unwrap().to_string());
    let mut stream = chat.clone();
    stream["stream"] = json!(true);
    let r = d.send(&app.cert_only(), "POST", "/v1/chat/completions", Some(stream.to_string().into())).await.unwrap();
    assert_eq!(r.status, 200);
    let r = d
        .post(
            &t,
            "/v1/completions",
            &json!({"model": "tiny", "prompt": format!("{m} once upon"), "max_tokens": 24, "temperature": 0}),
        )
        .await;
    assert_eq!(r.status, 200);
    answers.push(r.json()["choices"][0]["text"].as_str().unwrap().to_string());

    // Malformed and refused requests with the marker in them.
    let bodies = [
        format!("{{\"model\": \"tiny\", \"messages\": [{{\"role\": \"user\", \"content\": {m}}}]}}"),
        format!("{{\"model\": 7, \"messages\": \"{m}\"}}"),
        format!("{{\"model\": \"tiny\", \"messages\": [], \"{m}\": [1, 2, {m}"),
        format!("{m}{m}{m}"),
        // Wrong types: the answer names the field; nothing of the value reaches the log.
        format!("{{\"model\": \"tiny\", \"messages\": [], \"temperature\": \"{m}\"}}"),
        format!("{{\"model\": \"tiny\", \"messages\": [], \"logit_bias\": {{\"{m}\": \"{m}\"}}}}"),
    ];
    for body in bodies {
        let r = d.send(&t, "POST", "/v1/chat/completions", Some(body.into_bytes())).await.unwrap();
        assert_eq!(r.status, 400);
    }
    let r = d
        .post(
            &t,
            "/v1/chat/completions",
            &json!({"model": format!("{m}-model"), "messages": [{"role": "user", "content": m}]}),
        )
        .await;
    assert_eq!(r.status, 404);
    let r = d
        .post(
            &t,
            "/v1/chat/completions",
            &json!({"model": "tiny", "n": 9, "messages": [{"role": "user", "content": m}]}),
        )
        .await;
    assert_eq!(r.status, 400);
    let big = format!("{{\"model\": \"tiny\", \"prompt\": \"{}\"}}", m.repeat(120_000));
    assert_eq!(d.send(&t, "POST", "/v1/completions", Some(big.into_bytes())).await.unwrap().status, 413);
    // Unauthorised, with the marker as the token and in the body.
    let r = d.post(&Creds::token(&format!("gbx_{m}")), "/v1/chat/completions", &chat).await;
    assert_eq!(r.status, 401);
    let r = d.post(&Creds::token(m), "/v1/embeddings", &json!({"model": "tiny", "input": m})).await;
    assert_eq!(r.status, 401);

    // Secrets handed out by the admin socket.
    let added = d.admin(&json!({"cmd": "client_add", "name": "secretive", "models": ["all"], "token": true}));
    let token = added["result"]["token"].as_str().unwrap().to_string();
    assert_eq!(d.get(&Creds::token(&token), "/v1/models").await.unwrap().status, 200);

    // Every request above has written its log line before we look.
    let out = d.output.clone();
    let api_lines =
        || out.lock().unwrap().iter().filter(|l| l.contains(" request req-") && !l.contains("/readyz")).count();
    wait_for(20, "the 15 request log lines", || (api_lines() >= 15).then_some(()));
    let logs = d.logs();
    assert!(logs.contains("DEBUG"), "the verbose level did not take effect:\n{logs}");
    assert!(logs.contains("status=400") && logs.contains("status=401") && logs.contains("status=413"), "{logs}");
    assert!(!logs.contains(m), "request content reached the logs:\n{logs}");
    assert!(!logs.contains(&token), "a bearer token reached the logs");
    assert!(!logs.contains(app.token.as_deref().unwrap()), "a bearer token reached the logs");
    assert!(!logs.contains("PRIVATE KEY"), "key material reached the logs");
    for a in answers.iter().filter(|a| a.chars().count() >= 12) {
        assert!(!logs.contains(a.as_str()), "an answer reached the logs: {a:?}");
    }
}
