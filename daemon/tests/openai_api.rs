//! Property: govboxd speaks OpenAI's API over HTTPS: chat (whole and streamed), completions,
//! embeddings (float and base64), models; usage counts agree with the engine's tokenizer; every
//! error has OpenAI's error shape and the right status; `/metrics` counts requests and failures.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::sync::Arc;

use base64::Engine as _;
use common::{Box_, Creds, Daemon, minilm, sse_events, tiny_qwen2};
use govbox_drivers::cpu::CpuBackend;
use govbox_engine::chat::ChatMessage;
use govbox_engine::{Engine, EngineOptions, Prompt};
use serde_json::{Value, json};

async fn chat_daemon() -> (Box_, Daemon, Creds) {
    let b = Box_::provision();
    let creds = b.add_client("app", &[], None, None);
    let cfg = b.config(&[("tiny", &tiny_qwen2())], "");
    let d = Daemon::ready(&b, &cfg).await;
    (b, d, creds)
}

fn prompt_tokens_of(messages: &[ChatMessage]) -> usize {
    let backend = Arc::new(CpuBackend::new(1).unwrap());
    let e = Engine::load(&tiny_qwen2(), backend, &EngineOptions { kv_tokens: 64, ..Default::default() }).unwrap();
    e.prompt_ids(&Prompt::Chat(messages.to_vec())).unwrap().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_whole_and_streamed_agree_and_count_usage() {
    let (_b, d, creds) = chat_daemon().await;
    let req = json!({"model": "tiny", "messages": [{"role": "user", "content": "Hello there"}],
                     "max_tokens": 12, "temperature": 0, "seed": 1, "user": "someone"});
    let r = d.post(&creds.token_only(), "/v1/chat/completions", &req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.headers["x-request-id"].to_str().unwrap().starts_with("req-"));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "tiny");
    assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    let text = v["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap().to_string();
    let usage = v["usage"].clone();
    let want_prompt = prompt_tokens_of(&[ChatMessage::new("user", "Hello there")]);
    assert_eq!(usage["prompt_tokens"], want_prompt);
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=12).contains(&completion), "{usage}");
    if finish == "length" {
        assert_eq!(completion, 12);
    }
    assert_eq!(usage["total_tokens"].as_u64().unwrap(), want_prompt as u64 + completion);

    // The same request streamed, over a client certificate this time.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    sreq["stream_options"] = json!({"include_usage": true});
    let resp =
        d.send_raw(&creds.cert_only(), "POST", "/v1/chat/completions", Some(sreq.to_string().into())).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"), "{events:?}");
    let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let mut streamed = String::new();
    let mut finishes = vec![];
    for c in &chunks {
        assert_eq!(c["object"], "chat.completion.chunk");
        if let Some(choice) = c["choices"].get(0) {
            streamed.push_str(choice["delta"]["content"].as_str().unwrap_or(""));
            if let Some(f) = choice["finish_reason"].as_str() {
                finishes.push(f.to_string());
            }
        }
    }
    assert_eq!(streamed, text, "streamed and whole answers differ");
    assert_eq!(finishes, vec![finish]);
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"].as_array().unwrap().len(), 0);
    // The same client's repeat reuses its prompt's full blocks (never the last token).
    assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0, "{usage}");
    let mut repeat = usage.clone();
    repeat["prompt_tokens_details"]["cached_tokens"] = json!((want_prompt - 1) / 16 * 16);
    assert_eq!(last["usage"], repeat);
    assert!(chunks[..chunks.len() - 1].iter().all(|c| c["usage"].is_null()));

    // Without include_usage, no usage chunk.
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let resp =
        d.send_raw(&creds.token_only(), "POST", "/v1/chat/completions", Some(sreq.to_string().into())).await.unwrap();
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(events.iter().all(|e| !e.contains("\"usage\"")), "{events:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_strings_cut_the_answer() {
    let (_b, d, creds) = chat_daemon().await;
    let c = creds.token_only();
    let base = json!({"model": "tiny", "messages": [{"role": "user", "content": "Count"}],
                      "max_tokens": 24, "temperature": 0});
    let full = d.post(&c, "/v1/chat/completions", &base).await.json();
    let text = full["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 6, "the tiny model should say something: {text:?}");
    // A stop string taken from the middle of the greedy answer.
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 2].iter().collect();
    let cut = &text[..text.find(&stop).unwrap()];
    for spec in [json!(stop), json!(["zzzz-never", stop])] {
        let mut req = base.clone();
        req["stop"] = spec;
        let v = d.post(&c, "/v1/chat/completions", &req).await.json();
        assert_eq!(v["choices"][0]["message"]["content"], cut, "{v}");
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
    let mut req = base.clone();
    req["max_completion_tokens"] = json!(3);
    let v = d.post(&c, "/v1/chat/completions", &req).await.json();
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_whole_and_streamed() {
    let (_b, d, creds) = chat_daemon().await;
    let c = creds.token_only();
    let req = json!({"model": "tiny", "prompt": "Once upon a time", "max_tokens": 8, "temperature": 0});
    let v = d.post(&c, "/v1/completions", &req).await.json();
    assert_eq!(v["object"], "text_completion");
    let text = v["choices"][0]["text"].as_str().unwrap().to_string();
    assert_eq!(
        v["usage"]["completion_tokens"].as_u64().unwrap() + v["usage"]["prompt_tokens"].as_u64().unwrap(),
        v["usage"]["total_tokens"].as_u64().unwrap()
    );
    let mut sreq = req.clone();
    sreq["stream"] = json!(true);
    let resp = d.send_raw(&c, "POST", "/v1/completions", Some(sreq.to_string().into())).await.unwrap();
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(streamed, text);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embeddings_as_floats_and_base64() {
    let Some(minilm) = minilm() else { return };
    let b = Box_::provision();
    let creds = b.add_client("app", &[], None, None);
    let cfg = b.config(&[("tiny", &tiny_qwen2()), ("minilm", &minilm)], "");
    let d = Daemon::ready(&b, &cfg).await;
    let c = creds.token_only();
    let r = d
        .post(&c, "/v1/embeddings", &json!({"model": "minilm", "input": ["first text", "a second, longer text"]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["object"], "list");
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(data[1]["index"], 1);
    let floats: Vec<f32> =
        data[0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
    assert_eq!(floats.len(), 384);
    let norm: f32 = floats.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((norm - 1.0).abs() < 1e-3, "MiniLM vectors are normalised: {norm}");
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() >= 6);
    assert_eq!(v["usage"]["prompt_tokens"], v["usage"]["total_tokens"]);

    // The same batch as base64: the same vectors, bit for bit.
    let req = json!({"model": "minilm", "input": ["first text", "a second, longer text"], "encoding_format": "base64"});
    let r = d.post(&c, "/v1/embeddings", &req).await;
    let v = r.json();
    let b64 = v["data"][0]["embedding"].as_str().unwrap();
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).unwrap();
    let decoded: Vec<f32> = bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert_eq!(decoded, floats, "base64 is the same vector as little-endian f32");

    // An embedding model cannot chat, and a chat model cannot embed.
    let r = d.post(&c, "/v1/embeddings", &json!({"model": "tiny", "input": "x"})).await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "wrong_model_kind"));
    let r = d
        .post(&c, "/v1/chat/completions", &json!({"model": "minilm", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "wrong_model_kind"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_listed() {
    let (_b, d, creds) = chat_daemon().await;
    let v = d.get(&creds.token_only(), "/v1/models").await.unwrap().json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], "tiny");
    assert_eq!(v["data"][0]["object"], "model");
    let r = d.get(&creds.token_only(), "/v1/models/tiny").await.unwrap();
    assert_eq!(r.json()["id"], "tiny");
    let r = d.get(&creds.token_only(), "/v1/models/nope").await.unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (404, "model_not_found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_openais_shape_and_status() {
    let (_b, d, creds) = chat_daemon().await;
    let c = creds.token_only();
    let marker = "MARKER-7f3a-never-echoed";
    // Malformed JSON, and well-formed JSON of the wrong shape: 400 naming the field where there
    // is one, and the body is never echoed.
    for (body, code, param) in [
        (format!("{{\"model\": \"tiny\", \"messages\": [{marker}"), "invalid_json", Value::Null),
        // Both fields are wrong: the first in the body's order is named.
        (format!("{{\"model\": 5, \"messages\": \"{marker}\"}}"), "invalid_type", json!("model")),
        (format!("{{\"model\": \"tiny\", \"messages\": \"{marker}\"}}"), "invalid_type", json!("messages")),
    ] {
        let r = d.send(&c, "POST", "/v1/chat/completions", Some(body.into_bytes())).await.unwrap();
        assert_eq!((r.status, r.error_code().as_str()), (400, code));
        assert_eq!(r.json()["error"]["param"], param);
        assert!(!r.text().contains(marker), "{}", r.text());
    }
    // Over the body limit: 413.
    let big = format!("{{\"model\": \"tiny\", \"prompt\": \"{}\"}}", "a".repeat((1 << 20) + 10));
    let r = d.send(&c, "POST", "/v1/completions", Some(big.into_bytes())).await.unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (413, "body_too_large"));
    // n > 8: 400 naming the field.
    let r = d
        .post(
            &c,
            "/v1/chat/completions",
            &json!({"model": "tiny", "n": 9, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (400, "invalid_value"));
    assert_eq!(r.json()["error"]["param"], "n");
    assert!(r.json()["error"]["message"].as_str().unwrap().contains("between 1 and 8"));
    // Unknown model: 404.
    let r = d
        .post(&c, "/v1/chat/completions", &json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}))
        .await;
    assert_eq!((r.status, r.error_code().as_str()), (404, "model_not_found"));
    // Unknown route and wrong method.
    let r = d.get(&c, "/v1/nothing").await.unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (404, "unknown_url"));
    let r = d.get(&c, "/v1/chat/completions").await.unwrap();
    assert_eq!((r.status, r.error_code().as_str()), (405, "method_not_allowed"));
    // Tool calling is refused rather than ignored.
    let r = d
        .post(
            &c,
            "/v1/chat/completions",
            &json!({"model": "tiny", "tools": [{"type": "function"}], "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(r.status, 400);

    // Health, readiness and the metrics of all the above (read by a scraper added online).
    assert_eq!(d.get(&Creds::none(), "/healthz").await.unwrap().status, 200);
    let ready = d.get(&c, "/readyz").await.unwrap().json();
    assert_eq!(ready["status"], "ready");
    // These tests serve unsigned config folders, and readiness says so.
    assert_eq!(ready["insecure_dev_models"], true, "{ready}");
    let added = d.admin(&json!({"cmd": "client_add", "name": "prometheus", "scopes": ["metrics"], "token": true}));
    let prom = Creds::token(added["result"]["token"].as_str().unwrap_or_else(|| panic!("{added}")));
    let m = d.get(&prom, "/metrics").await.unwrap();
    assert!(m.headers["content-type"].to_str().unwrap().starts_with("application/openmetrics-text"));
    // Every generation above has finished, so the chat model's KV blocks are all free again.
    assert!(m.text().contains("govbox_kv_cache_usage_ratio{model=\"tiny\"} 0.0"), "{}", m.text());
    assert!(m.text().contains("govbox_kv_cache_blocks{model=\"tiny\",state=\"running\"} 0\n"), "{}", m.text());
    for name in
        ["govbox_prefix_cache_hits_total", "govbox_prefix_cache_reused_tokens_total", "govbox_batch_peak_sequences"]
    {
        assert!(m.text().contains(&format!("{name}{{model=\"tiny\"}} ")), "{name} missing:\n{}", m.text());
    }
    let ok = d
        .post(
            &c,
            "/v1/chat/completions",
            &json!({"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "x"}]}),
        )
        .await;
    assert_eq!(ok.status, 200);
    let counted = |prefix: &'static str, want: f64| {
        let (d, prom) = (&d, &prom);
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            loop {
                // Records are written when the response body is released: poll briefly.
                if d.metric(prom, prefix).await.is_some_and(|v| v >= want) {
                    return;
                }
                assert!(std::time::Instant::now() < deadline, "{prefix} never reached {want}");
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
    };
    counted("govbox_requests_total{endpoint=\"/v1/chat/completions\",status=\"400\"}", 4.0).await;
    counted("govbox_requests_total{endpoint=\"/v1/chat/completions\",status=\"404\"}", 1.0).await;
    counted("govbox_requests_total{endpoint=\"/v1/chat/completions\",status=\"200\"}", 1.0).await;
    counted("govbox_requests_total{endpoint=\"/v1/completions\",status=\"413\"}", 1.0).await;
    counted("govbox_requests_total{endpoint=\"unmatched\",status=\"404\"}", 1.0).await;
    counted("govbox_tokens_generated_total", 2.0).await;
    counted("govbox_time_to_first_token_seconds_count", 1.0).await;
}
