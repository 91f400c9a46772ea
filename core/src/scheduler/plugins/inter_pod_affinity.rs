//! InterPodAffinity: places a pod relative to other pods by topology domain. Required affinity
//! terms need a matching pod in the node's domain (or, for the first of a group, the pod
//! matching its own term); required anti-affinity terms forbid one there; and existing pods'
//! required anti-affinity forbids the pod where it would break them. Preferred terms add or
//! subtract their weight per matching pod in the domain; scores are normalized to 0-100.
//! Namespaces: the term's `namespaces`, else the pod's own.

use crate::scheduler::framework::{
    Action, ClusterEvent, CycleState, EventResource, FilterPlugin, Plugin, PreFilterPlugin,
    PreScore, PreScorePlugin, Rejection, ScorePlugin, MAX_NODE_SCORE,
};
use crate::scheduler::{NodeInfo, PodInfo, Snapshot};
use crate::selector::LabelSelector;
use k8s_openapi::api::core::v1::{Pod, PodAffinityTerm};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Its name.
pub const NAME: &str = "InterPodAffinity";

/// The InterPodAffinity plugin.
pub struct InterPodAffinity;

#[derive(Clone)]
struct Term {
    selector: LabelSelector,
    namespaces: HashSet<String>,
    key: String,
    weight: i64,
}

impl Term {
    fn new(term: &PodAffinityTerm, own_namespace: &str, weight: i64) -> Option<Self> {
        let selector = term
            .label_selector
            .as_ref()
            .and_then(|s| LabelSelector::try_from(s).ok())?;
        let mut namespaces: HashSet<String> = term.namespaces.iter().flatten().cloned().collect();
        if namespaces.is_empty() {
            namespaces.insert(own_namespace.to_string());
        }
        Some(Term {
            selector,
            namespaces,
            key: term.topology_key.clone(),
            weight,
        })
    }

    fn matches(&self, pod: &Pod) -> bool {
        let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
        let empty = BTreeMap::new();
        self.namespaces.contains(namespace)
            && self
                .selector
                .matches(pod.metadata.labels.as_ref().unwrap_or(&empty))
    }
}

/// The pod's required affinity, required anti-affinity, preferred affinity and preferred
/// anti-affinity terms.
fn terms_of(pod: &Pod) -> [Vec<Term>; 4] {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let affinity = pod.spec.as_ref().and_then(|s| s.affinity.as_ref());
    let required = |terms: Option<&Vec<PodAffinityTerm>>| -> Vec<Term> {
        terms
            .into_iter()
            .flatten()
            .filter_map(|t| Term::new(t, namespace, 1))
            .collect()
    };
    let pa = affinity.and_then(|a| a.pod_affinity.as_ref());
    let paa = affinity.and_then(|a| a.pod_anti_affinity.as_ref());
    let preferred = |terms: Option<&Vec<k8s_openapi::api::core::v1::WeightedPodAffinityTerm>>| {
        terms
            .into_iter()
            .flatten()
            .filter_map(|t| Term::new(&t.pod_affinity_term, namespace, t.weight as i64))
            .collect::<Vec<_>>()
    };
    [
        required(pa.and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })),
        required(paa.and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        })),
        preferred(pa.and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })),
        preferred(paa.and_then(|a| {
            a.preferred_during_scheduling_ignored_during_execution
                .as_ref()
        })),
    ]
}

fn has_affinity(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .is_some_and(|a| a.pod_affinity.is_some() || a.pod_anti_affinity.is_some())
}

type Domain = (String, String);

#[derive(Clone, Default)]
struct AffinityState {
    affinity: Vec<Term>,
    anti_affinity: Vec<Term>,
    /// Matching pods per domain, per required affinity term.
    affinity_counts: Vec<HashMap<String, i64>>,
    /// Domains holding a pod matching a required anti-affinity term.
    anti_domains: HashSet<Domain>,
    /// Domains where an existing pod's required anti-affinity matches the incoming pod.
    existing_anti_domains: HashSet<Domain>,
    /// Whether the pod matches all of its own affinity terms (the first of a group).
    self_match: bool,
}

