//! The admission chain: mutating plugins, then validating plugins, run on every write after
//! decoding and defaulting and before storage. Embedders add their own plugins; the built-ins
//! are NamespaceLifecycle, PriorityClass and ServiceAccount.

use super::watch_cache::WatchCache;
use super::{ApiError, UserInfo};
use crate::registry::{Registry, ResourceKind};
use crate::storage::{ObjectStorage, StorageError};
use async_trait::async_trait;
use serde_json::Value;
use std::sync::Arc;

/// The kind of write being admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A new object.
    Create,
    /// A replacement or patch.
    Update,
    /// A deletion.
    Delete,
}

/// What a plugin sees of a request.
pub struct AdmissionRequest<'a> {
    /// The operation.
    pub operation: Operation,
    /// The kind.
    pub kind: &'a ResourceKind,
    /// The subresource written, if any.
    pub subresource: Option<&'a str>,
    /// The namespace, if namespaced.
    pub namespace: Option<&'a str>,
    /// The object's name.
    pub name: &'a str,
    /// The stored object (updates and deletes).
    pub old: Option<&'a Value>,
    /// Who asks.
    pub user: &'a UserInfo,
    /// Whether nothing will be persisted.
    pub dry_run: bool,
    /// Read access to stored objects, straight from storage.
    pub storage: &'a ObjectStorage,
    /// Read access to stored objects through the API server's watch cache (cheaper; may trail
    /// storage by the writes in flight).
    pub reads: CachedReads<'a>,
    /// The served kinds.
    pub registry: &'a Registry,
}

impl AdmissionRequest<'_> {
    /// Whether this request creates a pod.
    pub fn creates_pod(&self) -> bool {
        self.operation == Operation::Create
            && self.kind.group.is_empty()
            && self.kind.plural == "pods"
    }
}

/// Reads for admission plugins served from the API server's watch cache once it has caught up
/// with storage, else from storage, as Kubernetes' admission plugins read through informer
/// listers: an object the cache does not hold yet (just created) is looked up in storage
/// before it is reported missing.
#[derive(Clone, Copy)]
pub struct CachedReads<'a> {
    storage: &'a ObjectStorage,
    cache: &'a WatchCache,
}

impl<'a> CachedReads<'a> {
    pub(super) fn new(storage: &'a ObjectStorage, cache: &'a WatchCache) -> Self {
        CachedReads { storage, cache }
    }

    /// One object of `kind`.
    pub async fn get(
        &self,
        kind: &Arc<ResourceKind>,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, StorageError> {
        let key = match namespace.filter(|_| kind.namespaced) {
            Some(namespace) => format!("{namespace}/{name}"),
            None => name.to_string(),
        };
        match self.cache.peek(kind, &key) {
            Some(Some(object)) => Ok(object),
            _ => self.storage.get(kind, namespace, name).await,
        }
    }

    /// Every object of `kind` (in every namespace).
    pub async fn list(&self, kind: &Arc<ResourceKind>) -> Result<Vec<Value>, StorageError> {
        match self.cache.peek_all(kind) {
            Some(objects) => Ok(objects),
            None => Ok(self.storage.list(kind, None, None, None, None).await?.items),
        }
    }
}

/// One admission plugin. Both hooks default to allowing the request unchanged.
#[async_trait]
pub trait AdmissionPlugin: Send + Sync {
    /// The plugin's name, as in error messages.
    fn name(&self) -> &str;

    /// May change the object (creates and updates).
    async fn mutate(
        &self,
        _request: &AdmissionRequest<'_>,
        _object: &mut Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }

    /// May reject the request (creates, updates, deletes; `object` is the old one on delete).
    async fn validate(
        &self,
        _request: &AdmissionRequest<'_>,
        _object: &Value,
    ) -> Result<(), ApiError> {
        Ok(())
    }
}

/// The built-in plugins in their order.
pub fn builtin_plugins() -> Vec<Arc<dyn AdmissionPlugin>> {
    vec![
        Arc::new(NamespaceLifecycle),
        Arc::new(ServiceAccountDefault),
        Arc::new(PriorityClassResolution),
        Arc::new(DefaultTolerationSeconds),
    ]
}

/// Namespaces that can never be deleted.
pub const IMMORTAL_NAMESPACES: [&str; 3] = ["default", "kube-system", "kube-public"];

/// Refuses objects in namespaces that do not exist or are terminating, and deletion of the
/// system namespaces.
pub struct NamespaceLifecycle;

#[async_trait]
impl AdmissionPlugin for NamespaceLifecycle {
    fn name(&self) -> &str {
        "NamespaceLifecycle"
    }

