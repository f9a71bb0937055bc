//! The box's own certificate authority and the certificates it issues.
//!
//! All TLS keys are ECDSA P-256 (rcgen with ring). The CA is constrained to path length 0, so
//! it can sign leaf certificates only. Certificates are identified by the SHA-256 of their DER
//! encoding, lower-case hex: the fingerprint the daemon looks clients up by.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::str::FromStr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use x509_parser::extensions::GeneralName;

use crate::error::{ProvisionError, Result};
use crate::fsio;
use crate::paths::StatePaths;

/// The CA outlives every certificate it signs; 20 years, because replacing it means re-issuing
/// every client certificate on an offline network.
pub const CA_VALIDITY_DAYS: i64 = 20 * 365;
/// The server certificate lasts 10 years: the box has no ACME or other renewal path, and an
/// expired server certificate would take every intranet application offline at once.
pub const SERVER_VALIDITY_DAYS: i64 = 10 * 365;
/// New certificates start an hour in the past, so that a client whose clock is a little behind
/// the box's does not reject a certificate that was just issued.
const BACKDATE: Duration = Duration::hours(1);
/// Certificate and TLS key PEM files are a few kilobytes.
pub(crate) const PEM_FILE_LIMIT: u64 = 64 * 1024;

/// A name the server certificate is valid for: an IP address or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ServerName {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A lower-case DNS name (letters, digits, hyphens; no wildcards).
    Dns(String),
}

impl FromStr for ServerName {
    type Err = ProvisionError;

    fn from_str(s: &str) -> Result<Self> {
        if let Ok(ip) = IpAddr::from_str(s) {
            return Ok(ServerName::Ip(ip));
        }
        let invalid =
            |reason: &str| ProvisionError::InvalidServerName { name: s.to_string(), reason: reason.to_string() };
        let name = s.strip_suffix('.').unwrap_or(s).to_ascii_lowercase();
        if name.is_empty() || name.len() > 253 {
            return Err(invalid("a DNS name has 1 to 253 characters"));
        }
        for label in name.split('.') {
            if label.is_empty() || label.len() > 63 {
                return Err(invalid("each dot-separated label has 1 to 63 characters"));
            }
            if !label.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
                return Err(invalid("only letters, digits, hyphens and dots are allowed (and no wildcards)"));
            }
            if label.starts_with('-') || label.ends_with('-') {
                return Err(invalid("a label may not start or end with a hyphen"));
            }
        }
        Ok(ServerName::Dns(name))
    }
}

impl fmt::Display for ServerName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerName::Ip(ip) => write!(f, "{ip}"),
            ServerName::Dns(d) => f.write_str(d),
        }
    }
}

impl ServerName {
    pub(crate) fn to_san(&self) -> Result<SanType> {
        Ok(match self {
            ServerName::Ip(ip) => SanType::IpAddress(*ip),
            ServerName::Dns(d) => SanType::DnsName(d.as_str().try_into().map_err(|e: rcgen::Error| {
                ProvisionError::InvalidServerName { name: d.clone(), reason: e.to_string() }
            })?),
        })
    }
}

/// The names the server certificate always carries: loopback (IPv4 and IPv6), `localhost`, and
/// the box's host name.
pub fn default_server_names(hostname: &ServerName) -> Vec<ServerName> {
    let mut names = vec![
        ServerName::Ip(IpAddr::from([127, 0, 0, 1])),
        ServerName::Ip(IpAddr::from([0u16, 0, 0, 0, 0, 0, 0, 1])),
        ServerName::Dns("localhost".to_string()),
    ];
    if !names.contains(hostname) {
        names.push(hostname.clone());
    }
    names
}

/// What we read back from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// SHA-256 of the DER encoding.
    pub sha256: [u8; 32],
    /// The subject, as text.
    pub subject: String,
    /// Start of validity, Unix seconds.
    pub not_before: i64,
    /// End of validity, Unix seconds.
    pub not_after: i64,
    /// DNS names and IP addresses of the subjectAltName extension.
    pub sans: Vec<String>,
}

impl CertInfo {
    /// The fingerprint as lower-case hex.
    pub fn sha256_hex(&self) -> String {
        fsio::hex(&self.sha256)
    }

