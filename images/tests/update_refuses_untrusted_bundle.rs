//! A bundle that the trust root's `updates` role did not sign to its threshold, that was
//! tampered with, or that is not an update, is refused before a byte of it is staged, and
//! `current` is untouched. A new root travelling in a bundle must pass the root rotation rules.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod update_support;

use std::fs;

use govbox_images::corpus::CorpusKeys;
use govbox_images::update::{BundleSpec, InstallRoot, Slot, apply, build_bundle};
use govbox_images::{PublicKey, Role, TrustRoot, sign_root};
use govbox_provisioning::{ThresholdSpec, to_canonical_json};
use time::{Duration, OffsetDateTime};
use update_support::{Fixture, TestHost};

/// Applies `bundle` expecting refusal with `code`; checks that nothing changed.
fn refused(f: &Fixture, bundle: &std::path::Path, code: &str) -> String {
    let before = (f.current(), f.root.security_version().unwrap(), f.root.state().unwrap());
    let mut host = TestHost::ready();
    let e = apply(&f.root, bundle, &mut host).unwrap_err();
    assert_eq!(e.code(), code, "{e}");
    assert_eq!((f.current(), f.root.security_version().unwrap(), f.root.state().unwrap()), before);
    assert_eq!(host.restarts, 0);
    assert!(host.has_step("refused"));
    f.assert_no_leftovers();
    e.to_string()
}

#[test]
fn wrong_role_unknown_key_tampered_and_model_kind_are_refused() {
    let f = Fixture::new();
    apply(&f.root, &f.bundle("1.0.0", 1), &mut TestHost::ready()).unwrap();
    let active = fs::read_to_string(f.root.slot_dir(Slot::A).join("slot.json")).unwrap();

    // Signed by both `models` keys: they meet the models threshold, but hold no `updates` role.
    let by_models = f.bundle_by("2.0.0", 2, "true", &[&f.keys.models[0], &f.keys.models[1]]);
    let e = refused(&f, &by_models, "wrong_role");
    assert!(e.contains("govbox 2.0.0"), "{e}");
    let unknown = f.bundle_by("2.0.1", 2, "true", &[&f.keys.unknown]);
    refused(&f, &unknown, "below_threshold");

    // One byte of the daemon flipped after signing.
    let good = f.bundle_by("2.0.2", 2, "echo tamper-me", &[&f.keys.updates]);
    let mut bytes = fs::read(&good).unwrap();
    let at = bytes.windows(9).position(|w| w == b"tamper-me").unwrap();
    bytes[at] ^= 0x20;
    let tampered = f.dir.path().join("tampered.gbu");
    fs::write(&tampered, &bytes).unwrap();
    let e = refused(&f, &tampered, "sha256_mismatch");
    assert!(e.contains("bin/govboxd"), "{e}");

    // A model package signed by the updates key is the wrong kind for this role.
    let model_dir = f.dir.path().join("model");
    fs::create_dir_all(&model_dir).unwrap();
    fs::write(model_dir.join("model.gguf"), b"GGUF").unwrap();
    let meta = govbox_images::ModelMeta {
        kind: govbox_images::ModelKind::Chat,
        architecture: "qwen2".into(),
        context_length: 16,
        dtype: "f32".into(),
    };
    let model = f.dir.path().join("m.gbx");
    govbox_images::PackageBuilder::model("m", "1.0.0", &model_dir.join("model.gguf"), meta)
        .unwrap()
        .write(&model, &[&f.keys.updates], &mut |_, _| {})
        .unwrap();
    refused(&f, &model, "wrong_kind");

    assert_eq!(fs::read_to_string(f.root.slot_dir(Slot::A).join("slot.json")).unwrap(), active);
    f.root.verify_slot(Slot::A, Some(&f.trust())).unwrap();
}

#[test]
fn below_the_updates_threshold_is_refused() {
    let keys = CorpusKeys::generate().unwrap();
    let assignments: Vec<(Vec<Role>, PublicKey)> = vec![
        (vec![Role::Models], keys.models[0].public_key()),
        (vec![Role::Root, Role::Updates], keys.updates.public_key()),
        (vec![Role::Updates], keys.unknown.public_key()),
    ];
    let t = [ThresholdSpec { role: Role::Updates, threshold: 2 }, ThresholdSpec { role: Role::Models, threshold: 1 }];
    let trust = TrustRoot::build(&assignments, &t, OffsetDateTime::now_utc() + Duration::days(30)).unwrap();
    let f = Fixture::with_root(keys, &trust);
    let one = f.bundle_by("1.0.0", 1, "true", &[&f.keys.updates]);
    let e = refused(&f, &one, "below_threshold");
    assert!(e.contains("signed by 1 of threshold 2"), "{e}");
    assert_eq!(f.current(), None);
    // The same key twice still counts once.
    let twice = f.bundle_by("1.0.1", 1, "true", &[&f.keys.updates, &f.keys.updates]);
    refused(&f, &twice, "below_threshold");
    let two = f.bundle_by("1.0.2", 1, "true", &[&f.keys.updates, &f.keys.unknown]);
    apply(&f.root, &two, &mut TestHost::ready()).unwrap();
    assert_eq!(f.current(), Some(Slot::A));
}

