//! A package's digest (its identity in the store, in `model list`, audit entries and attestation
//! reports) is its manifest's own `hash` over the manifest bytes: a `gm` package (`"hash":"sm3"`)
//! has the SM3 digest OpenSSL computes, lives in `sm3-<digest>/`, and every later look-up uses
//! the same algorithm; a SHA-256 package keeps the digest it always had.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::path::Path;

use govbox_images::tar::TarReader;
use govbox_images::{
    ImportOptions, MANIFEST_NAME, ModelKind, ModelMeta, ModelStore, PackageBuilder, Policy, read_head, verify_file,
};
use govbox_provisioning::{HashAlgorithm, Role, TrustRoot};

/// SHA-256 of the manifest of the committed `tests/fixtures/packages/good.gbx`
/// (`tar -xOf good.gbx govbox-manifest.json | sha256sum`), recorded before SM3 digests existed.
const GOOD_DIGEST: &str = "db1b337cad2f50c2c839800eab8f0ed6022fb62bd9bae752ab08fa3a38cbb0ac";

/// The exact bytes of member 1.
fn manifest_bytes(pkg: &Path) -> Vec<u8> {
    let mut r = TarReader::new(std::io::BufReader::new(fs::File::open(pkg).unwrap()));
    let m = r.next_member().unwrap().unwrap();
    assert_eq!(m.name.as_str(), MANIFEST_NAME);
    r.read_to_vec().unwrap()
}

fn build_sm3(dir: &Path, keys: &[&govbox_images::SigningKey]) -> (std::path::PathBuf, String) {
    let meta =
        ModelMeta { kind: ModelKind::Chat, architecture: "synthetic".into(), context_length: 64, dtype: "f32".into() };
    let out = dir.join("tiny-sm3-1.0.0.gbx");
    let built = PackageBuilder::model("tiny-sm3", "1.0.0", &common::synthetic_model(dir), meta)
        .unwrap()
        .with_hash(HashAlgorithm::Sm3)
        .write(&out, keys, &mut |_, _| {})
        .unwrap();
    assert_eq!(built.manifest.hash, HashAlgorithm::Sm3);
    (out, built.digest)
}

#[test]
fn an_sm3_package_digest_is_openssl_sm3_of_its_manifest_everywhere() {
    let Some(openssl) = common::openssl() else { return };
    let (keys, root) = common::keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let (pkg, built) = build_sm3(tmp.path(), &[&keys.models[0], &keys.models[1]]);
    let bytes = manifest_bytes(&pkg);
    let want = common::openssl_sm3(&openssl, &bytes);
    assert_eq!(built, want, "the builder's digest");
    let sha256 = govbox_provisioning::hex(&HashAlgorithm::Sha256.digest(&bytes));
    assert_ne!(want, sha256);

    let head = read_head(fs::File::open(&pkg).unwrap(), "t").unwrap();
    assert_eq!(
        (head.digest.as_str(), head.manifest.digest_label(&head.digest)),
        (want.as_str(), format!("sm3-{want}"))
    );
    let v = verify_file(&pkg, &Policy::Trust(&root, Role::Models), &mut |_, _| {}).unwrap();
    assert_eq!(v.head.digest, want, "the verifier's digest");

    let store = ModelStore::open_dir(&tmp.path().join("state/models")).unwrap();
    let imported = store.import_file(&pkg, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!(imported.digest, want, "the store's digest");
    let folder = store.dir().join(format!("sm3-{want}"));
    assert_eq!(store.package_dir(&want), folder);
    assert!(folder.join(MANIFEST_NAME).is_file() && !store.dir().join(format!("sha256-{want}")).exists());
    assert!(imported.load_path.starts_with(&folder), "{}", imported.load_path.display());
    let active = store.active_models().unwrap();
    assert_eq!((active[0].digest.as_str(), active[0].load_path.starts_with(&folder)), (want.as_str(), true));
    assert_eq!(store.list().unwrap()[0].versions[0].digest, want, "the registry's digest");
    assert_eq!(store.reverify(&want, &root, true, &mut |_, _| {}).unwrap().files_checked, 3);
    // Importing it again finds it under the same name; recovery keeps it.
    assert!(store.import_file(&pkg, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap().already_present);
    assert!(store.recover().unwrap().orphans_removed.is_empty());
    assert!(folder.is_dir());
}

#[test]
fn an_sm3_package_under_a_sha256_folder_name_is_a_corrupt_store() {
    let (keys, root) = common::keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let (pkg, digest) = build_sm3(tmp.path(), &[&keys.models[0], &keys.models[1]]);
    let store = ModelStore::open_dir(&tmp.path().join("state/models")).unwrap();
    store.import_file(&pkg, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap();
    // The same folder under the other suite's name: its SM3 manifest must not pass as SHA-256.
    fs::rename(store.dir().join(format!("sm3-{digest}")), store.dir().join(format!("sha256-{digest}"))).unwrap();
    let e = store.reverify(&digest, &root, false, &mut |_, _| {}).unwrap_err();
    assert_eq!(e.code(), "store_corrupt", "{e}");
    assert!(e.to_string().contains(&format!("the manifest's sm3 digest is not the folder's (sha256-{digest})")), "{e}");
    assert_eq!(store.active_models().unwrap_err().code(), "store_corrupt");
}

#[test]
fn a_sha256_package_keeps_the_digest_it_always_had() {
    let pkg = common::fixtures().join("packages/good.gbx");
    let bytes = manifest_bytes(&pkg);
    assert_eq!(govbox_provisioning::hex(&HashAlgorithm::Sha256.digest(&bytes)), GOOD_DIGEST, "the fixture changed");
    let root_bytes = fs::read(common::fixtures().join("packages/root.json")).unwrap();
    let root = TrustRoot::parse(&root_bytes, "root.json").unwrap();
    let v = verify_file(&pkg, &Policy::Trust(&root, Role::Models), &mut |_, _| {}).unwrap();
    assert_eq!(v.head.manifest.hash, HashAlgorithm::Sha256);
    assert_eq!(v.head.digest, GOOD_DIGEST);
    assert_eq!(v.head.manifest.digest_label(&v.head.digest), format!("sha256-{GOOD_DIGEST}"));

    let tmp = tempfile::tempdir().unwrap();
    let store = ModelStore::open_dir(&tmp.path().join("state/models")).unwrap();
    let imported = store.import_file(&pkg, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap();
    assert_eq!(imported.digest, GOOD_DIGEST);
    assert!(store.dir().join(format!("sha256-{GOOD_DIGEST}/{MANIFEST_NAME}")).is_file());
    assert_eq!(store.reverify(GOOD_DIGEST, &root, true, &mut |_, _| {}).unwrap().digest, GOOD_DIGEST);
}
