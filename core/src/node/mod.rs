//! The node agent (Capstan's kubelet): registers its Node, renews its Lease, runs the pods
//! bound to it through a [`ContainerRuntime`] and reports their status, and serves logs, exec
//! and resource usage to the API server from a small HTTP server of its own.
//!
//! Everything goes through the API (a `kube::Client`); the agent touches only its own Node and
//! Lease, the pods bound to it, and what the runtime labelled as its own.
//!
//! ```no_run
//! # async fn example(client: kube::Client) -> Result<(), capstan_core::node::NodeError> {
//! use capstan_core::node::{NodeAgent, NodeConfig};
//! use capstan_core::runtime::sim::SimRuntime;
//! use std::sync::Arc;
//!
//! let agent = NodeAgent::new(client, Arc::new(SimRuntime::default()), NodeConfig::new("node-1"));
//! let running = agent.start().await?;
//! // … later:
//! running.stop().await;
//! # Ok(()) }
//! ```

mod admission;
mod dns_policy;
mod environment;
mod node_events;
mod pod_feed;
mod pod_inbox;
mod pod_status;
mod pod_worker;
mod probes;
mod registration;
mod server;
mod volumes;
mod written_status;

pub use pod_feed::SharedPodFeed;
pub use registration::await_pod_cidr;
pub use server::{ExecFrame, StatsSummary};

