//! Node admission: the agent's own re-check that a pod bound to it fits (resources, pod count,
//! host ports, node selector) before running it, so a stale scheduler decision fails the pod
//! with a reason instead of overcommitting the node.

use crate::quantity::Quantity;
use k8s_openapi::api::core::v1::Pod;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// What an admitted pod holds on the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct PodFootprint {
    pub cpu_millis: i64,
    pub memory_bytes: i64,
    pub host_ports: BTreeSet<(String, i32)>,
}

/// A refusal, as kubelet words it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Rejection {
    pub reason: String,
    pub message: String,
}

fn quantity(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    key: &str,
) -> Option<Quantity> {
    map.and_then(|m| m.get(key))
        .and_then(|q| Quantity::parse(&q.0).ok())
}

/// The resources and host ports a pod needs: the larger of the sum of its containers and its
/// largest init container, as the scheduler counts them.
pub(crate) fn footprint(pod: &Pod) -> PodFootprint {
    let Some(spec) = &pod.spec else {
        return PodFootprint::default();
    };
    let requests = |c: &k8s_openapi::api::core::v1::Container| {
        let r = c.resources.as_ref();
        let pick = |key| {
            quantity(r.and_then(|r| r.requests.as_ref()), key)
                .or_else(|| quantity(r.and_then(|r| r.limits.as_ref()), key))
        };
        (
            pick("cpu").map(|q| q.milli_value()).unwrap_or(0),
            pick("memory").map(|q| q.value()).unwrap_or(0),
        )
    };
    let mut out = PodFootprint::default();
    for container in &spec.containers {
        let (cpu, memory) = requests(container);
        out.cpu_millis += cpu;
        out.memory_bytes += memory;
        for port in container.ports.as_deref().unwrap_or_default() {
            if let Some(host_port) = port.host_port.filter(|p| *p > 0) {
                out.host_ports.insert((
                    port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                    host_port,
                ));
            }
        }
    }
    for init in spec.init_containers.as_deref().unwrap_or_default() {
        let (cpu, memory) = requests(init);
        out.cpu_millis = out.cpu_millis.max(cpu);
        out.memory_bytes = out.memory_bytes.max(memory);
    }
    out
}

/// Checks `pod` against the node's allocatable resources, labels and the pods already admitted.
pub(crate) fn admit(
    pod: &Pod,
    node_labels: &BTreeMap<String, String>,
    allocatable: &BTreeMap<String, String>,
    admitted: &HashMap<String, PodFootprint>,
) -> Result<PodFootprint, Rejection> {
    let wanted = footprint(pod);
    if let Some(selector) = pod.spec.as_ref().and_then(|s| s.node_selector.as_ref()) {
        if selector.iter().any(|(k, v)| node_labels.get(k) != Some(v)) {
            return Err(Rejection {
                reason: "NodeAffinity".into(),
                message: "Pod was rejected: Predicate NodeAffinity failed: node(s) didn't match Pod's node affinity/selector".into(),
            });
        }
    }
    let capacity = |key: &str, milli: bool| {
        allocatable
            .get(key)
            .and_then(|q| Quantity::parse(q).ok())
            .map(|q| if milli { q.milli_value() } else { q.value() })
    };
    let used_cpu: i64 = admitted.values().map(|f| f.cpu_millis).sum();
    let used_memory: i64 = admitted.values().map(|f| f.memory_bytes).sum();
    let checks = [
        ("cpu", wanted.cpu_millis, used_cpu, capacity("cpu", true)),
        (
            "memory",
            wanted.memory_bytes,
            used_memory,
            capacity("memory", false),
        ),
        ("pods", 1, admitted.len() as i64, capacity("pods", false)),
    ];
    for (resource, requested, used, capacity) in checks {
        if let Some(capacity) = capacity {
            if requested > 0 && used + requested > capacity {
                return Err(Rejection {
                    reason: format!("Out{resource}"),
                    message: format!(
                        "Pod was rejected: Node didn't have enough resource: {resource}, requested: {requested}, used: {used}, capacity: {capacity}"
                    ),
                });
            }
        }
    }
    for port in &wanted.host_ports {
        if admitted.values().any(|f| f.host_ports.contains(port)) {
            return Err(Rejection {
                reason: "NodePorts".into(),
                message: format!(
                    "Pod was rejected: Predicate NodePorts failed: host port {}/{} is in use",
                    port.1, port.0
                ),
            });
        }
    }
    Ok(wanted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(cpu: &str, host_port: Option<i32>) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "i",
                "resources": {"requests": {"cpu": cpu, "memory": "64Mi"}},
                "ports": host_port.map(|p| vec![json!({"containerPort": 80, "hostPort": p})]).unwrap_or_default()}]}
        }))
        .unwrap()
    }

    #[test]
    fn refuses_what_does_not_fit() {
        let allocatable = BTreeMap::from([
            ("cpu".to_string(), "1".to_string()),
            ("memory".to_string(), "1Gi".to_string()),
            ("pods".to_string(), "110".to_string()),
        ]);
        let labels = BTreeMap::new();
        let mut admitted = HashMap::new();
        let first = admit(&pod("600m", Some(8080)), &labels, &allocatable, &admitted).unwrap();
        assert_eq!(first.cpu_millis, 600);
        admitted.insert("a".to_string(), first);
        let err = admit(&pod("600m", None), &labels, &allocatable, &admitted).unwrap_err();
        assert_eq!(err.reason, "Outcpu");
        let err = admit(&pod("100m", Some(8080)), &labels, &allocatable, &admitted).unwrap_err();
        assert_eq!(err.reason, "NodePorts");
        assert!(admit(&pod("100m", Some(8081)), &labels, &allocatable, &admitted).is_ok());
    }
}
