//! What chat and completions share: the sampling fields, their checks, admission, and turning the
//! generation's events into one JSON answer or an SSE stream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use govbox_engine::sampler::SamplingParams;
use govbox_engine::{FinishReason, GenerateRequest, PrefixCache, Prompt, Usage};
use govbox_provisioning::ClientRecord;
use serde::Deserialize;
use tokio::time::Instant;

use crate::admission::Asker;
use crate::api::error::ApiError;
use crate::api::record::RequestRecord;
use crate::api::stream::{ChunkMaker, SseBody};
use crate::bridge::{self, GenEvent, Job};
use crate::config::PrefixCacheMode;
use crate::state::{AppState, LoadedModel};

/// OpenAI allows at most four stop sequences.
const MAX_STOPS: usize = 4;
/// Stop sequences longer than this are refused.
const MAX_STOP_LEN: usize = 256;

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    /// One stop string.
    One(String),
    /// Several.
    Many(Vec<String>),
}

/// `stream_options`.
#[derive(Debug, Default, Deserialize)]
pub struct StreamOptions {
    /// Send a last chunk with the usage.
    #[serde(default)]
    pub include_usage: bool,
}

/// The sampling and length fields of chat and completions requests.
#[derive(Debug, Default, Deserialize)]
pub struct SamplingFields {
    /// Most tokens to generate.
    pub max_tokens: Option<u64>,
    /// Newer name of `max_tokens` (chat).
    pub max_completion_tokens: Option<u64>,
    /// 0 to 2; OpenAI's default is 1.
    pub temperature: Option<f32>,
    /// (0, 1].
    pub top_p: Option<f32>,
    /// Seed for reproducible sampling.
    pub seed: Option<i64>,
    /// Stop sequences.
    pub stop: Option<StopSpec>,
    /// -2 to 2.
    pub presence_penalty: Option<f32>,
    /// -2 to 2.
    pub frequency_penalty: Option<f32>,
    /// Choices to generate; only 1 is supported.
    pub n: Option<u32>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Stream options.
    pub stream_options: Option<StreamOptions>,
    /// The end user, for the caller's own abuse tracking. Accepted and never logged.
    pub user: Option<String>,
}

impl SamplingFields {
    /// Checks the fields and builds the engine request for `prompt`.
    pub fn to_request(&self, prompt: Prompt, default_max_tokens: usize) -> Result<GenerateRequest, ApiError> {
        if self.n.is_some_and(|n| n != 1) {
            return Err(ApiError::invalid("n", "only n = 1 is supported: request one choice at a time"));
        }
        let max = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = match max {
            Some(0) => return Err(ApiError::invalid("max_tokens", "max_tokens must be at least 1")),
            Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
            None => default_max_tokens,
        };
        let temperature = self.temperature.unwrap_or(1.0);
        if !(0.0..=2.0).contains(&temperature) {
            return Err(ApiError::invalid("temperature", "temperature must be between 0 and 2"));
        }
        let top_p = self.top_p.unwrap_or(1.0);
        if !(top_p > 0.0 && top_p <= 1.0) {
            return Err(ApiError::invalid("top_p", "top_p must be greater than 0 and at most 1"));
        }
        let penalty = |v: Option<f32>, name: &'static str| match v.unwrap_or(0.0) {
            p if (-2.0..=2.0).contains(&p) => Ok(p),
            _ => Err(ApiError::invalid(name, format!("{name} must be between -2 and 2"))),
        };
        let presence_penalty = penalty(self.presence_penalty, "presence_penalty")?;
        let frequency_penalty = penalty(self.frequency_penalty, "frequency_penalty")?;
        let stop = match &self.stop {
            None => vec![],
            Some(StopSpec::One(s)) => vec![s.clone()],
            Some(StopSpec::Many(v)) => v.clone(),
        };
        if stop.len() > MAX_STOPS {
            return Err(ApiError::invalid("stop", "at most 4 stop sequences are allowed"));
        }
        if stop.iter().any(|s| s.len() > MAX_STOP_LEN) {
            return Err(ApiError::invalid("stop", "a stop sequence may have at most 256 bytes"));
        }
        let sampling = SamplingParams {
            temperature,
            top_p,
            presence_penalty,
            frequency_penalty,
            // The bits of the signed seed, so that every i64 a client sends is a distinct seed.
            seed: self.seed.map(|s| s as u64),
            ..SamplingParams::default()
        };
        // The bridge sets the deadline when it starts the generation, and `start` the cache scope
        // (from `Accepted`); until then the request reuses nothing.
        Ok(GenerateRequest {
            prompt,
            max_tokens,
            sampling,
            stop,
            ignore_eos: false,
            deadline: None,
            prefix_cache: PrefixCache::Off,
            grammar: None,
        })
    }

    /// Whether the streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream && self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// A generation request that passed authentication, authorisation and the field checks.
