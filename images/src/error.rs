//! The one error type of this crate.

use std::path::PathBuf;

use govbox_provisioning::ProvisionError;

use crate::manifest::PackageKind;
use crate::selftest::SelfTestMismatch;

/// Everything that can go wrong while building, verifying, importing or managing packages.
///
/// Each message names the package (`name version`, or the file before its manifest is read), the
/// member and the reason, e.g. `package 'tiny 1.0.0': member 'model.safetensors': sha256
/// mismatch`. [`PackageError::code`] gives a stable short code for metrics and the audit log.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PackageError {
    /// A file-system operation on our own side (output file, store folder) failed.
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

    /// Reading the package itself failed.
    #[error("package '{package}': reading: {source}")]
    Read {
        /// The package.
        package: String,
        /// The reason.
        #[source]
        source: std::io::Error,
    },

    /// The archive ends before a member or the end-of-archive marker is complete.
    #[error("package '{package}': member '{member}': the archive is truncated")]
    Truncated {
        /// The package.
        package: String,
        /// The member being read, or `end of archive`.
        member: String,
    },

    /// A tar header is not a valid POSIX ustar header.
    #[error("package '{package}': {at}: not a valid ustar archive: {reason}")]
    MalformedTar {
        /// The package.
        package: String,
        /// Where: `member 'x'` or `header at byte N`.
        at: String,
        /// Why.
        reason: String,
    },

    /// A member is a link, device, folder, FIFO or extension header rather than a regular file.
    #[error(
        "package '{package}': member '{member}': {kind} members are not allowed; a package holds regular files only"
    )]
    UnsupportedMember {
        /// The package.
        package: String,
        /// The member.
        member: String,
        /// What it is, e.g. `symbolic link`.
        kind: String,
    },

    /// A member name or manifest path is unsafe or malformed.
    #[error("package '{package}': member '{member}': {reason}")]
    InvalidPath {
        /// The package.
        package: String,
        /// The name as given (lossily decoded when it is not UTF-8).
        member: String,
        /// Why it was refused.
        reason: String,
    },

    /// A member is larger than its cap (the manifest, the signatures).
    #[error("package '{package}': member '{member}': {size} bytes is more than the {limit}-byte limit")]
    TooLarge {
        /// The package.
        package: String,
        /// The member.
        member: String,
        /// Its declared size.
        size: u64,
        /// The cap.
        limit: u64,
    },

    /// A member the manifest lists is not in the archive (or not where the manifest puts it).
    #[error("package '{package}': member '{member}': listed in the manifest but missing ({found})")]
    MissingMember {
        /// The package.
        package: String,
        /// The listed member.
        member: String,
        /// What was found instead.
        found: String,
    },

    /// A member the manifest does not list.
    #[error("package '{package}': member '{member}': not listed in the manifest")]
    UnexpectedMember {
        /// The package.
        package: String,
        /// The member.
        member: String,
    },

    /// A member appears twice.
    #[error("package '{package}': member '{member}': appears more than once")]
    DuplicateMember {
        /// The package.
        package: String,
        /// The member.
        member: String,
    },

    /// The manifest is not a valid `govbox/1` manifest.
    #[error("package '{package}': member 'govbox-manifest.json': {reason}")]
    InvalidManifest {
        /// The package.
        package: String,
        /// Why.
        reason: String,
    },

    /// The manifest's `format` is not one this version reads.
    #[error(
        "package '{package}': member 'govbox-manifest.json': unknown format '{format}'; this govbox reads 'govbox/1' only"
    )]
    UnknownFormat {
        /// The package.
        package: String,
        /// The format found.
        format: String,
    },

    /// The signature file cannot be parsed.
    #[error("package '{package}': member 'govbox-manifest.sig': {reason}")]
    InvalidSignatureFile {
        /// The package.
        package: String,
        /// Why.
        reason: String,
    },

    /// The manifest carries no signature at all.
    #[error("package '{package}': member 'govbox-manifest.sig': the package is unsigned; {detail}")]
    Unsigned {
        /// The package.
        package: String,
        /// The policy that was not met.
        detail: String,
    },

    /// The trust root has expired, so it vouches for nothing.
    #[error(
        "package '{package}': member 'govbox-manifest.sig': the trust root (version {version}) expired at {expires}; install a newer root with `govbox trust rotate`"
    )]
    RootExpired {
        /// The package.
        package: String,
        /// The root's version.
        version: u64,
        /// When it expired.
        expires: String,
    },

    /// A signature by a trusted key does not match the manifest bytes.
    #[error("package '{package}': member 'govbox-manifest.sig': {detail}")]
    BadSignature {
        /// The package.
        package: String,
        /// The tally and which key's signature failed.
        detail: String,
    },

    /// A signature names an algorithm other than its pinned key's (an `sm2` signature by a key
    /// the trust root holds as Ed25519, or the other way round).
    #[error("package '{package}': member 'govbox-manifest.sig': {detail}")]
    AlgorithmMismatch {
        /// The package.
        package: String,
        /// Which key, what the signature claims and what the key is.
        detail: String,
    },

    /// Only keys of another role signed (e.g. a model package signed with the updates key).
    #[error("package '{package}': member 'govbox-manifest.sig': {detail}")]
    WrongRole {
        /// The package.
        package: String,
        /// The tally and the roles of the keys that signed.
        detail: String,
    },

    /// Fewer distinct trusted keys of the role signed than its threshold.
    #[error("package '{package}': member 'govbox-manifest.sig': {detail}")]
    BelowThreshold {
        /// The package.
        package: String,
        /// The tally, naming unknown key ids.
        detail: String,
    },

    /// A member's SHA-256 differs from the manifest's.
    #[error("package '{package}': member '{member}': sha256 mismatch (manifest {expected}, content {actual})")]
    DigestMismatch {
        /// The package.
        package: String,
        /// The member.
        member: String,
        /// The manifest's digest.
        expected: String,
        /// The content's digest.
        actual: String,
    },

    /// A member's size differs from the manifest's.
    #[error(
        "package '{package}': member '{member}': size mismatch (manifest {expected} bytes, archive {actual} bytes)"
    )]
    SizeMismatch {
        /// The package.
        package: String,
        /// The member.
        member: String,
        /// The manifest's size.
        expected: u64,
        /// The archive's size.
        actual: u64,
    },

    /// Bytes other than zero padding follow the end-of-archive marker.
    #[error("package '{package}': member '{member}': data after the end of the archive (byte {offset})")]
    TrailingData {
        /// The package.
        package: String,
        /// Always `end of archive`; kept so that every verification error names a member.
        member: String,
        /// Where the data starts.
        offset: u64,
    },

    /// A model package where an update bundle was expected, or the reverse.
    #[error("package '{package}': member 'govbox-manifest.json': this is a '{found}' package, expected '{expected}'")]
    WrongKind {
        /// The package.
        package: String,
        /// What the caller wanted.
        expected: PackageKind,
        /// What the manifest says.
        found: PackageKind,
    },

    /// The model's output differs from the self-test recorded in the manifest.
    #[error("package '{package}': member 'govbox-manifest.json': self-test failed: {mismatch}")]
    SelfTestMismatch {
        /// The package.
        package: String,
        /// Where and by how much.
        mismatch: SelfTestMismatch,
    },

    /// A package cannot be built from the given files.
    #[error("building package '{package}': {reason}")]
    Build {
        /// The package.
        package: String,
        /// Why.
        reason: String,
    },

    /// The same name and version is already imported with different content.
    #[error(
        "importing model '{name} {version}': version {version} is already imported with digest {existing}; this package has digest {new} (give it a new version)"
    )]
    VersionConflict {
        /// The model name.
        name: String,
        /// The version.
        version: String,
        /// The stored digest.
        existing: String,
        /// The new package's digest.
        new: String,
    },

    /// No such model, version or digest in the store.
    #[error("{action}: {what} is not in the model store")]
    NotFound {
        /// What was being done.
        action: String,
        /// What is missing.
        what: String,
    },

    /// Removing the active version of a model.
    #[error("removing model '{name} {version}': it is the active version; activate another version first")]
    ActiveVersion {
        /// The model name.
        name: String,
        /// The version.
        version: String,
    },

    /// Rolling back a model that has no earlier active version.
    #[error("rolling back model '{name}': there is no earlier active version to return to")]
    NoRollback {
        /// The model name.
        name: String,
    },

    /// The store's registry or a stored package is damaged.
    #[error("reading model store {}: {reason}", path.display())]
    CorruptStore {
        /// The file or folder.
        path: PathBuf,
        /// Why.
        reason: String,
    },

    /// A new trust root was refused.
    #[error("accepting new trust root: {reason}")]
    RootRejected {
        /// Why.
        reason: String,
    },

    /// Loading keys or a trust root failed.
    #[error(transparent)]
    Trust(#[from] ProvisionError),
}

