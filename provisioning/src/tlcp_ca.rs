//! TLCP (GB/T 38636-2020, the dual-certificate 国密 SSL) material: the box's SM2 certificate
//! authority, the signing and encryption certificates of its TLCP listener, and the certificate
//! pairs of TLCP clients, kept in `state/tls/tlcp/` beside the TLS material with the same modes
//! (folder 0700, keys 0600, certificates 0644).
//!
//! Everything is made with Tongsuo (the `tongsuo` crate over Tongsuo built from its vendored
//! source), the same library that runs the handshake: SM2 keys on the GB/T 32918 curve, X.509 v3
//! certificates signed SM2 with SM3 (OID 1.2.156.10197.1.501, the default distinguishing ID
//! `1234567812345678`). The TLCP CA is separate from the TLS CA (which is ECDSA P-256): a TLCP
//! client pair never authenticates on the TLS port and a TLS client certificate never on the
//! TLCP port.
//!
//! TLCP needs two certificates per side: a **signing** certificate (key usage
//! digitalSignature: it signs the handshake, and for a client it is the identity) and an
//! **encryption** certificate (keyEncipherment, dataEncipherment, keyAgreement: the ECC suites
//! encrypt the pre-master secret to it, the ECDHE suites use it in the key agreement).
//!
//! A client pair is registered in the client store under its client's name (tree `tlcp_certs`,
//! the signing certificate's SHA-256 → name, and `tlcp_current`, name → the current one): the
//! daemon maps a verified signing certificate to its client exactly as the TLS port maps an mTLS
//! certificate, and a revoked client, an expired pair or a pair issued again is refused.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use tongsuo::asn1::{Asn1Integer, Asn1Time};
use tongsuo::bn::{BigNum, MsbOption};
use tongsuo::error::ErrorStack;
use tongsuo::hash::MessageDigest;
use tongsuo::pkey::{Id, PKey, Private};
use tongsuo::pkey_ctx::PkeyCtx;
use tongsuo::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName, SubjectKeyIdentifier,
};
use tongsuo::x509::{X509, X509Builder, X509NameBuilder};

use crate::clients::{ClientName, ClientStore};
use crate::error::ProvisionError;
use crate::fsio::{self, Overwrite, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, PUBLIC_FILE_MODE};
use crate::paths::StatePaths;
use crate::tls::{CA_VALIDITY_DAYS, PEM_FILE_LIMIT, SERVER_VALIDITY_DAYS};

/// The sled tree: signing certificate SHA-256 (hex) → client name.
const TLCP_CERTS_TREE: &str = "tlcp_certs";
/// The sled tree: client name → its current pair ([`TlcpRegistration`], JSON).
const TLCP_CURRENT_TREE: &str = "tlcp_current";
/// New certificates start an hour in the past (a client whose clock is a little behind).
const BACKDATE_SECS: i64 = 3600;

/// Why TLCP material could not be made, read or registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlcpCaError {
    /// Tongsuo refused an operation.
    #[error("TLCP: {what}: {source}")]
    Tongsuo {
        /// What was being done.
        what: String,
        /// Tongsuo's error stack.
        source: ErrorStack,
    },
    /// The state folder or the client store failed.
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// `tlcp-init` on a box that has TLCP material.
    #[error(
        "TLCP: {path} already exists: the box's TLCP CA was made before (to start over, remove {dir} and issue \
         every TLCP client pair again)"
    )]
    AlreadyInitialised {
        /// The file found.
        path: PathBuf,
        /// The TLCP folder.
        dir: PathBuf,
    },
    /// The box has no TLCP material.
    #[error("TLCP: the box has no TLCP CA ({missing} is missing): run `govbox tls tlcp-init` first")]
    NotInitialised {
        /// The file that is missing.
        missing: PathBuf,
    },
    /// A file of the TLCP folder does not hold what it should.
    #[error("TLCP: {path}: {reason}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A client pair asked to outlive the CA, or for zero days.
    #[error("TLCP: a client pair of {days} days {reason}")]
    BadValidity {
        /// The days asked for.
        days: u32,
        /// Why that is refused.
        reason: &'static str,
    },
}

/// Shorthand for this module's results.
pub type Result<T, E = TlcpCaError> = std::result::Result<T, E>;

fn tongsuo(what: &str) -> impl FnOnce(ErrorStack) -> TlcpCaError + '_ {
    move |source| TlcpCaError::Tongsuo { what: what.to_string(), source }
}

