//! The command line: `capstan up | server | agent`, each flag also readable from a
//! `CAPSTAN_*` environment variable.

use clap::{Args, Parser, Subcommand, ValueEnum};
use std::net::IpAddr;
use std::path::PathBuf;

/// Capstan, the reference orchestrator.
#[derive(Debug, Parser)]
#[command(name = "capstan", version, about, args_override_self = true)]
pub struct Cli {
    /// A YAML file of flags (keys are long flag names; the command line wins).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Log lines as `text` or `json` (levels from `RUST_LOG`, default warn).
    #[arg(
        long,
        global = true,
        env = "CAPSTAN_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines look.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// What to run.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything in one process: API server, controller manager, scheduler, one node agent
    /// and its service proxy.
    Up(UpArgs),
    /// The control plane only (API server, controller manager, scheduler). Several may share
    /// one etcd: the controller manager and the scheduler elect a leader through Leases.
    Server(ServerArgs),
    /// A node: node agent, service proxy, cluster DNS and pod network, joining `--server`.
    Agent(AgentArgs),
    /// A control plane with N simulated nodes in one process, for scale experiments and
    /// what-if runs (no containers run; pods are reported Running).
    Sim(SimArgs),
    /// Makes a one-use bootstrap token for `capstan agent --token`, through the API with the
    /// administrator's kubeconfig.
    Token(TokenArgs),
}

/// `capstan token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The server's data dir (its `kubeconfig` is used).
    #[arg(long, env = "CAPSTAN_DATA_DIR", default_value = ".capstan")]
    pub data_dir: PathBuf,
    /// How long the token may be used (`30m`, `24h`).
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    pub ttl: std::time::Duration,
}

/// Where the cluster's objects live.
#[derive(Debug, Clone, Args)]
pub struct ControlPlaneArgs {
    /// Holds the embedded store and `kubeconfig`.
    #[arg(long, env = "CAPSTAN_DATA_DIR", default_value = ".capstan")]
    pub data_dir: PathBuf,
    /// The API server's address.
    #[arg(long, env = "CAPSTAN_LISTEN", default_value = "127.0.0.1:6443")]
    pub listen: String,
    /// `embedded` (durable, in the data dir), `memory` (nothing kept), `etcd` (with
    /// `--etcd-endpoints`) or `etcd://HOST:PORT,HOST:PORT`.
    #[arg(long, env = "CAPSTAN_STORE", default_value = "embedded")]
    pub store: String,
    /// etcd client URLs for `--store etcd`.
    #[arg(
        long,
        env = "CAPSTAN_ETCD_ENDPOINTS",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:2379"
    )]
    pub etcd_endpoints: Vec<String>,
    /// Cluster IPs of Services come from this range; an IPv4 CIDR, and for dual-stack
    /// Services a comma and an IPv6 CIDR of /108 or longer (`10.96.0.0/12,fd00:10:96::/112`).
    #[arg(long, env = "CAPSTAN_SERVICE_CIDR", default_value = "10.96.0.0/12")]
    pub service_cidr: String,
    /// Pod subnets of nodes come from this range.
    #[arg(long, env = "CAPSTAN_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// How long a node may go without renewing its Lease before it is marked not ready
    /// (`40s`, `2m`, `500ms`).
    #[arg(
        long,
        env = "CAPSTAN_NODE_MONITOR_GRACE_PERIOD",
        default_value = "40s",
        value_parser = parse_duration
    )]
    pub node_monitor_grace_period: std::time::Duration,
    /// Serve plain HTTP with no authentication: every request acts as a cluster
    /// administrator. Loopback addresses only. Without it the API is served over TLS with the
    /// cluster CA in `DATA_DIR/pki`, clients authenticate (certificates, tokens) and RBAC
    /// decides.
    #[arg(long, env = "CAPSTAN_INSECURE_HTTP")]
    pub insecure_http: bool,
    /// Static bearer tokens: `token,user,uid,"group1,group2"` per line.
    #[arg(long, env = "CAPSTAN_TOKEN_AUTH_FILE", value_name = "FILE")]
    pub token_auth_file: Option<PathBuf>,
    /// AES-256-GCM keys for Secrets at rest, `NAME:BASE64` per line; the first encrypts, all
    /// decrypt, and values under older keys are re-encrypted at start (rotation: put a new key
    /// first and restart). Default with the embedded store: `DATA_DIR/secrets.key`, created
    /// on first start. Servers sharing an etcd must share the file.
    #[arg(long, env = "CAPSTAN_ENCRYPTION_KEY_FILE", value_name = "FILE")]
    pub encryption_key_file: Option<PathBuf>,
    /// Append an audit event (JSON line: user, verb, object, response code) per request.
    #[arg(long, env = "CAPSTAN_AUDIT_LOG", value_name = "FILE")]
    pub audit_log: Option<PathBuf>,
}

/// A duration as `500ms`, `40s`, `2m` or `1h`.
fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} needs a unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(number)),
        "s" => Ok(std::time::Duration::from_secs(number)),
        "m" => Ok(std::time::Duration::from_secs(number * 60)),
        "h" => Ok(std::time::Duration::from_secs(number * 3600)),
        _ => Err(format!("{text:?}: the unit must be ms, s, m or h")),
    }
}

