//! Member 2, `govbox-manifest.sig`, and the trust policy check over it.
//!
//! `{"signatures":[{"alg":"ed25519","keyid":"<hex sha256 of the raw key>","sig":"<128 hex>"}]}`:
//! Ed25519 signatures over the exact bytes of member 1. Hex, like the signatures of `root.json`.

use std::collections::{BTreeMap, BTreeSet};

use govbox_provisioning::{PublicKey, Role, SigningKey, TrustRoot, to_canonical_json};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{PackageError, Result};

/// The only signature algorithm of `govbox/1`.
pub const ALG_ED25519: &str = "ed25519";

/// One signature over the manifest bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signing key's id.
    pub keyid: String,
    /// Always `ed25519`.
    pub alg: String,
    /// The 64-byte signature, lower-case hex.
    pub sig: String,
}

/// The signature member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// The signatures, in any order.
    pub signatures: Vec<Signature>,
}

fn unhex64(s: &str) -> Option<[u8; 64]> {
    if s.len() != 128 {
        return None;
    }
    let mut out = [0u8; 64];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl SignatureFile {
    /// Signs `manifest_bytes` with each key (a key given twice signs once).
    pub fn sign(manifest_bytes: &[u8], keys: &[&SigningKey]) -> Self {
        let mut seen = BTreeSet::new();
        let signatures = keys
            .iter()
            .filter(|k| seen.insert(k.public_key().keyid()))
            .map(|k| Signature {
                keyid: k.public_key().keyid(),
                alg: ALG_ED25519.into(),
                sig: hex(&k.sign(manifest_bytes)),
            })
            .collect();
        Self { signatures }
    }

    /// Parses the member strictly: known fields only, `ed25519` only, 64-byte hex signatures.
    pub fn parse(bytes: &[u8], label: &str) -> Result<Self> {
        let invalid = |reason: String| PackageError::InvalidSignatureFile { package: label.to_string(), reason };
        let file: SignatureFile = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        for s in &file.signatures {
            if s.alg != ALG_ED25519 {
                return Err(invalid(format!("signature by {}: algorithm '{}' is not 'ed25519'", s.keyid, s.alg)));
            }
            if unhex64(&s.sig).is_none() {
                return Err(invalid(format!("signature by {}: not 64 bytes of hex", s.keyid)));
            }
        }
        Ok(file)
    }

    /// The canonical JSON bytes, as written into a package.
    pub fn to_bytes(&self) -> Vec<u8> {
        let value = serde_json::to_value(self).unwrap_or_default();
        to_canonical_json(&value).into_bytes()
    }

    /// The signing key ids, in order.
    pub fn keyids(&self) -> Vec<&str> {
        self.signatures.iter().map(|s| s.keyid.as_str()).collect()
    }
}

/// Whose signatures a package needs.
#[derive(Debug, Clone, Copy)]
pub enum Policy<'a> {
    /// The trust root's threshold of distinct keys of the role. Signatures by unknown keys, or
    /// by keys that hold only other roles, do not count. An expired root accepts nothing.
    Trust(&'a TrustRoot, Role),
    /// One given key (the vendor checking their own package).
    Key(PublicKey),
}

/// A met policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureCheck {
    /// The key ids whose signatures counted.
    pub signers: Vec<String>,
    /// The threshold that was met.
    pub threshold: u32,
    /// `role 'models'` or `key <id>`.
    pub policy: String,
}

