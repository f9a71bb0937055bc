//! What chat and completions share: the sampling fields, their checks, admission, and turning the
//! generation's events into one JSON answer or an SSE stream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use govbox_engine::logprobs::TokenLogprob;
use govbox_engine::sampler::SamplingParams;
use govbox_engine::{
    Engine, EngineError, Event, FinishReason, GenerateRequest, PrefixCache, Prepared, Prompt, SeqGuard, Usage,
};
use govbox_provisioning::ClientRecord;
use serde::Deserialize;
use tokio::time::Instant;

use crate::admission::Asker;
use crate::api::choices::{Choices, LiveChoice, add_usage};
use crate::api::error::ApiError;
use crate::api::record::RequestRecord;
use crate::api::stream::{ChunkMaker, SseBody};
use crate::config::PrefixCacheMode;
use crate::models::LoadedModel;
use crate::state::AppState;

/// OpenAI allows at most four stop sequences.
const MAX_STOPS: usize = 4;
/// Stop sequences longer than this are refused.
const MAX_STOP_LEN: usize = 256;
/// Most choices per prompt (`n`), and most choices per request.
pub const MAX_CHOICES: usize = 8;
/// Most `logit_bias` entries (OpenAI's own limit is 300).
const MAX_LOGIT_BIAS: usize = 300;

/// `stop`: one string or a list.
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
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
    /// Choices to generate per prompt, 1 to [`MAX_CHOICES`].
    pub n: Option<u32>,
    /// Token id (as a string) → bias added to its logit, -100 to 100.
    pub logit_bias: Option<std::collections::BTreeMap<String, f32>>,
    /// Stream the answer as server-sent events.
    #[serde(default)]
    pub stream: bool,
    /// Stream options.
    pub stream_options: Option<StreamOptions>,
    /// The end user, for the caller's own abuse tracking: written to the audit entry as a keyed
    /// hash, never logged.
    pub user: Option<String>,
}

impl SamplingFields {
    /// Checks the fields and builds the engine request for `prompt`.
    pub fn to_request(&self, prompt: Prompt, default_max_tokens: usize) -> Result<GenerateRequest, ApiError> {
        self.choices()?;
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
            logit_bias: self.logit_bias()?,
            ..SamplingParams::default()
        };
        // `start` sets the deadline and the cache scope (from `Accepted`); until then the
        // request reuses nothing.
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

    /// `n`, checked.
    pub fn choices(&self) -> Result<usize, ApiError> {
        match self.n.unwrap_or(1) as usize {
            n @ 1..=MAX_CHOICES => Ok(n),
            _ => Err(ApiError::invalid("n", format!("n must be between 1 and {MAX_CHOICES}"))),
        }
    }

    /// `logit_bias`, checked: keys are token ids, values between -100 and 100. Ids beyond the
    /// model's vocabulary are refused once the model is known (`start`).
    fn logit_bias(&self) -> Result<Vec<(u32, f32)>, ApiError> {
        let Some(map) = &self.logit_bias else { return Ok(vec![]) };
        if map.len() > MAX_LOGIT_BIAS {
            return Err(ApiError::invalid("logit_bias", format!("at most {MAX_LOGIT_BIAS} tokens may be biased")));
        }
        map.iter()
            .map(|(k, &v)| {
                let id = k.parse::<u32>().map_err(|_| {
                    ApiError::invalid("logit_bias", "logit_bias keys must be token ids (whole numbers, as strings)")
                })?;
                if !(-100.0..=100.0).contains(&v) {
                    return Err(ApiError::invalid_at(
                        format!("logit_bias.{id}"),
                        "a logit bias must be between -100 and 100",
                    ));
                }
                Ok((id, v))
            })
            .collect()
    }

    /// Whether the streamed answer ends with a usage chunk.
    pub fn include_usage(&self) -> bool {
        self.stream && self.stream_options.as_ref().is_some_and(|o| o.include_usage)
    }
}

/// Refuses `logit_bias` ids beyond `model`'s vocabulary (before the request is audited).
pub fn check_logit_bias(model: &LoadedModel, request: &GenerateRequest) -> Result<(), ApiError> {
    let vocab = model.engine.decoder_model().map_or(0, |d| d.config().vocab_size);
    match request.sampling.logit_bias.iter().find(|(id, _)| *id as usize >= vocab) {
        Some((id, _)) => Err(ApiError::invalid(
            "logit_bias",
            format!("token id {id} is outside model '{}''s vocabulary of {vocab}", model.name),
        )),
        None => Ok(()),
    }
}

