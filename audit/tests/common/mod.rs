//! Shared helpers of the audit crate's integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod swtpm;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use govbox_audit::{AuditKeys, AuditLog, AuditOptions, Event};
use govbox_provisioning::{Overwrite, PublicKey, SigningKey};
use serde_json::Value;

/// A log in a temporary folder, with a key that can be loaded again.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub pem: String,
    pub device: PublicKey,
}

impl Fixture {
    pub fn new() -> Self {
        Self::with_alg(govbox_provisioning::KeyAlgorithm::Ed25519)
    }

    /// A fixture whose audit and device keys are of `alg`: `sm2` makes a log of the `gm` suite.
    pub fn with_alg(alg: govbox_provisioning::KeyAlgorithm) -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
            pem: SigningKey::generate_with(alg).unwrap().to_pkcs8_pem(),
            device: SigningKey::generate_with(alg).unwrap().public_key(),
        }
    }

    /// Another fixture with the same keys (a forked log).
    pub fn same_keys(&self) -> Self {
        Self { dir: tempfile::tempdir().unwrap(), pem: self.pem.clone(), device: self.device }
    }

    pub fn keys(&self) -> AuditKeys {
        let mut k = AuditKeys::new(SigningKey::from_pkcs8_pem(&self.pem, "test").unwrap(), [42; 32]);
        k.device_key = Some(self.device);
        k
    }

    pub fn public(&self) -> PublicKey {
        SigningKey::from_pkcs8_pem(&self.pem, "test").unwrap().public_key()
    }

    pub fn audit_dir(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    pub fn db_path(&self) -> PathBuf {
        self.audit_dir().join("db")
    }

    pub fn open(&self) -> AuditLog {
        self.open_with(AuditOptions::default())
    }

    /// Opens the log, waiting briefly for the previous handle's lock to go.
    pub fn open_with(&self, opts: AuditOptions) -> AuditLog {
        AuditLog::open(self.audit_dir(), self.keys(), opts).unwrap()
    }
}

/// An inference request entry for request `i`.
pub fn request(i: u64) -> Event {
    Event::InferenceRequest {
        request_id: format!("req-{i}"),
        client: format!("client-{}", i % 3),
        model: "qwen2-7b".into(),
        model_digest: "ab".repeat(32),
        prompt_hmac: format!("{i:064x}"),
        endpoint: "/v1/chat/completions".into(),
        user_hmac: None,
    }
}

/// Appends `n` requests, returning their seqs.
pub fn fill(log: &AuditLog, n: u64) -> Vec<u64> {
    let start = log.tree_size();
    (start..start + n).map(|i| log.append_blocking(request(i)).unwrap()).collect()
}

/// Opens the sled store directly (the log must be closed and dropped), waiting for sled's lock.
pub fn open_sled(path: &Path) -> sled::Db {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("opening {}: {e}", path.display()),
        }
    }
}

/// Changes an export with `f`, on its JSON.
pub fn edit_export(bytes: &[u8], f: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(bytes).unwrap();
    f(&mut v);
    serde_json::to_vec_pretty(&v).unwrap()
}

/// The failing checks' details.
pub fn failures(report: &govbox_audit::VerifyReport) -> Vec<String> {
    report.checks.iter().filter(|c| !c.ok).map(|c| format!("{}: {}", c.name, c.detail)).collect()
}

/// Asserts that the report failed and that some failing check's detail contains `needle`.
pub fn assert_fails_with(report: &govbox_audit::VerifyReport, needle: &str) {
    let f = failures(report);
    assert!(!report.ok, "expected a failure naming '{needle}', report passed: {report:#?}");
    assert!(f.iter().any(|d| d.contains(needle)), "no failure names '{needle}': {f:#?}");
}

/// A running `govbox-auditd` (the real binary), killed when dropped.
pub struct Auditd(pub Child);

impl Drop for Auditd {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Writes `dir/keys` (a fresh audit key, HMAC secret and device key) unless it exists.
pub fn auditd_keys(dir: &Path) -> PathBuf {
    let keys = dir.join("keys");
    if !keys.exists() {
        std::fs::create_dir_all(&keys).unwrap();
        SigningKey::generate().unwrap().write_pem(&keys.join("audit.key"), Overwrite::Refuse).unwrap();
        std::fs::write(keys.join("audit-hmac.key"), [5u8; 32]).unwrap();
        SigningKey::generate().unwrap().public_key().write_pem(&keys.join("device.pub"), Overwrite::Refuse).unwrap();
    }
    keys
}

/// Starts `govbox-auditd` on `dir/audit` with the keys of [`auditd_keys`]; waits for its socket.
pub fn start_auditd(dir: &Path) -> (Auditd, PathBuf) {
    start_auditd_with(dir, None)
}

/// [`start_auditd`] with `config` as its `--config`.
pub fn start_auditd_with(dir: &Path, config: Option<&Path>) -> (Auditd, PathBuf) {
    let keys = auditd_keys(dir);
    let socket = dir.join("audit.sock");
    let _ = std::fs::remove_file(&socket);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_govbox-auditd"));
    cmd.arg("--audit-dir").arg(dir.join("audit")).arg("--keys").arg(&keys).arg("--socket").arg(&socket);
    if let Some(c) = config {
        cmd.arg("--config").arg(c);
    }
    let mut d = Auditd(cmd.stdin(Stdio::null()).spawn().unwrap());
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        if let Some(status) = d.0.try_wait().unwrap() {
            panic!("govbox-auditd exited with {status} before listening");
        }
        assert!(Instant::now() < deadline, "govbox-auditd did not listen in 30 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    (d, socket)
}
