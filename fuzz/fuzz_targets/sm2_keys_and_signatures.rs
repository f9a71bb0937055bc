//! SM2 key and signature parsing on arbitrary bytes: never a panic, and whatever parses is
//! consistent. The first byte picks the parser; the rest is its input:
//! 0: `PUBLIC KEY` PEM text; 1: SubjectPublicKeyInfo DER; 2: `PRIVATE KEY` PKCS#8 DER;
//! 3: a raw SM2 point; 4: a signature in hex (checked against a fixed key); 5: a trust root.
#![no_main]

use govbox_images::{SignatureFile, TrustRoot};
use govbox_provisioning::{HexCase, KeyAlgorithm, PublicKey, SigningKey, unhex};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&which, rest)) = data.split_first() else { return };
    match which % 6 {
        0 => {
            if let Ok(k) = PublicKey::from_spki_pem(&String::from_utf8_lossy(rest)) {
                assert_eq!(PublicKey::from_spki_pem(&k.to_spki_pem()).ok(), Some(k));
            }
        }
        1 => {
            if let Ok(k) = PublicKey::from_spki_der(rest, "fuzz") {
                // One key, one byte form: what parses re-encodes to a key with the same id.
                let again = PublicKey::from_spki_der(&k.to_spki_der(), "fuzz").ok();
                assert_eq!(again.map(|a| a.keyid()), Some(k.keyid()));
            }
        }
        2 => {
            if let Ok(k) = SigningKey::from_pkcs8_der(rest.to_vec(), "fuzz") {
                let sig = k.sign(b"fuzz");
                assert!(k.public_key().verify(b"fuzz", &sig).is_ok());
            }
        }
        3 => {
            if let Ok(k) = PublicKey::from_raw_bytes(KeyAlgorithm::Sm2, rest, "fuzz") {
                assert_eq!(k.as_bytes(), rest);
            }
        }
        4 => {
            let text = String::from_utf8_lossy(rest);
            if let Some(sig) = KeyAlgorithm::Sm2.decode_signature_hex(&text) {
                // The public key of GB/T 32918.5's signature example.
                let point = "0409f9df311e5421a150dd7d161e4bc5c672179fad1833fc076bb08ff356f35020\
                             ccea490ce26775a52dc6ea718cc1aa600aed05fbf35e084a6632f6072da9ad13";
                let fixed = unhex::<65>(point, HexCase::Lower);
                if let Some(Ok(k)) = fixed.map(|p| PublicKey::from_raw_bytes(KeyAlgorithm::Sm2, &p, "fuzz")) {
                    let _ = k.verify(b"message digest", &sig);
                }
            }
            let _ = SignatureFile::parse(rest, "fuzz");
        }
        _ => {
            let _ = TrustRoot::parse(rest, "fuzz");
        }
    }
});