/// The files of `state/tls/tlcp/`.
#[derive(Debug, Clone)]
pub struct TlcpPaths {
    dir: PathBuf,
}

impl TlcpPaths {
    /// The TLCP folder of a state folder.
    pub fn new(state: &StatePaths) -> Self {
        TlcpPaths { dir: state.tls_dir().join("tlcp") }
    }
    /// `tls/tlcp/`.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// The SM2 CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }
    /// The SM2 CA key.
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// The listener's signing certificate.
    pub fn sign_cert(&self) -> PathBuf {
        self.dir.join("sign.crt")
    }
    /// The listener's signing key.
    pub fn sign_key(&self) -> PathBuf {
        self.dir.join("sign.key")
    }
    /// The listener's encryption certificate.
    pub fn enc_cert(&self) -> PathBuf {
        self.dir.join("enc.crt")
    }
    /// The listener's encryption key.
    pub fn enc_key(&self) -> PathBuf {
        self.dir.join("enc.key")
    }
}

/// What a certificate is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Usage {
    Ca,
    ServerSign,
    ServerEnc,
    ClientSign,
    ClientEnc,
}

/// A certificate and its key, PEM.
#[derive(Clone)]
pub struct TlcpCert {
    /// The certificate.
    pub cert_pem: String,
    /// The SM2 private key, PKCS#8.
    pub key_pem: String,
    /// SHA-256 of the certificate's DER.
    pub sha256: [u8; 32],
    /// End of validity, Unix seconds.
    pub not_after: i64,
}

impl fmt::Debug for TlcpCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlcpCert").field("sha256", &fsio::hex(&self.sha256)).finish_non_exhaustive()
    }
}

/// What the TLCP listener serves: its two certificates and keys, and the CA that client pairs
/// must chain to.
#[derive(Clone)]
pub struct TlcpServerMaterial {
    /// The SM2 CA certificate, PEM.
    pub ca_pem: String,
    /// The signing certificate and key.
    pub sign: TlcpCert,
    /// The encryption certificate and key.
    pub enc: TlcpCert,
}

impl fmt::Debug for TlcpServerMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlcpServerMaterial").finish_non_exhaustive()
    }
}

/// A TLCP client's certificate pair (both signed by the box's SM2 CA).
#[derive(Debug, Clone)]
pub struct TlcpClientPair {
    /// The client.
    pub name: String,
    /// Its signing certificate and key: the identity the box maps to the client.
    pub sign: TlcpCert,
    /// Its encryption certificate and key.
    pub enc: TlcpCert,
    /// The box's SM2 CA certificate, PEM (what the client trusts the box's certificates by).
    pub ca_pem: String,
}

/// A client's current TLCP pair, as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlcpRegistration {
    /// SHA-256 (hex) of the signing certificate.
    pub sign_sha256: String,
    /// When the pair expires, Unix seconds.
    pub not_after: i64,
}

fn sm2_key() -> Result<PKey<Private>> {
    let mut ctx = PkeyCtx::new_id(Id::SM2).map_err(tongsuo("an SM2 key context"))?;
    ctx.keygen_init().map_err(tongsuo("starting SM2 key generation"))?;
    ctx.keygen().map_err(tongsuo("generating an SM2 key"))
}

fn asn1_time(unix: i64, what: &str) -> Result<Asn1Time> {
    Asn1Time::from_unix(unix as _).map_err(tongsuo(what))
}

