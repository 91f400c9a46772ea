//! `capstan`: the reference orchestrator.
//!
//! `capstan up [--data-dir DIR] [--listen ADDR] [--store embedded|memory|etcd]
//! [--etcd-endpoints URL,…] [--node-name NAME] [--runtime auto|docker|sim]
//! [--pod-cidr CIDR] [--sandbox-image IMAGE] [--proxy userspace|iptables|none]` runs the API server on the embedded durable
//! store (default `./.capstan/store.redb`), the controller manager and the scheduler (each
//! under a leader-election Lease) and one node agent (Docker when its socket answers,
//! otherwise the simulated runtime) and the service proxy (userspace by default: NodePorts on
//! loopback, no root; `--proxy iptables` programs this host's iptables so containers reach
//! cluster IPs too, as kube-proxy does), writes `DIR/kubeconfig`, prints the kubectl command to
//! use, and stops cleanly on SIGINT or SIGTERM (containers keep running and are adopted on the
//! next start). Until authentication lands it serves loopback addresses only.

use capstan_core::apiserver::{ApiConfig, ApiServer};
use capstan_core::controller::{
    ControllerManager, ControllerManagerConfig, InformerFactory, LeaderElectionConfig,
};
use capstan_core::dns::{ClusterDns, DnsConfig};
use capstan_core::node::{NodeAgent, NodeConfig};
use capstan_core::proxy::{
    ProxyBackend, ProxyConfig, ServiceProxy, UserspaceConfig, UserspaceProxy,
};
use capstan_core::runtime::sim::SimRuntime;
use capstan_core::runtime::ContainerRuntime;
use capstan_core::scheduler::{Scheduler, SchedulerConfig};
use capstan_core::store::{EmbeddedStore, EmbeddedStoreConfig, MemoryStore, Store};
use capstan_net_iptables::{IptablesConfig, IptablesProxy};
use std::path::PathBuf;
use std::sync::Arc;

const USAGE: &str = "usage: capstan up [--data-dir DIR] [--listen ADDR] [--store embedded|memory|etcd] [--etcd-endpoints URL,...] [--node-name NAME] [--runtime auto|docker|sim] [--pod-cidr CIDR] [--sandbox-image IMAGE] [--proxy userspace|iptables|none]";

struct UpOptions {
    data_dir: PathBuf,
    listen: String,
    store: String,
    etcd_endpoints: Vec<String>,
    node_name: String,
    runtime: String,
    pod_cidr: String,
    sandbox_image: Option<String>,
    proxy: String,
}

fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| capstan_core::validation::is_dns1123_subdomain(h).is_ok())
        .unwrap_or_else(|| "capstan".into())
}

fn parse_up(args: &[String]) -> Result<UpOptions, String> {
    let mut options = UpOptions {
        data_dir: PathBuf::from(".capstan"),
        listen: "127.0.0.1:6443".into(),
        store: "embedded".into(),
        etcd_endpoints: vec!["http://127.0.0.1:2379".into()],
        node_name: default_node_name(),
        runtime: "auto".into(),
        pod_cidr: "10.244.0.0/24".into(),
        sandbox_image: None,
        proxy: "userspace".into(),
    };
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let (name, inline) = match flag.split_once('=') {
            Some((n, v)) => (n, Some(v.to_string())),
            None => (flag.as_str(), None),
        };
        let mut value = || {
            inline
                .clone()
                .or_else(|| rest.next().cloned())
                .ok_or_else(|| format!("{name} needs a value\n{USAGE}"))
        };
        match name {
            "--data-dir" => options.data_dir = PathBuf::from(value()?),
            "--listen" => options.listen = value()?,
            "--store" => options.store = value()?,
            "--etcd-endpoints" => {
                options.etcd_endpoints = value()?.split(',').map(str::to_string).collect()
            }
            "--node-name" => options.node_name = value()?,
            "--runtime" => options.runtime = value()?,
            "--pod-cidr" => options.pod_cidr = value()?,
            "--sandbox-image" => options.sandbox_image = Some(value()?),
            "--proxy" => options.proxy = value()?,
            "-h" | "--help" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown flag {other}\n{USAGE}")),
        }
    }
    if !["userspace", "iptables", "none"].contains(&options.proxy.as_str()) {
        return Err(format!(
            "--proxy must be userspace, iptables or none, not {}\n{USAGE}",
            options.proxy
        ));
    }
    Ok(options)
}

