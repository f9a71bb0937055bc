//! Update bundles (`.gbu`) on arbitrary bytes: never a panic. An even first byte reads the
//! bundle's head (its manifest and signature members, `govbox_images::read_head`, the code
//! `govbox update inspect` and staging run before any signature counts) and, when the manifest
//! parses, checks it serialises back canonically; an odd first byte offers the rest as the new
//! trust root a bundle carries, to `accept_new_root` against the committed test root
//! (`tests/fixtures/packages/root.json`), which must refuse anything not signed by its keys.
#![no_main]

use govbox_images::{TrustRoot, accept_new_root, read_head};
use libfuzzer_sys::fuzz_target;

const ROOT: &[u8] = include_bytes!("../../tests/fixtures/packages/root.json");

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((flag, rest)) if flag & 1 == 1 => {
            let Ok(current) = TrustRoot::parse(ROOT, "fixture root") else { return };
            // The fuzzer holds none of the root keys, so nothing new may be accepted.
            assert!(accept_new_root(&current, rest).is_err(), "an unsigned root was accepted");
        }
        Some((_, rest)) => {
            if let Ok(head) = read_head(rest, "fuzz") {
                let m = &head.manifest;
                let _ = (m.label(), m.update.as_ref().map(|u| u.security_version));
                assert!(m.to_canonical_bytes().is_ok());
            }
        }
        None => {}
    }
});
