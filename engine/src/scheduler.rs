//! Continuous batching: one thread per decoder runs every live sequence through the model
//! together, one forward pass per step, so the weights are read once per step however many
//! streams are running.
//!
//! A step:
//! 1. takes new requests from the channel, drops cancelled sequences (freeing their blocks);
//! 2. admits waiting sequences in FIFO order while the pool can hold their prompts: each looks
//!    its prompt up in the prefix cache (in its own scope, see `kv.rs`; not at all when its
//!    cache is off), holds the cached blocks it found and allocates the rest.
//!    A sequence that does not fit waits at the head of the queue (later ones wait behind it);
//! 3. gives each decoding sequence the block its next token needs. When the pool has none
//!    (nothing free, nothing cached), the newest running sequence is preempted: its blocks are
//!    released (its full blocks stay in the prefix cache) and it goes back to the head of the
//!    queue keeping its sampler and its output so far; when readmitted it recomputes its KV
//!    (mostly found in the prefix cache) and carries on where it stopped, so the client sees
//!    no difference. A sequence alone in the pool that cannot grow ends with `Length`;
//! 4. runs one forward pass over every decoding sequence (one token each) and at most
//!    `PREFILL_CHUNK` prompt tokens of prefilling sequences, so a long prompt delays the running
//!    streams by one chunk per step, not by the whole prompt;
//! 5. registers newly filled blocks in the prefix cache (unless the sequence's cache is off), samples each finished row with the
//!    sequence's own sampler and sends the token to the waiting `generate` call.
//!
//! Sampling depends only on a sequence's own logits and sampler, never on its batch neighbours.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;

use govbox_drivers::KvCache;

use crate::constraint::Constraint;
use crate::kv::{BLOCK_SIZE, BlockAllocator};
use crate::logprobs::{IdLogprobs, token_logprobs};
use crate::models::decoder::{DecoderModel, LogitsFor, SeqInput};
use crate::sampler::{Sampler, SamplingParams};
use crate::{EngineError, Result};

/// Prompt tokens fed through the model per step while prefilling.
pub(crate) const PREFILL_CHUNK: usize = 512;

/// Most sequences running at once (more wait in the queue).
const MAX_RUNNING: usize = 64;

/// The KV pool: the backend's block data and who holds which block.
pub(crate) struct KvState {
    pub(crate) cache: Box<dyn KvCache>,
    pub(crate) alloc: BlockAllocator,
}

/// Locks the pool. A panic while holding the lock cannot leave the allocator half-updated in a
/// way that matters more than refusing service would, so a poisoned lock is still used.
pub(crate) fn lock(kv: &Mutex<KvState>) -> MutexGuard<'_, KvState> {
    kv.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the scheduler tells a waiting `generate` call.
pub(crate) enum Msg {
    /// The sequence was admitted with `cached` prompt tokens taken from the prefix cache (sent
    /// again after a preemption, when it is readmitted).
    Admitted { cached: usize },
    /// The next sampled token, with its log-probabilities when the request asked for them.
    Token(u32, Option<IdLogprobs>),
    /// The sequence has ended and its blocks are released. `pool_full`: the scheduler ended it
    /// because the KV pool could not hold it any longer.
    Released { pool_full: bool },
    /// The sequence failed; its blocks are released.
    Error(EngineError),
}

/// One request for the scheduler.
pub(crate) struct Job {
    pub(crate) prompt: Vec<u32>,
    /// Most tokens to sample.
    pub(crate) budget: usize,
    pub(crate) sampling: SamplingParams,
    pub(crate) ignore_eos: bool,
    /// The grammar the output must follow: masks the logits before each sample.
    pub(crate) constraint: Option<Constraint>,
    /// The prefix-cache scope: `Some(root)`, the parent key of the first block
    /// ([`crate::kv::PrefixCache::root`]); `None`, the cache is off for this sequence.
    pub(crate) cache_root: Option<Option<u64>>,
    /// Set by the caller to end the sequence (client gone, stop string hit).
    pub(crate) cancel: Arc<AtomicBool>,
    pub(crate) tx: mpsc::Sender<Msg>,
}

