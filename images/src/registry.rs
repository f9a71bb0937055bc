//! `models/registry.json`: which versions of each model are in the store, which one is active,
//! and the earlier active ones for rollback. Pure data and rules; the store does the locking
//! and the writing.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{PackageError, Result};
use crate::version::Version;

/// The registry's own format tag.
pub(crate) const REGISTRY_FORMAT: &str = "govbox-models/1";
/// Rollback depth kept per model; older entries are dropped.
const HISTORY_LIMIT: usize = 32;

/// One stored version of a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionRecord {
    /// Its semantic version.
    pub version: String,
    /// Hex digest of its manifest under the manifest's own `hash`; the store folder is
    /// `sha256-<digest>` or `sm3-<digest>` after that algorithm.
    pub digest: String,
    /// Payload bytes.
    pub size: u64,
    /// When it was imported, RFC 3339.
    pub imported: String,
}

/// One model name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelRecord {
    /// The model name.
    pub name: String,
    /// The version served, if any.
    pub active: Option<String>,
    /// Earlier active versions, most recent last: what [`crate::ModelStore::rollback`] returns to.
    pub history: Vec<String>,
    /// Every stored version, lowest first.
    pub versions: Vec<VersionRecord>,
    /// Taken out of service (`govbox model disable`): no version is served until it is enabled
    /// again. Absent from the file when false, so registries without it read the same.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Registry {
    pub format: String,
    pub models: Vec<ModelRecord>,
}

impl Default for Registry {
    fn default() -> Self {
        Self { format: REGISTRY_FORMAT.into(), models: Vec::new() }
    }
}

fn semver(v: &str) -> Option<Version> {
    Version::parse(v).ok()
}

impl Registry {
    /// Parses and checks the registry file's contents.
    pub(crate) fn parse(bytes: &[u8], path: &Path) -> Result<Self> {
        let corrupt = |reason: String| PackageError::CorruptStore { path: path.to_path_buf(), reason };
        let r: Registry = serde_json::from_slice(bytes).map_err(|e| corrupt(e.to_string()))?;
        if r.format != REGISTRY_FORMAT {
            return Err(corrupt(format!("unknown registry format '{}'", r.format)));
        }
        for m in &r.models {
            let has = |v: &String| m.versions.iter().any(|x| &x.version == v);
            if m.active.as_ref().is_some_and(|a| !has(a)) || !m.history.iter().all(has) {
                return Err(corrupt(format!("model '{}' names a version it does not hold", m.name)));
            }
        }
        Ok(r)
    }

    /// The registry as written: pretty JSON, for people reading it.
    pub(crate) fn to_bytes(&self) -> Vec<u8> {
        let mut b = serde_json::to_vec_pretty(self).unwrap_or_default();
        b.push(b'\n');
        b
    }

    pub(crate) fn get(&self, name: &str) -> Option<&ModelRecord> {
        self.models.iter().find(|m| m.name == name)
    }

    fn get_mut(&mut self, name: &str, action: &str) -> Result<&mut ModelRecord> {
        self.models
            .iter_mut()
            .find(|m| m.name == name)
            .ok_or_else(|| PackageError::NotFound { action: action.to_string(), what: format!("model '{name}'") })
    }

    /// The record and version stored under `digest`.
    pub(crate) fn by_digest(&self, digest: &str) -> Option<(&ModelRecord, &VersionRecord)> {
        self.models.iter().find_map(|m| m.versions.iter().find(|v| v.digest == digest).map(|v| (m, v)))
    }

    /// Adds a version; activates it when asked or when the name has no active version.
    /// Returns whether it was activated.
    pub(crate) fn add(&mut self, name: &str, rec: VersionRecord, activate: bool) -> bool {
        self.add_as(name, rec, activate, false)
    }

    /// Adds a version without activating it; returns whether [`Registry::add`] would have (it
    /// was asked to, or the name has no active version).
    pub(crate) fn add_held(&mut self, name: &str, rec: VersionRecord, activate: bool) -> bool {
        self.add_as(name, rec, activate, true)
    }

    fn add_as(&mut self, name: &str, rec: VersionRecord, activate: bool, held: bool) -> bool {
        if self.get(name).is_none() {
            self.models.push(ModelRecord {
                name: name.into(),
                active: None,
                history: vec![],
                versions: vec![],
                disabled: false,
            });
            self.models.sort_by(|a, b| a.name.cmp(&b.name));
        }
        let Ok(m) = self.get_mut(name, "") else { return false };
        let version = rec.version.clone();
        m.versions.push(rec);
        m.versions.sort_by_key(|v| semver(&v.version));
        let activate = activate || m.active.is_none();
        if activate && !held {
            set_active(m, version);
        }
        activate
    }

    /// Activates `version`, or the highest one (by semantic version) when `None`.
    pub(crate) fn activate(&mut self, name: &str, version: Option<&str>) -> Result<String> {
        let action = format!("activating model '{name}'");
        let m = self.get_mut(name, &action)?;
        let target = match version {
            Some(v) if m.versions.iter().any(|x| x.version == v) => v.to_string(),
            Some(v) => return Err(PackageError::NotFound { action, what: format!("version {v} of '{name}'") }),
            None => match m.versions.iter().max_by(|a, b| semver(&a.version).cmp(&semver(&b.version))) {
                Some(v) => v.version.clone(),
                None => return Err(PackageError::NotFound { action, what: format!("any version of '{name}'") }),
            },
        };
        set_active(m, target.clone());
        Ok(target)
    }

