//! Connects an informer's changes to a work queue: each change is mapped to the keys it may
//! affect. After the informer's first list, and whenever changes were missed, the mapping gets
//! [`Change::Resync`] and should return every key it owns.

use super::informer::{Change, Informer};
use super::work_queue::WorkQueue;
use super::ObjectKey;
use kube::Resource;
use serde::de::DeserializeOwned;
use std::fmt::Debug;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Spawns a task queueing `map(change)` for each change of `informer` until `stop`.
pub fn enqueue_changes<K, F>(
    informer: &Informer<K>,
    queue: Arc<WorkQueue<ObjectKey>>,
    stop: CancellationToken,
    map: F,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    F: Fn(&Change<K>) -> Vec<ObjectKey> + Send + 'static,
{
    let informer = informer.clone();
    let mut changes = informer.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = informer.wait_synced() => {}
        }
        for key in map(&Change::Resync) {
            queue.add(key);
        }
        loop {
            let change = tokio::select! {
                _ = stop.cancelled() => return,
                change = changes.next() => change,
            };
            let Some(change) = change else { return };
            for key in map(&change) {
                queue.add(key);
            }
        }
    })
}

/// Queues each changed object's own key (every cached key on resync): the trigger of a
/// controller's primary kind.
pub fn enqueue_own<K>(
    informer: &Informer<K>,
    queue: Arc<WorkQueue<ObjectKey>>,
    stop: CancellationToken,
) -> JoinHandle<()>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let all = informer.clone();
    enqueue_changes(informer, queue, stop, move |change| match change {
        Change::Resync => all.keys(),
        other => other
            .object()
            .map(|o| ObjectKey::of(o.as_ref()))
            .into_iter()
            .collect(),
    })
}
