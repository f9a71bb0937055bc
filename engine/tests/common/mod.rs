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

/// `tests/fixtures/gguf/{name}-q8_0.gguf` against llama.cpp on the same file
/// (`{name}-q8_0.llamacpp_logits.safetensors`), by the per-case rule of
/// [`check_q8_against_llama_cpp`].
pub fn q8_0_vs_llama_cpp(backend: Arc<dyn Backend>, name: &str) {
    let engine = load_on(&fixture(&format!("gguf/{name}-q8_0.gguf")), backend);
    let logits = format!("gguf/{name}-q8_0.llamacpp_logits.safetensors");
    check_q8_against_llama_cpp(&engine, name, &logits, Q8Rule::PerCase);
}

/// How [`check_q8_against_llama_cpp`] compares errors with llama.cpp's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Q8Rule {
    /// Per case: our largest error at most 1.25x llama.cpp's (dense models).
    PerCase,
    /// Over all positions of all cases: our mean per-position error and our largest error each at
    /// most 1.25x llama.cpp's (MoE models, where rounding flips near-tied routing choices at a
    /// few positions, not the same ones in two implementations).
    Aggregate,
}

/// llama.cpp's distance from HF's f32 logits on one case (all positions).
#[derive(Clone, Copy, Debug)]
pub struct CaseDistance {
    /// The largest |llama.cpp - HF| over the case.
    pub max_abs: f32,
    /// The mean over positions of each position's largest |llama.cpp - HF|.
    pub row_max_abs_mean: f64,
    /// Positions whose argmax is HF's.
    pub argmax_agree: usize,
    pub positions: usize,
}

impl CaseDistance {
    /// The distance of `logits` ([positions, vocab]) from `want`.
    pub fn of(logits: &[f32], want: &[f32], vocab: usize) -> Self {
        let rows: Vec<f32> =
            logits.chunks_exact(vocab).zip(want.chunks_exact(vocab)).map(|(a, b)| max_abs(a, b)).collect();
        let a_want = argmax_rows(want, vocab);
        let argmax_agree = argmax_rows(logits, vocab).iter().zip(&a_want).filter(|(a, b)| a == b).count();
        Self {
            max_abs: rows.iter().fold(0f32, |m, &x| m.max(x)),
            row_max_abs_mean: rows.iter().map(|&x| f64::from(x)).sum::<f64>() / rows.len() as f64,
            argmax_agree,
            positions: rows.len(),
        }
    }
}

/// llama.cpp's distances from HF for every case of the GGUF fixture `file` (e.g.
/// `tiny-glm4-q4_k_m.gguf`), from `tests/fixtures/gguf/llamacpp_distances.json`
/// (`llamacpp_distances.py`), and the HF fixture they were measured against.
pub fn llama_cpp_distances(file: &str) -> (String, Vec<CaseDistance>) {
    let doc = json("gguf/llamacpp_distances.json");
    let entry = &doc["files"][file];
    let fixture = entry["fixture"].as_str().unwrap_or_else(|| panic!("llamacpp_distances.json has no {file}"));
    let num = |c: &serde_json::Value, k: &str| c[k].as_f64().unwrap_or_else(|| panic!("{file}: a case has no {k}"));
    let cases = entry["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| CaseDistance {
            max_abs: num(c, "max_abs") as f32,
            row_max_abs_mean: num(c, "row_max_abs_mean"),
            argmax_agree: num(c, "argmax_agree") as usize,
            positions: num(c, "positions") as usize,
        })
        .collect();
    (fixture.to_string(), cases)
}

/// The Q8_0 rule against llama.cpp on the same file: for fixture `name`, our error against HF's
/// f32 logits is at most 1.25x llama.cpp's (`llama_cpp_logits`, every position) as `rule` says,
/// and our argmax agreement with HF, summed over the cases, is at least llama.cpp's minus 2 % of
/// the positions. The KV-cache path must also agree with the batch path.
pub fn check_q8_against_llama_cpp(engine: &Engine, name: &str, llama_cpp_logits: &str, rule: Q8Rule) {
    let exp = json(&format!("{name}/expected.json"));
    let exact = load_tensors(&format!("{name}/expected_logits.safetensors"));
    let lcpp = load_tensors(llama_cpp_logits);
    let vocab = engine.decoder_model().unwrap().config().vocab_size;
    let theirs: Vec<CaseDistance> = (0..exp["cases"].as_array().unwrap().len())
        .map(|i| CaseDistance::of(&lcpp[&format!("case{i}.logits")].1, &exact[&format!("case{i}.logits")].1, vocab))
        .collect();
    check_against_llama_cpp(engine, &format!("{name} q8_0"), name, &theirs, rule);
}

