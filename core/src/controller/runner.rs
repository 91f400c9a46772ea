//! Runs a [`Reconciler`] over a [`WorkQueue`]: a fixed number of workers take keys, reconcile
//! them, and requeue by the result — a success forgets the key's failures (optionally asking
//! to be run again later), a failure requeues it with backoff. Because the queue never hands
//! out one key twice at once, one object is never reconciled concurrently.

use super::work_queue::WorkQueue;
use super::{ControllerError, ObjectKey};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// What to do after a successful reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing until the next change.
    Done,
    /// Reconcile again after this long (e.g. when a timer, not a change, matters next).
    RequeueAfter(Duration),
}

/// Reconciles one object toward its desired state. Must be idempotent and correct when
/// changes were missed, duplicated or reordered: it reads the current state, not the event.
#[async_trait::async_trait]
pub trait Reconciler: Send + Sync + 'static {
    /// The controller's name (logs, metrics).
    fn name(&self) -> &str;

    /// Reconciles the object at `key` (which may no longer exist).
    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError>;
}

/// Counters of a running controller.
#[derive(Debug, Default)]
pub struct ReconcileCounters {
    /// Reconciles that succeeded.
    pub succeeded: AtomicU64,
    /// Reconciles that failed (and were requeued with backoff).
    pub failed: AtomicU64,
}

impl ReconcileCounters {
    /// Every reconcile so far.
    pub fn total(&self) -> u64 {
        self.succeeded.load(Ordering::Relaxed) + self.failed.load(Ordering::Relaxed)
    }
}

/// Runs `workers` workers until `stop` is cancelled, then shuts the queue down.
pub async fn run_workers(
    queue: Arc<WorkQueue<ObjectKey>>,
    reconciler: Arc<dyn Reconciler>,
    workers: usize,
    counters: Arc<ReconcileCounters>,
    stop: CancellationToken,
) {
    let mut tasks = Vec::new();
    for _ in 0..workers.max(1) {
        let queue = queue.clone();
        let reconciler = reconciler.clone();
        let counters = counters.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(key) = queue.next().await {
                let result = reconciler.reconcile(&key).await;
                match result {
                    Ok(action) => {
                        counters.succeeded.fetch_add(1, Ordering::Relaxed);
                        queue.forget(&key);
                        queue.done(&key);
                        if let Action::RequeueAfter(delay) = action {
                            queue.add_after(key, delay);
                        }
                    }
                    Err(err) => {
                        counters.failed.fetch_add(1, Ordering::Relaxed);
                        let level_debug = err.is_conflict();
                        if level_debug {
                            tracing::debug!(controller = reconciler.name(), key = %key, error = %err, "reconcile conflicted; retrying");
                        } else {
                            tracing::warn!(controller = reconciler.name(), key = %key, error = %err, "reconcile failed; retrying");
                        }
                        queue.done(&key);
                        queue.add_rate_limited(key);
                    }
                }
            }
        }));
    }
    stop.cancelled().await;
    queue.shut_down();
    for task in tasks {
        let _ = task.await;
    }
}
