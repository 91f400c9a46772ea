//! One scheduling cycle's decision, as a pure function of a profile, a pod and a snapshot:
//! pre-filter, filter (over nodes, stopping once enough are feasible, in parallel on large
//! clusters, on rayon's pool), pre-score, score with normalization and weights, and a seeded tie-break. No I/O;
//! reserving and binding happen around it.

use super::framework::{
    Code, CycleState, FilterPlugin, PreScore, Rejection, ScorePlugin, MAX_NODE_SCORE,
};
use super::node_info::NodeInfo;
use super::pod_info::PodInfo;
use super::profile::{feasible_nodes_to_find, Profile};
use super::snapshot::Snapshot;
use rayon::prelude::*;
use std::collections::{BTreeMap, HashMap, HashSet};

/// From how many nodes to filter (or score) on rayon's threads: below it, handing work out costs
/// more than it saves.
const PARALLEL_FROM: usize = 1024;

/// Nodes per parallel task at least: fewer, larger tasks keep hand-off costs low.
const MIN_CHUNK: usize = 512;

/// Why a pod fits nowhere.
#[derive(Debug, Clone)]
pub struct Unschedulable {
    /// The message `kubectl describe` shows, e.g. `0/5 nodes are available: 3 Insufficient
    /// cpu, 2 node(s) had untolerated taint {k: v}.`
    pub message: String,
    /// The plugins that rejected (whose registered events may make the pod schedulable).
    pub plugins: HashSet<String>,
    /// The rejection per node, for post-filter plugins (preemption).
    pub by_node: HashMap<String, Rejection>,
    /// Whether a plugin failed (rather than rejected).
    pub error: bool,
}

/// The outcome of a cycle's decision.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Place the pod here.
    Fits {
        /// The chosen node.
        node: String,
        /// The cycle state, for reserve/permit/unreserve.
        state: Box<CycleStateHolder>,
        /// Nodes evaluated (filtered).
        evaluated: usize,
        /// Nodes found feasible.
        feasible: usize,
    },
    /// No node passed.
    Unschedulable(Unschedulable),
}

/// A [`CycleState`] carried out of the decision (it is not `Debug`).
pub struct CycleStateHolder(pub CycleState);

impl std::fmt::Debug for CycleStateHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CycleState")
    }
}

impl Clone for CycleStateHolder {
    fn clone(&self) -> Self {
        CycleStateHolder(self.0.clone())
    }
}

fn summarize(total: usize, rejections: &HashMap<String, Rejection>) -> String {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for rejection in rejections.values() {
        for reason in &rejection.reasons {
            *counts.entry(reason.as_str()).or_insert(0) += 1;
        }
    }
    let mut parts: Vec<String> = counts
        .into_iter()
        .map(|(reason, n)| format!("{n} {reason}"))
        .collect();
    parts.sort();
    if parts.is_empty() {
        format!("0/{total} nodes are available.")
    } else {
        format!("0/{total} nodes are available: {}.", parts.join(", "))
    }
}

/// The filters that have something to check for this pod this cycle.
fn applicable_filters<'a>(
    profile: &'a Profile,
    state: &CycleState,
    pod: &PodInfo,
) -> Vec<&'a dyn FilterPlugin> {
    profile
        .plugins
        .iter()
        .filter_map(|(plugin, _)| plugin.as_filter())
        .filter(|filter| filter.applies(state, pod))
        .collect()
}

fn filter_node(
    filters: &[&dyn FilterPlugin],
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
) -> Result<(), Rejection> {
    for filter in filters {
        filter.filter(state, pod, node)?;
    }
    Ok(())
}

/// Runs every filter, counting the pods nominated to the node (by preemption) of at least the
/// pod's priority as if they were already there, so the room they were given is not taken.
fn run_filters(
    profile: &Profile,
    filters: &[&dyn FilterPlugin],
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
    snapshot: &Snapshot,
) -> Result<(), Rejection> {
    if snapshot.has_nominations() {
        let nominated = snapshot.nominated_for(&node.name, pod.priority, &pod.uid);
        if !nominated.is_empty() {
            let mut with = node.clone();
            let mut with_state = state.clone();
            for other in nominated {
                with.add_pod(other.clone());
                for (plugin, _) in &profile.plugins {
                    if let Some(pre) = plugin.as_pre_filter() {
                        pre.add_pod(&mut with_state, pod, &other, &with);
                    }
                }
            }
            // The nominated pods may give a skipped filter something to check.
            let with_filters = applicable_filters(profile, &with_state, pod);
            filter_node(&with_filters, &with_state, pod, &with)?;
        }
    }
    filter_node(filters, state, pod, node)
}

/// The deterministic tie-break between equally scored nodes (splitmix64): the same seed and
/// inputs give the same decisions.
pub struct TieBreaker(u64);