    /// Parses a DER certificate.
    pub fn from_der(der: &[u8], origin: &str) -> Result<Self> {
        let invalid = |reason: String| ProvisionError::InvalidCertificate { origin: origin.to_string(), reason };
        let (rest, cert) =
            x509_parser::parse_x509_certificate(der).map_err(|e| invalid(format!("not an X.509 certificate: {e}")))?;
        if !rest.is_empty() {
            return Err(invalid(format!("{} bytes of trailing data after the certificate", rest.len())));
        }
        let mut sans = Vec::new();
        if let Some(ext) = cert.subject_alternative_name().map_err(|e| invalid(format!("bad subjectAltName: {e}")))? {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(d) => sans.push((*d).to_string()),
                    GeneralName::IPAddress(b) => match b.len() {
                        4 => sans.push(IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()).to_string()),
                        16 => sans.push(IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()).to_string()),
                        _ => return Err(invalid("an IP address SAN is neither 4 nor 16 bytes".to_string())),
                    },
                    _ => {}
                }
            }
        }
        Ok(CertInfo {
            sha256: fsio::sha256(der),
            subject: cert.subject().to_string(),
            not_before: cert.validity().not_before.timestamp(),
            not_after: cert.validity().not_after.timestamp(),
            sans,
        })
    }

    /// Parses the one certificate of a PEM text.
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

    /// Reads a PEM certificate file.
    pub fn load(path: &Path) -> Result<Self> {
        let text = fsio::read_text_capped(path, PEM_FILE_LIMIT, "certificate")?;
        Self::from_pem(&text, &path.display().to_string())
    }
}

/// A freshly issued certificate and its private key.
#[derive(Clone)]
pub struct IssuedCert {
    /// The certificate, PEM.
    pub cert_pem: String,
    /// The ECDSA P-256 private key, PKCS#8 PEM.
    pub key_pem: String,
    /// Fingerprint and validity of the certificate.
    pub info: CertInfo,
}

impl fmt::Debug for IssuedCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuedCert").field("info", &self.info).finish_non_exhaustive()
    }
}

/// The box's CA: certificate and private key, as PEM.
pub(crate) struct BoxCa {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: String,
    pub(crate) info: CertInfo,
}

impl BoxCa {
    /// Generates a new self-signed CA.
    pub(crate) fn generate(common_name: &str, now: OffsetDateTime) -> Result<Self> {
        let fail = |e: rcgen::Error| ProvisionError::CertificateIssue {
            what: "the box's CA".to_string(),
            reason: e.to_string(),
        };
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = now - BACKDATE;
        params.not_after = now + Duration::days(CA_VALIDITY_DAYS);
        params.serial_number = Some(serial("the box's CA")?);
        let cert = params.self_signed(&key).map_err(fail)?;
        let info = CertInfo::from_der(cert.der(), "the new CA certificate")?;
        Ok(BoxCa { cert_pem: cert.pem(), key_pem: key.serialize_pem(), info })
    }

    /// Loads the provisioned CA.
    pub(crate) fn load(paths: &StatePaths) -> Result<Self> {
        require_provisioned(paths)?;
        let cert_pem = fsio::read_text_capped(&paths.ca_cert(), PEM_FILE_LIMIT, "CA certificate")?;
        let key_pem = fsio::read_text_capped(&paths.ca_key(), PEM_FILE_LIMIT, "CA private key")?;
        let info = CertInfo::from_pem(&cert_pem, &paths.ca_cert().display().to_string())?;
        Ok(BoxCa { cert_pem, key_pem, info })
    }

