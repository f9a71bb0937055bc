//! A Gemma 3 multimodal checkpoint (`Gemma3ForConditionalGeneration`: the text model under
//! `language_model.model.` or `model.language_model.`, its settings in `text_config`, a vision
//! tower beside it) runs its language model exactly as the text-only checkpoint does; the vision
//! tower's tensors are left alone.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

/// `tiny-gemma3` re-saved the way a multimodal checkpoint is laid out, with `prefix` in front of
/// the text model's tensor names and a vision tensor added.
fn multimodal_copy(prefix: &str) -> std::path::PathBuf {
    let src = fixture("tiny-gemma3");
    let tag = prefix.replace('.', "-");
    let dir = std::env::temp_dir().join(format!("govbox-gemma3-mm-{tag}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut text: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(src.join("config.json")).unwrap()).unwrap();
    let eos = text["eos_token_id"].clone();
    text.as_object_mut().unwrap().remove("architectures");
    let config = serde_json::json!({
        "architectures": ["Gemma3ForConditionalGeneration"],
        "model_type": "gemma3",
        "eos_token_id": eos,
        "text_config": text,
        "vision_config": { "model_type": "siglip_vision_model", "hidden_size": 8 },
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let bytes = std::fs::read(src.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let vision = vec![0u8; 8 * 4];
    let mut views: Vec<(String, safetensors::tensor::TensorView<'_>)> =
        st.names().into_iter().map(|n| (n.replacen("model.", prefix, 1), st.tensor(n).unwrap())).collect();
    let patch = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![8], &vision).unwrap();
    views.push(("vision_tower.vision_model.embeddings.patch_embedding.bias".into(), patch));
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir
}

#[test]
fn gemma3_multimodal_checkpoints_run_their_language_model_like_the_text_checkpoint() {
    let exp = json("tiny-gemma3/expected.json");
    let refs = load_tensors("tiny-gemma3/expected_logits.safetensors");
    for prefix in ["language_model.model.", "model.language_model."] {
        let dir = multimodal_copy(prefix);
        // An f32 KV pool: the default f16 one moves logits by up to ~3e-3, past the 1e-4 here.
        let engine = load_f32(&dir);
        // The 268-token case crosses the sliding window.
        for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
            let got = engine.logits(&ids(&case["input_ids"]), true).unwrap();
            let err = max_abs(&got, &refs[&format!("case{i}.logits")].1);
            assert!(err <= 1e-4, "{prefix} case {i}: max abs error {err}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
