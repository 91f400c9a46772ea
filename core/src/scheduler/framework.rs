//! The scheduling framework's extension points, as small traits (the kube-scheduler framework's
//! shape). A [`Plugin`] says which points it implements through its `as_*` methods and which
//! cluster events may make a pod it rejected schedulable. `filter` and `score` are synchronous
//! functions of the pod, one [`NodeInfo`] and the cycle's [`CycleState`], so they can run for
//! many nodes in parallel; the binding points are async.

use super::node_info::NodeInfo;
use super::pod_info::PodInfo;
use super::snapshot::Snapshot;
use std::any::{Any, TypeId};
use std::collections::HashMap;

/// The highest score a score plugin gives (after normalization).
pub const MAX_NODE_SCORE: i64 = 100;

/// How a plugin turned a pod away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    /// Not now: a change in the cluster may make room.
    Unschedulable,
    /// Never on this node, whatever else changes (preemption cannot help).
    UnschedulableAndUnresolvable,
    /// The plugin failed.
    Error,
}

/// A rejection with every reason (filters report every shortfall, not the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub code: Code,
    /// The reasons, as `kubectl describe` shows them, e.g. `Insufficient cpu`.
    pub reasons: Vec<String>,
    /// The plugin that rejected.
    pub plugin: String,
}

impl Rejection {
    /// "Not now" with these reasons.
    pub fn unschedulable(plugin: &str, reasons: Vec<String>) -> Self {
        Rejection {
            code: Code::Unschedulable,
            reasons,
            plugin: plugin.into(),
        }
    }

    /// "Never on this node" with this reason.
    pub fn unresolvable(plugin: &str, reason: impl Into<String>) -> Self {
        Rejection {
            code: Code::UnschedulableAndUnresolvable,
            reasons: vec![reason.into()],
            plugin: plugin.into(),
        }
    }

    /// The plugin failed.
    pub fn error(plugin: &str, message: impl Into<String>) -> Self {
        Rejection {
            code: Code::Error,
            reasons: vec![message.into()],
            plugin: plugin.into(),
        }
    }
}

/// Per-cycle data a plugin writes in `pre_filter`/`pre_score` and reads later. Cloneable (so
/// preemption can evaluate "what if these pods were gone" on a copy).
pub trait StateData: Any + Send + Sync {
    /// A boxed copy.
    fn clone_box(&self) -> Box<dyn StateData>;
    /// As `Any`, to downcast.
    fn as_any(&self) -> &dyn Any;
    /// As mutable `Any`, to downcast.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any + Clone + Send + Sync> StateData for T {
    fn clone_box(&self) -> Box<dyn StateData> {
        Box::new(self.clone())
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The typed scratch space of one scheduling cycle. A handful of entries, read once per node
/// by filters and scorers: a short list compared by `TypeId` beats hashing.
#[derive(Default)]
pub struct CycleState {
    data: Vec<(TypeId, Box<dyn StateData>)>,
}

impl Clone for CycleState {
    fn clone(&self) -> Self {
        CycleState {
            data: self
                .data
                .iter()
                .map(|(k, v)| (*k, (**v).clone_box()))
                .collect(),
        }
    }
}

impl CycleState {
    /// Stores a value (one per type).
    pub fn write<T: Any + Clone + Send + Sync>(&mut self, value: T) {
        let id = TypeId::of::<T>();
        match self.data.iter_mut().find(|(k, _)| *k == id) {
            Some(entry) => entry.1 = Box::new(value),
            None => self.data.push((id, Box::new(value))),
        }
    }

    /// Reads a value written earlier in the cycle.
    pub fn read<T: Any + Clone + Send + Sync>(&self) -> Option<&T> {
        let id = TypeId::of::<T>();
        self.data
            .iter()
            .find(|(k, _)| *k == id)
            .and_then(|(_, v)| (**v).as_any().downcast_ref())
    }

    /// Changes a value written earlier in the cycle.
    pub fn read_mut<T: Any + Clone + Send + Sync>(&mut self) -> Option<&mut T> {
        let id = TypeId::of::<T>();
        self.data
            .iter_mut()
            .find(|(k, _)| *k == id)
            .and_then(|(_, v)| (**v).as_any_mut().downcast_mut())
    }
}

/// What kind of object changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventResource {
    /// A pod (assigned to a node, or deleted).
    Pod,
    /// A node.
    Node,
}

/// A cluster change that may make rejected pods schedulable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClusterEvent {
    /// What changed.
    pub resource: EventResource,
    /// How: added, updated or deleted.
    pub action: Action,
}