    /// Takes `name` out of service (`disabled`) or puts it back; returns its record.
    pub(crate) fn set_disabled(&mut self, name: &str, disabled: bool) -> Result<ModelRecord> {
        let action = format!("{} model '{name}'", if disabled { "disabling" } else { "enabling" });
        let m = self.get_mut(name, &action)?;
        m.disabled = disabled;
        Ok(m.clone())
    }

    /// Returns to the previous active version.
    pub(crate) fn rollback(&mut self, name: &str) -> Result<String> {
        let m = self.get_mut(name, &format!("rolling back model '{name}'"))?;
        let prev = m.history.pop().ok_or_else(|| PackageError::NoRollback { name: name.to_string() })?;
        m.active = Some(prev.clone());
        Ok(prev)
    }

    /// Removes a version that is not active.
    pub(crate) fn remove(&mut self, name: &str, version: &str) -> Result<VersionRecord> {
        let action = format!("removing model '{name} {version}'");
        let m = self.get_mut(name, &action)?;
        if m.active.as_deref() == Some(version) {
            return Err(PackageError::ActiveVersion { name: name.to_string(), version: version.to_string() });
        }
        let i = m
            .versions
            .iter()
            .position(|v| v.version == version)
            .ok_or_else(|| PackageError::NotFound { action, what: format!("version {version} of '{name}'") })?;
        let rec = m.versions.remove(i);
        m.history.retain(|h| h != version);
        self.models.retain(|m| !m.versions.is_empty());
        Ok(rec)
    }

    /// Undoes an import: removes the version stored under `digest` and, if the import
    /// activated it, restores the version active before.
    pub(crate) fn discard(&mut self, digest: &str) -> Result<VersionRecord> {
        let (name, version) = self
            .by_digest(digest)
            .map(|(m, v)| (m.name.clone(), v.version.clone()))
            .ok_or_else(|| PackageError::NotFound { action: "discarding".into(), what: format!("digest {digest}") })?;
        let m = self.get_mut(&name, "discarding")?;
        if m.active.as_deref() == Some(version.as_str()) {
            m.active = m.history.pop();
        }
        self.remove(&name, &version)
    }
}

fn set_active(m: &mut ModelRecord, version: String) {
    if m.active.as_deref() == Some(version.as_str()) {
        return;
    }
    if let Some(old) = m.active.replace(version) {
        m.history.push(old);
        if m.history.len() > HISTORY_LIMIT {
            m.history.remove(0);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn rec(v: &str) -> VersionRecord {
        VersionRecord { version: v.into(), digest: format!("d{v}"), size: 1, imported: "2026-01-01T00:00:00Z".into() }
    }

    #[test]
    fn activation_history_and_rollback() {
        let mut r = Registry::default();
        assert!(r.add("m", rec("1.0.0"), false), "the first version becomes active");
        assert!(!r.add("m", rec("1.10.0"), false));
        assert!(!r.add("m", rec("1.2.0"), false));
        assert_eq!(r.get("m").unwrap().active.as_deref(), Some("1.0.0"));
        assert_eq!(r.activate("m", None).unwrap(), "1.10.0");
        assert_eq!(r.rollback("m").unwrap(), "1.0.0");
        assert_eq!(r.rollback("m").unwrap_err().code(), "no_rollback");
        assert_eq!(r.remove("m", "1.0.0").unwrap_err().code(), "version_active");
        r.activate("m", Some("1.2.0")).unwrap();
        r.remove("m", "1.0.0").unwrap();
        assert!(r.get("m").unwrap().history.is_empty());
        assert_eq!(r.activate("m", Some("9.9.9")).unwrap_err().code(), "not_found");
    }

    #[test]
    fn discard_undoes_an_import_exactly() {
        let mut r = Registry::default();
        r.add("m", rec("1.0.0"), false);
        let before = r.clone();
        r.add("m", rec("2.0.0"), true);
        r.discard("d2.0.0").unwrap();
        assert_eq!(r, before);
        let empty = Registry::default();
        let mut r = empty.clone();
        r.add("n", rec("1.0.0"), false);
        r.discard("d1.0.0").unwrap();
        assert_eq!(r, empty);
        let bytes = before.to_bytes();
        assert_eq!(Registry::parse(&bytes, Path::new("r")).unwrap(), before);
    }

    #[test]
    fn disabling_is_recorded_and_absent_from_the_file_when_off() {
        let mut r = Registry::default();
        r.add("m", rec("1.0.0"), false);
        let plain = r.to_bytes();
        assert!(!String::from_utf8_lossy(&plain).contains("disabled"));
        assert!(r.set_disabled("m", true).unwrap().disabled);
        let bytes = r.to_bytes();
        assert!(Registry::parse(&bytes, Path::new("r")).unwrap().get("m").unwrap().disabled);
        assert!(!r.set_disabled("m", false).unwrap().disabled);
        assert_eq!(r.to_bytes(), plain);
        assert!(matches!(r.set_disabled("x", true), Err(PackageError::NotFound { .. })));
    }
}
