//! The committed corpus in `tests/fixtures/packages/` (the fuzzers' seeds) is exactly what
//! `write_corpus` makes from the committed test keys, and each file still verifies as recorded.
//! `cargo test -p govbox-images --test fixture_packages -- --ignored` regenerates it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::PathBuf;

use govbox_images::corpus::{CorpusKeys, GOOD, write_corpus};
use govbox_images::{Policy, verify_file};
use govbox_provisioning::{Overwrite, Role, SigningKey, TrustRoot};
use time::OffsetDateTime;

fn dir() -> PathBuf {
    common::fixtures().join("packages")
}

const KEY_NAMES: [&str; 4] = ["models-0", "models-1", "updates", "unknown"];

fn load_keys() -> CorpusKeys {
    let k = |n: &str| SigningKey::load_pem(dir().join("keys").join(format!("{n}.pem"))).unwrap();
    CorpusKeys { models: [k("models-0"), k("models-1")], updates: k("updates"), unknown: k("unknown") }
}

#[test]
#[ignore = "regenerates tests/fixtures/packages"]
fn regenerate_fixture_packages() {
    let keys_dir = dir().join("keys");
    fs::create_dir_all(&keys_dir).unwrap();
    if !keys_dir.join("models-0.pem").exists() {
        let keys = CorpusKeys::generate().unwrap();
        for (n, k) in KEY_NAMES.iter().zip([&keys.models[0], &keys.models[1], &keys.updates, &keys.unknown]) {
            k.write_pem(&keys_dir.join(format!("{n}.pem")), Overwrite::Refuse).unwrap();
            k.public_key().write_pem(&keys_dir.join(format!("{n}.pub")), Overwrite::Refuse).unwrap();
        }
    }
    let keys = load_keys();
    let expires = OffsetDateTime::from_unix_timestamp(4_102_444_800).unwrap(); // 2100-01-01
    fs::write(dir().join("root.json"), keys.trust_root(expires).unwrap().to_canonical_json()).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let cases = write_corpus(&dir(), &keys, &common::synthetic_model(tmp.path())).unwrap();
    let mut readme = String::from(
        "# Package corpus (generated)\n\nTEST-ONLY KEYS: the keys in `keys/` are public test fixtures; never trust them anywhere.\n\n\
         Made by `cargo test -p govbox-images --test fixture_packages -- --ignored` from a synthetic model;\n\
         `root.json` is the trust root the cases assume (models threshold 2, updates threshold 1).\n\
         These files seed the fuzzers: `cargo fuzz run package_tar tests/fixtures/packages`.\n\n| file | expected code |\n|---|---|\n",
    );
    for c in &cases {
        readme += &format!("| {}.gbx | {} |\n", c.name, c.expect_code);
    }
    fs::write(dir().join("README.md"), readme).unwrap();
}

#[test]
fn committed_fixtures_match_the_generator_and_verify_as_recorded() {
    if !dir().join("keys/models-0.pem").exists() {
        panic!("tests/fixtures/packages is missing; regenerate it (see the module documentation)");
    }
    let keys = load_keys();
    let root = TrustRoot::load(&dir().join("root.json")).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let fresh = write_corpus(&tmp.path().join("c"), &keys, &common::synthetic_model(tmp.path())).unwrap();
    let total: u64 = fresh.iter().map(|c| fs::metadata(&c.file).unwrap().len()).sum();
    assert!(total < 2_000_000, "the committed corpus must stay small ({total} bytes)");
    for c in &fresh {
        let committed = dir().join(format!("{}.gbx", c.name));
        assert_eq!(fs::read(&committed).unwrap(), fs::read(&c.file).unwrap(), "{} is stale; regenerate", c.name);
        let r = verify_file(&committed, &Policy::Trust(&root, Role::Models), &mut |_, _| {});
        match c.expect_code {
            GOOD | "selftest_mismatch" => assert!(r.is_ok(), "{}: {r:?}", c.name),
            code => assert_eq!(r.unwrap_err().code(), code, "{}", c.name),
        }
    }
}
