//! Allocation of KV-cache blocks to sequences, and the prefix cache. The backend owns the block
//! data; this owns which sequence uses which block.
//!
//! Every block is in exactly one of three states:
//! * free: holds nothing reusable (refcount 0, not in the prefix index);
//! * cached: holds a full block of a prompt or output whose sequence ended (refcount 0, in the
//!   prefix index, evictable in least-recently-used order);
//! * in use: held by one or more sequences (refcount > 0). A full block registered in the index
//!   may be shared by several sequences; nobody writes into a registered block again.
//!
//! A full block is keyed by a chain hash: the hash of the previous block's key and this block's
//! token ids, so one key stands for the whole prefix up to that block. The entry also keeps the
//! block's tokens and its parent key, which a lookup checks, so a false match needs a 64-bit
//! collision of the parent chain as well as identical tokens.
//!
//! The first block's parent is the sequence's scope root ([`PrefixCache::root`]): `None` for
//! the shared scope, the hash of a namespace (the daemon's client identity) otherwise. So two
//! namespaces never share a chain: a prompt can only reuse blocks that a request of its own
//! namespace computed, and how much it reuses says nothing about other namespaces' prompts.
//!
//! The prefix cache has no size of its own: it is whatever part of the KV pool
//! ([`crate::EngineOptions::kv_tokens`]) running sequences are not using. Allocation takes free
//! blocks first and then evicts the least recently used cached block.

use std::any::Any;
use std::collections::{BTreeSet, HashMap};
use std::hash::{Hash, Hasher};

use govbox_drivers::{KvCache, KvSpec};

use crate::{EngineError, Result};

/// Tokens per KV block.
pub const BLOCK_SIZE: usize = 16;

/// The key of a full block: the hash of `parent` (the previous block's key, `None` for the first
/// block) and the block's token ids.
pub fn chain_hash(parent: Option<u64>, tokens: &[u32]) -> u64 {
    // SipHash with fixed keys: the same tokens give the same key in every process.
    let mut h = std::hash::DefaultHasher::new();
    parent.hash(&mut h);
    tokens.hash(&mut h);
    h.finish()
}

/// Which cached prefixes a request may reuse, and whether its own full blocks stay cached.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum PrefixCache {
    /// One scope for every request that says `Shared`: the most reuse, and the engine's
    /// default, since the engine alone does not know who its callers are.
    #[default]
    Shared,
    /// Only requests with the same namespace (an opaque identity chosen by the caller) reuse
    /// each other's blocks: the namespace is mixed into the first block's key.
    Namespace(String),
    /// Nothing is reused and nothing is kept for reuse: blocks are freed when the request ends.
    Off,
}

impl PrefixCache {
    /// The parent key of the first block in this scope (`None` for the shared scope), or no
    /// scope at all when the cache is off.
    pub fn root(&self) -> Option<Option<u64>> {
        match self {
            PrefixCache::Shared => Some(None),
            PrefixCache::Namespace(ns) => {
                let mut h = std::hash::DefaultHasher::new();
                "govbox prefix-cache namespace".hash(&mut h);
                ns.hash(&mut h);
                Some(Some(h.finish()))
            }
            PrefixCache::Off => None,
        }
    }
}

/// Counters of the KV pool and the prefix cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KvStats {
    /// Tokens per block.
    pub block_size: usize,
    /// Blocks in the pool (`EngineOptions::kv_tokens` / block size, rounded up).
    pub blocks_total: usize,
    /// Blocks held by running sequences.
    pub blocks_used: usize,
    /// Blocks holding reusable prefixes of ended sequences (evictable).
    pub blocks_cached: usize,
    /// Blocks holding nothing.
    pub blocks_free: usize,
    /// Sequences admitted (each looks its prompt up in the prefix cache once).
    pub prefix_queries: u64,
    /// Sequences that reused at least one cached block.
    pub prefix_hits: u64,
    /// Prompt tokens whose KV came from the cache instead of being computed.
    pub tokens_reused: u64,
    /// Cached blocks evicted to make room.
    pub evictions: u64,
    /// Forward passes the scheduler has run.
    pub steps: u64,
    /// Most sequences one forward pass has carried.
    pub peak_batch: usize,
    /// Running sequences preempted because the pool ran out of blocks (recomputed later).
    pub preemptions: u64,
    /// Blocks of the sliding-window layers' pool (0 for a model without one; see
    /// [`WindowBlocks`]): all of them, those sequences hold, and those they have reserved.
    pub window_blocks_total: usize,
    /// Sliding-window blocks held by sequences.
    pub window_blocks_used: usize,
    /// Sliding-window blocks reserved by running sequences (at least those they hold).
    pub window_blocks_reserved: usize,
}

