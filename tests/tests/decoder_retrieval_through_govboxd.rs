//! Property: decoder retrieval models, built into signed packages with self-tests, imported and
//! served by a real govboxd, answer as their references do: the Qwen3-Reranker-style model
//! (packaged as kind `rerank`) ranks each query's documents as the model card's scoring does,
//! scores within 1e-4, through `/v1/rerank`; the Qwen3-Embedding-style embedder gives
//! sentence-transformers' vectors within 1e-4 through `/v1/embeddings`, with the query
//! instruction when the request names `prompt_name: "query"`; an unknown prompt name is a 400
//! naming the field. Concurrent rerank requests are counted in the batch metrics.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use govbox_e2e::{TestBox, repo};
use serde_json::{Value, json};

fn fixture(rel: &str) -> Value {
    let p = repo().join("tests/fixtures/retrieval").join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

fn post(b: &TestBox, path: &str, body: &Value) -> (u16, Value) {
    b.post_json(path, body)
}

fn worst(got: &Value, want: &Value) -> f64 {
    let (g, w) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(g.len(), w.len());
    g.iter().zip(w).map(|(a, b)| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs()).fold(0.0, f64::max)
}

/// `govbox_rerank_batches_total` and `govbox_rerank_batched_requests_total` of the reranker.
fn rerank_counts(b: &TestBox) -> (u64, u64) {
    let auth = format!("Authorization: Bearer {}", b.token);
    let metrics = String::from_utf8_lossy(&b.curl(&["-H", &auth, &b.url("/metrics")]).stdout).to_string();
    let count = |name: &str| -> u64 {
        let line = metrics.lines().find(|l| l.starts_with(name) && l.contains("qwen3-reranker-tiny"));
        line.unwrap_or_else(|| panic!("no {name}: {metrics}")).rsplit(' ').next().unwrap().parse().unwrap()
    };
    (count("govbox_rerank_batches_total"), count("govbox_rerank_batched_requests_total"))
}

#[test]
fn qwen3_reranker_and_embedder_answer_as_their_references() {
    let b = TestBox::provisioned("decoder-retrieval");
    let dir = repo().join("tests/fixtures/retrieval");
    let rr = b.build_package_with(
        &dir.join("tiny-qwen3-reranker"),
        "qwen3-reranker-tiny",
        "1.0.0",
        true,
        &["--kind", "rerank"],
    );
    b.import(&rr);
    let emb = b.build_package(&dir.join("tiny-qwen3-embedder"), "qwen3-embedding-tiny", "1.0.0", true);
    b.import(&emb);
    let d = b.start();

    let before = rerank_counts(&b);
    let pairs = fixture("tiny-qwen3-reranker/expected.json")["pairs"].as_array().unwrap().clone();
    let cases = govbox_e2e::rerank_cases(&pairs);
    assert_eq!(cases.len(), 4);
    for c in &cases {
        let body = json!({"model": "qwen3-reranker-tiny", "query": c.query, "documents": c.documents});
        let (code, v) = post(&b, "/v1/rerank", &body);
        assert_eq!(code, 200, "{v}\n{}", d.log_text());
        let order = c.check_scores(v["results"].as_array().unwrap());
        assert_eq!(order, c.order, "query {:?}: ranking differs from the model card's", c.query);
    }
    // The four requests, one after another: four batches of one request each.
    let after = rerank_counts(&b);
    assert_eq!((after.0 - before.0, after.1 - before.1), (4, 4));
    // A causal LM packaged as a reranker is not a chat model.
    let chat = json!({"model": "qwen3-reranker-tiny", "messages": [{"role": "user", "content": "hi"}]});
    let (code, v) = post(&b, "/v1/chat/completions", &chat);
    assert_eq!(code, 400, "{v}");

    let expected = fixture("tiny-qwen3-embedder/expected.json");
    let cases = expected["cases"].as_array().unwrap();
    for prompt in [Some("query"), None] {
        let mine: Vec<&Value> = cases.iter().filter(|c| c["prompt_name"].as_str() == prompt).collect();
        let texts: Vec<&str> = mine.iter().map(|c| c["text"].as_str().unwrap()).collect();
        let mut body = json!({"model": "qwen3-embedding-tiny", "input": texts});
        if let Some(p) = prompt {
            body["prompt_name"] = json!(p);
        }
        let (code, v) = post(&b, "/v1/embeddings", &body);
        assert_eq!(code, 200, "{v}");
        for (i, c) in mine.iter().enumerate() {
            let w = worst(&v["data"][i]["embedding"], &c["embedding"]);
            assert!(w <= 1e-4, "prompt {prompt:?} text {i}: {w} from sentence-transformers");
        }
        let want: usize = mine.iter().map(|c| c["input_ids"].as_array().unwrap().len()).sum();
        assert_eq!(v["usage"]["prompt_tokens"].as_u64().unwrap() as usize, want, "the prompt's tokens count");
    }
    let (code, v) =
        post(&b, "/v1/embeddings", &json!({"model": "qwen3-embedding-tiny", "input": "a", "prompt_name": "passage"}));
    assert_eq!((code, v["error"]["param"].as_str()), (400, Some("prompt_name")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("document, query"), "{v}");

    drop(d);
}
