//! `POST /v1/chat/completions`: a conversation in, the assistant's next message out, whole or
//! streamed as server-sent events.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use govbox_engine::chat::ChatMessage;
use govbox_engine::logprobs::{MAX_TOP_LOGPROBS, TokenLogprob};
use govbox_engine::{Engine, FinishReason, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::generate::{self, Accepted, ChunkHead, SamplingFields, unix_now, usage_json};
use crate::api::stream::ChunkMaker;
use crate::api::tools::{self, AgentFields, Delta, Shaper};
use crate::api::{Call, audit_request_by, body, fields, json, logprobs};
use crate::auth;
use crate::models::ModelKind;
use crate::state::AppState;

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
#[serde(untagged, expecting = "a string or an array of content parts")]
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

/// The request body, less the sampling fields (read from the same JSON as [`SamplingFields`],
/// not flattened, so that an error names its field). Fields not listed are ignored, as OpenAI's
/// own server ignores what it does not know; the fields that would change the meaning of the
/// answer are refused below.
#[derive(Debug, Deserialize)]
struct ChatRequest {
    model: String,
    messages: Vec<Message>,
    logprobs: Option<bool>,
    top_logprobs: Option<u32>,
}

fn messages(req: &ChatRequest) -> Result<Vec<ChatMessage>, ApiError> {
    if req.messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must hold at least one message"));
    }
    if req.messages.len() > MAX_MESSAGES {
        return Err(ApiError::invalid("messages", "at most 1024 messages are allowed"));
    }
    let mut out = Vec::with_capacity(req.messages.len());
    for (i, m) in req.messages.iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            "tool" => "tool",
            _ => {
                return Err(ApiError::invalid_at(
                    format!("messages[{i}].role"),
                    "a message role must be system, developer, user, assistant or tool",
                ));
            }
        };
        let content = match &m.content {
            None => String::new(),
            Some(Content::Text(t)) => t.clone(),
            Some(Content::Parts(parts)) => {
                let mut s = String::new();
                for (j, p) in parts.iter().enumerate() {
                    match (p.kind.as_str(), &p.text) {
                        ("text", Some(t)) => s.push_str(t),
                        _ => {
                            return Err(ApiError::invalid_at(
                                format!("messages[{i}].content[{j}]"),
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

/// How many alternatives per token to report (`None`: no log-probabilities).
fn logprobs_wanted(req: &ChatRequest) -> Result<Option<usize>, ApiError> {
    let top = req.top_logprobs.map(|k| k as usize);
    if top.is_some_and(|k| k > MAX_TOP_LOGPROBS) {
        return Err(ApiError::invalid(
            "top_logprobs",
            format!("top_logprobs must be between 0 and {MAX_TOP_LOGPROBS}"),
        ));
    }
    match (req.logprobs.unwrap_or(false), top) {
        (true, k) => Ok(Some(k.unwrap_or(0))),
        (false, Some(_)) => Err(ApiError::invalid("top_logprobs", "top_logprobs needs \"logprobs\": true")),
        (false, None) => Ok(None),
    }
}

/// The handler.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let call = Call::new(&state, req);
    let client = call.client(&state)?;
    let body = body::read_value(&call.headers, call.body, &state.config.limits).await?;
    let req: ChatRequest = fields::from_value(&body)?;
    let sampling: SamplingFields = fields::from_value(&body)?;
    let agent: AgentFields = fields::from_value(&body)?;
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
    let msgs = messages(&req)?;
    let texts: Vec<&str> = msgs.iter().map(|m| m.content.as_str()).collect();
    let policy = crate::api::policy::check_input(&state, &call.record, &client, "messages", &texts).await?;
    // Compiling a grammar (the first one walks the vocabulary) is CPU work: off the async threads.
    let (engine, audited) = (model.engine.clone(), msgs.clone());
    let plan = tokio::task::spawn_blocking(move || agent.plan(msgs, &engine))
        .await
        .map_err(|e| ApiError::Internal(format!("request planning task: {e}")))??;
    let msgs = audited;
    let mut request = sampling.to_request(plan.prompt, state.config.serving.default_max_tokens)?;
    // A grammar decides the answer from its first token, so an answer under one is never
    // inside a thinking block that the prompt opened (DeepSeek-R1's template opens one).
    let constrained = plan.grammar.is_some();
    request.grammar = plan.grammar;
    request.sampling.logprobs = logprobs_wanted(&req)?;
    let with_logprobs = request.sampling.logprobs.is_some();
    let prompt = serde_json::to_vec(&msgs).map_err(|e| ApiError::Internal(format!("encoding the prompt: {e}")))?;
    generate::check_logit_bias(&model, &request)?;
    audit_request_by(&state, &call.record, &client.name, &model, &prompt, sampling.user.as_deref()).await?;
    let acc = Accepted {
        model: model.clone(),
        request,
        more_prompts: vec![],
        n: sampling.choices()?,
        client: client.clone(),
        record: call.record.clone(),
        prompt_param: "messages",
        prefix_cache: generate::prefix_cache_for(state.config.serving.prefix_cache, &client),
    };
    let started = generate::start(&state, acc).await?;
    let started = crate::api::policy::filter_output(&state, policy, &client.name, &call.record, started);
    let id = format!("chatcmpl-{}", call.record.id.trim_start_matches("req-"));
    let created = unix_now();
    // Each choice's text is sorted into reasoning, content and tool calls by a shaper of its own.
    let opens_thinking = started.opens_thinking && !constrained;
    let shapers: Vec<Shaper> =
        (0..started.choices).map(|_| Shaper::new(plan.reasoning, plan.tools, opens_thinking)).collect();
    let call_ids = call.record.id.trim_start_matches("req-").to_string();
    if sampling.stream {
        let head = ChunkHead {
            id,
            object: "chat.completion.chunk",
            created,
            model: model.name.clone(),
            include_usage: sampling.include_usage(),
        };
        let shapers = shapers.into_iter().map(Shaper::for_stream).collect();
        let maker = Chunks { head, with_logprobs, shapers, call_ids, engine: model.engine.clone() };
        return Ok(generate::stream_response(started, maker));
    }
    let done = generate::collect(started).await?;
    let mut shapers = shapers;
    let mut choices = Vec::with_capacity(done.choices.len());
    for (i, (c, shaper)) in done.choices.iter().zip(shapers.iter_mut()).enumerate() {
        let first = shaper.push(&c.text);
        let (last, parsed) = shaper.finish();
        let content = first.content + &last.content;
        let mut message = json!({"role": "assistant", "content": content});
        if !parsed.calls.is_empty() {
            if content.is_empty() {
                message["content"] = Value::Null;
            }
            message["tool_calls"] = tools::tool_calls_json(&parsed.calls, &format!("{call_ids}-{i}"));
        }
        if !shaper.reasoning.is_empty() {
            message["reasoning_content"] = Value::String(shaper.reasoning.clone());
        }
        choices.push(json!({
            "index": i,
            "message": message,
            "logprobs": with_logprobs.then(|| logprobs::chat(&c.logprobs)),
            "finish_reason": c.finish_reason.map(|r| tools::finish_reason(r, parsed.calls.len())),
        }));
    }
    Ok(json(json!({
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model.name,
        "system_fingerprint": null,
        "choices": choices,
        "usage": chat_usage(done.usage, &shapers, &model.engine),
    })))
}

/// `usage` with the reasoning tokens: the length in tokens of the reasoning text of every choice.
fn chat_usage(usage: Usage, shapers: &[Shaper], engine: &Engine) -> Value {
    let mut u = usage_json(usage);
    let reasoning: usize = shapers
        .iter()
        .map(|s| match s.reasoning.as_str() {
            "" => 0,
            r => engine.tokenizer().encode_plain(r).map_or(0, |ids| ids.len()),
        })
        .sum();
    u["completion_tokens_details"] = json!({"reasoning_tokens": reasoning});
    u
}

/// The chunks of a streamed chat answer.
struct Chunks {
    head: ChunkHead,
    with_logprobs: bool,
    shapers: Vec<Shaper>,
    call_ids: String,
    engine: Arc<Engine>,
}

impl Chunks {
    fn delta(&self, index: usize, delta: Value, lp: Option<Value>) -> Value {
        self.head.chunk(json!([{"index": index, "delta": delta, "logprobs": lp, "finish_reason": null}]))
    }

    /// The chunks of a delta; the log-probabilities ride on the first (or on an empty chunk
    /// when the text is held back).
    fn deltas(&self, index: usize, d: Delta, lp: &[TokenLogprob]) -> Vec<Value> {
        let mut lp = (self.with_logprobs && !lp.is_empty()).then(|| logprobs::chat(lp));
        let mut out = Vec::new();
        if !d.reasoning.is_empty() {
            out.push(self.delta(index, json!({"reasoning_content": d.reasoning}), lp.take()));
        }
        if !d.content.is_empty() {
            out.push(self.delta(index, json!({"content": d.content}), lp.take()));
        }
        let ids = format!("{}-{index}", self.call_ids);
        for c in &d.calls {
            out.push(self.delta(index, tools::tool_call_delta(c, &ids), lp.take()));
        }
        if let Some(lp) = lp {
            out.push(self.delta(index, json!({"content": ""}), Some(lp)));
        }
        out
    }
}

impl ChunkMaker for Chunks {
    fn opening(&mut self, index: usize) -> Option<Value> {
        Some(self.head.chunk(json!([{
            "index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null
        }])))
    }

    fn text(&mut self, index: usize, text: &str, lp: &[TokenLogprob]) -> Vec<Value> {
        let Some(shaper) = self.shapers.get_mut(index) else { return vec![] };
        let d = shaper.push(text);
        self.deltas(index, d, lp)
    }

    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<Value> {
        let Some(shaper) = self.shapers.get_mut(index) else { return vec![] };
        let (d, _) = shaper.finish();
        let calls = shaper.calls_streamed();
        let mut out = self.deltas(index, d, &[]);
        let reason = tools::finish_reason(reason, calls);
        out.push(self.head.chunk(json!([{"index": index, "delta": {}, "logprobs": null, "finish_reason": reason}])));
        out
    }

    fn usage(&mut self, usage: Usage) -> Option<Value> {
        let mut v = self.head.usage(usage)?;
        v["usage"] = chat_usage(usage, &self.shapers, &self.engine);
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use govbox_engine::Prompt;

    fn parse(v: Value) -> Result<Parsed, ApiError> {
        let v = body::parse_value(v.to_string().as_bytes())?;
        Ok(Parsed { req: fields::from_value(&v)?, sampling: fields::from_value(&v)? })
    }

    /// A body read as the handler reads it.
    struct Parsed {
        req: ChatRequest,
        sampling: SamplingFields,
    }

    #[test]
    fn content_parts_and_roles() {
        let r = parse(json!({"model": "m", "messages": [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        ]}))
        .unwrap();
        let m = messages(&r.req).unwrap();
        assert_eq!(m, vec![ChatMessage::new("system", "be brief"), ChatMessage::new("user", "ab")]);
        let r =
            parse(json!({"model": "m", "messages": [{"role": "tool", "content": "x", "tool_call_id": "c1"}]})).unwrap();
        assert_eq!(messages(&r.req).unwrap()[0].tool_call_id.as_deref(), Some("c1"));
        let r = parse(json!({"model": "m", "messages": [{"role": "function", "content": "x"}]})).unwrap();
        assert_eq!(messages(&r.req).unwrap_err().status(), 400);
        let r = parse(json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}));
        assert_eq!(messages(&r.unwrap().req).unwrap_err().status(), 400);
    }

    #[test]
    fn sampling_fields_are_checked() {
        let r = parse(json!({"model": "m", "messages": [], "n": 9})).unwrap();
        let e = r.sampling.to_request(Prompt::Text("x".into()), 16).unwrap_err();
        assert_eq!(e.param(), Some("n"));
        assert_eq!(parse(json!({"model": "m", "messages": [], "n": 8})).unwrap().sampling.choices().unwrap(), 8);
        let r = parse(json!({"model": "m", "messages": [], "stop": "END", "max_completion_tokens": 5,
                              "temperature": 0, "seed": -1}))
        .unwrap();
        let g = r.sampling.to_request(Prompt::Text("x".into()), 16).unwrap();
        assert_eq!((g.max_tokens, g.stop.clone(), g.sampling.temperature), (5, vec!["END".to_string()], 0.0));
        assert_eq!(g.sampling.seed, Some(u64::MAX));
        let r = parse(json!({"model": "m", "messages": [], "stop": ["a", "b"], "temperature": 3})).unwrap();
        assert_eq!(r.sampling.to_request(Prompt::Text("x".into()), 16).unwrap_err().param(), Some("temperature"));
        // A tool without its function is malformed.
        let v = body::parse_value(json!({"model": "m", "messages": [], "tools": [{}]}).to_string().as_bytes()).unwrap();
        assert!(fields::from_value::<AgentFields>(&v).is_err());
        let e = parse(json!({"model": "m", "messages": [], "stop": 5})).err().unwrap();
        assert_eq!(e.to_string(), "'stop' must be a string or an array of strings (got a number)");
    }

    #[test]
    fn logprobs_and_logit_bias_are_checked() {
        let lp = |v: Value| logprobs_wanted(&parse(v).unwrap().req);
        assert_eq!(lp(json!({"model": "m", "messages": []})).unwrap(), None);
        assert_eq!(lp(json!({"model": "m", "messages": [], "logprobs": true})).unwrap(), Some(0));
        assert_eq!(lp(json!({"model": "m", "messages": [], "logprobs": true, "top_logprobs": 20})).unwrap(), Some(20));
        let e = lp(json!({"model": "m", "messages": [], "logprobs": true, "top_logprobs": 21})).unwrap_err();
        assert_eq!(e.param(), Some("top_logprobs"));
        let e = lp(json!({"model": "m", "messages": [], "top_logprobs": 2})).unwrap_err();
        assert_eq!(e.param(), Some("top_logprobs"));
        let bias = |b: Value| {
            let r = parse(json!({"model": "m", "messages": [], "logit_bias": b}))?;
            r.sampling.to_request(Prompt::Text("x".into()), 16)
        };
        assert_eq!(bias(json!({"5": 2.5, "7": -100})).unwrap().sampling.logit_bias, vec![(5, 2.5), (7, -100.0)]);
        assert_eq!(bias(json!({"5": 101})).unwrap_err().param(), Some("logit_bias.5"));
        assert_eq!(bias(json!({"five": 1})).unwrap_err().param(), Some("logit_bias"));
        let e = bias(json!({"5": "high"})).unwrap_err();
        assert_eq!((e.param(), e.code()), (Some("logit_bias.5"), "invalid_type"));
    }

    #[test]
    fn the_issue_s_three_bodies_name_their_field() {
        let e = parse(json!({"model": "m"})).err().unwrap();
        assert_eq!((e.param(), e.code()), (Some("messages"), "missing_required_parameter"));
        let e = parse(json!({"model": "m", "messages": [], "max_tokens": -1})).err().unwrap();
        assert_eq!((e.param(), e.code()), (Some("max_tokens"), "invalid_type"));
        let e = parse(json!({"model": "m", "messages": [], "temperature": "0"})).err().unwrap();
        assert_eq!(e.to_string(), "'temperature' must be a number (got a string)");
        let e = parse(json!({"model": "m", "messages": [{"role": "user", "content": 5}]})).err().unwrap();
        assert_eq!(e.param(), Some("messages[0].content"));
        let r = parse(json!({"model": "m", "messages": [{"role": "user"}, {"role": "robot"}]})).unwrap();
        assert_eq!(messages(&r.req).unwrap_err().param(), Some("messages[1].role"));
    }
}
