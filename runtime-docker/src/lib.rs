//! `capstan-runtime-docker`: Capstan's [`ContainerRuntime`] on the Docker Engine API (bollard).
//!
//! A pod sandbox is a tiny long-running container on a per-node bridge network whose subnet is
//! the node's pod CIDR; its IP is the pod IP. App containers join the sandbox's network and IPC
//! namespaces (`container:<id>`), so a pod's containers reach each other on localhost. The
//! network is `internal` with masquerading off: pods reach each other and the host, nothing
//! beyond — unless [`DockerRuntimeConfig::routed`] opens it to a multi-node pod network. The sandbox image is configurable; the default one is built on this machine from a
//! program the crate ships ([`local_image::pause_program`]), so no registry is needed.
//!
//! Docker here may be old (20.10, API 1.41): the client negotiates the version and uses only
//! what 1.41 offers. Everything created carries the agent's labels plus
//! `capstan.dev/role=sandbox|container`; only labelled objects are ever listed or removed.
//!
//! ```no_run
//! # async fn example() -> Result<(), capstan_runtime_docker::DockerError> {
//! use capstan_runtime_docker::{DockerRuntime, DockerRuntimeConfig};
//! let runtime = DockerRuntime::connect(DockerRuntimeConfig::new("node-1")).await?;
//! # Ok(()) }
//! ```

pub mod local_image;
mod translate;

use bollard::models::{ContainerCreateBody, HostConfig, Ipam, IpamConfig, NetworkCreateRequest};
use bollard::query_parameters::{
    CreateImageOptions, EventsOptions, ListContainersOptions, LogsOptions, RemoveContainerOptions,
    StatsOptions, StopContainerOptions,
};
use bollard::Docker;
use bytes::Bytes;
use capstan_core::runtime::{
    labels, Capabilities, ContainerConfig, ContainerInfo, ContainerRuntime, ContainerStats,
    ExecOutput, LogOptions, LogStream, RuntimeError, RuntimeEvent, SandboxConfig, SandboxInfo,
};
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::time::{Duration, SystemTime};

/// Label telling sandboxes from containers.
pub const ROLE_LABEL: &str = "capstan.dev/role";
/// Label on a container naming its sandbox's id.
pub const SANDBOX_LABEL: &str = "capstan.dev/sandbox-id";

/// Failures setting the runtime up.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// The engine is unreachable or refused (fatal for setup; check `DOCKER_HOST`).
    #[error("docker engine: {0}")]
    Engine(#[from] bollard::errors::Error),
    /// An image could not be built or found.
    #[error("image: {0}")]
    Image(String),
    /// The pod network could not be made.
    #[error("pod network: {0}")]
    Network(String),
}

/// Settings of a [`DockerRuntime`].
#[derive(Debug, Clone)]
pub struct DockerRuntimeConfig {
    /// The node the runtime serves (labels, network name).
    pub node_name: String,
    /// Engine address (`unix:///var/run/docker.sock`, `tcp://…`); `None` reads `DOCKER_HOST`
    /// or uses the default socket.
    pub docker_host: Option<String>,
    /// The node's pod CIDR, the subnet of its bridge network; `None` lets Docker choose.
    pub pod_cidr: Option<String>,
    /// The bridge network's name (default `capstan-<node>`).
    pub network: Option<String>,
    /// The sandbox image; `None` uses (and builds when missing) `capstan/sandbox:<version>`.
    pub sandbox_image: Option<String>,
    /// Whether the pod network is routed beyond this host (a multi-node pod network such as
    /// host-gw): the bridge is then an ordinary one (still without masquerading) instead of an
    /// `internal` one, whose isolation rules drop traffic to and from other hosts. What pods
    /// may reach is then up to the host's routes: blackhole what must go nowhere.
    pub routed: bool,
}

impl DockerRuntimeConfig {
    /// Defaults for `node_name`.
    pub fn new(node_name: &str) -> Self {
        DockerRuntimeConfig {
            node_name: node_name.to_string(),
            docker_host: None,
            pod_cidr: None,
            network: None,
            sandbox_image: None,
            routed: false,
        }
    }
}

/// The default sandbox image, built locally.
pub fn default_sandbox_image() -> String {
    format!("capstan/sandbox:{}", env!("CARGO_PKG_VERSION"))
}

