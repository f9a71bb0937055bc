//! Signing keys and public keys, in the PEM forms that OpenSSL reads: Ed25519 (the `intl` suite)
//! and SM2 with SM3 (the `gm` suite, GB/T 32918; see [`crate::gm`]). Every key names its
//! [`KeyAlgorithm`], and a verifier checks that the algorithm a format claims is the key's.
//!
//! Ed25519 private keys are written as PKCS#8 **v1** (RFC 5208) in a `PRIVATE KEY` PEM block.
//! ring's `Ed25519KeyPair::generate_pkcs8` writes PKCS#8 v2 (RFC 5958, with the public key
//! attached), which OpenSSL 3.0 refuses, so we build the v1 document ourselves: for Ed25519 it is
//! a fixed 16-byte prefix followed by the 32-byte seed (RFC 8410 §7). Loading accepts v1 and v2.
//! SM2 private keys are PKCS#8 with `id-ecPublicKey` and the SM2 curve, as OpenSSL 3 writes them.
//!
//! Public keys are SubjectPublicKeyInfo (RFC 8410 §4 for Ed25519, RFC 5480 with the SM2 curve
//! OID for SM2) in a `PUBLIC KEY` PEM block. A key's id is the lower-case hex SHA-256 of its raw
//! public bytes: the 32-byte Ed25519 key, or the 65-byte uncompressed SM2 point.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};

use crate::error::{ProvisionError, Result};
use crate::fsio::{self, HexCase, Overwrite};
use crate::gm::{self, SM2_PUBLIC_KEY_LEN, Sm2Signer};

/// A signature algorithm, as formats name it in their `alg` fields. The default is Ed25519: what
/// formats made before SM2 used without naming it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
#[non_exhaustive]
pub enum KeyAlgorithm {
    /// Pure Ed25519 (RFC 8032); 64-byte signatures.
    #[default]
    Ed25519,
    /// SM2 over SM3 with ID `1234567812345678` (GB/T 32918.2, GM/T 0009); DER signatures.
    Sm2,
}

impl KeyAlgorithm {
    /// Every algorithm.
    pub const ALL: [KeyAlgorithm; 2] = [KeyAlgorithm::Ed25519, KeyAlgorithm::Sm2];

    /// The name in `alg` fields and on the command line: `ed25519` or `sm2`.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::Ed25519 => "ed25519",
            KeyAlgorithm::Sm2 => "sm2",
        }
    }

    /// Parses an `alg` name.
    pub fn parse(s: &str) -> Option<KeyAlgorithm> {
        KeyAlgorithm::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// The longest hex text a signature of this algorithm takes; longer text is refused unread.
    pub fn max_signature_hex_len(self) -> usize {
        match self {
            KeyAlgorithm::Ed25519 => 128,
            KeyAlgorithm::Sm2 => 2 * gm::SM2_SIGNATURE_MAX_DER_LEN,
        }
    }

    /// Decodes a lower-case hex signature of this algorithm and checks its form:
    /// exactly 64 bytes for Ed25519; strict DER of at most 72 bytes for SM2. `None` if it is not.
    pub fn decode_signature_hex(self, text: &str) -> Option<Vec<u8>> {
        // One signature has one spelling: the lower-case hex every govbox format writes. Upper
        // case would let an edited document verify (a flipped case bit in a signed export).
        if text.len() > self.max_signature_hex_len() {
            return None;
        }
        let bytes = fsio::unhex_vec(text, HexCase::Lower)?;
        let ok = match self {
            KeyAlgorithm::Ed25519 => bytes.len() == 64,
            KeyAlgorithm::Sm2 => gm::signature_is_well_formed(&bytes),
        };
        ok.then_some(bytes)
    }

    fn key_name(self) -> &'static str {
        match self {
            KeyAlgorithm::Ed25519 => "Ed25519",
            KeyAlgorithm::Sm2 => "SM2",
        }
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for KeyAlgorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for KeyAlgorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        KeyAlgorithm::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown signature algorithm '{s}'; expected 'ed25519' or 'sm2'"))
        })
    }
}

