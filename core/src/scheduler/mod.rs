//! The scheduler: assigns pending pods to nodes through the `pods/binding` subresource.
//!
//! It reads nodes and pods through shared informers (straight from the watch cache when it runs
//! in the API server's process) into an incrementally updated [`Snapshot`], takes pods from a
//! [`SchedulingQueue`] one at a time on a dedicated thread, and runs the [`framework`]'s
//! extension points of the pod's [`Profile`]: filters (in parallel on large clusters, stopping
//! once enough nodes are feasible), scores, a seeded tie-break — reusing, per profile, the
//! node-local plugins' results for nodes unchanged since a pod of the same spec was decided
//! ([`EquivalenceCache`]) — then *assume* — the placement
//! is counted in the snapshot at once so the next pod sees it — and an asynchronous bind. A
//! failed bind un-assumes and requeues the pod; a pod that fits nowhere gets a
//! `FailedScheduling` Event with every reason and the `PodScheduled=False` condition, and waits
//! for a cluster event its rejecting plugins registered for. It never writes anything but
//! bindings, pod conditions and Events.

mod cycle;
mod equivalence;
pub mod framework;
mod node_info;
pub mod plugins;
mod pod_info;
mod profile;
mod queue;
mod resources;
mod snapshot;

pub use cycle::{decide, decide_cached, CycleStateHolder, Decision, TieBreaker, Unschedulable};
pub use equivalence::EquivalenceCache;
pub use framework::{ClusterEvent, Plugin};
pub use node_info::NodeInfo;
pub use pod_info::{HostPort, PodInfo};
pub use profile::{feasible_nodes_to_find, Profile, DEFAULT_SCHEDULER};
pub use queue::{Attempt, SchedulingQueue};
pub use resources::Resources;
pub use snapshot::Snapshot;

use crate::apiserver::ApiServer;
use crate::controller::{
    Change, EventRecorder, EventType, Informer, InformerFactory, LeaderElectionConfig,
    LeaderElector, ObjectKey,
};
use framework::{Action, EventResource};
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::{Api, Patch, PatchParams};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Settings of a [`Scheduler`].
#[derive(Clone)]
pub struct SchedulerConfig {
    /// The profiles, by `spec.schedulerName`. Pods naming no profile here are left alone.
    pub profiles: Vec<Profile>,
    /// Seed of the tie-break between equally scored nodes (same inputs, same seed: same
    /// decisions).
    pub seed: u64,
    /// The component name on recorded Events.
    pub component: String,
}

impl Default for SchedulerConfig {
    /// The default profile, seed 0.
    fn default() -> Self {
        SchedulerConfig {
            profiles: vec![Profile::default_profile()],
            seed: 0,
            component: DEFAULT_SCHEDULER.into(),
        }
    }
}

/// Counters of a running scheduler.
#[derive(Debug, Default)]
pub struct SchedulerCounters {
    /// Pods bound.
    pub scheduled: AtomicU64,
    /// Cycles that found no node.
    pub unschedulable: AtomicU64,
    /// Binds that failed.
    pub bind_failures: AtomicU64,
}

struct Shared {
    snapshot: Mutex<Snapshot>,
    queue: SchedulingQueue,
    /// Pods placed by this scheduler and not yet seen bound: uid -> node.
    assumed: Mutex<HashMap<String, String>>,
    profiles: HashMap<String, Profile>,
    /// Per event, the plugins (of any profile) that registered for it.
    interest: HashMap<ClusterEvent, HashSet<String>>,
    counters: Arc<SchedulerCounters>,
    recorder: EventRecorder,
    client: kube::Client,
}

/// The scheduler; [`Scheduler::start`] runs it.
pub struct Scheduler {
    informers: InformerFactory,
    /// Whether `informers` is shared with other components (used as is, never stopped here).
    shares_informers: bool,
    config: SchedulerConfig,
}

