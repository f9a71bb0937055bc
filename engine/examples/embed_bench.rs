//! Times sentence embedding on the CPU backend, for `bench/embed-bench.sh`.
//!
//! usage: `embed_bench --model DIR --sentences FILE.json [--threads 2] [--batch 32] [--rounds 3]
//! [--single 64]`
//!
//! `FILE.json` is a JSON list of strings. Prints one JSON object: batch throughput (sentences per
//! second over `rounds` passes of the list in batches of `batch`), single-sentence latency
//! (milliseconds, over the first `single` sentences, one at a time), and the vectors of the
//! first few sentences so the caller can check that both sides computed the same thing.

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use govbox_drivers::Backend;
use govbox_drivers::cpu::CpuBackend;
use govbox_engine::embed::EmbeddingModel;

struct Args {
    model: PathBuf,
    sentences: PathBuf,
    threads: usize,
    batch: usize,
    rounds: usize,
    single: usize,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args { model: PathBuf::new(), sentences: PathBuf::new(), threads: 2, batch: 32, rounds: 3, single: 64 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--model" => a.model = value.into(),
            "--sentences" => a.sentences = value.into(),
            "--threads" => a.threads = value.parse()?,
            "--batch" => a.batch = value.parse()?,
            "--rounds" => a.rounds = value.parse()?,
            "--single" => a.single = value.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if a.model.as_os_str().is_empty() || a.sentences.as_os_str().is_empty() {
        return Err("usage: embed_bench --model DIR --sentences FILE.json [--threads N] [--batch N] \
                    [--rounds N] [--single N]"
            .into());
    }
    a.batch = a.batch.max(1);
    Ok(a)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<(), Box<dyn Error>> {
    let a = parse_args()?;
    let sentences: Vec<String> = serde_json::from_str(&std::fs::read_to_string(&a.sentences)?)?;
    let texts: Vec<&str> = sentences.iter().map(String::as_str).collect();
    if texts.is_empty() {
        return Err("no sentences".into());
    }

    let t = Instant::now();
    let backend: Arc<dyn Backend> = Arc::new(CpuBackend::new(a.threads)?);
    let simd = backend.caps().simd;
    let model = EmbeddingModel::load(&a.model, backend)?;
    let load_ms = t.elapsed().as_secs_f64() * 1e3;

    // Warm-up: first-touch page faults of the mapped weights, thread-pool start.
    model.embed(&texts[..a.batch.min(texts.len())])?;
    model.embed(&texts[..1])?;

    let mut tokens = 0usize;
    let t = Instant::now();
    for _ in 0..a.rounds {
        for chunk in texts.chunks(a.batch) {
            tokens += model.embed(chunk)?.token_counts.iter().sum::<usize>();
        }
    }
    let batch_s = t.elapsed().as_secs_f64();
    let n_batched = texts.len() * a.rounds;

    let mut single_ms = Vec::new();
    for s in texts.iter().take(a.single) {
        let t = Instant::now();
        model.embed(&[s])?;
        single_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let mean = single_ms.iter().sum::<f64>() / single_ms.len().max(1) as f64;
    single_ms.sort_by(f64::total_cmp);

    let check = model.embed(&texts[..texts.len().min(8)])?.vectors;
    let out = serde_json::json!({
        "impl": "govbox",
        "threads": a.threads,
        "simd": simd,
        "batch_size": a.batch,
        "load_ms": load_ms,
        "sentences_batched": n_batched,
        "tokens_per_sentence": tokens as f64 / n_batched.max(1) as f64,
        "sentences_per_s": n_batched as f64 / batch_s,
        "batch_ms_mean": batch_s * 1e3 / (a.rounds * texts.len().div_ceil(a.batch)).max(1) as f64,
        "single_ms_median": percentile(&single_ms, 0.5),
        "single_ms_p90": percentile(&single_ms, 0.9),
        "single_ms_mean": mean,
        "check_vectors": check,
    });
    println!("{out}");
    Ok(())
}
