//! The DaemonSet controller: one pod per eligible node — a node whose labels and fields satisfy
//! the template's nodeSelector and required node affinity and whose NoSchedule/NoExecute taints
//! the pod tolerates (with the tolerations Kubernetes adds to daemon pods) — created as nodes
//! come and removed as they go or stop being eligible. Each pod is pinned to its node by a
//! `metadata.name` node-affinity term and placed by the scheduler. Templates are recorded as
//! ControllerRevisions; a RollingUpdate replaces old pods within `maxUnavailable`, OnDelete
//! only when they are deleted. Reports `status` as `kubectl rollout status` reads it.

use super::controller_revision::{self, REVISION_HASH};
use super::deployment::rollout::resolve;
use super::expectations::Expectations;
use super::informer::Informer;
use super::pod_facts::{self, controller_of, controller_reference};
use super::runner::{Action, Reconciler};
use super::{ControllerContext, ControllerError, EventType, ObjectKey};
use crate::scheduler::plugins::node_affinity::required_matches;
use crate::scheduler::{NodeInfo, PodInfo};
use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet, DaemonSetStatus};
use k8s_openapi::api::core::v1::{
    Affinity, Node, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
    Toleration,
};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Reconciles DaemonSets.
pub struct DaemonSetController {
    ctx: ControllerContext,
    daemon_sets: Informer<DaemonSet>,
    pods: Informer<Pod>,
    nodes: Informer<Node>,
    revisions: Informer<ControllerRevision>,
    expectations: Arc<Expectations>,
}

/// The tolerations every daemon pod gets, so node conditions and cordons do not evict or keep
/// it away.
fn daemon_tolerations() -> Vec<Toleration> {
    let exists = |key: &str, effect: &str| Toleration {
        key: Some(key.into()),
        operator: Some("Exists".into()),
        effect: Some(effect.into()),
        ..Default::default()
    };
    vec![
        exists("node.kubernetes.io/not-ready", "NoExecute"),
        exists("node.kubernetes.io/unreachable", "NoExecute"),
        exists("node.kubernetes.io/disk-pressure", "NoSchedule"),
        exists("node.kubernetes.io/memory-pressure", "NoSchedule"),
        exists("node.kubernetes.io/pid-pressure", "NoSchedule"),
        exists("node.kubernetes.io/unschedulable", "NoSchedule"),
    ]
}

/// The daemon pod for `node` (without node pinning when `node` is `None`: for eligibility).
fn pod_for(ds: &DaemonSet, hash: &str, node: Option<&str>) -> Pod {
    let template = ds
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .unwrap_or_default();
    let mut metadata = template.metadata.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    metadata.name = None;
    metadata.generate_name = Some(format!("{}-", ds.metadata.name.clone().unwrap_or_default()));
    metadata.namespace = ds.metadata.namespace.clone();
    metadata.owner_references = Some(vec![controller_reference(ds)]);
    metadata
        .labels
        .get_or_insert_with(BTreeMap::new)
        .insert(REVISION_HASH.into(), hash.into());
    let tolerations = spec.tolerations.get_or_insert_with(Vec::new);
    for t in daemon_tolerations() {
        if !tolerations
            .iter()
            .any(|e| e.key == t.key && e.effect == t.effect)
        {
            tolerations.push(t);
        }
    }
    if let Some(node) = node {
        // Pinned to its node through affinity (the scheduler still checks resources and ports).
        let affinity = spec.affinity.get_or_insert_with(Affinity::default);
        let node_affinity = affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default);
        node_affinity.required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: vec![NodeSelectorTerm {
                match_fields: Some(vec![NodeSelectorRequirement {
                    key: "metadata.name".into(),
                    operator: "In".into(),
                    values: Some(vec![node.into()]),
                }]),
                match_expressions: None,
            }],
        });
    }
    Pod {
        metadata,
        spec: Some(spec),
        status: None,
    }
}

/// Whether the daemon pod belongs on `node`.
fn eligible(template: &PodInfo, node: &Node) -> bool {
    let info = NodeInfo::new(Arc::new(node.clone()));
    if !required_matches(template, &info) {
        return false;
    }
    let tolerations = template
        .pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.as_deref())
        .unwrap_or_default();
    info.taints.iter().all(|t| {
        !(t.effect == "NoSchedule" || t.effect == "NoExecute")
            || crate::taints::tolerated(tolerations, t)
    })
}

