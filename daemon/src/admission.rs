//! Admission to the engine: at most `serving.max_concurrent` requests run, at most
//! `serving.queue_depth` wait, and nothing new starts once shutdown has begun.
//!
//! The queue is fair between clients, not first come first served:
//! - A client with its own limit (`govbox client add --max-concurrent N`) never runs more than N
//!   requests at once; its further requests wait even when a slot is free.
//! - A freed slot goes to the waiting clients in turn (round robin by client), first to those that
//!   run fewer than their fair share, `max(1, max_concurrent / 2)`, then to the others. A client
//!   without a limit of its own may use slots that nobody else is waiting for, so a box serving
//!   one application keeps every slot busy; once another client waits, it gets the next free slot.
//! - When the queue is full, a request whose client waits with fewer requests than the client
//!   waiting with the most takes the place of that client's newest request (which gets 503);
//!   otherwise it gets 503 itself. One client flooding the box fills its own share of the queue,
//!   never the place of another client's request.
//!
//! A slot is a [`Slot`] value: dropping it (the request ended, failed or was cancelled) hands it to
//! the next waiter. A waiter that gives up (deadline, client gone) leaves the queue in its `Drop`,
//! and hands back a slot that was granted to it in the same instant.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::metrics::Metrics;

/// Why a request got no engine slot. The HTTP edge (`api::error`) turns each into its status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AdmissionRefusal {
    /// Every slot is busy and the queue is full (or its place went to another client's request).
    #[error("the admission queue is full ({queued} requests waiting)")]
    QueueFull {
        /// Requests waiting.
        queued: usize,
    },
    /// Shutdown has begun.
    #[error("admission is closed: the daemon is shutting down")]
    Closed,
    /// The request's deadline passed while it waited.
    #[error("no slot came free within the {secs} s request deadline")]
    DeadlineExceeded {
        /// The deadline.
        secs: u64,
    },
    /// The queue lost the client's entry (a bug).
    #[error("the admission queue lost its entry for the client")]
    Lost,
}

/// Who asks for a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Asker {
    /// The client's name.
    pub client: String,
    /// The client's own limit (`--max-concurrent`); `None`: its fair share while others wait.
    pub max_concurrent: Option<u32>,
}

impl Asker {
    /// The asker for a client record.
    pub fn of(client: &govbox_provisioning::ClientRecord) -> Self {
        Asker { client: client.name.clone(), max_concurrent: client.max_concurrent }
    }

    fn cap(&self) -> usize {
        self.max_concurrent.map_or(usize::MAX, |n| n.max(1) as usize)
    }
}

/// The answer a waiter gets: a slot (already counted as its client's), or why not.
type Grant = Result<(), AdmissionRefusal>;

#[derive(Debug)]
struct Waiter {
    id: u64,
    tx: oneshot::Sender<Grant>,
}

#[derive(Debug)]
struct ClientQueue {
    running: usize,
    cap: usize,
    waiting: VecDeque<Waiter>,
}

#[derive(Debug)]
struct Inner {
    free: usize,
    closed: bool,
    next_id: u64,
    /// Waiters of all clients.
    waiting: usize,
    /// Clients running or waiting; removed when they do neither.
    clients: HashMap<String, ClientQueue>,
    /// The clients with waiters, in turn order.
    turn: VecDeque<String>,
}

impl Inner {
    /// Gives free slots to waiters, in turn.
    fn dispatch(&mut self, fair_share: usize) {
        while self.free > 0 && !self.closed {
            let Some(name) = self.pick(fair_share) else { return };
            let Some(q) = self.clients.get_mut(&name) else { continue };
            let Some(w) = q.waiting.pop_front() else { continue };
            self.waiting -= 1;
            if !q.waiting.is_empty() {
                self.turn.push_back(name.clone());
            }
            q.running += 1;
            self.free -= 1;
            if w.tx.send(Ok(())).is_err() {
                // Unreachable while waiters leave the queue before dropping their receiver; kept so
                // that a slot can never be lost.
                self.release(&name);
            }
        }
    }

    /// Takes the next client in turn that may run one more: first below its fair share, then
    /// below its own limit.
    fn pick(&mut self, fair_share: usize) -> Option<String> {
        for fair in [true, false] {
            let found = self.turn.iter().position(|name| {
                self.clients.get(name).is_some_and(|q| q.running < if fair { fair_share.min(q.cap) } else { q.cap })
            });
            if let Some(i) = found {
                return self.turn.remove(i);
            }
        }
        None
    }

    /// A slot of `client` is free again (dispatch follows separately).
    fn release(&mut self, client: &str) {
        self.free += 1;
        if let Some(q) = self.clients.get_mut(client) {
            q.running = q.running.saturating_sub(1);
        }
        self.forget_if_idle(client);
    }

