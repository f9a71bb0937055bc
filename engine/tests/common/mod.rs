//! Shared helpers for the engine's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_drivers::cpu::CpuBackend;
use govbox_engine::{Engine, EngineOptions};

pub mod devices;
pub mod runs;
#[allow(unused_imports)]
pub(crate) use devices::test_device;

pub fn repo() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

pub fn fixture(rel: &str) -> PathBuf {
    repo().join("tests/fixtures").join(rel)
}

pub fn backend() -> Arc<dyn Backend> {
    Arc::new(CpuBackend::new(2).unwrap())
}

pub fn load(path: &std::path::Path) -> Engine {
    load_on(path, backend())
}

/// The KV pool type the tests of behaviour load with: the engine's default (`f16`), or
/// `GOVBOX_TEST_KV_DTYPE` (`f32`, `f16`, `q8_0`) to run the same tests with another type.
/// Tests that hold logits to f32 references at 1e-4 load with [`load_f32_on`] instead.
pub fn kv_dtype() -> govbox_drivers::KvDType {
    match std::env::var("GOVBOX_TEST_KV_DTYPE") {
        Ok(name) if !name.is_empty() => name.parse().unwrap_or_else(|e| panic!("GOVBOX_TEST_KV_DTYPE: {e}")),
        _ => EngineOptions::default().kv_dtype,
    }
}

/// Loads a model onto `backend`.
pub fn load_on(path: &std::path::Path, backend: Arc<dyn Backend>) -> Engine {
    let opts = EngineOptions { kv_dtype: kv_dtype(), ..EngineOptions::default() };
    Engine::load(path, backend, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Loads a model onto `backend` with an `f32` KV pool, whatever the default or
/// `GOVBOX_TEST_KV_DTYPE` says: for the comparisons against f32 references at 1e-4, which the
/// default `f16` pool misses by up to ~3e-3 (`kv_dtype_numerics.rs` holds f16 and q8_0 to their
/// own bounds).
pub fn load_f32_on(path: &std::path::Path, backend: Arc<dyn Backend>) -> Engine {
    let opts = EngineOptions { kv_dtype: govbox_drivers::KvDType::F32, ..EngineOptions::default() };
    Engine::load(path, backend, &opts).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// [`load_f32_on`] on the CPU backend.
pub fn load_f32(path: &std::path::Path) -> Engine {
    load_f32_on(path, backend())
}

pub fn json(rel: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(rel)).unwrap()).unwrap()
}

pub fn ids(v: &serde_json::Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// Every tensor of a safetensors file as (shape, f32 values).
pub fn load_tensors(rel: &str) -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixture(rel)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let v = view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            (name, (view.shape().to_vec(), v))
        })
        .collect()
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn argmax_rows(v: &[f32], vocab: usize) -> Vec<u32> {
    v.chunks_exact(vocab).map(govbox_engine::sampler::argmax).collect()
}

/// The real SmolLM2 GGUF, fetched by scripts/fetch-models.sh. `None` only when the caller
/// explicitly opted out with GOVBOX_SKIP_REAL_MODELS=1; otherwise a missing file fails the test.
pub fn smollm2() -> Option<PathBuf> {
    let p = std::env::var_os("GOVBOX_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join(".cache/models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.exists() {
        return Some(p);
    }
    if std::env::var("GOVBOX_SKIP_REAL_MODELS").as_deref() == Ok("1") {
        eprintln!("SKIPPED: {} is absent and GOVBOX_SKIP_REAL_MODELS=1", p.display());
        return None;
    }
    panic!("{} is missing: run scripts/fetch-models.sh smollm2 (or set GOVBOX_SKIP_REAL_MODELS=1)", p.display());
}

/// A KV pool of `n_blocks` blocks shaped for `model`, on its backend, for driving
/// `DecoderModel::forward` directly.
pub fn kv_cache_for(
    model: &govbox_engine::models::decoder::DecoderModel,
    n_blocks: usize,
) -> Box<dyn govbox_drivers::KvCache> {
    let c = model.config();
    let spec = govbox_drivers::KvSpec {
        n_layers: c.n_layers,
        n_kv_heads: c.n_kv_heads,
        head_dim: c.head_dim,
        block_size: govbox_engine::kv::BLOCK_SIZE,
        n_blocks,
        dtype: kv_dtype(),
    };
    model.backend().new_kv_cache(spec).unwrap()
}
