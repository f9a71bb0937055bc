//! The provisioned trust policy, `trust/root.json`, modelled on TUF's root role.
//!
//! ```json
//! {"signatures":[],"signed":{"_type":"root","expires":"2036-01-01T00:00:00Z",
//!  "keys":{"<keyid>":{"keytype":"ed25519","keyval":{"public":"<hex>"},"scheme":"ed25519"},
//!          "<keyid>":{"keytype":"sm2","keyval":{"public":"04<x><y>"},"scheme":"sm2-sm3"}},
//!  "roles":{"models":{"keyids":["<keyid>"],"threshold":1},"root":{...},"updates":{...}},
//!  "version":1}}
//! ```
//!
//! The file is written in canonical JSON ([`crate::canonical`]): keys sorted, no whitespace.
//! Unlike TUF, a key id is the SHA-256 of the raw public key (32 Ed25519 bytes, or the 65-byte
//! uncompressed SM2 point), not of a JSON encoding of it, so that it is the same id that
//! `govbox keygen` prints and that package signatures name. A root may list keys of both
//! algorithms in any role; the thresholds count keys, whatever their algorithm. A root signature
//! names its `alg` (an absent `alg` means `ed25519`, as roots written before SM2 had none), and it
//! counts only when that is the signing key's algorithm.
//!
//! The first root is trusted because agency IT installed it on the box by hand, so it carries no
//! signatures. Later roots are accepted only when the current root's `root` threshold signed them;
//! checking that is the job of the images crate, which reads this type.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::Deserialize;
use serde_json::{Value, json};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use crate::canonical::to_canonical_json;
use crate::error::{ProvisionError, Result};
use crate::fsio;
use crate::keys::{KeyAlgorithm, PublicKey};

/// A trust root is a few kilobytes; this cap only stops a runaway file from being read.
const ROOT_JSON_LIMIT: u64 = 1024 * 1024;

/// A role of the trust policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Signs new versions of the trust root itself.
    Root,
    /// Signs model packages (`.gbx`).
    Models,
    /// Signs update bundles (`.gbu`).
    Updates,
    /// Signs content-safety policy packages (`.gbp`). Optional: a root without it accepts no
    /// policy package, so roots provisioned before policy packages existed stay valid.
    Policy,
}

impl Role {
    /// Every role, in the order they are shown.
    pub const ALL: [Role; 4] = [Role::Root, Role::Models, Role::Updates, Role::Policy];
    /// The roles every root must have.
    pub const REQUIRED: [Role; 3] = [Role::Root, Role::Models, Role::Updates];

    /// The role's name in `root.json` and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Models => "models",
            Role::Updates => "updates",
            Role::Policy => "policy",
        }
    }

    /// Parses a role name.
    pub fn parse(s: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A `--trust-key [ROLE[,ROLE...]:]PATH` argument: a public key file and the roles it gets.
/// Without a role prefix, the key gets every role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustKeySpec {
    /// The roles, without duplicates.
    pub roles: Vec<Role>,
    /// The `PUBLIC KEY` PEM file.
    pub path: PathBuf,
}

impl FromStr for TrustKeySpec {
    type Err = ProvisionError;

    fn from_str(spec: &str) -> Result<Self> {
        let invalid = |reason: String| ProvisionError::InvalidTrustKeySpec { spec: spec.to_string(), reason };
        if spec.is_empty() {
            return Err(invalid("expected [ROLE:]PUBLIC_KEY_FILE, got nothing".to_string()));
        }
        // A prefix made only of lower-case letters and commas is a role list; anything else
        // (`./keys/a.pub`, `/srv/x:y.pub`) is a path, so a typo in a role name is an error rather
        // than a search for a file called `model:a.pub`.
        let (roles, path) = match spec.split_once(':') {
            Some((prefix, rest))
                if !prefix.is_empty() && prefix.bytes().all(|b| b.is_ascii_lowercase() || b == b',') =>
            {
                let mut roles = Vec::new();
                for name in prefix.split(',') {
                    let role = Role::parse(name)
                        .ok_or_else(|| invalid(format!("unknown role '{name}'; expected root, models or updates")))?;
                    if !roles.contains(&role) {
                        roles.push(role);
                    }
                }
                if rest.is_empty() {
                    return Err(invalid(format!("no public key file after '{prefix}:'")));
                }
                (roles, rest)
            }
            _ => (Role::ALL.to_vec(), spec),
        };
        Ok(TrustKeySpec { roles, path: PathBuf::from(path) })
    }
}