use crate::controller::EventRecorder;
use crate::runtime::{labels, ContainerRuntime, RuntimeError};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use pod_feed::{PodEvent, PodSource};
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A node agent failure.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The API refused or could not be reached; retried by the agent.
    #[error("API request failed: {0}")]
    Api(#[source] kube::Error),
    /// The runtime failed.
    #[error(transparent)]
    Runtime(#[from] RuntimeError),
    /// A container cannot be configured from its spec (missing ConfigMap key, bad field path).
    /// Reported as `CreateContainerConfigError` until the spec or the source changes.
    #[error("{0}")]
    ContainerConfig(String),
    /// The Node got no pod subnet in time (is the controller manager's node IPAM on?).
    #[error("node {node} got no pod CIDR within {waited:?}: is node IPAM enabled in the controller manager?")]
    NoPodCidr {
        /// The node.
        node: String,
        /// How long the agent waited.
        waited: std::time::Duration,
    },
    /// A file of the agent could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

impl NodeError {
    fn io(path: &Path, source: std::io::Error) -> Self {
        NodeError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Settings of a [`NodeAgent`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Node name.
    pub name: String,
    /// Capacity (`cpu`, `memory`, `pods`, …); `None` reads the machine (and 110 pods).
    pub capacity: Option<BTreeMap<String, String>>,
    /// Labels besides the well-known ones.
    pub labels: BTreeMap<String, String>,
    /// The node's pod CIDR, recorded in `spec.podCIDR`.
    pub pod_cidr: Option<String>,
    /// The node's InternalIP, where the API server reaches the agent's server.
    pub address: IpAddr,
    /// Where the agent's HTTP server listens (port 0 picks one).
    pub server_listen: SocketAddr,
    /// Directory for pod volumes.
    pub root_dir: PathBuf,
    /// Lease duration written into the node's Lease.
    pub lease_duration: Duration,
    /// How often the Lease is renewed.
    pub lease_renew_interval: Duration,
    /// How often the node's conditions are posted.
    pub status_interval: Duration,
    /// How often every pod is synced even without a change (kubelet's `--sync-frequency`,
    /// whose default is also a minute; containers' exits and probes wake a pod sooner).
    pub resync_period: Duration,
    /// How often configMap and secret volumes are re-read.
    pub volume_refresh: Duration,
    /// The first restart back-off of a crashing container (doubling up to `max_backoff`).
    pub initial_backoff: Duration,
    /// The largest restart back-off.
    pub max_backoff: Duration,
    /// How often container usage is sampled for `/stats/summary` (and metrics.k8s.io).
    pub stats_interval: Duration,
    /// The cluster DNS server pods with dnsPolicy ClusterFirst use (`None`: the host's).
    pub cluster_dns: Option<IpAddr>,
    /// The cluster domain in pods' search paths.
    pub cluster_domain: String,
    /// TLS for the agent's server. When set (secure clusters), callers must present a client
    /// certificate the cluster CA signed, in group `system:masters` — the API server's.
    pub server_tls: Option<crate::apiserver::TlsServing>,
    /// Whether the agent records Events as kubelet does: about its pods' containers
    /// (`Pulling`, `Pulled`, `Created`, `Started`, `Killing`, `Unhealthy`, `BackOff`,
    /// `Failed`), which `kubectl describe pod` shows, and about its Node (`Starting`,
    /// `NodeReady`, `NodeHasSufficientMemory`, …), which `kubectl describe node` shows. Sets of
    /// many simulated nodes may leave them out, as kwok does: they double the API writes a
    /// pod costs.
    pub record_events: bool,
}

impl NodeConfig {
    /// Defaults for a node called `name`, listening on loopback.
    pub fn new(name: &str) -> Self {
        NodeConfig {
            name: name.to_string(),
            capacity: None,
            labels: BTreeMap::new(),
            pod_cidr: None,
            address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            server_listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            root_dir: std::env::temp_dir().join("capstan-node").join(name),
            lease_duration: Duration::from_secs(40),
            lease_renew_interval: Duration::from_secs(10),
            status_interval: Duration::from_secs(60),
            resync_period: Duration::from_secs(60),
            volume_refresh: Duration::from_secs(30),
            initial_backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(300),
            stats_interval: Duration::from_secs(10),
            cluster_dns: None,
            cluster_domain: "cluster.local".into(),
            server_tls: None,
            record_events: true,
        }
    }

    fn capacity(&self) -> BTreeMap<String, String> {
        self.capacity.clone().unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            let memory = registration::machine_memory_bytes().unwrap_or(1 << 30);
            BTreeMap::from([
                ("cpu".to_string(), cpus.to_string()),
                ("memory".to_string(), format!("{}Ki", memory / 1024)),
                ("pods".to_string(), "110".to_string()),
                ("ephemeral-storage".to_string(), "10Gi".to_string()),
            ])
        })
    }
}

/// State shared by the agent's tasks and pod workers.
pub(crate) struct AgentShared {
    pub client: kube::Client,
    pub runtime: Arc<dyn ContainerRuntime>,
    pub config: NodeConfig,
    pub node_labels: BTreeMap<String, String>,
    pub allocatable: BTreeMap<String, String>,
    /// What each admitted, non-terminal pod holds on the node.
    pub admitted: Mutex<HashMap<String, admission::PodFootprint>>,
    /// The pods bound here, by `namespace/name`.
    pub pods: Mutex<HashMap<String, Arc<Pod>>>,
    /// The latest usage summary as `/stats/summary` serves it (JSON; empty before the first).
    pub stats: Mutex<bytes::Bytes>,
    /// Where Events about pods go (`None` when `config.record_events` is off).
    pub events: Option<EventRecorder>,
}

impl AgentShared {
    pub(crate) fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        self.pods
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }
}

/// A node agent, ready to start.
pub struct NodeAgent {
    client: kube::Client,
    runtime: Arc<dyn ContainerRuntime>,
    config: NodeConfig,
    pod_feed: Option<SharedPodFeed>,
}

/// A started node agent; [`RunningNode::stop`] stops it (containers keep running, so a new
/// agent adopts them).
pub struct RunningNode {
    cancel: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    server_address: SocketAddr,
}

impl RunningNode {
    /// Where the agent's HTTP server listens.
    pub fn server_address(&self) -> SocketAddr {
        self.server_address
    }

    /// Stops every task of the agent and waits for them, at most [`STOP_GRACE`]; what is still
    /// running then (say, a client holding a followed log open) is aborted. Containers keep
    /// running: a new agent adopts them.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut self.tasks);
        let aborts: Vec<_> = tasks.iter().map(|t| t.abort_handle()).collect();
        if tokio::time::timeout(STOP_GRACE, futures::future::join_all(tasks))
            .await
            .is_err()
        {
            tracing::warn!("node agent tasks did not stop within {STOP_GRACE:?}; aborting them");
            for abort in aborts {
                abort.abort();
            }
        }
    }
}

/// How long [`RunningNode::stop`] waits for the agent's tasks before aborting them.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

impl Drop for RunningNode {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// The agent's side of one pod's worker.
struct WorkerHandle {
    inbox: Arc<pod_inbox::PodInbox>,
}

impl WorkerHandle {
    /// Whether the worker has ended (it dropped its side of the inbox).
    fn finished(&self) -> bool {
        Arc::strong_count(&self.inbox) == 1
    }
}

impl Drop for WorkerHandle {
    /// A worker outlives no agent.
    fn drop(&mut self) {
        self.inbox.close();
    }
}

impl NodeAgent {
    /// An agent talking to the API through `client` and running pods on `runtime`.
    pub fn new(
        client: kube::Client,
        runtime: Arc<dyn ContainerRuntime>,
        config: NodeConfig,
    ) -> Self {
        NodeAgent {
            client,
            runtime,
            config,
            pod_feed: None,
        }
    }

