//! At start, govboxd follows a trust root rotation that an update brought: root installs a new
//! root only into its own update trust anchor (`ROOT/trust/root.json`, see
//! `govbox_images::update::InstallRoot::anchor`), never into the state folder, so the service's
//! `STATE/trust/root.json` (which decides the `models` role) is replaced here, by govboxd itself,
//! when the anchor is newer and its rotation rules accept it: signed by the current root's `root`
//! threshold and its own, a higher version, not expired. An anchor that does not pass (a chain
//! of several rotations at once, a bad file) changes nothing and is logged.

use std::path::Path;

use govbox_images::update::InstallRoot;
use govbox_provisioning::{Overwrite, StatePaths, TrustRoot};

/// What [`adopt_rotated_root`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Adopted {
    /// The state's root is as new as the anchor, or there is no anchor.
    Nothing,
    /// The state's root was replaced: from, to.
    Rotated(u64, u64),
}

/// Replaces `STATE/trust/root.json` by the install folder's newer anchor, if the rotation rules
/// accept it; `Err` says why not.
pub fn adopt_rotated_root(install_root: &Path, state_dir: &Path) -> Result<Adopted, String> {
    let root = InstallRoot::new(install_root);
    if !root.anchor_file().exists() {
        return Ok(Adopted::Nothing);
    }
    let anchor = root.anchor().map_err(|e| e.to_string())?;
    let paths = StatePaths::new(state_dir);
    let current = TrustRoot::load(&paths.root_json()).map_err(|e| e.to_string())?;
    if anchor.version() <= current.version() {
        return Ok(Adopted::Nothing);
    }
    let bytes = anchor.to_canonical_json();
    let new = govbox_images::accept_new_root(&current, bytes.as_bytes()).map_err(|e| e.to_string())?;
    govbox_provisioning::write_file(&paths.root_json(), bytes.as_bytes(), 0o644, Overwrite::Replace, "trust root")
        .map_err(|e| e.to_string())?;
    Ok(Adopted::Rotated(current.version(), new.version()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use govbox_provisioning::{Role, SigningKey, to_canonical_json};
    use time::{Duration, OffsetDateTime};

    fn root_v(keys: &SigningKey, version: u64, sign: &[&SigningKey]) -> Vec<u8> {
        let a = [(vec![Role::Root, Role::Models, Role::Updates], keys.public_key())];
        let r = TrustRoot::build(&a, &[], OffsetDateTime::now_utc() + Duration::days(30)).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&r.to_canonical_json()).unwrap();
        v["signed"]["version"] = version.into();
        govbox_images::sign_root(to_canonical_json(&v).as_bytes(), sign).unwrap()
    }

    #[test]
    fn a_signed_newer_anchor_is_adopted_and_a_forged_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let (opt, state) = (dir.path().join("opt"), dir.path().join("state"));
        let paths = StatePaths::new(&state);
        std::fs::create_dir_all(paths.root_json().parent().unwrap()).unwrap();
        let k = SigningKey::generate().unwrap();
        std::fs::write(paths.root_json(), root_v(&k, 1, &[])).unwrap();
        assert_eq!(adopt_rotated_root(&opt, &state), Ok(Adopted::Nothing), "no anchor yet");

        let root = InstallRoot::new(&opt);
        root.init_anchor(&std::fs::read(paths.root_json()).unwrap(), "test").unwrap();
        assert_eq!(adopt_rotated_root(&opt, &state), Ok(Adopted::Nothing));
        // A version 2 that only another key signed (its own threshold, not the current root's).
        let other = SigningKey::generate().unwrap();
        std::fs::write(root.anchor_file(), root_v(&other, 2, &[&other])).unwrap();
        assert!(adopt_rotated_root(&opt, &state).unwrap_err().contains("root"));
        assert_eq!(TrustRoot::load(&paths.root_json()).unwrap().version(), 1);
        // Signed by the current root key: adopted.
        std::fs::write(root.anchor_file(), root_v(&k, 2, &[&k])).unwrap();
        assert_eq!(adopt_rotated_root(&opt, &state), Ok(Adopted::Rotated(1, 2)));
        assert_eq!(TrustRoot::load(&paths.root_json()).unwrap().version(), 2);
    }
}
