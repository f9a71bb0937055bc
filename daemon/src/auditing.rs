//! What govboxd records in the audit log, and when. The log itself (Merkle tree, group commit,
//! checkpoints, exports) is the audit crate's; this module decides which events are entries and
//! makes inference requests fail closed.
//!
//! An inference request makes two entries. The request entry (client, model and package digest,
//! HMAC of the prompt) is durable before any byte of the answer is produced: if it cannot be
//! written, the request gets 503 `audit_unavailable`. The completion entry (HMAC of the exact
//! response bytes, token counts, status, latency) is written when the body ends, before its last
//! frame is released, so a client that saw a complete answer has its completion entry on disk.
//!
//! Prompt and response hashes are keyed per client (`govbox_audit::HmacKey::client_hmac`), so
//! that the same text from two clients cannot be linked. Prompt hashes, so that an auditor can
//! reproduce them with `govbox audit hmac --client NAME`:
//! - chat: the JSON array `[{"role":"...","content":"..."}]` of the messages as the model sees them
//!   (roles `developer` and `system` both as `system`; text parts joined), compact, keys in that order;
//! - completions: the prompt text;
//! - embeddings: the input text, or the JSON array of the texts when there are several.

use std::path::Path;

use govbox_audit::{AuditError, AuditHandle, AuditLog, AuditOptions, Event, HmacKey, HmacStream, LifecycleAction};
use govbox_provisioning::StatePaths;
use prometheus_client::metrics::counter::Counter;

use crate::config::AuditConfig;
use crate::metrics::Metrics;

/// How long govboxd waits at start for govbox-auditd's socket to answer (both units start together).
const AUDITD_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

/// The audit log: govbox-auditd's when `[audit] socket` is set (waiting for it to answer), else
/// the state folder's, opened in this process.
pub fn open(state_dir: &Path, cfg: &AuditConfig) -> Result<AuditHandle, AuditError> {
    if cfg.socket.as_os_str().is_empty() {
        return open_in_process(state_dir, cfg).map(AuditHandle::InProcess);
    }
    let hmac = HmacKey::load(&StatePaths::new(state_dir))?;
    let deadline = std::time::Instant::now() + AUDITD_WAIT;
    loop {
        match AuditHandle::connect(&cfg.socket, hmac.clone()) {
            Ok(h) => return Ok(h),
            // Held behind its TPM anchor: waiting would not change that.
            Err(e) if std::time::Instant::now() >= deadline || e.code() == "audit_corrupt" => return Err(e),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

/// The single-process mode: the writer runs inside govboxd (tests and the demo).
fn open_in_process(state_dir: &Path, cfg: &AuditConfig) -> Result<AuditLog, AuditError> {
    let opts = AuditOptions {
        checkpoint_every: cfg.checkpoint_every,
        checkpoint_interval: std::time::Duration::from_secs(cfg.checkpoint_interval_secs),
        retention_days: cfg.retention_days,
        // Checked when the config was read.
        witness: cfg.witness_addr().ok().flatten(),
        witness_tls: cfg.witness_tls(),
        tpm_anchor: cfg.tpm_anchor(),
    };
    AuditLog::open_state(&StatePaths::new(state_dir), opts)
}

/// The start or stop entry.
pub fn lifecycle(action: LifecycleAction) -> Event {
    Event::Lifecycle { action, version: env!("CARGO_PKG_VERSION").to_string() }
}

/// The audit log as govboxd appends to it: every append counts itself for `/metrics`
/// (`govbox_audit_entries_total` when the entry is durable, `govbox_audit_failures_total` when
/// not), so no caller counts by hand. Everything else is the handle's, through `Deref`.
#[derive(Clone, Debug)]
pub struct Audit {
    log: AuditHandle,
    committed: Counter,
    failed: Counter,
}

impl Audit {
    /// Counts the appends to `log` in `metrics`.
    pub fn new(log: AuditHandle, metrics: &Metrics) -> Self {
        Audit { log, committed: metrics.audit_entries.clone(), failed: metrics.audit_failures.clone() }
    }

    fn count<T>(&self, r: &Result<T, AuditError>) {
        if r.is_ok() {
            self.committed.inc();
        } else {
            self.failed.inc();
        }
    }

    /// Appends `event` and waits until it is durable.
    pub async fn append(&self, event: Event) -> Result<u64, AuditError> {
        let r = self.log.append(event).await;
        self.count(&r);
        r
    }

    /// [`Audit::append`] from blocking code.
    pub fn append_blocking(&self, event: Event) -> Result<u64, AuditError> {
        let r = self.log.append_blocking(event);
        self.count(&r);
        r
    }
}

impl std::ops::Deref for Audit {
    type Target = AuditHandle;

    fn deref(&self) -> &AuditHandle {
        &self.log
    }
}

/// Appends from blocking code; a failure is logged (and counted), since the action it records
/// has already happened.
pub fn record_blocking(log: &Audit, event: Event) {
    let kind = event.kind();
    if let Err(e) = log.append_blocking(event) {
        log::error!("audit: appending a {kind} entry failed: {e}");
    }
}

/// Appends from async code, as [`record_blocking`].
pub async fn record(log: &Audit, event: Event) {
    let kind = event.kind();
    if let Err(e) = log.append(event).await {
        log::error!("audit: appending a {kind} entry failed: {e}");
    }
}

/// Writes the audit entries of an admin command's outcome (`answer`), durably, or fails. A
/// service that changes what the box serves is given one and calls it just before its change
/// takes effect, and undoes what it prepared when it fails: no change is served without its
/// entry.
pub type Gate<'a, A> = dyn Fn(&A) -> Result<(), AuditError> + 'a;

/// The open half of an inference request's audit record: the request entry is durable, the
/// completion entry is still to come.
#[derive(Debug)]
pub struct OpenRequest {
    /// The log.
    pub log: Audit,
    /// The request id.
    pub request_id: String,
    /// The client.
    pub client: String,
    /// The model name.
    pub model: String,
    /// Where the response is kept, sealed, when `retention.store_content` is on.
    pub content: Option<crate::content::ContentStore>,
}

impl OpenRequest {
    /// The running HMAC of the response bytes, keyed for the request's client.
    pub fn response_hmac(&self) -> HmacStream {
        self.log.hmac_context().for_client(&self.client)
    }
}

/// The HMAC of `text` sent by or to `client`, as the request's audit entries hold it.
pub fn client_hmac(log: &AuditHandle, client: &str, text: &[u8]) -> String {
    let mut s = log.hmac_context().for_client(client);
    s.update(text);
    s.finish()
}
