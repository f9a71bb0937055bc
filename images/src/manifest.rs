//! Member 1, `govbox-manifest.json`: what the package is and the size and digest of every
//! payload file, in canonical JSON so that its bytes are what the signatures cover. The digests
//! are SHA-256 unless the manifest's `hash` says `sm3` (a `gm` vendor's package); `hash` is
//! signed with the rest, and left out when it is `sha256`, so that such manifests keep the
//! bytes they always had.

use std::collections::BTreeSet;
use std::fmt;

use govbox_provisioning::{HashAlgorithm, TrustRoot, hex, to_canonical_json};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::error::{PackageError, Result};
use crate::path::PackagePath;
use crate::selftest::SelfTest;
use crate::version::Version;

/// The only `format` this version reads and writes.
pub const FORMAT: &str = "govbox/1";
/// The manifest's cap: a million files' entries would not reach it.
pub const MANIFEST_LIMIT: u64 = 1 << 20;
/// The signature file's cap: hundreds of signatures fit.
pub const SIGNATURES_LIMIT: u64 = 64 << 10;

/// What a package carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PackageKind {
    /// A model package (`.gbx`), signed by the `models` role.
    Model,
    /// An update bundle (`.gbu`), signed by the `updates` role.
    Update,
    /// A content-safety policy package (`.gbp`), signed by the `policy` role.
    Policy,
}

impl fmt::Display for PackageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PackageKind::Model => "model",
            PackageKind::Update => "update",
            PackageKind::Policy => "policy",
        })
    }
}

/// What a model is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModelKind {
    /// A decoder that chats and completes.
    Chat,
    /// A sentence-embedding model.
    Embedding,
    /// A cross-encoder that scores query–document pairs.
    Rerank,
}

/// One payload file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Where it goes under the payload folder.
    pub path: PackagePath,
    /// Its size in bytes.
    pub size: u64,
    /// Lower-case hex digest of its bytes under the manifest's `hash` (the field keeps its name
    /// for compatibility; with `"hash": "sm3"` it holds SM3).
    pub sha256: String,
    /// Digests of the file's consecutive pieces, for a file larger than one piece, so that a
    /// box can check it on every core at once ([`ChunkDigests`]). Absent in packages built
    /// before them, and for small files; when present it is checked as well as `sha256`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<ChunkDigests>,
}

/// The smallest and largest piece a file may be cut into for [`ChunkDigests`].
pub const CHUNK_SIZE_RANGE: std::ops::RangeInclusive<u64> = (1 << 20)..=(1 << 30);

/// The digests of a file cut into pieces of `size` bytes (the last one shorter), each under the
/// manifest's `hash`. A whole-file digest is one sequential stream: on the appliance's CPU it
/// runs at 1.4 GB/s (SHA-256) and far slower for SM3, whatever the cores, so a 5 GB model would
/// take longer to hash at start than to read. Signed piece digests can be checked in parallel,
/// and prove the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkDigests {
    /// Bytes per piece: a power of two in [`CHUNK_SIZE_RANGE`].
    pub size: u64,
    /// One lower-case hex digest per piece, in file order: exactly `ceil(file size / size)`,
    /// at least two.
    pub digests: Vec<String>,
}

impl FileEntry {
    /// How errors name piece `index` (from 0) of this file's [`ChunkDigests`].
    pub fn piece_label(&self, index: usize) -> String {
        let size = self.chunks.as_ref().map_or(self.size, |c| c.size);
        let from = (index as u64).saturating_mul(size);
        let to = from.saturating_add(size).min(self.size);
        let n = self.chunks.as_ref().map_or(1, |c| c.digests.len());
        format!("{} (piece {} of {n}, bytes {from}..{to})", self.path, index + 1)
    }
}

impl ChunkDigests {
    /// How many pieces a file of `file_size` bytes is cut into.
    pub fn count(size: u64, file_size: u64) -> u64 {
        file_size.div_ceil(size.max(1))
    }

    /// Whether `size` may be a piece size: a power of two in [`CHUNK_SIZE_RANGE`].
    pub fn is_valid_size(size: u64) -> bool {
        size.is_power_of_two() && CHUNK_SIZE_RANGE.contains(&size)
    }

