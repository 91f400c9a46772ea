//! Protobuf messages of the scheduling policy kinds kubectl's typed commands send — `kubectl
//! create poddisruptionbudget` and `kubectl create priorityclass` on kubectl 1.33 — converted
//! to their JSON form. As in `protobuf_workloads`, a field left unconverted is refused, not
//! dropped.

use super::protobuf::metadata;
use super::protobuf_workloads::{
    consumed, int_or_string, label_selector, set_flag, Converted, Object,
};
use k8s_pb::api::policy::v1 as policy_v1;
use k8s_pb::api::scheduling::v1 as scheduling_v1;

/// policy/v1 PodDisruptionBudget: minAvailable or maxUnavailable, the selector, the unhealthy
/// pod eviction policy.
pub(super) fn pod_disruption_budget(mut pdb: policy_v1::PodDisruptionBudget) -> Converted {
    let spec = match pdb.spec.take() {
        None => None,
        Some(mut s) => {
            let value = Object::default()
                .set("minAvailable", int_or_string(s.min_available.take()))
                .set("maxUnavailable", int_or_string(s.max_unavailable.take()))
                .set("selector", label_selector(s.selector.take())?)
                .set(
                    "unhealthyPodEvictionPolicy",
                    s.unhealthy_pod_eviction_policy.take(),
                )
                .done();
            consumed(&s, "a pod disruption budget spec")?;
            Some(value)
        }
    };
    pdb.status = None;
    let value = Object::default()
        .set("metadata", Some(metadata(pdb.metadata.take())))
        .set("spec", spec)
        .done();
    consumed(&pdb, "a PodDisruptionBudget")?;
    Ok(value)
}

/// scheduling.k8s.io/v1 PriorityClass.
pub(super) fn priority_class(mut class: scheduling_v1::PriorityClass) -> Converted {
    let value = Object::default()
        .set("metadata", Some(metadata(class.metadata.take())))
        .set("value", class.value.take())
        .set("globalDefault", set_flag(class.global_default.take()))
        .set("description", class.description.take())
        .set("preemptionPolicy", class.preemption_policy.take())
        .done();
    consumed(&class, "a PriorityClass")?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
    use serde_json::json;

    fn meta(name: &str) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        })
    }

    #[test]
    fn budgets_and_priority_classes_convert() {
        let pdb = pod_disruption_budget(policy_v1::PodDisruptionBudget {
            metadata: meta("web"),
            spec: Some(policy_v1::PodDisruptionBudgetSpec {
                min_available: Some(IntOrString {
                    r#type: Some(1),
                    str_val: Some("50%".into()),
                    ..Default::default()
                }),
                selector: Some(LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            status: Some(Default::default()),
        })
        .unwrap();
        assert_eq!(pdb["metadata"]["name"], "web");
        assert_eq!(
            pdb["spec"],
            json!({"minAvailable": "50%", "selector": {"matchLabels": {"app": "web"}}})
        );
        let class = priority_class(scheduling_v1::PriorityClass {
            metadata: meta("high"),
            value: Some(1000),
            global_default: Some(false),
            description: Some(String::new()),
            preemption_policy: Some("Never".into()),
        })
        .unwrap();
        assert_eq!(class["metadata"]["name"], "high");
        assert_eq!(
            (&class["value"], &class["preemptionPolicy"]),
            (&json!(1000), &json!("Never"))
        );
        // Zero values are absent, as Go writes them out.
        assert!(class.get("globalDefault").is_none() && class.get("description").is_none());
    }
}
