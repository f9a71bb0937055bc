//! `govbox-attestation`: a signed statement of what a govbox appliance is running, and its
//! offline verification.
//!
//! A verifier picks a fresh random nonce; `govbox attest --nonce HEX -o report.json` asks the
//! running govboxd for a report, and `govbox attest verify report.json --nonce HEX ...` checks it
//! anywhere, with no network and no daemon.
//!
//! **What it trusts:** when making a report, the daemon's own view of itself (`/proc/self/exe`,
//! its config file, the trust root, the models it serves, the audit log's head) and the device
//! identity key in `STATE/identity/device.key`. When verifying, nothing in the report: the
//! signature is checked against the key the report carries, and that key is only worth something
//! once pinned (`--device-key`), just as the nonce, the binary and the model digests are only worth
//! something once compared with what the verifier expects.
//!
//! **What it guarantees:** a report that passes verification with a pinned device key and the
//! verifier's nonce was signed by that device after the nonce was chosen, and every byte of its
//! body is covered by the signature; any change to the body fails the `signature` check.
//!
//! # Format (`govbox-attestation/1`)
//!
//! The file is one JSON object:
//!
//! ```text
//! {
//!   "report": {
//!     "format": "govbox-attestation/1",
//!     "nonce": "<the verifier's nonce: 16 to 64 bytes, lower-case hex>",
//!     "time": "<RFC 3339 UTC>",
//!     "device": { "keyid": "<hex SHA-256 of the raw public key: 32 Ed25519 bytes or the SM2 point>",
//!                 "public_key": "<SPKI PEM>" },
//!     "measurements": {
//!       "hash": "sha256 | sm3 (the box's suite's; absent in older reports: sha256)",
//!       "binary_sha256": "<hex digest of the running govboxd, read from /proc/self/exe>",
//!       "config_sha256": "<hex digest of the config file's bytes, or \"none\">",
//!       "trust_root_sha256": "<hex digest of STATE/trust/root.json's bytes>",
//!       "models": [ { "name": "...", "version": "...",
//!                     "digest": "sha256-<hex of the signed manifest> | unsigned-dev-folder" } ],
//!       "boot_id": "<from /proc/sys/kernel/random/boot_id>"
//!     },
//!     "audit_head": { "tree_size": N, "root_hash": "...", "time": "...", "keyid": "...",
//!                     "signature": "..." },
//!     "backend": { "kind": "cpu", "name": "...", "simulated": false },
//!     "insecure_dev_models": false,
//!     "tpm": null,
//!     "tpm_status": "<why there is no quote, or \"quoted\">",
//!     "egress": { "mechanism": "landlock | seccomp | off", "abi": 7,
//!                 "connect": "denied | allowed", "bind_ports": [8443],
//!                 "other_inet": "denied | allowed" }
//!   },
//!   "keyid": "<the device key id again>",
//!   "alg": "ed25519 | sm2 (absent in older reports: ed25519)",
//!   "signature": "<lower-case hex: 64 Ed25519 bytes, or an SM2 DER signature>"
//! }
//! ```
//!
//! The signature is by the device key, of the box's suite (`identity/suite`): pure Ed25519
//! (RFC 8032) on an `intl` box, SM2 with SM3 and the ID `1234567812345678` on a `gm` box (whose
//! measurements are then SM3, `hash: "sm3"`), over the canonical JSON
//! (`govbox_provisioning::to_canonical_json`: sorted keys, no whitespace) of the `report` value
//! exactly as it appears in the file. The `format` field inside the signed body separates these
//! signatures from every other use of the device key. The audit head is the audit log's own
//! signed checkpoint (see `govbox-audit`), checkable with the audit public key.
//!
//! `tpm` is a TPM 2.0 quote ([`tpm::TpmQuote`]) over PCRs `sha256:0-7` and PCR 23, which govbox
//! extends with the digest of `measurements`, with the same nonce as qualifying data. Making one
//! needs the `tpm` cargo feature (libtss2 through tss-esapi) and a TPM: `GOVBOX_TPM_TCTI` (e.g.
//! `swtpm:host=127.0.0.1,port=2321`) or `/dev/tpmrm0`. Without a quote `tpm` is null and
//! `tpm_status` says why: no TPM ([`AttestError::TpmAbsent`]), a TPM that this build cannot use
//! ([`AttestError::TpmNotCompiled`]), or the TPM's error ([`AttestError::Tpm`]); both fields are
//! under the signature, and the verifier prints a missing quote as `SKIP tpm`, never as a pass.
//! Checking a quote is pure Rust and in every build (`tpm-signature`, `tpm-attest`, `tpm-nonce`,
//! `tpm-pcr-digest`, `tpm-measurements`). The attestation key has no EK certificate chain: it is
//! only as trustworthy as the report signature that carries it (see [`tpm`]).
//!
//! `egress` (absent in reports of a govboxd that predates it; the signature covers it like every
//! other field) states what the running govboxd can no longer do on the network, as set up at its
//! start (`[sandbox] egress`): `mechanism` is `landlock` (a Landlock ruleset, `abi` being the
//! kernel's Landlock ABI version, plus a seccomp filter for non-TCP internet sockets), `seccomp`
//! (a seccomp filter refusing every new `AF_INET`/`AF_INET6` socket; `abi` null) or `off`;
//! `connect` says whether outbound TCP connections are `denied`; `bind_ports` lists the only TCP
//! ports it may bind (null: any); `other_inet` covers UDP, raw and other internet sockets. The
//! verifier's `egress` check fails for a report whose box may open connections (unless
//! `--allow-egress`) and skips a report without the field. The kernel refuses blocked calls
//! silently with an error code to the caller: the report states what is refused, and govbox does
//! not claim to see, count or audit attempts.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod digest;
mod error;
mod measure;
mod report;
pub mod tpm;
mod verify;

pub use digest::{Nonce, digest_file, sha256_bytes, sha256_file, to_hex};
pub use error::AttestError;
pub use measure::{BOOT_ID_PATH, Measurements, MeasurementsBuilder, ModelMeasurement, NO_CONFIG, SELF_EXE};
pub use report::{
    BackendMeasurement, DeviceIdentity, EgressMeasurement, FORMAT, MAX_REPORT_BYTES, ReportBody, SignedReport,
    sign_report,
};
pub use verify::{Check, Expectations, Outcome, Verification, verify_report, verify_report_bytes};
