//! Renewing the HTTPS server certificate: a new key pair and certificate with the same subject and
//! names, signed by the box's existing CA, so that no client has to change what it trusts.
//!
//! The files are replaced atomically (each a temporary file, fsynced, renamed), the key with mode
//! 0600 and the certificate 0644, and they keep the owner of the files they replace: a renewal run
//! as root leaves them readable by the `govbox` user that govboxd runs as. A running govboxd keeps
//! serving the old certificate until it is told to reload (`govbox tls renew` does that through the
//! admin socket).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

use rcgen::{CertificateParams, ExtendedKeyUsagePurpose, KeyUsagePurpose};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

use crate::error::{ProvisionError, Result};
use crate::fsio::{self, Overwrite, PRIVATE_FILE_MODE, PUBLIC_FILE_MODE};
use crate::paths::StatePaths;
use crate::tls::{self, BoxCa, PEM_FILE_LIMIT, ServerName};

/// The longest validity `govbox tls renew --days` accepts: the CA's own.
pub const MAX_RENEW_DAYS: u32 = 20 * 365;

/// What a server certificate says about itself, for `govbox tls renew` and `govbox status`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerCertSummary {
    /// The serial number, lower-case hex without separators.
    pub serial: String,
    /// The subject, as text.
    pub subject: String,
    /// The issuer, as text.
    pub issuer: String,
    /// DNS names and IP addresses of the subjectAltName extension, in order.
    pub sans: Vec<String>,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// SHA-256 of the DER encoding, lower-case hex.
    pub sha256: String,
}

impl ServerCertSummary {
    /// Reads a DER certificate.
    pub fn from_der(der: &[u8], origin: &str) -> Result<Self> {
        let info = tls::CertInfo::from_der(der, origin)?;
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| ProvisionError::InvalidCertificate {
            origin: origin.to_string(),
            reason: format!("not an X.509 certificate: {e}"),
        })?;
        Ok(ServerCertSummary {
            serial: fsio::hex(cert.raw_serial()),
            subject: info.subject.clone(),
            issuer: cert.issuer().to_string(),
            sans: info.sans.clone(),
            not_before: info.not_before,
            not_after: info.not_after,
            sha256: info.sha256_hex(),
        })
    }

    /// Reads the first certificate of a PEM text.
    pub fn from_pem(text: &str, origin: &str) -> Result<Self> {
        let block = pem::parse(text).map_err(|e| ProvisionError::InvalidCertificate {
            origin: origin.to_string(),
            reason: format!("not valid PEM: {e}"),
        })?;
        if block.tag() != "CERTIFICATE" {
            return Err(ProvisionError::InvalidCertificate {
                origin: origin.to_string(),
                reason: format!("expected a 'CERTIFICATE' PEM block, found '{}'", block.tag()),
            });
        }
        Self::from_der(block.contents(), origin)
    }

    /// The end of validity as RFC 3339 (UTC), or the Unix seconds when out of range.
    pub fn not_after_rfc3339(&self) -> String {
        rfc3339(self.not_after)
    }
}

/// Unix seconds as RFC 3339 (UTC).
pub fn rfc3339(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&time::format_description::well_known::Rfc3339).ok())
        .unwrap_or_else(|| format!("@{unix}"))
}

/// Reads `tls/server.crt` of a provisioned state folder.
pub fn load_server_cert(state: impl AsRef<Path>) -> Result<ServerCertSummary> {
    let paths = StatePaths::new(state.as_ref());
    tls::require_provisioned(&paths)?;
    let text = fsio::read_text_capped(&paths.server_cert(), PEM_FILE_LIMIT, "server certificate")?;
    ServerCertSummary::from_pem(&text, &paths.server_cert().display().to_string())
}

/// What [`renew_server_cert`] did.
#[derive(Debug, Clone)]
pub struct RenewReport {
    /// The certificate that was replaced.
    pub old: ServerCertSummary,
    /// The new one, now in `tls/server.crt` (its key in `tls/server.key`).
    pub new: ServerCertSummary,
    /// When the CA expires (Unix seconds): no certificate it signs can outlive it.
    pub ca_not_after: i64,
    /// Whether the validity asked for was cut short at the CA's expiry.
    pub capped_by_ca: bool,
}

