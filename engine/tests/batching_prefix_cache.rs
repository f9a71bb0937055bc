//! Continuous batching and the prefix cache: batched greedy outputs equal solo ones, prefixes
//! are reused without changing outputs, a tiny pool evicts, queues and preempts without leaking
//! blocks, cancelling (or a passed deadline) frees blocks at once, and the block allocator keeps
//! its invariants under random use.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::runs::{Out, concurrently, run};
use common::*;

use std::path::Path;
use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_engine::kv::{BLOCK_SIZE, BlockAllocator};
use govbox_engine::models::decoder::{LogitsFor, SeqInput};
use govbox_engine::{Engine, EngineOptions, Event, FinishReason, GenerateRequest, Prompt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest { ignore_eos: true, ..GenerateRequest::new(Prompt::Tokens(prompt), max_tokens) }
}

/// Deterministic pseudo-random prompt ids (below 200, inside every fixture's vocabulary).
fn ids_from(seed: u64, len: usize) -> Vec<u32> {
    let mut r = StdRng::seed_from_u64(seed);
    (0..len).map(|_| r.random_range(3..200)).collect()
}

fn with_kv(path: &Path, backend: Arc<dyn Backend>, kv_tokens: usize) -> Engine {
    Engine::load(path, backend, &EngineOptions { kv_tokens, ..Default::default() }).unwrap()
}

fn assert_no_blocks_held(engine: &Engine) {
    let st = engine.kv_stats().unwrap();
    assert_eq!(st.blocks_used, 0, "{st:?}");
    assert_eq!(st.blocks_free + st.blocks_cached, st.blocks_total, "{st:?}");
    assert_eq!(engine.kv_usage().unwrap().0, 0);
}

fn eight_requests() -> Vec<GenerateRequest> {
    // Different lengths (some over a block, one over two) and budgets.
    (0..8).map(|i| greedy(ids_from(100 + i, 5 + 7 * i as usize), 12 + 3 * i as usize)).collect()
}

test_device!(batched_greedy_equals_solo_tiny_qwen2, |b| batched_equals_solo(&fixture("tiny-qwen2"), b));
test_device!(batched_greedy_equals_solo_tiny_llama, |b| batched_equals_solo(&fixture("tiny-llama"), b));
// Sliding-window layers, MoE routing and the MLA latent cache under batching.
test_device!(batched_greedy_equals_solo_tiny_gemma3, |b| batched_equals_solo(&fixture("tiny-gemma3"), b));
test_device!(batched_greedy_equals_solo_tiny_qwen3_moe, |b| batched_equals_solo(&fixture("tiny-qwen3-moe"), b));
test_device!(batched_greedy_equals_solo_tiny_deepseek_v3, |b| batched_equals_solo(&fixture("tiny-deepseek-v3"), b));

fn batched_equals_solo(path: &Path, backend: Arc<dyn Backend>) {
    let reqs = eight_requests();
    // Solo: one at a time, each on a fresh engine (no batching, no prefix reuse).
    let solo: Vec<Out> = reqs.iter().map(|r| run(&with_kv(path, backend.clone(), 4096), r)).collect();
    let engine = with_kv(path, backend, 4096);
    let batched = concurrently(&engine, &reqs);
    for (i, (s, b)) in solo.iter().zip(&batched).enumerate() {
        assert_eq!(s, b, "request {i}: batched output differs from the solo run");
        assert_eq!(b.2, reqs[i].max_tokens);
    }
    let st = engine.kv_stats().unwrap();
    assert!(st.peak_batch >= 2, "the 8 concurrent requests never shared a forward pass: {st:?}");
    assert_no_blocks_held(&engine);
}