    fn forget_if_idle(&mut self, client: &str) {
        if self.clients.get(client).is_some_and(|q| q.running == 0 && q.waiting.is_empty()) {
            self.clients.remove(client);
        }
    }

    /// Removes waiter `id` of `client`; false when it is no longer queued.
    fn leave(&mut self, client: &str, id: u64) -> bool {
        let Some(q) = self.clients.get_mut(client) else { return false };
        let Some(i) = q.waiting.iter().position(|w| w.id == id) else { return false };
        q.waiting.remove(i);
        self.waiting -= 1;
        if q.waiting.is_empty() {
            self.turn.retain(|n| n != client);
        }
        self.forget_if_idle(client);
        true
    }

    /// Makes room in a full queue for a request of `client`, by refusing the newest waiter of the
    /// client that waits with the most, if that is more than one above `client`'s own.
    fn evict_for(&mut self, client: &str) -> bool {
        let mine = self.clients.get(client).map_or(0, |q| q.waiting.len());
        let Some((big, n)) = self
            .clients
            .iter()
            .map(|(name, q)| (name.clone(), q.waiting.len()))
            .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
        else {
            return false;
        };
        if n <= mine + 1 {
            return false;
        }
        let queued = self.waiting;
        let Some(w) = self.clients.get_mut(&big).and_then(|q| q.waiting.pop_back()) else { return false };
        self.waiting -= 1;
        if self.clients.get(&big).is_some_and(|q| q.waiting.is_empty()) {
            self.turn.retain(|c| *c != big);
        }
        let _ = w.tx.send(Err(AdmissionRefusal::QueueFull { queued }));
        true
    }
}

#[derive(Debug)]
struct Shared {
    inner: Mutex<Inner>,
    queue_depth: usize,
    fair_share: usize,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // Every update keeps the counts consistent before anything that could panic.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn release(&self, client: &str) {
        let mut g = self.lock();
        g.release(client);
        g.dispatch(self.fair_share);
    }
}

/// The slots and the queue.
#[derive(Debug)]
pub struct Admission {
    shared: Arc<Shared>,
}

/// A running request's slot; dropping it frees the slot for the next waiter and lowers the
/// active gauge.
#[derive(Debug)]
pub struct Slot {
    shared: Arc<Shared>,
    client: String,
    metrics: Arc<Metrics>,
}

impl Slot {
    fn new(shared: &Arc<Shared>, client: &str, metrics: &Arc<Metrics>) -> Self {
        metrics.active.inc();
        Slot { shared: shared.clone(), client: client.to_string(), metrics: metrics.clone() }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.active.dec();
        self.shared.release(&self.client);
    }
}

/// A request in the queue. Dropped before it got its answer (deadline, client gone), it leaves
/// the queue, or hands back the slot granted to it meanwhile.
struct Queued<'a> {
    shared: &'a Shared,
    client: &'a str,
    id: u64,
    rx: Option<oneshot::Receiver<Grant>>,
    metrics: &'a Metrics,
}

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.metrics.queued.dec();
        let Some(mut rx) = self.rx.take() else { return };
        let mut g = self.shared.lock();
        if !g.leave(self.client, self.id) && matches!(rx.try_recv(), Ok(Ok(()))) {
            g.release(self.client);
            g.dispatch(self.shared.fair_share);
        }
    }
}

impl Admission {
    /// `max_concurrent` slots and a queue of `queue_depth`.
    pub fn new(max_concurrent: usize, queue_depth: usize) -> Self {
        let inner = Inner {
            free: max_concurrent,
            closed: false,
            next_id: 0,
            waiting: 0,
            clients: HashMap::new(),
            turn: VecDeque::new(),
        };
        Admission {
            shared: Arc::new(Shared { inner: Mutex::new(inner), queue_depth, fair_share: (max_concurrent / 2).max(1) }),
        }
    }

    /// Refuses every later request (shutdown); those waiting get 503 `shutting_down` now.
    pub fn close(&self) {
        let mut g = self.shared.lock();
        g.closed = true;
        g.turn.clear();
        g.waiting = 0;
        for q in g.clients.values_mut() {
            for w in q.waiting.drain(..) {
                let _ = w.tx.send(Err(AdmissionRefusal::Closed));
            }
        }
        g.clients.retain(|_, q| q.running > 0);
    }

    /// Whether shutdown has begun.
    pub fn is_closed(&self) -> bool {
        self.shared.lock().closed
    }

