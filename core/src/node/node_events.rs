//! The Events a node agent records about its own Node, as kubelet does: `Starting` when the
//! agent starts, and one for each condition whose status changes (`NodeReady`,
//! `NodeHasSufficientMemory`, …), which `kubectl describe node` lists.

use crate::controller::{EventRecorder, EventType};
use k8s_openapi::api::core::v1::ObjectReference;
use serde_json::Value;

/// The reference kubelet writes for its Node: the node's name doubles as its uid.
fn node_reference(name: &str) -> ObjectReference {
    ObjectReference {
        kind: Some("Node".into()),
        name: Some(name.into()),
        uid: Some(name.into()),
        ..Default::default()
    }
}

/// The reason kubelet records when condition `kind` turns `status`.
fn reason(kind: &str, status: &str) -> Option<&'static str> {
    Some(match (kind, status) {
        ("Ready", "True") => "NodeReady",
        ("Ready", "False") => "NodeNotReady",
        ("MemoryPressure", "False") => "NodeHasSufficientMemory",
        ("MemoryPressure", "True") => "NodeHasInsufficientMemory",
        ("DiskPressure", "False") => "NodeHasNoDiskPressure",
        ("DiskPressure", "True") => "NodeHasDiskPressure",
        ("PIDPressure", "False") => "NodeHasSufficientPID",
        ("PIDPressure", "True") => "NodeHasInsufficientPID",
        _ => return None,
    })
}

/// The reasons of the conditions in `current` whose status differs from `previous` (both
/// `status.conditions` arrays; a condition missing before counts as changed).
pub(crate) fn condition_changes(previous: Option<&Value>, current: &Value) -> Vec<&'static str> {
    let status_before = |kind: &str| {
        previous?
            .as_array()?
            .iter()
            .find(|c| c["type"] == kind)
            .and_then(|c| c["status"].as_str())
    };
    current
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|condition| {
            let kind = condition["type"].as_str()?;
            let status = condition["status"].as_str()?;
            (status_before(kind) != Some(status))
                .then(|| reason(kind, status))
                .flatten()
        })
        .collect()
}

/// Records that the agent of node `name` started.
pub(crate) fn record_starting(events: &EventRecorder, name: &str) {
    events.record(
        node_reference(name),
        EventType::Normal,
        "Starting",
        "Starting kubelet.",
    );
}

/// Records node `name`'s condition changes (from [`condition_changes`]).
pub(crate) fn record_changes(events: &EventRecorder, name: &str, reasons: &[&'static str]) {
    for reason in reasons {
        events.record(
            node_reference(name),
            EventType::Normal,
            reason,
            &format!("Node {name} status is now: {reason}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn only_changed_conditions_are_reported() {
        let healthy = json!([
            {"type": "MemoryPressure", "status": "False"},
            {"type": "DiskPressure", "status": "False"},
            {"type": "PIDPressure", "status": "False"},
            {"type": "Ready", "status": "True"},
        ]);
        assert_eq!(
            condition_changes(None, &healthy),
            [
                "NodeHasSufficientMemory",
                "NodeHasNoDiskPressure",
                "NodeHasSufficientPID",
                "NodeReady"
            ]
        );
        assert!(condition_changes(Some(&healthy), &healthy).is_empty());
        let unknown = json!([
            {"type": "MemoryPressure", "status": "Unknown"},
            {"type": "Ready", "status": "Unknown"},
        ]);
        assert_eq!(
            condition_changes(Some(&unknown), &healthy),
            [
                "NodeHasSufficientMemory",
                "NodeHasNoDiskPressure",
                "NodeHasSufficientPID",
                "NodeReady"
            ]
        );
        let pressed = json!([{"type": "MemoryPressure", "status": "True"}, {"type": "Ready", "status": "True"}]);
        assert_eq!(
            condition_changes(Some(&healthy), &pressed),
            ["NodeHasInsufficientMemory"]
        );
        // Conditions nobody names a reason for are not reported.
        assert!(condition_changes(None, &json!([{"type": "Custom", "status": "True"}])).is_empty());
    }
}