impl FromStr for KeyAlgorithm {
    type Err = ProvisionError;

    fn from_str(s: &str) -> Result<Self> {
        KeyAlgorithm::parse(s).ok_or_else(|| ProvisionError::UnknownAlgorithm { value: s.to_string() })
    }
}

/// `SEQUENCE { INTEGER 0, SEQUENCE { OID 1.3.101.112 }, OCTET STRING { OCTET STRING (32 bytes) } }`,
/// up to the seed itself.
const PKCS8_V1_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// `SEQUENCE { SEQUENCE { OID 1.3.101.112 }, BIT STRING (0 unused bits, 32 bytes) }`, up to the key.
const SPKI_ED25519_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// No legitimate key PEM file is anywhere near this size.
const KEY_FILE_LIMIT: u64 = 16 * 1024;

/// No legitimate key DER document is anywhere near this size (an SM2 PKCS#8 key is ~150 bytes).
pub const KEY_DER_LIMIT: usize = 1024;

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
    if text.len() as u64 > KEY_FILE_LIMIT {
        return Err(invalid(format!("{} bytes of PEM; a key is at most {KEY_FILE_LIMIT}", text.len())));
    }
    let blocks = pem::parse_many(text).map_err(|e| invalid(format!("not valid PEM: {e}")))?;
    match blocks.as_slice() {
        [one] if one.tag() == tag => Ok(one.contents().to_vec()),
        [one] => Err(invalid(format!("expected a '{tag}' PEM block, found '{}'", one.tag()))),
        [] => Err(invalid(format!("no '{tag}' PEM block found"))),
        many => Err(invalid(format!("expected one PEM block, found {}", many.len()))),
    }
}

enum Secret {
    Ed25519 {
        pair: Ed25519KeyPair,
        /// The PKCS#8 document the key was made from (v1 or v2); written back unchanged.
        pkcs8: Vec<u8>,
    },
    Sm2(Sm2Signer),
}

/// A private signing key (Ed25519 or SM2).
///
/// `Debug` shows only the algorithm and key id, never key material.
pub struct SigningKey {
    secret: Secret,
}

impl SigningKey {
    /// Generates a new Ed25519 key from 32 bytes of the operating system's CSPRNG.
    pub fn generate() -> Result<Self> {
        Self::generate_with(KeyAlgorithm::Ed25519)
    }

    /// Generates a new key of `alg` from the operating system's CSPRNG.
    pub fn generate_with(alg: KeyAlgorithm) -> Result<Self> {
        match alg {
            KeyAlgorithm::Ed25519 => {
                let seed = fsio::random_bytes::<32>("an Ed25519 key")?;
                let mut der = Vec::with_capacity(48);
                der.extend_from_slice(&PKCS8_V1_ED25519_PREFIX);
                der.extend_from_slice(&seed);
                Self::from_pkcs8_der(der, "a freshly generated seed")
            }
            KeyAlgorithm::Sm2 => {
                // A uniform 256-bit value is 0 or at least n with probability below 2^-32;
                // drawing again keeps the scalar uniform in [1, n-1].
                for _ in 0..64 {
                    let mut d = fsio::random_bytes::<32>("an SM2 key")?;
                    let made = Sm2Signer::from_scalar_bytes(&d);
                    d.fill(0);
                    std::hint::black_box(&d);
                    if let Ok(signer) = made {
                        return Ok(Self { secret: Secret::Sm2(signer) });
                    }
                }
                Err(ProvisionError::Rng { what: "an SM2 key (no scalar below the curve order in 64 draws)".into() })
            }
        }
    }

