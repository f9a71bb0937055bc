//! A package whose signatures fail has had no byte of its payload read: verification reads the
//! manifest and signature members exactly, checks the signatures, and only then the payload.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Read;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use govbox_images::corpus::write_corpus;
use govbox_images::{ImportOptions, ModelStore, Policy, verify_reader};
use govbox_provisioning::Role;

/// Counts the bytes taken from the inner reader.
struct Counting<R>(R, Arc<AtomicU64>);

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        self.1.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

fn padded(n: u64) -> u64 {
    n.div_ceil(512) * 512
}

#[test]
fn failed_signatures_stop_before_the_payload() {
    let (keys, root) = common::keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let cases = write_corpus(&tmp.path().join("c"), &keys, &common::tiny_qwen2()).unwrap();
    let store = ModelStore::open_dir(&tmp.path().join("models")).unwrap();
    for name in ["unsigned", "below_threshold", "updates_role_instead_of_models", "manifest_byte_flipped"] {
        let case = cases.iter().find(|c| c.name == name).unwrap();
        let bytes = std::fs::read(&case.file).unwrap();
        let manifest_len = u64::from_str_radix(std::str::from_utf8(&bytes[124..135]).unwrap(), 8).unwrap();
        let sig_at = 512 + padded(manifest_len) as usize;
        let sig_len = u64::from_str_radix(std::str::from_utf8(&bytes[sig_at + 124..sig_at + 135]).unwrap(), 8).unwrap();
        let head_len = 512 + padded(manifest_len) + 512 + padded(sig_len);

        let count = Arc::new(AtomicU64::new(0));
        let policy = Policy::Trust(&root, Role::Models);
        let err = verify_reader(Counting(&bytes[..], count.clone()), name, &policy, &mut |_, _| {}).unwrap_err();
        assert_eq!(err.code(), case.expect_code);
        assert_eq!(count.load(Ordering::Relaxed), head_len, "{name}: read past the signature member");

        let count = Arc::new(AtomicU64::new(0));
        let opts = ImportOptions::default();
        store.import(Counting(&bytes[..], count.clone()), name, &root, &opts, &mut |_, _| {}).unwrap_err();
        assert_eq!(count.load(Ordering::Relaxed), head_len, "{name}: import read past the signature member");
        assert_eq!(std::fs::read_dir(store.dir()).unwrap().count(), 1, "{name}: only the lock file exists");
    }
}
