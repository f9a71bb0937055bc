//! Work from concurrent callers run together: while one batch runs, the jobs that arrive wait
//! in a queue, and the next batch takes all of them at once (up to a size cap). No thread of
//! its own: the first waiting caller whose turn it is runs the batch for everyone in it
//! ("combining"), then hands the turn on. A caller alone runs at once, with no added wait; under
//! load, batches grow by themselves, because the queue fills while the previous batch runs.
//!
//! Each job's items keep their order, and the work function must give one output per item that
//! does not depend on the other items of the batch (up to float rounding), so a job's answer is
//! the one it would get alone.

use std::collections::{HashMap, VecDeque};
use std::sync::{Condvar, Mutex, MutexGuard};

use crate::{EngineError, Result};

/// Counters of the batches run so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchStats {
    /// Batches run.
    pub batches: u64,
    /// Jobs (callers) they served.
    pub jobs: u64,
    /// Items (query–document pairs) they carried.
    pub items: u64,
    /// Most jobs one batch has served.
    pub peak_jobs: u64,
}

struct State<I, O> {
    queue: VecDeque<(u64, Vec<I>)>,
    done: HashMap<u64, std::result::Result<Vec<O>, String>>,
    /// A batch is running, or held by [`Batcher::pause`].
    busy: bool,
    next_id: u64,
    stats: BatchStats,
}

/// A combining queue of jobs, each a list of items.
pub struct Batcher<I, O> {
    state: Mutex<State<I, O>>,
    turn: Condvar,
    max_items: usize,
}

impl<I, O> std::fmt::Debug for Batcher<I, O> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher").field("max_items", &self.max_items).field("stats", &self.stats()).finish()
    }
}

/// Keeps new batches from starting until it is dropped (see [`Batcher::pause`]).
pub struct Pause<'a, I, O> {
    batcher: &'a Batcher<I, O>,
}

impl<I, O> Drop for Pause<'_, I, O> {
    fn drop(&mut self) {
        self.batcher.lock().busy = false;
        self.batcher.turn.notify_all();
    }
}

/// The running batch's jobs: answered with an error if the work panics, so that no caller
/// waits for ever and the turn passes on.
struct Running<'a, I, O> {
    batcher: &'a Batcher<I, O>,
    ids: Vec<u64>,
}

impl<I, O> Drop for Running<'_, I, O> {
    fn drop(&mut self) {
        let mut st = self.batcher.lock();
        for id in self.ids.drain(..) {
            st.done.insert(id, Err("the batch this request ran in panicked".into()));
        }
        st.busy = false;
        drop(st);
        self.batcher.turn.notify_all();
    }
}

impl<I, O> Batcher<I, O> {
    /// A batcher whose batches take jobs until `max_items` items (a bigger job runs alone).
    pub fn new(max_items: usize) -> Self {
        let state = State {
            queue: VecDeque::new(),
            done: HashMap::new(),
            busy: false,
            next_id: 0,
            stats: BatchStats::default(),
        };
        Self { state: Mutex::new(state), turn: Condvar::new(), max_items: max_items.max(1) }
    }

    fn lock(&self) -> MutexGuard<'_, State<I, O>> {
        // The state is consistent between statements; a panic elsewhere cannot leave it half-made.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The batches run so far.
    pub fn stats(&self) -> BatchStats {
        self.lock().stats
    }

    /// Jobs waiting for a batch.
    pub fn queued(&self) -> usize {
        self.lock().queue.len()
    }

    /// Waits for the running batch, then keeps new ones from starting until the guard is
    /// dropped; jobs submitted meanwhile queue up and run together. For draining and for tests
    /// that need a known batch.
    pub fn pause(&self) -> Pause<'_, I, O> {
        let mut st = self.lock();
        while st.busy {
            st = self.turn.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.busy = true;
        Pause { batcher: self }
    }