/// Issues a new server certificate valid for `days` (cut short at the CA's expiry), with a new
/// key pair and the subject and names of the current one, signed by the box's CA, and replaces
/// `tls/server.crt` and `tls/server.key`.
///
/// Everything is checked and made in memory before the first file is written: a current
/// certificate that the box's CA did not issue, or a CA that expires within a day, is refused and
/// nothing changes.
pub fn renew_server_cert(state: impl AsRef<Path>, days: u32) -> Result<RenewReport> {
    let paths = StatePaths::new(state.as_ref());
    let ca = BoxCa::load(&paths)?;
    let origin = paths.server_cert().display().to_string();
    let text = fsio::read_text_capped(&paths.server_cert(), PEM_FILE_LIMIT, "server certificate")?;
    let old = ServerCertSummary::from_pem(&text, &origin)?;
    let issue_err =
        |reason: String| ProvisionError::CertificateIssue { what: "the renewed server certificate".into(), reason };
    if !(1..=MAX_RENEW_DAYS).contains(&days) {
        return Err(issue_err(format!("--days must be 1 to {MAX_RENEW_DAYS}, not {days}")));
    }
    if old.issuer != ca.info.subject {
        return Err(ProvisionError::InvalidCertificate {
            origin,
            reason: format!(
                "it was issued by '{}', not by the box's CA '{}' ({}); renewing it would change what clients \
                 must trust, so it is refused",
                old.issuer,
                ca.info.subject,
                paths.ca_cert().display()
            ),
        });
    }
    let common_name = common_name(&text, &origin)?;
    let names = old.sans.iter().map(|s| s.parse::<ServerName>()).collect::<Result<Vec<_>>>()?;

    let now = OffsetDateTime::now_utc();
    let ca_end = ca.not_after()?;
    if ca_end <= now + Duration::days(1) {
        return Err(issue_err(format!(
            "the box's CA ({}) expires at {}; re-provision the box (`govbox provision --force`) and re-issue the \
             client certificates",
            paths.ca_cert().display(),
            rfc3339(ca.info.not_after)
        )));
    }
    let wanted = now + Duration::days(i64::from(days));
    let not_after = wanted.min(ca_end);
    let mut params = CertificateParams::default();
    params.distinguished_name = tls::dn(&common_name);
    params.subject_alt_names = names.iter().map(ServerName::to_san).collect::<Result<_>>()?;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let issued = ca.issue_leaf(params, now, not_after, "the renewed server certificate")?;
    let new = ServerCertSummary::from_pem(&issued.cert_pem, "the renewed server certificate")?;
    if new.subject != old.subject || new.sans != old.sans {
        return Err(issue_err(format!(
            "the new certificate would differ from the current one (subject '{}' vs '{}', names {:?} vs {:?}); \
             it was not made by `govbox provision`",
            new.subject, old.subject, new.sans, old.sans
        )));
    }

    let owner = |p: &Path| p.metadata().ok().map(|m| (m.uid(), m.gid()));
    let (key_owner, cert_owner) = (owner(&paths.server_key()), owner(&paths.server_cert()));
    let r = Overwrite::Replace;
    let key = issued.key_pem.as_bytes();
    fsio::write_file_owned(&paths.server_key(), key, PRIVATE_FILE_MODE, r, key_owner, "server private key")?;
    let cert = issued.cert_pem.as_bytes();
    fsio::write_file_owned(&paths.server_cert(), cert, PUBLIC_FILE_MODE, r, cert_owner, "server certificate")?;
    Ok(RenewReport { old, new, ca_not_after: ca.info.not_after, capped_by_ca: wanted > ca_end })
}

