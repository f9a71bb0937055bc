//! Property: the rest of OpenAI's chat/completions surface behaves as OpenAI documents it over
//! HTTPS: `n` choices (indexed, streamed with their index, the prompt billed once),
//! `logprobs`/`top_logprobs` in both endpoints' shapes (whole and streamed alike), completions
//! prompt lists, token prompts and `echo`; the `user` field reaches the audit entry only as a
//! keyed hash; and every 400 names the field at fault and what it expected.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use base64::Engine as _;
use common::{Box_, Creds, Daemon, sse_events, tiny_qwen2};
use serde_json::{Value, json};

async fn daemon() -> (Box_, Daemon, Creds) {
    let b = Box_::provision();
    let creds = b.add_client("app", &[], None, None);
    let cfg = b.config(&[("tiny", &tiny_qwen2())], "");
    let d = Daemon::ready(&b, &cfg).await;
    (b, d, creds)
}

const REUSED: &str = "govbox_prefix_cache_reused_tokens_total{model=\"tiny\"}";

/// The chunks of a streamed answer (without `[DONE]`, which must be last).
async fn stream(d: &Daemon, c: &Creds, path: &str, body: &Value) -> Vec<Value> {
    let mut body = body.clone();
    body["stream"] = json!(true);
    let (resp, _conn) = d.post_streaming(c, path, &body).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n_choices_and_logprobs_whole_and_streamed() {
    let (_b, d, creds) = daemon().await;
    let c = creds.token_only();
    let added = d.admin(&json!({"cmd": "client_add", "name": "prom", "scopes": ["metrics"], "token": true}));
    let prom = Creds::token(added["result"]["token"].as_str().unwrap_or_else(|| panic!("{added}")));
    // The choices of one request share its prompt's KV: the followers take the first choice's
    // full blocks from the prefix cache instead of computing them.
    let long = "Describe every room of a lighthouse, from the lamp at the top to the cellar. ".repeat(3);
    let shared = json!({"model": "tiny", "messages": [{"role": "user", "content": long}], "max_tokens": 2, "n": 4});
    let before = d.metric(&prom, REUSED).await.unwrap_or(0.0);
    let r = d.post(&c, "/v1/chat/completions", &shared).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let prompt = r.json()["usage"]["prompt_tokens"].as_u64().unwrap() as f64;
    let full = (prompt - 1.0).div_euclid(16.0) * 16.0;
    assert!(full >= 32.0, "the prompt fills at least two blocks: {prompt}");
    let reused = d.metric(&prom, REUSED).await.unwrap() - before;
    assert_eq!(reused, 3.0 * full, "three followers each reuse the prompt's {full} full-block tokens");
    let messages = json!([{"role": "user", "content": "Tell me a story about a lighthouse"}]);
    let one = d
        .post(
            &c,
            "/v1/chat/completions",
            &json!({"model": "tiny", "messages": messages, "max_tokens": 6, "temperature": 0}),
        )
        .await
        .json();
    let req = json!({"model": "tiny", "messages": messages, "max_tokens": 6, "temperature": 1.0, "seed": 11,
                     "n": 3, "logprobs": true, "top_logprobs": 4, "user": "alice@agency.example"});
    let r = d.post(&c, "/v1/chat/completions", &req).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 3);
    let mut completion = 0;
    for (i, ch) in choices.iter().enumerate() {
        assert_eq!(ch["index"], i);
        let content = ch["logprobs"]["content"].as_array().unwrap();
        assert!(!content.is_empty() && content.len() <= 6, "{ch}");
        for t in content {
            let lp = t["logprob"].as_f64().unwrap();
            assert!(lp <= 0.0);
            assert_eq!(t["bytes"], json!(t["token"].as_str().unwrap().as_bytes()));
            let top = t["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 4);
            assert!(top.windows(2).all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
            // The sampled token is at most as likely as the most likely one.
            assert!(lp <= top[0]["logprob"].as_f64().unwrap() + 1e-6);
        }
        completion += content.len();
    }
    // Seeded choices differ from each other (seed + index), and the prompt is billed once.
    assert!(
        choices[0]["message"]["content"] != choices[1]["message"]["content"]
            || choices[1]["message"]["content"] != choices[2]["message"]["content"],
        "{v}"
    );
    assert_eq!(v["usage"]["prompt_tokens"], one["usage"]["prompt_tokens"]);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() as usize >= completion);

    // Streamed: the same seed gives the same choices, each chunk names its choice, and the
    // log-probabilities arrive with the text they belong to.
    let chunks = stream(&d, &c, "/v1/chat/completions", &req).await;
    for (i, ch) in choices.iter().enumerate() {
        let mine: Vec<&Value> = chunks.iter().map(|k| &k["choices"][0]).filter(|k| k["index"] == i).collect();
        let text: String = mine.iter().filter_map(|k| k["delta"]["content"].as_str()).collect();
        assert_eq!(text, ch["message"]["content"].as_str().unwrap(), "choice {i}");
        let lps: Vec<Value> =
            mine.iter().filter_map(|k| k["logprobs"]["content"].as_array()).flatten().cloned().collect();
        let whole = ch["logprobs"]["content"].as_array().unwrap();
        assert_eq!(lps.len(), whole.len(), "choice {i}");
        for (a, b) in lps.iter().zip(whole) {
            assert_eq!(a["token"], b["token"]);
            // Batch neighbours may differ between the two runs: equal up to float rounding.
            assert!((a["logprob"].as_f64().unwrap() - b["logprob"].as_f64().unwrap()).abs() < 1e-3);
        }
        assert_eq!(mine.last().unwrap()["finish_reason"], ch["finish_reason"]);
    }

    // The user is in the audit entry as its per-client HMAC, never in clear.
    let a = d.admin(&json!({"cmd": "audit_export"}));
    let bytes = base64::engine::general_purpose::STANDARD.decode(a["result"]["export_b64"].as_str().unwrap()).unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("alice"));
    let doc: Value = serde_json::from_slice(&bytes).unwrap();
    let users: Vec<Value> = doc["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str::<Value>(e["entry"].as_str().unwrap()).unwrap())
        .filter(|e| e["kind"] == "inference_request")
        .map(|e| e["user_hmac"].clone())
        .collect();
    let proven = d.admin(&json!({"cmd": "audit_hmac", "client": "app", "text": "alice@agency.example"}));
    assert_eq!(
        users,
        vec![Value::Null, Value::Null, proven["result"]["hmac"].clone(), proven["result"]["hmac"].clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_prompt_lists_token_prompts_echo_and_logprobs() {
    let (_b, d, creds) = daemon().await;
    let c = creds.token_only();
    let req = json!({"model": "tiny", "prompt": ["Once upon", "In a galaxy"], "n": 2, "max_tokens": 5,
                     "temperature": 0, "logprobs": 3});
    let v = d.post(&c, "/v1/completions", &req).await.json();
    let choices = v["choices"].as_array().unwrap();
    assert_eq!(choices.len(), 4, "{v}");
    for (i, ch) in choices.iter().enumerate() {
        assert_eq!(ch["index"], i);
        let lp = &ch["logprobs"];
        let n = lp["tokens"].as_array().unwrap().len();
        assert!(n >= 1);
        for k in ["token_logprobs", "top_logprobs", "text_offset"] {
            assert_eq!(lp[k].as_array().unwrap().len(), n, "{k}: {lp}");
        }
        assert_eq!(lp["text_offset"][0], 0);
        assert!(lp["top_logprobs"][0].as_object().unwrap().len() <= 3);
    }
    // Greedy: a prompt's two choices agree; the two prompts' answers are their own.
    assert_eq!(choices[0]["text"], choices[1]["text"]);
    assert_eq!(choices[2]["text"], choices[3]["text"]);
    let alone = d
        .post(
            &c,
            "/v1/completions",
            &json!({"model": "tiny", "prompt": "In a galaxy", "max_tokens": 5, "temperature": 0}),
        )
        .await
        .json();
    assert_eq!(choices[2]["text"], alone["choices"][0]["text"]);
    let prompts = alone["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(v["usage"]["prompt_tokens"].as_u64().unwrap() > prompts, "both prompts, each once");

    // Echo puts the prompt first, whole and streamed.
    let echo = json!({"model": "tiny", "prompt": "In a galaxy", "max_tokens": 5, "temperature": 0, "echo": true});
    let e = d.post(&c, "/v1/completions", &echo).await.json();
    let want = format!("In a galaxy{}", alone["choices"][0]["text"].as_str().unwrap());
    assert_eq!(e["choices"][0]["text"], want);
    let chunks = stream(&d, &c, "/v1/completions", &echo).await;
    let text: String = chunks.iter().filter_map(|k| k["choices"][0]["text"].as_str()).collect();
    assert_eq!(text, want);

    // A token-id prompt answers like its text.
    let backend = std::sync::Arc::new(govbox_drivers::cpu::CpuBackend::new(1).unwrap());
    let engine = govbox_engine::Engine::load(
        &tiny_qwen2(),
        backend,
        &govbox_engine::EngineOptions { kv_tokens: 64, ..Default::default() },
    )
    .unwrap();
    let ids = engine.prompt_ids(&govbox_engine::Prompt::Text("In a galaxy".into())).unwrap();
    let t = d
        .post(&c, "/v1/completions", &json!({"model": "tiny", "prompt": ids, "max_tokens": 5, "temperature": 0}))
        .await
        .json();
    assert_eq!(t["choices"][0]["text"], alone["choices"][0]["text"]);
    // A control token's id is refused for a client not allowed special tokens.
    let special = engine.tokenizer().token_to_id("<|im_start|>").unwrap();
    let r = d.post(&c, "/v1/completions", &json!({"model": "tiny", "prompt": [special, 5]})).await;
    assert_eq!((r.status, r.json()["error"]["param"].as_str()), (400, Some("prompt")), "{}", r.text());

    // Echo with logprobs: the prompt's tokens first (the first with null, as OpenAI writes it),
    // each with its log-probability given the tokens before it, then the answer's; streamed alike.
    let lp_req = json!({"model": "tiny", "prompt": "In a galaxy", "max_tokens": 5, "temperature": 0, "logprobs": 2});
    let answer = d.post(&c, "/v1/completions", &lp_req).await.json();
    let mut echo_lp = lp_req.clone();
    echo_lp["echo"] = json!(true);
    let v = d.post(&c, "/v1/completions", &echo_lp).await.json();
    let lp = &v["choices"][0]["logprobs"];
    let answer_lp = &answer["choices"][0]["logprobs"];
    let tok = engine.tokenizer();
    let prompt_tokens: Vec<String> = ids.iter().map(|&i| tok.decode(&[i], false).unwrap()).collect();
    let want_tokens: Vec<Value> =
        prompt_tokens.iter().map(|t| json!(t)).chain(answer_lp["tokens"].as_array().unwrap().iter().cloned()).collect();
    assert_eq!(lp["tokens"], json!(want_tokens), "{v}");
    assert_eq!((&lp["token_logprobs"][0], &lp["top_logprobs"][0]), (&Value::Null, &Value::Null), "{v}");
    let want_prompt = engine.prompt_logprobs(&ids, 2).unwrap();
    for (i, w) in want_prompt.iter().enumerate() {
        let got = lp["token_logprobs"][i + 1].as_f64().unwrap();
        assert!((got - w.chosen.logprob as f64).abs() < 1e-4, "prompt token {}: {got} vs {w:?}", i + 1);
        assert_eq!(lp["top_logprobs"][i + 1].as_object().unwrap().len(), 2);
    }
    let n = ids.len();
    assert_eq!(lp["token_logprobs"].as_array().unwrap()[n..], answer_lp["token_logprobs"].as_array().unwrap()[..]);
    let mut at = 0;
    for (t, off) in lp["tokens"].as_array().unwrap().iter().zip(lp["text_offset"].as_array().unwrap()) {
        assert_eq!(off.as_u64().unwrap() as usize, at, "{lp}");
        at += t.as_str().unwrap().chars().count();
    }
    let chunks = stream(&d, &c, "/v1/completions", &echo_lp).await;
    let mut joined = json!({"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []});
    for k in chunks.iter().filter_map(|k| k["choices"][0]["logprobs"].as_object()) {
        for (key, vals) in k {
            joined[key].as_array_mut().unwrap().extend(vals.as_array().unwrap().iter().cloned());
        }
    }
    assert_eq!(&joined, lp, "streamed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_field_is_named_with_what_it_expects() {
    let (_b, d, creds) = daemon().await;
    let c = creds.token_only();
    let msgs = json!([{"role": "user", "content": "x"}]);
    let cases = [
        ("/v1/chat/completions", json!({"model": "tiny"}), "messages", "missing_required_parameter", "is missing"),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": msgs, "max_tokens": -1}),
            "max_tokens",
            "invalid_type",
            "a whole number, not negative",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": msgs, "temperature": "0"}),
            "temperature",
            "invalid_type",
            "must be a number (got a string)",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": [{"role": "user", "content": 3}]}),
            "messages[0].content",
            "invalid_type",
            "a string or an array of content parts",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": msgs, "top_logprobs": 21, "logprobs": true}),
            "top_logprobs",
            "invalid_value",
            "between 0 and 20",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": msgs, "logit_bias": {"99999": 5}}),
            "logit_bias",
            "invalid_value",
            "outside model 'tiny''s vocabulary",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "tiny", "messages": msgs, "logit_bias": {"5": 300}}),
            "logit_bias.5",
            "invalid_value",
            "between -100 and 100",
        ),
        ("/v1/completions", json!({"model": "tiny"}), "prompt", "missing_required_parameter", "is missing"),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "echo": true, "suffix": "y"}),
            "suffix",
            "invalid_value",
            "cannot be combined",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "best_of": 3}),
            "best_of",
            "invalid_value",
            "best_of must equal n",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "suffix": "y"}),
            "suffix",
            "invalid_value",
            "fill-in-the-middle",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "x", "stream": "yes"}),
            "stream",
            "invalid_type",
            "true or false",
        ),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": {"text": "x"}}),
            "prompt",
            "invalid_type",
            "an array of token ids",
        ),
    ];
    for (path, body, param, code, says) in cases {
        let r = d.post(&c, path, &body).await;
        let e = &r.json()["error"];
        assert_eq!((r.status, e["param"].as_str(), e["code"].as_str()), (400, Some(param), Some(code)), "{body}: {e}");
        assert!(e["message"].as_str().unwrap().contains(says), "{body}: {e}");
    }
}
