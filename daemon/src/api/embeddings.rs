//! `POST /v1/embeddings`: sentence vectors of one or more texts (or token-id lists), as float
//! lists or as base64 of little-endian `f32`s.
//!
//! An input longer than the model takes is refused, naming the input and the limit, unless the
//! request sets `truncate: true`. `dimensions` gives shorter vectors from a model trained for
//! them (its `config.json` lists `matryoshka_dimensions`); any other width is refused.
//! `prompt_name` puts one of the model's prompts (`config_sentence_transformers.json`, such as
//! Qwen3-Embedding's `query` instruction) before each text, as sentence-transformers and TEI do;
//! without it the model's default prompt applies, if it names one. Token-id inputs get none.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use base64::Engine as _;
use govbox_engine::EngineError;
use govbox_engine::embed::{EmbedInput, EmbedOptions};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::{Call, audit_request, body, encoder, json};
use crate::auth;
use crate::models::ModelKind;
use crate::state::AppState;

/// OpenAI's limit on inputs per request.
const MAX_INPUTS: usize = 2048;

/// `input`: one string, a list of strings, one list of token ids, or a list of them (OpenAI's
/// four forms).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Input {
    One(String),
    Many(Vec<String>),
    Tokens(Vec<u32>),
    ManyTokens(Vec<Vec<u32>>),
}

/// One input, owned (it moves to the encoder's thread).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
enum Owned {
    Text(String),
    Tokens(Vec<u32>),
}

impl Owned {
    fn as_input(&self) -> EmbedInput<'_> {
        match self {
            Owned::Text(t) => EmbedInput::Text(t),
            Owned::Tokens(t) => EmbedInput::Tokens(t),
        }
    }

    /// An upper bound of the tokens it can become (one per byte or id, plus markers).
    fn most_tokens(&self) -> usize {
        match self {
            Owned::Text(t) => t.len() + 4,
            Owned::Tokens(t) => t.len() + 4,
        }
    }
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
    /// Cut inputs longer than the model takes instead of refusing them.
    #[serde(default)]
    truncate: bool,
    /// The model's prompt to put before each text.
    prompt_name: Option<String>,
    /// Accepted and never logged.
    #[allow(dead_code)]
    user: Option<String>,
}

fn inputs(input: Input) -> Result<Vec<Owned>, ApiError> {
    let all: Vec<Owned> = match input {
        Input::One(s) => vec![Owned::Text(s)],
        Input::Many(v) => v.into_iter().map(Owned::Text).collect(),
        Input::Tokens(t) => vec![Owned::Tokens(t)],
        Input::ManyTokens(v) => v.into_iter().map(Owned::Tokens).collect(),
    };
    if all.is_empty() || all.len() > MAX_INPUTS {
        return Err(ApiError::invalid("input", "input must hold 1 to 2048 texts or token lists"));
    }
    if let Some(i) = all.iter().position(|o| matches!(o, Owned::Text(t) if t.is_empty())) {
        return Err(ApiError::invalid("input", format!("input[{i}] is empty")));
    }
    if let Some(i) = all.iter().position(|o| matches!(o, Owned::Tokens(t) if t.is_empty())) {
        return Err(ApiError::invalid("input", format!("input[{i}] is an empty token list")));
    }
    Ok(all)
}

