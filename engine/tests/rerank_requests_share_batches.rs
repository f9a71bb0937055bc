//! Property: query–document pairs of concurrent rerank calls run in one batch (the calls that
//! arrive while a batch runs wait and then go together), and each call gets the scores it gets
//! alone. Shown on the XLM-RoBERTa cross-encoder and on the Qwen3 yes/no reranker: two calls
//! queued behind a paused batcher are served by exactly one more batch.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use govbox_engine::{Engine, EngineOptions, LoadAs};

mod common;
use common::{fixture, max_abs};

const QUERIES: [&str; 2] = ["居住证怎么办理？", "How do I renew a business licence?"];
const DOCS: [&str; 3] = [
    "办理居住证需要提交身份证、居住证明和近期照片，可在社区服务中心受理。",
    "Business licences are renewed online through the government service portal.",
    "审计人员可以导出带签名的日志，并在离线环境中核验。",
];

fn two_concurrent_calls_share_one_batch(engine: Arc<Engine>) {
    let model = engine.rerank_model().unwrap();
    let alone: Vec<Vec<f32>> = QUERIES.iter().map(|q| model.score(q, &DOCS, true).unwrap().logits).collect();
    let before = model.batch_stats();
    assert_eq!((before.batches, before.peak_jobs), (2, 1), "calls made one after another run alone");

    let pause = model.pause_batches();
    let calls: Vec<_> = QUERIES
        .iter()
        .map(|q| {
            let e = engine.clone();
            std::thread::spawn(move || e.rerank(q, &DOCS, true).unwrap())
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while model.queued_calls() < 2 {
        assert!(Instant::now() < deadline, "the two calls never queued");
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(pause);
    let together: Vec<Vec<f32>> = calls.into_iter().map(|c| c.join().unwrap().logits).collect();
    let after = model.batch_stats();
    assert_eq!(after.batches - before.batches, 1, "both calls ran in one batch");
    assert_eq!((after.jobs - before.jobs, after.items - before.items, after.peak_jobs), (2, 6, 2));
    for (q, (t, a)) in together.iter().zip(&alone).enumerate() {
        assert!(max_abs(t, a) <= 1e-5, "query {q}: {t:?} together, {a:?} alone");
    }
}

#[test]
fn cross_encoder_calls_share_batches() {
    two_concurrent_calls_share_one_batch(Arc::new(common::load(&fixture("retrieval/tiny-xlmr-reranker"))));
}

#[test]
fn yes_no_reranker_calls_share_batches() {
    let dir = fixture("retrieval/tiny-qwen3-reranker");
    let e = Engine::load_as(&dir, common::backend(), &EngineOptions::default(), LoadAs::Reranker).unwrap();
    two_concurrent_calls_share_one_batch(Arc::new(e));
}
