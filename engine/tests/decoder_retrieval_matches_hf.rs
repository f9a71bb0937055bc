//! Property: decoder retrieval models give what their reference implementations give for the
//! same weights. A Qwen3-Embedding-style embedder (a Qwen3 decoder without its LM head, last-token
//! pooling, normalisation, the query instruction from `config_sentence_transformers.json`)
//! matches sentence-transformers, which left-pads its batches; govbox runs every sequence
//! unpadded, alone or batched with longer and shorter ones, and gets the same vectors. A
//! Qwen3-Reranker-style causal LM, loaded as a reranker, builds the model card's prompt token
//! for token and scores each pair as the card does (the softmax of the "yes" and "no" logits at
//! the last position), alone or batched.
//!
//! The references are `tests/fixtures/retrieval/tiny-qwen3-*/expected.json`, made by
//! `tests/fixtures/retrieval/make_qwen3_retrieval_fixtures.py` (float32).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;

use govbox_drivers::Backend;
use govbox_engine::embed::{EmbedInputError, EmbeddingModel, PoolingMode};
use govbox_engine::rerank::{RerankModel, sigmoid};
use govbox_engine::{Engine, EngineError, EngineOptions, LoadAs};

mod common;
use common::{fixture, ids, json, max_abs, test_device};

const TOL: f32 = 1e-4;
/// Largest difference between an input's result alone and in a batch.
const MAX_BATCH_DRIFT: f32 = 1e-5;

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
}

test_device!(qwen3_embedder_matches_sentence_transformers, qwen3_embedder);

fn qwen3_embedder(backend: Arc<dyn Backend>) {
    let model = EmbeddingModel::load(&fixture("retrieval/tiny-qwen3-embedder"), backend).unwrap();
    assert_eq!(
        (model.family(), model.architecture(), model.pooling(), model.normalizes(), model.dim()),
        (None, "Qwen3ForCausalLM", PoolingMode::LastToken, true, 64)
    );
    assert_eq!(model.prompt_names(), ["document", "query"]);
    let expected = json("retrieval/tiny-qwen3-embedder/expected.json");
    let cases = expected["cases"].as_array().unwrap().clone();
    assert!(cases.len() >= 12);
    let mut texts = Vec::new();
    let mut alone = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let prompt = c["prompt_name"].as_str();
        let text = model.prompted(prompt, c["text"].as_str().unwrap()).unwrap().into_owned();
        if prompt == Some("query") {
            assert!(text.starts_with(expected["query_prompt"].as_str().unwrap()), "case {i}: no instruction");
        }
        let want_ids = ids(&c["input_ids"]);
        assert_eq!(model.encode(&text).unwrap(), want_ids, "case {i}: token ids");
        let e = model.embed(&[text.as_str()]).unwrap();
        let d = max_abs(&e.vectors[0], &floats(&c["embedding"]));
        println!("case {i:2}: {:3} tokens, prompt {prompt:?}, max abs {d:.2e}", want_ids.len());
        assert!(d <= TOL, "case {i}: {d} from sentence-transformers");
        assert_eq!(e.token_counts, vec![want_ids.len()]);
        alone.push(e.vectors[0].clone());
        texts.push(text);
    }
    // One batch of every length: each sequence's own last token is pooled.
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let batch = model.embed(&refs).unwrap();
    for (i, v) in batch.vectors.iter().enumerate() {
        let d = max_abs(v, &alone[i]);
        assert!(d <= MAX_BATCH_DRIFT, "case {i}: {d} between batched and alone");
    }
    let e = model.prompted(Some("passage"), "x").unwrap_err();
    assert!(matches!(&e, EngineError::Input(EmbedInputError::UnknownPrompt { name, .. }) if name == "passage"), "{e}");
    assert!(e.to_string().contains("document, query"), "{e}");
}

#[test]
fn the_engine_loads_a_decoder_embedder_as_an_embedding_model() {
    let e = common::load(&fixture("retrieval/tiny-qwen3-embedder"));
    assert!(e.embedding_model().is_some() && e.decoder_model().is_none() && e.rerank_model().is_none());
    let v = e.embed(&["居住证怎么办理？"]).unwrap();
    assert_eq!(v.vectors[0].len(), 64);
}

