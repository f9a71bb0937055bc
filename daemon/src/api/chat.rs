//! `POST /v1/chat/completions`: a conversation in, the assistant's next message out, whole or
//! streamed as server-sent events.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use govbox_engine::chat::ChatMessage;
use govbox_engine::{Engine, FinishReason, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::generate::{self, Accepted, ChunkHead, SamplingFields, unix_now, usage_json};
use crate::api::stream::ChunkMaker;
use crate::api::tools::{self, AgentFields, Delta, Shaper};
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
    /// An assistant's calls.
    tool_calls: Option<Vec<tools::HistoryCall>>,
    /// A tool result's call.
    tool_call_id: Option<String>,
    /// A tool result's function name.
    name: Option<String>,
}

/// The request body. Fields not listed are ignored, as OpenAI's own server ignores what it does
/// not know; the fields that would change the meaning of the answer are refused below.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    #[serde(flatten)]
    sampling: SamplingFields,
    #[serde(flatten)]
    agent: AgentFields,
    logprobs: Option<bool>,
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
            "tool" => "tool",
            _ => {
                return Err(ApiError::invalid(
                    "messages",
                    "a message role must be system, developer, user, assistant or tool",
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
        let mut msg = ChatMessage::new(role, content);
        if role == "assistant" {
            msg.tool_calls = m.tool_calls.as_deref().filter(|c| !c.is_empty()).map(tools::calls_for_template);
        }
        if role == "tool" {
            msg.tool_call_id = m.tool_call_id.clone();
            msg.name = m.name.clone();
        }
        out.push(msg);
    }
    Ok(out)
}

fn refuse_unsupported(req: &ChatRequest) -> Result<(), ApiError> {
    if req.logprobs == Some(true) {
        return Err(ApiError::invalid("logprobs", "log probabilities are not supported"));
    }
    Ok(())
}

/// The handler.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let call = Call::new(&state, req);
    let client = call.client(&state)?;
    let mut req: ChatRequest = body::read_json(&call.headers, call.body, &state.config.limits).await?;
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
    // Compiling a grammar (the first one walks the vocabulary) is CPU work: off the async threads.
    let (agent, engine, audited) = (std::mem::take(&mut req.agent), model.engine.clone(), msgs.clone());
    let plan = tokio::task::spawn_blocking(move || agent.plan(msgs, &engine))
        .await
        .map_err(|e| ApiError::Internal(format!("request planning task: {e}")))??;
    let msgs = audited;
    let mut request = req.sampling.to_request(plan.prompt, state.config.serving.default_max_tokens)?;
    request.grammar = plan.grammar;
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
    let id = format!("chatcmpl-{}", call.record.id.trim_start_matches("req-"));
    let created = unix_now();
    let shaper = Shaper::new(plan.reasoning, plan.tools, started.opens_thinking);
    let call_ids = call.record.id.trim_start_matches("req-").to_string();
    if req.sampling.stream {
        let head = ChunkHead {
            id,
            object: "chat.completion.chunk",
            created,
            model: model.name.clone(),
            include_usage: req.sampling.include_usage(),
        };
        let maker = Chunks { head, shaper, call_ids, engine: model.engine.clone(), calls: 0 };
        return Ok(generate::stream_response(started, maker));
    }
    let done = generate::collect(started).await?;
    let mut shaper = shaper;
    let first = shaper.push(&done.text);
    let (last, parsed) = shaper.finish();
    let content = first.content + &last.content;
    let mut message = json!({"role": "assistant", "content": content});
    if !parsed.calls.is_empty() {
        if content.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = tools::tool_calls_json(&parsed.calls, &call_ids, false);
    }
    if !shaper.reasoning.is_empty() {
        message["reasoning_content"] = Value::String(shaper.reasoning.clone());
    }
    Ok(json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model.name,
        "system_fingerprint": null,
        "choices": [{
            "index": 0,
            "message": message,
            "logprobs": null,
            "finish_reason": tools::finish_reason(done.finish_reason, parsed.calls.len()),
        }],
        "usage": chat_usage(done.usage, &shaper, &model.engine),
    })))
}

/// `usage` with the reasoning tokens: the length in tokens of the reasoning text.
fn chat_usage(usage: Usage, shaper: &Shaper, engine: &Engine) -> Value {
    let mut u = usage_json(usage);
    let reasoning = match shaper.reasoning.as_str() {
        "" => 0,
        r => engine.tokenizer().encode_plain(r).map_or(0, |ids| ids.len()),
    };
    u["completion_tokens_details"] = json!({"reasoning_tokens": reasoning});
    u
}

/// The chunks of a streamed chat answer.
struct Chunks {
    head: ChunkHead,
    shaper: Shaper,
    call_ids: String,
    engine: Arc<Engine>,
    calls: usize,
}

impl Chunks {
    fn delta(&self, delta: Value) -> Value {
        self.head.chunk(json!([{"index": 0, "delta": delta, "logprobs": null, "finish_reason": null}]))
    }

    fn deltas(&self, d: Delta) -> Vec<Value> {
        let mut out = Vec::new();
        if !d.reasoning.is_empty() {
            out.push(self.delta(json!({"reasoning_content": d.reasoning})));
        }
        if !d.content.is_empty() {
            out.push(self.delta(json!({"content": d.content})));
        }
        out
    }
}

impl ChunkMaker for Chunks {
    fn opening(&mut self) -> Option<Value> {
        Some(self.head.chunk(json!([{
            "index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null
        }])))
    }

    fn text(&mut self, text: &str) -> Vec<Value> {
        let d = self.shaper.push(text);
        self.deltas(d)
    }

    fn finish(&mut self, reason: FinishReason) -> Vec<Value> {
        let (d, parsed) = self.shaper.finish();
        let mut out = self.deltas(d);
        self.calls = parsed.calls.len();
        if self.calls > 0 {
            out.push(self.delta(json!({"tool_calls": tools::tool_calls_json(&parsed.calls, &self.call_ids, true)})));
        }
        let reason = tools::finish_reason(reason, self.calls);
        out.push(self.head.chunk(json!([{"index": 0, "delta": {}, "logprobs": null, "finish_reason": reason}])));
        out
    }

    fn usage(&mut self, usage: Usage) -> Option<Value> {
        let mut v = self.head.usage(usage)?;
        v["usage"] = chat_usage(usage, &self.shaper, &self.engine);
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use govbox_engine::Prompt;

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
        let r =
            parse(json!({"model": "m", "messages": [{"role": "tool", "content": "x", "tool_call_id": "c1"}]})).unwrap();
        assert_eq!(messages(&r).unwrap()[0].tool_call_id.as_deref(), Some("c1"));
        let r = parse(json!({"model": "m", "messages": [{"role": "function", "content": "x"}]})).unwrap();
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
        // A tool without its function is malformed.
        assert!(parse(json!({"model": "m", "messages": [], "tools": [{}]})).is_err());
        assert!(parse(json!({"model": "m", "messages": [], "stop": 5})).is_err());
    }
}
