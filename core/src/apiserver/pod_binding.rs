//! Binding a pod to a node, as the `pods/binding` subresource does: `spec.nodeName` set, the
//! `PodScheduled` condition made True, nothing else touched. A scheduler binds every pod it
//! places, so the common case edits the pod's stored JSON directly ([`bind_stored`]): only the
//! members on the path to the changed fields are parsed, and the rest of the pod is copied
//! through as it is, with no decode and re-encode of the whole object.

use serde_json::value::{to_raw_value, RawValue};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Why a pod cannot be bound.
#[derive(Debug, PartialEq)]
pub(super) enum Refusal {
    /// It is already bound to this node.
    AssignedTo(String),
    /// It is being deleted.
    Deleting,
}

/// An object's members with their values left as they are written.
type Members<'a> = BTreeMap<&'a str, &'a RawValue>;

/// The `PodScheduled` condition a binding at `now` (RFC 3339, seconds) sets.
fn scheduled_condition(now: &str) -> Value {
    json!({"type": "PodScheduled", "status": "True", "lastTransitionTime": now})
}

/// `conditions` with the `PodScheduled` condition replaced by a True one.
fn with_scheduled(mut conditions: Vec<Value>, now: &str) -> Vec<Value> {
    conditions.retain(|c| c["type"] != "PodScheduled");
    conditions.push(scheduled_condition(now));
    conditions
}

/// Binds a decoded pod in place (the caller counts the spec change in its generation).
pub(super) fn bind_value(pod: &mut Value, node: &str, now: &str) -> Result<(), Refusal> {
    if let Some(current) = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
    {
        return Err(Refusal::AssignedTo(current.to_string()));
    }
    if pod
        .pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return Err(Refusal::Deleting);
    }
    if !pod["spec"].is_object() {
        pod["spec"] = json!({});
    }
    pod["spec"]["nodeName"] = json!(node);
    if !pod["status"].is_object() {
        pod["status"] = json!({});
    }
    let conditions = match pod["status"]["conditions"].take() {
        Value::Array(conditions) => conditions,
        _ => Vec::new(),
    };
    pod["status"]["conditions"] = Value::Array(with_scheduled(conditions, now));
    Ok(())
}

