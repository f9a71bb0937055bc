//! Ed25519 signing keys and public keys, in the PEM forms that OpenSSL reads.
//!
//! Private keys are written as PKCS#8 **v1** (RFC 5208) in a `PRIVATE KEY` PEM block. ring's
//! `Ed25519KeyPair::generate_pkcs8` writes PKCS#8 v2 (RFC 5958, with the public key attached),
//! which OpenSSL 3.0 refuses, so we build the v1 document ourselves: for Ed25519 it is a fixed
//! 16-byte prefix followed by the 32-byte seed (RFC 8410 §7). Loading accepts v1 and v2.
//!
//! Public keys are SubjectPublicKeyInfo (RFC 8410 §4) in a `PUBLIC KEY` PEM block. A key's id is
//! the lower-case hex SHA-256 of its raw 32 bytes.

use std::fmt;
use std::path::Path;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::error::{ProvisionError, Result};
use crate::fsio::{self, Overwrite};

/// `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32 bytes) } }`,
/// up to the seed itself.
const PKCS8_V1_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// `SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits, 32 bytes) }`, up to the key.
const SPKI_ED25519_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// No legitimate key PEM file is anywhere near this size.
const KEY_FILE_LIMIT: u64 = 16 * 1024;

const PRIVATE_PEM_TAG: &str = "PRIVATE KEY";
const PUBLIC_PEM_TAG: &str = "PUBLIC KEY";

/// Encodes PEM with `\n` line endings, as OpenSSL does (the `pem` crate defaults to CRLF).
pub(crate) fn pem_encode(tag: &str, der: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(tag, der), pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF))
}

/// Parses exactly one PEM block with the expected tag.
fn pem_decode(text: &str, tag: &str, what: &str, origin: &str) -> Result<Vec<u8>> {
    let invalid =
        |reason: String| ProvisionError::InvalidKey { what: what.to_string(), origin: origin.to_string(), reason };
    let blocks = pem::parse_many(text).map_err(|e| invalid(format!("not valid PEM: {e}")))?;
    match blocks.as_slice() {
        [one] if one.tag() == tag => Ok(one.contents().to_vec()),
        [one] => Err(invalid(format!("expected a '{tag}' PEM block, found '{}'", one.tag()))),
        [] => Err(invalid(format!("no '{tag}' PEM block found"))),
        many => Err(invalid(format!("expected one PEM block, found {}", many.len()))),
    }
}

/// An Ed25519 private key.
///
/// `Debug` shows only the key id, never key material.
pub struct SigningKey {
    pair: Ed25519KeyPair,
    /// The PKCS#8 document the key was made from (v1 or v2); written back unchanged.
    pkcs8: Vec<u8>,
}

