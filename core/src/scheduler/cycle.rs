//! One scheduling cycle's decision, as a pure function of a profile, a pod and a snapshot:
//! pre-filter, filter (over nodes, stopping once enough are feasible, in parallel on large
//! clusters, on rayon's pool), pre-score, score with normalization and weights, and a seeded
//! tie-break. [`decide_cached`] takes the node-local plugins' verdicts and raw scores from an
//! [`EquivalenceCache`] where a node is unchanged since a pod of the same spec was decided, and
//! decides exactly as [`decide`] does: remembered results are copied in by whole columns and
//! only the nodes that changed (usually the one that took the previous pod) are filtered and
//! scored again, in parallel only when they are many. No I/O; reserving and binding happen
//! around it.

use super::equivalence::{EquivalenceCache, LocalFilter, LocalRefusal, UNSCORED};
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

/// A filter that has something to check for this pod this cycle.
struct ApplicableFilter<'a> {
    /// Its plugin's position in the profile.
    position: usize,
    filter: &'a dyn FilterPlugin,
    /// Whether its verdict may be remembered per node ([`Plugin::node_local`]).
    ///
    /// [`Plugin::node_local`]: super::framework::Plugin::node_local
    local: bool,
}

/// The filters that have something to check for this pod this cycle, in profile order.
fn applicable_filters<'a>(
    profile: &'a Profile,
    state: &CycleState,
    pod: &PodInfo,
) -> Vec<ApplicableFilter<'a>> {
    profile
        .plugins
        .iter()
        .enumerate()
        .filter_map(|(position, (plugin, _))| {
            let filter = plugin.as_filter()?;
            filter.applies(state, pod).then_some(ApplicableFilter {
                position,
                filter,
                local: plugin.node_local(),
            })
        })
        .collect()
}

fn filter_node(
    filters: &[ApplicableFilter],
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
) -> Result<(), Rejection> {
    for f in filters {
        f.filter.filter(state, pod, node)?;
    }
    Ok(())
}

/// What the node-local filters say of a node: the first refusal, or a pass.
fn local_verdict(
    filters: &[ApplicableFilter],
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
) -> LocalFilter {
    for f in filters.iter().filter(|f| f.local) {
        if let Err(rejection) = f.filter.filter(state, pod, node) {
            return LocalFilter::Fail(Box::new(LocalRefusal {
                at: f.position,
                rejection,
            }));
        }
    }
    LocalFilter::Pass
}

/// The filters' result given the node-local filters' verdict: the other filters run in
/// profile order up to the refusing node-local one, so the first refusal is reported as if
/// every filter had run in order.
fn with_verdict(
    filters: &[ApplicableFilter],
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
    verdict: &LocalFilter,
) -> Result<(), Rejection> {
    let stop_at = match verdict {
        LocalFilter::Fail(refusal) => refusal.at,
        LocalFilter::Pass => usize::MAX,
    };
    for f in filters.iter().filter(|f| !f.local && f.position < stop_at) {
        f.filter.filter(state, pod, node)?;
    }
    match verdict {
        LocalFilter::Pass => Ok(()),
        LocalFilter::Fail(refusal) => Err(refusal.rejection.clone()),
    }
}

/// A node's filtering, when there is more to say than "feasible, nothing new to remember".
struct Filtered {
    result: Result<(), Rejection>,
    /// The node-local verdict, when freshly computed.
    fresh: Option<LocalFilter>,
}

/// Runs every filter (taking the node-local verdict from `remembered` when there is one),
/// counting the pods nominated to the node (by preemption) of at least the pod's priority as
/// if they were already there, so the room they were given is not taken. `None`: feasible,
/// from a remembered verdict.
fn run_filters(
    profile: &Profile,
    filters: &[ApplicableFilter],
    state: &CycleState,
    pod: &PodInfo,
    node: &NodeInfo,
    snapshot: &Snapshot,
    remembered: Option<&LocalFilter>,
) -> Option<Box<Filtered>> {
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
            if let Err(r) = filter_node(&with_filters, &with_state, pod, &with) {
                return Some(Box::new(Filtered {
                    result: Err(r),
                    fresh: None,
                }));
            }
        }
    }
    match remembered {
        Some(verdict) => match with_verdict(filters, state, pod, node, verdict) {
            Ok(()) => None,
            Err(r) => Some(Box::new(Filtered {
                result: Err(r),
                fresh: None,
            })),
        },
        None => {
            let verdict = local_verdict(filters, state, pod, node);
            Some(Box::new(Filtered {
                result: with_verdict(filters, state, pod, node, &verdict),
                fresh: Some(verdict),
            }))
        }
    }
}

