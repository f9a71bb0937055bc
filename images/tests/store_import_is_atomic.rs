//! The model store: imports are content-addressed and idempotent, a name and version cannot
//! change content, activation has history and rollback, the active version cannot be removed,
//! a discarded import leaves no trace, reverification catches tampering on disk, and recovery
//! cleans what a crash left.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use govbox_images::corpus::CorpusKeys;
use govbox_images::{ImportOptions, ModelKind, ModelMeta, ModelStore, PackageBuilder};

fn build(keys: &CorpusKeys, model: &Path, version: &str, out: &Path) -> PathBuf {
    let meta =
        ModelMeta { kind: ModelKind::Chat, architecture: "synthetic".into(), context_length: 64, dtype: "f32".into() };
    let mut b = PackageBuilder::model("syn", version, model, meta).unwrap();
    let file = out.join(format!("syn-{version}.gbx"));
    b.write(&file, &[&keys.models[0], &keys.models[1]], &mut |_, _| {}).unwrap();
    file
}

#[test]
fn import_activate_rollback_remove_discard() {
    let (keys, root) = common::keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let model = common::synthetic_model(tmp.path());
    let store = ModelStore::open_dir(&tmp.path().join("models")).unwrap();
    let opts = ImportOptions::default();
    let v1 = build(&keys, &model, "1.0.0", tmp.path());

    let a = store.import_file(&v1, &root, &opts, &mut |_, _| {}).unwrap();
    assert!(a.activated && !a.already_present, "the first version of a name becomes active");
    let dir = store.package_dir(&a.digest);
    assert!(dir.ends_with(format!("sha256-{}", a.digest)));
    for f in ["govbox-manifest.json", "govbox-manifest.sig", "payload/config.json", "payload/sub/tokenizer.json"] {
        assert!(dir.join(f).is_file(), "{f}");
    }
    assert_eq!(fs::read(dir.join("payload/model.bin")).unwrap(), fs::read(model.join("model.bin")).unwrap());
    assert_eq!(a.load_path, dir.join("payload"));
    let snap = common::snapshot(store.dir());
    let again = store.import_file(&v1, &root, &ImportOptions { activate: true }, &mut |_, _| {}).unwrap();
    assert!(again.already_present && !again.activated);
    assert_eq!(common::snapshot(store.dir()), snap, "a repeated import changes nothing");

    // v1.1.0 is imported but not activated until asked.
    let v11 = build(&keys, &model, "1.1.0", tmp.path());
    let b = store.import_file(&v11, &root, &opts, &mut |_, _| {}).unwrap();
    assert!(!b.activated);
    let active = store.active_models().unwrap();
    assert_eq!((active.len(), active[0].version.as_str()), (1, "1.0.0"));
    assert_eq!(store.activate("syn", None).unwrap(), "1.1.0");
    assert_eq!(store.active_models().unwrap()[0].digest, b.digest);
    assert_eq!(store.rollback("syn").unwrap(), "1.0.0");
    assert_eq!(store.rollback("syn").unwrap_err().code(), "no_rollback");
    let e = store.remove("syn", "1.0.0").unwrap_err();
    assert_eq!(e.code(), "version_active");
    assert!(e.to_string().contains("it is the active version"), "{e}");
    store.remove("syn", "1.1.0").unwrap();
    assert!(!store.package_dir(&b.digest).exists());
    assert_eq!(store.list().unwrap()[0].versions.len(), 1);

    // The same name and version with other content is refused before anything is written.
    fs::write(model.join("model.bin"), b"different weights").unwrap();
    let x = tmp.path().join("x");
    fs::create_dir_all(&x).unwrap();
    let other = build(&keys, &model, "1.0.0", &x);
    let before = common::snapshot(store.dir());
    let e = store.import_file(&other, &root, &opts, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.code(), "version_conflict", "{e}");
    assert_eq!(common::snapshot(store.dir()), before);

    // Import with activation, then discard: the store is as before.
    let v2 = build(&keys, &model, "2.0.0", tmp.path());
    let c = store.import_file(&v2, &root, &ImportOptions { activate: true }, &mut |_, _| {}).unwrap();
    assert!(c.activated);
    store.discard(&c.digest).unwrap();
    assert_eq!(common::snapshot(store.dir()), before);
    assert_eq!(store.discard(&c.digest).unwrap_err().code(), "not_found");
}

#[test]
fn reverify_detects_changes_on_disk_and_recover_cleans_up() {
    let (keys, root) = common::keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let model = common::synthetic_model(tmp.path());
    let store = ModelStore::open_dir(&tmp.path().join("models")).unwrap();
    let pkg = build(&keys, &model, "1.0.0", tmp.path());
    let a = store.import_file(&pkg, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap();

    let mut last = (0, 0);
    let r = store.reverify(&a.digest, &root, true, &mut |d, t| last = (d, t)).unwrap();
    assert_eq!(r.files_checked, 3);
    assert_eq!(last, (a.size, a.size));
    let weights = store.package_dir(&a.digest).join("payload/model.bin");
    let mut bytes = fs::read(&weights).unwrap();
    bytes[10] ^= 0xff;
    fs::write(&weights, &bytes).unwrap();
    assert!(store.reverify(&a.digest, &root, false, &mut |_, _| {}).is_ok(), "signatures alone still hold");
    let e = store.reverify(&a.digest, &root, true, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.code(), "sha256_mismatch");
    assert!(e.to_string().contains("member 'model.bin': sha256 mismatch"), "{e}");
    bytes[10] ^= 0xff;
    fs::write(&weights, &bytes).unwrap();
    fs::write(store.package_dir(&a.digest).join("payload/sub/planted.py"), b"x").unwrap();
    let e = store.reverify(&a.digest, &root, true, &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("member 'sub/planted.py': not listed"), "{e}");
    // A root that does not trust the signers fails the signature check.
    let (_, other_root) = common::keys_and_root();
    assert_eq!(store.reverify(&a.digest, &other_root, false, &mut |_, _| {}).unwrap_err().code(), "below_threshold");

    // What a crash leaves: a staging folder with no live owner, and an unregistered package.
    let stale = store.dir().join(".staging-deadbeef");
    fs::create_dir_all(stale.join("payload")).unwrap();
    fs::write(stale.join(".owner"), b"").unwrap();
    let orphan = store.dir().join(format!("sha256-{}", "0".repeat(64)));
    fs::create_dir_all(&orphan).unwrap();
    let rec = store.recover().unwrap();
    assert_eq!(rec.staging_removed, vec![stale.clone()]);
    assert_eq!(rec.orphans_removed, vec![orphan.clone()]);
    assert!(!stale.exists() && !orphan.exists());
    assert!(store.package_dir(&a.digest).exists());
}