/// The node a daemon pod is for: where it is bound, or the node its affinity pins it to.
fn target_node(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    if let Some(name) = spec.node_name.as_ref().filter(|n| !n.is_empty()) {
        return Some(name.clone());
    }
    spec.affinity
        .as_ref()?
        .node_affinity
        .as_ref()?
        .required_during_scheduling_ignored_during_execution
        .as_ref()?
        .node_selector_terms
        .iter()
        .flat_map(|t| t.match_fields.iter().flatten())
        .find(|r| r.key == "metadata.name" && r.operator == "In")
        .and_then(|r| r.values.as_ref()?.first().cloned())
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH))
        .map(String::as_str)
}

impl DaemonSetController {
    /// A controller over the context's shared informers.
    pub fn new(ctx: &ControllerContext) -> Self {
        DaemonSetController {
            ctx: ctx.clone(),
            daemon_sets: ctx.informers.informer(),
            pods: ctx.informers.informer(),
            nodes: ctx.informers.informer(),
            revisions: ctx.informers.informer(),
            expectations: Arc::new(Expectations::default()),
        }
    }

    /// The informer keys each change affects: the DaemonSet, its pods' owner, and every
    /// DaemonSet on node changes.
    pub(crate) fn triggers(
        &self,
        queue: &Arc<super::WorkQueue<ObjectKey>>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let own = super::triggers::enqueue_own(&self.daemon_sets, queue.clone(), stop.clone());
        let daemon_sets = self.daemon_sets.clone();
        let expectations = self.expectations.clone();
        let pods = super::triggers::enqueue_changes(
            &self.pods,
            queue.clone(),
            stop.clone(),
            move |change| {
                super::triggers::owner_keys(change, "DaemonSet", &daemon_sets, &expectations)
            },
        );
        let all = self.daemon_sets.clone();
        let nodes = super::triggers::enqueue_changes(
            &self.nodes,
            queue.clone(),
            stop.clone(),
            move |change| match change {
                // Heartbeats change nothing a DaemonSet looks at.
                super::Change::Applied {
                    old: Some(old),
                    new,
                } if old.metadata.labels == new.metadata.labels && old.spec == new.spec => {
                    Vec::new()
                }
                _ => all.keys(),
            },
        );
        vec![own, pods, nodes]
    }

