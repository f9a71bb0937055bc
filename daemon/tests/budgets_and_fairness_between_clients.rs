//! Property: clients cannot take more than their share. A daily token budget holds however many
//! requests a client sends at once (each reserves its prompt and max_tokens before it runs), and
//! one client flooding the box cannot make another client's request fail: the other waits its
//! turn and is answered.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Box_, Daemon, tiny_qwen2};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_requests_never_spend_more_than_the_daily_budget() {
    let b = Box_::provision();
    let app = b.add_client("app", &[], None, Some(50));
    let d = Arc::new(Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "")).await);
    let body = json!({"model": "tiny", "max_tokens": 16, "temperature": 0,
                      "messages": [{"role": "user", "content": "hi"}]});
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (d, app, body) = (d.clone(), app.token_only(), body.clone());
            tokio::spawn(async move { d.post(&app, "/v1/chat/completions", &body).await })
        })
        .collect();
    let (mut answered, mut refused, mut spent) = (0, 0, 0);
    for t in tasks {
        let r = t.await.unwrap();
        match r.status {
            200 => {
                answered += 1;
                spent += r.json()["usage"]["total_tokens"].as_u64().unwrap();
            }
            429 => {
                refused += 1;
                assert_eq!(r.error_code(), "token_budget_exceeded");
                let msg = r.json()["error"]["message"].as_str().unwrap().to_string();
                assert!(msg.contains("budget of 50 tokens"), "{msg}");
                assert!(r.headers.contains_key("retry-after"));
            }
            s => panic!("status {s}: {}", r.text()),
        }
    }
    assert!(spent <= 50, "{answered} answers spent {spent} tokens of a 50-token budget");
    assert!(answered >= 1 && refused >= 12, "answered {answered}, refused {refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flooding_client_cannot_make_another_fail() {
    let b = Box_::provision();
    // The flood's own rate is unlimited, so that only admission stands between it and the box.
    let flood = b.add_client("flood", &[], Some(100_000_000), None);
    let hr = b.add_client("hr", &[], None, None);
    let prom = b.add_metrics_client("prometheus");
    let config = b.config(&[("tiny", &tiny_qwen2())], "[serving]\nmax_concurrent = 2\nqueue_depth = 4\n");
    let d = Arc::new(Daemon::ready(&b, &config).await);
    let long = json!({"model": "tiny", "max_tokens": 500, "temperature": 1, "seed": 7,
                      "messages": [{"role": "user", "content": "write a long story"}]});

    // Twelve connections re-send as soon as they get any answer: both slots and the whole queue
    // stay full of the flood's requests, and its surplus is refused with 503.
    let stop = Arc::new(AtomicBool::new(false));
    let flood_503 = Arc::new(AtomicU64::new(0));
    let loops: Vec<_> = (0..12)
        .map(|_| {
            let (d, creds, body, stop, n503) =
                (d.clone(), flood.token_only(), long.clone(), stop.clone(), flood_503.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = d.post(&creds, "/v1/chat/completions", &body).await;
                    match r.status {
                        200 => {}
                        503 => {
                            n503.fetch_add(1, Ordering::Relaxed);
                        }
                        s => panic!("flood got {s}: {}", r.text()),
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while d.metric(&prom, "govbox_queued_requests").await != Some(4.0) || flood_503.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the flood never filled the queue: {}", d.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // The other client's requests, sent into the full queue, wait their turn and are answered.
    let short = json!({"model": "tiny", "max_tokens": 4, "temperature": 0,
                       "messages": [{"role": "user", "content": "hi"}]});
    for _ in 0..3 {
        let r = d.post(&hr.token_only(), "/v1/chat/completions", &short).await;
        assert_eq!(r.status, 200, "{}", r.text());
    }
    stop.store(true, Ordering::Relaxed);
    for l in loops {
        l.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_limit_on_concurrency_holds_with_free_slots() {
    let b = Box_::provision();
    let prom = b.add_metrics_client("prometheus");
    let d = Arc::new(Daemon::ready(&b, &b.config(&[("tiny", &tiny_qwen2())], "")).await);
    // Added through the admin socket, as `govbox client add batch --models all --max-concurrent 1` does.
    let added =
        d.admin(&json!({"cmd": "client_add", "name": "batch", "models": ["all"], "token": true, "max_concurrent": 1}));
    assert_eq!(added["result"]["client"]["max_concurrent"], 1, "{added}");
    let creds = common::Creds::token(added["result"]["token"].as_str().unwrap());
    let long = json!({"model": "tiny", "max_tokens": 500, "temperature": 1, "seed": 3,
                      "messages": [{"role": "user", "content": "write a long story"}]});
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let (d, creds, long) = (d.clone(), creds.clone(), long.clone());
            tokio::spawn(async move { d.post(&creds, "/v1/chat/completions", &long).await.status })
        })
        .collect();
    // Eight slots are free, yet one request runs and two wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    while d.metric(&prom, "govbox_queued_requests").await != Some(2.0) {
        assert!(Instant::now() < deadline, "two requests never waited: {}", d.logs());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(d.metric(&prom, "govbox_active_generations").await, Some(1.0));
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
}
