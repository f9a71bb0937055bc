//! GGUF files whose tokenizer is SentencePiece (`tokenizer.ggml.model = llama`, what llama.cpp's
//! converter writes for Llama 2 and Gemma 3) tokenize as llama.cpp does, and a family's chat
//! template in `tokenizer.chat_template` renders as transformers renders it.
//!
//! - `tests/fixtures/gguf/ggml-vocab-llama-spm.gguf` (llama.cpp's Llama SentencePiece vocabulary
//!   file) against our own 40 cases in `llama-spm-cases.json`, whose ids are llama.cpp's
//!   tokenisation (no BOS, special tokens not parsed), made by `make_spm_cases.py` beside it.
//! - Gemma 3's real template and GLM-4's, put in a file's metadata as the converter puts them,
//!   give the strings `tests/fixtures/chat-templates/expected.json` holds from
//!   `transformers.apply_chat_template`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use govbox_engine::chat::ChatMessage;
use govbox_engine::gguf::writer::GgufWriter;
use govbox_engine::gguf::{GgufArray, GgufValue, parse_gguf};
use govbox_engine::tokenizer::Tokenizer;

fn tokenizer_of(bytes: &[u8]) -> Tokenizer {
    Tokenizer::from_gguf(&parse_gguf(bytes).unwrap()).unwrap()
}

#[test]
fn llama_spm_vocab_tokenizes_as_llama_cpp() {
    let dir = fixture("gguf");
    let tok = tokenizer_of(&std::fs::read(dir.join("ggml-vocab-llama-spm.gguf")).unwrap());
    let cases = json("gguf/llama-spm-cases.json");
    let cases = cases["cases"].as_array().unwrap();
    let mut failures = Vec::new();
    for case in cases {
        let text = case["text"].as_str().unwrap();
        let want = ids(&case["ids"]);
        let got = tok.encode_plain(text).unwrap();
        if got != want {
            failures.push(format!("{text:?}: llama.cpp {want:?}, govbox {got:?}"));
        }
    }
    assert!(cases.len() >= 30, "only {} cases", cases.len());
    assert!(failures.is_empty(), "{} of {} differ:\n{}", failures.len(), cases.len(), failures.join("\n"));
    // Pieces, byte fallback and the space prefix undo on decoding.
    for text in ["Hello world", "Äpfel ½ 🦙 and  two spaces", "\tTab\nnewline"] {
        let ids = tok.encode_plain(text).unwrap();
        assert_eq!(tok.decode(&ids, false).unwrap(), text, "{ids:?}");
    }
    assert_eq!(tok.bos_id(), Some(1));
    assert!(tok.add_bos());
    assert_eq!(tok.eos_ids(), &[2]);
}

fn strs(v: &[&str]) -> GgufValue {
    GgufValue::Array(GgufArray::String(v.iter().map(|s| s.to_string()).collect()))
}

/// A Gemma-shaped SentencePiece vocabulary as llama.cpp's converter writes a Gemma 3 file's:
/// control tokens first (`<pad>`, `<eos>`, `<bos>`, `<unk>`), the turn markers, the 256 byte
/// pieces, then scored pieces; no space prefix.
fn gemma_like(template: &str) -> Vec<u8> {
    let mut tokens: Vec<String> = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut types = vec![3, 3, 3, 2, 3, 3];
    let mut scores = vec![0.0f32; tokens.len()];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    // Scored pieces, in falling score order.
    let pieces = [
        "▁", "h", "e", "l", "o", "w", "r", "d", "\n", "▁h", "he", "ll", "lo", "llo", "▁he", "▁hel", "▁hello", "▁w",
        "or", "a", "b", "c", "ab", "bc",
    ];
    for (i, p) in pieces.iter().enumerate() {
        tokens.push(p.to_string());
        types.push(1);
        scores.push(-(i as f32));
    }
    let mut w = GgufWriter::new();
    w.kv("general.architecture", GgufValue::String("gemma3".into()))
        .kv("tokenizer.ggml.model", GgufValue::String("llama".into()))
        .kv("tokenizer.ggml.pre", GgufValue::String("default".into()))
        .kv("tokenizer.ggml.tokens", strs(&tokens.iter().map(String::as_str).collect::<Vec<_>>()))
        .kv("tokenizer.ggml.scores", GgufValue::Array(GgufArray::F32(scores)))
        .kv("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(types)))
        .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(2))
        .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(1))
        .kv("tokenizer.ggml.unknown_token_id", GgufValue::U32(3))
        .kv("tokenizer.ggml.padding_token_id", GgufValue::U32(0))
        .kv("tokenizer.ggml.add_bos_token", GgufValue::Bool(true))
        .kv("tokenizer.ggml.add_space_prefix", GgufValue::Bool(false))
        .kv("tokenizer.chat_template", GgufValue::String(template.into()));
    w.to_bytes()
}