/// Checks `sigs` over `manifest_bytes` against `policy` at `now`.
pub fn check_signatures(
    manifest_bytes: &[u8],
    sigs: &SignatureFile,
    policy: &Policy<'_>,
    now: OffsetDateTime,
    package: &str,
) -> Result<SignatureCheck> {
    let (role_keys, threshold, what, others): (BTreeMap<String, PublicKey>, u32, String, Option<&TrustRoot>) =
        match policy {
            Policy::Trust(root, role) => {
                if root.is_expired_at(now) {
                    return Err(PackageError::RootExpired {
                        package: package.to_string(),
                        version: root.version(),
                        expires: root.expires_rfc3339(),
                    });
                }
                let keys = root.role(*role).keyids.iter().filter_map(|id| Some((id.clone(), *root.keys().get(id)?)));
                (keys.collect(), root.role(*role).threshold, format!("role '{role}'"), Some(root))
            }
            Policy::Key(k) => ([(k.keyid(), *k)].into(), 1, format!("key {}", k.keyid()), None),
        };
    let mut valid = BTreeSet::new();
    let (mut unknown, mut bad, mut other_role) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for s in &sigs.signatures {
        let raw = unhex64(&s.sig).unwrap_or([0u8; 64]);
        if let Some(key) = role_keys.get(&s.keyid) {
            if key.verify(manifest_bytes, &raw).is_ok() {
                valid.insert(s.keyid.clone());
            } else {
                bad.insert(s.keyid.clone());
            }
        } else if let Some(key) = others.and_then(|r| r.keys().get(&s.keyid)) {
            // A key of the root that holds only other roles: report its roles, count nothing.
            if key.verify(manifest_bytes, &raw).is_ok() {
                let roles: Vec<&str> = Role::ALL
                    .into_iter()
                    .filter(|r| others.is_some_and(|o| o.role(*r).keyids.contains(&s.keyid)))
                    .map(Role::as_str)
                    .collect();
                other_role.insert(format!("{} (role '{}')", s.keyid, roles.join("', '")));
            } else {
                bad.insert(s.keyid.clone());
            }
        } else {
            unknown.insert(s.keyid.clone());
        }
    }
    // A key that also made a matching signature is not reported as a bad one.
    bad.retain(|id| !valid.contains(id));
    if valid.len() >= threshold as usize {
        return Ok(SignatureCheck { signers: valid.into_iter().collect(), threshold, policy: what });
    }
    let mut detail = match policy {
        Policy::Trust(..) => format!("signed by {} of threshold {threshold} keys of {what}", valid.len()),
        Policy::Key(_) => format!("not signed by the given {what}"),
    };
    let list = |set: Vec<String>| set.join(", ");
    if !other_role.is_empty() {
        detail += &format!("; keys of other roles do not count: {}", list(other_role.iter().cloned().collect()));
    }
    if !unknown.is_empty() {
        detail += &format!("; unknown keys: {}", list(unknown.iter().cloned().collect()));
    }
    if !bad.is_empty() {
        detail +=
            &format!("; signatures that do not match the manifest (altered?): {}", list(bad.iter().cloned().collect()));
    }
    let package = package.to_string();
    Err(if sigs.signatures.is_empty() {
        PackageError::Unsigned { package, detail }
    } else if !bad.is_empty() {
        PackageError::BadSignature { package, detail }
    } else if valid.is_empty() && !other_role.is_empty() {
        PackageError::WrongRole { package, detail }
    } else {
        PackageError::BelowThreshold { package, detail }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn root(models: &[&SigningKey], updates: &SigningKey, threshold: u32) -> TrustRoot {
        let mut a: Vec<(Vec<Role>, PublicKey)> = models.iter().map(|k| (vec![Role::Models], k.public_key())).collect();
        a.push((vec![Role::Updates, Role::Root], updates.public_key()));
        let t = [govbox_provisioning::ThresholdSpec { role: Role::Models, threshold }];
        TrustRoot::build(&a, &t, OffsetDateTime::now_utc() + time::Duration::days(1)).unwrap()
    }

    #[test]
    fn threshold_counts_distinct_role_keys_only() {
        let (m1, m2, up, stranger) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let r = root(&[&m1, &m2], &up, 2);
        let p = Policy::Trust(&r, Role::Models);
        let now = OffsetDateTime::now_utc();
        let msg = b"manifest";
        let check = |keys: &[&SigningKey]| check_signatures(msg, &SignatureFile::sign(msg, keys), &p, now, "t");
        assert_eq!(check(&[&m1, &m2]).unwrap().signers.len(), 2);
        let e = check(&[&m1, &m1]).unwrap_err();
        assert_eq!(e.code(), "below_threshold");
        assert!(e.to_string().contains("signed by 1 of threshold 2 keys of role 'models'"), "{e}");
        let e = check(&[&m1, &stranger]).unwrap_err();
        assert!(e.to_string().contains(&format!("unknown keys: {}", stranger.public_key().keyid())), "{e}");
        let e = check(&[&up]).unwrap_err();
        assert_eq!(e.code(), "wrong_role", "{e}");
        assert!(e.to_string().contains("role 'root', 'updates'"), "{e}");
        let e = check(&[]).unwrap_err();
        assert_eq!(e.code(), "unsigned", "{e}");
        let e = check_signatures(b"other", &SignatureFile::sign(msg, &[&m1, &m2]), &p, now, "t").unwrap_err();
        assert_eq!(e.code(), "bad_signature", "{e}");
        let later = now + time::Duration::days(2);
        let e = check_signatures(msg, &SignatureFile::sign(msg, &[&m1, &m2]), &p, later, "t").unwrap_err();
        assert_eq!(e.code(), "root_expired", "{e}");
        let k = Policy::Key(m2.public_key());
        assert!(check_signatures(msg, &SignatureFile::sign(msg, &[&m2]), &k, now, "t").is_ok());
        assert!(check_signatures(msg, &SignatureFile::sign(msg, &[&m1]), &k, now, "t").is_err());
    }

    #[test]
    fn parse_is_strict() {
        let k = SigningKey::generate().unwrap();
        let f = SignatureFile::sign(b"m", &[&k]);
        assert_eq!(SignatureFile::parse(&f.to_bytes(), "t").unwrap(), f);
        let mut g = f.clone();
        g.signatures[0].alg = "rsa".into();
        assert!(SignatureFile::parse(&g.to_bytes(), "t").is_err());
        g.signatures[0].alg = ALG_ED25519.into();
        g.signatures[0].sig.pop();
        assert!(SignatureFile::parse(&g.to_bytes(), "t").is_err());
        assert!(SignatureFile::parse(br#"{"signatures":[],"x":1}"#, "t").is_err());
    }
}
