//! `kv_dtype = f16`: the KV pool takes half the bytes of an `f32` one, every family's logits stay
//! close to HF's f32 answer, greedy answers are HF's, and a prompt served from the prefix cache
//! gives the same tokens as when it was computed fresh: on the CPU and the Ascend simulator,
//! including MLA's latent cache (DeepSeek-V3) and sliding-window layers (Gemma 3).
//!
//! The bar for the logits is F16_TOL, not the 1e-4 that `decoder_matches_hf` holds the exact
//! `f32` pool to: rounding every key and value to f16 (relative step 2^-11) moves these fixtures'
//! logits by 1.1e-3 (Qwen2) to 2.8e-3 (Gemma 3). A misread pool (a wrong slot, a wrong half of a
//! value) moves them by whole units.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use std::sync::Arc;

use govbox_drivers::{Backend, KvDType};
use govbox_engine::{Engine, EngineOptions, GenerateRequest, Prompt};

/// About 1.5x the largest error seen (2.75e-3, tiny-gemma3; the bits are the same every run).
const F16_TOL: f32 = 4e-3;

fn load(path: &std::path::Path, backend: Arc<dyn Backend>, kv_dtype: KvDType) -> Engine {
    Engine::load(path, backend, &EngineOptions { kv_tokens: 4096, kv_dtype }).unwrap()
}

fn greedy(engine: &Engine, prompt: &[u32], n: usize) -> String {
    let req = GenerateRequest { ignore_eos: true, ..GenerateRequest::new(Prompt::Tokens(prompt.to_vec()), n) };
    common::runs::run(engine, &req).0
}

fn check(backend: Arc<dyn Backend>, name: &str) {
    let path = fixture(name);
    let f16 = load(&path, backend.clone(), KvDType::F16);
    let f32 = load(&path, backend, KvDType::F32);
    // Half the memory for the same tokens.
    let (s16, s32) = (f16.kv_spec().unwrap(), f32.kv_spec().unwrap());
    assert_eq!((s16.dtype, s32.dtype), (KvDType::F16, KvDType::F32));
    assert_eq!(s16.bytes().unwrap() * 2, s32.bytes().unwrap(), "{name}: an f16 pool is not half an f32 one");
    let exp = json(&format!("{name}/expected.json"));
    let refs = load_tensors(&format!("{name}/expected_logits.safetensors"));
    let mut worst = 0f32;
    for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["input_ids"]);
        let want = &refs[&format!("case{i}.logits")].1;
        for prefill in [false, true] {
            let err = max_abs(&f16.logits(&prompt, prefill).unwrap(), want);
            assert!(err <= F16_TOL, "{name} case {i} prefill={prefill}: f16 KV max abs error {err}");
            worst = worst.max(err);
        }
        // Greedy answers are HF's, computed fresh and again from the prefix cache.
        let hf = ids(&case["greedy_new_ids"]);
        let reused = f16.kv_stats().unwrap().tokens_reused;
        let fresh = greedy(&f16, &prompt, hf.len());
        let again = greedy(&f16, &prompt, hf.len());
        assert_eq!(fresh, f16.tokenizer().decode(&hf, true).unwrap(), "{name} case {i}: f16 KV greedy answer");
        assert_eq!(fresh, again, "{name} case {i}: the answer from the prefix cache differs");
        // Token by token through the logits path: every greedy step picks HF's id.
        let mut all = prompt.clone();
        all.extend_from_slice(&hf[..hf.len() - 1]);
        let vocab = f16.decoder_model().unwrap().config().vocab_size;
        let am = argmax_rows(&f16.logits(&all, true).unwrap(), vocab);
        assert_eq!(&am[prompt.len() - 1..], &hf[..], "{name} case {i}: f16 KV greedy ids");
        if prompt.len() >= 2 * govbox_engine::kv::BLOCK_SIZE {
            assert!(f16.kv_stats().unwrap().tokens_reused > reused, "{name} case {i}: nothing reused");
        }
    }
    eprintln!("{name}: f16 KV worst max abs error against HF {worst:.5}");
}

test_device!(tiny_llama, |b| check(b, "tiny-llama"));
test_device!(tiny_qwen2, |b| check(b, "tiny-qwen2"));
test_device!(tiny_qwen3, |b| check(b, "tiny-qwen3"));
test_device!(tiny_glm4, |b| check(b, "tiny-glm4"));
test_device!(tiny_qwen3_moe, |b| check(b, "tiny-qwen3-moe"));
// Sliding window of 8 on two of three layers; the 268-token case crosses it many times.
test_device!(tiny_gemma3_sliding_window, |b| check(b, "tiny-gemma3"));
// MLA: the pool holds each token's latent and RoPE key, read as one f16 head.
test_device!(tiny_deepseek_v3_mla, |b| check(b, "tiny-deepseek-v3"));