/// The Docker [`ContainerRuntime`]. Cloning shares the connection.
#[derive(Clone)]
pub struct DockerRuntime {
    docker: Docker,
    node: String,
    network: String,
    sandbox_image: String,
}

fn backend(err: bollard::errors::Error) -> RuntimeError {
    match err {
        bollard::errors::Error::DockerResponseServerError {
            status_code: 404,
            message,
        } => RuntimeError::NotFound(message),
        other => RuntimeError::Backend(other.to_string()),
    }
}

fn status_code(err: &bollard::errors::Error) -> Option<u16> {
    match err {
        bollard::errors::Error::DockerResponseServerError { status_code, .. } => Some(*status_code),
        _ => None,
    }
}

fn label_filters(selector: &BTreeMap<String, String>, role: &str) -> HashMap<String, Vec<String>> {
    let mut labels: Vec<String> = selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.push(format!("{ROLE_LABEL}={role}"));
    HashMap::from([("label".to_string(), labels)])
}

impl DockerRuntime {
    /// Connects to the engine (negotiating the API version), makes the node's bridge network
    /// and makes the sandbox image present (building the default one if needed).
    pub async fn connect(config: DockerRuntimeConfig) -> Result<Self, DockerError> {
        let docker = match &config.docker_host {
            Some(host) => Docker::connect_with_host(host)?,
            None => Docker::connect_with_defaults()?,
        };
        let docker = docker.negotiate_version().await?;
        docker.ping().await?;
        let network = config
            .network
            .clone()
            .unwrap_or_else(|| format!("capstan-{}", config.node_name));
        let runtime = DockerRuntime {
            docker,
            node: config.node_name.clone(),
            network,
            sandbox_image: config
                .sandbox_image
                .clone()
                .unwrap_or_else(default_sandbox_image),
        };
        runtime
            .ensure_network(config.pod_cidr.as_deref(), config.routed)
            .await?;
        if runtime
            .docker
            .inspect_image(&runtime.sandbox_image)
            .await
            .is_err()
        {
            if config.sandbox_image.is_some() {
                return Err(DockerError::Image(format!(
                    "sandbox image {} is not present and no registry is used",
                    runtime.sandbox_image
                )));
            }
            tracing::info!(image = %runtime.sandbox_image, "building the sandbox image locally");
            local_image::build_sandbox_image(&runtime.docker, &runtime.sandbox_image).await?;
        }
        Ok(runtime)
    }

    /// The engine client (for tests and tools).
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// The bridge network pods join.
    pub fn network(&self) -> &str {
        &self.network
    }

