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
//! 5. registers newly filled blocks in the prefix cache (unless the sequence's cache is off),
//!    samples each finished row with the sequence's own sampler and hands the token to the
//!    sequence's [`Output`], which detokenises it, matches stop strings and sends the request's
//!    events (see `generation.rs`).
//!
//! Each step also ends the sequences whose caller has gone (their blocks are freed) and those
//! whose deadline has passed, waiting or running (they end with `DeadlineExceeded`). A sequence
//! whose reader is behind (its channel full) takes no part in the forward pass until the reader
//! catches up; the others go on.
//!
//! Sampling depends only on a sequence's own logits and sampler, never on its batch neighbours.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use govbox_drivers::KvCache;

use crate::constraint::Constraint;
use crate::generation::{FinishReason, Output};
use crate::kv::{BLOCK_SIZE, BlockAllocator, WindowBlocks};
use crate::logprobs::token_logprobs;
use crate::models::decoder::{DecoderModel, LogitsFor, SeqInput};
use crate::sampler::{Sampler, SamplingParams};
use crate::{EngineError, Result};

/// Prompt tokens fed through the model per step while prefilling.
pub(crate) const PREFILL_CHUNK: usize = 512;
/// Prompt tokens in one pass from which the freed memory is given back to the system after it.
/// An 8k-token prompt on the 1.5B Q8_0 file with a q8_0 cache (`govbox model bench -d 8192`, 2
/// threads) peaked at 1,965 MB resident, two worker arenas of 64 MB each holding a pass's
/// activations; 1,900 MB with this, one arena left at the peak (1,866 MB with `swiglu_into` as
/// well); prefill 76.2, 74.4 and 77.5 tokens/s, within the machine's noise. A single malloc arena
/// (`MALLOC_ARENA_MAX=1`) peaked at 1,887 MB but cost 2 % of decode speed.
const TRIM_AFTER_PREFILL: usize = PREFILL_CHUNK / 2;

/// Most sequences running at once (more wait in the queue).
const MAX_RUNNING: usize = 64;

/// The KV pool: the backend's block data and who holds which block.
pub(crate) struct KvState {
    pub(crate) cache: Box<dyn KvCache>,
    pub(crate) alloc: BlockAllocator,
    /// The sliding-window layers' blocks, for a model that has them (`cache` is then a
    /// [`crate::kv::SplitKv`]). Such a model does not use the prefix cache.
    pub(crate) window: Option<WindowBlocks>,
}

/// Locks the pool. A panic while holding the lock cannot leave the allocator half-updated in a
/// way that matters more than refusing service would, so a poisoned lock is still used.
pub(crate) fn lock(kv: &Mutex<KvState>) -> MutexGuard<'_, KvState> {
    kv.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the scheduler thread is told.
pub(crate) enum Cmd {
    /// A new request.
    Job(Box<Job>),
    /// Look again: a request was cancelled.
    Wake,
    /// The engine is going away: end every request and stop.
    Stop,
}

/// How long the thread waits for news while every sequence is paused (its reader behind).
const PAUSE: Duration = Duration::from_millis(5);

/// One request for the scheduler.
pub(crate) struct Job {
    pub(crate) prompt: Vec<u32>,
    pub(crate) sampling: SamplingParams,
    pub(crate) ignore_eos: bool,
    /// The grammar the output must follow: masks the logits before each sample.
    pub(crate) constraint: Option<Constraint>,
    /// The prefix-cache scope: `Some(root)`, the parent key of the first block
    /// ([`crate::kv::PrefixCache::root`]); `None`, the cache is off for this sequence.
    pub(crate) cache_root: Option<Option<u64>>,
    /// Where its tokens go.
    pub(crate) out: Output,
}

/// How a sequence ends.
enum End {
    Finish(FinishReason),
    Fail(EngineError),
    Expire,
    /// The caller went away: nothing more to send.
    Cancelled,
}

