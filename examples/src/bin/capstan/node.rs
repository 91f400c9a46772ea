//! One node's components: the container runtime, the node agent, cluster DNS on the pod
//! network's gateway, the service proxy and the host-gw pod network. `capstan up` runs them
//! beside its control plane; `capstan agent` runs them against a remote API server.

use crate::cli::{NodeArgs, PodNetworkMode, ProxyMode, RuntimeChoice};
use capstan_core::apiserver::ServiceRanges;
use capstan_core::cidr::{IpCidr, Ipv4Cidr};
use capstan_core::controller::InformerFactory;
use capstan_core::dns::{ClusterDns, DnsConfig, RunningDns};
use capstan_core::node::{NodeAgent, NodeConfig, RunningNode};
use capstan_core::pod_network::{
    HostRoutes, PodNetwork, PodNetworkConfig, RouteBackend, RunningPodNetwork,
};
use capstan_core::proxy::{
    ProxyBackend, ProxyConfig, RunningProxy, ServiceProxy, UserspaceConfig, UserspaceProxy,
};
use capstan_core::runtime::sim::SimRuntime;
use capstan_core::runtime::ContainerRuntime;
use capstan_net_iptables::{
    IptablesConfig, IptablesProxy, NetlinkRoutes, NftablesConfig, NftablesProxy,
};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

/// What a node needs to know about its cluster.
pub struct NodeSetup<'a> {
    /// This node's pod subnet.
    pub pod_cidr: String,
    /// The cluster's pod range.
    pub cluster_cidr: &'a str,
    /// The cluster's service range.
    pub service_cidr: &'a str,
    /// Holds the agent's files.
    pub data_dir: &'a Path,
    /// Whether pods on other hosts must reach this node's pods (an agent). `capstan up`'s pods
    /// stay on this machine: an isolated bridge, or with the iptables proxy a routed one whose
    /// pods are confined to the cluster's addresses.
    pub joins_other_hosts: bool,
    /// TLS for the agent's server (secure clusters: only the API server may call it).
    pub server_tls: Option<capstan_core::apiserver::TlsServing>,
}

/// A running node.
pub struct Node {
    agent: RunningNode,
    dns: Option<RunningDns>,
    proxy: Option<RunningProxy>,
    pod_network: Option<RunningPodNetwork>,
}

/// This host's name when it is a valid node name.
pub fn default_node_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_ascii_lowercase())
        .filter(|h| capstan_core::validation::is_dns1123_subdomain(h).is_ok())
        .unwrap_or_else(|| "capstan".into())
}

async fn open_runtime(
    args: &NodeArgs,
    node_name: &str,
    pod_cidr: &str,
    routed: bool,
) -> Result<(Arc<dyn ContainerRuntime>, String), String> {
    let docker = || async {
        let mut config = capstan_runtime_docker::DockerRuntimeConfig::new(node_name);
        config.pod_cidr = Some(pod_cidr.to_string());
        config.sandbox_image = args.sandbox_image.clone();
        config.routed = routed;
        capstan_runtime_docker::DockerRuntime::connect(config).await
    };
    match args.runtime {
        RuntimeChoice::Docker => {
            let runtime = docker()
                .await
                .map_err(|e| format!("cannot use Docker: {e}"))?;
            Ok((Arc::new(runtime), "docker".into()))
        }
        RuntimeChoice::Sim => Ok((
            Arc::new(SimRuntime::default()),
            "sim (simulated containers)".into(),
        )),
        RuntimeChoice::Auto => match docker().await {
            Ok(runtime) => Ok((
                Arc::new(runtime),
                "docker (auto: the Docker engine answered)".into(),
            )),
            Err(err) => Ok((
                Arc::new(SimRuntime::default()),
                format!("sim (auto: no usable Docker engine: {err})"),
            )),
        },
    }
}

/// The service proxy for `--proxy`, with the line that describes it.
async fn open_proxy(
    args: &NodeArgs,
    cluster_cidr: &str,
    confine_pods: bool,
) -> Result<Option<(Arc<dyn ProxyBackend>, String)>, String> {
    match args.proxy {
        ProxyMode::Iptables => {
            let backend = IptablesProxy::new(IptablesConfig {
                cluster_cidr: Some(cluster_cidr.to_string()),
                confine_pods,
                ..IptablesConfig::default()
            })
            .await
            .map_err(|e| format!("cannot use iptables: {e}"))?;
            let line = format!("iptables ({:?})", backend.variant());
            Ok(Some((Arc::new(backend), line)))
        }
        ProxyMode::Nftables => {
            let backend = NftablesProxy::new(NftablesConfig {
                cluster_cidr: Some(cluster_cidr.to_string()),
                ..NftablesConfig::default()
            })
            .await
            .map_err(|e| format!("cannot use nftables: {e}"))?;
            let line = if backend.serves_ipv6() {
                "nftables (tables ip capstan and ip6 capstan)"
            } else {
                "nftables (table ip capstan)"
            };
            Ok(Some((Arc::new(backend), line.into())))
        }
        ProxyMode::Userspace => {
            let backend = UserspaceProxy::new(UserspaceConfig {
                node_addresses: vec![args.node_ip],
                cluster_ips: false,
            });
            Ok(Some((
                Arc::new(backend),
                format!("userspace (NodePorts on {})", args.node_ip),
            )))
        }
        ProxyMode::None => Ok(None),
    }
}