/// How an object changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Created.
    Add,
    /// Changed.
    Update,
    /// Deleted.
    Delete,
}

impl ClusterEvent {
    /// Shorthand.
    pub const fn new(resource: EventResource, action: Action) -> Self {
        ClusterEvent { resource, action }
    }
}

/// Runs once per cycle before filtering; may reject the pod outright or compute state.
pub trait PreFilterPlugin: Send + Sync {
    /// Prepares the cycle.
    fn pre_filter(
        &self,
        state: &mut CycleState,
        pod: &PodInfo,
        snapshot: &Snapshot,
    ) -> Result<(), Rejection>;

    /// Updates the plugin's state as if `other` were added to `node` (preemption's what-if).
    fn add_pod(&self, _state: &mut CycleState, _pod: &PodInfo, _other: &PodInfo, _node: &NodeInfo) {
    }

    /// Updates the plugin's state as if `other` were removed from `node`.
    fn remove_pod(
        &self,
        _state: &mut CycleState,
        _pod: &PodInfo,
        _other: &PodInfo,
        _node: &NodeInfo,
    ) {
    }
}

/// Whether the pod may run on one node. Pure; runs in parallel over nodes.
pub trait FilterPlugin: Send + Sync {
    /// `Ok` when the node passes.
    fn filter(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection>;

    /// Whether `filter` has anything to check for this pod, asked once per cycle after
    /// pre-filter (kube-scheduler's PreFilter `Skip`): `false` passes every node without
    /// calling `filter`. Default: it has.
    fn applies(&self, _state: &CycleState, _pod: &PodInfo) -> bool {
        true
    }
}

/// Whether a plugin scores this cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PreScore {
    /// Score the feasible nodes.
    Score,
    /// Nothing to say about this pod: the plugin's score is skipped this cycle.
    Skip,
}

/// Runs once per cycle before scoring, over the feasible nodes.
pub trait PreScorePlugin: Send + Sync {
    /// Prepares scoring, or says the plugin has nothing to score for this pod.
    fn pre_score(&self, state: &mut CycleState, pod: &PodInfo, nodes: &[&NodeInfo]) -> PreScore;
}

/// How much a feasible node suits the pod. Pure; runs in parallel over nodes.
pub trait ScorePlugin: Send + Sync {
    /// A raw score.
    fn score(&self, state: &CycleState, pod: &PodInfo, node: &NodeInfo) -> i64;

    /// Whether the plugin has anything to score for `pod` (default: yes). Plugins with a
    /// pre-score step say so there instead.
    fn applies(&self, _pod: &PodInfo) -> bool {
        true
    }

    /// Brings raw scores into `0..=MAX_NODE_SCORE` (default: they already are).
    fn normalize(&self, _state: &CycleState, _pod: &PodInfo, _scores: &mut [i64]) {}
}

/// Claims resources when a node is chosen; `unreserve` undoes it (idempotent) if a later step
/// fails.
pub trait ReservePlugin: Send + Sync {
    /// Reserves.
    fn reserve(&self, state: &mut CycleState, pod: &PodInfo, node: &str) -> Result<(), Rejection>;
    /// Undoes `reserve`; must be idempotent.
    fn unreserve(&self, state: &mut CycleState, pod: &PodInfo, node: &str);
}