/// A running scheduler; [`RunningScheduler::stop`] stops it.
pub struct RunningScheduler {
    stop: CancellationToken,
    shared: Arc<Shared>,
    thread: Option<std::thread::JoinHandle<()>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RunningScheduler {
    /// Stops scheduling (bindings in flight finish on their own).
    pub async fn stop(mut self) {
        self.stop.cancel();
        self.shared.queue.close();
        for task in self.tasks.drain(..) {
            task.abort();
        }
        if let Some(thread) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
    }

    /// The counters.
    pub fn counters(&self) -> &SchedulerCounters {
        &self.shared.counters
    }

    /// Pods waiting in the queue.
    pub fn pending(&self) -> usize {
        self.shared.queue.pending()
    }
}

/// A scheduler under leader election; [`ElectedScheduler::stop`] stops it and releases the
/// Lease.
pub struct ElectedScheduler {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl ElectedScheduler {
    /// Stops scheduling and gives the Lease up.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Feeds `informer`'s changes to `handle` until `stop`: once `ready`, the whole cache as
/// additions, then every change (and the whole cache again after missed changes).
fn follow<K, R, H>(
    informer: Informer<K>,
    ready: R,
    stop: CancellationToken,
    handle: H,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
    R: std::future::Future<Output = ()> + Send + 'static,
    H: Fn(&Change<K>) + Send + 'static,
{
    let mut changes = informer.subscribe();
    tokio::spawn(async move {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ready => {}
        }
        let replay = |handle: &H| {
            for object in informer.list() {
                handle(&Change::Applied {
                    old: None,
                    new: object,
                });
            }
        };
        replay(&handle);
        loop {
            let change = tokio::select! {
                _ = stop.cancelled() => return,
                c = changes.next() => c,
            };
            match change {
                None => return,
                Some(Change::Resync) => replay(&handle),
                Some(change) => handle(&change),
            }
        }
    })
}

fn assigned_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

fn terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

impl Scheduler {
    /// A scheduler reading and binding through `client`.
    pub fn new(client: kube::Client, config: SchedulerConfig) -> Self {
        Scheduler {
            informers: InformerFactory::new(client),
            shares_informers: false,
            config,
        }
    }

    /// A scheduler in `server`'s own process: informers fed straight from its watch cache.
    pub fn in_process(server: &ApiServer, config: SchedulerConfig) -> Self {
        Scheduler {
            informers: InformerFactory::in_process(server),
            shares_informers: false,
            config,
        }
    }

    /// A scheduler reading from `informers`, shared with other components of the process (a
    /// controller manager, node agents) so each kind is cached once; it binds through their
    /// client. The informers outlive leadership terms and are stopped by their owner.
    pub fn with_informers(informers: &InformerFactory, config: SchedulerConfig) -> Self {
        Scheduler {
            informers: informers.clone(),
            shares_informers: true,
            config,
        }
    }

    /// Schedules only while holding the `election` Lease (several replicas, one at work). Each
    /// term starts afresh from the API (from the shared informers' caches, when shared); losing
    /// the Lease stops scheduling at once.
    pub fn start_elected(self, election: LeaderElectionConfig) -> ElectedScheduler {
        let stop = CancellationToken::new();
        let client = self.informers.client().clone();
        let local = self.informers.clone();
        let shares_informers = self.shares_informers;
        let config = self.config;
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let elector = LeaderElector::new(client.clone(), election);
                elector
                    .run(stop, move |term| {
                        let scheduler = Scheduler {
                            informers: if shares_informers {
                                local.clone()
                            } else {
                                local.fresh()
                            },
                            shares_informers,
                            config: config.clone(),
                        };
                        async move {
                            let running = scheduler.start();
                            term.cancelled().await;
                            running.stop().await;
                        }
                    })
                    .await;
            })
        };
        ElectedScheduler { stop, task }
    }

