//! A `gm` vendor builds update bundles with SM3 (`govbox update build --hash sm3`): the bundle's
//! file digests and its own digest are SM3 (OpenSSL's), it applies, its slot re-verifies with SM3
//! (boot check, rollback, `update status --verify`), and a tampered bundle or slot is refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod update_support;

use std::fs;

use govbox_images::tar::TarReader;
use govbox_images::update::{Slot, apply, rollback};
use govbox_images::{MANIFEST_NAME, Manifest};
use govbox_provisioning::HashAlgorithm;
use update_support::{Fixture, TestHost};

fn manifest_bytes(bundle: &std::path::Path) -> Vec<u8> {
    let mut r = TarReader::new(std::io::BufReader::new(fs::File::open(bundle).unwrap()));
    assert_eq!(r.next_member().unwrap().unwrap().name.as_str(), MANIFEST_NAME);
    r.read_to_vec().unwrap()
}

#[test]
fn an_sm3_bundle_applies_and_its_digest_is_openssl_sm3_of_its_manifest() {
    let Some(openssl) = common::openssl() else { return };
    let f = Fixture::new().with_hash(HashAlgorithm::Sm3);
    let bundle = f.bundle("1.0.0", 1);
    let bytes = manifest_bytes(&bundle);
    let manifest = Manifest::parse(&bytes, "bundle").unwrap();
    assert_eq!(manifest.hash, HashAlgorithm::Sm3);
    let daemon = manifest.files.iter().find(|e| e.path.as_str() == "bin/govboxd").unwrap();
    let daemon_bytes = fs::read(f.dir.path().join("src-1.0.0-1/govboxd")).unwrap();
    assert_eq!(daemon.sha256, common::openssl_sm3(&openssl, &daemon_bytes), "file digests are SM3");

    let applied = apply(&f.root, &bundle, &mut TestHost::ready()).unwrap();
    assert_eq!((applied.slot, applied.version.as_str()), (Slot::A, "1.0.0"));
    let meta = f.root.verify_slot(Slot::A, Some(&f.trust())).unwrap();
    assert_eq!(meta.digest, common::openssl_sm3(&openssl, &bytes), "the bundle's digest is SM3");
    assert!(f.slot_file(Slot::A, "bin/govboxd").contains("govboxd 1.0.0"));

    // A second SM3 bundle, then a rollback: the rollback re-verifies slot A with SM3.
    apply(&f.root, &f.bundle("1.1.0", 1), &mut TestHost::ready()).unwrap();
    assert_eq!(f.current(), Some(Slot::B));
    assert_eq!(rollback(&f.root, &f.trust(), &mut TestHost::ready()).unwrap().version, "1.0.0");
    assert_eq!(f.current(), Some(Slot::A));
}

#[test]
fn a_tampered_sm3_bundle_or_slot_is_refused() {
    let f = Fixture::new().with_hash(HashAlgorithm::Sm3);
    apply(&f.root, &f.bundle("1.0.0", 1), &mut TestHost::ready()).unwrap();

    // One byte of the daemon flipped after signing: refused before anything is staged.
    let good = f.bundle_by("2.0.0", 2, "echo tamper-me", &[&f.keys.updates]);
    let mut bytes = fs::read(&good).unwrap();
    let at = bytes.windows(9).position(|w| w == b"tamper-me").unwrap();
    bytes[at] ^= 0x20;
    let tampered = f.dir.path().join("tampered.gbu");
    fs::write(&tampered, &bytes).unwrap();
    let mut host = TestHost::ready();
    let e = apply(&f.root, &tampered, &mut host).unwrap_err();
    assert_eq!(e.code(), "sha256_mismatch", "{e}");
    assert!(e.to_string().contains("bin/govboxd"), "{e}");
    assert_eq!((f.current(), host.restarts), (Some(Slot::A), 0));
    assert!(f.root.slot_meta(Slot::B).unwrap().is_none(), "nothing was staged");
    f.assert_no_leftovers();

    // The untampered bundle applies; then a changed file in its slot no longer verifies.
    apply(&f.root, &good, &mut TestHost::ready()).unwrap();
    f.root.verify_slot(Slot::B, Some(&f.trust())).unwrap();
    let cli = f.root.slot_dir(Slot::B).join("payload/bin/govbox");
    let mut changed = fs::read(&cli).unwrap();
    changed[0] ^= 1;
    fs::remove_file(&cli).unwrap();
    fs::write(&cli, changed).unwrap();
    let e = f.root.verify_slot(Slot::B, Some(&f.trust())).unwrap_err();
    assert_eq!(e.code(), "slot_invalid", "{e}");
    assert!(e.to_string().contains("bin/govbox: does not match the signed manifest"), "{e}");
}