/// The scheduler thread of one decoder; dropping it stops the thread.
pub(crate) struct Scheduler {
    tx: Option<mpsc::Sender<Job>>,
    handle: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the thread.
    pub(crate) fn start(model: Arc<DecoderModel>, kv: Arc<Mutex<KvState>>, eos: Vec<u32>) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("govbox-scheduler".into())
            .spawn(move || Loop { model, kv, eos, waiting: VecDeque::new(), running: Vec::new() }.run(&rx))
            .map_err(|e| EngineError::Request(format!("starting the scheduler thread: {e}")))?;
        Ok(Self { tx: Some(tx), handle: Some(handle) })
    }

    /// Queues a job.
    pub(crate) fn submit(&self, job: Job) -> Result<()> {
        self.tx
            .as_ref()
            .and_then(|tx| tx.send(job).ok())
            .ok_or_else(|| EngineError::Request("the engine's scheduler has stopped".into()))
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

struct Seq {
    job: Job,
    /// Prompt and sampled tokens.
    tokens: Vec<u32>,
    /// Tokens whose KV is in `table`.
    computed: usize,
    table: Vec<u32>,
    /// Prefix-cache keys of the first `keys.len()` blocks of `table` (all full).
    keys: Vec<u64>,
    generated: usize,
    sampler: Sampler,
}

impl Seq {
    fn new(job: Job) -> Self {
        let sampler = Sampler::new(job.sampling.clone(), &job.prompt);
        Self {
            tokens: job.prompt.clone(),
            computed: 0,
            table: Vec::new(),
            keys: Vec::new(),
            generated: 0,
            sampler,
            job,
        }
    }

    fn cancelled(&self) -> bool {
        self.job.cancel.load(Ordering::Relaxed)
    }
}

struct Loop {
    model: Arc<DecoderModel>,
    kv: Arc<Mutex<KvState>>,
    eos: Vec<u32>,
    waiting: VecDeque<Seq>,
    /// In admission order (oldest first).
    running: Vec<Seq>,
}

/// Samples the next token of `s`, within its grammar when it has one.
fn constrained_sample(s: &mut Seq, logits: &mut [f32]) -> Result<u32> {
    let Some(c) = s.job.constraint.as_mut() else {
        return Ok(s.sampler.sample(logits));
    };
    c.mask(logits)?;
    let id = s.sampler.sample(logits);
    c.accept(id)?;
    Ok(id)
}

/// Releases a sequence's blocks and tells its caller.
fn end(alloc: &mut BlockAllocator, mut s: Seq, msg: Msg) {
    alloc.release(&mut s.table);
    let _ = s.job.tx.send(msg);
}

impl Loop {
    fn run(mut self, rx: &mpsc::Receiver<Job>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(j) => self.waiting.push_back(Seq::new(j)),
                    Err(_) => return,
                }
            }
            while let Ok(j) = rx.try_recv() {
                self.waiting.push_back(Seq::new(j));
            }
            self.step();
        }
    }

    fn step(&mut self) {
        let kv = self.kv.clone();
        let mut guard = lock(&kv);
        let st = &mut *guard;
        // 1. Cancelled sequences.
        for s in std::mem::take(&mut self.waiting) {
            if s.cancelled() {
                end(&mut st.alloc, s, Msg::Released { pool_full: false })
            } else {
                self.waiting.push_back(s)
            }
        }
        for s in std::mem::take(&mut self.running) {
            if s.cancelled() { end(&mut st.alloc, s, Msg::Released { pool_full: false }) } else { self.running.push(s) }
        }
        // 2. Admission.
        self.admit(&mut st.alloc);
        // 3. A block for each decoding sequence's next token.
        self.grow(&mut st.alloc);
        if self.running.is_empty() {
            return;
        }
        // 4. One forward pass.
        let mut rows = Vec::new(); // (running index, start, end)
        let mut prefill_left = PREFILL_CHUNK;
        for (i, s) in self.running.iter().enumerate() {
            let pending = s.tokens.len() - s.computed;
            if pending == 1 {
                rows.push((i, s.computed, s.computed + 1));
            } else if prefill_left > 0 {
                let n = pending.min(prefill_left);
                prefill_left -= n;
                rows.push((i, s.computed, s.computed + n));
            }
        }
        st.alloc.note_step(rows.len());
        let vocab = self.model.config().vocab_size;
        let inputs: Vec<SeqInput<'_>> = rows
            .iter()
            .map(|&(i, a, b)| {
                let s = &self.running[i];
                SeqInput { tokens: &s.tokens[a..b], start_pos: a, block_table: &s.table }
            })
            .collect();
        let results: Vec<Result<Vec<f32>>> = match self.model.forward(&inputs, st.cache.as_mut(), LogitsFor::Last) {
            Ok(l) => l.chunks_exact(vocab).map(|r| Ok(r.to_vec())).collect(),
            // One sequence's failure must not fail its batch neighbours: run each alone.
            Err(e) if inputs.len() == 1 => vec![Err(e)],
            Err(_) => {
                inputs.iter().map(|inp| self.model.forward(&[*inp], st.cache.as_mut(), LogitsFor::Last)).collect()
            }
        };
        drop(inputs);
        // 5. Results.
        let mut gone: Vec<Option<Msg>> = (0..self.running.len()).map(|_| None).collect();
        for (&(i, _, b), r) in rows.iter().zip(results) {
            let s = &mut self.running[i];
            let logits = match r {
                Ok(l) => l,
                Err(e) => {
                    gone[i] = Some(Msg::Error(e));
                    continue;
                }
            };
            s.computed = b;
            while let Some(root) = s.job.cache_root
                && (s.keys.len() + 1) * BLOCK_SIZE <= s.computed
            {
                let bi = s.keys.len();
                let key = st.alloc.register(
                    s.table[bi],
                    s.keys.last().copied().or(root),
                    &s.tokens[bi * BLOCK_SIZE..(bi + 1) * BLOCK_SIZE],
                );
                s.keys.push(key);
            }
            if s.computed < s.tokens.len() {
                continue; // more prompt to prefill
            }
            if s.generated >= s.job.budget {
                gone[i] = Some(Msg::Released { pool_full: false });
                continue;
            }
            // Log-probabilities are the model's own, before a grammar's mask (and penalties).
            let raw = s.job.sampling.logprobs.map(|k| (k, logits.clone()));
            let mut logits = logits;
            let id = match constrained_sample(s, &mut logits) {
                Ok(id) => id,
                Err(e) => {
                    gone[i] = Some(Msg::Error(e));
                    continue;
                }
            };
            let lp = raw.map(|(k, raw)| token_logprobs(&raw, id, k));
            s.sampler.accept(id);
            s.generated += 1;
            s.tokens.push(id);
            // A grammar that is complete allows only EOS next, so a constrained sequence ends
            // by EOS too.
            let eos = !s.job.ignore_eos && self.eos.contains(&id);
            if s.job.tx.send(Msg::Token(id, lp)).is_err() || s.generated >= s.job.budget || eos {
                gone[i] = Some(Msg::Released { pool_full: false });
            }
        }
        for (s, g) in std::mem::take(&mut self.running).into_iter().zip(gone) {
            match g {
                Some(msg) => end(&mut st.alloc, s, msg),
                None => self.running.push(s),
            }
        }
    }

    fn admit(&mut self, alloc: &mut BlockAllocator) {
        while let Some(s) = self.waiting.front_mut() {
            if self.running.len() >= MAX_RUNNING {
                return;
            }
            let len = s.tokens.len();
            // The last token is always computed (its logits are needed), so never in a shared block.
            let (mut shared, keys) = match s.job.cache_root {
                Some(root) => alloc.lookup(root, &s.tokens, (len - 1) / BLOCK_SIZE),
                None => (Vec::new(), Vec::new()),
            };
            let need = len.div_ceil(BLOCK_SIZE) - shared.len();
            // Leave each running sequence room for one more block.
            if need + self.running.len() > alloc.available() {
                alloc.release(&mut shared);
                if self.running.is_empty() {
                    // Even the whole pool cannot hold it (only a preempted sequence that grew
                    // can get here; generate() refuses prompts that can never fit).
                    if let Some(s) = self.waiting.pop_front() {
                        end(alloc, s, Msg::Released { pool_full: true });
                    }
                    continue;
                }
                return;
            }
            alloc.note_lookup(shared.len());
            s.computed = shared.len() * BLOCK_SIZE;
            // A caller that has gone set its cancel flag on the way out: step 1 ends it next time.
            let _ = s.job.tx.send(Msg::Admitted { cached: s.computed });
            s.table = shared;
            s.keys = keys;
            if alloc.reserve(&mut s.table, len).is_err() {
                // Unreachable after the check above; stay consistent anyway.
                alloc.release(&mut s.table);
                return;
            }
            if let Some(s) = self.waiting.pop_front() {
                self.running.push(s);
            }
        }
    }

    fn grow(&mut self, alloc: &mut BlockAllocator) {
        let mut i = 0;
        while i < self.running.len() {
            let s = &mut self.running[i];
            if s.table.len() >= s.tokens.len().div_ceil(BLOCK_SIZE) {
                i += 1;
                continue;
            }
            if let Some(b) = alloc.allocate() {
                s.table.push(b);
                i += 1;
                continue;
            }
            if self.running.len() == 1 {
                let s = self.running.remove(0);
                end(alloc, s, Msg::Released { pool_full: true });
                continue;
            }
            // Preempt the newest (possibly this one): its KV is recomputed when it returns.
            if let Some(mut v) = self.running.pop() {
                alloc.note_preemption();
                alloc.release(&mut v.table);
                v.computed = 0;
                v.keys.clear();
                self.waiting.push_front(v);
            }
        }
    }
}
