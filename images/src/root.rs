//! Trust root rotation without a network, TUF-style: a new `root.json` is accepted only when the
//! current root's `root` threshold signed it, its own `root` threshold signed it too, its version
//! is higher, and it has not expired.

use std::collections::BTreeSet;

use govbox_provisioning::{PublicKey, Role, SigningKey, StatePaths, TrustRoot, to_canonical_json};
use serde_json::{Value, json};
use time::OffsetDateTime;

use crate::error::{PackageError, Result};
use crate::fsutil::write_atomic;
use crate::signature::hex;

fn rejected(reason: String) -> PackageError {
    PackageError::RootRejected { reason }
}

/// The distinct keys of `signer`'s `root` role whose signatures over `new`'s signed part verify.
/// A signature whose `alg` is not its key's algorithm refuses the root (no silent mixing).
pub(crate) fn root_signers(signer: &TrustRoot, new: &TrustRoot) -> Result<BTreeSet<String>> {
    let msg = new.signed_canonical_json();
    let keys: Vec<PublicKey> = signer.role_public_keys(Role::Root);
    let mut out = BTreeSet::new();
    for s in new.signatures() {
        let Some(key) = keys.iter().find(|k| k.keyid() == s.keyid) else { continue };
        // `TrustRoot::parse` refused unknown algorithms and malformed signatures.
        let (Some(alg), Some(sig)) = (s.algorithm(), s.signature_bytes()) else { continue };
        key.check_claim(alg).map_err(|e| rejected(e.to_string()))?;
        if key.verify(msg.as_bytes(), &sig).is_ok() {
            out.insert(s.keyid.clone());
        }
    }
    Ok(out)
}

/// Checks `new_bytes` against `current` now; see [`accept_new_root_at`].
pub fn accept_new_root(current: &TrustRoot, new_bytes: &[u8]) -> Result<TrustRoot> {
    accept_new_root_at(current, new_bytes, OffsetDateTime::now_utc())
}

/// Accepts a new root document if, at `now`:
/// 1. it parses as a valid root (TUF 5.3.4: "the new root metadata file must be valid");
/// 2. it is signed by a threshold of the **current** root's `root` keys (TUF 5.3.4: "signed by
///    a threshold of keys specified in the trusted root metadata file");
/// 3. it is signed by a threshold of its **own** `root` keys (TUF 5.3.4: "and by a threshold of
///    keys specified in the new root metadata file");
/// 4. its version is higher than the current one (TUF 5.3.5 requires exactly +1 when walking a
///    chain; a box rotating offline may skip versions, but never go back or stand still);
/// 5. it has not expired (TUF 5.3.10).
pub fn accept_new_root_at(current: &TrustRoot, new_bytes: &[u8], now: OffsetDateTime) -> Result<TrustRoot> {
    let new = TrustRoot::parse(new_bytes, "new root").map_err(|e| rejected(e.to_string()))?;
    let by_current = root_signers(current, &new)?;
    let need = current.role(Role::Root).threshold;
    if by_current.len() < need as usize {
        return Err(rejected(format!(
            "signed by {} of threshold {need} root keys of the current root (version {})",
            by_current.len(),
            current.version()
        )));
    }
    let by_new = root_signers(&new, &new)?;
    let need_new = new.role(Role::Root).threshold;
    if by_new.len() < need_new as usize {
        return Err(rejected(format!(
            "signed by {} of threshold {need_new} root keys of the new root itself",
            by_new.len()
        )));
    }
    if new.version() <= current.version() {
        return Err(rejected(format!(
            "version {} is not higher than the current version {}",
            new.version(),
            current.version()
        )));
    }
    if new.is_expired_at(now) {
        return Err(rejected(format!("it expired at {}", new.expires_rfc3339())));
    }
    Ok(new)
}

/// Adds signatures by `keys` over the signed part of a root document (replacing earlier ones by
/// the same keys) and returns the document in canonical JSON.
pub fn sign_root(root_bytes: &[u8], keys: &[&SigningKey]) -> Result<Vec<u8>> {
    let root = TrustRoot::parse(root_bytes, "root to sign")?;
    let signed: Value = serde_json::from_str(&root.signed_canonical_json()).map_err(|e| rejected(e.to_string()))?;
    let msg = root.signed_canonical_json();
    let ours: BTreeSet<String> = keys.iter().map(|k| k.public_key().keyid()).collect();
    let mut sigs: Vec<Value> =
        root.signatures().iter().filter(|s| !ours.contains(&s.keyid)).map(|s| s.to_json()).collect();
    for k in keys {
        let id = k.public_key().keyid();
        if !sigs.iter().any(|s| s["keyid"] == id.as_str()) {
            let alg = k.algorithm().as_str();
            sigs.push(json!({"keyid": id, "alg": alg, "sig": hex(&k.sign(msg.as_bytes()))}));
        }
    }
    Ok(to_canonical_json(&json!({"signed": signed, "signatures": sigs})).into_bytes())
}

