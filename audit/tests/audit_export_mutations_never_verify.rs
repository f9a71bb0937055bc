//! Thousands of random mutations of a valid export: verification never panics, and a mutated
//! export verifies only when the mutation changed nothing that matters (JSON whitespace, an
//! equivalent escape).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Fixture, fill};
use govbox_audit::{ExportRange, verify_export};
use govbox_provisioning::PublicKey;
use serde_json::Value;

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
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, src: &[u8]) -> Vec<u8> {
    let mut b = src.to_vec();
    let interesting = b"0123456789abcdef\"\\{}[],: \n\tnulltrue-eE+.";
    for _ in 0..=rng.below(3) {
        let i = rng.below(b.len());
        match rng.below(6) {
            0 => b[i] ^= 1 << rng.below(8),
            1 => b[i] = interesting[rng.below(interesting.len())],
            2 => {
                b.remove(i);
            }
            3 => b.insert(i, interesting[rng.below(interesting.len())]),
            4 => {
                let j = rng.below(b.len());
                b.swap(i, j);
            }
            _ => {
                let len = rng.below(64).min(b.len() - i);
                let chunk = b[i..i + len].to_vec();
                let at = rng.below(b.len());
                b.splice(at..at, chunk);
            }
        }
    }
    b
}

/// The document with PEM text replaced by the key it encodes (whitespace inside PEM is neutral).
fn semantic(v: &Value) -> Option<Value> {
    let mut v = v.clone();
    for k in ["audit_key_pem", "device_key_pem"] {
        let pem = v["device"][k].as_str()?;
        let key = PublicKey::from_spki_pem(pem).ok()?;
        v["device"][k] = key.to_hex().into();
    }
    Some(v)
}

#[test]
fn random_mutations_never_panic_and_never_verify_unless_neutral() {
    let fx = Fixture::new();
    let log = fx.open();
    fill(&log, 6);
    let first = log.export(ExportRange::default()).unwrap();
    fill(&log, 5);
    log.checkpoint().unwrap();
    fill(&log, 3);
    let export = log.export(ExportRange { from_seq: Some(4), ..Default::default() }).unwrap();
    assert!(verify_export(&export, Some(&first), None).unwrap().ok);
    let original = semantic(&serde_json::from_slice(&export).unwrap()).unwrap();

    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut neutral, mut rejected, mut malformed) = (0, 0, 0);
    for iter in 0..4000 {
        let bad = mutate(&mut rng, &export);
        let with_prev = iter % 2 == 0;
        match verify_export(&bad, with_prev.then_some(first.as_slice()), None) {
            Err(_) => malformed += 1,
            Ok(r) if !r.ok => rejected += 1,
            Ok(r) => {
                let same =
                    serde_json::from_slice::<Value>(&bad).ok().and_then(|v| semantic(&v)) == Some(original.clone());
                assert!(
                    same,
                    "iteration {iter}: a meaningful mutation verified: {r:#?}\n{}",
                    String::from_utf8_lossy(&bad)
                );
                neutral += 1;
            }
        }
    }
    println!("neutral {neutral} rejected {rejected} malformed {malformed}");
    // Every outcome happens: the test exercises each path.
    assert!(
        neutral > 0 && rejected > 100 && malformed > 100,
        "neutral {neutral} rejected {rejected} malformed {malformed}"
    );
}