#[derive(Debug)]
struct Entry {
    key: u64,
    parent: Option<u64>,
    tokens: [u32; BLOCK_SIZE],
}

/// A fixed pool of blocks with reference counts and a prefix index.
#[derive(Debug)]
pub struct BlockAllocator {
    refs: Vec<u32>,
    entry: Vec<Option<Entry>>,
    last_use: Vec<u64>,
    free: Vec<u32>,
    /// Cached blocks (refcount 0, registered) by (last use, block).
    lru: BTreeSet<(u64, u32)>,
    index: HashMap<u64, u32>,
    tick: u64,
    stats: KvStats,
}

impl BlockAllocator {
    /// A pool of `n` blocks, all free.
    pub fn new(n: usize) -> Self {
        Self {
            refs: vec![0; n],
            entry: (0..n).map(|_| None).collect(),
            last_use: vec![0; n],
            free: (0..n as u32).rev().collect(),
            lru: BTreeSet::new(),
            index: HashMap::new(),
            tick: 0,
            stats: KvStats { block_size: BLOCK_SIZE, blocks_total: n, ..Default::default() },
        }
    }

    /// Blocks holding nothing.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// Cached blocks that no sequence holds (evictable).
    pub fn cached_blocks(&self) -> usize {
        self.lru.len()
    }

    /// Blocks an allocation can take: free plus evictable.
    pub fn available(&self) -> usize {
        self.free.len() + self.lru.len()
    }

    /// Blocks held by sequences.
    pub fn used_blocks(&self) -> usize {
        self.refs.len() - self.available()
    }

    /// All blocks.
    pub fn total_blocks(&self) -> usize {
        self.refs.len()
    }

    /// The counters.
    pub fn stats(&self) -> KvStats {
        KvStats {
            blocks_used: self.used_blocks(),
            blocks_cached: self.cached_blocks(),
            blocks_free: self.free_blocks(),
            ..self.stats
        }
    }

    /// Records one admitted sequence that reused `blocks` cached blocks.
    pub fn note_lookup(&mut self, blocks: usize) {
        self.stats.prefix_queries += 1;
        if blocks > 0 {
            self.stats.prefix_hits += 1;
            self.stats.tokens_reused += (blocks * BLOCK_SIZE) as u64;
        }
    }

    /// Records one forward pass over `rows` sequences.
    pub fn note_step(&mut self, rows: usize) {
        self.stats.steps += 1;
        self.stats.peak_batch = self.stats.peak_batch.max(rows);
    }

    /// Records one preempted sequence.
    pub fn note_preemption(&mut self) {
        self.stats.preemptions += 1;
    }

    fn touch(&mut self, b: u32) {
        self.tick += 1;
        self.last_use[b as usize] = self.tick;
    }

    /// Takes one block (refcount 1): a free one, else the least recently used cached one.
    pub fn allocate(&mut self) -> Option<u32> {
        let b = match self.free.pop() {
            Some(b) => b,
            None => {
                let (_, b) = self.lru.pop_first()?;
                if let Some(e) = self.entry[b as usize].take()
                    && self.index.get(&e.key) == Some(&b)
                {
                    self.index.remove(&e.key);
                }
                self.stats.evictions += 1;
                b
            }
        };
        self.refs[b as usize] = 1;
        self.touch(b);
        Some(b)
    }

    /// Grows `table` with new blocks until it covers `tokens` positions; takes nothing when the
    /// pool cannot cover them.
    pub fn reserve(&mut self, table: &mut Vec<u32>, tokens: usize) -> Result<()> {
        let need = tokens.div_ceil(BLOCK_SIZE);
        if need > table.len() && need - table.len() > self.available() {
            return Err(EngineError::Request(format!(
                "KV cache is full: {tokens} tokens need {} more blocks, {} available",
                need - table.len(),
                self.available()
            )));
        }
        while table.len() < need {
            match self.allocate() {
                Some(b) => table.push(b),
                None => break,
            }
        }
        Ok(())
    }