    async fn create_pods(
        &self,
        ds: &DaemonSet,
        hash: &str,
        nodes: &[String],
    ) -> Result<(), ControllerError> {
        if nodes.is_empty() {
            return Ok(());
        }
        let key = ObjectKey::of(ds);
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), key.namespace_or_empty());
        self.expectations.expect(&key, nodes.len() as i64, 0);
        let templates: Vec<Pod> = nodes.iter().map(|n| pod_for(ds, hash, Some(n))).collect();
        let params = PostParams::default();
        let results =
            futures::future::join_all(templates.iter().map(|p| api.create(&params, p))).await;
        let mut failure = None;
        for (result, node) in results.into_iter().zip(nodes) {
            match result {
                Ok(pod) => self.ctx.recorder.record_for(
                    ds,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!(
                        "Created pod: {} on {node}",
                        pod.metadata.name.unwrap_or_default()
                    ),
                ),
                Err(err) => {
                    self.expectations.creation_observed(&key);
                    failure.get_or_insert(err);
                }
            }
        }
        match failure {
            Some(err) => Err(err.into()),
            None => Ok(()),
        }
    }

    async fn delete_pods(&self, ds: &DaemonSet, pods: &[Arc<Pod>]) -> Result<(), ControllerError> {
        if pods.is_empty() {
            return Ok(());
        }
        let key = ObjectKey::of(ds);
        let api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), key.namespace_or_empty());
        self.expectations.expect(&key, 0, pods.len() as i64);
        for pod in pods {
            let name = pod.metadata.name.clone().unwrap_or_default();
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => self.ctx.recorder.record_for(
                    ds,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {name}"),
                ),
                Err(err) => {
                    self.expectations.deletion_observed(&key);
                    if !super::error::is_not_found(&err) {
                        return Err(err.into());
                    }
                }
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Reconciler for DaemonSetController {
    fn name(&self) -> &str {
        "daemonset"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        let Some(ds) = self.daemon_sets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        if ds.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let namespace = key.namespace_or_empty();
        let uid = ds.metadata.uid.clone().unwrap_or_default();
        let spec = ds.spec.clone().unwrap_or_default();
        let revisions_api: Api<ControllerRevision> =
            Api::namespaced(self.ctx.client.clone(), namespace);
        let revisions = controller_revision::owned(self.revisions.in_namespace(namespace), &uid);
        let (hash, _) = controller_revision::ensure(
            &revisions_api,
            controller_reference(ds.as_ref()),
            &spec.template,
            &revisions,
        )
        .await?;
        let template = PodInfo::new(Arc::new(pod_for(&ds, &hash, None)));
        let mut by_node: HashMap<String, Vec<Arc<Pod>>> = HashMap::new();
        let mut to_delete: Vec<Arc<Pod>> = Vec::new();
        let owned: Vec<Arc<Pod>> = self
            .pods
            .owned_by(&uid)
            .into_iter()
            .filter(|p| controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
            .collect();
        for pod in &owned {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            if pod_facts::is_terminal(pod) {
                // A daemon pod that ended is replaced.
                to_delete.push(pod.clone());
                continue;
            }
            match target_node(pod) {
                Some(node) => by_node.entry(node).or_default().push(pod.clone()),
                None => to_delete.push(pod.clone()),
            }
        }
        let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
        let mut to_create = Vec::new();
        let mut status = DaemonSetStatus {
            observed_generation: ds.metadata.generation,
            ..Default::default()
        };
        let mut unavailable = 0;
        let mut old_pods: Vec<Arc<Pod>> = Vec::new();
        let nodes = self.nodes.list();
        let known: std::collections::HashSet<&str> = nodes
            .iter()
            .filter_map(|n| n.metadata.name.as_deref())
            .collect();
        for node in &nodes {
            let name = node.metadata.name.clone().unwrap_or_default();
            let mut pods = by_node.remove(&name).unwrap_or_default();
            if !eligible(&template, node) {
                if !pods.is_empty() {
                    status.number_misscheduled += 1;
                    to_delete.append(&mut pods);
                }
                continue;
            }
            status.desired_number_scheduled += 1;
            if pods.is_empty() {
                to_create.push(name);
                unavailable += 1;
                continue;
            }
            // One per node: the oldest stays.
            pods.sort_by_key(|p| p.metadata.creation_timestamp.as_ref().map(|t| t.0));
            to_delete.extend(pods.drain(1..));
            let pod = &pods[0];
            status.current_number_scheduled += 1;
            if pod_facts::is_ready(pod) {
                status.number_ready += 1;
            }
            let available = pod_facts::is_available(pod, min_ready);
            if available {
                status.number_available = Some(status.number_available.unwrap_or(0) + 1);
            } else {
                unavailable += 1;
            }
            if hash_of(pod) == Some(hash.as_str()) {
                status.updated_number_scheduled =
                    Some(status.updated_number_scheduled.unwrap_or(0) + 1);
            } else {
                old_pods.push(pod.clone());
            }
        }
        // Pods for nodes that are gone.
        for (node, pods) in by_node {
            if !known.contains(node.as_str()) {
                to_delete.extend(pods);
            }
        }
        let rolling = spec
            .update_strategy
            .as_ref()
            .and_then(|s| s.type_.as_deref())
            .unwrap_or("RollingUpdate")
            == "RollingUpdate";
        if rolling && !old_pods.is_empty() {
            let max_unavailable = resolve(
                spec.update_strategy
                    .as_ref()
                    .and_then(|s| s.rolling_update.as_ref())
                    .and_then(|r| r.max_unavailable.as_ref())
                    .or(Some(
                        &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(1),
                    )),
                status.desired_number_scheduled,
                true,
            )
            .max(1);
            // Old pods that are not available anyway go first; then available ones within
            // the budget.
            let (broken, healthy): (Vec<_>, Vec<_>) = old_pods
                .into_iter()
                .partition(|p| !pod_facts::is_available(p, min_ready));
            let budget = (max_unavailable - unavailable).max(0) as usize;
            to_delete.extend(broken);
            to_delete.extend(healthy.into_iter().take(budget));
        }
        status.number_unavailable = Some(unavailable).filter(|n| *n > 0);
        if self.expectations.satisfied(key) {
            self.delete_pods(&ds, &to_delete).await?;
            self.create_pods(&ds, &hash, &to_create).await?;
        }
        let in_use: Vec<String> = owned
            .iter()
            .filter_map(|p| hash_of(p).map(str::to_string))
            .chain([hash.clone()])
            .collect();
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        controller_revision::prune(&revisions_api, &revisions, &in_use, limit).await?;
        if ds.status.as_ref() != Some(&status) {
            let api: Api<DaemonSet> = Api::namespaced(self.ctx.client.clone(), namespace);
            let mut patch = json!({"status": status});
            for field in [
                "numberUnavailable",
                "numberAvailable",
                "updatedNumberScheduled",
            ] {
                if patch["status"].get(field).is_none() {
                    patch["status"][field] = serde_json::Value::Null;
                }
            }
            if !crate::controller::status_patch::merge_status(&api, &key.name, patch).await? {
                return Ok(Action::Done);
            }
        }
        let next = owned
            .iter()
            .filter_map(|p| pod_facts::available_in(p, min_ready))
            .min();
        Ok(match next {
            Some(wait) => Action::RequeueAfter(wait + Duration::from_millis(100)),
            None => Action::Done,
        })
    }
}
