//! Shared informers: one list+watch and one indexed cache per kind in a process, shared by every
//! controller that asks for it, and joinable after start.
//!
//! Over a client, the watch is kube-runtime's [`watcher`]: it resumes from the last
//! resourceVersion, relists on `410 Gone`, asks for bookmarks and backs off with jitter on
//! errors. In the API server's own process ([`InformerFactory::in_process`]) informers are fed
//! straight from its watch cache instead, with the same resume-then-relist rule. Each informer feeds an
//! indexed [`Cache`](super::cache) and broadcasts every change; a subscriber that falls behind
//! gets [`Change::Resync`] and re-reads the cache, so nothing is silently lost. Informers never
//! write to the API.

use super::cache::{Cache, IndexFn};
use super::ObjectKey;
use crate::apiserver::{ApiServer, LocalEvent};
use crate::store::Revision;
use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, ApiResource, DynamicObject, TypeMeta};
use kube::runtime::watcher::{self, watcher};
use kube::runtime::WatchStreamExt;
use kube::{Client, Resource};
use serde::de::DeserializeOwned;
use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt::Debug;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Changes buffered per subscriber before it must resync from the cache. The buffer is
/// allocated up front (tens of bytes a slot), so kinds that change at a cluster's scale — one
/// change per pod, node heartbeat or event — get a large one and the rest a small one; an idle
/// control plane keeps dozens of informers.
const CHANGE_BUFFER: usize = 16 * 1024;
const QUIET_CHANGE_BUFFER: usize = 512;

/// The change buffer for a kind, by resource name.
fn change_buffer(plural: &str) -> usize {
    match plural {
        "pods" | "nodes" | "leases" | "events" | "endpoints" | "endpointslices" => CHANGE_BUFFER,
        _ => QUIET_CHANGE_BUFFER,
    }
}

/// What changed in an informer's cache.
pub enum Change<K> {
    /// Created or modified (`old` is the previous cached state, if any).
    Applied {
        /// The state before, if the object was cached.
        old: Option<Arc<K>>,
        /// The state now.
        new: Arc<K>,
    },
    /// Deleted (the last known state).
    Deleted(Arc<K>),
    /// Changes were missed (the subscriber fell behind): re-read the whole cache.
    Resync,
}

impl<K> Clone for Change<K> {
    fn clone(&self) -> Self {
        match self {
            Change::Applied { old, new } => Change::Applied {
                old: old.clone(),
                new: new.clone(),
            },
            Change::Deleted(o) => Change::Deleted(o.clone()),
            Change::Resync => Change::Resync,
        }
    }
}

impl<K> Change<K> {
    /// The object the change is about (`None` for [`Change::Resync`]).
    pub fn object(&self) -> Option<&Arc<K>> {
        match self {
            Change::Applied { new, .. } => Some(new),
            Change::Deleted(o) => Some(o),
            Change::Resync => None,
        }
    }
}

/// A stream of an informer's changes.
pub struct Subscription<K> {
    receiver: broadcast::Receiver<Change<K>>,
}

impl<K> Subscription<K> {
    /// The next change; `None` once the informer has stopped.
    pub async fn next(&mut self) -> Option<Change<K>> {
        match self.receiver.recv().await {
            Ok(change) => Some(change),
            Err(broadcast::error::RecvError::Lagged(_)) => Some(Change::Resync),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    }
}

struct Shared<K> {
    cache: RwLock<Cache<K>>,
    changes: broadcast::Sender<Change<K>>,
    synced: watch::Sender<bool>,
}

/// A cached, indexed, continuously updated view of one kind. Cloning shares it.
pub struct Informer<K> {
    shared: Arc<Shared<K>>,
}

impl<K> Clone for Informer<K> {
    fn clone(&self) -> Self {
        Informer {
            shared: self.shared.clone(),
        }
    }
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    /// Starts an informer over `api`; it stops when `stop` is cancelled.
    pub fn start(api: Api<K>, config: watcher::Config, stop: CancellationToken) -> Self {
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let shared = Arc::new(Shared {
            cache: RwLock::new(Cache::new()),
            changes,
            synced: watch::channel(false).0,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().boxed();
            let mut listing: Option<Vec<K>> = None;
            loop {
                let event = tokio::select! {
                    _ = stop.cancelled() => break,
                    event = events.next() => event,
                };
                let Some(shared) = weak.upgrade() else { break };
                match event {
                    None => break,
                    Some(Err(err)) => {
                        tracing::debug!(error = %err, "informer watch failed; retrying");
                    }
                    Some(Ok(event)) => apply_event(&shared, event, &mut listing),
                }
            }
        });
        Informer { shared }
    }

