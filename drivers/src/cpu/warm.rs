//! Workers that poll for work through a forward pass instead of sleeping between its products.
//!
//! A decode step is some two hundred short parallel regions (each projection, the attention,
//! the norms) with a little serial work between them. An idle rayon worker yields to the OS a
//! few dozen times and then sleeps on a futex, so in a decode the other workers fell asleep
//! between regions and the next region's first `join` had to wake them: on a 2-core Intel
//! Xeon VM a Qwen2.5-1.5B Q4_K_M decode made about 150 futex waits and as many wakes per token
//! (`perf stat -e syscalls:sys_enter_futex`), and the region ran on one thread until the woken
//! one was scheduled. [`with_workers_polling`] keeps the pool's other workers taking work
//! (`rayon::yield_now`, which steals) while the pass runs, as llama.cpp's threads poll between
//! its graph nodes, and lets them sleep again when it ends.
//!
//! A poller never runs on the thread that runs the pass (it would wait there for the pass that
//! it interrupted: a deadlock), nor inside another poller; such a job returns at once, and that
//! worker only sleeps as before. Between the pass's regions a poller spins with the CPU's pause
//! hint and, after [`SPIN`] without work, also yields its core to the OS on each round, so that
//! a long serial stretch (sampling, a grammar) does not keep a core from other processes.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a poller spins without work before it also yields its core on each round.
const SPIN: Duration = Duration::from_micros(200);

/// Pollers running now, in any pool (for the tests).
#[cfg(test)]
static RUNNING: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

thread_local! {
    /// Whether this thread is running a poller.
    static POLLING: Cell<bool> = const { Cell::new(false) };
}

/// Sets the flag it holds when dropped: the pollers stop even if the pass panics.
struct Finish<'a>(&'a AtomicBool);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `f` on the current thread of a rayon pool of `threads` workers while the others poll
/// for work until it returns. Outside a pool, or with one thread, it only runs `f`.
pub(super) fn with_workers_polling(threads: usize, f: &mut (dyn FnMut() + Send)) {
    let Some(me) = rayon::current_thread_index() else { return f() };
    if threads < 2 || POLLING.get() {
        return f();
    }
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 1..threads {
            s.spawn(|_| poll(me, &done));
        }
        let _finish = Finish(&done);
        f();
    });
}

/// A poller: takes the pool's pending work until `done`, unless it runs on the thread `main`
/// that runs the pass or inside another poller.
fn poll(main: usize, done: &AtomicBool) {
    if rayon::current_thread_index() == Some(main) || POLLING.get() {
        return;
    }
    POLLING.set(true);
    #[cfg(test)]
    RUNNING.fetch_add(1, Ordering::SeqCst);
    /// Clears the flag when dropped, also if a job that the poller ran panics.
    struct Clear;
    impl Drop for Clear {
        fn drop(&mut self) {
            POLLING.set(false);
            #[cfg(test)]
            RUNNING.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let _clear = Clear;
    let mut idle_since = None;
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle_since = None,
            _ => {
                let since = *idle_since.get_or_insert_with(Instant::now);
                if since.elapsed() < SPIN {
                    std::hint::spin_loop();
                } else {
                    std::thread::yield_now();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use super::with_workers_polling;

    /// Runs `f` on a thread of its own and fails if it has not returned within a minute: a
    /// deadlock fails the test instead of hanging the suite.
    fn within_a_minute(f: impl FnOnce() + Send + 'static) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(60)).expect("returned within a minute (no deadlock)");
    }

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a pool")
    }

    /// The pass runs once, its parallel work is all done, and the call returns (the pollers
    /// stop), for one to four workers and for passes with no parallel work at all.
    #[test]
    fn runs_the_pass_once_and_returns() {
        within_a_minute(|| {
            for threads in 1..=4 {
                let p = pool(threads);
                for jobs in [0usize, 1, 1000] {
                    let (runs, done) = (AtomicUsize::new(0), AtomicUsize::new(0));
                    p.install(|| {
                        with_workers_polling(threads, &mut || {
                            runs.fetch_add(1, Ordering::Relaxed);
                            (0..jobs).for_each(|_| {
                                rayon::join(
                                    || done.fetch_add(1, Ordering::Relaxed),
                                    || done.fetch_add(1, Ordering::Relaxed),
                                );
                            });
                        })
                    });
                    assert_eq!((runs.load(Ordering::Relaxed), done.load(Ordering::Relaxed)), (1, 2 * jobs));
                }
            }
        });
    }

    /// While a pass runs, another worker of the pool polls, and it takes the pass's work: the
    /// pass sees a poller running (within 10 s) and then hands it the other half of a `join`
    /// while its own half waits for that half to have run on another thread.
    #[test]
    fn another_worker_polls_and_takes_the_pass_s_work() {
        within_a_minute(|| {
            let p = pool(2);
            p.install(|| {
                with_workers_polling(2, &mut || {
                    let until = Instant::now() + Duration::from_secs(10);
                    while super::RUNNING.load(Ordering::SeqCst) == 0 && Instant::now() < until {
                        std::hint::spin_loop();
                    }
                    assert!(super::RUNNING.load(Ordering::SeqCst) > 0, "no poller ran during the pass");
                    let me = rayon::current_thread_index();
                    let other = AtomicUsize::new(usize::MAX);
                    rayon::join(
                        || {
                            while other.load(Ordering::SeqCst) == usize::MAX && Instant::now() < until {
                                std::hint::spin_loop();
                            }
                        },
                        || other.store(rayon::current_thread_index().unwrap_or(usize::MAX - 1), Ordering::SeqCst),
                    );
                    let other = other.load(Ordering::SeqCst);
                    assert!(
                        other != usize::MAX && Some(other) != me,
                        "the other half ran on worker {other}, the pass on {me:?}"
                    );
                })
            });
        });
    }

    /// Passes nested in a pass, and passes from two outside threads at once, all return.
    #[test]
    fn nested_and_concurrent_passes_return() {
        within_a_minute(|| {
            let p = std::sync::Arc::new(pool(3));
            let count = std::sync::Arc::new(AtomicUsize::new(0));
            let outside: Vec<_> = (0..2)
                .map(|_| {
                    let (p, count) = (p.clone(), count.clone());
                    std::thread::spawn(move || {
                        for _ in 0..50 {
                            p.install(|| {
                                with_workers_polling(3, &mut || {
                                    rayon::join(
                                        || with_workers_polling(3, &mut || _ = count.fetch_add(1, Ordering::Relaxed)),
                                        || _ = count.fetch_add(1, Ordering::Relaxed),
                                    );
                                })
                            });
                        }
                    })
                })
                .collect();
            for t in outside {
                t.join().expect("an outside thread");
            }
            assert_eq!(count.load(Ordering::Relaxed), 2 * 50 * 2);
        });
    }

    /// A pass that panics stops the pollers: the panic reaches the caller, and the pool takes
    /// the next pass.
    #[test]
    fn a_panicking_pass_stops_the_pollers() {
        within_a_minute(|| {
            let p = pool(2);
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                p.install(|| with_workers_polling(2, &mut || panic!("a pass that fails")))
            }));
            assert!(r.is_err(), "the panic reaches the caller");
            let mut ran = false;
            p.install(|| with_workers_polling(2, &mut || ran = true));
            assert!(ran);
        });
    }
}
