//! Gemma 3's sliding-window layers keep only the window in the KV cache: their pool is smaller
//! than a dense model's of the same shape, sequences far longer than the window run in it, and
//! answers do not change (the logits against HF at 1e-4, with the 268-token case crossing the
//! fixture's window of 8, are `decoder_matches_hf`'s; greedy and batched runs are checked there
//! and in `batching_prefix_cache`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::runs::{Out, concurrently, run};
use common::*;

use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_engine::kv::WindowBlocks;
use govbox_engine::{Engine, EngineOptions, GenerateRequest, Prompt};

fn load(backend: Arc<dyn Backend>, kv_tokens: usize) -> Engine {
    Engine::load(&fixture("tiny-gemma3"), backend, &EngineOptions { kv_tokens, ..Default::default() }).unwrap()
}

fn load_for(backend: Arc<dyn Backend>, kv_tokens: usize, max_sequences: usize) -> Engine {
    let opts = EngineOptions { kv_tokens, max_sequences, ..Default::default() };
    Engine::load(&fixture("tiny-gemma3"), backend, &opts).unwrap()
}

/// The fixture's window (8 positions) and a prefill chunk (512): 34 blocks per sequence.
const PER_SEQUENCE: usize = 34;

fn greedy(prompt: Vec<u32>, max_tokens: usize) -> GenerateRequest {
    GenerateRequest { ignore_eos: true, ..GenerateRequest::new(Prompt::Tokens(prompt), max_tokens) }
}

/// The fixture has two sliding-window layers and one full one: at a 4k context, sized for one
/// sequence, the pool takes the full layer's 256 blocks and one window and prefill chunk (plus
/// a scratch block) for each sliding layer, against 256 for every layer in a dense model.
fn window_pool_is_smaller(backend: Arc<dyn Backend>) {
    let e = load_for(backend, 4096, 1);
    let spec = e.kv_spec().unwrap();
    assert_eq!((spec.n_layers, spec.n_blocks), (1, 256), "{spec:?}");
    let per_layer_block = spec.bytes().unwrap() / spec.n_blocks;
    let dense = per_layer_block * 256 * 3;
    let windowed = e.kv_bytes().unwrap();
    assert_eq!(windowed, per_layer_block * (256 + 2 * (PER_SEQUENCE + 1)));
    eprintln!(
        "tiny-gemma3 KV at 4096 tokens: {windowed} bytes vs {dense} dense ({:.2}x)",
        windowed as f64 / dense as f64
    );
    assert!(windowed * 10 < dense * 5, "{windowed} vs {dense}");
    let st = e.kv_stats().unwrap();
    assert_eq!((st.window_blocks_total, st.window_blocks_used, st.window_blocks_reserved), (PER_SEQUENCE + 1, 0, 0));
}
test_device!(gemma3_window_pool_is_smaller_than_a_dense_one, window_pool_is_smaller);

/// A pool of 1,024 tokens (64 blocks) gives the sliding layers all 64 blocks and the scratch
/// one, less than the default 8 sequences' windows would take: one sequence generating 700
/// tokens reserves 34 of them (its window and a prefill chunk), so two such requests run one
/// after the other, each as it would alone, and the pool is empty afterwards. Requests that
/// need less run side by side.
fn long_sequences_wait_for_window_blocks(backend: Arc<dyn Backend>) {
    let e = load(backend.clone(), 1024);
    assert_eq!(e.kv_stats().unwrap().window_blocks_total, 65);
    assert_eq!(WindowBlocks::blocks_for(8, 512), PER_SEQUENCE);
    let reqs: Vec<GenerateRequest> =
        (0..2u32).map(|i| greedy((0..30).map(|t| 5 + (t * 7 + i * 13) % 190).collect(), 700)).collect();
    let solo: Vec<Out> = reqs.iter().map(|r| run(&load(backend.clone(), 1024), r)).collect();
    let both = concurrently(&e, &reqs);
    assert_eq!(solo, both);
    assert!(both.iter().all(|o| o.2 == 700), "every request generated its 700 tokens");
    let st = e.kv_stats().unwrap();
    assert_eq!((st.window_blocks_used, st.window_blocks_reserved, st.blocks_used), (0, 0, 0), "{st:?}");
    assert_eq!(st.peak_batch, 1, "the second waited for the first's window blocks: {st:?}");
    // Eight short requests (3 blocks each at most) share passes.
    let short: Vec<GenerateRequest> =
        (0..8u32).map(|i| greedy((0..10 + i).map(|t| 3 + (t * 11 + i) % 190).collect(), 20)).collect();
    let e = load(backend, 1024);
    let _ = concurrently(&e, &short);
    let st = e.kv_stats().unwrap();
    assert!(st.peak_batch >= 2, "{st:?}");
    assert_eq!((st.window_blocks_used, st.window_blocks_reserved), (0, 0));
}
test_device!(gemma3_long_sequences_wait_for_window_blocks, long_sequences_wait_for_window_blocks);

/// The pool follows the concurrency it is loaded for: room for `max_sequences` windows and
/// prefill chunks and the scratch block, never more than the full pool. Sized for three, three
/// sequences that each run far past the window (and reserve a whole window and chunk) are
/// admitted together and all finish, as each would alone, in a pool of 2,048 tokens; sized the
/// old way (half the full pool) only one would have fitted at a time.
fn pool_follows_window_and_concurrency(backend: Arc<dyn Backend>) {
    let e = load_for(backend.clone(), 2048, 3);
    let reqs: Vec<GenerateRequest> =
        (0..3u32).map(|i| greedy((0..30).map(|t| 7 + (t * 5 + i * 17) % 190).collect(), 600)).collect();
    let both = concurrently(&e, &reqs);
    assert!(both.iter().all(|o| o.2 == 600), "every request generated its 600 tokens: {both:?}");
    let st = e.kv_stats().unwrap();
    assert_eq!(st.peak_batch, 3, "all three ran side by side: {st:?}");
    assert_eq!((st.window_blocks_used, st.window_blocks_reserved, st.blocks_used), (0, 0, 0), "{st:?}");
    let solo: Vec<Out> = reqs.iter().map(|r| run(&load_for(backend.clone(), 2048, 1), r)).collect();
    assert_eq!(solo, both);
    for (kv_tokens, n, total) in [(4096, 1, 35), (4096, 3, 103), (4096, 7, 239), (4096, 8, 257), (1024, 3, 65)] {
        let st = load_for(backend.clone(), kv_tokens, n).kv_stats().unwrap();
        assert_eq!(st.window_blocks_total, total, "{kv_tokens} tokens, {n} sequences");
        assert_eq!(total, WindowBlocks::pool_blocks(8, 512, n, kv_tokens / 16));
    }
}
test_device!(gemma3_pool_follows_window_and_concurrency, pool_follows_window_and_concurrency);
