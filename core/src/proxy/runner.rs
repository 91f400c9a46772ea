//! [`ServiceProxy`]: follows Services and EndpointSlices through shared informers and keeps a
//! [`ProxyBackend`] in sync with the resulting [`ServiceTable`] — on every change, at most once
//! per `min_sync_period`, and in full every `sync_period` even when nothing changed (so a
//! data path damaged behind the proxy's back is repaired).

use super::{ProxyBackend, ProxyHealth, ServiceTable};
use crate::controller::InformerFactory;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a proxy syncs.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// The shortest time between two syncs (changes arriving faster are batched).
    pub min_sync_period: Duration,
    /// The longest time between two syncs.
    pub sync_period: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            min_sync_period: Duration::from_secs(1),
            sync_period: Duration::from_secs(30),
        }
    }
}

/// A service proxy over a backend, not yet started.
pub struct ServiceProxy {
    informers: InformerFactory,
    backend: Arc<dyn ProxyBackend>,
    config: ProxyConfig,
}

impl ServiceProxy {
    /// A proxy reading Services and EndpointSlices from `informers` and programming `backend`.
    pub fn new(
        informers: &InformerFactory,
        backend: Arc<dyn ProxyBackend>,
        config: ProxyConfig,
    ) -> Self {
        ServiceProxy {
            informers: informers.clone(),
            backend,
            config,
        }
    }

    /// Starts syncing in the background.
    pub fn start(self) -> RunningProxy {
        let stop = CancellationToken::new();
        let (health_tx, health) = watch::channel(ProxyHealth::default());
        let task = tokio::spawn(run(self, stop.clone(), health_tx));
        RunningProxy { stop, task, health }
    }
}

/// A running [`ServiceProxy`]; dropping it leaves the data path as last synced.
pub struct RunningProxy {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    health: watch::Receiver<ProxyHealth>,
}

impl RunningProxy {
    /// The proxy's current health.
    pub fn health(&self) -> ProxyHealth {
        self.health.borrow().clone()
    }

    /// Serves the proxy's `/healthz` on `listener` (kube-proxy serves it on port 10256) until
    /// the proxy stops.
    pub fn serve_health(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        tokio::spawn(super::health::serve_health(
            listener,
            self.health.clone(),
            self.stop.clone(),
        ))
    }

    /// Waits until the proxy has synced successfully at least `syncs` times.
    pub async fn wait_for_syncs(&self, syncs: u64) {
        let mut health = self.health.clone();
        let _ = health.wait_for(|h| h.syncs >= syncs).await;
    }

    /// Stops syncing (the data path stays as it is; call the backend's cleanup to remove it).
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn run(proxy: ServiceProxy, stop: CancellationToken, health: watch::Sender<ProxyHealth>) {
    let services = proxy.informers.informer::<Service>();
    let slices = proxy.informers.informer::<EndpointSlice>();
    let mut service_changes = services.subscribe();
    let mut slice_changes = slices.subscribe();
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { services.wait_synced().await; slices.wait_synced().await } => {}
    }
    let mut synced: Option<ServiceTable> = None;
    let mut last_attempt: Option<Instant> = None;
    loop {
        if let Some(at) = last_attempt {
            let ready = at + proxy.config.min_sync_period;
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(ready) => {}
            }
        }
        let service_list = services.list();
        let slice_list = slices.list();
        let table = ServiceTable::build(
            service_list.iter().map(|s| &**s),
            slice_list.iter().map(|s| &**s),
        );
        let due = last_attempt.is_none_or(|at| at.elapsed() >= proxy.config.sync_period);
        if due || synced.as_ref() != Some(&table) {
            last_attempt = Some(Instant::now());
            match proxy.backend.sync(&table).await {
                Ok(()) => {
                    tracing::debug!(service_ports = table.services.len(), "proxy synced");
                    health.send_modify(|h| {
                        h.last_synced = Some(SystemTime::now());
                        h.last_error = None;
                        h.syncs += 1;
                        h.service_ports = table.services.len();
                    });
                    synced = Some(table);
                }
                Err(err) => {
                    tracing::warn!(error = %err, "proxy sync failed; retrying");
                    health.send_modify(|h| h.last_error = Some(err.to_string()));
                    synced = None;
                    continue;
                }
            }
        }
        let next_full = last_attempt.unwrap_or_else(Instant::now) + proxy.config.sync_period;
        tokio::select! {
            _ = stop.cancelled() => return,
            change = service_changes.next() => if change.is_none() { return },
            change = slice_changes.next() => if change.is_none() { return },
            _ = tokio::time::sleep_until(next_full) => {}
        }
    }
}
