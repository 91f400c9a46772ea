//! The scheduling queue: pods waiting to be scheduled, in three places — *active* (ordered by
//! priority, then arrival), *backoff* (after a failure, exponentially per pod, 1 s to 10 s) and
//! *unschedulable* (until a cluster event that one of the plugins which rejected it registered
//! for, or a minute passes). A pod is handed to one scheduling cycle at a time.

use super::framework::ClusterEvent;
use super::pod_info::PodInfo;
use crate::controller::ObjectKey;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// First backoff after a failed attempt.
const INITIAL_BACKOFF: Duration = Duration::from_secs(1);
/// Longest backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Unschedulable pods are retried after this long even without a relevant event.
const UNSCHEDULABLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Active,
    Backoff,
    Unschedulable,
    InFlight,
}

struct Queued {
    info: Arc<PodInfo>,
    attempts: u32,
    place: Place,
    /// Sequence number of its current active-heap entry (older entries are stale).
    seq: u64,
    since: Instant,
    rejected_by: HashSet<String>,
    /// Event epoch when handed out (an event during the cycle makes a rejection retry soon).
    epoch: u64,
    /// Updated while in flight.
    updated: bool,
}

#[derive(PartialEq, Eq)]
struct ActiveEntry {
    priority: i32,
    seq: u64,
    key: ObjectKey,
}

impl Ord for ActiveEntry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.priority
            .cmp(&other.priority)
            .then_with(|| other.seq.cmp(&self.seq))
    }
}

impl PartialOrd for ActiveEntry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

#[derive(Default)]
struct State {
    pods: HashMap<ObjectKey, Queued>,
    active: BinaryHeap<ActiveEntry>,
    backoff: BinaryHeap<Reverse<(Instant, u64, ObjectKey)>>,
    seq: u64,
    epoch: u64,
    closed: bool,
}

impl State {
    fn activate(&mut self, key: &ObjectKey) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(q) = self.pods.get_mut(key) {
            q.place = Place::Active;
            q.seq = seq;
            q.since = Instant::now();
            self.active.push(ActiveEntry {
                priority: q.info.priority,
                seq,
                key: key.clone(),
            });
        }
    }

    fn back_off(&mut self, key: &ObjectKey) {
        self.seq += 1;
        let seq = self.seq;
        if let Some(q) = self.pods.get_mut(key) {
            let exponent = q.attempts.saturating_sub(1).min(10);
            let delay = INITIAL_BACKOFF
                .saturating_mul(1 << exponent)
                .min(MAX_BACKOFF);
            q.place = Place::Backoff;
            q.seq = seq;
            self.backoff
                .push(Reverse((Instant::now() + delay, seq, key.clone())));
        }
    }
}

/// Pods waiting for a node.
#[derive(Default)]
pub struct SchedulingQueue {
    state: Mutex<State>,
    ready: Condvar,
}

/// A pod handed to a scheduling cycle.
pub struct Attempt {
    /// The pod.
    pub info: Arc<PodInfo>,
    /// Attempts before this one.
    pub attempts: u32,
}

