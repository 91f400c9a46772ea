//! The node lifecycle controller: a node whose agent stops renewing its Lease (and posting
//! status) for the grace period gets its conditions set to `Unknown`, its pods marked not
//! ready, and the `node.kubernetes.io/unreachable` taints (NoSchedule and NoExecute); a node
//! reporting `Ready=False` gets the `not-ready` taints; a healthy node loses them. Pods on a
//! node with NoExecute taints are evicted (deleted) at once when they do not tolerate a taint,
//! or after the shortest matching `tolerationSeconds` since the taint was added, so their
//! controllers replace them elsewhere. Nodes it first sees or sees go are announced with
//! `RegisteredNode` and `RemovingNode` Events.

use super::cache::{pods_by_node, BY_POD_NODE};
use super::informer::{Change, Informer};
use super::runner::{Action, Reconciler};
use super::{ControllerContext, ControllerError, EventType, ObjectKey, WorkQueue};
use crate::taints::tolerates;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, ObjectReference, Pod, Taint, Toleration};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The taint of a node whose agent stopped reporting.
pub const UNREACHABLE: &str = "node.kubernetes.io/unreachable";
/// The taint of a node reporting `Ready=False`.
pub const NOT_READY: &str = "node.kubernetes.io/not-ready";
const LEASE_NAMESPACE: &str = "kube-node-lease";

/// Settings of the [`NodeLifecycleController`].
#[derive(Debug, Clone)]
pub struct NodeLifecycleConfig {
    /// How long a node may go without renewing its Lease or posting status before it is
    /// considered unreachable (Kubernetes: 40 s).
    pub grace_period: Duration,
}

impl Default for NodeLifecycleConfig {
    fn default() -> Self {
        NodeLifecycleConfig {
            grace_period: Duration::from_secs(40),
        }
    }
}

/// Reconciles node health, taints and NoExecute evictions.
pub struct NodeLifecycleController {
    ctx: ControllerContext,
    nodes: Informer<Node>,
    leases: Informer<Lease>,
    pods: Informer<Pod>,
    config: NodeLifecycleConfig,
    /// The nodes this controller has announced (`RegisteredNode`), name to uid.
    registered: Mutex<HashMap<String, String>>,
}

fn since(time: &k8s_openapi::jiff::Timestamp) -> Duration {
    Duration::try_from(k8s_openapi::jiff::Timestamp::now().duration_since(*time))
        .unwrap_or_default()
}

/// How long a pod may stay on a node with these NoExecute taints: `None` forever, zero when a
/// taint is not tolerated at all, else the shortest matching `tolerationSeconds` counted from
/// when that taint was added.
fn eviction_delay(pod: &Pod, taints: &[Taint]) -> Option<Duration> {
    let tolerations = pod
        .spec
        .as_ref()
        .and_then(|s| s.tolerations.clone())
        .unwrap_or_default();
    let mut delay: Option<Duration> = None;
    for taint in taints.iter().filter(|t| t.effect == "NoExecute") {
        let matching: Vec<&Toleration> =
            tolerations.iter().filter(|t| tolerates(t, taint)).collect();
        if matching.is_empty() {
            return Some(Duration::ZERO);
        }
        // Without tolerationSeconds a matching toleration holds forever.
        let Some(seconds) = matching.iter().filter_map(|t| t.toleration_seconds).min() else {
            continue;
        };
        if matching.iter().any(|t| t.toleration_seconds.is_none()) {
            continue;
        }
        let added = taint
            .time_added
            .as_ref()
            .map(|t| since(&t.0))
            .unwrap_or_default();
        let remaining = Duration::from_secs(seconds.max(0) as u64).saturating_sub(added);
        delay = Some(delay.map_or(remaining, |d| d.min(remaining)));
    }
    delay
}

impl NodeLifecycleController {
    /// A controller over the context's shared informers.
    pub fn new(ctx: &ControllerContext, config: NodeLifecycleConfig) -> Self {
        let pods: Informer<Pod> = ctx.informers.informer();
        pods.add_index(BY_POD_NODE, pods_by_node());
        NodeLifecycleController {
            ctx: ctx.clone(),
            nodes: ctx.informers.informer(),
            leases: ctx.informers.informer(),
            pods,
            config,
            registered: Mutex::new(HashMap::new()),
        }
    }

