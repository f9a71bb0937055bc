//! The one error type of this crate.

use std::path::PathBuf;

/// Everything that can go wrong while provisioning a box, handling its keys and certificates, or
/// managing its clients.
///
/// Each message says what was being done, to what, and why it failed. [`ProvisionError::code`]
/// gives a stable short code for metrics and the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProvisionError {
    /// A file-system operation failed.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done, e.g. "writing private key".
        action: String,
        /// The file or folder it was done to.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },

    /// A file that must not be overwritten already exists.
    #[error("refusing to overwrite {what} {}: the file already exists (use --force to replace it)", path.display())]
    AlreadyExists {
        /// What the file would have held.
        what: String,
        /// The file.
        path: PathBuf,
    },

    /// A file is larger than any legitimate file of its kind.
    #[error("reading {what} {}: the file is {size} bytes, more than the {limit}-byte limit", path.display())]
    TooLarge {
        /// What the file should hold.
        what: String,
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// The cap for this kind of file.
        limit: u64,
    },

    /// The state folder is already provisioned.
    #[error(
        "provisioning {}: already provisioned ({} exists); use --force to replace the box's identity, CA and trust root",
        state.display(), marker.display()
    )]
    AlreadyProvisioned {
        /// The state folder.
        state: PathBuf,
        /// The file whose presence marks a provisioned box.
        marker: PathBuf,
    },

    /// The state folder has not been provisioned.
    #[error("using state folder {}: not provisioned ({} is missing); run `govbox provision` first", state.display(), missing.display())]
    NotProvisioned {
        /// The state folder.
        state: PathBuf,
        /// The file that should exist.
        missing: PathBuf,
    },

    /// A key could not be read or is not the kind of key expected.
    #[error("loading {what} from {origin}: {reason}")]
    InvalidKey {
        /// What kind of key, e.g. "Ed25519 private key".
        what: String,
        /// Where it came from: a path, or "memory".
        origin: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A signature did not verify.
    #[error("verifying signature by key {keyid}: {reason}")]
    BadSignature {
        /// The key id of the public key used.
        keyid: String,
        /// Why it failed.
        reason: String,
    },

    /// A signature's format names one algorithm and the pinned key is of another: refused rather
    /// than checked, so that suites are never mixed silently.
    #[error(
        "verifying signature by key {keyid}: the signature claims algorithm '{claimed}' but the pinned key is {key}; refusing to mix algorithms"
    )]
    AlgorithmMismatch {
        /// The key id of the pinned key.
        keyid: String,
        /// The algorithm the format names.
        claimed: crate::keys::KeyAlgorithm,
        /// The pinned key's algorithm.
        key: crate::keys::KeyAlgorithm,
    },

    /// An algorithm name is not one govbox knows.
    #[error("unknown key algorithm '{value}'; expected 'ed25519' or 'sm2'")]
    UnknownAlgorithm {
        /// The name given.
        value: String,
    },

    /// A suite name is not one govbox knows.
    #[error("unknown crypto suite '{value}'; expected 'intl' or 'gm'")]
    UnknownSuite {
        /// The name given.
        value: String,
    },

    /// A hash name is not one govbox knows.
    #[error("unknown hash algorithm '{value}'; expected 'sha256' or 'sm3'")]
    UnknownHash {
        /// The name given.
        value: String,
    },

    /// The state's suite file is unreadable as a suite.
    #[error("reading the crypto suite {}: {reason}", path.display())]
    InvalidSuiteFile {
        /// The file (`identity/suite`).
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A key's algorithm is not the one the box's suite uses.
    #[error(
        "{what}: the box's crypto suite is '{suite}', whose keys are {expected}, but this key is {found}; refusing to mix suites"
    )]
    SuiteMismatch {
        /// Which key.
        what: String,
        /// The box's suite.
        suite: crate::suite::Suite,
        /// The suite's key algorithm.
        expected: crate::keys::KeyAlgorithm,
        /// The key's algorithm.
        found: crate::keys::KeyAlgorithm,
    },

    /// A `--trust-key [ROLE:]PATH` argument is malformed.
    #[error("parsing trust key '{spec}': {reason}")]
    InvalidTrustKeySpec {
        /// The argument as given.
        spec: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A `--threshold ROLE:N` argument is malformed or impossible.
    #[error("parsing threshold '{spec}': {reason}")]
    InvalidThreshold {
        /// The argument as given.
        spec: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The trust policy as a whole is not valid.
    #[error("building the trust policy: {reason}")]
    InvalidTrustPolicy {
        /// Why it was rejected.
        reason: String,
    },

    /// A trust root document (`trust/root.json`) could not be parsed or is inconsistent.
    #[error("reading trust root {origin}: {reason}")]
    InvalidTrustRoot {
        /// Where it came from.
        origin: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A host name or subject alternative name is not acceptable.
    #[error("checking server name '{name}': {reason}")]
    InvalidServerName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A certificate could not be generated or signed.
    #[error("issuing {what}: {reason}")]
    CertificateIssue {
        /// Which certificate, e.g. "client certificate for 'hr-portal'".
        what: String,
        /// Why it failed.
        reason: String,
    },

    /// A stored certificate could not be parsed.
    #[error("reading certificate {origin}: {reason}")]
    InvalidCertificate {
        /// Where it came from.
        origin: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The system's random number generator failed.
    #[error("generating random bytes for {what}: the system RNG failed")]
    Rng {
        /// What the bytes were for.
        what: String,
    },

    /// A client name does not match `[a-z0-9][a-z0-9._-]{0,62}`.
    #[error("checking client name '{name}': {reason}")]
    InvalidClientName {
        /// The name as given.
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// A client setting is out of range.
    #[error("checking client '{name}': {reason}")]
    InvalidClientSetting {
        /// The client.
        name: String,
        /// What is wrong.
        reason: String,
    },

    /// A client with this name already exists.
    #[error("adding client '{name}': a client with this name already exists")]
    ClientExists {
        /// The client.
        name: String,
    },

    /// A revoked client had this name; names are never reused.
    #[error(
        "adding client '{name}': a revoked client had this name, and a name is never reused (every audit \
         entry that names a client must name one client only); choose another name"
    )]
    ClientNameRetired {
        /// The client.
        name: String,
    },

    /// No client has this name.
    #[error("{action} client '{name}': no such client")]
    ClientNotFound {
        /// What was being done.
        action: String,
        /// The client.
        name: String,
    },

    /// The client is revoked, so it cannot be renewed.
    #[error("{action} client '{name}': the client is revoked; add a new client instead")]
    ClientRevoked {
        /// What was being done.
        action: String,
        /// The client.
        name: String,
    },

    /// Another process (normally govboxd) holds the state store's lock.
    #[error(
        "opening {}: the state store is locked by a running govboxd; use the daemon's admin socket",
        path.display()
    )]
    StoreLocked {
        /// The sled database folder.
        path: PathBuf,
    },

    /// The sled store failed.
    #[error("{action} in {}: {source}", path.display())]
    Store {
        /// What was being done.
        action: String,
        /// The sled database folder.
        path: PathBuf,
        /// sled's reason.
        #[source]
        source: sled::Error,
    },

    /// A stored record could not be decoded.
    #[error("reading {what} from {}: the stored record is corrupt: {reason}", path.display())]
    CorruptRecord {
        /// What the record should hold.
        what: String,
        /// The sled database folder.
        path: PathBuf,
        /// Why decoding failed.
        reason: String,
    },
}

