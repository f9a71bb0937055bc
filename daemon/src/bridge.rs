//! The bridge between the engine's blocking generation loop and the async HTTP side.
//!
//! A generation runs [`Engine::generate`] on a blocking thread; its event callback forwards each
//! event into a bounded tokio channel. The callback answers "stop" when the channel's receiver is
//! gone (the HTTP response was dropped because the client disconnected), when a send cannot
//! complete before the deadline (a client that stopped reading), or when the deadline has passed.
//! The engine then stops at that token and frees the request's KV blocks. The deadline also goes
//! to the engine with the request, so a request that waits without tokens (queued for KV blocks,
//! or behind other requests' prefill) is cancelled when it passes too. The engine slot, and
//! with it the `govbox_active_generations` gauge, is released only when the blocking thread
//! returns, that is when generation has really stopped; the choices of an `n > 1` request share
//! one slot, released when the last of them stops.

use std::sync::Arc;

use govbox_engine::logprobs::TokenLogprob;
use govbox_engine::{Engine, EngineError, Event, FinishReason, GenerateRequest, Usage};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::admission::Slot;
use crate::api::error::ApiError;
use crate::api::record::RequestRecord;
use crate::quota::Reservation;
use crate::state::AppState;

/// What the HTTP side receives.
#[derive(Debug)]
pub enum GenEvent {
    /// New text.
    Text(String),
    /// Log-probabilities of the tokens behind the next text (when asked for).
    Logprobs(Vec<TokenLogprob>),
    /// The end.
    Done {
        /// Why.
        finish_reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
    /// The generation failed or ran out of time; nothing follows.
    Failed(ApiError),
}

/// One generation to run.
pub struct Job {
    /// The model.
    pub engine: Arc<Engine>,
    /// The request, with its prompt already as token ids.
    pub request: GenerateRequest,
    /// Prompt length, for accounting.
    pub prompt_tokens: usize,
    /// The tokens reserved against the client's budget; settled with what the answer used.
    pub budget: Option<Reservation>,
    /// When the answer must be complete.
    pub deadline: Instant,
    /// The deadline in seconds, for the message.
    pub deadline_secs: u64,
    /// The engine slot, released when generation stops (when the last choice stops, for a
    /// request with several).
    pub slot: Arc<Slot>,
    /// Whether this generation's usage counts its prompt. Only the first choice of a prompt
    /// does: the others reuse its KV, and the prompt is billed once.
    pub bill_prompt: bool,
    /// The request's record.
    pub record: Arc<RequestRecord>,
}

/// Starts `job` and returns its events.
pub fn start(state: Arc<AppState>, job: Job) -> mpsc::Receiver<GenEvent> {
    let (tx, rx) = mpsc::channel(32);
    let handle = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || run(&state, job, &tx, &handle));
    rx
}

/// Counts what the answer used, and settles its budget reservation with it (once).
fn charge(state: &AppState, budget: &mut Option<Reservation>, record: &RequestRecord, usage: Usage) {
    state.metrics.tokens_generated.inc_by(usage.completion_tokens as u64);
    state.metrics.prompt_tokens.inc_by(usage.prompt_tokens as u64);
    if let Some(b) = budget.take() {
        b.settle((usage.prompt_tokens + usage.completion_tokens) as u64);
    }
    record.add_completion_tokens(usage.completion_tokens);
}

/// A follower choice's usage: its prompt was billed with the first choice.
fn billed(usage: Usage, bill_prompt: bool) -> Usage {
    if bill_prompt { usage } else { Usage { prompt_tokens: 0, cached_tokens: 0, ..usage } }
}

fn run(state: &AppState, mut job: Job, tx: &mpsc::Sender<GenEvent>, rt: &tokio::runtime::Handle) {
    job.request.deadline = Some(job.deadline.into_std());
    enum Stop {
        No,
        ClientGone,
        Deadline,
    }
    let mut stop = Stop::No;
    let mut charged = false;
    let mut first_text = true;
    // Sends with the deadline as the limit: a client that stops reading cannot hold the slot.
    let send = |ev: GenEvent| -> Result<(), Stop> {
        match rt.block_on(tokio::time::timeout_at(job.deadline, tx.send(ev))) {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::ClientGone),
            Err(_) => Err(Stop::Deadline),
        }
    };
    let result = job.engine.generate(&job.request, &mut |event| {
        if Instant::now() >= job.deadline {
            stop = Stop::Deadline;
            return false;
        }
        let ev = match event {
            Event::Text(t) => {
                if first_text {
                    first_text = false;
                    state.metrics.time_to_first_token.observe(job.record.start.elapsed().as_secs_f64());
                }
                GenEvent::Text(t)
            }
            Event::Logprobs(l) => GenEvent::Logprobs(l),
            Event::Done { finish_reason, usage } => {
                let usage = billed(usage, job.bill_prompt);
                // Charged before the answer ends, so the client's next request sees the spend.
                charge(state, &mut job.budget, &job.record, usage);
                charged = true;
                GenEvent::Done { finish_reason, usage }
            }
            // `generate` reports failures through its result, not as an event.
            Event::Error(_) => return false,
        };
        match send(ev) {
            Ok(()) => true,
            Err(s) => {
                stop = s;
                false
            }
        }
    });
    // The engine's own deadline (a request that waited without tokens) ends like the callback's.
    let result = match result {
        Err(EngineError::Deadline { prompt_tokens, completion_tokens }) => {
            stop = Stop::Deadline;
            Ok(Usage { prompt_tokens, completion_tokens, ..Usage::default() })
        }
        r => r,
    };
    match result {
        Ok(usage) => {
            let usage = billed(usage, job.bill_prompt);
            if !charged {
                charge(state, &mut job.budget, &job.record, usage);
            }
            match stop {
                Stop::No => {}
                Stop::ClientGone => {
                    state.metrics.cancelled.inc();
                    job.record.set_outcome("cancelled");
                }
                Stop::Deadline => {
                    state.metrics.cancelled.inc();
                    job.record.set_outcome("deadline");
                    let _ = tx.try_send(GenEvent::Failed(ApiError::DeadlineExceeded { secs: job.deadline_secs }));
                }
            }
        }
        Err(e) => {
            job.record.set_tokens(job.prompt_tokens, None);
            job.record.set_outcome(e.code());
            let _ = tx.try_send(GenEvent::Failed(ApiError::Engine(e)));
        }
    }
    // The slot is released here, after generation has stopped; an engine failure used nothing
    // that is counted, so an unsettled reservation goes back whole.
    drop(job);
}
