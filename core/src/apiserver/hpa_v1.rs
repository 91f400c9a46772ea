//! autoscaling/v1 HorizontalPodAutoscalers, served by conversion to and from the stored
//! autoscaling/v2 form (what `kubectl autoscale` and older manifests use). A v1 request is
//! rewritten to its v2 path — bodies converted up, responses (objects, lists, watch events)
//! converted down — so storage, validation and the watch cache see one version. As
//! Kubernetes does, what v1 cannot express (other metrics, behavior, conditions) travels in
//! `autoscaling.alpha.kubernetes.io/*` annotations, so a v1 round trip loses nothing.

use super::version_view::VersionView;
use serde_json::{json, Map, Value};

/// autoscaling/v1 HorizontalPodAutoscalers, served through the stored autoscaling/v2 ones.
pub(crate) static VIEW: VersionView = VersionView {
    served_prefix: "/apis/autoscaling/v1/",
    stored_prefix: "/apis/autoscaling/v2/",
    served_api_version: "autoscaling/v1",
    plural: "horizontalpodautoscalers",
    kind: "HorizontalPodAutoscaler",
    up,
    down,
    renamed_fields: &[],
};
const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

fn is_cpu_utilization(metric: &Value) -> bool {
    metric["type"] == "Resource"
        && metric["resource"]["name"] == "cpu"
        && metric["resource"]["target"]["type"] == "Utilization"
}

fn annotations(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    if !object["metadata"]["annotations"].is_object() {
        object["metadata"]["annotations"] = json!({});
    }
    object["metadata"]["annotations"]
        .as_object_mut()
        .expect("just made an object")
}

fn tidy_annotations(object: &mut Value) {
    if object["metadata"]["annotations"]
        .as_object()
        .is_some_and(Map::is_empty)
    {
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("annotations");
        }
    }
}

fn take_json_annotation(object: &mut Value, key: &str) -> Option<Value> {
    let text = annotations(object).remove(key)?;
    serde_json::from_str(text.as_str()?).ok()
}

/// An autoscaling/v1 HorizontalPodAutoscaler as autoscaling/v2.
pub fn up(mut object: Value) -> Value {
    object["apiVersion"] = json!("autoscaling/v2");
    let mut metrics: Vec<Value> = Vec::new();
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(percent) = spec
            .remove("targetCPUUtilizationPercentage")
            .filter(|v| !v.is_null())
        {
            metrics.push(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}}}));
        }
    }
    if let Some(Value::Array(others)) = take_json_annotation(&mut object, METRICS) {
        metrics.extend(others);
    }
    if !metrics.is_empty() {
        object["spec"]["metrics"] = Value::Array(metrics);
    }
    if let Some(behavior) = take_json_annotation(&mut object, BEHAVIOR) {
        object["spec"]["behavior"] = behavior;
    }
    let conditions = take_json_annotation(&mut object, CONDITIONS);
    let current_others = take_json_annotation(&mut object, CURRENT_METRICS);
    if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
        let mut current: Vec<Value> = Vec::new();
        if let Some(percent) = status
            .remove("currentCPUUtilizationPercentage")
            .filter(|v| !v.is_null())
        {
            current.push(json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": percent}}}));
        }
        if let Some(Value::Array(others)) = current_others {
            current.extend(others);
        }
        if !current.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(conditions) = conditions {
            status.insert("conditions".into(), conditions);
        }
    }
    tidy_annotations(&mut object);
    object
}

/// An autoscaling/v2 HorizontalPodAutoscaler as autoscaling/v1.
pub fn down(mut object: Value) -> Value {
    object["apiVersion"] = json!("autoscaling/v1");
    let mut extra: Vec<(&str, Value)> = Vec::new();
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        let metrics = match spec.remove("metrics") {
            Some(Value::Array(m)) => m,
            _ => Vec::new(),
        };
        let (cpu, others): (Vec<Value>, Vec<Value>) =
            metrics.into_iter().partition(is_cpu_utilization);
        if let Some(percent) = cpu
            .first()
            .map(|m| m["resource"]["target"]["averageUtilization"].clone())
        {
            spec.insert("targetCPUUtilizationPercentage".into(), percent);
        }
        if !others.is_empty() {
            extra.push((METRICS, Value::Array(others)));
        }
        if let Some(behavior) = spec.remove("behavior").filter(|b| !b.is_null()) {
            extra.push((BEHAVIOR, behavior));
        }
    }
    if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
        let current = match status.remove("currentMetrics") {
            Some(Value::Array(m)) => m,
            _ => Vec::new(),
        };
        let (cpu, others): (Vec<Value>, Vec<Value>) = current.into_iter().partition(|m| {
            m["type"] == "Resource"
                && m["resource"]["name"] == "cpu"
                && !m["resource"]["current"]["averageUtilization"].is_null()
        });
        if let Some(percent) = cpu
            .first()
            .map(|m| m["resource"]["current"]["averageUtilization"].clone())
        {
            status.insert("currentCPUUtilizationPercentage".into(), percent);
        }
        if !others.is_empty() {
            extra.push((CURRENT_METRICS, Value::Array(others)));
        }
        if let Some(conditions) = status.remove("conditions").filter(|c| !c.is_null()) {
            extra.push((CONDITIONS, conditions));
        }
    }
    for (key, value) in extra {
        annotations(&mut object).insert(key.into(), json!(value.to_string()));
    }
    object
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_convert_both_ways_without_loss() {
        let v2 = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
            },
            "status": {"currentReplicas": 2, "desiredReplicas": 3,
                       "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 75}}}],
                       "conditions": [{"type": "AbleToScale", "status": "True"}]},
        });
        let v1 = down(v2.clone());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 75);
        assert!(v1["spec"].get("metrics").is_none());
        assert!(v1["metadata"]["annotations"][METRICS]
            .as_str()
            .unwrap()
            .contains("memory"));
        assert_eq!(up(v1), v2);
        // A plain v1 object.
        let plain = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "a"},
                           "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "a"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 80}});
        let upgraded = up(plain.clone());
        assert_eq!(
            upgraded["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert_eq!(down(upgraded), plain);
    }

    #[test]
    fn only_v1_hpa_paths_are_converted() {
        assert!(VIEW.serves("/apis/autoscaling/v1/namespaces/x/horizontalpodautoscalers"));
        assert!(VIEW.serves("/apis/autoscaling/v1/horizontalpodautoscalers"));
        assert!(VIEW.serves("/apis/autoscaling/v1/watch/namespaces/x/horizontalpodautoscalers/a"));
        assert!(!VIEW.serves("/apis/autoscaling/v2/namespaces/x/horizontalpodautoscalers"));
        assert!(!VIEW.serves("/apis/apps/v1/namespaces/x/deployments/a/scale"));
    }
}
