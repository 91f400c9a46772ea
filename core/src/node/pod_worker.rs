//! One worker per pod bound to the node: a level-triggered state machine that makes the
//! runtime match the pod spec and reports the result as the pod's status.
//!
//! Each sync: admission (once), sandbox, volumes, init containers in order, app containers with
//! the restart policy and back-off, probes, then status. Deletion runs preStop hooks, stops
//! containers within the grace period, removes the sandbox and finally the API object. The
//! worker never writes anything but its own pod's status and deletion.

use super::admission::{self, Rejection};
use super::environment::EnvironmentSource;
use super::pod_inbox::{Mail, PodInbox};
use super::pod_status::{self, time_string, Waiting};
use super::probes::{self, ProbeResult, ProbeTracker};
use super::written_status::WrittenStatus;
use super::{volumes, AgentShared, NodeError};
use crate::controller::EventType;
use crate::runtime::{
    labels, ContainerConfig, ContainerInfo, ContainerState, PullPolicy, ResourceSettings,
    RuntimeError, SandboxConfig, SandboxInfo,
};
use k8s_openapi::api::core::v1::{Container, LifecycleHandler, Pod, PodSpec, Probe};
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Probe state of one running container instance.
#[derive(Debug, Default)]
struct ContainerProbes {
    startup: Option<ProbeTracker>,
    liveness: Option<ProbeTracker>,
    readiness: Option<ProbeTracker>,
}

impl ContainerProbes {
    /// Fresh trackers for `container`'s probes, or `None` when it has none (most containers:
    /// a node keeps no probe state for them).
    fn of(container: &Container, started: Instant) -> Option<Self> {
        let tracker = |probe: &Option<Probe>| probe.as_ref().map(|p| ProbeTracker::new(p, started));
        let probes = ContainerProbes {
            startup: tracker(&container.startup_probe),
            liveness: tracker(&container.liveness_probe),
            readiness: tracker(&container.readiness_probe),
        };
        (probes.startup.is_some() || probes.liveness.is_some() || probes.readiness.is_some())
            .then_some(probes)
    }
}

/// A container whose startup or liveness probe failed: stopped once the sync has written the
/// pod's status, so the status never waits on the container's grace period.
struct ProbeKill {
    id: String,
    container: String,
    /// `liveness` or `startup`.
    probe: &'static str,
    reason: String,
}

/// A container's image pull back-off (kubelet's `ImagePullBackOff`).
struct PullBackOff {
    /// The image that failed to pull (a new image starts afresh).
    image: String,
    /// How long to wait after the last failure; doubles with each failure.
    delay: Duration,
    failed_at: Instant,
}

/// What happens after a sync.
enum Next {
    /// Sync again after this long (or sooner on a change).
    After(Duration),
    /// The pod is gone; the worker ends.
    Done,
}

/// One per pod, alive as long as the pod: its per-container tables are B-trees (24 bytes
/// empty, where a hash map is 48), as most stay empty.
struct PodWorker {
    shared: Arc<AgentShared>,
    uid: String,
    pod: Arc<Pod>,
    removed: bool,
    sandbox: Option<SandboxInfo>,
    rejection: Option<Rejection>,
    admitted: bool,
    probes: BTreeMap<String, ContainerProbes>,
    /// Containers this sync's probes condemned, stopped after its status write.
    kills: Vec<ProbeKill>,
    backoff: BTreeMap<String, Duration>,
    /// Containers whose image failed to pull, by name.
    pull_backoff: BTreeMap<String, PullBackOff>,
    waiting: BTreeMap<String, Waiting>,
    volumes: Option<(BTreeMap<String, PathBuf>, Instant)>,
    /// What is remembered of the status last written (a node keeps one per pod).
    written: Option<Box<WrittenStatus>>,
    start_time: Option<String>,
    terminal_cleanup_done: bool,
    /// Whether this sync started a container (the status then reads the runtime again).
    started_in_sync: bool,
}

/// Runs the worker of one pod until the pod is gone, the agent drops its side of `inbox`, or
/// `cancel` fires.
pub(crate) async fn run(shared: Arc<AgentShared>, inbox: Arc<PodInbox>, cancel: CancellationToken) {
    let Mail::Pod(pod) = inbox.take() else {
        return;
    };
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let span = tracing::debug_span!(
        "pod",
        pod = %format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or_default(), pod.metadata.name.as_deref().unwrap_or_default())
    );
    let mut worker = PodWorker {
        shared,
        written: pod
            .status
            .as_ref()
            .and_then(|s| serde_json::to_value(s).ok())
            .map(|s| Box::new(WrittenStatus::of(&s))),
        start_time: pod
            .status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .and_then(|t| serde_json::to_value(t).ok())
            .and_then(|v| v.as_str().map(str::to_string)),
        uid,
        pod,
        removed: false,
        sandbox: None,
        rejection: None,
        admitted: false,
        probes: BTreeMap::new(),
        kills: Vec::new(),
        backoff: BTreeMap::new(),
        pull_backoff: BTreeMap::new(),
        waiting: BTreeMap::new(),
        volumes: None,
        terminal_cleanup_done: false,
        started_in_sync: false,
    };
    loop {
        // Boxed: a sync's state lives only while it runs, so the worker parked between syncs
        // (one per pod, 150,000 on a large node set) stays a few hundred bytes, not kilobytes.
        let sync = Box::pin(tracing::Instrument::instrument(worker.sync(), span.clone()));
        let next = match sync.await {
            Ok(Next::Done) => break,
            Ok(Next::After(delay)) => delay,
            Err(err) => {
                tracing::warn!(parent: &span, "pod sync failed: {err}");
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => break,
            _ = inbox.woken() => match inbox.take() {
                Mail::Pod(pod) => worker.pod = pod,
                Mail::Gone => worker.removed = true,
                Mail::Nothing => {}
                Mail::Closed => break,
            },
            _ = tokio::time::sleep(next) => {}
        }
    }
}

