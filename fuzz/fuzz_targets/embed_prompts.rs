//! `config_sentence_transformers.json`'s prompts (`Prompts::from_json`, read when an embedding
//! model loads) on arbitrary JSON: never a panic; what it accepts gives a prompt for every name it
//! lists and for the default.
//! Seed with the fixtures' `config_sentence_transformers.json` (`fuzz/seeds/embed_prompts`).
#![no_main]

use govbox_engine::embed::Prompts;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok(p) = Prompts::from_json(&v, "config_sentence_transformers.json") else { return };
    let _ = p.get(None).expect("the default prompt, when named, is one of the prompts");
    if let Some(names) = v.get("prompts").and_then(|m| m.as_object()) {
        for name in names.keys() {
            assert!(p.get(Some(name)).expect("a listed prompt").is_some());
        }
    }
});
