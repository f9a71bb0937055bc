//! Property: the engine never keeps working for nobody. A client that disconnects mid-answer
//! stops its generation at once (the slot is freed, far fewer tokens are generated than asked);
//! the request deadline ends a generation with 504, or with an error event and no `[DONE]` in a
//! stream; a full queue is refused with 503 instead of piling up, and so is a prompt that the
//! whole KV pool cannot hold.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::time::{Duration, Instant};

use common::{Box_, Creds, Daemon, tiny_qwen2};
use http_body_util::BodyExt;
use serde_json::{Value, json};

/// Greedy decoding of the tiny model never meets its EOS: 4000 tokens take seconds on a CPU.
fn long(stream: bool) -> Value {
    json!({"model": "tiny", "prompt": "hello", "max_tokens": 4000, "temperature": 0, "stream": stream})
}

async fn poll_metric(d: &Daemon, prom: &Creds, name: &str, ok: impl Fn(f64) -> bool, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = d.metric(prom, name).await.unwrap_or(f64::NAN);
        if ok(v) {
            return v;
        }
        assert!(Instant::now() < deadline, "{name} = {v} after {secs} s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_cancels_its_generation() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let prom = b.add_metrics_client("prometheus");
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "")).await;

    let (resp, conn) = d.post_streaming(&app.token_only(), "/v1/completions", &long(true)).await;
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: {"));
    poll_metric(&d, &prom, "govbox_active_generations ", |v| v == 1.0, 10).await;
    // The client goes away: the connection is dropped mid-stream.
    drop(body);
    conn.abort();
    let _ = conn.await;

    poll_metric(&d, &prom, "govbox_active_generations ", |v| v == 0.0, 10).await;
    poll_metric(&d, &prom, "govbox_generations_cancelled_total ", |v| v == 1.0, 10).await;
    let generated = d.metric(&prom, "govbox_tokens_generated_total ").await.unwrap();
    assert!(generated < 2000.0, "the generation ran on after the client left: {generated} tokens");
    // The cancelled request's log line says so, with its token counts and no content.
    let logs = d.logs();
    let line = logs.lines().find(|l| l.contains("outcome=cancelled")).unwrap_or_else(|| panic!("{logs}"));
    assert!(line.contains("client=app") && line.contains("completion_tokens="), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_deadline_ends_a_generation() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let prom = b.add_metrics_client("prometheus");
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "[serving]\nrequest_deadline_secs = 1\n")).await;

    let t = Instant::now();
    let r = d.post(&app.token_only(), "/v1/completions", &long(false)).await;
    assert_eq!((r.status, r.error_code().as_str()), (504, "deadline_exceeded"));
    assert!(t.elapsed() < Duration::from_secs(4), "{:?}", t.elapsed());

    let (resp, _conn) = d.post_streaming(&app.token_only(), "/v1/completions", &long(true)).await;
    assert_eq!(resp.status(), 200);
    let events = common::sse_events(resp).await;
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "deadline_exceeded", "{last}");
    assert!(!events.iter().any(|e| e == "[DONE]"), "a cut-off stream must not end with [DONE]");
    poll_metric(&d, &prom, "govbox_active_generations ", |v| v == 0.0, 10).await;
}

/// The engine's typed `KvCacheFull` (a prompt the whole KV pool cannot hold) is 503
/// `kv_cache_full`, chosen by the error's variant; the budget it reserved goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_larger_than_the_kv_pool_is_503_kv_cache_full() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let prom = b.add_metrics_client("prometheus");
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "[serving]\nkv_tokens = 64\n")).await;
    let ids: Vec<u32> = (0..100).map(|i| 10 + i % 50).collect();
    let r =
        d.post(&app.token_only(), "/v1/completions", &json!({"model": "tiny", "prompt": ids, "max_tokens": 2})).await;
    assert_eq!((r.status, r.error_code().as_str()), (503, "kv_cache_full"), "{:?}", r.json());
    let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(msg.contains("needs 100 tokens") && msg.contains("holds 64"), "{msg}");
    // A prompt that fits is served.
    let r = d
        .post(&app.token_only(), "/v1/completions", &json!({"model": "tiny", "prompt": &ids[..20], "max_tokens": 2}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.json());
    poll_metric(&d, &prom, "govbox_active_generations ", |v| v == 0.0, 10).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_is_refused_with_503() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, None);
    let prom = b.add_metrics_client("prometheus");
    let extra = "[serving]\nmax_concurrent = 1\nqueue_depth = 0\n";
    let d = Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], extra)).await;

    let (resp, conn) = d.post_streaming(&app.token_only(), "/v1/completions", &long(true)).await;
    assert_eq!(resp.status(), 200);
    poll_metric(&d, &prom, "govbox_active_generations ", |v| v == 1.0, 10).await;
    let r =
        d.post(&app.token_only(), "/v1/completions", &json!({"model": "tiny", "prompt": "x", "max_tokens": 1})).await;
    assert_eq!((r.status, r.error_code().as_str()), (503, "server_overloaded"));
    assert!(r.headers.contains_key("retry-after"));
    drop(resp);
    conn.abort();
    poll_metric(&d, &prom, "govbox_active_generations ", |v| v == 0.0, 10).await;
    let r =
        d.post(&app.token_only(), "/v1/completions", &json!({"model": "tiny", "prompt": "x", "max_tokens": 1})).await;
    assert_eq!(r.status, 200);
}
