//! Offline verification: one named check per property, each PASS, FAIL or SKIP.
//!
//! The order follows what each check relies on: the document must be a `govbox-attestation/1`
//! report before anything in it is read; the signature makes every other field the device's own
//! statement; the pinned device key makes that device the expected one; the nonce makes the
//! statement fresh; only then do the measurements mean something.

use std::fmt;
use std::io::Read;
use std::path::Path;

use govbox_provisioning::{HashAlgorithm, HexCase, PublicKey, to_canonical_json, unhex};
use serde_json::Value;

use crate::tpm::{QUOTE_FORMAT, TpmQuote, verify_quote};
use crate::{AttestError, FORMAT, MAX_REPORT_BYTES, Nonce, SignedReport};

/// What the verifier expects; `None` or empty means "not checked" (the check is SKIPped).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Expectations {
    /// The nonce the verifier chose.
    pub nonce: Nonce,
    /// The device key the verifier trusts.
    pub device_key: Option<PublicKey>,
    /// The expected govboxd SHA-256 (hex, with or without `sha256-`).
    pub binary_sha256: Option<String>,
    /// Expected models: name and digest (hex, with or without `sha256-`).
    pub models: Vec<(String, String)>,
    /// The audit public key, to check the embedded audit head's signature.
    pub audit_key: Option<PublicKey>,
    /// Accept a box that may serve unsigned dev model folders.
    pub allow_dev_models: bool,
    /// Accept a box whose egress lockdown is off.
    pub allow_egress: bool,
}

impl Expectations {
    /// Expects `nonce` and nothing else.
    pub fn new(nonce: Nonce) -> Self {
        Self {
            nonce,
            device_key: None,
            binary_sha256: None,
            models: Vec::new(),
            audit_key: None,
            allow_dev_models: false,
            allow_egress: false,
        }
    }
}

/// A check's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// It holds.
    Pass,
    /// It does not: the report must not be relied on.
    Fail,
    /// Not checked (nothing to compare with); says so rather than passing silently.
    Skip,
}

/// One named check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// Its name (`format`, `signature`, `nonce`, `model tiny-qwen2`, ...).
    pub name: String,
    /// The result.
    pub outcome: Outcome,
    /// Why, in words.
    pub detail: String,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tag = match self.outcome {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Skip => "SKIP",
        };
        write!(f, "{tag} {}: {}", self.name, self.detail)
    }
}

/// Every check of one report, and the report when it could be read.
#[derive(Debug, Clone)]
pub struct Verification {
    /// The checks, in order.
    pub checks: Vec<Check>,
    /// The report, when it is a well-formed `govbox-attestation/1` document.
    pub report: Option<SignedReport>,
}

impl Verification {
    /// True when no check failed.
    pub fn passed(&self) -> bool {
        !self.checks.iter().any(|c| c.outcome == Outcome::Fail)
    }

    /// The check named `name`, if it ran.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    fn push(&mut self, name: impl Into<String>, outcome: Outcome, detail: impl Into<String>) {
        self.checks.push(Check { name: name.into(), outcome, detail: detail.into() });
    }
}

/// Reads a report file (at most [`MAX_REPORT_BYTES`]) and verifies it.
pub fn verify_report(path: &Path, expect: &Expectations) -> Result<Verification, AttestError> {
    let read_err = |source| AttestError::Read { path: path.to_path_buf(), source };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_REPORT_BYTES + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > MAX_REPORT_BYTES {
        return Err(AttestError::TooLarge { path: path.to_path_buf(), limit: MAX_REPORT_BYTES });
    }
    Ok(verify_report_bytes(&bytes, expect))
}

