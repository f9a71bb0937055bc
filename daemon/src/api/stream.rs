//! Server-sent events for streamed answers: `data: {chunk}` lines, then `data: [DONE]`.
//!
//! The body owns the receiving end of the generation's channel. When the client disconnects,
//! hyper drops the body, the channel closes, and the generation stops at its next token.

use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Bytes;
use govbox_engine::{FinishReason, Usage};
use http_body::Frame;
use tokio::sync::mpsc;

use crate::bridge::GenEvent;

/// Builds the JSON chunks of one endpoint's stream.
pub trait ChunkMaker: Send + Unpin + 'static {
    /// A chunk sent before any text (chat sends the assistant role), if any.
    fn opening(&mut self) -> Option<serde_json::Value>;
    /// The chunks carrying `text` (none while text is held back, as a tool call may be).
    fn text(&mut self, text: &str) -> Vec<serde_json::Value>;
    /// The last chunks: held-back text, tool calls, and the one carrying the finish reason.
    fn finish(&mut self, reason: FinishReason) -> Vec<serde_json::Value>;
    /// The closing usage chunk (`stream_options.include_usage`), if asked for.
    fn usage(&mut self, usage: Usage) -> Option<serde_json::Value>;
}

/// The streamed response body.
pub struct SseBody<M> {
    rx: mpsc::Receiver<GenEvent>,
    maker: M,
    ready: VecDeque<Bytes>,
    done: bool,
}

fn event(v: &serde_json::Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

impl<M: ChunkMaker> SseBody<M> {
    /// A body that first sends `initial`, then what `rx` brings.
    pub fn new(initial: Vec<GenEvent>, rx: mpsc::Receiver<GenEvent>, mut maker: M) -> Self {
        let mut ready = VecDeque::new();
        if let Some(open) = maker.opening() {
            ready.push_back(event(&open));
        }
        let mut body = SseBody { rx, maker, ready, done: false };
        for ev in initial {
            body.push(ev);
        }
        body
    }

    fn push(&mut self, ev: GenEvent) {
        if self.done {
            return;
        }
        match ev {
            GenEvent::Text(t) => {
                for c in self.maker.text(&t) {
                    self.ready.push_back(event(&c));
                }
            }
            GenEvent::Done { finish_reason, usage } => {
                for c in self.maker.finish(finish_reason) {
                    self.ready.push_back(event(&c));
                }
                if let Some(u) = self.maker.usage(usage) {
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
                    self.push(GenEvent::Failed(e));
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