impl SigningKey {
    /// Generates a new key from 32 bytes of the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        let seed = fsio::random_bytes::<32>("an Ed25519 key")?;
        let mut der = Vec::with_capacity(48);
        der.extend_from_slice(&PKCS8_V1_ED25519_PREFIX);
        der.extend_from_slice(&seed);
        Self::from_pkcs8_der(der, "a freshly generated seed")
    }

    /// Loads a key from a PKCS#8 (v1 or v2) DER document.
    pub fn from_pkcs8_der(der: Vec<u8>, origin: &str) -> Result<Self> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der).map_err(|e| ProvisionError::InvalidKey {
            what: "Ed25519 private key".to_string(),
            origin: origin.to_string(),
            reason: format!("not an Ed25519 PKCS#8 key: {e}"),
        })?;
        Ok(Self { pair, pkcs8: der })
    }

    /// Loads a key from `PRIVATE KEY` PEM text.
    pub fn from_pkcs8_pem(text: &str, origin: &str) -> Result<Self> {
        let der = pem_decode(text, PRIVATE_PEM_TAG, "Ed25519 private key", origin)?;
        Self::from_pkcs8_der(der, origin)
    }

    /// Loads a key from a `PRIVATE KEY` PEM file.
    pub fn load_pem(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = fsio::read_text_capped(path, KEY_FILE_LIMIT, "Ed25519 private key")?;
        Self::from_pkcs8_pem(&text, &path.display().to_string())
    }

    /// The key as `PRIVATE KEY` PEM (PKCS#8 v1 for keys made by [`SigningKey::generate`]).
    pub fn to_pkcs8_pem(&self) -> String {
        pem_encode(PRIVATE_PEM_TAG, &self.pkcs8)
    }

    /// Writes the key as PEM with mode 0600.
    pub fn write_pem(&self, path: &Path, overwrite: Overwrite) -> Result<()> {
        fsio::write_file(
            path,
            self.to_pkcs8_pem().as_bytes(),
            fsio::PRIVATE_FILE_MODE,
            overwrite,
            "Ed25519 private key",
        )
    }

    /// Signs `msg` (pure Ed25519, RFC 8032).
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(self.pair.sign(msg).as_ref());
        out
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        let mut raw = [0u8; 32];
        raw.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey { raw }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey").field("keyid", &self.public_key().keyid()).finish_non_exhaustive()
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        // Best effort: do not leave the seed in freed memory.
        self.pkcs8.fill(0);
        std::hint::black_box(&self.pkcs8);
    }
}

/// An Ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey {
    raw: [u8; 32],
}

impl PublicKey {
    /// The key from its raw 32 bytes.
    pub fn from_raw(raw: [u8; 32]) -> Self {
        Self { raw }
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.raw
    }

    /// Parses a SubjectPublicKeyInfo DER document; only Ed25519 is accepted.
    pub fn from_spki_der(der: &[u8], origin: &str) -> Result<Self> {
        match der.strip_prefix(&SPKI_ED25519_PREFIX[..]) {
            Some(key) if key.len() == 32 => {
                let mut raw = [0u8; 32];
                raw.copy_from_slice(key);
                Ok(Self { raw })
            }
            _ => Err(ProvisionError::InvalidKey {
                what: "Ed25519 public key".to_string(),
                origin: origin.to_string(),
                reason: "not an Ed25519 SubjectPublicKeyInfo (OID 1.3.101.112, 32-byte key)".to_string(),
            }),
        }
    }

    /// Parses `PUBLIC KEY` PEM text. `origin` names the source in errors.
    pub fn from_spki_pem_at(text: &str, origin: &str) -> Result<Self> {
        let der = pem_decode(text, PUBLIC_PEM_TAG, "Ed25519 public key", origin)?;
        Self::from_spki_der(&der, origin)
    }

    /// Parses `PUBLIC KEY` PEM text.
    pub fn from_spki_pem(text: &str) -> Result<Self> {
        Self::from_spki_pem_at(text, "PEM text")
    }

    /// Loads a `PUBLIC KEY` PEM file.
    pub fn load_pem(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = fsio::read_text_capped(path, KEY_FILE_LIMIT, "Ed25519 public key")?;
        Self::from_spki_pem_at(&text, &path.display().to_string())
    }

    /// The SubjectPublicKeyInfo DER document.
    pub fn to_spki_der(&self) -> Vec<u8> {
        let mut der = Vec::with_capacity(44);
        der.extend_from_slice(&SPKI_ED25519_PREFIX);
        der.extend_from_slice(&self.raw);
        der
    }

    /// The key as `PUBLIC KEY` PEM.
    pub fn to_spki_pem(&self) -> String {
        pem_encode(PUBLIC_PEM_TAG, &self.to_spki_der())
    }

    /// Writes the key as PEM with mode 0644.
    pub fn write_pem(&self, path: &Path, overwrite: Overwrite) -> Result<()> {
        fsio::write_file(path, self.to_spki_pem().as_bytes(), fsio::PUBLIC_FILE_MODE, overwrite, "Ed25519 public key")
    }

