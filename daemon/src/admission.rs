//! Admission to the engine: at most `serving.max_concurrent` requests run, at most
//! `serving.queue_depth` wait, and nothing new starts once shutdown has begun.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use crate::api::error::ApiError;
use crate::metrics::Metrics;

/// The slots and the queue.
#[derive(Debug)]
pub struct Admission {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    queue_depth: usize,
    closed: AtomicBool,
}

/// A running request's slot; dropping it frees the slot and lowers the active gauge.
#[derive(Debug)]
pub struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics.active.dec();
    }
}

struct Waiting<'a> {
    count: &'a AtomicUsize,
    metrics: &'a Metrics,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.count.fetch_sub(1, Ordering::SeqCst);
        self.metrics.queued.dec();
    }
}

impl Admission {
    /// `max_concurrent` slots and a queue of `queue_depth`.
    pub fn new(max_concurrent: usize, queue_depth: usize) -> Self {
        Admission {
            slots: Arc::new(Semaphore::new(max_concurrent)),
            waiting: AtomicUsize::new(0),
            queue_depth,
            closed: AtomicBool::new(false),
        }
    }

    /// Refuses every later request (shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Whether shutdown has begun.
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Waits for a slot until `deadline`.
    pub async fn admit(&self, metrics: &Arc<Metrics>, deadline: Instant, deadline_secs: u64) -> Result<Slot, ApiError> {
        if self.is_closed() {
            return Err(ApiError::ShuttingDown);
        }
        let slot = |permit| {
            metrics.active.inc();
            Slot { _permit: permit, metrics: metrics.clone() }
        };
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(slot(p));
        }
        let queued = self.waiting.fetch_add(1, Ordering::SeqCst);
        metrics.queued.inc();
        let _waiting = Waiting { count: &self.waiting, metrics };
        if queued >= self.queue_depth {
            return Err(ApiError::QueueFull { queued });
        }
        match tokio::time::timeout_at(deadline, self.slots.clone().acquire_owned()).await {
            Ok(Ok(p)) if !self.is_closed() => Ok(slot(p)),
            Ok(_) => Err(ApiError::ShuttingDown),
            Err(_) => Err(ApiError::DeadlineExceeded { secs: deadline_secs }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn slots_queue_and_close() {
        let m = Arc::new(Metrics::new(
            &govbox_drivers::Backend::info(&govbox_drivers::cpu::CpuBackend::new(1).unwrap()),
            &[],
        ));
        let a = Admission::new(1, 1);
        let far = Instant::now() + Duration::from_secs(60);
        let first = a.admit(&m, far, 60).await.unwrap();
        assert_eq!(m.active.get(), 1);
        // One may wait; the next is refused at once.
        let a = Arc::new(a);
        let a2 = a.clone();
        let m2 = m.clone();
        let waiter = tokio::spawn(async move { a2.admit(&m2, far, 60).await.map(|_| ()) });
        while m.queued.get() == 0 {
            tokio::task::yield_now().await;
        }
        assert!(matches!(a.admit(&m, far, 60).await, Err(ApiError::QueueFull { .. })));
        drop(first);
        waiter.await.unwrap().unwrap();
        assert_eq!(m.active.get(), 0);
        assert_eq!(m.queued.get(), 0);
        // A deadline that passes while waiting.
        let hold = a.admit(&m, far, 60).await.unwrap();
        let soon = Instant::now() + Duration::from_millis(20);
        assert!(matches!(a.admit(&m, soon, 1).await, Err(ApiError::DeadlineExceeded { .. })));
        drop(hold);
        a.close();
        assert!(matches!(a.admit(&m, far, 60).await, Err(ApiError::ShuttingDown)));
    }
}
