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
use govbox_audit::{Event, HmacStream};
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
        self.audit.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// The request entry is durable; the completion entry is owed when the body ends.
    pub fn set_audit(&self, open: OpenRequest) {
        *self.audit.lock().unwrap_or_else(|p| p.into_inner()) = Some(open);
    }

    /// Takes the owed completion entry (once).
    pub fn take_audit(&self) -> Option<OpenRequest> {
        self.audit.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// The completion entry of `open`, from what the record knows now.
    fn completion(&self, open: &OpenRequest, response_hmac: String, cut_short: bool) -> Event {
        self.with(|f| {
            let status = match (f.outcome, f.error) {
                (Some(o), _) => o.to_string(),
                (None, Some(code)) => format!("error:{code}"),
                (None, None) if cut_short => "cancelled".to_string(),
                (None, None) => "ok".to_string(),
            };
            Event::InferenceCompletion {
                request_id: open.request_id.clone(),
                client: open.client.clone(),
                model: open.model.clone(),
                response_hmac,
                prompt_tokens: f.prompt_tokens.unwrap_or(0) as u64,
                completion_tokens: f.completion_tokens.unwrap_or(0) as u64,
                status,
                latency_ms: u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX),
            }
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

type Append = Pin<Box<dyn Future<Output = govbox_audit::Result<u64>> + Send>>;

/// The completion entry a body still owes.
struct Owed {
    open: OpenRequest,
    hmac: HmacStream,
    /// The response bytes sent so far, when retention keeps content.
    kept: Option<Vec<u8>>,
    /// Whether `kept` stopped at [`crate::content::MAX_KEPT_RESPONSE`].
    truncated: bool,
}

impl Owed {
    fn new(open: OpenRequest) -> Self {
        let kept = open.content.as_ref().map(|_| Vec::new());
        Owed { hmac: open.response_hmac(), open, kept, truncated: false }
    }

    fn update(&mut self, data: &[u8]) {
        self.hmac.update(data);
        if let Some(buf) = &mut self.kept {
            let room = crate::content::MAX_KEPT_RESPONSE.saturating_sub(buf.len());
            if data.len() > room {
                self.truncated = true;
            }
            buf.extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    /// The response hash, and what to seal under it once the completion entry is durable.
    fn finish(mut self) -> (String, OpenRequest, Option<KeptResponse>) {
        let hash = self.hmac.finish();
        let kept = match (self.open.content.clone(), self.kept.take()) {
            (Some(store), Some(bytes)) => Some(KeptResponse {
                store,
                request_id: self.open.request_id.clone(),
                client: self.open.client.clone(),
                hash: hash.clone(),
                bytes,
                truncated: self.truncated,
            }),
            _ => None,
        };
        (hash, self.open, kept)
    }
}

/// A response to seal into the content store.
struct KeptResponse {
    store: crate::content::ContentStore,
    request_id: String,
    client: String,
    hash: String,
    bytes: Vec<u8>,
    truncated: bool,
}

impl KeptResponse {
    /// Seals and stores it off the async workers (the store flushes to disk). Failures are logged
    /// by request id only: the answer is already with the client.
    async fn store(self) {
        let id = self.request_id.clone();
        let job = move || {
            let k = self;
            k.store.put(&k.request_id, crate::content::Kind::Response, &k.client, &k.hash, &k.bytes, k.truncated)
        };
        match tokio::task::spawn_blocking(job).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => log::error!("request {id}: storing the sealed response failed: {e}"),
            Err(e) => log::error!("request {id}: the content task failed: {e}"),
        }
    }
}

/// A response body that keeps the request's record alive until the body ends or is dropped, and
/// writes the request's audit completion entry before it releases the last frame.
pub struct TrackedBody {
    inner: Body,
    record: Option<Arc<RequestRecord>>,
    owed: Option<Owed>,
    /// The completion entry being made durable, and the frame held back until it is.
    appending: Option<(Append, Option<Frame<Bytes>>)>,
    /// An SSE stream: a failed completion entry ends it with an error event instead of its last frame.
    sse: bool,
    ended: bool,
}

impl TrackedBody {
    /// Wraps `inner`; `sse` says whether it is an event stream.
    pub fn new(inner: Body, record: Arc<RequestRecord>, sse: bool) -> Self {
        let owed = record.take_audit().map(Owed::new);
        TrackedBody { inner, record: Some(record), owed, appending: None, sse, ended: false }
    }

    /// Starts the completion entry; `last` is released once it is durable.
    fn start_append(&mut self, last: Option<Frame<Bytes>>) -> bool {
        let (Some(owed), Some(rec)) = (self.owed.take(), &self.record) else {
            return false;
        };
        let (hash, open, kept) = owed.finish();
        let event = rec.completion(&open, hash, false);
        let log = open.log.clone();
        let append = async move {
            let r = log.append(event).await;
            if let (Ok(_), Some(k)) = (&r, kept) {
                k.store().await;
            }
            r
        };
        self.appending = Some((Box::pin(append), last));
        true
    }

    fn end(&mut self) {
        self.ended = true;
        if let Some(rec) = self.record.take() {
            rec.finish();
        }
    }
}

fn audit_error_event() -> Bytes {
    let e = crate::api::error::ApiError::AuditUnavailable;
    Bytes::from(format!("data: {}\n\n", e.body()))
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        loop {
            if let Some((fut, _)) = &mut self.appending {
                let r = std::task::ready!(fut.as_mut().poll(cx));
                let last = self.appending.take().and_then(|(_, f)| f);
                let metrics = self.record.as_ref().map(|r| r.metrics.clone());
                match r {
                    Ok(_) => {
                        if let Some(m) = &metrics {
                            m.audit_entries.inc();
                        }
                    }
                    Err(e) => {
                        if let Some(m) = &metrics {
                            m.audit_failures.inc();
                        }
                        let id = self.record.as_ref().map_or("-", |r| r.id.as_str()).to_string();
                        log::error!("audit: the completion entry of request {id} failed: {e}");
                        if self.sse {
                            // The answer is already partly sent: end it with an error event, and
                            // without [DONE], so the client cannot take it for complete.
                            self.end();
                            return Poll::Ready(Some(Ok(Frame::data(audit_error_event()))));
                        }
                    }
                }
                match last {
                    Some(f) => {
                        self.end();
                        return Poll::Ready(Some(Ok(f)));
                    }
                    None => {
                        self.end();
                        return Poll::Ready(None);
                    }
                }
            }
            if self.ended {
                return Poll::Ready(None);
            }
            match std::task::ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    if let (Some(owed), Some(d)) = (&mut self.owed, frame.data_ref()) {
                        owed.update(d);
                    }
                    if self.owed.is_some() && self.inner.is_end_stream() {
                        self.start_append(Some(frame));
                        continue;
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None => {
                    if self.start_append(None) {
                        continue;
                    }
                    self.end();
                    return Poll::Ready(None);
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ended || (self.appending.is_none() && self.owed.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.sse { SizeHint::default() } else { self.inner.size_hint() }
    }
}

impl Drop for TrackedBody {
    /// The client went away before the end: the completion entry still gets written, as cut short.
    fn drop(&mut self) {
        if let (Some(owed), Some(rec)) = (self.owed.take(), &self.record)
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (hash, open, kept) = owed.finish();
            let event = rec.completion(&open, hash, true);
            let log = open.log.clone();
            let metrics = rec.metrics.clone();
            rt.spawn(async move {
                crate::auditing::record(&log, &metrics, event).await;
                // What the client received before it went away.
                if let Some(k) = kept {
                    k.store().await;
                }
            });
        }
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
