//! NodeAffinity (with `nodeSelector`): a pod fits where its node selector's labels all match
//! and any one of its required node-selector terms matches (each term's expressions all
//! holding: In, NotIn, Exists, DoesNotExist, Gt, Lt; `matchFields` on `metadata.name`); nodes
//! are scored by the summed weights of the preferred terms they match, normalized to 0-100.

use crate::scheduler::framework::{
    CycleState, FilterPlugin, Plugin, Rejection, ScorePlugin, MAX_NODE_SCORE,
};
use crate::scheduler::{NodeInfo, PodInfo};
use k8s_openapi::api::core::v1::{NodeSelectorRequirement, NodeSelectorTerm};
use std::collections::BTreeMap;

/// Its name.
pub const NAME: &str = "NodeAffinity";

/// The NodeAffinity plugin.
pub struct NodeAffinity;

fn requirement_holds(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" => value.is_some_and(|v| values.iter().any(|x| x == v)),
        "NotIn" => value.is_none_or(|v| !values.iter().any(|x| x == v)),
        "Exists" => value.is_some(),
        "DoesNotExist" => value.is_none(),
        "Gt" | "Lt" => {
            let (Some(v), Some(bound)) = (
                value.and_then(|v| v.parse::<i64>().ok()),
                values.first().and_then(|b| b.parse::<i64>().ok()),
            ) else {
                return false;
            };
            if r.operator == "Gt" {
                v > bound
            } else {
                v < bound
            }
        }
        _ => false,
    }
}

/// Whether a node-selector term matches a node (an empty term matches nothing).
pub fn term_matches(
    term: &NodeSelectorTerm,
    labels: &BTreeMap<String, String>,
    name: &str,
) -> bool {
    let expressions = term.match_expressions.as_deref().unwrap_or_default();
    let fields = term.match_fields.as_deref().unwrap_or_default();
    if expressions.is_empty() && fields.is_empty() {
        return false;
    }
    expressions
        .iter()
        .all(|r| requirement_holds(r, labels.get(&r.key).map(String::as_str)))
        && fields.iter().all(|r| {
            let value = (r.key == "metadata.name").then_some(name);
            requirement_holds(r, value)
        })
}

/// Whether a pod's node selector and required node affinity admit a node.
pub fn required_matches(pod: &PodInfo, node: &NodeInfo) -> bool {
    let empty = BTreeMap::new();
    let labels = node.labels().unwrap_or(&empty);
    let Some(spec) = pod.pod.spec.as_ref() else {
        return true;
    };
    if let Some(selector) = &spec.node_selector {
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
            return false;
        }
    }
    let required = spec
        .affinity
        .as_ref()
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|na| {
            na.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    match required {
        None => true,
        Some(selector) => selector
            .node_selector_terms
            .iter()
            .any(|t| term_matches(t, labels, &node.name)),
    }
}

impl Plugin for NodeAffinity {
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

impl FilterPlugin for NodeAffinity {
    fn applies(&self, _: &CycleState, pod: &PodInfo) -> bool {
        pod.pod.spec.as_ref().is_some_and(|spec| {
            spec.node_selector.as_ref().is_some_and(|s| !s.is_empty())
                || spec
                    .affinity
                    .as_ref()
                    .and_then(|a| a.node_affinity.as_ref())
                    .is_some_and(|na| {
                        na.required_during_scheduling_ignored_during_execution
                            .is_some()
                    })
        })
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
        if required_matches(pod, node) {
            Ok(())
        } else {
            Err(Rejection::unresolvable(
                NAME,
                "node(s) didn't match Pod's node affinity/selector",
            ))
        }
    }
}

impl ScorePlugin for NodeAffinity {
    fn applies(&self, pod: &PodInfo) -> bool {
        pod.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .is_some_and(|t| !t.is_empty())
    }

    fn score(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64 {
        let empty = BTreeMap::new();
        let labels = node.labels().unwrap_or(&empty);
        pod.pod
            .spec
            .as_ref()
            .and_then(|s| s.affinity.as_ref())
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|na| {
                na.preferred_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|terms| {
                terms
                    .iter()
                    .filter(|t| term_matches(&t.preference, labels, &node.name))
                    .map(|t| t.weight as i64)
                    .sum()
            })
            .unwrap_or(0)
    }

    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        let max = scores.iter().copied().max().unwrap_or(0);
        if max > 0 {
            for s in scores.iter_mut() {
                *s = *s * MAX_NODE_SCORE / max;
            }
        }
    }
}
