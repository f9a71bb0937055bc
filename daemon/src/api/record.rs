//! One record per HTTP request: its log line and its metrics, written once, when the last holder
//! lets go of it. The holders are the handler, the response body (until its last byte is sent or
//! the client goes away) and the engine job (until generation has really stopped), so the line
//! reports what actually happened, token counts of a cancelled generation included.
//!
//! The fields are the whole of what a request log line may say: request id, peer address, client
//! name, model, route, status, error code, outcome, token counts and latency.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

use crate::metrics::Metrics;

#[derive(Debug, Default)]
struct Fields {
    client: Option<String>,
    model: Option<String>,
    status: u16,
    error: Option<&'static str>,
    outcome: Option<&'static str>,
    prompt_tokens: Option<usize>,
    completion_tokens: Option<usize>,
    finished: Option<Instant>,
}

/// The record of one request.
#[derive(Debug)]
pub struct RequestRecord {
    /// `req-` and 16 hex digits; also sent back as `x-request-id`.
    pub id: String,
    /// The route template (`/v1/chat/completions`), or `unmatched`.
    pub endpoint: &'static str,
    /// Arrival time.
    pub start: Instant,
    peer: Option<SocketAddr>,
    metrics: Arc<Metrics>,
    fields: Mutex<Fields>,
}

impl RequestRecord {
    /// A record for a request that has just arrived.
    pub fn new(endpoint: &'static str, peer: Option<SocketAddr>, metrics: Arc<Metrics>) -> Self {
        let id = format!("req-{:016x}", rand::random::<u64>());
        RequestRecord { id, endpoint, start: Instant::now(), peer, metrics, fields: Mutex::default() }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Fields) -> R) -> R {
        // Fields are plain values; a panic elsewhere cannot leave them inconsistent.
        f(&mut self.fields.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// The authenticated client.
    pub fn set_client(&self, name: &str) {
        self.with(|f| f.client = Some(name.to_string()));
    }
    /// The model (a configured name, never an unchecked request field).
    pub fn set_model(&self, name: &str) {
        self.with(|f| f.model = Some(name.to_string()));
    }
    /// The response status and, for failures, the error code.
    pub fn set_status(&self, status: u16, error: Option<&'static str>) {
        self.with(|f| {
            f.status = status;
            if error.is_some() {
                f.error = error;
            }
        });
    }
    /// How a generation ended when it did not end normally (`cancelled`, `deadline`, an error code).
    pub fn set_outcome(&self, outcome: &'static str) {
        self.with(|f| f.outcome = Some(outcome));
    }
    /// Token counts.
    pub fn set_tokens(&self, prompt: usize, completion: Option<usize>) {
        self.with(|f| {
            f.prompt_tokens = Some(prompt);
            f.completion_tokens = completion;
        });
    }
    fn finish(&self) {
        self.with(|f| {
            f.finished.get_or_insert_with(Instant::now);
        });
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        let f = self.fields.get_mut().unwrap_or_else(|p| p.into_inner());
        let secs = f.finished.unwrap_or_else(Instant::now).duration_since(self.start).as_secs_f64();
        self.metrics.record_request(self.endpoint, f.status, secs);
        let opt = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
        let num = |v: Option<usize>| v.map_or_else(|| "-".into(), |n| n.to_string());
        let peer = self.peer.map_or_else(|| "-".into(), |p| p.ip().to_string());
        let line = format!(
            "request {} peer={peer} client={} model={} endpoint={} status={} error={} outcome={} \
             prompt_tokens={} completion_tokens={} latency_ms={:.1}",
            self.id,
            opt(&f.client),
            opt(&f.model),
            self.endpoint,
            f.status,
            f.error.unwrap_or("-"),
            f.outcome.unwrap_or("ok"),
            num(f.prompt_tokens),
            num(f.completion_tokens),
            secs * 1000.0
        );
        if f.status >= 500 {
            log::warn!("{line}");
        } else {
            log::info!("{line}");
        }
    }
}

/// A response body that keeps the request's record alive until the body ends or is dropped.
pub struct TrackedBody {
    inner: Body,
    record: Option<Arc<RequestRecord>>,
}

impl TrackedBody {
    /// Wraps `inner`.
    pub fn new(inner: Body, record: Arc<RequestRecord>) -> Self {
        TrackedBody { inner, record: Some(record) }
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(None) = r
            && let Some(rec) = self.record.take()
        {
            rec.finish();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
