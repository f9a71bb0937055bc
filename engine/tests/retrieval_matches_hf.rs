//! Property: govbox's XLM-RoBERTa and BERT (Chinese WordPiece) embedders and cross-encoder
//! rerankers give what HF transformers gives for the same models: the same token ids (Chinese,
//! English and mixed text, single inputs and query–document pairs, with BERT's segment ids),
//! sentence vectors and relevance logits within 1e-4, batched or not; inputs over the model's
//! limit are refused unless truncation is asked for.
//!
//! The references are `tests/fixtures/retrieval/*/expected.json`, made with transformers
//! (float32) by `tests/fixtures/retrieval/make_retrieval_fixtures.py` (XLM-RoBERTa) and
//! `make_bert_zh_fixtures.py` (BERT).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_engine::embed::{EmbedInput, EmbedInputError, EmbedOptions, EmbeddingModel, PoolingMode};
use govbox_engine::models::bert::EncoderFamily;
use govbox_engine::rerank::{RerankModel, sigmoid};
use govbox_engine::{Engine, EngineError};

mod common;
use common::{fixture, ids, json, max_abs, test_device};

const TOL: f32 = 1e-4;
/// Largest difference between an input's result alone and in a batch.
const MAX_BATCH_DRIFT: f32 = 1e-5;

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

test_device!(xlmr_embedder_matches_hf, xlmr_embedder);

fn xlmr_embedder(backend: Arc<dyn Backend>) {
    let model = EmbeddingModel::load(&fixture("retrieval/tiny-xlmr-embedder"), backend).unwrap();
    assert_eq!(
        (model.family(), model.pooling(), model.normalizes()),
        (Some(EncoderFamily::XlmRoberta), PoolingMode::Cls, true)
    );
    // 514 position rows, of which the first two belong to padding.
    assert_eq!((model.dim(), model.max_seq_length()), (64, 512));
    check_embedder(&model, "retrieval/tiny-xlmr-embedder/expected.json");
}

test_device!(bert_zh_embedder_matches_hf, bert_zh_embedder);

fn bert_zh_embedder(backend: Arc<dyn Backend>) {
    let model = EmbeddingModel::load(&fixture("retrieval/tiny-bert-zh-embedder"), backend).unwrap();
    assert_eq!(
        (model.family(), model.pooling(), model.max_seq_length()),
        (Some(EncoderFamily::Bert), PoolingMode::Cls, 512)
    );
    check_embedder(&model, "retrieval/tiny-bert-zh-embedder/expected.json");
}

/// Token ids equal, vectors within [`TOL`] of HF's, alone and batched; a text's inner token ids
/// given as input give its vector.
fn check_embedder(model: &EmbeddingModel, expected: &str) {
    let cases = json(expected)["cases"].as_array().unwrap().clone();
    assert!(cases.len() >= 12);
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    assert!(texts.iter().any(|t| t.is_ascii()) && texts.iter().any(|t| !t.is_ascii()));
    let mut alone = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let want_ids = ids(&c["input_ids"]);
        assert_eq!(model.encode(texts[i]).unwrap(), want_ids, "case {i} ({:?}): token ids", texts[i]);
        let e = model.embed(&[texts[i]]).unwrap();
        let d = max_abs(&e.vectors[0], &floats(&c["embedding"]));
        println!("case {i:2}: {:3} tokens, max abs {d:.2e}", want_ids.len());
        assert!(d <= TOL, "case {i} ({:?}): {d} from HF", texts[i]);
        assert_eq!(e.token_counts, vec![want_ids.len()]);
        alone.push(e.vectors[0].clone());
    }
    let batch = model.embed(&texts).unwrap();
    for (i, v) in batch.vectors.iter().enumerate() {
        let d = max_abs(v, &alone[i]);
        assert!(d <= MAX_BATCH_DRIFT, "case {i}: {d} between batched and alone");
    }
    // Token-id input: the ids between the markers give the text's own vector.
    let inner: Vec<u32> = {
        let all = ids(&cases[0]["input_ids"]);
        all[1..all.len() - 1].to_vec()
    };
    let e = model.embed_inputs(&[EmbedInput::Tokens(&inner)], EmbedOptions::default()).unwrap();
    assert!(max_abs(&e.vectors[0], &alone[0]) <= MAX_BATCH_DRIFT);
    assert_eq!(e.token_counts, vec![inner.len() + 2]);
}