/// A `--threshold ROLE:N` argument: how many distinct keys of the role must sign.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThresholdSpec {
    /// The role.
    pub role: Role,
    /// At least 1.
    pub threshold: u32,
}

impl FromStr for ThresholdSpec {
    type Err = ProvisionError;

    fn from_str(spec: &str) -> Result<Self> {
        let invalid = |reason: String| ProvisionError::InvalidThreshold { spec: spec.to_string(), reason };
        let (role, n) = spec.split_once(':').ok_or_else(|| invalid("expected ROLE:N, e.g. models:2".to_string()))?;
        let role = Role::parse(role)
            .ok_or_else(|| invalid(format!("unknown role '{role}'; expected root, models or updates")))?;
        let threshold: u32 = n.parse().map_err(|_| invalid(format!("'{n}' is not a whole number")))?;
        if threshold == 0 {
            return Err(invalid("a threshold of 0 would accept unsigned content; the minimum is 1".to_string()));
        }
        Ok(ThresholdSpec { role, threshold })
    }
}

/// The keys of one role and how many of them must sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoleKeys {
    /// Distinct key ids, sorted.
    pub keyids: Vec<String>,
    /// At least 1 and at most `keyids.len()`.
    pub threshold: u32,
}

/// One signature over the canonical `signed` part of a root.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootSignature {
    /// The signing key's id.
    pub keyid: String,
    /// The algorithm, `ed25519` or `sm2`; absent in roots signed before SM2 (meaning `ed25519`).
    #[serde(default)]
    pub alg: Option<String>,
    /// The signature, lower-case hex (64 bytes for Ed25519, DER for SM2).
    pub sig: String,
}

impl RootSignature {
    /// The algorithm the signature claims (`ed25519` when `alg` is absent), if it is a known one.
    pub fn algorithm(&self) -> Option<KeyAlgorithm> {
        self.alg.as_deref().map_or(Some(KeyAlgorithm::Ed25519), KeyAlgorithm::parse)
    }

    /// The signature bytes, if `alg` is known and `sig` is a well-formed signature of it.
    pub fn signature_bytes(&self) -> Option<Vec<u8>> {
        self.algorithm()?.decode_signature_hex(&self.sig)
    }
}

/// The `keytype` and `scheme` of a key of `alg` in `root.json`.
fn key_type_and_scheme(alg: KeyAlgorithm) -> (&'static str, &'static str) {
    match alg {
        KeyAlgorithm::Sm2 => ("sm2", "sm2-sm3"),
        KeyAlgorithm::Ed25519 => ("ed25519", "ed25519"),
    }
}

/// A parsed and validated trust root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRoot {
    version: u64,
    expires: OffsetDateTime,
    keys: BTreeMap<String, PublicKey>,
    roles: BTreeMap<Role, RoleKeys>,
    signatures: Vec<RootSignature>,
}

