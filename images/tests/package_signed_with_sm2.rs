//! A vendor may sign with SM2 (over SM3, ID `1234567812345678`): such packages import and verify
//! against a trust root that lists SM2 and Ed25519 keys side by side; a signature that claims
//! one algorithm under a key pinned as the other refuses the package and changes nothing; and
//! OpenSSL 3, which nobody here wrote, verifies govbox's SM2 package signature with the exported
//! public key and reproduces the SM3 digest.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

use govbox_images::corpus::CorpusKeys;
use govbox_images::tar::{MemberName, TarReader, TarWriter};
use govbox_images::{
    ALG_ED25519, ALG_SM2, ImportOptions, ModelMeta, ModelStore, PackageBuilder, Policy, SignatureFile, SigningKey,
    TrustRoot, verify_file,
};
use govbox_provisioning::{KeyAlgorithm, Role, gm};
use time::{Duration, OffsetDateTime};

/// `models[0]` SM2, `models[1]` Ed25519 (threshold 2), `updates` SM2.
fn mixed_keys_and_root() -> (CorpusKeys, TrustRoot) {
    let sm2 = || SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap();
    let keys = CorpusKeys { models: [sm2(), SigningKey::generate().unwrap()], updates: sm2(), unknown: sm2() };
    let root = keys.trust_root(OffsetDateTime::now_utc() + Duration::days(365)).unwrap();
    (keys, root)
}

fn build(dir: &Path, keys: &[&SigningKey]) -> std::path::PathBuf {
    let model = common::synthetic_model(dir);
    let meta = ModelMeta {
        kind: govbox_images::ModelKind::Chat,
        architecture: "synthetic".into(),
        context_length: 64,
        dtype: "f32".into(),
    };
    let out = dir.join("tiny-1.0.0.gbx");
    PackageBuilder::model("tiny", "1.0.0", &model, meta).unwrap().write(&out, keys, &mut |_, _| {}).unwrap();
    out
}

/// Every member of `pkg` as (name, bytes), in order.
fn members(pkg: &Path) -> Vec<(String, Vec<u8>)> {
    let mut r = TarReader::new(std::io::BufReader::new(std::fs::File::open(pkg).unwrap()));
    let mut out = Vec::new();
    while let Some(m) = r.next_member().unwrap() {
        out.push((m.name.as_str().to_string(), r.read_to_vec().unwrap()));
    }
    out
}

/// Writes `pkg` again to `to` with its signature member changed by `edit`.
fn with_signatures(pkg: &Path, to: &Path, mut edit: impl FnMut(&mut SignatureFile)) {
    let mut w = TarWriter::new(Vec::new());
    for (name, data) in members(pkg) {
        if name == MemberName::Signatures.as_str() {
            let mut sigs = SignatureFile::parse(&data, "t").unwrap();
            edit(&mut sigs);
            w.append(&name, &sigs.to_bytes()).unwrap();
        } else {
            w.append(&name, &data).unwrap();
        }
    }
    std::fs::write(to, w.finish().unwrap()).unwrap();
}

