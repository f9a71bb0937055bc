//! First boot: lay out the state folder and create the box's identity, CA and trust root.

use std::fs;
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};

use crate::clients::ClientStore;
use crate::error::{ProvisionError, Result};
use crate::fsio::{self, Overwrite, PRIVATE_DIR_MODE, PRIVATE_FILE_MODE, PUBLIC_FILE_MODE};
use crate::keys::{KeyAlgorithm, PublicKey, SigningKey};
use crate::paths::StatePaths;
use crate::suite::Suite;
use crate::tls::{self, BoxCa, CertInfo, ServerName};
use crate::trust::{Role, ThresholdSpec, TrustKeySpec, TrustRoot};

/// The provisioned root lasts 10 years. On an offline box a new root arrives only by hand, signed
/// by the current root keys; an early expiry would stop all package verification at once.
pub const ROOT_VALIDITY_DAYS: i64 = 10 * 365;

/// What `govbox provision` was asked to do.
#[derive(Debug, Clone)]
pub struct ProvisionOptions {
    /// The state folder.
    pub state_dir: PathBuf,
    /// The box's host name; when `None`, the kernel's host name.
    pub hostname: Option<String>,
    /// Extra names (IP addresses or DNS names) for the server certificate, in addition to
    /// 127.0.0.1, ::1, localhost and the host name.
    pub extra_sans: Vec<String>,
    /// The public keys to trust, with their roles.
    pub trust_keys: Vec<TrustKeySpec>,
    /// Per-role thresholds; a role not listed gets 1.
    pub thresholds: Vec<ThresholdSpec>,
    /// Replace an existing identity, CA and trust root.
    pub force: bool,
    /// The public half of an audit key made elsewhere (by root, for `govbox-auditd`): the box
    /// names it, and its private half never enters the state folder, so the service account can
    /// neither read it nor sign heads of its own. `None` generates the audit key here, into
    /// `identity/audit.key` (the single-process mode: tests, the demo).
    pub audit_pub: Option<PathBuf>,
    /// The crypto suite (`intl` unless asked): the algorithm of the device and audit keys, and
    /// of every hash, HMAC and cipher the box uses; written to `identity/suite`.
    pub suite: Suite,
}

/// The audit key of a provisioning: made here, or only its public half given.
enum AuditKey {
    Made(SigningKey),
    Given(PublicKey),
}

impl AuditKey {
    fn public_key(&self) -> PublicKey {
        match self {
            AuditKey::Made(k) => k.public_key(),
            AuditKey::Given(p) => *p,
        }
    }
}

/// One file written by [`provision`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Where.
    pub path: PathBuf,
    /// Its mode.
    pub mode: u32,
}

/// What [`provision`] made.
#[derive(Debug, Clone)]
pub struct ProvisionReport {
    /// The state layout.
    pub paths: StatePaths,
    /// The host name used.
    pub hostname: String,
    /// The device identity key.
    pub device_key: PublicKey,
    /// The audit checkpoint key.
    pub audit_key: PublicKey,
    /// The crypto suite.
    pub suite: Suite,
    /// Whether its private half was written to `identity/audit.key` (not with `audit_pub`).
    pub audit_key_held_here: bool,
    /// The CA certificate.
    pub ca: CertInfo,
    /// The server certificate.
    pub server: CertInfo,
    /// The trust root written.
    pub trust: TrustRoot,
    /// Every file written, in order.
    pub files: Vec<WrittenFile>,
    /// Whether an earlier provisioning was replaced (`force`).
    pub replaced: bool,
}

