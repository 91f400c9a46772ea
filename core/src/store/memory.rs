//! `MemoryStore`: the [`Store`] contract held entirely in memory.
//!
//! For tests, simulations and embedders that need no durability. It keeps the current keys in a
//! B-tree and a bounded log of recent changes (with previous values) to serve past-revision
//! lists and watch resumption. Nothing survives the process.

use super::key::{validate_key, validate_prefix, validate_value};
use super::lease_table::validate_ttl;
use super::revision_view::{check_readable, in_list_range};
use super::{
    merge_page, state_before, KeyValue, LeaseId, LeaseTable, ListOptions, ListPage, Revision,
    Store, StoreError, WatchEvent, WatchHub, WatchStream,
};
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

/// Tuning of a [`MemoryStore`].
#[derive(Debug, Clone)]
pub struct MemoryStoreConfig {
    /// Changes kept for watch resumption and past-revision lists; older ones are compacted away
    /// automatically.
    pub history: usize,
    /// Events buffered per watcher before a slow watcher is closed.
    pub watch_buffer: usize,
    /// How often watchers receive progress notifications.
    pub progress_interval: Duration,
    /// How often expired leases are looked for.
    pub lease_check_interval: Duration,
}

impl Default for MemoryStoreConfig {
    fn default() -> Self {
        MemoryStoreConfig {
            // Each change keeps the value it replaced alive (about a pod's JSON), so history
            // is memory: enough for a watcher cut off at a full buffer to resume.
            history: 40_000,
            // The API server's watch cache is the usual watcher; a burst of writes must not
            // cut it off (it would relist and its watchers with it).
            watch_buffer: 32_768,
            progress_interval: Duration::from_secs(5),
            lease_check_interval: Duration::from_millis(100),
        }
    }
}

/// An in-memory [`Store`]. Cloning shares the same data.
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    state: Mutex<State>,
    hub: Arc<WatchHub>,
    config: MemoryStoreConfig,
    reaper: OnceLock<tokio::task::JoinHandle<()>>,
}

struct State {
    current: BTreeMap<String, KeyValue>,
    log: VecDeque<WatchEvent>,
    revision: Revision,
    compacted: Revision,
    leases: LeaseTable,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store with default tuning.
    pub fn new() -> Self {
        Self::with_config(MemoryStoreConfig::default())
    }

    /// An empty store with the given tuning.
    pub fn with_config(config: MemoryStoreConfig) -> Self {
        let hub = WatchHub::new(config.watch_buffer, config.progress_interval, 0);
        MemoryStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    current: BTreeMap::new(),
                    log: VecDeque::new(),
                    revision: 0,
                    compacted: 0,
                    leases: LeaseTable::default(),
                }),
                hub,
                config,
                reaper: OnceLock::new(),
            }),
        }
    }
}

impl MemoryStore {
    /// Number of open watches on this store (for metrics and tests).
    pub fn watcher_count(&self) -> usize {
        self.inner.hub.watcher_count()
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Records committed events: appends them to the log, trims history, and dispatches.
    fn commit(&self, state: &mut State, events: Vec<WatchEvent>) {
        self.hub.dispatch(&events);
        state.log.extend(events);
        while state.log.len() > self.config.history {
            if let Some(event) = state.log.pop_front() {
                state.compacted = state.compacted.max(event.revision());
            }
        }
    }

    fn delete_locked(&self, state: &mut State, key: &str) -> Option<(KeyValue, WatchEvent)> {
        let previous = state.current.remove(key)?;
        state.leases.reattach(key, previous.lease, None);
        state.revision += 1;
        let event = WatchEvent::Deleted {
            previous: previous.clone(),
            revision: state.revision,
        };
        Some((previous, event))
    }

    fn expire_leases(&self) {
        let mut state = self.lock();
        for id in state.leases.expired() {
            self.revoke_locked(&mut state, id);
        }
    }

    fn revoke_locked(&self, state: &mut State, id: LeaseId) -> bool {
        let Some(keys) = state.leases.remove(id) else {
            return false;
        };
        let events: Vec<_> = keys
            .iter()
            .filter_map(|k| self.delete_locked(state, k).map(|(_, e)| e))
            .collect();
        self.commit(state, events);
        true
    }

    fn ensure_reaper(self: &Arc<Self>) {
        if self.reaper.get().is_some() {
            return;
        }
        let weak: Weak<Inner> = Arc::downgrade(self);
        let period = self.config.lease_check_interval;
        let _ = self.reaper.set(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            loop {
                ticker.tick().await;
                match weak.upgrade() {
                    Some(inner) => inner.expire_leases(),
                    None => return,
                }
            }
        }));
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(handle) = self.reaper.get() {
            handle.abort();
        }
    }
}

