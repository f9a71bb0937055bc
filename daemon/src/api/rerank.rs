//! `POST /v1/rerank` (and `/rerank`): documents ordered by their relevance to a query, scored by
//! a cross-encoder or a yes/no causal LM (Qwen3-Reranker, served from a package of kind
//! `rerank`), in the shape Jina's and Cohere's rerank APIs share and that Dify, LangChain
//! and LlamaIndex send:
//! `{model, query, documents: [string | {text}], top_n?, return_documents?}` →
//! `{id, model, results: [{index, relevance_score, document?: {text}}], usage}`, best first.
//!
//! `relevance_score` is `sigmoid(logit)`, what sentence-transformers' `CrossEncoder` reports;
//! `raw_scores: true` gives the logit itself (a yes/no reranker's is `logit("yes") -
//! logit("no")`, so the sigmoid is its probability of "yes"). The engine runs the pairs of
//! concurrent requests together (`engine/src/batcher.rs`). A pair longer than the model takes is cut, longest
//! part first, as those APIs do; `truncate: false` refuses it instead, naming the document.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::{Call, audit_request, body, encoder, json};
use crate::auth;
use crate::state::AppState;

/// Most documents in one request (Cohere's limit).
pub const MAX_DOCUMENTS: usize = 1000;

/// A document: a string, or an object with its `text` (Cohere's older form).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum Document {
    /// The text.
    Text(String),
    /// `{"text": ...}`.
    Object {
        /// The text.
        text: String,
    },
}

impl Document {
    /// The text.
    pub fn text(&self) -> &str {
        match self {
            Document::Text(t) | Document::Object { text: t } => t,
        }
    }
}

fn default_true() -> bool {
    true
}

/// The request body.
#[derive(Debug, Deserialize)]
pub struct RerankRequest {
    /// The reranker's name.
    pub model: String,
    /// What the documents are ranked against.
    pub query: String,
    /// The candidates.
    pub documents: Vec<Document>,
    /// Return only the best `top_n` (all when absent).
    pub top_n: Option<usize>,
    /// Echo each document's text in its result.
    #[serde(default)]
    pub return_documents: bool,
    /// `relevance_score` is the raw logit instead of `sigmoid(logit)`.
    #[serde(default)]
    pub raw_scores: bool,
    /// Cut pairs that are too long (the default) instead of refusing them.
    #[serde(default = "default_true")]
    pub truncate: bool,
    /// Accepted and never logged.
    #[allow(dead_code)]
    pub user: Option<String>,
}

/// Checks the fields that need no model: a query, 1 to [`MAX_DOCUMENTS`] non-empty documents,
/// and a positive `top_n`.
pub fn validate(req: &RerankRequest) -> Result<(), ApiError> {
    if req.query.is_empty() {
        return Err(ApiError::invalid("query", "query may not be empty"));
    }
    if req.documents.is_empty() || req.documents.len() > MAX_DOCUMENTS {
        return Err(ApiError::invalid("documents", format!("documents must hold 1 to {MAX_DOCUMENTS} documents")));
    }
    if let Some(i) = req.documents.iter().position(|d| d.text().is_empty()) {
        return Err(ApiError::invalid("documents", format!("documents[{i}] is empty")));
    }
    if req.top_n == Some(0) {
        return Err(ApiError::invalid("top_n", "top_n must be at least 1"));
    }
    Ok(())
}

/// Document indices, best first (ties keep input order), cut to `top_n`.
pub fn ranking(logits: &[f32], top_n: Option<usize>) -> Vec<usize> {
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]).then(a.cmp(&b)));
    order.truncate(top_n.unwrap_or(order.len()));
    order
}

/// What the request entry's HMAC covers.
#[derive(serde::Serialize)]
struct Audited<'a> {
    documents: Vec<&'a str>,
    query: &'a str,
}

/// The bytes the request entry's HMAC covers: the query and every document, as the JSON object
/// `{"documents": [...], "query": ...}` (keys in that order whatever serde_json's map features),
/// so that an auditor holding the request can recompute it.
fn audited_bytes(req: &RerankRequest) -> Result<Vec<u8>, ApiError> {
    let docs: Vec<&str> = req.documents.iter().map(Document::text).collect();
    serde_json::to_vec(&Audited { documents: docs, query: &req.query })
        .map_err(|e| ApiError::Internal(format!("encoding the request for its audit entry: {e}")))
}