impl TrustRoot {
    /// Builds version 1 of a root from `--trust-key` assignments and `--threshold`s.
    ///
    /// Every role needs at least one key; a role's threshold defaults to 1 and may not exceed
    /// the number of distinct keys in the role (a key given twice counts once).
    pub fn build(
        assignments: &[(Vec<Role>, PublicKey)],
        thresholds: &[ThresholdSpec],
        expires: OffsetDateTime,
    ) -> Result<Self> {
        let mut keys = BTreeMap::new();
        let mut members: BTreeMap<Role, BTreeSet<String>> = BTreeMap::new();
        for (roles, key) in assignments {
            keys.insert(key.keyid(), *key);
            for role in roles {
                members.entry(*role).or_default().insert(key.keyid());
            }
        }
        let mut wanted: BTreeMap<Role, u32> = BTreeMap::new();
        for t in thresholds {
            if wanted.insert(t.role, t.threshold).is_some() {
                return Err(ProvisionError::InvalidThreshold {
                    spec: format!("{}:{}", t.role, t.threshold),
                    reason: format!("the threshold of role '{}' is given more than once", t.role),
                });
            }
        }
        let mut roles = BTreeMap::new();
        for role in Role::ALL {
            let keyids: Vec<String> = members.remove(&role).unwrap_or_default().into_iter().collect();
            if keyids.is_empty() && !Role::REQUIRED.contains(&role) {
                if let Some(t) = wanted.get(&role) {
                    return Err(ProvisionError::InvalidThreshold {
                        spec: format!("{role}:{t}"),
                        reason: format!("role '{role}' has no key; give one with --trust-key {role}:FILE"),
                    });
                }
                continue;
            }
            if keyids.is_empty() {
                return Err(ProvisionError::InvalidTrustPolicy {
                    reason: format!(
                        "role '{role}' has no key; give one with --trust-key {role}:FILE, or --trust-key FILE for every role"
                    ),
                });
            }
            let threshold = wanted.get(&role).copied().unwrap_or(1);
            if threshold as usize > keyids.len() {
                return Err(ProvisionError::InvalidThreshold {
                    spec: format!("{role}:{threshold}"),
                    reason: format!(
                        "role '{role}' has {} distinct key(s), fewer than the threshold, so nothing could ever be accepted",
                        keyids.len()
                    ),
                });
            }
            roles.insert(role, RoleKeys { keyids, threshold });
        }
        // Keys that ended up in no role cannot occur: every assignment has at least one role.
        Ok(TrustRoot { version: 1, expires: truncate_to_seconds(expires), keys, roles, signatures: Vec::new() })
    }

    /// The root's version (1 for a freshly provisioned box).
    pub fn version(&self) -> u64 {
        self.version
    }

    /// When the root stops being valid.
    pub fn expires(&self) -> OffsetDateTime {
        self.expires
    }

    /// `expires` as RFC 3339, as stored.
    pub fn expires_rfc3339(&self) -> String {
        self.expires.format(&Rfc3339).unwrap_or_else(|_| self.expires.unix_timestamp().to_string())
    }

    /// Whether the root has expired at `now`.
    pub fn is_expired_at(&self, now: OffsetDateTime) -> bool {
        now >= self.expires
    }

    /// Every key, by key id.
    pub fn keys(&self) -> &BTreeMap<String, PublicKey> {
        &self.keys
    }

