//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format.
//!
//! No credentials are needed (scrapers rarely hold client certificates); the metrics carry no
//! client names, prompts or other request content, only route templates, statuses and counts.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

use crate::state::AppState;

/// The exposition.
pub async fn handle(State(state): State<Arc<AppState>>) -> Response {
    let info = state.backend.info();
    if let Some(g) = &state.metrics.accelerator_memory
        && let Some(used) = info.memory_used
    {
        g.set(used);
    }
    if let Some(g) = &state.metrics.accelerator_temperature
        && let Some(t) = info.temperature_c
    {
        g.set(f64::from(t));
    }
    for m in state.models.get().iter().flat_map(|v| v.iter()) {
        if let Some((used, total)) = m.engine.kv_usage()
            && total > 0
        {
            state.metrics.kv_cache_usage.get_or_create(&[("model", m.name.clone())]).set(used as f64 / total as f64);
        }
    }
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    resp
}