    fn validate(&self, file_size: u64) -> std::result::Result<(), String> {
        if !Self::is_valid_size(self.size) {
            return Err(format!(
                "chunks.size {} must be a power of two from {} to {} bytes",
                self.size,
                CHUNK_SIZE_RANGE.start(),
                CHUNK_SIZE_RANGE.end()
            ));
        }
        let want = Self::count(self.size, file_size);
        if want < 2 {
            return Err(format!("chunks are listed for a file of {file_size} bytes, which is one piece"));
        }
        if self.digests.len() as u64 != want {
            return Err(format!(
                "chunks.digests has {} entries; a file of {file_size} bytes in pieces of {} has {want}",
                self.digests.len(),
                self.size
            ));
        }
        match self.digests.iter().position(|d| !is_sha256_hex(d)) {
            Some(i) => Err(format!("chunks.digests[{i}] must be 64 lower-case hex digits")),
            None => Ok(()),
        }
    }
}

/// The model section of a model package.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInfo {
    /// Chat or embedding.
    pub kind: ModelKind,
    /// The architecture, e.g. `qwen2` or `bert`.
    pub architecture: String,
    /// The context length in tokens.
    pub context_length: u64,
    /// The weights' type or quantisation, e.g. `bf16` or `q8_0`.
    pub dtype: String,
    /// What the engine loads, relative to the payload folder: `.` (the folder) or one file.
    pub load: String,
    /// Recorded outputs to check after import.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selftest: Option<SelfTest>,
}

/// The update section of an update bundle.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateInfo {
    /// Monotonic: a box refuses a bundle below its stored security version.
    pub security_version: u64,
    /// A new `root.json` document to rotate to, when the update carries one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<Value>,
}

/// The policy section of a policy package: what `govbox policy list` shows without compiling the
/// library. The library itself (`policy.toml` and its lists) is the payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyInfo {
    /// The library format of the payload's `policy.toml`.
    pub format: String,
    /// The category ids, in the library's order.
    pub categories: Vec<String>,
    /// How many literal keywords the library compiles to.
    pub keywords: u64,
}

/// A parsed, validated manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// Model package or update bundle.
    pub kind: PackageKind,
    /// The package name: `[A-Za-z0-9][A-Za-z0-9._-]{0,127}`.
    pub name: String,
    /// Its semantic version.
    pub version: Version,
    /// When it was built, RFC 3339.
    pub created: String,
    /// The payload files, in archive order.
    pub files: Vec<FileEntry>,
    /// The hash of the files' digests: `sha256` (absent) or `sm3`.
    #[serde(default, skip_serializing_if = "HashAlgorithm::is_default")]
    pub hash: HashAlgorithm,
    /// Present exactly when `kind` is `model`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelInfo>,
    /// Present exactly when `kind` is `update`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<UpdateInfo>,
    /// Present exactly when `kind` is `policy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<PolicyInfo>,
}

