//! `GET /v1/models` and `GET /v1/models/{model}`: the models this client may use.

use std::sync::Arc;

use axum::extract::{Path, Request, State};
use axum::response::Response;
use serde_json::{Value, json};

use crate::api::error::ApiError;
use crate::api::{Call, json};
use crate::auth;
use crate::models::LoadedModel;
use crate::state::AppState;

fn model_json(m: &LoadedModel) -> Value {
    json!({"id": m.name, "object": "model", "created": m.created, "owned_by": "govbox"})
}

/// Lists the served models that the client may use.
pub async fn list(State(state): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let call = Call::new(&state, req);
    let client = call.client(&state)?;
    let data: Vec<Value> =
        state.models()?.iter().filter(|m| auth::may_use(&client, &m.name)).map(|m| model_json(m)).collect();
    Ok(json(json!({"object": "list", "data": data})))
}

/// One model, if it is served and the client may use it. A model it may not use answers the same
/// 404 as one that does not exist, so a client cannot learn which models others are served.
pub async fn retrieve(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let call = Call::new(&state, req);
    let client = call.client(&state)?;
    let model = state.model(&name)?;
    if !auth::may_use(&client, &model.name) {
        return Err(ApiError::ModelNotFound { model: name });
    }
    call.record.set_model(&model.name);
    Ok(json(model_json(&model)))
}
