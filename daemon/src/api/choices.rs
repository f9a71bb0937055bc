//! The running choices of one chat or completions request: each reads its engine
//! [`Generation`] directly (the scheduler sends the events; there is no thread or task in
//! between) and keeps the daemon's accounting: time to first token, the tokens the answer used
//! (charged to the client's budget when it ends), and how it ended (the request's outcome).
//!
//! Dropping a choice before its last event (the client went away, and hyper dropped the
//! response body) cancels its generation; the scheduler frees its KV blocks and, with the last
//! choice, the request's engine slot.

use std::sync::Arc;
use std::task::{Context, Poll};

use govbox_engine::{Engine, EngineError, Event, Generation, Usage};
use tokio::sync::mpsc;

use crate::api::record::RequestRecord;
use crate::quota::Reservation;
use crate::state::AppState;

/// Adds a choice's usage to the request's.
pub fn add_usage(total: &mut Usage, u: Usage) {
    total.prompt_tokens += u.prompt_tokens;
    total.completion_tokens += u.completion_tokens;
    total.cached_tokens += u.cached_tokens;
}

/// One choice's generation and its accounting.
pub struct LiveChoice {
    /// The choice's index in the answer.
    pub index: usize,
    generation: Generation,
    /// Keeps the model (and its scheduler) loaded while the choice runs.
    _engine: Arc<Engine>,
    state: Arc<AppState>,
    record: Arc<RequestRecord>,
    /// The tokens reserved against the client's budget; settled with what the answer used.
    budget: Option<Reservation>,
    /// Whether this choice's usage counts its prompt. Only the first choice of a prompt does:
    /// the others reuse its KV, and the prompt is billed once.
    bill_prompt: bool,
    first_text: bool,
    /// Its accounting is done (it ended, or was stopped on purpose).
    settled: bool,
}

impl LiveChoice {
    /// A choice reading `generation`.
    pub fn new(
        index: usize,
        generation: Generation,
        engine: Arc<Engine>,
        state: Arc<AppState>,
        record: Arc<RequestRecord>,
        budget: Option<Reservation>,
        bill_prompt: bool,
    ) -> Self {
        Self {
            index,
            generation,
            _engine: engine,
            state,
            record,
            budget,
            bill_prompt,
            first_text: true,
            settled: false,
        }
    }

    /// The next event, or `None` after the last.
    pub async fn next(&mut self) -> Option<Event> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        let Poll::Ready(ev) = self.generation.poll_next(cx) else { return Poll::Pending };
        Poll::Ready(ev.map(|ev| self.account(ev)))
    }

    fn account(&mut self, ev: Event) -> Event {
        match ev {
            Event::Text(t) => {
                if std::mem::take(&mut self.first_text) {
                    self.state.metrics.time_to_first_token.observe(self.record.start.elapsed().as_secs_f64());
                }
                Event::Text(t)
            }
            Event::Done { finish_reason, usage } => {
                // Charged before the answer ends, so the client's next request sees the spend.
                let usage = self.charge(usage);
                Event::Done { finish_reason, usage }
            }
            Event::Error(EngineError::DeadlineExceeded { prompt_tokens, completion_tokens }) => {
                self.charge(Usage { prompt_tokens, completion_tokens, cached_tokens: 0 });
                self.state.metrics.cancelled.inc();
                self.record.set_outcome("deadline");
                Event::Error(EngineError::DeadlineExceeded { prompt_tokens, completion_tokens })
            }
            Event::Error(e) => {
                // An engine failure used nothing that is counted: the reservation goes back whole.
                self.settled = true;
                self.record.set_tokens(self.generation.usage().prompt_tokens, None);
                self.record.set_outcome(e.code());
                Event::Error(e)
            }
            ev => ev,
        }
    }

    /// Counts what the answer used and settles its budget reservation with it (once); returns
    /// the usage as billed (a follower choice's prompt was billed with the first choice).
    fn charge(&mut self, usage: Usage) -> Usage {
        let usage = if self.bill_prompt { usage } else { Usage { prompt_tokens: 0, cached_tokens: 0, ..usage } };
        self.settled = true;
        let m = &self.state.metrics;
        m.tokens_generated.inc_by(usage.completion_tokens as u64);
        m.prompt_tokens.inc_by(usage.prompt_tokens as u64);
        if let Some(b) = self.budget.take() {
            b.settle((usage.prompt_tokens + usage.completion_tokens) as u64);
        }
        self.record.add_completion_tokens(usage.completion_tokens);
        usage
    }

    /// Stops the generation on purpose (the content filter refused the answer): it is charged
    /// what it used, and not counted as cancelled by the client.
    fn stop(mut self) {
        let usage = self.generation.usage();
        self.charge(usage);
    }
}

impl Drop for LiveChoice {
    /// The client went away before the end: the generation stops (dropping it cancels it), and
    /// what it used so far is charged.
    fn drop(&mut self) {
        if !self.settled {
            self.charge(self.generation.usage());
            self.state.metrics.cancelled.inc();
            self.record.set_outcome("cancelled");
        }
    }
}

/// The events of every choice of a request, tagged with the choice's index.
pub enum Choices {
    /// Read straight from the generations.
    Running(Vec<LiveChoice>),
    /// Through the content filter's task (see `policy.rs`).
    Filtered(mpsc::Receiver<(usize, Event)>),
}

impl Choices {
    /// The next event of any choice, or `None` when every choice has ended.
    pub async fn next(&mut self) -> Option<(usize, Event)> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// [`next`](Self::next) for the streamed response body.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<(usize, Event)>> {
        match self {
            Choices::Running(all) => {
                let mut open = false;
                for c in all.iter_mut() {
                    match c.poll_next(cx) {
                        Poll::Ready(Some(ev)) => return Poll::Ready(Some((c.index, ev))),
                        Poll::Ready(None) => {}
                        Poll::Pending => open = true,
                    }
                }
                if open { Poll::Pending } else { Poll::Ready(None) }
            }
            Choices::Filtered(rx) => rx.poll_recv(cx),
        }
    }

    /// Stops every choice on purpose (see [`LiveChoice::stop`]).
    pub fn stop(self) {
        match self {
            Choices::Running(all) => all.into_iter().for_each(LiveChoice::stop),
            Choices::Filtered(_) => {}
        }
    }
}