fn template_cases(family: &str) -> (String, Vec<serde_json::Value>) {
    let expected = json("chat-templates/expected.json");
    let f = &expected["families"][family];
    let source = std::fs::read_to_string(fixture("chat-templates").join(f["template"].as_str().unwrap())).unwrap();
    (source, f["cases"].as_array().unwrap().clone())
}

fn render_cases(tok: &Tokenizer, family: &str, cases: &[serde_json::Value]) {
    let template = tok.chat_template().expect("the file's template");
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let messages: Vec<ChatMessage> = case["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| {
                let text = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
                let mut msg = ChatMessage::new(text("role").unwrap(), text("content").unwrap_or_default());
                msg.tool_calls = m.get("tool_calls").cloned();
                msg.tool_call_id = text("tool_call_id");
                msg.name = text("name");
                msg
            })
            .collect();
        let tools = Some(&case["tools"]).filter(|t| !t.is_null());
        let got = template
            .render_with(
                &messages,
                tools,
                case["kwargs"].as_object().unwrap(),
                case["add_generation_prompt"].as_bool().unwrap(),
            )
            .unwrap();
        assert_eq!(got, case["expected"].as_str().unwrap(), "{family}/{name}");
    }
}

#[test]
fn gemma3_gguf_spm_tokenizer_and_template() {
    let (source, cases) = template_cases("gemma3");
    let tok = tokenizer_of(&gemma_like(&source));
    // No space prefix; "▁hello" is made by its highest-scoring merges; "x" is no piece and falls
    // back to its byte; the turn markers are control tokens.
    assert_eq!(tok.encode("hello").unwrap(), vec![tok.token_to_id("he").unwrap(), tok.token_to_id("llo").unwrap()]);
    assert_eq!(tok.encode(" hello").unwrap(), vec![tok.token_to_id("▁hello").unwrap()]);
    assert_eq!(tok.encode("x").unwrap(), vec![tok.token_to_id("<0x78>").unwrap()]);
    // "ab" scores above "bc".
    assert_eq!(tok.encode("abc").unwrap(), vec![tok.token_to_id("ab").unwrap(), tok.token_to_id("c").unwrap()]);
    let turn = tok.encode("<start_of_turn>hello<end_of_turn>").unwrap();
    assert_eq!(turn.first(), Some(&4));
    assert_eq!(turn.last(), Some(&5));
    assert!(tok.is_special(4) && tok.is_special(1));
    assert_eq!(tok.decode(&tok.encode(" hello world\nx").unwrap(), false).unwrap(), " hello world\nx");
    // <eos> from the metadata, and <end_of_turn>, which ends Gemma's turns, by its text.
    assert_eq!((tok.bos_id(), tok.eos_ids()), (Some(2), &[1u32, 5][..]));
    render_cases(&tok, "gemma3", &cases);
    assert!(cases.len() >= 3);
}

#[test]
fn glm4_gguf_template_renders_like_transformers() {
    let (source, cases) = template_cases("glm4");
    // GLM-4's file is byte-level BPE (gpt2) with [gMASK]<sop> and the role markers as control
    // tokens; the converter makes <|endoftext|> both BOS and EOS and <|user|> the end of turn.
    let specials = ["<|endoftext|>", "[gMASK]", "<sop>", "<|system|>", "<|user|>", "<|assistant|>", "<|observation|>"];
    let mut tokens: Vec<String> = specials.iter().map(|s| s.to_string()).collect();
    let mut types = vec![3; tokens.len()];
    for c in ["a", "b", "c"] {
        tokens.push(c.into());
        types.push(1);
    }
    let mut w = GgufWriter::new();
    w.kv("general.architecture", GgufValue::String("glm4".into()))
        .kv("tokenizer.ggml.model", GgufValue::String("gpt2".into()))
        .kv("tokenizer.ggml.pre", GgufValue::String("glm4".into()))
        .kv("tokenizer.ggml.tokens", strs(&tokens.iter().map(String::as_str).collect::<Vec<_>>()))
        .kv("tokenizer.ggml.token_type", GgufValue::Array(GgufArray::I32(types)))
        .kv("tokenizer.ggml.merges", strs(&[]))
        .kv("tokenizer.ggml.eos_token_id", GgufValue::U32(0))
        .kv("tokenizer.ggml.eot_token_id", GgufValue::U32(4))
        .kv("tokenizer.ggml.bos_token_id", GgufValue::U32(0))
        .kv("tokenizer.chat_template", GgufValue::String(source));
    let tok = tokenizer_of(&w.to_bytes());
    assert_eq!(tok.encode("[gMASK]<sop><|user|>").unwrap(), vec![1, 2, 4]);
    assert_eq!(tok.eos_ids(), &[0, 4]);
    render_cases(&tok, "glm4", &cases);
}
