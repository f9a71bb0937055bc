//! `kv_dtype = f16` and `q8_0`: the KV pool takes the bytes promised (half of `f32`; 34 per 32
//! values), every family's logits stay close to HF's f32 answer, greedy answers are HF's, and a
//! prompt served from the prefix cache gives the same tokens as when it was computed fresh. `f16`
//! on the CPU and the Ascend simulator, including MLA's latent cache (DeepSeek-V3) and
//! sliding-window layers (Gemma 3); `q8_0` on the CPU for the fixture whose head dimension is
//! whole `Q8_0` blocks of 32 (tiny-qwen3).
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
/// About 1.5x the largest error seen with `q8_0` (0.053, tiny-qwen3; llama.cpp's Q8_0 *weights* move
/// tiny-llama by 0.08-0.12, `decoder_matches_hf`).
const Q8_TOL: f32 = 0.08;

fn load(path: &std::path::Path, backend: Arc<dyn Backend>, kv_dtype: KvDType) -> Engine {
    Engine::load(path, backend, &EngineOptions { kv_tokens: 4096, kv_dtype }).unwrap()
}

fn greedy(engine: &Engine, prompt: &[u32], n: usize) -> String {
    let req = GenerateRequest { ignore_eos: true, ..GenerateRequest::new(Prompt::Tokens(prompt.to_vec()), n) };
    common::runs::run(engine, &req).0
}

fn check(backend: Arc<dyn Backend>, name: &str) {
    check_dtype(backend, name, KvDType::F16, F16_TOL);
}

fn check_dtype(backend: Arc<dyn Backend>, name: &str, dtype: KvDType, tol: f32) {
    let path = fixture(name);
    let pool = load(&path, backend.clone(), dtype);
    let f32 = load(&path, backend, KvDType::F32);
    // Half the memory for the same tokens (f16), 34 bytes per 128 (q8_0).
    let (sp, s32) = (pool.kv_spec().unwrap(), f32.kv_spec().unwrap());
    assert_eq!((sp.dtype, s32.dtype), (dtype, KvDType::F32));
    let (num, den) = if dtype == KvDType::F16 { (1, 2) } else { (17, 64) };
    assert_eq!(sp.bytes().unwrap() * den, s32.bytes().unwrap() * num, "{name}: a {dtype} pool has the wrong size");
    let exp = json(&format!("{name}/expected.json"));
    let refs = load_tensors(&format!("{name}/expected_logits.safetensors"));
    let mut worst = 0f32;
    for (i, case) in exp["cases"].as_array().unwrap().iter().enumerate() {
        let prompt = ids(&case["input_ids"]);
        let want = &refs[&format!("case{i}.logits")].1;
        for prefill in [false, true] {
            let err = max_abs(&pool.logits(&prompt, prefill).unwrap(), want);
            assert!(err <= tol, "{name} case {i} prefill={prefill}: {dtype} KV max abs error {err}");
            worst = worst.max(err);
        }
        // Greedy answers are HF's (f16 only: q8_0's error is large enough to flip these random
        // fixtures' near-ties, as llama.cpp's q8_0 cache would), computed fresh and again from
        // the prefix cache.
        let hf = ids(&case["greedy_new_ids"]);
        let reused = pool.kv_stats().unwrap().tokens_reused;
        let fresh = greedy(&pool, &prompt, hf.len());
        let again = greedy(&pool, &prompt, hf.len());
        assert_eq!(fresh, again, "{name} case {i}: the answer from the prefix cache differs");
        // A model with sliding-window layers keeps only the window of those layers, so it has no
        // prefix cache to reuse.
        let windowed = pool.kv_stats().unwrap().window_blocks_total > 0;
        if prompt.len() >= 2 * govbox_engine::kv::BLOCK_SIZE && !windowed {
            assert!(pool.kv_stats().unwrap().tokens_reused > reused, "{name} case {i}: nothing reused");
        }
        if dtype != KvDType::F16 {
            continue;
        }
        assert_eq!(fresh, pool.tokenizer().decode(&hf, true).unwrap(), "{name} case {i}: {dtype} KV greedy answer");
        // Token by token through the logits path: every greedy step picks HF's id.
        let mut all = prompt.clone();
        all.extend_from_slice(&hf[..hf.len() - 1]);
        let vocab = pool.decoder_model().unwrap().config().vocab_size;
        let am = argmax_rows(&pool.logits(&all, true).unwrap(), vocab);
        assert_eq!(&am[prompt.len() - 1..], &hf[..], "{name} case {i}: {dtype} KV greedy ids");
    }
    eprintln!("{name}: {dtype} KV worst max abs error against HF {worst:.5}");
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

/// `q8_0` on the CPU (the fixture with head dimension 32; the others' 8 and 16 are refused at
/// load, as llama.cpp refuses them).
#[test]
fn tiny_qwen3_q8_0_cpu() {
    check_dtype(common::devices::cpu(), "tiny-qwen3", KvDType::Q8_0, Q8_TOL);
}

/// A head dimension that is not whole `Q8_0` blocks is refused when the model loads, naming it.
#[test]
fn q8_0_refuses_a_head_dimension_of_16() {
    let opts = EngineOptions { kv_tokens: 64, kv_dtype: KvDType::Q8_0 };
    let Err(e) = Engine::load(&fixture("tiny-llama"), common::devices::cpu(), &opts) else {
        panic!("tiny-llama (head_dim 16) loaded with a q8_0 cache");
    };
    assert!(e.to_string().contains("head_dim 16"), "{e}");
}