/// A generation request that passed authentication, authorisation and the field checks.
pub struct Accepted {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// The engine request (its prompt not yet tokenised): the first prompt's, and the settings
    /// every choice shares.
    pub request: GenerateRequest,
    /// Further prompts (a completions prompt list), each answered like the first.
    pub more_prompts: Vec<Prompt>,
    /// Choices per prompt (`n`); choice `p * n + j` is prompt `p`'s `j`-th.
    pub n: usize,
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

/// The first events of a generation: the text up to the first chunk of each choice, and
/// whatever ended it; events carry their choice's index.
pub struct Started {
    /// Events received so far.
    pub events: Vec<(usize, Event)>,
    /// The rest, from every choice.
    pub rest: Choices,
    /// Prompt tokens (of every prompt, counted once).
    pub prompt_tokens: usize,
    /// How many choices there are.
    pub choices: usize,
    /// The prompts' token ids, for `echo`.
    pub prompt_ids: Vec<Vec<u32>>,
    /// The prompt ends inside an open `<think>` block (a reasoning model's template opened it).
    pub opens_thinking: bool,
}

/// Prepares every choice of every prompt (tokenising, rendering the chat template, checking
/// the prompt, compiling the grammar): each prompt is tokenised once, by its first choice, and
/// the others take its ids. Seeded choices differ from each other, and each is reproducible.
fn prepare_all(
    engine: &Engine,
    request: &GenerateRequest,
    prompts: Vec<Prompt>,
    n: usize,
) -> Result<Vec<Vec<Prepared>>, EngineError> {
    let choice = |prompt: Prompt, j: usize| {
        let mut req = request.clone();
        req.prompt = prompt;
        req.sampling.seed = request.sampling.seed.map(|s| s.wrapping_add(j as u64));
        engine.prepare(req)
    };
    prompts
        .into_iter()
        .map(|prompt| {
            let first = choice(prompt, 0)?;
            let ids = first.prompt_ids().to_vec();
            let mut group = vec![first];
            for j in 1..n {
                group.push(choice(Prompt::Tokens(ids.clone()), j)?);
            }
            Ok(group)
        })
        .collect()
}

/// Tokenises the prompts, waits for an engine slot and starts generating; returns once each
/// choice's first event is there, so that a failure before any text still gets its own HTTP
/// status.
///
/// The `n` choices of a prompt share its KV: the first choice starts alone, and the others
/// start once it has produced its first event, when its prompt's full blocks are in the prefix
/// cache, so they hold those blocks rather than computing them again (a request whose client
/// has the cache off gets a scope of its own for this). All the choices then decode in the same
/// batch and share the request's one engine slot, which the scheduler lets go of when the last
/// of them has stopped.
pub async fn start(state: &Arc<AppState>, acc: Accepted) -> Result<Started, ApiError> {
    let Accepted { model, mut request, more_prompts, n, client, record, prompt_param, mut prefix_cache } = acc;
    if n > 1 && matches!(prefix_cache, PrefixCache::Off) {
        prefix_cache = PrefixCache::Namespace(format!("request {}", record.id));
    }
    request.prefix_cache = prefix_cache;
    let secs = state.config.serving.request_deadline_secs;
    let deadline = Instant::from_std(record.start) + Duration::from_secs(secs);
    // The scheduler ends the generation there, wherever it is.
    request.deadline = Some(deadline.into_std());
    // Tokenising, rendering the chat template and compiling a grammar are CPU work: off the
    // async threads.
    let first = std::mem::replace(&mut request.prompt, Prompt::Tokens(vec![]));
    let prompts: Vec<Prompt> = std::iter::once(first).chain(more_prompts).collect();
    let (engine, req) = (model.engine.clone(), request.clone());
    let prepared = tokio::task::spawn_blocking(move || prepare_all(&engine, &req, prompts, n))
        .await
        .map_err(|e| ApiError::Internal(format!("request preparation task: {e}")))?
        .map_err(|e| match e {
            EngineError::InvalidPrompt(source) => {
                ApiError::InvalidPrompt { param: prompt_param, model: model.name.clone(), source }
            }
            e => ApiError::Engine(e),
        })?;
    let all_ids: Vec<Vec<u32>> = prepared.iter().map(|g| g[0].prompt_ids().to_vec()).collect();
    let ctx = model.engine.decoder_model().map_or(0, |d| d.config().max_position_embeddings);
    let prompt_tokens: usize = all_ids.iter().map(Vec::len).sum();
    // A chat request has one prompt; whether its template left a `<think>` block open.
    let opens_thinking = govbox_engine::reasoning::prompt_opens_thinking(model.engine.tokenizer(), &all_ids[0]);
    record.set_tokens(prompt_tokens, None);
    // Sizes and settings only: the prompt and the stop strings are content.
    log::debug!(
        "request {}: model {} prompt_tokens={prompt_tokens} prompts={} n={n} max_tokens={} temperature={} top_p={} \
         stops={} logprobs={:?} logit_bias={}",
        record.id,
        model.name,
        all_ids.len(),
        request.max_tokens,
        request.sampling.temperature,
        request.sampling.top_p,
        request.stop.len(),
        request.sampling.logprobs,
        request.sampling.logit_bias.len(),
    );
    // The most each choice can use: its prompt (billed with the first choice) and max_tokens,
    // which the context bounds. Reserved before it waits for a slot; given back whole if it
    // never gets one.
    let mut budgets = Vec::with_capacity(all_ids.len() * n);
    for ids in &all_ids {
        for j in 0..n {
            let most = if j == 0 { ids.len() } else { 0 } + request.max_tokens.min(ctx - ids.len());
            budgets.push(state.quotas.reserve(&client, most as u64)?);
        }
    }
    let slot = Arc::new(state.admission.admit(&Asker::of(&client), &state.metrics, deadline, secs).await?);
    let choices = all_ids.len() * n;
    let mut events = Vec::new();
    let mut running = Vec::with_capacity(choices);
    let mut budgets = budgets.into_iter();
    for (p, group) in prepared.into_iter().enumerate() {
        let mut waiting = Vec::with_capacity(n);
        for (j, prep) in group.into_iter().enumerate() {
            let generation = model.engine.start(prep.with_guard(SeqGuard::new(slot.clone())))?;
            let (engine, st, rec) = (model.engine.clone(), state.clone(), record.clone());
            waiting.push(LiveChoice::new(p * n + j, generation, engine, st, rec, budgets.next(), j == 0));
            // The first choice's first event means its prompt's KV is computed (and cached);
            // the others then start and reuse it.
            if j == 0 || j == n - 1 {
                for mut c in waiting.drain(..) {
                    match c.next().await {
                        Some(Event::Error(e)) => return Err(ApiError::Engine(e)),
                        Some(ev) => events.push((c.index, ev)),
                        None => return Err(ApiError::Engine(EngineError::SchedulerStopped)),
                    }
                    running.push(c);
                }
            }
        }
    }
    events.sort_by_key(|(i, _)| *i);
    let rest = Choices::Running(running);
    Ok(Started { events, rest, prompt_tokens, choices, prompt_ids: all_ids, opens_thinking })
}

/// One choice of a non-streamed answer.
#[derive(Default)]
pub struct Choice {
    /// The text.
    pub text: String,
    /// Log-probabilities of its tokens (when asked for).
    pub logprobs: Vec<TokenLogprob>,
    /// Why it ended.
    pub finish_reason: Option<FinishReason>,
}

/// The whole answer of a non-streamed request.
pub struct Collected {
    /// The choices, by index.
    pub choices: Vec<Choice>,
    /// Token counts of all choices together.
    pub usage: Usage,
    /// The prompts' token ids.
    pub prompt_ids: Vec<Vec<u32>>,
}

/// Waits for every choice's whole answer.
pub async fn collect(mut started: Started) -> Result<Collected, ApiError> {
    let mut choices: Vec<Choice> = (0..started.choices).map(|_| Choice::default()).collect();
    let mut usage = Usage::default();
    let mut left = started.choices;
    let mut events = std::mem::take(&mut started.events).into_iter();
    while left > 0 {
        let (i, ev) = match events.next() {
            Some(ev) => ev,
            None => match started.rest.next().await {
                Some(ev) => ev,
                None => return Err(ApiError::Engine(EngineError::SchedulerStopped)),
            },
        };
        let c = &mut choices[i];
        match ev {
            Event::Text(t) => c.text.push_str(&t),
            Event::Logprobs(l) => c.logprobs.extend(l),
            Event::Done { finish_reason, usage: u } => {
                c.finish_reason = Some(finish_reason);
                add_usage(&mut usage, u);
                left -= 1;
            }
            Event::Error(e) => return Err(ApiError::Engine(e)),
        }
    }
    Ok(Collected { choices, usage, prompt_ids: started.prompt_ids })
}

/// The SSE response of a streamed request.
pub fn stream_response(started: Started, maker: impl ChunkMaker) -> Response {
    let body = SseBody::new(started.events, started.rest, started.choices, maker);
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
