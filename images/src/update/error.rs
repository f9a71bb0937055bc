//! [`UpdateError`]: what failed while building, applying, checking or rolling back an update.

use std::path::PathBuf;

use crate::error::PackageError;

/// Everything that can go wrong with an update bundle or the slots it is applied to.
///
/// [`UpdateError::code`] gives a stable short code for the audit log and for scripts.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpdateError {
    /// The bundle itself was refused (signatures, threshold, kind, a member's digest, ...), or
    /// building it failed.
    #[error(transparent)]
    Bundle(#[from] PackageError),

    /// The bundle's `security_version` is below the one the box stores (anti-rollback).
    #[error(
        "update '{package}': security_version {bundle} is below the box's stored security version {stored}; \
         the box refuses to go back to a version with known security flaws"
    )]
    SecurityVersionTooLow {
        /// The bundle, `name version`.
        package: String,
        /// Its security version.
        bundle: u64,
        /// The stored one.
        stored: u64,
    },

    /// The bundle is signed and well formed, but is not a govbox update.
    #[error("update '{package}': {reason}")]
    NotAnUpdate {
        /// The bundle.
        package: String,
        /// Why.
        reason: String,
    },

    /// Another `govbox update` holds the lock on the install folder.
    #[error("{}: another 'govbox update' is running (it holds {})", root.display(), root.join(".update.lock").display())]
    Busy {
        /// The install folder.
        root: PathBuf,
    },

    /// A file-system operation on the install folder failed.
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

    /// A file of the install folder (state, slot metadata, security version) is unreadable.
    #[error("{}: {reason}", path.display())]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A slot's files do not match its signed manifest, or it is missing.
    #[error("slot '{slot}': {reason}")]
    SlotInvalid {
        /// `a` or `b`.
        slot: String,
        /// Why.
        reason: String,
    },

    /// A rollback would go below the stored security version.
    #[error(
        "rollback to slot '{slot}' ({version}) refused: its security_version {slot_security_version} is below \
         the stored security version {stored}"
    )]
    RollbackRefused {
        /// `a` or `b`.
        slot: String,
        /// Its version.
        version: String,
        /// Its security version.
        slot_security_version: u64,
        /// The stored one.
        stored: u64,
    },

    /// There is no other slot to go back to.
    #[error("{}: there is no previous slot to go back to", root.display())]
    NoPreviousSlot {
        /// The install folder.
        root: PathBuf,
    },

    /// Restarting govboxd failed.
    #[error("restarting govboxd: {reason}")]
    Restart {
        /// Why.
        reason: String,
    },

    /// The install folder has no update trust anchor yet.
    #[error(
        "{}: no update trust anchor ({}); install it once, as root: govbox update init --root {} --from STATE/trust/root.json",
        root.display(), root.join("trust/root.json").display(), root.display()
    )]
    NoTrustAnchor {
        /// The install folder.
        root: PathBuf,
    },

    /// The update trust anchor is refused (its own signatures, a version below the highest seen).
    #[error("update trust anchor {}: {reason}", path.display())]
    TrustAnchor {
        /// The anchor file.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// The new version did not become ready and the previous one was put back.
    #[error("update to {version} reverted: {reason}")]
    Reverted {
        /// The version that was tried.
        version: String,
        /// Why.
        reason: String,
    },
}

impl UpdateError {
    /// A stable short code.
    pub fn code(&self) -> &'static str {
        match self {
            UpdateError::Bundle(e) => e.code(),
            UpdateError::SecurityVersionTooLow { .. } => "security_version_too_low",
            UpdateError::NotAnUpdate { .. } => "not_an_update",
            UpdateError::Busy { .. } => "update_busy",
            UpdateError::Io { .. } => "io",
            UpdateError::CorruptState { .. } => "corrupt_update_state",
            UpdateError::SlotInvalid { .. } => "slot_invalid",
            UpdateError::RollbackRefused { .. } => "rollback_refused",
            UpdateError::NoPreviousSlot { .. } => "no_previous_slot",
            UpdateError::Restart { .. } => "restart_failed",
            UpdateError::Reverted { .. } => "update_reverted",
            UpdateError::NoTrustAnchor { .. } => "no_trust_anchor",
            UpdateError::TrustAnchor { .. } => "trust_anchor_invalid",
        }
    }

    pub(crate) fn io(action: impl Into<String>, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { action: action.into(), path: path.into(), source }
    }
}

impl From<govbox_provisioning::ProvisionError> for UpdateError {
    fn from(e: govbox_provisioning::ProvisionError) -> Self {
        UpdateError::Bundle(PackageError::from(e))
    }
}
