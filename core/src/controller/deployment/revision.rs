//! What identifies a Deployment's revisions: the `pod-template-hash` of a pod template, the
//! `deployment.kubernetes.io/revision` annotation, and template equality ignoring the hash.

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use serde_json::Value;

/// The label (on ReplicaSets, their selectors and pods) naming the template's hash.
pub const POD_TEMPLATE_HASH: &str = "pod-template-hash";
/// The annotation holding a revision number.
pub const REVISION: &str = "deployment.kubernetes.io/revision";
/// The annotation recording the desired replicas of the Deployment when a ReplicaSet was scaled.
pub const DESIRED_REPLICAS: &str = "deployment.kubernetes.io/desired-replicas";
/// The annotation recording replicas + maxSurge when a ReplicaSet was scaled.
pub const MAX_REPLICAS: &str = "deployment.kubernetes.io/max-replicas";

/// Annotations of the Deployment that are not copied to its ReplicaSets.
const NOT_COPIED: [&str; 5] = [
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    DESIRED_REPLICAS,
    MAX_REPLICAS,
];

/// Whether a Deployment annotation is copied to its ReplicaSets (e.g. `kubernetes.io/change-cause`).
pub fn copied_annotation(key: &str) -> bool {
    !NOT_COPIED.contains(&key)
}

/// Removes nulls, empty objects and empty arrays, recursively: Kubernetes' Go types cannot tell
/// them from absent fields, so neither may template comparison (kubectl's `rollout undo` sends
/// `resources: {}` where the stored template has nothing).
fn prune_empty(value: &mut Value) -> bool {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !prune_empty(v));
            map.is_empty()
        }
        Value::Array(items) => {
            for item in items.iter_mut() {
                prune_empty(item);
            }
            items.is_empty()
        }
        Value::Null => true,
        _ => false,
    }
}

/// The template as JSON without the `pod-template-hash` label or empty fields.
fn without_hash(template: &PodTemplateSpec) -> Value {
    let mut value = serde_json::to_value(template).unwrap_or(Value::Null);
    prune_empty(&mut value);
    if let Some(labels) = value
        .pointer_mut("/metadata/labels")
        .and_then(Value::as_object_mut)
    {
        labels.remove(POD_TEMPLATE_HASH);
        if labels.is_empty() {
            if let Some(meta) = value
                .pointer_mut("/metadata")
                .and_then(Value::as_object_mut)
            {
                meta.remove("labels");
            }
        }
    }
    if value
        .pointer("/metadata")
        .and_then(Value::as_object)
        .is_some_and(|m| m.is_empty())
    {
        if let Some(object) = value.as_object_mut() {
            object.remove("metadata");
        }
    }
    value
}

/// Whether two templates are equal apart from the `pod-template-hash` label.
pub fn equal_ignoring_hash(a: &PodTemplateSpec, b: &PodTemplateSpec) -> bool {
    without_hash(a) == without_hash(b)
}

/// The `pod-template-hash` of a template: 32-bit FNV-1a over its JSON (and the collision
/// count, when there was a collision), written with the alphabet Kubernetes uses for generated
/// names (no vowels, so no words).
pub fn template_hash(template: &PodTemplateSpec, collision_count: Option<i32>) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    let mut feed = |bytes: &[u8]| {
        for &b in bytes {
            hash ^= b as u32;
            hash = hash.wrapping_mul(0x0100_0193);
        }
    };
    feed(without_hash(template).to_string().as_bytes());
    if let Some(count) = collision_count {
        feed(&count.to_le_bytes());
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    hash.to_string()
        .bytes()
        .map(|b| ALPHABET[b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A ReplicaSet's revision (0 when unset or invalid).
pub fn revision_of(rs: &ReplicaSet) -> i64 {
    rs.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(REVISION))
        .and_then(|r| r.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn template(labels: Value, image: &str) -> PodTemplateSpec {
        serde_json::from_value(json!({"metadata": {"labels": labels}, "spec": {"containers": [{"name": "c", "image": image}]}})).unwrap()
    }

    #[test]
    fn the_hash_ignores_the_hash_label_and_follows_the_template() {
        let a = template(json!({"app": "web"}), "web:1");
        let labelled = template(json!({"app": "web", POD_TEMPLATE_HASH: "xyz"}), "web:1");
        let b = template(json!({"app": "web"}), "web:2");
        assert!(equal_ignoring_hash(&a, &labelled));
        assert!(!equal_ignoring_hash(&a, &b));
        assert_eq!(template_hash(&a, None), template_hash(&labelled, None));
        assert_ne!(template_hash(&a, None), template_hash(&b, None));
        assert_ne!(template_hash(&a, None), template_hash(&a, Some(1)));
        // Empty fields are no difference.
        let mut explicit = a.clone();
        explicit.spec.as_mut().unwrap().containers[0].resources = Some(Default::default());
        assert!(equal_ignoring_hash(&a, &explicit));
        assert_eq!(template_hash(&a, None), template_hash(&explicit, None));
        assert!(template_hash(&a, None)
            .chars()
            .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c)));
    }
}
