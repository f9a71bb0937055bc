//! Decoder logits and greedy generation against HF transformers (float32), for the tiny Llama and
//! Qwen2 fixtures in safetensors and GGUF form, and llama.cpp's own Q8_0 error as the bar for our
//! Q8_0 path.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_engine::{GenerateRequest, Prompt};

/// Every backend computes these in f32 (the Ascend backend up-casts any F16/BF16 weights at
/// upload), so one tolerance holds for all.
const TOL: f32 = 1e-4;

fn check_exact(backend: Arc<dyn Backend>, model_path: &std::path::Path, name: &str) {
    // An f32 KV pool: 1e-4 of f32 references is what an exact cache gives (f16's ~3e-3 is
    // `kv_dtype_numerics`' bound).
    let engine = load_f32_on(model_path, backend);
    let exp = json(&format!("{name}/expected.json"));
    let refs = load_tensors(&format!("{name}/expected_logits.safetensors"));
    let vocab = engine.decoder_model().unwrap().config().vocab_size;
    for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
        let ids = ids(&case["input_ids"]);
        let (shape, want) = &refs[&format!("case{i}.logits")];
        assert_eq!(shape, &vec![ids.len(), vocab]);
        for prefill in [false, true] {
            let got = engine.logits(&ids, prefill).unwrap();
            let err = max_abs(&got, want);
            assert!(err <= TOL, "{} case {i} prefill={prefill}: max abs error {err}", model_path.display());
        }
    }
}

test_device!(tiny_qwen2_safetensors_logits_match_hf, |b| check_exact(b, &fixture("tiny-qwen2"), "tiny-qwen2"));

test_device!(tiny_llama_safetensors_logits_match_hf, |b| check_exact(b, &fixture("tiny-llama"), "tiny-llama"));

test_device!(tiny_qwen2_f32_gguf_logits_match_hf, |b| check_exact(
    b,
    &fixture("gguf/tiny-qwen2-f32.gguf"),
    "tiny-qwen2"
));

// llama.cpp's converter permutes llama's Q/K rows; this passing shows the RoPE layout is right.
test_device!(tiny_llama_f32_gguf_logits_match_hf, |b| check_exact(
    b,
    &fixture("gguf/tiny-llama-f32.gguf"),
    "tiny-llama"
));

fn check_greedy(backend: Arc<dyn Backend>, name: &str) {
    let engine = load_on(&fixture(name), backend);
    let exp = json(&format!("{name}/expected.json"));
    for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
        let want = ids(&case["greedy_new_ids"]);
        let prompt = Prompt::Tokens(ids(&case["input_ids"]));
        let req = GenerateRequest { ignore_eos: true, ..GenerateRequest::new(prompt, want.len()) };
        let mut text = String::new();
        let usage = engine
            .generate(&req, &mut |e| {
                if let govbox_engine::Event::Text(t) = e {
                    text.push_str(&t);
                }
                true
            })
            .unwrap();
        assert_eq!(usage.completion_tokens, want.len());
        let want_text = engine.tokenizer().decode(&want, true).unwrap();
        assert_eq!(text, want_text, "{name} case {i}: greedy text");
        // Token-level check through the logits path: every greedy step picks the same id.
        let mut all = ids(&case["input_ids"]);
        all.extend_from_slice(&want[..want.len() - 1]);
        let vocab = engine.decoder_model().unwrap().config().vocab_size;
        let am = argmax_rows(&engine.logits(&all, true).unwrap(), vocab);
        let n = ids(&case["input_ids"]).len();
        assert_eq!(&am[n - 1..], &want[..], "{name} case {i}: greedy ids");
    }
}

test_device!(tiny_qwen2_greedy_generation_matches_hf, |b| check_greedy(b, "tiny-qwen2"));

test_device!(tiny_llama_greedy_generation_matches_hf, |b| check_greedy(b, "tiny-llama"));

test_device!(tiny_qwen2_q8_0_gguf_is_at_least_as_accurate_as_llama_cpp, |b| q8_0_vs_llama_cpp(b, "tiny-qwen2"));

