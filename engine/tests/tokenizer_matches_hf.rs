//! Tokenisation matches the reference implementations exactly: HF `tokenizers` for the tiny
//! fixture models (from their HuggingFace folders and from their GGUF conversions), and
//! llama.cpp for the real SmolLM2 GGUF. Chat templates render to the reference text, and
//! streaming decode never emits half a character.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use govbox_engine::MappedFile;
use govbox_engine::chat::ChatMessage;
use govbox_engine::gguf::parse_gguf;
use govbox_engine::tokenizer::Tokenizer;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures").join(rel)
}

fn cases(model: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(fixture(&format!("{model}/expected.json"))).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap().clone();
    assert!(!cases.is_empty(), "{model}: no cases");
    cases
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

fn messages(v: &Value) -> Vec<ChatMessage> {
    serde_json::from_value(v.clone()).unwrap()
}

fn load_gguf_tokenizer(path: &Path) -> Tokenizer {
    let file = MappedFile::open(path).unwrap();
    let g = parse_gguf(file.bytes()).unwrap();
    Tokenizer::from_gguf(&g).unwrap()
}

/// Checks one tokenizer against a fixture model's expected.json: the ids of every prompt and
/// rendered chat, the decoded text, and the chat template's output.
fn check_against(model: &str, tok: &Tokenizer, source: &str) {
    let mut chats = 0;
    for (i, case) in cases(model).iter().enumerate() {
        let expected = ids(&case["input_ids"]);
        let text = match case["kind"].as_str().unwrap() {
            "chat" => {
                chats += 1;
                let rendered = case["rendered"].as_str().unwrap();
                let ours = tok.chat_template().expect("no chat template").render(&messages(&case["messages"]), true);
                assert_eq!(ours.unwrap(), rendered, "{source}: case {i}: chat template output");
                rendered
            }
            _ => case["prompt"].as_str().unwrap(),
        };
        assert_eq!(tok.encode(text).unwrap(), expected, "{source}: case {i}: ids of {text:?}");
        let decoded = case.get("decoded").and_then(Value::as_str).unwrap_or(text);
        assert_eq!(tok.decode(&expected, false).unwrap(), decoded, "{source}: case {i}: decode");
    }
    assert!(chats > 0, "{model}: no chat cases checked");
}

#[test]
fn tiny_qwen2_hf_folder_matches_hf_tokenizers() {
    let tok = Tokenizer::from_hf_dir(&fixture("tiny-qwen2")).unwrap();
    assert_eq!(tok.vocab_size(), 1024);
    assert_eq!(tok.eos_ids(), &[2]);
    assert_eq!(tok.token_to_id("<|im_start|>"), Some(1));
    assert!(!tok.add_bos());
    assert!(tok.is_special(2) && !tok.is_special(3));
    check_against("tiny-qwen2", &tok, "tiny-qwen2 HF");
}

#[test]
fn tiny_llama_hf_folder_matches_hf_tokenizers() {
    let tok = Tokenizer::from_hf_dir(&fixture("tiny-llama")).unwrap();
    check_against("tiny-llama", &tok, "tiny-llama HF");
}

#[test]
fn tiny_gguf_conversions_match_hf_tokenizers() {
    for (model, file) in [("tiny-qwen2", "tiny-qwen2-f32.gguf"), ("tiny-llama", "tiny-llama-q8_0.gguf")] {
        let tok = load_gguf_tokenizer(&fixture(&format!("gguf/{file}")));
        assert_eq!(tok.eos_ids(), &[2], "{file}");
        check_against(model, &tok, file);
    }
}

/// The SmolLM2 GGUF, or `None` (after saying so) when `GOVBOX_SKIP_REAL_MODELS=1`. A missing file
/// is a failure otherwise: this test is the only check against llama.cpp's tokenizer.
fn smollm2_gguf() -> Option<PathBuf> {
    let path = std::env::var_os("GOVBOX_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("GOVBOX_SKIP_REAL_MODELS").as_deref() == Ok("1") {
        eprintln!("SKIPPED (GOVBOX_SKIP_REAL_MODELS=1): SmolLM2 GGUF not found at {}", path.display());
        return None;
    }
    panic!(
        "SmolLM2 GGUF not found at {}: run `scripts/fetch-models.sh smollm2` (or set GOVBOX_SMOLLM2_GGUF to \
         the file, or GOVBOX_SKIP_REAL_MODELS=1 to skip real-model tests)",
        path.display()
    );
}

#[test]
fn smollm2_gguf_tokenizer_matches_llama_cpp() {
    let Some(path) = smollm2_gguf() else { return };
    let tok = load_gguf_tokenizer(&path);
    assert_eq!(tok.vocab_size(), 49_152);
    assert_eq!(tok.eos_ids(), &[2]);
    assert_eq!(tok.bos_id(), Some(1));
    assert!(!tok.add_bos());
    check_against("smollm2", &tok, "SmolLM2 GGUF");
}

/// Pushes `ids` one at a time; returns the pieces and checks they join to `decode(ids, true)`.
fn stream(tok: &Tokenizer, ids: &[u32]) -> Vec<String> {
    let mut dec = tok.incremental();
    let mut pieces: Vec<String> = ids.iter().map(|&id| dec.push(id).unwrap()).collect();
    pieces.push(dec.finish().unwrap());
    assert_eq!(pieces.concat(), tok.decode(ids, true).unwrap(), "stream of {ids:?}");
    pieces
}

#[test]
fn streaming_decode_never_splits_a_character() {
    let tok = Tokenizer::from_hf_dir(&fixture("tiny-qwen2")).unwrap();
    let texts = [
        "请问办理居住证需要准备哪些材料？",
        "数据不出本机。Data stays local; 审计日志 signed 🔏 ✓",
        "emoji 🔏🧾👩‍💻 at the end 🔏",
    ];
    let mut held_back = 0;
    for text in texts {
        let ids = tok.encode(text).unwrap();
        // The test only means something if some tokens carry part of a character.
        held_back += ids.iter().filter(|&&id| tok.decode(&[id], true).unwrap().contains('\u{FFFD}')).count();
        let pieces = stream(&tok, &ids);
        assert_eq!(pieces.concat(), text);
        for (i, p) in pieces.iter().enumerate() {
            assert!(!p.contains('\u{FFFD}'), "{text:?}: piece {i} {p:?} holds a broken character");
        }
        // Special tokens around the text produce no text.
        let mut with_specials = vec![1];
        with_specials.extend(&ids);
        with_specials.push(2);
        assert_eq!(stream(&tok, &with_specials).concat(), text);
    }
    assert!(held_back > 5, "no token of the test texts is a partial character; the test proves nothing");
}

#[test]
fn streaming_decode_flushes_invalid_bytes() {
    // A lone continuation byte is not a character in progress: after a few tokens it is emitted
    // (as U+FFFD) rather than held forever, and finish() flushes whatever is left.
    let tok = Tokenizer::from_hf_dir(&fixture("tiny-qwen2")).unwrap();
    let lone = (0..tok.vocab_size() as u32)
        .find(|&id| tok.decode(&[id], true).unwrap() == "\u{FFFD}")
        .expect("a byte token that is not valid UTF-8 alone");
    let mut ids = vec![lone];
    ids.extend(tok.encode("ok").unwrap());
    let pieces = stream(&tok, &ids);
    assert!(pieces.concat().ends_with("ok"));
    let trailing = stream(&tok, &[lone, lone]);
    assert_eq!(trailing.last().map(String::as_str), Some("\u{FFFD}\u{FFFD}"));
}