    async fn validate(
        &self,
        request: &AdmissionRequest<'_>,
        _object: &Value,
    ) -> Result<(), ApiError> {
        let is_namespace = request.kind.group.is_empty() && request.kind.plural == "namespaces";
        if is_namespace
            && request.operation == Operation::Delete
            && IMMORTAL_NAMESPACES.contains(&request.name)
        {
            return Err(ApiError::forbidden(format!(
                "namespaces {:?} is forbidden: this namespace may not be deleted",
                request.name
            )));
        }
        let Some(namespace) = request.namespace.filter(|_| request.kind.namespaced) else {
            return Ok(());
        };
        if request.operation != Operation::Create {
            return Ok(());
        }
        let namespaces = request
            .registry
            .get("", "v1", "namespaces")
            .ok_or_else(|| ApiError::internal("namespaces are not served"))?;
        match request.reads.get(namespaces, None, namespace).await {
            Ok(ns) => {
                let terminating = ns.pointer("/status/phase").and_then(Value::as_str)
                    == Some("Terminating")
                    || ns
                        .pointer("/metadata/deletionTimestamp")
                        .is_some_and(|v| !v.is_null());
                if terminating {
                    return Err(ApiError::forbidden(format!(
                        "{} {:?} is forbidden: unable to create new content in namespace {namespace} because it is being terminated",
                        request.kind.resource_name(),
                        request.name
                    )));
                }
                Ok(())
            }
            Err(StorageError::NotFound { .. }) => Err(ApiError::not_found("namespaces", namespace)),
            Err(err) => Err(err.into()),
        }
    }
}

/// Sets a pod's service account to `default` when none is named.
pub struct ServiceAccountDefault;

#[async_trait]
impl AdmissionPlugin for ServiceAccountDefault {
    fn name(&self) -> &str {
        "ServiceAccount"
    }

    async fn mutate(
        &self,
        request: &AdmissionRequest<'_>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        if !request.creates_pod() {
            return Ok(());
        }
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let name = spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| {
                spec.get("serviceAccount")
                    .and_then(Value::as_str)
                    .filter(|s| !s.is_empty())
            })
            .unwrap_or("default")
            .to_string();
        spec.insert("serviceAccountName".into(), Value::String(name.clone()));
        spec.insert("serviceAccount".into(), Value::String(name));
        Ok(())
    }
}

/// Resolves a pod's `priorityClassName` (or the global default class) into `spec.priority`.
pub struct PriorityClassResolution;

#[async_trait]
impl AdmissionPlugin for PriorityClassResolution {
    fn name(&self) -> &str {
        "Priority"
    }

    async fn mutate(
        &self,
        request: &AdmissionRequest<'_>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        if !request.creates_pod() {
            return Ok(());
        }
        let Some(classes) = request
            .registry
            .get("scheduling.k8s.io", "v1", "priorityclasses")
        else {
            return Ok(());
        };
        let requested = object
            .pointer("/spec/priorityClassName")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let (name, value, policy) = match requested {
            Some(name) => match request.reads.get(classes, None, &name).await {
                Ok(class) => (
                    Some(name),
                    class["value"].as_i64().unwrap_or(0),
                    class["preemptionPolicy"].clone(),
                ),
                Err(StorageError::NotFound { .. }) => {
                    return Err(ApiError::forbidden(format!(
                        "pods {:?} is forbidden: no PriorityClass with name {name} was found",
                        request.name
                    )))
                }
                Err(err) => return Err(err.into()),
            },
            None => {
                let all = request.reads.list(classes).await?;
                match all
                    .into_iter()
                    .find(|c| c["globalDefault"].as_bool() == Some(true))
                {
                    Some(class) => (
                        class
                            .pointer("/metadata/name")
                            .and_then(Value::as_str)
                            .map(str::to_string),
                        class["value"].as_i64().unwrap_or(0),
                        class["preemptionPolicy"].clone(),
                    ),
                    None => (None, 0, Value::Null),
                }
            }
        };
        if let Some(given) = object.pointer("/spec/priority").and_then(Value::as_i64) {
            if given != value {
                return Err(ApiError::forbidden(format!("pods {:?} is forbidden: the integer value of priority ({given}) must not be provided in pod spec; priority admission controller computed {value} from the given PriorityClass name", request.name)));
            }
        }
        if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
            if let Some(name) = name {
                spec.insert("priorityClassName".into(), Value::String(name));
            }
            spec.insert("priority".into(), Value::from(value));
            let policy = if policy.is_string() {
                policy
            } else {
                Value::String("PreemptLowerPriority".into())
            };
            spec.insert("preemptionPolicy".into(), policy);
        }
        Ok(())
    }
}

