//! Package verification on arbitrary bytes, with the committed test key of
//! `tests/fixtures/packages/keys/models-0.pub` (seed with `tests/fixtures/packages/*.gbx`):
//! never a panic, and nothing is accepted unless it is signed by that key.
#![no_main]

use govbox_images::PublicKey;
use govbox_images::{Policy, verify_reader};
use libfuzzer_sys::fuzz_target;

const KEY: &str = include_str!("../../tests/fixtures/packages/keys/models-0.pub");

fuzz_target!(|data: &[u8]| {
    let Ok(key) = PublicKey::from_spki_pem(KEY) else { return };
    if let Ok(v) = verify_reader(data, "fuzz", &Policy::Key(key), &mut |_, _| {}) {
        assert!(v.head.signatures.keyids().contains(&key.keyid().as_str()));
    }
});
