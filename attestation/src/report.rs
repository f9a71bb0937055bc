//! The report body, and signing it with the device key.

use govbox_audit::SignedTreeHead;
use govbox_provisioning::{KeyAlgorithm, PublicKey, SigningKey, to_canonical_json};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::digest::to_hex;
use crate::{AttestError, Measurements, Nonce};

/// The format tag; it is inside the signed body, so a signature over a report can never be
/// mistaken for the device key's signature over anything else.
pub const FORMAT: &str = "govbox-attestation/1";
/// The largest report file a verifier reads (a report is a few KiB).
pub const MAX_REPORT_BYTES: u64 = 1 << 20;

/// The device that signs the report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceIdentity {
    /// Hex SHA-256 of the raw public key (32 Ed25519 bytes or the 65-byte SM2 point).
    pub keyid: String,
    /// The public key, SPKI PEM.
    pub public_key: String,
}

/// The compute backend in use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendMeasurement {
    /// `cpu`, `cuda`, ...
    pub kind: String,
    /// The device's name.
    pub name: String,
    /// Whether it is a simulation of an accelerator (tests only).
    pub simulated: bool,
}

/// What the running govboxd can no longer do on the network (its egress lockdown), as the kernel
/// enforces it. The kernel refuses blocked calls silently, with an error code to the caller:
/// these facts say what is refused, never that anything was attempted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressMeasurement {
    /// `landlock`, `seccomp` or `off`.
    pub mechanism: String,
    /// The kernel's Landlock ABI version with `landlock`, else null.
    pub abi: Option<u32>,
    /// Outbound TCP connections (IPv4 and IPv6): `denied` or `allowed`.
    pub connect: String,
    /// The only TCP ports the process may bind (the HTTPS listener's); null means any.
    pub bind_ports: Option<Vec<u16>>,
    /// New UDP, raw and other non-TCP `AF_INET`/`AF_INET6` sockets: `denied` or `allowed`.
    pub other_inet: String,
}

impl EgressMeasurement {
    /// No lockdown (`[sandbox] egress = "off"`).
    pub fn off() -> Self {
        Self {
            mechanism: "off".into(),
            abi: None,
            connect: "allowed".into(),
            bind_ports: None,
            other_inet: "allowed".into(),
        }
    }

    /// Whether outbound connections are refused (TCP and every other internet socket).
    pub fn denies_egress(&self) -> bool {
        self.mechanism != "off" && self.connect == "denied" && self.other_inet == "denied"
    }

    /// One line for logs and the verifier, e.g. `landlock ABI 7: TCP connect denied, bind allowed
    /// only on port 8443; other internet sockets denied`.
    pub fn summary(&self) -> String {
        let mech = match self.abi {
            Some(abi) => format!("{} ABI {abi}", self.mechanism),
            None => self.mechanism.clone(),
        };
        let bind = match &self.bind_ports {
            None => "bind allowed on any port".to_string(),
            Some(p) if p.is_empty() => "no bind allowed".to_string(),
            Some(p) => {
                let ports: Vec<String> = p.iter().map(u16::to_string).collect();
                format!("bind allowed only on port {}", ports.join(", "))
            }
        };
        format!("{mech}: TCP connect {}, {bind}; other internet sockets {}", self.connect, self.other_inet)
    }
}

/// What the device signs (see the crate documentation for the JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct ReportBody {
    /// [`FORMAT`].
    pub format: String,
    /// The verifier's nonce, lower-case hex.
    pub nonce: String,
    /// When the report was made, RFC 3339 UTC.
    pub time: String,
    /// The signing device.
    pub device: DeviceIdentity,
    /// What the box runs.
    pub measurements: Measurements,
    /// The audit log's signed head when the report was made.
    pub audit_head: SignedTreeHead,
    /// The compute backend.
    pub backend: BackendMeasurement,
    /// Whether unsigned dev model folders may be served.
    pub insecure_dev_models: bool,
    /// The TPM quote, or null.
    pub tpm: Option<Value>,
    /// `quoted`, or why there is no quote.
    pub tpm_status: String,
    /// The egress lockdown in force; absent in reports of a govboxd that predates it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<EgressMeasurement>,
}

