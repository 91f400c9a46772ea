//! PodTopologySpread: spreads matching pods evenly over topology domains (nodes with the same
//! value of `topologyKey`). A `DoNotSchedule` constraint filters out nodes where placing the pod
//! would make the domain's count exceed the smallest domain's by more than `maxSkew`; a
//! `ScheduleAnyway` constraint prefers the least loaded domains. Domains are the nodes that
//! carry the key and admit the pod by its node selector and affinity.

use super::node_affinity::required_matches;
use crate::scheduler::framework::{
    Action, ClusterEvent, CycleState, EventResource, FilterPlugin, Plugin, PreFilterPlugin,
    PreScore, PreScorePlugin, Rejection, ScorePlugin, MAX_NODE_SCORE,
};
use crate::scheduler::{NodeInfo, PodInfo, Snapshot};
use crate::selector::LabelSelector;
use std::collections::HashMap;

/// Its name.
pub const NAME: &str = "PodTopologySpread";

/// The PodTopologySpread plugin.
pub struct PodTopologySpread;

#[derive(Clone)]
struct Constraint {
    max_skew: i64,
    key: String,
    selector: LabelSelector,
    hard: bool,
    /// Matching pods per domain value.
    counts: HashMap<String, i64>,
    /// Whether the incoming pod itself matches the selector.
    self_match: i64,
}

impl Constraint {
    fn min(&self) -> i64 {
        self.counts.values().copied().min().unwrap_or(0)
    }
}

#[derive(Clone, Default)]
struct SpreadState {
    constraints: Vec<Constraint>,
}

