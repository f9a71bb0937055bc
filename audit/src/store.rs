//! The sled store at `STATE/audit/db` and how it is read back.
//!
//! Trees:
//! - `entries`: seq (u64 big-endian) → the entry's stored bytes;
//! - `leaves`: seq → its 32-byte leaf hash; never pruned;
//! - `checkpoints`: tree size (u64 big-endian) → signed tree head JSON;
//! - `meta`: `frontier` (the tree's frontier at the last checkpoint, so that opening replays only
//!   the entries after it), `last_export` (the head of the last export), `pruned_before` (u64
//!   big-endian: entries below this seq were removed by retention).
//!
//! An append writes `entries` and `leaves` in one sled transaction; a checkpoint writes
//! `checkpoints` and `meta.frontier` in one. Nothing is ever half there.

use std::path::{Path, PathBuf};
use std::time::Duration;

use govbox_provisioning::{HexCase, unhex};
use serde::{Deserialize, Serialize};
use sled::IVec;

use crate::entry::Entry;
use crate::error::{AuditError, Result};
use crate::merkle::{Frontier, Hash, HashAlgorithm, TreeSource, leaf_hash};
use crate::sth::{SignedTreeHead, to_hex};

const META_FRONTIER: &[u8] = b"frontier";
/// The tree's hash, `sha256` or `sm3`; absent in stores made before SM3 (SHA-256).
const META_HASH: &[u8] = b"hash";
const META_LAST_EXPORT: &[u8] = b"last_export";
const META_PRUNED_BEFORE: &[u8] = b"pruned_before";
/// How long opening waits for a lock that a previous opener (this process's own previous handle,
/// after an I/O error) is just releasing: sled drops its file lock from a background thread.
const LOCK_WAIT: Duration = Duration::from_secs(2);
/// sled's page cache (sled's default is 1 GiB). The log is appended to sequentially (only the
/// rightmost pages are hot) and read rarely (export, verify, the latest checkpoint), so a small
/// cache suffices. At saturation govboxd appends ~100 entries a second (503s are audited too): a
/// 16 MiB cache was still filling 10 minutes into the reliability soak (+14 MB of heap after
/// warm-up, read as growth), a 4 MiB one was full within the warm-up (tests/RELIABILITY.md).
const CACHE_BYTES: u64 = 4 << 20;

/// The store key of a seq or a tree size.
pub(crate) fn key(n: u64) -> [u8; 8] {
    n.to_be_bytes()
}

