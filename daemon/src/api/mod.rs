//! The HTTP API: the route table, the router built from it, and what every handler shares.
//!
//! The route table is the single list of what the server answers; `daemon/openapi.yaml` describes
//! the same list, and a test keeps the two equal.

pub mod audited;
pub mod body;
pub mod chat;
pub mod choices;
pub mod completions;
pub mod embeddings;
pub mod encoder;
pub mod error;
pub mod fields;
pub mod generate;
pub mod health;
pub mod logprobs;
pub mod metrics;
pub mod models;
pub mod policy;
pub mod record;
pub mod rerank;
pub mod stream;
pub mod tools;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, on};
use govbox_provisioning::ClientRecord;

use self::error::{ApiError, ErrorCode};
use self::record::{LoggedBody, RequestRecord};
use crate::auth::{self, ConnInfo};
use crate::models::LoadedModel;
use crate::state::AppState;

/// The two methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verb {
    /// GET
    Get,
    /// POST
    Post,
}

impl Verb {
    /// Lower-case, as OpenAPI writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "get",
            Verb::Post => "post",
        }
    }
}

/// One entry of the route table.
pub struct Route {
    /// The method.
    pub verb: Verb,
    /// The path template, in the syntax OpenAPI and axum share (`/v1/models/{model}`).
    pub path: &'static str,
    handler: MethodRouter<Arc<AppState>>,
}

fn route<H, T>(verb: Verb, path: &'static str, handler: H) -> Route
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    let filter = match verb {
        Verb::Get => MethodFilter::GET,
        Verb::Post => MethodFilter::POST,
    };
    Route { verb, path, handler: on(filter, handler) }
}

