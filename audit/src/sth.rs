//! Signed tree heads (checkpoints) and lower-case hex.
//!
//! The signature is pure Ed25519 (RFC 8032) by the audit key over this exact UTF-8 text, each
//! line ending in `\n`:
//!
//! ```text
//! govbox-audit-sth/1
//! <tree_size, decimal>
//! <root_hash, 64 lower-case hex digits>
//! <time, RFC 3339 UTC with milliseconds, as stored>
//! <keyid: lower-case hex SHA-256 of the raw 32-byte audit public key>
//! ```
//!
//! so that anyone can check a head with OpenSSL alone:
//! `openssl pkeyutl -verify -pubin -inkey audit.pub -rawin -in msg -sigfile sig.bin`.

use govbox_provisioning::{PublicKey, SigningKey};
use serde::{Deserialize, Serialize};

use crate::merkle::Hash;

/// The first line of the signed text; it also names the format's version.
pub const STH_CONTEXT: &str = "govbox-audit-sth/1";

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
    /// Ed25519 signature over [`SignedTreeHead::message`], lower-case hex (128 digits).
    pub signature: String,
}

impl SignedTreeHead {
    /// Makes and signs a head.
    pub fn sign(key: &SigningKey, tree_size: u64, root: &Hash, time: String) -> Self {
        let mut head = Self {
            tree_size,
            root_hash: to_hex(root),
            time,
            keyid: key.public_key().keyid(),
            signature: String::new(),
        };
        head.signature = to_hex(&key.sign(&head.message()));
        head
    }

    /// The exact bytes the signature covers (see the module documentation).
    pub fn message(&self) -> Vec<u8> {
        format!("{STH_CONTEXT}\n{}\n{}\n{}\n{}\n", self.tree_size, self.root_hash, self.time, self.keyid).into_bytes()
    }

    /// The root as bytes, if it is 64 hex digits.
    pub fn root(&self) -> Option<Hash> {
        from_hex(&self.root_hash)
    }

    /// Checks the key id and the signature against `key`; the error says which failed.
    pub fn verify(&self, key: &PublicKey) -> Result<(), String> {
        if self.keyid != key.keyid() {
            return Err(format!("signed by key {}, not by the audit key {}", self.keyid, key.keyid()));
        }
        if self.root().is_none() {
            return Err("root_hash is not 64 lower-case hex digits".to_string());
        }
        let sig: [u8; 64] = from_hex(&self.signature).ok_or("signature is not 128 lower-case hex digits")?;
        key.verify(&self.message(), &sig).map_err(|e| e.to_string())
    }
}

/// Lower-case hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

/// Parses exactly `2 * N` lower-case hex digits.
pub fn from_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    let s = s.as_bytes();
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (digit(pair[0])? << 4) | digit(pair[1])?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let key = SigningKey::generate().unwrap();
        let head = SignedTreeHead::sign(&key, 3, &[7; 32], "2025-01-01T00:00:00.000Z".into());
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
    }

    #[test]
    fn hex_round_trip_and_rejects() {
        assert_eq!(to_hex(&[0, 0xab, 0xff]), "00abff");
        assert_eq!(from_hex::<3>("00abff"), Some([0, 0xab, 0xff]));
        assert_eq!(from_hex::<3>("00ABff"), None);
        assert_eq!(from_hex::<3>("00ab"), None);
        assert_eq!(from_hex::<1>("é"), None);
    }
}