    /// The longest chain of cached full blocks that starts `tokens` in the scope whose first
    /// block has parent `root` (see [`PrefixCache::root`]), at most `max_blocks` long. Each
    /// returned block is held (refcount + 1); the keys come with them.
    pub fn lookup(&mut self, root: Option<u64>, tokens: &[u32], max_blocks: usize) -> (Vec<u32>, Vec<u64>) {
        let (mut blocks, mut keys) = (Vec::new(), Vec::new());
        let mut parent = root;
        for chunk in tokens.chunks_exact(BLOCK_SIZE).take(max_blocks) {
            let key = chain_hash(parent, chunk);
            let Some(&b) = self.index.get(&key) else { break };
            let ok = self.entry[b as usize].as_ref().is_some_and(|e| e.parent == parent && e.tokens[..] == *chunk);
            if !ok {
                break;
            }
            if self.refs[b as usize] == 0 {
                self.lru.remove(&(self.last_use[b as usize], b));
            }
            self.refs[b as usize] += 1;
            self.touch(b);
            blocks.push(b);
            keys.push(key);
            parent = Some(key);
        }
        (blocks, keys)
    }

    /// Registers held block `b`, now full of `tokens` (exactly [`BLOCK_SIZE`]) following the
    /// prefix keyed `parent`, in the prefix index, and returns its key. When another block
    /// already holds the same prefix, `b` stays unregistered (it is freed when released).
    pub fn register(&mut self, b: u32, parent: Option<u64>, tokens: &[u32]) -> u64 {
        let key = chain_hash(parent, tokens);
        let i = b as usize;
        if tokens.len() == BLOCK_SIZE
            && self.refs.get(i).is_some_and(|&r| r > 0)
            && self.entry[i].is_none()
            && !self.index.contains_key(&key)
        {
            let mut t = [0; BLOCK_SIZE];
            t.copy_from_slice(tokens);
            self.entry[i] = Some(Entry { key, parent, tokens: t });
            self.index.insert(key, b);
        }
        key
    }

    /// Drops a sequence's hold on its blocks: blocks nobody holds become cached (registered
    /// ones) or free.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        for b in table.drain(..) {
            let i = b as usize;
            if self.refs[i] == 0 {
                continue; // not held: a caller bug, but never corrupt the pool over it
            }
            self.refs[i] -= 1;
            if self.refs[i] == 0 {
                if self.entry[i].is_some() {
                    self.touch(b);
                    self.lru.insert((self.last_use[i], b));
                } else {
                    self.free.push(b);
                }
            }
        }
    }

    /// Checks the pool's invariants (every block in exactly one state, the index and the LRU
    /// agreeing with the entries); tests call it.
    pub fn check(&self) -> std::result::Result<(), String> {
        let n = self.refs.len();
        let mut seen = vec![0u8; n];
        for &b in &self.free {
            let i = b as usize;
            if self.refs[i] != 0 || self.entry[i].is_some() {
                return Err(format!("free block {b} is held or registered"));
            }
            seen[i] += 1;
        }
        for &(t, b) in &self.lru {
            let i = b as usize;
            if self.refs[i] != 0 || self.entry[i].is_none() || self.last_use[i] != t {
                return Err(format!("cached block {b} is held, unregistered or has a stale time"));
            }
            seen[i] += 1;
        }
        for (i, (s, &r)) in seen.iter_mut().zip(&self.refs).enumerate() {
            *s += u8::from(r > 0);
            if *s != 1 {
                return Err(format!("block {i} is in {s} states"));
            }
        }
        for (&k, &b) in &self.index {
            if self.entry[b as usize].as_ref().map(|e| e.key) != Some(k) {
                return Err(format!("index key {k:x} points at block {b}, which holds another key"));
            }
        }
        let registered = self.entry.iter().filter(|e| e.is_some()).count();
        if registered != self.index.len() {
            return Err(format!("{registered} registered blocks but {} index keys", self.index.len()));
        }
        Ok(())
    }

    /// Sequences holding block `b` (tests).
    pub fn refcount(&self, b: u32) -> u32 {
        self.refs.get(b as usize).copied().unwrap_or(0)
    }
}

/// The KV of a model with sliding-window layers (Gemma 3): the full-attention layers in one pool
/// whose blocks the [`BlockAllocator`] hands out and the prefix cache shares, the sliding-window
/// layers in a second, smaller pool ([`WindowBlocks`]) that holds only each sequence's window.
/// The model picks the pool by layer; backends see two plain pools.
#[derive(Debug)]
pub struct SplitKv {
    /// Full-attention layers, in layer order.
    pub global: Box<dyn KvCache>,
    /// Sliding-window layers, in layer order.
    pub local: Box<dyn KvCache>,
}

