//! [`NodeInfo`]: one node as the scheduler sees it — the Node (shared, not copied), what it can
//! allocate, what its pods (bound and assumed) request, the host ports they hold and the images
//! it has, kept up to date incrementally as pods come and go.

use super::pod_info::{HostPort, PodInfo};
use super::resources::Resources;
use k8s_openapi::api::core::v1::{Node, Taint};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The source of node generations: every change to any [`NodeInfo`] takes the next one, so a
/// generation names one state of one node.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(1);

fn next_generation() -> u64 {
    NEXT_GENERATION.fetch_add(1, Ordering::Relaxed)
}

/// A node and what is on it.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    /// The node's name.
    pub name: String,
    /// The Node as last seen.
    pub node: Arc<Node>,
    /// What the node can allocate.
    pub allocatable: Resources,
    /// What its pods request.
    pub requested: Resources,
    /// Its pods, by uid.
    pub pods: HashMap<String, Arc<PodInfo>>,
    /// Host ports in use, with how many pods hold each.
    pub used_ports: HashMap<HostPort, u32>,
    /// Images present on the node, with their sizes in bytes.
    pub images: HashMap<String, i64>,
    /// The node's taints.
    pub taints: Vec<Taint>,
    /// How many of its pods have pod affinity or anti-affinity (so affinity checks can skip
    /// nodes without any).
    pub affinity_pods: usize,
    /// `spec.unschedulable`, read once per Node update (filters ask for every node).
    cordoned: bool,
    /// This state's generation (see [`NodeInfo::generation`]).
    generation: u64,
}

impl NodeInfo {
    /// A node with no pods.
    pub fn new(node: Arc<Node>) -> Self {
        let mut info = NodeInfo {
            name: node.metadata.name.clone().unwrap_or_default(),
            node: node.clone(),
            allocatable: Resources::default(),
            requested: Resources::default(),
            pods: HashMap::new(),
            used_ports: HashMap::new(),
            images: HashMap::new(),
            taints: Vec::new(),
            affinity_pods: 0,
            cordoned: false,
            generation: next_generation(),
        };
        info.set_node(node);
        info
    }

    /// Replaces the Node (its allocatable, taints, images, labels), keeping the pods.
    pub fn set_node(&mut self, node: Arc<Node>) {
        self.generation = next_generation();
        self.allocatable = Resources::of_node(&node);
        self.taints = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        self.images = node
            .status
            .as_ref()
            .and_then(|s| s.images.as_ref())
            .map(|images| {
                images
                    .iter()
                    .flat_map(|i| {
                        let size = i.size_bytes.unwrap_or(0);
                        i.names.iter().flatten().map(move |n| (n.clone(), size))
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.cordoned = node
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false);
        self.node = node;
    }

    /// The node's labels.
    pub fn labels(&self) -> Option<&std::collections::BTreeMap<String, String>> {
        self.node.metadata.labels.as_ref()
    }

    /// Names this state of the node: unique among all nodes, and changed by every
    /// [`set_node`](Self::set_node), [`add_pod`](Self::add_pod) and
    /// [`remove_pod`](Self::remove_pod) (results computed from the node stay valid while it
    /// is the same).
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `spec.unschedulable` is set.
    pub fn unschedulable(&self) -> bool {
        self.cordoned
    }

    /// Counts a pod on this node (replacing an older state of the same pod).
    pub fn add_pod(&mut self, pod: Arc<PodInfo>) {
        self.remove_pod(&pod.uid);
        self.generation = next_generation();
        self.requested.add(&pod.requests);
        if pod.has_pod_affinity() {
            self.affinity_pods += 1;
        }
        for port in &pod.host_ports {
            *self.used_ports.entry(port.clone()).or_insert(0) += 1;
        }
        self.pods.insert(pod.uid.clone(), pod);
    }

    /// Stops counting a pod; returns it when it was counted.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let pod = self.pods.remove(uid)?;
        self.generation = next_generation();
        self.requested.sub(&pod.requests);
        if pod.has_pod_affinity() {
            self.affinity_pods -= 1;
        }
        for port in &pod.host_ports {
            if let Some(n) = self.used_ports.get_mut(port) {
                *n -= 1;
                if *n == 0 {
                    self.used_ports.remove(port);
                }
            }
        }
        Some(pod)
    }

    /// Whether a host port conflicts with one in use (the same port and protocol on the same
    /// or a wildcard address).
    pub fn port_conflicts(&self, wanted: &HostPort) -> bool {
        let wildcard = |ip: &str| ip == "0.0.0.0" || ip.is_empty() || ip == "::";
        self.used_ports.keys().any(|(proto, ip, port)| {
            *port == wanted.2
                && *proto == wanted.0
                && (ip == &wanted.1 || wildcard(ip) || wildcard(&wanted.1))
        })
    }

    /// Labels interned: the set of `key=value` pairs, for quick membership tests.
    pub fn label_pairs(&self) -> HashSet<(String, String)> {
        self.labels()
            .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default()
    }
}
