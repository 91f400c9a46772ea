//! The watch cache: one store watch per kind, shared by every watcher of that kind.
//!
//! Each kind's cache lists the kind once, then follows a single store watch, keeping every object
//! once — its encoded JSON plus the few fields selectors need (labels, field-selector values) —
//! and a bounded history of recent events for resumption. Watchers are indexed by namespace and
//! by `spec.nodeName`, so an event is offered only to the watchers that can want it; each watcher
//! has a bounded buffer and is closed (its stream ends, and the client re-watches) when it falls
//! behind, never slowing the others. Requests the cache cannot serve (history older than it
//! holds, a revision it has not reached) fall back to the store. The cache never writes.

use super::selection::Selection;
use crate::registry::ResourceKind;
use crate::storage::{EncodedEvent, ObjectBytes, ObjectStorage, StorageError};
use crate::store::{Revision, StoreError};
use futures::StreamExt;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;
use tokio::sync::mpsc;

/// Tuning of the watch cache.
#[derive(Debug, Clone)]
pub(crate) struct CacheConfig {
    /// Events kept per kind for resumption.
    pub history: usize,
    /// Events buffered per watcher before it is closed.
    pub watcher_buffer: usize,
}

/// One object as the cache keeps it.
#[derive(Debug)]
pub(crate) struct CachedObject {
    /// The object's JSON, with its resourceVersion (sharing the store's bytes when it can).
    pub bytes: ObjectBytes,
    /// What selectors read, back to back in one allocation (a cache holds every object of a
    /// cluster): the key (`namespace/name` or `name`), then each label's name and value
    /// (sorted by name), then each selectable field's value (`metadata.name` and
    /// `metadata.namespace` are read from the key).
    text: Box<str>,
    /// Where the parts of `text` after the key end: a label's name, then its value, for each
    /// label; then, for each field, its name's number (see [`field_number`]) and where its
    /// value ends.
    ends: Box<[u32]>,
    /// The key's length.
    key_len: u32,
    /// The namespace's length (a prefix of the key), if namespaced.
    namespace_len: Option<u32>,
    /// How many labels.
    labels: u32,
}

/// The field-selector names the cache has met (a few dozen across all kinds), each once: an
/// object keeps a field's number instead of its name.
static FIELD_NAMES: std::sync::RwLock<Vec<Box<str>>> = std::sync::RwLock::new(Vec::new());

/// The number of field-selector name `name`, numbering it if it is new and `add` is set.
fn field_number(name: &str, add: bool) -> Option<u32> {
    let found = |names: &[Box<str>]| names.iter().position(|n| &**n == name);
    let names = FIELD_NAMES.read().unwrap_or_else(|p| p.into_inner());
    if let Some(i) = found(&names) {
        return u32::try_from(i).ok();
    }
    drop(names);
    if !add {
        return None;
    }
    let mut names = FIELD_NAMES.write().unwrap_or_else(|p| p.into_inner());
    let i = found(&names).unwrap_or_else(|| {
        names.push(name.into());
        names.len() - 1
    });
    u32::try_from(i).ok()
}

/// An offset into a cached object's text (objects are at most a few MiB).
fn offset(text: &str) -> u32 {
    u32::try_from(text.len()).unwrap_or(u32::MAX)
}

impl CachedObject {
    pub(super) fn new(kind: &ResourceKind, object: &Value) -> Self {
        let bytes = ObjectBytes::complete(crate::storage::exact_json(object).unwrap_or_default());
        Self::with_bytes(kind, object, bytes)
    }