test_device!(tiny_llama_q8_0_gguf_is_at_least_as_accurate_as_llama_cpp, |b| q8_0_vs_llama_cpp(b, "tiny-llama"));

// The newer families (issue 23): fixtures from shared/tools/make_arch_fixtures.py (HF 5.25, f32).
test_device!(tiny_qwen3_safetensors_logits_match_hf, |b| check_exact(b, &fixture("tiny-qwen3"), "tiny-qwen3"));

test_device!(tiny_qwen3_greedy_generation_matches_hf, |b| check_greedy(b, "tiny-qwen3"));

test_device!(tiny_glm4_safetensors_logits_match_hf, |b| check_exact(b, &fixture("tiny-glm4"), "tiny-glm4"));

test_device!(tiny_glm4_greedy_generation_matches_hf, |b| check_greedy(b, "tiny-glm4"));

// Sliding window of 8 on two of three layers; the 268-token case crosses it many times.
test_device!(tiny_gemma3_safetensors_logits_match_hf, |b| check_exact(b, &fixture("tiny-gemma3"), "tiny-gemma3"));

test_device!(tiny_gemma3_greedy_generation_matches_hf, |b| check_greedy(b, "tiny-gemma3"));

test_device!(tiny_qwen3_moe_safetensors_logits_match_hf, |b| check_exact(
    b,
    &fixture("tiny-qwen3-moe"),
    "tiny-qwen3-moe"
));

test_device!(tiny_qwen3_moe_greedy_generation_matches_hf, |b| check_greedy(b, "tiny-qwen3-moe"));

// MLA (q/kv LoRA, interleaved RoPE split) with the latent in the KV cache, a dense first layer,
// then MoE with a shared expert, grouped top-k and sigmoid scores with a correction bias.
test_device!(tiny_deepseek_v3_safetensors_logits_match_hf, |b| check_exact(
    b,
    &fixture("tiny-deepseek-v3"),
    "tiny-deepseek-v3"
));

test_device!(tiny_deepseek_v3_greedy_generation_matches_hf, |b| check_greedy(b, "tiny-deepseek-v3"));

// tiny-deepseek-v3 with a non-zero e_score_correction_bias (the base fixture's is all zeros):
// 743 of its 1060 MoE routes (layer, position) differ from zero bias (tiny-deepseek-v3-bias/make.py),
// so a model that ignored the bias, or added it to the weights as well as the choice, is far off.
test_device!(tiny_deepseek_v3_routing_bias_logits_match_hf, |b| check_exact(
    b,
    &fixture("tiny-deepseek-v3-bias"),
    "tiny-deepseek-v3-bias"
));

test_device!(tiny_deepseek_v3_routing_bias_greedy_generation_matches_hf, |b| check_greedy(b, "tiny-deepseek-v3-bias"));

/// tiny-deepseek-v3's weights with YaRN RoPE scaling (as the published V3/R1 configs have):
/// interpolated and extrapolated frequencies with a ramp, the cos/sin factor and MLA's mscale².
fn deepseek_yarn_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("govbox-deepseek-yarn-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let base = fixture("tiny-deepseek-v3");
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        std::fs::copy(base.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(fixture("tiny-deepseek-v3-yarn/config.json"), dir.join("config.json")).unwrap();
    dir
}

test_device!(tiny_deepseek_v3_yarn_logits_match_hf, |b| check_exact(b, &deepseek_yarn_dir(), "tiny-deepseek-v3-yarn"));

// norm_topk_prob off, 3 of 8 experts, decoder_sparse_step 2 and a dense layer in mlp_only_layers.
test_device!(tiny_qwen3_moe_mixed_layers_logits_match_hf, |b| check_exact(
    b,
    &fixture("tiny-qwen3-moe-mixed"),
    "tiny-qwen3-moe-mixed"
));

test_device!(tiny_qwen3_moe_mixed_layers_greedy_generation_matches_hf, |b| check_greedy(b, "tiny-qwen3-moe-mixed"));
