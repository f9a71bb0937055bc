//! What `/v1/embeddings` and `/v1/rerank` share: an encoder call reserved against the client's
//! token budget, admitted like any inference, run on the blocking pool and bounded by the
//! request deadline.

use std::time::Duration;

use govbox_engine::EngineError;
use govbox_engine::embed::EmbedInputError;
use govbox_provisioning::ClientRecord;
use tokio::time::Instant;

use crate::api::error::ApiError;
use crate::api::record::RequestRecord;
use crate::state::AppState;

/// What an encoder call used: its result and the tokens it read.
pub struct Ran<T> {
    /// The engine's answer.
    pub out: T,
    /// Tokens the encoder read (settled against the budget and counted in the metrics).
    pub tokens: usize,
}

/// Reserves `most_tokens` of the client's budget, waits for an admission slot, runs `work` on
/// the blocking pool and settles the budget with the tokens `work` reports using (`count`).
/// An input the model cannot take comes back as a 400 naming `param` (or `dimensions`).
pub async fn run<T: Send + 'static>(
    state: &AppState,
    record: &RequestRecord,
    client: &ClientRecord,
    most_tokens: usize,
    param: &'static str,
    work: impl FnOnce() -> govbox_engine::Result<T> + Send + 'static,
    count: impl FnOnce(&T) -> usize,
) -> Result<Ran<T>, ApiError> {
    let secs = state.config.serving.request_deadline_secs;
    let deadline = Instant::from_std(record.start) + Duration::from_secs(secs);
    let budget = state.quotas.reserve(client, most_tokens as u64)?;
    let slot = state.admission.admit(&crate::admission::Asker::of(client), &state.metrics, deadline, secs).await?;
    // The slot moves into the blocking task: it is freed when the encoder has finished, even if
    // the deadline gave up on it first.
    let task = tokio::task::spawn_blocking(move || {
        let r = work();
        drop(slot);
        r
    });
    let out = match tokio::time::timeout_at(deadline, task).await {
        Ok(Ok(Ok(out))) => out,
        Ok(Ok(Err(EngineError::Input(e)))) => return Err(input_error(param, &e)),
        Ok(Ok(Err(e))) => return Err(e.into()),
        Ok(Err(e)) => return Err(ApiError::Internal(format!("encoder task: {e}"))),
        Err(_) => return Err(ApiError::DeadlineExceeded { secs }),
    };
    let tokens = count(&out);
    state.metrics.prompt_tokens.inc_by(tokens as u64);
    budget.settle(tokens as u64);
    record.set_tokens(tokens, None);
    Ok(Ran { out, tokens })
}

/// A 400 for an input the model cannot take. The engine's message names positions and counts
/// only, never the input's text.
pub fn input_error(param: &'static str, e: &EmbedInputError) -> ApiError {
    match e {
        EmbedInputError::Dimensions { .. } => ApiError::invalid("dimensions", e.to_string()),
        _ => ApiError::invalid(param, format!("{param}: {e}")),
    }
}