    /// `object` whose JSON (with its resourceVersion) is `bytes`.
    fn with_bytes(kind: &ResourceKind, object: &Value, bytes: ObjectBytes) -> Self {
        let meta = &object["metadata"];
        let namespace = meta["namespace"].as_str();
        let name = meta["name"].as_str().unwrap_or_default();
        let mut text = match namespace {
            Some(ns) => format!("{ns}/{name}"),
            None => name.to_string(),
        };
        let key_len = offset(&text);
        let mut labels: Vec<(&str, &str)> = meta["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.as_str(), v)))
                    .collect()
            })
            .unwrap_or_default();
        labels.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let mut ends = Vec::with_capacity(labels.len() * 2 + 2 * kind.field_selectors.len());
        for (name, value) in &labels {
            text.push_str(name);
            ends.push(offset(&text));
            text.push_str(value);
            ends.push(offset(&text));
        }
        for name in kind.field_selectors.iter().map(|f| f.name.as_str()) {
            if let Some(value) = kind.field_value(object, name) {
                let Some(number) = field_number(name, true) else {
                    continue;
                };
                text.push_str(&value);
                ends.push(number);
                ends.push(offset(&text));
            }
        }
        CachedObject {
            bytes,
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
            key_len,
            namespace_len: namespace.map(offset),
            labels: u32::try_from(labels.len()).unwrap_or(0),
        }
    }

    /// `namespace/name` or `name`.
    pub(super) fn key(&self) -> &str {
        &self.text[..self.key_len as usize]
    }

    /// The namespace, if namespaced.
    fn namespace(&self) -> Option<&str> {
        self.namespace_len.map(|len| &self.text[..len as usize])
    }

    /// The text between offsets `start` and `end`.
    fn part(&self, start: u32, end: u32) -> &str {
        self.text
            .get(start as usize..end as usize)
            .unwrap_or_default()
    }

    /// Label `i`'s name and value.
    fn label_at(&self, i: usize) -> (&str, &str) {
        let start = match i {
            0 => self.key_len,
            _ => self.ends[2 * i - 1],
        };
        let (name_end, value_end) = (self.ends[2 * i], self.ends[2 * i + 1]);
        (self.part(start, name_end), self.part(name_end, value_end))
    }

    fn field(&self, name: &str) -> Option<&str> {
        match name {
            "metadata.name" => Some(match self.namespace_len {
                Some(len) => &self.key()[len as usize + 1..],
                None => self.key(),
            }),
            "metadata.namespace" => self.namespace(),
            _ => {
                let number = field_number(name, false)?;
                let labels = 2 * self.labels as usize;
                let mut start = match labels {
                    0 => self.key_len,
                    _ => self.ends[labels - 1],
                };
                for pair in self.ends[labels..].chunks_exact(2) {
                    if pair[0] == number {
                        return Some(self.part(start, pair[1]));
                    }
                    start = pair[1];
                }
                None
            }
        }
    }

    fn label(&self, key: &str) -> Option<&str> {
        let (mut low, mut high) = (0, self.labels as usize);
        while low < high {
            let middle = (low + high) / 2;
            let (name, value) = self.label_at(middle);
            match name.cmp(key) {
                std::cmp::Ordering::Equal => return Some(value),
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
            }
        }
        None
    }

    fn node(&self) -> Option<&str> {
        self.field("spec.nodeName")
    }

    fn selected(&self, selection: &Selection) -> bool {
        selection.matches_with(|key| self.label(key), |f| self.field(f).map(str::to_string))
    }

    /// The object as JSON.
    pub(crate) fn value(&self) -> Value {
        serde_json::from_slice(&self.bytes.to_bytes()).unwrap_or(Value::Null)
    }
}

/// A change the cache saw.
#[derive(Debug, Clone)]
enum CachedEvent {
    Added(Arc<CachedObject>),
    Modified {
        current: Arc<CachedObject>,
        previous: Arc<CachedObject>,
    },
    Deleted(Arc<CachedObject>),
}

/// What a watcher receives.
#[derive(Debug, Clone)]
pub(crate) enum Delivery {
    /// An event of type `ADDED`, `MODIFIED` or `DELETED`.
    Event(&'static str, Arc<CachedObject>),
    /// Everything up to this revision has been delivered.
    Bookmark(Revision),
}

/// Where a watch starts.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start {
    /// From now, with a synthetic `ADDED` for every selected object.
    Now,
    /// After this revision.
    After(Revision),
}

/// A subscription: the deliveries owed at once, then the live feed.
pub(crate) struct Subscription {
    /// Deliveries due immediately (initial state or replayed history).
    pub initial: Vec<Delivery>,
    /// Live deliveries; the channel closes when the watcher falls behind or the cache resets.
    pub live: mpsc::Receiver<Delivery>,
}

struct Watcher {
    selection: Arc<Selection>,
    namespace: Option<String>,
    node: Option<String>,
    bookmarks: bool,
    /// Only changes after this revision are delivered: a watcher may start from a revision
    /// the cache has not reached yet (a consistent list read the store a moment ago).
    after: Revision,
    tx: mpsc::Sender<Delivery>,
}

