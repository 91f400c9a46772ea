//! [`EquivalenceCache`]: the filter and score results of node-local plugins
//! ([`Plugin::node_local`](super::framework::Plugin::node_local)), remembered per node for pods
//! with the same spec (an equivalence class) and reused while the node stays the same (its
//! [`NodeInfo::generation`](super::NodeInfo::generation)). Pods of one ReplicaSet, Job or
//! StatefulSet share a spec, so after the first of them a cycle re-evaluates only the nodes
//! that changed since — usually the one that took the previous pod — instead of every node.
//! Results are kept in flat arrays by node index, one column per plugin, so a cycle that
//! reuses them reads memory in order.

use super::framework::Rejection;
use super::pod_info::PodInfo;
use std::collections::HashMap;

/// How many distinct pod specs are remembered before the cache starts over.
const MAX_CLASSES: usize = 4096;

/// A score not computed yet.
pub(crate) const UNSCORED: i64 = i64::MIN;

/// Per-node results of the node-local plugins for pods of one spec. Keep one per profile
/// (plugin sets and arguments differ between profiles) and pass it to
/// [`decide_cached`](super::decide_cached) cycle after cycle.
#[derive(Debug, Default)]
pub struct EquivalenceCache {
    /// Pod spec (as JSON) -> its class.
    classes: HashMap<String, u64>,
    next_class: u64,
    /// Per node index: the node generation and pod class the results hold for ((0, 0): none).
    held: Vec<(u64, u64)>,
    /// Per node index: the node-local filters' verdict, when known.
    verdicts: Vec<Option<LocalFilter>>,
    /// Raw scores, one column of `held.len()` nodes per plugin position ([`UNSCORED`]: not
    /// known).
    scores: Vec<i64>,
    /// Plugins in the profile.
    width: usize,
}

/// What the node-local filters said of a node.
#[derive(Debug, Clone)]
pub(crate) enum LocalFilter {
    /// Every node-local filter passed.
    Pass,
    /// The first node-local filter to refuse.
    Fail(Box<LocalRefusal>),
}

/// The first node-local filter to refuse a node.
#[derive(Debug, Clone)]
pub(crate) struct LocalRefusal {
    /// Its plugin's position in the profile.
    pub(crate) at: usize,
    pub(crate) rejection: Rejection,
}

impl EquivalenceCache {
    /// An empty cache.
    pub fn new() -> Self {
        EquivalenceCache::default()
    }

    /// The class of a pod: pods with equal specs share one.
    pub(crate) fn class_of(&mut self, pod: &PodInfo) -> u64 {
        let spec = serde_json::to_string(&pod.pod.spec).unwrap_or_default();
        if let Some(class) = self.classes.get(&spec) {
            return *class;
        }
        if self.classes.len() >= MAX_CLASSES {
            // Class numbers are never reused, so results of forgotten classes simply miss.
            self.classes.clear();
        }
        self.next_class += 1;
        self.classes.insert(spec, self.next_class);
        self.next_class
    }

    /// Makes room for `nodes` nodes of a profile of `plugins` plugins (forgetting everything
    /// when the profile's width changed).
    pub(crate) fn ensure(&mut self, nodes: usize, plugins: usize) {
        if self.width != plugins || self.held.len() < nodes {
            // Columns are as long as the node count: growing starts over (nodes are added
            // rarely; forgotten results are recomputed once).
            self.held.clear();
            self.held.resize(nodes, (0, 0));
            self.verdicts.clear();
            self.verdicts.resize(nodes, None);
            self.scores.clear();
            self.scores.resize(nodes * plugins, UNSCORED);
            self.width = plugins;
        }
    }

    /// Whether the node at `index` holds results for this class and node generation.
    pub(crate) fn holds(&self, index: usize, class: u64, generation: u64) -> bool {
        self.held.get(index) == Some(&(generation, class))
    }

    /// The raw scores of the plugin at `position`, by node index: meaningful only for nodes
    /// that [`holds`](Self::holds) for the class at hand ([`UNSCORED`]: not known).
    pub(crate) fn scores_of(&self, position: usize) -> Option<&[i64]> {
        let nodes = self.held.len();
        (position < self.width).then(|| &self.scores[position * nodes..(position + 1) * nodes])
    }

    /// The node-local verdict on the node at `index`, when remembered for this class and node
    /// generation.
    pub(crate) fn verdict(
        &self,
        index: usize,
        class: u64,
        generation: u64,
    ) -> Option<&LocalFilter> {
        if self.holds(index, class, generation) {
            self.verdicts.get(index)?.as_ref()
        } else {
            None
        }
    }

    /// Makes the node at `index` hold results for this class and generation, forgetting
    /// others. False when `index` is out of range.
    fn claim(&mut self, index: usize, class: u64, generation: u64) -> bool {
        let Some(held) = self.held.get_mut(index) else {
            return false;
        };
        if *held != (generation, class) {
            *held = (generation, class);
            self.verdicts[index] = None;
            let nodes = self.held.len();
            for position in 0..self.width {
                self.scores[position * nodes + index] = UNSCORED;
            }
        }
        true
    }

    /// Remembers the node-local verdict for the node at `index`.
    pub(crate) fn store_verdict(
        &mut self,
        index: usize,
        class: u64,
        generation: u64,
        verdict: LocalFilter,
    ) {
        if self.claim(index, class, generation) {
            self.verdicts[index] = Some(verdict);
        }
    }

    /// Remembers raw scores (`(plugin position, score)`) for the node at `index`.
    pub(crate) fn store_scores(
        &mut self,
        index: usize,
        class: u64,
        generation: u64,
        scores: impl Iterator<Item = (usize, i64)>,
    ) {
        if self.claim(index, class, generation) {
            let nodes = self.held.len();
            for (position, score) in scores.filter(|(p, _)| *p < self.width) {
                self.scores[position * nodes + index] = score;
            }
        }
    }
}