/// The scheduler thread of one decoder; dropping it stops the thread.
pub(crate) struct Scheduler {
    tx: mpsc::Sender<Cmd>,
    handle: Option<JoinHandle<()>>,
}

impl Scheduler {
    /// Starts the thread.
    pub(crate) fn start(model: Arc<DecoderModel>, kv: Arc<Mutex<KvState>>, eos: Vec<u32>) -> Result<Self> {
        let (tx, rx) = mpsc::channel();
        let handle = std::thread::Builder::new()
            .name("govbox-scheduler".into())
            .spawn(move || {
                Loop { model, kv, eos, waiting: VecDeque::new(), running: Vec::new(), draining: Vec::new() }.run(&rx)
            })
            .map_err(|source| EngineError::Io { path: "govbox-scheduler thread".into(), source })?;
        Ok(Self { tx, handle: Some(handle) })
    }

    /// A sender for [`Cmd::Wake`], for a request's [`Generation`](crate::Generation).
    pub(crate) fn waker(&self) -> mpsc::Sender<Cmd> {
        self.tx.clone()
    }

    /// Queues a job.
    pub(crate) fn submit(&self, job: Job) -> Result<()> {
        self.tx.send(Cmd::Job(Box::new(job))).map_err(|_| EngineError::SchedulerStopped)
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        let _ = self.tx.send(Cmd::Stop);
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
    /// Its table in the sliding-window pool, and the blocks it reserved there.
    local: Vec<u32>,
    local_reserved: usize,
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
            local: Vec::new(),
            local_reserved: 0,
            keys: Vec::new(),
            generated: 0,
            sampler,
            job,
        }
    }

    /// Why the sequence must end before this step, if it must.
    fn ends_now(&self, now: Instant) -> Option<End> {
        if self.job.out.gone() {
            Some(End::Cancelled)
        } else if self.job.out.past_deadline(now) {
            Some(End::Expire)
        } else {
            None
        }
    }
}

struct Loop {
    model: Arc<DecoderModel>,
    kv: Arc<Mutex<KvState>>,
    eos: Vec<u32>,
    waiting: VecDeque<Seq>,
    /// In admission order (oldest first).
    running: Vec<Seq>,
    /// Ended sequences whose last events wait for room in their channel.
    draining: Vec<Output>,
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

/// Releases a sequence's blocks (in both pools), then tells its caller how it ended. Returns its
/// output while events still wait for room in the channel.
fn end(alloc: &mut BlockAllocator, window: &mut Option<WindowBlocks>, mut s: Seq, how: End) -> Option<Output> {
    alloc.release(&mut s.table);
    release_window(window, &mut s);
    let mut out = s.job.out;
    match how {
        End::Finish(reason) => out.finish(reason),
        End::Fail(e) => out.fail(e),
        End::Expire => out.expire(),
        End::Cancelled => return None,
    }
    out.held().then_some(out)
}

/// Gives back a sequence's sliding-window blocks and reservation.
fn release_window(window: &mut Option<WindowBlocks>, s: &mut Seq) {
    if let Some(w) = window {
        w.release(&mut s.local, s.local_reserved);
    }
    s.local_reserved = 0;
}

impl Loop {
    fn run(mut self, rx: &mpsc::Receiver<Cmd>) {
        let mut busy = false;
        loop {
            // Wait for news when there is nothing to compute: forever when nothing runs, a
            // moment when every sequence is paused or ended ones still hold events.
            let first = if self.running.is_empty() && self.waiting.is_empty() && self.draining.is_empty() {
                rx.recv().map_err(|_| mpsc::RecvTimeoutError::Disconnected)
            } else if !busy {
                rx.recv_timeout(PAUSE)
            } else {
                Err(mpsc::RecvTimeoutError::Timeout)
            };
            let mut next = match first {
                Ok(c) => Some(c),
                Err(mpsc::RecvTimeoutError::Timeout) => rx.try_recv().ok(),
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(Cmd::Stop),
            };
            while let Some(cmd) = next {
                match cmd {
                    Cmd::Job(j) => self.waiting.push_back(Seq::new(*j)),
                    Cmd::Wake => {}
                    Cmd::Stop => return self.stop(),
                }
                next = rx.try_recv().ok();
            }
            self.draining.retain_mut(|o| o.held() && !o.gone());
            busy = self.step();
        }
    }

