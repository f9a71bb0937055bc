//! TPM 2.0 quotes.
//!
//! A quote over PCRs 0–7 with the verifier's nonce as qualifying data would bind the report to
//! the boot chain. It needs libtss2 (through the `tss-esapi` crate), so it sits behind the `tpm`
//! cargo feature, off by default: a CPU-only build compiles this stub, which reports plainly
//! whether a TPM is there and that this build cannot quote with it.
//!
//! Status: not implemented yet. On the Debian 12 build machine `apt-get install libtss2-dev`
//! fails (`libcurl4-openssl-dev : Depends: libcurl4 (= 7.88.1-10+deb12u14) but
//! 7.88.1-10+deb12u15 is to be installed`), so tss-esapi cannot be built here. swtpm and
//! tpm2-tools do work (a `tpm2_quote` over `sha256:0-7,23` with a nonce verifies with
//! `openssl dgst -verify`), which is the path to test this against once the library installs.
//! A quote also needs an attestation key the verifier can anchor (EK certificate and credential
//! activation, or an AK certified at provisioning); a transient AK would prove nothing.

use crate::{AttestError, Nonce};

/// The kernel's TPM resource manager device.
pub const TPM_DEVICE: &str = "/dev/tpmrm0";
/// The environment variable naming a TCTI (e.g. `swtpm:host=127.0.0.1,port=2321`).
pub const TCTI_ENV: &str = "GOVBOX_TPM_TCTI";

/// Where a TPM would be reached, if anywhere: the TCTI of [`TCTI_ENV`], else [`TPM_DEVICE`].
pub fn detect() -> Option<String> {
    match std::env::var(TCTI_ENV) {
        Ok(t) if !t.trim().is_empty() => Some(t),
        _ if std::path::Path::new(TPM_DEVICE).exists() => Some(format!("device:{TPM_DEVICE}")),
        _ => None,
    }
}

/// A quote over PCRs 0–7 with `nonce` as qualifying data, as a JSON value for the report.
///
/// This build has no TPM support: the answer is [`AttestError::TpmAbsent`] when no TPM is there,
/// else [`AttestError::TpmNotCompiled`].
#[cfg(not(feature = "tpm"))]
pub fn quote(nonce: &Nonce) -> Result<serde_json::Value, AttestError> {
    let _ = nonce;
    match detect() {
        None => Err(AttestError::TpmAbsent(format!("no {TPM_DEVICE} and {TCTI_ENV} is not set"))),
        Some(_) => Err(AttestError::TpmNotCompiled),
    }
}

#[cfg(feature = "tpm")]
compile_error!(
    "the `tpm` feature needs tss-esapi and libtss2-dev, which this tree does not build yet; \
     see the TPM notes in attestation/src/tpm.rs"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stub_says_why_there_is_no_quote() {
        let nonce = Nonce::parse(&"ab".repeat(16)).unwrap();
        let e = quote(&nonce).unwrap_err();
        match detect() {
            None => assert_eq!(e.code(), "tpm_absent", "{e}"),
            Some(_) => assert_eq!(e.code(), "tpm_not_compiled", "{e}"),
        }
    }
}