#[test]
fn a_package_signed_by_an_sm2_and_an_ed25519_vendor_key_imports_and_verifies() {
    let (keys, root) = mixed_keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let pkg = build(tmp.path(), &[&keys.models[0], &keys.models[1]]);
    let sigs = SignatureFile::parse(&members(&pkg)[1].1, "t").unwrap();
    assert_eq!(sigs.signatures.iter().map(|s| s.alg.as_str()).collect::<Vec<_>>(), [ALG_SM2, ALG_ED25519]);

    let v = verify_file(&pkg, &Policy::Trust(&root, Role::Models), &mut |_, _| {}).unwrap();
    assert_eq!(v.signature_check.signers.len(), 2);
    // The SM2 vendor checks its own package with its one key.
    verify_file(&pkg, &Policy::Key(keys.models[0].public_key()), &mut |_, _| {}).unwrap();
    let store = ModelStore::open_dir(&tmp.path().join("state/models")).unwrap();
    let imported = store.import_file(&pkg, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap();
    assert!(imported.activated);

    // One SM2 signature alone is below the threshold of 2, whatever its algorithm.
    let one = build(&tmp.path().join("one"), &[&keys.models[0]]);
    let e = verify_file(&one, &Policy::Trust(&root, Role::Models), &mut |_, _| {}).unwrap_err();
    assert_eq!(e.code(), "below_threshold", "{e}");
}

#[test]
fn a_signature_claiming_the_other_algorithm_is_refused_and_changes_nothing() {
    let (keys, root) = mixed_keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let pkg = build(tmp.path(), &[&keys.models[0], &keys.models[1]]);
    let sigs = SignatureFile::parse(&members(&pkg)[1].1, "t").unwrap();
    let (sm2_sig, ed_sig) = (sigs.signatures[0].clone(), sigs.signatures[1].clone());
    let store = ModelStore::open_dir(&tmp.path().join("state/models")).unwrap();
    let before = common::snapshot(store.dir());

    let cases = [
        // A well-formed SM2 signature claimed under the key the root pins as Ed25519.
        ("sm2_claim_on_ed25519_key", keys.models[1].public_key().keyid(), ALG_SM2, sm2_sig.sig.clone(), "ed25519"),
        // A well-formed Ed25519 signature claimed under the key the root pins as SM2.
        ("ed25519_claim_on_sm2_key", keys.models[0].public_key().keyid(), ALG_ED25519, ed_sig.sig.clone(), "sm2"),
    ];
    for (name, keyid, alg, sig, pinned) in cases {
        let bad = tmp.path().join(format!("{name}.gbx"));
        with_signatures(&pkg, &bad, |s| {
            let target = s.signatures.iter_mut().find(|x| x.keyid == keyid).unwrap();
            target.alg = alg.into();
            target.sig = sig.clone();
        });
        for policy in [Policy::Trust(&root, Role::Models), Policy::Key(*root.keys().get(&keyid).unwrap())] {
            let e = verify_file(&bad, &policy, &mut |_, _| {}).unwrap_err();
            assert_eq!(e.code(), "algorithm_mismatch", "{name}: {e}");
            let msg = e.to_string();
            assert!(msg.contains("member 'govbox-manifest.sig'"), "{name}: {msg}");
            assert!(msg.contains(&keyid), "{name}: {msg}");
            assert!(msg.contains(&format!("claims algorithm '{alg}' but the pinned key is {pinned}")), "{name}: {msg}");
        }
        let e = store.import_file(&bad, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap_err();
        assert_eq!(e.code(), "algorithm_mismatch", "{name}: {e}");
        assert_eq!(common::snapshot(store.dir()), before, "{name}: the store changed");
    }
}

#[test]
fn openssl_verifies_an_sm2_package_signature_and_reproduces_the_sm3_digest() {
    let Some(openssl) = common::openssl() else { return };
    let (keys, _) = mixed_keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let pkg = build(tmp.path(), &[&keys.models[0], &keys.models[1]]);
    let members = members(&pkg);
    let (manifest, sigs) = (&members[0].1, SignatureFile::parse(&members[1].1, "t").unwrap());
    let sm2 = sigs.signatures.iter().find(|s| s.alg == ALG_SM2).unwrap();
    assert_eq!(sm2.keyid, keys.models[0].public_key().keyid());

    let dir = tmp.path();
    std::fs::write(dir.join("manifest.json"), manifest).unwrap();
    std::fs::write(dir.join("tampered.json"), [&manifest[..], b" "].concat()).unwrap();
    std::fs::write(dir.join("sig.der"), KeyAlgorithm::Sm2.decode_signature_hex(&sm2.sig).unwrap()).unwrap();
    // The public key exactly as `govbox keygen --algorithm sm2` writes it.
    keys.models[0].public_key().write_pem(&dir.join("vendor.pub"), govbox_provisioning::Overwrite::Refuse).unwrap();
    let verify = |msg: &str| {
        Command::new(&openssl)
            .current_dir(dir)
            .args(["pkeyutl", "-verify", "-pubin", "-inkey", "vendor.pub", "-rawin", "-in", msg, "-sigfile"])
            .args(["sig.der", "-pkeyopt", "distid:1234567812345678"])
            .output()
            .unwrap()
    };
    let ok = verify("manifest.json");
    let said = String::from_utf8_lossy(&ok.stdout).to_string() + &String::from_utf8_lossy(&ok.stderr);
    assert!(ok.status.success() && said.contains("Signature Verified Successfully"), "openssl: {said}");
    let bad = verify("tampered.json");
    assert!(!bad.status.success(), "openssl accepted a changed manifest");

    // SM3 of the manifest bytes and of a payload file, by govbox and by `openssl dgst -sm3`.
    for (file, bytes) in [("manifest.json", &manifest[..]), ("payload.bin", &members[3].1[..])] {
        let ours: String = gm::sm3(bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(common::openssl_sm3(&openssl, bytes), ours, "{file}");
    }
}

#[test]
fn keys_and_signatures_made_by_openssl_work_in_govbox() {
    let Some(openssl) = common::openssl() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let run = |args: &[&str]| {
        let out = Command::new(&openssl).current_dir(dir).args(args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["genpkey", "-algorithm", "SM2", "-out", "k.pem"]);
    run(&["pkey", "-in", "k.pem", "-pubout", "-out", "k.pub"]);
    std::fs::write(dir.join("msg"), b"a manifest signed by openssl").unwrap();
    run(&[
        "pkeyutl",
        "-sign",
        "-inkey",
        "k.pem",
        "-rawin",
        "-in",
        "msg",
        "-out",
        "sig",
        "-pkeyopt",
        "distid:1234567812345678",
    ]);
    let public = govbox_provisioning::PublicKey::load_pem(dir.join("k.pub")).unwrap();
    assert_eq!(public.algorithm(), KeyAlgorithm::Sm2);
    let sig = std::fs::read(dir.join("sig")).unwrap();
    public.verify(b"a manifest signed by openssl", &sig).unwrap();
    assert!(public.verify(b"another message", &sig).is_err());
    // OpenSSL's private key file loads, and is the same key.
    let key = SigningKey::load_pem(dir.join("k.pem")).unwrap();
    assert_eq!(key.public_key(), public);
}
