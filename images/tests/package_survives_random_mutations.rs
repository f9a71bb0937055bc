//! Thousands of random mutations of a good package (bit flips, truncations, splices, insertions,
//! deletions) go through `verify`: none panics, and whenever one is accepted, the manifest and
//! every payload member it carries are exactly the original ones. This runs on stable the same
//! code that the `package_tar` fuzz target drives.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use govbox_images::corpus::{GOOD, write_corpus};
use govbox_images::tar::{MemberName, TarReader};
use govbox_images::{Policy, verify_reader};
use govbox_provisioning::Role;

/// xorshift64*: deterministic, so a failure can be replayed from its iteration number.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, good: &[u8]) -> Vec<u8> {
    let mut b = good.to_vec();
    for _ in 0..1 + rng.below(3) {
        let len = b.len();
        match rng.below(6) {
            0 => {
                let i = rng.below(len);
                b[i] ^= 1 << rng.below(8);
            }
            1 => b.truncate(rng.below(len)),
            2 => {
                // Splice: copy a run from one place over another.
                let (from, to, n) = (rng.below(len), rng.below(len), 1 + rng.below(600));
                let run: Vec<u8> = b[from..(from + n).min(len)].to_vec();
                let end = (to + run.len()).min(len);
                b[to..end].copy_from_slice(&run[..end - to]);
            }
            3 => {
                let at = rng.below(len);
                let junk: Vec<u8> = (0..1 + rng.below(700)).map(|_| rng.next() as u8).collect();
                b.splice(at..at, junk);
            }
            4 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(1024)).min(len);
                b.drain(at..end);
            }
            _ => {
                // Overwrite a byte in a header-sized neighbourhood with an interesting value.
                let i = rng.below(len);
                b[i] = [0u8, 0xff, b'0', b'/', b'.', 0x80][rng.below(6)];
            }
        }
        if b.is_empty() {
            break;
        }
    }
    b
}

fn members(bytes: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut r = TarReader::new(bytes);
    let mut out = BTreeMap::new();
    while let Ok(Some(m)) = r.next_member() {
        let data = r.read_to_vec().unwrap();
        let name = match m.name {
            MemberName::Manifest => "manifest".to_string(),
            other => other.as_str().to_string(),
        };
        out.entry(name).or_insert(data);
    }
    out
}

#[test]
fn mutated_packages_never_panic_and_are_accepted_only_unchanged() {
    let (keys, root) = common::keys_and_root();
    let tmp = tempfile::tempdir().unwrap();
    let model = common::synthetic_model(tmp.path());
    let cases = write_corpus(&tmp.path().join("c"), &keys, &model).unwrap();
    let good = std::fs::read(&cases.iter().find(|c| c.expect_code == GOOD).unwrap().file).unwrap();
    let original = members(&good);
    let policy = Policy::Trust(&root, Role::Models);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut accepted, mut codes) = (0, BTreeMap::<&str, usize>::new());
    for i in 0..4000 {
        let bad = mutate(&mut rng, &good);
        match verify_reader(&bad[..], "mutant", &policy, &mut |_, _| {}) {
            Ok(v) => {
                accepted += 1;
                let got = members(&bad);
                assert_eq!(v.head.manifest_bytes, original["manifest"], "iteration {i}");
                for f in &v.head.manifest.files {
                    assert_eq!(got[f.path.as_str()], original[f.path.as_str()], "iteration {i}: {}", f.path);
                }
            }
            Err(e) => *codes.entry(e.code()).or_default() += 1,
        }
    }
    // Accepted mutants can only be ones that touched padding-free slack (e.g. zero record
    // padding); the rest must have been refused for a variety of reasons.
    assert!(accepted < 400, "{accepted} accepted");
    assert!(codes.len() >= 6, "{codes:?}");
}