fn key_value(k: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

#[derive(Serialize, Deserialize)]
struct FrontierRecord {
    size: u64,
    nodes: Vec<String>,
}

pub(crate) fn encode_frontier(f: &Frontier) -> Vec<u8> {
    let rec = FrontierRecord { size: f.size(), nodes: f.nodes().iter().map(|h| to_hex(h)).collect() };
    serde_json::to_vec(&rec).unwrap_or_default()
}

/// What opening found: the state the writer continues from.
pub(crate) struct Recovered {
    pub frontier: Frontier,
    pub last_time: Option<time::OffsetDateTime>,
    pub last_checkpoint: Option<SignedTreeHead>,
}

/// An open store.
pub(crate) struct Store {
    pub path: PathBuf,
    pub db: sled::Db,
    pub entries: sled::Tree,
    pub leaves: sled::Tree,
    pub checkpoints: sled::Tree,
    pub meta: sled::Tree,
    /// The tree's hash (the box's suite's), recorded in `meta` at creation.
    pub hash: HashAlgorithm,
}

impl Store {
    /// Opens (or creates) the database folder `path`, whose tree is hashed with `hash`.
    pub fn open(path: &Path, hash: HashAlgorithm) -> Result<Self> {
        let config = sled::Config::new().path(path).cache_capacity(CACHE_BYTES);
        let db = govbox_provisioning::open_sled(&config, LOCK_WAIT).map_err(|source| {
            if govbox_provisioning::is_sled_lock_error(&source) {
                AuditError::Locked { path: path.to_path_buf() }
            } else {
                AuditError::Store { action: "opening".into(), path: path.to_path_buf(), source }
            }
        })?;
        let tree = |name: &str| {
            db.open_tree(name).map_err(|source| AuditError::Store {
                action: format!("opening tree '{name}'"),
                path: path.to_path_buf(),
                source,
            })
        };
        let store = Self {
            entries: tree("entries")?,
            leaves: tree("leaves")?,
            checkpoints: tree("checkpoints")?,
            meta: tree("meta")?,
            db,
            path: path.to_path_buf(),
            hash,
        };
        store.check_hash()?;
        Ok(store)
    }

    /// Records the tree's hash in a new store, and refuses a store made with another: one tree
    /// never mixes hashes. A store with leaves but no record predates SM3 and is SHA-256.
    fn check_hash(&self) -> Result<()> {
        let stored = self.meta.get(META_HASH).map_err(|e| self.err("reading meta.hash", e))?;
        let found = match stored {
            Some(v) => HashAlgorithm::parse(&String::from_utf8_lossy(&v))
                .ok_or_else(|| self.corrupt(format!("meta.hash is '{}'", String::from_utf8_lossy(&v))))?,
            None if self.leaf_count()? > 0 => HashAlgorithm::Sha256,
            None => {
                self.meta.insert(META_HASH, self.hash.as_str()).map_err(|e| self.err("writing meta.hash", e))?;
                return Ok(());
            }
        };
        if found != self.hash {
            return Err(self.corrupt(format!(
                "the log's tree is hashed with {found}, but the box's suite hashes with {}; refusing to mix them",
                self.hash
            )));
        }
        Ok(())
    }

    pub fn err(&self, action: impl Into<String>, source: sled::Error) -> AuditError {
        AuditError::Store { action: action.into(), path: self.path.clone(), source }
    }

    pub fn corrupt(&self, detail: impl Into<String>) -> AuditError {
        AuditError::Corrupt { path: self.path.clone(), detail: detail.into() }
    }

    /// The leaf hash of `seq`.
    pub fn leaf(&self, seq: u64) -> Result<Option<Hash>> {
        let v = self.leaves.get(key(seq)).map_err(|e| self.err(format!("reading leaf {seq}"), e))?;
        v.map(|v| v.as_ref().try_into().map_err(|_| self.corrupt(format!("seq {seq}: leaf is not 32 bytes"))))
            .transpose()
    }

    /// The stored bytes of entry `seq`.
    pub fn entry_bytes(&self, seq: u64) -> Result<Option<IVec>> {
        self.entries.get(key(seq)).map_err(|e| self.err(format!("reading entry {seq}"), e))
    }

    /// The parsed entry `seq`, which must be present.
    pub fn entry(&self, seq: u64) -> Result<Entry> {
        let bytes = self.entry_bytes(seq)?.ok_or_else(|| self.corrupt(format!("seq {seq}: missing")))?;
        Entry::from_bytes(&bytes).map_err(|e| self.corrupt(format!("seq {seq}: not a valid entry: {e}")))
    }

    fn last_key(&self, tree: &sled::Tree, what: &str) -> Result<Option<u64>> {
        match tree.last().map_err(|e| self.err(format!("reading the last {what}"), e))? {
            None => Ok(None),
            Some((k, _)) => key_value(&k).map(Some).ok_or_else(|| self.corrupt(format!("a {what} key is not 8 bytes"))),
        }
    }

    /// Entries below this seq were pruned.
    pub fn pruned_before(&self) -> Result<u64> {
        let v = self.meta.get(META_PRUNED_BEFORE).map_err(|e| self.err("reading meta.pruned_before", e))?;
        Ok(v.and_then(|v| key_value(&v)).unwrap_or(0))
    }

    pub fn set_pruned_before(&self, seq: u64) -> Result<()> {
        self.meta.insert(META_PRUNED_BEFORE, &key(seq)).map_err(|e| self.err("writing meta.pruned_before", e))?;
        Ok(())
    }

    fn head_at(&self, tree: &sled::Tree, k: &[u8], what: &str) -> Result<Option<SignedTreeHead>> {
        let v = tree.get(k).map_err(|e| self.err(format!("reading {what}"), e))?;
        v.map(|v| serde_json::from_slice(&v).map_err(|e| self.corrupt(format!("{what} is not a tree head: {e}"))))
            .transpose()
    }

    /// The head of the last export.
    pub fn last_export(&self) -> Result<Option<SignedTreeHead>> {
        self.head_at(&self.meta, META_LAST_EXPORT, "meta.last_export")
    }

    pub fn set_last_export(&self, head: &SignedTreeHead) -> Result<()> {
        let v = serde_json::to_vec(head).unwrap_or_default();
        self.meta.insert(META_LAST_EXPORT, v).map_err(|e| self.err("writing meta.last_export", e))?;
        Ok(())
    }

    /// The stored checkpoint of size `size`.
    pub fn checkpoint(&self, size: u64) -> Result<Option<SignedTreeHead>> {
        self.head_at(&self.checkpoints, &key(size), &format!("checkpoint {size}"))
    }

    /// The stored checkpoints with `lo <= tree_size <= hi`, by size.
    pub fn checkpoints_between(&self, lo: u64, hi: u64) -> Result<Vec<SignedTreeHead>> {
        let mut out = Vec::new();
        for kv in self.checkpoints.range(key(lo)..=key(hi)) {
            let (k, v) = kv.map_err(|e| self.err("reading checkpoints", e))?;
            let size = key_value(&k).unwrap_or(u64::MAX);
            let head: SignedTreeHead = serde_json::from_slice(&v)
                .map_err(|e| self.corrupt(format!("checkpoint {size} is not a tree head: {e}")))?;
            out.push(head);
        }
        Ok(out)
    }

    /// The checkpoint with the largest tree size.
    pub fn last_checkpoint(&self) -> Result<Option<SignedTreeHead>> {
        match self.last_key(&self.checkpoints, "checkpoint")? {
            None => Ok(None),
            Some(size) => self.checkpoint(size),
        }
    }

    /// The frontier of the first `size` leaves, from the leaves tree.
    pub fn frontier_at(&self, size: u64) -> Result<Frontier> {
        let mut f = Frontier::new(self.hash);
        self.extend(&mut f, size)?;
        Ok(f)
    }

    /// Appends leaves `f.size()..end` to `f`, checking that none is missing.
    pub fn extend(&self, f: &mut Frontier, end: u64) -> Result<()> {
        if f.size() >= end {
            return Ok(());
        }
        for kv in self.leaves.range(key(f.size())..key(end)) {
            let (k, v) = kv.map_err(|e| self.err("reading leaves", e))?;
            let want = f.size();
            if key_value(&k) != Some(want) {
                return Err(self.corrupt(format!("seq {want}: leaf missing (gap)")));
            }
            let leaf: Hash =
                v.as_ref().try_into().map_err(|_| self.corrupt(format!("seq {want}: leaf is not 32 bytes")))?;
            f.push(leaf);
        }
        if f.size() != end {
            return Err(self.corrupt(format!("seq {}: leaf missing (gap)", f.size())));
        }
        Ok(())
    }

    /// The root of the first `size` leaves.
    pub fn root_at(&self, size: u64) -> Result<Hash> {
        Ok(self.frontier_at(size)?.root())
    }

    /// The number of leaves: one past the last leaf's seq.
    pub fn leaf_count(&self) -> Result<u64> {
        Ok(self.last_key(&self.leaves, "leaf")?.map_or(0, |s| s + 1))
    }

    /// Reads the store back after a clean close or a crash, checking what it replays.
    ///
    /// The frontier saved with the last checkpoint is loaded and the leaves after it are
    /// replayed; each replayed entry must hash to its leaf and carry its own seq. Checkpoints and
    /// the last export must not lie beyond the end of the log.
    pub fn recover(&self) -> Result<Recovered> {
        let count = self.leaf_count()?;
        let mut frontier = match self.meta.get(META_FRONTIER).map_err(|e| self.err("reading meta.frontier", e))? {
            None => Frontier::new(self.hash),
            Some(v) => {
                let rec: FrontierRecord =
                    serde_json::from_slice(&v).map_err(|e| self.corrupt(format!("meta.frontier: {e}")))?;
                let nodes: Option<Vec<Hash>> = rec.nodes.iter().map(|h| unhex(h, HexCase::Lower)).collect();
                nodes
                    .and_then(|n| Frontier::from_parts(self.hash, rec.size, n))
                    .ok_or_else(|| self.corrupt("meta.frontier is not a valid frontier"))?
            }
        };
        if frontier.size() > count {
            return Err(self.corrupt(format!(
                "the log has {count} leaves but its saved frontier covers {}: entries were removed",
                frontier.size()
            )));
        }
        if let Some(cp) = self.checkpoint(frontier.size())?
            && cp.root() != Some(frontier.root())
        {
            return Err(self.corrupt(format!("checkpoint {}: root differs from the saved frontier", cp.tree_size)));
        }
        let pruned = self.pruned_before()?;
        for seq in frontier.size()..count {
            let leaf = self.leaf(seq)?.ok_or_else(|| self.corrupt(format!("seq {seq}: leaf missing (gap)")))?;
            if seq >= pruned {
                self.check_entry(seq, &leaf)?;
            }
            frontier.push(leaf);
        }
        if let Some(last) = self.last_key(&self.entries, "entry")?
            && last >= count
        {
            return Err(self.corrupt(format!("seq {last}: entry without a leaf")));
        }
        let last_checkpoint = self.last_checkpoint()?;
        for (what, head) in [("checkpoint", &last_checkpoint), ("last export", &self.last_export()?)] {
            if let Some(h) = head
                && h.tree_size > count
            {
                return Err(self.corrupt(format!(
                    "the {what} covers {} entries but the log has {count}: entries were removed",
                    h.tree_size
                )));
            }
        }
        if let Some(cp) = &last_checkpoint
            && cp.tree_size == count
            && cp.root() != Some(frontier.root())
        {
            return Err(self.corrupt(format!("checkpoint {count}: root differs from the leaves")));
        }
        let last_time = match count.checked_sub(1) {
            Some(seq) if seq >= pruned => self.entry(seq)?.parsed_time(),
            _ => None,
        };
        Ok(Recovered { frontier, last_time, last_checkpoint })
    }

    /// Checks that entry `seq` is present, hashes to `leaf`, and says it is `seq`.
    pub fn check_entry(&self, seq: u64, leaf: &Hash) -> Result<()> {
        let bytes = self.entry_bytes(seq)?.ok_or_else(|| self.corrupt(format!("seq {seq}: missing (gap)")))?;
        if leaf_hash(self.hash, &bytes) != *leaf {
            return Err(self.corrupt(format!("seq {seq}: entry hash mismatch")));
        }
        match Entry::from_bytes(&bytes) {
            Ok(e) if e.seq == seq => Ok(()),
            Ok(e) => Err(self.corrupt(format!("seq {seq}: entry seq field is {}", e.seq))),
            Err(e) => Err(self.corrupt(format!("seq {seq}: not a valid entry: {e}"))),
        }
    }

    /// Removes every entry and leaf from `seq` on: what a failed, unacknowledged batch may have
    /// left behind. No checkpoint can cover them, since checkpoints are made only from
    /// acknowledged state.
    pub fn discard_from(&self, seq: u64) -> Result<u64> {
        let mut removed = 0;
        for tree in [&self.entries, &self.leaves] {
            let mut batch = sled::Batch::default();
            for k in tree.range(key(seq)..).keys() {
                batch.remove(k.map_err(|e| self.err("listing unacknowledged entries", e))?);
                removed += 1;
            }
            tree.apply_batch(batch).map_err(|e| self.err("removing unacknowledged entries", e))?;
        }
        Ok(removed)
    }

    /// Saves a checkpoint and the frontier it was made from, atomically.
    pub fn save_checkpoint(&self, head: &SignedTreeHead, frontier: &Frontier) -> Result<()> {
        use sled::Transactional;
        let head_bytes = serde_json::to_vec(head).unwrap_or_default();
        let frontier_bytes = encode_frontier(frontier);
        (&self.checkpoints, &self.meta)
            .transaction(|(cps, meta)| {
                cps.insert(&key(head.tree_size), head_bytes.as_slice())?;
                meta.insert(META_FRONTIER, frontier_bytes.as_slice())?;
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| match e {
                sled::transaction::TransactionError::Storage(s) => self.err("saving a checkpoint", s),
                sled::transaction::TransactionError::Abort(()) => self.corrupt("saving a checkpoint was aborted"),
            })
    }

    pub fn flush(&self, what: &str) -> Result<()> {
        self.db.flush().map(|_| ()).map_err(|e| self.err(format!("flushing {what}"), e))
    }
}

/// The store's leaves as a [`TreeSource`] for proofs.
pub(crate) struct StoreLeaves<'a>(pub &'a Store);

impl TreeSource for StoreLeaves<'_> {
    type Error = AuditError;
    fn subtree_root(&mut self, start: u64, end: u64) -> Result<Hash> {
        let mut f = Frontier::new(self.0.hash);
        for kv in self.0.leaves.range(key(start)..key(end)) {
            let (k, v) = kv.map_err(|e| self.0.err("reading leaves", e))?;
            let want = start + f.size();
            let leaf: Option<Hash> = v.as_ref().try_into().ok();
            match leaf {
                Some(leaf) if key_value(&k) == Some(want) => f.push(leaf),
                _ => return Err(self.0.corrupt(format!("seq {want}: leaf missing or malformed"))),
            }
        }
        if f.size() != end - start {
            return Err(self.0.corrupt(format!("seq {}: leaf missing (gap)", start + f.size())));
        }
        Ok(f.root())
    }
}