    /// Whether the root has `role` (the required roles always; `policy` when it was given keys).
    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains_key(&role)
    }

    /// The key ids and threshold of `role`.
    pub fn role(&self, role: Role) -> &RoleKeys {
        // `build` and `parse` both guarantee that every required role is present; an optional
        // role that is absent gets no keys and a threshold nothing can meet.
        static EMPTY: RoleKeys = RoleKeys { keyids: Vec::new(), threshold: u32::MAX };
        self.roles.get(&role).unwrap_or(&EMPTY)
    }

    /// The public keys of `role`.
    pub fn role_public_keys(&self, role: Role) -> Vec<PublicKey> {
        self.role(role).keyids.iter().filter_map(|id| self.keys.get(id).copied()).collect()
    }

    /// The signatures carried by the root (none for the provisioned one).
    pub fn signatures(&self) -> &[RootSignature] {
        &self.signatures
    }

    /// The `signed` part as a JSON value.
    fn signed_value(&self) -> Value {
        let keys: serde_json::Map<String, Value> = self
            .keys
            .iter()
            .map(|(id, k)| {
                let (keytype, scheme) = key_type_and_scheme(k.algorithm());
                (id.clone(), json!({"keytype": keytype, "scheme": scheme, "keyval": {"public": k.to_hex()}}))
            })
            .collect();
        let roles: serde_json::Map<String, Value> = self
            .roles
            .iter()
            .map(|(r, rk)| (r.as_str().to_string(), json!({"keyids": rk.keyids, "threshold": rk.threshold})))
            .collect();
        json!({
            "_type": "root",
            "version": self.version,
            "expires": self.expires_rfc3339(),
            "keys": keys,
            "roles": roles,
        })
    }

    /// The exact bytes that root signatures cover: the canonical JSON of `signed`.
    pub fn signed_canonical_json(&self) -> String {
        to_canonical_json(&self.signed_value())
    }

    /// The whole document in canonical JSON, as written to `trust/root.json`.
    pub fn to_canonical_json(&self) -> String {
        let sigs: Vec<Value> = self.signatures.iter().map(RootSignature::to_json).collect();
        to_canonical_json(&json!({"signed": self.signed_value(), "signatures": sigs}))
    }

    /// Loads and validates `trust/root.json`.
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = fsio::read_capped(path, ROOT_JSON_LIMIT, "trust root")?;
        Self::parse(&bytes, &path.display().to_string())
    }

    /// Parses and validates a root document. `origin` names it in errors.
    pub fn parse(bytes: &[u8], origin: &str) -> Result<Self> {
        let invalid = |reason: String| ProvisionError::InvalidTrustRoot { origin: origin.to_string(), reason };
        let doc: RootDoc = serde_json::from_slice(bytes).map_err(|e| invalid(format!("not a root document: {e}")))?;
        let s = doc.signed;
        if s.ty != "root" {
            return Err(invalid(format!("_type is '{}', expected 'root'", s.ty)));
        }
        if s.version == 0 {
            return Err(invalid("version must be at least 1".to_string()));
        }
        let expires = OffsetDateTime::parse(&s.expires, &Rfc3339)
            .map_err(|e| invalid(format!("expires '{}' is not an RFC 3339 time: {e}", s.expires)))?;

        // Each key: Ed25519 or SM2, and its id must be the SHA-256 of the key, so that an id
        // cannot be made to name a different key than the one it stands for.
        let mut keys = BTreeMap::new();
        for (id, k) in s.keys {
            let alg = KeyAlgorithm::ALL
                .into_iter()
                .find(|a| key_type_and_scheme(*a) == (k.keytype.as_str(), k.scheme.as_str()))
                .ok_or_else(|| invalid(format!("key {id}: keytype/scheme must be ed25519/ed25519 or sm2/sm2-sm3")))?;
            // The longest key (an SM2 point) is 65 bytes: refuse longer text before decoding it.
            let raw = (k.keyval.public.len() <= 2 * 65)
                .then(|| fsio::unhex_vec(&k.keyval.public, fsio::HexCase::Either))
                .flatten()
                .ok_or_else(|| invalid(format!("key {id}: keyval.public is not a {alg} key in hex")))?;
            let key = PublicKey::from_raw_bytes(alg, &raw, &format!("key {id}"))
                .map_err(|e| invalid(format!("key {id}: {e}")))?;
            if key.keyid() != id {
                return Err(invalid(format!("key {id}: the id is not the SHA-256 of the key ({})", key.keyid())));
            }
            keys.insert(id, key);
        }

        // Each role: root, models and updates, and optionally policy; distinct known key ids; 1 <= threshold <= keys.
        let mut roles = BTreeMap::new();
        for (name, r) in s.roles {
            let role = Role::parse(&name).ok_or_else(|| invalid(format!("unknown role '{name}'")))?;
            let distinct: BTreeSet<&String> = r.keyids.iter().collect();
            if distinct.len() != r.keyids.len() {
                return Err(invalid(format!("role '{name}' lists a key id more than once")));
            }
            if let Some(unknown) = r.keyids.iter().find(|id| !keys.contains_key(*id)) {
                return Err(invalid(format!("role '{name}' names key {unknown}, which is not in keys")));
            }
            if r.threshold == 0 || r.threshold as usize > r.keyids.len() {
                return Err(invalid(format!(
                    "role '{name}' has threshold {} with {} key(s); it must be between 1 and the number of keys",
                    r.threshold,
                    r.keyids.len()
                )));
            }
            let mut keyids = r.keyids;
            keyids.sort();
            roles.insert(role, RoleKeys { keyids, threshold: r.threshold });
        }
        if let Some(missing) = Role::REQUIRED.into_iter().find(|r| !roles.contains_key(r)) {
            return Err(invalid(format!("role '{missing}' is missing")));
        }

        for sig in &doc.signatures {
            let Some(alg) = sig.algorithm() else {
                return Err(invalid(format!(
                    "signature by {}: algorithm '{}' is neither 'ed25519' nor 'sm2'",
                    sig.keyid,
                    sig.alg.as_deref().unwrap_or_default()
                )));
            };
            if sig.signature_bytes().is_none() {
                return Err(invalid(format!("signature by {} is not a well-formed {alg} signature in hex", sig.keyid)));
            }
        }
        Ok(TrustRoot { version: s.version, expires, keys, roles, signatures: doc.signatures })
    }
}