pub struct Accepted {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// The engine request (its prompt not yet tokenised).
    pub request: GenerateRequest,
    /// The client.
    pub client: ClientRecord,
    /// The request's record.
    pub record: Arc<RequestRecord>,
    /// The request field that holds the prompt (`messages` or `prompt`), for error messages.
    pub prompt_param: &'static str,
    /// The prefix-cache scope, from [`prefix_cache_for`].
    pub prefix_cache: PrefixCache,
}

/// The prefix-cache scope of `client`'s requests under `[serving] prefix_cache`. A client is
/// its name and when it was added, so a later client of the same name starts afresh.
pub fn prefix_cache_for(mode: PrefixCacheMode, client: &ClientRecord) -> PrefixCache {
    match mode {
        PrefixCacheMode::PerClient => {
            PrefixCache::Namespace(format!("client {} added {}", client.name, client.created))
        }
        PrefixCacheMode::Shared => PrefixCache::Shared,
        PrefixCacheMode::Off => PrefixCache::Off,
    }
}

/// The first events of a generation: the text up to the first chunk, and whatever ended it.
pub struct Started {
    /// Events received so far.
    pub events: Vec<GenEvent>,
    /// The rest.
    pub rx: tokio::sync::mpsc::Receiver<GenEvent>,
    /// Prompt length.
    pub prompt_tokens: usize,
    /// The prompt ends inside an open `<think>` block (a reasoning model's template opened it).
    pub opens_thinking: bool,
}

/// Tokenises the prompt, waits for an engine slot and starts generating; returns once the first
/// event is there, so that a failure before any text still gets its own HTTP status.
pub async fn start(state: &Arc<AppState>, acc: Accepted) -> Result<Started, ApiError> {
    let Accepted { model, mut request, client, record, prompt_param, prefix_cache } = acc;
    request.prefix_cache = prefix_cache;
    let secs = state.config.serving.request_deadline_secs;
    let deadline = Instant::from_std(record.start) + Duration::from_secs(secs);
    // Tokenising (and rendering the chat template) is CPU work: off the async threads.
    let engine = model.engine.clone();
    let prompt = std::mem::replace(&mut request.prompt, Prompt::Tokens(vec![]));
    let ids = tokio::task::spawn_blocking(move || engine.prompt_ids(&prompt))
        .await
        .map_err(|e| ApiError::Internal(format!("tokenizer task: {e}")))??;
    let ctx = model.engine.decoder_model().map_or(0, |d| d.config().max_position_embeddings);
    if ids.is_empty() {
        return Err(ApiError::invalid(prompt_param, "the prompt is empty"));
    }
    if ids.len() >= ctx {
        return Err(ApiError::invalid(
            prompt_param,
            format!("the prompt has {} tokens; model '{}' has a context of {ctx}", ids.len(), model.name),
        ));
    }
    let prompt_tokens = ids.len();
    let opens_thinking = govbox_engine::reasoning::prompt_opens_thinking(model.engine.tokenizer(), &ids);
    record.set_tokens(prompt_tokens, None);
    // Sizes and settings only: the prompt and the stop strings are content.
    log::debug!(
        "request {}: model {} prompt_tokens={prompt_tokens} max_tokens={} temperature={} top_p={} stops={}",
        record.id,
        model.name,
        request.max_tokens,
        request.sampling.temperature,
        request.sampling.top_p,
        request.stop.len()
    );
    request.prompt = Prompt::Tokens(ids);
    // The most it can use: the prompt and max_tokens, which the context bounds. Reserved before
    // it waits for a slot; given back whole if it never gets one.
    let most = prompt_tokens + request.max_tokens.min(ctx - prompt_tokens);
    let budget = state.quotas.reserve(&client, most as u64)?;
    let slot = state.admission.admit(&Asker::of(&client), &state.metrics, deadline, secs).await?;
    let job = Job {
        engine: model.engine.clone(),
        request,
        prompt_tokens,
        budget: Some(budget),
        deadline,
        deadline_secs: secs,
        slot,
        record: record.clone(),
    };
    let mut rx = bridge::start(state.clone(), job);
    let first = rx.recv().await.ok_or_else(|| ApiError::Internal("generation ended without an answer".into()))?;
    if let GenEvent::Failed(e) = first {
        return Err(e);
    }
    Ok(Started { events: vec![first], rx, prompt_tokens, opens_thinking })
}

