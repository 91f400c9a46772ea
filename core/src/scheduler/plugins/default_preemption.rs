//! DefaultPreemption: when a pod fits nowhere, finds the node where evicting the fewest,
//! lowest-priority pods makes it fit. Only nodes that rejected the pod as "not now" are
//! considered, only pods of lower priority can be victims, and victims are reprieved one by one
//! (those protected by a PodDisruptionBudget first, then by descending priority) while the pod
//! still fits. The node chosen breaks the fewest budgets, then has the lowest highest victim
//! priority, the smallest priority sum and the fewest victims. Pods with
//! `preemptionPolicy: Never` never preempt.

use crate::scheduler::framework::{
    Code, CycleState, Nomination, Plugin, PostFilterPlugin, Rejection,
};
use crate::scheduler::{NodeInfo, PodInfo, Profile, Snapshot};
use crate::selector::LabelSelector;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use std::collections::HashMap;
use std::sync::Arc;

/// Its name.
pub const NAME: &str = "DefaultPreemption";

/// The DefaultPreemption plugin.
pub struct DefaultPreemption;

impl Plugin for DefaultPreemption {
    fn name(&self) -> &str {
        NAME
    }
    fn as_post_filter(&self) -> Option<&dyn PostFilterPlugin> {
        Some(self)
    }
}

fn fits(profile: &Profile, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> bool {
    profile
        .plugins
        .iter()
        .filter_map(|(p, _)| p.as_filter())
        .all(|f| f.filter(state, pod, node).is_ok())
}

/// How many more disruptions each budget allows, from its status or, without one, from
/// `minAvailable`/`maxUnavailable` (integers) over the matching pods placed in the snapshot.
fn allowed_disruptions(budget: &PodDisruptionBudget, snapshot: &Snapshot) -> i64 {
    if let Some(status) = budget
        .status
        .as_ref()
        .filter(|s| s.observed_generation.is_some())
    {
        return status.disruptions_allowed as i64;
    }
    let Some(selector) = budget
        .spec
        .as_ref()
        .and_then(|s| s.selector.as_ref())
        .and_then(|s| LabelSelector::try_from(s).ok())
    else {
        return 0;
    };
    let namespace = budget.metadata.namespace.as_deref().unwrap_or_default();
    let healthy = snapshot
        .nodes()
        .iter()
        .flat_map(|n| n.pods.values())
        .filter(|p| p.key.namespace_or_empty() == namespace && selector.matches(&p.labels()))
        .count() as i64;
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let spec = budget.spec.as_ref();
    match (
        spec.and_then(|s| s.min_available.as_ref()),
        spec.and_then(|s| s.max_unavailable.as_ref()),
    ) {
        (Some(IntOrString::Int(min)), _) => healthy - *min as i64,
        (_, Some(IntOrString::Int(max))) => *max as i64,
        _ => 0,
    }
}

/// Whether evicting `victim` breaks a budget (given the remaining allowances, which it uses).
fn breaks_budget(
    victim: &PodInfo,
    budgets: &mut [(Arc<PodDisruptionBudget>, LabelSelector, i64)],
) -> bool {
    let labels = victim.labels();
    let mut broke = false;
    for (budget, selector, allowed) in budgets.iter_mut() {
        if budget.metadata.namespace.as_deref() == Some(victim.key.namespace_or_empty())
            && selector.matches(&labels)
        {
            *allowed -= 1;
            if *allowed < 0 {
                broke = true;
            }
        }
    }
    broke
}

struct Candidate {
    node: String,
    victims: Vec<Arc<PodInfo>>,
    broken_budgets: usize,
}

impl PostFilterPlugin for DefaultPreemption {
    fn post_filter(
        &self,
        pod: &PodInfo,
        profile: &Profile,
        snapshot: &Snapshot,
        rejections: &HashMap<String, Rejection>,
    ) -> Option<Nomination> {
        let never = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.preemption_policy.as_deref())
            == Some("Never");
        if never {
            return None;
        }
        let mut base = CycleState::default();
        for (plugin, _) in &profile.plugins {
            if let Some(pre) = plugin.as_pre_filter() {
                if pre.pre_filter(&mut base, pod, snapshot).is_err() {
                    return None;
                }
            }
        }
        let budgets: Vec<(Arc<PodDisruptionBudget>, LabelSelector, i64)> = snapshot
            .disruption_budgets()
            .iter()
            .filter_map(|b| {
                let selector = b
                    .spec
                    .as_ref()
                    .and_then(|s| s.selector.as_ref())
                    .and_then(|s| LabelSelector::try_from(s).ok())?;
                Some((b.clone(), selector, allowed_disruptions(b, snapshot)))
            })
            .collect();
        let mut best: Option<Candidate> = None;
        for node in snapshot.nodes() {
            match rejections.get(&node.name) {
                Some(r) if r.code == Code::Unschedulable => {}
                _ => continue,
            }
            let mut lower: Vec<Arc<PodInfo>> = node
                .pods
                .values()
                .filter(|p| {
                    p.priority < pod.priority && p.pod.metadata.deletion_timestamp.is_none()
                })
                .cloned()
                .collect();
            if lower.is_empty() {
                continue;
            }
            let mut sim = node.clone();
            let mut state = base.clone();
            let pre_filters: Vec<_> = profile
                .plugins
                .iter()
                .filter_map(|(p, _)| p.as_pre_filter())
                .collect();
            for victim in &lower {
                sim.remove_pod(&victim.uid);
                for pre in &pre_filters {
                    pre.remove_pod(&mut state, pod, victim, &sim);
                }
            }
            if !fits(profile, &state, pod, &sim) {
                continue;
            }
            // Reprieve as many as possible: budget-protected ones first, then by priority.
            let mut trial_budgets = budgets.clone();
            let mut protected: Vec<(bool, Arc<PodInfo>)> = lower
                .drain(..)
                .map(|v| {
                    let mut probe = budgets.clone();
                    (breaks_budget(&v, &mut probe), v)
                })
                .collect();
            protected.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.priority.cmp(&a.1.priority)));
            let mut victims = Vec::new();
            let mut broken = 0;
            for (_, candidate) in protected {
                sim.add_pod(candidate.clone());
                for pre in &pre_filters {
                    pre.add_pod(&mut state, pod, &candidate, &sim);
                }
                if fits(profile, &state, pod, &sim) {
                    continue;
                }
                sim.remove_pod(&candidate.uid);
                for pre in &pre_filters {
                    pre.remove_pod(&mut state, pod, &candidate, &sim);
                }
                if breaks_budget(&candidate, &mut trial_budgets) {
                    broken += 1;
                }
                victims.push(candidate);
            }
            let key = |c: &Candidate| {
                (
                    c.broken_budgets,
                    c.victims
                        .iter()
                        .map(|v| v.priority)
                        .max()
                        .unwrap_or(i32::MIN),
                    c.victims.iter().map(|v| v.priority as i64).sum::<i64>(),
                    c.victims.len(),
                )
            };
            let candidate = Candidate {
                node: node.name.clone(),
                victims,
                broken_budgets: broken,
            };
            if best.as_ref().is_none_or(|b| key(&candidate) < key(b)) {
                best = Some(candidate);
            }
        }
        best.map(|c| Nomination {
            node: c.node,
            victims: c.victims,
        })
    }
}
