//! TPM 2.0 quotes: making one (cargo feature `tpm`) and checking one (every build).
//!
//! # What is quoted
//!
//! When a TPM is reached — the TCTI in [`TCTI_ENV`] (e.g. `swtpm:host=127.0.0.1,port=2321`), else
//! the kernel's resource manager [`TPM_DEVICE`] — the report builder:
//!
//! 1. resets PCR [`GOVBOX_PCR`] (23, resettable from locality 0 on PC-client TPMs) and extends
//!    its SHA-256 bank once with the [`measurements_digest`] of the report, so that PCR 23 holds
//!    `SHA-256(32 zero bytes || digest)`. govbox takes PCR 23 for itself: anything else on the
//!    machine that uses it is overwritten;
//! 2. creates the attestation key (AK): a restricted ECC P-256 ECDSA/SHA-256 signing key, made as
//!    a primary key of the endorsement hierarchy, so the same key on every report of one TPM;
//! 3. quotes PCRs `sha256:0-7,23` with the report's nonce as qualifying data, and reads back the
//!    PCR values.
//!
//! The report's `tpm` field is then a [`TpmQuote`]: the `TPMS_ATTEST` bytes the TPM signed, the
//! signature (`r || s`, 64 bytes), the AK public key (SPKI PEM), the PCR values and the
//! measurements digest.
//!
//! # What it is worth
//!
//! No EK certificate chain is checked and no credential activation is done, so nothing proves
//! that the AK lives in a genuine TPM: **the AK is only as trustworthy as the report signature
//! that carries it** (the device key signs the report, which includes the AK public key). A
//! verifier that pins the device key, or that pins the AK itself (it is stable per TPM), gets a
//! quote by that key over the boot-chain PCRs 0–7 and the govbox PCR, fresh for its nonce.
//! A verifier that pins neither learns only that the report is self-consistent.
//!
//! # Checks ([`verify_quote`], pure Rust with `ring`)
//!
//! `tpm-signature` (ECDSA P-256 SHA-256 by the AK over the attest bytes), `tpm-attest`
//! (magic `0xff544347`, type `TPM_ST_ATTEST_QUOTE`, PCR selection exactly `sha256:0-7,23`),
//! `tpm-nonce` (`extraData` is the verifier's nonce), `tpm-pcr-digest` (the quoted PCR digest is
//! SHA-256 of the reported PCR values, in order) and `tpm-measurements` (PCR 23 is the one
//! extension of the report's measurements digest, which is the digest of its measurements).

use govbox_provisioning::{HexCase, unhex, unhex_vec};
use serde::{Deserialize, Serialize};

use crate::verify::{Check, Outcome};
use crate::{AttestError, Measurements, Nonce, to_hex};

#[cfg(feature = "tpm")]
mod esys;

/// The kernel's TPM resource manager device.
pub const TPM_DEVICE: &str = "/dev/tpmrm0";
/// The environment variable naming a TCTI (e.g. `swtpm:host=127.0.0.1,port=2321`).
pub const TCTI_ENV: &str = "GOVBOX_TPM_TCTI";
/// The PCR govbox resets and extends with its measurements digest.
pub const GOVBOX_PCR: u32 = 23;
/// The quoted PCRs of the SHA-256 bank, in the order of the quote's digest.
pub const QUOTED_PCRS: [u32; 9] = [0, 1, 2, 3, 4, 5, 6, 7, GOVBOX_PCR];
/// The format tag of [`TpmQuote`].
pub const QUOTE_FORMAT: &str = "govbox-tpm-quote/1";
/// The PCR bank quoted.
pub const PCR_BANK: &str = "sha256";
/// How [`TpmQuote::signature`] is encoded.
pub const SIGNATURE_SCHEME: &str = "ecdsa-p256-sha256-fixed";