#[derive(Default)]
struct CacheState {
    objects: BTreeMap<String, Arc<CachedObject>>,
    history: VecDeque<(Revision, CachedEvent)>,
    revision: Revision,
    oldest: Revision,
    /// Whether history has been dropped (to stay within its bound, or by a relist after a
    /// lost watch); before that, older revisions were never held: the cache started after
    /// them.
    evicted: bool,
    synced: bool,
    watchers: HashMap<u64, Watcher>,
    next_id: u64,
    by_namespace: HashMap<String, HashSet<u64>>,
    by_node: HashMap<String, HashSet<u64>>,
    unindexed: HashSet<u64>,
}

impl CacheState {
    fn index(&mut self, id: u64, watcher: &Watcher) {
        if let Some(node) = &watcher.node {
            self.by_node.entry(node.clone()).or_default().insert(id);
        } else if let Some(ns) = &watcher.namespace {
            self.by_namespace.entry(ns.clone()).or_default().insert(id);
        } else {
            self.unindexed.insert(id);
        }
    }

    fn remove(&mut self, id: u64) {
        if let Some(watcher) = self.watchers.remove(&id) {
            if let Some(node) = &watcher.node {
                if let Some(set) = self.by_node.get_mut(node) {
                    set.remove(&id);
                }
            } else if let Some(ns) = &watcher.namespace {
                if let Some(set) = self.by_namespace.get_mut(ns) {
                    set.remove(&id);
                }
            }
            self.unindexed.remove(&id);
        }
    }

    /// The watchers that may care about an object (current or previous state).
    fn candidates(&self, objects: &[&CachedObject]) -> HashSet<u64> {
        let mut ids: HashSet<u64> = self.unindexed.clone();
        for object in objects {
            if let Some(set) = object.namespace().and_then(|ns| self.by_namespace.get(ns)) {
                ids.extend(set);
            }
            if let Some(set) = object.node().and_then(|n| self.by_node.get(n)) {
                ids.extend(set);
            }
        }
        ids
    }
}

/// How an event looks to one watcher's selection.
fn delivery_for(event: &CachedEvent, watcher: &Watcher) -> Option<Delivery> {
    let visible = |o: &CachedObject| {
        watcher
            .namespace
            .as_deref()
            .is_none_or(|ns| o.namespace() == Some(ns))
            && o.selected(&watcher.selection)
    };
    match event {
        CachedEvent::Added(o) => visible(o).then(|| Delivery::Event("ADDED", o.clone())),
        CachedEvent::Deleted(o) => visible(o).then(|| Delivery::Event("DELETED", o.clone())),
        CachedEvent::Modified { current, previous } => {
            match (visible(previous), visible(current)) {
                (true, true) => Some(Delivery::Event("MODIFIED", current.clone())),
                (false, true) => Some(Delivery::Event("ADDED", current.clone())),
                (true, false) => Some(Delivery::Event("DELETED", current.clone())),
                (false, false) => None,
            }
        }
    }
}

/// The cache of one kind.
struct KindCache {
    kind: Arc<ResourceKind>,
    state: Mutex<CacheState>,
    progress: tokio::sync::watch::Sender<Revision>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    config: CacheConfig,
    /// How many times the cache has listed the store (more than once: it lost its watch).
    syncs: std::sync::atomic::AtomicU64,
}

impl Drop for KindCache {
    fn drop(&mut self) {
        if let Some(task) = self.task.lock().unwrap_or_else(|p| p.into_inner()).take() {
            task.abort();
        }
    }
}