/// Gives new pods tolerations of the `node.kubernetes.io/not-ready` and
/// `node.kubernetes.io/unreachable` NoExecute taints for 300 seconds, unless they tolerate
/// them already — so a pod outlives a short node outage but is replaced after a long one.
pub struct DefaultTolerationSeconds;

/// The tolerationSeconds [`DefaultTolerationSeconds`] gives.
pub const DEFAULT_TOLERATION_SECONDS: i64 = 300;

#[async_trait]
impl AdmissionPlugin for DefaultTolerationSeconds {
    fn name(&self) -> &str {
        "DefaultTolerationSeconds"
    }

    async fn mutate(
        &self,
        request: &AdmissionRequest<'_>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        if !request.creates_pod() {
            return Ok(());
        }
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        let tolerations = spec
            .entry("tolerations")
            .or_insert_with(|| Value::Array(Vec::new()));
        if tolerations.is_null() {
            *tolerations = Value::Array(Vec::new());
        }
        let Some(list) = tolerations.as_array_mut() else {
            return Ok(());
        };
        for key in [
            "node.kubernetes.io/not-ready",
            "node.kubernetes.io/unreachable",
        ] {
            let covered = list.iter().any(|t| {
                let effect = t.get("effect").and_then(Value::as_str).unwrap_or("");
                let exists = t.get("operator").and_then(Value::as_str) == Some("Exists");
                let tkey = t.get("key").and_then(Value::as_str).unwrap_or("");
                (effect.is_empty() || effect == "NoExecute")
                    && ((tkey.is_empty() && exists) || tkey == key)
            });
            if !covered {
                list.push(serde_json::json!({
                    "key": key, "operator": "Exists", "effect": "NoExecute",
                    "tolerationSeconds": DEFAULT_TOLERATION_SECONDS,
                }));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemoryStore, Store};
    use serde_json::json;

    /// A cache that has caught up but not yet seen the latest write still finds the object:
    /// storage is asked before anything is reported missing; a cached object is served as
    /// cached.
    #[tokio::test]
    async fn cached_reads_fall_back_to_storage() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
        let storage = ObjectStorage::new(store);
        let cache = WatchCache::new(
            storage.clone(),
            super::super::watch_cache::CacheConfig {
                history: 100,
                watcher_buffer: 100,
            },
        );
        let registry = Registry::with_builtins();
        let namespaces = registry.get("", "v1", "namespaces").unwrap();
        let reads = CachedReads::new(&storage, &cache);
        storage
            .create(namespaces, json!({"metadata": {"name": "early"}}))
            .await
            .unwrap();
        // Wait until the cache follows the store and holds the first namespace.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while !matches!(cache.peek(namespaces, "early"), Some(Some(_))) {
            assert!(std::time::Instant::now() < deadline, "the cache catches up");
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        // Written and read with no await in between that could let the cache apply it.
        let created = storage
            .create(namespaces, json!({"metadata": {"name": "late"}}))
            .await
            .unwrap();
        assert_eq!(
            cache.peek(namespaces, "late"),
            Some(None),
            "the cache has not seen it yet"
        );
        let read = reads.get(namespaces, None, "late").await.unwrap();
        assert_eq!(read["metadata"]["uid"], created["metadata"]["uid"]);
        assert!(matches!(
            reads.get(namespaces, None, "missing").await,
            Err(StorageError::NotFound { .. })
        ));
        let listed = reads.list(namespaces).await.unwrap();
        assert!(listed.iter().any(|ns| ns["metadata"]["name"] == "early"));
    }
}
