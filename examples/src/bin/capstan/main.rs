//! `capstan`: the reference orchestrator.
//!
//! - `capstan up` runs everything in one process: the API server on the embedded durable store
//!   (default `./.capstan/store.redb`; `--store memory|etcd|etcd://…`), the controller manager
//!   and the scheduler (each under a leader-election Lease), one node agent (Docker when its
//!   socket answers, otherwise simulated containers), cluster DNS, the service proxy
//!   (userspace by default: NodePorts on the node address, no root; `--proxy iptables`
//!   programs this host's iptables as kube-proxy does) and the host-gw pod network (blackholes
//!   for the cluster and service ranges when it may program routes). It writes
//!   `DIR/kubeconfig`, prints the kubectl command to use, and stops cleanly on SIGINT or
//!   SIGTERM (containers keep running and are adopted on the next start).
//! - `capstan server` runs the control plane only; `capstan agent --server URL` runs a node
//!   against it, with its pod subnet from the server's node IPAM, so a cluster spans hosts.
//! - `capstan sim --nodes N` runs a control plane with N simulated nodes in one process.
//!
//! The API is served over TLS with a cluster CA created in `DIR/pki`; clients authenticate
//! with certificates (the kubeconfig's is an administrator's) or `--token-auth-file` tokens,
//! and RBAC decides. `--insecure-http` serves plain HTTP with no authentication on loopback;
//! `capstan server --insecure-no-auth` does so on any address of a private network. Every flag has a `CAPSTAN_*`
//! environment variable and may come from a YAML file (`--config FILE`, keys are flag names;
//! the command line wins); `capstan help <command>` lists them.

mod cli;
mod config_file;
mod control_plane;
mod join;
mod node;

use capstan_core::apiserver::TlsServing;
use capstan_core::controller::InformerFactory;
use clap::Parser;
use cli::{AgentArgs, Cli, Command, LogFormat, ServerArgs, SimArgs, TokenArgs, UpArgs};
use control_plane::ControlPlane;
use node::{Node, NodeSetup};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// A token cancelled at the first SIGINT or SIGTERM. The handlers are installed before it
/// returns, so a signal arriving while components start is not lost (nor fatal).
fn shutdown_on_signal() -> Result<CancellationToken, String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt =
        signal(SignalKind::interrupt()).map_err(|e| format!("cannot handle SIGINT: {e}"))?;
    let mut terminate =
        signal(SignalKind::terminate()).map_err(|e| format!("cannot handle SIGTERM: {e}"))?;
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt.recv() => {},
            _ = terminate.recv() => {},
        }
        cancel.cancel();
    });
    Ok(token)
}

fn identity(node_name: Option<&str>) -> String {
    format!(
        "{}-{}",
        node_name.map_or_else(node::default_node_name, str::to_string),
        std::process::id()
    )
}

/// TLS for in-process node agents' servers at `address`: a serving certificate from the
/// cluster CA, callers' certificates checked against it. `None` for insecure clusters.
fn node_server_tls(
    ca: Option<&capstan_core::pki::ClusterCa>,
    address: &str,
) -> Result<Option<TlsServing>, String> {
    let Some(ca) = ca else { return Ok(None) };
    let serving = ca
        .serving_certificate(&[address.to_string(), "localhost".to_string()])
        .map_err(|e| format!("node serving certificate: {e}"))?;
    TlsServing::requiring_client_certificates(
        &serving.certificate_pem,
        &serving.key_pem,
        ca.certificate_pem(),
    )
    .map(Some)
    .map_err(|e| format!("node TLS: {e}"))
}

async fn up(args: UpArgs, shutdown: CancellationToken) -> Result<(), String> {
    let control = ControlPlane::start(
        &args.control,
        false,
        true,
        &identity(args.node.node_name.as_deref()),
    )
    .await?;
    let informers = control.informers.clone();
    let server_tls = node_server_tls(control.ca.as_deref(), &args.node.node_ip.to_string())?;
    let node = Node::start(
        control.server.client(),
        &informers,
        &args.node,
        NodeSetup {
            pod_cidr: args.pod_cidr.clone(),
            cluster_cidr: &args.control.cluster_cidr,
            service_cidr: &args.control.service_cidr,
            data_dir: &args.control.data_dir,
            joins_other_hosts: false,
            server_tls,
        },
    )
    .await?;
    println!(
        "capstan: use it with\n  kubectl --kubeconfig {} get nodes",
        ControlPlane::kubeconfig_path(&args.control).display()
    );
    shutdown.cancelled().await;
    node.stop().await;
    control.stop().await?;
    println!("capstan: stopped");
    Ok(())
}

async fn server(args: ServerArgs, shutdown: CancellationToken) -> Result<(), String> {
    let control =
        ControlPlane::start(&args.control, args.insecure_no_auth, true, &identity(None)).await?;
    let credentials = if control.url.starts_with("https") {
        // One node may join with this token; `capstan token` makes more.
        let token =
            join::create_token(control.server.client(), Duration::from_secs(24 * 3600)).await?;
        let ca = std::fs::canonicalize(args.control.data_dir.join("pki").join("ca.crt"))
            .map_err(|e| e.to_string())?;
        format!(" --token {token} --ca-cert {}", ca.display())
    } else {
        String::new()
    };
    println!(
        "capstan: control plane ready; a node joins with\n  capstan agent --server {}{credentials}\n  kubectl --kubeconfig {} get nodes",
        control.url,
        ControlPlane::kubeconfig_path(&args.control).display()
    );
    shutdown.cancelled().await;
    control.stop().await?;
    println!("capstan: stopped");
    Ok(())
}

