//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while writing, reading, exporting or verifying the audit log.
///
/// Each message says what was being done, to what, and why it failed. [`AuditError::code`] gives
/// a stable short code for metrics, HTTP error bodies and the audit log itself.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    /// An append (or checkpoint) could not be made durable: the disk is full, an I/O error, the
    /// store could not be reopened. Nothing of the failed batch stays in the log; the next append
    /// retries (see [`crate::AuditLog`] on recovery).
    #[error("audit log unavailable: {reason}")]
    Unavailable {
        /// What failed.
        reason: String,
    },

    /// The log was closed; no more appends are taken.
    #[error("audit log is closed")]
    Closed,

    /// Another process (normally govboxd) has the store open.
    #[error("opening the audit store {}: it is locked by another process (is govboxd running?)", path.display())]
    Locked {
        /// The sled database folder.
        path: PathBuf,
    },

    /// A sled operation outside the append path failed.
    #[error("audit store {}: {action}: {source}", path.display())]
    Store {
        /// What was being done.
        action: String,
        /// The sled database folder.
        path: PathBuf,
        /// sled's reason.
        #[source]
        source: sled::Error,
    },

    /// A file-system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: String,
        /// The file or folder.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// A key could not be loaded.
    #[error("loading the audit keys: {0}")]
    Key(#[from] govbox_provisioning::ProvisionError),

    /// The stored log contradicts itself: an entry that does not hash to its leaf, a missing leaf,
    /// a checkpoint beyond the end of the log. The store refuses to sign over it.
    #[error("audit store {}: {detail}", path.display())]
    Corrupt {
        /// The sled database folder.
        path: PathBuf,
        /// What is wrong, naming the seq.
        detail: String,
    },

    /// An export range that cannot be served.
    #[error("audit export: {reason}")]
    Range {
        /// Why, e.g. "entries before seq 1000 were pruned".
        reason: String,
    },

    /// An export file that is not a well-formed `govbox-audit-export/1` document.
    #[error("reading the audit export: {reason}")]
    MalformedExport {
        /// What is wrong with it.
        reason: String,
    },

    /// An export file larger than [`crate::MAX_EXPORT_BYTES`].
    #[error("reading the audit export: {size} bytes is more than the {limit}-byte limit")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        limit: u64,
    },

    /// A setting that cannot be used (the message names it and says why).
    #[error("{0}")]
    Config(String),

    /// The TPM anchor could not be read, defined or written (see [`crate::anchor`]).
    #[error("TPM anchor: {0}")]
    Anchor(String),
}

impl AuditError {
    /// A stable short code for this kind of error.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unavailable { .. } => "audit_unavailable",
            Self::Closed => "audit_closed",
            Self::Locked { .. } => "audit_locked",
            Self::Store { .. } => "audit_store",
            Self::Io { .. } => "audit_io",
            Self::Key(_) => "audit_key",
            Self::Corrupt { .. } => "audit_corrupt",
            Self::Range { .. } => "audit_bad_range",
            Self::MalformedExport { .. } => "audit_export_malformed",
            Self::TooLarge { .. } => "audit_export_too_large",
            Self::Config(_) => "audit_config",
            Self::Anchor(_) => "audit_anchor",
        }
    }

    pub(crate) fn unavailable(reason: impl Into<String>) -> Self {
        Self::Unavailable { reason: reason.into() }
    }

    pub(crate) fn malformed(reason: impl Into<String>) -> Self {
        Self::MalformedExport { reason: reason.into() }
    }
}

/// This crate's result type.
pub type Result<T, E = AuditError> = std::result::Result<T, E>;
