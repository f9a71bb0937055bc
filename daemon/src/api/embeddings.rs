//! `POST /v1/embeddings`: sentence vectors of one or more texts, as float lists or as base64 of
//! little-endian `f32`s.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::time::Instant;

use crate::api::error::ApiError;
use crate::api::{Call, audit_request, body, json};
use crate::auth;
use crate::state::{AppState, ModelKind};

/// OpenAI's limit on inputs per request.
const MAX_INPUTS: usize = 2048;

/// `input`: one string or a list of strings (token-id inputs are not supported).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Default, PartialEq, Eq, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum Encoding {
    #[default]
    Float,
    Base64,
}

/// The request body.
#[derive(Debug, Deserialize)]
struct EmbeddingRequest {
    model: String,
    input: Input,
    #[serde(default)]
    encoding_format: Encoding,
    dimensions: Option<usize>,
    /// Accepted and never logged.
    #[allow(dead_code)]
    user: Option<String>,
}

fn inputs(req: EmbeddingRequest) -> Result<Vec<String>, ApiError> {
    let texts = match req.input {
        Input::One(s) => vec![s],
        Input::Many(v) => v,
    };
    if texts.is_empty() || texts.len() > MAX_INPUTS {
        return Err(ApiError::invalid("input", "input must hold 1 to 2048 texts"));
    }
    if texts.iter().any(String::is_empty) {
        return Err(ApiError::invalid("input", "input texts may not be empty"));
    }
    Ok(texts)
}

/// `f32`s as base64 of their little-endian bytes, as OpenAI's `encoding_format: "base64"`.
pub fn base64_f32(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The handler.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let call = Call::new(&state, req);
    let client = call.client(&state)?;
    let req: EmbeddingRequest = body::read_json(&call.headers, call.body, &state.config.limits).await?;
    let model = state.model(&req.model)?;
    call.record.set_model(&model.name);
    let Some(dim) = model.engine.embedding_model().map(|m| m.dim()) else {
        return Err(ApiError::WrongModelKind {
            model: model.name.clone(),
            is: "a chat model",
            endpoint: "/v1/embeddings",
            needs: "an embedding model",
        });
    };
    debug_assert_eq!(model.kind, ModelKind::Embedding);
    auth::authorise(&state, &client, &model)?;
    if req.dimensions.is_some_and(|d| d != dim) {
        return Err(ApiError::invalid("dimensions", format!("model '{}' only gives {dim} dimensions", model.name)));
    }
    let encoding = req.encoding_format;
    let texts = inputs(req)?;
    let prompt = match texts.as_slice() {
        [one] => one.as_bytes().to_vec(),
        many => serde_json::to_vec(many).map_err(|e| ApiError::Internal(format!("encoding the input: {e}")))?,
    };
    audit_request(&state, &call.record, &client.name, &model, &prompt).await?;

    let secs = state.config.serving.request_deadline_secs;
    let deadline = Instant::from_std(call.record.start) + Duration::from_secs(secs);
    // An input's tokens are unknown until the encoder has run: reserve one per byte, plus the
    // markers the tokenizer adds, which bounds them; the rest goes back below.
    let most: usize = texts.iter().map(|t| t.len() + 4).sum();
    let budget = state.quotas.reserve(&client, most as u64)?;
    let slot = state.admission.admit(&crate::admission::Asker::of(&client), &state.metrics, deadline, secs).await?;
    let engine = model.engine.clone();
    // The slot moves into the blocking task: it is freed when the encoder has finished, even if
    // the deadline gave up on it first.
    let task = tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        let r = engine.embed(&refs);
        drop(slot);
        r
    });
    let emb = match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(r)) => r?,
        Ok(Err(e)) => return Err(ApiError::Internal(format!("embedding task: {e}"))),
        Err(_) => return Err(ApiError::DeadlineExceeded { secs }),
    };
    let tokens: usize = emb.token_counts.iter().sum();
    state.metrics.prompt_tokens.inc_by(tokens as u64);
    budget.settle(tokens as u64);
    call.record.set_tokens(tokens, None);
    let data: Vec<Value> = emb
        .vectors
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let embedding = match encoding {
                Encoding::Float => json!(v),
                Encoding::Base64 => json!(base64_f32(v)),
            };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    Ok(json(json!({
        "object": "list",
        "data": data,
        "model": model.name,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_is_little_endian_f32() {
        // 1.0f32 = 0x3f800000 -> bytes 00 00 80 3f.
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
        assert_eq!(base64_f32(&[]), "");
    }

    #[test]
    fn inputs_are_checked() {
        let parse = |v: Value| body::parse_json::<EmbeddingRequest>(v.to_string().as_bytes()).unwrap();
        assert_eq!(inputs(parse(json!({"model": "m", "input": "a"}))).unwrap(), vec!["a"]);
        assert_eq!(inputs(parse(json!({"model": "m", "input": ["a", "b"]}))).unwrap().len(), 2);
        assert!(inputs(parse(json!({"model": "m", "input": []}))).is_err());
        assert!(inputs(parse(json!({"model": "m", "input": [""]}))).is_err());
        assert!(body::parse_json::<EmbeddingRequest>(br#"{"model":"m","input":[1,2]}"#).is_err());
        let r = parse(json!({"model": "m", "input": "a", "encoding_format": "base64"}));
        assert_eq!(r.encoding_format, Encoding::Base64);
    }
}