/// The texts of `all` with the model's prompt `name` (or its default) before them.
fn prompted(engine: &govbox_engine::Engine, name: Option<&str>, all: Vec<Owned>) -> govbox_engine::Result<Vec<Owned>> {
    let Some(model) = engine.embedding_model() else { return Ok(all) };
    all.into_iter()
        .map(|o| match o {
            Owned::Text(t) => Ok(Owned::Text(model.prompted(name, &t)?.into_owned())),
            tokens => Ok(tokens),
        })
        .collect()
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
    let Some(embedder) = model.engine.embedding_model() else {
        return Err(ApiError::WrongModelKind {
            model: model.name.clone(),
            is: if model.kind == ModelKind::Rerank { "a reranker" } else { "a chat model" },
            endpoint: "/v1/embeddings",
            needs: "an embedding model",
        });
    };
    debug_assert_eq!(model.kind, ModelKind::Embedding);
    auth::authorise(&state, &client, &model)?;
    if let Some(d) = req.dimensions {
        match embedder.check_dimensions(d) {
            Ok(()) => {}
            Err(EngineError::Input(e)) => return Err(encoder::input_error("input", &e)),
            Err(e) => return Err(e.into()),
        }
    }
    // The prompt alone: checks the name, and its bytes bound the tokens it adds to each text.
    let prompt_bytes = match embedder.prompted(req.prompt_name.as_deref(), "") {
        Ok(p) => p.len(),
        Err(EngineError::Input(e)) => return Err(ApiError::invalid("prompt_name", e.to_string())),
        Err(e) => return Err(e.into()),
    };
    let encoding = req.encoding_format;
    let opts = EmbedOptions { truncate: req.truncate, dimensions: req.dimensions };
    let all = inputs(req.input)?;
    let (engine, given) = (&model.engine, all.iter().map(Owned::as_input));
    crate::api::policy::check_embedding_input(&state, &call.record, &client, engine.tokenizer(), given).await?;
    let prompt = match all.as_slice() {
        [Owned::Text(one)] => one.as_bytes().to_vec(),
        many => serde_json::to_vec(many).map_err(|e| ApiError::Internal(format!("encoding the input: {e}")))?,
    };
    audit_request(&state, &call.record, &client.name, &model, &prompt).await?;

    let most: usize = all.iter().map(|o| o.most_tokens() + prompt_bytes).sum();
    let engine = model.engine.clone();
    let prompt_name = req.prompt_name;
    let ran = encoder::run(
        &state,
        &call.record,
        &client,
        most,
        "input",
        move || {
            let all = prompted(&engine, prompt_name.as_deref(), all)?;
            let refs: Vec<EmbedInput<'_>> = all.iter().map(Owned::as_input).collect();
            engine.embed_inputs(&refs, opts)
        },
        |e| e.token_counts.iter().sum(),
    )
    .await?;
    let tokens = ran.tokens;
    let data: Vec<Value> = ran
        .out
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

    fn parse(v: Value) -> EmbeddingRequest {
        body::parse_json::<EmbeddingRequest>(v.to_string().as_bytes()).unwrap()
    }

    fn refused(v: Value) -> String {
        match inputs(parse(v).input).unwrap_err() {
            ApiError::InvalidParam { param, message } if param == "input" => message,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn inputs_take_openais_four_forms_and_are_checked() {
        let one = |v: Value| inputs(parse(v).input).unwrap();
        assert_eq!(one(json!({"model": "m", "input": "a"})), vec![Owned::Text("a".into())]);
        assert_eq!(one(json!({"model": "m", "input": ["a", "b"]})).len(), 2);
        assert_eq!(one(json!({"model": "m", "input": [1, 2]})), vec![Owned::Tokens(vec![1, 2])]);
        let many = one(json!({"model": "m", "input": [[1, 2], [3]]}));
        assert_eq!(many, vec![Owned::Tokens(vec![1, 2]), Owned::Tokens(vec![3])]);
        assert!(refused(json!({"model": "m", "input": []})).contains("1 to 2048"));
        assert_eq!(refused(json!({"model": "m", "input": ["a", ""]})), "input[1] is empty");
        assert_eq!(refused(json!({"model": "m", "input": [[1], []]})), "input[1] is an empty token list");
        assert!(body::parse_json::<EmbeddingRequest>(br#"{"model":"m","input":[-1]}"#).is_err());
        let r = parse(json!({"model": "m", "input": "a", "encoding_format": "base64", "truncate": true}));
        assert_eq!((r.encoding_format, r.truncate), (Encoding::Base64, true));
        assert!(!parse(json!({"model": "m", "input": "a"})).truncate, "truncation is never the default");
    }
}
