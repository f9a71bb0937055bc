//! GLM-4 and Gemma 3 GGUF files made by llama.cpp's own tools (`convert_hf_to_gguf.py --outtype
//! f32`, then `llama-quantize ... Q8_0`; `tests/fixtures/gguf/make_family_ggufs.sh` remakes them
//! with llama.cpp's logits for the Q8_0 files):
//! - F32: every position's logits within 1e-4 of HF's, incremental and prefill; the fixture
//!   prompts tokenize to HF's ids with the tokenizer the converter wrote, and its copy of the
//!   chat template renders the chat cases as transformers did;
//! - Q8_0: within llama.cpp's own distance from HF's exact logits (the rule `decoder_matches_hf`
//!   applies to the Llama and Qwen2 Q8_0 files).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_engine::chat::ChatMessage;

const TOL: f32 = 1e-4;

fn check_f32(backend: Arc<dyn Backend>, name: &str) {
    let path = fixture(&format!("gguf/{name}-f32.gguf"));
    // Against f32 references: the KV pool stays f32 whatever the default is.
    let engine = load_f32_on(&path, backend);
    let exp = json(&format!("{name}/expected.json"));
    let refs = load_tensors(&format!("{name}/expected_logits.safetensors"));
    let (mut prompts, mut chats) = (0, 0);
    for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
        let ids = ids(&case["input_ids"]);
        for prefill in [false, true] {
            let err = max_abs(&engine.logits(&ids, prefill).unwrap(), &refs[&format!("case{i}.logits")].1);
            assert!(err <= TOL, "{name} converted f32 case {i} prefill={prefill}: max abs error {err}");
        }
        if let Some(p) = case["prompt"].as_str() {
            assert_eq!(engine.tokenizer().encode(p).unwrap(), ids, "{name} case {i}: ids of the prompt");
            prompts += 1;
        }
        // The template the converter copied renders the chat cases as transformers did.
        if let Some(messages) = case["messages"].as_array() {
            let tok = engine.tokenizer();
            let messages: Vec<ChatMessage> = messages
                .iter()
                .map(|m| ChatMessage::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
                .collect();
            let rendered = tok.chat_template().expect("the file's template").render(&messages, true).unwrap();
            assert_eq!(rendered, case["rendered"].as_str().unwrap(), "{name} case {i}: rendered chat");
            // The GLM-4 copy renamed <|im_start|> (make_family_ggufs.sh); the others keep HF's ids.
            if tok.token_to_id("<|im_start|>").is_some() {
                assert_eq!(tok.encode(&rendered).unwrap(), ids, "{name} case {i}: ids of the chat");
            }
            chats += 1;
        }
    }
    assert!(prompts >= 5 && chats >= 2, "{name}: {prompts} prompts and {chats} chats checked");
}

test_device!(converted_glm4_f32_gguf_logits_match_hf, |b| check_f32(b, "tiny-glm4"));

// Sliding, sliding, global layers (the per-layer flags), norms with the 1 added, two RoPE bases.
test_device!(converted_gemma3_f32_gguf_logits_match_hf, |b| check_f32(b, "tiny-gemma3"));

test_device!(converted_glm4_q8_0_gguf_is_at_least_as_accurate_as_llama_cpp, |b| q8_0_vs_llama_cpp(b, "tiny-glm4"));

test_device!(converted_gemma3_q8_0_gguf_is_at_least_as_accurate_as_llama_cpp, |b| q8_0_vs_llama_cpp(b, "tiny-gemma3"));
