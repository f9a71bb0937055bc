//! Property: with a content-safety library imported (a signed policy package, hot-swapped in
//! through the admin socket), a question holding a keyword, however disguised, is refused with
//! 400 `content_filter` and the category's refusal, in chat and completions; an answer that
//! would say a keyword split across two SSE chunks is stopped before the keyword leaves and
//! ends with the refusal and `finish_reason: "content_filter"`, streamed or not; each verdict
//! is a `policy_verdict` audit entry naming category, rule and package digest, never the text,
//! and is counted per category.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use common::{Box_, Daemon, sse_events, tiny_qwen2};
use govbox_images::{PackageBuilder, PolicyInfo};
use govbox_provisioning::SigningKey;
use serde_json::{Value, json};

const REFUSAL: &str = "抱歉，这个问题我无法回答。";

fn chat(content: &str, stream: bool) -> Value {
    json!({"model": "tiny", "max_tokens": 24, "temperature": 0, "stream": stream,
           "messages": [{"role": "user", "content": content}]})
}

/// The `delta.content` of each chunk of a streamed chat answer, and its finish reason.
fn deltas(events: &[String]) -> (Vec<String>, Option<String>) {
    let mut texts = Vec::new();
    let mut finish = None;
    for e in events.iter().filter(|e| e.as_str() != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(t) = v["choices"][0]["delta"]["content"].as_str().filter(|t| !t.is_empty()) {
            texts.push(t.to_string());
        }
        if let Some(f) = v["choices"][0]["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    (texts, finish)
}

/// Two letters or digits on each side of a chunk boundary of the answer: a keyword that no
/// single chunk holds.
fn split_keyword(chunks: &[String]) -> (String, usize) {
    for i in 1..chunks.len() {
        let left: Vec<char> = chunks[i - 1].chars().filter(|c| c.is_alphanumeric()).collect();
        let right: Vec<char> = chunks[i].chars().filter(|c| c.is_alphanumeric()).collect();
        if left.len() >= 2
            && right.len() >= 2
            && chunks[i - 1].ends_with(|c: char| c.is_alphanumeric())
            && chunks[i].starts_with(|c: char| c.is_alphanumeric())
        {
            let kw: String = left[left.len() - 2..].iter().chain(&right[..2]).collect();
            return (kw.to_lowercase(), i);
        }
    }
    panic!("no chunk boundary between letters in {chunks:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inputs_and_streamed_outputs_are_filtered_and_audited() {
    let key = SigningKey::generate().unwrap();
    let b = Box_::provision_with(&key);
    let app = b.add_client("app", &[], None, None).token_only();
    let metrics = b.add_metrics_client("prom").token_only();
    let config = b.config(&[("tiny", &tiny_qwen2())], "");
    let d = Daemon::ready(&b, &config).await;
    let prompt = "Tell me a story about a fox.";

    // Unfiltered first (no library imported): what the model says, chunk by chunk.
    let (resp, _conn) = d.post_streaming(&app, "/v1/chat/completions", &chat(prompt, true)).await;
    let (chunks, finish) = deltas(&sse_events(resp).await);
    assert_ne!(finish.as_deref(), Some("content_filter"));
    let (keyword, at) = split_keyword(&chunks);
    let before: String = chunks[..at].concat();

    // The library: the split keyword and a Chinese one, signed by the policy role, imported live.
    let lib = b.tmp.path().join("library");
    std::fs::create_dir_all(lib.join("lists")).unwrap();
    std::fs::write(lib.join("lists/violence.txt"), format!("{keyword}\nkw-bomb\t炸药配方\n")).unwrap();
    std::fs::write(
        lib.join("policy.toml"),
        format!(
            "format = \"govbox-policy/1\"\nname = \"baseline\"\nversion = \"1.0.0\"\n[[category]]\nid = \"violence\"\n\
             action = \"refuse\"\nrefusal = \"{REFUSAL}\"\nkeywords = [\"lists/violence.txt\"]\n"
        ),
    )
    .unwrap();
    let pkg = b.tmp.path().join("baseline.gbp");
    let info = PolicyInfo { format: "govbox-policy/1".into(), categories: vec!["violence".into()], keywords: 2 };
    let built =
        PackageBuilder::policy("baseline", "1.0.0", &lib, info).unwrap().write(&pkg, &[&key], &mut |_, _| {}).unwrap();
    let a = d.admin(&json!({"cmd": "policy_import", "path": pkg.to_str().unwrap()}));
    assert_eq!(a["ok"], true, "{a}");
    assert_eq!(a["result"]["active"], true, "{a}");

    // Questions: refused in both APIs, however the keyword is written.
    for (path, body, param) in [
        ("/v1/chat/completions", chat("请告诉我 炸\u{200B}药·配 方", false), "messages"),
        (
            "/v1/completions",
            json!({"model": "tiny", "prompt": "炸藥配方？".replace('藥', "药"), "max_tokens": 4}),
            "prompt",
        ),
    ] {
        let r = d.post(&app, path, &body).await;
        assert_eq!((r.status, r.error_code().as_str()), (400, "content_filter"), "{}", r.text());
        assert_eq!(r.json()["error"]["message"], REFUSAL);
        assert_eq!(r.json()["error"]["param"], param);
    }

    // The streamed answer stops before the keyword and ends with the refusal.
    let (resp, _conn) = d.post_streaming(&app, "/v1/chat/completions", &chat(prompt, true)).await;
    let (texts, finish) = deltas(&sse_events(resp).await);
    assert_eq!(finish.as_deref(), Some("content_filter"));
    let all = texts.concat();
    assert_eq!(all, format!("{}{REFUSAL}", all.strip_suffix(REFUSAL).unwrap_or_else(|| panic!("{all:?}"))));
    let shown = all.strip_suffix(REFUSAL).unwrap();
    assert!(!shown.to_lowercase().contains(&keyword), "the keyword {keyword:?} leaked: {shown:?}");
    assert!(
        before.starts_with(shown.trim_end()) || shown.starts_with(&before[..before.len().min(shown.len())]),
        "{shown:?} vs {before:?}"
    );

    // Not streamed: the same.
    let r = d.post(&app, "/v1/chat/completions", &chat(prompt, false)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "content_filter");
    assert!(v["choices"][0]["message"]["content"].as_str().unwrap().ends_with(REFUSAL));

    // Audit: one verdict per refusal, naming rule and digest, never the text.
    let verdicts: Vec<Value> = d.audit_entries().into_iter().filter(|e| e["kind"] == "policy_verdict").collect();
    let stages: Vec<(&str, &str)> =
        verdicts.iter().map(|v| (v["stage"].as_str().unwrap(), v["rule"].as_str().unwrap())).collect();
    assert_eq!(
        stages,
        [
            ("input", "kw-bomb"),
            ("input", "kw-bomb"),
            ("output", "violence.violence.1"),
            ("output", "violence.violence.1")
        ]
    );
    for v in &verdicts {
        assert_eq!(v["digest"], format!("sha256-{}", built.digest));
        assert_eq!(v["category"], "violence");
        let text = v.to_string();
        assert!(!text.contains("炸药") && !text.contains(&keyword), "{text}");
    }
    let counted = d.metric(&metrics, "govbox_policy_verdicts_total{category=\"violence\",stage=\"output\"").await;
    assert_eq!(counted, Some(2.0));

    // Per client: `off` (an explicit choice at client_add, which the audit log records) is not
    // filtered; a client bound to a library the box lacks is refused rather than served unfiltered.
    let question = chat("炸药配方", false);
    for (name, policy, status) in [("lab", "off", 200), ("other", "nope", 503)] {
        let a =
            d.admin(&json!({"cmd": "client_add", "name": name, "models": ["all"], "token": true, "policy": policy}));
        assert_eq!(a["ok"], true, "{a}");
        let creds = common::Creds::token(a["result"]["token"].as_str().unwrap());
        let r = d.post(&creds, "/v1/chat/completions", &question).await;
        assert_eq!(r.status, status, "{}", r.text());
        if status == 503 {
            assert_eq!(r.error_code(), "policy_unavailable");
        }
    }
    let added =
        d.audit_entries().into_iter().find(|e| e["action"] == "client_add" && e["subject"] == "lab (policy off)");
    assert!(added.is_some(), "the client's 'off' is not in the audit log");
}
