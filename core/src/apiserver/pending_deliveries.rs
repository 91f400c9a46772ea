//! Deliveries waiting for an in-process watcher, coalesced per object: while the watcher is
//! behind, a newer state of an object replaces the one still queued for it instead of queueing
//! behind it. Informers are level-based (they keep the latest state of each object), so
//! the intermediate states only cost them a decode each; a slow informer thus catches up by
//! skipping them, and what waits is bounded by the number of objects, not of changes.

use super::watch_cache::Delivery;
use std::collections::{HashMap, VecDeque};

/// A queue of deliveries in arrival order, coalesced per object.
#[derive(Default)]
pub(super) struct PendingDeliveries {
    queue: VecDeque<Delivery>,
    /// The absolute position of the queue's front.
    front: u64,
    /// Where each queued object's delivery is (absolute position).
    positions: HashMap<String, u64>,
}

impl PendingDeliveries {
    /// Whether nothing waits.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues `delivery`: a change of an object already queued (and not as deleted) replaces
    /// that queued state in place, keeping its event type (an `ADDED` stays an `ADDED`); a
    /// deletion, and anything after one, queues anew, so a deleted and re-created object is
    /// seen going and coming.
    pub(super) fn push(&mut self, delivery: Delivery) {
        if let Delivery::Event(event_type, object) = &delivery {
            let key = object.key();
            if *event_type != "DELETED" {
                if let Some(at) = self.positions.get(key) {
                    if let Some(Delivery::Event(queued_type, queued)) =
                        self.queue.get_mut((at - self.front) as usize)
                    {
                        if *queued_type != "DELETED" {
                            *queued = object.clone();
                            return;
                        }
                    }
                }
            }
            let at = self.front + self.queue.len() as u64;
            self.positions.insert(key.to_string(), at);
        }
        self.queue.push_back(delivery);
    }

    /// The oldest waiting delivery.
    pub(super) fn pop(&mut self) -> Option<Delivery> {
        let delivery = self.queue.pop_front()?;
        let at = self.front;
        self.front += 1;
        if let Delivery::Event(_, object) = &delivery {
            if self.positions.get(object.key()) == Some(&at) {
                self.positions.remove(object.key());
            }
        }
        Some(delivery)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::watch_cache::CachedObject;
    use crate::registry::Registry;
    use serde_json::json;
    use std::sync::Arc;

    fn event(event_type: &'static str, name: &str, revision: u64) -> Delivery {
        let kind = Registry::with_builtins()
            .get("", "v1", "configmaps")
            .expect("configmaps")
            .clone();
        let object = json!({"metadata": {"name": name, "namespace": "default",
            "resourceVersion": revision.to_string()}});
        Delivery::Event(event_type, Arc::new(CachedObject::new(&kind, &object)))
    }

    fn drain(pending: &mut PendingDeliveries) -> Vec<String> {
        std::iter::from_fn(|| pending.pop())
            .map(|d| match d {
                Delivery::Event(t, o) => {
                    format!(
                        "{t} {} {}",
                        o.key(),
                        o.value()["metadata"]["resourceVersion"]
                    )
                }
                Delivery::Bookmark(r) => format!("BOOKMARK {r}"),
            })
            .collect()
    }

    #[test]
    fn newer_states_replace_queued_ones_in_place() {
        let mut pending = PendingDeliveries::default();
        pending.push(event("ADDED", "a", 1));
        pending.push(event("ADDED", "b", 2));
        pending.push(event("MODIFIED", "a", 3));
        pending.push(Delivery::Bookmark(3));
        pending.push(event("MODIFIED", "a", 4));
        pending.push(event("MODIFIED", "b", 5));
        assert_eq!(
            drain(&mut pending),
            [
                "ADDED default/a \"4\"",
                "ADDED default/b \"5\"",
                "BOOKMARK 3"
            ]
        );
        assert!(pending.is_empty());
        // Once delivered, an object queues anew.
        pending.push(event("MODIFIED", "a", 6));
        assert_eq!(drain(&mut pending), ["MODIFIED default/a \"6\""]);
    }

    #[test]
    fn deletions_are_never_merged_away() {
        let mut pending = PendingDeliveries::default();
        pending.push(event("ADDED", "a", 1));
        pending.push(event("DELETED", "a", 2));
        pending.push(event("ADDED", "a", 3));
        pending.push(event("MODIFIED", "a", 4));
        pending.push(event("DELETED", "a", 5));
        assert_eq!(
            drain(&mut pending),
            [
                "ADDED default/a \"1\"",
                "DELETED default/a \"2\"",
                "ADDED default/a \"4\"",
                "DELETED default/a \"5\""
            ]
        );
    }
}
