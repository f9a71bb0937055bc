//! [`AuditHandle`]: what govboxd holds. In production the log belongs to `govbox-auditd` and
//! govboxd is its client ([`crate::remote`]); tests and the demo may run the writer inside
//! govboxd instead (`[audit] socket = ""`, the single-process mode).
//!
//! Either way govboxd keeps the HMAC secret (it hashes prompts and responses before anything
//! leaves it) and never holds the signing key in the client mode.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use govbox_provisioning::PublicKey;
use time::OffsetDateTime;

use crate::entry::{Entry, Event};
use crate::error::Result;
use crate::export::ExportRange;
use crate::hmac::{HmacKey, HmacStream};
use crate::log::AuditLog;
use crate::remote::AuditClient;
use crate::retention::PruneReport;
use crate::sth::SignedTreeHead;
use crate::witness::WitnessStatus;

/// How often the client mode refreshes the witness status that `/readyz` and `/metrics` show.
const STATUS_REFRESH: Duration = Duration::from_secs(2);

/// The audit log as govboxd uses it.
#[derive(Clone)]
pub enum AuditHandle {
    /// The writer runs in this process (tests, the demo).
    InProcess(AuditLog),
    /// The writer is `govbox-auditd`.
    Auditd(Arc<Remote>),
}

/// The client mode's parts.
pub struct Remote {
    client: AuditClient,
    hmac: HmacKey,
    witness: Arc<Mutex<Option<WitnessStatus>>>,
}

impl std::fmt::Debug for AuditHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::InProcess(l) => std::fmt::Debug::fmt(l, f),
            Self::Auditd(r) => std::fmt::Debug::fmt(&r.client, f),
        }
    }
}

impl AuditHandle {
    /// Connects to govbox-auditd at `socket`; `hmac` is the box's audit HMAC key
    /// ([`HmacKey::load`]: its secret under its suite's hash).
    pub fn connect(socket: &std::path::Path, hmac: HmacKey) -> Result<Self> {
        let client = AuditClient::connect(socket)?;
        let status = client.status()?;
        if let Some(detail) = status.held {
            // The store was cut behind its TPM anchor: govboxd does not serve on it.
            return Err(crate::AuditError::Corrupt { path: socket.to_path_buf(), detail });
        }
        let witness = Arc::new(Mutex::new(status.witness));
        let remote = Arc::new(Remote { client, hmac, witness });
        // Async handlers read the witness status from memory: a round trip there would block a
        // runtime thread.
        let weak = Arc::downgrade(&remote);
        let _ = std::thread::Builder::new().name("audit-status".into()).spawn(move || {
            while let Some(r) = weak.upgrade() {
                if let Ok(s) = r.client.status() {
                    *r.witness.lock().unwrap_or_else(PoisonError::into_inner) = s.witness;
                }
                drop(r);
                std::thread::sleep(STATUS_REFRESH);
            }
        });
        Ok(Self::Auditd(remote))
    }

    /// Appends; resolves once the entry is durable.
    pub async fn append(&self, event: Event) -> Result<u64> {
        match self {
            Self::InProcess(l) => l.append(event).await,
            Self::Auditd(r) => r.client.append(event).await,
        }
    }

    /// [`AuditHandle::append`] from blocking code.
    pub fn append_blocking(&self, event: Event) -> Result<u64> {
        match self {
            Self::InProcess(l) => l.append_blocking(event),
            Self::Auditd(r) => r.client.append_blocking(event),
        }
    }

    /// Counts a failed authentication.
    pub fn record_auth_failure(&self, source: IpAddr, reason: &str) {
        match self {
            Self::InProcess(l) => l.record_auth_failure(source, reason),
            Self::Auditd(r) => r.client.record_auth_failure(source, reason),
        }
    }

    /// A fresh signed tree head. Blocking.
    pub fn checkpoint(&self) -> Result<SignedTreeHead> {
        match self {
            Self::InProcess(l) => l.checkpoint(),
            Self::Auditd(r) => r.client.checkpoint(),
        }
    }

    /// At govboxd's stop: closes the in-process log; asks govbox-auditd (which goes on) for a head.
    pub fn close(&self) -> Result<SignedTreeHead> {
        match self {
            Self::InProcess(l) => l.close(),
            Self::Auditd(r) => r.client.checkpoint(),
        }
    }

    /// An export. Blocking.
    pub fn export(&self, range: ExportRange) -> Result<Vec<u8>> {
        match self {
            Self::InProcess(l) => l.export(range),
            Self::Auditd(r) => r.client.export(range),
        }
    }

    /// The newest `n` entries. Blocking.
    pub fn tail(&self, n: usize) -> Result<Vec<Entry>> {
        match self {
            Self::InProcess(l) => l.tail(n),
            Self::Auditd(r) => r.client.tail(n),
        }
    }

    /// See [`AuditLog::prune`]; govbox-auditd refuses `force`.
    pub fn prune(&self, before: OffsetDateTime, force: bool) -> Result<PruneReport> {
        match self {
            Self::InProcess(l) => l.prune(before, force),
            Self::Auditd(r) => r.client.prune(before, force),
        }
    }

    /// See [`AuditLog::prune_forced`]; govbox-auditd refuses it, with nothing appended.
    pub fn prune_forced(&self, before: OffsetDateTime, intent: Event) -> Result<PruneReport> {
        match self {
            Self::InProcess(l) => l.prune_forced(before, intent),
            Self::Auditd(r) => r.client.prune(before, true),
        }
    }

    /// Prunes what the retention period allows.
    pub fn prune_expired(&self) -> Result<PruneReport> {
        match self {
            Self::InProcess(l) => l.prune_expired(),
            // The server caps `before` at its own retention cut-off.
            Self::Auditd(r) => r.client.prune(OffsetDateTime::now_utc(), false),
        }
    }

    /// HMAC-SHA256 under the audit secret, lower-case hex.
    pub fn hmac(&self, bytes: &[u8]) -> String {
        match self {
            Self::InProcess(l) => l.hmac(bytes),
            Self::Auditd(r) => r.hmac.hmac(bytes),
        }
    }

    /// An incremental HMAC under the audit secret.
    pub fn hmac_context(&self) -> HmacStream {
        match self {
            Self::InProcess(l) => l.hmac_context(),
            Self::Auditd(r) => r.hmac.stream(),
        }
    }

    /// Appends that failed.
    pub fn failures(&self) -> u64 {
        match self {
            Self::InProcess(l) => l.failures(),
            Self::Auditd(r) => r.client.failures(),
        }
    }

    /// Durable entries.
    pub fn tree_size(&self) -> u64 {
        match self {
            Self::InProcess(l) => l.tree_size(),
            Self::Auditd(r) => r.client.tree_size(),
        }
    }

    /// The audit public key.
    pub fn public_key(&self) -> PublicKey {
        match self {
            Self::InProcess(l) => l.public_key(),
            Self::Auditd(r) => r.client.public_key(),
        }
    }

    /// The witness's status, when one is configured (never blocks).
    pub fn witness_status(&self) -> Option<WitnessStatus> {
        match self {
            Self::InProcess(l) => l.witness_status(),
            Self::Auditd(r) => r.witness.lock().unwrap_or_else(PoisonError::into_inner).clone(),
        }
    }
}