/// Issues one certificate; `issuer` is `None` for the self-signed CA.
fn issue(
    cn: &str,
    usage: Usage,
    key: &PKey<Private>,
    issuer: Option<(&X509, &PKey<Private>)>,
    sans: &[String],
    not_after: i64,
    now: i64,
) -> Result<X509> {
    let what = format!("issuing the {usage:?} certificate of '{cn}'");
    let e = |s: ErrorStack| TlcpCaError::Tongsuo { what: what.clone(), source: s };
    let mut name = X509NameBuilder::new().map_err(e)?;
    name.append_entry_by_text("O", "govbox").map_err(e)?;
    name.append_entry_by_text("CN", cn).map_err(e)?;
    let name = name.build();
    let mut b = X509Builder::new().map_err(e)?;
    b.set_version(2).map_err(e)?;
    let mut serial = BigNum::new().map_err(e)?;
    serial.rand(127, MsbOption::MAYBE_ZERO, false).map_err(e)?;
    let serial: Asn1Integer = serial.to_asn1_integer().map_err(e)?;
    b.set_serial_number(&serial).map_err(e)?;
    b.set_subject_name(&name).map_err(e)?;
    b.set_issuer_name(issuer.map_or(&*name, |(c, _)| c.subject_name())).map_err(e)?;
    b.set_pubkey(key).map_err(e)?;
    let (from, until) = (asn1_time(now - BACKDATE_SECS, "notBefore")?, asn1_time(not_after, "notAfter")?);
    b.set_not_before(&from).map_err(e)?;
    b.set_not_after(&until).map_err(e)?;
    let mut ku = KeyUsage::new();
    match usage {
        Usage::Ca => {
            b.append_extension(BasicConstraints::new().critical().ca().pathlen(0).build().map_err(e)?).map_err(e)?;
            ku.critical().key_cert_sign().crl_sign();
        }
        Usage::ServerSign | Usage::ClientSign => {
            b.append_extension(BasicConstraints::new().critical().build().map_err(e)?).map_err(e)?;
            ku.critical().digital_signature().non_repudiation();
        }
        Usage::ServerEnc | Usage::ClientEnc => {
            b.append_extension(BasicConstraints::new().critical().build().map_err(e)?).map_err(e)?;
            ku.critical().key_encipherment().data_encipherment().key_agreement();
        }
    }
    b.append_extension(ku.build().map_err(e)?).map_err(e)?;
    match usage {
        Usage::ServerSign | Usage::ServerEnc => {
            b.append_extension(ExtendedKeyUsage::new().server_auth().build().map_err(e)?).map_err(e)?;
        }
        Usage::ClientSign | Usage::ClientEnc => {
            b.append_extension(ExtendedKeyUsage::new().client_auth().build().map_err(e)?).map_err(e)?;
        }
        Usage::Ca => {}
    }
    let ski = SubjectKeyIdentifier::new().build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None)).map_err(e)?;
    b.append_extension(ski).map_err(e)?;
    if issuer.is_some() {
        let aki = AuthorityKeyIdentifier::new()
            .keyid(true)
            .build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None))
            .map_err(e)?;
        b.append_extension(aki).map_err(e)?;
    }
    if matches!(usage, Usage::ServerSign | Usage::ServerEnc) && !sans.is_empty() {
        let mut san = SubjectAlternativeName::new();
        for s in sans {
            match s.parse::<std::net::IpAddr>() {
                Ok(_) => san.ip(s),
                Err(_) => san.dns(s),
            };
        }
        let ext = san.build(&b.x509v3_context(issuer.map(|(c, _)| &**c), None)).map_err(e)?;
        b.append_extension(ext).map_err(e)?;
    }
    let signer = issuer.map_or(key, |(_, k)| k);
    b.sign(signer, MessageDigest::sm3()).map_err(e)?;
    Ok(b.build())
}

fn cert_of(x509: &X509, key: &PKey<Private>, not_after: i64, what: &str) -> Result<TlcpCert> {
    let cert_pem = String::from_utf8(x509.to_pem().map_err(tongsuo(what))?).unwrap_or_default();
    let key_pem = String::from_utf8(key.private_key_to_pem_pkcs8().map_err(tongsuo(what))?).unwrap_or_default();
    let der = x509.to_der().map_err(tongsuo(what))?;
    Ok(TlcpCert { cert_pem, key_pem, sha256: fsio::sha256(&der), not_after })
}

/// What `tlcp-init` made.
#[derive(Debug, Clone)]
pub struct TlcpInitReport {
    /// The files written.
    pub files: Vec<PathBuf>,
    /// The names the listener's certificates are valid for (those of the TLS server certificate).
    pub names: Vec<String>,
    /// SHA-256 (hex) of the CA certificate.
    pub ca_sha256: String,
}

