//! The container runtime contract: a CRI-shaped [`ContainerRuntime`] that node agents drive.
//!
//! A pod runs as a *sandbox* holding the pod's network and IPC namespaces, and containers that
//! join it: every container of a pod reaches the others on localhost. Containers are created,
//! then started (so the agent records an id before anything runs), stopped with a grace period
//! (SIGTERM, then SIGKILL) and removed. Stop and remove are idempotent: calling them on
//! something already stopped or gone succeeds. Everything a runtime creates carries the labels
//! the agent gave it, so an agent that restarts finds its sandboxes and containers again with
//! [`ContainerRuntime::list_sandboxes`] and [`ContainerRuntime::list_containers`].
//!
//! This module owns only the contract and its types; backends live in [`sim`] (in memory) and
//! in the `capstan-runtime-docker` crate. It never talks to the API.

pub mod sim;
#[cfg(feature = "testkit")]
pub mod testkit;

use bytes::Bytes;
use futures::stream::BoxStream;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// Label keys the node agent puts on everything it asks a runtime to create.
pub mod labels {
    /// Name of the node whose agent created the object.
    pub const NODE: &str = "capstan.dev/node";
    /// UID of the pod.
    pub const POD_UID: &str = "capstan.dev/pod-uid";
    /// Namespace of the pod.
    pub const POD_NAMESPACE: &str = "capstan.dev/pod-namespace";
    /// Name of the pod.
    pub const POD_NAME: &str = "capstan.dev/pod-name";
    /// Name of the container in the pod spec.
    pub const CONTAINER: &str = "capstan.dev/container";
    /// How many times the container was restarted before this instance.
    pub const RESTART_COUNT: &str = "capstan.dev/restart-count";
}

/// A runtime failure.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The sandbox, container or image does not exist. Fatal for the call.
    #[error("{0} not found")]
    NotFound(String),
    /// The image is not present and the pull policy forbids pulling (`ErrImageNeverPull`).
    #[error("container image {0:?} is not present with pull policy of Never")]
    ImageNeverPull(String),
    /// Pulling the image failed (`ErrImagePull`); retryable with back-off.
    #[error("failed to pull image {image:?}: {message}")]
    ImagePull {
        /// The image reference.
        image: String,
        /// What the backend said.
        message: String,
    },
    /// The container configuration cannot be run (`CreateContainerConfigError`). Fatal until
    /// the spec changes.
    #[error("invalid container configuration: {0}")]
    InvalidConfig(String),
    /// The runtime does not offer this operation (see [`Capabilities`]).
    #[error("{0} is not supported by this runtime")]
    Unsupported(&'static str),
    /// The backend failed (daemon unreachable, I/O error); retryable.
    #[error("container runtime error: {0}")]
    Backend(String),
}

/// When an image is pulled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    /// Pull every time a container is created.
    Always,
    /// Pull only when the image is missing.
    IfNotPresent,
    /// Never pull; a missing image is [`RuntimeError::ImageNeverPull`].
    Never,
}

impl PullPolicy {
    /// Kubernetes' rule: the policy named in the spec, else `Always` for `:latest` or untagged
    /// images and `IfNotPresent` otherwise.
    pub fn for_image(image: &str, policy: Option<&str>) -> PullPolicy {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => {
                let name = image.rsplit('/').next().unwrap_or(image);
                let tag = name.split('@').next().unwrap_or(name).split_once(':');
                if image.contains('@') || tag.is_some_and(|(_, t)| t != "latest") {
                    PullPolicy::IfNotPresent
                } else {
                    PullPolicy::Always
                }
            }
        }
    }

    /// Whether `image` must be pulled under this policy, given whether it is `present`; a
    /// missing image under `Never` is [`RuntimeError::ImageNeverPull`].
    pub fn must_pull(self, image: &str, present: bool) -> Result<bool, RuntimeError> {
        match (self, present) {
            (PullPolicy::Always, _) | (PullPolicy::IfNotPresent, false) => Ok(true),
            (PullPolicy::IfNotPresent | PullPolicy::Never, true) => Ok(false),
            (PullPolicy::Never, false) => Err(RuntimeError::ImageNeverPull(image.into())),
        }
    }
}

/// What a sandbox is asked to be.
#[derive(Debug, Clone, Default)]
pub struct SandboxConfig {
    /// Pod namespace.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// Pod UID.
    pub uid: String,
    /// Hostname seen inside the pod.
    pub hostname: String,
    /// Share the host's network namespace instead of getting a pod IP.
    pub host_network: bool,
    /// Labels to put on the sandbox (the agent's ownership labels).
    pub labels: BTreeMap<String, String>,
    /// The pod's resolver configuration; `None` keeps the runtime's default (the host's).
    pub dns: Option<DnsSettings>,
}

