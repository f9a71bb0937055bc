//! Member 2, `govbox-manifest.sig`, and the trust policy check over it.
//!
//! `{"signatures":[{"alg":"ed25519","keyid":"<hex sha256 of the raw key>","sig":"<128 hex>"}]}`:
//! signatures over the exact bytes of member 1, hex like the signatures of `root.json`. `alg` is
//! `ed25519` (64 bytes) or `sm2` (SM2 over SM3 with ID `1234567812345678`, DER, at most 72 bytes:
//! what `openssl pkeyutl -verify -rawin -pkeyopt distid:1234567812345678` checks).
//!
//! A signature counts only when its `alg` is the algorithm of the pinned key its `keyid` names;
//! a signature claiming another algorithm refuses the whole package, so that a box never checks
//! a signature under an algorithm its trust root did not give that key.

use std::collections::{BTreeMap, BTreeSet};

use govbox_provisioning::{KeyAlgorithm, PublicKey, Role, SigningKey, TrustRoot, to_canonical_json};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{PackageError, Result};

/// Ed25519 signatures (the `intl` suite).
pub const ALG_ED25519: &str = "ed25519";
/// SM2-with-SM3 signatures (the `gm` suite).
pub const ALG_SM2: &str = "sm2";

/// One signature over the manifest bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    /// The signing key's id.
    pub keyid: String,
    /// `ed25519` or `sm2`.
    pub alg: String,
    /// The signature, lower-case hex: 64 bytes for Ed25519, DER for SM2.
    pub sig: String,
}

/// The signature member.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignatureFile {
    /// The signatures, in any order.
    pub signatures: Vec<Signature>,
}

impl Signature {
    /// The claimed algorithm and the signature bytes, if both are well formed.
    fn decode(&self) -> Option<(KeyAlgorithm, Vec<u8>)> {
        let alg = KeyAlgorithm::parse(&self.alg)?;
        Some((alg, alg.decode_signature_hex(&self.sig)?))
    }
}

pub(crate) use govbox_provisioning::hex;

impl SignatureFile {
    /// Signs `manifest_bytes` with each key (a key given twice signs once).
    pub fn sign(manifest_bytes: &[u8], keys: &[&SigningKey]) -> Self {
        let mut seen = BTreeSet::new();
        let signatures = keys
            .iter()
            .filter(|k| seen.insert(k.public_key().keyid()))
            .map(|k| Signature {
                keyid: k.public_key().keyid(),
                alg: k.algorithm().as_str().into(),
                sig: hex(&k.sign(manifest_bytes)),
            })
            .collect();
        Self { signatures }
    }