    /// Starts an informer fed straight from `server`'s watch cache (no HTTP, no re-encoding):
    /// every object of `group/version/plural`. It resumes after the last revision it saw when
    /// its feed closes and relists when that history is gone; it stops when `stop` is
    /// cancelled.
    pub fn start_local(
        server: ApiServer,
        resource: (String, String, String),
        stop: CancellationToken,
    ) -> Self {
        Self::start_local_decoding(server, resource, stop, decode_object::<K>)
    }

    /// [`start_local`](Self::start_local) with the objects read by `decode`.
    fn start_local_decoding(
        server: ApiServer,
        resource: (String, String, String),
        stop: CancellationToken,
        decode: Decoder<K>,
    ) -> Self {
        let (changes, _) = broadcast::channel(change_buffer(&resource.2));
        let shared = Arc::new(Shared {
            cache: RwLock::new(Cache::new()),
            changes,
            synced: watch::channel(false).0,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            let (group, version, plural) = resource;
            let mut last: Option<Revision> = None;
            let mut backoff = Duration::from_millis(100);
            loop {
                let subscribed = tokio::select! {
                    _ = stop.cancelled() => return,
                    w = server.watch_local(&group, &version, &plural, last) => w,
                };
                let mut feed = match subscribed {
                    Ok(feed) => feed,
                    Err(err) if err.code == 410 => {
                        tracing::warn!(
                            %plural,
                            "an in-process informer fell behind the watch cache's history; relisting"
                        );
                        last = None;
                        continue;
                    }
                    Err(err) => {
                        tracing::debug!(error = %err, %plural, "in-process watch failed; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                backoff = Duration::from_millis(100);
                {
                    let Some(shared) = weak.upgrade() else { return };
                    let mut listing = None;
                    if last.is_none() {
                        apply_event(&shared, watcher::Event::Init, &mut listing);
                        for event in std::mem::take(&mut feed.initial) {
                            if let LocalEvent::Added(bytes) = event {
                                if let Some(object) = decode(&bytes) {
                                    apply_event(
                                        &shared,
                                        watcher::Event::InitApply(object),
                                        &mut listing,
                                    );
                                }
                            }
                        }
                        apply_event(&shared, watcher::Event::InitDone, &mut listing);
                    } else {
                        for event in std::mem::take(&mut feed.initial) {
                            apply_local(&shared, event, &mut listing, decode);
                        }
                    }
                }
                last = Some(feed.revision);
                loop {
                    let event = tokio::select! {
                        _ = stop.cancelled() => return,
                        event = feed.live.recv() => event,
                    };
                    let Some(event) = event else { break };
                    let Some(shared) = weak.upgrade() else { return };
                    if let Some(revision) = apply_local(&shared, event, &mut None, decode) {
                        last = Some(revision);
                    }
                }
            }
        });
        Informer { shared }
    }

    /// The cached object at `key`.
    pub fn get(&self, key: &ObjectKey) -> Option<Arc<K>> {
        self.read().get(key)
    }

    /// Every cached object.
    pub fn list(&self) -> Vec<Arc<K>> {
        self.read().all()
    }

    /// Every cached key.
    pub fn keys(&self) -> Vec<ObjectKey> {
        self.read().keys()
    }

    /// The number of cached objects.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The cached objects in `namespace`.
    pub fn in_namespace(&self, namespace: &str) -> Vec<Arc<K>> {
        self.by_index(super::cache::BY_NAMESPACE, namespace)
    }

    /// The cached objects with an owner reference to `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<K>> {
        self.by_index(super::cache::BY_OWNER, uid)
    }

    /// The cached objects whose index `name` has `value` (empty for an unknown index).
    pub fn by_index(&self, name: &str, value: &str) -> Vec<Arc<K>> {
        self.read().by_index(name, value)
    }

    /// Adds an index (built at once over what is cached). Adding a name twice keeps the first.
    pub fn add_index(&self, name: &str, function: IndexFn<K>) {
        let mut cache = self.shared.cache.write().unwrap_or_else(|p| p.into_inner());
        if !cache.has_index(name) {
            cache.add_index(name, function);
        }
    }

    /// Subscribes to changes from now on. Subscribe first, then read the cache, to miss nothing.
    pub fn subscribe(&self) -> Subscription<K> {
        Subscription {
            receiver: self.shared.changes.subscribe(),
        }
    }

    /// Whether the first complete list has been cached.
    pub fn is_synced(&self) -> bool {
        *self.shared.synced.borrow()
    }

    /// Waits until the first complete list has been cached.
    pub async fn wait_synced(&self) {
        let mut synced = self.shared.synced.subscribe();
        let _ = synced.wait_for(|s| *s).await;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Cache<K>> {
        self.shared.cache.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Cached objects go without `metadata.managedFields` (as client-go's informers in
/// kube-scheduler and kube-controller-manager strip them): controllers never read them, and they
/// are a large share of every object. A controller that writes an object back without them
/// leaves the stored ones as they are.
fn without_managed_fields<K: Resource>(mut object: K) -> K {
    object.meta_mut().managed_fields = None;
    object
}

/// An object as the cache keeps it: without managed fields, its lists trimmed.
fn kept_form<K: Resource + 'static>(object: K) -> K {
    super::compact::trim(without_managed_fields(object))
}

fn apply_event<K>(shared: &Shared<K>, event: watcher::Event<K>, listing: &mut Option<Vec<K>>)
where
    K: Resource + Clone + 'static,
{
    let send = |change: Change<K>| {
        let _ = shared.changes.send(change);
    };
    let event = match event {
        watcher::Event::InitApply(object) => watcher::Event::InitApply(kept_form(object)),
        watcher::Event::Apply(object) => watcher::Event::Apply(kept_form(object)),
        watcher::Event::Delete(object) => watcher::Event::Delete(kept_form(object)),
        other => other,
    };
    match event {
        watcher::Event::Init => *listing = Some(Vec::new()),
        watcher::Event::InitApply(object) => listing.get_or_insert_with(Vec::new).push(object),
        watcher::Event::InitDone => {
            let listed = listing.take().unwrap_or_default();
            let mut cache = shared.cache.write().unwrap_or_else(|p| p.into_inner());
            let mut gone: HashMap<ObjectKey, ()> =
                cache.keys().into_iter().map(|k| (k, ())).collect();
            let mut changes = Vec::new();
            for object in listed {
                let key = ObjectKey::of(&object);
                gone.remove(&key);
                let new = Arc::new(object);
                let old = cache.insert(new.clone());
                let unchanged = old
                    .as_ref()
                    .is_some_and(|o| o.meta().resource_version == new.meta().resource_version);
                if !unchanged {
                    changes.push(Change::Applied { old, new });
                }
            }
            for key in gone.into_keys() {
                if let Some(old) = cache.remove(&key) {
                    changes.push(Change::Deleted(old));
                }
            }
            drop(cache);
            changes.into_iter().for_each(send);
            shared.synced.send_replace(true);
        }
        watcher::Event::Apply(object) => {
            let new = Arc::new(object);
            let old = shared
                .cache
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(new.clone());
            send(Change::Applied { old, new });
        }
        watcher::Event::Delete(object) => {
            let key = ObjectKey::of(&object);
            shared
                .cache
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            send(Change::Deleted(Arc::new(object)));
        }
    }
}

/// Reads an object from the watch cache's bytes.
type Decoder<K> = fn(&[u8]) -> Option<K>;

/// What a metadata informer keeps of an object: its type and metadata. The rest (spec, status,
/// data) is skipped while parsing, never built.
#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetadataOnly {
    api_version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
}

/// Decodes only an object's type and metadata (without managedFields), like Kubernetes'
/// metadata informers (`PartialObjectMetadata`); `data` is an empty object.
fn decode_metadata(bytes: &[u8]) -> Option<DynamicObject> {
    let MetadataOnly {
        api_version,
        kind,
        mut metadata,
    } = decode(
        super::managed_fields_text::without_managed_fields(bytes)
            .as_deref()
            .unwrap_or(bytes),
    )?;
    metadata.managed_fields = None;
    let types = match (api_version, kind) {
        (Some(api_version), Some(kind)) => Some(TypeMeta { api_version, kind }),
        _ => None,
    };
    Some(DynamicObject {
        types,
        metadata,
        data: serde_json::Value::Object(Default::default()),
    })
}

/// Decodes what the garbage collector reads of an object (see
/// [`InformerFactory::ownership_metadata`]); not its type, which the collector knows from the
/// informer it asked for.
fn decode_ownership(bytes: &[u8]) -> Option<DynamicObject> {
    let mut object = decode_metadata(bytes)?;
    object.types = None;
    let metadata = std::mem::take(&mut object.metadata);
    object.metadata = ObjectMeta {
        name: metadata.name,
        namespace: metadata.namespace,
        uid: metadata.uid,
        resource_version: metadata.resource_version,
        owner_references: metadata.owner_references,
        finalizers: metadata.finalizers,
        deletion_timestamp: metadata.deletion_timestamp,
        ..ObjectMeta::default()
    };
    Some(object)
}

/// Decodes a whole object without its managed fields (see [`without_managed_fields`]); the
/// text's `managedFields` member is cut before decoding, not decoded and dropped.
fn decode_object<K: Resource + DeserializeOwned>(bytes: &[u8]) -> Option<K> {
    let trimmed = super::managed_fields_text::without_managed_fields(bytes);
    decode(trimmed.as_deref().unwrap_or(bytes)).map(without_managed_fields)
}

fn decode<K: DeserializeOwned>(bytes: &[u8]) -> Option<K> {
    match serde_json::from_slice(bytes) {
        Ok(object) => Some(object),
        Err(err) => {
            tracing::warn!(error = %err, "an object from the watch cache does not decode");
            None
        }
    }
}

/// Applies an in-process watch event; returns the revision it brings the informer to.
fn apply_local<K>(
    shared: &Shared<K>,
    event: LocalEvent,
    listing: &mut Option<Vec<K>>,
    decode: Decoder<K>,
) -> Option<Revision>
where
    K: Resource + Clone + DeserializeOwned + 'static,
{
    let (object, deleted) = match event {
        LocalEvent::Bookmark(revision) => return Some(revision),
        LocalEvent::Added(bytes) | LocalEvent::Modified(bytes) => (decode(&bytes)?, false),
        LocalEvent::Deleted(bytes) => (decode(&bytes)?, true),
    };
    let revision = object
        .meta()
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok());
    let event = if deleted {
        watcher::Event::Delete(object)
    } else {
        watcher::Event::Apply(object)
    };
    apply_event(shared, event, listing);
    revision
}

type InformerKey = (TypeId, String);

struct FactoryInner {
    client: Client,
    /// When set, informers are fed straight from this server's watch cache.
    local: Option<ApiServer>,
    informers: Mutex<HashMap<InformerKey, Box<dyn Any + Send + Sync>>>,
    stop: CancellationToken,
}

impl Drop for FactoryInner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Hands out one shared [`Informer`] per kind; informers start on first request and stop when
/// the factory (every clone of it) is dropped or [`InformerFactory::stop`] is called.
#[derive(Clone)]
pub struct InformerFactory {
    inner: Arc<FactoryInner>,
}

impl InformerFactory {
    /// A factory whose informers list and watch through `client`.
    pub fn new(client: Client) -> Self {
        InformerFactory {
            inner: Arc::new(FactoryInner {
                client,
                local: None,
                informers: Mutex::new(HashMap::new()),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// A factory for components in `server`'s own process: informers are fed straight from
    /// its watch cache; writes go through its in-process client.
    pub fn in_process(server: &ApiServer) -> Self {
        InformerFactory {
            inner: Arc::new(FactoryInner {
                client: server.client(),
                local: Some(server.clone()),
                informers: Mutex::new(HashMap::new()),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// A new factory with the same source and no informers yet (for a new leadership term).
    pub fn fresh(&self) -> Self {
        InformerFactory {
            inner: Arc::new(FactoryInner {
                client: self.inner.client.clone(),
                local: self.inner.local.clone(),
                informers: Mutex::new(HashMap::new()),
                stop: CancellationToken::new(),
            }),
        }
    }

    /// The client the informers use.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The shared informer of a built-in or derived kind, across all namespaces.
    pub fn informer<K>(&self) -> Informer<K>
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let resource = (
            K::group(&()).into_owned(),
            K::version(&()).into_owned(),
            K::plural(&()).into_owned(),
        );
        self.shared(
            (TypeId::of::<K>(), String::new()),
            resource,
            decode_object::<K>,
            || Api::all(self.inner.client.clone()),
        )
    }

    /// The shared metadata informer of a kind known only at run time (from discovery), across
    /// all namespaces: each object's type and metadata only (`data` is empty), as Kubernetes'
    /// garbage collector keeps them, so watching every kind costs little memory. (Through a
    /// remote client, whole objects are cached.)
    pub fn metadata(&self, resource: &ApiResource) -> Informer<DynamicObject> {
        self.dynamic(resource, "", decode_metadata)
    }

    /// Like [`metadata`](Self::metadata), but each object keeps only what ownership needs —
    /// name, namespace, uid, resourceVersion, ownerReferences, finalizers and
    /// deletionTimestamp, without the type — as the garbage collector reads them: a cluster's
    /// every pod is in it, and labels and annotations would double what it holds.
    pub(crate) fn ownership_metadata(&self, resource: &ApiResource) -> Informer<DynamicObject> {
        self.dynamic(resource, "#ownership", decode_ownership)
    }

    /// The shared informer of a run-time kind kept in the form `decode` makes (`form` tells
    /// the forms apart).
    fn dynamic(
        &self,
        resource: &ApiResource,
        form: &str,
        decode: Decoder<DynamicObject>,
    ) -> Informer<DynamicObject> {
        let key = format!(
            "{}/{}/{}{form}",
            resource.group, resource.version, resource.plural
        );
        let names = (
            resource.group.clone(),
            resource.version.clone(),
            resource.plural.clone(),
        );
        self.shared((TypeId::of::<DynamicObject>(), key), names, decode, || {
            Api::all_with(self.inner.client.clone(), resource)
        })
    }

    fn shared<K>(
        &self,
        key: InformerKey,
        resource: (String, String, String),
        decode: Decoder<K>,
        api: impl FnOnce() -> Api<K>,
    ) -> Informer<K>
    where
        K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let mut informers = self
            .inner
            .informers
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(existing) = informers
            .get(&key)
            .and_then(|i| i.downcast_ref::<Informer<K>>())
        {
            return existing.clone();
        }
        let stop = self.inner.stop.child_token();
        let informer = match &self.inner.local {
            Some(server) => Informer::start_local_decoding(server.clone(), resource, stop, decode),
            None => Informer::start(api(), watcher::Config::default(), stop),
        };
        informers.insert(key, Box::new(informer.clone()));
        informer
    }

    /// Stops every informer.
    pub fn stop(&self) {
        self.inner.stop.cancel();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_metadata_keeps_what_the_garbage_collector_reads_and_nothing_else() {
        let text = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": "p", "namespace": "ns", "uid": "u1", "resourceVersion": "7",
                "labels": {"app": "web"}, "annotations": {"note": "long text"},
                "generateName": "p-", "creationTimestamp": "2026-01-01T00:00:00Z",
                "finalizers": ["f"], "deletionTimestamp": "2026-01-02T00:00:00Z",
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                     "name": "rs", "uid": "u0"}],
            },
            "spec": {"containers": [{"name": "c", "image": "i"}]},
        })
        .to_string();
        let object = decode_ownership(text.as_bytes()).expect("decodes");
        let meta = &object.metadata;
        assert!(object.types.is_none());
        assert_eq!(meta.name.as_deref(), Some("p"));
        assert_eq!(meta.namespace.as_deref(), Some("ns"));
        assert_eq!(meta.uid.as_deref(), Some("u1"));
        assert_eq!(meta.resource_version.as_deref(), Some("7"));
        assert_eq!(meta.finalizers.as_deref(), Some(&["f".to_string()][..]));
        assert!(meta.deletion_timestamp.is_some());
        let owners = meta.owner_references.as_deref().unwrap_or_default();
        assert_eq!(owners.len(), 1);
        assert_eq!(owners[0].uid, "u0");
        assert!(meta.labels.is_none() && meta.annotations.is_none());
        assert!(meta.generate_name.is_none() && meta.creation_timestamp.is_none());
        // The whole metadata decoder keeps them.
        let whole = decode_metadata(text.as_bytes()).expect("decodes");
        assert!(whole.metadata.labels.is_some() && whole.metadata.annotations.is_some());
        assert_eq!(whole.types.as_ref().map(|t| t.kind.as_str()), Some("Pod"));
    }
}
