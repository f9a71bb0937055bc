//! The crypto suite a box is provisioned with, and the hash functions it names.
//!
//! | suite | signatures (device, audit keys) | hashes (manifests, Merkle tree, measurements) | prompt/response HMAC | sealed content |
//! |---|---|---|---|---|
//! | `intl` | Ed25519 | SHA-256 | HMAC-SHA256 | AES-256-GCM |
//! | `gm` | SM2 with SM3, ID `1234567812345678` | SM3 | HMAC-SM3 | SM4-GCM |
//!
//! `govbox provision --suite` writes the suite to `identity/suite` (one word and a newline); every
//! component reads it from there ([`Suite::load`]) and checks the keys it loads against it, so a
//! box never mixes suites silently. A state folder without the file was provisioned before suites
//! existed and is `intl`.

use std::fmt;
use std::path::Path;
use std::str::FromStr;

use crate::error::{ProvisionError, Result};
use crate::fsio;
use crate::gm::Sm3Hasher;
use crate::keys::KeyAlgorithm;
use crate::paths::StatePaths;

/// The largest `identity/suite` file read: it holds one short word.
const SUITE_FILE_LIMIT: u64 = 64;

/// A crypto suite.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Suite {
    /// Ed25519, SHA-256, HMAC-SHA256, AES-256-GCM: the default.
    #[default]
    Intl,
    /// The national algorithms (国密): SM2 with SM3, SM3, HMAC-SM3, SM4-GCM.
    Gm,
}

impl Suite {
    /// Every suite.
    pub const ALL: [Suite; 2] = [Suite::Intl, Suite::Gm];

    /// `intl` or `gm`.
    pub fn as_str(self) -> &'static str {
        match self {
            Suite::Intl => "intl",
            Suite::Gm => "gm",
        }
    }

    /// The algorithm of the box's own signing keys (device and audit).
    pub fn signature_algorithm(self) -> KeyAlgorithm {
        match self {
            Suite::Intl => KeyAlgorithm::Ed25519,
            Suite::Gm => KeyAlgorithm::Sm2,
        }
    }

    /// The hash of manifests, the audit Merkle tree, measurements and the prompt/response HMAC.
    pub fn hash_algorithm(self) -> HashAlgorithm {
        match self {
            Suite::Intl => HashAlgorithm::Sha256,
            Suite::Gm => HashAlgorithm::Sm3,
        }
    }

    /// The suite whose device and audit keys are of `alg`.
    pub fn of_key(alg: KeyAlgorithm) -> Suite {
        match alg {
            KeyAlgorithm::Sm2 => Suite::Gm,
            _ => Suite::Intl,
        }
    }

    /// Reads the suite of a provisioned state folder (`identity/suite`; absent means `intl`).
    pub fn load(paths: &StatePaths) -> Result<Suite> {
        Self::load_file(&paths.suite_file())
    }

    /// Reads a suite file; absent means `intl` (a box provisioned before suites).
    pub fn load_file(path: &Path) -> Result<Suite> {
        if path.symlink_metadata().is_err() {
            return Ok(Suite::Intl);
        }
        let text = fsio::read_text_capped(path, SUITE_FILE_LIMIT, "crypto suite")?;
        text.trim_end_matches('\n').parse().map_err(|_| ProvisionError::InvalidSuiteFile {
            path: path.to_path_buf(),
            reason: format!("holds '{}', not 'intl' or 'gm'", text.trim().chars().take(16).collect::<String>()),
        })
    }

    /// Refuses a key of another algorithm than this suite's: `what` names the key in the error.
    pub fn check_key(self, what: &str, alg: KeyAlgorithm) -> Result<()> {
        if alg == self.signature_algorithm() {
            return Ok(());
        }
        Err(ProvisionError::SuiteMismatch {
            what: what.to_string(),
            suite: self,
            expected: self.signature_algorithm(),
            found: alg,
        })
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Suite {
    type Err = ProvisionError;

    fn from_str(s: &str) -> Result<Self> {
        Suite::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| ProvisionError::UnknownSuite { value: s.chars().take(32).collect() })
    }
}

/// A 256-bit hash function, as formats name it in their `hash` fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum HashAlgorithm {
    /// SHA-256 (FIPS 180-4).
    #[default]
    Sha256,
    /// SM3 (GB/T 32905-2016).
    Sm3,
}

impl HashAlgorithm {
    /// Every hash algorithm.
    pub const ALL: [HashAlgorithm; 2] = [HashAlgorithm::Sha256, HashAlgorithm::Sm3];