    /// Parses the member strictly: known fields only, `ed25519` with 64-byte or `sm2` with
    /// strict-DER (at most 72-byte) signatures in hex. The caller caps the member's size.
    pub fn parse(bytes: &[u8], label: &str) -> Result<Self> {
        let invalid = |reason: String| PackageError::InvalidSignatureFile { package: label.to_string(), reason };
        let file: SignatureFile = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        for s in &file.signatures {
            let Some(alg) = KeyAlgorithm::parse(&s.alg) else {
                return Err(invalid(format!(
                    "signature by {}: algorithm '{}' is neither '{ALG_ED25519}' nor '{ALG_SM2}'",
                    s.keyid, s.alg
                )));
            };
            if alg.decode_signature_hex(&s.sig).is_none() {
                let form = match alg {
                    KeyAlgorithm::Sm2 => "a DER SM2 signature of at most 72 bytes in hex",
                    _ => "64 bytes of hex",
                };
                return Err(invalid(format!("signature by {}: not {form}", s.keyid)));
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
    check_algorithms(sigs, &role_keys, others, package)?;
    let mut valid = BTreeSet::new();
    let (mut unknown, mut bad, mut other_role) = (BTreeSet::new(), BTreeSet::new(), BTreeSet::new());
    for s in &sigs.signatures {
        let raw = s.decode().map(|(_, raw)| raw).unwrap_or_default();
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

/// Rule: a signature is checked only under the algorithm of the pinned key its `keyid` names,
/// and a signature whose `alg` names another algorithm refuses the package (no silent mixing).
/// Signatures by keys the policy does not know are left to the tally.
fn check_algorithms(
    sigs: &SignatureFile,
    role_keys: &BTreeMap<String, PublicKey>,
    others: Option<&TrustRoot>,
    package: &str,
) -> Result<()> {
    for s in &sigs.signatures {
        let key = role_keys.get(&s.keyid).or_else(|| others.and_then(|r| r.keys().get(&s.keyid)));
        let (Some(key), Some((claimed, _))) = (key, s.decode()) else { continue };
        if let Err(e) = key.check_claim(claimed) {
            return Err(PackageError::AlgorithmMismatch { package: package.to_string(), detail: e.to_string() });
        }
    }
    Ok(())
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
        let e = SignatureFile::parse(&g.to_bytes(), "t").unwrap_err();
        assert!(e.to_string().contains("algorithm 'rsa' is neither 'ed25519' nor 'sm2'"), "{e}");
        g.signatures[0].alg = ALG_ED25519.into();
        g.signatures[0].sig.pop();
        assert!(SignatureFile::parse(&g.to_bytes(), "t").is_err());
        assert!(SignatureFile::parse(br#"{"signatures":[],"x":1}"#, "t").is_err());
    }

    #[test]
    fn a_root_of_both_algorithms_counts_both_and_refuses_mixed_claims() {
        let (ed, sm, up) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap(),
            SigningKey::generate().unwrap(),
        );
        let r = root(&[&ed, &sm], &up, 2);
        let p = Policy::Trust(&r, Role::Models);
        let now = OffsetDateTime::now_utc();
        let msg = b"manifest";
        let both = SignatureFile::sign(msg, &[&ed, &sm]);
        assert_eq!(both.signatures.iter().map(|s| s.alg.as_str()).collect::<Vec<_>>(), [ALG_ED25519, ALG_SM2]);
        assert_eq!(SignatureFile::parse(&both.to_bytes(), "t").unwrap(), both);
        assert_eq!(check_signatures(msg, &both, &p, now, "t").unwrap().signers.len(), 2);
        let e = check_signatures(b"other", &both, &p, now, "t").unwrap_err();
        assert_eq!(e.code(), "bad_signature", "{e}");

        // The SM2 key's id on a real SM2 signature that claims ed25519 cannot parse as one (an
        // Ed25519 signature is 64 bytes); a real Ed25519 signature claiming ed25519 under the SM2
        // key's id does, and is refused as a mismatch rather than tried.
        let mut swapped = both.clone();
        swapped.signatures[1].sig = both.signatures[0].sig.clone();
        swapped.signatures[1].alg = ALG_ED25519.into();
        let e = check_signatures(msg, &swapped, &p, now, "t").unwrap_err();
        assert_eq!(e.code(), "algorithm_mismatch", "{e}");
        assert!(e.to_string().contains(&format!("key {}", sm.public_key().keyid())), "{e}");
        assert!(e.to_string().contains("claims algorithm 'ed25519' but the pinned key is sm2"), "{e}");
        // And an SM2 signature claiming sm2 under the Ed25519 key's id.
        let mut swapped = both.clone();
        swapped.signatures[0].sig = both.signatures[1].sig.clone();
        swapped.signatures[0].alg = ALG_SM2.into();
        let e = check_signatures(msg, &swapped, &p, now, "t").unwrap_err();
        assert_eq!(e.code(), "algorithm_mismatch", "{e}");
        assert!(e.to_string().contains("claims algorithm 'sm2' but the pinned key is ed25519"), "{e}");
        // The same for a vendor checking with one pinned key.
        let e = check_signatures(msg, &swapped, &Policy::Key(ed.public_key()), now, "t").unwrap_err();
        assert_eq!(e.code(), "algorithm_mismatch", "{e}");
    }

    #[test]
    fn sm2_signatures_are_parsed_strictly() {
        let k = SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap();
        let f = SignatureFile::sign(b"m", &[&k]);
        let mut g = f.clone();
        g.signatures[0].sig.push_str("00");
        let e = SignatureFile::parse(&g.to_bytes(), "t").unwrap_err();
        assert!(e.to_string().contains("not a DER SM2 signature of at most 72 bytes in hex"), "{e}");
        g.signatures[0].sig = "30".repeat(100);
        assert!(SignatureFile::parse(&g.to_bytes(), "t").is_err());
        g.signatures[0].sig = f.signatures[0].sig.to_uppercase().replace('3', "+");
        assert!(SignatureFile::parse(&g.to_bytes(), "t").is_err());
    }
}
