//! Bearer tokens: made once, shown once, stored only as a SHA-256 hash.
//!
//! A token is `gbx_` followed by 32 random bytes in unpadded base64url (43 characters). Its
//! 256 bits of entropy make a plain SHA-256 safe to store: there is nothing to brute-force.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;
use ring::rand::SystemRandom;

use crate::error::Result;
use crate::fsio;

/// The prefix of every token, so that a leaked token is easy to recognise in a scan.
pub const TOKEN_PREFIX: &str = "gbx_";
/// Presented tokens longer than this are rejected before hashing.
pub const MAX_TOKEN_LEN: usize = 256;

/// A freshly made bearer token. `Debug` and `Display` do not show it; use [`BearerToken::expose`]
/// exactly once, to print it for the operator.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerToken(String);

impl BearerToken {
    /// Makes a new token from 32 bytes of the system CSPRNG.
    pub fn generate() -> Result<Self> {
        let bytes = fsio::random_bytes::<32>("a bearer token")?;
        Ok(BearerToken(format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(bytes))))
    }

    /// The token text.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The value stored for this token.
    pub fn sha256_hex(&self) -> String {
        token_sha256_hex(&self.0)
    }
}

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("BearerToken(<redacted>)")
    }
}

/// Lower-case hex SHA-256 of a token's UTF-8 bytes.
pub fn token_sha256_hex(token: &str) -> String {
    fsio::hex(&fsio::sha256(token.as_bytes()))
}

/// Compares two byte strings in time that does not depend on where they differ.
///
/// ring 0.17 deprecated its `constant_time` module, so this uses `hmac::verify`, ring's supported
/// constant-time comparison: `a` is MACed under a key that exists only in this process, and the
/// MAC of `b` is checked against it. An attacker who times the comparison learns nothing about
/// `a`, because they cannot predict either MAC.
pub(crate) struct ConstantTimeEq {
    key: hmac::Key,
}

impl ConstantTimeEq {
    pub(crate) fn new() -> Option<Self> {
        hmac::Key::generate(hmac::HMAC_SHA256, &SystemRandom::new()).ok().map(|key| ConstantTimeEq { key })
    }

    pub(crate) fn eq(&self, a: &[u8], b: &[u8]) -> bool {
        let tag = hmac::sign(&self.key, a);
        hmac::verify(&self.key, b, tag.as_ref()).is_ok()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn tokens_have_the_documented_shape_and_differ() {
        let a = BearerToken::generate().unwrap();
        let b = BearerToken::generate().unwrap();
        assert!(a.expose().starts_with("gbx_"));
        assert_eq!(a.expose().len(), 4 + 43);
        assert!(a.expose()[4..].bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "BearerToken(<redacted>)");
    }

    #[test]
    fn token_hash_is_sha256_hex_of_the_text() {
        // SHA-256("abc"), FIPS 180-2 appendix B.1.
        assert_eq!(token_sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let t = BearerToken::generate().unwrap();
        assert_eq!(t.sha256_hex(), token_sha256_hex(t.expose()));
        assert!(!t.sha256_hex().contains(&t.expose()[4..]));
    }

    #[test]
    fn constant_time_eq_compares() {
        let c = ConstantTimeEq::new().unwrap();
        assert!(c.eq(b"same", b"same"));
        assert!(!c.eq(b"same", b"sama"));
        assert!(!c.eq(b"same", b"sam"));
        assert!(!c.eq(b"", b"x"));
    }
}