    /// Takes the pods bound to this node from `feed`, shared by the node agents of a process
    /// that also runs the API server, instead of watching them itself.
    pub fn with_pod_feed(mut self, feed: &SharedPodFeed) -> Self {
        self.pod_feed = Some(feed.clone());
        self
    }

    /// Binds the agent's server, registers the Node, and starts the heartbeat, the pod watch
    /// and the stats collector. Returns once the Node is registered.
    pub async fn start(self) -> Result<RunningNode, NodeError> {
        let capacity = self.config.capacity();
        let allocatable = capacity.clone();
        let node_labels = registration::node_labels(&self.config);
        let shared = Arc::new(AgentShared {
            client: self.client.clone(),
            runtime: self.runtime.clone(),
            node_labels,
            allocatable: allocatable.clone(),
            admitted: Mutex::new(HashMap::new()),
            pods: Mutex::new(HashMap::new()),
            stats: Mutex::new(bytes::Bytes::new()),
            events: self
                .config
                .record_events
                .then(|| EventRecorder::on_host(self.client.clone(), "kubelet", &self.config.name)),
            config: self.config,
        });
        let cancel = CancellationToken::new();
        let listener = tokio::net::TcpListener::bind(shared.config.server_listen)
            .await
            .map_err(|e| NodeError::io(Path::new("node server socket"), e))?;
        let server_address = listener
            .local_addr()
            .map_err(|e| NodeError::io(Path::new("node server socket"), e))?;
        let node = registration::node_object(
            &shared.config,
            &capacity,
            &allocatable,
            server_address.port(),
            shared.runtime.capabilities().name,
        );
        let changes = registration::register(&shared.client, node).await?;
        if let Some(events) = &shared.events {
            node_events::record_starting(events, &shared.config.name);
            node_events::record_changes(events, &shared.config.name, &changes);
        }
        registration::renew_lease(&shared.client, &shared.config).await?;
        tracing::info!(node = %shared.config.name, server = %server_address, runtime = shared.runtime.capabilities().name, "node registered");
        let tasks = vec![
            tokio::spawn(server::serve(listener, shared.clone(), cancel.clone())),
            tokio::spawn(heartbeat(shared.clone(), cancel.clone())),
            tokio::spawn(server::collect_stats(shared.clone(), cancel.clone())),
            tokio::spawn(watch_pods(shared, self.pod_feed, cancel.clone())),
        ];
        Ok(RunningNode {
            cancel,
            tasks,
            server_address,
        })
    }
}

async fn heartbeat(shared: Arc<AgentShared>, cancel: CancellationToken) {
    // The renewal and the status post are boxed while they run: a node's heartbeat waits most
    // of its life, and held inline their requests' state made each waiting heartbeat ~4 KB.
    let mut lease = tokio::time::interval(shared.config.lease_renew_interval);
    let mut status = tokio::time::interval(shared.config.status_interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = lease.tick() => {
                if let Err(err) = Box::pin(registration::renew_lease(&shared.client, &shared.config)).await {
                    tracing::warn!(node = %shared.config.name, "renewing the node lease failed: {err}");
                }
            }
            _ = status.tick() => {
                match Box::pin(registration::post_status(&shared.client, &shared.config)).await {
                    Ok(changes) => {
                        if let Some(events) = &shared.events {
                            node_events::record_changes(events, &shared.config.name, &changes);
                        }
                    }
                    Err(err) => {
                        tracing::warn!(node = %shared.config.name, "posting node status failed: {err}");
                    }
                }
            }
        }
    }
}

