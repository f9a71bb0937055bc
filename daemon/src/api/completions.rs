//! `POST /v1/completions`: plain text in, its continuation out, whole or streamed.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use govbox_engine::{FinishReason, Prompt, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::generate::{self, Accepted, ChunkHead, SamplingFields, unix_now, usage_json};
use crate::api::stream::ChunkMaker;
use crate::api::{Call, audit_request, body, json};
use crate::auth;
use crate::state::{AppState, ModelKind};

/// `prompt`: a string, or a list holding exactly one string.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PromptSpec {
    One(String),
    Many(Vec<String>),
}

/// The request body; unknown fields are ignored, meaning-changing ones refused.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: PromptSpec,
    #[serde(flatten)]
    sampling: SamplingFields,
    #[serde(default)]
    echo: bool,
    suffix: Option<String>,
    best_of: Option<u32>,
    logprobs: Option<u32>,
}

fn prompt(req: &CompletionRequest) -> Result<String, ApiError> {
    if req.echo || req.suffix.is_some() || req.logprobs.is_some() || req.best_of.is_some_and(|b| b != 1) {
        return Err(ApiError::invalid("echo", "echo, suffix, logprobs and best_of are not supported"));
    }
    match &req.prompt {
        PromptSpec::One(s) => Ok(s.clone()),
        PromptSpec::Many(v) if v.len() == 1 => Ok(v[0].clone()),
        PromptSpec::Many(_) => Err(ApiError::invalid("prompt", "send one prompt per request")),
    }
}

/// The handler.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let call = Call::new(&state, req);
    let client = call.client(&state)?;
    let req: CompletionRequest = body::read_json(&call.headers, call.body, &state.config.limits).await?;
    let model = state.model(&req.model)?;
    call.record.set_model(&model.name);
    if model.kind != ModelKind::Chat {
        return Err(ApiError::WrongModelKind {
            model: model.name.clone(),
            is: "an embedding model",
            endpoint: "/v1/completions",
            needs: "a text generation model",
        });
    }
    auth::authorise(&state, &client, &model)?;
    let text = prompt(&req)?;
    // Special-token strings are text unless the client was added with --allow-special-tokens.
    let engine_prompt = if client.allow_special_tokens {
        Prompt::TextWithSpecialTokens(text.clone())
    } else {
        Prompt::Text(text.clone())
    };
    let request = req.sampling.to_request(engine_prompt, state.config.serving.default_max_tokens)?;
    audit_request(&state, &call.record, &client.name, &model, text.as_bytes()).await?;
    let acc = Accepted {
        model: model.clone(),
        request,
        client: client.clone(),
        record: call.record.clone(),
        prompt_param: "prompt",
        prefix_cache: generate::prefix_cache_for(state.config.serving.prefix_cache, &client),
    };
    let started = generate::start(&state, acc).await?;
    let id = format!("cmpl-{}", call.record.id.trim_start_matches("req-"));
    let created = unix_now();
    if req.sampling.stream {
        let maker = Chunks(ChunkHead {
            id,
            object: "text_completion",
            created,
            model: model.name.clone(),
            include_usage: req.sampling.include_usage(),
        });
        return Ok(generate::stream_response(started, maker));
    }
    let done = generate::collect(started).await?;
    Ok(json(json!({
        "id": id,
        "object": "text_completion",
        "created": created,
        "model": model.name,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "text": done.text,
            "logprobs": null,
            "finish_reason": done.finish_reason.as_str(),
        }],
        "usage": usage_json(done.usage),
    })))
}

/// The chunks of a streamed completion.
struct Chunks(ChunkHead);

impl ChunkMaker for Chunks {
    fn opening(&mut self) -> Option<Value> {
        None
    }

    fn text(&mut self, text: &str) -> Vec<Value> {
        vec![self.0.chunk(json!([{"index": 0, "text": text, "logprobs": null, "finish_reason": null}]))]
    }

    fn finish(&mut self, reason: FinishReason) -> Vec<Value> {
        vec![self.0.chunk(json!([{"index": 0, "text": "", "logprobs": null, "finish_reason": reason.as_str()}]))]
    }

    fn usage(&mut self, usage: Usage) -> Option<Value> {
        self.0.usage(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_prompt_per_request() {
        let parse = |v: Value| body::parse_json::<CompletionRequest>(v.to_string().as_bytes()).unwrap();
        assert_eq!(prompt(&parse(json!({"model": "m", "prompt": "hi"}))).unwrap(), "hi");
        assert_eq!(prompt(&parse(json!({"model": "m", "prompt": ["hi"]}))).unwrap(), "hi");
        assert_eq!(prompt(&parse(json!({"model": "m", "prompt": ["a", "b"]}))).unwrap_err().param(), Some("prompt"));
        assert!(prompt(&parse(json!({"model": "m", "prompt": "a", "echo": true}))).is_err());
    }
}
