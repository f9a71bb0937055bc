//! Property: one client cannot learn another's prompts from the prefix cache. Under the default
//! `prefix_cache = "per_client"`, a client's guess of another client's prompt reuses nothing
//! (`usage.prompt_tokens_details.cached_tokens` is 0), while the same client's repeat reuses
//! its own blocks, in chat and completions, whole and streamed; `"shared"` is what lets the
//! guess through, and greedy answers are the same either way.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Box_, Creds, Daemon, sse_events, tiny_qwen2};
use serde_json::{Value, json};

/// A prompt of several 16-token blocks, as a secret held by one client.
const SECRET: &str = "Case file 2291: the applicant's ID card number is 110101199003077777 and her \
                      phone number is 13800138000; she lives at 12 Garden Road, Haidian District.";

fn chat(content: &str) -> Value {
    json!({"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 8, "temperature": 0})
}

/// `cached_tokens` and the answer of a whole (not streamed) request.
async fn whole(d: &Daemon, who: &Creds, path: &str, req: &Value) -> (u64, String) {
    let r = d.post(who, path, req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let usage = &v["usage"];
    let cached = usage["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or_else(|| panic!("{usage}"));
    assert!(cached < usage["prompt_tokens"].as_u64().unwrap(), "{usage}");
    let c = &v["choices"][0];
    (cached, c["message"]["content"].as_str().or(c["text"].as_str()).unwrap().to_string())
}

/// `cached_tokens` of a streamed request's closing usage chunk.
async fn streamed(d: &Daemon, who: &Creds, path: &str, req: &Value) -> u64 {
    let mut req = req.clone();
    req["stream"] = json!(true);
    req["stream_options"] = json!({"include_usage": true});
    let resp = d.send_raw(who, "POST", path, Some(req.to_string().into())).await.unwrap();
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    last["usage"]["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or_else(|| panic!("{last}"))
}

async fn daemon(extra: &str) -> (Box_, Daemon, Creds, Creds) {
    let b = Box_::provision();
    let owner = b.add_client("case-system", &[], None, None);
    let prober = b.add_client("hotline-bot", &[], None, None);
    let cfg = b.config(&[("tiny", &tiny_qwen2())], extra);
    let d = Daemon::ready(&b, &cfg).await;
    (b, d, owner.token_only(), prober.token_only())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clients_guess_reuses_nothing() {
    let (_b, d, owner, prober) = daemon("").await;
    let req = chat(SECRET);
    let (first, answer) = whole(&d, &owner, "/v1/chat/completions", &req).await;
    assert_eq!(first, 0, "nothing is cached before the first request");
    // The right guess, whole and streamed: nothing reused, and the same greedy answer.
    let (guess, guess_answer) = whole(&d, &prober, "/v1/chat/completions", &req).await;
    assert_eq!(guess, 0, "the other client's right guess found the owner's blocks");
    assert_eq!(guess_answer, answer);
    // The prober's own earlier request is cached for it now, so it streams a new guess.
    assert_eq!(streamed(&d, &prober, "/v1/chat/completions", &chat(&SECRET.replace("2291", "2292"))).await, 0);
    // The owner's repeat reuses its own blocks.
    let (again, again_answer) = whole(&d, &owner, "/v1/chat/completions", &req).await;
    assert!(again >= 32, "the owner's repeat reused {again} tokens");
    assert_eq!(again_answer, answer);
    assert!(streamed(&d, &owner, "/v1/chat/completions", &req).await >= 32);

    // Completions the same way.
    let creq = json!({"model": "tiny", "prompt": SECRET, "max_tokens": 4, "temperature": 0});
    assert_eq!(whole(&d, &owner, "/v1/completions", &creq).await.0, 0);
    assert_eq!(streamed(&d, &prober, "/v1/completions", &creq).await, 0);
    assert!(whole(&d, &owner, "/v1/completions", &creq).await.0 >= 32);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_cache_lets_the_guess_through_and_off_reuses_nothing() {
    let (_b, d, owner, prober) = daemon("[serving]\nprefix_cache = \"shared\"").await;
    let req = chat(SECRET);
    let (_, answer) = whole(&d, &owner, "/v1/chat/completions", &req).await;
    let (guess, guess_answer) = whole(&d, &prober, "/v1/chat/completions", &req).await;
    assert!(guess >= 32, "shared: the right guess reused {guess} tokens");
    assert_eq!(guess_answer, answer);
    drop(d);

    let (_b, d, owner, _) = daemon("[serving]\nprefix_cache = \"off\"").await;
    for _ in 0..2 {
        let (cached, off_answer) = whole(&d, &owner, "/v1/chat/completions", &req).await;
        assert_eq!((cached, off_answer.as_str()), (0, answer.as_str()));
    }
}