    /// Ends every sequence: the engine is going away.
    fn stop(mut self) {
        let kv = self.kv.clone();
        let mut guard = lock(&kv);
        let st = &mut *guard;
        for s in std::mem::take(&mut self.waiting).into_iter().chain(std::mem::take(&mut self.running)) {
            end(&mut st.alloc, &mut st.window, s, End::Fail(EngineError::SchedulerStopped));
        }
    }

    /// One step; false when it ran no forward pass (nothing to run, or every reader behind).
    fn step(&mut self) -> bool {
        let kv = self.kv.clone();
        let mut guard = lock(&kv);
        let st = &mut *guard;
        // 1. Cancelled and expired sequences.
        let now = Instant::now();
        for s in std::mem::take(&mut self.waiting) {
            match s.ends_now(now) {
                Some(how) => self.draining.extend(end(&mut st.alloc, &mut st.window, s, how)),
                None => self.waiting.push_back(s),
            }
        }
        for s in std::mem::take(&mut self.running) {
            match s.ends_now(now) {
                Some(how) => self.draining.extend(end(&mut st.alloc, &mut st.window, s, how)),
                None => self.running.push(s),
            }
        }
        // 2. Admission.
        self.admit(&mut st.alloc, &mut st.window);
        // 3. A block for each decoding sequence's next token.
        self.grow(&mut st.alloc, &mut st.window);
        // 4. One forward pass, without the sequences whose reader is behind.
        let mut rows = Vec::new(); // (running index, start, end)
        let mut prefill_left = PREFILL_CHUNK;
        for (i, s) in self.running.iter_mut().enumerate() {
            let pending = s.tokens.len() - s.computed;
            if s.job.out.held() {
                continue;
            }
            if pending == 1 {
                rows.push((i, s.computed, s.computed + 1));
            } else if prefill_left > 0 {
                let n = pending.min(prefill_left);
                prefill_left -= n;
                rows.push((i, s.computed, s.computed + n));
            }
        }
        if rows.is_empty() {
            return false;
        }
        st.alloc.note_step(rows.len());
        // The sliding-window blocks this pass reads and writes (those behind the window go back).
        let mut gone: Vec<Option<End>> = (0..self.running.len()).map(|_| None).collect();
        if let Some(w) = st.window.as_mut() {
            for &(i, a, b) in &rows {
                if let Err(e) = w.fit(&mut self.running[i].local, a, b) {
                    gone[i] = Some(End::Fail(e));
                }
            }
            rows.retain(|&(i, _, _)| gone[i].is_none());
        }
        let vocab = self.model.config().vocab_size;
        let inputs: Vec<SeqInput<'_>> = rows
            .iter()
            .map(|&(i, a, b)| {
                let s = &self.running[i];
                SeqInput { tokens: &s.tokens[a..b], start_pos: a, block_table: &s.table, local_table: &s.local }
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
        // A pass over a long piece of prompt freed activations of tens of MB each. The CPU
        // backend's operations run on its pool's workers, each with a malloc arena of its own,
        // and the next long pass may land on the other worker: each arena would then keep a
        // pass's worth of freed memory. Giving the free pages back after such a pass keeps one.
        if rows.iter().map(|&(_, a, b)| b - a).filter(|&n| n > 1).sum::<usize>() >= TRIM_AFTER_PREFILL {
            govbox_drivers::cpu::give_back_freed_memory();
        }
        // 5. Results.
        for (&(i, _, b), r) in rows.iter().zip(results) {
            let s = &mut self.running[i];
            let logits = match r {
                Ok(l) => l,
                Err(e) => {
                    gone[i] = Some(End::Fail(e));
                    continue;
                }
            };
            s.computed = b;
            while let Some(root) = s.job.cache_root.filter(|_| st.window.is_none())
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
            if s.generated >= s.job.out.budget {
                gone[i] = Some(End::Finish(FinishReason::Length));
                continue;
            }
            // Log-probabilities are the model's own, before a grammar's mask (and penalties).
            let raw = s.job.sampling.logprobs.map(|k| (k, logits.clone()));
            let mut logits = logits;
            let id = match constrained_sample(s, &mut logits) {
                Ok(id) => id,
                Err(e) => {
                    gone[i] = Some(End::Fail(e));
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
            gone[i] = match s.job.out.token(id, lp, eos) {
                Ok(None) => None,
                Ok(Some(reason)) => Some(End::Finish(reason)),
                Err(e) => Some(End::Fail(e)),
            };
            // Sent now, not next step: a reader that keeps up never waits a step for its text.
            s.job.out.held();
        }
        for (s, g) in std::mem::take(&mut self.running).into_iter().zip(gone) {
            match g {
                Some(how) => self.draining.extend(end(&mut st.alloc, &mut st.window, s, how)),
                None => self.running.push(s),
            }
        }
        true
    }

    fn admit(&mut self, alloc: &mut BlockAllocator, window: &mut Option<WindowBlocks>) {
        while let Some(s) = self.waiting.front_mut() {
            if self.running.len() >= MAX_RUNNING {
                return;
            }
            let len = s.tokens.len();
            // The last token is always computed (its logits are needed), so never in a shared block.
            let (mut shared, keys) = match s.job.cache_root.filter(|_| window.is_none()) {
                Some(root) => alloc.lookup(root, &s.tokens, (len - 1) / BLOCK_SIZE),
                None => (Vec::new(), Vec::new()),
            };
            let need = len.div_ceil(BLOCK_SIZE) - shared.len();
            // The most sliding-window blocks it can hold, for every token it may still sample.
            let most = len + s.job.out.budget.saturating_sub(s.generated);
            let local = window.as_ref().map_or(0, |w| w.cap(most, PREFILL_CHUNK));
            // Leave each running sequence room for one more block.
            let fits = need + self.running.len() <= alloc.available();
            if !fits || !window.as_mut().is_none_or(|w| w.try_reserve(local)) {
                alloc.release(&mut shared);
                if self.running.is_empty() {
                    // Even the whole pool cannot hold it (only a preempted sequence that grew
                    // can get here; generate() refuses prompts that can never fit).
                    if let Some(s) = self.waiting.pop_front() {
                        self.draining.extend(end(alloc, window, s, End::Finish(FinishReason::Length)));
                    }
                    continue;
                }
                return;
            }
            s.local_reserved = local;
            alloc.note_lookup(shared.len());
            s.computed = shared.len() * BLOCK_SIZE;
            s.job.out.admitted(s.computed);
            s.table = shared;
            s.keys = keys;
            if alloc.reserve(&mut s.table, len).is_err() {
                // Unreachable after the check above; stay consistent anyway.
                alloc.release(&mut s.table);
                release_window(window, s);
                return;
            }
            if let Some(s) = self.waiting.pop_front() {
                self.running.push(s);
            }
        }
    }

    fn grow(&mut self, alloc: &mut BlockAllocator, window: &mut Option<WindowBlocks>) {
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
                self.draining.extend(end(alloc, window, s, End::Finish(FinishReason::Length)));
                continue;
            }
            // Preempt the newest (possibly this one): its KV is recomputed when it returns.
            if let Some(mut v) = self.running.pop() {
                alloc.note_preemption();
                alloc.release(&mut v.table);
                release_window(window, &mut v);
                v.computed = 0;
                v.keys.clear();
                self.waiting.push_front(v);
            }
        }
    }
}
