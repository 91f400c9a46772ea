//! [`Snapshot`]: every schedulable node's [`NodeInfo`], updated incrementally as nodes and
//! pods change (and as the scheduler assumes placements), in a stable order so node sampling
//! can rotate through them.

use super::node_info::NodeInfo;
use super::pod_info::PodInfo;
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use std::collections::HashMap;
use std::sync::Arc;

/// The nodes and what is on them.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    nodes: Vec<NodeInfo>,
    /// Each node's generation, by the same index (read for every node every cycle, so kept
    /// apart from the large `NodeInfo`s).
    generations: Vec<u64>,
    by_name: HashMap<String, usize>,
    /// Pod uid -> node name and pod, for every placed pod (also those on nodes not known yet).
    placed: HashMap<String, (String, Arc<PodInfo>)>,
    /// The PodDisruptionBudgets (preemption prefers victims that do not break them).
    budgets: Vec<Arc<PodDisruptionBudget>>,
    /// Pending pods nominated to a node by preemption: node -> uid -> pod. Pods of lower or
    /// equal priority must leave them their room.
    nominated: HashMap<String, HashMap<String, Arc<PodInfo>>>,
    /// Counted pods with (anti-)affinity terms, over every node: when none, inter-pod affinity
    /// has nothing to look for among placed pods.
    affinity_pods: usize,
}

impl Snapshot {
    /// An empty snapshot.
    pub fn new() -> Self {
        Snapshot::default()
    }

    /// All nodes.
    pub fn nodes(&self) -> &[NodeInfo] {
        &self.nodes
    }

    /// How many pods counted on the nodes have inter-pod (anti-)affinity terms.
    pub fn affinity_pods(&self) -> usize {
        self.affinity_pods
    }

    /// Each node's [`NodeInfo::generation`], by index in [`nodes`](Self::nodes).
    pub fn generations(&self) -> &[u64] {
        &self.generations
    }

    /// A node by name.
    pub fn node(&self, name: &str) -> Option<&NodeInfo> {
        self.by_name.get(name).map(|&i| &self.nodes[i])
    }

    /// The node a pod is counted on.
    pub fn node_of(&self, uid: &str) -> Option<&str> {
        self.placed.get(uid).map(|(n, _)| n.as_str())
    }

    /// Adds or updates a node (its pods stay).
    pub fn upsert_node(&mut self, node: Arc<Node>) {
        let name = node.metadata.name.clone().unwrap_or_default();
        match self.by_name.get(&name) {
            Some(&i) => {
                self.nodes[i].set_node(node);
                self.generations[i] = self.nodes[i].generation();
            }
            None => {
                let mut info = NodeInfo::new(node);
                for (placed_on, pod) in self.placed.values() {
                    if *placed_on == name {
                        info.add_pod(pod.clone());
                    }
                }
                self.affinity_pods += info.affinity_pods;
                self.by_name.insert(name, self.nodes.len());
                self.generations.push(info.generation());
                self.nodes.push(info);
            }
        }
    }

    /// Removes a node.
    pub fn remove_node(&mut self, name: &str) {
        let Some(index) = self.by_name.remove(name) else {
            return;
        };
        // Its pods stay placed (on a node that is gone) until they are deleted.
        self.affinity_pods -= self.nodes[index].affinity_pods;
        self.nodes.swap_remove(index);
        self.generations.swap_remove(index);
        if let Some(moved) = self.nodes.get(index) {
            self.by_name.insert(moved.name.clone(), index);
        }
    }

    /// Counts a pod on `node` (moving it if it was counted elsewhere). A pod on a node the
    /// snapshot does not know is remembered but counted nowhere.
    pub fn add_pod(&mut self, node: &str, pod: Arc<PodInfo>) {
        self.remove_pod(&pod.uid);
        self.placed
            .insert(pod.uid.clone(), (node.to_string(), pod.clone()));
        if let Some(&i) = self.by_name.get(node) {
            self.affinity_pods -= self.nodes[i].affinity_pods;
            self.nodes[i].add_pod(pod);
            self.affinity_pods += self.nodes[i].affinity_pods;
            self.generations[i] = self.nodes[i].generation();
        }
    }

