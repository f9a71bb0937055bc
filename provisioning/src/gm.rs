//! The national (国密) primitives behind [`crate::keys`]: SM2 signatures with SM3 and the default
//! distinguishing ID, and SM3 digests, through RustCrypto's `sm2` and `sm3` crates.
//!
//! - An SM2 public key is its uncompressed SEC 1 point, `04 || x || y` (65 bytes); a compressed
//!   point is refused so that one key has one byte form, and so one key id.
//! - Keys on disk are what OpenSSL 3 writes and reads for SM2: a private key is PKCS#8 (RFC 5208)
//!   and a public key SubjectPublicKeyInfo (RFC 5480), both with algorithm `id-ecPublicKey` and
//!   the curve OID `1.2.156.10197.1.301` (GM/T 0006).
//! - A signature is SM2 over SM3 (GB/T 32918.2) with ID `1234567812345678` (GM/T 0009 §10, the
//!   ID every SM2 tool uses unless told otherwise), encoded as the DER `SEQUENCE { r, s }` of
//!   GM/T 0009 §7.3 that `openssl pkeyutl -verify` reads. Signing is deterministic (RFC 6979 in
//!   the crate), so the same key signs the same message identically.

use sm2::dsa::signature::{Signer as _, Verifier as _};
use sm2::elliptic_curve::sec1::ToSec1Point as _;
use sm2::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _, EncodePrivateKey as _, EncodePublicKey as _};
use sm3::Digest as _;

/// The distinguishing ID of GM/T 0009 §10 (ENTL = 128 bits), used for every govbox SM2 signature.
pub const SM2_DEFAULT_ID: &str = "1234567812345678";

/// An uncompressed SM2 point: `04 || x || y`.
pub const SM2_PUBLIC_KEY_LEN: usize = 65;

/// The longest DER signature: `30 46 02 21 00 r(32) 02 21 00 s(32)`.
pub const SM2_SIGNATURE_MAX_DER_LEN: usize = 72;

/// Why an SM2 operation failed, in words for the caller's error.
pub(crate) type Reason = String;

/// An SM2 private key ready to sign with the default ID.
pub(crate) struct Sm2Signer {
    key: sm2::dsa::SigningKey,
    point: [u8; SM2_PUBLIC_KEY_LEN],
    /// The PKCS#8 document: the one loaded (written back unchanged), or the crate's encoding.
    pkcs8: Vec<u8>,
}

impl Sm2Signer {
    /// The key whose secret scalar is the 32 big-endian bytes `d` (refused when 0 or >= n).
    pub(crate) fn from_scalar_bytes(d: &[u8; 32]) -> Result<Self, Reason> {
        let secret = sm2::SecretKey::from_slice(d).map_err(|_| "the scalar is 0 or not below the curve order")?;
        let pkcs8 = secret.to_pkcs8_der().map_err(|e| format!("encoding the SM2 key as PKCS#8: {e}"))?;
        Self::from_secret(&secret, pkcs8.as_bytes().to_vec())
    }

    /// Parses a PKCS#8 document with the SM2 curve.
    pub(crate) fn from_pkcs8_der(der: &[u8]) -> Result<Self, Reason> {
        let secret = sm2::SecretKey::from_pkcs8_der(der)
            .map_err(|e| format!("not an SM2 PKCS#8 key (id-ecPublicKey with curve 1.2.156.10197.1.301): {e}"))?;
        Self::from_secret(&secret, der.to_vec())
    }

    fn from_secret(secret: &sm2::SecretKey, pkcs8: Vec<u8>) -> Result<Self, Reason> {
        let key = sm2::dsa::SigningKey::new(SM2_DEFAULT_ID, secret).map_err(|e| format!("unusable SM2 key: {e}"))?;
        let point = uncompressed(&secret.public_key())?;
        Ok(Self { key, point, pkcs8 })
    }

