//! Facts about pods that several controllers read the same way: active, ready, available,
//! controller reference, and the order in which surplus pods are deleted.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use std::cmp::Ordering;
use std::time::Duration;

/// The owner reference marked `controller: true`, if any.
pub fn controller_of(meta: &kube::api::ObjectMeta) -> Option<&OwnerReference> {
    meta.owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
}

/// The controller reference `owner` puts on what it creates (`controller` and
/// `blockOwnerDeletion` set).
pub fn controller_reference<K: kube::Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        api_version: K::api_version(&()).into_owned(),
        kind: K::kind(&()).into_owned(),
        name: owner.meta().name.clone().unwrap_or_default(),
        uid: owner.meta().uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// Not finished (phase neither Succeeded nor Failed) and not being deleted.
pub fn is_active(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none() && !is_terminal(pod)
}

/// Phase Succeeded or Failed.
pub fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// Whether the pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Pod) -> bool {
    ready_since(pod).is_some()
}

/// How long the pod has been ready (`None` when it is not).
pub fn ready_since(pod: &Pod) -> Option<Duration> {
    let condition = pod
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Ready" && c.status == "True")?;
    let since = condition
        .last_transition_time
        .as_ref()
        .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0))
        .and_then(|d| Duration::try_from(d).ok())
        .unwrap_or_default();
    Some(since)
}

/// Ready for at least `min_ready` (Kubernetes' "available").
pub fn is_available(pod: &Pod, min_ready: Duration) -> bool {
    ready_since(pod).is_some_and(|since| min_ready.is_zero() || since >= min_ready)
}

/// When a ready pod that is not yet available becomes available.
pub fn available_in(pod: &Pod, min_ready: Duration) -> Option<Duration> {
    let since = ready_since(pod)?;
    (since < min_ready).then(|| min_ready - since)
}

fn phase_rank(pod: &Pod) -> u8 {
    match pod.status.as_ref().and_then(|s| s.phase.as_deref()) {
        Some("Pending") | None => 0,
        Some("Unknown") => 1,
        Some("Running") => 2,
        _ => 3,
    }
}

fn restarts(pod: &Pod) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).max().unwrap_or(0))
        .unwrap_or(0)
}

/// Orders pods so that the ones to delete first come first: unscheduled before scheduled,
/// Pending before Unknown before Running, not ready before ready, ready for less time first,
/// more restarts first, newer first.
pub fn deletion_order(a: &Pod, b: &Pod) -> Ordering {
    let assigned = |p: &Pod| {
        p.spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .is_some_and(|n| !n.is_empty())
    };
    assigned(a)
        .cmp(&assigned(b))
        .then_with(|| phase_rank(a).cmp(&phase_rank(b)))
        .then_with(|| is_ready(a).cmp(&is_ready(b)))
        .then_with(|| ready_since(a).cmp(&ready_since(b)))
        .then_with(|| restarts(b).cmp(&restarts(a)))
        .then_with(|| {
            let created = |p: &Pod| p.metadata.creation_timestamp.as_ref().map(|t| t.0);
            created(b).cmp(&created(a))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn surplus_pods_are_deleted_unscheduled_pending_not_ready_and_newest_first() {
        let unscheduled = pod(json!({"metadata": {"name": "u"}, "spec": {"containers": []}}));
        let pending = pod(
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Pending"}}),
        );
        let not_ready = pod(
            json!({"metadata": {"name": "r"}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running"}}),
        );
        let ready = |name: &str, created: &str| {
            pod(
                json!({"metadata": {"name": name, "creationTimestamp": created}, "spec": {"nodeName": "n", "containers": []}, "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2020-01-01T00:00:00Z"}]}}),
            )
        };
        let old = ready("old", "2020-01-01T00:00:00Z");
        let new = ready("new", "2021-01-01T00:00:00Z");
        let mut pods = [old, new, not_ready, pending, unscheduled];
        pods.sort_by(deletion_order);
        let names: Vec<_> = pods
            .iter()
            .map(|p| p.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["u", "p", "r", "new", "old"]);
    }
}