async fn agent(args: AgentArgs, shutdown: CancellationToken) -> Result<(), String> {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
    let node_name = args
        .node
        .node_name
        .clone()
        .unwrap_or_else(node::default_node_name);
    let (config, cluster_ca) = join::agent_config(&args, &node_name).await?;
    // With the cluster's CA, the agent's own server takes calls only from the API server.
    let server_tls = match &cluster_ca {
        Some(ca) => {
            let serving = capstan_core::pki::self_signed_serving_certificate(&[args
                .node
                .node_ip
                .to_string()])
            .map_err(|e| format!("node serving certificate: {e}"))?;
            Some(
                TlsServing::requiring_client_certificates(
                    &serving.certificate_pem,
                    &serving.key_pem,
                    ca,
                )
                .map_err(|e| format!("node TLS: {e}"))?,
            )
        }
        None => None,
    };
    let server_url = config.cluster_url.to_string();
    let client = kube::Client::try_from(config)
        .map_err(|e| format!("cannot make a client for {server_url}: {e}"))?;
    let pod_cidr = match &args.pod_cidr {
        Some(cidr) => cidr.clone(),
        None => {
            let mut config = capstan_core::node::NodeConfig::new(&node_name);
            config.address = args.node.node_ip;
            let waiting =
                capstan_core::node::await_pod_cidr(&client, &config, Duration::from_secs(60));
            let cidr = tokio::select! {
                cidr = waiting => cidr.map_err(|e| e.to_string())?,
                _ = shutdown.cancelled() => return Ok(()),
            };
            println!("capstan: node {node_name} was given pod CIDR {cidr}");
            cidr
        }
    };
    let informers = InformerFactory::new(client.clone());
    let node = Node::start(
        client,
        &informers,
        &args.node,
        NodeSetup {
            pod_cidr,
            cluster_cidr: &args.cluster_cidr,
            service_cidr: &args.service_cidr,
            data_dir: &args.data_dir,
            joins_other_hosts: true,
            server_tls,
        },
    )
    .await?;
    println!("capstan: agent joined {server_url}");
    shutdown.cancelled().await;
    node.stop().await;
    informers.stop();
    println!("capstan: stopped");
    Ok(())
}

async fn token(args: TokenArgs) -> Result<(), String> {
    let path = args.data_dir.join("kubeconfig");
    let file = kube::config::Kubeconfig::read_from(&path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
    println!("{}", join::create_token(client, args.ttl).await?);
    Ok(())
}

async fn sim(args: SimArgs, shutdown: CancellationToken) -> Result<(), String> {
    let capacity: std::collections::BTreeMap<String, String> = args
        .capacity
        .split(',')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .ok_or_else(|| format!("--capacity: {pair:?} is not NAME=QUANTITY"))
        })
        .collect::<Result<_, _>>()?;
    // Simulated pods need no subnets (and thousands of nodes would not fit one /16).
    let control = ControlPlane::start(&args.control, false, false, &identity(None)).await?;
    // Simulated nodes' servers share one serving certificate (they all listen on loopback).
    let server_tls = node_server_tls(control.ca.as_deref(), "127.0.0.1")?;
    // The simulated nodes take their pods from the control plane's pod informer, routed by node.
    let feed = capstan_core::node::SharedPodFeed::new(&control.informers);
    // One in-process client for every simulated node (each client has its own request
    // buffer and task: thousands of them would be megabytes of idle queues).
    let client = control.server.client();
    let mut agents = Vec::with_capacity(args.nodes);
    for i in 0..args.nodes {
        let name = format!("sim-node-{i}");
        let mut config = capstan_core::node::NodeConfig::new(&name);
        config.capacity = Some(capacity.clone());
        config.root_dir = args.control.data_dir.join("nodes").join(&name);
        config.server_tls = server_tls.clone();
        // As kwok's nodes: no per-container Events (they would double a pod's API writes).
        config.record_events = false;
        let agent = capstan_core::node::NodeAgent::new(
            client.clone(),
            std::sync::Arc::new(capstan_core::runtime::sim::SimRuntime::default()),
            config,
        )
        .with_pod_feed(&feed)
        .start()
        .await
        .map_err(|e| format!("cannot start {name}: {e}"))?;
        agents.push(agent);
        if (i + 1) % 500 == 0 {
            println!(
                "capstan: {} of {} simulated nodes started",
                i + 1,
                args.nodes
            );
        }
        if shutdown.is_cancelled() {
            break;
        }
    }
    println!(
        "capstan: {} simulated nodes ready ({})\ncapstan: use it with\n  kubectl --kubeconfig {} get nodes",
        agents.len(),
        args.capacity,
        ControlPlane::kubeconfig_path(&args.control).display()
    );
    shutdown.cancelled().await;
    futures::future::join_all(agents.into_iter().map(|a| a.stop())).await;
    control.stop().await?;
    println!("capstan: stopped");
    Ok(())
}

/// mimalloc: faster than glibc's allocator under the API server's many small allocations
/// freed on other threads, and it returns freed memory to the system.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() {
    let args = match config_file::expand(std::env::args().collect()) {
        Ok(args) => args,
        Err(message) => {
            eprintln!("capstan: {message}");
            std::process::exit(2);
        }
    };
    let cli = Cli::parse_from(args);
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let result = match shutdown_on_signal() {
        Ok(shutdown) => match cli.command {
            Command::Up(args) => up(args, shutdown).await,
            Command::Server(args) => server(args, shutdown).await,
            Command::Agent(args) => agent(args, shutdown).await,
            Command::Sim(args) => sim(args, shutdown).await,
            Command::Token(args) => token(args).await,
        },
        Err(message) => Err(message),
    };
    if let Err(message) = result {
        eprintln!("capstan: {message}");
        std::process::exit(2);
    }
}