    /// The PKCS#8 DER document (as OpenSSL writes an SM2 key).
    pub(crate) fn pkcs8_der(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The public key as an uncompressed point.
    pub(crate) fn public_point(&self) -> [u8; SM2_PUBLIC_KEY_LEN] {
        self.point
    }

    /// Signs `msg`: SM2 over SM3(Z_A || msg) with the default ID, DER-encoded.
    pub(crate) fn sign(&self, msg: &[u8]) -> Vec<u8> {
        let sig: sm2::dsa::Signature = self.key.sign(msg);
        sig.to_der().to_bytes().to_vec()
    }
}

impl Drop for Sm2Signer {
    fn drop(&mut self) {
        // Best effort: do not leave the private scalar in freed memory (the crate zeroes its own).
        self.pkcs8.fill(0);
        std::hint::black_box(&self.pkcs8);
    }
}

fn uncompressed(key: &sm2::PublicKey) -> Result<[u8; SM2_PUBLIC_KEY_LEN], Reason> {
    let point = key.to_sec1_point(false);
    <[u8; SM2_PUBLIC_KEY_LEN]>::try_from(point.as_bytes())
        .map_err(|_| format!("the point is {} bytes, not an uncompressed 65-byte point", point.as_bytes().len()))
}

/// Checks that `bytes` is an uncompressed point on the SM2 curve (and not the identity).
pub(crate) fn check_point(bytes: &[u8]) -> Result<[u8; SM2_PUBLIC_KEY_LEN], Reason> {
    if bytes.len() != SM2_PUBLIC_KEY_LEN || bytes[0] != 0x04 {
        return Err(format!(
            "an SM2 public key is an uncompressed point of 65 bytes starting 04, got {} bytes",
            bytes.len()
        ));
    }
    let key = sm2::PublicKey::from_sec1_bytes(bytes).map_err(|_| "the point is not on the SM2 curve".to_string())?;
    uncompressed(&key)
}

/// Parses a SubjectPublicKeyInfo with the SM2 curve into its uncompressed point.
pub(crate) fn point_from_spki_der(der: &[u8]) -> Result<[u8; SM2_PUBLIC_KEY_LEN], Reason> {
    let key = sm2::PublicKey::from_public_key_der(der)
        .map_err(|e| format!("not an SM2 SubjectPublicKeyInfo (id-ecPublicKey, curve 1.2.156.10197.1.301): {e}"))?;
    uncompressed(&key)
}

/// The SubjectPublicKeyInfo DER of an uncompressed point already checked by [`check_point`].
pub(crate) fn spki_der(point: &[u8; SM2_PUBLIC_KEY_LEN]) -> Result<Vec<u8>, Reason> {
    let key = sm2::PublicKey::from_sec1_bytes(point).map_err(|_| "the point is not on the SM2 curve".to_string())?;
    let doc = key.to_public_key_der().map_err(|e| format!("encoding the SM2 public key: {e}"))?;
    Ok(doc.as_bytes().to_vec())
}

/// Whether `sig` is a strict-DER SM2 signature of at most [`SM2_SIGNATURE_MAX_DER_LEN`] bytes
/// with `r` and `s` in `[1, n-1]`.
pub(crate) fn signature_is_well_formed(sig: &[u8]) -> bool {
    sig.len() <= SM2_SIGNATURE_MAX_DER_LEN && sm2::dsa::Signature::from_der(sig).is_ok()
}

/// Verifies a DER SM2 signature over `msg` with the default ID.
pub(crate) fn verify(point: &[u8; SM2_PUBLIC_KEY_LEN], msg: &[u8], sig: &[u8]) -> Result<(), Reason> {
    if sig.len() > SM2_SIGNATURE_MAX_DER_LEN {
        return Err(format!(
            "an SM2 signature is at most {SM2_SIGNATURE_MAX_DER_LEN} DER bytes, this one is {}",
            sig.len()
        ));
    }
    let sig = sm2::dsa::Signature::from_der(sig)
        .map_err(|_| "not a DER SM2 signature (SEQUENCE of two INTEGERs in [1, n-1])".to_string())?;
    let key = sm2::dsa::VerifyingKey::from_sec1_bytes(SM2_DEFAULT_ID, point)
        .map_err(|_| "the public key is not on the SM2 curve".to_string())?;
    key.verify(msg, &sig).map_err(|_| "the signature does not match the message".to_string())
}

/// The SM3 digest (GB/T 32905) of `bytes`.
pub fn sm3(bytes: &[u8]) -> [u8; 32] {
    sm3::Sm3::digest(bytes).into()
}

/// A streaming SM3 digest, for files too large to hold.
#[derive(Clone, Default)]
pub struct Sm3Hasher(sm3::Sm3);

impl Sm3Hasher {
    /// A fresh digest.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of everything fed.
    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

impl std::fmt::Debug for Sm3Hasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sm3Hasher")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::fsio::{HexCase, hex, unhex};

