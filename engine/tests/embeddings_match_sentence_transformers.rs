//! Property: govbox's sentence embeddings of the real all-MiniLM-L6-v2 equal those of
//! sentence-transformers (CPU, float32), token for token and within float rounding, whether a
//! text is embedded alone or in a batch with texts of other lengths.
//!
//! The reference is `tests/fixtures/minilm/expected.json`, computed by sentence-transformers
//! itself. The model is fetched by `scripts/fetch-models.sh minilm`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::PathBuf;
use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_engine::embed::{EmbeddingModel, PoolingMode};

mod common;
use common::test_device;

/// Smallest acceptable cosine similarity to the reference vector.
const MIN_COSINE: f64 = 0.99999;
/// Largest acceptable difference in any component from the reference vector.
const MAX_ABS: f32 = 1e-4;
/// Largest acceptable difference between a text's vector alone and in a batch.
const MAX_BATCH_DRIFT: f32 = 1e-5;

/// The real model folder, or `None` (after saying so) when it is absent and
/// `GOVBOX_SKIP_REAL_MODELS=1`. Absent otherwise is a failure: the property must not pass
/// silently untested.
fn minilm_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("GOVBOX_MINILM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../.cache/models/minilm")));
    if dir.join("model.safetensors").is_file() {
        return Some(dir);
    }
    if std::env::var("GOVBOX_SKIP_REAL_MODELS").as_deref() == Ok("1") {
        println!("SKIPPED: real MiniLM model not found at {} (GOVBOX_SKIP_REAL_MODELS=1)", dir.display());
        return None;
    }
    panic!(
        "real MiniLM model not found at {}: run scripts/fetch-models.sh minilm, set GOVBOX_MINILM_DIR, \
         or set GOVBOX_SKIP_REAL_MODELS=1 to skip",
        dir.display()
    );
}

struct Case {
    text: String,
    input_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn cases() -> Vec<Case> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/minilm/expected.json");
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let cases: Vec<Case> = v["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| Case {
            text: c["text"].as_str().unwrap().to_string(),
            input_ids: c["input_ids"].as_array().unwrap().iter().map(|i| i.as_u64().unwrap() as u32).collect(),
            embedding: c["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect(),
        })
        .collect();
    assert!(cases.len() >= 10, "fixture has {} cases", cases.len());
    cases
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| f64::from(x) * f64::from(y)).sum();
    let na: f64 = a.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|&x| f64::from(x).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "vector lengths differ");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

fn load(dir: &std::path::Path, backend: Arc<dyn Backend>) -> EmbeddingModel {
    EmbeddingModel::load(dir, backend).unwrap()
}

// Every backend computes in f32 (the Ascend backend up-casts F16/BF16 weights at upload), so
// the tolerances above hold on all of them.
test_device!(embeddings_match_sentence_transformers, check);

fn check(backend: Arc<dyn Backend>) {
    let Some(dir) = minilm_dir() else { return };
    let model = load(&dir, backend);
    assert_eq!((model.dim(), model.max_seq_length()), (384, 256));
    assert_eq!(model.pooling(), PoolingMode::Mean);
    assert!(model.normalizes(), "modules.json names a Normalize module");
    let cases = cases();

    let (mut worst_cos, mut worst_abs) = (1.0f64, 0.0f32);
    let mut alone = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        assert_eq!(model.encode(&c.text).unwrap(), c.input_ids, "case {i} ({:?}): token ids", c.text);
        let e = model.embed(&[&c.text]).unwrap();
        assert_eq!(e.token_counts, vec![c.input_ids.len()], "case {i}: token count");
        let v = &e.vectors[0];
        let (cos, abs) = (cosine(v, &c.embedding), max_abs(v, &c.embedding));
        println!("case {i:2}: {:3} tokens  1 - cosine {:.3e}  max abs {abs:.3e}", c.input_ids.len(), 1.0 - cos);
        assert!(cos >= MIN_COSINE, "case {i} ({:?}): cosine {cos} < {MIN_COSINE}", c.text);
        assert!(abs <= MAX_ABS, "case {i} ({:?}): max abs diff {abs} > {MAX_ABS}", c.text);
        worst_cos = worst_cos.min(cos);
        worst_abs = worst_abs.max(abs);
        alone.push(v.clone());
    }
    println!(
        "worst cosine {worst_cos:.12} (1 - cosine {:.3e}), worst max abs {worst_abs:.3e} over {} cases",
        1.0 - worst_cos,
        cases.len()
    );

    for size in [4, 10] {
        let mut drift = 0.0f32;
        for (ci, chunk) in cases.chunks(size).enumerate() {
            let texts: Vec<&str> = chunk.iter().map(|c| c.text.as_str()).collect();
            let e = model.embed(&texts).unwrap();
            assert_eq!(e.vectors.len(), chunk.len());
            for (j, c) in chunk.iter().enumerate() {
                let i = ci * size + j;
                assert_eq!(e.token_counts[j], c.input_ids.len(), "batch of {size}, case {i}: token count");
                let d = max_abs(&e.vectors[j], &alone[i]);
                assert!(d <= MAX_BATCH_DRIFT, "batch of {size}, case {i}: {d} from its unbatched vector");
                let cos = cosine(&e.vectors[j], &c.embedding);
                assert!(cos >= MIN_COSINE, "batch of {size}, case {i}: cosine {cos}");
                drift = drift.max(d);
            }
        }
        println!("batches of {size}: largest difference from unbatched {drift:.3e}");
    }
}

test_device!(an_empty_request_gives_no_vectors, empty);

fn empty(backend: Arc<dyn Backend>) {
    let Some(dir) = minilm_dir() else { return };
    let e = load(&dir, backend).embed(&[]).unwrap();
    assert!(e.vectors.is_empty() && e.token_counts.is_empty());
}
