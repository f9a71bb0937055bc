//! `POST /v1/chat/completions`: a conversation in, the assistant's next message out, whole or
//! streamed as server-sent events.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use govbox_engine::chat::ChatMessage;
use govbox_engine::{FinishReason, Prompt, Usage};
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::generate::{self, Accepted, ChunkHead, SamplingFields, unix_now, usage_json};
use crate::api::stream::ChunkMaker;
use crate::api::{Call, audit_request, body, json};
use crate::auth;
use crate::state::{AppState, ModelKind};

/// A conversation may hold at most this many messages.
const MAX_MESSAGES: usize = 1024;

/// One content part of a message (`[{"type": "text", "text": "..."}]`).
#[derive(Debug, Deserialize)]
struct Part {
    #[serde(rename = "type")]
    kind: String,
    text: Option<String>,
}

/// A message's content: a string or a list of parts.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Content {
    Text(String),
    Parts(Vec<Part>),
}

#[derive(Debug, Deserialize)]
struct Message {
    role: String,
    content: Option<Content>,
}

/// The request body. Fields not listed are ignored, as OpenAI's own server ignores what it does
/// not know; the fields that would change the meaning of the answer are refused below.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(flatten)]
    sampling: SamplingFields,
    tools: Option<IgnoredAny>,
    functions: Option<IgnoredAny>,
    response_format: Option<ResponseFormat>,
    logprobs: Option<bool>,
}

#[derive(Debug, Deserialize)]
struct ResponseFormat {
    #[serde(rename = "type")]
    kind: String,
}

fn messages(req: &ChatRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must hold at least one message"));
    }
    if req.messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid("messages", "at most 1024 messages are allowed"));
    }
    let mut out = Vec::with_capacity(req.messages.len());
    for m in &req.messages {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            _ => {
                return Err(ApiError::invalid(
                    "messages",
                    "a message role must be system, developer, user or assistant (tool messages are not supported)",
                ));
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::invalid(
                                "messages",
                                "only text content parts are supported (no images, audio or files)",
                            ));
                        }
                    }
                }
                s
            }
        };
        out.push(ChatMessage::new(role, content));
    }
    Ok(out)
}

fn refuse_unsupported(req: &ChatRequest) -> Result<(), ApiError> {
    if req.tools.is_some() || req.functions.is_some() {
        return Err(ApiError::invalid("tools", "tool and function calling are not supported"));
    }
    if req.response_format.as_ref().is_some_and(|f| f.kind != "text") {
        return Err(ApiError::invalid("response_format", "only the text response format is supported"));
    }
    if req.logprobs == Some(true) {
        return Err(ApiError::invalid("logprobs", "log probabilities are not supported"));
    }
    Ok(())
}

/// The handler.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let call = Call::new(&state, req);
    let client = call.client(&state)?;
    let req: ChatRequest = body::read_json(&call.headers, call.body, &state.config.limits).await?;
    let model = state.model(&req.model)?;
    call.record.set_model(&model.name);
    if model.kind != ModelKind::Chat {
        return Err(ApiError::WrongModelKind {
            model: model.name.clone(),
            is: "an embedding model",
            endpoint: "/v1/chat/completions",
            needs: "a chat model",
        });
    }
    auth::authorise(&state, &client, &model)?;
    refuse_unsupported(&req)?;
    let msgs = messages(&req)?;
    let request = req.sampling.to_request(Prompt::Chat(msgs.clone()), state.config.serving.default_max_tokens)?;
    let texts: Vec<&str> = msgs.iter().map(|m| m.content.as_str()).collect();
    let policy = crate::policy::check_input(&state, &call.record, &client, "messages", &texts).await?;
    let prompt = serde_json::to_vec(&msgs).map_err(|e| ApiError::Internal(format!("encoding the prompt: {e}")))?;
    audit_request(&state, &call.record, &client.name, &model, &prompt).await?;
    let acc = Accepted {
        model: model.clone(),
        request,
        client: client.clone(),
        record: call.record.clone(),
        prompt_param: "messages",
        prefix_cache: generate::prefix_cache_for(state.config.serving.prefix_cache, &client),
    };
    let started = generate::start(&state, acc).await?;
    let started = crate::policy::filter_output(&state, policy, &client.name, &call.record, started);
    let id = format!("chatcmpl-{}", call.record.id.trim_start_matches("req-"));
    let created = unix_now();
    if req.sampling.stream {
        let maker = Chunks(ChunkHead {
            id,
            object: "chat.completion.chunk",
            created,
            model: model.name.clone(),
            include_usage: req.sampling.include_usage(),
        });
        return Ok(generate::stream_response(started, maker));
    }
    let done = generate::collect(started).await?;
    Ok(json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model.name,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": done.text},
            "logprobs": null,
            "finish_reason": done.finish_reason.as_str(),
        }],
        "usage": usage_json(done.usage),
    })))
}

/// The chunks of a streamed chat answer.
struct Chunks(ChunkHead);

impl ChunkMaker for Chunks {
    fn opening(&mut self) -> Option<Value> {
        Some(self.0.chunk(json!([{
            "index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null
        }])))
    }

    fn text(&mut self, text: &str) -> Value {
        self.0.chunk(json!([{"index": 0, "delta": {"content": text}, "logprobs": null, "finish_reason": null}]))
    }

    fn finish(&mut self, reason: FinishReason) -> Value {
        self.0.chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason.as_str()}]))
    }

    fn usage(&mut self, usage: Usage) -> Option<Value> {
        self.0.usage(usage)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(v: Value) -> Result<ChatRequest, ApiError> {
        body::parse_json(v.to_string().as_bytes())
    }

    #[test]
    fn content_parts_and_roles() {
        let r = parse(json!({"model": "m", "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]}))
        .unwrap();
        let m = messages(&r).unwrap();
        assert_eq!(m, vec![ChatMessage::new("system", "be brief"), ChatMessage::new("user", "ab")]);
        let r = parse(json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]})).unwrap();
        assert_eq!(messages(&r).unwrap_err().status(), 400);
        let r = parse(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}));
        assert_eq!(messages(&r.unwrap()).unwrap_err().status(), 400);
    }

    #[test]
    fn sampling_fields_are_checked() {
        let r = parse(json!({"model": "m", "messages": [], "n": 2})).unwrap();
        let e = r.sampling.to_request(Prompt::Text("x".into()), 16).unwrap_err();
        assert_eq!(e.param(), Some("n"));
        let r = parse(json!({"model": "m", "messages": [], "stop": "END", "max_completion_tokens": 5,
                              "temperature": 0, "seed": -1}))
        .unwrap();
        let g = r.sampling.to_request(Prompt::Text("x".into()), 16).unwrap();
        assert_eq!((g.max_tokens, g.stop.clone(), g.sampling.temperature), (5, vec!["END".to_string()], 0.0));
        assert_eq!(g.sampling.seed, Some(u64::MAX));
        let r = parse(json!({"model": "m", "messages": [], "stop": ["a", "b"], "temperature": 3})).unwrap();
        assert_eq!(r.sampling.to_request(Prompt::Text("x".into()), 16).unwrap_err().param(), Some("temperature"));
        assert!(
            parse(json!({"model": "m", "messages": [], "tools": [{}]}))
                .map(|r| refuse_unsupported(&r))
                .unwrap()
                .is_err()
        );
        assert!(parse(json!({"model": "m", "messages": [], "stop": 5})).is_err());
    }
}