/// Provisions the state folder.
///
/// Every input is checked, and every key and certificate made in memory, before the first file is
/// written, so bad input changes nothing. `identity/device.key` marks a provisioned box: it is
/// written last, so an interrupted run can be repeated, and its presence makes a second run fail
/// with [`ProvisionError::AlreadyProvisioned`] unless `force` is set.
pub fn provision(opts: &ProvisionOptions) -> Result<ProvisionReport> {
    let paths = StatePaths::new(&opts.state_dir);
    let already = paths.device_key().symlink_metadata().is_ok();
    if already && !opts.force {
        return Err(ProvisionError::AlreadyProvisioned {
            state: paths.root().to_path_buf(),
            marker: paths.device_key(),
        });
    }

    // 1. Check the input.
    let hostname = match &opts.hostname {
        Some(h) => h.parse::<ServerName>()?,
        None => system_hostname()?,
    };
    if matches!(hostname, ServerName::Ip(_)) {
        return Err(ProvisionError::InvalidServerName {
            name: hostname.to_string(),
            reason: "the host name must be a DNS name; give IP addresses with --san".to_string(),
        });
    }
    let mut names = tls::default_server_names(&hostname);
    for san in &opts.extra_sans {
        let name: ServerName = san.parse()?;
        if !names.contains(&name) {
            names.push(name);
        }
    }
    let now = OffsetDateTime::now_utc();
    let mut assignments = Vec::with_capacity(opts.trust_keys.len());
    for spec in &opts.trust_keys {
        assignments.push((spec.roles.clone(), PublicKey::load_pem(&spec.path)?));
    }
    let trust = TrustRoot::build(&assignments, &opts.thresholds, now + Duration::days(ROOT_VALIDITY_DAYS))?;

    // 2. A running govboxd holds the store's lock; replacing its identity under it would leave it
    //    serving with keys that no longer exist on disk. Holding the lock until we finish also
    //    keeps it from starting half-way through.
    let _store = if paths.db().exists() { Some(ClientStore::open_at(paths.clone())?) } else { None };

    // 3. Make everything in memory.
    let suite = opts.suite;
    let device = SigningKey::generate_with(suite.signature_algorithm())?;
    // The audit key: given (its private half stays with govbox-auditd), or made here; either way
    // of the suite's algorithm, since tree heads and exports are signed with it.
    let audit = match &opts.audit_pub {
        Some(path) => {
            let key = PublicKey::load_pem(path)?;
            suite.check_key(&format!("the audit public key {}", path.display()), key.algorithm())?;
            AuditKey::Given(key)
        }
        None => AuditKey::Made(SigningKey::generate_with(suite.signature_algorithm())?),
    };
    let hmac_secret = fsio::random_bytes::<32>("the audit HMAC secret")?;
    let ca_name = format!("govbox CA {}", &device.public_key().keyid()[..16]);
    let ca = BoxCa::generate(&ca_name, now)?;
    let server = ca.issue_server(&hostname, &names, now)?;

    // 4. Write it out; the marker last.
    fsio::ensure_dir_keep_mode(paths.root(), PRIVATE_DIR_MODE)?;
    for dir in paths.all_dirs() {
        fsio::ensure_dir(&dir, PRIVATE_DIR_MODE)?;
    }
    let mut files = Vec::new();
    let mut put = |path: PathBuf, bytes: &[u8], mode: u32, what: &str, overwrite: Overwrite| -> Result<()> {
        fsio::write_file(&path, bytes, mode, overwrite, what)?;
        files.push(WrittenFile { path, mode });
        Ok(())
    };
    let r = Overwrite::Replace;
    put(paths.suite_file(), format!("{suite}\n").as_bytes(), PUBLIC_FILE_MODE, "crypto suite", r)?;
    put(paths.audit_hmac_key(), &hmac_secret, PRIVATE_FILE_MODE, "audit HMAC secret", r)?;
    match &audit {
        AuditKey::Made(key) => {
            put(paths.audit_key(), key.to_pkcs8_pem().as_bytes(), PRIVATE_FILE_MODE, "audit private key", r)?
        }
        // A key of an earlier provisioning would sign heads the box no longer names.
        AuditKey::Given(_) => fsio::remove_if_exists(&paths.audit_key(), "the earlier audit private key")?,
    }
    put(paths.audit_pub(), audit.public_key().to_spki_pem().as_bytes(), PUBLIC_FILE_MODE, "audit public key", r)?;
    put(paths.ca_key(), ca.key_pem.as_bytes(), PRIVATE_FILE_MODE, "CA private key", r)?;
    put(paths.ca_cert(), ca.cert_pem.as_bytes(), PUBLIC_FILE_MODE, "CA certificate", r)?;
    put(paths.server_key(), server.key_pem.as_bytes(), PRIVATE_FILE_MODE, "server private key", r)?;
    put(paths.server_cert(), server.cert_pem.as_bytes(), PUBLIC_FILE_MODE, "server certificate", r)?;
    put(paths.root_json(), trust.to_canonical_json().as_bytes(), PUBLIC_FILE_MODE, "trust root", r)?;
    let device_pub = device.public_key().to_spki_pem();
    put(paths.device_pub(), device_pub.as_bytes(), PUBLIC_FILE_MODE, "device public key", r)?;
    // Without force, refuse atomically: a concurrent provision that won the race keeps its identity.
    let marker_mode = if opts.force { Overwrite::Replace } else { Overwrite::Refuse };
    put(paths.device_key(), device.to_pkcs8_pem().as_bytes(), PRIVATE_FILE_MODE, "device private key", marker_mode)?;

    Ok(ProvisionReport {
        hostname: hostname.to_string(),
        device_key: device.public_key(),
        audit_key: audit.public_key(),
        suite,
        audit_key_held_here: matches!(audit, AuditKey::Made(_)),
        ca: ca.info,
        server: server.info,
        trust,
        files,
        replaced: already,
        paths,
    })
}

