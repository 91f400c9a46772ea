//! Typed object storage on any [`Store`]: the key layout, encoding, and the metadata the
//! storage layer owns — `uid`, `creationTimestamp`, `resourceVersion` (the store revision at
//! which the object last changed) and `generation` (bumped when anything but metadata and status
//! changes). It works on encoded JSON objects plus their [`ResourceKind`], so one code path
//! serves every kind, built-in, user-defined or discovered at run time; typed helpers convert at
//! the edges. Admission, defaulting and validation belong to the API server, not here.
//!
//! Keys are relative to the store's root: `/<group or core>/<plural>/<namespace>/<name>` (cluster
//! kinds: `/<group or core>/<plural>/<name>`). Under the etcd store's default root `/registry`
//! they appear in etcd as `/registry/core/pods/default/web`, Kubernetes' layout.

mod error;
mod index_fields;
mod key;
mod object;
mod stored_value;
mod ttl_leases;
mod versioned_bytes;

pub use error::StorageError;
pub use key::{object_key, object_prefix};
pub(crate) use object::{exact_json, stored_json};
pub use stored_value::CorruptValue;

/// The JSON of an object as a [`Store`] holds it: the storage layer keeps large objects
/// zstd-compressed (smaller ones as they are), so tools that read a store directly — a backup,
/// a migration — read its values through this.
pub fn stored_object_json(value: &[u8]) -> Result<std::borrow::Cow<'_, [u8]>, CorruptValue> {
    stored_value::unpack(value)
}

/// An object read straight from a [`Store`] value (compressed or not) by a component that
/// bypasses [`ObjectStorage`] (authorizers, allocators); `None` when it does not decode.
pub(crate) fn read_stored<T: DeserializeOwned>(value: &[u8]) -> Option<T> {
    serde_json::from_slice(&stored_object_json(value).ok()?).ok()
}
pub use versioned_bytes::ObjectBytes;

use crate::registry::ResourceKind;
use crate::store::{ListOptions, Revision, Store, StoreError, WatchEvent};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use object::{decode, encode, meta_str, prepare_create, prepare_update};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::Value;
use std::sync::Arc;

/// A page of objects from [`ObjectStorage::list`].
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectList {
    /// The objects, in key order.
    pub items: Vec<Value>,
    /// The revision the page was read at (the list's `resourceVersion`).
    pub revision: Revision,
    /// The name to continue after, when more objects remain.
    pub continue_after: Option<String>,
}

/// What happened to an object, as seen by [`ObjectStorage::watch`].
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectEvent {
    /// Created.
    Added(Value),
    /// Changed.
    Modified {
        /// The new state.
        current: Value,
        /// The state before the change.
        previous: Value,
    },
    /// Deleted (the last state, with the deletion's resourceVersion).
    Deleted(Value),
    /// Everything up to this revision has been delivered.
    Progress(Revision),
}

/// A change as [`ObjectStorage::watch_encoded`] reports it: the object (with its
/// resourceVersion) as JSON bytes, made without re-encoding, beside the parts of it a cache
/// indexes, decoded: `apiVersion`, `kind`, `metadata` without `managedFields`, and the kind's
/// selectable fields.
#[derive(Debug, Clone)]
pub enum EncodedEvent {
    /// Created.
    Added(Value, ObjectBytes),
    /// Changed (the state before is not decoded: a cache knows it).
    Modified(Value, ObjectBytes),
    /// Deleted (the last state, with the deletion's resourceVersion).
    Deleted(Value, ObjectBytes),
    /// Everything up to this revision has been delivered.
    Progress(Revision),
}

/// Object storage over a [`Store`].
#[derive(Clone)]
pub struct ObjectStorage {
    store: Arc<dyn Store>,
    leases: Arc<ttl_leases::TtlLeases>,
}

impl ObjectStorage {
    /// Storage over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        ObjectStorage {
            store,
            leases: Arc::new(ttl_leases::TtlLeases::default()),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// Stores a new object: fills `metadata.name` from `generateName` when needed, sets `uid`,
    /// `creationTimestamp`, `generation` 1 and `resourceVersion`.
    pub async fn create(&self, kind: &ResourceKind, object: Value) -> Result<Value, StorageError> {
        self.create_encoded(kind, object)
            .await
            .map(|(object, _)| object)
    }