/// What a sandbox's `/etc/resolv.conf` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsSettings {
    /// Name servers, in order.
    pub nameservers: Vec<String>,
    /// Search domains, in order.
    pub searches: Vec<String>,
    /// Resolver options (`ndots:5`, …).
    pub options: Vec<String>,
}

/// A sandbox as the runtime reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SandboxInfo {
    /// Runtime id.
    pub id: String,
    /// The pod's IP address (the host's with host networking).
    pub ip: Option<IpAddr>,
    /// Whether the sandbox is alive (its network namespace exists).
    pub ready: bool,
    /// Labels given at creation.
    pub labels: BTreeMap<String, String>,
}

/// A bind mount of an agent-prepared host directory or file into a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    /// Path on the host.
    pub host_path: PathBuf,
    /// Path in the container.
    pub container_path: String,
    /// Mounted read-only.
    pub read_only: bool,
}

/// Resource settings of a container, in the runtime's units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ResourceSettings {
    /// CPU request in millicores (→ CPU shares).
    pub cpu_request_millis: Option<u64>,
    /// CPU limit in millicores (→ CFS quota).
    pub cpu_limit_millis: Option<u64>,
    /// Memory limit in bytes.
    pub memory_limit_bytes: Option<u64>,
}

/// What a container is asked to be.
#[derive(Debug, Clone, Default)]
pub struct ContainerConfig {
    /// Name in the pod spec.
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Entrypoint override (`command`); empty keeps the image's.
    pub command: Vec<String>,
    /// Arguments (`args`); empty keeps the image's.
    pub args: Vec<String>,
    /// Environment, resolved by the agent, in order.
    pub env: Vec<(String, String)>,
    /// Working directory.
    pub working_dir: Option<String>,
    /// Bind mounts.
    pub mounts: Vec<Mount>,
    /// Resources.
    pub resources: ResourceSettings,
    /// User id to run as.
    pub run_as_user: Option<i64>,
    /// Root filesystem mounted read-only.
    pub read_only_root_filesystem: bool,
    /// Privileged (off unless the spec asks).
    pub privileged: bool,
    /// Allocate a TTY.
    pub tty: bool,
    /// Labels to put on the container (the agent's ownership labels).
    pub labels: BTreeMap<String, String>,
    /// The pod's annotations (the simulated runtime reads its `sim.capstan.dev/*` keys).
    pub annotations: BTreeMap<String, String>,
}

/// The lifecycle state of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    /// Created, not started.
    Created,
    /// Running since `started_at`.
    Running {
        /// When it started.
        started_at: SystemTime,
    },
    /// Exited.
    Exited {
        /// Exit code.
        exit_code: i32,
        /// `Completed`, `Error` or `OOMKilled`.
        reason: String,
        /// When it started, if it did.
        started_at: Option<SystemTime>,
        /// When it finished.
        finished_at: SystemTime,
    },
}

/// A container as the runtime reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    /// Runtime id.
    pub id: String,
    /// The sandbox it belongs to.
    pub sandbox_id: String,
    /// Image reference it was created from.
    pub image: String,
    /// Resolved image id.
    pub image_id: String,
    /// State.
    pub state: ContainerState,
    /// Labels given at creation.
    pub labels: BTreeMap<String, String>,
}

impl ContainerInfo {
    /// The container's name in the pod spec (from its labels).
    pub fn container_name(&self) -> &str {
        self.labels
            .get(labels::CONTAINER)
            .map(String::as_str)
            .unwrap_or("")
    }

    /// The restart count recorded in its labels.
    pub fn restart_count(&self) -> u32 {
        self.labels
            .get(labels::RESTART_COUNT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Options of a log read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// Keep streaming new output until the container exits.
    pub follow: bool,
    /// Only the last N lines.
    pub tail_lines: Option<usize>,
    /// Prefix each line with an RFC 3339 timestamp.
    pub timestamps: bool,
}

/// A stream of log bytes.
pub type LogStream = BoxStream<'static, Result<Bytes, RuntimeError>>;

/// The result of running a command in a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecOutput {
    /// Standard output.
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
    /// Exit code.
    pub exit_code: i32,
}

/// Resource usage of a container at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ContainerStats {
    /// CPU time used since the container started, in nanoseconds (cumulative).
    pub cpu_usage_nanos: u64,
    /// Working-set memory in bytes.
    pub memory_bytes: u64,
    /// When this was measured.
    pub timestamp: SystemTime,
}

/// Something that happened to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuntimeEvent {
    /// The container started.
    Started {
        /// Container id.
        container_id: String,
    },
    /// The container exited.
    Exited {
        /// Container id.
        container_id: String,
        /// Exit code.
        exit_code: i32,
        /// Killed by the out-of-memory killer.
        oom_killed: bool,
    },
}