/// The kernel's host name, which must be a valid DNS name.
fn system_hostname() -> Result<ServerName> {
    let path = Path::new("/proc/sys/kernel/hostname");
    let raw = fs::read_to_string(path).map_err(|e| ProvisionError::io("reading the host name from", path, e))?;
    raw.trim().parse::<ServerName>().map_err(|e| ProvisionError::InvalidServerName {
        name: raw.trim().to_string(),
        reason: format!("the system host name is not a usable DNS name ({e}); pass --hostname"),
    })
}

/// The box's public identity: everything an auditor or a client may know about it.
#[derive(Debug, Clone)]
pub struct PublicIdentity {
    /// The state layout it was read from.
    pub paths: StatePaths,
    /// The device identity key; its key id is the device id.
    pub device_key: PublicKey,
    /// The audit checkpoint key.
    pub audit_key: PublicKey,
    /// The crypto suite.
    pub suite: Suite,
    /// The CA certificate.
    pub ca: CertInfo,
    /// The server certificate.
    pub server: CertInfo,
    /// The trust policy.
    pub trust: TrustRoot,
}

impl PublicIdentity {
    /// The device id: the device key's key id.
    pub fn device_id(&self) -> String {
        self.device_key.keyid()
    }
}

/// Reads the public identity of a provisioned state folder. Reads no private key.
pub fn load_public_identity(state: impl AsRef<Path>) -> Result<PublicIdentity> {
    let paths = StatePaths::new(state.as_ref());
    tls::require_provisioned(&paths)?;
    let suite = Suite::load(&paths)?;
    let device_key = PublicKey::load_pem(paths.device_pub())?;
    suite.check_key(&format!("the device key {}", paths.device_pub().display()), device_key.algorithm())?;
    let audit_key = PublicKey::load_pem(paths.audit_pub())?;
    suite.check_key(&format!("the audit key {}", paths.audit_pub().display()), audit_key.algorithm())?;
    Ok(PublicIdentity {
        device_key,
        audit_key,
        suite,
        ca: CertInfo::load(&paths.ca_cert())?,
        server: CertInfo::load(&paths.server_cert())?,
        trust: TrustRoot::load(&paths.root_json())?,
        paths,
    })
}