    /// Records `RegisteredNode` for a node seen for the first time and `RemovingNode` for one
    /// gone, as Kubernetes' node controller does (`kubectl describe node` lists them).
    fn announce(&self, name: &str, node: Option<&Node>) {
        let mut registered = self.registered.lock().unwrap_or_else(|p| p.into_inner());
        let reference = |uid: &str| ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Node".into()),
            name: Some(name.into()),
            uid: Some(uid.into()),
            ..Default::default()
        };
        match node {
            Some(node) => {
                let uid = node.metadata.uid.clone().unwrap_or_default();
                if registered.get(name) != Some(&uid) {
                    registered.insert(name.to_string(), uid.clone());
                    self.ctx.recorder.record(
                        reference(&uid),
                        EventType::Normal,
                        "RegisteredNode",
                        &format!("Node {name} event: Registered Node {name} in Controller"),
                    );
                }
            }
            None => {
                if let Some(uid) = registered.remove(name) {
                    self.ctx.recorder.record(
                        reference(&uid),
                        EventType::Normal,
                        "RemovingNode",
                        &format!("Node {name} event: Removing Node {name} from Controller"),
                    );
                }
            }
        }
    }

    pub(crate) fn triggers(
        &self,
        queue: &Arc<WorkQueue<ObjectKey>>,
        stop: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let own = super::triggers::enqueue_own(&self.nodes, queue.clone(), stop.clone());
        let leases =
            super::triggers::enqueue_changes(&self.leases, queue.clone(), stop.clone(), |change| {
                change
                    .object()
                    .filter(|l| l.metadata.namespace.as_deref() == Some(LEASE_NAMESPACE))
                    .map(|l| ObjectKey::cluster(l.metadata.name.clone().unwrap_or_default()))
                    .into_iter()
                    .collect()
            });
        // A pod landing on a tainted node may have to leave.
        let pods =
            super::triggers::enqueue_changes(&self.pods, queue.clone(), stop.clone(), |change| {
                let Change::Applied { old, new } = change else {
                    return Vec::new();
                };
                let node = |p: &Pod| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.node_name.clone())
                        .filter(|n| !n.is_empty())
                };
                let moved = old.as_ref().is_none_or(|o| node(o) != node(new));
                match (moved, node(new)) {
                    (true, Some(name)) => vec![ObjectKey::cluster(name)],
                    _ => Vec::new(),
                }
            });
        vec![own, leases, pods]
    }

    /// When the node was last heard from: its Lease renewal or its Ready condition's heartbeat.
    fn last_heard(&self, node: &Node) -> Option<k8s_openapi::jiff::Timestamp> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let lease = self
            .leases
            .get(&ObjectKey::namespaced(LEASE_NAMESPACE, name))
            .and_then(|l| l.spec.as_ref()?.renew_time.as_ref().map(|t| t.0));
        let heartbeat = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .and_then(|c| c.last_heartbeat_time.as_ref().map(|t| t.0));
        let created = node.metadata.creation_timestamp.as_ref().map(|t| t.0);
        [lease, heartbeat, created].into_iter().flatten().max()
    }

    async fn mark_unknown(&self, node: &Node) -> Result<(), ControllerError> {
        let name = node.metadata.name.clone().unwrap_or_default();
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        let mut conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.clone())
            .unwrap_or_default();
        for condition in conditions.iter_mut() {
            if ["Ready", "MemoryPressure", "DiskPressure", "PIDPressure"]
                .contains(&condition.type_.as_str())
            {
                condition.status = "Unknown".into();
                condition.reason = Some("NodeStatusUnknown".into());
                condition.message = Some("Kubelet stopped posting node status.".into());
                condition.last_transition_time = Some(now.clone());
            }
        }
        if !conditions.iter().any(|c| c.type_ == "Ready") {
            conditions.push(k8s_openapi::api::core::v1::NodeCondition {
                type_: "Ready".into(),
                status: "Unknown".into(),
                reason: Some("NodeStatusNeverUpdated".into()),
                message: Some("Kubelet never posted node status.".into()),
                last_transition_time: Some(now.clone()),
                last_heartbeat_time: None,
            });
        }
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"conditions": conditions}})),
        )
        .await?;
        self.ctx.recorder.record_for(
            node,
            EventType::Normal,
            "NodeNotReady",
            &format!("Node {name} status is now: NodeNotReady"),
        );
        // Its pods are no longer known to be ready.
        for pod in self.pods.by_index(BY_POD_NODE, &name) {
            let Some(status) = pod.status.as_ref() else {
                continue;
            };
            let mut conditions = status.conditions.clone().unwrap_or_default();
            let mut changed = false;
            for c in conditions
                .iter_mut()
                .filter(|c| c.type_ == "Ready" && c.status != "False")
            {
                c.status = "False".into();
                c.reason = Some("NodeNotReady".into());
                c.last_transition_time = Some(now.clone());
                changed = true;
            }
            if !changed {
                continue;
            }
            let pods: Api<Pod> = Api::namespaced(
                self.ctx.client.clone(),
                pod.metadata.namespace.as_deref().unwrap_or_default(),
            );
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            match pods
                .patch_status(
                    &pod_name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"conditions": conditions}})),
                )
                .await
            {
                Ok(_) => {}
                Err(err) if super::error::is_not_found(&err) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    async fn set_taints(
        &self,
        node: &Node,
        wanted_key: Option<&str>,
    ) -> Result<Vec<Taint>, ControllerError> {
        let current = node
            .spec
            .as_ref()
            .and_then(|s| s.taints.clone())
            .unwrap_or_default();
        let mut taints: Vec<Taint> = current
            .iter()
            .filter(|t| {
                !([UNREACHABLE, NOT_READY].contains(&t.key.as_str())
                    && Some(t.key.as_str()) != wanted_key)
            })
            .cloned()
            .collect();
        if let Some(key) = wanted_key {
            for effect in ["NoSchedule", "NoExecute"] {
                if !taints.iter().any(|t| t.key == key && t.effect == effect) {
                    taints.push(Taint {
                        key: key.into(),
                        effect: effect.into(),
                        value: None,
                        time_added: (effect == "NoExecute")
                            .then(|| Time(k8s_openapi::jiff::Timestamp::now())),
                    });
                }
            }
        }
        if taints == current {
            return Ok(taints);
        }
        let name = node.metadata.name.clone().unwrap_or_default();
        let set = if node.spec.is_some() {
            json!({"op": "add", "path": "/spec/taints", "value": taints})
        } else {
            json!({"op": "add", "path": "/spec", "value": {"taints": taints}})
        };
        let patch = json!([
            {"op": "test", "path": "/metadata/resourceVersion", "value": node.metadata.resource_version},
            set,
        ]);
        let patch: json_patch::Patch = serde_json::from_value(patch)?;
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await?;
        Ok(taints)
    }

    /// Deletes the node's pods whose time under its NoExecute taints is up; returns when the
    /// next one is due.
    async fn evict(
        &self,
        node: &str,
        taints: &[Taint],
    ) -> Result<Option<Duration>, ControllerError> {
        if !taints.iter().any(|t| t.effect == "NoExecute") {
            return Ok(None);
        }
        let mut next: Option<Duration> = None;
        for pod in self.pods.by_index(BY_POD_NODE, node) {
            if pod.metadata.deletion_timestamp.is_some() {
                continue;
            }
            match eviction_delay(&pod, taints) {
                None => {}
                Some(delay) if delay.is_zero() => {
                    let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                    let name = pod.metadata.name.clone().unwrap_or_default();
                    let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), &namespace);
                    match pods.delete(&name, &DeleteParams::default()).await {
                        Ok(_) => self.ctx.recorder.record_for(
                            pod.as_ref(),
                            EventType::Normal,
                            "TaintManagerEviction",
                            &format!("Marking for deletion Pod {namespace}/{name}"),
                        ),
                        Err(err) if super::error::is_not_found(&err) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                Some(delay) => next = Some(next.map_or(delay, |n| n.min(delay))),
            }
        }
        Ok(next)
    }
}

