//! Every case of the bad-package corpus is refused by `verify` and by `ModelStore::import` with
//! its error code and a message naming the member, and a refused import leaves the store, its
//! registry and its folder listing exactly as they were.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs::File;

use govbox_images::corpus::{CorpusKeys, GOOD, write_corpus};
use govbox_images::{ImportOptions, ModelStore, Policy, TrustRoot, verify_file};
use govbox_provisioning::{KeyAlgorithm, Role, SigningKey};
use time::{Duration, OffsetDateTime};

#[test]
fn every_bad_package_is_refused_by_verify_and_import_and_changes_nothing() {
    let (keys, root) = common::keys_and_root();
    every_case_as_recorded(&keys, &root);
}

#[test]
fn the_corpus_signed_with_sm2_keys_is_refused_the_same_way() {
    let keys = CorpusKeys::generate_with(KeyAlgorithm::Sm2).unwrap();
    let root = keys.trust_root(OffsetDateTime::now_utc() + Duration::days(365)).unwrap();
    every_case_as_recorded(&keys, &root);
}

#[test]
fn the_corpus_signed_by_one_sm2_and_one_ed25519_models_key_is_refused_the_same_way() {
    let sm2 = || SigningKey::generate_with(KeyAlgorithm::Sm2).unwrap();
    let ed = || SigningKey::generate().unwrap();
    let keys = CorpusKeys { models: [sm2(), ed()], updates: sm2(), unknown: ed() };
    let root = keys.trust_root(OffsetDateTime::now_utc() + Duration::days(365)).unwrap();
    every_case_as_recorded(&keys, &root);
}

fn every_case_as_recorded(keys: &CorpusKeys, root: &TrustRoot) {
    let tmp = tempfile::tempdir().unwrap();
    let cases = write_corpus(&tmp.path().join("corpus"), keys, &common::tiny_qwen2()).unwrap();
    assert!(cases.len() >= 22, "{} cases", cases.len());
    let policy = Policy::Trust(root, Role::Models);

    let store = ModelStore::open_dir(&tmp.path().join("state/models")).unwrap();
    let good = cases.iter().find(|c| c.expect_code == GOOD).unwrap();
    let imported = store.import_file(&good.file, root, &ImportOptions::default(), &mut |_, _| {}).unwrap();
    assert!(imported.activated);
    assert!(imported.load_path.join("config.json").is_file());
    let before = common::snapshot(store.dir());
    let registry_before = std::fs::read(store.dir().join("registry.json")).unwrap();

    for case in &cases {
        let verified = verify_file(&case.file, &policy, &mut |_, _| {});
        let imported = store.import(
            File::open(&case.file).unwrap(),
            case.name,
            root,
            &ImportOptions { activate: true },
            &mut |_, _| {},
        );
        match case.expect_code {
            GOOD => {
                verified.unwrap();
                assert!(imported.unwrap().already_present, "importing the same package again is a no-op");
            }
            "selftest_mismatch" => {
                // Valid at the container level; the self-test is run after import by the daemon.
                let v = verified.unwrap();
                assert!(v.head.manifest.model.unwrap().selftest.is_some());
                let i = imported.unwrap();
                assert!(!i.already_present && i.activated);
                store.discard(&i.digest).unwrap();
            }
            code => {
                for (how, err) in [("verify", verified.unwrap_err()), ("import", imported.unwrap_err())] {
                    let msg = err.to_string();
                    assert_eq!(err.code(), code, "{} via {how}: {msg}", case.name);
                    assert!(
                        msg.contains(&case.expect_in_message),
                        "{} via {how}: {msg:?} lacks {:?}",
                        case.name,
                        case.expect_in_message
                    );
                    assert!(msg.contains("member '"), "{} via {how}: {msg}", case.name);
                    assert!(err.is_rejection(), "{}", case.name);
                }
            }
        }
        assert_eq!(common::snapshot(store.dir()), before, "{}: the store changed", case.name);
        assert_eq!(std::fs::read(store.dir().join("registry.json")).unwrap(), registry_before, "{}", case.name);
    }
}

#[test]
fn a_model_package_is_not_an_update_bundle() {
    let (keys, root) = common::keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let model = common::synthetic_model(tmp.path());
    let cases = write_corpus(&tmp.path().join("corpus"), &keys, &model).unwrap();
    let good = cases.iter().find(|c| c.expect_code == GOOD).unwrap();
    // Signed by the models keys only: for the updates role those are other roles' keys.
    let err = verify_file(&good.file, &Policy::Trust(&root, Role::Updates), &mut |_, _| {}).unwrap_err();
    assert_eq!(err.code(), "wrong_role", "{err}");
    assert!(err.to_string().contains("keys of role 'updates'"), "{err}");
    // A single vendor key can check its own package.
    let v = verify_file(&good.file, &Policy::Key(keys.models[1].public_key()), &mut |_, _| {}).unwrap();
    assert_eq!(v.signature_check.signers, vec![keys.models[1].public_key().keyid()]);
}
