//! Building an update bundle (`.gbu`): the same signed container as a model package, of kind
//! `update`, whose payload is `bin/govboxd`, `bin/govbox` and optionally `dist/...`.

use std::fs;
use std::path::{Path, PathBuf};

use govbox_provisioning::{HashAlgorithm, SigningKey, TrustRoot};
use serde_json::Value;

use super::error::UpdateError;
use crate::build::{Built, PackageBuilder};
use crate::error::PackageError;
use crate::fsutil::random_hex;
use crate::manifest::UpdateInfo;

/// The name every govbox update bundle carries.
pub const BUNDLE_NAME: &str = "govbox";
/// The daemon's path inside the payload.
pub const DAEMON_PATH: &str = "bin/govboxd";
/// The command line's path inside the payload.
pub const CLI_PATH: &str = "bin/govbox";

/// What goes into a bundle.
#[derive(Debug, Clone)]
pub struct BundleSpec {
    /// Semantic version of the release.
    pub version: String,
    /// Monotonic security version; boxes refuse bundles below their stored one.
    pub security_version: u64,
    /// The `govboxd` binary.
    pub daemon: PathBuf,
    /// The `govbox` binary.
    pub cli: PathBuf,
    /// A folder copied to `dist/` (unit files, default config), if any.
    pub dist: Option<PathBuf>,
    /// A new signed `root.json` to rotate to when the bundle is committed, if any.
    pub new_root: Option<Vec<u8>>,
    /// The hash of the files' digests and of the bundle's digest, named in the manifest:
    /// SHA-256, or SM3 for boxes provisioned with `--suite gm`.
    pub hash: HashAlgorithm,
}

/// Removes the payload folder it names when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn copy_in(from: &Path, to: &Path) -> Result<(), UpdateError> {
    if let Some(parent) = to.parent() {
        fs::create_dir_all(parent).map_err(|e| UpdateError::io("creating", parent, e))?;
    }
    // A hard link costs nothing; across file systems, copy.
    if fs::hard_link(from, to).is_err() {
        fs::copy(from, to).map_err(|e| UpdateError::io(format!("copying {} to", from.display()), to, e))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), UpdateError> {
    for entry in fs::read_dir(from).map_err(|e| UpdateError::io("reading folder", from, e))? {
        let entry = entry.map_err(|e| UpdateError::io("reading folder", from, e))?;
        let p = entry.path();
        let dest = to.join(entry.file_name());
        if p.is_dir() {
            copy_tree(&p, &dest)?;
        } else {
            copy_in(&p, &dest)?;
        }
    }
    Ok(())
}

/// Builds the bundle `spec` describes, signed by `keys`, into `out` (atomically).
pub fn build_bundle(spec: &BundleSpec, keys: &[&SigningKey], out: &Path) -> Result<Built, UpdateError> {
    let root = match &spec.new_root {
        None => None,
        Some(bytes) => {
            // Refuse a malformed root here, not on the box.
            TrustRoot::parse(bytes, "new root")?;
            let v: Value = serde_json::from_slice(bytes)
                .map_err(|e| PackageError::RootRejected { reason: format!("the new root is not JSON: {e}") })?;
            Some(v)
        }
    };
    let dir = out.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = TempDir(dir.join(format!(".govbox-update-payload-{}", random_hex(8)?)));
    copy_in(&spec.daemon, &tmp.0.join(DAEMON_PATH))?;
    copy_in(&spec.cli, &tmp.0.join(CLI_PATH))?;
    if let Some(dist) = &spec.dist {
        copy_tree(dist, &tmp.0.join("dist"))?;
    }
    let info = UpdateInfo { security_version: spec.security_version, root };
    let mut b = PackageBuilder::update(BUNDLE_NAME, &spec.version, &tmp.0, info)?.with_hash(spec.hash);
    Ok(b.write(out, keys, &mut |_, _| {})?)
}