/// The rule against llama.cpp's distance from HF on the same file (`theirs`, one per case of
/// fixture `name`): our error against HF's f32 logits is at most 1.25x llama.cpp's as `rule`
/// says, and our argmax agreement with HF, summed over the cases, is at least llama.cpp's minus
/// 2 % of the positions. The KV-cache path must also agree with the batch path. `what` names the
/// file in messages.
pub fn check_against_llama_cpp(engine: &Engine, what: &str, name: &str, theirs: &[CaseDistance], rule: Q8Rule) {
    let exp = json(&format!("{name}/expected.json"));
    let exact = load_tensors(&format!("{name}/expected_logits.safetensors"));
    let vocab = engine.decoder_model().unwrap().config().vocab_size;
    let cases = exp["cases"].as_array().unwrap();
    assert_eq!(cases.len(), theirs.len(), "{what}: llama.cpp's distances are for another set of cases");
    let (mut ours_agree, mut theirs_agree, mut positions) = (0usize, 0usize, 0usize);
    // Over all positions: the sum and the largest of each position's max abs error.
    let (mut ours_sum, mut theirs_sum, mut ours_max, mut theirs_max) = (0f64, 0f64, 0f32, 0f32);
    for (i, (case, t)) in cases.iter().zip(theirs).enumerate() {
        let ids = ids(&case["input_ids"]);
        assert_eq!(t.positions, ids.len(), "{what} case {i}: llama.cpp's distance is for another case");
        let want = &exact[&format!("case{i}.logits")].1;
        let ours = engine.logits(&ids, true).unwrap();
        let o = CaseDistance::of(&ours, want, vocab);
        let (e_ours, e_theirs) = (o.max_abs, t.max_abs);
        eprintln!("{what} case {i}: max abs error ours {e_ours:.5}, llama.cpp {e_theirs:.5}");
        if rule == Q8Rule::PerCase {
            assert!(e_ours <= 1.25 * e_theirs, "{what} case {i}: our error {e_ours} > 1.25 x llama.cpp's {e_theirs}");
        }
        ours_sum += o.row_max_abs_mean * o.positions as f64;
        theirs_sum += t.row_max_abs_mean * t.positions as f64;
        (ours_max, theirs_max) = (ours_max.max(e_ours), theirs_max.max(e_theirs));
        ours_agree += o.argmax_agree;
        theirs_agree += t.argmax_agree;
        positions += ids.len();
        // The KV-cache path agrees with the batch path.
        let inc = engine.logits(&ids, false).unwrap();
        // The prefill pass goes through the panel kernel (x86 with AVX-512 VNNI), whose float
        // sums run in another order than the decode kernel's: a last-bit difference that lands
        // an activation on the other side of an 8-bit rounding step moves some logits by up to
        // about 1 % of the largest (0.025 of 3.5 seen). A KV-cache fault moves them far more.
        // Under the aggregate rule (MoE) the same rounding differences can flip a near-tied
        // routing choice, which moves that position's logits (and, through its KV, the later
        // ones') by more: there, up to 2 % of the positions (at least one) may differ, while a
        // KV-cache fault would move most of them.
        let scale = ours.iter().fold(0f32, |m, x| m.max(x.abs()));
        let tol = 1e-4f32.max(0.02 * scale);
        let rows: Vec<f32> =
            inc.chunks_exact(vocab).zip(ours.chunks_exact(vocab)).map(|(a, b)| max_abs(a, b)).collect();
        let apart = rows.iter().filter(|&&d| d > tol).count();
        let d = rows.iter().fold(0f32, |m, &x| m.max(x));
        let allowed = if rule == Q8Rule::Aggregate { (ids.len() / 50).max(1) } else { 0 };
        assert!(
            apart <= allowed,
            "{what} case {i}: incremental vs prefill differ by up to {d} (scale {scale}) at {apart} of {} positions",
            ids.len()
        );
        if apart > 0 {
            eprintln!(
                "{what} case {i}: incremental vs prefill apart at {apart} of {} positions (up to {d})",
                ids.len()
            );
        }
    }
    let (ours_mean, theirs_mean) = (ours_sum / positions as f64, theirs_sum / positions as f64);
    eprintln!("{what}: argmax agreement ours {ours_agree}/{positions}, llama.cpp {theirs_agree}/{positions}");
    eprintln!(
        "{what}: mean error ours {ours_mean:.5}, llama.cpp {theirs_mean:.5}; largest {ours_max:.5}, {theirs_max:.5}"
    );
    if rule == Q8Rule::Aggregate {
        assert!(
            ours_mean <= 1.25 * theirs_mean,
            "{what}: our mean error {ours_mean} > 1.25 x llama.cpp's {theirs_mean}"
        );
        assert!(
            ours_max <= 1.25 * theirs_max,
            "{what}: our largest error {ours_max} > 1.25 x llama.cpp's {theirs_max}"
        );
    }
    assert!(
        ours_agree as f64 >= theirs_agree as f64 - 0.02 * positions as f64,
        "{what}: argmax agreement with HF ours {ours_agree}/{positions}, llama.cpp {theirs_agree}/{positions}"
    );
}