impl KindCache {
    fn lock(&self) -> MutexGuard<'_, CacheState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply(&self, event: EncodedEvent) {
        let mut state = self.lock();
        let (revision, cached) = match event {
            EncodedEvent::Progress(revision) => {
                state.revision = state.revision.max(revision);
                let mut dead = Vec::new();
                for (id, watcher) in &state.watchers {
                    if watcher.bookmarks
                        && revision > watcher.after
                        && watcher.tx.try_send(Delivery::Bookmark(revision)).is_err()
                        && watcher.tx.is_closed()
                    {
                        dead.push(*id);
                    }
                }
                for id in dead {
                    state.remove(id);
                }
                drop(state);
                self.progress.send_replace(revision);
                return;
            }
            EncodedEvent::Added(o, bytes) => {
                let object = Arc::new(CachedObject::with_bytes(&self.kind, &o, bytes));
                state
                    .objects
                    .insert(object.key().to_string(), object.clone());
                (rv_of(&o), CachedEvent::Added(object))
            }
            EncodedEvent::Modified(current, bytes) => {
                let object = Arc::new(CachedObject::with_bytes(&self.kind, &current, bytes));
                let previous = state
                    .objects
                    .insert(object.key().to_string(), object.clone())
                    .unwrap_or_else(|| object.clone());
                (
                    rv_of(&current),
                    CachedEvent::Modified {
                        current: object,
                        previous,
                    },
                )
            }
            EncodedEvent::Deleted(o, bytes) => {
                let object = Arc::new(CachedObject::with_bytes(&self.kind, &o, bytes));
                state.objects.remove(object.key());
                (rv_of(&o), CachedEvent::Deleted(object))
            }
        };
        state.revision = state.revision.max(revision);
        state.history.push_back((revision, cached.clone()));
        while state.history.len() > self.config.history {
            if let Some((old, _)) = state.history.pop_front() {
                state.oldest = old;
                state.evicted = true;
            }
        }
        let objects: Vec<&CachedObject> = match &cached {
            CachedEvent::Added(o) | CachedEvent::Deleted(o) => vec![o],
            CachedEvent::Modified { current, previous } => vec![current, previous],
        };
        let candidates = state.candidates(&objects);
        let mut slow = Vec::new();
        for id in candidates {
            let Some(watcher) = state.watchers.get(&id) else {
                continue;
            };
            if revision <= watcher.after {
                continue;
            }
            if let Some(delivery) = delivery_for(&cached, watcher) {
                if watcher.tx.try_send(delivery).is_err() {
                    slow.push(id);
                }
            }
        }
        for id in slow {
            tracing::debug!(kind = %self.kind.plural, "closing a watcher that fell behind");
            state.remove(id);
        }
        drop(state);
        self.progress.send_replace(revision);
    }

    fn reset(&self) {
        let mut state = self.lock();
        let watchers = state.watchers.len();
        *state = CacheState::default();
        if watchers > 0 {
            tracing::debug!(kind = %self.kind.plural, watchers, "watch cache reset; watchers re-watch");
        }
    }

    async fn run(weak: Weak<KindCache>, storage: ObjectStorage, kind: Arc<ResourceKind>) {
        loop {
            let listed = storage.list(&kind, None, None, None, None).await;
            let Some(cache) = weak.upgrade() else { return };
            let revision = match listed {
                Ok(list) => {
                    let mut state = cache.lock();
                    state.objects = list
                        .items
                        .iter()
                        .map(|o| {
                            let cached = Arc::new(CachedObject::new(&kind, o));
                            (cached.key().to_string(), cached)
                        })
                        .collect();
                    state.revision = list.revision;
                    state.oldest = list.revision;
                    // After a relist the changes before it are lost to the cache, as evicted
                    // history is; only the first list may follow revisions clients read before
                    // the cache started.
                    let earlier = cache
                        .syncs
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    state.evicted = earlier > 0;
                    state.synced = true;
                    list.revision
                }
                Err(err) => {
                    tracing::warn!(kind = %kind.plural, error = %err, "watch cache list failed; retrying");
                    drop(cache);
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            cache.progress.send_replace(revision);
            drop(cache);
            let mut from = revision;
            // Follows the store; a watch that fell behind resumes from the last change applied
            // (the store replays what followed from its history), so a burst of writes costs
            // no relist, and no reset of every watcher of the kind. Relists only when the
            // store no longer has that history.
            loop {
                let stream = match storage.watch_encoded(&kind, None, from).await {
                    Ok(stream) => stream,
                    Err(err) => {
                        tracing::warn!(kind = %kind.plural, error = %err, "watch cache could not watch; relisting");
                        break;
                    }
                };
                let mut stream = stream.boxed();
                let mut lagged = false;
                while let Some(item) = stream.next().await {
                    let Some(cache) = weak.upgrade() else { return };
                    match item {
                        Ok(event) => cache.apply(event),
                        Err(StorageError::Store(StoreError::WatchLagged { .. })) => {
                            lagged = true;
                            break;
                        }
                        Err(err) => {
                            tracing::debug!(kind = %kind.plural, error = %err, "watch cache lost its store watch; relisting");
                            break;
                        }
                    }
                }
                let Some(cache) = weak.upgrade() else { return };
                if !lagged {
                    break;
                }
                from = cache.lock().revision;
                tracing::debug!(kind = %kind.plural, revision = from, "watch cache fell behind the store; resuming");
            }
            let Some(cache) = weak.upgrade() else { return };
            cache.reset();
            drop(cache);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn rv_of(object: &Value) -> Revision {
    object
        .pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

/// Watch caches for every kind, started on first use.
pub(crate) struct WatchCache {
    storage: ObjectStorage,
    kinds: Mutex<HashMap<(String, String, String), Arc<KindCache>>>,
    config: CacheConfig,
}

/// Why the cache cannot serve a request.
#[derive(Debug)]
pub(crate) enum CacheMiss {
    /// The cache is not following the store (yet), or started after the wanted revision: the
    /// caller reads the store instead.
    NotReady,
    /// The start revision is older than the history the cache holds (its oldest revision):
    /// the client must list again (410), as from Kubernetes' watch cache. Serving it from the
    /// store instead would give each such watcher a store watch of its own, decoding every
    /// change of the kind.
    TooOld(Revision),
}

impl WatchCache {
    pub(crate) fn new(storage: ObjectStorage, config: CacheConfig) -> Self {
        WatchCache {
            storage,
            kinds: Mutex::new(HashMap::new()),
            config,
        }
    }

    /// Starts following every stored kind now, as Kubernetes' watch cache does at start: a
    /// cache that started late cannot serve watches from revisions clients read before it
    /// (each would need a store watch of its own).
    pub(crate) fn start_all<'a>(&self, kinds: impl IntoIterator<Item = &'a Arc<ResourceKind>>) {
        for kind in kinds {
            let served_only = matches!(
                kind.group.as_str(),
                "metrics.k8s.io" | "authorization.k8s.io"
            ) || (kind.group.is_empty() && kind.plural == "componentstatuses");
            if !served_only {
                self.kind_cache(kind);
            }
        }
    }

    fn kind_cache(&self, kind: &Arc<ResourceKind>) -> Arc<KindCache> {
        let key = (
            kind.group.clone(),
            kind.version.clone(),
            kind.plural.clone(),
        );
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(cache) = kinds.get(&key) {
            return cache.clone();
        }
        let (progress, _) = tokio::sync::watch::channel(0);
        let cache = Arc::new(KindCache {
            kind: kind.clone(),
            state: Mutex::new(CacheState::default()),
            progress,
            task: Mutex::new(None),
            config: self.config.clone(),
            syncs: std::sync::atomic::AtomicU64::new(0),
        });
        let task = tokio::spawn(KindCache::run(
            Arc::downgrade(&cache),
            self.storage.clone(),
            kind.clone(),
        ));
        *cache.task.lock().unwrap_or_else(|p| p.into_inner()) = Some(task);
        kinds.insert(key, cache.clone());
        cache
    }

    /// Waits (briefly) until the kind's cache is synced and has reached `revision`.
    async fn ready(&self, cache: &KindCache, revision: Revision) -> bool {
        let mut progress = cache.progress.subscribe();
        let wait = async {
            loop {
                {
                    let state = cache.lock();
                    if state.synced && state.revision >= revision {
                        return;
                    }
                }
                if progress.changed().await.is_err() {
                    return;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(3), wait)
            .await
            .is_ok()
            && {
                let state = cache.lock();
                state.synced && state.revision >= revision
            }
    }

    /// Subscribes a watcher. `namespace` scopes it; a selection pinning `spec.nodeName` is
    /// indexed by node.
    pub(crate) async fn subscribe(
        &self,
        kind: &Arc<ResourceKind>,
        selection: Selection,
        namespace: Option<String>,
        bookmarks: bool,
        start: Start,
    ) -> Result<(Subscription, Revision), CacheMiss> {
        let buffer = self.config.watcher_buffer;
        self.subscribe_buffered(kind, selection, namespace, bookmarks, start, buffer)
            .await
    }

    /// [`subscribe`](Self::subscribe), with room for `buffer` undelivered changes before the
    /// watcher counts as fallen behind and is closed.
    pub(crate) async fn subscribe_buffered(
        &self,
        kind: &Arc<ResourceKind>,
        selection: Selection,
        namespace: Option<String>,
        bookmarks: bool,
        start: Start,
        buffer: usize,
    ) -> Result<(Subscription, Revision), CacheMiss> {
        let cache = self.kind_cache(kind);
        if !self.ready(&cache, 0).await {
            return Err(CacheMiss::NotReady);
        }
        // A start the cache has not reached yet is served by skipping what comes before it,
        // unless the store has not reached it either.
        let after = match start {
            Start::Now => 0,
            Start::After(revision) => {
                if cache.lock().revision < revision {
                    let current = self
                        .storage
                        .store()
                        .current_revision()
                        .await
                        .map_err(|_| CacheMiss::NotReady)?;
                    if revision > current {
                        return Err(CacheMiss::NotReady);
                    }
                }
                revision
            }
        };
        let selection = Arc::new(selection);
        let node = selection.pinned_node().map(str::to_string);
        let (tx, live) = mpsc::channel(buffer.max(1));
        let watcher = Watcher {
            selection: selection.clone(),
            namespace: namespace.clone(),
            node,
            bookmarks,
            after,
            tx,
        };
        let mut state = cache.lock();
        let initial: Vec<Delivery> = match start {
            Start::Now => state
                .objects
                .values()
                .filter(|o| {
                    namespace
                        .as_deref()
                        .is_none_or(|ns| o.namespace() == Some(ns))
                        && o.selected(&selection)
                })
                .map(|o| Delivery::Event("ADDED", o.clone()))
                .collect(),
            Start::After(revision) => {
                if revision < state.oldest {
                    // History the cache dropped: relist. History from before the cache started
                    // (it starts on first use): the store still has it.
                    return Err(if state.evicted {
                        CacheMiss::TooOld(state.oldest)
                    } else {
                        CacheMiss::NotReady
                    });
                }
                state
                    .history
                    .iter()
                    .filter(|(r, _)| *r > revision)
                    .filter_map(|(_, e)| delivery_for(e, &watcher))
                    .collect()
            }
        };
        let revision = state.revision;
        let id = state.next_id;
        state.next_id += 1;
        state.index(id, &watcher);
        state.watchers.insert(id, watcher);
        Ok((Subscription { initial, live }, revision))
    }

    /// The selected objects now (a list at `resourceVersion=0`), with the cache's revision.
    pub(crate) async fn snapshot(
        &self,
        kind: &Arc<ResourceKind>,
        namespace: Option<&str>,
        selection: &Selection,
    ) -> Result<(Vec<Value>, Revision), CacheMiss> {
        let cache = self.kind_cache(kind);
        if !self.ready(&cache, 0).await {
            return Err(CacheMiss::NotReady);
        }
        let state = cache.lock();
        let items = state
            .objects
            .values()
            .filter(|o| {
                namespace.is_none_or(|ns| o.namespace() == Some(ns)) && o.selected(selection)
            })
            .map(|o| o.value())
            .collect();
        Ok((items, state.revision))
    }

    /// The object stored under `key` (`namespace/name` or `name`) as the cache holds it now,
    /// without waiting: `None` when the cache has not caught up with the store yet, else
    /// whether it holds the object. The cache may trail the store by the changes in flight;
    /// callers that must not act on a stale state write conditionally on its resourceVersion.
    pub(crate) fn peek(&self, kind: &Arc<ResourceKind>, key: &str) -> Option<Option<Value>> {
        self.peek_object(kind, key)
            .map(|found| found.map(|o| o.value()))
    }

    /// [`peek`](Self::peek) without decoding: the object's JSON as the cache holds it (`None`
    /// also when the cache has not caught up).
    pub(crate) fn peek_json(&self, kind: &Arc<ResourceKind>, key: &str) -> Option<ObjectBytes> {
        self.peek_object(kind, key)
            .flatten()
            .map(|o| o.bytes.clone())
    }

    /// The cached object at `key`, without waiting; `None` when the cache has not caught up.
    fn peek_object(
        &self,
        kind: &Arc<ResourceKind>,
        key: &str,
    ) -> Option<Option<Arc<CachedObject>>> {
        let cache = self.kind_cache(kind);
        let state = cache.lock();
        if !state.synced {
            return None;
        }
        Some(state.objects.get(key).cloned())
    }

    /// Every object of `kind` as the cache holds it now, without waiting; `None` when the cache
    /// has not caught up with the store yet.
    pub(crate) fn peek_all(&self, kind: &Arc<ResourceKind>) -> Option<Vec<Value>> {
        let cache = self.kind_cache(kind);
        let found: Vec<Arc<CachedObject>> = {
            let state = cache.lock();
            if !state.synced {
                return None;
            }
            state.objects.values().cloned().collect()
        };
        Some(found.iter().map(|o| o.value()).collect())
    }

    /// Number of watchers registered for a kind (for tests and metrics).
    #[cfg(test)]
    pub(crate) fn watcher_count(&self, kind: &Arc<ResourceKind>) -> usize {
        self.kind_cache(kind).lock().watchers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use crate::selector::{FieldSelector, LabelSelector};
    use crate::store::{MemoryStore, Store};
    use serde_json::json;

    /// Storage over `memory` and a watch cache over it keeping `history` changes and
    /// buffering `watcher_buffer` per watcher.
    fn cache_over(
        memory: &MemoryStore,
        history: usize,
        watcher_buffer: usize,
    ) -> (ObjectStorage, WatchCache) {
        let store: Arc<dyn Store> = Arc::new(memory.clone());
        let storage = ObjectStorage::new(store);
        let cache = WatchCache::new(
            storage.clone(),
            CacheConfig {
                history,
                watcher_buffer,
            },
        );
        (storage, cache)
    }

    fn kind(plural: &str) -> Arc<ResourceKind> {
        Registry::with_builtins()
            .get("", "v1", plural)
            .unwrap()
            .clone()
    }

    fn everything() -> Selection {
        Selection::from_parts(LabelSelector::everything(), FieldSelector::everything())
    }

    /// A cached object answers label and field selectors from its compact form as from the
    /// object itself (labels kept sorted, however they arrived).
    #[test]
    fn cached_objects_select_like_their_objects() {
        let pods = kind("pods");
        let object = json!({"metadata": {"name": "p", "namespace": "ns",
                "labels": {"zeta": "26", "alpha": "1", "mid": "13", "": "x"}},
            "spec": {"nodeName": "n1", "restartPolicy": "Always"}, "status": {"phase": "Running"}});
        let cached = CachedObject::new(&pods, &object);
        for (labels, fields) in [
            ("alpha=1,zeta=26", ""),
            ("mid", "spec.nodeName=n1"),
            (
                "mid in (12,13),!absent",
                "status.phase=Running,metadata.namespace=ns",
            ),
            ("zeta!=1", "metadata.name=p"),
            ("alpha=2", ""),
            ("absent", ""),
            ("", "spec.nodeName=n2"),
            ("", "status.podIP=10.0.0.1"),
            ("", "metadata.name=q"),
            ("", "metadata.namespace=other"),
            ("zeta notin (26)", ""),
        ] {
            let selection = Selection::from_parts(
                LabelSelector::parse(labels).unwrap(),
                FieldSelector::parse(fields).unwrap(),
            );
            assert_eq!(
                cached.selected(&selection),
                selection.matches(&pods, &object),
                "{labels:?} {fields:?}"
            );
        }
        assert_eq!(cached.node(), Some("n1"));
        assert_eq!(cached.label("alpha"), Some("1"));
        assert_eq!(cached.label(""), Some("x"));
        assert_eq!(cached.label("beta"), None);
        assert_eq!(cached.label("mid"), Some("13"));
        assert_eq!(cached.label("zeta"), Some("26"));
        assert_eq!(cached.field("spec.restartPolicy"), Some("Always"));
        assert_eq!(cached.field("status.phase"), Some("Running"));
        assert_eq!(cached.field("status.podIP"), None);
        assert_eq!(cached.key(), "ns/p");
        assert_eq!(cached.namespace(), Some("ns"));
        // A cluster-scoped object's name is its whole key; it has no namespace.
        let node = CachedObject::new(&kind("nodes"), &json!({"metadata": {"name": "n1"}}));
        assert_eq!(node.field("metadata.name"), Some("n1"));
        assert_eq!(node.field("metadata.namespace"), None);
        assert_eq!(cached.field("metadata.name"), Some("p"));
    }

    #[tokio::test]
    async fn one_store_watch_serves_many_watchers_indexed_by_node() {
        let memory = MemoryStore::new();
        let (storage, cache) = cache_over(&memory, 100, 100);
        let pods = kind("pods");
        let mut feeds = Vec::new();
        for _ in 0..20 {
            feeds.push(
                cache
                    .subscribe(&pods, everything(), None, false, Start::Now)
                    .await
                    .unwrap()
                    .0,
            );
        }
        let on_n1 = Selection::from_parts(
            LabelSelector::everything(),
            FieldSelector::parse("spec.nodeName=n1").unwrap(),
        );
        let (mut node_feed, _) = cache
            .subscribe(&pods, on_n1, None, false, Start::Now)
            .await
            .unwrap();
        assert_eq!(
            memory.watcher_count(),
            1,
            "one store watch for the kind, whatever the number of watchers"
        );
        assert_eq!(cache.watcher_count(&pods), 21);
        for (name, node) in [("a", "n1"), ("b", "n2"), ("c", "n1")] {
            let pod = json!({"metadata": {"name": name, "namespace": "default"}, "spec": {"nodeName": node, "containers": []}});
            storage.create(&pods, pod).await.unwrap();
        }
        for feed in &mut feeds {
            for expected in ["a", "b", "c"] {
                let Some(Delivery::Event("ADDED", o)) = feed.live.recv().await else {
                    panic!("expected ADDED")
                };
                assert_eq!(o.value()["metadata"]["name"], expected);
            }
        }
        for expected in ["a", "c"] {
            let Some(Delivery::Event("ADDED", o)) = node_feed.live.recv().await else {
                panic!("expected ADDED")
            };
            assert_eq!(o.value()["metadata"]["name"], expected);
        }
        assert!(
            node_feed.live.try_recv().is_err(),
            "the node-indexed watcher sees only its node's pods"
        );
    }

    #[tokio::test]
    async fn a_cache_behind_the_store_resumes_and_keeps_its_watchers() {
        // The store buffers 4 changes per watch; 300 written without yielding overflow it.
        let memory = MemoryStore::with_config(crate::store::memory::MemoryStoreConfig {
            watch_buffer: 4,
            ..Default::default()
        });
        let (storage, cache) = cache_over(&memory, 1000, 1000);
        let maps = kind("configmaps");
        let (mut watcher, _) = cache
            .subscribe(&maps, everything(), None, false, Start::Now)
            .await
            .unwrap();
        for i in 0..300 {
            storage
                .create(
                    &maps,
                    json!({"metadata": {"name": format!("m{i}"), "namespace": "default"}}),
                )
                .await
                .unwrap();
        }
        // Every change reaches the watcher, in order, with no break (a relist would have
        // reset the cache and closed it).
        for i in 0..300 {
            let delivery = tokio::time::timeout(Duration::from_secs(5), watcher.live.recv())
                .await
                .expect("a change within 5 s");
            let Some(Delivery::Event("ADDED", o)) = delivery else {
                panic!("expected m{i} ADDED")
            };
            assert_eq!(o.value()["metadata"]["name"], format!("m{i}"));
        }
        assert_eq!(cache.watcher_count(&maps), 1);
        assert_eq!(
            memory.watcher_count(),
            1,
            "the cache watches the store again"
        );
    }

    #[tokio::test]
    async fn a_slow_watcher_is_closed_and_others_continue() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let storage = ObjectStorage::new(store);
        let cache = WatchCache::new(
            storage.clone(),
            CacheConfig {
                history: 100,
                watcher_buffer: 4,
            },
        );
        let maps = Registry::with_builtins()
            .get("", "v1", "configmaps")
            .unwrap()
            .clone();
        let (mut slow, _) = cache
            .subscribe(
                &maps,
                everything(),
                Some("default".into()),
                false,
                Start::Now,
            )
            .await
            .unwrap();
        let (mut fast, _) = cache
            .subscribe(
                &maps,
                everything(),
                Some("default".into()),
                false,
                Start::Now,
            )
            .await
            .unwrap();
        let reader = tokio::spawn(async move {
            let mut n = 0;
            while n < 10 {
                match fast.live.recv().await {
                    Some(Delivery::Event(..)) => n += 1,
                    Some(_) => {}
                    None => break,
                }
            }
            n
        });
        for i in 0..10 {
            storage
                .create(
                    &maps,
                    json!({"metadata": {"name": format!("m{i}"), "namespace": "default"}}),
                )
                .await
                .unwrap();
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(reader.await.unwrap(), 10, "the fast watcher got everything");
        let mut received = 0;
        while slow.live.recv().await.is_some() {
            received += 1;
        }
        assert!(
            received <= 4,
            "the slow watcher was closed after its buffer filled ({received})"
        );
        assert_eq!(cache.watcher_count(&maps), 1);
    }
}