    /// `sha256` or `sm3`.
    pub fn as_str(self) -> &'static str {
        match self {
            HashAlgorithm::Sha256 => "sha256",
            HashAlgorithm::Sm3 => "sm3",
        }
    }

    /// Parses a `hash` name.
    pub fn parse(s: &str) -> Option<HashAlgorithm> {
        HashAlgorithm::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// A digest label (`sha256-<hex>`, `sm3-<hex>`: how packages are named) without its
    /// algorithm; anything else as it is.
    pub fn strip_label(label: &str) -> &str {
        HashAlgorithm::ALL
            .into_iter()
            .find_map(|a| label.strip_prefix(a.as_str()).and_then(|rest| rest.strip_prefix('-')))
            .unwrap_or(label)
    }

    /// Whether this is the default (`sha256`), which formats made before SM3 leave unnamed.
    pub fn is_default(&self) -> bool {
        *self == HashAlgorithm::Sha256
    }

    /// The digest of `bytes`.
    pub fn digest(self, bytes: &[u8]) -> [u8; 32] {
        let mut h = self.hasher();
        h.update(bytes);
        h.finish()
    }

    /// A streaming digest.
    pub fn hasher(self) -> Hasher {
        match self {
            HashAlgorithm::Sha256 => Hasher::Sha256(ring::digest::Context::new(&ring::digest::SHA256)),
            HashAlgorithm::Sm3 => Hasher::Sm3(Sm3Hasher::new()),
        }
    }
}

impl fmt::Display for HashAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HashAlgorithm {
    type Err = ProvisionError;

    fn from_str(s: &str) -> Result<Self> {
        HashAlgorithm::parse(s).ok_or_else(|| ProvisionError::UnknownHash { value: s.chars().take(32).collect() })
    }
}

impl serde::Serialize for HashAlgorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for HashAlgorithm {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        HashAlgorithm::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown hash '{s}'; expected 'sha256' or 'sm3'")))
    }
}

/// A digest being computed piece by piece.
#[derive(Clone)]
pub enum Hasher {
    /// SHA-256 through ring.
    Sha256(ring::digest::Context),
    /// SM3 through RustCrypto's `sm3`.
    Sm3(Sm3Hasher),
}

impl Hasher {
    /// Feeds more bytes.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(c) => c.update(bytes),
            Hasher::Sm3(h) => h.update(bytes),
        }
    }

    /// The digest of everything fed.
    pub fn finish(self) -> [u8; 32] {
        match self {
            Hasher::Sha256(c) => {
                let mut out = [0u8; 32];
                out.copy_from_slice(c.finish().as_ref());
                out
            }
            Hasher::Sm3(h) => h.finish(),
        }
    }
}

impl fmt::Debug for Hasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Hasher::Sha256(_) => "Hasher(sha256)",
            Hasher::Sm3(_) => "Hasher(sm3)",
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::fsio::hex;

    #[test]
    fn suites_name_their_algorithms_and_parse_back() {
        for s in Suite::ALL {
            assert_eq!(s.as_str().parse::<Suite>().unwrap(), s);
        }
        assert_eq!(Suite::Gm.signature_algorithm(), KeyAlgorithm::Sm2);
        assert_eq!(Suite::Gm.hash_algorithm(), HashAlgorithm::Sm3);
        assert_eq!(Suite::Intl.hash_algorithm(), HashAlgorithm::Sha256);
        assert!("GM".parse::<Suite>().unwrap_err().to_string().contains("'GM'"));
        assert!(Suite::Gm.check_key("audit key", KeyAlgorithm::Ed25519).is_err());
        Suite::Gm.check_key("audit key", KeyAlgorithm::Sm2).unwrap();
    }

    #[test]
    fn a_digest_label_loses_only_a_known_algorithm() {
        assert_eq!(HashAlgorithm::strip_label("sha256-ab01"), "ab01");
        assert_eq!(HashAlgorithm::strip_label("sm3-ab01"), "ab01");
        assert_eq!(HashAlgorithm::strip_label("ab01"), "ab01");
        assert_eq!(HashAlgorithm::strip_label("md5-ab01"), "md5-ab01");
        assert_eq!(HashAlgorithm::strip_label("sm3ab01"), "sm3ab01");
    }

    #[test]
    fn hashes_match_the_standard_examples() {
        // GB/T 32905-2016 Appendix A example 1; FIPS 180-2 "abc".
        assert_eq!(
            hex(&HashAlgorithm::Sm3.digest(b"abc")),
            "66c7f0f462eeedd9d1f2d46bdc10e4e24167c4875cf2f7a2297da02b8f4ba8e0"
        );
        assert_eq!(
            hex(&HashAlgorithm::Sha256.digest(b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let mut h = HashAlgorithm::Sm3.hasher();
        h.update(b"a");
        h.update(b"bc");
        assert_eq!(h.finish(), HashAlgorithm::Sm3.digest(b"abc"));
        assert_eq!(serde_json::to_string(&HashAlgorithm::Sm3).unwrap(), "\"sm3\"");
        assert!(serde_json::from_str::<HashAlgorithm>("\"md5\"").unwrap_err().to_string().contains("md5"));
    }

    #[test]
    fn the_suite_file_is_read_strictly() {
        let tmp = tempfile::tempdir().unwrap();
        let p = tmp.path().join("suite");
        assert_eq!(Suite::load_file(&p).unwrap(), Suite::Intl, "absent: provisioned before suites");
        std::fs::write(&p, "gm\n").unwrap();
        assert_eq!(Suite::load_file(&p).unwrap(), Suite::Gm);
        std::fs::write(&p, "sm\n").unwrap();
        let e = Suite::load_file(&p).unwrap_err();
        assert!(e.to_string().contains(&p.display().to_string()) && e.to_string().contains("'sm'"), "{e}");
        std::fs::write(&p, "g".repeat(100)).unwrap();
        assert!(Suite::load_file(&p).is_err());
    }
}
