//! HMAC-SHA256 under the box's audit secret: how prompts and responses appear in the log.
//!
//! A bare SHA-256 of a short prompt could be brute-forced by anyone holding an export; the keyed
//! hash can only be recomputed on the box (the admin socket's `audit_hmac` command), so an
//! auditor can ask "was this exact text sent?" without the log ever holding the text.

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
}

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
}