/// Verifies a report held in memory.
pub fn verify_report_bytes(bytes: &[u8], expect: &Expectations) -> Verification {
    let mut v = Verification { checks: Vec::new(), report: None };
    let Some((body, report)) = check_format(&mut v, bytes) else {
        return v;
    };
    let device = check_keyid(&mut v, &report);
    let signed = check_signature(&mut v, &body, &report, device.as_ref());
    check_device_key(&mut v, device.as_ref(), signed, expect.device_key.as_ref());
    check_nonce(&mut v, &report, &expect.nonce);
    check_binary(&mut v, &report, expect.binary_sha256.as_deref());
    for (name, digest) in &expect.models {
        check_model(&mut v, &report, name, digest);
    }
    check_signed_models_only(&mut v, &report, expect.allow_dev_models);
    check_audit_head(&mut v, &report, expect.audit_key.as_ref());
    check_tpm(&mut v, &report, &expect.nonce);
    check_egress(&mut v, &report, expect.allow_egress);
    v.report = Some(report);
    v
}

/// Rule: the document is a JSON object `{report, keyid, signature}` whose `report.format` is
/// `govbox-attestation/1` and which has exactly the fields of that format.
fn check_format(v: &mut Verification, bytes: &[u8]) -> Option<(Value, SignedReport)> {
    const NAME: &str = "format";
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(x) => x,
        Err(e) => {
            v.push(NAME, Outcome::Fail, format!("not JSON: {e}"));
            return None;
        }
    };
    let format = value.get("report").and_then(|r| r.get("format")).and_then(Value::as_str);
    if format != Some(FORMAT) {
        v.push(NAME, Outcome::Fail, format!("report.format is {format:?}, not \"{FORMAT}\""));
        return None;
    }
    let report: SignedReport = match serde_json::from_value(value.clone()) {
        Ok(r) => r,
        Err(e) => {
            v.push(NAME, Outcome::Fail, format!("not a well-formed {FORMAT} report: {e}"));
            return None;
        }
    };
    v.push(NAME, Outcome::Pass, FORMAT);
    Some((value["report"].clone(), report))
}

/// Rule: the key id (both the outer one and `report.device.keyid`) is the SHA-256 of the raw
/// public key that `report.device.public_key` holds.
fn check_keyid(v: &mut Verification, report: &SignedReport) -> Option<PublicKey> {
    const NAME: &str = "keyid";
    let key = match PublicKey::from_spki_pem(&report.report.device.public_key) {
        Ok(k) => k,
        Err(e) => {
            v.push(NAME, Outcome::Fail, format!("the embedded device key is not an Ed25519 or SM2 SPKI PEM: {e}"));
            return None;
        }
    };
    let id = key.keyid();
    if report.report.device.keyid != id || report.keyid != id {
        v.push(
            NAME,
            Outcome::Fail,
            format!(
                "the embedded key's id is {id}, but the report names {} (device) and {} (signature)",
                report.report.device.keyid, report.keyid
            ),
        );
    } else {
        v.push(NAME, Outcome::Pass, format!("{id} is the embedded device key's id"));
    }
    Some(key)
}

/// Rule: `signature` is a signature of the algorithm `alg` names, which must be the embedded
/// key's (Ed25519, or SM2 with SM3 and the default ID), by that key over the canonical JSON of
/// the `report` value exactly as the file holds it. Returns whether it does.
fn check_signature(v: &mut Verification, body: &Value, report: &SignedReport, key: Option<&PublicKey>) -> bool {
    const NAME: &str = "signature";
    let Some(key) = key else {
        v.push(NAME, Outcome::Fail, "no usable device key in the report to check it with");
        return false;
    };
    let alg = report.alg;
    if alg != key.algorithm() {
        let msg =
            format!("the report claims '{alg}' but its device key is {}; refusing to mix algorithms", key.algorithm());
        v.push(NAME, Outcome::Fail, msg);
        return false;
    }
    let Some(sig) = alg.decode_signature_hex(&report.signature) else {
        let max = alg.max_signature_hex_len();
        v.push(NAME, Outcome::Fail, format!("not a hex {alg} signature (at most {max} digits, well formed)"));
        return false;
    };
    match key.verify_claimed(alg, to_canonical_json(body).as_bytes(), &sig) {
        Ok(()) => {
            v.push(NAME, Outcome::Pass, format!("{alg} by the embedded device key over the whole report body"));
            true
        }
        Err(_) => {
            v.push(
                NAME,
                Outcome::Fail,
                "does not verify: the report body was changed after signing, or another key signed it",
            );
            false
        }
    }
}