impl ReportBody {
    /// A body made now, with no TPM quote (see [`ReportBody::with_tpm`]).
    pub fn new(
        nonce: &Nonce,
        device: &PublicKey,
        measurements: Measurements,
        audit_head: SignedTreeHead,
        backend: BackendMeasurement,
        insecure_dev_models: bool,
    ) -> Self {
        let now = time::OffsetDateTime::now_utc();
        let time = now.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| now.to_string());
        Self {
            format: FORMAT.to_string(),
            nonce: nonce.as_hex().to_string(),
            time,
            device: DeviceIdentity { keyid: device.keyid(), public_key: device.to_spki_pem() },
            measurements,
            audit_head,
            backend,
            insecure_dev_models,
            tpm: None,
            tpm_status: "not requested".to_string(),
            egress: None,
        }
    }

    /// Records the egress lockdown that the daemon put in force.
    pub fn with_egress(mut self, egress: EgressMeasurement) -> Self {
        self.egress = Some(egress);
        self
    }

    /// Asks the TPM, if there is one, for a quote over this body's nonce and measurements
    /// ([`crate::tpm::quote_for_report`]) and records the outcome with [`ReportBody::with_tpm`].
    /// A TPM error becomes `tpm_status`; it never fails the report.
    pub fn with_tpm_quote(self) -> Self {
        let quote =
            Nonce::parse(&self.nonce).and_then(|nonce| crate::tpm::quote_for_report(&nonce, &self.measurements));
        self.with_tpm(quote)
    }

    /// Records the outcome of a TPM quote: the quote, or the reason there is none.
    pub fn with_tpm(mut self, quote: Result<Value, AttestError>) -> Self {
        match quote {
            Ok(q) => {
                self.tpm = Some(q);
                self.tpm_status = "quoted".to_string();
            }
            Err(e) => {
                self.tpm = None;
                self.tpm_status = e.to_string();
            }
        }
        self
    }

    /// The bytes the signature covers: the canonical JSON of the body.
    pub fn signed_bytes(&self) -> Result<Vec<u8>, AttestError> {
        Ok(to_canonical_json(&serde_json::to_value(self)?).into_bytes())
    }
}

/// A report as written to a file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReport {
    /// The signed body.
    pub report: ReportBody,
    /// The device key id (the same as `report.device.keyid`).
    pub keyid: String,
    /// The signature's algorithm, the device key's: `ed25519`, or `sm2` (SM2 with SM3 and the ID
    /// `1234567812345678`) on a `gm` box. Absent in reports made before SM2: Ed25519.
    #[serde(default)]
    pub alg: KeyAlgorithm,
    /// The signature over [`ReportBody::signed_bytes`], lower-case hex: 64 bytes for Ed25519,
    /// DER for SM2.
    pub signature: String,
}

impl SignedReport {
    /// Pretty JSON with a final newline, for a file.
    pub fn to_json_pretty(&self) -> Result<String, AttestError> {
        let mut s = serde_json::to_string_pretty(self)?;
        s.push('\n');
        Ok(s)
    }
}

/// Signs `body` with the device key. The body's `device` is set from `key`, so that the report
/// always names the key that signed it.
pub fn sign_report(key: &SigningKey, mut body: ReportBody) -> Result<SignedReport, AttestError> {
    let public = key.public_key();
    body.device = DeviceIdentity { keyid: public.keyid(), public_key: public.to_spki_pem() };
    let signature = to_hex(&key.sign(&body.signed_bytes()?));
    Ok(SignedReport { keyid: public.keyid(), alg: key.algorithm(), signature, report: body })
}