/// Makes the box's SM2 CA and the listener's signing and encryption certificates, for the names
/// of the TLS server certificate. Refuses a box that has TLCP material (nothing is replaced).
pub fn init_tlcp(state: impl AsRef<Path>) -> Result<TlcpInitReport> {
    let paths = StatePaths::new(state.as_ref());
    let summary = crate::renew::load_server_cert(state.as_ref())?;
    let names = summary.sans.clone();
    let tp = TlcpPaths::new(&paths);
    for p in [tp.ca_cert(), tp.ca_key(), tp.sign_cert(), tp.sign_key(), tp.enc_cert(), tp.enc_key()] {
        if p.symlink_metadata().is_ok() {
            return Err(TlcpCaError::AlreadyInitialised { path: p, dir: tp.dir().to_path_buf() });
        }
    }
    let now = OffsetDateTime::now_utc().unix_timestamp();
    let host = names.iter().rev().find(|n| n.parse::<std::net::IpAddr>().is_err()).cloned().unwrap_or_default();
    let ca_key = sm2_key()?;
    let ca_not_after = now + Duration::days(CA_VALIDITY_DAYS).whole_seconds();
    let ca = issue(format!("govbox TLCP CA {host}").trim(), Usage::Ca, &ca_key, None, &[], ca_not_after, now)?;
    let server_not_after = now + Duration::days(SERVER_VALIDITY_DAYS).whole_seconds();
    let cn = if host.is_empty() { "govbox".to_string() } else { host.clone() };
    let sign_key = sm2_key()?;
    let sign = issue(&cn, Usage::ServerSign, &sign_key, Some((&ca, &ca_key)), &names, server_not_after, now)?;
    let enc_key = sm2_key()?;
    let enc = issue(&cn, Usage::ServerEnc, &enc_key, Some((&ca, &ca_key)), &names, server_not_after, now)?;
    let ca_cert = cert_of(&ca, &ca_key, ca_not_after, "encoding the TLCP CA")?;
    let sign = cert_of(&sign, &sign_key, server_not_after, "encoding the signing certificate")?;
    let enc = cert_of(&enc, &enc_key, server_not_after, "encoding the encryption certificate")?;
    fsio::ensure_dir(tp.dir(), PRIVATE_DIR_MODE)?;
    let mut files = Vec::new();
    for (path, text, mode, what) in [
        (tp.ca_key(), &ca_cert.key_pem, PRIVATE_FILE_MODE, "TLCP CA key"),
        (tp.sign_key(), &sign.key_pem, PRIVATE_FILE_MODE, "TLCP signing key"),
        (tp.enc_key(), &enc.key_pem, PRIVATE_FILE_MODE, "TLCP encryption key"),
        (tp.sign_cert(), &sign.cert_pem, PUBLIC_FILE_MODE, "TLCP signing certificate"),
        (tp.enc_cert(), &enc.cert_pem, PUBLIC_FILE_MODE, "TLCP encryption certificate"),
        // The CA certificate last: its presence says the folder is complete.
        (tp.ca_cert(), &ca_cert.cert_pem, PUBLIC_FILE_MODE, "TLCP CA certificate"),
    ] {
        fsio::write_file(&path, text.as_bytes(), mode, Overwrite::Refuse, what)?;
        files.push(path);
    }
    Ok(TlcpInitReport { files, names, ca_sha256: fsio::hex(&ca_cert.sha256) })
}

fn read_pair(cert: &Path, key: &Path, what: &str) -> Result<(X509, PKey<Private>, TlcpCert)> {
    for p in [cert, key] {
        if p.symlink_metadata().is_err() {
            return Err(TlcpCaError::NotInitialised { missing: p.to_path_buf() });
        }
    }
    let cert_pem = fsio::read_text_capped(cert, PEM_FILE_LIMIT, what)?;
    let key_pem = fsio::read_text_capped(key, PEM_FILE_LIMIT, what)?;
    let invalid = |path: &Path, reason: String| TlcpCaError::Invalid { path: path.to_path_buf(), reason };
    let x509 = X509::from_pem(cert_pem.as_bytes()).map_err(|e| invalid(cert, format!("not a PEM certificate: {e}")))?;
    let pkey = PKey::private_key_from_pem(key_pem.as_bytes())
        .map_err(|e| invalid(key, format!("not a PEM private key: {e}")))?;
    if pkey.id() != Id::SM2 {
        return Err(invalid(key, "not an SM2 key".to_string()));
    }
    let public = x509.public_key().map_err(|e| invalid(cert, format!("its public key: {e}")))?;
    if !public.public_eq(&pkey) {
        return Err(invalid(key, format!("the key does not belong to {}", cert.display())));
    }
    let der = x509.to_der().map_err(tongsuo(what))?;
    let not_after = unix_of(x509.not_after()).map_err(|r| invalid(cert, r))?;
    Ok((x509, pkey, TlcpCert { cert_pem, key_pem, sha256: fsio::sha256(&der), not_after }))
}

fn unix_of(t: &tongsuo::asn1::Asn1TimeRef) -> std::result::Result<i64, String> {
    let epoch = Asn1Time::from_unix(0).map_err(|e| e.to_string())?;
    let d = epoch.diff(t).map_err(|e| format!("its notAfter: {e}"))?;
    Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
}