fn constraints_of(pod: &PodInfo) -> Vec<Constraint> {
    let labels = pod.labels();
    pod.pod
        .spec
        .as_ref()
        .and_then(|s| s.topology_spread_constraints.as_ref())
        .map(|cs| {
            cs.iter()
                .map(|c| {
                    let selector = c
                        .label_selector
                        .as_ref()
                        .and_then(|s| LabelSelector::try_from(s).ok())
                        // A missing selector selects nothing.
                        .unwrap_or_else(|| {
                            LabelSelector::parse("capstan.dev/never-matches=true")
                                .unwrap_or_else(|_| LabelSelector::everything())
                        });
                    Constraint {
                        max_skew: c.max_skew.max(1) as i64,
                        key: c.topology_key.clone(),
                        self_match: i64::from(selector.matches(&labels)),
                        selector,
                        hard: c.when_unsatisfiable != "ScheduleAnyway",
                        counts: HashMap::new(),
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

fn count_pod(
    constraint: &mut Constraint,
    namespace: &str,
    other: &PodInfo,
    value: &str,
    delta: i64,
) {
    if other.key.namespace_or_empty() != namespace
        || other.pod.metadata.deletion_timestamp.is_some()
    {
        return;
    }
    if constraint.selector.matches(&other.labels()) {
        *constraint.counts.entry(value.to_string()).or_insert(0) += delta;
    }
}

/// Counts matching pods per domain over the nodes that admit the pod.
fn count(pod: &PodInfo, nodes: &[&NodeInfo], hard: bool) -> SpreadState {
    let namespace = pod.key.namespace_or_empty().to_string();
    let mut constraints: Vec<Constraint> = constraints_of(pod)
        .into_iter()
        .filter(|c| c.hard == hard)
        .collect();
    if constraints.is_empty() {
        return SpreadState { constraints };
    }
    for node in nodes {
        if !required_matches(pod, node) {
            continue;
        }
        for constraint in constraints.iter_mut() {
            let Some(value) = node.labels().and_then(|l| l.get(&constraint.key)).cloned() else {
                continue;
            };
            constraint.counts.entry(value.clone()).or_insert(0);
            for other in node.pods.values() {
                count_pod(constraint, &namespace, other, &value, 1);
            }
        }
    }
    SpreadState { constraints }
}

#[derive(Clone, Default)]
struct SoftState {
    constraints: Vec<Constraint>,
}

impl Plugin for PodTopologySpread {
    fn name(&self) -> &str {
        NAME
    }
    fn as_pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        Some(self)
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn as_pre_score(&self) -> Option<&dyn PreScorePlugin> {
        Some(self)
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        vec![
            ClusterEvent::new(EventResource::Pod, Action::Delete),
            ClusterEvent::new(EventResource::Pod, Action::Add),
            ClusterEvent::new(EventResource::Node, Action::Add),
            ClusterEvent::new(EventResource::Node, Action::Update),
        ]
    }
}

impl PreFilterPlugin for PodTopologySpread {
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> Result<(), Rejection> {
        let has_any = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.topology_spread_constraints.as_ref())
            .is_some_and(|c| !c.is_empty());
        if has_any {
            let nodes: Vec<&NodeInfo> = snapshot.nodes().iter().collect();
            state.write(count(pod, &nodes, true));
        }
        Ok(())
    }

    fn add_pod(&self, state: &mut CycleState, pod: &PodInfo, other: &PodInfo, node: &NodeInfo) {
        let namespace = pod.key.namespace_or_empty().to_string();
        if let Some(spread) = state.read_mut::<SpreadState>() {
            for c in spread.constraints.iter_mut() {
                if let Some(value) = node.labels().and_then(|l| l.get(&c.key)).cloned() {
                    count_pod(c, &namespace, other, &value, 1);
                }
            }
        }
    }

    fn remove_pod(&self, state: &mut CycleState, pod: &PodInfo, other: &PodInfo, node: &NodeInfo) {
        let namespace = pod.key.namespace_or_empty().to_string();
        if let Some(spread) = state.read_mut::<SpreadState>() {
            for c in spread.constraints.iter_mut() {
                if let Some(value) = node.labels().and_then(|l| l.get(&c.key)).cloned() {
                    count_pod(c, &namespace, other, &value, -1);
                }
            }
        }
    }
}

impl FilterPlugin for PodTopologySpread {
    fn applies(&self, state: &CycleState, _: &PodInfo) -> bool {
        state.read::<SpreadState>().is_some()
    }

    fn filter(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
        let Some(spread) = state.read::<SpreadState>() else {
            return Ok(());
        };
        for c in &spread.constraints {
            let Some(value) = node.labels().and_then(|l| l.get(&c.key)) else {
                return Err(Rejection::unresolvable(
                    NAME,
                    "node(s) didn't match pod topology spread constraints (missing required label)",
                ));
            };
            let here = c.counts.get(value).copied().unwrap_or(0);
            if here + c.self_match - c.min() > c.max_skew {
                return Err(Rejection::unschedulable(
                    NAME,
                    vec!["node(s) didn't match pod topology spread constraints".into()],
                ));
            }
        }
        Ok(())
    }
}

impl PreScorePlugin for PodTopologySpread {
    fn pre_score(&self, state: &mut CycleState, pod: &PodInfo, nodes: &[&NodeInfo]) -> PreScore {
        let soft = count(pod, nodes, false);
        if soft.constraints.is_empty() {
            return PreScore::Skip;
        }
        state.write(SoftState {
            constraints: soft.constraints,
        });
        PreScore::Score
    }
}

impl ScorePlugin for PodTopologySpread {
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(soft) = state.read::<SoftState>() else {
            return 0;
        };
        soft.constraints
            .iter()
            .map(|c| {
                node.labels()
                    .and_then(|l| l.get(&c.key))
                    .map_or(0, |v| c.counts.get(v).copied().unwrap_or(0))
            })
            .sum()
    }

    /// Fewer matching pods in the node's domains score higher.
    fn normalize(&self, state: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        if state.read::<SoftState>().is_none() {
            scores.iter_mut().for_each(|s| *s = MAX_NODE_SCORE);
            return;
        }
        let max = scores.iter().copied().max().unwrap_or(0);
        let min = scores.iter().copied().min().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max == min {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max - *s) / (max - min)
            };
        }
    }
}