impl SplitKv {
    /// Bytes both pools' data take.
    pub fn bytes(&self) -> Option<usize> {
        self.global.spec().bytes()?.checked_add(self.local.spec().bytes()?)
    }
}

impl KvCache for SplitKv {
    /// The full-attention pool's shape: its blocks are the ones the allocator counts.
    fn spec(&self) -> KvSpec {
        self.global.spec()
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The KV pool of `model` for the shape `spec` (all layers): one pool, or for a model with
/// both sliding-window and full-attention layers a [`SplitKv`] and its [`WindowBlocks`]. The
/// sliding-window pool holds what can be in flight there: a window and a prefill chunk for each
/// of `sequences` running sequences ([`WindowBlocks::pool_blocks`]), since no sequence holds more
/// there however long it is.
pub(crate) fn windowed_kv(
    model: &crate::models::decoder::DecoderModel,
    spec: KvSpec,
    sequences: usize,
) -> Result<(Box<dyn KvCache>, Option<WindowBlocks>)> {
    let backend = model.backend();
    let Some(window) = model.split_window() else {
        return Ok((backend.new_kv_cache(spec)?, None));
    };
    let (global, local) = model.layer_counts();
    let blocks = WindowBlocks::pool_blocks(window, crate::scheduler::PREFILL_CHUNK, sequences, spec.n_blocks);
    let split = SplitKv {
        global: backend.new_kv_cache(KvSpec { n_layers: global, ..spec })?,
        local: backend.new_kv_cache(KvSpec { n_layers: local, n_blocks: blocks, ..spec })?,
    };
    Ok((Box::new(split), Some(WindowBlocks::new(blocks, window))))
}

/// The blocks of the sliding-window pool. A sequence's local table is indexed like its main
/// table (entry `j` holds positions `16j..16j+16`), but only the blocks that a query of the
/// coming pass can still see hold a block of their own: the ones before the window point at
/// block 0, a scratch block no sequence owns, and go back to the pool. So a sequence holds at
/// most its window plus the rows of one pass, however long it grows.
///
/// Every sequence reserves, when it starts, the most blocks it can hold at once
/// ([`WindowBlocks::cap`]); a start that does not fit waits (or fails), so a running sequence
/// always finds its blocks. Windowed blocks are never shared: the prefix cache is not used for
/// these models (a cached prefix would need the window of local KV before it, which is gone).
#[derive(Debug)]
pub struct WindowBlocks {
    alloc: BlockAllocator,
    /// The window, in positions (the query's own included).
    window: usize,
    /// Blocks reserved by running sequences.
    reserved: usize,
}

/// The scratch block of the sliding-window pool.
const SCRATCH: u32 = 0;

impl WindowBlocks {
    /// A pool of `blocks` blocks (one of them the scratch block) for a window of `window`
    /// positions.
    pub fn new(blocks: usize, window: usize) -> Self {
        let mut alloc = BlockAllocator::new(blocks.max(2));
        // Block 0 is the scratch block: taken once, never released.
        let mut scratch = alloc.allocate().into_iter().collect::<Vec<_>>();
        debug_assert_eq!(scratch.pop(), Some(SCRATCH));
        Self { alloc, window: window.max(1), reserved: 0 }
    }

    /// Blocks one sequence holds at most when each pass brings at most `rows` new positions:
    /// the window's earlier positions, the new rows, and one block each for where they start
    /// and end inside a block.
    pub fn blocks_for(window: usize, rows: usize) -> usize {
        (window.saturating_sub(1) + rows).div_ceil(BLOCK_SIZE) + 1
    }

    /// Blocks of a sliding-window pool for `sequences` sequences run at once, each bringing at
    /// most `rows` positions a pass, when the full-attention pool has `full` blocks: each
    /// sequence's [`WindowBlocks::blocks_for`], never more than the full pool (no sequence holds
    /// more blocks here than there), and the scratch block.
    pub fn pool_blocks(window: usize, rows: usize, sequences: usize, full: usize) -> usize {
        sequences.max(1).saturating_mul(Self::blocks_for(window, rows)).min(full) + 1
    }

    /// Blocks a sequence of at most `tokens` positions, run at most `rows` positions per pass,
    /// reserves: never more than its whole length takes.
    pub fn cap(&self, tokens: usize, rows: usize) -> usize {
        // Never more than the pool (less the scratch block), which is smaller than one window
        // and chunk only when the main pool is, and no sequence holds more here than there.
        tokens.div_ceil(BLOCK_SIZE).min(Self::blocks_for(self.window, rows)).min(self.alloc.total_blocks() - 1)
    }

    /// Reserves `n` blocks for a starting sequence, when the pool has them.
    pub fn try_reserve(&mut self, n: usize) -> bool {
        if self.reserved + n > self.alloc.total_blocks() - 1 {
            return false;
        }
        self.reserved += n;
        true
    }

    /// Reserves `n` blocks, or says that the pool is full.
    pub fn reserve(&mut self, n: usize) -> Result<()> {
        if self.try_reserve(n) {
            return Ok(());
        }
        Err(EngineError::Request(format!(
            "KV cache is full: the sliding-window layers need {n} more blocks, {} available",
            self.alloc.total_blocks() - 1 - self.reserved
        )))
    }

    /// Gives back a sequence's blocks and its reservation of `reserved` blocks.
    pub fn release(&mut self, table: &mut Vec<u32>, reserved: usize) {
        table.retain(|&b| b != SCRATCH);
        self.alloc.release(table);
        self.reserved = self.reserved.saturating_sub(reserved);
    }

    /// Makes `table` ready for a pass that computes positions `start..end`: the blocks that no
    /// query from `start` on can see go back to the pool, and every block the pass reads or
    /// writes has a block of its own.
    pub fn fit(&mut self, table: &mut Vec<u32>, start: usize, end: usize) -> Result<()> {
        let first_seen = (start + 1).saturating_sub(self.window) / BLOCK_SIZE;
        for b in table.iter_mut().take(first_seen) {
            if *b != SCRATCH {
                let mut one = vec![std::mem::replace(b, SCRATCH)];
                self.alloc.release(&mut one);
            }
        }
        while table.len() < first_seen {
            table.push(SCRATCH);
        }
        for j in first_seen..end.div_ceil(BLOCK_SIZE) {
            if j < table.len() && table[j] != SCRATCH {
                continue;
            }
            let b = self.alloc.allocate().ok_or_else(|| {
                EngineError::Request("KV cache is full: no block left for the sliding-window layers".into())
            })?;
            match table.get_mut(j) {
                Some(slot) => *slot = b,
                None => table.push(b),
            }
        }
        Ok(())
    }

    /// Blocks held by sequences (the scratch block not counted).
    pub fn used_blocks(&self) -> usize {
        self.alloc.used_blocks() - 1
    }

    /// Blocks reserved by running sequences.
    pub fn reserved_blocks(&self) -> usize {
        self.reserved
    }

    /// Adds this pool's counts to `stats`.
    pub fn add_stats(&self, stats: &mut KvStats) {
        stats.window_blocks_total = self.total_blocks();
        stats.window_blocks_used = self.used_blocks();
        stats.window_blocks_reserved = self.reserved;
    }

    /// All blocks, the scratch block included.
    pub fn total_blocks(&self) -> usize {
        self.alloc.total_blocks()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sequence run far past its window holds only the window and the pass's rows: blocks
    /// behind the window go back to the pool, the table keeps its indexing (scratch entries in
    /// front), and everything is free at the end.
    #[test]
    fn window_blocks_hold_only_the_window() {
        let window = 40;
        let mut w = WindowBlocks::new(12, window);
        let cap = w.cap(10_000, 16);
        assert_eq!(cap, WindowBlocks::blocks_for(window, 16));
        assert_eq!(cap, 5);
        w.reserve(cap).unwrap();
        assert!(w.reserve(7).is_err(), "11 usable blocks, 5 reserved: 7 more do not fit");
        let mut t = Vec::new();
        let mut most = 0;
        for start in (0..1000).step_by(16) {
            w.fit(&mut t, start, start + 16).unwrap();
            assert_eq!(t.len(), (start + 16) / BLOCK_SIZE);
            let first_seen = (start + 1).saturating_sub(window) / BLOCK_SIZE;
            assert!(t[..first_seen].iter().all(|&b| b == SCRATCH), "{start}: {t:?}");
            assert!(t[first_seen..].iter().all(|&b| b != SCRATCH), "{start}: {t:?}");
            most = most.max(w.used_blocks());
        }
        assert!(most <= cap, "held {most} blocks, reserved {cap}");
        // One token at a time.
        for p in 1000..1100 {
            w.fit(&mut t, p, p + 1).unwrap();
            assert!(w.used_blocks() <= WindowBlocks::blocks_for(window, 1));
        }
        w.release(&mut t, cap);
        assert_eq!((w.used_blocks(), w.reserved_blocks()), (0, 0));
        w.alloc.check().unwrap();
        // A short sequence reserves only its length.
        assert_eq!(w.cap(20, 512), 2);
    }

    /// The sliding-window pool grows with the window and the sequences run at once, up to the
    /// full pool: Gemma-3-1B's window of 512 and a 512-token chunk take 65 blocks a sequence.
    #[test]
    fn window_pool_follows_window_and_sequences() {
        assert_eq!(WindowBlocks::blocks_for(512, 512), 65);
        assert_eq!(WindowBlocks::pool_blocks(512, 512, 1, 260), 66);
        assert_eq!(WindowBlocks::pool_blocks(512, 512, 2, 260), 131);
        assert_eq!(WindowBlocks::pool_blocks(512, 512, 4, 260), 261, "never more than the full pool");
        assert_eq!(WindowBlocks::pool_blocks(1024, 512, 1, 260), 98);
        assert_eq!(WindowBlocks::pool_blocks(4096, 512, 1, 260), 261);
        assert_eq!(WindowBlocks::pool_blocks(512, 512, 0, 260), 66, "at least one sequence");
    }

    #[test]
    fn reserve_and_release() {
        let mut a = BlockAllocator::new(4);
        let mut t = Vec::new();
        a.reserve(&mut t, 17).unwrap();
        assert_eq!(t.len(), 2);
        assert!(a.reserve(&mut t, 100).is_err());
        assert_eq!(t.len(), 2, "a failed reserve takes nothing");
        a.release(&mut t);
        assert_eq!(a.free_blocks(), 4);
        a.check().unwrap();
    }

    #[test]
    fn registered_blocks_are_shared_cached_and_evicted_lru() {
        let mut a = BlockAllocator::new(3);
        let toks: Vec<u32> = (0..48).collect();
        let mut t = Vec::new();
        a.reserve(&mut t, 48).unwrap();
        let k0 = a.register(t[0], None, &toks[..16]);
        let k1 = a.register(t[1], Some(k0), &toks[16..32]);
        // Another sequence with the same first 32 tokens shares both blocks.
        let (b, keys) = a.lookup(None, &toks, 2);
        assert_eq!((b.as_slice(), keys.as_slice()), (&t[..2], &[k0, k1][..]));
        assert_eq!(a.refcount(t[0]), 2);
        // A different second block matches only the first.
        let mut other = toks.clone();
        other[20] = 999;
        let (b2, _) = a.lookup(None, &other, 2);
        assert_eq!(b2, vec![t[0]]);
        let mut b = b;
        let mut b2 = b2;
        a.release(&mut b);
        a.release(&mut b2);
        let first = t.clone();
        a.release(&mut t);
        assert_eq!((a.free_blocks(), a.cached_blocks()), (1, 2));
        a.check().unwrap();
        // Allocation takes the free block, then evicts the least recently used cached one.
        let x = a.allocate().unwrap();
        assert_eq!(x, first[2]);
        let y = a.allocate().unwrap();
        assert_eq!(y, first[0], "block 0 was released before block 1");
        assert_eq!(a.lookup(None, &toks, 2).0, Vec::<u32>::new(), "the chain's first block is gone");
        assert_eq!(a.stats().evictions, 1);
        a.check().unwrap();
    }

    #[test]
    fn a_namespace_only_finds_its_own_chains() {
        let mut a = BlockAllocator::new(4);
        let toks: Vec<u32> = (0..32).collect();
        let mine = PrefixCache::Namespace("client-a".into()).root().unwrap();
        let theirs = PrefixCache::Namespace("client-b".into()).root().unwrap();
        let shared = PrefixCache::Shared.root().unwrap();
        assert!(mine.is_some() && mine != theirs && shared.is_none());
        assert_eq!(PrefixCache::Off.root(), None);
        let mut t = Vec::new();
        a.reserve(&mut t, 32).unwrap();
        let k0 = a.register(t[0], mine, &toks[..16]);
        a.register(t[1], Some(k0), &toks[16..]);
        for other in [theirs, shared] {
            let (b, _) = a.lookup(other, &toks, 2);
            assert!(b.is_empty(), "another scope found {b:?}");
        }
        let (mut b, _) = a.lookup(mine, &toks, 2);
        assert_eq!(b, t);
        a.release(&mut b);
        a.release(&mut t);
        a.check().unwrap();
    }
}
