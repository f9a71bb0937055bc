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

use govbox_audit::{
    AuditError, AuditHandle, AuditLog, AuditOptions, Event, HmacStream, LifecycleAction, PackageAction,
    read_hmac_secret,
};
use govbox_provisioning::StatePaths;
use serde_json::Value;

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
    let secret = read_hmac_secret(&StatePaths::new(state_dir).audit_hmac_key())?;
    let deadline = std::time::Instant::now() + AUDITD_WAIT;
    loop {
        match AuditHandle::connect(&cfg.socket, &secret) {
            Ok(h) => return Ok(h),
            Err(e) if std::time::Instant::now() >= deadline => return Err(e),
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
    };
    AuditLog::open_state(&StatePaths::new(state_dir), opts)
}

/// The start or stop entry.
pub fn lifecycle(action: LifecycleAction) -> Event {
    Event::Lifecycle { action, version: env!("CARGO_PKG_VERSION").to_string() }
}

/// Appends from blocking code; a failure is counted and logged, since the action it records has
/// already happened.
pub fn record_blocking(log: &AuditHandle, metrics: &Metrics, event: Event) {
    let kind = event.kind();
    match log.append_blocking(event) {
        Ok(_) => {
            metrics.audit_entries.inc();
        }
        Err(e) => {
            metrics.audit_failures.inc();
            log::error!("audit: appending a {kind} entry failed: {e}");
        }
    }
}

/// Appends from async code, as [`record_blocking`].
pub async fn record(log: &AuditHandle, metrics: &Metrics, event: Event) {
    let kind = event.kind();
    match log.append(event).await {
        Ok(_) => {
            metrics.audit_entries.inc();
        }
        Err(e) => {
            metrics.audit_failures.inc();
            log::error!("audit: appending a {kind} entry failed: {e}");
        }
    }
}

/// The entries an admin command makes once it has succeeded, from its answer.
pub fn admin_events(cmd: &str, subject: &str, uid: &str, result: &Value) -> Vec<Event> {
    let s = |k: &str| result[k].as_str().unwrap_or("").to_string();
    let package = |action| Event::Package {
        action,
        name: s("name"),
        version: s("version"),
        digest: s("digest").trim_start_matches("sha256-").to_string(),
    };
    match cmd {
        "model_import" => {
            let mut v = vec![package(PackageAction::Imported)];
            if result["active"].as_bool() == Some(true) {
                v.push(package(PackageAction::Activated));
            }
            v
        }
        "model_activate" => vec![package(PackageAction::Activated)],
        "model_rollback" => vec![package(PackageAction::RolledBack)],
        "model_remove" => vec![package(PackageAction::Removed)],
        "policy_import" | "policy_activate" | "policy_rollback" => {
            let step = |action| Event::PolicyPackage {
                action,
                actor: format!("admin-socket uid {uid}"),
                name: s("name"),
                version: s("version"),
                digest: s("digest"),
            };
            match cmd {
                "policy_activate" => vec![step(PackageAction::Activated)],
                "policy_rollback" => vec![step(PackageAction::RolledBack)],
                _ if result["already_present"].as_bool() == Some(true) => vec![],
                _ if result["active"].as_bool() == Some(true) => {
                    vec![step(PackageAction::Imported), step(PackageAction::Activated)]
                }
                _ => vec![step(PackageAction::Imported)],
            }
        }
        "tls_reload" => vec![Event::Admin {
            actor: format!("admin-socket uid {uid}"),
            action: cmd.to_string(),
            subject: format!(
                "server certificate serial {} expires {} (was serial {} expiring {})",
                result["new"]["serial"].as_str().unwrap_or("?"),
                result["new"]["expires"].as_str().unwrap_or("?"),
                result["old"]["serial"].as_str().unwrap_or("?"),
                result["old"]["expires"].as_str().unwrap_or("?"),
            ),
        }],
        "client_add" | "client_revoke" | "client_renew" => vec![Event::Admin {
            actor: format!("admin-socket uid {uid}"),
            action: cmd.to_string(),
            // A client's own content-safety library (`off` included) is part of what was decided.
            subject: match result["client"]["policy"].as_str() {
                Some(p) if cmd == "client_add" => format!("{subject} (policy {p})"),
                _ => subject.to_string(),
            },
        }],
        _ => vec![],
    }
}

/// The open half of an inference request's audit record: the request entry is durable, the
/// completion entry is still to come.
#[derive(Debug)]
pub struct OpenRequest {
    /// The log.
    pub log: AuditHandle,
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
