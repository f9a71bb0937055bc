//! A content-safety policy package is accepted only with the `policy` role's threshold of
//! signatures: one signed by the `models` keys (or any other role) is refused, a model package
//! never enters the policy store even when a policy key signed it, and a root without a `policy`
//! role accepts no policy package at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;

use govbox_images::{
    ImportOptions, ModelKind, ModelMeta, ModelStore, PackageBuilder, PolicyInfo, PublicKey, Role, SigningKey, TrustRoot,
};
use govbox_provisioning::ThresholdSpec;
use time::{Duration, OffsetDateTime};

fn library(dir: &Path) -> std::path::PathBuf {
    let lib = dir.join("library");
    fs::create_dir_all(lib.join("lists")).unwrap();
    fs::write(
        lib.join("policy.toml"),
        "format = \"govbox-policy/1\"\nname = \"t\"\nversion = \"1\"\n[[category]]\nid = \"v\"\naction = \"refuse\"\n\
         refusal = \"no\"\nkeywords = [\"lists/v.txt\"]\n",
    )
    .unwrap();
    fs::write(lib.join("lists/v.txt"), "炸药\n").unwrap();
    lib
}

fn info() -> PolicyInfo {
    PolicyInfo { format: "govbox-policy/1".into(), categories: vec!["v".into()], keywords: 1 }
}

struct Keys {
    models: SigningKey,
    policy: [SigningKey; 2],
}

fn root(keys: &Keys, with_policy: bool) -> TrustRoot {
    let mut a: Vec<(Vec<Role>, PublicKey)> = vec![(Role::REQUIRED.to_vec(), keys.models.public_key())];
    let mut t = Vec::new();
    if with_policy {
        a.push((vec![Role::Policy], keys.policy[0].public_key()));
        a.push((vec![Role::Policy], keys.policy[1].public_key()));
        t.push(ThresholdSpec { role: Role::Policy, threshold: 2 });
    }
    TrustRoot::build(&a, &t, OffsetDateTime::now_utc() + Duration::days(30)).unwrap()
}

#[test]
fn only_the_policy_role_signs_policy_packages() {
    let keys = Keys {
        models: SigningKey::generate().unwrap(),
        policy: [SigningKey::generate().unwrap(), SigningKey::generate().unwrap()],
    };
    let tmp = tempfile::tempdir().unwrap();
    let lib = library(tmp.path());
    let build = |out: &str, signers: &[&SigningKey]| {
        let path = tmp.path().join(out);
        PackageBuilder::policy("agency-baseline", "2026.12.1", &lib, info())
            .unwrap()
            .write(&path, signers, &mut |_, _| {})
            .unwrap();
        path
    };
    let good = build("good.gbp", &[&keys.policy[0], &keys.policy[1]]);
    let by_models = build("models.gbp", &[&keys.models]);
    let one_of_two = build("half.gbp", &[&keys.policy[0]]);
    let store = ModelStore::open_dir_for(&tmp.path().join("policies"), Role::Policy).unwrap();
    let r = root(&keys, true);
    let opts = ImportOptions::default();

    for (pkg, code) in [(&by_models, "wrong_role"), (&one_of_two, "below_threshold")] {
        let e = store.import_file(pkg, &r, &opts, &mut |_, _| {}).unwrap_err();
        assert_eq!(e.code(), code, "{e}");
    }
    assert!(store.list().unwrap().is_empty(), "a refused package leaves nothing behind");

    // A model package signed by the policy keys is the wrong kind for the policy store.
    let model = tmp.path().join("m.gbx");
    let meta =
        ModelMeta { kind: ModelKind::Chat, architecture: "qwen2".into(), context_length: 64, dtype: "f32".into() };
    PackageBuilder::model("m", "1.0.0", &common::synthetic_model(tmp.path()), meta)
        .unwrap()
        .write(&model, &[&keys.policy[0], &keys.policy[1]], &mut |_, _| {})
        .unwrap();
    let e = store.import_file(&model, &r, &opts, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.code(), "wrong_kind", "{e}");

    // A root provisioned without a policy role accepts none.
    let e = store.import_file(&good, &root(&keys, false), &opts, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.code(), "below_threshold", "{e}");

    let imp = store.import_file(&good, &r, &opts, &mut |_, _| {}).unwrap();
    assert!(imp.activated);
    assert_eq!(imp.manifest.policy, Some(info()));
    assert_eq!(fs::read(imp.load_path.join("lists/v.txt")).unwrap(), "炸药\n".as_bytes());
    // The model store does not take it either.
    let models = ModelStore::open_dir(&tmp.path().join("models")).unwrap();
    let e = models.import_file(&good, &r, &opts, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.code(), "wrong_role", "{e}");
}