    /// GB/T 32905-2016 Appendix A, examples 1 and 2.
    #[test]
    fn sm3_matches_the_standard_examples() {
        assert_eq!(hex(&sm3(b"abc")), "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0");
        let sixty_four = b"abcd".repeat(16);
        assert_eq!(hex(&sm3(&sixty_four)), "debe9ff92275b8a138604889c18e5a4d6fdb70e5387e5765293dcba39c0c5732");
        let mut h = Sm3Hasher::new();
        for chunk in sixty_four.chunks(7) {
            h.update(chunk);
        }
        assert_eq!(h.finish(), sm3(&sixty_four));
    }

    // GB/T 32918.5-2017 (GM/T 0003.5-2012) Appendix A: the signature example on the recommended
    // curve, message "message digest", ID "1234567812345678".
    const STD_D: &str = "3945208f7b2144b13f36e38ac6d39f95889393692860b51a42fb81ef4df7c5b8";
    const STD_X: &str = "09f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020";
    const STD_Y: &str = "ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13";
    const STD_R: &str = "f5a03b0648d2c4630eeac513e1bb81a15944da3827d5b74143ac7eaceee720b3";
    const STD_S: &str = "b1b6aa29df212fd8763182bc0d421ca1bb9038fd1f7f42d4840b69c485bbc1aa";

    fn std_point() -> [u8; 65] {
        let mut p = [0u8; 65];
        p[0] = 4;
        p[1..33].copy_from_slice(&unhex::<32>(STD_X, HexCase::Lower).unwrap());
        p[33..].copy_from_slice(&unhex::<32>(STD_Y, HexCase::Lower).unwrap());
        p
    }

    fn der(r: &[u8; 32], s: &[u8; 32]) -> Vec<u8> {
        sm2::dsa::Signature::from_scalars(*r, *s).unwrap().to_der().to_bytes().to_vec()
    }

    #[test]
    fn sm2_standard_example_key_and_signature() {
        let signer = Sm2Signer::from_scalar_bytes(&unhex::<32>(STD_D, HexCase::Lower).unwrap()).unwrap();
        assert_eq!(signer.public_point(), std_point(), "d_A * G is the standard's public key");
        let (r, s) = (unhex::<32>(STD_R, HexCase::Lower).unwrap(), unhex::<32>(STD_S, HexCase::Lower).unwrap());
        let sig = der(&r, &s);
        verify(&std_point(), b"message digest", &sig).unwrap();
        assert!(verify(&std_point(), b"message digesT", &sig).is_err());
        let mut s2 = s;
        s2[31] ^= 1;
        assert!(verify(&std_point(), b"message digest", &der(&r, &s2)).is_err());
        // Our own signature over the same message verifies too, and is deterministic.
        let ours = signer.sign(b"message digest");
        verify(&std_point(), b"message digest", &ours).unwrap();
        assert_eq!(ours, signer.sign(b"message digest"));
    }

    #[test]
    fn sm2_keys_round_trip_through_pkcs8_and_spki() {
        let signer = Sm2Signer::from_scalar_bytes(&unhex::<32>(STD_D, HexCase::Lower).unwrap()).unwrap();
        let back = Sm2Signer::from_pkcs8_der(signer.pkcs8_der()).unwrap();
        assert_eq!(back.public_point(), signer.public_point());
        let spki = spki_der(&signer.public_point()).unwrap();
        // id-ecPublicKey and the SM2 curve OID are both in the document.
        let sm2_oid = [0x06, 0x08, 0x2a, 0x81, 0x1c, 0xcf, 0x55, 0x01, 0x82, 0x2d];
        assert!(spki.windows(sm2_oid.len()).any(|w| w == sm2_oid));
        assert_eq!(point_from_spki_der(&spki).unwrap(), signer.public_point());
    }

    #[test]
    fn malformed_points_and_signatures_are_refused() {
        let p = std_point();
        let mut off_curve = p;
        off_curve[64] ^= 1;
        assert!(check_point(&off_curve).unwrap_err().contains("not on the SM2 curve"));
        assert!(check_point(&p[..33]).unwrap_err().contains("65 bytes"));
        assert_eq!(check_point(&p).unwrap(), p);
        let sig = Sm2Signer::from_scalar_bytes(&[7u8; 32]).unwrap().sign(b"m");
        assert!(signature_is_well_formed(&sig));
        assert!(!signature_is_well_formed(&sig[..sig.len() - 1]));
        let mut long = sig.clone();
        long.push(0);
        assert!(!signature_is_well_formed(&long), "trailing bytes after the DER sequence");
        assert!(!signature_is_well_formed(&[0x30; 80]));
        assert!(Sm2Signer::from_scalar_bytes(&[0u8; 32]).is_err());
        assert!(Sm2Signer::from_scalar_bytes(&[0xff; 32]).is_err());
    }
}