    /// [`create`](Self::create), also returning the object's JSON as stored (shared with the
    /// store, its resourceVersion spliced in when written out; `None` for an object without a
    /// `metadata` object to splice it into): a caller that sends the object on need not encode
    /// it again.
    pub(crate) async fn create_encoded(
        &self,
        kind: &ResourceKind,
        object: Value,
    ) -> Result<(Value, Option<ObjectBytes>), StorageError> {
        let mut object = object;
        prepare_create(kind, &mut object)?;
        let namespace = meta_str(&object, "namespace");
        let mut attempts = 0;
        loop {
            attempts += 1;
            let name = meta_str(&object, "name").unwrap_or_default();
            let key = object_key(kind, namespace.as_deref(), &name)?;
            let lease = match kind.ttl {
                Some(ttl) => Some(self.leases.lease_for(&self.store, ttl).await?),
                None => None,
            };
            let encoded = encode(&mut object)?;
            match self.store.create(&key, encoded.clone(), lease).await {
                // The stored value is what was just encoded: no need to decode it again.
                Ok(kv) => {
                    object::set_resource_version(&mut object, kv.mod_revision);
                    return Ok((object, ObjectBytes::stored(encoded, kv.mod_revision)));
                }
                // A generated name that collided: draw another, as Kubernetes retries.
                Err(StoreError::AlreadyExists { .. })
                    if attempts < 8 && object::regenerate_name(&mut object) =>
                {
                    continue
                }
                Err(StoreError::AlreadyExists { .. }) => {
                    return Err(StorageError::AlreadyExists {
                        resource: kind.resource_name(),
                        name,
                    })
                }
                Err(err) => return Err(err.into()),
            }
        }
    }

    /// Reads one object.
    pub async fn get(
        &self,
        kind: &ResourceKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Value, StorageError> {
        let key = object_key(kind, namespace, name)?;
        match self.store.get(&key).await? {
            Some(kv) => decode(&kv),
            None => Err(StorageError::NotFound {
                resource: kind.resource_name(),
                name: name.to_string(),
            }),
        }
    }

    /// Lists objects of a kind (in one namespace, or all), a page at a time: `limit` objects
    /// after `continue_after`, at `revision` (`None`: now).
    pub async fn list(
        &self,
        kind: &ResourceKind,
        namespace: Option<&str>,
        limit: Option<usize>,
        continue_after: Option<&str>,
        revision: Option<Revision>,
    ) -> Result<ObjectList, StorageError> {
        let prefix = object_prefix(kind, namespace)?;
        let start_after = continue_after.map(|key| format!("{prefix}{key}"));
        let page = self
            .store
            .list(
                &prefix,
                ListOptions {
                    limit,
                    start_after,
                    revision,
                },
            )
            .await?;
        let continue_after = if page.more {
            page.items
                .last()
                .and_then(|kv| kv.key.strip_prefix(&prefix))
                .map(str::to_string)
        } else {
            None
        };
        let items = page
            .items
            .iter()
            .map(decode)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ObjectList {
            items,
            revision: page.revision,
            continue_after,
        })
    }

    /// Replaces an object. Its `metadata.resourceVersion` must match the stored one (an empty one
    /// means "whatever is stored"); `uid` and `creationTimestamp` are kept, `generation` is bumped
    /// when anything but metadata and status changed.
    pub async fn update(&self, kind: &ResourceKind, object: Value) -> Result<Value, StorageError> {
        let mut object = object;
        let namespace = meta_str(&object, "namespace");
        let name = meta_str(&object, "name")
            .ok_or_else(|| StorageError::invalid("metadata.name", "name is required"))?;
        let key = object_key(kind, namespace.as_deref(), &name)?;
        let expected = match meta_str(&object, "resourceVersion") {
            Some(rv) if !rv.is_empty() => Some(rv.parse::<Revision>().map_err(|_| {
                StorageError::invalid(
                    "metadata.resourceVersion",
                    &format!("{rv:?} is not a valid resource version"),
                )
            })?),
            _ => None,
        };
        let current = self
            .store
            .get(&key)
            .await?
            .ok_or_else(|| StorageError::NotFound {
                resource: kind.resource_name(),
                name: name.clone(),
            })?;
        let expected = expected.unwrap_or(current.mod_revision);
        if expected != current.mod_revision {
            return Err(StorageError::Conflict {
                resource: kind.resource_name(),
                name,
            });
        }
        let stored = decode(&current)?;
        prepare_update(kind, &stored, &mut object)?;
        // A write renews a limited object's time to live.
        let lease = match kind.ttl {
            Some(ttl) => Some(self.leases.lease_for(&self.store, ttl).await?),
            None => current.lease,
        };
        self.write_prepared(kind, &key, name, object, expected, lease)
            .await
    }

    /// Writes a prepared update if the key is still at `expected`.
    async fn write_prepared(
        &self,
        kind: &ResourceKind,
        key: &str,
        name: String,
        mut object: Value,
        expected: Revision,
        lease: Option<crate::store::LeaseId>,
    ) -> Result<Value, StorageError> {
        let revision = self
            .write_encoded(kind, key, name, encode(&mut object)?, expected, lease)
            .await?;
        object::set_resource_version(&mut object, revision);
        Ok(object)
    }

