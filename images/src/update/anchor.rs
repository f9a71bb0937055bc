//! The update trust anchor: the trust root whose `updates` and `root` roles decide which update
//! bundles root installs, kept root-owned under the install folder.
//!
//! ```text
//! ROOT/trust/root.json   the anchor (0644, root-owned; installed by `govbox update init`)
//! ROOT/trust/version     the highest anchor version ever installed here (decimal; only rises)
//! ```
//!
//! `govbox update` runs as root and executes what it installs as root (`ExecStartPre=+`), so the
//! file that decides what it installs must be one that only root can change. The service
//! account's `STATE/trust/root.json` keeps serving the `models` role to govboxd; it is read once,
//! by the operator's `govbox update init`, and never again by an update.
//!
//! Rules, checked every time the anchor is loaded or replaced:
//! 1. "A trust root file is always verified against its own signatures": a root of version 2 or
//!    later must carry signatures of its own `root` threshold. Version 1 is the provisioned root,
//!    which nobody signed: `govbox update init` is the operator accepting it as the first anchor.
//! 2. "Never accepted below the highest version seen": an anchor whose version is below
//!    `ROOT/trust/version` is refused (a restored backup, a replaced file).
//! 3. After `init`, the anchor changes only by a bundle whose new root the current anchor's
//!    `root` threshold signed (`crate::root::accept_new_root`), installed when that update commits.

use std::fs;
use std::path::PathBuf;

use govbox_provisioning::{Role, TrustRoot};

use super::error::UpdateError;
use super::layout::{InstallRoot, read_counter};
use crate::fsutil::{read_capped, sync_dir, write_atomic};

type Result<T> = std::result::Result<T, UpdateError>;

/// The largest anchor file read.
const ANCHOR_LIMIT: u64 = 1 << 20;

impl InstallRoot {
    /// `ROOT/trust`.
    pub fn trust_dir(&self) -> PathBuf {
        self.path().join("trust")
    }

    /// `ROOT/trust/root.json`.
    pub fn anchor_file(&self) -> PathBuf {
        self.trust_dir().join("root.json")
    }

    /// `ROOT/trust/version`.
    pub fn anchor_version_file(&self) -> PathBuf {
        self.trust_dir().join("version")
    }

    /// The highest anchor version installed here; 0 before `init`.
    fn anchor_highest(&self) -> Result<u64> {
        read_counter(&self.anchor_version_file(), "a trust root version")
    }

    /// The update trust anchor, checked by rules 1 and 2 of this module.
    pub fn anchor(&self) -> Result<TrustRoot> {
        let path = self.anchor_file();
        let bytes = match read_capped(&path, ANCHOR_LIMIT, "update trust anchor") {
            Ok(b) => b,
            Err(_) if !path.exists() => return Err(UpdateError::NoTrustAnchor { root: self.path().to_path_buf() }),
            Err(e) => return Err(e.into()),
        };
        let root = TrustRoot::parse(&bytes, &path.display().to_string())?;
        self_signed(&root).map_err(|reason| UpdateError::TrustAnchor { path: path.clone(), reason })?;
        let highest = self.anchor_highest()?;
        if root.version() < highest {
            return Err(UpdateError::TrustAnchor {
                path,
                reason: format!("version {} is below version {highest}, the highest installed here", root.version()),
            });
        }
        Ok(root)
    }

    /// `govbox update init`: installs `bytes` as the first anchor. Refused when an anchor is
    /// already installed (it changes only by a signed rotation), and by rule 1.
    pub fn init_anchor(&self, bytes: &[u8], origin: &str) -> Result<TrustRoot> {
        let root = TrustRoot::parse(bytes, origin)?;
        self_signed(&root).map_err(|reason| UpdateError::TrustAnchor { path: PathBuf::from(origin), reason })?;
        if self.anchor_file().exists() || self.anchor_highest()? > 0 {
            return Err(UpdateError::TrustAnchor {
                path: self.anchor_file(),
                reason: "an update trust anchor is already installed; it changes only by an update bundle that \
                         its root threshold signed"
                    .into(),
            });
        }
        self.write_anchor(&root)?;
        Ok(root)
    }

    /// Replaces the anchor by `new`, which the caller accepted as a signed rotation of `current`.
    pub(crate) fn rotate_anchor(&self, current: &TrustRoot, new_bytes: &[u8]) -> Result<TrustRoot> {
        let new = crate::root::accept_new_root(current, new_bytes)?;
        self.write_anchor(&new)?;
        Ok(new)
    }

    /// The file first, then the highest version: a power loss between leaves a version file
    /// that is lower than the file, which rule 2 accepts.
    fn write_anchor(&self, root: &TrustRoot) -> Result<()> {
        let dir = self.trust_dir();
        fs::DirBuilder::new().recursive(true).create(&dir).map_err(|e| UpdateError::io("creating", &dir, e))?;
        write_atomic(&self.anchor_file(), root.to_canonical_json().as_bytes(), 0o644)?;
        if root.version() > self.anchor_highest()? {
            write_atomic(&self.anchor_version_file(), format!("{}\n", root.version()).as_bytes(), 0o644)?;
        }
        sync_dir(&dir)?;
        Ok(())
    }
}

/// Rule 1: a root after the first carries its own `root` threshold of valid signatures.
fn self_signed(root: &TrustRoot) -> std::result::Result<(), String> {
    if root.version() == 1 {
        return Ok(());
    }
    let by_own = crate::root::root_signers(root, root).map_err(|e| e.to_string())?.len();
    let need = root.role(Role::Root).threshold as usize;
    if by_own < need {
        return Err(format!(
            "version {} is signed by {by_own} of threshold {need} keys of its own root role",
            root.version()
        ));
    }
    Ok(())
}
