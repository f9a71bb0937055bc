//! Running generation requests to the end, alone or several at once.

use std::sync::Barrier;

use govbox_engine::{Engine, Event, FinishReason, GenerateRequest};

/// Output text, finish reason and completion tokens of one run.
pub type Out = (String, Option<FinishReason>, usize);

/// Runs `req` to its end; an error event fails the test.
pub fn run(engine: &Engine, req: &GenerateRequest) -> Out {
    let (mut text, mut fin) = (String::new(), None);
    let usage = engine
        .generate(req, &mut |e| {
            match e {
                Event::Text(t) => text.push_str(&t),
                Event::Done { finish_reason, .. } => fin = Some(finish_reason),
                Event::Error(e) => panic!("{e}"),
                Event::Logprobs(_) => {}
            }
            true
        })
        .unwrap();
    (text, fin, usage.completion_tokens)
}

/// Runs `reqs` concurrently from one thread each, all released together.
pub fn concurrently(engine: &Engine, reqs: &[GenerateRequest]) -> Vec<Out> {
    let barrier = Barrier::new(reqs.len());
    std::thread::scope(|s| {
        let hs: Vec<_> = reqs
            .iter()
            .map(|r| {
                let b = &barrier;
                s.spawn(move || {
                    b.wait();
                    run(engine, r)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}
