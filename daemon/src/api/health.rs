//! `GET /healthz` (the process answers) and `GET /readyz` (the models are loaded and the daemon
//! is not shutting down). Neither needs credentials: load balancers and monitoring call them.
//! `/readyz` tells only its status to anyone; the details (how many models, the device, its
//! memory) go to authenticated clients.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::json;

use crate::api::error::ApiError;
use crate::api::{Call, json};
use crate::auth;
use crate::state::AppState;

/// 200 whenever the process can answer.
pub async fn healthz() -> Response {
    json(json!({"status": "ok"}))
}

/// 200 once every configured model is loaded; 503 before that and once shutdown begins.
pub async fn readyz(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let models = state.models()?;
    let call = Call::new(&state, req);
    // Credentials are optional here; bad ones are still an authentication failure on record.
    if !auth::presents_credentials(call.conn.as_ref(), &call.headers) || call.client(&state).is_err() {
        return Ok(json(json!({"status": "ready"})));
    }
    let info = state.backend.info();
    let mut body = json!({
        "status": "ready",
        "models": models.len(),
        "backend": {
            "kind": govbox_drivers::device::kind_name(info.kind),
            "device": state.device.chosen.to_string(),
            "name": info.name,
            "simulated": info.simulated,
            "memory_used": info.memory_used,
            "memory_total": info.memory_total,
            "temperature_c": info.temperature_c,
            "health": info.health,
        },
    });
    if let Some(w) = state.audit.witness_status() {
        // Reported, not a reason to stop serving: the heads wait in the spool until it answers.
        body["audit_witness"] = json!({"behind": w.pending > 0, "status": w});
    }
    if state.insecure_dev_models {
        body["insecure_dev_models"] = json!(true);
        body["warning"] = json!("unsigned model folders are served (--insecure-dev-models)");
    }
    Ok(json(body))
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;
    use crate::state::test_state;

    #[tokio::test]
    async fn ready_only_between_loading_and_shutdown() {
        let (_tmp, state) = test_state();
        assert_eq!(healthz().await.status(), 200);
        let get = || Request::new(axum::body::Body::empty());
        let r = readyz(State(state.clone()), get()).await.into_response();
        assert_eq!(r.status(), 503, "not ready while the models load");
        assert_eq!(r.headers()["retry-after"], "1");
        state.models.set(Vec::new());
        assert_eq!(readyz(State(state.clone()), get()).await.into_response().status(), 200);
        state.admission.close();
        assert_eq!(readyz(State(state.clone()), get()).await.into_response().status(), 503, "not ready while stopping");
        assert_eq!(healthz().await.status(), 200);
    }
}
