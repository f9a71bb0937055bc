//! The measurements a report carries, and a builder that takes them from files.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::AttestError;
use govbox_provisioning::HashAlgorithm;

use crate::digest::digest_file;

/// The running process's own binary, as the kernel knows it (not a path that may have been
/// replaced since the process started).
pub const SELF_EXE: &str = "/proc/self/exe";
/// The kernel's random id of the current boot.
pub const BOOT_ID_PATH: &str = "/proc/sys/kernel/random/boot_id";
/// What `config_sha256` holds when the daemon runs with no config file.
pub const NO_CONFIG: &str = "none";

/// One served model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMeasurement {
    /// The served name.
    pub name: String,
    /// The package version (`dev` for an unsigned dev folder).
    pub version: String,
    /// `sha256-<hex>` of the signed package manifest, or `unsigned-dev-folder`.
    pub digest: String,
}

/// What the box runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Measurements {
    /// The hash of the three file digests below: `sha256` on an `intl` box, `sm3` on a `gm` box
    /// (the field names keep `sha256` for compatibility; this says what they hold). Absent in
    /// reports made before SM3: SHA-256.
    #[serde(default)]
    pub hash: HashAlgorithm,
    /// Hex digest of the running govboxd binary.
    pub binary_sha256: String,
    /// Hex digest of the config file, or `none` when the daemon runs without one.
    pub config_sha256: String,
    /// Hex digest of `STATE/trust/root.json`.
    pub trust_root_sha256: String,
    /// Each served model, by name.
    pub models: Vec<ModelMeasurement>,
    /// The boot id: a report from another boot has another one.
    pub boot_id: String,
}

impl Measurements {
    /// An empty builder that hashes with SHA-256 (the `intl` suite).
    pub fn builder() -> MeasurementsBuilder {
        MeasurementsBuilder::default()
    }

    /// An empty builder that hashes with `hash` (the box's suite's).
    pub fn builder_with(hash: HashAlgorithm) -> MeasurementsBuilder {
        MeasurementsBuilder { hash, ..MeasurementsBuilder::default() }
    }
}

/// Collects [`Measurements`]; every field but the models is required.
#[derive(Debug, Default)]
pub struct MeasurementsBuilder {
    hash: HashAlgorithm,
    binary: Option<String>,
    config: Option<String>,
    trust_root: Option<String>,
    models: Vec<ModelMeasurement>,
    boot_id: Option<String>,
}

impl MeasurementsBuilder {
    /// Hashes the binary at `path` (the daemon passes [`SELF_EXE`]).
    pub fn binary(mut self, path: &Path) -> Result<Self, AttestError> {
        self.binary = Some(digest_file(self.hash, path, "govboxd binary")?);
        Ok(self)
    }

    /// Hashes the config file, or records [`NO_CONFIG`].
    pub fn config(mut self, path: Option<&Path>) -> Result<Self, AttestError> {
        self.config = Some(match path {
            Some(p) => digest_file(self.hash, p, "config file")?,
            None => NO_CONFIG.to_string(),
        });
        Ok(self)
    }

    /// Hashes the trust root file.
    pub fn trust_root(mut self, path: &Path) -> Result<Self, AttestError> {
        self.trust_root = Some(digest_file(self.hash, path, "trust root")?);
        Ok(self)
    }

    /// Reads the boot id from `path` (the daemon passes [`BOOT_ID_PATH`]).
    pub fn boot_id(mut self, path: &Path) -> Result<Self, AttestError> {
        let text = std::fs::read_to_string(path).map_err(|source| AttestError::Measure {
            what: "boot id",
            path: path.to_path_buf(),
            source,
        })?;
        // The kernel's boot id is a 36-character UUID; anything longer is not one.
        self.boot_id = Some(text.trim().chars().take(64).collect());
        Ok(self)
    }

    /// Adds a served model.
    pub fn model(mut self, name: &str, version: &str, digest: &str) -> Self {
        self.models.push(ModelMeasurement { name: name.into(), version: version.into(), digest: digest.into() });
        self
    }

    /// The measurements, models sorted by name so that the same box gives the same list.
    pub fn build(mut self) -> Result<Measurements, AttestError> {
        self.models.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Measurements {
            hash: self.hash,
            binary_sha256: self.binary.ok_or(AttestError::MissingMeasurement("binary"))?,
            config_sha256: self.config.ok_or(AttestError::MissingMeasurement("config"))?,
            trust_root_sha256: self.trust_root.ok_or(AttestError::MissingMeasurement("trust root"))?,
            models: self.models,
            boot_id: self.boot_id.ok_or(AttestError::MissingMeasurement("boot id"))?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sha256_bytes;

    #[test]
    fn builder_hashes_files_and_requires_each_field() {
        let dir = tempfile::tempdir().unwrap();
        let f = |n: &str, b: &[u8]| {
            let p = dir.path().join(n);
            std::fs::write(&p, b).unwrap();
            p
        };
        let (bin, root, boot) = (f("bin", b"elf"), f("root.json", b"{}"), f("boot", b"1234-5678\n"));
        let m = Measurements::builder()
            .binary(&bin)
            .unwrap()
            .config(None)
            .unwrap()
            .trust_root(&root)
            .unwrap()
            .boot_id(&boot)
            .unwrap()
            .model("b", "1", "sha256-bb")
            .model("a", "2", "sha256-aa")
            .build()
            .unwrap();
        assert_eq!(m.binary_sha256, sha256_bytes(b"elf"));
        assert_eq!(m.config_sha256, "none");
        assert_eq!(m.trust_root_sha256, sha256_bytes(b"{}"));
        assert_eq!(m.boot_id, "1234-5678");
        assert_eq!(m.models.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        let e = Measurements::builder().binary(&bin).unwrap().build().unwrap_err();
        assert_eq!(e.code(), "measurement_missing");
        // On a gm box the files are measured with SM3 (GB/T 32905 example 1), and the report says so.
        let abc = f("abc", b"abc");
        let gm = Measurements::builder_with(HashAlgorithm::Sm3)
            .binary(&abc)
            .unwrap()
            .config(Some(&abc))
            .unwrap()
            .trust_root(&abc)
            .unwrap()
            .boot_id(&boot)
            .unwrap()
            .build()
            .unwrap();
        let sm3_abc = "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0";
        assert_eq!((gm.binary_sha256.as_str(), gm.config_sha256.as_str()), (sm3_abc, sm3_abc));
        assert_eq!(serde_json::to_value(&gm).unwrap()["hash"], "sm3");
        assert_eq!(m.hash, HashAlgorithm::Sha256);
    }
}