    /// Waits for a slot for `who` until `deadline`.
    pub async fn admit(
        &self,
        who: &Asker,
        metrics: &Arc<Metrics>,
        deadline: Instant,
        deadline_secs: u64,
    ) -> Result<Slot, AdmissionRefusal> {
        let (id, rx) = {
            let mut g = self.shared.lock();
            if g.closed {
                return Err(AdmissionRefusal::Closed);
            }
            let free = g.free;
            let q = g.clients.entry(who.client.clone()).or_insert_with(|| ClientQueue {
                running: 0,
                cap: who.cap(),
                waiting: VecDeque::new(),
            });
            q.cap = who.cap();
            if free > 0 && q.running < q.cap && q.waiting.is_empty() {
                q.running += 1;
                g.free -= 1;
                drop(g);
                return Ok(Slot::new(&self.shared, &who.client, metrics));
            }
            if g.waiting >= self.shared.queue_depth && !g.evict_for(&who.client) {
                let queued = g.waiting;
                g.forget_if_idle(&who.client);
                return Err(AdmissionRefusal::QueueFull { queued });
            }
            let (tx, rx) = oneshot::channel();
            let id = g.next_id;
            g.next_id += 1;
            g.waiting += 1;
            let q = g.clients.get_mut(&who.client).ok_or(AdmissionRefusal::Lost)?;
            q.waiting.push_back(Waiter { id, tx });
            if q.waiting.len() == 1 {
                g.turn.push_back(who.client.clone());
            }
            metrics.queued.inc();
            (id, rx)
        };
        let mut queued = Queued { shared: &self.shared, client: &who.client, id, rx: Some(rx), metrics };
        let Some(rx) = queued.rx.as_mut() else { unreachable!("set just above") };
        let answer = tokio::time::timeout_at(deadline, rx).await;
        match answer {
            Err(_) => Err(AdmissionRefusal::DeadlineExceeded { secs: deadline_secs }),
            Ok(answer) => {
                // Answered: the queue no longer holds this waiter, and a granted slot is ours.
                queued.rx = None;
                match answer {
                    Ok(Ok(())) => Ok(Slot::new(&self.shared, &who.client, metrics)),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(AdmissionRefusal::Closed),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn metrics() -> Arc<Metrics> {
        Arc::new(Metrics::new(&govbox_drivers::Backend::info(&govbox_drivers::cpu::CpuBackend::new(1).unwrap()), &[]))
    }

    fn who(c: &str) -> Asker {
        Asker { client: c.into(), max_concurrent: None }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    /// Queues a request of `client` in a task that reports its name on `done` once it has a
    /// slot, and holds the slot until `release` says so.
    fn waiter(
        a: &Arc<Admission>,
        m: &Arc<Metrics>,
        client: &str,
        done: &tokio::sync::mpsc::UnboundedSender<String>,
    ) -> (tokio::task::JoinHandle<Result<(), AdmissionRefusal>>, oneshot::Sender<()>) {
        let (a, m, done, who) = (a.clone(), m.clone(), done.clone(), who(client));
        let (release, hold) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let slot = a.admit(&who, &m, far(), 60).await?;
            done.send(who.client.clone()).unwrap();
            let _ = hold.await;
            drop(slot);
            Ok(())
        });
        (task, release)
    }

    async fn queued_to_be(m: &Metrics, n: i64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while m.queued.get() != n {
            assert!(std::time::Instant::now() < deadline, "queue length {} never became {n}", m.queued.get());
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_freed_slot_goes_to_the_next_client_in_turn_not_the_oldest_request() {
        let m = metrics();
        let a = Arc::new(Admission::new(1, 16));
        let hold = a.admit(&who("flood"), &m, far(), 60).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut releases = vec![];
        let mut tasks = vec![];
        for (i, c) in ["flood", "flood", "flood", "hr"].iter().enumerate() {
            let (task, release) = waiter(&a, &m, c, &tx);
            tasks.push(task);
            releases.push(release);
            queued_to_be(&m, i as i64 + 1).await;
        }
        // Each waiter gives its slot back as soon as it has reported.
        drop(releases);
        drop(hold);
        let mut order = vec![];
        for _ in 0..4 {
            order.push(rx.recv().await.unwrap());
        }
        assert_eq!(order, ["flood", "hr", "flood", "flood"], "FIFO would answer hr last");
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!((m.queued.get(), m.active.get()), (0, 0));
    }

    #[tokio::test]
    async fn a_full_queue_refuses_the_flooding_client_not_the_other() {
        let m = metrics();
        let a = Arc::new(Admission::new(1, 2));
        let hold = a.admit(&who("flood"), &m, far(), 60).await.unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (f1, r1) = waiter(&a, &m, "flood", &tx);
        queued_to_be(&m, 1).await;
        let (f2, _r2) = waiter(&a, &m, "flood", &tx);
        queued_to_be(&m, 2).await;
        // Full. The flooding client is refused at once...
        assert!(matches!(a.admit(&who("flood"), &m, far(), 60).await, Err(AdmissionRefusal::QueueFull { .. })));
        // ...while another client's request takes the place of its newest waiter.
        let (hr, release_hr) = waiter(&a, &m, "hr", &tx);
        assert!(matches!(f2.await.unwrap(), Err(AdmissionRefusal::QueueFull { .. })));
        queued_to_be(&m, 2).await;
        // Now both wait with one each: a third client cannot push either out.
        assert!(matches!(a.admit(&who("other"), &m, far(), 60).await, Err(AdmissionRefusal::QueueFull { .. })));
        drop(hold);
        assert_eq!(rx.recv().await.unwrap(), "flood");
        drop(r1);
        assert_eq!(rx.recv().await.unwrap(), "hr");
        drop(release_hr);
        hr.await.unwrap().unwrap();
        f1.await.unwrap().unwrap();
        assert_eq!((m.queued.get(), m.active.get()), (0, 0));
    }

    #[tokio::test]
    async fn a_client_limit_holds_even_with_free_slots_and_others_pass() {
        let m = metrics();
        let a = Arc::new(Admission::new(3, 8));
        let one = Asker { client: "batch".into(), max_concurrent: Some(1) };
        let first = a.admit(&one, &m, far(), 60).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(matches!(a.admit(&one, &m, soon, 1).await, Err(AdmissionRefusal::DeadlineExceeded { secs: 1 })));
        let _b = a.admit(&who("hr"), &m, far(), 60).await.unwrap();
        let _c = a.admit(&who("hr"), &m, far(), 60).await.unwrap();
        assert_eq!((m.active.get(), m.queued.get()), (3, 0));
        drop(first);
        let _again = a.admit(&one, &m, far(), 60).await.unwrap();
    }

    #[tokio::test]
    async fn a_client_over_its_fair_share_waits_behind_one_below_it() {
        // 4 slots, fair share 2: "flood" took all 4 while alone; when one frees, "hr" (running
        // none) goes before flood's own waiter, although flood queued first.
        let m = metrics();
        let a = Arc::new(Admission::new(4, 8));
        let mut held = vec![];
        for _ in 0..4 {
            held.push(a.admit(&who("flood"), &m, far(), 60).await.unwrap());
        }
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let (_f, _rf) = waiter(&a, &m, "flood", &tx);
        queued_to_be(&m, 1).await;
        let (_h, _rh) = waiter(&a, &m, "hr", &tx);
        queued_to_be(&m, 2).await;
        // hr is second in turn but the only one below its fair share.
        held.pop();
        assert_eq!(rx.recv().await.unwrap(), "hr");
        held.pop();
        assert_eq!(rx.recv().await.unwrap(), "flood");
    }

    #[tokio::test]
    async fn waiters_that_give_up_leave_no_slot_or_place_behind() {
        let m = metrics();
        let a = Arc::new(Admission::new(1, 4));
        let hold = a.admit(&who("app"), &m, far(), 60).await.unwrap();
        // Deadline while queued.
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(matches!(a.admit(&who("app"), &m, soon, 1).await, Err(AdmissionRefusal::DeadlineExceeded { .. })));
        // A cancelled waiter (the HTTP client went away).
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (task, _r) = waiter(&a, &m, "app", &tx);
        queued_to_be(&m, 1).await;
        task.abort();
        queued_to_be(&m, 0).await;
        drop(hold);
        // The one slot is free: nobody holds it.
        let again = a.admit(&who("other"), &m, far(), 60).await.unwrap();
        assert_eq!(m.active.get(), 1);
        drop(again);
        assert!(a.shared.lock().clients.is_empty(), "idle clients are forgotten");
    }

    #[tokio::test]
    async fn close_refuses_new_and_waiting_requests() {
        let m = metrics();
        let a = Arc::new(Admission::new(1, 4));
        let hold = a.admit(&who("app"), &m, far(), 60).await.unwrap();
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        let (task, _r) = waiter(&a, &m, "app", &tx);
        queued_to_be(&m, 1).await;
        a.close();
        assert!(matches!(task.await.unwrap(), Err(AdmissionRefusal::Closed)));
        assert!(matches!(a.admit(&who("app"), &m, far(), 60).await, Err(AdmissionRefusal::Closed)));
        drop(hold);
        assert_eq!((m.active.get(), m.queued.get()), (0, 0));
    }
}