/// A handler of a route whose requests are audited: its response, answer or error, is
/// [`audited::respond`]'s, whose body writes the completion entry of the request entry the
/// handler made with [`audit_request`].
fn audited<F, Fut>(
    handler: F,
) -> impl Fn(State<Arc<AppState>>, Request) -> AuditedAnswer + Clone + Send + Sync + 'static
where
    F: Fn(State<Arc<AppState>>, Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response, ApiError>> + Send + 'static,
{
    move |state: State<Arc<AppState>>, req: Request| {
        let record = req.extensions().get::<Arc<RequestRecord>>().cloned();
        let answer = handler(state, req);
        Box::pin(async move { audited::respond(record.as_ref(), answer.await) })
    }
}

/// The future of an [`audited`] handler.
type AuditedAnswer = std::pin::Pin<Box<dyn Future<Output = Response> + Send>>;

/// Every route the server answers.
pub fn routes() -> Vec<Route> {
    vec![
        route(Verb::Post, "/v1/chat/completions", audited(chat::handle)),
        route(Verb::Post, "/v1/completions", audited(completions::handle)),
        route(Verb::Post, "/v1/embeddings", audited(embeddings::handle)),
        route(Verb::Post, "/v1/rerank", audited(rerank::handle)),
        route(Verb::Post, "/rerank", audited(rerank::handle)),
        route(Verb::Get, "/v1/models", models::list),
        route(Verb::Get, "/v1/models/{model}", models::retrieve),
        route(Verb::Get, "/healthz", health::healthz),
        route(Verb::Get, "/readyz", health::readyz),
        route(Verb::Get, "/metrics", metrics::handle),
    ]
}

/// The router, with request records, metrics and OpenAI-shaped 404/405 answers.
pub fn router(state: Arc<AppState>) -> Router {
    let mut paths: Vec<&'static str> = Vec::new();
    let mut r = Router::new();
    for rt in routes() {
        if !paths.contains(&rt.path) {
            paths.push(rt.path);
        }
        r = r.route(rt.path, rt.handler);
    }
    let paths: Arc<[&'static str]> = paths.into();
    r.fallback(|| async { ApiError::RouteNotFound })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(middleware::from_fn_with_state((state.clone(), paths), track))
        .with_state(state)
}

/// Gives each request its record, and ties the record (its log line) to the response body.
async fn track(
    State((state, paths)): State<(Arc<AppState>, Arc<[&'static str]>)>,
    mut req: Request,
    next: Next,
) -> Response {
    let matched = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string());
    let endpoint = matched.and_then(|m| paths.iter().copied().find(|p| *p == m)).unwrap_or("unmatched");
    let peer = req.extensions().get::<ConnInfo>().map(|c| c.peer);
    let record = Arc::new(RequestRecord::new(endpoint, peer, state.metrics.clone()));
    // A method is any token the client likes; only the two the API uses are named.
    let method = match *req.method() {
        axum::http::Method::GET => "GET",
        axum::http::Method::POST => "POST",
        _ => "other",
    };
    log::debug!("request {} started: {method} {endpoint}", record.id);
    req.extensions_mut().insert(record.clone());
    let resp = next.run(req).await;
    let code = resp.extensions().get::<ErrorCode>().map(|c| c.0);
    let status = resp.status().as_u16();
    record.set_status(status, code);
    // Refused before its request entry: counted for the audit log, per client and minute. (An
    // unauthenticated one is an auth failure, recorded by source; one that cannot be audited at
    // all is not a refusal the log could hold.)
    if status >= 400
        && code != Some("audit_unavailable")
        && !record.has_audit()
        && let Some(client) = record.client()
    {
        state.refusals.record(&client, status, code.unwrap_or("-"));
    }
    let (mut parts, body) = resp.into_parts();
    if let Ok(v) = HeaderValue::from_str(&record.id) {
        parts.headers.insert("x-request-id", v);
    }
    Response::from_parts(parts, Body::new(LoggedBody::new(body, record)))
}

/// What a handler gets from the request before it reads the body.
pub struct Call {
    /// The request's record.
    pub record: Arc<RequestRecord>,
    /// The connection's TLS facts.
    pub conn: Option<ConnInfo>,
    /// The request headers.
    pub headers: HeaderMap,
    /// The unread body.
    pub body: Body,
}

impl Call {
    /// Splits a request.
    pub fn new(state: &AppState, req: Request) -> Self {
        let (parts, body) = req.into_parts();
        let record = parts
            .extensions
            .get::<Arc<RequestRecord>>()
            .cloned()
            .unwrap_or_else(|| Arc::new(RequestRecord::new("unmatched", None, state.metrics.clone())));
        Call { record, conn: parts.extensions.get::<ConnInfo>().cloned(), headers: parts.headers, body }
    }

    /// Authenticates the caller and notes who it is.
    pub fn client(&self, state: &AppState) -> Result<ClientRecord, ApiError> {
        let r = auth::authenticate(state, self.conn.as_ref(), &self.headers);
        match &r {
            Ok(c) => self.record.set_client(&c.name),
            Err(e) => {
                log::info!(
                    "authentication failed: request {} peer={} reason={}",
                    self.record.id,
                    self.conn.as_ref().map_or_else(|| "-".into(), |c| c.peer.ip().to_string()),
                    e.code()
                );
                if let Some(c) = &self.conn {
                    state.audit.record_auth_failure(c.peer.ip(), e.code());
                }
            }
        }
        r
    }
}

/// Makes the request entry durable (client, model and package digest, the prompt's HMAC)
/// before anything of the answer is produced; 503 `audit_unavailable` when it cannot be.
pub async fn audit_request(
    state: &AppState,
    record: &Arc<RequestRecord>,
    client: &str,
    model: &LoadedModel,
    prompt: &[u8],
) -> Result<(), ApiError> {
    audit_request_by(state, record, client, model, prompt, None).await
}

/// [`audit_request`] for a request naming its end `user`, whose HMAC goes in the entry, keyed
/// per client like the prompt's, so that an auditor checks a user with the same
/// `govbox audit hmac --client` as a prompt.
pub async fn audit_request_by(
    state: &AppState,
    record: &Arc<RequestRecord>,
    client: &str,
    model: &LoadedModel,
    prompt: &[u8],
    user: Option<&str>,
) -> Result<(), ApiError> {
    let user_hmac = user.map(|u| crate::auditing::client_hmac(&state.audit, client, u.as_bytes()));
    let prompt_hmac = crate::auditing::client_hmac(&state.audit, client, prompt);
    // Retention on: the sealed prompt is stored before its audit entry, and removed again if the
    // entry cannot be written, so that every stored prompt has its entry.
    let content = if state.config.retention.store_content { state.content.clone() } else { None };
    if let Some(store) = &content
        && let Err(e) = store.put(&record.id, crate::content::Kind::Prompt, client, &prompt_hmac, prompt, false)
    {
        log::error!("request {}: storing the sealed prompt failed, refusing with 503: {e}", record.id);
        return Err(ApiError::AuditUnavailable);
    }
    let event = govbox_audit::Event::InferenceRequest {
        request_id: record.id.clone(),
        client: client.to_string(),
        model: model.name.clone(),
        model_digest: govbox_provisioning::HashAlgorithm::strip_label(model.source.digest()).to_string(),
        prompt_hmac,
        endpoint: record.endpoint.to_string(),
        user_hmac,
    };
    match state.audit.append(event).await {
        Ok(_) => {
            record.set_audit(crate::auditing::OpenRequest {
                log: state.audit.clone(),
                request_id: record.id.clone(),
                client: client.to_string(),
                model: model.name.clone(),
                content,
            });
            Ok(())
        }
        Err(e) => {
            if let Some(store) = &content {
                store.remove(&record.id, crate::content::Kind::Prompt);
            }
            log::error!("audit: request {}: the request entry failed, refusing with 503: {e}", record.id);
            Err(ApiError::AuditUnavailable)
        }
    }
}

/// A JSON response with status 200.
pub fn json(v: serde_json::Value) -> Response {
    axum::Json(v).into_response()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    /// The routes of `openapi.yaml`: each path is a two-space-indented key under `paths:`, each
    /// method a four-space-indented key under it.
    fn spec_routes() -> BTreeSet<(String, String)> {
        let spec = include_str!("../../openapi.yaml");
        let mut out = BTreeSet::new();
        let mut in_paths = false;
        let mut path: Option<String> = None;
        for line in spec.lines() {
            if !line.starts_with(' ') && !line.trim().is_empty() {
                in_paths = line.trim_end() == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(p) = line.strip_prefix("  /") {
                path = Some(format!("/{}", p.trim_end().trim_end_matches(':')));
            } else if let Some(m) = line.strip_prefix("    ")
                && !m.starts_with(' ')
                && let Some(method) = m.trim_end().strip_suffix(':')
                && ["get", "post", "put", "delete", "patch", "head", "options"].contains(&method)
                && let Some(p) = &path
            {
                out.insert((method.to_string(), p.clone()));
            }
        }
        out
    }

    #[test]
    fn openapi_spec_lists_exactly_the_routes_served() {
        let served: BTreeSet<(String, String)> =
            routes().iter().map(|r| (r.verb.as_str().to_string(), r.path.to_string())).collect();
        let spec = spec_routes();
        assert!(spec.len() >= 8, "the scan found too few routes: {spec:?}");
        assert_eq!(served, spec, "router and daemon/openapi.yaml disagree");
    }
}
