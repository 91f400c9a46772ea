//! Integer resource amounts: milli-CPU, bytes of memory and ephemeral storage, pod slots, and
//! extended resources (such as `example.com/gpu`) by interned name. What a pod requests and what
//! a node can allocate are both [`Resources`], so fitting is integer arithmetic.

use crate::quantity::Quantity;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use std::collections::BTreeMap;

/// Amounts of every resource the scheduler counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Resources {
    /// CPU in millicores.
    pub milli_cpu: i64,
    /// Memory in bytes.
    pub memory: i64,
    /// Ephemeral storage in bytes.
    pub ephemeral_storage: i64,
    /// Pod slots (allocatable only; a pod takes one).
    pub pods: i64,
    /// Extended resources by name, in units.
    pub scalar: BTreeMap<String, i64>,
}

fn amount(name: &str, q: &ApiQuantity) -> i64 {
    let Ok(parsed) = Quantity::try_from(q) else {
        return 0;
    };
    if name == "cpu" {
        parsed.milli_value()
    } else {
        parsed.value()
    }
}

impl Resources {
    /// Amounts from a resource list (`requests`, `allocatable`).
    pub fn from_list(list: &BTreeMap<String, ApiQuantity>) -> Self {
        let mut r = Resources::default();
        for (name, q) in list {
            let v = amount(name, q);
            match name.as_str() {
                "cpu" => r.milli_cpu = v,
                "memory" => r.memory = v,
                "ephemeral-storage" => r.ephemeral_storage = v,
                "pods" => r.pods = v,
                // hugepages and extended resources (namespaced names) are counted by name.
                other if other.contains('/') || other.starts_with("hugepages-") => {
                    r.scalar.insert(other.to_string(), v);
                }
                _ => {}
            }
        }
        r
    }

    /// Adds `other` to these amounts.
    pub fn add(&mut self, other: &Resources) {
        self.milli_cpu += other.milli_cpu;
        self.memory += other.memory;
        self.ephemeral_storage += other.ephemeral_storage;
        self.pods += other.pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_insert(0) += v;
        }
    }

    /// Subtracts `other` from these amounts.
    pub fn sub(&mut self, other: &Resources) {
        self.milli_cpu -= other.milli_cpu;
        self.memory -= other.memory;
        self.ephemeral_storage -= other.ephemeral_storage;
        self.pods -= other.pods;
        for (k, v) in &other.scalar {
            *self.scalar.entry(k.clone()).or_insert(0) -= v;
        }
    }

    /// Each amount the larger of the two.
    fn max_with(&mut self, other: &Resources) {
        self.milli_cpu = self.milli_cpu.max(other.milli_cpu);
        self.memory = self.memory.max(other.memory);
        self.ephemeral_storage = self.ephemeral_storage.max(other.ephemeral_storage);
        for (k, v) in &other.scalar {
            let e = self.scalar.entry(k.clone()).or_insert(0);
            *e = (*e).max(*v);
        }
    }

    /// What a pod requests: the sum of its containers' requests, or its largest init
    /// container's when that is more (init containers run one at a time), plus its overhead;
    /// one pod slot.
    pub fn of_pod(pod: &Pod) -> Self {
        let mut total = Resources::default();
        let Some(spec) = pod.spec.as_ref() else {
            return total;
        };
        for c in &spec.containers {
            if let Some(req) = c.resources.as_ref().and_then(|r| r.requests.as_ref()) {
                total.add(&Resources::from_list(req));
            }
        }
        for c in spec.init_containers.iter().flatten() {
            if let Some(req) = c.resources.as_ref().and_then(|r| r.requests.as_ref()) {
                total.max_with(&Resources::from_list(req));
            }
        }
        if let Some(overhead) = spec.overhead.as_ref() {
            total.add(&Resources::from_list(overhead));
        }
        total.pods = 1;
        total
    }

    /// What a node can allocate (`status.allocatable`, else `status.capacity`).
    pub fn of_node(node: &Node) -> Self {
        let status = node.status.as_ref();
        status
            .and_then(|s| s.allocatable.as_ref().or(s.capacity.as_ref()))
            .map(Resources::from_list)
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pod_requests_sum_containers_and_take_the_largest_init_container() {
        let pod: Pod = serde_json::from_value(json!({"spec": {
            "containers": [
                {"name": "a", "resources": {"requests": {"cpu": "250m", "memory": "64Mi"}}},
                {"name": "b", "resources": {"requests": {"cpu": "0.5", "example.com/gpu": "1"}}},
            ],
            "initContainers": [{"name": "i", "resources": {"requests": {"cpu": "2", "memory": "1Mi"}}}],
        }}))
        .unwrap();
        let r = Resources::of_pod(&pod);
        assert_eq!(r.milli_cpu, 2000);
        assert_eq!(r.memory, 64 * 1024 * 1024);
        assert_eq!(r.scalar["example.com/gpu"], 1);
        assert_eq!(r.pods, 1);
    }
}