    /// The key id: lower-case hex SHA-256 of the raw 32-byte key.
    pub fn keyid(&self) -> String {
        fsio::hex(&fsio::sha256(&self.raw))
    }

    /// The raw key as lower-case hex, as TUF's `keyval.public` holds it.
    pub fn to_hex(&self) -> String {
        fsio::hex(&self.raw)
    }

    /// Checks an Ed25519 signature over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        if sig.len() != 64 {
            return Err(ProvisionError::BadSignature {
                keyid: self.keyid(),
                reason: format!("an Ed25519 signature is 64 bytes, this one is {}", sig.len()),
            });
        }
        UnparsedPublicKey::new(&ED25519, &self.raw).verify(msg, sig).map_err(|_| ProvisionError::BadSignature {
            keyid: self.keyid(),
            reason: "the signature does not match the message".to_string(),
        })
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.keyid())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn generated_key_is_pkcs8_v1_and_round_trips() {
        let k = SigningKey::generate().unwrap();
        assert_eq!(k.pkcs8.len(), 48);
        assert_eq!(k.pkcs8[..16], PKCS8_V1_ED25519_PREFIX);
        let pem = k.to_pkcs8_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        assert!(!pem.contains('\r'));
        let k2 = SigningKey::from_pkcs8_pem(&pem, "test").unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        let sig = k2.sign(b"hello");
        k.public_key().verify(b"hello", &sig).unwrap();
    }

    #[test]
    fn loads_ring_pkcs8_v2_too() {
        let rng = ring::rand::SystemRandom::new();
        let v2 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let k = SigningKey::from_pkcs8_der(v2.as_ref().to_vec(), "test").unwrap();
        let ring_pair = Ed25519KeyPair::from_pkcs8(v2.as_ref()).unwrap();
        assert_eq!(k.public_key().as_bytes(), ring_pair.public_key().as_ref());
    }

    #[test]
    fn verify_rejects_wrong_message_and_wrong_key() {
        let a = SigningKey::generate().unwrap();
        let b = SigningKey::generate().unwrap();
        let sig = a.sign(b"msg");
        assert!(a.public_key().verify(b"msg", &sig).is_ok());
        assert!(matches!(a.public_key().verify(b"msh", &sig), Err(ProvisionError::BadSignature { .. })));
        assert!(b.public_key().verify(b"msg", &sig).is_err());
        assert!(a.public_key().verify(b"msg", &sig[..63]).is_err());
    }

    #[test]
    fn spki_pem_round_trips_and_keyid_is_sha256_of_raw_key() {
        let k = SigningKey::generate().unwrap().public_key();
        let pem = k.to_spki_pem();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(PublicKey::from_spki_pem(&pem).unwrap(), k);
        assert_eq!(k.keyid(), fsio::hex(&fsio::sha256(k.as_bytes())));
        assert_eq!(k.keyid().len(), 64);
    }

    #[test]
    fn wrong_pem_tags_are_rejected() {
        let k = SigningKey::generate().unwrap();
        let err = PublicKey::from_spki_pem(&k.to_pkcs8_pem()).unwrap_err();
        assert!(err.to_string().contains("expected a 'PUBLIC KEY' PEM block, found 'PRIVATE KEY'"), "{err}");
        assert!(SigningKey::from_pkcs8_pem(&k.public_key().to_spki_pem(), "t").is_err());
        let mut der = k.public_key().to_spki_der();
        der[8] ^= 1; // a different OID
        assert!(PublicKey::from_spki_der(&der, "t").is_err());
    }

    #[test]
    fn debug_does_not_print_key_material() {
        let k = SigningKey::generate().unwrap();
        let dbg = format!("{k:?}");
        assert!(dbg.contains(&k.public_key().keyid()));
        assert!(!dbg.contains(&fsio::hex(&k.pkcs8[16..])));
    }
}