/// The host-gw pod network, or why it is off. The blackholes go in at once, so a host that
/// cannot program routes is found before anything runs.
async fn open_pod_network(
    args: &NodeArgs,
    informers: &InformerFactory,
    node_name: &str,
    setup: &NodeSetup<'_>,
) -> Result<Option<RunningPodNetwork>, String> {
    if args.pod_network == PodNetworkMode::None {
        println!("capstan: pod network: none (pods reach this node only)");
        return Ok(None);
    }
    let cluster = Ipv4Cidr::parse(setup.cluster_cidr)
        .ok_or_else(|| format!("{:?} is not an IPv4 CIDR", setup.cluster_cidr))?;
    let services = ServiceRanges::parse(setup.service_cidr)?;
    let mut blackholes: Vec<IpCidr> = vec![cluster.into(), services.ipv4.into()];
    blackholes.extend(services.ipv6.map(IpCidr::from));
    let backend = NetlinkRoutes::new();
    let first = HostRoutes {
        routes: Vec::new(),
        blackholes: blackholes.clone(),
    };
    match backend.sync(&first).await {
        Ok(()) => {}
        Err(err) if args.pod_network == PodNetworkMode::Auto => {
            println!("capstan: pod network: none (auto: cannot program routes: {err})");
            return Ok(None);
        }
        Err(err) => return Err(format!("cannot program the pod network: {err}")),
    }
    let network = PodNetwork::new(
        informers,
        Arc::new(backend),
        PodNetworkConfig::new(node_name, blackholes.clone()),
    )
    .start();
    println!(
        "capstan: pod network: host-gw (routes to other nodes' pod subnets; {} blackholed)",
        blackholes
            .iter()
            .map(IpCidr::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(Some(network))
}

/// Serves the proxy's `/healthz` at `listen` (`off`: nowhere). A taken address (another
/// agent on this host) costs only the endpoint, said on one line.
async fn serve_proxy_health(proxy: &RunningProxy, listen: &str) {
    if listen == "off" {
        return;
    }
    match tokio::net::TcpListener::bind(listen).await {
        Ok(listener) => {
            proxy.serve_health(listener);
            println!("capstan: service proxy health on http://{listen}/healthz");
        }
        Err(err) => {
            println!("capstan: service proxy health: off (cannot listen on {listen}: {err})")
        }
    }
}

impl Node {
    /// Starts the node's components against `client` (and `informers` over it).
    pub async fn start(
        client: kube::Client,
        informers: &InformerFactory,
        args: &NodeArgs,
        setup: NodeSetup<'_>,
    ) -> Result<Node, String> {
        let node_name = args.node_name.clone().unwrap_or_else(default_node_name);
        let pod_subnet = Ipv4Cidr::parse(&setup.pod_cidr)
            .ok_or_else(|| format!("pod CIDR {:?} is not an IPv4 CIDR", setup.pod_cidr))?;
        let pod_network = open_pod_network(args, informers, &node_name, &setup).await?;
        let (runtime, runtime_description) = open_runtime(
            args,
            &node_name,
            &setup.pod_cidr,
            // Pods reach cluster IPs and other hosts only over a routed bridge; `capstan up`'s
            // pods need one only for the iptables proxy, which then also confines them.
            pod_network.is_some() && (setup.joins_other_hosts || args.proxy == ProxyMode::Iptables),
        )
        .await?;
        println!("capstan: runtime: {runtime_description}");
        let mut config = NodeConfig::new(&node_name);
        config.root_dir = std::path::absolute(setup.data_dir.join("node"))
            .unwrap_or_else(|_| setup.data_dir.join("node"));
        config.pod_cidr = Some(setup.pod_cidr.clone());
        config.address = args.node_ip;
        config.server_listen = SocketAddr::new(args.node_ip, 0);
        config.server_tls = setup.server_tls.clone();
        // Real containers get the cluster DNS on their network's gateway (this host's address
        // on the pod bridge); simulated pods resolve nothing.
        let gateway = IpAddr::V4(pod_subnet.first());
        let dns = if runtime.capabilities().real_processes {
            let dns_config = DnsConfig {
                listen: SocketAddr::new(gateway, 53),
                ..DnsConfig::default()
            };
            match ClusterDns::new(informers, dns_config).start().await {
                Ok(dns) => {
                    println!("capstan: cluster DNS on {} (cluster.local)", dns.address());
                    config.cluster_dns = Some(gateway);
                    Some(dns)
                }
                Err(err) => {
                    println!("capstan: cluster DNS off ({err})");
                    None
                }
            }
        } else {
            None
        };
        let agent = NodeAgent::new(client, runtime, config)
            .start()
            .await
            .map_err(|e| format!("cannot start the node agent: {e}"))?;
        println!(
            "capstan: node {node_name} ready (pod CIDR {}, agent server on {})",
            setup.pod_cidr,
            agent.server_address()
        );
        let proxy = match open_proxy(args, setup.cluster_cidr, !setup.joins_other_hosts).await? {
            Some((backend, line)) => {
                let proxy = ServiceProxy::new(informers, backend, ProxyConfig::default()).start();
                println!("capstan: service proxy: {line}");
                serve_proxy_health(&proxy, &args.proxy_health_listen).await;
                Some(proxy)
            }
            None => None,
        };
        Ok(Node {
            agent,
            dns,
            proxy,
            pod_network,
        })
    }

    /// Stops every component (containers keep running; routes and rules stay).
    pub async fn stop(self) {
        if let Some(proxy) = self.proxy {
            proxy.stop().await;
        }
        if let Some(dns) = self.dns {
            dns.stop().await;
        }
        if let Some(network) = self.pod_network {
            network.stop().await;
        }
        self.agent.stop().await;
    }
}