/// The handler.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let call = Call::new(&state, req);
    let client = call.client(&state)?;
    let req: RerankRequest = body::read_json(&call.headers, call.body, &state.config.limits).await?;
    let model = state.model(&req.model)?;
    call.record.set_model(&model.name);
    if model.engine.rerank_model().is_none() {
        return Err(ApiError::WrongModelKind {
            model: model.name.clone(),
            is: if model.engine.embedding_model().is_some() { "an embedding model" } else { "a chat model" },
            endpoint: "/v1/rerank",
            needs: "a reranker (a cross-encoder, or a causal LM packaged as kind rerank)",
        });
    }
    auth::authorise(&state, &client, &model)?;
    validate(&req)?;
    crate::api::policy::check_rerank_input(
        &state,
        &call.record,
        &client,
        &req.query,
        req.documents.iter().map(Document::text),
    )
    .await?;
    audit_request(&state, &call.record, &client.name, &model, &audited_bytes(&req)?).await?;

    // A pair's tokens are unknown until it is tokenised: one per byte of query and document,
    // plus the markers, bounds them; the rest goes back when the scores are in.
    let most: usize = req.documents.iter().map(|d| req.query.len() + d.text().len() + 4).sum();
    let engine = model.engine.clone();
    let texts: Vec<String> = req.documents.iter().map(|d| d.text().to_string()).collect();
    let (query, truncate) = (req.query.clone(), req.truncate);
    let ran = encoder::run(
        &state,
        &call.record,
        &client,
        most,
        "documents",
        move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            engine.rerank(&query, &refs, truncate)
        },
        |s| s.token_counts.iter().sum(),
    )
    .await?;
    let logits = &ran.out.logits;
    let results: Vec<Value> = ranking(logits, req.top_n)
        .into_iter()
        .map(|i| {
            let score = if req.raw_scores { logits[i] } else { govbox_engine::rerank::sigmoid(logits[i]) };
            let mut r = json!({"index": i, "relevance_score": score});
            if req.return_documents {
                r["document"] = json!({"text": req.documents[i].text()});
            }
            r
        })
        .collect();
    Ok(json(json!({
        "id": call.record.id,
        "model": model.name,
        "results": results,
        "usage": {"prompt_tokens": ran.tokens, "total_tokens": ran.tokens},
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> RerankRequest {
        body::parse_json::<RerankRequest>(v.to_string().as_bytes()).unwrap()
    }

    fn refused(v: Value) -> (String, String) {
        match validate(&parse(v)).unwrap_err() {
            ApiError::InvalidParam { param, message } => (param.into_owned(), message),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn documents_may_be_strings_or_objects_and_defaults_are_the_apis() {
        let r = parse(json!({"model": "m", "query": "q", "documents": ["a", {"text": "b"}]}));
        assert_eq!(r.documents.iter().map(Document::text).collect::<Vec<_>>(), ["a", "b"]);
        assert!(r.truncate && !r.return_documents && !r.raw_scores && r.top_n.is_none());
        assert!(validate(&r).is_ok());
        assert!(body::parse_json::<RerankRequest>(br#"{"model":"m","query":"q","documents":[1]}"#).is_err());
        assert!(body::parse_json::<RerankRequest>(br#"{"model":"m","documents":["a"]}"#).is_err());
    }

    #[test]
    fn validation_names_the_field() {
        assert_eq!(refused(json!({"model": "m", "query": "", "documents": ["a"]})).0, "query");
        assert_eq!(refused(json!({"model": "m", "query": "q", "documents": []})).0, "documents");
        let (p, m) = refused(json!({"model": "m", "query": "q", "documents": ["a", {"text": ""}]}));
        assert_eq!((p.as_str(), m.as_str()), ("documents", "documents[1] is empty"));
        assert_eq!(refused(json!({"model": "m", "query": "q", "documents": ["a"], "top_n": 0})).0, "top_n");
        let many: Vec<&str> = vec!["d"; MAX_DOCUMENTS + 1];
        assert_eq!(refused(json!({"model": "m", "query": "q", "documents": many})).0, "documents");
    }

    #[test]
    fn ranking_is_best_first_stable_and_cut_to_top_n() {
        assert_eq!(ranking(&[0.1, 2.0, -1.0, 2.0], None), [1, 3, 0, 2]);
        assert_eq!(ranking(&[0.1, 2.0, -1.0, 2.0], Some(2)), [1, 3]);
        assert_eq!(ranking(&[0.1], Some(5)), [0]);
    }

    #[test]
    fn the_audited_bytes_hold_the_query_and_every_document() {
        let r = parse(json!({"model": "m", "query": "居住证", "documents": ["a", {"text": "b"}]}));
        let bytes = String::from_utf8(audited_bytes(&r).unwrap()).unwrap();
        assert_eq!(bytes, r#"{"documents":["a","b"],"query":"居住证"}"#);
    }
}
