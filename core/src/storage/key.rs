//! The storage key layout: `/<group or core>/<plural>/<namespace>/<name>`.

use super::StorageError;
use crate::registry::ResourceKind;
use crate::validation::{is_dns1123_label, is_path_segment_name};

fn group_segment(kind: &ResourceKind) -> &str {
    if kind.group.is_empty() {
        "core"
    } else {
        &kind.group
    }
}

/// The key prefix of a kind, or of a kind within one namespace.
pub fn object_prefix(kind: &ResourceKind, namespace: Option<&str>) -> Result<String, StorageError> {
    let base = format!("/{}/{}/", group_segment(kind), kind.plural);
    match namespace.filter(|ns| !ns.is_empty()) {
        Some(ns) if kind.namespaced => {
            is_dns1123_label(ns)
                .map_err(|e| StorageError::invalid("metadata.namespace", &e[0].0))?;
            Ok(format!("{base}{ns}/"))
        }
        Some(_) => Err(StorageError::invalid(
            "metadata.namespace",
            &format!("{} is not namespaced", kind.resource_name()),
        )),
        None => Ok(base),
    }
}

/// The key of one object.
pub fn object_key(
    kind: &ResourceKind,
    namespace: Option<&str>,
    name: &str,
) -> Result<String, StorageError> {
    if name.is_empty() {
        return Err(StorageError::invalid(
            "metadata.name",
            "name or generateName is required",
        ));
    }
    is_path_segment_name(name).map_err(|e| StorageError::invalid("metadata.name", &e[0].0))?;
    if kind.namespaced && namespace.is_none_or(str::is_empty) {
        return Err(StorageError::invalid(
            "metadata.namespace",
            &format!(
                "{} is namespaced: a namespace is required",
                kind.resource_name()
            ),
        ));
    }
    let key = format!("{}{name}", object_prefix(kind, namespace)?);
    crate::store::validate_key(&key)
        .map_err(|e| StorageError::invalid("metadata.name", &e.to_string()))?;
    Ok(key)
}