fn check_revision(state: &State, requested: Revision) -> Result<(), StoreError> {
    check_readable(requested, state.revision, state.compacted)
}

/// The logged events after `revision`, oldest first: the log is in revision order, so the
/// start is found by binary search rather than by scanning the whole history.
fn events_after(
    log: &VecDeque<WatchEvent>,
    revision: Revision,
) -> impl Iterator<Item = &WatchEvent> {
    log.range(log.partition_point(|e| e.revision() <= revision)..)
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(key)?;
        Ok(self.inner.lock().current.get(key).cloned())
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage, StoreError> {
        validate_prefix(prefix)?;
        let state = self.inner.lock();
        let revision = options.revision.unwrap_or(state.revision);
        check_revision(&state, revision)?;
        let start_after = options.start_after.as_deref();
        let lower = match start_after {
            Some(after) if after >= prefix => std::ops::Bound::Excluded(after.to_string()),
            _ => std::ops::Bound::Included(prefix.to_string()),
        };
        let current = state
            .current
            .range((lower, std::ops::Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(_, kv)| Ok(kv.clone()));
        let overlay = state_before(events_after(&state.log, revision), |k| {
            in_list_range(k, prefix, start_after)
        });
        let (items, more) = merge_page(current, overlay, options.limit)?;
        Ok(ListPage {
            items,
            revision,
            more,
        })
    }

    async fn create(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let mut state = self.inner.lock();
        if state.current.contains_key(key) {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        state.leases.check(lease)?;
        state.revision += 1;
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision: state.revision,
            mod_revision: state.revision,
            version: 1,
            lease,
        };
        state.leases.reattach(key, None, lease);
        state.current.insert(key.to_string(), kv.clone());
        self.inner
            .commit(&mut state, vec![WatchEvent::Created(kv.clone())]);
        Ok(kv)
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_revision: Revision,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let mut state = self.inner.lock();
        let Some(previous) = state.current.get(key).cloned() else {
            return Err(StoreError::NotFound {
                key: key.to_string(),
            });
        };
        if previous.mod_revision != expected_revision {
            return Err(StoreError::Conflict {
                key: key.to_string(),
                current: Some(Box::new(previous)),
            });
        }
        state.leases.check(lease)?;
        state.revision += 1;
        let kv = KeyValue {
            key: key.to_string(),
            value,
            create_revision: previous.create_revision,
            mod_revision: state.revision,
            version: previous.version + 1,
            lease,
        };
        state.leases.reattach(key, previous.lease, lease);
        state.current.insert(key.to_string(), kv.clone());
        self.inner.commit(
            &mut state,
            vec![WatchEvent::Modified {
                current: kv.clone(),
                previous,
            }],
        );
        Ok(kv)
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        let mut state = self.inner.lock();
        let Some(current) = state.current.get(key) else {
            return Err(StoreError::NotFound {
                key: key.to_string(),
            });
        };
        if expected_revision.is_some_and(|rev| rev != current.mod_revision) {
            let current = Some(Box::new(current.clone()));
            return Err(StoreError::Conflict {
                key: key.to_string(),
                current,
            });
        }
        let (previous, event) =
            self.inner
                .delete_locked(&mut state, key)
                .ok_or_else(|| StoreError::NotFound {
                    key: key.to_string(),
                })?;
        self.inner.commit(&mut state, vec![event]);
        Ok(previous)
    }

    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        validate_prefix(prefix)?;
        let state = self.inner.lock();
        check_revision(&state, after_revision)?;
        self.inner.hub.subscribe(prefix, after_revision, || {
            Ok(events_after(&state.log, after_revision)
                .filter(|e| e.key().is_some_and(|k| k.starts_with(prefix)))
                .cloned()
                .collect())
        })
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        Ok(self.inner.lock().revision)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        let mut state = self.inner.lock();
        if revision > state.revision {
            return Err(StoreError::FutureRevision {
                requested: revision,
                current: state.revision,
            });
        }
        if revision <= state.compacted {
            return Ok(());
        }
        while state.log.front().is_some_and(|e| e.revision() <= revision) {
            state.log.pop_front();
        }
        state.compacted = revision;
        Ok(())
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        validate_ttl(ttl)?;
        self.inner.ensure_reaper();
        let mut state = self.inner.lock();
        let id = state.leases.new_id();
        state.leases.insert(id, ttl);
        Ok(id)
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.inner.lock().leases.keep_alive(lease)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        let mut state = self.inner.lock();
        if self.inner.revoke_locked(&mut state, lease) {
            Ok(())
        } else {
            Err(StoreError::LeaseNotFound(lease))
        }
    }
}
