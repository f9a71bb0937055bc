//! The audited body: the response of a request whose request entry is durable, which writes the
//! request's completion entry (HMAC of the exact response bytes, token counts, outcome, latency)
//! before it releases its last frame, so a client that saw a complete answer has its completion
//! entry on disk. A client that goes away first still gets its entry, as cut short.
//!
//! The routes whose handlers call `audit_request` are wrapped by [`respond`] in the route table
//! (`api::routes`), answers and errors alike.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::response::{IntoResponse, Response};
use govbox_audit::{Event, HmacStream};
use http_body::{Frame, SizeHint};

use super::error::ApiError;
use super::record::RequestRecord;
use crate::auditing::OpenRequest;

/// The response of an audited route: `answer` (or the error), whose body owes the completion
/// entry when the request entry was written.
pub fn respond(record: Option<&Arc<RequestRecord>>, answer: Result<Response, ApiError>) -> Response {
    let resp = answer.unwrap_or_else(IntoResponse::into_response);
    let Some((record, open)) = record.and_then(|r| r.take_audit().map(|o| (r.clone(), o))) else {
        return resp;
    };
    let sse = resp.headers().get(axum::http::header::CONTENT_TYPE).is_some_and(|v| v == "text/event-stream");
    let (parts, body) = resp.into_parts();
    Response::from_parts(parts, Body::new(AuditedBody::new(body, record, open, sse)))
}

/// The completion entry of `open`, from what the record knows now.
fn completion(record: &RequestRecord, open: &OpenRequest, response_hmac: String, cut_short: bool) -> Event {
    let (status, prompt_tokens, completion_tokens) = record.outcome(cut_short);
    Event::InferenceCompletion {
        request_id: open.request_id.clone(),
        client: open.client.clone(),
        model: open.model.clone(),
        response_hmac,
        prompt_tokens,
        completion_tokens,
        status,
        latency_ms: u64::try_from(record.start.elapsed().as_millis()).unwrap_or(u64::MAX),
    }
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

/// A response body that writes the request's audit completion entry before it releases the last
/// frame.
pub struct AuditedBody {
    inner: Body,
    record: Arc<RequestRecord>,
    owed: Option<Owed>,
    /// The completion entry being made durable, and the frame held back until it is.
    appending: Option<(Append, Option<Frame<Bytes>>)>,
    /// An SSE stream: a failed completion entry ends it with an error event instead of its last frame.
    sse: bool,
    ended: bool,
}

impl AuditedBody {
    /// Wraps `inner`, which owes `open`'s completion entry; `sse` says whether it is an event stream.
    pub fn new(inner: Body, record: Arc<RequestRecord>, open: OpenRequest, sse: bool) -> Self {
        AuditedBody { inner, record, owed: Some(Owed::new(open)), appending: None, sse, ended: false }
    }

    /// Starts the completion entry; `last` is released once it is durable.
    fn start_append(&mut self, last: Option<Frame<Bytes>>) -> bool {
        let Some(owed) = self.owed.take() else {
            return false;
        };
        let (hash, open, kept) = owed.finish();
        let event = completion(&self.record, &open, hash, false);
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
}

fn audit_error_event() -> Bytes {
    Bytes::from(format!("data: {}\n\n", ApiError::AuditUnavailable.body()))
}

impl http_body::Body for AuditedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        loop {
            if let Some((fut, _)) = &mut self.appending {
                let r = std::task::ready!(fut.as_mut().poll(cx));
                let last = self.appending.take().and_then(|(_, f)| f);
                self.ended = true;
                if let Err(e) = r {
                    log::error!("audit: the completion entry of request {} failed: {e}", self.record.id);
                    if self.sse {
                        // The answer is already partly sent: end it with an error event, and
                        // without [DONE], so the client cannot take it for complete.
                        return Poll::Ready(Some(Ok(Frame::data(audit_error_event()))));
                    }
                    // A whole-body answer is held back entirely: it is not given. The body fails,
                    // so the connection ends before the promised length and no client can take a
                    // truncated answer for complete.
                    return Poll::Ready(Some(Err(axum::Error::new(e))));
                }
                return Poll::Ready(last.map(Ok));
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
                    self.ended = true;
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

impl Drop for AuditedBody {
    /// The client went away before the end: the completion entry still gets written, as cut short.
    fn drop(&mut self) {
        if let Some(owed) = self.owed.take()
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            let (hash, open, kept) = owed.finish();
            let event = completion(&self.record, &open, hash, true);
            let log = open.log.clone();
            let record = self.record.clone();
            rt.spawn(async move {
                crate::auditing::record(&log, event).await;
                // What the client received before it went away.
                if let Some(k) = kept {
                    k.store().await;
                }
                // The log line waits for the entry, as it did for the answer.
                drop(record);
            });
        }
    }
}