fn bundle_with_root(f: &Fixture, version: &str, root: Vec<u8>) -> std::path::PathBuf {
    let src = f.dir.path().join(format!("rootsrc-{version}"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("d"), "d").unwrap();
    fs::write(src.join("c"), "c").unwrap();
    let out = f.dir.path().join(format!("root-{version}.gbu"));
    let spec = BundleSpec {
        version: version.into(),
        security_version: 1,
        daemon: src.join("d"),
        cli: src.join("c"),
        dist: None,
        new_root: Some(root),
        hash: f.hash,
    };
    build_bundle(&spec, &[&f.keys.updates], &out).unwrap();
    out
}

#[test]
fn a_new_root_in_a_bundle_is_installed_on_commit_only_when_properly_signed() {
    let f = Fixture::new();
    let current = f.trust();
    let mut v: serde_json::Value = serde_json::from_str(&current.to_canonical_json()).unwrap();
    v["signed"]["version"] = (current.version() + 1).into();
    let unsigned = to_canonical_json(&v).into_bytes();
    // Not signed by the current root's `root` threshold: the bundle is refused.
    let bad = bundle_with_root(&f, "1.0.0", unsigned.clone());
    let e = refused(&f, &bad, "root_rejected");
    assert!(e.contains("signed by 0"), "{e}");

    let signed = sign_root(&unsigned, &[&f.keys.updates]).unwrap();
    let good = bundle_with_root(&f, "1.0.1", signed);
    // Until the update is committed the old root stays: a reverted update rotates nothing.
    let e = apply(&f.root, &good, &mut TestHost::never_ready()).unwrap_err();
    assert_eq!(e.code(), "update_reverted");
    assert_eq!(f.trust().version(), current.version());
    let applied = apply(&f.root, &good, &mut TestHost::ready()).unwrap();
    assert!(applied.root_rotated);
    assert_eq!(f.trust().version(), current.version() + 1);
    // The rotation lands in the root-owned anchor; the service's copy is not written by root.
    assert_eq!(TrustRoot::load(&f.paths.root_json()).unwrap().version(), current.version());
    let _ = InstallRoot::new(f.root.path());
}

#[test]
fn a_root_the_service_account_wrote_decides_nothing() {
    let f = Fixture::new();
    apply(&f.root, &f.bundle("1.0.0", 1), &mut TestHost::ready()).unwrap();
    // The service account names its own key for every role in STATE/trust/root.json.
    let attacker = &f.keys.unknown;
    let a = [(vec![Role::Root, Role::Models, Role::Updates], attacker.public_key())];
    let forged = TrustRoot::build(&a, &[], OffsetDateTime::now_utc() + Duration::days(30)).unwrap();
    fs::write(f.paths.root_json(), forged.to_canonical_json()).unwrap();
    let evil = f.bundle_by("6.6.6", 99, "true", &[attacker]);
    refused(&f, &evil, "below_threshold");
    assert_eq!(f.root.security_version().unwrap(), 1);
}

#[test]
fn the_anchor_needs_its_own_signatures_and_never_goes_back() {
    let f = Fixture::new();
    let v1 = f.trust().to_canonical_json();
    let mut v: serde_json::Value = serde_json::from_str(&v1).unwrap();
    v["signed"]["version"] = 2.into();
    let v2_unsigned = to_canonical_json(&v).into_bytes();
    // A version 2 without its own root threshold is no anchor, even written by root.
    fs::write(f.root.anchor_file(), &v2_unsigned).unwrap();
    let e = f.root.anchor().unwrap_err();
    assert_eq!(e.code(), "trust_anchor_invalid", "{e}");
    // A properly rotated version 2, then the old version 1 put back: refused.
    let v2 = sign_root(&v2_unsigned, &[&f.keys.updates]).unwrap();
    let bundle = bundle_with_root(&f, "1.0.0", v2);
    fs::write(f.root.anchor_file(), &v1).unwrap();
    apply(&f.root, &bundle, &mut TestHost::ready()).unwrap();
    assert_eq!(f.trust().version(), 2);
    fs::write(f.root.anchor_file(), &v1).unwrap();
    let e = f.root.anchor().unwrap_err();
    assert!(e.to_string().contains("below version 2"), "{e}");
    // And `init` installs only once.
    let e = f.root.init_anchor(v1.as_bytes(), "again").unwrap_err();
    assert_eq!(e.code(), "trust_anchor_invalid", "{e}");
}