    /// Replaces the object at `key` with `stored` (its JSON as the store keeps it, without a
    /// resourceVersion, already prepared by the caller) if it is still at `expected`
    /// (otherwise `Conflict`); returns the new revision.
    pub(crate) async fn write_encoded(
        &self,
        kind: &ResourceKind,
        key: &str,
        name: String,
        stored: Bytes,
        expected: Revision,
        lease: Option<crate::store::LeaseId>,
    ) -> Result<Revision, StorageError> {
        match self.store.update(key, stored, expected, lease).await {
            Ok(kv) => Ok(kv.mod_revision),
            Err(StoreError::Conflict { .. }) => Err(StorageError::Conflict {
                resource: kind.resource_name(),
                name,
            }),
            Err(StoreError::NotFound { .. }) => Err(StorageError::NotFound {
                resource: kind.resource_name(),
                name,
            }),
            Err(err) => Err(err.into()),
        }
    }

    /// Replaces an object the caller has just read (`stored`, with its resourceVersion), without
    /// reading it again: the write succeeds only if the object is still at that revision
    /// (otherwise `Conflict`, as from [`ObjectStorage::update`]).
    pub async fn update_from(
        &self,
        kind: &ResourceKind,
        stored: &Value,
        object: Value,
    ) -> Result<Value, StorageError> {
        let revision =
            meta_str(stored, "resourceVersion").and_then(|rv| rv.parse::<Revision>().ok());
        // Kinds with a time to live renew their lease on each write: the full path knows how.
        let Some(revision) = revision.filter(|_| kind.ttl.is_none()) else {
            return self.update(kind, object).await;
        };
        let mut object = object;
        let namespace = meta_str(&object, "namespace");
        let name = meta_str(&object, "name")
            .ok_or_else(|| StorageError::invalid("metadata.name", "name is required"))?;
        let key = object_key(kind, namespace.as_deref(), &name)?;
        let conflict = || StorageError::Conflict {
            resource: kind.resource_name(),
            name: name.clone(),
        };
        match meta_str(&object, "resourceVersion") {
            Some(rv) if !rv.is_empty() => {
                let expected = rv.parse::<Revision>().map_err(|_| {
                    StorageError::invalid(
                        "metadata.resourceVersion",
                        &format!("{rv:?} is not a valid resource version"),
                    )
                })?;
                if expected != revision {
                    return Err(conflict());
                }
            }
            _ => {}
        }
        prepare_update(kind, stored, &mut object)?;
        self.write_prepared(kind, &key, name, object, revision, None)
            .await
    }

    /// Writes back an object the caller read (carrying its resourceVersion) and then changed in
    /// place, conditionally on that revision (otherwise `Conflict`), without a second copy of
    /// it: the caller says whether the change touched the spec (which bumps
    /// `metadata.generation`, as [`ObjectStorage::update_from`] would find by comparing).
    pub(crate) async fn write_back(
        &self,
        kind: &ResourceKind,
        mut object: Value,
        spec_changed: bool,
    ) -> Result<Value, StorageError> {
        let revision =
            meta_str(&object, "resourceVersion").and_then(|rv| rv.parse::<Revision>().ok());
        let Some(revision) = revision.filter(|_| kind.ttl.is_none()) else {
            return self.update(kind, object).await;
        };
        let namespace = meta_str(&object, "namespace");
        let name = meta_str(&object, "name")
            .ok_or_else(|| StorageError::invalid("metadata.name", "name is required"))?;
        let key = object_key(kind, namespace.as_deref(), &name)?;
        if spec_changed {
            object::bump_generation(&mut object)?;
        }
        self.write_prepared(kind, &key, name, object, revision, None)
            .await
    }

    /// Deletes an object, optionally only at a given resourceVersion, returning its last state.
    pub async fn delete(
        &self,
        kind: &ResourceKind,
        namespace: Option<&str>,
        name: &str,
        expected: Option<Revision>,
    ) -> Result<Value, StorageError> {
        let key = object_key(kind, namespace, name)?;
        match self.store.delete(&key, expected).await {
            Ok(kv) => decode(&kv),
            Err(StoreError::NotFound { .. }) => Err(StorageError::NotFound {
                resource: kind.resource_name(),
                name: name.to_string(),
            }),
            Err(StoreError::Conflict { .. }) => Err(StorageError::Conflict {
                resource: kind.resource_name(),
                name: name.to_string(),
            }),
            Err(err) => Err(err.into()),
        }
    }