    /// Loads a key from a PKCS#8 DER document: Ed25519 (v1 or v2) or SM2.
    pub fn from_pkcs8_der(der: Vec<u8>, origin: &str) -> Result<Self> {
        let invalid = |reason: String| ProvisionError::InvalidKey {
            what: "private key".to_string(),
            origin: origin.to_string(),
            reason,
        };
        if der.len() > KEY_DER_LIMIT {
            return Err(invalid(format!("{} bytes of DER; a key is at most {KEY_DER_LIMIT}", der.len())));
        }
        let ed = match Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            Ok(pair) => return Ok(Self { secret: Secret::Ed25519 { pair, pkcs8: der } }),
            Err(e) => e,
        };
        match Sm2Signer::from_pkcs8_der(&der) {
            Ok(signer) => Ok(Self { secret: Secret::Sm2(signer) }),
            Err(sm2) => Err(invalid(format!("neither an Ed25519 PKCS#8 key ({ed}) nor an SM2 one ({sm2})"))),
        }
    }

    /// Loads a key from `PRIVATE KEY` PEM text.
    pub fn from_pkcs8_pem(text: &str, origin: &str) -> Result<Self> {
        let der = pem_decode(text, PRIVATE_PEM_TAG, "private key", origin)?;
        Self::from_pkcs8_der(der, origin)
    }

    /// Loads a key from a `PRIVATE KEY` PEM file.
    pub fn load_pem(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = fsio::read_text_capped(path, KEY_FILE_LIMIT, "private key")?;
        Self::from_pkcs8_pem(&text, &path.display().to_string())
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.secret {
            Secret::Ed25519 { .. } => KeyAlgorithm::Ed25519,
            Secret::Sm2(_) => KeyAlgorithm::Sm2,
        }
    }

    /// The key as `PRIVATE KEY` PEM (PKCS#8 v1 for Ed25519 keys made by [`SigningKey::generate`]).
    pub fn to_pkcs8_pem(&self) -> String {
        match &self.secret {
            Secret::Ed25519 { pkcs8, .. } => pem_encode(PRIVATE_PEM_TAG, pkcs8),
            Secret::Sm2(signer) => pem_encode(PRIVATE_PEM_TAG, signer.pkcs8_der()),
        }
    }

    /// Writes the key as PEM with mode 0600.
    pub fn write_pem(&self, path: &Path, overwrite: Overwrite) -> Result<()> {
        let what = format!("{} private key", self.algorithm().key_name());
        fsio::write_file(path, self.to_pkcs8_pem().as_bytes(), fsio::PRIVATE_FILE_MODE, overwrite, &what)
    }

    /// Signs `msg`: pure Ed25519 (RFC 8032, 64 bytes), or SM2 over SM3 with the default ID (DER).
    pub fn sign(&self, msg: &[u8]) -> Vec<u8> {
        match &self.secret {
            Secret::Ed25519 { pair, .. } => pair.sign(msg).as_ref().to_vec(),
            Secret::Sm2(signer) => signer.sign(msg),
        }
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        match &self.secret {
            Secret::Ed25519 { pair, .. } => {
                let mut raw = [0u8; 32];
                raw.copy_from_slice(pair.public_key().as_ref());
                PublicKey::from_raw(raw)
            }
            Secret::Sm2(signer) => PublicKey { material: Material::Sm2(signer.public_point()) },
        }
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.algorithm())
            .field("keyid", &self.public_key().keyid())
            .finish_non_exhaustive()
    }
}