    /// Stops counting a pod.
    pub fn remove_pod(&mut self, uid: &str) -> Option<Arc<PodInfo>> {
        let (node, pod) = self.placed.remove(uid)?;
        if let Some(&i) = self.by_name.get(&node) {
            self.affinity_pods -= self.nodes[i].affinity_pods;
            self.nodes[i].remove_pod(uid);
            self.affinity_pods += self.nodes[i].affinity_pods;
            self.generations[i] = self.nodes[i].generation();
        }
        Some(pod)
    }

    /// Records (or with `None`, forgets) that a pending pod is nominated to a node.
    pub fn set_nominated(&mut self, pod: Arc<PodInfo>, node: Option<&str>) {
        for pods in self.nominated.values_mut() {
            pods.remove(&pod.uid);
        }
        self.nominated.retain(|_, pods| !pods.is_empty());
        if let Some(node) = node {
            self.nominated
                .entry(node.to_string())
                .or_default()
                .insert(pod.uid.clone(), pod);
        }
    }

    /// The pods nominated to `node` that a pod of `priority` (other than `uid`) must leave room
    /// for.
    pub fn nominated_for(&self, node: &str, priority: i32, uid: &str) -> Vec<Arc<PodInfo>> {
        self.nominated
            .get(node)
            .map(|pods| {
                pods.values()
                    .filter(|p| p.priority >= priority && p.uid != uid)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether any pod is nominated anywhere.
    pub fn has_nominations(&self) -> bool {
        !self.nominated.is_empty()
    }

    /// Replaces the PodDisruptionBudgets.
    pub fn set_disruption_budgets(&mut self, budgets: Vec<Arc<PodDisruptionBudget>>) {
        self.budgets = budgets;
    }

    /// The PodDisruptionBudgets.
    pub fn disruption_budgets(&self) -> &[Arc<PodDisruptionBudget>] {
        &self.budgets
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether there are no nodes.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Pod;
    use serde_json::json;

    fn node(name: &str) -> Arc<Node> {
        Arc::new(serde_json::from_value(json!({"metadata": {"name": name}})).expect("a node"))
    }

    fn pod(uid: &str, affinity: bool) -> Arc<PodInfo> {
        let mut spec = json!({"containers": [{"name": "c", "image": "i"}]});
        if affinity {
            spec["affinity"] = json!({"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
                {"labelSelector": {"matchLabels": {"app": "a"}}, "topologyKey": "kubernetes.io/hostname"}
            ]}});
        }
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": uid, "namespace": "default", "uid": uid},
            "spec": spec,
        }))
        .expect("a pod");
        Arc::new(PodInfo::new(Arc::new(pod)))
    }

    fn counted(snapshot: &Snapshot) -> usize {
        snapshot.nodes().iter().map(|n| n.affinity_pods).sum()
    }

    #[test]
    fn the_affinity_pod_count_follows_pods_and_nodes() {
        let mut s = Snapshot::new();
        s.upsert_node(node("a"));
        s.upsert_node(node("b"));
        s.add_pod("a", pod("p1", true));
        s.add_pod("a", pod("p2", false));
        s.add_pod("b", pod("p3", true));
        assert_eq!((s.affinity_pods(), counted(&s)), (2, 2));
        // Moving a pod, and placing one on a node not known yet.
        s.add_pod("b", pod("p1", true));
        s.add_pod("c", pod("p4", true));
        assert_eq!((s.affinity_pods(), counted(&s)), (2, 2));
        s.upsert_node(node("c"));
        assert_eq!((s.affinity_pods(), counted(&s)), (3, 3));
        s.remove_node("b");
        assert_eq!((s.affinity_pods(), counted(&s)), (1, 1));
        s.upsert_node(node("b"));
        assert_eq!((s.affinity_pods(), counted(&s)), (3, 3));
        s.remove_pod("p3");
        s.remove_pod("p4");
        s.remove_pod("p2");
        assert_eq!((s.affinity_pods(), counted(&s)), (1, 1));
    }
}