    /// Makes the node's bridge network, or checks the one a previous run made still fits.
    async fn ensure_network(&self, subnet: Option<&str>, routed: bool) -> Result<(), DockerError> {
        if let Ok(existing) = self
            .docker
            .inspect_network(
                &self.network,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
        {
            let existing_subnet = existing
                .ipam
                .as_ref()
                .and_then(|i| i.config.as_ref())
                .and_then(|c| c.first())
                .and_then(|c| c.subnet.clone());
            let subnet_fits = subnet.is_none_or(|s| existing_subnet.as_deref() == Some(s));
            let internal = existing.internal.unwrap_or(false);
            if subnet_fits && internal != routed {
                return Ok(());
            }
            return Err(DockerError::Network(format!(
                "network {} exists with subnet {} ({}), but this node needs {} ({}); remove it with `docker network rm {}` once no pod uses it",
                self.network,
                existing_subnet.as_deref().unwrap_or("unknown"),
                if internal { "internal" } else { "routed" },
                subnet.unwrap_or("any subnet"),
                if routed { "routed" } else { "internal" },
                self.network,
            )));
        }
        let request = NetworkCreateRequest {
            name: self.network.clone(),
            driver: Some("bridge".into()),
            internal: Some(!routed),
            ipam: subnet.map(|subnet| Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            options: Some(HashMap::from([(
                "com.docker.network.bridge.enable_ip_masquerade".to_string(),
                "false".to_string(),
            )])),
            labels: Some(HashMap::from([(
                labels::NODE.to_string(),
                self.node.clone(),
            )])),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => Ok(()),
            // Created concurrently by another runtime of this node.
            Err(err) if status_code(&err) == Some(409) => Ok(()),
            Err(err) => Err(DockerError::Network(err.to_string())),
        }
    }

    async fn list(
        &self,
        selector: &BTreeMap<String, String>,
        role: &str,
    ) -> Result<Vec<String>, RuntimeError> {
        let options = ListContainersOptions {
            all: true,
            filters: Some(label_filters(selector, role)),
            ..Default::default()
        };
        Ok(self
            .docker
            .list_containers(Some(options))
            .await
            .map_err(backend)?
            .into_iter()
            .filter_map(|c| c.id)
            .collect())
    }

    async fn inspect_sandbox(&self, id: &str) -> Result<SandboxInfo, RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(backend)?;
        let running = inspect
            .state
            .as_ref()
            .and_then(|s| s.running)
            .unwrap_or(false);
        let host_network = inspect
            .host_config
            .as_ref()
            .and_then(|h| h.network_mode.as_deref())
            == Some("host");
        let ip = if host_network {
            Some(IpAddr::from([127, 0, 0, 1]))
        } else {
            inspect
                .network_settings
                .as_ref()
                .and_then(|n| n.networks.as_ref())
                .and_then(|n| n.get(&self.network))
                .and_then(|n| n.ip_address.as_deref())
                .and_then(|ip| ip.parse().ok())
        };
        Ok(SandboxInfo {
            id: inspect.id.unwrap_or_else(|| id.to_string()),
            ip,
            ready: running,
            labels: inspect
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
        })
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let options = RemoveContainerOptions {
            force: true,
            v: true,
            ..Default::default()
        };
        match self.docker.remove_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if status_code(&err) == Some(404) => Ok(()),
            // Removal already in progress.
            Err(err) if status_code(&err) == Some(409) => Ok(()),
            Err(err) => Err(backend(err)),
        }
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let seconds = grace.as_secs_f64().ceil() as i32;
        let options = StopContainerOptions {
            t: Some(seconds),
            signal: None,
        };
        match self.docker.stop_container(id, Some(options)).await {
            Ok(()) => Ok(()),
            Err(err) if matches!(status_code(&err), Some(304 | 404)) => Ok(()),
            Err(err) => Err(backend(err)),
        }
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for DockerRuntime {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "docker",
            real_processes: true,
            exec: true,
            port_forward: true,
        }
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxInfo, RuntimeError> {
        let mut labels: HashMap<String, String> = config.labels.clone().into_iter().collect();
        labels.insert(ROLE_LABEL.into(), "sandbox".into());
        let name =
            translate::object_name(&["sandbox", &config.name, &config.namespace, &config.uid]);
        let body = ContainerCreateBody {
            image: Some(self.sandbox_image.clone()),
            hostname: (!config.host_network).then(|| translate::hostname(&config.hostname)),
            labels: Some(labels),
            host_config: Some(HostConfig {
                network_mode: Some(if config.host_network {
                    "host".into()
                } else {
                    self.network.clone()
                }),
                ipc_mode: Some("shareable".into()),
                dns: config.dns.as_ref().map(|d| d.nameservers.clone()),
                dns_search: config.dns.as_ref().map(|d| d.searches.clone()),
                dns_options: config.dns.as_ref().map(|d| d.options.clone()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let options = bollard::query_parameters::CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(backend)?;
        if let Err(err) = self
            .docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            let _ = self.remove(&created.id).await;
            return Err(backend(err));
        }
        self.inspect_sandbox(&created.id).await
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let selector = BTreeMap::from([(SANDBOX_LABEL.to_string(), id.to_string())]);
        for container in self.list(&selector, "container").await? {
            self.stop(&container, Duration::ZERO).await?;
        }
        self.stop(id, Duration::ZERO).await
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let selector = BTreeMap::from([(SANDBOX_LABEL.to_string(), id.to_string())]);
        for container in self.list(&selector, "container").await? {
            self.remove(&container).await?;
        }
        self.remove(id).await
    }

    async fn list_sandboxes(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<SandboxInfo>, RuntimeError> {
        let mut out = Vec::new();
        for id in self.list(selector, "sandbox").await? {
            match self.inspect_sandbox(&id).await {
                Ok(info) => out.push(info),
                Err(RuntimeError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }

    async fn image_status(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        match self.docker.inspect_image(image).await {
            Ok(inspect) => Ok(Some(inspect.id.unwrap_or_default())),
            Err(err) if status_code(&err) == Some(404) => Ok(None),
            Err(err) => Err(backend(err)),
        }
    }

    async fn pull_image(&self, image: &str) -> Result<String, RuntimeError> {
        let failed = |message: String| RuntimeError::ImagePull {
            image: image.into(),
            message,
        };
        let options = CreateImageOptions {
            from_image: Some(image.to_string()),
            ..Default::default()
        };
        let mut pull = self.docker.create_image(Some(options), None, None);
        while let Some(step) = pull.next().await {
            let step = step.map_err(|e| failed(e.to_string()))?;
            if let Some(message) = step.error_detail.and_then(|d| d.message) {
                return Err(failed(message));
            }
        }
        let inspect = self
            .docker
            .inspect_image(image)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(inspect.id.unwrap_or_default())
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        let sandbox = self.inspect_sandbox(sandbox_id).await?;
        if !sandbox.ready {
            return Err(RuntimeError::NotFound(format!(
                "running sandbox {sandbox_id}"
            )));
        }
        let body = translate::container_body(config, &sandbox.id)?;
        let name = translate::object_name(&[
            &config.name,
            config
                .labels
                .get(labels::POD_NAME)
                .map(String::as_str)
                .unwrap_or(""),
            config
                .labels
                .get(labels::RESTART_COUNT)
                .map(String::as_str)
                .unwrap_or("0"),
        ]);
        let options = bollard::query_parameters::CreateContainerOptions {
            name: Some(name),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(Some(options), body)
            .await
            .map_err(|err| match status_code(&err) {
                Some(400) => RuntimeError::InvalidConfig(err.to_string()),
                _ => backend(err),
            })?;
        Ok(created.id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        match self
            .docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
        {
            Ok(()) => Ok(()),
            Err(err) if status_code(&err) == Some(304) => Ok(()),
            Err(err) => Err(match status_code(&err) {
                Some(400 | 500) => RuntimeError::InvalidConfig(err.to_string()),
                _ => backend(err),
            }),
        }
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        self.stop(id, grace).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        self.remove(id).await
    }

    async fn list_containers(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let mut out = Vec::new();
        for id in self.list(selector, "container").await? {
            match self.container_status(&id).await {
                Ok(info) => out.push(info),
                Err(RuntimeError::NotFound(_)) => {}
                Err(err) => return Err(err),
            }
        }
        Ok(out)
    }

    async fn container_status(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        let inspect = self
            .docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(backend)?;
        let labels: BTreeMap<String, String> = inspect
            .config
            .as_ref()
            .and_then(|c| c.labels.clone())
            .unwrap_or_default()
            .into_iter()
            .collect();
        if labels.get(ROLE_LABEL).map(String::as_str) != Some("container") {
            return Err(RuntimeError::NotFound(format!("container {id}")));
        }
        let state = translate::state(inspect.state.as_ref());
        Ok(ContainerInfo {
            id: inspect.id.unwrap_or_else(|| id.to_string()),
            sandbox_id: labels.get(SANDBOX_LABEL).cloned().unwrap_or_default(),
            image: inspect
                .config
                .as_ref()
                .and_then(|c| c.image.clone())
                .unwrap_or_default(),
            image_id: inspect.image.unwrap_or_default(),
            state,
            labels,
        })
    }

    async fn logs(&self, id: &str, options: LogOptions) -> Result<LogStream, RuntimeError> {
        // Fail early (404) rather than inside the stream.
        self.docker
            .inspect_container(
                id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .map_err(backend)?;
        let query = LogsOptions {
            follow: options.follow,
            stdout: true,
            stderr: true,
            timestamps: options.timestamps,
            tail: options
                .tail_lines
                .map(|n| n.to_string())
                .unwrap_or_else(|| "all".into()),
            ..Default::default()
        };
        let stream = self
            .docker
            .logs(id, Some(query))
            .map_ok(|output| output.into_bytes())
            .map_err(backend);
        Ok(stream.boxed())
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let created = self
            .docker
            .create_exec(
                id,
                bollard::models::ExecConfig {
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    cmd: Some(command.to_vec()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|err| match status_code(&err) {
                Some(409) => RuntimeError::InvalidConfig(format!("container {id} is not running")),
                _ => backend(err),
            })?;
        let started = self
            .docker
            .start_exec(&created.id, None::<bollard::exec::StartExecOptions>)
            .await
            .map_err(backend)?;
        let mut output = ExecOutput::default();
        if let bollard::exec::StartExecResults::Attached {
            output: mut stream, ..
        } = started
        {
            let collect = async {
                while let Some(chunk) = stream.next().await {
                    match chunk.map_err(backend)? {
                        bollard::container::LogOutput::StdErr { message } => {
                            output.stderr.extend_from_slice(&message)
                        }
                        other => output.stdout.extend_from_slice(&other.into_bytes()),
                    }
                }
                Ok::<(), RuntimeError>(())
            };
            tokio::time::timeout(timeout, collect).await.map_err(|_| {
                RuntimeError::Backend(format!("exec timed out after {timeout:?}"))
            })??;
        }
        // The exit code is set a moment after the output closes.
        for _ in 0..50 {
            let inspect = self
                .docker
                .inspect_exec(&created.id)
                .await
                .map_err(backend)?;
            if inspect.running != Some(true) {
                output.exit_code = inspect.exit_code.unwrap_or(0) as i32;
                return Ok(output);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(RuntimeError::Backend("exec did not finish".into()))
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let options = StatsOptions {
            stream: false,
            one_shot: true,
        };
        let stats = self
            .docker
            .stats(id, Some(options))
            .next()
            .await
            .ok_or_else(|| RuntimeError::Backend("no stats".into()))?
            .map_err(backend)?;
        let cpu = stats
            .cpu_stats
            .and_then(|c| c.cpu_usage)
            .and_then(|u| u.total_usage)
            .unwrap_or(0);
        let memory = stats.memory_stats.map(|m| {
            let usage = m.usage.unwrap_or(0);
            let inactive = m
                .stats
                .as_ref()
                .and_then(|s| {
                    s.get("inactive_file")
                        .or_else(|| s.get("total_inactive_file"))
                })
                .copied()
                .unwrap_or(0);
            usage.saturating_sub(inactive)
        });
        Ok(ContainerStats {
            cpu_usage_nanos: cpu,
            memory_bytes: memory.unwrap_or(0),
            timestamp: SystemTime::now(),
        })
    }

    fn events(&self) -> BoxStream<'static, RuntimeEvent> {
        let docker = self.docker.clone();
        let node = self.node.clone();
        let since = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs()
            .to_string();
        let filters = HashMap::from([
            ("type".to_string(), vec!["container".to_string()]),
            (
                "label".to_string(),
                vec![
                    format!("{}={node}", labels::NODE),
                    format!("{ROLE_LABEL}=container"),
                ],
            ),
            (
                "event".to_string(),
                vec!["start".to_string(), "die".to_string(), "oom".to_string()],
            ),
        ]);
        let options = EventsOptions {
            since: Some(since),
            until: None,
            filters: Some(filters),
        };
        docker
            .events(Some(options))
            .filter_map(|event| async move {
                let event = event.ok()?;
                let actor = event.actor?;
                let id = actor.id?;
                let attributes = actor.attributes.unwrap_or_default();
                match event.action.as_deref()? {
                    "start" => Some(RuntimeEvent::Started { container_id: id }),
                    "die" => Some(RuntimeEvent::Exited {
                        container_id: id,
                        exit_code: attributes
                            .get("exitCode")
                            .and_then(|c| c.parse().ok())
                            .unwrap_or(-1),
                        oom_killed: false,
                    }),
                    "oom" => Some(RuntimeEvent::Exited {
                        container_id: id,
                        exit_code: 137,
                        oom_killed: true,
                    }),
                    _ => None,
                }
            })
            .boxed()
    }
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("node", &self.node)
            .field("network", &self.network)
            .field("sandbox_image", &self.sandbox_image)
            .finish()
    }
}

/// Reads the whole of a log stream (tests and tools).
pub async fn read_all(mut stream: LogStream) -> Result<Bytes, RuntimeError> {
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out.into())
}
