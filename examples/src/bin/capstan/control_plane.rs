//! The control plane: the API server on its store, the controller manager (with node IPAM)
//! and the scheduler, the latter two under leader-election Leases so several servers can
//! share one store and one of each works.

use crate::cli::ControlPlaneArgs;
use capstan_core::apiserver::{ApiConfig, ApiServer};
use capstan_core::cidr::Ipv4Cidr;
use capstan_core::controller::{
    ControllerManager, ControllerManagerConfig, LeaderElectionConfig, NodeIpamConfig,
    NodeLifecycleConfig, RunningControllers,
};
use capstan_core::scheduler::{ElectedScheduler, Scheduler, SchedulerConfig};
use capstan_core::store::{EmbeddedStore, EmbeddedStoreConfig, MemoryStore, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A running control plane.
pub struct ControlPlane {
    /// The API server (in-process clients and informers come from it).
    pub server: ApiServer,
    /// Where it listens.
    pub address: SocketAddr,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    stop_serving: CancellationToken,
    controllers: RunningControllers,
    scheduler: ElectedScheduler,
}

async fn open_store(args: &ControlPlaneArgs) -> Result<Arc<dyn Store>, String> {
    let etcd_endpoints = match args.store.strip_prefix("etcd://") {
        Some(hosts) => Some(hosts.split(',').map(|h| format!("http://{h}")).collect()),
        None if args.store == "etcd" => Some(args.etcd_endpoints.clone()),
        None => None,
    };
    if let Some(endpoints) = etcd_endpoints {
        return open_etcd(endpoints).await;
    }
    match args.store.as_str() {
        "embedded" => {
            let path = args.data_dir.join("store.redb");
            let store = EmbeddedStore::open(&path, EmbeddedStoreConfig::default())
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            Ok(Arc::new(store))
        }
        "memory" => {
            eprintln!("warning: the memory store keeps nothing after exit");
            Ok(Arc::new(MemoryStore::new()))
        }
        other => Err(format!(
            "unknown store {other:?}: choose embedded, memory, etcd or etcd://HOST:PORT,..."
        )),
    }
}

#[cfg(feature = "etcd")]
async fn open_etcd(endpoints: Vec<String>) -> Result<Arc<dyn Store>, String> {
    let config = capstan_store_etcd::EtcdStoreConfig::new(endpoints);
    let store = capstan_store_etcd::EtcdStore::connect(config)
        .await
        .map_err(|e| format!("cannot connect to etcd: {e}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_endpoints: Vec<String>) -> Result<Arc<dyn Store>, String> {
    Err("this capstan was built without etcd support: rebuild with `--features etcd`".into())
}

/// A kubeconfig for an unauthenticated server at `server`.
fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: capstan\n  cluster:\n    server: {server}\ncontexts:\n- name: capstan\n  context:\n    cluster: capstan\n    user: capstan\n    namespace: default\ncurrent-context: capstan\nusers:\n- name: capstan\n  user: {{}}\n"
    )
}

impl ControlPlane {
    /// Opens the store, serves the API on `args.listen` (loopback only unless
    /// `allow_remote`), writes `DATA_DIR/kubeconfig` and starts the controller manager (with
    /// node IPAM when `node_ipam`) and the scheduler as candidates named `identity`.
    pub async fn start(
        args: &ControlPlaneArgs,
        allow_remote: bool,
        node_ipam: bool,
        identity: &str,
    ) -> Result<ControlPlane, String> {
        let cluster_cidr = Ipv4Cidr::parse(&args.cluster_cidr)
            .ok_or_else(|| format!("--cluster-cidr {:?} is not an IPv4 CIDR", args.cluster_cidr))?;
        std::fs::create_dir_all(&args.data_dir)
            .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        // Every request is allowed (no authentication yet), so the API stays on loopback
        // unless the operator says the network is private.
        if !address.ip().is_loopback() && !allow_remote {
            return Err(format!(
                "refusing to serve on {address}: without authentication the API server listens on loopback addresses only (`capstan server --insecure-no-auth` overrides this on a private network)"
            ));
        }
        let store = open_store(args).await?;
        let config = ApiConfig {
            advertise_address: address.to_string(),
            service_cidr: args.service_cidr.clone(),
            ..ApiConfig::default()
        };
        let server = ApiServer::builder(store)
            .config(config)
            .build()
            .await
            .map_err(|e| format!("cannot start the API server: {e}"))?;
        // The kubeconfig exists before the "listening" line, so whoever waits for that line
        // can use it.
        let kubeconfig_path = args.data_dir.join("kubeconfig");
        std::fs::write(&kubeconfig_path, kubeconfig(&format!("http://{address}")))
            .map_err(|e| format!("cannot write {}: {e}", kubeconfig_path.display()))?;
        let router = server.router();
        let stop_serving = CancellationToken::new();
        let serving = {
            let stop = stop_serving.clone();
            tokio::spawn(async move {
                axum::serve(listener, router)
                    .with_graceful_shutdown(async move { stop.cancelled().await })
                    .await
            })
        };
        println!(
            "capstan: API server listening on http://{address} (store: {})",
            args.store
        );
        let controllers = ControllerManager::in_process(
            &server,
            ControllerManagerConfig {
                leader_election: Some(LeaderElectionConfig::new(
                    "kube-system",
                    "capstan-controller-manager",
                    identity,
                )),
                node_lifecycle: NodeLifecycleConfig {
                    grace_period: args.node_monitor_grace_period,
                },
                node_ipam: node_ipam.then(|| NodeIpamConfig {
                    cluster_cidr,
                    ..NodeIpamConfig::default()
                }),
                ..ControllerManagerConfig::default()
            },
        )
        .start();
        let ipam = if node_ipam {
            format!(", node IPAM from {cluster_cidr}")
        } else {
            String::new()
        };
        println!("capstan: controller manager started (replicasets, deployments, daemonsets, statefulsets, jobs, cronjobs, autoscalers, disruption budgets, garbage collector, endpoints, endpointslices, node lifecycle{ipam})");
        let scheduler = Scheduler::in_process(&server, SchedulerConfig::default()).start_elected(
            LeaderElectionConfig::new("kube-system", "capstan-scheduler", identity),
        );
        println!("capstan: scheduler started (default profile)");
        Ok(ControlPlane {
            server,
            address,
            serving,
            stop_serving,
            controllers,
            scheduler,
        })
    }

    /// The path of the kubeconfig this control plane wrote.
    pub fn kubeconfig_path(args: &ControlPlaneArgs) -> std::path::PathBuf {
        let path = args.data_dir.join("kubeconfig");
        std::fs::canonicalize(&path).unwrap_or(path)
    }

    /// Stops serving, then the scheduler and the controllers.
    pub async fn stop(self) -> Result<(), String> {
        self.stop_serving.cancel();
        let served = self.serving.await;
        self.scheduler.stop().await;
        self.controllers.stop().await;
        served
            .map_err(|e| format!("server task failed: {e}"))?
            .map_err(|e| format!("server error: {e}"))
    }
}
