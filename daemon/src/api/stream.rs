//! Server-sent events for streamed answers: `data: {chunk}` lines, then `data: [DONE]`.
//!
//! The body owns the receiving end of the generation's channel. When the client disconnects,
//! hyper drops the body, the channel closes, and the generation stops at its next token.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use govbox_engine::logprobs::TokenLogprob;
use govbox_engine::{FinishReason, Usage};
use http_body::Frame;
use tokio::sync::mpsc;

use crate::bridge::GenEvent;

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
    rx: mpsc::Receiver<(usize, GenEvent)>,
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
    /// A body for `choices` choices that first sends `initial`, then what `rx` brings.
    pub fn new(
        initial: Vec<(usize, GenEvent)>,
        rx: mpsc::Receiver<(usize, GenEvent)>,
        choices: usize,
        mut maker: M,
    ) -> Self {
        let mut ready = VecDeque::new();
        for i in 0..choices {
            if let Some(open) = maker.opening(i) {
                ready.push_back(event(&open));
            }
        }
        let logprobs = vec![Vec::new(); choices];
        let mut body = SseBody { rx, maker, ready, logprobs, left: choices, usage: Usage::default(), done: false };
        for ev in initial {
            body.push(ev);
        }
        body
    }

    fn push(&mut self, (i, ev): (usize, GenEvent)) {
        if self.done {
            return;
        }
        match ev {
            GenEvent::Text(t) => {
                let lp = std::mem::take(&mut self.logprobs[i]);
                for c in self.maker.text(i, &t, &lp) {
                    self.ready.push_back(event(&c));
                }
            }
            GenEvent::Logprobs(l) => self.logprobs[i].extend(l),
            GenEvent::Done { finish_reason, usage } => {
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
                crate::api::generate::add_usage(&mut self.usage, usage);
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
            GenEvent::Failed(e) => {
                // Headers are gone already: the error travels as an event, and no [DONE] follows,
                // so a client cannot mistake a cut-off answer for a complete one.
                self.ready.push_back(event(&e.body()));
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
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(ev)) => self.push(ev),
                Poll::Ready(None) => {
                    // The generation thread ended without a last event: it was cut off.
                    let e = crate::api::error::ApiError::Internal("the generation ended unexpectedly".into());
                    self.push((0, GenEvent::Failed(e)));
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
