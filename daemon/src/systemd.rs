//! systemd integration: `READY=1`, `STATUS=`, `STOPPING=1` and the watchdog, through the
//! `NOTIFY_SOCKET` that systemd (or a test) gives. Without `NOTIFY_SOCKET` every call is a no-op.

use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;

use crate::models::ModelTable;

/// Sends `states`; failures are logged at debug level and otherwise ignored, since the daemon
/// serves the same with or without a service manager listening.
pub fn notify(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        log::debug!("sd_notify failed: {e}");
    }
}

/// Sends a `STATUS=` line (and logs it).
pub fn status(text: &str) {
    log::info!("{text}");
    notify(&[NotifyState::Status(text)]);
}

/// Sends `WATCHDOG=1` every half `WATCHDOG_USEC`, as long as the engine answers.
///
/// The check is a small tokenisation on the first loaded model, run on the blocking pool with the
/// half-period as its limit: it proves that the runtime schedules tasks, that the blocking pool
/// has room and that the model's tokenizer responds. Before the models are loaded, the process
/// answering is the whole check (systemd arms the watchdog only after `READY=1`).
pub async fn watchdog(models: Arc<ModelTable>) {
    let Some(usec) = sd_notify::watchdog_enabled() else {
        return;
    };
    let period = (usec / 2).max(Duration::from_millis(10));
    log::info!("systemd watchdog enabled: pinging every {} ms", period.as_millis());
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        if engine_answers(&models, period).await {
            notify(&[NotifyState::Watchdog]);
        } else {
            log::error!("the engine did not answer the watchdog check; withholding WATCHDOG=1");
        }
    }
}

async fn engine_answers(models: &ModelTable, limit: Duration) -> bool {
    let Some(model) = models.get().and_then(|m| m.first().cloned()) else {
        return true;
    };
    let check = tokio::task::spawn_blocking(move || model.engine.tokenizer().encode("watchdog").is_ok());
    matches!(tokio::time::timeout(limit, check).await, Ok(Ok(true)))
}