    /// Starts watching and scheduling.
    pub fn start(self) -> RunningScheduler {
        let client = self.informers.client().clone();
        // Profiles without a bind plugin bind through the API.
        let binder: Arc<dyn Plugin> = Arc::new(plugins::DefaultBinder::new(client.clone()));
        let profiles: Vec<Profile> = self
            .config
            .profiles
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if !p
                    .plugins
                    .iter()
                    .any(|(plugin, _)| plugin.as_bind().is_some())
                {
                    p.plugins.push((binder.clone(), 0));
                }
                p
            })
            .collect();
        let mut interest: HashMap<ClusterEvent, HashSet<String>> = HashMap::new();
        for profile in &profiles {
            for (plugin, _) in &profile.plugins {
                for event in plugin.events_to_register() {
                    interest
                        .entry(event)
                        .or_default()
                        .insert(plugin.name().to_string());
                }
            }
        }
        let shared = Arc::new(Shared {
            snapshot: Mutex::new(Snapshot::new()),
            queue: SchedulingQueue::new(),
            assumed: Mutex::new(HashMap::new()),
            profiles: profiles
                .into_iter()
                .map(|p| (p.scheduler_name.clone(), p))
                .collect(),
            interest,
            counters: Arc::new(SchedulerCounters::default()),
            recorder: EventRecorder::new(client.clone(), &self.config.component),
            client,
        });
        let stop = CancellationToken::new();
        let nodes = self.informers.informer::<Node>();
        let pods = self.informers.informer::<Pod>();
        let mut tasks = Vec::new();
        {
            let shared = shared.clone();
            let ready = nodes.clone();
            tasks.push(follow(
                nodes.clone(),
                async move { ready.wait_synced().await },
                stop.clone(),
                move |change| shared.node_changed(change),
            ));
        }
        {
            let shared = shared.clone();
            let (ready_nodes, ready_pods) = (nodes.clone(), pods.clone());
            tasks.push(follow(
                pods.clone(),
                async move {
                    ready_nodes.wait_synced().await;
                    ready_pods.wait_synced().await;
                },
                stop.clone(),
                move |change| shared.pod_changed(change),
            ));
        }
        {
            let shared = shared.clone();
            let budgets = self.informers.informer::<PodDisruptionBudget>();
            let stop = stop.clone();
            let mut changes = budgets.subscribe();
            tasks.push(tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = budgets.wait_synced() => {}
                }
                loop {
                    shared
                        .snapshot
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .set_disruption_budgets(budgets.list());
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        c = changes.next() => if c.is_none() { return },
                    }
                }
            }));
        }
        let runtime = tokio::runtime::Handle::current();
        let thread = {
            let shared = shared.clone();
            let stop = stop.clone();
            let seed = self.config.seed;
            std::thread::Builder::new()
                .name("capstan-scheduler".into())
                .spawn(move || shared.schedule_loop(runtime, stop, seed))
                .ok()
        };
        // The informers run while the scheduler does; its own stop with it.
        let informers = self.informers.clone();
        let shares_informers = self.shares_informers;
        let stopped = stop.clone();
        tasks.push(tokio::spawn(async move {
            stopped.cancelled().await;
            if !shares_informers {
                informers.stop();
            }
        }));
        RunningScheduler {
            stop,
            shared,
            thread,
            tasks,
        }
    }
}

impl Shared {
    fn event(&self, resource: EventResource, action: Action) {
        let event = ClusterEvent::new(resource, action);
        let empty = HashSet::new();
        self.queue
            .on_event(event, self.interest.get(&event).unwrap_or(&empty));
    }

    fn node_changed(&self, change: &Change<Node>) {
        match change {
            Change::Applied { old, new } => {
                self.snapshot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .upsert_node(new.clone());
                let action = if old.is_some() {
                    Action::Update
                } else {
                    Action::Add
                };
                self.event(EventResource::Node, action);
            }
            Change::Deleted(node) => {
                let name = node.metadata.name.clone().unwrap_or_default();
                self.snapshot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove_node(&name);
                self.event(EventResource::Node, Action::Delete);
            }
            Change::Resync => {}
        }
    }

