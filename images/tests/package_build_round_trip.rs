//! What `PackageBuilder` writes verifies, extracts to the same bytes, and is a plain ustar file
//! that other tar readers list; what it cannot package safely it refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;

use govbox_images::{ImportOptions, ModelKind, ModelMeta, ModelStore, PackageBuilder, Policy, read_head, verify_file};
use govbox_provisioning::Role;

fn meta() -> ModelMeta {
    ModelMeta { kind: ModelKind::Chat, architecture: "qwen2".into(), context_length: 128, dtype: "f32".into() }
}

#[test]
fn folder_package_round_trips_through_verify_and_import() {
    let (keys, root) = common::keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("model");
    fs::create_dir(&src).unwrap();
    for f in fs::read_dir(common::tiny_qwen2()).unwrap() {
        let f = f.unwrap();
        fs::copy(f.path(), src.join(f.file_name())).unwrap();
    }
    fs::create_dir(src.join(".git")).unwrap();
    fs::write(src.join(".git/HEAD"), b"ref").unwrap();
    std::os::unix::fs::symlink(src.join("config.json"), src.join("linked.json")).unwrap();

    let mut b = PackageBuilder::model("tiny-qwen2", "0.1.0", &src, meta()).unwrap();
    let names: Vec<String> = b.files().map(|(p, _, _)| p.to_string()).collect();
    assert!(!names.iter().any(|n| n.starts_with(".git")), "hidden files are left out: {names:?}");
    assert!(names.contains(&"linked.json".to_string()), "links to files are followed");
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted);
    assert_eq!(b.load_path(), Some("."));
    let out = tmp.path().join("tiny.gbx");
    let mut last = (0, 1);
    let built = b.write(&out, &[&keys.models[0], &keys.models[1]], &mut |d, t| last = (d, t)).unwrap();
    assert_eq!(last.0, last.1);
    assert_eq!(built.archive_bytes, fs::metadata(&out).unwrap().len());
    assert_eq!(fs::read_dir(tmp.path()).unwrap().count(), 2, "no temporary file is left beside the output");

    let v = verify_file(&out, &Policy::Trust(&root, Role::Models), &mut |_, _| {}).unwrap();
    assert_eq!(v.head.digest, built.digest);
    assert_eq!(v.archive_bytes, built.archive_bytes);
    let head = read_head(fs::File::open(&out).unwrap(), "tiny.gbx").unwrap();
    assert_eq!(head.signatures.keyids().len(), 2);

    let store = ModelStore::open_dir(&tmp.path().join("models")).unwrap();
    let imp = store.import_file(&out, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap();
    for name in &names {
        assert_eq!(fs::read(imp.load_path.join(name)).unwrap(), fs::read(src.join(name)).unwrap(), "{name}");
    }

    // Other tar readers see the same members.
    if let Ok(o) = std::process::Command::new("tar").arg("-tf").arg(&out).output()
        && o.status.success()
    {
        let listed = String::from_utf8(o.stdout).unwrap();
        let mut want = vec!["govbox-manifest.json".to_string(), "govbox-manifest.sig".to_string()];
        want.extend(names);
        assert_eq!(listed.lines().collect::<Vec<_>>(), want);
    }
}

#[test]
fn gguf_file_package_loads_the_file() {
    let (keys, root) = common::keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let gguf = common::fixtures().join("gguf/tiny-qwen2-q8_0.gguf");
    let mut b = PackageBuilder::model("tiny-gguf", "1.0.0", &gguf, meta()).unwrap();
    assert_eq!(b.load_path(), Some("tiny-qwen2-q8_0.gguf"));
    let out = tmp.path().join("g.gbx");
    b.write(&out, &[&keys.models[0], &keys.models[1]], &mut |_, _| {}).unwrap();
    let store = ModelStore::open_dir(&tmp.path().join("models")).unwrap();
    let imp = store.import_file(&out, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap();
    assert!(imp.load_path.ends_with("payload/tiny-qwen2-q8_0.gguf"));
    assert_eq!(fs::read(&imp.load_path).unwrap(), fs::read(&gguf).unwrap());
}

#[test]
fn builder_refuses_what_it_cannot_package() {
    let (keys, _) = common::keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let model = common::synthetic_model(tmp.path());
    let e = PackageBuilder::model("tiny", "1.0.0", &model.join("model.bin"), meta()).unwrap_err();
    assert!(e.to_string().contains("neither a model folder nor a .gguf file"), "{e}");
    assert!(PackageBuilder::model("bad name", "1.0.0", &model, meta()).is_err());
    assert!(PackageBuilder::model("tiny", "1.0", &model, meta()).is_err());
    std::os::unix::fs::symlink(tmp.path(), model.join("loop")).unwrap();
    let e = PackageBuilder::model("tiny", "1.0.0", &model, meta()).unwrap_err();
    assert!(e.to_string().contains("links to folders are not followed"), "{e}");
    fs::remove_file(model.join("loop")).unwrap();
    let mut b = PackageBuilder::model("tiny", "1.0.0", &model, meta()).unwrap();
    let e = b.write(&tmp.path().join("x.gbx"), &[], &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("at least one signing key"), "{e}");
    // A file that changes between the hashing pass and the writing pass fails the build.
    b.hash(&mut |_, _| {}).unwrap();
    fs::write(model.join("model.bin"), vec![0u8; 3000]).unwrap();
    let e = b.write(&tmp.path().join("y.gbx"), &[&keys.models[0]], &mut |_, _| {}).unwrap_err();
    assert!(e.to_string().contains("changed while the package was built"), "{e}");
    assert!(!tmp.path().join("y.gbx").exists());
}
