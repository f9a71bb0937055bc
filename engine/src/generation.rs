//! A generation as a stream of events.
//!
//! The scheduler thread owns each sequence's [`Output`]: its detokeniser, stop matcher, pending
//! log-probabilities, token counts and deadline. It turns each sampled token into [`Event`]s and
//! sends them into a bounded channel, one per request, whose receiving end is the caller's
//! [`Generation`]. A caller that reads slowly pauses its own sequence (its events wait in the
//! sequence's outbox, and it takes no part in the next forward passes), never the batch.
//! Dropping the `Generation` cancels the sequence: the scheduler frees its KV blocks at its next
//! step. The channel is tokio's, used from the scheduler with `try_send` only, so the engine
//! needs no async runtime; an async caller awaits [`Generation::next`], a blocking one calls
//! [`Generation::blocking_next`].

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::sync::mpsc;

use crate::constraint::Constraint;
use crate::engine::GenerateRequest;
use crate::logprobs::{Alternative, IdLogprobs, Pending, TokenLogprob};
use crate::scheduler::Cmd;
use crate::tokenizer::{IncrementalDecoder, Tokenizer};
use crate::{EngineError, Result};

/// Events a request's channel holds. A reader that falls this far behind pauses its sequence.
const EVENTS: usize = 32;

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// EOS or a stop string.
    Stop,
    /// `max_tokens` or the context window.
    Length,
    /// The daemon's content-safety filter stopped the answer (the engine never ends so itself).
    ContentFilter,
}

impl FinishReason {
    /// The OpenAI name.
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
            FinishReason::ContentFilter => "content_filter",
        }
    }
}

/// Token counts of a request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub prompt_tokens: usize,
    /// Generated tokens.
    pub completion_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache (counted at the request's first
    /// admission; always a multiple of the block size, and less than `prompt_tokens`).
    pub cached_tokens: usize,
}

/// What a generation stream carries. [`Event::Done`] and [`Event::Error`] are the last.
#[derive(Debug)]
pub enum Event {
    /// New text: always whole UTF-8 characters, never part of a stop string.
    Text(String),
    /// Log-probabilities of generated tokens (only when the request's
    /// [`SamplingParams::logprobs`](crate::sampler::SamplingParams::logprobs) asks for them),
    /// sent just before the [`Event::Text`] their tokens produced. Tokens wholly inside a stop
    /// string, and the EOS token, have none.
    Logprobs(Vec<TokenLogprob>),
    /// The end, with the reason and token counts. The request's KV blocks are already freed.
    Done {
        /// Why it ended.
        finish_reason: FinishReason,
        /// Token counts.
        usage: Usage,
    },
    /// Generation failed or was cut off ([`EngineError::DeadlineExceeded`]); its KV blocks are
    /// already freed.
    Error(EngineError),
}

/// Something the caller keeps alive for exactly as long as its sequence runs: the scheduler
/// drops it when the sequence ends and its KV blocks are freed, however it ends (the daemon's
/// admission slot, so that a slot is never held by a reader that stopped reading).
#[derive(Clone)]
pub struct SeqGuard(#[allow(dead_code)] Arc<dyn std::any::Any + Send + Sync>);

impl SeqGuard {
    /// A guard holding `v`.
    pub fn new<T: Send + Sync + 'static>(v: Arc<T>) -> Self {
        Self(v)
    }
}

impl std::fmt::Debug for SeqGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeqGuard")
    }
}

/// A request checked and ready to queue: its prompt as token ids, its grammar compiled. Made
/// by [`Engine::prepare`](crate::Engine::prepare) (CPU work: tokenising, rendering a chat
/// template, compiling a grammar) and queued by [`Engine::start`](crate::Engine::start), which
/// only hands it to the scheduler.
#[derive(Debug)]
pub struct Prepared {
    pub(crate) request: GenerateRequest,
    pub(crate) ids: Vec<u32>,
    pub(crate) constraint: Option<Constraint>,
    /// Most tokens to generate: `max_tokens`, within the context.
    pub(crate) budget: usize,
    pub(crate) guard: Option<SeqGuard>,
}

