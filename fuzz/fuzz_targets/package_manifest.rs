//! The manifest and signature-file parsers on arbitrary bytes: never a panic. The input is split
//! at its first NUL into a manifest and a signature member, as a package carries them.
#![no_main]

use govbox_images::{Manifest, SignatureFile};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (manifest, sig) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &data[..0]),
    };
    if let Ok(m) = Manifest::parse(manifest, "fuzz") {
        // Whatever parses is canonical: it serialises back to exactly the same bytes.
        assert_eq!(m.to_canonical_bytes().ok().as_deref(), Some(manifest));
    }
    let _ = SignatureFile::parse(sig, "fuzz");
});
