//! The model families' real chat templates (Qwen3, GLM-4, Gemma 3, DeepSeek-R1 and its Llama
//! distill) render byte for byte as transformers' `apply_chat_template` renders them: plain
//! multi-turn, system prompts, tool definitions, assistant tool calls and their results,
//! `enable_thinking` both ways, earlier answers that hold a `<think>` block, with and without the
//! generation prompt. The expected strings come from transformers itself
//! (`tests/fixtures/chat-templates/make_expected.py`, which writes `expected.json`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;

use govbox_engine::chat::{ChatMessage, ChatTemplate};
use serde_json::Value;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/chat-templates")
}

/// A message as transformers was given it. OpenAI's `content: null` (a calling turn) is the
/// empty text in govbox, as the API layer maps it; transformers drops the null key, which these
/// templates read as the empty text too.
fn message(v: &Value) -> ChatMessage {
    let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
    let mut m = ChatMessage::new(text("role").unwrap(), text("content").unwrap_or_default());
    m.tool_calls = v.get("tool_calls").cloned();
    m.tool_call_id = text("tool_call_id");
    m.name = text("name");
    m
}

#[test]
fn family_templates_render_like_transformers() {
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures().join("expected.json")).unwrap()).unwrap();
    let mut checked = 0;
    let mut failures = Vec::new();
    for (family, f) in expected["families"].as_object().unwrap() {
        let source = std::fs::read_to_string(fixtures().join(f["template"].as_str().unwrap())).unwrap();
        let template =
            ChatTemplate::new(&source, f["bos_token"].as_str().unwrap(), f["eos_token"].as_str().unwrap()).unwrap();
        for case in f["cases"].as_array().unwrap() {
            let name = case["name"].as_str().unwrap();
            let messages: Vec<ChatMessage> = case["messages"].as_array().unwrap().iter().map(message).collect();
            let tools = Some(&case["tools"]).filter(|t| !t.is_null());
            let kwargs = case["kwargs"].as_object().unwrap();
            let agp = case["add_generation_prompt"].as_bool().unwrap();
            let want = case["expected"].as_str().unwrap();
            match template.render_with(&messages, tools, kwargs, agp) {
                Ok(got) if got == want => {}
                Ok(got) => failures.push(format!("{family}/{name}:\n--- transformers\n{want:?}\n--- govbox\n{got:?}")),
                Err(e) => failures.push(format!("{family}/{name}: {e}")),
            }
            checked += 1;
        }
    }
    assert!(checked >= 30, "only {checked} cases");
    assert!(failures.is_empty(), "{} of {checked} differ:\n{}", failures.len(), failures.join("\n\n"));
}
