//! `GET /metrics`: Prometheus metrics in the OpenMetrics text format.
//!
//! The caller must be a client with the `metrics` scope (`govbox client add prometheus --scope
//! metrics`), by certificate or token: model names, traffic counts, the device and its memory are
//! not for anyone who can reach the port. The metrics carry no client names, prompts or other
//! request content, only route templates, statuses and counts.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use govbox_provisioning::Scope;

use crate::api::Call;
use crate::api::error::ApiError;
use crate::auth;
use crate::state::AppState;

/// The exposition, for a `metrics` client.
pub async fn handle(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let call = Call::new(&state, req);
    auth::require_scope(&call.client(&state)?, Scope::Metrics)?;
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
        if let Some(kv) = m.engine.kv_stats() {
            let mt = &state.metrics;
            for (st, n) in [("running", kv.blocks_used), ("cached", kv.blocks_cached), ("free", kv.blocks_free)] {
                mt.kv_cache_blocks.get_or_create(&[("model", m.name.clone()), ("state", st.into())]).set(n as i64);
            }
            let model = [("model", m.name.clone())];
            // The engine's figures are cumulative; the counters catch up by the difference.
            let hits = mt.prefix_cache_hits.get_or_create(&model);
            hits.inc_by(kv.prefix_hits.saturating_sub(hits.get()));
            let reused = mt.prefix_cache_reused_tokens.get_or_create(&model);
            reused.inc_by(kv.tokens_reused.saturating_sub(reused.get()));
            mt.batch_peak.get_or_create(&model).set(kv.peak_batch as i64);
        }
        if let Some(r) = m.engine.rerank_model() {
            let (mt, model, b) = (&state.metrics, [("model", m.name.clone())], r.batch_stats());
            let batches = mt.rerank_batches.get_or_create(&model);
            batches.inc_by(b.batches.saturating_sub(batches.get()));
            let requests = mt.rerank_batched_requests.get_or_create(&model);
            requests.inc_by(b.jobs.saturating_sub(requests.get()));
        }
    }
    if let Some(w) = state.audit.witness_status() {
        state.metrics.audit_witness_pending.set(w.pending as i64);
    }
    let mut resp = state.metrics.render().into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    Ok(resp)
}