fn restart_policy(pod: &Pod) -> &str {
    pod.spec
        .as_ref()
        .and_then(|s| s.restart_policy.as_deref())
        .unwrap_or("Always")
}

fn millis(
    map: Option<&BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>>,
    key: &str,
    milli: bool,
) -> Option<u64> {
    let q = crate::quantity::Quantity::parse(&map?.get(key)?.0).ok()?;
    u64::try_from(if milli { q.milli_value() } else { q.value() }).ok()
}

fn waiting_for(err: &NodeError) -> Waiting {
    let reason = match err {
        NodeError::Runtime(RuntimeError::ImageNeverPull(_)) => "ErrImageNeverPull",
        NodeError::Runtime(RuntimeError::ImagePull { .. }) => "ErrImagePull",
        NodeError::Runtime(RuntimeError::InvalidConfig(_)) | NodeError::ContainerConfig(_) => {
            "CreateContainerConfigError"
        }
        _ => "CreateContainerError",
    };
    Waiting {
        reason: reason.into(),
        message: err.to_string(),
    }
}

impl PodWorker {
    /// Records an Event about the pod, as kubelet does (when the node records events).
    fn event(&self, kind: EventType, reason: &str, message: &str) {
        if let Some(events) = &self.shared.events {
            events.record_for(&*self.pod, kind, reason, message);
        }
    }

    fn api(&self) -> Api<Pod> {
        Api::namespaced(
            self.shared.client.clone(),
            self.pod.metadata.namespace.as_deref().unwrap_or("default"),
        )
    }

    fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }

    fn phase(&self) -> Option<&str> {
        self.pod.status.as_ref().and_then(|s| s.phase.as_deref())
    }

    fn owner_labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (labels::NODE.to_string(), self.shared.config.name.clone()),
            (labels::POD_UID.to_string(), self.uid.clone()),
        ])
    }

    async fn sync(&mut self) -> Result<Next, NodeError> {
        if self.removed || self.pod.metadata.deletion_timestamp.is_some() {
            self.terminate().await?;
            return Ok(Next::Done);
        }
        if matches!(self.phase(), Some("Succeeded" | "Failed")) {
            self.release_terminal().await;
            return Ok(Next::After(Duration::from_secs(60)));
        }
        if !self.admitted {
            if let Some(rejection) = self.rejection.clone() {
                self.write_rejection(&rejection).await?;
                return Ok(Next::After(Duration::from_secs(60)));
            }
            let verdict = {
                let mut admitted = self
                    .shared
                    .admitted
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                admitted.remove(&self.uid);
                let verdict = admission::admit(
                    &self.pod,
                    &self.shared.node_labels,
                    &self.shared.allocatable,
                    &admitted,
                );
                if let Ok(footprint) = &verdict {
                    admitted.insert(self.uid.clone(), footprint.clone());
                }
                verdict
            };
            match verdict {
                Ok(_) => self.admitted = true,
                Err(rejection) => {
                    tracing::info!(reason = %rejection.reason, "pod rejected by node admission");
                    self.rejection = Some(rejection.clone());
                    self.write_rejection(&rejection).await?;
                    return Ok(Next::After(Duration::from_secs(60)));
                }
            }
        }
        if self.start_time.is_none() {
            self.start_time = Some(time_string(SystemTime::now()));
        }
        let sandbox = self.ensure_sandbox().await?;
        self.ensure_volumes().await?;
        let instances = self.instances().await?;
        self.started_in_sync = false;
        let mut next = self.shared.config.resync_period;
        // Volumes filled from the API (ConfigMaps, Secrets, the downward API) are re-read on
        // their own period.
        if self
            .volumes
            .as_ref()
            .is_some_and(|(paths, _)| !paths.is_empty())
        {
            next = next.min(self.shared.config.volume_refresh);
        }
        // The pod (an `Arc`) is held for the sync, so its spec is read in place, not copied.
        let pod = self.pod.clone();
        let no_spec = PodSpec::default();
        let spec = pod.spec.as_ref().unwrap_or(&no_spec);
        let policy = restart_policy(&self.pod).to_string();

        // Init containers, in order; each must succeed before the next starts.
        let mut initialized = true;
        let mut failed_init = false;
        for init in spec.init_containers.as_deref().unwrap_or_default() {
            let latest = instances.get(&init.name).and_then(|v| v.first());
            match latest.map(|c| &c.state) {
                Some(ContainerState::Exited { exit_code: 0, .. }) => continue,
                Some(ContainerState::Exited { finished_at, .. }) => {
                    initialized = false;
                    if policy == "Never" {
                        failed_init = true;
                    } else {
                        let restarts = latest.map(ContainerInfo::restart_count).unwrap_or(0);
                        if let Some(wait) = self.back_off(&init.name, *finished_at) {
                            next = next.min(wait);
                        } else {
                            next = next.min(self.start(&sandbox, init, restarts + 1).await);
                        }
                    }
                    break;
                }
                Some(_) => {
                    initialized = false;
                    next = next.min(Duration::from_millis(500));
                    break;
                }
                None => {
                    initialized = false;
                    next = next.min(self.start(&sandbox, init, 0).await);
                    break;
                }
            }
        }

        // App containers.
        let mut readiness = HashMap::new();
        if initialized {
            for container in &spec.containers {
                let latest = instances.get(&container.name).and_then(|v| v.first());
                match latest.map(|c| (&c.state, c)) {
                    None => {
                        next = next.min(self.start(&sandbox, container, 0).await);
                    }
                    Some((ContainerState::Created, info)) => {
                        let id = info.id.clone();
                        if let Err(err) = self.shared.runtime.start_container(&id).await {
                            self.waiting
                                .insert(container.name.clone(), waiting_for(&err.into()));
                        }
                        next = next.min(Duration::from_millis(200));
                    }
                    Some((ContainerState::Running { .. }, info)) => {
                        let id = info.id.clone();
                        let wake = self
                            .observe_running(&sandbox, &id, container, &mut readiness)
                            .await;
                        next = next.min(wake);
                    }
                    Some((
                        ContainerState::Exited {
                            exit_code,
                            finished_at,
                            ..
                        },
                        info,
                    )) => {
                        let restart = match policy.as_str() {
                            "Never" => false,
                            "OnFailure" => *exit_code != 0,
                            _ => true,
                        };
                        self.probes.remove(&info.id);
                        if restart {
                            let restarts = info.restart_count();
                            if let Some(wait) = self.back_off(&container.name, *finished_at) {
                                next = next.min(wait);
                            } else {
                                next =
                                    next.min(self.start(&sandbox, container, restarts + 1).await);
                            }
                        } else {
                            self.clear_waiting(&container.name);
                        }
                    }
                }
            }
        }

        // Phase, from the runtime's view after what this sync started.
        let instances = if self.started_in_sync {
            self.instances().await?
        } else {
            instances
        };
        // Containers this sync started and found running are probed now, as the next sync
        // would: a container without a readiness probe is ready at once, so a started pod's
        // status goes out once, Running and Ready, instead of twice.
        if self.started_in_sync && initialized {
            for container in &spec.containers {
                if readiness.contains_key(&container.name) {
                    continue;
                }
                let Some(info) = instances.get(&container.name).and_then(|v| v.first()) else {
                    continue;
                };
                if matches!(info.state, ContainerState::Running { .. }) {
                    let id = info.id.clone();
                    let wake = self
                        .observe_running(&sandbox, &id, container, &mut readiness)
                        .await;
                    next = next.min(wake);
                }
            }
        }
        let app_states: Vec<Option<&ContainerState>> = spec
            .containers
            .iter()
            .map(|c| {
                instances
                    .get(&c.name)
                    .and_then(|v| v.first())
                    .map(|i| &i.state)
            })
            .collect();
        let all_exited = !app_states.is_empty()
            && app_states
                .iter()
                .all(|s| matches!(s, Some(ContainerState::Exited { .. })));
        let any_failed = app_states.iter().any(
            |s| matches!(s, Some(ContainerState::Exited { exit_code, .. }) if *exit_code != 0),
        );
        let will_restart = match policy.as_str() {
            "Never" => false,
            "OnFailure" => any_failed,
            _ => true,
        };
        let phase = if failed_init {
            "Failed"
        } else if initialized && all_exited && !will_restart {
            if any_failed {
                "Failed"
            } else {
                "Succeeded"
            }
        } else if initialized
            && app_states.iter().all(Option::is_some)
            && app_states.iter().any(|s| {
                matches!(
                    s,
                    Some(ContainerState::Running { .. }) | Some(ContainerState::Exited { .. })
                )
            })
        {
            "Running"
        } else {
            "Pending"
        };
        let written = self
            .write_status(spec, &sandbox, &instances, phase, initialized, &readiness)
            .await;
        self.stop_condemned(spec, &sandbox).await;
        written?;
        Ok(Next::After(next))
    }

    /// The back-off still to wait before restarting `name` (which died at `finished_at`), or
    /// `None` when it may restart now (which also advances the back-off).
    fn back_off(&mut self, name: &str, finished_at: SystemTime) -> Option<Duration> {
        let config = &self.shared.config;
        let current = self.backoff.get(name).copied().unwrap_or_default();
        let since = SystemTime::now()
            .duration_since(finished_at)
            .unwrap_or_default();
        if since < current {
            let wait = current - since;
            // As kubelet names a pod in these messages: name_namespace(uid).
            let pod = format!(
                "{}_{}({})",
                self.name(),
                self.pod.metadata.namespace.as_deref().unwrap_or_default(),
                self.uid
            );
            // When the back-off starts, not on every sync that waits it out.
            if self.waiting.get(name).map(|w| w.reason.as_str()) != Some("CrashLoopBackOff") {
                self.event(
                    EventType::Warning,
                    "BackOff",
                    &format!("Back-off restarting failed container {name} in pod {pod}"),
                );
            }
            self.waiting.insert(
                name.to_string(),
                Waiting {
                    reason: "CrashLoopBackOff".into(),
                    message: format!(
                        "back-off {}s restarting failed container={name} pod={pod}",
                        current.as_secs(),
                    ),
                },
            );
            return Some(wait);
        }
        let advanced = if current.is_zero() {
            config.initial_backoff
        } else {
            (current * 2).min(config.max_backoff)
        };
        self.backoff.insert(name.to_string(), advanced);
        None
    }

    /// Forgets `name`'s waiting reason (an emptied B-tree holds no memory: a node keeps a
    /// worker per pod, and most pods wait only while they start).
    fn clear_waiting(&mut self, name: &str) {
        self.waiting.remove(name);
    }

    async fn instances(&self) -> Result<HashMap<String, Vec<ContainerInfo>>, NodeError> {
        let mut selector = self.owner_labels();
        selector.remove(labels::NODE);
        let mut by_name: HashMap<String, Vec<ContainerInfo>> = HashMap::new();
        for info in self.shared.runtime.list_containers(&selector).await? {
            by_name
                .entry(info.container_name().to_string())
                .or_default()
                .push(info);
        }
        for list in by_name.values_mut() {
            list.sort_by_key(|c| std::cmp::Reverse(c.restart_count()));
        }
        Ok(by_name)
    }

    async fn ensure_sandbox(&mut self) -> Result<SandboxInfo, NodeError> {
        if let Some(sandbox) = &self.sandbox {
            return Ok(sandbox.clone());
        }
        let mut selector = self.owner_labels();
        selector.remove(labels::NODE);
        let existing = self.shared.runtime.list_sandboxes(&selector).await?;
        let mut adopted = None;
        for sandbox in existing {
            if sandbox.ready && adopted.is_none() {
                adopted = Some(sandbox);
            } else {
                self.shared.runtime.remove_sandbox(&sandbox.id).await?;
            }
        }
        let sandbox = match adopted {
            Some(sandbox) => sandbox,
            None => {
                let spec = self.pod.spec.as_ref();
                let mut labels = self.owner_labels();
                labels.insert(
                    crate::runtime::labels::POD_NAMESPACE.into(),
                    self.pod.metadata.namespace.clone().unwrap_or_default(),
                );
                labels.insert(crate::runtime::labels::POD_NAME.into(), self.name().into());
                self.shared
                    .runtime
                    .run_sandbox(&SandboxConfig {
                        namespace: self.pod.metadata.namespace.clone().unwrap_or_default(),
                        name: self.name().to_string(),
                        uid: self.uid.clone(),
                        hostname: spec
                            .and_then(|s| s.hostname.clone())
                            .unwrap_or_else(|| self.name().to_string()),
                        host_network: spec.and_then(|s| s.host_network).unwrap_or(false),
                        labels,
                        dns: super::dns_policy::pod_dns(
                            &self.pod,
                            self.shared.config.cluster_dns,
                            &self.shared.config.cluster_domain,
                        ),
                    })
                    .await?
            }
        };
        // The worker's copy goes without the labels (the runtime keeps them; it never reads
        // them), one map fewer per pod on a node.
        self.sandbox = Some(SandboxInfo {
            labels: BTreeMap::new(),
            ..sandbox.clone()
        });
        Ok(sandbox)
    }

    async fn ensure_volumes(&mut self) -> Result<(), NodeError> {
        let fresh = self
            .volumes
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < self.shared.config.volume_refresh);
        if fresh {
            return Ok(());
        }
        let paths =
            volumes::prepare(&self.shared.client, &self.shared.config.root_dir, &self.pod).await?;
        self.volumes = Some((paths, Instant::now()));
        Ok(())
    }

    /// Creates and starts an instance of `container`; failures become its waiting reason.
    /// Returns when to look again: soon, or when its image pull back-off ends.
    async fn start(
        &mut self,
        sandbox: &SandboxInfo,
        container: &Container,
        restart_count: u32,
    ) -> Duration {
        if let Some(wait) = self.pull_back_off(container) {
            return wait;
        }
        match self.try_start(sandbox, container, restart_count).await {
            Ok(()) => {
                self.clear_waiting(&container.name);
                self.pull_backoff.remove(&container.name);
                self.started_in_sync = true;
            }
            Err(err) => {
                if matches!(err, NodeError::Runtime(RuntimeError::ImagePull { .. })) {
                    let config = &self.shared.config;
                    let image = container.image.clone().unwrap_or_default();
                    let delay = self
                        .pull_backoff
                        .get(&container.name)
                        .filter(|b| b.image == image)
                        .map_or(config.initial_backoff, |b| {
                            (b.delay * 2).min(config.max_backoff)
                        });
                    let backoff = PullBackOff {
                        image,
                        delay,
                        failed_at: Instant::now(),
                    };
                    self.pull_backoff.insert(container.name.clone(), backoff);
                }
                tracing::info!(container = %container.name, "starting container failed: {err}");
                if matches!(err, NodeError::Runtime(RuntimeError::NotFound(_))) {
                    // The sandbox vanished; make a new one next sync.
                    self.sandbox = None;
                }
                let waiting = waiting_for(&err);
                // Once per episode, not on every sync that retries.
                if self.waiting.get(&container.name) != Some(&waiting) {
                    let image = container.image.as_deref().unwrap_or_default();
                    let (reason, message) = match &err {
                        NodeError::Runtime(RuntimeError::ImageNeverPull(_)) => (
                            "ErrImageNeverPull",
                            format!("Container image {image:?} is not present with pull policy of Never"),
                        ),
                        NodeError::Runtime(RuntimeError::ImagePull { message, .. }) => {
                            ("Failed", format!("Failed to pull image {image:?}: {message}"))
                        }
                        _ => ("Failed", format!("Error: {err}")),
                    };
                    self.event(EventType::Warning, reason, &message);
                }
                self.waiting.insert(container.name.clone(), waiting);
            }
        }
        Duration::from_millis(200)
    }

    /// While `container`'s image pull backs off after a failure: how long is left (its
    /// waiting reason is then `ImagePullBackOff`, as kubelet reports it).
    fn pull_back_off(&mut self, container: &Container) -> Option<Duration> {
        let image = container.image.as_deref().unwrap_or_default();
        let backoff = self
            .pull_backoff
            .get(&container.name)
            .filter(|b| b.image == image)?;
        let wait = backoff
            .delay
            .checked_sub(backoff.failed_at.elapsed())
            .filter(|w| !w.is_zero())?;
        let waiting = Waiting {
            reason: "ImagePullBackOff".into(),
            message: format!("Back-off pulling image {image:?}"),
        };
        // When the back-off starts, not on every sync that waits it out.
        if self.waiting.get(&container.name) != Some(&waiting) {
            self.event(EventType::Normal, "BackOff", &waiting.message);
            self.waiting.insert(container.name.clone(), waiting);
        }
        Some(wait)
    }

    async fn try_start(
        &mut self,
        sandbox: &SandboxInfo,
        container: &Container,
        restart_count: u32,
    ) -> Result<(), NodeError> {
        let image = container.image.clone().unwrap_or_default();
        let policy = PullPolicy::for_image(&image, container.image_pull_policy.as_deref());
        let present = self.shared.runtime.image_status(&image).await?.is_some();
        if policy.must_pull(&image, present)? {
            self.event(
                EventType::Normal,
                "Pulling",
                &format!("Pulling image {image:?}"),
            );
            let asked = std::time::Instant::now();
            self.shared.runtime.pull_image(&image).await?;
            let message = format!(
                "Successfully pulled image {image:?} in {:.3}s",
                asked.elapsed().as_secs_f64()
            );
            self.event(EventType::Normal, "Pulled", &message);
        } else {
            let message = format!("Container image {image:?} already present on machine");
            self.event(EventType::Normal, "Pulled", &message);
        }
        let pod_ip = sandbox.ip.map(|ip| ip.to_string());
        let env = EnvironmentSource {
            client: &self.shared.client,
            pod: &self.pod,
            pod_ip,
            host_ip: self.shared.config.address.to_string(),
            allocatable: &self.shared.allocatable,
        }
        .resolve(container)
        .await?;
        let volume_paths = self
            .volumes
            .as_ref()
            .map(|(p, _)| p.clone())
            .unwrap_or_default();
        let mounts = volumes::mounts(container, &volume_paths)?;
        let resources = container.resources.as_ref();
        let requests = resources.and_then(|r| r.requests.as_ref());
        let limits = resources.and_then(|r| r.limits.as_ref());
        let security = container.security_context.as_ref();
        let pod_security = self
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.security_context.as_ref());
        let mut labels = self.owner_labels();
        labels.insert(
            crate::runtime::labels::CONTAINER.into(),
            container.name.clone(),
        );
        labels.insert(
            crate::runtime::labels::RESTART_COUNT.into(),
            restart_count.to_string(),
        );
        labels.insert(
            crate::runtime::labels::POD_NAMESPACE.into(),
            self.pod.metadata.namespace.clone().unwrap_or_default(),
        );
        labels.insert(crate::runtime::labels::POD_NAME.into(), self.name().into());
        let config = ContainerConfig {
            name: container.name.clone(),
            image,
            command: container.command.clone().unwrap_or_default(),
            args: container.args.clone().unwrap_or_default(),
            env,
            working_dir: container.working_dir.clone(),
            mounts,
            resources: ResourceSettings {
                cpu_request_millis: millis(requests, "cpu", true)
                    .or_else(|| millis(limits, "cpu", true)),
                cpu_limit_millis: millis(limits, "cpu", true),
                memory_limit_bytes: millis(limits, "memory", false),
            },
            run_as_user: security
                .and_then(|s| s.run_as_user)
                .or_else(|| pod_security.and_then(|s| s.run_as_user)),
            read_only_root_filesystem: security
                .and_then(|s| s.read_only_root_filesystem)
                .unwrap_or(false),
            privileged: security.and_then(|s| s.privileged).unwrap_or(false),
            tty: container.tty.unwrap_or(false),
            labels,
            annotations: self.pod.metadata.annotations.clone().unwrap_or_default(),
        };
        let id = self
            .shared
            .runtime
            .create_container(&sandbox.id, &config)
            .await?;
        self.event(
            EventType::Normal,
            "Created",
            &format!("Created container: {}", container.name),
        );
        // Keep one dead instance (for `logs --previous` and lastState); remove older ones.
        let mut selector = self.owner_labels();
        selector.remove(labels::NODE);
        selector.insert(labels::CONTAINER.into(), container.name.clone());
        for old in self.shared.runtime.list_containers(&selector).await? {
            if old.id != id && old.restart_count() + 1 < restart_count {
                self.shared.runtime.remove_container(&old.id).await?;
            }
        }
        self.shared.runtime.start_container(&id).await?;
        self.event(
            EventType::Normal,
            "Started",
            &format!("Started container {}", container.name),
        );
        if let Some(probes) = ContainerProbes::of(container, Instant::now()) {
            self.probes.insert(id, probes);
        }
        Ok(())
    }

    /// Runs the probes that are due; returns (started, ready, when to look again). A failed
    /// liveness or startup probe stops the container, which the restart policy then handles.
    /// A running container: no longer waiting, probed, its (started, ready) recorded in
    /// `readiness`; returns when its probes want the next sync.
    async fn observe_running(
        &mut self,
        sandbox: &SandboxInfo,
        id: &str,
        container: &Container,
        readiness: &mut HashMap<String, (bool, bool)>,
    ) -> Duration {
        self.clear_waiting(&container.name);
        let (is_started, is_ready, wake) = self.run_probes(sandbox, id, container).await;
        readiness.insert(container.name.clone(), (is_started, is_ready));
        wake
    }

    async fn run_probes(
        &mut self,
        sandbox: &SandboxInfo,
        id: &str,
        container: &Container,
    ) -> (bool, bool, Duration) {
        let runtime = self.shared.runtime.clone();
        let now = Instant::now();
        // Looked up before any entry is made: a vacant entry reserves table room, and a node
        // keeps no probe state for the (many) containers without probes.
        if !self.probes.contains_key(id) {
            match ContainerProbes::of(container, now) {
                Some(probes) => {
                    self.probes.insert(id.to_string(), probes);
                }
                // Nothing to probe: started and ready, nothing to wake for.
                None => return (true, true, Duration::from_secs(3600)),
            }
        }
        let Some(probes) = self.probes.get_mut(id) else {
            return (true, true, Duration::from_secs(3600));
        };
        let mut kill = None;
        // Each failed probe is an Unhealthy event (the recorder counts repeats up).
        let mut unhealthy = Vec::new();
        let mut failed = |which: &str, result: &ProbeResult| {
            if let ProbeResult::Failure(message) = result {
                unhealthy.push(format!("{which} probe failed: {message}"));
            }
        };
        let mut started = true;
        if let (Some(tracker), Some(probe)) = (probes.startup.as_mut(), &container.startup_probe) {
            if tracker.verdict != Some(true) {
                if tracker.due(now) {
                    let result = probes::run(&*runtime, sandbox, id, container, probe).await;
                    failed("Startup", &result);
                    if tracker.record(probe, result, Instant::now()) == Some(false) {
                        kill = Some((
                            "startup",
                            format!("Startup probe failed: {}", tracker.last_message),
                        ));
                    }
                }
                started = tracker.verdict == Some(true);
            }
        }
        let mut ready = started;
        if started && kill.is_none() {
            if let (Some(tracker), Some(probe)) =
                (probes.liveness.as_mut(), &container.liveness_probe)
            {
                if tracker.due(now) {
                    let result = probes::run(&*runtime, sandbox, id, container, probe).await;
                    failed("Liveness", &result);
                    if tracker.record(probe, result, Instant::now()) == Some(false) {
                        kill = Some((
                            "liveness",
                            format!("Liveness probe failed: {}", tracker.last_message),
                        ));
                    }
                }
            }
            if let (Some(tracker), Some(probe)) =
                (probes.readiness.as_mut(), &container.readiness_probe)
            {
                if tracker.due(now) {
                    let result = probes::run(&*runtime, sandbox, id, container, probe).await;
                    failed("Readiness", &result);
                    tracker.record(probe, result, Instant::now());
                }
                ready = tracker.verdict == Some(true);
            }
        }
        let wake = [&probes.startup, &probes.liveness, &probes.readiness]
            .into_iter()
            .flatten()
            .map(|t| t.next_at().saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(3600))
            .max(Duration::from_millis(50));
        for message in unhealthy {
            self.event(EventType::Warning, "Unhealthy", &message);
        }
        if let Some((probe, reason)) = kill {
            self.probes.remove(id);
            // Once per container, should a failed sync leave an earlier verdict pending.
            if !self.kills.iter().any(|k| k.id == id) {
                self.kills.push(ProbeKill {
                    id: id.to_string(),
                    container: container.name.clone(),
                    probe,
                    reason,
                });
            }
            return (false, false, Duration::from_millis(100));
        }
        (started, ready, wake)
    }

    /// Stops the containers this sync's probes condemned (preStop hook, then the grace period);
    /// the restart policy restarts them on the next sync.
    async fn stop_condemned(&mut self, spec: &PodSpec, sandbox: &SandboxInfo) {
        let grace = self.grace_period();
        for kill in std::mem::take(&mut self.kills) {
            tracing::info!(container = %kill.container, "{}; restarting", kill.reason);
            self.event(
                EventType::Normal,
                "Killing",
                &format!(
                    "Container {} failed {} probe, will be restarted",
                    kill.container, kill.probe
                ),
            );
            if let Some(container) = spec.containers.iter().find(|c| c.name == kill.container) {
                let _ = self.run_pre_stop(sandbox, &kill.id, container, grace).await;
            }
            if let Err(err) = self.shared.runtime.stop_container(&kill.id, grace).await {
                tracing::warn!("stopping container failed: {err}");
            }
        }
    }

    fn grace_period(&self) -> Duration {
        let seconds = self
            .pod
            .metadata
            .deletion_grace_period_seconds
            .or_else(|| {
                self.pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.termination_grace_period_seconds)
            })
            .unwrap_or(30);
        Duration::from_secs(seconds.max(0) as u64)
    }

    async fn run_pre_stop(
        &self,
        sandbox: &SandboxInfo,
        id: &str,
        container: &Container,
        grace: Duration,
    ) -> Result<(), NodeError> {
        let Some(handler) = container
            .lifecycle
            .as_ref()
            .and_then(|l| l.pre_stop.as_ref())
        else {
            return Ok(());
        };
        if let Some(sleep) = &handler.sleep {
            let wanted = Duration::from_secs(sleep.seconds.max(0) as u64);
            tokio::time::sleep(wanted.min(grace)).await;
            return Ok(());
        }
        let probe = lifecycle_as_probe(handler, grace);
        let result = tokio::time::timeout(
            grace,
            probes::run(&*self.shared.runtime, sandbox, id, container, &probe),
        )
        .await;
        if let Ok(ProbeResult::Failure(message)) = result {
            tracing::info!(container = %container.name, "preStop hook failed: {message}");
        }
        Ok(())
    }

    /// Writes the status; `readiness` holds (started, ready) of running app containers.
    async fn write_status(
        &mut self,
        spec: &PodSpec,
        sandbox: &SandboxInfo,
        instances: &HashMap<String, Vec<ContainerInfo>>,
        phase: &str,
        initialized: bool,
        readiness: &HashMap<String, (bool, bool)>,
    ) -> Result<(), NodeError> {
        let runtime_name = self.shared.runtime.capabilities().name;
        let empty = Vec::new();
        let statuses: Vec<Value> = spec
            .containers
            .iter()
            .map(|c| {
                pod_status::container_status(
                    c,
                    instances.get(&c.name).unwrap_or(&empty),
                    self.waiting.get(&c.name),
                    readiness.get(&c.name).is_some_and(|r| r.1),
                    readiness.get(&c.name).is_some_and(|r| r.0),
                    runtime_name,
                )
            })
            .collect();
        let init_statuses: Vec<Value> = spec
            .init_containers
            .as_deref()
            .unwrap_or_default()
            .iter()
            .map(|c| {
                let list = instances.get(&c.name).unwrap_or(&empty);
                let done = matches!(
                    list.first().map(|i| &i.state),
                    Some(ContainerState::Exited { exit_code: 0, .. })
                );
                pod_status::container_status(
                    c,
                    list,
                    self.waiting.get(&c.name),
                    done,
                    done,
                    runtime_name,
                )
            })
            .collect();
        let containers_ready = statuses.iter().all(|s| s["ready"] == json!(true));
        let now = time_string(SystemTime::now());
        let terminal = matches!(phase, "Succeeded" | "Failed");
        let last_conditions = self.written.as_ref().map(|w| w.conditions());
        let conditions = pod_status::conditions(
            last_conditions.as_ref(),
            &[
                ("PodReadyToStartContainers", self.sandbox.is_some(), None),
                ("Initialized", initialized, None),
                (
                    "Ready",
                    containers_ready && !terminal,
                    (!containers_ready || terminal).then_some(if terminal {
                        "PodCompleted"
                    } else {
                        "ContainersNotReady"
                    }),
                ),
                (
                    "ContainersReady",
                    containers_ready && !terminal,
                    (!containers_ready || terminal).then_some(if terminal {
                        "PodCompleted"
                    } else {
                        "ContainersNotReady"
                    }),
                ),
                ("PodScheduled", true, None),
            ],
            &now,
        );
        let host_ip = self.shared.config.address.to_string();
        let mut status = json!({
            "phase": phase,
            "conditions": conditions,
            "hostIP": host_ip,
            "hostIPs": [{"ip": host_ip}],
            "startTime": self.start_time,
            "containerStatuses": statuses,
            "qosClass": pod_status::qos_class(&self.pod),
        });
        if let Some(ip) = sandbox.ip {
            status["podIP"] = json!(ip.to_string());
            status["podIPs"] = json!([{"ip": ip.to_string()}]);
        }
        if !init_statuses.is_empty() {
            status["initContainerStatuses"] = json!(init_statuses);
        }
        self.patch_status(status).await
    }

    async fn patch_status(&mut self, status: Value) -> Result<(), NodeError> {
        if self.written.as_ref().is_some_and(|w| w.same_as(&status)) {
            return Ok(());
        }
        let written = WrittenStatus::of(&status);
        // A merge patch replaces lists whole; members we no longer report are nulled.
        let mut patch = status;
        if let (Some(old), Some(new)) = (&self.written, patch.as_object_mut()) {
            for member in old.members() {
                if !new.contains_key(member) {
                    new.insert(member.to_string(), Value::Null);
                }
            }
        }
        match self
            .api()
            .patch_status(
                self.name(),
                &PatchParams::default(),
                &Patch::Merge(json!({"status": patch})),
            )
            .await
        {
            Ok(_) => {
                self.written = Some(Box::new(written));
                Ok(())
            }
            Err(kube::Error::Api(response)) if response.code == 404 => {
                self.removed = true;
                Ok(())
            }
            Err(err) => Err(NodeError::Api(err)),
        }
    }

    async fn write_rejection(&mut self, rejection: &Rejection) -> Result<(), NodeError> {
        let status = json!({
            "phase": "Failed",
            "reason": rejection.reason,
            "message": rejection.message,
            "startTime": self.start_time.clone().unwrap_or_else(|| time_string(SystemTime::now())),
        });
        self.patch_status(status).await
    }

    /// A terminal pod keeps its exited containers (for logs) but releases its sandbox and its
    /// share of the node.
    async fn release_terminal(&mut self) {
        if self.terminal_cleanup_done {
            return;
        }
        self.shared
            .admitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.uid);
        let mut selector = self.owner_labels();
        selector.remove(labels::NODE);
        if let Ok(sandboxes) = self.shared.runtime.list_sandboxes(&selector).await {
            for sandbox in sandboxes {
                let _ = self.shared.runtime.stop_sandbox(&sandbox.id).await;
            }
        }
        self.terminal_cleanup_done = true;
    }

    /// Graceful termination: preStop hooks and SIGTERM within the grace period, then removal
    /// of everything on the node, then of the API object.
    async fn terminate(&mut self) -> Result<(), NodeError> {
        let grace = if self.removed {
            Duration::from_secs(1)
        } else {
            self.grace_period()
        };
        let instances = self.instances().await?;
        let spec = self.pod.spec.clone().unwrap_or_default();
        let sandbox = self.sandbox.clone();
        let mut stops = Vec::new();
        for container in spec
            .containers
            .iter()
            .chain(spec.init_containers.as_deref().unwrap_or_default())
        {
            for info in instances.get(&container.name).into_iter().flatten() {
                if !matches!(info.state, ContainerState::Running { .. }) {
                    continue;
                }
                let id = info.id.clone();
                let sandbox = sandbox.clone();
                let worker = &*self;
                worker.event(
                    EventType::Normal,
                    "Killing",
                    &format!("Stopping container {}", container.name),
                );
                stops.push(async move {
                    let deadline = Instant::now() + grace;
                    if let Some(sandbox) = &sandbox {
                        let _ = worker.run_pre_stop(sandbox, &id, container, grace).await;
                    }
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if let Err(err) = worker.shared.runtime.stop_container(&id, remaining).await {
                        tracing::warn!("stopping container failed: {err}");
                    }
                });
            }
        }
        futures::future::join_all(stops).await;
        let mut selector = self.owner_labels();
        selector.remove(labels::NODE);
        for sandbox in self.shared.runtime.list_sandboxes(&selector).await? {
            self.shared.runtime.remove_sandbox(&sandbox.id).await?;
        }
        // Containers whose sandbox is already gone.
        for info in self.shared.runtime.list_containers(&selector).await? {
            self.shared.runtime.remove_container(&info.id).await?;
        }
        volumes::remove(&self.shared.config.root_dir, &self.uid);
        self.shared
            .admitted
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.uid);
        if !self.removed {
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions {
                    uid: Some(self.uid.clone()),
                    resource_version: None,
                }),
                ..DeleteParams::default()
            };
            match self.api().delete(self.name(), &params).await {
                Ok(_) => {}
                Err(kube::Error::Api(response)) if matches!(response.code, 404 | 409) => {}
                Err(err) => return Err(NodeError::Api(err)),
            }
        }
        tracing::debug!("pod terminated");
        Ok(())
    }
}

fn lifecycle_as_probe(
    handler: &LifecycleHandler,
    grace: Duration,
) -> k8s_openapi::api::core::v1::Probe {
    k8s_openapi::api::core::v1::Probe {
        exec: handler.exec.clone(),
        http_get: handler.http_get.clone(),
        tcp_socket: handler.tcp_socket.clone(),
        timeout_seconds: Some(grace.as_secs().max(1) as i32),
        ..Default::default()
    }
}