    fn issuer(&self, what: &str) -> Result<Issuer<'static, KeyPair>> {
        let fail = |e: rcgen::Error| ProvisionError::CertificateIssue {
            what: what.to_string(),
            reason: format!("loading the CA: {e}"),
        };
        let key = KeyPair::from_pem(&self.key_pem).map_err(fail)?;
        Issuer::from_ca_cert_pem(&self.cert_pem, key).map_err(fail)
    }

    /// Issues the HTTPS server certificate.
    pub(crate) fn issue_server(
        &self,
        hostname: &ServerName,
        names: &[ServerName],
        now: OffsetDateTime,
    ) -> Result<IssuedCert> {
        let what = "the server certificate";
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&hostname.to_string());
        params.subject_alt_names = names.iter().map(ServerName::to_san).collect::<Result<_>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let not_after = (now + Duration::days(SERVER_VALIDITY_DAYS)).min(self.not_after()?);
        self.issue_leaf(params, now, not_after, what)
    }

    /// Issues an mTLS client certificate with `CN=name` and the clientAuth extended key usage.
    pub(crate) fn issue_client(&self, name: &str, days: u32, now: OffsetDateTime) -> Result<IssuedCert> {
        let what = format!("client certificate for '{name}'");
        let not_after = now + Duration::days(i64::from(days));
        if not_after > self.not_after()? {
            return Err(ProvisionError::CertificateIssue {
                what,
                reason: format!(
                    "{days} days would outlive the box's CA, which expires at Unix time {}",
                    self.info.not_after
                ),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue_leaf(params, now, not_after, &what)
    }

    pub(crate) fn issue_leaf(
        &self,
        mut params: CertificateParams,
        now: OffsetDateTime,
        not_after: OffsetDateTime,
        what: &str,
    ) -> Result<IssuedCert> {
        let fail = |e: rcgen::Error| ProvisionError::CertificateIssue { what: what.to_string(), reason: e.to_string() };
        let issuer = self.issuer(what)?;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(fail)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - BACKDATE;
        params.not_after = not_after;
        params.serial_number = Some(serial(what)?);
        let cert = params.signed_by(&key, &issuer).map_err(fail)?;
        let info = CertInfo::from_der(cert.der(), what)?;
        Ok(IssuedCert { cert_pem: cert.pem(), key_pem: key.serialize_pem(), info })
    }

    pub(crate) fn not_after(&self) -> Result<OffsetDateTime> {
        OffsetDateTime::from_unix_timestamp(self.info.not_after).map_err(|e| ProvisionError::InvalidCertificate {
            origin: "the box's CA".to_string(),
            reason: format!("notAfter is out of range: {e}"),
        })
    }
}

pub(crate) fn dn(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "govbox appliance");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// A random positive 127-bit serial number, as RFC 5280 §4.1.2.2 asks (unique per issuer,
/// at most 20 bytes, positive).
fn serial(what: &str) -> Result<SerialNumber> {
    let mut bytes = fsio::random_bytes::<16>(&format!("the serial number of {what}"))?;
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

pub(crate) fn require_provisioned(paths: &StatePaths) -> Result<()> {
    let marker = paths.device_key();
    if !marker.exists() {
        return Err(ProvisionError::NotProvisioned { state: paths.root().to_path_buf(), missing: marker });
    }
    Ok(())
}

/// What the daemon needs to serve HTTPS and to check client certificates.
#[derive(Clone)]
pub struct ServerTls {
    /// The server certificate followed by the CA certificate, PEM.
    pub cert_chain_pem: String,
    /// The server's ECDSA P-256 private key, PKCS#8 PEM.
    pub key_pem: String,
    /// The box's CA certificate, PEM: the only issuer accepted for client certificates.
    pub ca_pem: String,
}

impl fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerTls").finish_non_exhaustive()
    }
}

/// Loads the server certificate chain, its key and the CA from a provisioned state folder.
pub fn load_server_tls(state: impl AsRef<Path>) -> Result<ServerTls> {
    let paths = StatePaths::new(state.as_ref());
    require_provisioned(&paths)?;
    let server = fsio::read_text_capped(&paths.server_cert(), PEM_FILE_LIMIT, "server certificate")?;
    let ca_pem = fsio::read_text_capped(&paths.ca_cert(), PEM_FILE_LIMIT, "CA certificate")?;
    let key_pem = fsio::read_text_capped(&paths.server_key(), PEM_FILE_LIMIT, "server private key")?;
    // Parse both so that a damaged file is reported here, naming the file, not as a TLS error later.
    CertInfo::from_pem(&server, &paths.server_cert().display().to_string())?;
    CertInfo::from_pem(&ca_pem, &paths.ca_cert().display().to_string())?;
    let mut cert_chain_pem = server;
    if !cert_chain_pem.ends_with('\n') {
        cert_chain_pem.push('\n');
    }
    cert_chain_pem.push_str(&ca_pem);
    Ok(ServerTls { cert_chain_pem, key_pem, ca_pem })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn server_names_parse_and_normalise() {
        assert_eq!("10.0.0.5".parse::<ServerName>().unwrap(), ServerName::Ip(IpAddr::from([10, 0, 0, 5])));
        assert_eq!("Box-1.Intranet.GOV.".parse::<ServerName>().unwrap(), ServerName::Dns("box-1.intranet.gov".into()));
        for bad in ["", "*.gov", "a..b", "-a.gov", "a_b", "é.gov", &"a".repeat(64)] {
            assert!(bad.parse::<ServerName>().is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn default_names_include_loopback_and_hostname_once() {
        let names = default_server_names(&ServerName::Dns("box".into()));
        let shown: Vec<String> = names.iter().map(ToString::to_string).collect();
        assert_eq!(shown, ["127.0.0.1", "::1", "localhost", "box"]);
        assert_eq!(default_server_names(&ServerName::Dns("localhost".into())).len(), 3);
    }

    #[test]
    fn ca_issues_server_and_client_certs() {
        let now = OffsetDateTime::now_utc();
        let ca = BoxCa::generate("test CA", now).unwrap();
        let host = ServerName::Dns("box".into());
        let server = ca.issue_server(&host, &default_server_names(&host), now).unwrap();
        assert_eq!(server.info.sans, ["127.0.0.1", "::1", "localhost", "box"]);
        assert!(server.info.not_after <= ca.info.not_after);
        let client = ca.issue_client("hr-portal", 30, now).unwrap();
        assert!(client.info.subject.contains("CN=hr-portal"), "{}", client.info.subject);
        assert_eq!(client.info.not_after, (now + Duration::days(30)).unix_timestamp());
        assert_ne!(client.info.sha256, server.info.sha256);
        let err = ca.issue_client("x", 30 * 365, now).unwrap_err();
        assert!(err.to_string().contains("would outlive the box's CA"), "{err}");
    }
}
