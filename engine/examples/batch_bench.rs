//! Continuous batching and prefix-cache figures for a decoder.
//!
//! usage: `batch_bench MODEL.gguf [--streams 8] [--tokens 128] [--threads 2] [--prefix 1000]`
//!
//! 1. Decode throughput: one stream of `tokens` new tokens (ignore_eos), then `streams`
//!    concurrent streams of `tokens` each; prints each aggregate tokens/s and their ratio.
//! 2. Prefix cache: a shared system prompt of about `prefix` tokens; the time to the first
//!    event (max_tokens 1) of a first request, then of a second request sharing the system
//!    prompt with another question; prints both and the ratio (second / first).
//!
//! Figures on a shared machine are noisy: compare the ratios.

use std::error::Error;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::Instant;

use govbox_drivers::cpu::CpuBackend;
use govbox_engine::{Engine, EngineOptions, GenerateRequest, Prompt};

struct Args {
    model: PathBuf,
    streams: usize,
    tokens: usize,
    threads: usize,
    prefix: usize,
}

fn parse_args() -> Result<Args, Box<dyn Error>> {
    let mut a = Args { model: PathBuf::new(), streams: 8, tokens: 128, threads: 2, prefix: 1000 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if !flag.starts_with("--") {
            a.model = flag.into();
            continue;
        }
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--streams" => a.streams = value.parse()?,
            "--tokens" => a.tokens = value.parse()?,
            "--threads" => a.threads = value.parse()?,
            "--prefix" => a.prefix = value.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if a.model.as_os_str().is_empty() || a.streams == 0 || a.tokens == 0 {
        return Err("usage: batch_bench MODEL.gguf [--streams N>0] [--tokens N>0] [--threads N] [--prefix N]".into());
    }
    Ok(a)
}

fn load(a: &Args, kv_tokens: usize) -> Result<Engine, Box<dyn Error>> {
    Ok(Engine::load(
        &a.model,
        Arc::new(CpuBackend::new(a.threads)?),
        &EngineOptions { kv_tokens, ..Default::default() },
    )?)
}

/// Runs one greedy request; returns (completion tokens, seconds to the first event).
fn one(engine: &Engine, prompt: Prompt, max_tokens: usize) -> Result<(usize, f64), Box<dyn Error>> {
    let req = GenerateRequest { ignore_eos: true, ..GenerateRequest::new(prompt, max_tokens) };
    let t = Instant::now();
    let mut first = None;
    let usage = engine.generate(&req, &mut |_| {
        first.get_or_insert_with(|| t.elapsed().as_secs_f64());
        true
    })?;
    Ok((usage.completion_tokens, first.unwrap_or_else(|| t.elapsed().as_secs_f64())))
}

/// `n` concurrent streams; returns aggregate tokens per second.
fn streams(engine: &Engine, n: usize, tokens: usize) -> Result<f64, Box<dyn Error>> {
    let barrier = Barrier::new(n + 1);
    let (total, secs) = std::thread::scope(|s| -> Result<(usize, f64), String> {
        let hs: Vec<_> = (0..n)
            .map(|i| {
                let b = &barrier;
                s.spawn(move || {
                    b.wait();
                    let p = Prompt::Text(format!("Story number {i}. Once upon a time, in a small village,"));
                    one(engine, p, tokens).map(|r| r.0).map_err(|e| e.to_string())
                })
            })
            .collect();
        barrier.wait();
        let t = Instant::now();
        let mut total = 0;
        for h in hs {
            total += h.join().map_err(|_| "a stream panicked".to_string())??;
        }
        Ok((total, t.elapsed().as_secs_f64()))
    })?;
    Ok(total as f64 / secs)
}

fn main() -> Result<(), Box<dyn Error>> {
    let a = parse_args()?;
    let engine = load(&a, (a.streams * (a.tokens + 32)).max(4096))?;
    println!("model: {} (CPU, {} threads)", a.model.display(), a.threads);
    // Warm-up: page in the mapped weights.
    one(&engine, Prompt::Text("Hello".into()), 4)?;

    let single = streams(&engine, 1, a.tokens)?;
    println!("1 stream: {single:.2} tokens/s");
    let multi = streams(&engine, a.streams, a.tokens)?;
    println!("{} streams: {multi:.2} tokens/s aggregate", a.streams);
    println!("throughput ratio ({} streams / 1): {:.2}", a.streams, multi / single);
    println!("scheduler: {:?}", engine.kv_stats());

    // Prefix cache, on a fresh engine so nothing is cached yet.
    let engine = load(&a, (a.prefix + 256).max(4096))?;
    one(&engine, Prompt::Text("Hi".into()), 1)?;
    let mut system = Vec::new();
    let mut i = 0;
    while system.len() < a.prefix {
        let s = format!(
            "Rule {i}: the assistant answers questions about the village of Elmwood, its {} houses, \
             its river and its market, politely and briefly. ",
            10 + i
        );
        system.extend(engine.tokenizer().encode(&s)?);
        i += 1;
    }
    system.truncate(a.prefix);
    let ask =
        |q: &str| -> Result<Vec<u32>, Box<dyn Error>> { Ok([system.clone(), engine.tokenizer().encode(q)?].concat()) };
    let p1 = ask("Question: how many houses are there?")?;
    let p2 = ask("Question: what is sold at the market?")?;
    let (_, ttft1) = one(&engine, Prompt::Tokens(p1.clone()), 1)?;
    let (_, ttft2) = one(&engine, Prompt::Tokens(p2.clone()), 1)?;
    let st = engine.kv_stats();
    println!("prefix: first request ({} prompt tokens): time to first token {:.1} ms", p1.len(), ttft1 * 1e3);
    println!(
        "prefix: second request ({} prompt tokens, shared system prompt): time to first token {:.1} ms",
        p2.len(),
        ttft2 * 1e3
    );
    println!("prefix TTFT ratio (second / first): {:.3}", ttft2 / ttft1);
    if let Some(st) = st {
        println!("prefix cache: hits {}, tokens reused {}", st.prefix_hits, st.tokens_reused);
    }
    Ok(())
}