/// Loads what the listener serves, checked: each key matches its certificate and both
/// certificates verify under the CA.
pub fn load_tlcp(state: impl AsRef<Path>) -> Result<TlcpServerMaterial> {
    let tp = TlcpPaths::new(&StatePaths::new(state.as_ref()));
    let (ca, _, ca_cert) = read_pair(&tp.ca_cert(), &tp.ca_key(), "TLCP CA")?;
    let ca_public = ca.public_key().map_err(tongsuo("the TLCP CA's public key"))?;
    let mut out = Vec::new();
    for (cert, key, what) in [
        (tp.sign_cert(), tp.sign_key(), "TLCP signing certificate"),
        (tp.enc_cert(), tp.enc_key(), "TLCP encryption certificate"),
    ] {
        let (x509, _, c) = read_pair(&cert, &key, what)?;
        if !x509.verify(&ca_public).map_err(tongsuo(what))? {
            return Err(TlcpCaError::Invalid {
                path: cert,
                reason: format!("its signature does not verify under {}", tp.ca_cert().display()),
            });
        }
        out.push(c);
    }
    let enc = out.pop().ok_or_else(|| TlcpCaError::NotInitialised { missing: tp.enc_cert() })?;
    let sign = out.pop().ok_or_else(|| TlcpCaError::NotInitialised { missing: tp.sign_cert() })?;
    Ok(TlcpServerMaterial { ca_pem: ca_cert.cert_pem, sign, enc })
}

/// Issues a TLCP client pair for an existing, unrevoked client and registers it as the client's
/// current pair (a pair issued before stops working).
pub fn issue_tlcp_client(store: &ClientStore, name: &str, days: u32) -> Result<TlcpClientPair> {
    let name = ClientName::parse(name)?;
    let Some(record) = store.get(name.as_str())? else {
        return Err(ProvisionError::ClientNotFound {
            action: "issuing a TLCP pair for".into(),
            name: name.to_string(),
        }
        .into());
    };
    if record.revoked {
        return Err(
            ProvisionError::ClientRevoked { action: "issuing a TLCP pair for".into(), name: name.to_string() }.into()
        );
    }
    let tp = TlcpPaths::new(store.paths());
    let (ca, ca_key, ca_cert) = read_pair(&tp.ca_cert(), &tp.ca_key(), "TLCP CA")?;
    let now = OffsetDateTime::now_utc().unix_timestamp();
    if days == 0 {
        return Err(TlcpCaError::BadValidity { days, reason: "is empty" });
    }
    let not_after = now + Duration::days(i64::from(days)).whole_seconds();
    if not_after > ca_cert.not_after {
        return Err(TlcpCaError::BadValidity { days, reason: "would outlive the box's TLCP CA" });
    }
    let sign_key = sm2_key()?;
    let sign = issue(name.as_str(), Usage::ClientSign, &sign_key, Some((&ca, &ca_key)), &[], not_after, now)?;
    let enc_key = sm2_key()?;
    let enc = issue(name.as_str(), Usage::ClientEnc, &enc_key, Some((&ca, &ca_key)), &[], not_after, now)?;
    let sign = cert_of(&sign, &sign_key, not_after, "encoding the client's signing certificate")?;
    let enc = cert_of(&enc, &enc_key, not_after, "encoding the client's encryption certificate")?;
    register(store, name.as_str(), &TlcpRegistration { sign_sha256: fsio::hex(&sign.sha256), not_after })?;
    Ok(TlcpClientPair { name: name.to_string(), sign, enc, ca_pem: ca_cert.cert_pem })
}

fn register(store: &ClientStore, name: &str, reg: &TlcpRegistration) -> Result<()> {
    use sled::Transactional;
    let db = store.db();
    let err = |source: sled::Error| ProvisionError::Store {
        action: format!("registering the TLCP pair of '{name}'"),
        path: store.paths().db(),
        source,
    };
    let certs = db.open_tree(TLCP_CERTS_TREE).map_err(err)?;
    let current = db.open_tree(TLCP_CURRENT_TREE).map_err(err)?;
    let value = serde_json::to_vec(reg).unwrap_or_default();
    (&certs, &current)
        .transaction(|(certs, current)| {
            if let Some(old) = current.get(name.as_bytes())?
                && let Ok(old) = serde_json::from_slice::<TlcpRegistration>(&old)
            {
                certs.remove(old.sign_sha256.as_bytes())?;
            }
            certs.insert(reg.sign_sha256.as_bytes(), name.as_bytes())?;
            current.insert(name.as_bytes(), value.as_slice())?;
            Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
        })
        .map_err(|e| match e {
            sled::transaction::TransactionError::Storage(e) => err(e),
            sled::transaction::TransactionError::Abort(()) => err(sled::Error::Unsupported("aborted".into())),
        })?;
    db.flush().map_err(err)?;
    Ok(())
}