impl RootSignature {
    /// The signature as it is written in `signatures`.
    pub fn to_json(&self) -> Value {
        match &self.alg {
            Some(alg) => json!({"keyid": self.keyid, "alg": alg, "sig": self.sig}),
            None => json!({"keyid": self.keyid, "sig": self.sig}),
        }
    }
}

fn truncate_to_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.replace_nanosecond(0).unwrap_or(t)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootDoc {
    signed: SignedDoc,
    signatures: Vec<RootSignature>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignedDoc {
    #[serde(rename = "_type")]
    ty: String,
    version: u64,
    expires: String,
    keys: BTreeMap<String, KeyDoc>,
    roles: BTreeMap<String, RoleDoc>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyDoc {
    keytype: String,
    scheme: String,
    keyval: KeyVal,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyVal {
    public: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleDoc {
    keyids: Vec<String>,
    threshold: u32,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::keys::SigningKey;

    fn key() -> PublicKey {
        SigningKey::generate().unwrap().public_key()
    }

    fn expiry() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(2_000_000_000).unwrap()
    }

    #[test]
    fn trust_key_spec_without_role_gets_all_roles() {
        let s: TrustKeySpec = "vendor.pub".parse().unwrap();
        assert_eq!(s.roles, Role::ALL.to_vec());
        assert_eq!(s.path, PathBuf::from("vendor.pub"));
        let s: TrustKeySpec = "./dir:with:colons/v.pub".parse().unwrap();
        assert_eq!(s.roles, Role::ALL.to_vec());
        assert_eq!(s.path, PathBuf::from("./dir:with:colons/v.pub"));
    }

    #[test]
    fn trust_key_spec_with_roles() {
        let s: TrustKeySpec = "models:a.pub".parse().unwrap();
        assert_eq!(s.roles, vec![Role::Models]);
        assert_eq!(s.path, PathBuf::from("a.pub"));
        let s: TrustKeySpec = "root,updates,root:/k/b.pub".parse().unwrap();
        assert_eq!(s.roles, vec![Role::Root, Role::Updates]);
        assert_eq!(s.path, PathBuf::from("/k/b.pub"));
    }

    #[test]
    fn trust_key_spec_rejects_unknown_role_and_missing_path() {
        let err = "model:a.pub".parse::<TrustKeySpec>().unwrap_err();
        assert!(err.to_string().contains("unknown role 'model'"), "{err}");
        assert!("models:".parse::<TrustKeySpec>().is_err());
        assert!("".parse::<TrustKeySpec>().is_err());
    }

    #[test]
    fn threshold_spec_parsing() {
        assert_eq!("models:2".parse::<ThresholdSpec>().unwrap(), ThresholdSpec { role: Role::Models, threshold: 2 });
        assert!("models:0".parse::<ThresholdSpec>().unwrap_err().to_string().contains("minimum is 1"));
        assert!("models".parse::<ThresholdSpec>().is_err());
        assert!("models:-1".parse::<ThresholdSpec>().is_err());
        assert!("model:1".parse::<ThresholdSpec>().unwrap_err().to_string().contains("unknown role"));
    }

    #[test]
    fn build_rejects_threshold_above_key_count_counting_duplicates_once() {
        let a = key();
        let assignments = vec![(Role::ALL.to_vec(), a), (vec![Role::Models], a)];
        let t = [ThresholdSpec { role: Role::Models, threshold: 2 }];
        let err = TrustRoot::build(&assignments, &t, expiry()).unwrap_err();
        assert!(matches!(err, ProvisionError::InvalidThreshold { .. }), "{err}");
        assert!(err.to_string().contains("role 'models' has 1 distinct key(s)"), "{err}");

        let b = key();
        let assignments = vec![(Role::ALL.to_vec(), a), (vec![Role::Models], b)];
        let root = TrustRoot::build(&assignments, &t, expiry()).unwrap();
        assert_eq!(root.role(Role::Models).threshold, 2);
        assert_eq!(root.role(Role::Models).keyids.len(), 2);
        assert_eq!(root.role(Role::Root).threshold, 1);
    }

    #[test]
    fn build_rejects_role_without_key_and_repeated_threshold() {
        let assignments = vec![(vec![Role::Models, Role::Updates], key())];
        let err = TrustRoot::build(&assignments, &[], expiry()).unwrap_err();
        assert!(err.to_string().contains("role 'root' has no key"), "{err}");

        let assignments = vec![(Role::ALL.to_vec(), key())];
        let t = [ThresholdSpec { role: Role::Root, threshold: 1 }, ThresholdSpec { role: Role::Root, threshold: 1 }];
        assert!(TrustRoot::build(&assignments, &t, expiry()).unwrap_err().to_string().contains("more than once"));
    }

    #[test]
    fn the_policy_role_is_optional_and_round_trips_when_given() {
        let (a, b) = (key(), key());
        let required = vec![(Role::REQUIRED.to_vec(), a)];
        let root = TrustRoot::build(&required, &[], expiry()).unwrap();
        assert!(!root.has_role(Role::Policy));
        assert!(root.role_public_keys(Role::Policy).is_empty());
        let back = TrustRoot::parse(root.to_canonical_json().as_bytes(), "t").unwrap();
        assert!(!back.has_role(Role::Policy), "a root without a policy role still parses");
        let t = [ThresholdSpec { role: Role::Policy, threshold: 1 }];
        let err = TrustRoot::build(&required, &t, expiry()).unwrap_err();
        assert!(err.to_string().contains("role 'policy' has no key"), "{err}");
        let with = vec![(Role::REQUIRED.to_vec(), a), (vec![Role::Policy], b)];
        let root = TrustRoot::build(&with, &t, expiry()).unwrap();
        let back = TrustRoot::parse(root.to_canonical_json().as_bytes(), "t").unwrap();
        assert_eq!(back.role_public_keys(Role::Policy), vec![b]);
        assert_eq!("policy:1".parse::<ThresholdSpec>().unwrap(), t[0]);
    }

    #[test]
    fn canonical_json_round_trips_and_is_stable() {
        let (a, b, c) = (key(), key(), key());
        let assignments = vec![(vec![Role::Root], a), (vec![Role::Models], b), (vec![Role::Updates, Role::Models], c)];
        let root =
            TrustRoot::build(&assignments, &[ThresholdSpec { role: Role::Models, threshold: 2 }], expiry()).unwrap();
        let text = root.to_canonical_json();
        assert!(!text.contains(' ') && !text.contains('\n'));
        assert!(
            text.starts_with(r#"{"signatures":[],"signed":{"_type":"root","expires":"2033-05-18T03:33:20Z","keys":{"#)
        );
        let back = TrustRoot::parse(text.as_bytes(), "test").unwrap();
        assert_eq!(back, root);
        assert_eq!(back.to_canonical_json(), text);
        assert_eq!(root.role_public_keys(Role::Root), vec![a]);
    }

    #[test]
    fn parse_rejects_a_keyid_that_is_not_the_key_hash() {
        let root = TrustRoot::build(&[(Role::ALL.to_vec(), key())], &[], expiry()).unwrap();
        let other = key();
        let text = root.to_canonical_json();
        let id = root.keys().keys().next().unwrap().clone();
        let real_hex = root.keys()[&id].to_hex();
        let forged = text.replace(&real_hex, &other.to_hex());
        let err = TrustRoot::parse(forged.as_bytes(), "t").unwrap_err();
        assert!(err.to_string().contains("is not the SHA-256 of the key"), "{err}");
    }

    #[test]
    fn a_root_lists_keys_of_both_algorithms_with_thresholds_unchanged() {
        let (ed, sm) = (key(), SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap().public_key());
        let assignments = vec![(Role::ALL.to_vec(), ed), (vec![Role::Models], sm)];
        let t = [ThresholdSpec { role: Role::Models, threshold: 2 }];
        let root = TrustRoot::build(&assignments, &t, expiry()).unwrap();
        let text = root.to_canonical_json();
        assert!(text.contains(r#""keytype":"sm2","keyval":{"public":"04"#), "{text}");
        assert!(text.contains(r#""scheme":"sm2-sm3""#), "{text}");
        let back = TrustRoot::parse(text.as_bytes(), "t").unwrap();
        assert_eq!(back, root);
        assert_eq!(back.keys()[&sm.keyid()].algorithm(), KeyAlgorithm::Sm2);
        assert_eq!(back.role(Role::Models).threshold, 2);
        // An SM2 key under the ed25519 type (or the other way round) is refused, as is a point
        // off the curve.
        let swapped = text.replacen(r#""keytype":"sm2""#, r#""keytype":"ed25519""#, 1);
        assert!(TrustRoot::parse(swapped.as_bytes(), "t").is_err());
        let scheme = text.replacen(r#""scheme":"sm2-sm3""#, r#""scheme":"sm2""#, 1);
        let err = TrustRoot::parse(scheme.as_bytes(), "t").unwrap_err();
        assert!(err.to_string().contains("keytype/scheme must be ed25519/ed25519 or sm2/sm2-sm3"), "{err}");
        let mut off = sm.to_hex();
        let last = if off.ends_with('0') { "1" } else { "0" };
        off.replace_range(129.., last);
        let err = TrustRoot::parse(text.replace(&sm.to_hex(), &off).as_bytes(), "t").unwrap_err();
        assert!(err.to_string().contains("not on the SM2 curve"), "{err}");
    }

    #[test]
    fn root_signatures_name_their_algorithm() {
        let sm = SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap();
        let root = TrustRoot::build(&[(Role::ALL.to_vec(), sm.public_key())], &[], expiry()).unwrap();
        let sig = crate::fsio::hex(&sm.sign(root.signed_canonical_json().as_bytes()));
        let with = |alg: &str| {
            let mut v: Value = serde_json::from_str(&root.to_canonical_json()).unwrap();
            v["signatures"] = json!([{"keyid": sm.public_key().keyid(), "alg": alg, "sig": sig}]);
            to_canonical_json(&v)
        };
        let parsed = TrustRoot::parse(with("sm2").as_bytes(), "t").unwrap();
        assert_eq!(parsed.signatures()[0].algorithm(), Some(KeyAlgorithm::Sm2));
        assert!(parsed.to_canonical_json().contains(r#""alg":"sm2""#));
        let err = TrustRoot::parse(with("ed25519").as_bytes(), "t").unwrap_err();
        assert!(err.to_string().contains("not a well-formed ed25519 signature"), "{err}");
        let err = TrustRoot::parse(with("rsa").as_bytes(), "t").unwrap_err();
        assert!(err.to_string().contains("algorithm 'rsa' is neither"), "{err}");
    }
}