/// The first address of an IPv4 pod CIDR: the gateway of the pod network.
fn pod_gateway(cidr: &str) -> Option<std::net::IpAddr> {
    let (network, _) = cidr.split_once('/')?;
    let network: std::net::Ipv4Addr = network.parse().ok()?;
    Some(std::net::Ipv4Addr::from(u32::from(network).checked_add(1)?).into())
}

/// The service proxy for `--proxy`, with the line that describes it.
async fn open_proxy(
    options: &UpOptions,
) -> Result<Option<(Arc<dyn ProxyBackend>, String)>, String> {
    match options.proxy.as_str() {
        "iptables" => {
            let backend = IptablesProxy::new(IptablesConfig {
                cluster_cidr: Some(options.pod_cidr.clone()),
                ..IptablesConfig::default()
            })
            .await
            .map_err(|e| format!("cannot use iptables: {e}"))?;
            let line = format!("iptables ({:?})", backend.variant());
            Ok(Some((Arc::new(backend), line)))
        }
        "userspace" => {
            let backend = UserspaceProxy::new(UserspaceConfig {
                node_addresses: vec![std::net::Ipv4Addr::LOCALHOST.into()],
                cluster_ips: false,
            });
            Ok(Some((
                Arc::new(backend),
                "userspace (NodePorts on 127.0.0.1)".to_string(),
            )))
        }
        _ => Ok(None),
    }
}

async fn open_store(options: &UpOptions) -> Result<Arc<dyn Store>, String> {
    match options.store.as_str() {
        "embedded" => {
            let path = options.data_dir.join("store.redb");
            let store = EmbeddedStore::open(&path, EmbeddedStoreConfig::default())
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            Ok(Arc::new(store))
        }
        "memory" => {
            eprintln!("warning: the memory store keeps nothing after exit");
            Ok(Arc::new(MemoryStore::new()))
        }
        #[cfg(feature = "etcd")]
        "etcd" => {
            let config =
                capstan_store_etcd::EtcdStoreConfig::new(options.etcd_endpoints.iter().cloned());
            let store = capstan_store_etcd::EtcdStore::connect(config)
                .await
                .map_err(|e| format!("cannot connect to etcd: {e}"))?;
            Ok(Arc::new(store))
        }
        #[cfg(not(feature = "etcd"))]
        "etcd" => {
            let _ = &options.etcd_endpoints;
            Err(
                "this capstan was built without etcd support: rebuild with `--features etcd`"
                    .into(),
            )
        }
        other => Err(format!(
            "unknown store {other:?}: choose embedded, memory or etcd"
        )),
    }
}

/// The container runtime for `--runtime`: `auto` uses Docker when its socket answers and the
/// simulated runtime otherwise.
async fn open_runtime(options: &UpOptions) -> Result<(Arc<dyn ContainerRuntime>, String), String> {
    let docker = || async {
        let mut config = capstan_runtime_docker::DockerRuntimeConfig::new(&options.node_name);
        config.pod_cidr = Some(options.pod_cidr.clone());
        config.sandbox_image = options.sandbox_image.clone();
        capstan_runtime_docker::DockerRuntime::connect(config).await
    };
    match options.runtime.as_str() {
        "docker" => {
            let runtime = docker()
                .await
                .map_err(|e| format!("cannot use Docker: {e}"))?;
            Ok((Arc::new(runtime), "docker".into()))
        }
        "sim" => Ok((
            Arc::new(SimRuntime::default()),
            "sim (simulated containers)".into(),
        )),
        "auto" => match docker().await {
            Ok(runtime) => Ok((
                Arc::new(runtime),
                "docker (auto: the Docker engine answered)".into(),
            )),
            Err(err) => Ok((
                Arc::new(SimRuntime::default()),
                format!("sim (auto: no usable Docker engine: {err})"),
            )),
        },
        other => Err(format!(
            "unknown runtime {other:?}: choose auto, docker or sim"
        )),
    }
}

fn kubeconfig(server: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: capstan\n  cluster:\n    server: {server}\ncontexts:\n- name: capstan\n  context:\n    cluster: capstan\n    user: capstan\n    namespace: default\ncurrent-context: capstan\nusers:\n- name: capstan\n  user: {{}}\n"
    )
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
}

