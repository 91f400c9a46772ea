//! Encoding objects for storage and maintaining the metadata storage owns.

use super::StorageError;
use crate::registry::ResourceKind;
use crate::store::{KeyValue, Revision};
use bytes::Bytes;
use serde_json::{Map, Value};

/// Reads a string field of `metadata`.
pub(super) fn meta_str(object: &Value, field: &str) -> Option<String> {
    object
        .get("metadata")?
        .get(field)?
        .as_str()
        .map(str::to_string)
}

fn metadata_mut(object: &mut Value) -> Result<&mut Map<String, Value>, StorageError> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| StorageError::invalid("", "an object must be a JSON object"))?;
    let metadata = map
        .entry("metadata")
        .or_insert_with(|| Value::Object(Map::new()));
    if metadata.is_null() {
        *metadata = Value::Object(Map::new());
    }
    metadata
        .as_object_mut()
        .ok_or_else(|| StorageError::invalid("metadata", "must be an object"))
}

/// Sets `metadata.resourceVersion`.
pub(super) fn set_resource_version(object: &mut Value, revision: Revision) {
    if let Ok(metadata) = metadata_mut(object) {
        metadata.insert(
            "resourceVersion".into(),
            Value::String(revision.to_string()),
        );
    }
}

/// The bytes stored for an object: its JSON without `resourceVersion` (the revision is the
/// store's own bookkeeping), in its [stored form](super::stored_value).
pub(super) fn encode(object: &mut Value) -> Result<Bytes, StorageError> {
    // The revision is the store's, not part of the value: taken out while serializing (no copy
    // of the object), put back after.
    let version = metadata_mut(object)?.remove("resourceVersion");
    let bytes = stored_json(&*object);
    if let Some(version) = version {
        metadata_mut(object)?.insert("resourceVersion".into(), version);
    }
    bytes.map_err(|e| StorageError::invalid("", &e.to_string()))
}

/// Largest serialization buffer kept for the thread's next object.
const KEPT_BUFFER: usize = 1 << 20;

/// `value`'s JSON in an allocation of its exact length. Cached and stored values live long:
/// serializing straight into a growing `Vec` leaves up to half of each one unused (and
/// allocators shrink in place), so each is written into a buffer the thread reuses, then copied
/// out.
pub(crate) fn exact_json<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<Bytes, serde_json::Error> {
    with_json(value, Bytes::copy_from_slice)
}

/// `value`'s JSON in its [stored form](super::stored_value) (compressed when large), in an
/// allocation of its exact length.
pub(crate) fn stored_json<T: serde::Serialize + ?Sized>(
    value: &T,
) -> Result<Bytes, serde_json::Error> {
    with_json(value, super::stored_value::pack)
}

/// `finish` applied to `value`'s JSON, written into a buffer the thread reuses.
fn with_json<T: serde::Serialize + ?Sized>(
    value: &T,
    finish: impl FnOnce(&[u8]) -> Bytes,
) -> Result<Bytes, serde_json::Error> {
    thread_local! {
        static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUFFER.with(|buffer| {
        let Ok(mut buffer) = buffer.try_borrow_mut() else {
            return serde_json::to_vec(value).map(|v| finish(&v));
        };
        buffer.clear();
        let written = serde_json::to_writer(&mut *buffer, value);
        let bytes = written.map(|()| finish(&buffer));
        if buffer.capacity() > KEPT_BUFFER {
            *buffer = Vec::new();
        }
        bytes
    })
}

/// The object stored in a key-value, with its resourceVersion.
pub(super) fn decode(kv: &KeyValue) -> Result<Value, StorageError> {
    let mut object = decode_stored(kv)?;
    set_resource_version(&mut object, kv.mod_revision);
    Ok(object)
}

/// The object stored in a key-value, as stored (normally without a resourceVersion).
pub(super) fn decode_stored(kv: &KeyValue) -> Result<Value, StorageError> {
    let corrupt = |reason: String| StorageError::Corrupt {
        key: kv.key.clone(),
        reason,
    };
    let json = super::stored_value::unpack(&kv.value).map_err(|e| corrupt(e.to_string()))?;
    let object: Value = serde_json::from_slice(&json).map_err(|e| corrupt(e.to_string()))?;
    if !object.is_object() {
        return Err(corrupt("stored value is not a JSON object".into()));
    }
    Ok(object)
}

const NAME_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn random_suffix() -> String {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    bytes[..5]
        .iter()
        .map(|b| NAME_ALPHABET[*b as usize % NAME_ALPHABET.len()] as char)
        .collect()
}

/// Draws a new name from `generateName`; false if the object has none.
pub(super) fn regenerate_name(object: &mut Value) -> bool {
    let Some(base) = meta_str(object, "generateName").filter(|g| !g.is_empty()) else {
        return false;
    };
    let base: String = base.chars().take(58).collect();
    match metadata_mut(object) {
        Ok(metadata) => {
            metadata.insert(
                "name".into(),
                Value::String(format!("{base}{}", random_suffix())),
            );
            true
        }
        Err(_) => false,
    }
}

fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

/// Fills what storage owns on a new object.
pub(super) fn prepare_create(kind: &ResourceKind, object: &mut Value) -> Result<(), StorageError> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| StorageError::invalid("", "an object must be a JSON object"))?;
    map.insert("apiVersion".into(), Value::String(kind.api_version()));
    map.insert("kind".into(), Value::String(kind.kind.clone()));
    if meta_str(object, "name").is_none_or(|n| n.is_empty()) && !regenerate_name(object) {
        return Err(StorageError::invalid(
            "metadata.name",
            "name or generateName is required",
        ));
    }
    let metadata = metadata_mut(object)?;
    if !kind.namespaced {
        metadata.remove("namespace");
    }
    // A uid already set was drawn by the API server (clients' are removed before).
    if metadata
        .get("uid")
        .and_then(Value::as_str)
        .is_none_or(str::is_empty)
    {
        metadata.insert(
            "uid".into(),
            Value::String(uuid::Uuid::new_v4().to_string()),
        );
    }
    metadata.insert("creationTimestamp".into(), Value::String(now_rfc3339()));
    metadata.insert("generation".into(), Value::from(1));
    metadata.remove("resourceVersion");
    metadata.remove("deletionTimestamp");
    Ok(())
}

