//! Signed tree heads (checkpoints) and lower-case hex.
//!
//! A head names its signature algorithm (`alg`: `ed25519` or `sm2`) and its Merkle hash (`hash`:
//! `sha256` or `sm3`); heads made before SM2 name neither and are `ed25519`/`sha256`. The
//! signature, by the audit key, covers this exact UTF-8 text, each line ending in `\n`. For an
//! `ed25519`/`sha256` head (the `intl` suite) it is, as it always was:
//!
//! ```text
//! govbox-audit-sth/1
//! <tree_size, decimal>
//! <root_hash, 64 lower-case hex digits>
//! <time, RFC 3339 UTC with milliseconds, as stored>
//! <keyid: lower-case hex SHA-256 of the raw audit public key>
//! ```
//!
//! and for any other pair (the `gm` suite: SM2 with SM3 and the ID `1234567812345678`, over an
//! SM3 tree) the algorithms are signed too, so that a head can never be read under another pair:
//!
//! ```text
//! govbox-audit-sth/2
//! <alg>
//! <hash>
//! <tree_size> / <root_hash> / <time> / <keyid>, one a line as above
//! ```
//!
//! so that anyone can check a head with OpenSSL alone:
//! `openssl pkeyutl -verify -pubin -inkey audit.pub -rawin -in msg -sigfile sig.bin`
//! (for SM2 add `-pkeyopt distid:1234567812345678`; the signature is then DER).

use govbox_provisioning::{HashAlgorithm, HexCase, KeyAlgorithm, PublicKey, SigningKey, unhex};
use serde::{Deserialize, Serialize};

use crate::merkle::Hash;

/// The first line of the signed text of an `ed25519`/`sha256` head.
pub const STH_CONTEXT: &str = "govbox-audit-sth/1";
/// The first line of the signed text of any other head; the algorithms follow it.
pub const STH_CONTEXT_V2: &str = "govbox-audit-sth/2";

/// A checkpoint: the tree's size and root at a time, signed by the audit key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedTreeHead {
    /// Number of entries covered (seqs `0..tree_size`).
    pub tree_size: u64,
    /// The Merkle root, lower-case hex.
    pub root_hash: String,
    /// When the head was made: RFC 3339 UTC with milliseconds.
    pub time: String,
    /// Key id of the audit key that signed it.
    pub keyid: String,
    /// The signature, lower-case hex: 64 bytes for Ed25519, DER for SM2.
    pub signature: String,
    /// The signature algorithm; absent (Ed25519) in heads made before SM2.
    #[serde(default)]
    pub alg: KeyAlgorithm,
    /// The tree's hash; absent (SHA-256) in heads made before SM3.
    #[serde(default)]
    pub hash: HashAlgorithm,
}

impl SignedTreeHead {
    /// Makes and signs a head of a tree hashed with `hash`; the algorithm is the key's.
    pub fn sign(key: &SigningKey, hash: HashAlgorithm, tree_size: u64, root: &Hash, time: String) -> Self {
        let mut head = Self {
            tree_size,
            root_hash: to_hex(root),
            time,
            keyid: key.public_key().keyid(),
            signature: String::new(),
            alg: key.algorithm(),
            hash,
        };
        head.signature = to_hex(&key.sign(&head.message()));
        head
    }

    /// The exact bytes the signature covers (see the module documentation).
    pub fn message(&self) -> Vec<u8> {
        let (size, root, time, keyid) = (self.tree_size, &self.root_hash, &self.time, &self.keyid);
        if self.alg == KeyAlgorithm::Ed25519 && self.hash == HashAlgorithm::Sha256 {
            format!("{STH_CONTEXT}\n{size}\n{root}\n{time}\n{keyid}\n").into_bytes()
        } else {
            format!("{STH_CONTEXT_V2}\n{}\n{}\n{size}\n{root}\n{time}\n{keyid}\n", self.alg, self.hash).into_bytes()
        }
    }

    /// The root as bytes, if it is 64 lower-case hex digits (the one spelling the log writes).
    pub fn root(&self) -> Option<Hash> {
        unhex(&self.root_hash, HexCase::Lower)
    }