/// A decoder embedder's inputs are bounded by its KV pool, and the pool is the engine's default
/// however the folder is loaded: `EmbeddingModel::load` cuts inputs where govboxd's engine does.
#[test]
fn a_decoder_embedder_takes_the_same_inputs_however_it_is_loaded() {
    let src = fixture("retrieval/tiny-qwen3-embedder");
    let dir = std::env::temp_dir().join(format!("govbox-long-embedder-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("1_Pooling")).unwrap();
    for f in [
        "config_sentence_transformers.json",
        "model.safetensors",
        "modules.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(src.join("1_Pooling/config.json"), dir.join("1_Pooling/config.json")).unwrap();
    // The folder allows more tokens than any default pool, so the pool is what bounds an input.
    let positions = 1 << 16;
    let mut config = json("retrieval/tiny-qwen3-embedder/config.json");
    config["max_position_embeddings"] = positions.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    std::fs::write(dir.join("sentence_bert_config.json"), format!(r#"{{"max_seq_length": {positions}}}"#)).unwrap();
    let alone = EmbeddingModel::load(&dir, common::backend()).map(|m| m.max_seq_length());
    let served = Engine::load(&dir, common::backend(), &EngineOptions::default())
        .map(|e| e.embedding_model().map(|m| m.max_seq_length()));
    std::fs::remove_dir_all(&dir).unwrap();
    let pool = EngineOptions::default().kv_tokens;
    assert!(pool < positions);
    assert_eq!((alone.unwrap(), served.unwrap()), (pool, Some(pool)));
}

test_device!(qwen3_yes_no_reranker_matches_the_model_card, qwen3_reranker);

fn qwen3_reranker(backend: Arc<dyn Backend>) {
    let model = RerankModel::load_yes_no(&fixture("retrieval/tiny-qwen3-reranker"), backend, 4096).unwrap();
    assert!(model.is_yes_no() && model.config().is_none());
    assert_eq!((model.architecture(), model.max_tokens()), ("Qwen3ForCausalLM", 4096));
    let pairs = json("retrieval/tiny-qwen3-reranker/expected.json")["pairs"].as_array().unwrap().clone();
    assert_eq!(pairs.len(), 24);
    let mut worst = 0f32;
    let mut by_query: Vec<(String, Vec<String>, Vec<f32>)> = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let (q, d) = (p["query"].as_str().unwrap(), p["document"].as_str().unwrap());
        let (got, types) = model.encode_pair(q, d, false, 0).unwrap();
        assert_eq!(got, ids(&p["input_ids"]), "pair {i}: prompt token ids");
        assert!(types.iter().all(|&t| t == 0));
        let s = model.score(q, &[d], false).unwrap();
        let (logit, score) = (p["logit"].as_f64().unwrap() as f32, p["score"].as_f64().unwrap() as f32);
        let (d_logit, d_score) = ((s.logits[0] - logit).abs(), (sigmoid(s.logits[0]) - score).abs());
        worst = worst.max(d_logit);
        assert!(d_logit <= TOL && d_score <= TOL, "pair {i}: yes-no {} vs HF {logit}", s.logits[0]);
        assert_eq!(s.token_counts, vec![got.len()]);
        match by_query.iter_mut().find(|(qq, ..)| qq == q) {
            Some((_, docs, logits)) => {
                docs.push(d.to_string());
                logits.push(s.logits[0]);
            }
            None => by_query.push((q.to_string(), vec![d.to_string()], vec![s.logits[0]])),
        }
    }
    println!("24 pairs: worst logit difference {worst:.2e}");
    for (q, docs, alone) in &by_query {
        let refs: Vec<&str> = docs.iter().map(String::as_str).collect();
        let s = model.score(q, &refs, false).unwrap();
        assert!(max_abs(&s.logits, alone) <= MAX_BATCH_DRIFT, "query {q:?}: batched logits drift");
    }
}

#[test]
fn a_causal_lm_is_a_reranker_only_when_loaded_as_one() {
    let dir = fixture("retrieval/tiny-qwen3-reranker");
    let chat = common::load(&dir);
    assert!(chat.decoder_model().is_some() && chat.rerank_model().is_none());
    let opts = EngineOptions { kv_tokens: 256, ..Default::default() };
    let rr = Engine::load_as(&dir, common::backend(), &opts, LoadAs::Reranker).unwrap();
    let m = rr.rerank_model().unwrap();
    assert!(m.is_yes_no() && rr.decoder_model().is_none());
    // The pool bounds a pair's prompt: a long document is refused, or cut from its end.
    assert_eq!(m.max_tokens(), 256);
    let long = "居住证 ".repeat(300);
    let e = rr.rerank("居住证怎么办理？", &["短", &long], false).unwrap_err();
    assert!(matches!(e, EngineError::Input(EmbedInputError::TooLong { index: 1, limit: 256, .. })), "{e}");
    let s = rr.rerank("居住证怎么办理？", &["短", &long], true).unwrap();
    assert_eq!(s.token_counts[1], 256);
    let (ids, _) = m.encode_pair("居住证怎么办理？", &long, true, 1).unwrap();
    let (short, _) = m.encode_pair("q", "d", false, 0).unwrap();
    assert_eq!(ids[ids.len() - 12..], short[short.len() - 12..], "the prompt's end stays whole");
    // The cross-encoder loads as a reranker too; an embedder does not.
    let cross = Engine::load_as(&fixture("retrieval/tiny-xlmr-reranker"), common::backend(), &opts, LoadAs::Reranker);
    assert!(!cross.unwrap().rerank_model().unwrap().is_yes_no());
    let e = Engine::load_as(&fixture("retrieval/tiny-qwen3-embedder"), common::backend(), &opts, LoadAs::Reranker);
    assert!(e.unwrap_err().to_string().contains("not an embedding model"));
}