/// Rule: when the verifier pins a device key, the report is validly signed by that key.
fn check_device_key(v: &mut Verification, key: Option<&PublicKey>, signed: bool, pinned: Option<&PublicKey>) {
    const NAME: &str = "device-key";
    match (pinned, key) {
        (Some(p), Some(k)) if !signed && p.as_bytes() == k.as_bytes() => v.push(
            NAME,
            Outcome::Fail,
            format!("the report names the pinned key {}, but its signature does not verify", p.keyid()),
        ),
        (None, _) => v.push(
            NAME,
            Outcome::Skip,
            "no --device-key given: the report only proves that it was signed by the key it carries",
        ),
        (Some(p), Some(k)) if p.as_bytes() == k.as_bytes() => {
            v.push(NAME, Outcome::Pass, format!("signed by the pinned device key {}", p.keyid()))
        }
        (Some(p), Some(k)) => v.push(
            NAME,
            Outcome::Fail,
            format!("the report is signed by device key {}, not by the pinned key {}", k.keyid(), p.keyid()),
        ),
        (Some(p), None) => {
            v.push(NAME, Outcome::Fail, format!("the report carries no usable key; expected {}", p.keyid()))
        }
    }
}

/// Rule: the report answers the verifier's own nonce (a replayed report answers another one).
fn check_nonce(v: &mut Verification, report: &SignedReport, nonce: &Nonce) {
    const NAME: &str = "nonce";
    if report.report.nonce == nonce.as_hex() {
        v.push(NAME, Outcome::Pass, format!("the report answers nonce {}", nonce.as_hex()));
    } else {
        v.push(
            NAME,
            Outcome::Fail,
            format!("report nonce {} differs from the expected {}", report.report.nonce, nonce.as_hex()),
        );
    }
}

/// A digest as lower-case hex without its `sha256-` or `sm3-` prefix.
fn bare_digest(d: &str) -> String {
    HashAlgorithm::strip_label(d.trim()).to_ascii_lowercase()
}

/// Rule: the running govboxd is the binary the verifier expects.
fn check_binary(v: &mut Verification, report: &SignedReport, expected: Option<&str>) {
    const NAME: &str = "binary";
    let got = &report.report.measurements.binary_sha256;
    let h = report.report.measurements.hash;
    match expected {
        None => v.push(NAME, Outcome::Skip, format!("govboxd {h} {got}; no --expect-binary given")),
        Some(e) if bare_digest(e) == *got => v.push(NAME, Outcome::Pass, format!("govboxd {h} {got}")),
        Some(e) => {
            v.push(NAME, Outcome::Fail, format!("govboxd {h} {got} differs from the expected {}", bare_digest(e)))
        }
    }
}

/// Rule: model `name` is served, from the package with the expected digest.
fn check_model(v: &mut Verification, report: &SignedReport, name: &str, digest: &str) {
    let check = format!("model {name}");
    let want = bare_digest(digest);
    match report.report.measurements.models.iter().find(|m| m.name == name) {
        None => v.push(check, Outcome::Fail, format!("model {name} is not served by the box")),
        Some(m) if bare_digest(&m.digest) == want => {
            v.push(check, Outcome::Pass, format!("{name} {} is package {}", m.version, m.digest))
        }
        Some(m) => v.push(
            check,
            Outcome::Fail,
            format!("{name} {} is package {}, not the expected {want}", m.version, m.digest),
        ),
    }
}

/// Rule: unless the verifier accepts them, the box serves signed packages only.
fn check_signed_models_only(v: &mut Verification, report: &SignedReport, allow: bool) {
    const NAME: &str = "signed-models-only";
    let r = &report.report;
    let dev: Vec<&str> =
        r.measurements.models.iter().filter(|m| m.digest == "unsigned-dev-folder").map(|m| m.name.as_str()).collect();
    if !r.insecure_dev_models && dev.is_empty() {
        v.push(NAME, Outcome::Pass, format!("{} model(s), all from signed packages", r.measurements.models.len()));
    } else if allow {
        v.push(NAME, Outcome::Skip, "the box may serve unsigned dev folders (accepted by --allow-dev-models)");
    } else {
        v.push(
            NAME,
            Outcome::Fail,
            format!("the box runs with --insecure-dev-models (unsigned folders served: {dev:?})"),
        );
    }
}

