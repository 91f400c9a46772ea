//! The disruption controller: keeps each PodDisruptionBudget's `status` — the pods it selects
//! (`expectedPods`), how many are ready (`currentHealthy`), how many must stay
//! (`desiredHealthy`, from `minAvailable` or `maxUnavailable`, counts or percentages) and so
//! how many may be evicted now (`disruptionsAllowed`), with the `DisruptionAllowed` condition.
//! Pods the eviction subresource recorded in `disruptedPods` count as gone until they are
//! deleted (or two minutes pass), so concurrent evictions cannot overspend the budget.

use super::deployment::rollout::resolve;
use super::informer::Informer;
use super::pod_facts;
use super::runner::{Action, Reconciler};
use super::{ControllerContext, ControllerError, ObjectKey};
use crate::selector::LabelSelector;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetStatus};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// How long an eviction's record in `disruptedPods` holds if the pod is not deleted.
const DISRUPTION_TIMEOUT: Duration = Duration::from_secs(120);

/// Reconciles PodDisruptionBudgets' status.
pub struct DisruptionController {
    ctx: ControllerContext,
    budgets: Informer<PodDisruptionBudget>,
    pods: Informer<Pod>,
}

fn selector_of(pdb: &PodDisruptionBudget) -> Option<LabelSelector> {
    pdb.spec
        .as_ref()?
        .selector
        .as_ref()
        .and_then(|s| LabelSelector::try_from(s).ok())
}

/// `desiredHealthy` for `expected` selected pods.
pub fn desired_healthy(pdb: &PodDisruptionBudget, expected: i32) -> i32 {
    let spec = pdb.spec.clone().unwrap_or_default();
    match (&spec.min_available, &spec.max_unavailable) {
        (Some(min), _) => resolve(Some(min), expected, true),
        (None, Some(max)) => (expected - resolve(Some(max), expected, true)).max(0),
        // Neither: every pod must stay (nothing may be evicted).
        (None, None) => resolve(Some(&IntOrString::String("100%".into())), expected, true),
    }
}

impl DisruptionController {
    /// A controller over the context's shared informers.
    pub fn new(ctx: &ControllerContext) -> Self {
        DisruptionController {
            ctx: ctx.clone(),
            budgets: ctx.informers.informer(),
            pods: ctx.informers.informer(),
        }
    }

    /// The informer keys each change affects: the budget, and the budgets selecting a pod
    /// that changed (before or after).
    pub(crate) fn triggers(
        &self,
        queue: &Arc<super::WorkQueue<ObjectKey>>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let own = super::triggers::enqueue_own(&self.budgets, queue.clone(), stop.clone());
        let budgets = self.budgets.clone();
        let selecting = move |pod: &Pod| -> Vec<ObjectKey> {
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            budgets
                .in_namespace(pod.metadata.namespace.as_deref().unwrap_or_default())
                .iter()
                .filter(|b| selector_of(b).is_some_and(|s| s.matches(&labels)))
                .map(|b| ObjectKey::of(b.as_ref()))
                .collect()
        };
        let all = self.budgets.clone();
        let pods = super::triggers::enqueue_changes(
            &self.pods,
            queue.clone(),
            stop.clone(),
            move |change| match change {
                super::Change::Resync => all.keys(),
                super::Change::Applied { old, new } => {
                    let mut keys = selecting(new);
                    if let Some(old) = old {
                        keys.extend(selecting(old));
                    }
                    keys
                }
                super::Change::Deleted(pod) => selecting(pod),
            },
        );
        vec![own, pods]
    }
}

