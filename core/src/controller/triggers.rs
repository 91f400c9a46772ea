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

/// The keys of the controllers of `kind` (e.g. `Job`) owning the pods a change concerns (old
/// and new controller references); observes pod creations and deletions in `expectations`.
/// On resync, every key of `owners`.
pub(crate) fn owner_keys<K, O>(
    change: &Change<K>,
    kind: &str,
    owners: &Informer<O>,
    expectations: &super::Expectations,
) -> Vec<ObjectKey>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    O: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let owner_key = |object: &K| {
        super::pod_facts::controller_of(object.meta())
            .filter(|r| r.kind == kind)
            .map(|r| {
                ObjectKey::namespaced(
                    object.meta().namespace.clone().unwrap_or_default(),
                    r.name.clone(),
                )
            })
    };
    let mut keys = Vec::new();
    match change {
        Change::Resync => return owners.keys(),
        Change::Applied { old, new } => {
            if let Some(owner) = owner_key(new) {
                if old.is_none() {
                    expectations.creation_observed(&owner);
                }
                let newly_deleting = new.meta().deletion_timestamp.is_some()
                    && old
                        .as_ref()
                        .is_none_or(|o| o.meta().deletion_timestamp.is_none());
                if newly_deleting {
                    expectations.deletion_observed(&owner);
                }
                keys.push(owner);
            }
            if let Some(old_owner) = old.as_ref().and_then(|o| owner_key(o)) {
                if !keys.contains(&old_owner) {
                    keys.push(old_owner);
                }
            }
        }
        Change::Deleted(object) => {
            if let Some(owner) = owner_key(object) {
                if object.meta().deletion_timestamp.is_none() {
                    expectations.deletion_observed(&owner);
                }
                keys.push(owner);
            }
        }
    }
    keys
}