async fn up(options: UpOptions) -> Result<(), String> {
    std::fs::create_dir_all(&options.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", options.data_dir.display()))?;
    let store = open_store(&options).await?;
    let listener = tokio::net::TcpListener::bind(&options.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", options.listen))?;
    let address = listener.local_addr().map_err(|e| e.to_string())?;
    // Every request is allowed (no authentication yet), so the API stays on loopback.
    if !address.ip().is_loopback() {
        return Err(format!(
            "refusing to serve on {address}: without authentication the API server listens on loopback addresses only"
        ));
    }
    let config = ApiConfig {
        advertise_address: address.to_string(),
        ..ApiConfig::default()
    };
    let server = ApiServer::builder(store)
        .config(config)
        .build()
        .await
        .map_err(|e| format!("cannot start the API server: {e}"))?;
    // The kubeconfig exists before the "listening" line, so whoever waits for that line can use it.
    let kubeconfig_path = options.data_dir.join("kubeconfig");
    std::fs::write(&kubeconfig_path, kubeconfig(&format!("http://{address}")))
        .map_err(|e| format!("cannot write {}: {e}", kubeconfig_path.display()))?;
    let absolute = std::fs::canonicalize(&kubeconfig_path).unwrap_or(kubeconfig_path);
    let router = server.router();
    let serving = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await
    });
    println!(
        "capstan: API server listening on http://{address} (store: {})",
        options.store
    );
    // The controller manager campaigns for its Lease, so several `capstan up` sharing one
    // store run one set of controllers.
    let identity = format!("{}-{}", options.node_name, std::process::id());
    let controllers = ControllerManager::in_process(
        &server,
        ControllerManagerConfig {
            leader_election: Some(LeaderElectionConfig::new(
                "kube-system",
                "capstan-controller-manager",
                &identity,
            )),
            ..ControllerManagerConfig::default()
        },
    )
    .start();
    println!("capstan: controller manager started (replicasets, deployments, garbage collector, endpoints, endpointslices, node lifecycle)");
    let scheduler = Scheduler::in_process(&server, SchedulerConfig::default()).start_elected(
        LeaderElectionConfig::new("kube-system", "capstan-scheduler", &identity),
    );
    println!("capstan: scheduler started (default profile)");
    let (runtime, runtime_description) = open_runtime(&options).await?;
    println!("capstan: runtime: {runtime_description}");
    let mut node_config = NodeConfig::new(&options.node_name);
    node_config.root_dir = std::path::absolute(options.data_dir.join("node"))
        .unwrap_or_else(|_| options.data_dir.join("node"));
    node_config.pod_cidr = Some(options.pod_cidr.clone());
    let informers = InformerFactory::in_process(&server);
    // Real containers get the cluster DNS on their network's gateway (this host's address on
    // the pod bridge); simulated pods resolve nothing.
    let dns = match (
        runtime.capabilities().real_processes,
        pod_gateway(&options.pod_cidr),
    ) {
        (true, Some(gateway)) => {
            let config = DnsConfig {
                listen: std::net::SocketAddr::new(gateway, 53),
                ..DnsConfig::default()
            };
            match ClusterDns::new(&informers, config).start().await {
                Ok(dns) => {
                    println!("capstan: cluster DNS on {} (cluster.local)", dns.address());
                    node_config.cluster_dns = Some(gateway);
                    Some(dns)
                }
                Err(err) => {
                    println!("capstan: cluster DNS off ({err})");
                    None
                }
            }
        }
        _ => None,
    };
    let agent = NodeAgent::new(server.client(), runtime, node_config)
        .start()
        .await
        .map_err(|e| format!("cannot start the node agent: {e}"))?;
    println!(
        "capstan: node {} ready (agent server on {})",
        options.node_name,
        agent.server_address()
    );
    let proxy = match open_proxy(&options).await? {
        Some((backend, line)) => {
            let proxy = ServiceProxy::new(&informers, backend, ProxyConfig::default()).start();
            println!("capstan: service proxy: {line}");
            Some(proxy)
        }
        None => None,
    };
    println!(
        "capstan: use it with\n  kubectl --kubeconfig {} get nodes",
        absolute.display()
    );
    let served = serving.await;
    if let Some(proxy) = proxy {
        proxy.stop().await;
    }
    if let Some(dns) = dns {
        dns.stop().await;
    }
    informers.stop();
    agent.stop().await;
    scheduler.stop().await;
    controllers.stop().await;
    served
        .map_err(|e| format!("server task failed: {e}"))?
        .map_err(|e| format!("server error: {e}"))?;
    println!("capstan: stopped");
    Ok(())
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("up") => match parse_up(&args[1..]) {
            Ok(options) => up(options).await,
            Err(message) => Err(message),
        },
        _ => Err(USAGE.to_string()),
    };
    if let Err(message) = result {
        eprintln!("capstan: {message}");
        std::process::exit(2);
    }
}