/// SmolLM2 is quantised (Q4_1). The CPU matmul dots quantised weights with 8-bit-quantised
/// activations, row by row in the same order whatever the pass holds (drivers/src/cpu/matmul.rs),
/// and attention scores a row the same way whether its sequence brings one row or many
/// (drivers/src/cpu/attention.rs), so a row's logits do not depend on what shares its pass.
/// Checked here: a decode pass of 8 sequences, and the same pass with a 40-token prefill added,
/// are bit-identical to each sequence alone; batched generation equals the solo runs.
#[test]
fn batched_greedy_equals_solo_smollm2() {
    let Some(path) = smollm2() else { return };
    let prompts = [
        "The capital of France is",
        "Water boils at a temperature of",
        "Once upon a time, there was a little",
        "The three primary colours are",
        "To make a cup of tea, first",
        "The largest planet in the solar system is",
        "In 1969, the first men to walk on the Moon were",
        "A healthy breakfast usually includes",
    ];
    let reqs: Vec<_> = prompts
        .iter()
        .map(|p| GenerateRequest { ignore_eos: true, ..GenerateRequest::new(Prompt::Text(p.to_string()), 10) })
        .collect();
    let engine = with_kv(&path, backend(), 4096);
    let solo: Vec<Out> = reqs.iter().map(|r| run(&with_kv(&path, backend(), 4096), r)).collect();
    let batched = concurrently(&engine, &reqs);
    for (s, b) in solo.iter().zip(&batched) {
        assert_eq!(s, b, "a batched greedy output differs from the solo one");
        assert_eq!((b.1, b.2), (Some(FinishReason::Length), 10));
    }
    assert!(engine.kv_stats().unwrap().peak_batch >= 2);
    assert_no_blocks_held(&engine);

    // One decode step of 8 sequences in one forward pass against each alone.
    let model = engine.decoder_model().unwrap();
    let c = model.config();
    let mut cache = kv_cache_for(model, 72);
    let vocab = c.vocab_size;
    let seqs: Vec<(Vec<u32>, Vec<u32>)> = (0..8u32)
        .map(|i| {
            let p = engine.prompt_ids(&Prompt::Text(prompts[i as usize].into())).unwrap();
            let table = (i * 8..i * 8 + 8).collect();
            (p, table)
        })
        .collect();
    let mut solo = Vec::new();
    for (p, t) in &seqs {
        let (head, last) = p.split_at(p.len() - 1);
        model
            .forward(
                &[SeqInput { tokens: head, start_pos: 0, block_table: t, local_table: &[] }],
                cache.as_mut(),
                LogitsFor::Last,
            )
            .unwrap();
        solo.extend(
            model
                .forward(
                    &[SeqInput { tokens: last, start_pos: head.len(), block_table: t, local_table: &[] }],
                    cache.as_mut(),
                    LogitsFor::Last,
                )
                .unwrap(),
        );
    }
    let batch: Vec<SeqInput<'_>> = seqs
        .iter()
        .map(|(p, t)| SeqInput { tokens: &p[p.len() - 1..], start_pos: p.len() - 1, block_table: t, local_table: &[] })
        .collect();
    let batched = model.forward(&batch, cache.as_mut(), LogitsFor::Last).unwrap();
    assert_eq!(solo, batched, "a decode pass of 8 rows must equal each row alone");
    // The same decode rows with a 40-token prefill in the pass (the GEMM path).
    let extra: Vec<u32> = engine
        .prompt_ids(&Prompt::Text(
            "Tell me a long story about a dragon who lived in a cave near the sea, and the village that feared him"
                .into(),
        ))
        .unwrap();
    let extra_table: Vec<u32> = (64..72).collect();
    let mut mixed_batch = batch.clone();
    mixed_batch.push(SeqInput { tokens: &extra, start_pos: 0, block_table: &extra_table, local_table: &[] });
    let mixed = model.forward(&mixed_batch, cache.as_mut(), LogitsFor::Last).unwrap();
    assert!(solo == mixed[..8 * vocab], "decode rows beside a {}-token prefill must equal each row alone", extra.len());
}

test_device!(prefix_reuse_keeps_outputs_and_counts_hits, prefix_reuse);

fn prefix_reuse(backend: Arc<dyn Backend>) {
    let path = fixture("tiny-qwen2");
    let system = ids_from(1, 3 * BLOCK_SIZE + 5);
    let with = |tail: &[u32]| [system.as_slice(), tail].concat();
    let a = greedy(with(&[11, 12, 13]), 16);
    let b = greedy(with(&[21, 22, 23, 24, 25]), 16);
    let fresh_a = run(&with_kv(&path, backend.clone(), 4096), &a);
    let fresh_b = run(&with_kv(&path, backend.clone(), 4096), &b);

    let engine = with_kv(&path, backend, 4096);
    assert_eq!(run(&engine, &a), fresh_a);
    let st = engine.kv_stats().unwrap();
    assert_eq!((st.prefix_hits, st.tokens_reused), (0, 0), "nothing to reuse on the first request");
    assert!(st.blocks_cached >= 3, "the prompt's full blocks stay cached: {st:?}");
    assert_eq!(run(&engine, &b), fresh_b, "reusing the shared prefix changed the output");
    let st = engine.kv_stats().unwrap();
    assert_eq!(st.prefix_hits, 1);
    assert_eq!(st.tokens_reused, 3 * BLOCK_SIZE as u64, "{st:?}");
    // The whole prompt (and more) is cached now: the last token is still recomputed privately.
    assert_eq!(run(&engine, &a), fresh_a);
    assert!(engine.kv_stats().unwrap().tokens_reused > 3 * BLOCK_SIZE as u64);
    // A prompt ending exactly on a block boundary, fully cached.
    let exact = greedy(system[..2 * BLOCK_SIZE].to_vec(), 8);
    let want = run(&with_kv(&path, backend_of(&engine), 4096), &exact);
    assert_eq!(run(&engine, &exact), want);
    assert_eq!(run(&engine, &exact), want);
    assert_no_blocks_held(&engine);
}

