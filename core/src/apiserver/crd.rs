//! CustomResourceDefinitions (apiextensions.k8s.io/v1): each served version of a definition is
//! served as a kind as soon as the definition is written (discovery, CRUD, watch, the status
//! and scale subresources, schema validation and pruning, printer columns), and deleting a
//! definition deletes its objects first (the `customresourcecleanup` finalizer), then the
//! kinds.
//!
//! The served kinds are the builder's registry plus every stored definition's kinds, rebuilt
//! by [`sync`] after every definition write on this server and on every change a watch on the
//! definitions sees (other API servers' writes included).

use super::handler::{delete_object, system_ctx, DeleteOptions};
use super::{ApiState, Cause};
use crate::registry::{CustomKind, PrinterColumn, Registry, ResourceKind, ScalePaths};
use crate::storage::ObjectEvent;
use crate::validation::{is_dns1123_label, is_dns1123_subdomain};
use futures::StreamExt;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// Held by every definition until its objects are gone.
pub(crate) const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

const GROUP: &str = "apiextensions.k8s.io";
const PLURAL: &str = "customresourcedefinitions";
const SUBRESOURCE_VERBS: &[&str] = &["get", "patch", "update"];

/// The server's bookkeeping for definitions.
#[derive(Default)]
pub(crate) struct Definitions {
    /// Serializes rebuilds of the served kinds.
    sync: tokio::sync::Mutex<()>,
    /// Definitions whose objects are being deleted.
    cleaning: std::sync::Mutex<HashSet<String>>,
}

/// Whether `kind` is the CustomResourceDefinition kind.
pub(crate) fn is_definition(kind: &ResourceKind) -> bool {
    kind.group == GROUP && kind.plural == PLURAL
}