impl SchedulingQueue {
    /// An empty queue.
    pub fn new() -> Self {
        SchedulingQueue::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds a pending pod, or updates one already queued (an updated unschedulable pod is
    /// retried at once).
    pub fn add(&self, info: Arc<PodInfo>) {
        let mut state = self.lock();
        let key = info.key.clone();
        match state.pods.get_mut(&key) {
            Some(q) if q.info.uid == info.uid => {
                let changed_spec = q.info.pod.spec != info.pod.spec
                    || q.info.pod.metadata.labels != info.pod.metadata.labels;
                q.info = info;
                match q.place {
                    Place::InFlight => q.updated = true,
                    Place::Unschedulable if changed_spec => state.activate(&key),
                    _ => {}
                }
            }
            _ => {
                state.pods.insert(
                    key.clone(),
                    Queued {
                        info,
                        attempts: 0,
                        place: Place::Active,
                        seq: 0,
                        since: Instant::now(),
                        rejected_by: HashSet::new(),
                        epoch: 0,
                        updated: false,
                    },
                );
                state.activate(&key);
            }
        }
        drop(state);
        self.ready.notify_one();
    }

    /// Forgets a pod (deleted, or bound by someone else).
    pub fn remove(&self, key: &ObjectKey) {
        self.lock().pods.remove(key);
    }

    /// Whether a pod is queued anywhere (or in flight).
    pub fn contains(&self, key: &ObjectKey) -> bool {
        self.lock().pods.contains_key(key)
    }

    /// The next pod to schedule, waiting up to `wait`; `None` on timeout or after
    /// [`SchedulingQueue::close`].
    pub fn pop(&self, wait: Duration) -> Option<Attempt> {
        let deadline = Instant::now() + wait;
        let mut state = self.lock();
        loop {
            if state.closed {
                return None;
            }
            let now = Instant::now();
            // Backoffs that are over go back to active.
            while let Some(Reverse((at, seq, key))) = state.backoff.peek().cloned() {
                if at > now {
                    break;
                }
                state.backoff.pop();
                if state
                    .pods
                    .get(&key)
                    .is_some_and(|q| q.seq == seq && q.place == Place::Backoff)
                {
                    state.activate(&key);
                }
            }
            // Unschedulable pods that waited long enough are retried.
            let stale: Vec<ObjectKey> = state
                .pods
                .iter()
                .filter(|(_, q)| {
                    q.place == Place::Unschedulable && q.since.elapsed() > UNSCHEDULABLE_TIMEOUT
                })
                .map(|(k, _)| k.clone())
                .collect();
            for key in stale {
                state.activate(&key);
            }
            while let Some(entry) = state.active.pop() {
                let epoch = state.epoch;
                let Some(q) = state.pods.get_mut(&entry.key) else {
                    continue;
                };
                if q.seq != entry.seq || q.place != Place::Active {
                    continue;
                }
                q.place = Place::InFlight;
                q.epoch = epoch;
                q.updated = false;
                return Some(Attempt {
                    info: q.info.clone(),
                    attempts: q.attempts,
                });
            }
            let next_backoff = state.backoff.peek().map(|r| r.0 .0);
            let until = next_backoff.map_or(deadline, |b| b.min(deadline));
            if now >= deadline {
                return None;
            }
            let timeout = until
                .saturating_duration_since(now)
                .max(Duration::from_millis(1));
            state = self
                .ready
                .wait_timeout(state, timeout.min(Duration::from_secs(1)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
    }

    /// The pod was bound: it leaves the queue.
    pub fn done(&self, key: &ObjectKey) {
        self.lock().pods.remove(key);
    }

    /// The pod fit nowhere: it waits for an event one of `rejected_by` registered for (or
    /// backs off, when such an event came during the cycle or the pod changed meanwhile).
    pub fn unschedulable(&self, key: &ObjectKey, rejected_by: HashSet<String>) {
        let mut state = self.lock();
        let epoch = state.epoch;
        let Some(q) = state.pods.get_mut(key) else {
            return;
        };
        q.attempts += 1;
        q.rejected_by = rejected_by;
        if q.epoch != epoch || q.updated {
            state.back_off(key);
        } else {
            q.place = Place::Unschedulable;
            q.since = Instant::now();
        }
    }

    /// Scheduling failed for another reason (an error, a failed bind): retry after backoff.
    pub fn retry(&self, key: &ObjectKey) {
        let mut state = self.lock();
        if let Some(q) = state.pods.get_mut(key) {
            q.attempts += 1;
            state.back_off(key);
        }
        drop(state);
        self.ready.notify_one();
    }

    /// A cluster event: unschedulable pods rejected by a plugin in `interested` (the plugins
    /// registered for this event) become schedulable again (after any backoff they owe).
    pub fn on_event(&self, _event: ClusterEvent, interested: &HashSet<String>) {
        let mut state = self.lock();
        state.epoch += 1;
        let moved: Vec<ObjectKey> = state
            .pods
            .iter()
            .filter(|(_, q)| {
                q.place == Place::Unschedulable
                    && (q.rejected_by.is_empty()
                        || q.rejected_by.iter().any(|p| interested.contains(p)))
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in &moved {
            state.back_off(key);
        }
        drop(state);
        if !moved.is_empty() {
            self.ready.notify_one();
        }
    }

    /// Stops handing out pods.
    pub fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_all();
    }

    /// Pods waiting (not in flight).
    pub fn pending(&self) -> usize {
        self.lock()
            .pods
            .values()
            .filter(|q| q.place != Place::InFlight)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scheduler::framework::{Action, EventResource};
    use serde_json::json;

    fn pod(name: &str, priority: i32) -> Arc<PodInfo> {
        let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "default", "uid": name},
            "spec": {"containers": [], "priority": priority},
        }))
        .unwrap();
        Arc::new(PodInfo::new(Arc::new(pod)))
    }

    #[test]
    fn higher_priority_first_then_arrival_order() {
        let q = SchedulingQueue::new();
        q.add(pod("low", 0));
        q.add(pod("high", 100));
        q.add(pod("low2", 0));
        let order: Vec<String> = (0..3)
            .map(|_| {
                q.pop(Duration::from_millis(10))
                    .unwrap()
                    .info
                    .key
                    .name
                    .clone()
            })
            .collect();
        assert_eq!(order, ["high", "low", "low2"]);
        assert!(
            q.pop(Duration::from_millis(10)).is_none(),
            "in flight pods are not handed out twice"
        );
    }

    #[test]
    fn unschedulable_pods_wait_for_a_registered_event() {
        let q = SchedulingQueue::new();
        q.add(pod("p", 0));
        let attempt = q.pop(Duration::from_millis(10)).unwrap();
        q.unschedulable(&attempt.info.key, ["NodeResourcesFit".to_string()].into());
        let node_added = ClusterEvent::new(EventResource::Node, Action::Add);
        q.on_event(node_added, &["TaintToleration".to_string()].into());
        assert!(
            q.pop(Duration::from_millis(50)).is_none(),
            "an unrelated event moves nothing"
        );
        q.on_event(node_added, &["NodeResourcesFit".to_string()].into());
        // Moved to backoff (one attempt: 1 s).
        let started = Instant::now();
        let again = q
            .pop(Duration::from_secs(3))
            .expect("retried after its backoff");
        assert_eq!(again.attempts, 1);
        assert!(started.elapsed() >= Duration::from_millis(900));
    }
}