fn domain_value(node: &NodeInfo, key: &str) -> Option<String> {
    node.labels().and_then(|l| l.get(key)).cloned()
}

impl AffinityState {
    fn account(&mut self, incoming: &Pod, other: &PodInfo, node: &NodeInfo, delta: i64) {
        if other.pod.metadata.deletion_timestamp.is_some() {
            return;
        }
        for (i, term) in self.affinity.iter().enumerate() {
            if term.matches(&other.pod) {
                if let Some(v) = domain_value(node, &term.key) {
                    *self.affinity_counts[i].entry(v).or_insert(0) += delta;
                }
            }
        }
        if delta > 0 {
            for term in &self.anti_affinity {
                if term.matches(&other.pod) {
                    if let Some(v) = domain_value(node, &term.key) {
                        self.anti_domains.insert((term.key.clone(), v));
                    }
                }
            }
            if has_affinity(&other.pod) {
                for term in &terms_of(&other.pod)[1] {
                    if term.matches(incoming) {
                        if let Some(v) = domain_value(node, &term.key) {
                            self.existing_anti_domains.insert((term.key.clone(), v));
                        }
                    }
                }
            }
        }
    }
}

impl Plugin for InterPodAffinity {
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
            ClusterEvent::new(EventResource::Pod, Action::Add),
            ClusterEvent::new(EventResource::Pod, Action::Delete),
            ClusterEvent::new(EventResource::Node, Action::Add),
            ClusterEvent::new(EventResource::Node, Action::Update),
        ]
    }
}

impl PreFilterPlugin for InterPodAffinity {
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> Result<(), Rejection> {
        let [affinity, anti_affinity, _, _] = terms_of(&pod.pod);
        let self_labels = pod.labels();
        let mut s = AffinityState {
            self_match: !affinity.is_empty()
                && affinity.iter().all(|t| {
                    t.namespaces.contains(pod.key.namespace_or_empty())
                        && t.selector.matches(&self_labels)
                }),
            affinity_counts: vec![HashMap::new(); affinity.len()],
            affinity,
            anti_affinity,
            ..Default::default()
        };
        let only_existing = s.affinity.is_empty() && s.anti_affinity.is_empty();
        // Only placed pods' terms to honour, and no placed pod has any: nothing to walk.
        let nodes = if only_existing && snapshot.affinity_pods() == 0 {
            &[]
        } else {
            snapshot.nodes()
        };
        for node in nodes {
            if only_existing && node.affinity_pods == 0 {
                continue;
            }
            for other in node.pods.values() {
                if only_existing && !has_affinity(&other.pod) {
                    continue;
                }
                s.account(&pod.pod, other, node, 1);
            }
        }
        state.write(s);
        Ok(())
    }

    fn add_pod(&self, state: &mut CycleState, pod: &PodInfo, other: &PodInfo, node: &NodeInfo) {
        if let Some(s) = state.read_mut::<AffinityState>() {
            s.account(&pod.pod, other, node, 1);
        }
    }

    fn remove_pod(&self, state: &mut CycleState, pod: &PodInfo, other: &PodInfo, node: &NodeInfo) {
        // Counts can go down; domain sets are rebuilt from the node's remaining pods.
        if let Some(s) = state.read_mut::<AffinityState>() {
            s.account(&pod.pod, other, node, -1);
            let mut rebuilt = s.clone();
            rebuilt
                .anti_domains
                .retain(|(key, value)| domain_value(node, key).as_deref() != Some(value.as_str()));
            rebuilt
                .existing_anti_domains
                .retain(|(key, value)| domain_value(node, key).as_deref() != Some(value.as_str()));
            for remaining in node.pods.values().filter(|p| p.uid != other.uid) {
                let mut probe = rebuilt.clone();
                probe.affinity_counts = vec![HashMap::new(); probe.affinity.len()];
                probe.account(&pod.pod, remaining, node, 1);
                rebuilt.anti_domains.extend(probe.anti_domains);
                rebuilt
                    .existing_anti_domains
                    .extend(probe.existing_anti_domains);
            }
            s.anti_domains = rebuilt.anti_domains;
            s.existing_anti_domains = rebuilt.existing_anti_domains;
        }
    }
}

