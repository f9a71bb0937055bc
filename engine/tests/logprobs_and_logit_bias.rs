//! Property: the log-probabilities a generation reports are the model's own distribution (a
//! log-softmax of the logits that a plain forward pass computes for the same tokens), with the
//! most likely alternatives in order; `logit_bias` moves sampling and nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use govbox_engine::logprobs::TokenLogprob;
use govbox_engine::sampler::SamplingParams;
use govbox_engine::{Engine, Event, GenerateRequest, Prompt};

fn run(engine: &Engine, req: &GenerateRequest) -> (String, Vec<TokenLogprob>, usize) {
    let (mut text, mut lps) = (String::new(), Vec::new());
    let usage = engine
        .generate(req, &mut |e| {
            match e {
                Event::Text(t) => text.push_str(&t),
                Event::Logprobs(l) => lps.extend(l),
                Event::Done { .. } => {}
                Event::Error(e) => panic!("{e}"),
            }
            true
        })
        .unwrap();
    (text, lps, usage.completion_tokens)
}

fn log_softmax(l: &[f32]) -> Vec<f64> {
    let max = l.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = l.iter().map(|&x| (x as f64 - max).exp()).sum();
    l.iter().map(|&x| x as f64 - max - z.ln()).collect()
}

#[test]
fn reported_logprobs_are_a_softmax_of_the_models_logits() {
    let engine = load(&fixture("tiny-qwen2"));
    let prompt = engine.prompt_ids(&Prompt::Text("The quick brown fox".into())).unwrap();
    let sampling = SamplingParams { logprobs: Some(5), ..SamplingParams::default() };
    let req =
        GenerateRequest { ignore_eos: true, sampling, ..GenerateRequest::new(Prompt::Tokens(prompt.clone()), 10) };
    let (_, lps, n) = run(&engine, &req);
    assert_eq!(lps.len(), n, "one entry per generated token");
    let tok = engine.tokenizer();
    let mut seq = prompt;
    for (step, got) in lps.iter().enumerate() {
        let logits = engine.last_logits(&seq).unwrap();
        let want = log_softmax(&logits);
        let mut order: Vec<usize> = (0..want.len()).collect();
        order.sort_by(|&a, &b| want[b].total_cmp(&want[a]).then(a.cmp(&b)));
        // Greedy: the chosen token is the most likely one, with its log-probability.
        let chosen = order[0] as u32;
        assert_eq!(got.chosen.token, tok.decode(&[chosen], false).unwrap(), "step {step}");
        assert!(
            (got.chosen.logprob as f64 - want[order[0]]).abs() < 1e-3,
            "step {step}: {got:?} vs {}",
            want[order[0]]
        );
        assert_eq!(got.top.len(), 5);
        for (alt, &id) in got.top.iter().zip(&order) {
            assert_eq!(alt.token, tok.decode(&[id as u32], false).unwrap(), "step {step}");
            assert!((alt.logprob as f64 - want[id]).abs() < 1e-3, "step {step}");
        }
        seq.push(chosen);
    }
    // Without the option, no entries at all.
    let plain = GenerateRequest { ignore_eos: true, ..GenerateRequest::new(Prompt::Tokens(seq[..4].to_vec()), 4) };
    assert!(run(&engine, &plain).1.is_empty());
}

#[test]
fn logit_bias_steers_sampling_but_not_the_reported_logprobs() {
    let engine = load(&fixture("tiny-qwen2"));
    let prompt = engine.prompt_ids(&Prompt::Text("Once upon a time".into())).unwrap();
    let base = GenerateRequest { ignore_eos: true, ..GenerateRequest::new(Prompt::Tokens(prompt.clone()), 6) };
    let forced = 65u32; // an ordinary byte-level token
    let sampling = SamplingParams { logit_bias: vec![(forced, 100.0)], logprobs: Some(1), ..SamplingParams::default() };
    let (text, lps, _) = run(&engine, &GenerateRequest { sampling, ..base.clone() });
    let piece = engine.tokenizer().decode(&[forced], false).unwrap();
    assert_eq!(text, piece.repeat(6), "+100 forces the token every step");
    // The reported distribution is the model's, before the bias: the forced token is not the
    // model's own favourite at the first step.
    let first = engine.last_logits(&prompt).unwrap();
    let want = log_softmax(&first)[forced as usize];
    assert!((lps[0].chosen.logprob as f64 - want).abs() < 1e-3, "{:?} vs {want}", lps[0]);
    // -100 bans the greedy choice: the answer changes.
    let greedy = run(&engine, &base).0;
    let top = govbox_engine::sampler::argmax(&first);
    let sampling = SamplingParams { logit_bias: vec![(top, -100.0)], ..SamplingParams::default() };
    let banned = run(&engine, &GenerateRequest { sampling, ..base }).0;
    assert_ne!(banned, greedy);
}

/// Prompt log-probabilities (completions' `echo` with `logprobs`): one entry per prompt token
/// after the first, each a log-softmax of the logits one whole-prompt forward pass computes at
/// the place before it, across the chunk boundaries of the chunked pass.
#[test]
fn prompt_logprobs_are_a_softmax_of_the_logits_before_each_token() {
    let engine = load(&fixture("tiny-qwen2"));
    let text = "The box answers the agency's questions about permits, taxes and schools. ".repeat(6);
    let ids = engine.prompt_ids(&Prompt::Text(text)).unwrap();
    assert!(ids.len() > 2 * Engine::PROMPT_LOGPROBS_CHUNK, "{} tokens", ids.len());
    let got = engine.prompt_logprobs(&ids, 3).unwrap();
    assert_eq!(got.len(), ids.len() - 1);
    let all = engine.logits(&ids, true).unwrap();
    let vocab = all.len() / ids.len();
    let tok = engine.tokenizer();
    for (i, entry) in got.iter().enumerate() {
        let want = log_softmax(&all[i * vocab..(i + 1) * vocab]);
        let next = ids[i + 1] as usize;
        assert_eq!(entry.chosen.token, tok.decode(&[ids[i + 1]], false).unwrap(), "token {i}");
        assert!((entry.chosen.logprob as f64 - want[next]).abs() < 1e-3, "token {i}: {entry:?} vs {}", want[next]);
        let best = (0..vocab).max_by(|&a, &b| want[a].total_cmp(&want[b]).then(b.cmp(&a))).unwrap();
        assert_eq!(entry.top.len(), 3);
        assert!((entry.top[0].logprob as f64 - want[best]).abs() < 1e-3, "token {i}");
    }
    assert!(engine.prompt_logprobs(&ids[..1], 0).unwrap().is_empty());
}