/// The subject's common name: the box's host name.
fn common_name(pem_text: &str, origin: &str) -> Result<String> {
    let invalid = |reason: String| ProvisionError::InvalidCertificate { origin: origin.to_string(), reason };
    let block = pem::parse(pem_text).map_err(|e| invalid(format!("not valid PEM: {e}")))?;
    let (_, cert) = x509_parser::parse_x509_certificate(block.contents())
        .map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .ok_or_else(|| invalid("the subject has no common name".into()))?;
    // The names are checked again when they become subjectAltNames; here only that one exists.
    if let Some(ext) = cert.subject_alternative_name().map_err(|e| invalid(format!("bad subjectAltName: {e}")))?
        && ext.value.general_names.iter().all(|n| !matches!(n, GeneralName::DNSName(_) | GeneralName::IPAddress(_)))
    {
        return Err(invalid("the subjectAltName names no DNS name or IP address".into()));
    }
    Ok(cn.to_string())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::keys::SigningKey;
    use crate::provision::{ProvisionOptions, provision};
    use crate::trust::{Role, TrustKeySpec};

    fn provisioned() -> (tempfile::TempDir, std::path::PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let vendor = tmp.path().join("vendor.pub");
        SigningKey::generate().unwrap().public_key().write_pem(&vendor, Overwrite::Refuse).unwrap();
        let state = tmp.path().join("state");
        provision(&ProvisionOptions {
            state_dir: state.clone(),
            hostname: Some("box.example".into()),
            extra_sans: vec!["10.1.2.3".into()],
            trust_keys: vec![TrustKeySpec { roles: Role::ALL.to_vec(), path: vendor }],
            thresholds: vec![],
            force: false,
            audit_pub: None,
            suite: crate::Suite::Intl,
        })
        .unwrap();
        (tmp, state)
    }

    #[test]
    fn renewal_keeps_subject_names_and_ca_and_changes_key_serial_and_expiry() {
        let (_tmp, state) = provisioned();
        let paths = StatePaths::new(&state);
        let ca_before = fs::read(paths.ca_cert()).unwrap();
        let key_before = fs::read(paths.server_key()).unwrap();
        let before = load_server_cert(&state).unwrap();
        let r = renew_server_cert(&state, 90).unwrap();
        assert_eq!(r.old, before);
        assert_ne!(r.new.serial, r.old.serial);
        assert_ne!(r.new.sha256, r.old.sha256);
        assert_eq!(r.new.subject, r.old.subject);
        assert_eq!(r.new.issuer, r.old.issuer);
        assert_eq!(r.new.sans, ["127.0.0.1", "::1", "localhost", "box.example", "10.1.2.3"]);
        let expect = OffsetDateTime::now_utc().unix_timestamp() + 90 * 86_400;
        assert!((r.new.not_after - expect).abs() < 60, "{} vs {expect}", r.new.not_after);
        assert!(!r.capped_by_ca);
        assert_eq!(load_server_cert(&state).unwrap(), r.new);
        assert_eq!(fs::read(paths.ca_cert()).unwrap(), ca_before, "the CA is untouched");
        assert_ne!(fs::read(paths.server_key()).unwrap(), key_before, "a new key pair");
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&paths.server_key()), PRIVATE_FILE_MODE);
        assert_eq!(mode(&paths.server_cert()), PUBLIC_FILE_MODE);
        // The new pair loads as the daemon loads it, and the chain ends in the same CA.
        let tls = tls::load_server_tls(&state).unwrap();
        assert!(tls.cert_chain_pem.ends_with(std::str::from_utf8(&ca_before).unwrap()));
        // No temporary files are left in tls/.
        let names: Vec<String> =
            fs::read_dir(paths.tls_dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn a_long_validity_is_cut_at_the_ca_expiry() {
        let (_tmp, state) = provisioned();
        let r = renew_server_cert(&state, MAX_RENEW_DAYS).unwrap();
        assert!(r.capped_by_ca && r.new.not_after == r.ca_not_after, "{r:?}");
    }

    #[test]
    fn bad_days_and_foreign_certificates_change_nothing() {
        let (_tmp, state) = provisioned();
        let paths = StatePaths::new(&state);
        let before = fs::read(paths.server_cert()).unwrap();
        for days in [0, MAX_RENEW_DAYS + 1] {
            let e = renew_server_cert(&state, days).unwrap_err();
            assert!(e.to_string().contains("--days"), "{e}");
        }
        // A certificate from another CA in tls/server.crt is refused.
        let other = BoxCa::generate("someone else", OffsetDateTime::now_utc()).unwrap();
        let host = ServerName::Dns("box.example".into());
        let foreign = other.issue_server(&host, &tls::default_server_names(&host), OffsetDateTime::now_utc()).unwrap();
        fs::write(paths.server_cert(), &foreign.cert_pem).unwrap();
        let e = renew_server_cert(&state, 30).unwrap_err();
        assert!(e.to_string().contains("not by the box's CA"), "{e}");
        assert_eq!(fs::read(paths.server_cert()).unwrap(), foreign.cert_pem.as_bytes());
        fs::write(paths.server_cert(), &before).unwrap();
        // Not provisioned.
        let e = renew_server_cert(paths.root().join("nowhere"), 30).unwrap_err();
        assert!(matches!(e, ProvisionError::NotProvisioned { .. }), "{e}");
    }
}