/// The service proxy's data path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ProxyMode {
    /// Userspace forwarders: NodePorts on the node address, no root needed.
    Userspace,
    /// iptables rules (root): cluster IPs and NodePorts, as kube-proxy does.
    Iptables,
    /// An nftables table of its own (root): map lookups, fast incremental updates.
    Nftables,
    /// No service proxy.
    None,
}

/// The pod network across nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PodNetworkMode {
    /// host-gw when this process may program routes (root), otherwise none.
    Auto,
    /// Routes to every other node's pod subnet via its address, blackholes for the cluster
    /// and service ranges.
    HostGw,
    /// No routes: pods reach only this node.
    None,
}

/// The container runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RuntimeChoice {
    /// Docker when its socket answers, otherwise simulated containers.
    Auto,
    /// The Docker engine (`DOCKER_HOST` or the default socket).
    Docker,
    /// Simulated containers (no processes).
    Sim,
}

/// One node's settings.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// The Node's name (default: this host's name).
    #[arg(long, env = "CAPSTAN_NODE_NAME")]
    pub node_name: Option<String>,
    /// The node's address: its InternalIP, where its agent server listens, the next hop other
    /// nodes route this node's pods through.
    #[arg(long, env = "CAPSTAN_NODE_IP", default_value = "127.0.0.1")]
    pub node_ip: IpAddr,
    /// The container runtime.
    #[arg(long, env = "CAPSTAN_RUNTIME", value_enum, default_value = "auto")]
    pub runtime: RuntimeChoice,
    /// The sandbox image (default: built locally).
    #[arg(long, env = "CAPSTAN_SANDBOX_IMAGE")]
    pub sandbox_image: Option<String>,
    /// The service proxy.
    #[arg(long, env = "CAPSTAN_PROXY", value_enum, default_value = "userspace")]
    pub proxy: ProxyMode,
    /// Where the service proxy serves `/healthz` (its last sync, as kube-proxy on 10256);
    /// `off` for nowhere.
    #[arg(
        long,
        env = "CAPSTAN_PROXY_HEALTH_LISTEN",
        default_value = "127.0.0.1:10256"
    )]
    pub proxy_health_listen: String,
    /// The pod network across nodes.
    #[arg(long, env = "CAPSTAN_POD_NETWORK", value_enum, default_value = "auto")]
    pub pod_network: PodNetworkMode,
}

/// `capstan up`.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Store, address and ranges.
    #[command(flatten)]
    pub control: ControlPlaneArgs,
    /// The node.
    #[command(flatten)]
    pub node: NodeArgs,
    /// This node's pod subnet (inside the cluster CIDR).
    #[arg(long, env = "CAPSTAN_POD_CIDR", default_value = "10.244.0.0/24")]
    pub pod_cidr: String,
}

/// `capstan server`.
#[derive(Debug, Clone, Args)]
pub struct ServerArgs {
    /// Store, address and ranges.
    #[command(flatten)]
    pub control: ControlPlaneArgs,
    /// Serve plain HTTP with no authentication on any address (agents join without
    /// credentials): anyone who reaches the address controls the cluster. Only on networks
    /// nobody else reaches.
    #[arg(long)]
    pub insecure_no_auth: bool,
}

/// `capstan agent`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The API server's URL (`https://HOST:PORT`, or `http://` for an insecure server);
    /// overrides the kubeconfig's.
    #[arg(long, env = "CAPSTAN_SERVER", required_unless_present = "kubeconfig")]
    pub server: Option<String>,
    /// A kubeconfig with the cluster's CA and this node's credentials.
    #[arg(long, env = "CAPSTAN_KUBECONFIG", value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// A bootstrap token (`capstan server` prints one; `capstan token` makes more): the agent
    /// asks for its node certificate with it once and keeps its credentials in
    /// `DATA_DIR/node.kubeconfig` (used from then on).
    #[arg(long, env = "CAPSTAN_TOKEN", requires = "ca_cert")]
    pub token: Option<String>,
    /// The cluster CA certificate the server must present (with `--token`).
    #[arg(long, env = "CAPSTAN_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Holds the agent's files (volumes, logs).
    #[arg(long, env = "CAPSTAN_DATA_DIR", default_value = ".capstan-agent")]
    pub data_dir: PathBuf,
    /// The node.
    #[command(flatten)]
    pub node: NodeArgs,
    /// This node's pod subnet; by default the one the controller manager's node IPAM gives.
    #[arg(long, env = "CAPSTAN_POD_CIDR")]
    pub pod_cidr: Option<String>,
    /// The cluster's pod range (masquerade decisions, forwarding, blackholes).
    #[arg(long, env = "CAPSTAN_CLUSTER_CIDR", default_value = "10.244.0.0/16")]
    pub cluster_cidr: String,
    /// The cluster's service ranges (blackholed), as given to the server.
    #[arg(long, env = "CAPSTAN_SERVICE_CIDR", default_value = "10.96.0.0/12")]
    pub service_cidr: String,
}

/// `capstan sim`.
#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Store, address and ranges.
    #[command(flatten)]
    pub control: ControlPlaneArgs,
    /// How many simulated nodes.
    #[arg(long, env = "CAPSTAN_SIM_NODES", default_value_t = 3)]
    pub nodes: usize,
    /// Each simulated node's capacity, as `cpu=4,memory=16Gi,pods=110`.
    #[arg(
        long,
        env = "CAPSTAN_SIM_CAPACITY",
        default_value = "cpu=4,memory=16Gi,pods=110"
    )]
    pub capacity: String,
}
