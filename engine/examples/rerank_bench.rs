//! Times cross-encoder reranking on the CPU backend, for `bench/rerank-bench.sh`.
//!
//! usage: `rerank_bench --model DIR --docs FILE.json [--threads 2] [--batch 32] [--rounds 2]
//! [--single 16]`
//!
//! `FILE.json` is `{"queries": [..], "documents": [..]}`. Prints one JSON object: throughput
//! (query–document pairs per second, each call one query against `batch` documents), the mean
//! time of such a call, single-pair latency (one query, one document), and the scores of the
//! first pairs so that the caller can check both sides computed the same thing.

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use govbox_drivers::Backend;
use govbox_drivers::cpu::CpuBackend;
use govbox_engine::rerank::{RerankModel, sigmoid};

struct Args {
    model: PathBuf,
    docs: PathBuf,
    threads: usize,
    batch: usize,
    rounds: usize,
    single: usize,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args { model: PathBuf::new(), docs: PathBuf::new(), threads: 2, batch: 32, rounds: 2, single: 16 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => a.model = value.into(),
            "--docs" => a.docs = value.into(),
            "--threads" => a.threads = value.parse()?,
            "--batch" => a.batch = value.parse()?,
            "--rounds" => a.rounds = value.parse()?,
            "--single" => a.single = value.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if a.model.as_os_str().is_empty() || a.docs.as_os_str().is_empty() {
        return Err("usage: rerank_bench --model DIR --docs FILE.json [--threads N] [--batch N] [--rounds N] \
                    [--single N]"
            .into());
    }
    a.batch = a.batch.max(1);
    Ok(a)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<(), Box<dyn Error>> {
    let a = parse_args()?;
    let set: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&a.docs)?)?;
    let strings = |k: &str| -> Vec<String> {
        set[k].as_array().map(|v| v.iter().filter_map(|s| s.as_str().map(String::from)).collect()).unwrap_or_default()
    };
    let (queries, docs) = (strings("queries"), strings("documents"));
    if queries.is_empty() || docs.len() < a.batch {
        return Err("the set needs queries and at least one batch of documents".into());
    }
    let t = Instant::now();
    let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(a.threads)?);
    let simd = backend.caps().simd;
    let model = RerankModel::load(&a.model, backend)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;
    let refs: Vec<&str> = docs.iter().map(String::as_str).collect();

    // Warm-up: first-touch page faults of the mapped weights, thread-pool start.
    model.score(&queries[0], &refs[..a.batch], true)?;

    let (mut pairs, mut tokens) = (0usize, 0usize);
    let t = Instant::now();
    for r in 0..a.rounds {
        for (i, chunk) in refs.chunks_exact(a.batch).enumerate() {
            let s = model.score(&queries[(r + i) % queries.len()], chunk, true)?;
            pairs += chunk.len();
            tokens += s.token_counts.iter().sum::<usize>();
        }
    }
    let batch_s = t.elapsed().as_secs_f64();
    let calls = a.rounds * (refs.len() / a.batch);

    let mut single_ms: Vec<f64> = Vec::new();
    for (i, d) in refs.iter().take(a.single).enumerate() {
        let t = Instant::now();
        model.score(&queries[i % queries.len()], &[d], true)?;
        single_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let check: Vec<f32> = model.score(&queries[0], &refs[..8], true)?.logits.into_iter().map(sigmoid).collect();
    let out = serde_json::json!({
        "impl": "govbox",
        "threads": a.threads,
        "simd": simd,
        "batch_size": a.batch,
        "load_ms": load_ms,
        "pairs": pairs,
        "tokens_per_pair": tokens as f64 / pairs.max(1) as f64,
        "pairs_per_s": pairs as f64 / batch_s,
        "batch_ms_mean": batch_s * 1e3 / calls.max(1) as f64,
        "single_ms_median": median(&mut single_ms),
        "check_scores": check,
    });
    println!("{out}");
    Ok(())
}