impl ProvisionError {
    /// A stable short code for this kind of error, for metric labels and audit entries.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::AlreadyExists { .. } => "already_exists",
            Self::TooLarge { .. } => "too_large",
            Self::AlreadyProvisioned { .. } => "already_provisioned",
            Self::NotProvisioned { .. } => "not_provisioned",
            Self::InvalidKey { .. } => "invalid_key",
            Self::BadSignature { .. } => "bad_signature",
            Self::AlgorithmMismatch { .. } => "algorithm_mismatch",
            Self::UnknownAlgorithm { .. } => "unknown_algorithm",
            Self::UnknownSuite { .. } => "unknown_suite",
            Self::UnknownHash { .. } => "unknown_hash",
            Self::InvalidSuiteFile { .. } => "invalid_suite_file",
            Self::SuiteMismatch { .. } => "suite_mismatch",
            Self::InvalidTrustKeySpec { .. } => "invalid_trust_key_spec",
            Self::InvalidThreshold { .. } => "invalid_threshold",
            Self::InvalidTrustPolicy { .. } => "invalid_trust_policy",
            Self::InvalidTrustRoot { .. } => "invalid_trust_root",
            Self::InvalidServerName { .. } => "invalid_server_name",
            Self::CertificateIssue { .. } => "certificate_issue",
            Self::InvalidCertificate { .. } => "invalid_certificate",
            Self::Rng { .. } => "rng",
            Self::InvalidClientName { .. } => "invalid_client_name",
            Self::InvalidClientSetting { .. } => "invalid_client_setting",
            Self::ClientExists { .. } => "client_exists",
            Self::ClientNameRetired { .. } => "client_name_retired",
            Self::ClientNotFound { .. } => "client_not_found",
            Self::ClientRevoked { .. } => "client_revoked",
            Self::StoreLocked { .. } => "store_locked",
            Self::Store { .. } => "store",
            Self::CorruptRecord { .. } => "corrupt_record",
        }
    }

    pub(crate) fn io(action: impl Into<String>, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { action: action.into(), path: path.into(), source }
    }
}

/// This crate's result type.
pub type Result<T, E = ProvisionError> = std::result::Result<T, E>;
