//! [`PodNetwork`]: follows Nodes through a shared informer and keeps a [`RouteBackend`] in
//! sync with the [`HostRoutes`] this node needs — on every change of the routes and in full
//! every `sync_period` (repairing routes changed behind its back).

use super::{HostRoutes, RouteBackend};
use crate::cidr::IpCidr;
use crate::controller::InformerFactory;
use k8s_openapi::api::core::v1::Node;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a [`PodNetwork`] programs and how often.
#[derive(Debug, Clone)]
pub struct PodNetworkConfig {
    /// This host's node (it needs no route to its own subnet).
    pub node_name: String,
    /// Ranges to blackhole: the cluster pod CIDR and the service CIDR.
    pub blackholes: Vec<IpCidr>,
    /// The longest time between two full syncs.
    pub sync_period: Duration,
    /// The wait before retrying a failed sync.
    pub retry_period: Duration,
}

impl PodNetworkConfig {
    /// Settings for `node_name` blackholing `blackholes`, syncing every 30 s.
    pub fn new(node_name: &str, blackholes: Vec<IpCidr>) -> Self {
        PodNetworkConfig {
            node_name: node_name.to_string(),
            blackholes,
            sync_period: Duration::from_secs(30),
            retry_period: Duration::from_secs(1),
        }
    }
}

/// The pod network of one host, not yet started.
pub struct PodNetwork {
    informers: InformerFactory,
    backend: Arc<dyn RouteBackend>,
    config: PodNetworkConfig,
}

impl PodNetwork {
    /// Routes for `config.node_name` from the Nodes in `informers`, programmed by `backend`.
    pub fn new(
        informers: &InformerFactory,
        backend: Arc<dyn RouteBackend>,
        config: PodNetworkConfig,
    ) -> Self {
        PodNetwork {
            informers: informers.clone(),
            backend,
            config,
        }
    }

    /// Starts syncing in the background.
    pub fn start(self) -> RunningPodNetwork {
        let stop = CancellationToken::new();
        let (synced_tx, synced) = watch::channel(None);
        let task = tokio::spawn(run(self, stop.clone(), synced_tx));
        RunningPodNetwork { stop, task, synced }
    }
}

/// A running [`PodNetwork`]; stopping it leaves the routes as last synced.
pub struct RunningPodNetwork {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    synced: watch::Receiver<Option<HostRoutes>>,
}

impl RunningPodNetwork {
    /// The routes last programmed successfully.
    pub fn synced(&self) -> Option<HostRoutes> {
        self.synced.borrow().clone()
    }

    /// Waits until the last successful sync satisfies `condition`.
    pub async fn wait_for(&self, condition: impl Fn(&HostRoutes) -> bool) {
        let mut synced = self.synced.clone();
        let _ = synced
            .wait_for(|s| s.as_ref().is_some_and(&condition))
            .await;
    }

    /// Stops syncing (routes stay; call the backend's cleanup to remove them).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn run(
    network: PodNetwork,
    stop: CancellationToken,
    synced_tx: watch::Sender<Option<HostRoutes>>,
) {
    let nodes = network.informers.informer::<Node>();
    let mut changes = nodes.subscribe();
    // The blackholes matter before the Nodes are known.
    let mut desired = HostRoutes {
        routes: Vec::new(),
        blackholes: network.config.blackholes.clone(),
    };
    let mut synced: Option<HostRoutes> = None;
    let mut last_full = Instant::now();
    let mut nodes_known = false;
    loop {
        if !nodes_known && nodes.is_synced() {
            nodes_known = true;
        }
        if nodes_known {
            let list = nodes.list();
            desired = HostRoutes::build(
                list.iter().map(|n| &**n),
                &network.config.node_name,
                &network.config.blackholes,
            );
        }
        if synced.as_ref() != Some(&desired) || last_full.elapsed() >= network.config.sync_period {
            last_full = Instant::now();
            match network.backend.sync(&desired).await {
                Ok(()) => {
                    tracing::debug!(routes = desired.routes.len(), "pod network synced");
                    synced = Some(desired.clone());
                    synced_tx.send_replace(Some(desired.clone()));
                }
                Err(err) => {
                    tracing::warn!(error = %err, "pod network sync failed; retrying");
                    synced = None;
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(network.config.retry_period) => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            change = changes.next() => if change.is_none() { return },
            _ = nodes.wait_synced(), if !nodes_known => {}
            _ = tokio::time::sleep_until(last_full + network.config.sync_period) => {}
        }
    }
}