/// The whole answer of a non-streamed request.
pub struct Collected {
    /// The text.
    pub text: String,
    /// Why it ended.
    pub finish_reason: FinishReason,
    /// Token counts.
    pub usage: Usage,
}

/// Waits for the whole answer.
pub async fn collect(mut started: Started) -> Result<Collected, ApiError> {
    let mut text = String::new();
    let mut events = std::mem::take(&mut started.events).into_iter();
    loop {
        let ev = match events.next() {
            Some(ev) => ev,
            None => match started.rx.recv().await {
                Some(ev) => ev,
                None => return Err(ApiError::Internal("generation ended without an answer".into())),
            },
        };
        match ev {
            GenEvent::Text(t) => text.push_str(&t),
            GenEvent::Done { finish_reason, usage } => return Ok(Collected { text, finish_reason, usage }),
            GenEvent::Failed(e) => return Err(e),
        }
    }
}

/// The SSE response of a streamed request.
pub fn stream_response(started: Started, maker: impl ChunkMaker) -> Response {
    let body = SseBody::new(started.events, started.rx, maker);
    let mut resp = Body::new(body).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// What every chunk of one streamed answer repeats: id, object, creation time and model, and
/// whether the stream ends with a usage chunk.
pub struct ChunkHead {
    /// `chatcmpl-...` or `cmpl-...`.
    pub id: String,
    /// `chat.completion.chunk` or `text_completion`.
    pub object: &'static str,
    /// Unix seconds.
    pub created: i64,
    /// The model name.
    pub model: String,
    /// `stream_options.include_usage`.
    pub include_usage: bool,
}

impl ChunkHead {
    /// A chunk carrying `choices` (and `"usage": null` when usage is asked for, as OpenAI sends).
    pub fn chunk(&self, choices: serde_json::Value) -> serde_json::Value {
        let mut v = serde_json::json!({
            "id": self.id,
            "object": self.object,
            "created": self.created,
            "model": self.model,
            "system_fingerprint": null,
            "choices": choices,
        });
        if self.include_usage {
            v["usage"] = serde_json::Value::Null;
        }
        v
    }

    /// The closing usage chunk, when asked for.
    pub fn usage(&self, usage: Usage) -> Option<serde_json::Value> {
        self.include_usage.then(|| {
            let mut v = self.chunk(serde_json::json!([]));
            v["usage"] = usage_json(usage);
            v
        })
    }
}

/// `usage` as OpenAI writes it. `cached_tokens` counts only the caller's own reuse (or every
/// client's, under `prefix_cache = "shared"`).
pub fn usage_json(u: Usage) -> serde_json::Value {
    serde_json::json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    })
}

/// Unix seconds now.
pub fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}
