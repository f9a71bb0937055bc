//! Piece digests (`chunks` in a manifest's file entry): the vendor signs the digest of every
//! piece of a large file, import checks them as well as the whole-file digest, and the check at
//! start reads the pieces on all hashing threads and names the piece that is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use govbox_images::tar::{TarReader, TarWriter};
use govbox_images::{
    ImportOptions, MANIFEST_NAME, Manifest, ModelKind, ModelMeta, ModelStore, PackageBuilder, Policy, SIGNATURES_NAME,
    SignatureFile, SigningKey, read_head, verify_file,
};
use govbox_provisioning::{HashAlgorithm, Role, hex};

const MIB: u64 = 1 << 20;

/// A model folder with one 3.5 MiB file (four pieces of 1 MiB) and one small file.
fn model(dir: &Path) -> (PathBuf, Vec<u8>) {
    let m = dir.join("model");
    fs::create_dir_all(&m).unwrap();
    fs::write(m.join("config.json"), br#"{"model_type":"synthetic","max_position_embeddings":64}"#).unwrap();
    let weights: Vec<u8> = (0..(7 * MIB / 2) as u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    fs::write(m.join("weights.bin"), &weights).unwrap();
    (m, weights)
}

fn builder(src: &Path, hash: HashAlgorithm, chunk: Option<u64>) -> PackageBuilder {
    let meta =
        ModelMeta { kind: ModelKind::Chat, architecture: "synthetic".into(), context_length: 64, dtype: "f32".into() };
    PackageBuilder::model("pieces", "1.0.0", src, meta).unwrap().with_hash(hash).with_chunk_size(chunk).unwrap()
}

fn writable(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o644)).unwrap();
}

#[test]
fn piece_digests_are_signed_and_checked_at_import_and_at_start() {
    let (keys, root) = common::keys_and_root();
    let signers = [&keys.models[0], &keys.models[1]];
    for hash in [HashAlgorithm::Sha256, HashAlgorithm::Sm3] {
        let tmp = tempfile::tempdir().unwrap();
        let (src, weights) = model(tmp.path());
        let pkg = tmp.path().join("pieces.gbx");
        let built = builder(&src, hash, Some(MIB)).write(&pkg, &signers, &mut |_, _| {}).unwrap();

        // The manifest lists the pieces of the large file only, each the digest of its bytes.
        let entry = built.manifest.files.iter().find(|f| f.path.as_str() == "weights.bin").unwrap();
        let pieces = entry.chunks.as_ref().expect("weights.bin has piece digests");
        assert_eq!(pieces.size, MIB);
        let want: Vec<String> = weights.chunks(MIB as usize).map(|p| hex(&hash.digest(p))).collect();
        assert_eq!((pieces.digests.len(), &pieces.digests), (4, &want));
        assert_eq!(entry.sha256, hex(&hash.digest(&weights)));
        assert!(built.manifest.files.iter().find(|f| f.path.as_str() == "config.json").unwrap().chunks.is_none());

        verify_file(&pkg, &Policy::Trust(&root, Role::Models), &mut |_, _| {}).unwrap();
        let store = ModelStore::open_dir(&tmp.path().join("state/models")).unwrap();
        let imported = store.import_file(&pkg, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap();
        let mut last = (0, 0);
        let r = store.reverify(&imported.digest, &root, true, &mut |d, t| last = (d, t)).unwrap();
        let total = built.manifest.payload_bytes();
        assert_eq!((r.files_checked, r.bytes_hashed, last), (2, total, (total, total)));

        // One byte changed in the third piece of the stored file: the check names that piece.
        let stored = store.package_dir(&imported.digest).join("payload/weights.bin");
        writable(&stored);
        let mut bad = weights.clone();
        bad[(2 * MIB + 5) as usize] ^= 1;
        fs::write(&stored, &bad).unwrap();
        let e = store.reverify(&imported.digest, &root, true, &mut |_, _| {}).unwrap_err();
        assert_eq!(e.code(), "sha256_mismatch", "{e}");
        let range = format!("bytes {}..{}", 2 * MIB, 3 * MIB);
        assert!(e.to_string().contains(&format!("weights.bin (piece 3 of 4, {range})")), "{e}");
        // One byte too many, or too few: the size is wrong.
        for len in [weights.len() + 1, weights.len() - 1, 2 * MIB as usize - 1] {
            let mut f = weights.clone();
            f.resize(len, 7);
            fs::write(&stored, &f).unwrap();
            let e = store.reverify(&imported.digest, &root, true, &mut |_, _| {}).unwrap_err();
            assert_eq!(e.code(), "size_mismatch", "{len}: {e}");
            assert!(e.to_string().contains(&len.to_string()), "{e}");
        }
        fs::write(&stored, &weights).unwrap();
        store.reverify(&imported.digest, &root, true, &mut |_, _| {}).unwrap();
    }
}

#[test]
fn whole_file_digests_only_when_asked_and_bad_piece_sizes_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, _) = model(tmp.path());
    let (keys, _) = common::keys_and_root();
    let mut b = builder(&src, HashAlgorithm::Sha256, None);
    b.hash(&mut |_, _| {}).unwrap();
    let bytes = b.manifest().unwrap().to_canonical_bytes().unwrap();
    assert!(!String::from_utf8_lossy(&bytes).contains("chunks"));
    b.write(&tmp.path().join("plain.gbx"), &[&keys.models[0]], &mut |_, _| {}).unwrap();
    // A file of exactly one piece gets no piece digests.
    let mut b = builder(&src, HashAlgorithm::Sha256, Some(4 * MIB));
    b.hash(&mut |_, _| {}).unwrap();
    assert!(b.manifest().unwrap().files.iter().all(|f| f.chunks.is_none()));
    for size in [3 * MIB / 2, MIB / 2, 2 << 30] {
        let meta = ModelMeta {
            kind: ModelKind::Chat,
            architecture: "synthetic".into(),
            context_length: 64,
            dtype: "f32".into(),
        };
        let e = PackageBuilder::model("pieces", "1.0.0", &src, meta).unwrap().with_chunk_size(Some(size)).unwrap_err();
        assert!(e.to_string().contains("power of two from 1 MiB to 1024 MiB"), "{e}");
    }
}