fn backend_of(engine: &Engine) -> Arc<dyn Backend> {
    engine.decoder_model().unwrap().backend().clone()
}

#[test]
fn tiny_pool_evicts_queues_preempts_and_frees_everything() {
    let path = fixture("tiny-llama");
    // 4 blocks of 16 tokens.
    let engine = with_kv(&path, backend(), 64);
    let reqs: Vec<_> = (0..6).map(|i| greedy(ids_from(50 + i, 20), 20)).collect();
    let want: Vec<Out> = reqs.iter().map(|r| run(&with_kv(&path, backend(), 4096), r)).collect();
    // One after another: each needs 3 blocks, so earlier prompts' cached blocks are evicted.
    for (r, w) in reqs.iter().zip(&want) {
        assert_eq!(&run(&engine, r), w);
    }
    let st = engine.kv_stats().unwrap();
    assert!(st.evictions > 0, "{st:?}");
    assert_no_blocks_held(&engine);
    // All at once: they cannot all fit, so they queue (and running ones may be preempted and
    // recomputed); every output is still the solo one.
    let got = concurrently(&engine, &reqs);
    assert_eq!(got, want);
    assert_no_blocks_held(&engine);
    // A prompt the whole pool cannot hold is refused at once, naming the cause.
    let e = engine.generate(&greedy(ids_from(9, 65), 4), &mut |_| true).unwrap_err();
    assert!(matches!(e, govbox_engine::EngineError::KvCacheFull { need: 65, available: 64 }), "{e:?}");
    assert!(e.to_string().contains("KV cache is full"), "{e}");
    // Alone and out of blocks mid-decode: ends with Length when the pool (64 tokens) is full.
    let (_, fin, n) = run(&engine, &greedy(ids_from(10, 20), 100));
    assert_eq!(fin, Some(FinishReason::Length));
    assert_eq!(n, 64 + 1 - 20, "it samples until the token after position 63 needs a fifth block");
    assert_no_blocks_held(&engine);
}

#[test]
fn preemption_under_pressure_keeps_outputs() {
    let path = fixture("tiny-qwen2");
    // 6 blocks; three requests that each grow to 4 blocks must preempt one another.
    let engine = with_kv(&path, backend(), 96);
    let reqs: Vec<_> = (0..3).map(|i| greedy(ids_from(70 + i, 10), 50)).collect();
    let want: Vec<Out> = reqs.iter().map(|r| run(&with_kv(&path, backend(), 4096), r)).collect();
    let got = concurrently(&engine, &reqs);
    assert_eq!(got, want);
    let st = engine.kv_stats().unwrap();
    assert!(st.preemptions > 0 || st.peak_batch == 1, "{st:?}");
    assert_no_blocks_held(&engine);
}

test_device!(cancel_mid_stream_frees_blocks_at_once, cancel);

/// A tiny-qwen2 engine on which `f` runs while another greedy stream runs beside it: that
/// stream's output must be its solo one, and no blocks may be held afterwards.
fn beside_another_stream(backend: Arc<dyn Backend>, f: impl FnOnce(&Engine)) -> Engine {
    let path = fixture("tiny-qwen2");
    let engine = with_kv(&path, backend.clone(), 4096);
    let long = greedy(ids_from(3, 30), 60);
    let want_long = run(&with_kv(&path, backend, 4096), &long);
    std::thread::scope(|s| {
        let other = s.spawn(|| run(&engine, &long));
        f(&engine);
        assert_eq!(other.join().unwrap(), want_long, "the other stream must be unaffected");
    });
    assert_no_blocks_held(&engine);
    engine
}

