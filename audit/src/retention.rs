//! Retention: removing old entries while keeping every later export verifiable.
//!
//! Pruning removes entries only. Leaves (32 bytes an entry) and checkpoints stay, so the tree's
//! root, the left frontier of any later export, and consistency proofs from any earlier export
//! can still be computed.

use std::sync::PoisonError;

use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use crate::entry::{Event, format_time};
use crate::error::Result;
use crate::export::first_seq_since;
use crate::log::AuditLog;
use crate::store::key;

/// Entries removed per sled batch.
const PRUNE_CHUNK: usize = 10_000;

/// What a prune did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct PruneReport {
    /// Entries removed.
    pub removed: u64,
    /// Entries below this seq are now gone.
    pub pruned_before: u64,
    /// True when older entries were kept because no export covers them yet.
    pub held_by_export: bool,
    /// True for a forced prune.
    pub forced: bool,
    /// The seq of the `policy` entry that records a forced prune.
    pub recorded_at: Option<u64>,
}

impl AuditLog {
    /// Removes entries from before `before`.
    ///
    /// Without `force`, never an entry younger than the retention period
    /// ([`crate::AuditOptions::retention_days`]) nor one that no export has covered yet (seq at
    /// or beyond the last export's tree size). With `force`, as [`AuditLog::prune_forced`] with
    /// a `policy` entry that says only that a forced prune begins. Blocking.
    pub fn prune(&self, before: OffsetDateTime, force: bool) -> Result<PruneReport> {
        if force {
            let detail = format!("forced prune of the entries from before {} begins", format_time(before));
            self.prune_forced(before, Event::Policy { detail })
        } else {
            self.remove_before(before, None)
        }
    }

    /// A forced prune, on record before anything is removed: `intent` (who forces it and why) is
    /// appended first, then every entry before `before` goes, exported or not, except the intent
    /// itself and whatever follows it (even when `before` lies in the future), and a `policy`
    /// entry records what was removed. A crash between the two leaves the intent in the log, never
    /// a prune that no entry names. Blocking.
    pub fn prune_forced(&self, before: OffsetDateTime, intent: Event) -> Result<PruneReport> {
        self.shared().refuse_if_held()?;
        let at = self.append_blocking(intent)?;
        self.remove_before(before, Some(at))
    }

    /// The prune itself; `forced_below` is the seq of a forced prune's intent entry.
    fn remove_before(&self, before: OffsetDateTime, forced_below: Option<u64>) -> Result<PruneReport> {
        let force = forced_below.is_some();
        let shared = self.shared();
        shared.refuse_if_held()?;
        let _one_at_a_time = shared.export_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let store = shared.store()?;
        let size = self.tree_size();
        let pruned = store.pruned_before()?;
        let retention_cutoff = OffsetDateTime::now_utc() - Duration::days(i64::from(shared.opts.retention_days));
        let cutoff = if force { before } else { before.min(retention_cutoff) };
        let by_time = first_seq_since(&store, cutoff, pruned, size)?;
        let exported = store.last_export()?.map_or(0, |h| h.tree_size).min(size);
        let (until, held) = match forced_below {
            Some(intent) => (by_time.min(intent), false),
            None => (by_time.min(exported), by_time > exported),
        };
        let mut report =
            PruneReport { removed: 0, pruned_before: pruned, held_by_export: held, forced: force, recorded_at: None };
        if until <= pruned {
            return Ok(report);
        }
        // Record the new bound first: a crash midway then leaves only entries below it, which
        // nothing reads, rather than a hole above it.
        store.set_pruned_before(until)?;
        store.flush("the new retention bound")?;
        let mut removed = 0u64;
        loop {
            let mut batch = sled::Batch::default();
            let mut n = 0;
            for k in store.entries.range(..key(until)).keys().take(PRUNE_CHUNK) {
                batch.remove(k.map_err(|e| store.err("listing entries to prune", e))?);
                n += 1;
            }
            if n == 0 {
                break;
            }
            store.entries.apply_batch(batch).map_err(|e| store.err("removing pruned entries", e))?;
            removed += n;
        }
        store.flush("the pruned entries")?;
        report.removed = removed;
        report.pruned_before = until;
        drop(store);
        if force {
            let detail = format!(
                "forced prune: removed seqs {pruned}..{until} ({removed} entries) from before {}; the last export covered {exported} entries",
                format_time(cutoff)
            );
            report.recorded_at = Some(self.append_blocking(Event::Policy { detail })?);
        }
        Ok(report)
    }

    /// Prunes what the retention period allows: `prune(now - retention_days, false)`.
    pub fn prune_expired(&self) -> Result<PruneReport> {
        let days = i64::from(self.shared().opts.retention_days);
        self.prune(OffsetDateTime::now_utc() - Duration::days(days), false)
    }
}