/// Rewrites `pkg` with its manifest edited by `edit` and signed again by `keys`: a package the
/// vendor's keys really signed, whose piece digests do not match its bytes.
fn resign(pkg: &Path, out: &Path, keys: &[&SigningKey], edit: impl FnOnce(&mut Manifest)) {
    let head = read_head(fs::File::open(pkg).unwrap(), "t").unwrap();
    let mut manifest = head.manifest.clone();
    edit(&mut manifest);
    let bytes = manifest.to_canonical_bytes().unwrap();
    let sigs = SignatureFile::sign(&bytes, keys).to_bytes();
    let mut r = TarReader::new(std::io::BufReader::new(fs::File::open(pkg).unwrap()));
    let mut w = TarWriter::new(fs::File::create(out).unwrap());
    w.append(MANIFEST_NAME, &bytes).unwrap();
    w.append(SIGNATURES_NAME, &sigs).unwrap();
    while let Some(m) = r.next_member().unwrap() {
        let data = r.read_to_vec().unwrap();
        if m.name.as_str() != MANIFEST_NAME && m.name.as_str() != SIGNATURES_NAME {
            w.begin(m.name.as_str(), data.len() as u64).unwrap();
            w.write_data(&data).unwrap();
        }
    }
    w.finish().unwrap().flush().unwrap();
}

#[test]
fn a_signed_package_whose_pieces_disagree_with_its_bytes_is_refused_at_import() {
    let (keys, root) = common::keys_and_root();
    let signers = [&keys.models[0], &keys.models[1]];
    let tmp = tempfile::tempdir().unwrap();
    let (src, _) = model(tmp.path());
    let pkg = tmp.path().join("good.gbx");
    builder(&src, HashAlgorithm::Sha256, Some(MIB)).write(&pkg, &signers, &mut |_, _| {}).unwrap();
    let bad = tmp.path().join("bad.gbx");
    resign(&pkg, &bad, &signers, |m| {
        let pieces = m.files.iter_mut().find_map(|f| f.chunks.as_mut()).unwrap();
        pieces.digests[3] = "00".repeat(32);
    });
    let e = verify_file(&bad, &Policy::Trust(&root, Role::Models), &mut |_, _| {}).unwrap_err();
    assert_eq!(e.code(), "sha256_mismatch", "{e}");
    let last = 3 * MIB;
    assert!(e.to_string().contains(&format!("weights.bin (piece 4 of 4, bytes {last}..{})", 7 * MIB / 2)), "{e}");
    let store_dir = tmp.path().join("state/models");
    let store = ModelStore::open_dir(&store_dir).unwrap();
    let before = common::snapshot(&store_dir);
    let e = store.import_file(&bad, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap_err();
    assert_eq!(e.code(), "sha256_mismatch", "{e}");
    assert_eq!(common::snapshot(&store_dir), before, "a refused import leaves the store as it was");
    // The same edit re-signed as it was is imported: the refusal came from the pieces.
    let same = tmp.path().join("same.gbx");
    resign(&pkg, &same, &signers, |_| {});
    store.import_file(&same, &root, &ImportOptions::default(), &mut |_, _| {}).unwrap();
}
