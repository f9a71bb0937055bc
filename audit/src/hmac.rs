//! HMAC under the box's audit secret: how prompts and responses appear in the log. The hash is
//! the box's suite's (`identity/suite`): HMAC-SHA256 (RFC 2104 over FIPS 180-4, through ring) on
//! an `intl` box, HMAC-SM3 (RFC 2104 over GB/T 32905, RustCrypto's `hmac` over `sm3`) on a `gm`
//! box; [`HmacKey::load`] reads both the secret and the suite.
//!
//! A bare SHA-256 of a short prompt could be brute-forced by anyone holding an export; the keyed
//! hash can only be recomputed on the box (the admin socket's `audit_hmac` command), so an
//! auditor can ask "was this exact text sent?" without the log ever holding the text.
//!
//! Prompts and responses are keyed per client ([`HmacKey::client_hmac`]): the same text sent by
//! two clients has two unrelated hashes, so whoever reads the log cannot link clients by what
//! they asked. The HMAC is over an unambiguous encoding of the client and the text:
//!
//! ```text
//! "govbox-client-hmac/1" 0x00 ‖ length of the client name, 4 bytes big-endian ‖ client name (UTF-8) ‖ text
//! ```
//!
//! The length prefix means no (client, text) pair can be read as another; an auditor proves a
//! text with `govbox audit hmac --client NAME --text ...`.

use std::path::Path;

use ::hmac::Mac as _;
use govbox_provisioning::{HashAlgorithm, StatePaths, Suite};
use ring::hmac;

use crate::error::Result;
use crate::log::read_hmac_secret;
use crate::sth::to_hex;

type HmacSm3 = ::hmac::Hmac<sm3::Sm3>;

#[derive(Clone)]
enum Key {
    Sha256(hmac::Key),
    Sm3(HmacSm3),
}

/// The audit secret as an HMAC key of the box's suite. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct HmacKey(Key);

impl HmacKey {
    /// An HMAC-SHA256 key (the `intl` suite) from the 32-byte secret (`identity/audit-hmac.key`).
    pub fn new(secret: &[u8; 32]) -> Self {
        Self::with_hash(HashAlgorithm::Sha256, secret)
    }

    /// An HMAC key over `hash` from the 32-byte secret.
    pub fn with_hash(hash: HashAlgorithm, secret: &[u8; 32]) -> Self {
        match hash {
            HashAlgorithm::Sm3 => {
                // HMAC takes keys of any length (RFC 2104 §2), so this cannot fail.
                let mac = <HmacSm3 as ::hmac::KeyInit>::new_from_slice(secret)
                    .unwrap_or_else(|_| unreachable!("HMAC accepts a key of any length"));
                Self(Key::Sm3(mac))
            }
            _ => Self(Key::Sha256(hmac::Key::new(hmac::HMAC_SHA256, secret))),
        }
    }

    /// The key of a provisioned state folder: its secret, under its suite's hash.
    pub fn load(paths: &StatePaths) -> Result<Self> {
        let suite = Suite::load(paths)?;
        Ok(Self::with_hash(suite.hash_algorithm(), &read_hmac_secret(&paths.audit_hmac_key())?))
    }

    /// Like [`HmacKey::load`], for a state folder given by path.
    pub fn load_state(state_dir: &Path) -> Result<Self> {
        Self::load(&StatePaths::new(state_dir))
    }

    /// The hash this key's HMACs are over.
    pub fn hash(&self) -> HashAlgorithm {
        match self.0 {
            Key::Sha256(_) => HashAlgorithm::Sha256,
            Key::Sm3(_) => HashAlgorithm::Sm3,
        }
    }

    /// The HMAC of `bytes`, lower-case hex.
    pub fn hmac(&self, bytes: &[u8]) -> String {
        let mut s = self.stream();
        s.update(bytes);
        s.finish()
    }

    /// An incremental HMAC, for text that arrives in pieces (a streamed answer).
    pub fn stream(&self) -> HmacStream {
        HmacStream(match &self.0 {
            Key::Sha256(k) => Stream::Sha256(hmac::Context::with_key(k)),
            Key::Sm3(m) => Stream::Sm3(m.clone()),
        })
    }

    /// The HMAC of `text` sent by or to `client` (see the module documentation), lower-case hex.
    pub fn client_hmac(&self, client: &str, text: &[u8]) -> String {
        let mut s = self.stream().for_client(client);
        s.update(text);
        s.finish()
    }
}