test_device!(xlmr_reranker_matches_hf, xlmr_reranker);

fn xlmr_reranker(backend: Arc<dyn Backend>) {
    let model = RerankModel::load(&fixture("retrieval/tiny-xlmr-reranker"), backend).unwrap();
    assert_eq!((model.config().unwrap().family, model.max_tokens()), (EncoderFamily::XlmRoberta, 512));
    check_reranker(&model, "retrieval/tiny-xlmr-reranker/expected.json", 24);
}

test_device!(bert_zh_cross_encoder_matches_hf, bert_zh_reranker);

fn bert_zh_reranker(backend: Arc<dyn Backend>) {
    let model = RerankModel::load(&fixture("retrieval/tiny-bert-zh-reranker"), backend).unwrap();
    assert_eq!((model.config().unwrap().family, model.max_tokens()), (EncoderFamily::Bert, 512));
    check_reranker(&model, "retrieval/tiny-bert-zh-reranker/expected.json", 12);
}

/// Token (and segment) ids equal, logits and sigmoid scores within [`TOL`] of HF's, pair by
/// pair and with all of a query's documents at once.
fn check_reranker(model: &RerankModel, expected: &str, n: usize) {
    let pairs = json(expected)["pairs"].as_array().unwrap().clone();
    assert_eq!(pairs.len(), n);
    let mut worst = 0f32;
    let mut by_query: Vec<(String, Vec<String>, Vec<f32>)> = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let (q, d) = (p["query"].as_str().unwrap(), p["document"].as_str().unwrap());
        let (got_ids, types) = model.encode_pair(q, d, false, 0).unwrap();
        assert_eq!(got_ids, ids(&p["input_ids"]), "pair {i}: token ids");
        match p.get("token_type_ids") {
            Some(t) => assert_eq!(types, ids(t), "pair {i}: segment ids"),
            None => assert!(types.iter().all(|&t| t == 0), "XLM-RoBERTa pairs are one segment type"),
        }
        let s = model.score(q, &[d], false).unwrap();
        let (logit, score) = (p["logit"].as_f64().unwrap() as f32, p["score"].as_f64().unwrap() as f32);
        let d_logit = (s.logits[0] - logit).abs();
        let d_score = (sigmoid(s.logits[0]) - score).abs();
        worst = worst.max(d_logit);
        assert!(d_logit <= TOL && d_score <= TOL, "pair {i}: logit {} vs HF {logit}", s.logits[0]);
        match by_query.iter_mut().find(|(qq, ..)| qq == q) {
            Some((_, docs, logits)) => {
                docs.push(d.to_string());
                logits.push(s.logits[0]);
            }
            None => by_query.push((q.to_string(), vec![d.to_string()], vec![s.logits[0]])),
        }
    }
    println!("{n} pairs: worst logit difference {worst:.2e}");
    // All documents of a query at once: the same logits as one by one.
    for (q, docs, alone) in &by_query {
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let s = model.score(q, &refs, false).unwrap();
        assert!(max_abs(&s.logits, alone) <= MAX_BATCH_DRIFT, "query {q:?}: batched logits drift");
        assert_eq!(s.token_counts.len(), docs.len());
    }
}

test_device!(long_inputs_are_refused_unless_truncation_is_asked, long_inputs);