#[async_trait::async_trait]
impl Reconciler for DisruptionController {
    fn name(&self) -> &str {
        "disruption"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        let Some(pdb) = self.budgets.get(key) else {
            return Ok(Action::Done);
        };
        let namespace = key.namespace_or_empty();
        let old = pdb.status.clone().unwrap_or_default();
        let now = Timestamp::now();
        let selected: Vec<Arc<Pod>> = match selector_of(&pdb) {
            Some(selector) => self
                .pods
                .in_namespace(namespace)
                .into_iter()
                .filter(|p| {
                    !pod_facts::is_terminal(p)
                        && selector.matches(&p.metadata.labels.clone().unwrap_or_default())
                })
                .collect(),
            None => Vec::new(),
        };
        // Evictions still under way: the pod exists, is not yet deleting, and the record is
        // recent.
        let mut disrupted: BTreeMap<String, Time> = BTreeMap::new();
        let mut requeue = None;
        for (name, at) in old.disrupted_pods.clone().unwrap_or_default() {
            let age = Duration::try_from(now.duration_since(at.0)).unwrap_or_default();
            let pending = selected.iter().any(|p| {
                p.metadata.name.as_deref() == Some(name.as_str())
                    && p.metadata.deletion_timestamp.is_none()
            });
            if pending && age < DISRUPTION_TIMEOUT {
                let left = DISRUPTION_TIMEOUT - age;
                requeue = Some(requeue.map_or(left, |r: Duration| r.min(left)));
                disrupted.insert(name, at);
            }
        }
        let expected = selected.len() as i32;
        let healthy = selected
            .iter()
            .filter(|p| {
                p.metadata.deletion_timestamp.is_none()
                    && pod_facts::is_ready(p)
                    && !disrupted.contains_key(p.metadata.name.as_deref().unwrap_or_default())
            })
            .count() as i32;
        let desired = desired_healthy(&pdb, expected);
        let allowed = (healthy - desired).max(0);
        let (state, reason, message) = if allowed > 0 {
            ("True", "SufficientPods", String::new())
        } else {
            (
                "False",
                "InsufficientPods",
                format!("The disruption budget {} needs {desired} healthy pods and has {healthy} currently", key.name),
            )
        };
        let mut conditions = old.conditions.clone().unwrap_or_default();
        let previous = conditions
            .iter()
            .find(|c| c.type_ == "DisruptionAllowed")
            .cloned();
        if previous
            .as_ref()
            .is_none_or(|c| c.status != state || c.reason != reason)
        {
            conditions.retain(|c| c.type_ != "DisruptionAllowed");
            conditions.push(Condition {
                type_: "DisruptionAllowed".into(),
                status: state.into(),
                reason: reason.into(),
                message,
                last_transition_time: Time(now),
                observed_generation: pdb.metadata.generation,
            });
        }
        let status = PodDisruptionBudgetStatus {
            observed_generation: pdb.metadata.generation,
            disruptions_allowed: allowed,
            current_healthy: healthy,
            desired_healthy: desired,
            expected_pods: expected,
            disrupted_pods: (!disrupted.is_empty()).then_some(disrupted),
            conditions: Some(conditions),
        };
        if status != old {
            let api: Api<PodDisruptionBudget> = Api::namespaced(self.ctx.client.clone(), namespace);
            let mut patch = json!({"status": status});
            if status.disrupted_pods.is_none() {
                patch["status"]["disruptedPods"] = serde_json::Value::Null;
            }
            if !crate::controller::status_patch::merge_status(&api, &key.name, patch).await? {
                return Ok(Action::Done);
            }
        }
        Ok(match requeue {
            Some(wait) => Action::RequeueAfter(wait),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pdb(spec: serde_json::Value) -> PodDisruptionBudget {
        serde_json::from_value(json!({"metadata": {"name": "b"}, "spec": spec})).unwrap()
    }

    #[test]
    fn desired_healthy_follows_min_available_or_max_unavailable() {
        assert_eq!(desired_healthy(&pdb(json!({"minAvailable": 2})), 3), 2);
        assert_eq!(desired_healthy(&pdb(json!({"minAvailable": "50%"})), 3), 2);
        assert_eq!(desired_healthy(&pdb(json!({"maxUnavailable": 1})), 3), 2);
        assert_eq!(
            desired_healthy(&pdb(json!({"maxUnavailable": "50%"})), 3),
            1
        );
        assert_eq!(desired_healthy(&pdb(json!({})), 3), 3);
    }
}