/// Installs a new root into `STATE/trust/root.json` atomically after [`accept_new_root`];
/// returns the previous and the new root.
pub fn install_root(paths: &StatePaths, new_bytes: &[u8]) -> Result<(TrustRoot, TrustRoot)> {
    let current = TrustRoot::load(&paths.root_json())?;
    let new = accept_new_root(&current, new_bytes)?;
    write_atomic(&paths.root_json(), new.to_canonical_json().as_bytes(), 0o644)?;
    Ok((current, new))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use govbox_provisioning::KeyAlgorithm;
    use time::Duration;

    fn root_doc(root_keys: &[&SigningKey], version: u64, expires: OffsetDateTime) -> Vec<u8> {
        let mut a: Vec<(Vec<Role>, PublicKey)> = root_keys.iter().map(|k| (vec![Role::Root], k.public_key())).collect();
        a.push((vec![Role::Models, Role::Updates], root_keys[0].public_key()));
        let t = [govbox_provisioning::ThresholdSpec { role: Role::Root, threshold: root_keys.len() as u32 }];
        let r = TrustRoot::build(&a, &t, expires).unwrap();
        let mut v: Value = serde_json::from_str(&r.to_canonical_json()).unwrap();
        v["signed"]["version"] = version.into();
        to_canonical_json(&v).into_bytes()
    }

    #[test]
    fn rotation_needs_both_thresholds_a_higher_version_and_no_expiry() {
        let (a, b, c) =
            (SigningKey::generate().unwrap(), SigningKey::generate().unwrap(), SigningKey::generate().unwrap());
        let later = OffsetDateTime::now_utc() + Duration::days(30);
        let current = TrustRoot::parse(&root_doc(&[&a, &b], 1, later), "t").unwrap();
        let v2 = root_doc(&[&c], 2, later);
        let err = |bytes: &[u8]| accept_new_root(&current, bytes).unwrap_err().to_string();

        assert!(err(&v2).contains("signed by 0 of threshold 2 root keys of the current root"));
        assert!(err(&sign_root(&v2, &[&a]).unwrap()).contains("signed by 1 of threshold 2"));
        let by_old = sign_root(&v2, &[&a, &b]).unwrap();
        assert!(err(&by_old).contains("of the new root itself"));
        let good = sign_root(&by_old, &[&c]).unwrap();
        let new = accept_new_root(&current, &good).unwrap();
        assert_eq!(new.version(), 2);
        // Signing again by the same key does not duplicate its signature.
        assert_eq!(TrustRoot::parse(&sign_root(&good, &[&c]).unwrap(), "t").unwrap().signatures().len(), 3);

        let same = sign_root(&root_doc(&[&a, &b], 1, later), &[&a, &b]).unwrap();
        assert!(err(&same).contains("not higher"));
        let expired = sign_root(&root_doc(&[&a, &b], 3, later), &[&a, &b]).unwrap();
        let e = accept_new_root_at(&current, &expired, later + Duration::days(1)).unwrap_err();
        assert_eq!(e.code(), "root_rejected");
        assert!(e.to_string().contains("expired"), "{e}");
    }

    #[test]
    fn sm2_root_keys_rotate_and_a_mismatched_alg_is_refused() {
        let (a, c) = (SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap(), SigningKey::generate().unwrap());
        let later = OffsetDateTime::now_utc() + Duration::days(30);
        let current = TrustRoot::parse(&root_doc(&[&a], 1, later), "t").unwrap();
        let good = sign_root(&sign_root(&root_doc(&[&c], 2, later), &[&a]).unwrap(), &[&c]).unwrap();
        assert!(String::from_utf8_lossy(&good).contains(r#""alg":"sm2""#));
        assert_eq!(accept_new_root(&current, &good).unwrap().version(), 2);
        // The SM2 root key's signature relabelled as Ed25519 cannot even parse (DER is not 64
        // bytes); the new Ed25519 key's signature relabelled as SM2 cannot either. So forge the
        // claim with a well-formed signature of the other kind under the SM2 key's id.
        let mut v: Value = serde_json::from_slice(&good).unwrap();
        let ed_sig = v["signatures"][1]["sig"].clone();
        v["signatures"][0]["alg"] = "ed25519".into();
        v["signatures"][0]["sig"] = ed_sig;
        let e = accept_new_root(&current, &to_canonical_json(&v).into_bytes()).unwrap_err();
        assert!(e.to_string().contains("claims algorithm 'ed25519' but the pinned key is sm2"), "{e}");
    }
}