/// Whether anything outside metadata and status differs.
fn spec_changed(old: &Value, new: &Value) -> bool {
    // Compared in place (cloning both objects cost more than comparing them).
    fn spec_fields(object: &Value) -> impl Iterator<Item = (&String, &Value)> {
        object
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, _)| !matches!(k.as_str(), "metadata" | "status" | "apiVersion" | "kind"))
    }
    spec_fields(old).count() != spec_fields(new).count()
        || spec_fields(old).any(|(k, v)| new.get(k) != Some(v))
}

/// Counts a change of the spec in `metadata.generation` (1 when it was unset).
pub(super) fn bump_generation(object: &mut Value) -> Result<(), StorageError> {
    let generation = object
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    metadata_mut(object)?.insert("generation".into(), Value::from(generation + 1));
    Ok(())
}

/// Carries the storage-owned fields from the stored object to its replacement.
pub(super) fn prepare_update(
    kind: &ResourceKind,
    stored: &Value,
    object: &mut Value,
) -> Result<(), StorageError> {
    let map = object
        .as_object_mut()
        .ok_or_else(|| StorageError::invalid("", "an object must be a JSON object"))?;
    map.insert("apiVersion".into(), Value::String(kind.api_version()));
    map.insert("kind".into(), Value::String(kind.kind.clone()));
    let generation = stored
        .pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(1);
    let bumped = if spec_changed(stored, object) {
        generation + 1
    } else {
        generation
    };
    let metadata = metadata_mut(object)?;
    for field in ["uid", "creationTimestamp"] {
        match stored.pointer(&format!("/metadata/{field}")) {
            Some(value) => metadata.insert(field.into(), value.clone()),
            None => metadata.remove(field),
        };
    }
    metadata.insert("generation".into(), Value::from(bumped));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::spec_changed;
    use serde_json::json;

    #[test]
    fn only_fields_outside_metadata_and_status_count_as_the_spec() {
        let old = json!({"kind": "Pod", "metadata": {"name": "a"}, "spec": {"x": 1}, "status": {}});
        let relabelled = json!({"kind": "Pod", "metadata": {"name": "a", "labels": {"l": "v"}}, "spec": {"x": 1}, "status": {"phase": "Running"}});
        assert!(!spec_changed(&old, &relabelled));
        assert!(spec_changed(
            &old,
            &json!({"metadata": {}, "spec": {"x": 2}})
        ));
        // A field added or removed beside the spec (a ConfigMap's data) counts too.
        assert!(spec_changed(&old, &json!({"spec": {"x": 1}, "data": {}})));
        assert!(spec_changed(&old, &json!({"metadata": {}})));
        assert!(!spec_changed(&json!(null), &json!({"status": {}})));
    }
}
