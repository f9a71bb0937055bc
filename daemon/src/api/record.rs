//! One record per HTTP request: its log line and its metrics, written once, when the last holder
//! lets go of it. The holders are the handler, the response body (until its last byte is sent or
//! the client goes away, see [`LoggedBody`]) and the engine job (until generation has really
//! stopped), so the line reports what actually happened, token counts of a cancelled generation
//! included.
//!
//! The fields are the whole of what a request log line may say: request id, peer address, client
//! name, model, route, status, error code, outcome, token counts and latency. The audit entries
//! of an audited request are [`super::audited`]'s; the record only carries the open request entry
//! from `audit_request` to the route's [`super::audited::respond`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::{Body, Bytes};
use http_body::{Frame, SizeHint};

use crate::auditing::OpenRequest;
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
    audit: Mutex<Option<OpenRequest>>,
    /// Whether the request entry was written (kept after the open entry is taken).
    audited: AtomicBool,
}

impl RequestRecord {
    /// A record for a request that has just arrived.
    pub fn new(endpoint: &'static str, peer: Option<SocketAddr>, metrics: Arc<Metrics>) -> Self {
        let id = format!("req-{:016x}", rand::random::<u64>());
        RequestRecord {
            id,
            endpoint,
            start: Instant::now(),
            peer,
            metrics,
            fields: Mutex::default(),
            audit: Mutex::default(),
            audited: AtomicBool::new(false),
        }
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
    /// Adds a generation's completion tokens (the choices of one request add up).
    pub fn add_completion_tokens(&self, n: usize) {
        self.with(|f| f.completion_tokens = Some(f.completion_tokens.unwrap_or(0) + n));
    }
    /// The authenticated client, once known.
    pub fn client(&self) -> Option<String> {
        self.with(|f| f.client.clone())
    }

    /// Whether the request entry was written (its completion entry then records how it ended).
    pub fn has_audit(&self) -> bool {
        self.audited.load(Ordering::Relaxed)
    }

    /// The request entry is durable; the completion entry is owed when the body ends.
    pub fn set_audit(&self, open: OpenRequest) {
        *self.audit.lock().unwrap_or_else(|p| p.into_inner()) = Some(open);
        self.audited.store(true, Ordering::Relaxed);
    }

    /// Takes the owed completion entry (once).
    pub fn take_audit(&self) -> Option<OpenRequest> {
        self.audit.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// How the request ended, as its completion entry says: the outcome (`ok`, `cancelled`
    /// when `cut_short`, `error:CODE`, ...) and the prompt and completion token counts.
    pub(crate) fn outcome(&self, cut_short: bool) -> (String, u64, u64) {
        self.with(|f| {
            let status = match (f.outcome, f.error) {
                (Some(o), _) => o.to_string(),
                (None, Some(code)) => format!("error:{code}"),
                (None, None) if cut_short => "cancelled".to_string(),
                (None, None) => "ok".to_string(),
            };
            (status, f.prompt_tokens.unwrap_or(0) as u64, f.completion_tokens.unwrap_or(0) as u64)
        })
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
        let outcome = f.outcome.unwrap_or_else(|| default_outcome(f.status));
        let line = format!(
            "request {} peer={peer} client={} model={} endpoint={} status={} error={} outcome={} \
             prompt_tokens={} completion_tokens={} latency_ms={:.1}",
            self.id,
            opt(&f.client),
            opt(&f.model),
            self.endpoint,
            f.status,
            f.error.unwrap_or("-"),
            outcome,
            num(f.prompt_tokens),
            num(f.completion_tokens),
            secs * 1000.0
        );
        if warrants_warning(self.endpoint, f.status, f.error) {
            log::warn!("{line}");
        } else {
            log::info!("{line}");
        }
    }
}

/// The log line's outcome when the handler set none: `ok` only for an answer that succeeded.
fn default_outcome(status: u16) -> &'static str {
    if status < 400 { "ok" } else { "-" }
}

/// Server errors are warnings, except `/readyz` saying "not ready" while the models load: that is
/// the answer a start-up poll expects, and the demo's and systemd's polls filled the log with it.
fn warrants_warning(endpoint: &str, status: u16, error: Option<&str>) -> bool {
    status >= 500 && !(endpoint == "/readyz" && error == Some("not_ready"))
}

/// A response body that keeps the request's record (and so its log line) alive until the body
/// ends or is dropped, and notes when the last byte went out.
pub struct LoggedBody {
    inner: Body,
    record: Option<Arc<RequestRecord>>,
}

impl LoggedBody {
    /// Wraps `inner`.
    pub fn new(inner: Body, record: Arc<RequestRecord>) -> Self {
        LoggedBody { inner, record: Some(record) }
    }

    fn end(&mut self) {
        if let Some(rec) = self.record.take() {
            rec.finish();
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let r = std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx));
        if r.is_none() || self.inner.is_end_stream() {
            self.end();
        }
        Poll::Ready(r)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod log_level_tests {
    use super::{default_outcome, warrants_warning};

    #[test]
    fn readiness_polls_during_start_are_not_warnings_and_errors_are_not_ok() {
        assert!(!warrants_warning("/readyz", 503, Some("not_ready")));
        assert!(warrants_warning("/readyz", 503, Some("shutting_down")));
        assert!(warrants_warning("/v1/chat/completions", 503, Some("audit_unavailable")));
        assert!(!warrants_warning("/v1/chat/completions", 429, Some("rate_limited")));
        assert_eq!(default_outcome(200), "ok");
        assert_eq!(default_outcome(503), "-");
        assert_eq!(default_outcome(401), "-");
    }
}