#[async_trait::async_trait]
impl Reconciler for NodeLifecycleController {
    fn name(&self) -> &str {
        "node-lifecycle"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        let node = self.nodes.get(key);
        self.announce(&key.name, node.as_deref());
        let Some(node) = node else {
            return Ok(Action::Done);
        };
        let grace = self.config.grace_period;
        let silent_for = self
            .last_heard(&node)
            .map(|t| since(&t))
            .unwrap_or_default();
        let ready = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"))
            .map(|c| c.status.clone());
        let mut next_check = None;
        let taint = if silent_for >= grace {
            if ready.as_deref() != Some("Unknown") {
                self.mark_unknown(&node).await?;
            }
            Some(UNREACHABLE)
        } else {
            next_check = Some(grace - silent_for + Duration::from_millis(200));
            match ready.as_deref() {
                Some("True") => None,
                Some("False") => Some(NOT_READY),
                // Unknown but heard from again: wait for the agent to post Ready.
                _ => node
                    .spec
                    .as_ref()
                    .and_then(|s| s.taints.as_ref())
                    .and_then(|ts| {
                        ts.iter()
                            .find(|t| t.key == UNREACHABLE || t.key == NOT_READY)
                    })
                    .map(|t| {
                        if t.key == UNREACHABLE {
                            UNREACHABLE
                        } else {
                            NOT_READY
                        }
                    }),
            }
        };
        let taints = self.set_taints(&node, taint).await?;
        let eviction = self.evict(&key.name, &taints).await?;
        let next = [next_check, eviction.map(|d| d + Duration::from_millis(100))]
            .into_iter()
            .flatten()
            .min();
        Ok(match next {
            Some(after) => Action::RequeueAfter(after),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taint(key: &str, effect: &str) -> Taint {
        Taint {
            key: key.into(),
            effect: effect.into(),
            value: None,
            time_added: None,
        }
    }

    fn pod_with(tolerations: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": {"containers": [], "tolerations": tolerations}})).unwrap()
    }

    #[test]
    fn tolerations_match_by_key_operator_and_effect() {
        let t: Toleration = serde_json::from_value(
            json!({"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}),
        )
        .unwrap();
        assert!(tolerates(&t, &taint(UNREACHABLE, "NoExecute")));
        assert!(!tolerates(&t, &taint(UNREACHABLE, "NoSchedule")));
        assert!(!tolerates(&t, &taint(NOT_READY, "NoExecute")));
        let everything: Toleration = serde_json::from_value(json!({"operator": "Exists"})).unwrap();
        assert!(tolerates(&everything, &taint("x", "NoExecute")));
        let equal: Toleration = serde_json::from_value(json!({"key": "k", "value": "v"})).unwrap();
        let mut valued = taint("k", "NoSchedule");
        valued.value = Some("v".into());
        assert!(tolerates(&equal, &valued));
        valued.value = Some("w".into());
        assert!(!tolerates(&equal, &valued));
    }

    #[test]
    fn eviction_is_immediate_without_toleration_and_delayed_with_seconds() {
        let taints = [taint(UNREACHABLE, "NoExecute")];
        assert_eq!(
            eviction_delay(&pod_with(json!([])), &taints),
            Some(Duration::ZERO)
        );
        let forever =
            pod_with(json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute"}]));
        assert_eq!(eviction_delay(&forever, &taints), None);
        let bounded = pod_with(
            json!([{"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 30}]),
        );
        assert_eq!(
            eviction_delay(&bounded, &taints),
            Some(Duration::from_secs(30))
        );
        // NoSchedule taints never evict.
        assert_eq!(
            eviction_delay(&pod_with(json!([])), &[taint(UNREACHABLE, "NoSchedule")]),
            None
        );
    }
}
