//! Property: what the box serves and how busy it is goes only to those allowed to know.
//! `/metrics` needs a client with the `metrics` scope (certificate or token); an inference
//! client, or no credentials, is refused. `/healthz` and the bare status of `/readyz` stay open;
//! the details of `/readyz` (models, device, memory) go to authenticated clients only.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Box_, Creds, Daemon, tiny_qwen2};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_need_the_metrics_scope_and_readiness_details_credentials() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let prom = b.add_metrics_client("prometheus");
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "")).await;

    // No credentials, or those of an inference client: refused, in OpenAI's error shape.
    let r = d.get(&Creds::none(), "/metrics").await.unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (401, "missing_credentials"));
    assert!(!r.text().contains("govbox_"), "{}", r.text());
    for creds in [app.token_only(), app.cert_only()] {
        let r = d.get(&creds, "/metrics").await.unwrap();
        assert_eq!((r.status, r.error_code().as_str()), (403, "scope_not_granted"), "{}", r.text());
    }
    // The scraper, by token or by certificate.
    for creds in [prom.token_only(), prom.cert_only()] {
        let r = d.get(&creds, "/metrics").await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(r.text().contains("govbox_requests_total"), "{}", r.text());
    }
    // A metrics client uses no model.
    let chat = json!({"model": "tiny", "max_tokens": 1, "messages": [{"role": "user", "content": "hi"}]});
    let r = d.post(&prom.token_only(), "/v1/chat/completions", &chat).await;
    assert_eq!((r.status, r.error_code().as_str()), (403, "model_not_allowed"));

    // Health and readiness stay open; readiness details need credentials.
    assert_eq!(d.get(&Creds::none(), "/healthz").await.unwrap().status, 200);
    let bare = d.get(&Creds::none(), "/readyz").await.unwrap();
    assert_eq!((bare.status, bare.json()), (200, json!({"status": "ready"})));
    let bad = d.get(&Creds::token("gbx_not-a-token"), "/readyz").await.unwrap();
    assert_eq!((bad.status, bad.json()), (200, json!({"status": "ready"})));
    for creds in [app.token_only(), prom.cert_only()] {
        let full = d.get(&creds, "/readyz").await.unwrap().json();
        assert_eq!((full["status"].clone(), full["models"].clone()), (json!("ready"), json!(1)), "{full}");
        assert!(full["backend"]["kind"].is_string() && full["backend"].get("memory_total").is_some(), "{full}");
    }
}
