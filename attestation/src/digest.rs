//! File digests (SHA-256 or SM3), lower-case hex and the verifier's nonce.

use std::io::Read;
use std::path::Path;

use govbox_provisioning::{HashAlgorithm, HexCase, unhex_vec};

use crate::AttestError;

/// Lower-case hex (the workspace's one encoder, in `govbox_provisioning`).
pub use govbox_provisioning::hex as to_hex;

/// Hex SHA-256 of `bytes`.
pub fn sha256_bytes(bytes: &[u8]) -> String {
    to_hex(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// Hex SHA-256 of a file's bytes, read as a stream (a binary may be hundreds of MB). `what` names
/// the file in the error.
pub fn sha256_file(path: &Path, what: &'static str) -> Result<String, AttestError> {
    digest_file(HashAlgorithm::Sha256, path, what)
}

/// Hex digest under `hash` (SHA-256 or SM3) of a file's bytes, read as a stream.
pub fn digest_file(hash: HashAlgorithm, path: &Path, what: &'static str) -> Result<String, AttestError> {
    let err = |source| AttestError::Measure { what, path: path.to_path_buf(), source };
    let mut file = std::fs::File::open(path).map_err(err)?;
    let mut ctx = hash.hasher();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(err(e)),
        };
        ctx.update(&buf[..n]);
    }
    Ok(to_hex(&ctx.finish()))
}

/// The verifier's nonce: 16 to 64 bytes, held as lower-case hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nonce {
    hex: String,
    bytes: Vec<u8>,
}

impl Nonce {
    /// Fewest bytes: 128 bits make a guessed or replayed nonce hopeless.
    pub const MIN_BYTES: usize = 16;
    /// Most bytes.
    pub const MAX_BYTES: usize = 64;

    /// Parses hex (either case) of 16 to 64 bytes.
    pub fn parse(text: &str) -> Result<Self, AttestError> {
        let bad = |reason| AttestError::InvalidNonce { nonce: text.chars().take(140).collect(), reason };
        if !text.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("not hex"));
        }
        if !text.len().is_multiple_of(2) {
            return Err(bad("an odd number of hex digits"));
        }
        let n = text.len() / 2;
        if !(Self::MIN_BYTES..=Self::MAX_BYTES).contains(&n) {
            return Err(bad("must be 16 to 64 bytes (32 to 128 hex digits)"));
        }
        let bytes = unhex_vec(text, HexCase::Either).ok_or_else(|| bad("not hex"))?;
        Ok(Self { hex: to_hex(&bytes), bytes })
    }

    /// Lower-case hex.
    pub fn as_hex(&self) -> &str {
        &self.hex
    }

    /// The raw bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonce_bounds_and_case() {
        assert_eq!(Nonce::parse(&"AB".repeat(16)).unwrap().as_hex(), "ab".repeat(16));
        assert_eq!(Nonce::parse(&"0f".repeat(16)).unwrap().to_bytes(), vec![0x0f; 16]);
        assert!(Nonce::parse(&"ab".repeat(15)).is_err());
        assert!(Nonce::parse(&"ab".repeat(65)).is_err());
        assert!(Nonce::parse(&format!("{}a", "ab".repeat(16))).is_err());
        let e = Nonce::parse(&format!("{}zz", "ab".repeat(16))).unwrap_err();
        assert_eq!(e.code(), "invalid_nonce");
        assert!(e.to_string().contains("not hex"), "{e}");
    }

    #[test]
    fn sha256_known_answer() {
        assert_eq!(sha256_bytes(b"abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        assert_eq!(sha256_file(&p, "test file").unwrap(), sha256_bytes(b"abc"));
        let e = sha256_file(&dir.path().join("missing"), "config file").unwrap_err();
        assert!(e.to_string().starts_with("measuring config file "), "{e}");
    }
}