fn text<'v>(value: &'v Value, pointer: &str) -> &'v str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// Validates a definition, with field paths as Kubernetes reports them.
pub(crate) fn validate_definition(crd: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let group = text(crd, "/spec/group");
    let plural = text(crd, "/spec/names/plural");
    let kind = text(crd, "/spec/names/kind");
    if group.is_empty() {
        causes.push(Cause::required("spec.group"));
    } else if is_dns1123_subdomain(group).is_err() || !group.contains('.') {
        causes.push(Cause::invalid(
            "spec.group",
            &json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        causes.push(Cause::required("spec.names.plural"));
    } else if is_dns1123_label(plural).is_err() {
        causes.push(Cause::invalid(
            "spec.names.plural",
            &json!(plural),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        ));
    }
    let singular = text(crd, "/spec/names/singular");
    if !singular.is_empty() && is_dns1123_label(singular).is_err() {
        causes.push(Cause::invalid(
            "spec.names.singular",
            &json!(singular),
            "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-'",
        ));
    }
    if kind.is_empty() {
        causes.push(Cause::required("spec.names.kind"));
    } else if !kind.starts_with(|c: char| c.is_ascii_uppercase()) {
        causes.push(Cause::invalid(
            "spec.names.kind",
            &json!(kind),
            "must start with an upper-case letter",
        ));
    }
    let name = text(crd, "/metadata/name");
    if !group.is_empty() && !plural.is_empty() && name != format!("{plural}.{group}") {
        causes.push(Cause::invalid(
            "metadata.name",
            &json!(name),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    match text(crd, "/spec/scope") {
        "Namespaced" | "Cluster" => {}
        "" => causes.push(Cause::required("spec.scope")),
        other => causes.push(Cause::not_supported(
            "spec.scope",
            &json!(other),
            &["Cluster", "Namespaced"],
        )),
    }
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if versions.is_empty() {
        causes.push(Cause::required("spec.versions"));
    }
    let mut seen = HashSet::new();
    for (i, version) in versions.iter().enumerate() {
        let path = format!("spec.versions[{i}]");
        let version_name = text(version, "/name");
        if version_name.is_empty() {
            causes.push(Cause::required(format!("{path}.name")));
        } else if is_dns1123_label(version_name).is_err() {
            causes.push(Cause::invalid(
                format!("{path}.name"),
                &json!(version_name),
                "must be a DNS-1123 label",
            ));
        } else if !seen.insert(version_name) {
            causes.push(Cause::duplicate(
                format!("{path}.name"),
                &json!(version_name),
            ));
        }
        if let Some(schema) = version.pointer("/schema/openAPIV3Schema") {
            if schema.get("type").and_then(Value::as_str) != Some("object") {
                causes.push(Cause::invalid(
                    format!("{path}.schema.openAPIV3Schema.type"),
                    schema.get("type").unwrap_or(&Value::Null),
                    "must be object at the root",
                ));
            }
        }
    }
    let storage = versions
        .iter()
        .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
        .count();
    if !versions.is_empty() && storage != 1 {
        causes.push(Cause::invalid(
            "spec.versions",
            &json!(storage),
            "must have exactly one version marked as storage version",
        ));
    }
    causes
}

/// Gives a new definition its cleanup finalizer.
pub(crate) fn prepare_create(crd: &mut Value) {
    let Some(meta) = crd.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let finalizers = meta.entry("finalizers").or_insert_with(|| json!([]));
    if let Some(list) = finalizers.as_array_mut() {
        if !list.iter().any(|f| f == CLEANUP_FINALIZER) {
            list.push(json!(CLEANUP_FINALIZER));
        }
    }
}

fn strings(value: &Value, pointer: &str) -> Vec<String> {
    value
        .pointer(pointer)
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

/// The kinds a definition serves, one per served version.
fn kinds_of(crd: &Value) -> Vec<ResourceKind> {
    let group = text(crd, "/spec/group");
    let kind_name = text(crd, "/spec/names/kind");
    let plural = text(crd, "/spec/names/plural");
    let namespaced = text(crd, "/spec/scope") == "Namespaced";
    let singular = match text(crd, "/spec/names/singular") {
        "" => kind_name.to_ascii_lowercase(),
        s => s.to_string(),
    };
    let short_names = strings(crd, "/spec/names/shortNames");
    let categories = strings(crd, "/spec/names/categories");
    let versions = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let mut kinds = Vec::new();
    for version in versions
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
    {
        let mut kind =
            ResourceKind::new(group, text(version, "/name"), kind_name, plural, namespaced);
        kind.singular = singular.clone();
        kind.short_names = short_names.clone();
        kind.categories = categories.clone();
        if version.pointer("/subresources/status").is_some() {
            kind = kind.with_subresource("status", SUBRESOURCE_VERBS);
        }
        let scale = version
            .pointer("/subresources/scale")
            .map(|scale| ScalePaths {
                spec_replicas: text(scale, "/specReplicasPath").to_string(),
                status_replicas: text(scale, "/statusReplicasPath").to_string(),
                label_selector: Some(text(scale, "/labelSelectorPath"))
                    .filter(|s| !s.is_empty())
                    .map(str::to_string),
            });
        if scale.is_some() {
            kind = kind.with_foreign_subresource(
                "scale",
                "autoscaling",
                "v1",
                "Scale",
                SUBRESOURCE_VERBS,
            );
        }
        let schema = version.pointer("/schema/openAPIV3Schema").cloned();
        kind.schema = schema.clone();
        let printer_columns = version
            .get("additionalPrinterColumns")
            .and_then(Value::as_array)
            .map(|columns| {
                columns
                    .iter()
                    .map(|c| PrinterColumn {
                        name: text(c, "/name").to_string(),
                        type_: text(c, "/type").to_string(),
                        json_path: text(c, "/jsonPath").to_string(),
                        description: text(c, "/description").to_string(),
                        priority: c.get("priority").and_then(Value::as_i64).unwrap_or(0),
                    })
                    .collect()
            })
            .unwrap_or_default();
        kind.custom = Some(Arc::new(CustomKind {
            definition: text(crd, "/metadata/name").to_string(),
            schema,
            printer_columns,
            scale,
        }));
        kinds.push(kind);
    }
    kinds
}

fn condition(type_: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({"type": type_, "status": if ok { "True" } else { "False" }, "reason": reason,
           "message": message,
           "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()})
}

/// The status a definition should have, given whether its names could be served.
fn desired_status(crd: &Value, conflict: Option<&str>) -> Value {
    let storage: Vec<Value> = crd
        .pointer("/spec/versions")
        .and_then(Value::as_array)
        .map(|v| {
            v.iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .filter_map(|v| v.get("name").cloned())
                .collect()
        })
        .unwrap_or_default();
    let mut stored_versions = crd
        .pointer("/status/storedVersions")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for version in storage {
        if !stored_versions.contains(&version) {
            stored_versions.push(version);
        }
    }
    let conditions = match conflict {
        None => vec![
            condition(
                "NamesAccepted",
                true,
                "NoConflicts",
                "no conflicts found for the names",
            ),
            condition(
                "Established",
                true,
                "InitialNamesAccepted",
                "the initial names have been accepted",
            ),
        ],
        Some(message) => vec![
            condition("NamesAccepted", false, "NameConflict", message),
            condition(
                "Established",
                false,
                "NotAccepted",
                "not all names are accepted",
            ),
        ],
    };
    let accepted = if conflict.is_none() {
        crd.pointer("/spec/names").cloned().unwrap_or(json!({}))
    } else {
        json!({"plural": "", "kind": ""})
    };
    json!({"conditions": conditions, "acceptedNames": accepted, "storedVersions": stored_versions})
}

/// Whether the stored status already says what `desired` says (times aside).
fn status_matches(crd: &Value, desired: &Value) -> bool {
    let brief = |status: Option<&Value>| {
        let conditions: Vec<(String, String)> = status
            .and_then(|s| s.get("conditions"))
            .and_then(Value::as_array)
            .map(|l| {
                l.iter()
                    .map(|c| (text(c, "/type").to_string(), text(c, "/status").to_string()))
                    .collect()
            })
            .unwrap_or_default();
        (
            conditions,
            status.and_then(|s| s.get("acceptedNames")).cloned(),
            status.and_then(|s| s.get("storedVersions")).cloned(),
        )
    };
    brief(crd.get("status")) == brief(Some(desired))
}

/// Rebuilds the served kinds from the stored definitions, records each definition's status,
/// and starts the cleanup of definitions being deleted. Returns the revision it read at.
pub(crate) async fn sync(state: &Arc<ApiState>) -> Option<crate::store::Revision> {
    let _serial = state.definitions.sync.lock().await;
    let base = state.base_registry.clone();
    let definition_kind = base.get(GROUP, "v1", PLURAL)?.clone();
    let listed = match state
        .storage
        .list(&definition_kind, None, None, None, None)
        .await
    {
        Ok(listed) => listed,
        Err(err) => {
            tracing::warn!(error = %err, "could not list CustomResourceDefinitions");
            return None;
        }
    };
    let mut registry: Registry = (*base).clone();
    for crd in &listed.items {
        let mut conflict = None;
        for kind in kinds_of(crd) {
            if let Err(err) = registry.register(kind) {
                conflict = Some(err.to_string());
            }
        }
        let name = text(crd, "/metadata/name").to_string();
        if crd
            .pointer("/metadata/deletionTimestamp")
            .is_some_and(|t| !t.is_null())
        {
            start_cleanup(state, name);
            continue;
        }
        let desired = desired_status(crd, conflict.as_deref());
        if !status_matches(crd, &desired) {
            let mut updated = crd.clone();
            updated["status"] = desired;
            if let Err(err) = state.storage.update(&definition_kind, updated).await {
                tracing::debug!(error = %err, definition = %name, "definition status not written; the next sync retries");
            }
        }
    }
    *state.registry.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(registry);
    Some(listed.revision)
}

/// Deletes every object of a definition being deleted, then lets the definition go.
fn start_cleanup(state: &Arc<ApiState>, name: String) {
    {
        let mut cleaning = state
            .definitions
            .cleaning
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if !cleaning.insert(name.clone()) {
            return;
        }
    }
    let weak = Arc::downgrade(state);
    let task = tokio::spawn(async move {
        let mut pause = Duration::from_millis(20);
        loop {
            let Some(state) = weak.upgrade() else { return };
            match cleanup_step(&state, &name).await {
                Ok(true) | Err(()) => {
                    state
                        .definitions
                        .cleaning
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&name);
                    return;
                }
                Ok(false) => {}
            }
            drop(state);
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    });
    state.own_task(task);
}

/// One pass of a definition's cleanup: `Ok(true)` once the definition is gone.
async fn cleanup_step(state: &Arc<ApiState>, name: &str) -> Result<bool, ()> {
    let base = state.base_registry.clone();
    let definition_kind = base.get(GROUP, "v1", PLURAL).cloned().ok_or(())?;
    let crd = match state.storage.get(&definition_kind, None, name).await {
        Ok(crd) => crd,
        Err(_) => return Ok(true),
    };
    let registry = state.registry();
    let served = kinds_of(&crd)
        .into_iter()
        .find_map(|k| registry.get(&k.group, &k.version, &k.plural).cloned());
    if let Some(kind) = served {
        let listed = state
            .storage
            .list(&kind, None, None, None, None)
            .await
            .map_err(|_| ())?;
        if !listed.items.is_empty() {
            for object in listed.items {
                if object
                    .pointer("/metadata/deletionTimestamp")
                    .is_some_and(|t| !t.is_null())
                {
                    continue;
                }
                let object_name = text(&object, "/metadata/name").to_string();
                let namespace = object
                    .pointer("/metadata/namespace")
                    .and_then(Value::as_str)
                    .map(str::to_string);
                let mut ctx = system_ctx(
                    state,
                    &registry,
                    &kind,
                    namespace.as_deref(),
                    &object_name,
                    "system:serviceaccount:kube-system:crd-cleanup",
                );
                if let Err(err) =
                    delete_object(&mut ctx, &object_name, object, &DeleteOptions::background())
                        .await
                {
                    if err.code != 404 && err.code != 409 {
                        tracing::warn!(error = %err.message, definition = %name, "could not delete a custom object");
                    }
                }
            }
            return Ok(false);
        }
    }
    // Nothing left: drop the finalizer; the definition goes once no finalizer holds it.
    let mut updated = crd.clone();
    if let Some(list) = updated
        .pointer_mut("/metadata/finalizers")
        .and_then(Value::as_array_mut)
    {
        list.retain(|f| f != CLEANUP_FINALIZER);
    }
    let remaining = updated
        .pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty());
    let result = if remaining {
        state
            .storage
            .update(&definition_kind, updated)
            .await
            .map(|_| ())
    } else {
        state
            .storage
            .delete(&definition_kind, None, name, None)
            .await
            .map(|_| ())
    };
    match result {
        Ok(()) => {
            sync(state).await;
            Ok(true)
        }
        Err(_) => Ok(false),
    }
}

/// Follows the stored definitions for the server's lifetime, rebuilding the served kinds on
/// every change.
pub(crate) fn start(state: &Arc<ApiState>) {
    let weak: Weak<ApiState> = Arc::downgrade(state);
    let task = tokio::spawn(async move {
        loop {
            let Some(state) = weak.upgrade() else { return };
            let Some(definition_kind) = state.base_registry.get(GROUP, "v1", PLURAL).cloned()
            else {
                return;
            };
            let Some(revision) = sync(&state).await else {
                drop(state);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            let stream = state.storage.watch(&definition_kind, None, revision).await;
            drop(state);
            let Ok(mut stream) = stream else {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            };
            while let Some(event) = stream.next().await {
                match event {
                    Ok(ObjectEvent::Progress(_)) => continue,
                    Ok(_) => {
                        let Some(state) = weak.upgrade() else { return };
                        sync(&state).await;
                    }
                    Err(_) => break,
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    state.own_task(task);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn crd() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                "versions": [{"name": "v1", "served": true, "storage": true,
                    "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas"}},
                    "additionalPrinterColumns": [{"name": "Size", "type": "integer", "jsonPath": ".spec.size"}],
                    "schema": {"openAPIV3Schema": {"type": "object"}}},
                    {"name": "v1beta1", "served": false, "storage": false}]}
        })
    }

    #[test]
    fn a_definition_serves_one_kind_per_served_version() {
        assert_eq!(validate_definition(&crd()), vec![]);
        let kinds = kinds_of(&crd());
        assert_eq!(kinds.len(), 1);
        let kind = &kinds[0];
        assert_eq!(
            (kind.group.as_str(), kind.version.as_str()),
            ("example.com", "v1")
        );
        assert_eq!(kind.singular, "widget");
        assert_eq!(kind.short_names, vec!["wd"]);
        assert!(kind.subresource("status").is_some() && kind.subresource("scale").is_some());
        let custom = kind.custom.as_ref().unwrap();
        assert_eq!(custom.printer_columns[0].json_path, ".spec.size");
        assert_eq!(
            custom.scale.as_ref().unwrap().spec_replicas,
            ".spec.replicas"
        );
    }

    #[test]
    fn bad_definitions_name_their_fields() {
        let mut bad = crd();
        bad["metadata"]["name"] = json!("widgets");
        bad["spec"]["scope"] = json!("Galaxy");
        bad["spec"]["versions"][0]["storage"] = json!(false);
        let fields: Vec<String> = validate_definition(&bad)
            .into_iter()
            .map(|c| c.field)
            .collect();
        assert_eq!(fields, vec!["metadata.name", "spec.scope", "spec.versions"]);
    }
}