/// A one-line summary of a role: `threshold 2 of 3: <id>, <id> (sm2), <id>`; SM2 keys are marked.
pub fn describe_role(trust: &TrustRoot, role: Role) -> String {
    if !trust.has_role(role) {
        return "absent: accepts no package of this kind".to_string();
    }
    let rk = trust.role(role);
    let ids: Vec<String> = rk
        .keyids
        .iter()
        .map(|id| match trust.keys().get(id).map(|k| k.algorithm()) {
            Some(KeyAlgorithm::Ed25519) | None => id.clone(),
            Some(alg) => format!("{id} ({alg})"),
        })
        .collect();
    format!("threshold {} of {}: {}", rk.threshold, rk.keyids.len(), ids.join(", "))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn options(dir: &Path, vendor: &Path) -> ProvisionOptions {
        ProvisionOptions {
            state_dir: dir.join("state"),
            hostname: Some("box.example".into()),
            extra_sans: vec!["10.1.2.3".into()],
            trust_keys: vec![TrustKeySpec { roles: Role::ALL.to_vec(), path: vendor.to_path_buf() }],
            thresholds: vec![],
            force: false,
            audit_pub: None,
            suite: Suite::Intl,
        }
    }

    fn vendor_key(dir: &Path) -> PathBuf {
        let p = dir.join("vendor.pub");
        SigningKey::generate().unwrap().public_key().write_pem(&p, Overwrite::Refuse).unwrap();
        p
    }

    #[test]
    fn provision_then_show_then_refuse_second_run() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = options(tmp.path(), &vendor_key(tmp.path()));
        let report = provision(&opts).unwrap();
        assert!(!report.replaced);
        assert_eq!(report.server.sans, ["127.0.0.1", "::1", "localhost", "box.example", "10.1.2.3"]);
        for f in &report.files {
            let mode = fs::metadata(&f.path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, f.mode, "{}", f.path.display());
        }
        assert_eq!(fs::read(report.paths.audit_hmac_key()).unwrap().len(), 32);

        let id = load_public_identity(&opts.state_dir).unwrap();
        assert_eq!(id.device_key, report.device_key);
        assert_eq!(id.ca.sha256, report.ca.sha256);
        assert_eq!(id.trust, report.trust);
        let tls = tls::load_server_tls(&opts.state_dir).unwrap();
        assert!(tls.cert_chain_pem.matches("BEGIN CERTIFICATE").count() == 2);

        let before = fs::read(report.paths.device_key()).unwrap();
        let err = provision(&opts).unwrap_err();
        assert!(matches!(err, ProvisionError::AlreadyProvisioned { .. }), "{err}");
        assert_eq!(fs::read(report.paths.device_key()).unwrap(), before);

        let forced = provision(&ProvisionOptions { force: true, ..opts }).unwrap();
        assert!(forced.replaced);
        assert_ne!(forced.device_key, report.device_key);
    }

    #[test]
    fn sm2_vendor_keys_are_trusted_on_an_intl_box_whose_own_keys_stay_ed25519() {
        let tmp = tempfile::tempdir().unwrap();
        let (ed, sm) = (vendor_key(tmp.path()), tmp.path().join("sm2.pub"));
        let sm_key = SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap().public_key();
        sm_key.write_pem(&sm, Overwrite::Refuse).unwrap();
        let mut opts = options(tmp.path(), &ed);
        opts.trust_keys.push(TrustKeySpec { roles: vec![Role::Models], path: sm.clone() });
        opts.thresholds = vec![ThresholdSpec { role: Role::Models, threshold: 2 }];
        let report = provision(&opts).unwrap();
        assert_eq!(report.trust.keys()[&sm_key.keyid()].algorithm(), KeyAlgorithm::Sm2);
        assert_eq!(report.trust.role(Role::Models).threshold, 2);
        assert_eq!(report.device_key.algorithm(), KeyAlgorithm::Ed25519);
        let models = describe_role(&report.trust, Role::Models);
        assert!(models.starts_with("threshold 2 of 2: ") && models.contains(&format!("{} (sm2)", sm_key.keyid())));
        assert!(!describe_role(&report.trust, Role::Root).contains("(sm2)"));
        // An intl box refuses an SM2 audit key, and writes nothing.
        let state = tmp.path().join("second");
        let bad = ProvisionOptions { state_dir: state.clone(), audit_pub: Some(sm), ..opts };
        let err = provision(&bad).unwrap_err();
        assert!(matches!(err, ProvisionError::SuiteMismatch { .. }), "{err}");
        assert!(err.to_string().contains("suite is 'intl', whose keys are ed25519, but this key is sm2"), "{err}");
        assert!(!state.join("identity").exists(), "a refused provisioning wrote nothing");
    }

    #[test]
    fn a_gm_box_has_sm2_device_and_audit_keys_and_records_its_suite() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = ProvisionOptions { suite: Suite::Gm, ..options(tmp.path(), &vendor_key(tmp.path())) };
        let report = provision(&opts).unwrap();
        assert_eq!(report.suite, Suite::Gm);
        assert_eq!(report.device_key.algorithm(), KeyAlgorithm::Sm2);
        assert_eq!(report.audit_key.algorithm(), KeyAlgorithm::Sm2);
        assert_eq!(fs::read_to_string(report.paths.suite_file()).unwrap(), "gm\n");
        assert_eq!(SigningKey::load_pem(report.paths.audit_key()).unwrap().algorithm(), KeyAlgorithm::Sm2);
        let id = load_public_identity(&opts.state_dir).unwrap();
        assert_eq!((id.suite, id.device_key), (Suite::Gm, report.device_key));
        // A box whose recorded suite and keys disagree is refused, not read as either.
        fs::write(report.paths.suite_file(), "intl\n").unwrap();
        let e = load_public_identity(&opts.state_dir).unwrap_err();
        assert!(matches!(e, ProvisionError::SuiteMismatch { .. }), "{e}");
        // A given Ed25519 audit key does not fit a gm box.
        let ed_audit = tmp.path().join("audit-ed.pub");
        SigningKey::generate().unwrap().public_key().write_pem(&ed_audit, Overwrite::Refuse).unwrap();
        let state = tmp.path().join("other");
        let e = provision(&ProvisionOptions { state_dir: state.clone(), audit_pub: Some(ed_audit), ..opts.clone() })
            .unwrap_err();
        assert!(e.to_string().contains("suite is 'gm', whose keys are sm2, but this key is ed25519"), "{e}");
        assert!(!state.exists());
        // A given SM2 audit key does.
        let sm_audit = tmp.path().join("audit-sm2.pub");
        SigningKey::generate_with(KeyAlgorithm::Sm2)
            .unwrap()
            .public_key()
            .write_pem(&sm_audit, Overwrite::Refuse)
            .unwrap();
        let given = provision(&ProvisionOptions { state_dir: state, audit_pub: Some(sm_audit), ..opts }).unwrap();
        assert!(!given.audit_key_held_here && given.audit_key.algorithm() == KeyAlgorithm::Sm2);
    }

    #[test]
    fn a_given_audit_key_never_enters_the_state_folder() {
        let dir = tempfile::tempdir().unwrap();
        let vendor = dir.path().join("vendor.pub");
        SigningKey::generate().unwrap().public_key().write_pem(&vendor, Overwrite::Refuse).unwrap();
        // First the old way: the audit key is made into identity/.
        let opts = options(dir.path(), &vendor);
        let made = provision(&opts).unwrap();
        assert!(made.audit_key_held_here && made.paths.audit_key().exists());
        // Root made a key for govbox-auditd; provisioning with its public half removes the one
        // made before and never writes a private audit key.
        let root_key = SigningKey::generate().unwrap();
        let audit_pub = dir.path().join("audit.pub");
        root_key.public_key().write_pem(&audit_pub, Overwrite::Refuse).unwrap();
        let given =
            provision(&ProvisionOptions { force: true, audit_pub: Some(audit_pub.clone()), ..opts.clone() }).unwrap();
        assert!(!given.audit_key_held_here);
        assert_eq!(given.audit_key, root_key.public_key());
        assert!(!given.paths.audit_key().exists(), "identity/audit.key is still there");
        assert_eq!(PublicKey::load_pem(given.paths.audit_pub()).unwrap(), root_key.public_key());
        assert!(given.files.iter().all(|f| f.path != given.paths.audit_key()));
        // The private key itself is nowhere under the state folder.
        let pem = root_key.to_pkcs8_pem();
        for entry in walk(given.paths.root()) {
            let bytes = std::fs::read(&entry).unwrap_or_default();
            assert!(!String::from_utf8_lossy(&bytes).contains(pem.trim()), "{} holds the audit key", entry.display());
        }
        // A file that is not a public key is named in the error.
        std::fs::write(&audit_pub, "junk").unwrap();
        let e = provision(&ProvisionOptions { force: true, audit_pub: Some(audit_pub.clone()), ..opts }).unwrap_err();
        assert!(e.to_string().contains(&audit_pub.display().to_string()), "{e}");
    }

    fn walk(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
        }
        out
    }

    #[test]
    fn force_is_refused_while_the_daemon_holds_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let opts = options(tmp.path(), &vendor_key(tmp.path()));
        let first = provision(&opts).unwrap();
        let daemon = ClientStore::open(&opts.state_dir).unwrap();
        let err = provision(&ProvisionOptions { force: true, ..opts.clone() }).unwrap_err();
        assert!(matches!(err, ProvisionError::StoreLocked { .. }), "{err}");
        assert_eq!(load_public_identity(&opts.state_dir).unwrap().device_key, first.device_key);
        drop(daemon);
        assert!(provision(&ProvisionOptions { force: true, ..opts }).unwrap().replaced);
    }

    #[test]
    fn bad_input_writes_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let vendor = vendor_key(tmp.path());
        let mut opts = options(tmp.path(), &vendor);
        opts.thresholds = vec![ThresholdSpec { role: Role::Models, threshold: 2 }];
        assert!(provision(&opts).is_err());
        opts.thresholds.clear();
        opts.extra_sans = vec!["bad_name".into()];
        assert!(provision(&opts).is_err());
        opts.extra_sans.clear();
        opts.trust_keys[0].path = tmp.path().join("missing.pub");
        let err = provision(&opts).unwrap_err();
        assert!(err.to_string().contains("missing.pub"), "{err}");
        assert!(!opts.state_dir.exists());
    }
}