    /// Checks the key id, the algorithm and the signature against `key`; the error says which
    /// failed. A head whose `alg` is not the key's is refused, never checked under either.
    pub fn verify(&self, key: &PublicKey) -> Result<(), String> {
        if self.keyid != key.keyid() {
            return Err(format!("signed by key {}, not by the audit key {}", self.keyid, key.keyid()));
        }
        if self.root().is_none() {
            return Err("root_hash is not 64 lower-case hex digits".to_string());
        }
        if self.alg != key.algorithm() {
            return Err(format!(
                "the head claims algorithm '{}' but the audit key is {}; refusing to mix algorithms",
                self.alg,
                key.algorithm()
            ));
        }
        let sig = self.alg.decode_signature_hex(&self.signature).ok_or_else(|| {
            format!(
                "signature is not a hex {} signature of at most {} digits",
                self.alg,
                self.alg.max_signature_hex_len()
            )
        })?;
        key.verify_claimed(self.alg, &self.message(), &sig).map_err(|e| e.to_string())
    }
}

/// Lower-case hex (the workspace's one encoder, in `govbox_provisioning`).
pub use govbox_provisioning::hex as to_hex;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let key = SigningKey::generate().unwrap();
        let head = SignedTreeHead::sign(&key, HashAlgorithm::Sha256, 3, &[7; 32], "2025-01-01T00:00:00.000Z".into());
        assert!(head.verify(&key.public_key()).is_ok());
        let text = String::from_utf8(head.message()).unwrap();
        assert_eq!(
            text,
            format!("govbox-audit-sth/1\n3\n{}\n2025-01-01T00:00:00.000Z\n{}\n", "07".repeat(32), head.keyid)
        );
        let mut bad = head.clone();
        bad.tree_size = 4;
        assert!(bad.verify(&key.public_key()).is_err());
        let other = SigningKey::generate().unwrap().public_key();
        assert!(head.verify(&other).unwrap_err().contains("not by the audit key"));
        // A head made before SM2 (no alg, no hash) reads as ed25519/sha256 and still verifies.
        let mut old = serde_json::to_value(&head).unwrap();
        old.as_object_mut().unwrap().retain(|k, _| k != "alg" && k != "hash");
        let old: SignedTreeHead = serde_json::from_value(old).unwrap();
        assert_eq!(old, head);
    }

    #[test]
    fn sm2_heads_sign_their_algorithms_and_refuse_mixing() {
        let key = SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap();
        let head = SignedTreeHead::sign(&key, HashAlgorithm::Sm3, 5, &[9; 32], "2026-12-05T00:00:00.000Z".into());
        assert_eq!((head.alg, head.hash), (KeyAlgorithm::Sm2, HashAlgorithm::Sm3));
        head.verify(&key.public_key()).unwrap();
        let text = String::from_utf8(head.message()).unwrap();
        assert!(text.starts_with("govbox-audit-sth/2\nsm2\nsm3\n5\n"), "{text}");
        let json = serde_json::to_value(&head).unwrap();
        assert_eq!((json["alg"].as_str(), json["hash"].as_str()), (Some("sm2"), Some("sm3")));
        // The hash is signed: the same head read as a SHA-256 tree does not verify.
        let mut as_sha = head.clone();
        as_sha.hash = HashAlgorithm::Sha256;
        assert!(as_sha.verify(&key.public_key()).is_err());
        // Claiming ed25519 under the SM2 key is refused as a mix, not checked.
        let mut as_ed = head.clone();
        as_ed.alg = KeyAlgorithm::Ed25519;
        as_ed.signature = "00".repeat(64);
        assert!(as_ed.verify(&key.public_key()).unwrap_err().contains("refusing to mix"), "mixing");
        let mut long = head.clone();
        long.signature.push_str("00");
        assert!(long.verify(&key.public_key()).unwrap_err().contains("not a hex sm2 signature"));
    }

    #[test]
    fn a_root_has_one_spelling() {
        let key = SigningKey::generate().unwrap();
        let mut head =
            SignedTreeHead::sign(&key, HashAlgorithm::Sha256, 1, &[0xab; 32], "2025-01-01T00:00:00.000Z".into());
        assert_eq!((head.root_hash.as_str(), head.root()), ("ab".repeat(32).as_str(), Some([0xab; 32])));
        for other in ["AB".repeat(32), "ab".repeat(31), "ab".repeat(33), format!("+b{}", "ab".repeat(31))] {
            head.root_hash = other;
            assert_eq!(head.root(), None, "{}", head.root_hash);
        }
    }
}
