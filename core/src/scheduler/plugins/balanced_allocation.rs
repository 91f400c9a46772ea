//! NodeResourcesBalancedAllocation: prefers nodes whose cpu and memory would be used in equal
//! fractions after placing the pod (score = (1 - standard deviation of the fractions) x 100).

use super::node_resources_fit::usage;
use crate::scheduler::framework::{CycleState, Plugin, ScorePlugin, MAX_NODE_SCORE};
use crate::scheduler::{NodeInfo, PodInfo};

/// Its name.
pub const NAME: &str = "NodeResourcesBalancedAllocation";

/// The NodeResourcesBalancedAllocation plugin.
pub struct BalancedAllocation;

impl Plugin for BalancedAllocation {
    fn name(&self) -> &str {
        NAME
    }
    fn node_local(&self) -> bool {
        true
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

impl ScorePlugin for BalancedAllocation {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let fraction = |name: &str| {
            let (requested, allocatable) = usage(name, pod, node);
            (allocatable != 0).then(|| (requested as f64 / allocatable as f64).min(1.0))
        };
        // The standard deviation of the cpu and memory fractions (of one when only one is
        // known: zero).
        let variance = match (fraction("cpu"), fraction("memory")) {
            (Some(cpu), Some(memory)) => {
                let mean = (cpu + memory) / 2.0;
                ((cpu - mean) * (cpu - mean) + (memory - mean) * (memory - mean)) / 2.0
            }
            (None, None) => return 0,
            _ => 0.0,
        };
        ((1.0 - variance.sqrt()) * MAX_NODE_SCORE as f64) as i64
    }
}
