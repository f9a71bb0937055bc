//! What grammar-constrained sampling costs per token, beside unconstrained decoding.
//!
//! usage: `grammar_bench MODEL.gguf [--tokens 128] [--threads 2] [--rounds 3]`
//!
//! Each round, alternating so that other load on the machine hits both alike:
//! 1. unconstrained greedy decode of `tokens` tokens (ignore_eos);
//! 2. the same prompt under a JSON schema that cannot close before `tokens` tokens (an array of
//!    at least 200 strings), so that both decode the same number of tokens;
//! 3. the mask alone: the constrained output (re-encoded) replayed through a fresh constraint,
//!    timing `mask` + `accept` per token with no model.
//!
//! Prints tokens/s of 1 and 2, the mask's time per token, and mask / (decode time per token).

use std::error::Error;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use govbox_drivers::cpu::CpuBackend;
use govbox_engine::constraint::Grammar;
use govbox_engine::{Engine, EngineOptions, Event, GenerateRequest, Prompt};

fn main() -> Result<(), Box<dyn Error>> {
    let (mut model, mut tokens, mut threads, mut rounds) = (PathBuf::new(), 128usize, 2usize, 3usize);
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if !flag.starts_with("--") {
            model = flag.into();
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--tokens" => tokens = v.parse()?,
            "--threads" => threads = v.parse()?,
            "--rounds" => rounds = v.parse()?,
            _ => return Err(format!("unknown flag {flag}").into()),
        }
    }
    if model.as_os_str().is_empty() {
        return Err("usage: grammar_bench MODEL.gguf [--tokens N] [--threads N] [--rounds N]".into());
    }
    let engine = Engine::load(&model, Arc::new(CpuBackend::new(threads)?), &EngineOptions::default())?;
    let grammar = Grammar::JsonSchema {
        schema: serde_json::json!({"type": "object", "properties": {"items": {"type": "array",
            "items": {"type": "string", "maxLength": 12}, "minItems": 200}}, "required": ["items"]}),
        strict: true,
    };
    let prompt = Prompt::Chat(vec![govbox_engine::chat::ChatMessage::new("user", "List city names as JSON.")]);
    let run = |g: Option<Grammar>| -> Result<(usize, f64, String), Box<dyn Error>> {
        let req =
            GenerateRequest { ignore_eos: g.is_none(), grammar: g, ..GenerateRequest::new(prompt.clone(), tokens) };
        let mut text = String::new();
        let mut t0 = None;
        let usage = engine.generate(&req, &mut |e| {
            // Decode time only: from the first token on (the prompt's prefill is the same).
            t0.get_or_insert_with(Instant::now);
            if let Event::Text(t) = e {
                text.push_str(&t);
            }
            true
        })?;
        let secs = t0.map_or(0.0, |t| t.elapsed().as_secs_f64());
        Ok((usage.completion_tokens, secs, text))
    };
    run(None)?; // warm-up
    let (mut free_tps, mut con_tps, mut mask_us) = (vec![], vec![], vec![]);
    for round in 1..=rounds {
        let (n0, s0, _) = run(None)?;
        let (n1, s1, text) = run(Some(grammar.clone()))?;
        // The mask alone, over the constrained answer's own tokens.
        let ids = engine.tokenizer().encode_plain(&text)?;
        let vocab = engine.decoder_model().ok_or("not a decoder")?.config().vocab_size;
        let mut c = engine.compile_grammar(&grammar)?;
        let mut logits = vec![0.0f32; vocab];
        let t = Instant::now();
        for &id in &ids {
            // Fresh logits each token, as the model gives (the fill is counted in the mask's time).
            logits.fill(0.0);
            c.mask(&mut logits)?;
            c.accept(id)?;
        }
        let per = t.elapsed().as_secs_f64() / ids.len().max(1) as f64 * 1e6;
        let (a, b) = ((n0 - 1) as f64 / s0, (n1 - 1) as f64 / s1);
        println!(
            "round {round}: unconstrained {n0} tokens {a:.1} tok/s | constrained {n1} tokens {b:.1} tok/s | \
             mask {per:.0} us/token over {} tokens",
            ids.len()
        );
        free_tps.push(a);
        con_tps.push(b);
        mask_us.push(per);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (a, b, m) = (median(&mut free_tps), median(&mut con_tps), median(&mut mask_us));
    let decode_us = 1e6 / a;
    println!(
        "median: unconstrained {a:.1} tok/s, constrained {b:.1} tok/s (ratio {:.3}); mask {m:.0} us/token = {:.1} % \
         of an unconstrained token's {decode_us:.0} us",
        b / a,
        100.0 * m / decode_us
    );
    Ok(())
}