impl FilterPlugin for InterPodAffinity {
    fn applies(&self, state: &CycleState, _: &PodInfo) -> bool {
        state.read::<AffinityState>().is_some_and(|s| {
            !s.affinity.is_empty()
                || !s.anti_domains.is_empty()
                || !s.existing_anti_domains.is_empty()
        })
    }

    fn filter(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
        let Some(s) = state.read::<AffinityState>() else {
            return Ok(());
        };
        let in_domain = |set: &HashSet<Domain>| {
            set.iter()
                .any(|(key, value)| domain_value(node, key).as_deref() == Some(value.as_str()))
        };
        if in_domain(&s.existing_anti_domains) {
            return Err(Rejection::unschedulable(
                NAME,
                vec!["node(s) didn't satisfy existing pods anti-affinity rules".into()],
            ));
        }
        if in_domain(&s.anti_domains) {
            return Err(Rejection::unschedulable(
                NAME,
                vec!["node(s) didn't match pod anti-affinity rules".into()],
            ));
        }
        if !s.affinity.is_empty() {
            let nobody_matches = s
                .affinity_counts
                .iter()
                .all(|c| c.values().all(|n| *n <= 0));
            let satisfied = s.affinity.iter().enumerate().all(|(i, term)| {
                domain_value(node, &term.key)
                    .is_some_and(|v| s.affinity_counts[i].get(&v).copied().unwrap_or(0) > 0)
            });
            // The first pod of a group that matches its own terms may go anywhere with the keys.
            let first_of_group = nobody_matches
                && s.self_match
                && s.affinity
                    .iter()
                    .all(|t| domain_value(node, &t.key).is_some());
            if !satisfied && !first_of_group {
                return Err(Rejection::unschedulable(
                    NAME,
                    vec!["node(s) didn't match pod affinity rules".into()],
                ));
            }
        }
        Ok(())
    }
}

#[derive(Clone, Default)]
struct PreferredState {
    /// Score per domain: (key, value) -> summed weights.
    weights: HashMap<Domain, i64>,
}

impl PreScorePlugin for InterPodAffinity {
    fn pre_score(&self, state: &mut CycleState, pod: &PodInfo, nodes: &[&NodeInfo]) -> PreScore {
        let [_, _, preferred, preferred_anti] = terms_of(&pod.pod);
        if preferred.is_empty() && preferred_anti.is_empty() {
            return PreScore::Skip;
        }
        let mut weights: HashMap<Domain, i64> = HashMap::new();
        let mut seen: HashSet<String> = HashSet::new();
        for node in nodes {
            if !seen.insert(node.name.clone()) {
                continue;
            }
            for other in node.pods.values() {
                for (terms, sign) in [(&preferred, 1), (&preferred_anti, -1)] {
                    for term in terms.iter() {
                        if term.matches(&other.pod) {
                            if let Some(v) = domain_value(node, &term.key) {
                                *weights.entry((term.key.clone(), v)).or_insert(0) +=
                                    sign * term.weight;
                            }
                        }
                    }
                }
            }
        }
        state.write(PreferredState { weights });
        PreScore::Score
    }
}

impl ScorePlugin for InterPodAffinity {
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        let Some(p) = state.read::<PreferredState>() else {
            return 0;
        };
        p.weights
            .iter()
            .filter(|((key, value), _)| domain_value(node, key).as_deref() == Some(value.as_str()))
            .map(|(_, w)| *w)
            .sum()
    }

    fn normalize(&self, state: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        if state.read::<PreferredState>().is_none() {
            scores.iter_mut().for_each(|s| *s = 0);
            return;
        }
        let max = scores.iter().copied().max().unwrap_or(0);
        let min = scores.iter().copied().min().unwrap_or(0);
        for s in scores.iter_mut() {
            *s = if max == min {
                0
            } else {
                MAX_NODE_SCORE * (*s - min) / (max - min)
            };
        }
    }
}