impl Prepared {
    /// The prompt's token ids, as the model will read them.
    pub fn prompt_ids(&self) -> &[u32] {
        &self.ids
    }

    /// Keeps `guard` alive until the sequence ends.
    pub fn with_guard(mut self, guard: SeqGuard) -> Self {
        self.guard = Some(guard);
        self
    }
}

/// What the scheduler and a [`Generation`] share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// Set by the caller to end the sequence.
    cancel: AtomicBool,
    /// Tokens generated so far.
    completion: AtomicUsize,
    /// Prompt tokens taken from the prefix cache at the first admission.
    cached: AtomicUsize,
    /// The deadline passed: text still in the channel is not handed out, so that tokens the
    /// scheduler made while the caller was busy do not carry the request past its deadline.
    expired: AtomicBool,
}

/// The caller's end of one running request: its events, in order, then nothing. Dropping it
/// cancels the request; the scheduler frees its KV blocks at its next step.
#[derive(Debug)]
pub struct Generation {
    rx: mpsc::Receiver<Event>,
    shared: Arc<Shared>,
    /// Wakes the scheduler when the request is cancelled.
    wake: std::sync::mpsc::Sender<Cmd>,
    prompt_tokens: usize,
    /// The last event has been handed out.
    ended: bool,
}

impl Generation {
    /// The next event, or `None` after the last one.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`next`](Self::next) for hand-written futures and bodies.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        while !self.ended {
            let Poll::Ready(ev) = self.rx.poll_recv(cx) else { return Poll::Pending };
            if let Some(ev) = self.take(ev) {
                return Poll::Ready(Some(ev));
            }
        }
        Poll::Ready(None)
    }

    /// [`next`](Self::next) for a caller outside any async runtime (the CLI, tests). It must
    /// not be called on an async runtime's thread (tokio refuses to block one).
    pub fn blocking_next(&mut self) -> Option<Event> {
        while !self.ended {
            let ev = self.rx.blocking_recv();
            if let Some(ev) = self.take(ev) {
                return Some(ev);
            }
        }
        None
    }

    /// What to hand out for `ev`, the channel's next item (`None`: skip it).
    fn take(&mut self, ev: Option<Event>) -> Option<Event> {
        match ev {
            Some(Event::Text(_) | Event::Logprobs(_)) if self.shared.expired.load(Ordering::Acquire) => None,
            Some(ev) => {
                self.ended = matches!(ev, Event::Done { .. } | Event::Error(_));
                Some(ev)
            }
            // The scheduler let go of the sequence without a last event: it stopped.
            None => {
                self.ended = true;
                Some(Event::Error(EngineError::SchedulerStopped))
            }
        }
    }

    /// The token counts so far (the final ones come with [`Event::Done`]).
    pub fn usage(&self) -> Usage {
        Usage {
            prompt_tokens: self.prompt_tokens,
            completion_tokens: self.shared.completion.load(Ordering::Relaxed),
            cached_tokens: self.shared.cached.load(Ordering::Relaxed),
        }
    }

    /// Whether the last event has been handed out.
    pub fn ended(&self) -> bool {
        self.ended
    }

    fn cancel(&mut self) {
        if !self.ended {
            self.shared.cancel.store(true, Ordering::Relaxed);
            let _ = self.wake.send(Cmd::Wake);
        }
    }

    /// Cancels the request and waits until the scheduler has freed its blocks (for blocking
    /// callers that check the KV pool next).
    pub fn cancel_and_wait(mut self) {
        self.cancel();
        // The scheduler drops its sender once the sequence is gone; events still under way
        // are dropped here.
        if !self.ended {
            while self.rx.blocking_recv().is_some() {}
        }
        self.ended = true;
    }
}

impl Drop for Generation {
    fn drop(&mut self) {
        self.cancel();
    }
}