/// Binds a pod given as its stored JSON (without a resourceVersion) and returns the JSON to
/// store, its generation counted up for the spec change; `None` when the JSON is not in a
/// shape this path reads (escaped member names, a non-object `metadata`, `spec` or `status`):
/// the caller then decodes the pod and uses [`bind_value`].
pub(super) fn bind_stored(
    stored: &[u8],
    node: &str,
    now: &str,
) -> Option<Result<bytes::Bytes, Refusal>> {
    let mut pod: Members = serde_json::from_slice(stored).ok()?;
    let mut metadata: Members = serde_json::from_str(pod.get("metadata")?.get()).ok()?;
    let mut spec: Members = match pod.get("spec") {
        Some(spec) => serde_json::from_str(spec.get()).ok()?,
        None => Members::new(),
    };
    let mut status: Members = match pod.get("status").filter(|s| s.get() != "null") {
        Some(status) => serde_json::from_str(status.get()).ok()?,
        None => Members::new(),
    };
    if let Some(current) = spec.get("nodeName") {
        let current: Option<String> = serde_json::from_str(current.get()).ok()?;
        if let Some(current) = current.filter(|c| !c.is_empty()) {
            return Some(Err(Refusal::AssignedTo(current)));
        }
    }
    if metadata
        .get("deletionTimestamp")
        .is_some_and(|t| t.get() != "null")
    {
        return Some(Err(Refusal::Deleting));
    }
    // As the decoded path counts it: 1 when unset or not an integer, then one more.
    let generation = metadata
        .get("generation")
        .and_then(|g| g.get().parse::<i64>().ok())
        .unwrap_or(1);
    let generation = to_raw_value(&(generation + 1)).ok()?;
    metadata.insert("generation", &generation);
    let node = to_raw_value(node).ok()?;
    spec.insert("nodeName", &node);
    let conditions: Vec<Value> = match status.get("conditions") {
        Some(conditions) => serde_json::from_str::<Option<Vec<Value>>>(conditions.get())
            .ok()?
            .unwrap_or_default(),
        None => Vec::new(),
    };
    let conditions = to_raw_value(&with_scheduled(conditions, now)).ok()?;
    status.insert("conditions", &conditions);
    let (metadata, spec, status) = (
        to_raw_value(&metadata).ok()?,
        to_raw_value(&spec).ok()?,
        to_raw_value(&status).ok()?,
    );
    pod.insert("metadata", &metadata);
    pod.insert("spec", &spec);
    pod.insert("status", &status);
    // In an allocation of its exact length: the store keeps it.
    Some(Ok(crate::storage::stored_json(&pod).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2026-12-04T10:00:00Z";

    /// What the decoded path stores: the pod bound in place, its generation counted up.
    fn by_value(pod: &Value, node: &str) -> Result<Value, Refusal> {
        let mut pod = pod.clone();
        bind_value(&mut pod, node, NOW)?;
        let generation = pod["metadata"]["generation"].as_i64().unwrap_or(1);
        pod["metadata"]["generation"] = json!(generation + 1);
        Ok(pod)
    }

    fn by_bytes(pod: &Value, node: &str) -> Option<Result<Value, Refusal>> {
        let stored = serde_json::to_vec(pod).unwrap();
        bind_stored(&stored, node, NOW)
            .map(|bound| bound.map(|json| serde_json::from_slice(&json).unwrap()))
    }

    #[test]
    fn both_paths_bind_alike() {
        let pods = [
            json!({"kind": "Pod", "metadata": {"name": "a", "generation": 1, "labels": {"app": "x"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}),
            json!({"kind": "Pod", "metadata": {"name": "b"}, "spec": {"nodeName": "", "containers": []}, "status": {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable"}, {"type": "Other", "status": "True"}]}}),
            json!({"kind": "Pod", "metadata": {"name": "c", "generation": 4, "deletionTimestamp": null}, "spec": {"nodeName": null}, "status": null}),
            json!({"kind": "Pod", "metadata": {"name": "d", "annotations": {"n\"ote": "é \u{1}"}}}),
            json!({"kind": "Pod", "metadata": {"name": "e"}, "spec": {}, "status": {"conditions": null}}),
        ];
        for pod in &pods {
            let bound = by_bytes(pod, "node-1").expect("read on the stored path");
            assert_eq!(bound, by_value(pod, "node-1"), "{pod}");
            let bound = bound.unwrap();
            assert_eq!(bound["spec"]["nodeName"], "node-1");
            let scheduled: Vec<&Value> = bound["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|c| c["type"] == "PodScheduled")
                .collect();
            assert_eq!(scheduled, [&scheduled_condition(NOW)], "{pod}");
        }
    }

    #[test]
    fn both_paths_refuse_alike() {
        let bound = json!({"metadata": {"name": "a"}, "spec": {"nodeName": "node-0"}});
        let deleting = json!({"metadata": {"name": "a", "deletionTimestamp": "2026-12-04T09:00:00Z"}, "spec": {}});
        for (pod, refusal) in [
            (bound, Refusal::AssignedTo("node-0".into())),
            (deleting, Refusal::Deleting),
        ] {
            assert_eq!(by_bytes(&pod, "node-1"), Some(Err(refusal)));
            assert!(by_value(&pod, "node-1").is_err());
        }
    }

    #[test]
    fn shapes_the_stored_path_does_not_read_are_left_to_the_decoded_path() {
        for stored in [
            &br#"{"metadata": 3, "spec": {}}"#[..],
            br#"{"metadata": {"name": "a"}, "spec": []}"#,
            br#"{"metadata": {"na\u006de": "a"}}"#,
            br#"{"spec": {}}"#,
            b"not json",
        ] {
            assert!(bind_stored(stored, "n", NOW).is_none(), "{stored:?}");
        }
    }
}
