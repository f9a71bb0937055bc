//! Server-sent events for streamed answers: `data: {chunk}` lines, then `data: [DONE]`.
//!
//! The body owns the request's running choices, which read the engine's channels directly. When
//! the client disconnects, hyper drops the body, the choices are dropped, and the scheduler
//! ends their sequences at its next step.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use govbox_engine::logprobs::TokenLogprob;
use govbox_engine::{Event, FinishReason, Usage};
use http_body::Frame;

use crate::api::choices::{Choices, add_usage};
use crate::api::error::ApiError;

/// Builds the JSON chunks of one endpoint's stream. `index` is the choice's.
pub trait ChunkMaker: Send + Unpin + 'static {
    /// A chunk sent before any text of a choice (chat sends the assistant role), if any.
    fn opening(&mut self, index: usize) -> Option<serde_json::Value>;
    /// The chunks carrying `text` and the log-probabilities of the tokens behind it (empty when
    /// not asked for); none while text is held back, as a tool call may be.
    fn text(&mut self, index: usize, text: &str, logprobs: &[TokenLogprob]) -> Vec<serde_json::Value>;
    /// A choice's last chunks: held-back text, tool calls, and the one carrying the finish reason.
    fn finish(&mut self, index: usize, reason: FinishReason) -> Vec<serde_json::Value>;
    /// The closing usage chunk (`stream_options.include_usage`), if asked for.
    fn usage(&mut self, usage: Usage) -> Option<serde_json::Value>;
}

/// The streamed response body.
pub struct SseBody<M> {
    rest: Choices,
    maker: M,
    ready: VecDeque<Bytes>,
    /// Log-probabilities waiting for their text, per choice.
    logprobs: Vec<Vec<TokenLogprob>>,
    /// Choices not yet finished.
    left: usize,
    usage: Usage,
    done: bool,
}

fn event(v: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

impl<M: ChunkMaker> SseBody<M> {
    /// A body for `choices` choices that first sends `initial`, then what `rest` brings.
    pub fn new(initial: Vec<(usize, Event)>, rest: Choices, choices: usize, mut maker: M) -> Self {
        let mut ready = VecDeque::new();
        for i in 0..choices {
            if let Some(open) = maker.opening(i) {
                ready.push_back(event(&open));
            }
        }
        let logprobs = vec![Vec::new(); choices];
        let mut body = SseBody { rest, maker, ready, logprobs, left: choices, usage: Usage::default(), done: false };
        for ev in initial {
            body.push(ev);
        }
        body
    }

    fn push(&mut self, (i, ev): (usize, Event)) {
        if self.done {
            return;
        }
        match ev {
            Event::Text(t) => {
                let lp = std::mem::take(&mut self.logprobs[i]);
                for c in self.maker.text(i, &t, &lp) {
                    self.ready.push_back(event(&c));
                }
            }
            Event::Logprobs(l) => self.logprobs[i].extend(l),
            Event::Done { finish_reason, usage } => {
                // Log-probabilities of tokens whose text a stop string swallowed.
                let lp = std::mem::take(&mut self.logprobs[i]);
                if !lp.is_empty() {
                    for c in self.maker.text(i, "", &lp) {
                        self.ready.push_back(event(&c));
                    }
                }
                for c in self.maker.finish(i, finish_reason) {
                    self.ready.push_back(event(&c));
                }
                add_usage(&mut self.usage, usage);
                self.left -= 1;
                if self.left > 0 {
                    return;
                }
                if let Some(u) = self.maker.usage(self.usage) {
                    self.ready.push_back(event(&u));
                }
                self.ready.push_back(Bytes::from_static(b"data: [DONE]\n\n"));
                self.done = true;
            }
            Event::Error(e) => {
                // Headers are gone already: the error travels as an event, and no [DONE] follows,
                // so a client cannot mistake a cut-off answer for a complete one.
                self.ready.push_back(event(&ApiError::Engine(e).body()));
                self.done = true;
            }
        }
    }
}

impl<M: ChunkMaker> http_body::Body for SseBody<M> {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        loop {
            if let Some(b) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(Frame::data(b))));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.rest.poll_next(cx) {
                Poll::Ready(Some(ev)) => self.push(ev),
                // The events stopped before every choice's last one: the answer was cut off.
                Poll::Ready(None) => {
                    let e = ApiError::Internal("the generation ended unexpectedly".into());
                    self.ready.push_back(event(&e.body()));
                    self.done = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    /// True once the last event has been handed out, so that the audit layer sees `[DONE]` as
    /// the last frame and can make the completion entry durable before releasing it.
    fn is_end_stream(&self) -> bool {
        self.done && self.ready.is_empty()
    }
}
