//! Property: a cross-encoder reranker, built into a signed package with a self-test, imported
//! and served by a real govboxd, answers the plain HTTP call Dify makes (`POST …/rerank` with a
//! bearer token) with the documents in HF transformers' order and scores within 1e-4 of HF's;
//! each call leaves an audit request entry whose HMAC covers the query and the documents; bad
//! bodies get a 400 naming the field; an embedder and a chat model are refused at `/v1/rerank`.
//! The XLM-RoBERTa embedder, packaged the same way, matches HF through `/v1/embeddings`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::io::Write;
use std::process::{Command, Stdio};

use govbox_e2e::{TestBox, bin, govbox, python_with_openai, repo};
use serde_json::{Value, json};

fn fixture(rel: &str) -> Value {
    let p = repo().join("tests/fixtures/retrieval").join(rel);
    serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap()
}

/// Runs `tests/python/dify_rerank_call.py`; returns (status, body).
fn dify_call(b: &TestBox, model: &str, query: &str, docs: &[&str], top_n: usize) -> (u64, Value) {
    let mut child = Command::new(python_with_openai())
        .arg(repo().join("tests/python/dify_rerank_call.py"))
        .arg(b.url("/v1"))
        .arg(b.certs.join("ca.crt"))
        .args([b.token.as_str(), model, &top_n.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let job = json!({"query": query, "documents": docs});
    child.stdin.take().unwrap().write_all(job.to_string().as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    (v["status"].as_u64().unwrap(), v["body"].clone())
}

fn post(b: &TestBox, path: &str, body: &Value) -> (u16, Value) {
    b.post_json(path, body)
}

#[test]
fn dify_rerank_call_ranks_as_hf_and_is_audited() {
    let b = TestBox::provisioned("rerank");
    let dir = repo().join("tests/fixtures/retrieval");
    let rr = b.build_package(&dir.join("tiny-xlmr-reranker"), "bge-reranker-tiny", "1.0.0", true);
    b.import(&rr);
    let emb = b.build_package(&dir.join("tiny-xlmr-embedder"), "bge-m3-tiny", "1.0.0", true);
    b.import(&emb);
    let qwen = b.build_package(&repo().join("tests/fixtures/tiny-qwen2"), "tiny-qwen2", "1.0.0", false);
    b.import(&qwen);
    let d = b.start();

    // Every query of the fixture, with its six documents, through Dify's call.
    let pairs = fixture("tiny-xlmr-reranker/expected.json")["pairs"].as_array().unwrap().clone();
    let reranks = govbox_e2e::rerank_cases(&pairs);
    assert_eq!(reranks.len(), 4);
    let mut audited = Vec::new();
    for c in &reranks {
        let (q, docs) = (c.query, &c.documents);
        let (status, body) = dify_call(&b, "bge-reranker-tiny", q, docs, 3);
        assert_eq!(status, 200, "{body}\n{}", d.log_text());
        let results = body["results"].as_array().unwrap();
        assert_eq!(c.check_scores(results), c.order[..3], "query {q:?}: ranking differs from HF's");
        assert!(results.iter().all(|r| r.get("document").is_none()), "documents are echoed only on request");
        assert!(body["usage"]["total_tokens"].as_u64().unwrap() > 0);
        // Written out, so that the order of the keys does not depend on serde_json's features.
        let (d, q) = (serde_json::to_string(&docs).unwrap(), serde_json::to_string(q).unwrap());
        audited.push(format!("{{\"documents\":{d},\"query\":{q}}}"));
    }

    // The Jina/Cohere extras: object documents, return_documents, raw logits, all results.
    let p0 = &pairs[0];
    let body = json!({"model": "bge-reranker-tiny", "query": p0["query"], "return_documents": true,
        "raw_scores": true, "documents": [{"text": p0["document"]}, pairs[1]["document"]]});
    let (code, v) = post(&b, "/rerank", &body);
    assert_eq!(code, 200, "{v}");
    let r0 = v["results"].as_array().unwrap().iter().find(|r| r["index"] == 0).unwrap();
    assert!((r0["relevance_score"].as_f64().unwrap() - p0["logit"].as_f64().unwrap()).abs() <= 1e-4, "{v}");
    assert_eq!(r0["document"]["text"], p0["document"]);

    // Validation names the field; the wrong kinds of model are refused.
    for (body, param) in [
        (json!({"model": "bge-reranker-tiny", "query": "", "documents": ["a"]}), "query"),
        (json!({"model": "bge-reranker-tiny", "query": "q", "documents": []}), "documents"),
        (json!({"model": "bge-reranker-tiny", "query": "q", "documents": ["a", ""]}), "documents"),
        (json!({"model": "bge-reranker-tiny", "query": "q", "documents": ["a"], "top_n": 0}), "top_n"),
        (
            json!({"model": "bge-reranker-tiny", "query": "q", "truncate": false, "documents": ["居住证 ".repeat(400)]}),
            "documents",
        ),
    ] {
        let (code, v) = post(&b, "/v1/rerank", &body);
        assert_eq!((code, v["error"]["param"].as_str()), (400, Some(param)), "{body}: {v}");
    }
    for model in ["bge-m3-tiny", "tiny-qwen2"] {
        let (code, v) = post(&b, "/v1/rerank", &json!({"model": model, "query": "q", "documents": ["a"]}));
        assert_eq!((code, v["error"]["code"].as_str()), (400, Some("wrong_model_kind")), "{v}");
    }

    // The embedder: HF's vectors through /v1/embeddings; long input refused unless truncated;
    // dimensions it was not trained for refused, naming the field.
    let cases = fixture("tiny-xlmr-embedder/expected.json")["cases"].as_array().unwrap().clone();
    let texts: Vec<&str> = cases.iter().map(|c| c["text"].as_str().unwrap()).collect();
    let (code, v) = post(&b, "/v1/embeddings", &json!({"model": "bge-m3-tiny", "input": texts}));
    assert_eq!(code, 200, "{v}");
    for (i, c) in cases.iter().enumerate() {
        let got = v["data"][i]["embedding"].as_array().unwrap();
        let want = c["embedding"].as_array().unwrap();
        let worst =
            got.iter().zip(want).map(|(a, w)| (a.as_f64().unwrap() - w.as_f64().unwrap()).abs()).fold(0.0, f64::max);
        assert!(worst <= 1e-4, "text {i}: {worst} from HF");
    }
    let long = "居住证 ".repeat(400);
    let (code, v) = post(&b, "/v1/embeddings", &json!({"model": "bge-m3-tiny", "input": ["a", long]}));
    assert_eq!((code, v["error"]["param"].as_str()), (400, Some("input")), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("input 1 has"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("limit of 512"), "{v}");
    let (code, _) = post(&b, "/v1/embeddings", &json!({"model": "bge-m3-tiny", "input": [long], "truncate": true}));
    assert_eq!(code, 200);
    let (code, v) = post(&b, "/v1/embeddings", &json!({"model": "bge-m3-tiny", "input": "a", "dimensions": 16}));
    assert_eq!((code, v["error"]["param"].as_str()), (400, Some("dimensions")), "{v}");
    let ids: Vec<u64> = {
        let all = cases[0]["input_ids"].as_array().unwrap();
        all[1..all.len() - 1].iter().map(|x| x.as_u64().unwrap()).collect()
    };
    let (code, v) = post(&b, "/v1/embeddings", &json!({"model": "bge-m3-tiny", "input": [ids]}));
    assert_eq!(code, 200, "{v}");
    let got = v["data"][0]["embedding"].as_array().unwrap();
    let want = cases[0]["embedding"].as_array().unwrap();
    assert!(got.iter().zip(want).all(|(a, w)| (a.as_f64().unwrap() - w.as_f64().unwrap()).abs() <= 1e-4));

    // Metrics count the endpoint; the log holds no query text.
    let (_, _) = post(&b, "/v1/rerank", &json!({"model": "bge-reranker-tiny", "query": "q", "documents": ["a"]}));
    let auth = format!("Authorization: Bearer {}", b.token);
    let metrics = String::from_utf8_lossy(&b.curl(&["-H", &auth, &b.url("/metrics")]).stdout).to_string();
    assert!(
        metrics.lines().any(|l| l.contains("endpoint=\"/v1/rerank\"") && l.contains("status=\"200\"")),
        "{metrics}"
    );
    assert!(!d.log_text().contains(reranks[0].query), "the daemon's log holds a query");
    drop(d);

    // Each Dify call's request entry carries the HMAC of its query and documents.
    let file = b.dir.join("audit.json");
    govbox(&b.state, &["audit", "export", "-o", file.to_str().unwrap()]);
    let o = Command::new(bin("govbox"))
        .args(["audit", "verify"])
        .arg(&file)
        .arg("--device-key")
        .arg(b.state.join("identity/audit.pub"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stdout));
    let export: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let entries: Vec<Value> = export["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| serde_json::from_str(e["entry"].as_str().unwrap()).unwrap())
        .collect();
    for text in &audited {
        let hmac = govbox(&b.state, &["audit", "hmac", "--client", "app", "--text", text]);
        let hmac = hmac.trim();
        let found = entries
            .iter()
            .any(|e| e["kind"] == "inference_request" && e["prompt_hmac"] == hmac && e["endpoint"] == "/v1/rerank");
        assert!(found, "no /v1/rerank request entry with HMAC {hmac}");
    }
}
