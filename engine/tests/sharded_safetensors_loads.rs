//! A model split into shards with a `model.safetensors.index.json` loads and computes exactly as
//! the single-file model; an index naming a tensor its shard lacks is refused by name.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use std::collections::BTreeMap;

use govbox_engine::{Engine, EngineOptions};

fn split_into_shards(tag: &str, drop_from_shard: Option<&str>) -> std::path::PathBuf {
    let src = fixture("tiny-llama");
    let dir = std::env::temp_dir().join(format!("govbox-shards-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut weight_map = BTreeMap::new();
    for (i, part) in names.chunks(names.len().div_ceil(2)).enumerate() {
        let file = format!("model-{:05}-of-00002.safetensors", i + 1);
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = part
            .iter()
            .filter(|n| Some(n.as_str()) != drop_from_shard)
            .map(|n| (n.clone(), st.tensor(n).unwrap()))
            .collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for n in part {
            weight_map.insert(n.clone(), file.clone());
        }
    }
    let index = serde_json::json!({ "metadata": {}, "weight_map": weight_map });
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    dir
}

#[test]
fn sharded_model_matches_hf_logits() {
    let dir = split_into_shards("ok", None);
    assert!(!dir.join("model.safetensors").exists());
    // An f32 KV pool: the default f16 one moves logits by up to ~3e-3, past the 1e-4 here.
    let engine = load_f32(&dir);
    let exp = json("tiny-llama/expected.json");
    let refs = load_tensors("tiny-llama/expected_logits.safetensors");
    let case = &exp["cases"][0];
    let got = engine.logits(&ids(&case["input_ids"]), true).unwrap();
    let err = max_abs(&got, &refs["case0.logits"].1);
    assert!(err <= 1e-4, "max abs error {err}");
}

#[test]
fn index_naming_a_missing_tensor_is_refused() {
    let dir = split_into_shards("missing", Some("model.layers.0.mlp.down_proj.weight"));
    let e = Engine::load(&dir, backend(), &EngineOptions::default()).unwrap_err().to_string();
    assert!(e.contains("model.layers.0.mlp.down_proj.weight") && e.contains("model-0000"), "{e}");
}