/// `TPM_GENERATED_VALUE`, the first field of every `TPMS_ATTEST`.
const TPM_GENERATED: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
const ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256`.
const ALG_SHA256: u16 = 0x000b;
/// The SubjectPublicKeyInfo DER prefix of an uncompressed P-256 point (id-ecPublicKey, prime256v1).
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
    0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// One PCR value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PcrValue {
    /// The PCR index.
    pub index: u32,
    /// Its SHA-256 bank value, lower-case hex.
    pub value: String,
}

/// A TPM 2.0 quote as the report carries it (the `tpm` field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmQuote {
    /// [`QUOTE_FORMAT`].
    pub format: String,
    /// The TCTI the TPM was reached through.
    pub tcti: String,
    /// The attestation key, SPKI PEM (ECDSA P-256).
    pub ak_public_key: String,
    /// [`SIGNATURE_SCHEME`].
    pub signature_scheme: String,
    /// The marshalled `TPMS_ATTEST` the TPM signed, lower-case hex.
    pub attest: String,
    /// The AK's signature over `attest`: `r || s`, 32 bytes each, lower-case hex.
    pub signature: String,
    /// [`PCR_BANK`].
    pub pcr_bank: String,
    /// The quoted PCRs' values, in [`QUOTED_PCRS`] order.
    pub pcrs: Vec<PcrValue>,
    /// The digest PCR 23 was extended with ([`measurements_digest`]), lower-case hex.
    pub measurements_digest: String,
}

/// Where a TPM would be reached, if anywhere: the TCTI of [`TCTI_ENV`], else [`TPM_DEVICE`].
pub fn detect() -> Option<String> {
    match std::env::var(TCTI_ENV) {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ if std::path::Path::new(TPM_DEVICE).exists() => Some(format!("device:{TPM_DEVICE}")),
        _ => None,
    }
}

/// SHA-256 of the canonical JSON of the report's `measurements`: what PCR 23 is extended with.
pub fn measurements_digest(m: &Measurements) -> Result<[u8; 32], AttestError> {
    let json = govbox_provisioning::to_canonical_json(&serde_json::to_value(m)?);
    Ok(sha256(json.as_bytes()))
}

/// The expected PCR 23 after one extension from reset: `SHA-256(32 zero bytes || digest)`.
pub fn expected_govbox_pcr(measurements_digest: &[u8; 32]) -> [u8; 32] {
    let mut buf = [0u8; 64];
    buf[32..].copy_from_slice(measurements_digest);
    sha256(&buf)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// A quote from the TPM at `tcti` (`swtpm:host=127.0.0.1,port=PORT`, `device:/dev/tpmrm0`, ...):
/// PCR 23 reset and extended with `measurements_digest`, then PCRs `sha256:0-7,23` quoted by the
/// attestation key with `nonce` as qualifying data (see the module documentation).
#[cfg(feature = "tpm")]
pub fn quote(tcti: &str, nonce: &[u8], measurements_digest: [u8; 32]) -> Result<TpmQuote, AttestError> {
    esys::quote(tcti, nonce, measurements_digest)
}

/// The report's `tpm` value for `nonce` and `measurements`, or why there is none: no TPM
/// ([`AttestError::TpmAbsent`]), a TPM this build cannot use ([`AttestError::TpmNotCompiled`]),
/// or the TPM's error ([`AttestError::Tpm`]).
pub fn quote_for_report(nonce: &Nonce, measurements: &Measurements) -> Result<serde_json::Value, AttestError> {
    let Some(tcti) = detect() else {
        return Err(AttestError::TpmAbsent(format!("no {TPM_DEVICE} and {TCTI_ENV} is not set")));
    };
    #[cfg(feature = "tpm")]
    {
        let q = quote(&tcti, &nonce.to_bytes(), measurements_digest(measurements)?)?;
        Ok(serde_json::to_value(q)?)
    }
    #[cfg(not(feature = "tpm"))]
    {
        let _ = (tcti, nonce, measurements);
        Err(AttestError::TpmNotCompiled)
    }
}

/// The SPKI PEM of an uncompressed P-256 point (`04 || x || y`).
pub fn ak_spki_pem(point: &[u8; 65]) -> String {
    let mut der = P256_SPKI_PREFIX.to_vec();
    der.extend_from_slice(point);
    pem::encode(&pem::Pem::new("PUBLIC KEY", der)).replace("\r\n", "\n")
}

/// The uncompressed point of a P-256 SPKI PEM.
fn ak_point(pem_text: &str) -> Result<Vec<u8>, String> {
    let p = pem::parse(pem_text).map_err(|e| format!("not PEM: {e}"))?;
    if p.tag() != "PUBLIC KEY" {
        return Err(format!("a PEM '{}', not a 'PUBLIC KEY'", p.tag()));
    }
    match p.contents().strip_prefix(&P256_SPKI_PREFIX[..]) {
        Some(point) if point.len() == 65 && point[0] == 4 => Ok(point.to_vec()),
        _ => Err("not an uncompressed ECDSA P-256 SubjectPublicKeyInfo".into()),
    }
}

/// The parts of a `TPMS_ATTEST` of a quote that the checks read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteInfo {
    /// `extraData`: the qualifying data (the nonce).
    pub extra_data: Vec<u8>,
    /// The PCR selection: `(hash algorithm, selected PCR indices)` per bank.
    pub selection: Vec<(u16, Vec<u32>)>,
    /// `pcrDigest`.
    pub pcr_digest: Vec<u8>,
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        if self.0.len() < n {
            return Err(format!("truncated at {what}"));
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, String> {
        let b = self.take(4, what)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn sized(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u16(what)?;
        self.take(usize::from(n), what)
    }
}

/// Parses a marshalled `TPMS_ATTEST`, requiring the magic and the quote type.
pub fn parse_quote_attest(bytes: &[u8]) -> Result<QuoteInfo, String> {
    let mut r = Reader(bytes);
    let magic = r.u32("magic")?;
    if magic != TPM_GENERATED {
        return Err(format!("magic is {magic:#010x}, not TPM_GENERATED_VALUE {TPM_GENERATED:#010x}"));
    }
    let kind = r.u16("type")?;
    if kind != ST_ATTEST_QUOTE {
        return Err(format!("type is {kind:#06x}, not TPM_ST_ATTEST_QUOTE {ST_ATTEST_QUOTE:#06x}"));
    }
    r.sized("qualifiedSigner")?;
    let extra_data = r.sized("extraData")?.to_vec();
    r.take(8 + 4 + 4 + 1, "clockInfo")?;
    r.take(8, "firmwareVersion")?;
    let count = r.u32("pcrSelect.count")?;
    if count > 16 {
        return Err(format!("{count} PCR banks selected"));
    }
    let mut selection = Vec::new();
    for _ in 0..count {
        let alg = r.u16("pcrSelect.hash")?;
        let size = r.u8("pcrSelect.sizeofSelect")?;
        let bits = r.take(usize::from(size), "pcrSelect.pcrSelect")?;
        let mut pcrs = Vec::new();
        for (byte_index, byte) in bits.iter().enumerate() {
            for bit in 0..8u32 {
                if byte & (1 << bit) != 0 {
                    pcrs.push(u32::try_from(byte_index).unwrap_or(u32::MAX / 16) * 8 + bit);
                }
            }
        }
        selection.push((alg, pcrs));
    }
    let pcr_digest = r.sized("pcrDigest")?.to_vec();
    if !r.0.is_empty() {
        return Err(format!("{} bytes after the quote information", r.0.len()));
    }
    Ok(QuoteInfo { extra_data, selection, pcr_digest })
}

/// Checks a quote against the verifier's nonce and, when known, the report's measurements.
/// Returns one named check per property (see the module documentation).
pub fn verify_quote(q: &TpmQuote, nonce: &[u8], measurements: Option<&Measurements>) -> Vec<Check> {
    let mut checks = Vec::new();
    let mut push = |name: &str, outcome: Outcome, detail: String| {
        checks.push(Check { name: name.to_string(), outcome, detail });
    };
    let attest = unhex_vec(&q.attest, HexCase::Lower);

    // tpm-signature
    let sig = unhex_vec(&q.signature, HexCase::Lower);
    let signature = match (ak_point(&q.ak_public_key), &attest, &sig) {
        _ if q.signature_scheme != SIGNATURE_SCHEME => {
            Err(format!("scheme '{}', not '{SIGNATURE_SCHEME}'", q.signature_scheme))
        }
        (Err(e), _, _) => Err(format!("attestation key: {e}")),
        (_, None, _) => Err("attest is not lower-case hex".to_string()),
        (_, _, None) => Err("signature is not lower-case hex".to_string()),
        (Ok(point), Some(attest), Some(sig)) => {
            ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, point)
                .verify(attest, sig)
                .map(|()| {
                    format!(
                        "ECDSA P-256 SHA-256 by the AK (sha256 of SPKI {}) over the attest bytes; the AK is \
                         not anchored by an EK certificate: it is as trusted as the report signature that \
                         carries it",
                        ak_point(&q.ak_public_key).map(|p| crate::sha256_bytes(&p)).unwrap_or_default()
                    )
                })
                .map_err(|_| {
                    "does not verify: the attest bytes or the signature were changed, or another key \
                             signed them"
                        .to_string()
                })
        }
    };
    match signature {
        Ok(d) => push("tpm-signature", Outcome::Pass, d),
        Err(d) => push("tpm-signature", Outcome::Fail, d),
    }

    // tpm-attest
    let info = attest.as_deref().ok_or_else(|| "attest is not lower-case hex".to_string()).and_then(parse_quote_attest);
    let info = match info {
        Ok(i) => {
            let want = vec![(ALG_SHA256, QUOTED_PCRS.to_vec())];
            if i.selection == want {
                push(
                    "tpm-attest",
                    Outcome::Pass,
                    "TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE over sha256:0-7,23".to_string(),
                );
            } else {
                push("tpm-attest", Outcome::Fail, format!("quotes PCRs {:?}, not sha256:0-7,23", i.selection));
            }
            Some(i)
        }
        Err(e) => {
            push("tpm-attest", Outcome::Fail, format!("not a quote TPMS_ATTEST: {e}"));
            None
        }
    };

    // tpm-nonce
    match &info {
        None => push("tpm-nonce", Outcome::Fail, "no readable quote to take extraData from".into()),
        Some(i) if i.extra_data == nonce => {
            push("tpm-nonce", Outcome::Pass, format!("extraData is the nonce {}", to_hex(nonce)))
        }
        Some(i) => push(
            "tpm-nonce",
            Outcome::Fail,
            format!("extraData {} differs from the nonce {}", to_hex(&i.extra_data), to_hex(nonce)),
        ),
    }

    // tpm-pcr-digest
    let indices: Vec<u32> = q.pcrs.iter().map(|p| p.index).collect();
    let values: Option<Vec<[u8; 32]>> = q.pcrs.iter().map(|p| unhex(&p.value, HexCase::Lower)).collect();
    match (&info, values) {
        (None, _) => push("tpm-pcr-digest", Outcome::Fail, "no readable quote to take pcrDigest from".into()),
        _ if q.pcr_bank != PCR_BANK || indices != QUOTED_PCRS => push(
            "tpm-pcr-digest",
            Outcome::Fail,
            format!("reported PCRs {}:{indices:?}, not sha256:0-7,23", q.pcr_bank),
        ),
        (_, None) => {
            push("tpm-pcr-digest", Outcome::Fail, "a reported PCR value is not 32 bytes of lower-case hex".into())
        }
        (Some(i), Some(values)) => {
            let digest = sha256(&values.concat());
            if i.pcr_digest == digest {
                push(
                    "tpm-pcr-digest",
                    Outcome::Pass,
                    format!("the quoted PCR digest {} is that of the reported values", to_hex(&digest)),
                );
            } else {
                push(
                    "tpm-pcr-digest",
                    Outcome::Fail,
                    format!(
                        "the quoted PCR digest {} differs from SHA-256 of the reported values {}",
                        to_hex(&i.pcr_digest),
                        to_hex(&digest)
                    ),
                );
            }
        }
    }

    // tpm-measurements
    let reported: Option<[u8; 32]> = unhex(&q.measurements_digest, HexCase::Lower);
    let pcr23 = q.pcrs.iter().find(|p| p.index == GOVBOX_PCR).map(|p| p.value.as_str());
    let of_report = measurements.map(measurements_digest);
    match (reported, of_report) {
        (None, _) => push("tpm-measurements", Outcome::Fail, "measurements_digest is not 32 bytes of hex".into()),
        (Some(_), Some(Err(e))) => push("tpm-measurements", Outcome::Fail, format!("digesting the measurements: {e}")),
        (Some(r), Some(Ok(m))) if r != m => push(
            "tpm-measurements",
            Outcome::Fail,
            format!("the quote's measurements digest {} is not that of the report's {}", to_hex(&r), to_hex(&m)),
        ),
        (Some(r), _) if pcr23 != Some(to_hex(&expected_govbox_pcr(&r)).as_str()) => push(
            "tpm-measurements",
            Outcome::Fail,
            format!(
                "PCR {GOVBOX_PCR} is {}, not the single extension by {} ({})",
                pcr23.unwrap_or("missing"),
                to_hex(&r),
                to_hex(&expected_govbox_pcr(&r))
            ),
        ),
        (Some(r), m) => push(
            "tpm-measurements",
            Outcome::Pass,
            format!(
                "PCR {GOVBOX_PCR} is the single extension by the measurements digest {}{}",
                to_hex(&r),
                if m.is_some() { ", the digest of the report's measurements" } else { "" }
            ),
        ),
    }
    checks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_tpm_or_the_feature_the_reason_is_given() {
        let nonce = Nonce::parse(&"ab".repeat(16)).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        let m = Measurements::builder()
            .binary(&f)
            .unwrap()
            .config(None)
            .unwrap()
            .trust_root(&f)
            .unwrap()
            .boot_id(&f)
            .unwrap()
            .build()
            .unwrap();
        match (detect(), quote_for_report(&nonce, &m)) {
            (None, Err(e)) => assert_eq!(e.code(), "tpm_absent", "{e}"),
            (Some(_), Err(e)) if !cfg!(feature = "tpm") => assert_eq!(e.code(), "tpm_not_compiled", "{e}"),
            (Some(_), _) => {} // a real TPM or TCTI: exercised by tests/tpm_swtpm.rs
            (None, Ok(_)) => panic!("a quote without a TPM"),
        }
    }

    /// A quote's `TPMS_ATTEST` over sha256:0-7,23 with three bytes of `extraData`.
    fn attest(extra_data: [u8; 3], pcr_digest: [u8; 32]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&TPM_GENERATED.to_be_bytes());
        a.extend_from_slice(&ST_ATTEST_QUOTE.to_be_bytes());
        a.extend_from_slice(&[0, 2, 0xaa, 0xbb]); // qualifiedSigner
        a.extend_from_slice(&[0, 3]);
        a.extend_from_slice(&extra_data);
        a.extend_from_slice(&[0; 17 + 8]); // clockInfo, firmwareVersion
        a.extend_from_slice(&[0, 0, 0, 1, 0, 0x0b, 3, 0xff, 0, 0x80]); // sha256:0-7,23
        a.extend_from_slice(&[0, 32]);
        a.extend_from_slice(&pcr_digest);
        a
    }

    #[test]
    fn attest_parser_rejects_wrong_magic_type_and_truncation() {
        let a = attest([1, 2, 3], [7; 32]);
        let i = parse_quote_attest(&a).unwrap();
        assert_eq!(i.extra_data, vec![1, 2, 3]);
        assert_eq!(i.selection, vec![(ALG_SHA256, QUOTED_PCRS.to_vec())]);
        assert_eq!(i.pcr_digest, vec![7; 32]);
        let mut bad = a.clone();
        bad[0] ^= 1;
        assert!(parse_quote_attest(&bad).unwrap_err().contains("magic"));
        let mut bad = a.clone();
        bad[5] = 0x17;
        assert!(parse_quote_attest(&bad).unwrap_err().contains("TPM_ST_ATTEST_QUOTE"));
        assert!(parse_quote_attest(&a[..a.len() - 1]).unwrap_err().contains("truncated"));
    }

    /// Every hex field of a quote has one spelling, the lower case the TPM code writes: the same
    /// quote with any field in upper case fails that field's check.
    #[test]
    fn a_quote_is_read_only_in_lower_case_hex() {
        let nonce = [1, 2, 3];
        let digest = [0xcd; 32];
        let mut values = vec![[0xab; 32]; 8];
        values.push(expected_govbox_pcr(&digest));
        let mut point = [9u8; 65];
        point[0] = 4;
        let quote = TpmQuote {
            format: QUOTE_FORMAT.into(),
            tcti: "test".into(),
            ak_public_key: ak_spki_pem(&point),
            signature_scheme: SIGNATURE_SCHEME.into(),
            attest: to_hex(&attest(nonce, sha256(&values.concat()))),
            signature: to_hex(&[0xef; 64]),
            pcr_bank: PCR_BANK.into(),
            pcrs: QUOTED_PCRS.iter().zip(&values).map(|(&index, v)| PcrValue { index, value: to_hex(v) }).collect(),
            measurements_digest: to_hex(&digest),
        };
        let check =
            |q: &TpmQuote, name: &str| verify_quote(q, &nonce, None).into_iter().find(|c| c.name == name).unwrap();
        for name in ["tpm-attest", "tpm-nonce", "tpm-pcr-digest", "tpm-measurements"] {
            assert_eq!(check(&quote, name).outcome, Outcome::Pass, "{}", check(&quote, name));
        }
        assert!(!check(&quote, "tpm-signature").detail.contains("hex"), "{}", check(&quote, "tpm-signature"));
        let upper = |edit: fn(&mut TpmQuote)| {
            let mut q = quote.clone();
            edit(&mut q);
            q
        };
        let shouted: [(&str, TpmQuote); 4] = [
            ("tpm-attest", upper(|q| q.attest = q.attest.to_uppercase())),
            ("tpm-signature", upper(|q| q.signature = q.signature.to_uppercase())),
            ("tpm-pcr-digest", upper(|q| q.pcrs[3].value = q.pcrs[3].value.to_uppercase())),
            ("tpm-measurements", upper(|q| q.measurements_digest = q.measurements_digest.to_uppercase())),
        ];
        for (name, q) in shouted {
            let c = check(&q, name);
            assert!(c.outcome == Outcome::Fail && c.detail.contains("hex"), "{c}");
        }
    }

    #[test]
    fn ak_pem_round_trips() {
        let mut point = [9u8; 65];
        point[0] = 4;
        assert_eq!(ak_point(&ak_spki_pem(&point)).unwrap(), point.to_vec());
        assert!(ak_point("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n").is_err());
    }
}
