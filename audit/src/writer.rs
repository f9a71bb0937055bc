//! The single writer thread: group commit, checkpoints, auth-failure flushes, recovery.
//!
//! Every append goes through one channel to this thread. It takes everything waiting into one
//! batch, gives the batch consecutive seqs, inserts entries and leaves in one sled transaction,
//! calls `flush` (fsync) once, and only then answers each waiter. Concurrent callers thus share
//! one fsync, and an answer `Ok(seq)` always means "durable".
//!
//! **After a failure** (an insert or flush error: disk full, I/O error) the batch is answered
//! with [`AuditError::Unavailable`], the in-memory tree and seq stay as they were before it, and
//! the store is marked unhealthy. sled's errors are sticky, so the next batch first reopens the
//! store in-process: it drops the old handle, opens the folder again, removes whatever entries
//! and leaves the failed batch may have left from the first unacknowledged seq on, and flushes.
//! If that works, the batch proceeds; if not (the disk is still full), it fails the same way and
//! the next one tries again. No restart is needed once space returns.

use std::sync::atomic::Ordering;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use sled::Transactional;
use time::OffsetDateTime;
use tokio::sync::oneshot;

use crate::auth::minute_of;
use crate::entry::{Entry, Event, format_time, truncate_to_ms};
use crate::error::{AuditError, Result};
use crate::log::Shared;
use crate::merkle::{Frontier, leaf_hash};
use crate::sth::SignedTreeHead;
use crate::store::{Recovered, Store, key};

/// Most appends taken into one batch; the rest wait for the next one.
const MAX_BATCH: usize = 8192;

/// A request to the writer thread.
pub(crate) enum Msg {
    Append(Event, oneshot::Sender<Result<u64>>),
    Checkpoint(oneshot::Sender<Result<SignedTreeHead>>),
    Close(oneshot::Sender<Result<SignedTreeHead>>),
    /// An operator's acknowledgement of a store held behind its TPM anchor.
    Acknowledge {
        actor: String,
        reason: String,
        reply: oneshot::Sender<Result<SignedTreeHead>>,
    },
}

type Batch = Vec<(Event, Option<oneshot::Sender<Result<u64>>>)>;

fn sort(m: Msg, appends: &mut Batch, controls: &mut Vec<Msg>) {
    match m {
        Msg::Append(ev, reply) => appends.push((ev, Some(reply))),
        other => controls.push(other),
    }
}

pub(crate) struct Writer {
    shared: Arc<Shared>,
    store: Option<Arc<Store>>,
    frontier: Frontier,
    last_time: OffsetDateTime,
    last_checkpoint: Option<SignedTreeHead>,
    last_checkpoint_at: Instant,
    unhealthy: bool,
    rx: Receiver<Msg>,
}

impl Writer {
    pub fn new(shared: Arc<Shared>, store: Arc<Store>, rec: Recovered, rx: Receiver<Msg>) -> Self {
        Self {
            shared,
            store: Some(store),
            frontier: rec.frontier,
            last_time: rec.last_time.unwrap_or(OffsetDateTime::UNIX_EPOCH),
            last_checkpoint: rec.last_checkpoint,
            last_checkpoint_at: Instant::now(),
            unhealthy: false,
            rx,
        }
    }