/// What precedes the client name in a per-client HMAC's message.
const CLIENT_HMAC_CONTEXT: &[u8] = b"govbox-client-hmac/1\0";

impl std::fmt::Debug for HmacKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacKey(..)")
    }
}

enum Stream {
    Sha256(hmac::Context),
    Sm3(HmacSm3),
}

/// An HMAC being computed piece by piece.
pub struct HmacStream(Stream);

impl HmacStream {
    /// Adds the next piece.
    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.0 {
            Stream::Sha256(c) => c.update(bytes),
            Stream::Sm3(m) => m.update(bytes),
        }
    }

    /// Starts the message of a per-client HMAC for `client` (see the module documentation); the
    /// text follows with [`HmacStream::update`]. Call it first, on a fresh stream.
    pub fn for_client(mut self, client: &str) -> Self {
        // Client names are at most 63 bytes (ClientName); a longer one would still be encoded
        // exactly, as its length fits 4 bytes for anything a process can hold in a String here.
        let len = u32::try_from(client.len()).unwrap_or(u32::MAX);
        self.update(CLIENT_HMAC_CONTEXT);
        self.update(&len.to_be_bytes());
        self.update(client.as_bytes());
        self
    }

    /// The HMAC of everything added, lower-case hex.
    pub fn finish(self) -> String {
        match self.0 {
            Stream::Sha256(c) => to_hex(c.sign().as_ref()),
            Stream::Sm3(m) => to_hex(m.finalize().into_bytes().as_slice()),
        }
    }
}

impl std::fmt::Debug for HmacStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HmacStream(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4231_case_2_and_streaming_agree() {
        // RFC 4231 test case 2 uses a 4-byte key; ring pads keys like any HMAC, so a 32-byte key
        // of "Jefe" followed by zeros gives the same result.
        let mut secret = [0u8; 32];
        secret[..4].copy_from_slice(b"Jefe");
        let k = HmacKey::new(&secret);
        let want = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(k.hmac(b"what do ya want for nothing?"), want);
        let mut s = k.stream();
        s.update(b"what do ya ");
        s.update(b"want for nothing?");
        assert_eq!(s.finish(), want);
    }

    /// HMAC-SM3 with key 0x0102…20 (32 bytes) over the 448-bit message of FIPS 180's examples, as
    /// OpenSSL 3 computes it (`openssl mac -digest SM3 -macopt hexkey:0102…20 HMAC`, no code of
    /// ours); and streaming agrees.
    #[test]
    fn hmac_sm3_matches_the_published_example_and_streams() {
        let mut secret = [0u8; 32];
        for (i, b) in secret.iter_mut().enumerate() {
            *b = (i + 1) as u8;
        }
        let k = HmacKey::with_hash(HashAlgorithm::Sm3, &secret);
        assert_eq!(k.hash(), HashAlgorithm::Sm3);
        let msg = b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
        let want = "be190a66f210be0df56c243d5c1a53e9301fd3f0313244a412f6ae97ab7fe407";
        let got = k.hmac(msg);
        assert_eq!(got, want);
        let mut s = k.stream();
        s.update(&msg[..10]);
        s.update(&msg[10..]);
        assert_eq!(s.finish(), got);
        assert_ne!(got, HmacKey::new(&secret).hmac(msg), "HMAC-SM3 is not HMAC-SHA256");
    }

    #[test]
    fn client_hmacs_differ_per_client_and_match_the_documented_message() {
        for hash in HashAlgorithm::ALL {
            client_hmacs_differ_per_client(HmacKey::with_hash(hash, &[9; 32]));
        }
    }

    fn client_hmacs_differ_per_client(k: HmacKey) {
        let a = k.client_hmac("hr-portal", b"what is my balance?");
        assert_ne!(a, k.client_hmac("hotline", b"what is my balance?"), "two clients, one text");
        assert_ne!(a, k.hmac(b"what is my balance?"), "keyed per client, not bare");
        // The length prefix keeps ("ab", "c...") and ("a", "bc...") apart.
        assert_ne!(k.client_hmac("ab", b"c"), k.client_hmac("a", b"bc"));
        let mut msg = b"govbox-client-hmac/1\0".to_vec();
        msg.extend_from_slice(&9u32.to_be_bytes());
        msg.extend_from_slice(b"hr-portal");
        msg.extend_from_slice(b"what is my balance?");
        assert_eq!(a, k.hmac(&msg));
        let mut s = k.stream().for_client("hr-portal");
        s.update(b"what is my ");
        s.update(b"balance?");
        assert_eq!(s.finish(), a);
    }
}
