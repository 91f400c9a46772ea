//! Patch metadata for the built-in kinds: which lists merge by which key, which primitive lists
//! merge as sets, and which keep only listed keys (`retainKeys`). Every list not named here is
//! replaced whole, as Kubernetes does for lists without a patch strategy.

use crate::registry::ResourceKind;

/// How a list field is patched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the original.
    Replace,
    /// Elements (objects) are matched by this key and merged; others are kept.
    MergeByKey(&'static str),
    /// A list of primitives merged as a set.
    MergePrimitives,
}

/// Whether strategic merge patch is defined for the kind (built-in kinds only; custom kinds get
/// JSON merge patch or JSON patch, as in Kubernetes).
pub fn supports_strategic_merge(kind: &ResourceKind) -> bool {
    matches!(
        kind.group.as_str(),
        "" | "apps"
            | "batch"
            | "autoscaling"
            | "policy"
            | "coordination.k8s.io"
            | "discovery.k8s.io"
            | "events.k8s.io"
            | "scheduling.k8s.io"
    )
}

/// Where a kind's pod spec sits, if it has one.
fn pod_spec_prefix(kind: &ResourceKind) -> Option<&'static [&'static str]> {
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Pod") => Some(&["spec"]),
        ("", "PodTemplate") => Some(&["template", "spec"]),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => Some(&["spec", "template", "spec"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template", "spec"]),
        _ => None,
    }
}

fn pod_spec_list(path: &[&str]) -> Option<ListStrategy> {
    use ListStrategy::*;
    let container = |rest: &[&str]| match rest {
        [] => Some(MergeByKey("name")),
        ["ports"] => Some(MergeByKey("containerPort")),
        ["env"] => Some(MergeByKey("name")),
        ["volumeMounts"] => Some(MergeByKey("mountPath")),
        ["volumeDevices"] => Some(MergeByKey("devicePath")),
        ["resizePolicy"] => Some(Replace),
        _ => None,
    };
    match path {
        ["containers", rest @ ..]
        | ["initContainers", rest @ ..]
        | ["ephemeralContainers", rest @ ..] => container(rest),
        ["volumes"] => Some(MergeByKey("name")),
        ["imagePullSecrets"] => Some(MergeByKey("name")),
        ["hostAliases"] => Some(MergeByKey("ip")),
        ["resourceClaims"] => Some(MergeByKey("name")),
        ["schedulingGates"] => Some(MergeByKey("name")),
        ["topologySpreadConstraints"] => Some(MergeByKey("topologyKey")),
        _ => None,
    }
}

/// The strategy of the list at `path` (field names from the object's root, list positions
/// left out) in an object of `kind`.
pub fn list_strategy(kind: &ResourceKind, path: &[&str]) -> ListStrategy {
    use ListStrategy::*;
    match path {
        ["metadata", "finalizers"] => return MergePrimitives,
        ["metadata", "ownerReferences"] => return MergeByKey("uid"),
        ["metadata", "managedFields"] => return Replace,
        ["status", "conditions"] => return MergeByKey("type"),
        _ => {}
    }
    if let Some(prefix) = pod_spec_prefix(kind) {
        if let Some(rest) = path.strip_prefix(prefix) {
            if let Some(strategy) = pod_spec_list(rest) {
                return strategy;
            }
        }
        // Templates also carry the pod's own metadata lists.
        if let Some(template) = prefix.strip_suffix(&["spec"]) {
            if path.strip_prefix(template) == Some(&["metadata", "finalizers"][..]) {
                return MergePrimitives;
            }
        }
    }
    match (kind.group.as_str(), kind.kind.as_str(), path) {
        ("", "Pod", ["status", "podIPs"]) => MergeByKey("ip"),
        ("", "Service", ["spec", "ports"]) => MergeByKey("port"),
        ("", "Node", ["status", "addresses"]) => MergeByKey("type"),
        ("", "Node", ["spec", "podCIDRs"]) => MergePrimitives,
        ("", "Namespace", ["spec", "finalizers"]) => MergePrimitives,
        ("", "ServiceAccount", ["secrets"]) => MergeByKey("name"),
        ("", "ServiceAccount", ["imagePullSecrets"]) => MergeByKey("name"),
        ("apps", "StatefulSet", ["spec", "volumeClaimTemplates"]) => Replace,
        _ => Replace,
    }
}