impl TieBreaker {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        TieBreaker(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// Decides where `pod` goes. `start` rotates where filtering begins (so sampling spreads over
/// the cluster); it is advanced past the nodes evaluated.
pub fn decide(
    profile: &Profile,
    pod: &PodInfo,
    snapshot: &Snapshot,
    start: &mut usize,
    ties: &mut TieBreaker,
) -> Decision {
    let nodes = snapshot.nodes();
    let total = nodes.len();
    let mut state = CycleState::default();
    let unschedulable = |rejections: HashMap<String, Rejection>, extra: Option<Rejection>| {
        let mut plugins: HashSet<String> = rejections.values().map(|r| r.plugin.clone()).collect();
        let error = extra.as_ref().is_some_and(|r| r.code == Code::Error)
            || rejections.values().any(|r| r.code == Code::Error);
        let message = match &extra {
            Some(r) => {
                plugins.insert(r.plugin.clone());
                format!("0/{total} nodes are available: {}.", r.reasons.join(", "))
            }
            None => summarize(total, &rejections),
        };
        Decision::Unschedulable(Unschedulable {
            message,
            plugins,
            by_node: rejections,
            error,
        })
    };
    for (plugin, _) in &profile.plugins {
        if let Some(pre) = plugin.as_pre_filter() {
            if let Err(rejection) = pre.pre_filter(&mut state, pod, snapshot) {
                return unschedulable(HashMap::new(), Some(rejection));
            }
        }
    }
    if total == 0 {
        return unschedulable(HashMap::new(), None);
    }
    let wanted = feasible_nodes_to_find(total, profile.percentage_of_nodes_to_score);
    let begin = *start % total;
    let order = |i: usize| (begin + i) % total;
    let mut feasible: Vec<usize> = Vec::new();
    let mut rejections: HashMap<String, Rejection> = HashMap::new();
    let mut evaluated = 0;
    let mut record =
        |index: usize, result: Result<(), Rejection>, feasible: &mut Vec<usize>| match result {
            Ok(()) => feasible.push(index),
            Err(r) => {
                rejections.insert(nodes[index].name.clone(), r);
            }
        };
    let filters = applicable_filters(profile, &state, pod);
    let filter_at = |i: usize| {
        let index = order(i);
        (
            index,
            run_filters(profile, &filters, &state, pod, &nodes[index], snapshot),
        )
    };
    if wanted >= total && total >= PARALLEL_FROM {
        // Every node is wanted (scoring all nodes of a large cluster): filter them all in
        // parallel, then record in rotation order.
        let results: Vec<(usize, Result<(), Rejection>)> = (0..total)
            .into_par_iter()
            .with_min_len(MIN_CHUNK)
            .map(filter_at)
            .collect();
        evaluated = total;
        for (index, result) in results {
            record(index, result, &mut feasible);
        }
    } else {
        for i in 0..total {
            if feasible.len() >= wanted {
                break;
            }
            evaluated += 1;
            let (index, result) = filter_at(i);
            record(index, result, &mut feasible);
        }
    }
    *start = begin + evaluated;
    if feasible.is_empty() {
        return unschedulable(rejections, None);
    }
    let candidates: Vec<&NodeInfo> = feasible.iter().map(|&i| &nodes[i]).collect();
    let mut skipped: HashSet<&str> = HashSet::new();
    for (plugin, _) in &profile.plugins {
        if let Some(pre) = plugin.as_pre_score() {
            if pre.pre_score(&mut state, pod, &candidates) == PreScore::Skip {
                skipped.insert(plugin.name());
            }
        }
    }
    let mut totals = vec![0i64; candidates.len()];
    if candidates.len() > 1 {
        let scorers: Vec<(&dyn ScorePlugin, i64)> = profile
            .plugins
            .iter()
            .filter_map(|(plugin, weight)| {
                let scorer = plugin.as_score()?;
                (*weight != 0 && !skipped.contains(plugin.name()) && scorer.applies(pod))
                    .then_some((scorer, *weight))
            })
            .collect();
        // One row per candidate, one column per scorer, filled in a single pass over the
        // candidates (in parallel on large clusters).
        let width = scorers.len().max(1);
        let mut table = vec![0i64; candidates.len() * width];
        let fill = |(row, node): (&mut [i64], &&NodeInfo)| {
            for (cell, (scorer, _)) in row.iter_mut().zip(&scorers) {
                *cell = scorer.score(&state, pod, node);
            }
        };
        if candidates.len() >= PARALLEL_FROM {
            table
                .par_chunks_mut(width)
                .zip(candidates.par_iter())
                .with_min_len(MIN_CHUNK)
                .for_each(fill);
        } else {
            table
                .chunks_mut(width)
                .zip(candidates.iter())
                .for_each(fill);
        }
        let mut column = vec![0i64; candidates.len()];
        for (j, (scorer, weight)) in scorers.iter().enumerate() {
            for (cell, row) in column.iter_mut().zip(table.chunks(width)) {
                *cell = row[j];
            }
            scorer.normalize(&state, pod, &mut column);
            for (t, s) in totals.iter_mut().zip(&column) {
                *t += (*s).clamp(0, MAX_NODE_SCORE) * weight;
            }
        }
    }
    // The best score; ties broken at random (reservoir sampling), reproducibly by seed.
    let mut best = 0;
    let mut seen = 0u64;
    for (i, total) in totals.iter().enumerate() {
        if *total > totals[best] {
            best = i;
            seen = 1;
        } else if *total == totals[best] {
            seen += 1;
            if ties.next().is_multiple_of(seen) {
                best = i;
            }
        }
    }
    Decision::Fits {
        node: candidates[best].name.clone(),
        state: Box::new(CycleStateHolder(state)),
        evaluated,
        feasible: feasible.len(),
    }
}
