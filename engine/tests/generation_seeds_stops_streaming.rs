//! Seeded sampling is reproducible, stop strings cut the output exactly, and streamed Chinese
//! text concatenates to the one-shot decode.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_engine::sampler::SamplingParams;
use govbox_engine::{Engine, Event, FinishReason, GenerateRequest, Prompt};

fn run(engine: &Engine, req: &GenerateRequest) -> (String, Vec<String>, Option<FinishReason>) {
    let (mut text, mut chunks, mut fin) = (String::new(), Vec::new(), None);
    engine
        .generate(req, &mut |e| {
            match e {
                Event::Text(t) => {
                    text.push_str(&t);
                    chunks.push(t);
                }
                Event::Done { finish_reason, .. } => fin = Some(finish_reason),
                Event::Error(e) => panic!("{e}"),
                Event::Logprobs(_) => {}
            }
            true
        })
        .unwrap();
    (text, chunks, fin)
}

fn sampled(seed: u64) -> GenerateRequest {
    GenerateRequest {
        sampling: SamplingParams { temperature: 1.0, top_p: 0.95, seed: Some(seed), ..Default::default() },
        ignore_eos: true,
        ..GenerateRequest::new(Prompt::Text("The quick brown fox".into()), 40)
    }
}

test_device!(same_seed_same_output_other_seed_other_output, same_seed);

fn same_seed(backend: Arc<dyn Backend>) {
    let engine = load_on(&fixture("tiny-qwen2"), backend);
    let a = run(&engine, &sampled(42)).0;
    let b = run(&engine, &sampled(42)).0;
    let c = run(&engine, &sampled(43)).0;
    assert_eq!(a, b);
    assert_ne!(a, c, "40 sampled tokens at temperature 1 should differ between seeds");
}

test_device!(stop_string_cuts_exactly, stop_string);

fn stop_string(backend: Arc<dyn Backend>) {
    let engine = load_on(&fixture("tiny-llama"), backend);
    let base = sampled(7);
    let (full, _, fin) = run(&engine, &base);
    assert_eq!(fin, Some(FinishReason::Length));
    // Pick a stop string from the middle of the unconstrained output.
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 12, "output too short: {full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let want = &full[..full.find(&stop).unwrap()];
    let (cut, chunks, fin) = run(&engine, &GenerateRequest { stop: vec![stop.clone()], ..base });
    assert_eq!(cut, want, "output must end right before the stop string {stop:?}");
    assert_eq!(fin, Some(FinishReason::Stop));
    assert!(chunks.iter().all(|c| !c.contains(&stop)));
}

test_device!(streamed_chinese_equals_one_shot_decode, streamed_chinese);

fn streamed_chinese(backend: Arc<dyn Backend>) {
    let engine = load_on(&fixture("tiny-qwen2"), backend);
    let exp = json("tiny-qwen2/expected.json");
    let mut checked = 0;
    for case in exp["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap_or_default();
        if !prompt.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c)) {
            continue;
        }
        // Sample so that the output wanders through multi-byte tokens, and compare with the
        // one-shot decode of the very same ids (recovered through the logits path).
        let req = GenerateRequest {
            sampling: SamplingParams { temperature: 0.8, seed: Some(3), ..Default::default() },
            ignore_eos: true,
            ..GenerateRequest::new(Prompt::Tokens(ids(&case["input_ids"])), 48)
        };
        let (text, chunks, _) = run(&engine, &req);
        assert!(chunks.iter().all(|c| !c.contains('\u{fffd}') || text.contains('\u{fffd}')));
        // Greedy: the fixture's ids, decoded at once, equal the stream.
        let want = ids(&case["greedy_new_ids"]);
        let greedy = GenerateRequest {
            ignore_eos: true,
            ..GenerateRequest::new(Prompt::Tokens(ids(&case["input_ids"])), want.len())
        };
        let (streamed, _, _) = run(&engine, &greedy);
        assert_eq!(streamed, engine.tokenizer().decode(&want, true).unwrap());
        checked += 1;
    }
    assert!(checked > 0, "the fixtures have Chinese prompts");
}