fn long_inputs(backend: Arc<dyn Backend>) {
    let emb = EmbeddingModel::load(&fixture("retrieval/tiny-xlmr-embedder"), backend.clone()).unwrap();
    let long = "居住证 ".repeat(400);
    let inputs = [EmbedInput::Text("short"), EmbedInput::Text(&long)];
    let e = emb.embed_inputs(&inputs, EmbedOptions::default()).unwrap_err();
    match &e {
        EngineError::Input(EmbedInputError::TooLong { index: 1, tokens, limit: 512 }) if *tokens > 512 => {}
        other => panic!("{other}"),
    }
    assert!(e.to_string().contains("over the model's limit of 512"), "{e}");
    let cut = emb.embed_inputs(&inputs, EmbedOptions { truncate: true, dimensions: None }).unwrap();
    assert_eq!(cut.token_counts[1], 512);
    // Truncation keeps the closing marker, as the HF tokenizer's own truncation does.
    let ids = emb.encode(&long).unwrap();
    assert_eq!((ids.len(), ids[0], ids[511]), (512, 0, 2));
    // A width the model was not trained for, and a token outside the vocabulary, are named.
    let e = emb.embed_inputs(&inputs[..1], EmbedOptions { truncate: false, dimensions: Some(32) }).unwrap_err();
    assert!(e.to_string().contains("32 dimensions are not available: the model gives only 64"), "{e}");
    let e = emb.embed_inputs(&[EmbedInput::Tokens(&[5, 800])], EmbedOptions::default()).unwrap_err();
    assert!(e.to_string().contains("input 0: token id 800 is outside the vocabulary of 800"), "{e}");

    let rr = RerankModel::load(&fixture("retrieval/tiny-xlmr-reranker"), backend).unwrap();
    let e = rr.score("居住证怎么办理？", &["short", &long], false).unwrap_err();
    assert!(matches!(e, EngineError::Input(EmbedInputError::TooLong { index: 1, limit: 512, .. })), "{e}");
    let s = rr.score("居住证怎么办理？", &["short", &long], true).unwrap();
    assert_eq!(s.token_counts[1], 512);
}

#[test]
fn the_engine_tells_rerankers_from_embedders() {
    let rr = common::load(&fixture("retrieval/tiny-xlmr-reranker"));
    assert!(rr.rerank_model().is_some() && rr.embedding_model().is_none());
    assert!(rr.embed(&["x"]).unwrap_err().to_string().contains("not an embedding model"));
    let s = rr.rerank("防汛工作通知", &["关于做好汛期防汛工作的通知：各单位要落实值班制度。"], false).unwrap();
    assert_eq!(s.logits.len(), 1);
    let emb: Engine = common::load(&fixture("retrieval/tiny-xlmr-embedder"));
    assert!(emb.rerank_model().is_none() && emb.embedding_model().is_some());
    assert!(emb.rerank("q", &["d"], false).unwrap_err().to_string().contains("not a reranker"));
}

#[test]
fn dimensions_are_given_only_where_the_model_was_trained_for_them() {
    // The fixture embedder, declared as trained for 16 and 32 dimensions.
    let dir = std::env::temp_dir().join(format!("govbox-matryoshka-{}", std::process::id()));
    let src = fixture("retrieval/tiny-xlmr-embedder");
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for f in ["model.safetensors", "tokenizer.json", "tokenizer_config.json", "modules.json", "1_Pooling/config.json"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let mut cfg = json("retrieval/tiny-xlmr-embedder/config.json");
    cfg["matryoshka_dimensions"] = serde_json::json!([32, 16, 64]);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let model = EmbeddingModel::load(&dir, common::backend()).unwrap();
    assert_eq!(model.matryoshka_dimensions(), [16, 32]);
    let text = [EmbedInput::Text("居住证怎么办理？")];
    let full = model.embed_inputs(&text, EmbedOptions::default()).unwrap().vectors.remove(0);
    let short = model.embed_inputs(&text, EmbedOptions { truncate: false, dimensions: Some(16) }).unwrap();
    // The first 16 values, normalised again (the model normalises its vectors).
    let norm = full[..16].iter().map(|x| x * x).sum::<f32>().sqrt();
    let want: Vec<f32> = full[..16].iter().map(|x| x / norm).collect();
    assert!(max_abs(&short.vectors[0], &want) <= 1e-6);
    let e = model.embed_inputs(&text, EmbedOptions { truncate: false, dimensions: Some(24) }).unwrap_err();
    assert!(e.to_string().contains("24 dimensions are not available: the model was trained for 16, 32, 64"), "{e}");
    cfg["matryoshka_dimensions"] = serde_json::json!([16, 999]);
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    let e = EmbeddingModel::load(&dir, common::backend()).unwrap_err().to_string();
    assert!(e.contains("matryoshka_dimensions") && e.contains("hidden_size 64"), "{e}");
    std::fs::remove_dir_all(&dir).unwrap();
}