fn cancel(backend: Arc<dyn Backend>) {
    let engine = beside_another_stream(backend, |engine| {
        let mut events = 0;
        let usage = engine
            .generate(&greedy(ids_from(4, 40), 200), &mut |e| {
                assert!(matches!(e, Event::Text(_)), "{e:?}");
                events += 1;
                events < 3
            })
            .unwrap();
        assert_eq!(events, 3);
        assert!(usage.completion_tokens < 200);
    });
    // Alone: the blocks are back (free or cached) as soon as generate returns.
    let mut n = 0;
    engine
        .generate(&greedy(ids_from(6, 70), 100), &mut |_| {
            n += 1;
            n < 2
        })
        .unwrap();
    assert_no_blocks_held(&engine);
}

test_device!(dropping_a_generation_frees_its_blocks, drop_generation);

/// The channel API: dropping a [`govbox_engine::Generation`] part-way (an HTTP client that went
/// away) cancels its sequence, and the scheduler frees its blocks without anyone waiting on it.
fn drop_generation(backend: Arc<dyn Backend>) {
    use std::time::{Duration, Instant};
    let engine = with_kv(&fixture("tiny-qwen2"), backend, 4096);
    let before = engine.kv_usage().unwrap().0;
    let mut generation = engine.submit(greedy(ids_from(5, 40), 400)).unwrap();
    match generation.blocking_next() {
        Some(Event::Text(_)) => {}
        other => panic!("{other:?}"),
    }
    let held = engine.kv_usage().unwrap().0;
    assert!(held > before, "a running sequence holds blocks ({before} before, {held} now)");
    drop(generation);
    let t = Instant::now();
    while engine.kv_usage().unwrap().0 != before {
        assert!(t.elapsed() < Duration::from_secs(5), "the blocks were not freed: {:?}", engine.kv_usage());
        std::thread::sleep(Duration::from_millis(2));
    }
    // Freed because it was cancelled, not because it ran its 400 tokens to the end (its reader
    // stopped after one event, so it paused once its channel was full, then was dropped).
    let steps = engine.kv_stats().unwrap().steps;
    assert!(steps < 200, "the sequence ran on after its Generation was dropped: {steps} steps");
    assert_no_blocks_held(&engine);
}

test_device!(a_passed_deadline_cancels_and_frees_blocks, deadline);

fn deadline(backend: Arc<dyn Backend>) {
    use govbox_engine::EngineError;
    use std::time::{Duration, Instant};
    let engine = beside_another_stream(backend, |engine| {
        // Already passed when it is submitted: no token is waited for, nothing is sent.
        let late = GenerateRequest { deadline: Some(Instant::now()), ..greedy(ids_from(4, 40), 200) };
        let mut events = 0;
        let e = engine
            .generate(&late, &mut |_| {
                events += 1;
                true
            })
            .unwrap_err();
        assert!(matches!(e, EngineError::DeadlineExceeded { prompt_tokens: 40, completion_tokens: 0 }), "{e:?}");
        assert_eq!((events, e.code()), (0, "deadline_exceeded"));
    });
    // Passing while the caller holds its first text: the tokens the scheduler made meanwhile
    // do not carry the request on, and its blocks are freed before generate returns.
    // The deadline leaves 2 s for the first token, even on a loaded machine.
    let deadline = Instant::now() + Duration::from_secs(2);
    let soon = GenerateRequest { deadline: Some(deadline), ..greedy(ids_from(6, 70), 500) };
    let mut events = 0;
    let e = engine
        .generate(&soon, &mut |ev| {
            assert!(matches!(ev, Event::Text(_)), "{ev:?}");
            events += 1;
            std::thread::sleep(deadline.saturating_duration_since(Instant::now()) + Duration::from_millis(50));
            true
        })
        .unwrap_err();
    let EngineError::DeadlineExceeded { prompt_tokens: 70, completion_tokens } = e else { panic!("{e:?}") };
    assert!((1..500).contains(&completion_tokens), "{completion_tokens}");
    assert_eq!(events, 1);
    assert_no_blocks_held(&engine);
}