/// The last word before binding.
pub trait PermitPlugin: Send + Sync {
    /// `Ok` allows binding.
    fn permit(&self, state: &CycleState, pod: &PodInfo, node: &str) -> Result<(), Rejection>;
}

/// Work before the binding is written (e.g. provisioning).
#[async_trait::async_trait]
pub trait PreBindPlugin: Send + Sync {
    /// Runs before binding.
    async fn pre_bind(&self, pod: &PodInfo, node: &str) -> Result<(), Rejection>;
}

/// Writes the binding. The first bind plugin that does not pass (`Ok(false)`) binds.
#[async_trait::async_trait]
pub trait BindPlugin: Send + Sync {
    /// Binds, or returns `Ok(false)` to let the next bind plugin do it.
    async fn bind(&self, pod: &PodInfo, node: &str) -> Result<bool, Rejection>;
}

/// Told after a successful binding.
pub trait PostBindPlugin: Send + Sync {
    /// Informational.
    fn post_bind(&self, pod: &PodInfo, node: &str);
}

/// What a post-filter plugin proposes: nominate the pod to a node once these victims are gone.
#[derive(Debug, Clone)]
pub struct Nomination {
    /// The node the pod should go to.
    pub node: String,
    /// The pods to evict to make room.
    pub victims: Vec<std::sync::Arc<PodInfo>>,
}

/// Runs when no node passed the filters (e.g. preemption). Pure: it only proposes; the
/// scheduler evicts the victims and nominates the pod.
pub trait PostFilterPlugin: Send + Sync {
    /// Proposes a way to make room, given each node's rejection.
    fn post_filter(
        &self,
        pod: &PodInfo,
        profile: &super::Profile,
        snapshot: &Snapshot,
        rejections: &HashMap<String, Rejection>,
    ) -> Option<Nomination>;
}

/// A scheduler plugin: a name, the extension points it implements, and the cluster events after
/// which a pod it rejected should be retried.
pub trait Plugin: Send + Sync {
    /// The plugin's name (in profiles, events and metrics).
    fn name(&self) -> &str;
    /// As a pre-filter plugin.
    fn as_pre_filter(&self) -> Option<&dyn PreFilterPlugin> {
        None
    }
    /// As a filter plugin.
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        None
    }
    /// As a post-filter plugin.
    fn as_post_filter(&self) -> Option<&dyn PostFilterPlugin> {
        None
    }
    /// As a pre-score plugin.
    fn as_pre_score(&self) -> Option<&dyn PreScorePlugin> {
        None
    }
    /// As a score plugin.
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        None
    }
    /// As a reserve plugin.
    fn as_reserve(&self) -> Option<&dyn ReservePlugin> {
        None
    }
    /// As a permit plugin.
    fn as_permit(&self) -> Option<&dyn PermitPlugin> {
        None
    }
    /// As a pre-bind plugin.
    fn as_pre_bind(&self) -> Option<&dyn PreBindPlugin> {
        None
    }
    /// As a bind plugin.
    fn as_bind(&self) -> Option<&dyn BindPlugin> {
        None
    }
    /// As a post-bind plugin.
    fn as_post_bind(&self) -> Option<&dyn PostBindPlugin> {
        None
    }
    /// Whether this plugin's filter and score results are functions of the pod's spec and the
    /// one [`NodeInfo`] alone — not of the cycle state, other nodes, or pods on other nodes —
    /// so the scheduler may reuse them for a pod with the same spec on a node that has not
    /// changed since (its [`EquivalenceCache`](super::EquivalenceCache)). `false` unless the
    /// plugin says so; a plugin that says so wrongly gets stale results.
    fn node_local(&self) -> bool {
        false
    }
    /// Cluster events that may make a pod this plugin rejected schedulable.
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        vec![
            ClusterEvent::new(EventResource::Node, Action::Add),
            ClusterEvent::new(EventResource::Node, Action::Update),
        ]
    }
}