impl Drop for SigningKey {
    fn drop(&mut self) {
        // Best effort: do not leave the seed in freed memory (the sm2 crate zeroes its own scalar).
        if let Secret::Ed25519 { pkcs8, .. } = &mut self.secret {
            pkcs8.fill(0);
            std::hint::black_box(&pkcs8);
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Material {
    Ed25519([u8; 32]),
    /// Checked to be an uncompressed point on the curve.
    Sm2([u8; SM2_PUBLIC_KEY_LEN]),
}

/// A public key (Ed25519 or SM2).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey {
    material: Material,
}

impl PublicKey {
    /// An Ed25519 key from its raw 32 bytes.
    pub fn from_raw(raw: [u8; 32]) -> Self {
        Self { material: Material::Ed25519(raw) }
    }

    /// A key of `alg` from its raw public bytes (32 for Ed25519; the 65-byte uncompressed point
    /// for SM2, checked to be on the curve). `origin` names the source in errors.
    pub fn from_raw_bytes(alg: KeyAlgorithm, bytes: &[u8], origin: &str) -> Result<Self> {
        let invalid = |reason: String| ProvisionError::InvalidKey {
            what: format!("{} public key", alg.key_name()),
            origin: origin.to_string(),
            reason,
        };
        match alg {
            KeyAlgorithm::Ed25519 => <[u8; 32]>::try_from(bytes)
                .map(Self::from_raw)
                .map_err(|_| invalid(format!("an Ed25519 public key is 32 bytes, got {}", bytes.len()))),
            KeyAlgorithm::Sm2 => Ok(Self { material: Material::Sm2(gm::check_point(bytes).map_err(invalid)?) }),
        }
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.material {
            Material::Ed25519(_) => KeyAlgorithm::Ed25519,
            Material::Sm2(_) => KeyAlgorithm::Sm2,
        }
    }

    /// The raw public bytes: 32 for Ed25519, the 65-byte uncompressed point for SM2.
    pub fn as_bytes(&self) -> &[u8] {
        match &self.material {
            Material::Ed25519(raw) => raw,
            Material::Sm2(point) => point,
        }
    }

    /// Parses a SubjectPublicKeyInfo DER document: Ed25519 or SM2.
    pub fn from_spki_der(der: &[u8], origin: &str) -> Result<Self> {
        if let Some(key) = der.strip_prefix(&SPKI_ED25519_PREFIX[..]) {
            return Self::from_raw_bytes(KeyAlgorithm::Ed25519, key, origin);
        }
        let reason = if der.len() > KEY_DER_LIMIT {
            format!("{} bytes of DER; a key is at most {KEY_DER_LIMIT}", der.len())
        } else {
            match gm::point_from_spki_der(der) {
                Ok(point) => return Ok(Self { material: Material::Sm2(point) }),
                Err(sm2) => format!("not an Ed25519 SubjectPublicKeyInfo (OID 1.3.101.112, 32-byte key), and {sm2}"),
            }
        };
        Err(ProvisionError::InvalidKey { what: "public key".to_string(), origin: origin.to_string(), reason })
    }

    /// Parses `PUBLIC KEY` PEM text. `origin` names the source in errors.
    pub fn from_spki_pem_at(text: &str, origin: &str) -> Result<Self> {
        let der = pem_decode(text, PUBLIC_PEM_TAG, "public key", origin)?;
        Self::from_spki_der(&der, origin)
    }

    /// Parses `PUBLIC KEY` PEM text.
    pub fn from_spki_pem(text: &str) -> Result<Self> {
        Self::from_spki_pem_at(text, "PEM text")
    }

    /// Loads a `PUBLIC KEY` PEM file.
    pub fn load_pem(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let text = fsio::read_text_capped(path, KEY_FILE_LIMIT, "public key")?;
        Self::from_spki_pem_at(&text, &path.display().to_string())
    }

    /// The SubjectPublicKeyInfo DER document.
    pub fn to_spki_der(&self) -> Vec<u8> {
        match &self.material {
            Material::Ed25519(raw) => {
                let mut der = Vec::with_capacity(44);
                der.extend_from_slice(&SPKI_ED25519_PREFIX);
                der.extend_from_slice(raw);
                der
            }
            // The point was checked on the curve when the key was made, so encoding cannot fail.
            Material::Sm2(point) => gm::spki_der(point).unwrap_or_default(),
        }
    }

    /// The key as `PUBLIC KEY` PEM.
    pub fn to_spki_pem(&self) -> String {
        pem_encode(PUBLIC_PEM_TAG, &self.to_spki_der())
    }

    /// Writes the key as PEM with mode 0644.
    pub fn write_pem(&self, path: &Path, overwrite: Overwrite) -> Result<()> {
        let what = format!("{} public key", self.algorithm().key_name());
        fsio::write_file(path, self.to_spki_pem().as_bytes(), fsio::PUBLIC_FILE_MODE, overwrite, &what)
    }

    /// The key id: lower-case hex SHA-256 of the raw public bytes ([`PublicKey::as_bytes`]).
    pub fn keyid(&self) -> String {
        fsio::hex(&fsio::sha256(self.as_bytes()))
    }

    /// The raw key as lower-case hex, as TUF's `keyval.public` holds it.
    pub fn to_hex(&self) -> String {
        fsio::hex(self.as_bytes())
    }

    /// Checks a signature of the key's own algorithm over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &[u8]) -> Result<()> {
        let bad = |reason: String| ProvisionError::BadSignature { keyid: self.keyid(), reason };
        match &self.material {
            Material::Ed25519(raw) => {
                if sig.len() != 64 {
                    return Err(bad(format!("an Ed25519 signature is 64 bytes, this one is {}", sig.len())));
                }
                UnparsedPublicKey::new(&ED25519, raw)
                    .verify(msg, sig)
                    .map_err(|_| bad("the signature does not match the message".to_string()))
            }
            Material::Sm2(point) => gm::verify(point, msg, sig).map_err(bad),
        }
    }

    /// Checks a signature whose format claims the algorithm `claimed`: refused with
    /// [`ProvisionError::AlgorithmMismatch`] unless it is the key's own, so that a signature is
    /// never checked under an algorithm the pinned key was not made for.
    pub fn verify_claimed(&self, claimed: KeyAlgorithm, msg: &[u8], sig: &[u8]) -> Result<()> {
        self.check_claim(claimed)?;
        self.verify(msg, sig)
    }

    /// Refuses a format's `alg` claim that is not this key's algorithm.
    pub fn check_claim(&self, claimed: KeyAlgorithm) -> Result<()> {
        if claimed == self.algorithm() {
            return Ok(());
        }
        Err(ProvisionError::AlgorithmMismatch { keyid: self.keyid(), claimed, key: self.algorithm() })
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} {})", self.algorithm(), self.keyid())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn ed_pkcs8(k: &SigningKey) -> &[u8] {
        match &k.secret {
            Secret::Ed25519 { pkcs8, .. } => pkcs8,
            Secret::Sm2(s) => s.pkcs8_der(),
        }
    }

    #[test]
    fn generated_key_is_pkcs8_v1_and_round_trips() {
        let k = SigningKey::generate().unwrap();
        assert_eq!(k.algorithm(), KeyAlgorithm::Ed25519);
        assert_eq!(ed_pkcs8(&k).len(), 48);
        assert_eq!(ed_pkcs8(&k)[..16], PKCS8_V1_ED25519_PREFIX);
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
        for alg in KeyAlgorithm::ALL {
            let a = SigningKey::generate_with(alg).unwrap();
            let b = SigningKey::generate_with(alg).unwrap();
            let sig = a.sign(b"msg");
            assert!(a.public_key().verify(b"msg", &sig).is_ok(), "{alg}");
            assert!(matches!(a.public_key().verify(b"msh", &sig), Err(ProvisionError::BadSignature { .. })));
            assert!(b.public_key().verify(b"msg", &sig).is_err(), "{alg}");
            assert!(a.public_key().verify(b"msg", &sig[..sig.len() - 1]).is_err(), "{alg}");
        }
    }

    #[test]
    fn sm2_keys_round_trip_and_name_their_algorithm() {
        let k = SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap();
        assert_eq!(k.algorithm(), KeyAlgorithm::Sm2);
        let pem = k.to_pkcs8_pem();
        let k2 = SigningKey::from_pkcs8_pem(&pem, "test").unwrap();
        assert_eq!(k2.public_key(), k.public_key());
        assert_eq!(k2.to_pkcs8_pem(), pem, "a loaded key is written back unchanged");
        let public = k.public_key();
        assert_eq!(public.algorithm(), KeyAlgorithm::Sm2);
        assert_eq!(public.as_bytes().len(), 65);
        assert_eq!(public.keyid(), fsio::hex(&fsio::sha256(public.as_bytes())));
        let back = PublicKey::from_spki_pem(&public.to_spki_pem()).unwrap();
        assert_eq!(back, public);
        assert_eq!(PublicKey::from_raw_bytes(KeyAlgorithm::Sm2, public.as_bytes(), "t").unwrap(), public);
        assert!(format!("{k:?}").contains("Sm2"));
        assert!(!format!("{k:?}").contains(&fsio::hex(k2.sign(b"x").as_slice())));
    }

    #[test]
    fn a_claimed_algorithm_must_be_the_keys_own() {
        let ed = SigningKey::generate().unwrap();
        let sm = SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap();
        let (ed_sig, sm_sig) = (ed.sign(b"m"), sm.sign(b"m"));
        ed.public_key().verify_claimed(KeyAlgorithm::Ed25519, b"m", &ed_sig).unwrap();
        sm.public_key().verify_claimed(KeyAlgorithm::Sm2, b"m", &sm_sig).unwrap();
        let e = ed.public_key().verify_claimed(KeyAlgorithm::Sm2, b"m", &sm_sig).unwrap_err();
        assert_eq!(e.code(), "algorithm_mismatch");
        assert!(e.to_string().contains("claims algorithm 'sm2' but the pinned key is ed25519"), "{e}");
        let e = sm.public_key().verify_claimed(KeyAlgorithm::Ed25519, b"m", &ed_sig).unwrap_err();
        assert!(e.to_string().contains("claims algorithm 'ed25519' but the pinned key is sm2"), "{e}");
        // Without the claim, a signature of the other kind simply does not verify.
        assert!(ed.public_key().verify(b"m", &sm_sig).is_err());
        assert!(sm.public_key().verify(b"m", &ed_sig).is_err());
    }

    #[test]
    fn signature_hex_is_size_limited_and_checked_per_algorithm() {
        let sm = SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap();
        let sig = sm.sign(b"m");
        let h = fsio::hex(&sig);
        assert_eq!(KeyAlgorithm::Sm2.decode_signature_hex(&h).unwrap(), sig);
        // One spelling: upper case is refused (a flipped case bit must not leave a signed
        // document verifying).
        assert!(KeyAlgorithm::Sm2.decode_signature_hex(&h.to_uppercase()).is_none());
        assert!(KeyAlgorithm::Ed25519.decode_signature_hex(&h).is_none());
        assert!(KeyAlgorithm::Sm2.decode_signature_hex(&format!("{h}00")).is_none());
        assert!(KeyAlgorithm::Sm2.decode_signature_hex(&"30".repeat(1000)).is_none());
        let ed = fsio::hex(&SigningKey::generate().unwrap().sign(b"m"));
        assert!(KeyAlgorithm::Ed25519.decode_signature_hex(&ed).is_some());
        assert!(KeyAlgorithm::Ed25519.decode_signature_hex(&ed.to_uppercase()).is_none());
        assert!(KeyAlgorithm::Sm2.decode_signature_hex(&ed).is_none());
        assert!(KeyAlgorithm::Ed25519.decode_signature_hex(&ed[..126]).is_none());
        assert_eq!("sm2".parse::<KeyAlgorithm>().unwrap(), KeyAlgorithm::Sm2);
        assert_eq!("rsa".parse::<KeyAlgorithm>().unwrap_err().code(), "unknown_algorithm");
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
        let sm = SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap().public_key();
        let mut der = sm.to_spki_der();
        let last = der.len() - 1;
        der[last] ^= 1; // the point leaves the curve
        let err = PublicKey::from_spki_der(&der, "t").unwrap_err();
        assert!(err.to_string().contains("not an SM2 SubjectPublicKeyInfo"), "{err}");
    }

    #[test]
    fn debug_does_not_print_key_material() {
        let k = SigningKey::generate().unwrap();
        let dbg = format!("{k:?}");
        assert!(dbg.contains(&k.public_key().keyid()));
        assert!(!dbg.contains(&fsio::hex(&ed_pkcs8(&k)[16..])));
    }
}