#[test]
fn allocator_keeps_invariants_under_random_use() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let n = 24;
    let mut a = BlockAllocator::new(n);
    // Three base token streams, so sequences share prefixes of various lengths.
    let streams: Vec<Vec<u32>> = (0..3).map(|s| ids_from(1000 + s, 8 * BLOCK_SIZE)).collect();
    // What each block holds, as written by the sequence that allocated it.
    let mut content: Vec<Option<Vec<u32>>> = vec![None; n];
    struct Live {
        tokens: Vec<u32>,
        table: Vec<u32>,
        keys: Vec<u64>,
    }
    let mut live: Vec<Live> = Vec::new();
    let (mut hits, mut evictions_seen) = (0, 0);
    for step in 0..4000 {
        match rng.random_range(0..10) {
            0..=4 => {
                let mut tokens = streams[rng.random_range(0..3)][..rng.random_range(1..=8 * BLOCK_SIZE)].to_vec();
                if rng.random_bool(0.3) {
                    let i = rng.random_range(0..tokens.len());
                    tokens[i] = 5000 + step; // diverge somewhere
                }
                let (mut shared, keys) = a.lookup(None, &tokens, (tokens.len() - 1) / BLOCK_SIZE);
                for (bi, &b) in shared.iter().enumerate() {
                    let want = &tokens[bi * BLOCK_SIZE..(bi + 1) * BLOCK_SIZE];
                    assert_eq!(content[b as usize].as_deref(), Some(want), "a shared block holds other tokens");
                }
                hits += usize::from(!shared.is_empty());
                let mut table = shared.clone();
                if a.reserve(&mut table, tokens.len()).is_err() {
                    assert_eq!(table, shared, "a failed reserve takes nothing");
                    a.release(&mut shared);
                } else {
                    for (bi, &b) in table.iter().enumerate().skip(shared.len()) {
                        assert_eq!(a.refcount(b), 1, "a new block is held by someone else");
                        let end = ((bi + 1) * BLOCK_SIZE).min(tokens.len());
                        content[b as usize] = Some(tokens[bi * BLOCK_SIZE..end].to_vec());
                    }
                    let mut keys = keys;
                    while (keys.len() + 1) * BLOCK_SIZE <= tokens.len() {
                        let bi = keys.len();
                        keys.push(a.register(
                            table[bi],
                            keys.last().copied(),
                            &tokens[bi * BLOCK_SIZE..(bi + 1) * BLOCK_SIZE],
                        ));
                    }
                    live.push(Live { tokens, table, keys });
                }
            }
            5..=7 if !live.is_empty() => {
                let i = rng.random_range(0..live.len());
                let mut l = live.swap_remove(i);
                a.release(&mut l.table);
            }
            _ if !live.is_empty() => {
                // Grow one sequence by a few tokens (a decode), writing only its private blocks.
                let i = rng.random_range(0..live.len());
                let l = &mut live[i];
                let add = rng.random_range(1..=BLOCK_SIZE);
                let new_len = l.tokens.len() + add;
                let before = l.table.len();
                if a.reserve(&mut l.table, new_len).is_ok() {
                    l.tokens.extend((0..add as u32).map(|x| 7000 + x));
                    for bi in l.keys.len()..l.table.len() {
                        let b = l.table[bi];
                        assert!(bi >= before || a.refcount(b) == 1, "writing into a shared block");
                        let end = ((bi + 1) * BLOCK_SIZE).min(l.tokens.len());
                        content[b as usize] = Some(l.tokens[bi * BLOCK_SIZE..end].to_vec());
                    }
                    while (l.keys.len() + 1) * BLOCK_SIZE <= l.tokens.len() {
                        let bi = l.keys.len();
                        let k = a.register(
                            l.table[bi],
                            l.keys.last().copied(),
                            &l.tokens[bi * BLOCK_SIZE..(bi + 1) * BLOCK_SIZE],
                        );
                        l.keys.push(k);
                    }
                }
            }
            _ => {}
        }
        a.check().unwrap_or_else(|e| panic!("step {step}: {e}"));
        let mut held = vec![0u32; n];
        for l in &live {
            for &b in &l.table {
                held[b as usize] += 1;
            }
        }
        for (b, &h) in held.iter().enumerate() {
            assert_eq!(a.refcount(b as u32), h, "step {step}: block {b}'s refcount");
        }
        assert_eq!(a.used_blocks(), held.iter().filter(|&&h| h > 0).count());
        evictions_seen = a.stats().evictions;
    }
    assert!(hits > 100 && evictions_seen > 10, "the run must exercise sharing and eviction: {hits} {evictions_seen}");
    for mut l in live.drain(..) {
        a.release(&mut l.table);
    }
    a.check().unwrap();
    assert_eq!(a.used_blocks(), 0);
    assert_eq!(a.available(), n);
}