/// A token's log-probabilities with the tokens as text.
pub(crate) fn as_text(tok: &Tokenizer, lp: &IdLogprobs) -> Result<TokenLogprob> {
    let alt = |id: u32, logprob: f32| -> Result<Alternative> {
        Ok(Alternative { token: tok.decode(&[id], false)?, logprob })
    };
    Ok(TokenLogprob {
        chosen: alt(lp.id, lp.logprob)?,
        top: lp.top.iter().map(|&(id, l)| alt(id, l)).collect::<Result<_>>()?,
    })
}

/// The scheduler's side of one request: it turns tokens into events and holds them until the
/// channel has room.
pub(crate) struct Output {
    tx: mpsc::Sender<Event>,
    shared: Arc<Shared>,
    tok: Arc<Tokenizer>,
    decoder: IncrementalDecoder<Arc<Tokenizer>>,
    stops: StopMatcher,
    logprobs: Option<Pending>,
    usage: Usage,
    admitted: bool,
    /// Most tokens to generate.
    pub(crate) budget: usize,
    deadline: Option<Instant>,
    /// Events the channel had no room for yet.
    outbox: VecDeque<Event>,
    guard: Option<SeqGuard>,
}

impl Output {
    /// A request's output and the caller's end of it.
    pub(crate) fn new(p: &mut Prepared, tok: Arc<Tokenizer>, wake: std::sync::mpsc::Sender<Cmd>) -> (Self, Generation) {
        let (tx, rx) = mpsc::channel(EVENTS);
        let shared = Arc::new(Shared::default());
        let usage = Usage { prompt_tokens: p.ids.len(), ..Usage::default() };
        let generation = Generation { rx, shared: shared.clone(), wake, prompt_tokens: p.ids.len(), ended: false };
        let out = Self {
            tx,
            shared,
            decoder: IncrementalDecoder::new(tok.clone()),
            tok,
            stops: StopMatcher::new(&p.request.stop),
            logprobs: p.request.sampling.logprobs.map(|_| Pending::default()),
            usage,
            admitted: false,
            budget: p.budget,
            deadline: p.request.deadline,
            outbox: VecDeque::new(),
            guard: p.guard.take(),
        };
        (out, generation)
    }

    /// The caller cancelled or went away.
    pub(crate) fn gone(&self) -> bool {
        self.shared.cancel.load(Ordering::Relaxed) || self.tx.is_closed()
    }