    pub fn run(mut self) {
        loop {
            let first = match self.rx.recv_timeout(self.next_wakeup()) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    // Every handle is gone: shut down as cleanly as close() would.
                    let _ = self.shutdown();
                    return;
                }
            };
            let mut appends = Vec::new();
            let mut controls = Vec::new();
            if let Some(m) = first {
                sort(m, &mut appends, &mut controls);
                while appends.len() < MAX_BATCH {
                    match self.rx.try_recv() {
                        Ok(m) => sort(m, &mut appends, &mut controls),
                        Err(_) => break,
                    }
                }
            }
            if !appends.is_empty() {
                let _ = self.commit(appends);
            }
            self.timers();
            for c in controls {
                match c {
                    Msg::Checkpoint(reply) => {
                        let _ = reply.send(self.checkpoint());
                    }
                    Msg::Close(reply) => {
                        let _ = reply.send(self.shutdown());
                        return;
                    }
                    Msg::Acknowledge { actor, reason, reply } => {
                        let _ = reply.send(self.acknowledge(&actor, &reason));
                    }
                    Msg::Append(..) => {}
                }
            }
        }
    }

    /// Until the next auth-failure minute ends, or the checkpoint interval runs out.
    fn next_wakeup(&self) -> Duration {
        let now = OffsetDateTime::now_utc();
        let into_minute = Duration::from_nanos((now.unix_timestamp().rem_euclid(60) as u64) * 1_000_000_000)
            + Duration::from_nanos(u64::from(now.nanosecond()));
        let mut wait = Duration::from_secs(60).saturating_sub(into_minute) + Duration::from_millis(20);
        if self.checkpoint_due_size() {
            let left = self.shared.opts.checkpoint_interval.saturating_sub(self.last_checkpoint_at.elapsed());
            wait = wait.min(left);
        }
        wait.max(Duration::from_millis(1))
    }

    fn checkpoint_due_size(&self) -> bool {
        self.last_checkpoint.as_ref().map(|c| c.tree_size) != Some(self.frontier.size())
    }

    /// Appends finished auth-failure minutes; checkpoints every N entries or T seconds.
    fn timers(&mut self) {
        let now_minute = minute_of(OffsetDateTime::now_utc());
        let done = self.shared.auth.lock().unwrap_or_else(PoisonError::into_inner).drain(Some(now_minute));
        self.commit_auth(done);
        let since = self.frontier.size() - self.last_checkpoint.as_ref().map_or(0, |c| c.tree_size);
        let every = self.shared.opts.checkpoint_every.max(1);
        let interval_over = self.last_checkpoint_at.elapsed() >= self.shared.opts.checkpoint_interval;
        if self.checkpoint_due_size() && (since >= every || interval_over) && self.shared.refuse_if_held().is_ok() {
            let _ = self.checkpoint_now(false);
        }
    }

    fn commit_auth(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        let batch = events.iter().cloned().map(|e| (e, None)).collect();
        if self.commit(batch).is_err() {
            self.shared.auth.lock().unwrap_or_else(PoisonError::into_inner).restore(events);
        }
    }

    /// Writes one batch durably and answers its waiters.
    fn commit(&mut self, batch: Batch) -> Result<()> {
        let (events, replies): (Vec<Event>, Vec<_>) = batch.into_iter().unzip();
        let start = self.frontier.size();
        let result = self.write_batch(events);
        // A held store (behind its TPM anchor) answers `audit_corrupt`; every other failure
        // makes the log unavailable.
        let failed = result.as_ref().err().map(|e| match e {
            AuditError::Unavailable { reason } => (None, reason.clone()),
            AuditError::Corrupt { path, detail } => (Some(path.clone()), detail.clone()),
            other => (None, other.to_string()),
        });
        if failed.is_some() {
            let n = replies.iter().filter(|r| r.is_some()).count() as u64;
            self.shared.failures.fetch_add(n, Ordering::Relaxed);
        }
        for (i, reply) in replies.into_iter().enumerate() {
            if let Some(reply) = reply {
                let answer = match &failed {
                    None => Ok(start + i as u64),
                    Some((None, reason)) => Err(AuditError::unavailable(reason.clone())),
                    Some((Some(path), detail)) => {
                        Err(AuditError::Corrupt { path: path.clone(), detail: detail.clone() })
                    }
                };
                let _ = reply.send(answer);
            }
        }
        result
    }

    fn write_batch(&mut self, events: Vec<Event>) -> Result<()> {
        self.shared.refuse_if_held()?;
        let store = self.healthy_store()?;
        let now = truncate_to_ms(OffsetDateTime::now_utc()).max(self.last_time);
        let time = format_time(now);
        let mut frontier = self.frontier.clone();
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            let entry = Entry { seq: frontier.size(), time: time.clone(), event: event.bounded() };
            let bytes = entry.to_bytes().map_err(|e| AuditError::unavailable(format!("encoding an entry: {e}")))?;
            let leaf = leaf_hash(self.shared.suite.hash_algorithm(), &bytes);
            rows.push((key(entry.seq), bytes, leaf));
            frontier.push(leaf);
        }
        let written = (&store.entries, &store.leaves)
            .transaction(|(entries, leaves)| {
                for (k, bytes, leaf) in &rows {
                    entries.insert(k, bytes.as_slice())?;
                    leaves.insert(k, leaf)?;
                }
                Ok::<_, sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e| format!("writing entries {}..{}: {e:?}", self.frontier.size(), frontier.size()))
            .and_then(|()| self.flush(&store).map_err(|e| e.to_string()));
        if let Err(reason) = written {
            self.unhealthy = true;
            return Err(AuditError::unavailable(reason));
        }
        self.frontier = frontier;
        self.last_time = now;
        self.shared.committed.store(self.frontier.size(), Ordering::Release);
        Ok(())
    }

    fn flush(&self, store: &Store) -> Result<()> {
        #[cfg(test)]
        if self.shared.fail_flushes.load(Ordering::Acquire) > 0 {
            self.shared.fail_flushes.fetch_sub(1, Ordering::AcqRel);
            return Err(AuditError::unavailable("injected flush failure"));
        }
        store.flush("the audit log")
    }

    /// The store, reopened first if the last write failed (see the module documentation).
    fn healthy_store(&mut self) -> Result<Arc<Store>> {
        if self.unhealthy || self.store.is_none() {
            self.reopen().map_err(|e| AuditError::unavailable(format!("reopening the audit store: {e}")))?;
        }
        self.store.clone().ok_or_else(|| AuditError::unavailable("the audit store is not open"))
    }

    fn reopen(&mut self) -> Result<()> {
        // Drop every handle this process holds, so sled releases its lock and its sticky error.
        self.store = None;
        *self.shared.store.write().unwrap_or_else(PoisonError::into_inner) = None;
        let store = Arc::new(Store::open(&self.shared.db_path, self.shared.suite.hash_algorithm())?);
        let acknowledged = self.frontier.size();
        store.discard_from(acknowledged)?;
        store.flush("the removal of unacknowledged entries")?;
        if store.leaf_count()? != acknowledged {
            return Err(store.corrupt(format!("after reopening, the log does not end at seq {acknowledged}")));
        }
        *self.shared.store.write().unwrap_or_else(PoisonError::into_inner) = Some(store.clone());
        self.store = Some(store);
        self.unhealthy = false;
        Ok(())
    }

    /// On request (checkpoint(), export): flushes auth tallies, then makes a fresh head.
    fn checkpoint(&mut self) -> Result<SignedTreeHead> {
        self.shared.refuse_if_held()?;
        let all = self.shared.auth.lock().unwrap_or_else(PoisonError::into_inner).drain(None);
        self.commit_auth(all);
        self.checkpoint_now(true)
    }

    /// Makes, saves and sends a head; the TPM anchors it when `forced` (a head asked for) or when
    /// the anchor's interval has passed.
    fn checkpoint_now(&mut self, forced: bool) -> Result<SignedTreeHead> {
        let store = self.healthy_store()?;
        let time = format_time(truncate_to_ms(OffsetDateTime::now_utc()));
        let head = SignedTreeHead::sign(
            &self.shared.signing,
            self.shared.suite.hash_algorithm(),
            self.frontier.size(),
            &self.frontier.root(),
            time,
        );
        let saved = store.save_checkpoint(&head, &self.frontier).and_then(|()| self.flush(&store));
        if let Err(e) = saved {
            self.unhealthy = true;
            return Err(AuditError::unavailable(format!("saving checkpoint {}: {e}", head.tree_size)));
        }
        if let Some(w) = &self.shared.witness {
            w.enqueue(&head);
        }
        if let Some(anchor) = self.shared.anchor.lock().unwrap_or_else(PoisonError::into_inner).as_mut() {
            // The head is durable in the store already; a TPM error is kept in the anchor's
            // status (`govbox-auditd`'s status) and the next head tries again.
            if let Err(e) = anchor.anchor(head.tree_size, &self.frontier.root(), forced) {
                eprintln!("govbox-audit: anchoring head {} in the TPM: {e}", head.tree_size);
            }
        }
        self.last_checkpoint = Some(head.clone());
        self.last_checkpoint_at = Instant::now();
        Ok(head)
    }

    /// Records the acknowledgement of a held store (see [`crate::AuditLog::acknowledge`]).
    fn acknowledge(&mut self, actor: &str, reason: &str) -> Result<SignedTreeHead> {
        let Some(why) = self.shared.held.lock().unwrap_or_else(PoisonError::into_inner).take() else {
            return Err(AuditError::Range {
                reason: "nothing to acknowledge: the store is not behind its TPM anchor".into(),
            });
        };
        let event = Event::Admin {
            actor: actor.to_string(),
            action: "audit_anchor_acknowledged".into(),
            subject: format!("reason: {reason}; found at open: {why}"),
        };
        let recorded = self.commit(vec![(event, None)]).and_then(|()| self.checkpoint_now(true)).and_then(|head| {
            // Until the TPM holds this head, the next start would find the store behind it again.
            match self.shared.anchor.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
                Some(a) if a.status.anchored_size != head.tree_size => Err(AuditError::Anchor(format!(
                    "the acknowledgement is entry {} but the TPM did not take its head: {}",
                    head.tree_size - 1,
                    a.status.last_error.as_deref().unwrap_or("no error reported")
                ))),
                _ => Ok(head),
            }
        });
        if recorded.is_err() {
            *self.shared.held.lock().unwrap_or_else(PoisonError::into_inner) = Some(why);
        }
        recorded
    }

    /// Clean shutdown: auth tallies, a final checkpoint if the tree grew since the last one.
    /// A held store is left as it is: signing over it would anchor the cut.
    fn shutdown(&mut self) -> Result<SignedTreeHead> {
        self.shared.refuse_if_held()?;
        let all = self.shared.auth.lock().unwrap_or_else(PoisonError::into_inner).drain(None);
        self.commit_auth(all);
        match &self.last_checkpoint {
            Some(c) if !self.checkpoint_due_size() => Ok(c.clone()),
            _ => self.checkpoint_now(true),
        }
    }
}