/// Rule: the embedded audit head is a well-formed checkpoint, and with the audit key its
/// signature verifies.
fn check_audit_head(v: &mut Verification, report: &SignedReport, audit_key: Option<&PublicKey>) {
    const NAME: &str = "audit-head";
    let head = &report.report.audit_head;
    let size = head.tree_size;
    match audit_key {
        Some(k) => match head.verify(k) {
            Ok(()) => v.push(
                NAME,
                Outcome::Pass,
                format!("tree_size {size}, root {}, signed by the audit key", head.root_hash),
            ),
            Err(e) => v.push(NAME, Outcome::Fail, format!("tree_size {size}: {e}")),
        },
        None => {
            let hash = |s: &str| unhex::<32>(s, HexCase::Lower).is_some();
            if hash(&head.root_hash) && hash(&head.keyid) && head.alg.decode_signature_hex(&head.signature).is_some() {
                v.push(
                    NAME,
                    Outcome::Pass,
                    format!(
                        "present (tree_size {size}, root {}), signature not checked without --audit-key",
                        head.root_hash
                    ),
                );
            } else {
                v.push(
                    NAME,
                    Outcome::Fail,
                    format!(
                        "tree_size {size}: root_hash, keyid or signature is not lower-case hex of the right length"
                    ),
                );
            }
        }
    }
}

/// Rule: a report without a quote says why (SKIP); a report with one carries a well-formed
/// [`TpmQuote`] whose own checks ([`crate::tpm::verify_quote`]) all hold, for the verifier's nonce
/// and the report's measurements.
fn check_tpm(v: &mut Verification, report: &SignedReport, nonce: &Nonce) {
    const NAME: &str = "tpm";
    let Some(value) = &report.report.tpm else {
        v.push(NAME, Outcome::Skip, format!("no quote ({})", report.report.tpm_status));
        return;
    };
    let quote: TpmQuote = match serde_json::from_value(value.clone()) {
        Ok(q) => q,
        Err(e) => {
            v.push(NAME, Outcome::Fail, format!("the tpm field is not a {QUOTE_FORMAT} quote: {e}"));
            return;
        }
    };
    if quote.format != QUOTE_FORMAT {
        v.push(NAME, Outcome::Fail, format!("tpm.format is '{}', not '{QUOTE_FORMAT}'", quote.format));
        return;
    }
    if report.report.tpm_status != "quoted" {
        v.push(NAME, Outcome::Fail, format!("a quote with tpm_status '{}'", report.report.tpm_status));
        return;
    }
    v.push(NAME, Outcome::Pass, format!("a {QUOTE_FORMAT} quote from TCTI {}", quote.tcti));
    v.checks.extend(verify_quote(&quote, &nonce.to_bytes(), Some(&report.report.measurements)));
}

/// Rule: unless the verifier accepts it, the box states that it cannot open outbound connections
/// (TCP connect and every other internet socket refused by the kernel). A report without the
/// `egress` field comes from a govboxd that predates the lockdown: SKIP, never a pass.
fn check_egress(v: &mut Verification, report: &SignedReport, allow: bool) {
    const NAME: &str = "egress";
    match &report.report.egress {
        None => v.push(NAME, Outcome::Skip, "the report does not say (made by a govboxd without egress lockdown)"),
        Some(e) if e.denies_egress() => v.push(NAME, Outcome::Pass, e.summary()),
        Some(e) if allow => v.push(NAME, Outcome::Skip, format!("{} (accepted by --allow-egress)", e.summary())),
        Some(e) => v.push(NAME, Outcome::Fail, format!("the box may open outbound connections: {}", e.summary())),
    }
}
