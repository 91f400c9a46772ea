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
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

impl ScorePlugin for BalancedAllocation {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let fraction = |name: &str| {
            let (requested, allocatable) = usage(name, pod, node);
            if allocatable == 0 {
                None
            } else {
                Some((requested as f64 / allocatable as f64).min(1.0))
            }
        };
        let fractions: Vec<f64> = ["cpu", "memory"]
            .iter()
            .filter_map(|r| fraction(r))
            .collect();
        if fractions.is_empty() {
            return 0;
        }
        let mean = fractions.iter().sum::<f64>() / fractions.len() as f64;
        let variance = fractions
            .iter()
            .map(|f| (f - mean) * (f - mean))
            .sum::<f64>()
            / fractions.len() as f64;
        ((1.0 - variance.sqrt()) * MAX_NODE_SCORE as f64) as i64
    }
}
