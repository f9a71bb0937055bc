//! The attestation error type.

use std::path::PathBuf;

/// Why a report could not be made or read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AttestError {
    /// The nonce is not 16 to 64 bytes of hex.
    #[error("nonce '{nonce}': {reason}")]
    InvalidNonce {
        /// The nonce as given (cut to 140 characters).
        nonce: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file to measure could not be read.
    #[error("measuring {what} {}: {source}", path.display())]
    Measure {
        /// What the file is (`govboxd binary`, `config file`, ...).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
    /// A measurement that the report needs was not given to the builder.
    #[error("making the report: the {0} measurement is missing")]
    MissingMeasurement(&'static str),
    /// The report file is larger than [`crate::MAX_REPORT_BYTES`].
    #[error("reading attestation report {}: larger than {limit} bytes", path.display())]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// The cap.
        limit: u64,
    },
    /// The report file could not be read.
    #[error("reading attestation report {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
    /// The report could not be serialized.
    #[error("serializing the attestation report: {0}")]
    Serialize(#[from] serde_json::Error),
    /// This build has no TPM support (the `tpm` cargo feature is off).
    #[error("a TPM is present, but govbox was not compiled with TPM support (cargo feature 'tpm')")]
    TpmNotCompiled,
    /// No TPM is present or configured.
    #[error("no TPM: {0}")]
    TpmAbsent(String),
    /// The TPM is there, but the quote failed (the step and libtss2's error).
    #[error("TPM quote failed: {0}")]
    Tpm(String),
}

impl AttestError {
    /// A stable short code, for the admin protocol and logs.
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidNonce { .. } => "invalid_nonce",
            Self::Measure { .. } => "measurement_failed",
            Self::MissingMeasurement(_) => "measurement_missing",
            Self::TooLarge { .. } => "too_large",
            Self::Read { .. } => "io",
            Self::Serialize(_) => "serialize",
            Self::TpmNotCompiled => "tpm_not_compiled",
            Self::TpmAbsent(_) => "tpm_absent",
            Self::Tpm(_) => "tpm_failed",
        }
    }
}