/// The active client whose current TLCP signing certificate has this SHA-256: `None` for an
/// unknown, replaced or expired pair, a revoked client, or a store error (fails closed).
pub fn find_by_tlcp_cert(store: &ClientStore, sha256: &[u8; 32]) -> Option<crate::ClientRecord> {
    let fp = fsio::hex(sha256);
    let db = store.db();
    let name = db.open_tree(TLCP_CERTS_TREE).ok()?.get(fp.as_bytes()).ok()??;
    let name = std::str::from_utf8(&name).ok()?;
    let reg: TlcpRegistration =
        serde_json::from_slice(&db.open_tree(TLCP_CURRENT_TREE).ok()?.get(name.as_bytes()).ok()??).ok()?;
    let record = store.get(name).ok()??;
    let current = reg.sign_sha256 == fp;
    let unexpired = reg.not_after > OffsetDateTime::now_utc().unix_timestamp();
    (current && unexpired && !record.revoked).then_some(record)
}

/// Writes a client pair into `dir` (made 0700 if absent): `NAME.sign.crt`, `NAME.sign.key`,
/// `NAME.enc.crt`, `NAME.enc.key` and `tlcp-ca.crt`, refusing to replace any file.
pub fn write_tlcp_client_pair(dir: &Path, pair: &TlcpClientPair) -> Result<Vec<PathBuf>> {
    let n = &pair.name;
    let files = [
        (format!("{n}.sign.key"), &pair.sign.key_pem, PRIVATE_FILE_MODE),
        (format!("{n}.enc.key"), &pair.enc.key_pem, PRIVATE_FILE_MODE),
        (format!("{n}.sign.crt"), &pair.sign.cert_pem, PUBLIC_FILE_MODE),
        (format!("{n}.enc.crt"), &pair.enc.cert_pem, PUBLIC_FILE_MODE),
        ("tlcp-ca.crt".to_string(), &pair.ca_pem, PUBLIC_FILE_MODE),
    ];
    for (f, _, _) in &files {
        let p = dir.join(f);
        if p.symlink_metadata().is_ok() {
            return Err(ProvisionError::AlreadyExists { what: "TLCP client file".into(), path: p }.into());
        }
    }
    fsio::ensure_dir(dir, PRIVATE_DIR_MODE)?;
    let mut out = Vec::new();
    for (f, text, mode) in files {
        let p = dir.join(f);
        fsio::write_file(&p, text.as_bytes(), mode, Overwrite::Refuse, "TLCP client file")?;
        out.push(p);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn certificates_are_sm2_with_sm3_and_carry_their_key_usage() {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        let ca_key = sm2_key().unwrap();
        let ca = issue("test CA", Usage::Ca, &ca_key, None, &[], now + 86_400 * 10, now).unwrap();
        let key = sm2_key().unwrap();
        let sign =
            issue("box", Usage::ServerSign, &key, Some((&ca, &ca_key)), &["127.0.0.1".into()], now + 86_400, now)
                .unwrap();
        let enc =
            issue("box", Usage::ServerEnc, &sm2_key().unwrap(), Some((&ca, &ca_key)), &[], now + 86_400, now).unwrap();
        // SM2-with-SM3 (1.2.156.10197.1.501) and verifiable under the CA's key.
        assert_eq!(sign.signature_algorithm().object().to_string(), "SM2-with-SM3");
        assert!(sign.verify(&ca.public_key().unwrap()).unwrap());
        assert!(enc.verify(&ca.public_key().unwrap()).unwrap());
        assert!(!sign.verify(&key).unwrap(), "a certificate verified under a key that did not sign it");
        let usage = |c: &X509| {
            let der = c.to_der().unwrap();
            let (_, parsed) = x509_parser::parse_x509_certificate(&der).unwrap();
            let ku = parsed.key_usage().unwrap().unwrap().value;
            let sans = parsed.subject_alternative_name().unwrap().map(|s| s.value.general_names.len()).unwrap_or(0);
            (ku.digital_signature(), ku.key_encipherment(), ku.key_agreement(), sans)
        };
        assert_eq!(usage(&sign), (true, false, false, 1));
        assert_eq!(usage(&enc), (false, true, true, 0));
    }
}
