//! Export: one self-contained file for an auditor.
//!
//! Format `govbox-audit-export/1`, a JSON object:
//!
//! | field | what |
//! |---|---|
//! | `format` | `"govbox-audit-export/1"` |
//! | `device` | `audit_key_pem`, `audit_keyid`, `device_key_pem`, `device_keyid` (the last two may be null) |
//! | `from`, `to` | the first and last seq exported (inclusive) |
//! | `left_frontier` | hex roots of the maximal complete subtrees of leaves `0..from`, largest first: with them the tree root is recomputed without the earlier entries |
//! | `entries` | `[{seq, leaf, entry}]`: `entry` is the stored bytes as a JSON string, `leaf` their stored leaf hash |
//! | `head` | a signed tree head of size `to + 1`, made at export time |
//! | `checkpoints` | the stored heads with sizes in `from+1..=to+1` (other than `head`'s) |
//! | `previous` | the head of the previous export, or null |
//! | `consistency` | the RFC 6962 consistency proof from `previous` to `head` (hex) |

use std::sync::PoisonError;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::entry::{format_time, truncate_to_ms};
use crate::error::{AuditError, Result};
use crate::log::AuditLog;
use crate::merkle::consistency_proof;
use crate::sth::{SignedTreeHead, to_hex};
use crate::store::{Store, StoreLeaves, key};

/// The `format` tag of an export.
pub const EXPORT_FORMAT: &str = "govbox-audit-export/1";

/// Which entries to export. Each bound is optional: by default everything still stored, up to
/// the last durable entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportRange {
    /// The first seq.
    pub from_seq: Option<u64>,
    /// The first entry at or after this time (ignored when `from_seq` is given).
    pub since: Option<OffsetDateTime>,
    /// The last seq (inclusive).
    pub to_seq: Option<u64>,
}

/// The device's public identity, as exports carry it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Device {
    pub audit_key_pem: String,
    pub audit_keyid: String,
    pub device_key_pem: Option<String>,
    pub device_keyid: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportEntry {
    pub seq: u64,
    pub leaf: String,
    pub entry: String,
}

/// An export document (see the module documentation).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ExportDoc {
    pub format: String,
    pub device: Device,
    pub from: u64,
    pub to: u64,
    pub left_frontier: Vec<String>,
    pub entries: Vec<ExportEntry>,
    pub head: SignedTreeHead,
    pub checkpoints: Vec<SignedTreeHead>,
    pub previous: Option<SignedTreeHead>,
    pub consistency: Vec<String>,
}

/// The first seq in `lo..hi` whose entry time is at or after `t` (`hi` if none). Entry times
/// never decrease along the log (the writer sees to it), so this is a binary search.
pub(crate) fn first_seq_since(store: &Store, t: OffsetDateTime, lo: u64, hi: u64) -> Result<u64> {
    let (mut lo, mut hi) = (lo, hi);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let e = store.entry(mid)?;
        let at =
            e.parsed_time().ok_or_else(|| store.corrupt(format!("seq {mid}: time '{}' does not parse", e.time)))?;
        if at >= t {
            hi = mid;
        } else {
            lo = mid + 1;
        }
    }
    Ok(lo)
}

impl AuditLog {
    /// Exports a range as one `govbox-audit-export/1` file (the format is in [`crate::export`]).
    ///
    /// Makes a checkpoint first, signs a head for the range's end, includes the consistency
    /// proof from the previous export's head, and then records this head as the last export
    /// (unless it is older than that one). Blocking: from async code, call it on a blocking thread.
    pub fn export(&self, range: ExportRange) -> Result<Vec<u8>> {
        let shared = self.shared();
        let _one_at_a_time = shared.export_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let now_head = self.checkpoint()?;
        let store = shared.store()?;
        let size = now_head.tree_size;
        let pruned = store.pruned_before()?;
        if size == 0 {
            return Err(AuditError::Range { reason: "the log is empty".into() });
        }
        let from = match (range.from_seq, range.since) {
            (Some(f), _) => f,
            (None, Some(t)) => first_seq_since(&store, t, pruned, size)?,
            (None, None) => pruned,
        };
        let to = range.to_seq.unwrap_or(size - 1);
        if from < pruned {
            return Err(AuditError::Range { reason: format!("entries before seq {pruned} were pruned") });
        }
        if to >= size {
            return Err(AuditError::Range {
                reason: format!("seq {to} does not exist: the log ends at seq {}", size - 1),
            });
        }
        if from > to {
            return Err(AuditError::Range { reason: format!("no entries in seq {from}..={to}") });
        }

        let head = if to + 1 == size {
            now_head
        } else {
            let root = store.root_at(to + 1)?;
            let head = SignedTreeHead::sign(
                &shared.signing,
                shared.suite.hash_algorithm(),
                to + 1,
                &root,
                format_time(truncate_to_ms(OffsetDateTime::now_utc())),
            );
            let bytes = serde_json::to_vec(&head).unwrap_or_default();
            let _ = store
                .checkpoints
                .compare_and_swap(key(to + 1), None as Option<&[u8]>, Some(bytes))
                .map_err(|e| store.err("storing the export's checkpoint", e))?;
            head
        };

        let left_frontier = store.frontier_at(from)?.nodes().iter().map(|h| to_hex(h)).collect();
        let mut entries = Vec::with_capacity((to - from + 1) as usize);
        for seq in from..=to {
            let bytes = store.entry_bytes(seq)?.ok_or_else(|| store.corrupt(format!("seq {seq}: missing (gap)")))?;
            let entry = String::from_utf8(bytes.to_vec())
                .map_err(|_| store.corrupt(format!("seq {seq}: entry is not UTF-8")))?;
            let leaf = store.leaf(seq)?.ok_or_else(|| store.corrupt(format!("seq {seq}: leaf missing (gap)")))?;
            entries.push(ExportEntry { seq, leaf: to_hex(&leaf), entry });
        }
        let checkpoints = store
            .checkpoints_between(from + 1, to + 1)?
            .into_iter()
            .filter(|c| c.tree_size != head.tree_size)
            .collect();

        let previous = store.last_export()?.filter(|p| p.tree_size <= head.tree_size);
        let consistency = match &previous {
            Some(p) => consistency_proof(&mut StoreLeaves(&store), p.tree_size, head.tree_size)?,
            None => Vec::new(),
        };
        let newest = store.last_export()?.is_none_or(|p| p.tree_size <= head.tree_size);
        let doc = ExportDoc {
            format: EXPORT_FORMAT.to_string(),
            device: Device {
                audit_key_pem: shared.public.to_spki_pem(),
                audit_keyid: shared.public.keyid(),
                device_key_pem: shared.device_key.map(|k| k.to_spki_pem()),
                device_keyid: shared.device_key.map(|k| k.keyid()),
            },
            from,
            to,
            left_frontier,
            entries,
            head: head.clone(),
            checkpoints,
            previous,
            consistency: consistency.iter().map(|h| to_hex(h)).collect(),
        };
        let bytes = serde_json::to_vec_pretty(&doc).map_err(|e| store.corrupt(format!("encoding the export: {e}")))?;
        if newest {
            store.set_last_export(&head)?;
        }
        store.flush("the export's head")?;
        Ok(bytes)
    }
}