/// Checks a package name.
pub fn check_name(name: &str) -> std::result::Result<(), String> {
    let ok = name.len() <= 128
        && name.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(format!("the name '{name}' must match [A-Za-z0-9][A-Za-z0-9._-]{{0,127}}")) }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Manifest {
    /// The package's digest: lower-case hex of this manifest's own [`Manifest::hash`] over
    /// `bytes`, which must be this manifest's exact bytes (member 1). A SHA-256 manifest has the
    /// SHA-256 digest it always had; an SM3 one (`"hash":"sm3"`) has an SM3 digest, so a `gm`
    /// package never carries a SHA-256 identity. The algorithm is bound by the signed bytes.
    pub fn digest(&self, bytes: &[u8]) -> String {
        hex(&self.hash.digest(bytes))
    }

    /// `digest` as people and records name it: `sha256-<hex>` or `sm3-<hex>` after this
    /// manifest's `hash` (the store folder's name too).
    pub fn digest_label(&self, digest: &str) -> String {
        format!("{}-{digest}", self.hash)
    }

    /// `name version`, how errors and logs name the package.
    pub fn label(&self) -> String {
        format!("{} {}", self.name, self.version)
    }

    /// The payload bytes in all.
    pub fn payload_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).fold(0, u64::saturating_add)
    }

    /// `created` as a time.
    pub fn created_time(&self) -> Option<OffsetDateTime> {
        OffsetDateTime::parse(&self.created, &Rfc3339).ok()
    }

    /// Parses and validates manifest bytes; `label` names the package in errors until the
    /// manifest's own name is known.
    ///
    /// The `format` is checked before the schema, so that a newer format says so rather than
    /// failing on a field this version does not know. The bytes must be exactly the canonical
    /// JSON of what they parse to, so that one manifest has one byte form (and one digest).
    pub fn parse(bytes: &[u8], label: &str) -> Result<Manifest> {
        let invalid = |reason: String| PackageError::InvalidManifest { package: label.to_string(), reason };
        let value: Value = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
        match value.get("format") {
            Some(Value::String(f)) if f == FORMAT => {}
            Some(Value::String(f)) => {
                return Err(PackageError::UnknownFormat { package: label.to_string(), format: f.clone() });
            }
            _ => return Err(invalid("no \"format\" string; not a govbox manifest".into())),
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(|e| invalid(e.to_string()))?;
        let label = manifest.label();
        manifest.validate()?;
        if manifest.to_canonical_bytes()? != bytes {
            return Err(PackageError::InvalidManifest {
                package: label,
                reason: "not in canonical JSON form (sorted keys, no whitespace)".into(),
            });
        }
        Ok(manifest)
    }

    /// The canonical JSON bytes that are signed.
    pub fn to_canonical_bytes(&self) -> Result<Vec<u8>> {
        let value = serde_json::to_value(self)
            .map_err(|e| PackageError::InvalidManifest { package: self.label(), reason: e.to_string() })?;
        Ok(to_canonical_json(&value).into_bytes())
    }

    /// Checks everything the schema cannot: names, times, digests, paths, sections.
    pub fn validate(&self) -> Result<()> {
        let package = self.label();
        let invalid = |reason: String| PackageError::InvalidManifest { package: package.clone(), reason };
        if self.format != FORMAT {
            return Err(PackageError::UnknownFormat { package: package.clone(), format: self.format.clone() });
        }
        check_name(&self.name).map_err(invalid)?;
        if self.created_time().is_none() {
            return Err(invalid(format!("created '{}' is not an RFC 3339 time", self.created)));
        }
        let mut paths = BTreeSet::new();
        let mut total: u64 = 0;
        for f in &self.files {
            if !paths.insert(f.path.as_str()) {
                return Err(PackageError::DuplicateMember { package, member: f.path.to_string() });
            }
            if !is_sha256_hex(&f.sha256) {
                return Err(invalid(format!("file '{}': sha256 must be 64 lower-case hex digits", f.path)));
            }
            if let Some(c) = &f.chunks {
                c.validate(f.size).map_err(|e| invalid(format!("file '{}': {e}", f.path)))?;
            }
            total = total.checked_add(f.size).ok_or_else(|| invalid("the file sizes overflow".into()))?;
        }
        // A path may not be both a file and a folder ('a' and 'a/b'): one could not be extracted.
        for f in &self.files {
            if let Some(dir) = f.path.ancestors().find(|a| paths.contains(a)) {
                return Err(PackageError::InvalidPath {
                    package,
                    member: f.path.to_string(),
                    reason: format!("'{dir}' is listed as a file and is also a folder above this one"),
                });
            }
        }
        match (self.kind, &self.model, &self.update, &self.policy) {
            (PackageKind::Model, Some(m), None, None) => self.validate_model(m).map_err(invalid),
            (PackageKind::Update, None, Some(u), None) => Self::validate_update(u).map_err(invalid),
            (PackageKind::Policy, None, None, Some(p)) => self.validate_policy(p).map_err(invalid),
            (kind, ..) => Err(invalid(format!("a '{kind}' package has exactly one section, \"{kind}\""))),
        }
    }

    fn validate_model(&self, m: &ModelInfo) -> std::result::Result<(), String> {
        if m.architecture.is_empty() || m.dtype.is_empty() {
            return Err("model.architecture and model.dtype must not be empty".into());
        }
        if m.load != "." && !self.files.iter().any(|f| f.path.as_str() == m.load) {
            return Err(format!("model.load '{}' is neither '.' nor a listed file", m.load));
        }
        if let Some(t) = &m.selftest {
            match (m.kind, t) {
                (ModelKind::Chat, SelfTest::Chat(_))
                | (ModelKind::Embedding, SelfTest::Embedding(_))
                | (ModelKind::Rerank, SelfTest::Rerank(_)) => {}
                _ => return Err("model.selftest does not match model.kind".into()),
            }
            t.validate().map_err(|e| format!("model.selftest: {e}"))?;
        }
        Ok(())
    }

    fn validate_policy(&self, p: &PolicyInfo) -> std::result::Result<(), String> {
        if p.format.is_empty() || p.categories.is_empty() {
            return Err("policy.format and policy.categories must not be empty".into());
        }
        if !self.files.iter().any(|f| f.path.as_str() == "policy.toml") {
            return Err("a policy package carries its library's 'policy.toml' at the top of its payload".into());
        }
        Ok(())
    }

    fn validate_update(u: &UpdateInfo) -> std::result::Result<(), String> {
        if let Some(root) = &u.root {
            let bytes = to_canonical_json(root);
            TrustRoot::parse(bytes.as_bytes(), "update.root").map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: FORMAT.into(),
            kind: PackageKind::Model,
            name: "tiny".into(),
            version: Version::parse("1.0.0").unwrap(),
            created: "2026-01-02T03:04:05Z".into(),
            files: vec![FileEntry {
                path: PackagePath::new("a/model.gguf").unwrap(),
                size: 3,
                sha256: "ab".repeat(32),
                chunks: None,
            }],
            hash: HashAlgorithm::Sha256,
            model: Some(ModelInfo {
                kind: ModelKind::Chat,
                architecture: "qwen2".into(),
                context_length: 4096,
                dtype: "q8_0".into(),
                load: "a/model.gguf".into(),
                selftest: Some(SelfTest::record_chat(vec![1, 2], &[0.1, 0.7, 0.3], 2, 1e-3)),
            }),
            update: None,
            policy: None,
        }
    }

    fn reparse(v: &Value) -> Result<Manifest> {
        Manifest::parse(to_canonical_json(v).as_bytes(), "t.gbx")
    }

    #[test]
    fn round_trips_through_canonical_bytes() {
        let m = sample();
        let bytes = m.to_canonical_bytes().unwrap();
        assert!(bytes.starts_with(br#"{"created":"2026-01-02T03:04:05Z","files":[{"path":"a/model.gguf""#));
        assert_eq!(Manifest::parse(&bytes, "t").unwrap(), m);
        // Whitespace or another key order is refused.
        let pretty = serde_json::to_vec_pretty(&m).unwrap();
        let e = Manifest::parse(&pretty, "t").unwrap_err();
        assert!(e.to_string().contains("canonical"), "{e}");
    }

    #[test]
    fn an_sm3_manifest_names_its_hash_and_a_sha256_one_does_not() {
        let sha = String::from_utf8(sample().to_canonical_bytes().unwrap()).unwrap();
        assert!(!sha.contains("\"hash\""), "a SHA-256 manifest keeps the bytes it always had: {sha}");
        let m = Manifest { hash: HashAlgorithm::Sm3, ..sample() };
        let bytes = m.to_canonical_bytes().unwrap();
        assert!(String::from_utf8_lossy(&bytes).contains("\"hash\":\"sm3\""));
        assert_eq!(Manifest::parse(&bytes, "t").unwrap().hash, HashAlgorithm::Sm3);
        let mut v = serde_json::to_value(sample()).unwrap();
        v["hash"] = "md5".into();
        let e = reparse(&v).unwrap_err();
        assert!(e.to_string().contains("unknown hash 'md5'"), "{e}");
    }

    #[test]
    fn unknown_format_and_unknown_fields_are_refused() {
        let mut v = serde_json::to_value(sample()).unwrap();
        v["format"] = "govbox/2".into();
        v["newfield"] = 1.into();
        let e = reparse(&v).unwrap_err();
        assert_eq!(e.code(), "unknown_format", "{e}");
        assert!(e.to_string().contains("unknown format 'govbox/2'"), "{e}");
        let mut v = serde_json::to_value(sample()).unwrap();
        v["model"]["extra"] = 1.into();
        assert!(reparse(&v).unwrap_err().to_string().contains("unknown field `extra`"));
    }

    #[test]
    fn chunk_digests_round_trip_and_stay_out_of_unchunked_manifests() {
        let plain = String::from_utf8(sample().to_canonical_bytes().unwrap()).unwrap();
        assert!(!plain.contains("chunks"), "{plain}");
        let mut m = sample();
        let size = 5 << 20;
        m.files[0].size = size;
        m.files[0].chunks = Some(ChunkDigests { size: 2 << 20, digests: vec!["0a".repeat(32); 3] });
        let bytes = m.to_canonical_bytes().unwrap();
        assert_eq!(Manifest::parse(&bytes, "t").unwrap(), m);
        assert_eq!(ChunkDigests::count(2 << 20, size), 3);
    }

    #[test]
    fn validation_catches_bad_content() {
        type Edit = Box<dyn Fn(&mut Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("invalid_manifest", Box::new(|v| v["version"] = "1.0".into())),
            ("invalid_manifest", Box::new(|v| v["created"] = "yesterday".into())),
            ("invalid_manifest", Box::new(|v| v["name"] = "../x".into())),
            ("invalid_manifest", Box::new(|v| v["files"][0]["path"] = "../x".into())),
            ("invalid_manifest", Box::new(|v| v["files"][0]["sha256"] = "AB".repeat(32).into())),
            ("invalid_manifest", Box::new(|v| v["model"]["load"] = "other".into())),
            ("invalid_manifest", Box::new(|v| v["kind"] = "update".into())),
            ("invalid_manifest", Box::new(|v| v["model"]["kind"] = "embedding".into())),
            ("duplicate_member", Box::new(|v| v["files"][1] = v["files"][0].clone())),
            (
                "invalid_path",
                Box::new(|v| v["files"][1] = serde_json::json!({"path":"a","size":0,"sha256":"00".repeat(32)})),
            ),
        ];
        let mib = 1u64 << 20;
        let chunked = |size: u64, piece: u64, n: usize| {
            serde_json::json!({"path":"c","size":size,"sha256":"ef".repeat(32),
                "chunks":{"size":piece,"digests":vec!["01".repeat(32); n]}})
        };
        let cases = cases.into_iter().chain([
            ("invalid_manifest", Box::new(move |v: &mut Value| v["files"][1] = chunked(3 * mib, mib, 2)) as Edit),
            ("invalid_manifest", Box::new(move |v: &mut Value| v["files"][1] = chunked(3 * mib, mib, 4))),
            ("invalid_manifest", Box::new(move |v: &mut Value| v["files"][1] = chunked(mib, mib, 1))),
            ("invalid_manifest", Box::new(move |v: &mut Value| v["files"][1] = chunked(3 * mib, 3 * mib / 2, 2))),
            ("invalid_manifest", Box::new(move |v: &mut Value| v["files"][1] = chunked(3 * 1024, 1024, 3))),
            (
                "invalid_manifest",
                Box::new(move |v: &mut Value| {
                    v["files"][1] = chunked(3 * mib, mib, 3);
                    v["files"][1]["chunks"]["digests"][2] = "AB".repeat(32).into();
                }),
            ),
            ("invalid_manifest", Box::new(move |v: &mut Value| v["files"][1]["chunks"] = serde_json::json!({}))),
        ]);
        for (code, edit) in cases {
            let mut v = serde_json::to_value(sample()).unwrap();
            let second = serde_json::json!({"path":"b","size":1,"sha256":"cd".repeat(32)});
            v["files"].as_array_mut().unwrap().push(second);
            edit(&mut v);
            let e = reparse(&v).unwrap_err();
            assert_eq!(e.code(), code, "{e}");
        }
    }
}
