//! [`PodInfo`]: what the scheduler knows about a pod — the object itself (shared with the
//! informer cache, never copied) and the facts every cycle needs precomputed: its requests,
//! host ports and priority.

use super::resources::Resources;
use crate::controller::ObjectKey;
use k8s_openapi::api::core::v1::Pod;
use std::sync::Arc;

/// A host port a pod claims: (protocol, host IP, port).
pub type HostPort = (String, String, i32);

/// A pod with its precomputed scheduling facts.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// Namespace and name.
    pub key: ObjectKey,
    /// The uid (a recreated pod is a different pod).
    pub uid: String,
    /// The pod as last seen.
    pub pod: Arc<Pod>,
    /// What it requests (one pod slot included).
    pub requests: Resources,
    /// The host ports it claims.
    pub host_ports: Vec<HostPort>,
    /// `spec.priority` (0 when unset).
    pub priority: i32,
}

impl PodInfo {
    /// The facts of `pod`.
    pub fn new(pod: Arc<Pod>) -> Self {
        let spec = pod.spec.as_ref();
        let host_ports = spec
            .map(|s| {
                s.containers
                    .iter()
                    .flat_map(|c| c.ports.iter().flatten())
                    .filter_map(|p| {
                        let port = p.host_port.filter(|hp| *hp > 0)?;
                        Some((
                            p.protocol.clone().unwrap_or_else(|| "TCP".into()),
                            p.host_ip.clone().unwrap_or_else(|| "0.0.0.0".into()),
                            port,
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        PodInfo {
            key: ObjectKey::of(pod.as_ref()),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            requests: Resources::of_pod(&pod),
            priority: spec.and_then(|s| s.priority).unwrap_or(0),
            host_ports,
            pod,
        }
    }

    /// `spec.nodeName`, when set.
    pub fn node_name(&self) -> Option<&str> {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
    }

    /// `spec.schedulerName` (`default-scheduler` when unset).
    pub fn scheduler_name(&self) -> &str {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.scheduler_name.as_deref())
            .filter(|n| !n.is_empty())
            .unwrap_or("default-scheduler")
    }

    /// Whether the pod has pod affinity or anti-affinity terms.
    pub fn has_pod_affinity(&self) -> bool {
        self.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
    }

    /// The pod's labels.
    pub fn labels(&self) -> std::collections::BTreeMap<String, String> {
        self.pod.metadata.labels.clone().unwrap_or_default()
    }
}
