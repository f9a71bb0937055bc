//! Verification of the live store: entries against leaves against every stored checkpoint.

use crate::entry::Entry;
use crate::error::Result;
use crate::log::AuditLog;
use crate::merkle::{Frontier, Hash, leaf_hash};
use crate::store::key;
use crate::verify::{Checks, VerifyReport};

impl AuditLog {
    /// Checks the whole durable log in the store, as [`crate::verify_export`] checks an export:
    /// no leaf or (unpruned) entry is missing, each entry hashes to its leaf and carries its
    /// seq, every stored checkpoint's root matches the leaves and its signature verifies, and
    /// so does the last export's head. Reads every leaf: O(n).
    ///
    /// Removing the newest entries together with their leaves and checkpoints cannot be seen
    /// here (the store then simply looks shorter, unless the last export covers them); an
    /// auditor detects it by verifying the next export against the previous one.
    pub fn verify_store(&self) -> Result<VerifyReport> {
        let shared = self.shared();
        let store = shared.store()?;
        let size = self.tree_size();
        let pruned = store.pruned_before()?;
        let mut checks = Checks::default();
        let mut gaps = Vec::new();

        // Leaves 0..size, without gaps, with the roots at every checkpoint's size on the way.
        let cps = store.checkpoints_between(0, u64::MAX)?;
        let mut roots: Vec<(u64, Hash)> = Vec::new();
        let mut want_sizes =
            cps.iter().map(|c| c.tree_size).chain(store.last_export()?.map(|h| h.tree_size)).collect::<Vec<_>>();
        want_sizes.sort_unstable();
        want_sizes.dedup();
        let mut want = want_sizes.iter().peekable();
        let mut f = Frontier::new(store.hash);
        let mut take_roots = |f: &Frontier, roots: &mut Vec<(u64, Hash)>| {
            while let Some(s) = want.next_if(|s| **s <= f.size()) {
                if *s == f.size() {
                    roots.push((*s, f.root()));
                }
            }
        };
        take_roots(&f, &mut roots);
        for kv in store.leaves.range(key(0)..key(size)) {
            let (k, v) = kv.map_err(|e| store.err("reading leaves", e))?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0xff; 8]));
            let leaf: Hash = v.as_ref().try_into().unwrap_or([0; 32]);
            if seq != f.size() {
                // A leaf is missing: the tree cannot be recomputed past it.
                gaps.push((f.size(), seq.saturating_sub(1)));
                checks.seq_failure("leaf", format!("seq {}: leaf missing (gap)", f.size()));
                break;
            }
            f.push(leaf);
            take_roots(&f, &mut roots);
        }
        if f.size() < size && gaps.is_empty() {
            gaps.push((f.size(), size - 1));
            checks.seq_failure("leaf", format!("seq {}: leaf missing (gap)", f.size()));
        }

        // Entries pruned..size against their leaves.
        let mut count = 0u64;
        let mut expected = pruned;
        for kv in store.entries.range(key(pruned)..key(size)) {
            let (k, bytes) = kv.map_err(|e| store.err("reading entries", e))?;
            let seq = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0xff; 8]));
            if seq > expected {
                gaps.push((expected, seq - 1));
                let which = if seq - 1 == expected {
                    format!("seq {expected}")
                } else {
                    format!("seqs {expected}..={}", seq - 1)
                };
                checks.seq_failure("entry", format!("{which}: missing (gap)"));
            }
            expected = seq + 1;
            count += 1;
            match store.leaf(seq)? {
                Some(leaf) if leaf == leaf_hash(store.hash, &bytes) => {}
                Some(_) => checks.seq_failure("entry", format!("seq {seq}: entry hash mismatch")),
                None => checks.seq_failure("entry", format!("seq {seq}: entry without a leaf")),
            }
            match Entry::from_bytes(&bytes) {
                Ok(e) if e.seq == seq => {}
                Ok(e) => checks.seq_failure("entry", format!("seq {seq}: entry seq field is {}", e.seq)),
                Err(e) => checks.seq_failure("entry", format!("seq {seq}: not a valid entry: {e}")),
            }
        }
        if expected < size {
            gaps.push((expected, size - 1));
            let which = if expected == size - 1 {
                format!("seq {expected}")
            } else {
                format!("seqs {expected}..={}", size - 1)
            };
            checks.seq_failure("entry", format!("{which}: missing (gap)"));
        }
        if checks.seq_failures() == 0 {
            checks.add("entries", true, format!("{count} entries, seq {pruned}..{size}, each hashes to its leaf"));
        }

        // Checkpoints and the last export.
        let root_at = |s: u64| roots.iter().find(|(n, _)| *n == s).map(|(_, r)| *r);
        for cp in &cps {
            let root_ok = root_at(cp.tree_size).is_some_and(|r| cp.root() == Some(r));
            let detail = match (cp.tree_size > size, root_ok) {
                (true, _) => "beyond the end of the log".to_string(),
                (false, true) => "root matches the leaves".to_string(),
                (false, false) => "root differs from the leaves".to_string(),
            };
            checks.add("checkpoint", root_ok, format!("checkpoint {}: {detail}", cp.tree_size));
            if let Err(e) = cp.verify(&shared.public) {
                checks.add("signature", false, format!("checkpoint {}: {e}", cp.tree_size));
            }
        }
        if !cps.is_empty() && cps.iter().all(|c| c.verify(&shared.public).is_ok()) {
            checks.add("signature", true, format!("{} checkpoints signed by {}", cps.len(), shared.public.keyid()));
        }
        if let Some(h) = store.last_export()? {
            let ok = root_at(h.tree_size).is_some_and(|r| h.root() == Some(r)) && h.verify(&shared.public).is_ok();
            checks.add(
                "last export",
                ok,
                format!(
                    "the last export's head (size {}) {}",
                    h.tree_size,
                    if ok { "matches" } else { "does not match the leaves" }
                ),
            );
        }

        let (checks, ok) = checks.finish();
        Ok(VerifyReport {
            from: pruned,
            to: size.saturating_sub(1),
            count,
            gaps,
            tree_size: size,
            audit_keyid: shared.public.keyid(),
            device_keyid: shared.device_key.map(|k| k.keyid()),
            checks,
            ok,
        })
    }
}
