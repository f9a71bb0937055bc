//! Property: the model families of issue 23 (Qwen3, Qwen3-MoE, GLM-4, Gemma 3, DeepSeek-V3) go
//! the whole way a vendor's model goes: `govbox package build --selftest` records each tiny
//! fixture's self-test, `govbox model import` verifies the signatures and passes the self-test on
//! this box, and a real govboxd answers a chat request through the family's own template with
//! exactly HF's greedy continuation (`expected.json`, made by transformers 5.25) up to the first
//! end-of-turn token, where it stops.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use govbox_e2e::{TestBox, repo};
use serde_json::{Value, json};

const FAMILIES: [&str; 5] = ["tiny-qwen3", "tiny-qwen3-moe", "tiny-glm4", "tiny-gemma3", "tiny-deepseek-v3"];

fn expected(name: &str) -> Value {
    let p = repo().join("tests/fixtures").join(name).join("expected.json");
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// The texts of the tokenizer's special tokens (end-of-turn among them).
fn special_tokens(name: &str) -> Vec<String> {
    let p = repo().join("tests/fixtures").join(name).join("tokenizer.json");
    let tj: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    let added = tj["added_tokens"].as_array().unwrap().iter();
    added.filter(|t| t["special"] == true).map(|t| t["content"].as_str().unwrap().to_string()).collect()
}

#[test]
fn each_family_is_packaged_self_tested_imported_and_served_as_hf_answers() {
    let b = TestBox::provisioned("families");
    for name in FAMILIES {
        let pkg = b.build_package(&repo().join("tests/fixtures").join(name), name, "1.0.0", true);
        let out = b.import(&pkg);
        assert!(out.contains("self-test passed"), "{name}: {out}");
    }
    let d = b.start();
    for name in FAMILIES {
        let exp = expected(name);
        let specials = special_tokens(name);
        let chats: Vec<&Value> = exp["cases"].as_array().unwrap().iter().filter(|c| c["kind"] == "chat").collect();
        assert!(!chats.is_empty(), "{name}: no chat case");
        for c in chats {
            let want = c["greedy_new_ids"].as_array().unwrap().len();
            let body = json!({
                "model": name,
                "messages": c["messages"],
                "max_tokens": want,
                "temperature": 0,
                "logprobs": true,
            });
            let (code, v) = b.post_json("/v1/chat/completions", &body);
            assert_eq!(code, 200, "{name}: {v}\n{}", d.log_text());
            assert_eq!(v["usage"]["prompt_tokens"], c["input_ids"].as_array().unwrap().len(), "{name}: {v}");
            let text = v["choices"][0]["message"]["content"].as_str().unwrap_or_default();
            let reasoning = v["choices"][0]["message"]["reasoning_content"].as_str().unwrap_or_default();
            let got = format!("{reasoning}{text}");
            // HF generated past end-of-turn tokens; a server stops at the first one.
            let hf = c["greedy_new_text"].as_str().unwrap();
            assert!(hf.starts_with(&got), "{name}: govboxd {got:?}, HF {hf:?}");
            let rest = &hf[got.len()..];
            if rest.is_empty() {
                assert_eq!(v["choices"][0]["finish_reason"], "length", "{name}: {v}");
            } else {
                assert_eq!(v["choices"][0]["finish_reason"], "stop", "{name}: {v}");
                assert!(specials.iter().any(|t| rest.starts_with(t.as_str())), "{name}: stopped before {rest:?}");
            }
        }
    }
    drop(d);
}
