//! Fan-out of committed changes to prefix watchers, for backends that commit in-process
//! (memory and embedded).
//!
//! The hub owns the registered watchers, their bounded buffers, progress notifications and the
//! closing of watchers that fall behind. It never reads or writes the backend's data itself: the
//! backend hands it committed events (in revision order, after the commit) and, when a watcher
//! subscribes, a closure that reads the backlog from the backend under the hub's lock.

use super::{Revision, StoreError, WatchEvent, WatchStream};
use futures::StreamExt;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

type Item = Result<WatchEvent, StoreError>;

/// Registered watchers and the last revision dispatched to them.
pub(crate) struct WatchHub {
    state: Mutex<HubState>,
    capacity: usize,
    progress_interval: Duration,
}

struct HubState {
    watchers: HashMap<u64, Slot>,
    next_id: u64,
    last_revision: Revision,
}

struct Slot {
    prefix: String,
    tx: mpsc::Sender<Item>,
    delivered: Revision,
    lagged: Arc<AtomicBool>,
}

impl WatchHub {
    /// A hub whose watchers buffer `capacity` events and get a progress notification every
    /// `progress_interval`; `last_revision` is the store's revision when the hub starts.
    pub(crate) fn new(
        capacity: usize,
        progress_interval: Duration,
        last_revision: Revision,
    ) -> Arc<Self> {
        Arc::new(WatchHub {
            state: Mutex::new(HubState {
                watchers: HashMap::new(),
                next_id: 0,
                last_revision,
            }),
            capacity: capacity.max(1),
            progress_interval,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a watcher of `prefix` for changes after `after`. `read_backlog` runs under the
    /// hub's lock and must return every committed event under `prefix` with revision greater than
    /// `after`, in order; events dispatched later at or below what it returned are skipped.
    pub(crate) fn subscribe(
        self: &Arc<Self>,
        prefix: &str,
        after: Revision,
        read_backlog: impl FnOnce() -> Result<Vec<WatchEvent>, StoreError>,
    ) -> Result<WatchStream, StoreError> {
        let mut state = self.lock();
        let backlog: VecDeque<WatchEvent> = read_backlog()?.into();
        let delivered = backlog
            .back()
            .map_or(after, WatchEvent::revision)
            .max(after);
        let (tx, rx) = mpsc::channel(self.capacity);
        let lagged = Arc::new(AtomicBool::new(false));
        let id = state.next_id;
        state.next_id += 1;
        state.watchers.insert(
            id,
            Slot {
                prefix: prefix.to_string(),
                tx,
                delivered,
                lagged: lagged.clone(),
            },
        );
        drop(state);
        let start = tokio::time::Instant::now() + self.progress_interval;
        let cursor = Cursor {
            backlog,
            rx,
            ticker: tokio::time::interval_at(start, self.progress_interval),
            hub: Arc::downgrade(self),
            id,
            lagged,
            last: after,
            done: false,
        };
        Ok(futures::stream::unfold(cursor, Cursor::next).boxed())
    }

    /// Hands committed events (ascending revision) to every interested watcher.
    pub(crate) fn dispatch(&self, events: &[WatchEvent]) {
        let Some(last) = events.last().map(WatchEvent::revision) else {
            return;
        };
        let mut state = self.lock();
        state.last_revision = state.last_revision.max(last);
        state.watchers.retain(|_, slot| {
            for event in events {
                let revision = event.revision();
                if revision <= slot.delivered
                    || !event.key().is_some_and(|k| k.starts_with(&slot.prefix))
                {
                    continue;
                }
                match slot.tx.try_send(Ok(event.clone())) {
                    Ok(()) => slot.delivered = revision,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(prefix = %slot.prefix, revision, "closing a watcher that fell behind");
                        slot.lagged.store(true, Ordering::SeqCst);
                        return false;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => return false,
                }
            }
            true
        });
    }

    fn send_progress(&self, id: u64) {
        let mut state = self.lock();
        let last = state.last_revision;
        if let Some(slot) = state.watchers.get_mut(&id) {
            let revision = slot.delivered.max(last);
            // A full buffer already carries newer news; skipping a progress loses nothing.
            if slot.tx.try_send(Ok(WatchEvent::Progress(revision))).is_ok() {
                slot.delivered = revision;
            }
        }
    }

    fn unsubscribe(&self, id: u64) {
        self.lock().watchers.remove(&id);
    }

    /// Number of registered watchers (for tests and metrics).
    pub(crate) fn watcher_count(&self) -> usize {
        self.lock().watchers.len()
    }
}

/// The consuming side of one watcher: backlog first, then live events and progress.
struct Cursor {
    backlog: VecDeque<WatchEvent>,
    rx: mpsc::Receiver<Item>,
    ticker: tokio::time::Interval,
    hub: Weak<WatchHub>,
    id: u64,
    lagged: Arc<AtomicBool>,
    last: Revision,
    done: bool,
}

impl Cursor {
    async fn next(mut self) -> Option<(Item, Cursor)> {
        if self.done {
            return None;
        }
        if let Some(event) = self.backlog.pop_front() {
            self.last = event.revision();
            return Some((Ok(event), self));
        }
        loop {
            tokio::select! {
                biased;
                item = self.rx.recv() => {
                    return match item {
                        Some(Ok(event)) => {
                            self.last = self.last.max(event.revision());
                            Some((Ok(event), self))
                        }
                        Some(Err(err)) => {
                            self.done = true;
                            Some((Err(err), self))
                        }
                        None => {
                            self.done = true;
                            let err = if self.lagged.load(Ordering::SeqCst) {
                                StoreError::WatchLagged { revision: self.last }
                            } else {
                                StoreError::Unavailable("the store was closed".into())
                            };
                            Some((Err(err), self))
                        }
                    };
                }
                _ = self.ticker.tick() => {
                    match self.hub.upgrade() {
                        Some(hub) => hub.send_progress(self.id),
                        None => {
                            self.done = true;
                            return Some((Err(StoreError::Unavailable("the store was closed".into())), self));
                        }
                    }
                }
            }
        }
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        if let Some(hub) = self.hub.upgrade() {
            hub.unsubscribe(self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::KeyValue;
    use bytes::Bytes;

    fn created(rev: Revision) -> WatchEvent {
        WatchEvent::Created(KeyValue {
            key: format!("/k/{rev}"),
            value: Bytes::new(),
            create_revision: rev,
            mod_revision: rev,
            version: 1,
            lease: None,
        })
    }

    #[tokio::test]
    async fn a_slow_watcher_is_closed_without_blocking_others() {
        let hub = WatchHub::new(2, Duration::from_secs(60), 0);
        let mut slow = hub.subscribe("/k/", 0, || Ok(Vec::new())).unwrap();
        let mut other = hub.subscribe("/other/", 0, || Ok(Vec::new())).unwrap();
        let events: Vec<_> = (1..=5).map(created).collect();
        hub.dispatch(&events);
        assert_eq!(
            hub.watcher_count(),
            1,
            "the slow watcher is dropped, the idle one stays"
        );
        assert_eq!(slow.next().await.unwrap().unwrap().revision(), 1);
        assert_eq!(slow.next().await.unwrap().unwrap().revision(), 2);
        match slow.next().await {
            Some(Err(StoreError::WatchLagged { revision: 2 })) => {}
            other => panic!("expected WatchLagged after revision 2, got {other:?}"),
        }
        assert!(slow.next().await.is_none());
        drop(other.next()); // still registered and unaffected
        assert_eq!(hub.watcher_count(), 1);
    }

    #[tokio::test]
    async fn backlog_and_live_events_never_overlap() {
        let hub = WatchHub::new(16, Duration::from_secs(60), 0);
        // Revision 3 is both in the backlog and dispatched afterwards: delivered once.
        let mut stream = hub
            .subscribe("/k/", 1, || Ok(vec![created(2), created(3)]))
            .unwrap();
        hub.dispatch(&[created(3), created(4)]);
        for expected in [2, 3, 4] {
            assert_eq!(stream.next().await.unwrap().unwrap().revision(), expected);
        }
        let extra = tokio::time::timeout(Duration::from_millis(50), stream.next()).await;
        assert!(extra.is_err(), "no duplicate of revision 3");
    }
}
