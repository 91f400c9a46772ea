//! TaintToleration: a pod fits where it tolerates every NoSchedule and NoExecute taint;
//! nodes with fewer untolerated PreferNoSchedule taints score higher.

use crate::scheduler::framework::{
    CycleState, FilterPlugin, Plugin, Rejection, ScorePlugin, MAX_NODE_SCORE,
};
use crate::scheduler::{NodeInfo, PodInfo};
use crate::taints::tolerated;

/// Its name.
pub const NAME: &str = "TaintToleration";

/// The TaintToleration plugin.
pub struct TaintToleration;

fn tolerations(pod: &PodInfo) -> &[k8s_openapi::api::core::v1::Toleration] {
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default()
}

impl Plugin for TaintToleration {
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
}

impl FilterPlugin for TaintToleration {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
        let tolerations = tolerations(pod);
        let untolerated = node.taints.iter().find(|t| {
            (t.effect == "NoSchedule" || t.effect == "NoExecute") && !tolerated(tolerations, t)
        });
        match untolerated {
            None => Ok(()),
            Some(t) => Err(Rejection::unresolvable(
                NAME,
                format!(
                    "node(s) had untolerated taint {{{}: {}}}",
                    t.key,
                    t.value.as_deref().unwrap_or("")
                ),
            )),
        }
    }
}

impl ScorePlugin for TaintToleration {
    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let tolerations = tolerations(pod);
        node.taints
            .iter()
            .filter(|t| t.effect == "PreferNoSchedule" && !tolerated(tolerations, t))
            .count() as i64
    }

    /// Fewer untolerated taints score higher.
    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max == 0 {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE - *s * MAX_NODE_SCORE / max
            };
        }
    }
}
