//! HMAC-SHA256 under the box's audit secret: how prompts and responses appear in the log.
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

use ring::hmac;

use crate::sth::to_hex;

/// The audit secret as an HMAC-SHA256 key. `Debug` shows nothing of it.
#[derive(Clone)]
pub struct HmacKey(hmac::Key);

impl HmacKey {
    /// The key from the 32-byte secret (`identity/audit-hmac.key`).
    pub fn new(secret: &[u8; 32]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// HMAC-SHA256 of `bytes`, lower-case hex.
    pub fn hmac(&self, bytes: &[u8]) -> String {
        to_hex(hmac::sign(&self.0, bytes).as_ref())
    }

    /// An incremental HMAC, for text that arrives in pieces (a streamed answer).
    pub fn stream(&self) -> HmacStream {
        HmacStream(hmac::Context::with_key(&self.0))
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

/// An HMAC-SHA256 being computed piece by piece.
pub struct HmacStream(hmac::Context);

impl HmacStream {
    /// Adds the next piece.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
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
        to_hex(self.0.sign().as_ref())
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

    #[test]
    fn client_hmacs_differ_per_client_and_match_the_documented_message() {
        let k = HmacKey::new(&[9; 32]);
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