    /// The request's deadline has passed.
    pub(crate) fn past_deadline(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|d| d <= now)
    }

    /// Sends what the channel has room for; true while events still wait (the reader is behind
    /// and the sequence should pause).
    pub(crate) fn held(&mut self) -> bool {
        while let Some(ev) = self.outbox.pop_front() {
            match self.tx.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => {
                    self.outbox.push_front(ev);
                    return true;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => self.outbox.clear(),
            }
        }
        false
    }

    /// The sequence was admitted with `cached` prompt tokens from the prefix cache (the first
    /// admission counts; a preempted sequence is admitted again).
    pub(crate) fn admitted(&mut self, cached: usize) {
        if !self.admitted {
            self.admitted = true;
            self.usage.cached_tokens = cached;
            self.shared.cached.store(cached, Ordering::Relaxed);
        }
    }

    /// Takes the sampled token `id`; returns why the sequence ends, when it does.
    pub(crate) fn token(&mut self, id: u32, lp: Option<IdLogprobs>, eos: bool) -> Result<Option<FinishReason>> {
        self.usage.completion_tokens += 1;
        self.shared.completion.store(self.usage.completion_tokens, Ordering::Relaxed);
        if eos {
            return Ok(Some(FinishReason::Stop));
        }
        let piece = self.decoder.push(id)?;
        if let (Some(p), Some(lp)) = (self.logprobs.as_mut(), lp) {
            p.push(as_text(&self.tok, &lp)?, piece.len());
        }
        let (emit, hit) = self.stops.push(&piece);
        let entries = match self.logprobs.as_mut() {
            Some(p) if hit => p.cut(emit.len()),
            Some(p) => p.emitted(emit.len()),
            None => vec![],
        };
        if !entries.is_empty() {
            self.outbox.push_back(Event::Logprobs(entries));
        }
        if !emit.is_empty() {
            self.outbox.push_back(Event::Text(emit));
        }
        if hit {
            return Ok(Some(FinishReason::Stop));
        }
        Ok((self.usage.completion_tokens >= self.budget).then_some(FinishReason::Length))
    }

    /// Ends the answer: the text held back, then [`Event::Done`]. Called once the blocks are freed.
    pub(crate) fn finish(&mut self, reason: FinishReason) {
        let rest = if reason == FinishReason::Length {
            match self.decoder.finish() {
                Ok(rest) => self.stops.push(&rest).0 + &self.stops.flush(),
                Err(e) => return self.fail(e),
            }
        } else {
            // After EOS, text held back as a possible start of a stop string is the answer's
            // end (after a stop string, nothing is held back).
            self.stops.flush()
        };
        // Whatever is still waiting belongs to the tail (or to text a stop string held back).
        if let Some(entries) = self.logprobs.as_mut().map(Pending::rest).filter(|e| !e.is_empty()) {
            self.outbox.push_back(Event::Logprobs(entries));
        }
        if !rest.is_empty() {
            self.outbox.push_back(Event::Text(rest));
        }
        self.outbox.push_back(Event::Done { finish_reason: reason, usage: self.usage });
        self.guard = None;
    }

    /// Ends the answer with `e`, after the events already made. Called once the blocks are freed.
    pub(crate) fn fail(&mut self, e: EngineError) {
        self.outbox.push_back(Event::Error(e));
        self.guard = None;
    }

    /// Ends the answer because its deadline passed: text not yet handed out is dropped.
    pub(crate) fn expire(&mut self) {
        self.shared.expired.store(true, Ordering::Release);
        self.outbox.clear();
        let Usage { prompt_tokens, completion_tokens, .. } = self.usage;
        self.fail(EngineError::DeadlineExceeded { prompt_tokens, completion_tokens });
    }
}

/// Holds back text that might be the start of a stop string, and cuts at the first full one.
#[derive(Debug)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
}

impl StopMatcher {
    /// A matcher for `stops` (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self { stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(), pending: String::new() }
    }

    /// Adds generated text; returns the text safe to emit and whether a stop string was hit
    /// (everything from the stop string on is dropped).
    pub fn push(&mut self, text: &str) -> (String, bool) {
        self.pending.push_str(text);
        if let Some(cut) = self.stops.iter().filter_map(|s| self.pending.find(s.as_str())).min() {
            let out = self.pending[..cut].to_string();
            self.pending.clear();
            return (out, true);
        }
        // Keep the longest tail that is a proper prefix of some stop string.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let tail = &self.pending[i..];
                if s.starts_with(tail) {
                    keep = keep.max(tail.len());
                    break;
                }
            }
        }
        let split = self.pending.len() - keep;
        let out = self.pending[..split].to_string();
        self.pending.drain(..split);
        (out, false)
    }

    /// Whatever is still held back (at the end of generation).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_matcher_cuts_exactly_and_holds_back_prefixes() {
        let mut m = StopMatcher::new(&["END".into(), "\n\n".into()]);
        assert_eq!(m.push("hello E"), ("hello ".into(), false));
        assert_eq!(m.push("N"), (String::new(), false));
        assert_eq!(m.push("Xs"), ("ENXs".into(), false));
        assert_eq!(m.push(" fin\n"), (" fin".into(), false));
        assert_eq!(m.push("\nmore"), (String::new(), true));
        let mut m = StopMatcher::new(&["是".into()]);
        assert_eq!(m.push("这是一"), ("这".into(), true));
    }
}
