//! Property: the prefix cache leaks nothing between scopes. A request reuses only blocks that a
//! request of its own namespace computed (`PrefixCache::Namespace`, what govboxd gives each
//! client), everything reusable under `Shared`, nothing under `Off`; `Usage::cached_tokens`
//! says how much; and greedy output is the same in every mode.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;
use common::*;

use govbox_engine::kv::BLOCK_SIZE;
use govbox_engine::{Engine, EngineOptions, Event, GenerateRequest, PrefixCache, Prompt, Usage};

/// Output text and usage of one greedy run.
fn run(engine: &Engine, prompt: &[u32], cache: &PrefixCache) -> (String, Usage) {
    let req = GenerateRequest {
        ignore_eos: true,
        prefix_cache: cache.clone(),
        ..GenerateRequest::new(Prompt::Tokens(prompt.to_vec()), 12)
    };
    let mut text = String::new();
    let usage = engine
        .generate(&req, &mut |e| {
            if let Event::Text(t) = e {
                text.push_str(&t);
            }
            true
        })
        .unwrap();
    (text, usage)
}

#[test]
fn a_client_reuses_only_its_own_prefixes() {
    let path = fixture("tiny-qwen2");
    let load = || Engine::load(&path, backend(), &EngineOptions { kv_tokens: 4096, ..Default::default() }).unwrap();
    // Three full blocks and a few tokens: 48 tokens are reusable, the last block never is.
    let prompt: Vec<u32> = (0..3 * BLOCK_SIZE as u32 + 5).map(|i| 3 + (i * 7) % 190).collect();
    let reusable = 3 * BLOCK_SIZE;
    let (want, _) = run(&load(), &prompt, &PrefixCache::Off);

    let alice = PrefixCache::Namespace("alice".into());
    let bob = PrefixCache::Namespace("bob".into());
    let engine = load();
    let cached = |cache: &PrefixCache| {
        let (text, usage) = run(&engine, &prompt, cache);
        assert_eq!(text, want, "{cache:?}: the cache changed the greedy output");
        assert_eq!(usage.prompt_tokens, prompt.len());
        usage.cached_tokens
    };
    assert_eq!(cached(&alice), 0, "nothing cached yet");
    assert_eq!(cached(&bob), 0, "bob's identical prompt must not find alice's blocks");
    assert_eq!(cached(&PrefixCache::Shared), 0, "the shared scope must not find them either");
    assert_eq!(cached(&PrefixCache::Off), 0);
    assert_eq!(engine.kv_stats().unwrap().tokens_reused, 0, "no reuse across scopes at all");
    assert_eq!(cached(&alice), reusable, "alice's repeat reuses her own blocks");
    assert_eq!(cached(&bob), reusable, "and bob's his");
    assert_eq!(cached(&PrefixCache::Shared), reusable, "shared requests reuse each other's blocks");
    assert_eq!(cached(&PrefixCache::Off), 0, "off reuses nothing, even with the blocks cached");

    // Off keeps nothing for later: a fresh engine used only with Off caches no block.
    let off = load();
    for _ in 0..2 {
        let (text, usage) = run(&off, &prompt, &PrefixCache::Off);
        assert_eq!((text.as_str(), usage.cached_tokens), (want.as_str(), 0));
    }
    let st = off.kv_stats().unwrap();
    assert_eq!((st.blocks_cached, st.tokens_reused, st.blocks_used), (0, 0, 0), "{st:?}");
}
