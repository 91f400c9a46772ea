//! NodeResourcesFit: a pod fits where every resource it requests (cpu, memory,
//! ephemeral-storage, pod slots, extended resources) is still allocatable, and nodes are
//! scored by how much would be left (LeastAllocated, the default), used (MostAllocated), or by
//! a utilization-to-score curve (RequestedToCapacityRatio).

use crate::scheduler::framework::{
    CycleState, FilterPlugin, Plugin, Rejection, ScorePlugin, MAX_NODE_SCORE,
};
use crate::scheduler::resources::Resources;
use crate::scheduler::{NodeInfo, PodInfo};

/// Its name.
pub const NAME: &str = "NodeResourcesFit";

/// How nodes are scored.
#[derive(Debug, Clone, PartialEq)]
pub enum ScoringStrategy {
    /// Prefer nodes with the most left after placing the pod (spreads load).
    LeastAllocated,
    /// Prefer nodes with the least left (packs pods).
    MostAllocated,
    /// Score from utilization (0-100) by a piecewise-linear curve of (utilization, score 0-10)
    /// points.
    RequestedToCapacityRatio(Vec<(i64, i64)>),
}

/// The NodeResourcesFit plugin.
pub struct NodeResourcesFit {
    strategy: ScoringStrategy,
    /// Resources scored, with weights.
    resources: Vec<(String, i64)>,
}

impl Default for NodeResourcesFit {
    fn default() -> Self {
        NodeResourcesFit::new(ScoringStrategy::LeastAllocated)
    }
}

impl NodeResourcesFit {
    /// The plugin scoring cpu and memory (weight 1 each) with `strategy`.
    pub fn new(strategy: ScoringStrategy) -> Self {
        NodeResourcesFit {
            strategy,
            resources: vec![("cpu".into(), 1), ("memory".into(), 1)],
        }
    }

    /// Scores these resources with these weights instead.
    pub fn with_resources(mut self, resources: Vec<(String, i64)>) -> Self {
        self.resources = resources;
        self
    }
}

/// Every resource the pod requests more of than the node has left, as reasons.
pub fn insufficient(requests: &Resources, node: &NodeInfo) -> Vec<String> {
    let free = |alloc: i64, used: i64| alloc - used;
    let mut reasons = Vec::new();
    if node.requested.pods + 1 > node.allocatable.pods {
        reasons.push("Too many pods".to_string());
    }
    if requests.milli_cpu > 0
        && requests.milli_cpu > free(node.allocatable.milli_cpu, node.requested.milli_cpu)
    {
        reasons.push("Insufficient cpu".into());
    }
    if requests.memory > 0 && requests.memory > free(node.allocatable.memory, node.requested.memory)
    {
        reasons.push("Insufficient memory".into());
    }
    if requests.ephemeral_storage > 0
        && requests.ephemeral_storage
            > free(
                node.allocatable.ephemeral_storage,
                node.requested.ephemeral_storage,
            )
    {
        reasons.push("Insufficient ephemeral-storage".into());
    }
    for (name, amount) in &requests.scalar {
        let alloc = node.allocatable.scalar.get(name).copied().unwrap_or(0);
        let used = node.requested.scalar.get(name).copied().unwrap_or(0);
        if *amount > 0 && *amount > alloc - used {
            reasons.push(format!("Insufficient {name}"));
        }
    }
    reasons
}

/// (requested after placing the pod, allocatable) of one resource on a node. Pods without a
/// cpu or memory request count as asking for Kubernetes' defaults (100m, 200Mi) when scoring.
pub(crate) fn usage(name: &str, pod: &PodInfo, node: &NodeInfo) -> (i64, i64) {
    match name {
        "cpu" => {
            let req = if pod.requests.milli_cpu == 0 {
                100
            } else {
                pod.requests.milli_cpu
            };
            (node.requested.milli_cpu + req, node.allocatable.milli_cpu)
        }
        "memory" => {
            let req = if pod.requests.memory == 0 {
                200 * 1024 * 1024
            } else {
                pod.requests.memory
            };
            (node.requested.memory + req, node.allocatable.memory)
        }
        "ephemeral-storage" => (
            node.requested.ephemeral_storage + pod.requests.ephemeral_storage,
            node.allocatable.ephemeral_storage,
        ),
        other => (
            node.requested.scalar.get(other).copied().unwrap_or(0)
                + pod.requests.scalar.get(other).copied().unwrap_or(0),
            node.allocatable.scalar.get(other).copied().unwrap_or(0),
        ),
    }
}

fn curve(points: &[(i64, i64)], utilization: i64) -> i64 {
    let Some(first) = points.first() else {
        return 0;
    };
    if utilization <= first.0 {
        return first.1 * MAX_NODE_SCORE / 10;
    }
    for pair in points.windows(2) {
        let ((x0, y0), (x1, y1)) = (pair[0], pair[1]);
        if utilization <= x1 {
            let y = y0 + (y1 - y0) * (utilization - x0) / (x1 - x0).max(1);
            return y * MAX_NODE_SCORE / 10;
        }
    }
    points.last().map_or(0, |p| p.1 * MAX_NODE_SCORE / 10)
}

impl Plugin for NodeResourcesFit {
    fn name(&self) -> &str {
        NAME
    }
    fn node_local(&self) -> bool {
        true
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
    fn events_to_register(&self) -> Vec<crate::scheduler::ClusterEvent> {
        use crate::scheduler::framework::{Action, ClusterEvent, EventResource};
        vec![
            ClusterEvent::new(EventResource::Pod, Action::Delete),
            ClusterEvent::new(EventResource::Node, Action::Add),
            ClusterEvent::new(EventResource::Node, Action::Update),
        ]
    }
}

impl FilterPlugin for NodeResourcesFit {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
        let reasons = insufficient(&pod.requests, node);
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(Rejection::unschedulable(NAME, reasons))
        }
    }
}

impl ScorePlugin for NodeResourcesFit {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let mut total = 0;
        let mut weights = 0;
        for (name, weight) in &self.resources {
            let (requested, allocatable) = usage(name, pod, node);
            if allocatable == 0 {
                continue;
            }
            let requested = requested.min(allocatable);
            let score = match &self.strategy {
                ScoringStrategy::LeastAllocated => {
                    (allocatable - requested) * MAX_NODE_SCORE / allocatable
                }
                ScoringStrategy::MostAllocated => requested * MAX_NODE_SCORE / allocatable,
                ScoringStrategy::RequestedToCapacityRatio(points) => {
                    curve(points, requested * 100 / allocatable)
                }
            };
            total += score * weight;
            weights += weight;
        }
        if weights == 0 {
            0
        } else {
            total / weights
        }
    }
}