    /// Runs `items` in a batch with whatever other jobs are waiting, and returns their outputs
    /// in order. `work` maps a batch's items to one output each; the caller whose turn it is runs
    /// its own `work` over everyone's items, so all callers must pass the same function.
    pub fn run(&self, items: Vec<I>, work: &dyn Fn(&[I]) -> Result<Vec<O>>) -> Result<Vec<O>> {
        let mut st = self.lock();
        let me = st.next_id;
        st.next_id += 1;
        st.queue.push_back((me, items));
        loop {
            if let Some(r) = st.done.remove(&me) {
                return r.map_err(EngineError::Request);
            }
            if st.busy {
                st = self.turn.wait(st).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            st.busy = true;
            let mut jobs = Vec::new();
            let mut n = 0;
            while let Some((_, items)) = st.queue.front() {
                if !jobs.is_empty() && n + items.len() > self.max_items {
                    break;
                }
                n += items.len();
                jobs.extend(st.queue.pop_front());
            }
            drop(st);
            let mut running = Running { batcher: self, ids: jobs.iter().map(|(id, _)| *id).collect() };
            let lens: Vec<usize> = jobs.iter().map(|(_, items)| items.len()).collect();
            let all: Vec<I> = jobs.into_iter().flat_map(|(_, items)| items).collect();
            let out = work(&all).and_then(|out| {
                if out.len() == all.len() {
                    Ok(out)
                } else {
                    Err(EngineError::Request(format!("a batch of {} items gave {} outputs", all.len(), out.len())))
                }
            });
            st = self.lock();
            let ids = std::mem::take(&mut running.ids);
            st.stats.batches += 1;
            st.stats.jobs += ids.len() as u64;
            st.stats.items += all.len() as u64;
            st.stats.peak_jobs = st.stats.peak_jobs.max(ids.len() as u64);
            match out {
                Ok(out) => {
                    let mut out = out.into_iter();
                    for (id, len) in ids.into_iter().zip(lens) {
                        st.done.insert(id, Ok(out.by_ref().take(len).collect()));
                    }
                }
                Err(e) => {
                    let msg = match e {
                        EngineError::Request(m) => m,
                        e => e.to_string(),
                    };
                    for id in ids {
                        st.done.insert(id, Err(msg.clone()));
                    }
                }
            }
            // `running` (now without ids) clears `busy` and wakes the others when dropped.
            drop(st);
            drop(running);
            st = self.lock();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn jobs_queued_behind_a_batch_run_together_and_get_their_own_outputs() {
        let b: Arc<Batcher<u32, u32>> = Arc::new(Batcher::new(100));
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let double = {
            let sizes = sizes.clone();
            move |items: &[u32]| -> Result<Vec<u32>> {
                sizes.lock().unwrap().push(items.len());
                Ok(items.iter().map(|x| x * 2).collect())
            }
        };
        assert_eq!(b.run(vec![1, 2], &double).unwrap(), [2, 4]);
        let pause = b.pause();
        let mut threads = Vec::new();
        for job in [vec![10, 11, 12], vec![20]] {
            let (b, f) = (b.clone(), double.clone());
            threads.push(std::thread::spawn(move || b.run(job, &f).unwrap()));
        }
        wait_until("two queued jobs", || b.queued() == 2);
        drop(pause);
        let got: Vec<Vec<u32>> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(got, [vec![20, 22, 24], vec![40]]);
        assert_eq!(*sizes.lock().unwrap(), [2, 4], "the two queued jobs ran as one batch");
        assert_eq!(b.stats(), BatchStats { batches: 2, jobs: 3, items: 6, peak_jobs: 2 });
    }

    #[test]
    fn batches_stop_at_the_item_cap_and_errors_reach_every_job_of_theirs() {
        let b: Arc<Batcher<u32, u32>> = Arc::new(Batcher::new(3));
        let pause = b.pause();
        let (tx, rx) = mpsc::channel();
        for (n, job) in [vec![1, 2], vec![3, 4], vec![0]].into_iter().enumerate() {
            let (mine, tx) = (b.clone(), tx.clone());
            std::thread::spawn(move || {
                let f = |items: &[u32]| -> Result<Vec<u32>> {
                    if items.contains(&0) { Err(EngineError::Request("zero".into())) } else { Ok(items.to_vec()) }
                };
                tx.send((job[0], mine.run(job, &f).map_err(|e| e.to_string()))).unwrap();
            });
            // One at a time, so the queue's order is known.
            wait_until("the job to queue", || b.queued() == n + 1);
        }
        drop(pause);
        let mut got: Vec<(u32, std::result::Result<Vec<u32>, String>)> = rx.iter().take(3).collect();
        got.sort_by_key(|(k, _)| *k);
        assert_eq!(got[1].1, Ok(vec![1, 2]), "[1,2] ran alone: [3,4] would pass the cap of 3");
        assert_eq!(got[2].1, Err("request: zero".into()), "[3,4] shared the failing batch with [0]");
        assert_eq!(got[0].1, Err("request: zero".into()));
        assert_eq!(b.stats().batches, 2);
    }

    #[test]
    fn a_panicking_batch_answers_its_jobs_and_passes_the_turn() {
        let b: Batcher<u32, u32> = Batcher::new(10);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = b.run(vec![1], &|_: &[u32]| -> Result<Vec<u32>> { panic!("boom") });
        }));
        assert!(r.is_err());
        assert_eq!(b.run(vec![5], &|i: &[u32]| Ok(i.to_vec())).unwrap(), [5]);
    }
}