fn pod_key(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or_default(),
        pod.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Follows the pods bound to this node (from `feed` when given, else its own watch) and keeps
/// one worker per pod.
async fn watch_pods(
    shared: Arc<AgentShared>,
    feed: Option<SharedPodFeed>,
    cancel: CancellationToken,
) {
    let mut source = match feed {
        Some(feed) => tokio::select! {
            _ = cancel.cancelled() => return,
            source = feed.subscribe(&shared.config.name) => source,
        },
        None => PodSource::watch(shared.client.clone(), &shared.config.name),
    };
    let mut workers: HashMap<String, WorkerHandle> = HashMap::new();
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let runtime_events = shared.runtime.events();
    let mut runtime_events = runtime_events.fuse();
    let mut first_listing = true;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            Some(uid) = done_rx.recv() => {
                if workers.get(&uid).is_some_and(WorkerHandle::finished) {
                    workers.remove(&uid);
                }
            }
            Some(event) = runtime_events.next() => {
                // A container starts only when its pod's worker starts it (and reads its
                // status in the same sync): only exits are news to a worker.
                let id = match &event {
                    crate::runtime::RuntimeEvent::Started { .. } => continue,
                    crate::runtime::RuntimeEvent::Exited { container_id, .. } => container_id,
                };
                if let Ok(info) = shared.runtime.container_status(id).await {
                    if let Some(worker) = info.labels.get(labels::POD_UID).and_then(|uid| workers.get(uid)) {
                        worker.inbox.wake();
                    }
                }
            }
            event = source.next() => {
                let Some(event) = event else { return };
                let event = match event {
                    Ok(event) => event,
                    Err(err) => {
                        tracing::warn!(node = %shared.config.name, "pod watch failed: {err}");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        continue;
                    }
                };
                match event {
                    PodEvent::Listing(pods) => {
                        let present: std::collections::HashSet<String> =
                            pods.iter().filter_map(|p| p.metadata.uid.clone()).collect();
                        for (uid, worker) in &workers {
                            if !present.contains(uid) {
                                worker.inbox.send(None);
                            }
                        }
                        {
                            let mut known = shared.pods.lock().unwrap_or_else(|p| p.into_inner());
                            known.clear();
                            for pod in &pods {
                                known.insert(pod_key(pod), pod.clone());
                            }
                        }
                        for pod in pods {
                            dispatch(&shared, &mut workers, pod, &done_tx, &cancel);
                        }
                        if first_listing {
                            first_listing = false;
                            remove_orphans(&shared, &present).await;
                        }
                    }
                    PodEvent::Applied(pod) => {
                        shared.pods.lock().unwrap_or_else(|p| p.into_inner()).insert(pod_key(&pod), pod.clone());
                        dispatch(&shared, &mut workers, pod, &done_tx, &cancel);
                    }
                    PodEvent::Deleted(pod) => {
                        shared.pods.lock().unwrap_or_else(|p| p.into_inner()).remove(&pod_key(&pod));
                        if let Some(worker) = pod.metadata.uid.as_ref().and_then(|uid| workers.get(uid)) {
                            worker.inbox.send(None);
                        }
                    }
                }
            }
        }
    }
}

fn dispatch(
    shared: &Arc<AgentShared>,
    workers: &mut HashMap<String, WorkerHandle>,
    pod: Arc<Pod>,
    done: &tokio::sync::mpsc::UnboundedSender<String>,
    cancel: &CancellationToken,
) {
    let Some(uid) = pod.metadata.uid.clone() else {
        return;
    };
    if let Some(worker) = workers.get(&uid) {
        if !worker.finished() {
            // A listing repeats pods the worker already has: those wake nobody.
            if !worker.inbox.holds(&pod) {
                worker.inbox.send(Some(pod));
            }
            return;
        }
    }
    let inbox = pod_inbox::PodInbox::new(pod);
    workers.insert(
        uid.clone(),
        WorkerHandle {
            inbox: inbox.clone(),
        },
    );
    let shared = shared.clone();
    let done = done.clone();
    let cancel = cancel.clone();
    tokio::spawn(async move {
        pod_worker::run(shared, inbox, cancel).await;
        let _ = done.send(uid);
    });
}

/// Removes sandboxes and containers this node created for pods that no longer exist.
async fn remove_orphans(shared: &AgentShared, present: &std::collections::HashSet<String>) {
    let selector = BTreeMap::from([(labels::NODE.to_string(), shared.config.name.clone())]);
    let orphan = |labels_of: &BTreeMap<String, String>| {
        labels_of
            .get(labels::POD_UID)
            .is_some_and(|uid| !present.contains(uid))
    };
    if let Ok(sandboxes) = shared.runtime.list_sandboxes(&selector).await {
        for sandbox in sandboxes.into_iter().filter(|s| orphan(&s.labels)) {
            tracing::info!(sandbox = %sandbox.id, "removing an orphaned sandbox");
            let _ = shared.runtime.remove_sandbox(&sandbox.id).await;
        }
    }
    if let Ok(containers) = shared.runtime.list_containers(&selector).await {
        for container in containers.into_iter().filter(|c| orphan(&c.labels)) {
            let _ = shared.runtime.remove_container(&container.id).await;
        }
    }
}