    /// Watches a kind (in one namespace, or all) for changes after `revision`.
    pub async fn watch(
        &self,
        kind: &ResourceKind,
        namespace: Option<&str>,
        revision: Revision,
    ) -> Result<impl Stream<Item = Result<ObjectEvent, StorageError>> + Send + 'static, StorageError>
    {
        let prefix = object_prefix(kind, namespace)?;
        let stream = self.store.watch(&prefix, revision).await?;
        Ok(stream.map(|item| {
            Ok(match item? {
                WatchEvent::Created(kv) => ObjectEvent::Added(decode(&kv)?),
                WatchEvent::Modified { current, previous } => ObjectEvent::Modified {
                    current: decode(&current)?,
                    previous: decode(&previous)?,
                },
                WatchEvent::Deleted { previous, revision } => {
                    let mut object = decode(&previous)?;
                    object::set_resource_version(&mut object, revision);
                    ObjectEvent::Deleted(object)
                }
                WatchEvent::Progress(revision) => ObjectEvent::Progress(revision),
            })
        }))
    }

    /// [`watch`](Self::watch) for a cache that keeps encoded objects: only what a cache indexes
    /// of each object is decoded (see [`EncodedEvent`]) and its bytes are the stored bytes with
    /// the revision spliced in; the previous state of a modification is not decoded.
    pub async fn watch_encoded(
        &self,
        kind: &ResourceKind,
        namespace: Option<&str>,
        revision: Revision,
    ) -> Result<impl Stream<Item = Result<EncodedEvent, StorageError>> + Send + 'static, StorageError>
    {
        let prefix = object_prefix(kind, namespace)?;
        let stream = self.store.watch(&prefix, revision).await?;
        let shape =
            index_fields::Shape::for_index(kind.field_selectors.iter().map(|f| f.pointer.as_str()));
        Ok(stream.map(move |item| {
            Ok(match item? {
                WatchEvent::Created(kv) => {
                    let (object, bytes) = decode_encoded(&shape, &kv, kv.mod_revision)?;
                    EncodedEvent::Added(object, bytes)
                }
                WatchEvent::Modified { current, .. } => {
                    let (object, bytes) = decode_encoded(&shape, &current, current.mod_revision)?;
                    EncodedEvent::Modified(object, bytes)
                }
                WatchEvent::Deleted { previous, revision } => {
                    let (object, bytes) = decode_encoded(&shape, &previous, revision)?;
                    EncodedEvent::Deleted(object, bytes)
                }
                WatchEvent::Progress(revision) => EncodedEvent::Progress(revision),
            })
        }))
    }

    /// [`create`](Self::create) for a typed object.
    pub async fn create_as<K: Serialize + DeserializeOwned>(
        &self,
        kind: &ResourceKind,
        object: &K,
    ) -> Result<K, StorageError> {
        from_value(self.create(kind, to_value(object)?).await?)
    }

    /// [`get`](Self::get) for a typed object.
    pub async fn get_as<K: DeserializeOwned>(
        &self,
        kind: &ResourceKind,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<K, StorageError> {
        from_value(self.get(kind, namespace, name).await?)
    }

    /// [`update`](Self::update) for a typed object.
    pub async fn update_as<K: Serialize + DeserializeOwned>(
        &self,
        kind: &ResourceKind,
        object: &K,
    ) -> Result<K, StorageError> {
        from_value(self.update(kind, to_value(object)?).await?)
    }
}

/// The stored object at `revision`: the parts `shape` keeps, decoded, and the whole object as
/// bytes (spliced when the stored bytes carry no resourceVersion of their own, re-encoded
/// otherwise).
fn decode_encoded(
    shape: &index_fields::Shape,
    kv: &crate::store::KeyValue,
    revision: Revision,
) -> Result<(Value, ObjectBytes), StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        key: kv.key.clone(),
        reason,
    };
    let text = stored_value::unpack(&kv.value).map_err(|e| corrupt(e.to_string()))?;
    let mut indexed = shape.decode(&text).map_err(|e| corrupt(e.to_string()))?;
    if !indexed.is_object() {
        return Err(corrupt("stored value is not a JSON object".into()));
    }
    let stored_version = indexed["metadata"].get("resourceVersion").is_some();
    object::set_resource_version(&mut indexed, revision);
    let spliced = (!stored_version)
        .then(|| ObjectBytes::stored_as(kv.value.clone(), &text, revision))
        .flatten();
    let bytes = match spliced {
        Some(bytes) => bytes,
        None => {
            let mut object = object::decode_stored(kv)?;
            object::set_resource_version(&mut object, revision);
            object::exact_json(&object)
                .map(ObjectBytes::complete)
                .map_err(|e| StorageError::invalid("", &e.to_string()))?
        }
    };
    Ok((indexed, bytes))
}

fn to_value<K: Serialize>(object: &K) -> Result<Value, StorageError> {
    serde_json::to_value(object).map_err(|e| StorageError::invalid("", &e.to_string()))
}

fn from_value<K: DeserializeOwned>(value: Value) -> Result<K, StorageError> {
    serde_json::from_value(value).map_err(|e| StorageError::Corrupt {
        key: String::new(),
        reason: e.to_string(),
    })
}
