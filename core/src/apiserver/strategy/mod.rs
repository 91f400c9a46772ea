//! Per-kind behaviour of the API core: defaulting, validation, and which part of an object the
//! main resource and the `status` subresource may change. Kinds without special rules get the
//! generic behaviour (metadata validation only).

mod builtin_types;
mod custom;
mod defaults;
mod field_validation;
mod typecheck;
mod validation;

pub use builtin_types::{visit_builtin, BuiltinVisitor};
pub use custom::prune_custom;
pub use defaults::apply_defaults;
pub use field_validation::{duplicate_fields, unknown_fields, FieldValidation};
pub use typecheck::check_types;
pub use validation::{validate_object, validate_update};

use crate::registry::ResourceKind;
use serde_json::Value;

/// Whether the kind keeps `status` apart from the rest (writes to the main resource keep the
/// stored status; writes to `/status` change nothing else).
pub fn has_status_subresource(kind: &ResourceKind) -> bool {
    kind.subresource("status").is_some()
}

/// Merges a write into the stored object according to the status/spec split: a main-resource
/// write keeps the stored `status`; a status write keeps everything but `status` (and
/// metadata's labels and annotations may not change through it either).
pub fn split_status(kind: &ResourceKind, stored: &Value, incoming: &mut Value, status_write: bool) {
    if !has_status_subresource(kind) {
        return;
    }
    if status_write {
        let status = incoming.get("status").cloned();
        let resource_version = incoming.pointer("/metadata/resourceVersion").cloned();
        *incoming = stored.clone();
        match status {
            Some(status) => incoming["status"] = status,
            None => {
                if let Some(map) = incoming.as_object_mut() {
                    map.remove("status");
                }
            }
        }
        if let (Some(rv), Some(meta)) = (
            resource_version,
            incoming.get_mut("metadata").and_then(Value::as_object_mut),
        ) {
            meta.insert("resourceVersion".into(), rv);
        }
    } else {
        match stored.get("status") {
            Some(status) => incoming["status"] = status.clone(),
            None => {
                if let Some(map) = incoming.as_object_mut() {
                    map.remove("status");
                }
            }
        }
    }
}