    fn pod_changed(&self, change: &Change<Pod>) {
        match change {
            Change::Applied { new, .. } => {
                let uid = new.metadata.uid.clone().unwrap_or_default();
                let key = ObjectKey::of(new.as_ref());
                if let Some(node) = assigned_node(new) {
                    let node = node.to_string();
                    self.queue.remove(&key);
                    self.assumed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&uid);
                    let mut snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
                    let info = Arc::new(PodInfo::new(new.clone()));
                    snapshot.set_nominated(info.clone(), None);
                    if terminal(new) {
                        // Finished pods hold nothing.
                        if snapshot.remove_pod(&uid).is_some() {
                            drop(snapshot);
                            self.event(EventResource::Pod, Action::Delete);
                        }
                    } else {
                        snapshot.add_pod(&node, info);
                    }
                    return;
                }
                let assumed = self
                    .assumed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&uid);
                let ours = self.profiles.contains_key(
                    new.spec
                        .as_ref()
                        .and_then(|s| s.scheduler_name.as_deref())
                        .unwrap_or(DEFAULT_SCHEDULER),
                );
                if assumed || !ours || terminal(new) || new.metadata.deletion_timestamp.is_some() {
                    return;
                }
                let info = Arc::new(PodInfo::new(new.clone()));
                let nominated = new
                    .status
                    .as_ref()
                    .and_then(|s| s.nominated_node_name.as_deref())
                    .filter(|n| !n.is_empty());
                self.snapshot
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .set_nominated(info.clone(), nominated);
                self.queue.add(info);
            }
            Change::Deleted(pod) => {
                let uid = pod.metadata.uid.clone().unwrap_or_default();
                self.queue.remove(&ObjectKey::of(pod.as_ref()));
                self.assumed
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&uid);
                let removed = {
                    let mut snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
                    snapshot.set_nominated(Arc::new(PodInfo::new(pod.clone())), None);
                    snapshot.remove_pod(&uid)
                };
                if removed.is_some() {
                    self.event(EventResource::Pod, Action::Delete);
                }
            }
            Change::Resync => {}
        }
    }

    fn schedule_loop(
        self: Arc<Self>,
        runtime: tokio::runtime::Handle,
        stop: CancellationToken,
        seed: u64,
    ) {
        let mut start = 0usize;
        let mut ties = cycle::TieBreaker::new(seed);
        // One per profile: node-local results for pods of the same spec.
        let mut caches: HashMap<String, EquivalenceCache> = HashMap::new();
        while !stop.is_cancelled() {
            let Some(attempt) = self.queue.pop(Duration::from_millis(200)) else {
                continue;
            };
            let pod = attempt.info;
            let Some(profile) = self.profiles.get(pod.scheduler_name()) else {
                self.queue.done(&pod.key);
                continue;
            };
            let snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
            // Already placed (bound meanwhile, or assumed): nothing to do.
            if snapshot.node_of(&pod.uid).is_some() {
                drop(snapshot);
                self.queue.done(&pod.key);
                continue;
            }
            let cache = caches.entry(profile.scheduler_name.clone()).or_default();
            let decision = decide_cached(profile, &pod, &snapshot, &mut start, &mut ties, cache);
            drop(snapshot);
            match decision {
                Decision::Fits { node, state, .. } => {
                    let mut state = state.0;
                    // Assume: count the pod on the node now, so the next cycle sees it (the
                    // binding's own update replaces this entry when the informer shows it).
                    self.snapshot
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .add_pod(&node, pod.clone());
                    self.assumed
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(pod.uid.clone(), node.clone());
                    let mut refused = None;
                    for (plugin, _) in &profile.plugins {
                        if let Some(reserve) = plugin.as_reserve() {
                            if let Err(r) = reserve.reserve(&mut state, &pod, &node) {
                                refused = Some(r);
                                break;
                            }
                        }
                    }
                    if refused.is_none() {
                        for (plugin, _) in &profile.plugins {
                            if let Some(permit) = plugin.as_permit() {
                                if let Err(r) = permit.permit(&state, &pod, &node) {
                                    refused = Some(r);
                                    break;
                                }
                            }
                        }
                    }
                    if let Some(rejection) = refused {
                        self.forget(&pod, profile, &mut state, &node);
                        self.report_unschedulable(
                            &runtime,
                            &pod,
                            &rejection.reasons.join(", "),
                            [rejection.plugin].into(),
                        );
                        continue;
                    }
                    let shared = self.clone();
                    let profile = profile.clone();
                    runtime.spawn(async move { shared.bind(pod, profile, state, node).await });
                }
                Decision::Unschedulable(why) => {
                    self.counters.unschedulable.fetch_add(1, Ordering::Relaxed);
                    if why.error {
                        tracing::warn!(pod = %pod.key, message = %why.message, "a scheduler plugin failed");
                    } else if let Some(nomination) = self.preempt(&pod, profile, &why) {
                        // Lower-priority pods must leave the freed room to this one from now on.
                        self.snapshot
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .set_nominated(pod.clone(), Some(&nomination.node));
                        self.evict(&runtime, &pod, nomination);
                    }
                    self.report_unschedulable(&runtime, &pod, &why.message, why.plugins);
                }
            }
        }
    }

    /// Asks the post-filter plugins for room, unless the pod already waits on a node where
    /// its earlier victims are still terminating.
    fn preempt(
        &self,
        pod: &PodInfo,
        profile: &Profile,
        why: &Unschedulable,
    ) -> Option<framework::Nomination> {
        let snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        let nominated = pod
            .pod
            .status
            .as_ref()
            .and_then(|s| s.nominated_node_name.as_deref())
            .and_then(|n| snapshot.node(n));
        if let Some(node) = nominated {
            let terminating = node
                .pods
                .values()
                .any(|p| p.pod.metadata.deletion_timestamp.is_some() && p.priority < pod.priority);
            if terminating {
                return None;
            }
        }
        profile
            .plugins
            .iter()
            .filter_map(|(p, _)| p.as_post_filter())
            .find_map(|p| p.post_filter(pod, profile, &snapshot, &why.by_node))
    }

    /// Nominates the pod to the node and deletes the victims, with an Event on each.
    fn evict(
        &self,
        runtime: &tokio::runtime::Handle,
        pod: &Arc<PodInfo>,
        nomination: framework::Nomination,
    ) {
        let client = self.client.clone();
        let recorder = self.recorder.clone();
        let preemptor = pod.clone();
        runtime.spawn(async move {
            let node = nomination.node;
            let api: Api<Pod> = Api::namespaced(client.clone(), preemptor.key.namespace_or_empty());
            let status = serde_json::json!({"status": {"nominatedNodeName": node}});
            let _ = api
                .patch_status(
                    &preemptor.key.name,
                    &PatchParams::default(),
                    &Patch::Merge(status),
                )
                .await;
            for victim in nomination.victims {
                let victims: Api<Pod> =
                    Api::namespaced(client.clone(), victim.key.namespace_or_empty());
                match victims.delete(&victim.key.name, &Default::default()).await {
                    Ok(_) => recorder.record_for(
                        victim.pod.as_ref(),
                        EventType::Normal,
                        "Preempted",
                        &format!("Preempted by {} on node {node}", preemptor.key),
                    ),
                    Err(err) => {
                        tracing::debug!(victim = %victim.key, error = %err, "could not preempt")
                    }
                }
            }
        });
    }

    /// Undoes an assumed placement.
    fn forget(
        &self,
        pod: &PodInfo,
        profile: &Profile,
        state: &mut framework::CycleState,
        node: &str,
    ) {
        for (plugin, _) in profile.plugins.iter().rev() {
            if let Some(reserve) = plugin.as_reserve() {
                reserve.unreserve(state, pod, node);
            }
        }
        let mut snapshot = self.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        if snapshot.node_of(&pod.uid) == Some(node) {
            snapshot.remove_pod(&pod.uid);
        }
        drop(snapshot);
        self.assumed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&pod.uid);
    }

    async fn bind(
        self: Arc<Self>,
        pod: Arc<PodInfo>,
        profile: Profile,
        mut state: framework::CycleState,
        node: String,
    ) {
        let mut result = Ok(());
        for (plugin, _) in &profile.plugins {
            if let Some(pre) = plugin.as_pre_bind() {
                if let Err(r) = pre.pre_bind(&pod, &node).await {
                    result = Err(r);
                    break;
                }
            }
        }
        if result.is_ok() {
            for (plugin, _) in &profile.plugins {
                if let Some(binder) = plugin.as_bind() {
                    match binder.bind(&pod, &node).await {
                        Ok(true) => break,
                        Ok(false) => continue,
                        Err(r) => {
                            result = Err(r);
                            break;
                        }
                    }
                }
            }
        }
        match result {
            Ok(()) => {
                self.counters.scheduled.fetch_add(1, Ordering::Relaxed);
                self.queue.done(&pod.key);
                for (plugin, _) in &profile.plugins {
                    if let Some(post) = plugin.as_post_bind() {
                        post.post_bind(&pod, &node);
                    }
                }
                self.recorder.record_for(
                    pod.pod.as_ref(),
                    EventType::Normal,
                    "Scheduled",
                    &format!("Successfully assigned {} to {node}", pod.key),
                );
            }
            Err(rejection) => {
                self.counters.bind_failures.fetch_add(1, Ordering::Relaxed);
                self.forget(&pod, &profile, &mut state, &node);
                let message = rejection.reasons.join(", ");
                // Bound by someone else meanwhile: the informer will show it; never double-book.
                if message.contains("already assigned") || message.contains("is already") {
                    self.queue.done(&pod.key);
                    return;
                }
                tracing::debug!(pod = %pod.key, %node, %message, "binding failed; retrying");
                self.recorder.record_for(
                    pod.pod.as_ref(),
                    EventType::Warning,
                    "FailedScheduling",
                    &format!("Binding rejected: {message}"),
                );
                self.queue.retry(&pod.key);
            }
        }
    }

    fn report_unschedulable(
        &self,
        runtime: &tokio::runtime::Handle,
        pod: &Arc<PodInfo>,
        message: &str,
        plugins: HashSet<String>,
    ) {
        self.queue.unschedulable(&pod.key, plugins);
        self.recorder.record_for(
            pod.pod.as_ref(),
            EventType::Warning,
            "FailedScheduling",
            message,
        );
        let already = pod
            .pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "PodScheduled"))
            .is_some_and(|c| c.status == "False" && c.message.as_deref() == Some(message));
        if already {
            return;
        }
        let api: Api<Pod> = Api::namespaced(self.client.clone(), pod.key.namespace_or_empty());
        let name = pod.key.name.clone();
        let condition = serde_json::json!({"status": {"conditions": [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message,
            "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        }]}});
        runtime.spawn(async move {
            // A strategic merge keyed on the condition type keeps the other conditions.
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Strategic(condition))
                .await;
        });
    }
}
