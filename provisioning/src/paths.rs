//! Where everything lives under the state folder (`/var/lib/govbox` in production).

use std::path::{Path, PathBuf};

/// The production state folder, used when no `--state DIR` is given.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/govbox";

/// Every path of the state layout, derived from one root folder.
///
/// ```text
/// DIR/identity/device.key  device.pub  audit.key  audit.pub  audit-hmac.key  suite
/// DIR/tls/ca.crt  ca.key  server.crt  server.key
/// DIR/trust/root.json
/// DIR/models/  DIR/audit/  DIR/state/db (sled)
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatePaths {
    root: PathBuf,
}

impl StatePaths {
    /// The layout under `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The state folder itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `identity/`: the device's keys and audit secret.
    pub fn identity_dir(&self) -> PathBuf {
        self.root.join("identity")
    }
    /// `tls/`: the box's CA and server certificate.
    pub fn tls_dir(&self) -> PathBuf {
        self.root.join("tls")
    }
    /// `trust/`: the provisioned trust policy.
    pub fn trust_dir(&self) -> PathBuf {
        self.root.join("trust")
    }
    /// `models/`: the content-addressed model store.
    pub fn models_dir(&self) -> PathBuf {
        self.root.join("models")
    }
    /// `policies/`: the content-addressed store of content-safety policy packages.
    pub fn policies_dir(&self) -> PathBuf {
        self.root.join("policies")
    }
    /// `audit/`: the audit log.
    pub fn audit_dir(&self) -> PathBuf {
        self.root.join("audit")
    }
    /// `state/`: the daemon's own state.
    pub fn state_dir(&self) -> PathBuf {
        self.root.join("state")
    }
    /// All six folders of the layout, in creation order.
    pub fn all_dirs(&self) -> [PathBuf; 6] {
        [self.identity_dir(), self.tls_dir(), self.trust_dir(), self.models_dir(), self.audit_dir(), self.state_dir()]
    }

    /// The crypto suite, `intl` or `gm` (see [`crate::Suite`]).
    pub fn suite_file(&self) -> PathBuf {
        self.identity_dir().join("suite")
    }
    /// The device identity private key; its presence marks a provisioned box.
    pub fn device_key(&self) -> PathBuf {
        self.identity_dir().join("device.key")
    }
    /// The device identity public key.
    pub fn device_pub(&self) -> PathBuf {
        self.identity_dir().join("device.pub")
    }
    /// The audit checkpoint signing key.
    pub fn audit_key(&self) -> PathBuf {
        self.identity_dir().join("audit.key")
    }
    /// The audit checkpoint public key.
    pub fn audit_pub(&self) -> PathBuf {
        self.identity_dir().join("audit.pub")
    }
    /// The 32-byte secret under which the audit log HMACs prompts and responses.
    pub fn audit_hmac_key(&self) -> PathBuf {
        self.identity_dir().join("audit-hmac.key")
    }
    /// The box's CA certificate.
    pub fn ca_cert(&self) -> PathBuf {
        self.tls_dir().join("ca.crt")
    }
    /// The box's CA private key.
    pub fn ca_key(&self) -> PathBuf {
        self.tls_dir().join("ca.key")
    }
    /// The HTTPS server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.tls_dir().join("server.crt")
    }
    /// The HTTPS server private key.
    pub fn server_key(&self) -> PathBuf {
        self.tls_dir().join("server.key")
    }
    /// The trust policy.
    pub fn root_json(&self) -> PathBuf {
        self.trust_dir().join("root.json")
    }
    /// The sled database.
    pub fn db(&self) -> PathBuf {
        self.state_dir().join("db")
    }
}