impl PackageError {
    /// A stable short code for this kind of error, for metric labels and audit entries.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Read { .. } => "read",
            Self::Truncated { .. } => "truncated",
            Self::MalformedTar { .. } => "malformed_tar",
            Self::UnsupportedMember { .. } => "unsupported_member",
            Self::InvalidPath { .. } => "invalid_path",
            Self::TooLarge { .. } => "too_large",
            Self::MissingMember { .. } => "missing_member",
            Self::UnexpectedMember { .. } => "unexpected_member",
            Self::DuplicateMember { .. } => "duplicate_member",
            Self::InvalidManifest { .. } => "invalid_manifest",
            Self::UnknownFormat { .. } => "unknown_format",
            Self::InvalidSignatureFile { .. } => "invalid_signature_file",
            Self::Unsigned { .. } => "unsigned",
            Self::RootExpired { .. } => "root_expired",
            Self::BadSignature { .. } => "bad_signature",
            Self::WrongRole { .. } => "wrong_role",
            Self::AlgorithmMismatch { .. } => "algorithm_mismatch",
            Self::BelowThreshold { .. } => "below_threshold",
            Self::DigestMismatch { .. } => "sha256_mismatch",
            Self::SizeMismatch { .. } => "size_mismatch",
            Self::TrailingData { .. } => "trailing_data",
            Self::WrongKind { .. } => "wrong_kind",
            Self::SelfTestMismatch { .. } => "selftest_mismatch",
            Self::Build { .. } => "build",
            Self::VersionConflict { .. } => "version_conflict",
            Self::NotFound { .. } => "not_found",
            Self::ActiveVersion { .. } => "version_active",
            Self::NoRollback { .. } => "no_rollback",
            Self::CorruptStore { .. } => "store_corrupt",
            Self::RootRejected { .. } => "root_rejected",
            Self::Trust(e) => e.code(),
        }
    }

    /// Whether the error says the package itself is bad (tampered, malformed, untrusted), as
    /// opposed to a local failure (disk, store state).
    pub fn is_rejection(&self) -> bool {
        !matches!(
            self,
            Self::Io { .. }
                | Self::Read { .. }
                | Self::Build { .. }
                | Self::NotFound { .. }
                | Self::ActiveVersion { .. }
                | Self::NoRollback { .. }
                | Self::CorruptStore { .. }
                | Self::Trust(_)
        )
    }

    pub(crate) fn io(action: impl Into<String>, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io { action: action.into(), path: path.into(), source }
    }
}

/// This crate's result type.
pub type Result<T, E = PackageError> = std::result::Result<T, E>;