/// A scorer that has something to say for this pod this cycle.
struct ApplicableScorer<'a> {
    /// Its plugin's position in the profile.
    position: usize,
    scorer: &'a dyn ScorePlugin,
    weight: i64,
    /// Whether its scores may be remembered per node.
    local: bool,
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
    decide_with(profile, pod, snapshot, start, ties, None)
}

/// [`decide`], reusing the node-local plugins' results remembered in `cache` (one per profile)
/// for nodes unchanged since a pod with the same spec was decided, and remembering new ones.
/// The decision is the same as [`decide`]'s.
pub fn decide_cached(
    profile: &Profile,
    pod: &PodInfo,
    snapshot: &Snapshot,
    start: &mut usize,
    ties: &mut TieBreaker,
    cache: &mut EquivalenceCache,
) -> Decision {
    decide_with(profile, pod, snapshot, start, ties, Some(cache))
}

fn decide_with(
    profile: &Profile,
    pod: &PodInfo,
    snapshot: &Snapshot,
    start: &mut usize,
    ties: &mut TieBreaker,
    mut cache: Option<&mut EquivalenceCache>,
) -> Decision {
    let nodes = snapshot.nodes();
    let total = nodes.len();
    let plugins = profile.plugins.len();
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
    let class = cache.as_deref_mut().map(|c| {
        c.ensure(total, plugins);
        c.class_of(pod)
    });
    let generations = snapshot.generations();
    let wanted = feasible_nodes_to_find(total, profile.percentage_of_nodes_to_score);
    let begin = *start % total;
    let order = |i: usize| (begin + i) % total;
    let filters = applicable_filters(profile, &state, pod);
    let outcomes: Vec<(usize, Option<Box<Filtered>>)> = {
        let remembered_in = cache.as_deref();
        let filter_at = |index: usize| {
            let node = &nodes[index];
            let remembered = remembered_in
                .zip(class)
                .and_then(|(cache, c)| cache.verdict(index, c, generations[index]));
            run_filters(profile, &filters, &state, pod, node, snapshot, remembered)
        };
        let feasible =
            |outcome: &Option<Box<Filtered>>| outcome.as_ref().is_none_or(|f| f.result.is_ok());
        if wanted >= total && total >= PARALLEL_FROM {
            // Every node is wanted (scoring all nodes of a large cluster). A remembered verdict
            // settles a node when every filter is node-local and no pod is nominated anywhere;
            // the other nodes are filtered afterwards, in parallel when they are many.
            let settles = !snapshot.has_nominations() && filters.iter().all(|f| f.local);
            let mut outcomes: Vec<(usize, Option<Box<Filtered>>)> = Vec::with_capacity(total);
            let mut unsettled: Vec<usize> = Vec::new();
            for i in 0..total {
                let index = order(i);
                let remembered = remembered_in
                    .filter(|_| settles)
                    .zip(class)
                    .and_then(|(cache, c)| cache.verdict(index, c, generations[index]));
                let outcome = match remembered {
                    Some(LocalFilter::Pass) => None,
                    Some(LocalFilter::Fail(refusal)) => Some(Box::new(Filtered {
                        result: Err(refusal.rejection.clone()),
                        fresh: None,
                    })),
                    None => {
                        unsettled.push(i);
                        None
                    }
                };
                outcomes.push((index, outcome));
            }
            let filtered: Vec<Option<Box<Filtered>>> = if unsettled.len() >= PARALLEL_FROM {
                unsettled
                    .par_iter()
                    .with_min_len(MIN_CHUNK)
                    .map(|&i| filter_at(order(i)))
                    .collect()
            } else {
                unsettled.iter().map(|&i| filter_at(order(i))).collect()
            };
            for (i, outcome) in unsettled.into_iter().zip(filtered) {
                outcomes[i].1 = outcome;
            }
            outcomes
        } else {
            let mut outcomes = Vec::new();
            let mut found = 0;
            for i in 0..total {
                if found >= wanted {
                    break;
                }
                let outcome = filter_at(order(i));
                if feasible(&outcome) {
                    found += 1;
                }
                outcomes.push((order(i), outcome));
            }
            outcomes
        }
    };
    let evaluated = outcomes.len();
    let mut feasible: Vec<usize> = Vec::new();
    let mut rejections: HashMap<String, Rejection> = HashMap::new();
    for (index, outcome) in outcomes {
        let Some(filtered) = outcome else {
            feasible.push(index);
            continue;
        };
        if let (Some(cache), Some(class), Some(fresh)) =
            (cache.as_deref_mut(), class, filtered.fresh)
        {
            cache.store_verdict(index, class, generations[index], fresh);
        }
        match filtered.result {
            Ok(()) => feasible.push(index),
            Err(r) => {
                rejections.insert(nodes[index].name.clone(), r);
            }
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
        let scorers: Vec<ApplicableScorer> = profile
            .plugins
            .iter()
            .enumerate()
            .filter_map(|(position, (plugin, weight))| {
                let scorer = plugin.as_score()?;
                (*weight != 0 && !skipped.contains(plugin.name()) && scorer.applies(pod)).then_some(
                    ApplicableScorer {
                        position,
                        scorer,
                        weight: *weight,
                        local: plugin.node_local(),
                    },
                )
            })
            .collect();
        // One column per scorer, one cell per candidate: remembered node-local scores are
        // copied in, the rest computed (in parallel when they are many), then each column is
        // normalized in place and added to the totals.
        let n = candidates.len();
        let mut columns = vec![UNSCORED; scorers.len() * n];
        // Rows with a node-local score computed (not remembered) this cycle.
        let mut fresh = vec![false; n];
        let remembered_in = cache.as_deref().zip(class);
        // The candidates (rows) whose node the cache holds no results for, for this class.
        let unheld: Vec<usize> = match remembered_in {
            Some((cache, c)) => (0..n)
                .filter(|&row| !cache.holds(feasible[row], c, generations[feasible[row]]))
                .collect(),
            None => Vec::new(),
        };
        // The rows of `fresh` set, in the order they were set.
        let mut fresh_rows: Vec<usize> = Vec::new();
        let mut mark_fresh = |row: usize, fresh: &mut [bool]| {
            if !fresh[row] {
                fresh[row] = true;
                fresh_rows.push(row);
            }
        };
        for (s, column) in scorers.iter().zip(columns.chunks_mut(n)) {
            let remembered = remembered_in
                .filter(|_| s.local)
                .and_then(|(cache, _)| cache.scores_of(s.position));
            // The rows to compute, when few; `None`: every row.
            let mut missing: Option<Vec<usize>> = None;
            if let Some(scores) = remembered {
                for (cell, &index) in column.iter_mut().zip(&feasible) {
                    *cell = scores.get(index).copied().unwrap_or(UNSCORED);
                }
                for &row in &unheld {
                    column[row] = UNSCORED;
                }
                let rows: Vec<usize> = (0..n).filter(|&row| column[row] == UNSCORED).collect();
                if rows.len() < PARALLEL_FROM {
                    missing = Some(rows);
                }
            }
            match missing {
                Some(rows) => {
                    for row in rows {
                        column[row] = s.scorer.score(&state, pod, &nodes[feasible[row]]);
                        if s.local {
                            mark_fresh(row, &mut fresh);
                        }
                    }
                }
                None => {
                    if s.local {
                        for row in (0..n).filter(|&row| column[row] == UNSCORED) {
                            mark_fresh(row, &mut fresh);
                        }
                    }
                    let compute = |(cell, &index): (&mut i64, &usize)| {
                        if *cell == UNSCORED {
                            *cell = s.scorer.score(&state, pod, &nodes[index]);
                        }
                    };
                    if n >= PARALLEL_FROM {
                        column
                            .par_iter_mut()
                            .zip(feasible.par_iter())
                            .with_min_len(MIN_CHUNK)
                            .for_each(compute);
                    } else {
                        column.iter_mut().zip(&feasible).for_each(compute);
                    }
                }
            }
        }
        if let (Some(cache), Some(class)) = (cache, class) {
            for row in fresh_rows {
                let index = feasible[row];
                let local = scorers
                    .iter()
                    .zip(columns.chunks(n))
                    .filter(|(s, _)| s.local)
                    .map(|(s, column)| (s.position, column[row]));
                cache.store_scores(index, class, generations[index], local);
            }
        }
        for (s, column) in scorers.iter().zip(columns.chunks_mut(n)) {
            s.scorer.normalize(&state, pod, column);
            for (t, score) in totals.iter_mut().zip(column.iter()) {
                *t += (*score).clamp(0, MAX_NODE_SCORE) * s.weight;
            }
        }
    }
    // The best score; ties broken at random, reproducibly by seed.
    let top = totals.iter().copied().max().unwrap_or(0);
    let tied = totals.iter().filter(|t| **t == top).count().max(1);
    let pick = (ties.next() % tied as u64) as usize;
    let best = totals
        .iter()
        .enumerate()
        .filter(|(_, t)| **t == top)
        .nth(pick)
        .map_or(0, |(i, _)| i);
    Decision::Fits {
        node: candidates[best].name.clone(),
        state: Box::new(CycleStateHolder(state)),
        evaluated,
        feasible: feasible.len(),
    }
}