/// What a runtime can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capabilities {
    /// Short name of the backend (`sim`, `docker`).
    pub name: &'static str,
    /// Containers are real processes (probes over the network, files in volumes matter).
    pub real_processes: bool,
    /// [`ContainerRuntime::exec`] works.
    pub exec: bool,
    /// [`ContainerRuntime::connect`] reaches pod ports.
    pub port_forward: bool,
}

/// A bidirectional byte stream into a pod (port-forward).
pub trait PodConnection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin {}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> PodConnection for T {}

/// A container runtime. Implementations are shared as `Arc<dyn ContainerRuntime>` and must be
/// safe to call concurrently; every call on one id is independent of calls on others.
#[async_trait::async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// What this runtime can do.
    fn capabilities(&self) -> Capabilities;

    /// Creates and starts a sandbox. Returns it with its IP.
    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxInfo, RuntimeError>;

    /// Stops a sandbox and every container in it. Idempotent.
    async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError>;

    /// Removes a sandbox and every container in it. Idempotent (a missing id is success).
    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError>;

    /// Sandboxes whose labels include every pair of `selector`.
    async fn list_sandboxes(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<SandboxInfo>, RuntimeError>;

    /// The id of `image` when this machine has it (as CRI's `ImageStatus`).
    async fn image_status(&self, image: &str) -> Result<Option<String>, RuntimeError>;

    /// Pulls `image` and returns its id; a failure is [`RuntimeError::ImagePull`].
    async fn pull_image(&self, image: &str) -> Result<String, RuntimeError>;

    /// Creates (does not start) a container in a sandbox; returns its id.
    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError>;

    /// Starts a created container.
    async fn start_container(&self, id: &str) -> Result<(), RuntimeError>;

    /// Stops a container: SIGTERM, then SIGKILL after `grace`. Idempotent.
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;

    /// Removes a container. Idempotent (a missing id is success).
    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError>;

    /// Containers whose labels include every pair of `selector`.
    async fn list_containers(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError>;

    /// One container's current state.
    async fn container_status(&self, id: &str) -> Result<ContainerInfo, RuntimeError>;

    /// A container's output (stdout and stderr interleaved).
    async fn logs(&self, id: &str, options: LogOptions) -> Result<LogStream, RuntimeError>;

    /// Runs a command in a running container and waits for it (at most `timeout`).
    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError>;

    /// A container's resource usage now.
    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError>;

    /// Events from now on (started, exited, OOM-killed). Missed events are possible (the
    /// stream may lag); the agent also resyncs periodically.
    fn events(&self) -> BoxStream<'static, RuntimeEvent>;

    /// Opens a TCP connection to `port` inside the sandbox's network namespace.
    async fn connect(
        &self,
        sandbox: &SandboxInfo,
        port: u16,
    ) -> Result<Box<dyn PodConnection>, RuntimeError> {
        let ip = sandbox
            .ip
            .ok_or_else(|| RuntimeError::NotFound(format!("an IP for sandbox {}", sandbox.id)))?;
        let stream = tokio::net::TcpStream::connect((ip, port))
            .await
            .map_err(|e| RuntimeError::Backend(format!("connecting to {ip}:{port}: {e}")))?;
        Ok(Box::new(stream))
    }
}

/// Parses an RFC 3339 time (as container engines report them); `None` for zero or malformed
/// values.
pub fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let timestamp: k8s_openapi::jiff::Timestamp = text.parse().ok()?;
    if timestamp.as_second() <= 0 {
        return None;
    }
    Some(SystemTime::from(timestamp))
}

/// Formats a time as RFC 3339 with nanoseconds (log timestamps).
pub fn rfc3339(time: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(time)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_times_parse() {
        let t = parse_rfc3339("2026-11-23T21:00:00.123456789Z").unwrap();
        assert!(rfc3339(t).starts_with("2026-11-23T21:00:00.123456789"));
        assert_eq!(parse_rfc3339("0001-01-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339("yesterday"), None);
    }

    #[test]
    fn pull_policy_defaults_follow_kubernetes() {
        assert_eq!(PullPolicy::for_image("busybox", None), PullPolicy::Always);
        assert_eq!(
            PullPolicy::for_image("busybox:latest", None),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::for_image("busybox:1.35", None),
            PullPolicy::IfNotPresent
        );
        assert_eq!(
            PullPolicy::for_image("localhost:5000/busybox", None),
            PullPolicy::Always
        );
        assert_eq!(
            PullPolicy::for_image("busybox:1.35", Some("Never")),
            PullPolicy::Never
        );
    }
}
