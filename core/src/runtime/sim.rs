//! The simulated runtime: sandboxes and containers kept in memory, no processes.
//!
//! Containers "start" after a configurable delay and run until stopped, unless the pod carries
//! `sim.capstan.dev/exit-after` (a duration such as `2s` or `500ms`) and
//! `sim.capstan.dev/exit-code` (default 0), which make every container of the pod exit that way
//! — so Jobs complete and crash loops can be tested; `sim.capstan.dev/exit-after.<container>`
//! and `sim.capstan.dev/exit-code.<container>` apply to one container only (init containers). `sim.capstan.dev/cpu-millis` and
//! `sim.capstan.dev/memory-bytes` set the usage its stats report (cumulative CPU grows
//! consistently with time). `exec` understands `true`, `false`, `exit N`, `echo …` and `sh -c`
//! around them, and `printenv`/`env` and `cat <file>` answer from the container's resolved
//! environment and from the files the agent mounted. One instance is cheap (a map behind a mutex, one timer task only for containers
//! that are told to exit), so a process carries thousands of simulated nodes.

use super::{
    Capabilities, ContainerConfig, ContainerInfo, ContainerRuntime, ContainerState, ContainerStats,
    ExecOutput, LogOptions, LogStream, RuntimeError, RuntimeEvent, SandboxConfig, SandboxInfo,
};
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use tokio::sync::broadcast;

/// Annotation: how long after starting a simulated container exits.
pub const EXIT_AFTER: &str = "sim.capstan.dev/exit-after";
/// What every annotation the simulated runtime reads starts with.
const SIM_ANNOTATION_PREFIX: &str = "sim.capstan.dev/";
/// Annotation: the exit code of a simulated container told to exit.
pub const EXIT_CODE: &str = "sim.capstan.dev/exit-code";
/// Annotation: the CPU a simulated container uses, in millicores.
pub const CPU_MILLIS: &str = "sim.capstan.dev/cpu-millis";
/// Annotation: the memory a simulated container uses, in bytes.
pub const MEMORY_BYTES: &str = "sim.capstan.dev/memory-bytes";

/// Runtime events buffered for a slow subscriber (the node agent); older ones are dropped, and
/// the agent's periodic resync covers them.
const EVENT_BUFFER: usize = 256;

/// Settings of a [`SimRuntime`].
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// How long `start_container` takes.
    pub start_delay: Duration,
    /// The first three octets of pod IPs (`10.244.0` gives 10.244.0.2 …).
    pub pod_subnet: [u8; 3],
    /// Images that are present without pulling; with `None` every image is.
    pub images: Option<BTreeSet<String>>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            start_delay: Duration::from_millis(10),
            pod_subnet: [10, 244, 0],
            images: None,
        }
    }
}

/// Labels as a simulated node keeps them: the sorted names and values back to back in one
/// text, and where each ends (a node may hold hundreds of sandboxes and containers, each with
/// half a dozen labels; a runtime's answers carry maps again).
struct KeptLabels {
    text: Box<str>,
    /// Where each label's name ends, then its value.
    ends: Box<[u32]>,
}

impl KeptLabels {
    fn of(labels: BTreeMap<String, String>) -> Self {
        let mut text = String::new();
        let mut ends = Vec::with_capacity(labels.len() * 2);
        let end = |text: &String| u32::try_from(text.len()).unwrap_or(u32::MAX);
        for (name, value) in &labels {
            text.push_str(name);
            ends.push(end(&text));
            text.push_str(value);
            ends.push(end(&text));
        }
        KeptLabels {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }

    fn len(&self) -> usize {
        self.ends.len() / 2
    }

    /// Label `i`'s name and value.
    fn get(&self, i: usize) -> (&str, &str) {
        let start = match i {
            0 => 0,
            _ => self.ends[2 * i - 1] as usize,
        };
        let (name_end, value_end) = (self.ends[2 * i] as usize, self.ends[2 * i + 1] as usize);
        (
            self.text.get(start..name_end).unwrap_or_default(),
            self.text.get(name_end..value_end).unwrap_or_default(),
        )
    }

    fn to_map(&self) -> BTreeMap<String, String> {
        (0..self.len())
            .map(|i| self.get(i))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn value(&self, name: &str) -> Option<&str> {
        let (mut low, mut high) = (0, self.len());
        while low < high {
            let middle = (low + high) / 2;
            let (key, value) = self.get(middle);
            match key.cmp(name) {
                std::cmp::Ordering::Equal => return Some(value),
                std::cmp::Ordering::Less => low = middle + 1,
                std::cmp::Ordering::Greater => high = middle,
            }
        }
        None
    }

    fn matches(&self, selector: &BTreeMap<String, String>) -> bool {
        selector
            .iter()
            .all(|(key, value)| self.value(key) == Some(value.as_str()))
    }
}

/// A container's environment as a simulated node keeps it: the `name=value` entries in one
/// text and where each ends (a name holds no `=`), instead of two strings per variable; and
/// one copy per distinct environment (a Deployment's pods on a node share theirs).
#[derive(Default, PartialEq, Eq, Hash)]
struct KeptEnv {
    text: Box<str>,
    ends: Box<[usize]>,
}

impl KeptEnv {
    fn of(env: &[(String, String)]) -> Self {
        let mut text = String::new();
        let mut ends = Vec::with_capacity(env.len());
        for (name, value) in env {
            text.push_str(name);
            text.push('=');
            text.push_str(value);
            ends.push(text.len());
        }
        KeptEnv {
            text: text.into_boxed_str(),
            ends: ends.into_boxed_slice(),
        }
    }

    fn pairs(&self) -> Vec<(String, String)> {
        let mut start = 0;
        self.ends
            .iter()
            .map(|&end| {
                let entry = &self.text[start..end];
                start = end;
                let (name, value) = entry.split_once('=').unwrap_or((entry, ""));
                (name.to_string(), value.to_string())
            })
            .collect()
    }
}

struct SimSandbox {
    /// Without its labels (kept beside it).
    info: SandboxInfo,
    labels: KeptLabels,
}

impl SimSandbox {
    fn info(&self) -> SandboxInfo {
        SandboxInfo {
            labels: self.labels.to_map(),
            ..self.info.clone()
        }
    }
}

struct SimContainer {
    /// Without its labels (kept beside it).
    info: ContainerInfo,
    labels: KeptLabels,
    /// Without its labels and environment (kept beside it).
    config: ContainerConfig,
    /// Shared with the node's other containers of the same environment.
    env: Arc<KeptEnv>,
    log: Vec<(SystemTime, String)>,
    /// Bumped on every state change, so a pending exit timer of an older run does nothing.
    run: u64,
}

impl SimContainer {
    fn info(&self) -> ContainerInfo {
        ContainerInfo {
            labels: self.labels.to_map(),
            ..self.info.clone()
        }
    }
}

#[derive(Default)]
struct SimState {
    // Boxed: a table keeps room for up to twice its entries, and a simulated node may hold
    // hundreds of containers, so the room is a pointer each rather than a whole container.
    sandboxes: HashMap<String, Box<SimSandbox>>,
    containers: HashMap<String, Box<SimContainer>>,
    /// The distinct environments of the containers.
    environments: HashSet<Arc<KeptEnv>>,
    pulled: BTreeSet<String>,
    next_id: u64,
    next_ip: u16,
}

/// The simulated [`ContainerRuntime`]. Cloning shares it.
#[derive(Clone)]
pub struct SimRuntime {
    config: Arc<SimConfig>,
    state: Arc<Mutex<SimState>>,
    /// Shared, so a ring slot holds a pointer rather than an event.
    events: broadcast::Sender<Arc<RuntimeEvent>>,
}

impl Default for SimRuntime {
    fn default() -> Self {
        SimRuntime::new(SimConfig::default())
    }
}

fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| text.split_at(i))
        .unwrap_or((text, "s"));
    let value: f64 = number.parse().ok()?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "s" | "" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return None,
    };
    (seconds.is_finite() && seconds >= 0.0).then(|| Duration::from_secs_f64(seconds))
}

impl SimRuntime {
    /// A runtime with `config`.
    pub fn new(config: SimConfig) -> Self {
        SimRuntime {
            config: Arc::new(config),
            state: Arc::new(Mutex::new(SimState::default())),
            // Each slot is preallocated: 1024 per simulated node was ~55 KB, times thousands; a
            // slot holds a pointer (256 of them ~8 KB).
            events: broadcast::channel(EVENT_BUFFER).0,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Marks a running container exited (as if its process ended) and emits the event.
    fn finish(&self, id: &str, exit_code: i32, reason: &str, run: Option<u64>) {
        let mut state = self.lock();
        let Some(container) = state.containers.get_mut(id) else {
            return;
        };
        if run.is_some_and(|r| r != container.run) {
            return;
        }
        let ContainerState::Running { started_at } = container.info.state else {
            return;
        };
        let now = SystemTime::now();
        container.run += 1;
        container.info.state = ContainerState::Exited {
            exit_code,
            reason: reason.to_string(),
            started_at: Some(started_at),
            finished_at: now,
        };
        container
            .log
            .push((now, format!("container exited with code {exit_code}")));
        drop(state);
        let _ = self.events.send(Arc::new(RuntimeEvent::Exited {
            container_id: id.to_string(),
            exit_code,
            oom_killed: false,
        }));
    }
}

/// Reads a file of a simulated container: what the agent mounted there, from the host.
fn read_mounted(config: &ContainerConfig, path: &str) -> Option<Vec<u8>> {
    config
        .mounts
        .iter()
        .filter(|m| path.starts_with(m.container_path.trim_end_matches('/')))
        .max_by_key(|m| m.container_path.len())
        .and_then(|m| {
            let rest = path[m.container_path.trim_end_matches('/').len()..].trim_start_matches('/');
            let host = if rest.is_empty() {
                m.host_path.clone()
            } else {
                m.host_path.join(rest)
            };
            std::fs::read(host).ok()
        })
}

fn sim_exec(command: &[String], config: &ContainerConfig) -> ExecOutput {
    let words: Vec<&str> = match command {
        [sh, flag, script] if sh.ends_with("sh") && flag == "-c" => {
            script.split_whitespace().collect()
        }
        other => other.iter().map(String::as_str).collect(),
    };
    let (stdout, exit_code) = match words.as_slice() {
        [] => (String::new(), 0),
        ["true", ..] => (String::new(), 0),
        ["false", ..] => (String::new(), 1),
        ["exit", code, ..] => (String::new(), code.parse().unwrap_or(2)),
        ["echo", rest @ ..] => (format!("{}\n", rest.join(" ")), 0),
        ["printenv"] | ["env"] => (
            config
                .env
                .iter()
                .map(|(k, v)| format!("{k}={v}\n"))
                .collect(),
            0,
        ),
        ["printenv", name] => match config.env.iter().rev().find(|(k, _)| k == name) {
            Some((_, v)) => (format!("{v}\n"), 0),
            None => (String::new(), 1),
        },
        ["cat", path] => match read_mounted(config, path) {
            Some(bytes) => (String::from_utf8_lossy(&bytes).into_owned(), 0),
            None => {
                return ExecOutput {
                    stdout: Vec::new(),
                    stderr: format!("cat: can't open '{path}': No such file or directory\n")
                        .into_bytes(),
                    exit_code: 1,
                }
            }
        },
        [other, ..] => {
            return ExecOutput {
                stdout: Vec::new(),
                stderr: format!("sim: {other}: command not found\n").into_bytes(),
                exit_code: 127,
            }
        }
    };
    ExecOutput {
        stdout: stdout.into_bytes(),
        stderr: Vec::new(),
        exit_code,
    }
}

#[async_trait::async_trait]
impl ContainerRuntime for SimRuntime {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            name: "sim",
            real_processes: false,
            exec: true,
            port_forward: false,
        }
    }

    async fn run_sandbox(&self, config: &SandboxConfig) -> Result<SandboxInfo, RuntimeError> {
        let mut state = self.lock();
        state.next_id += 1;
        state.next_ip = state.next_ip.wrapping_add(1);
        let host = (state.next_ip % 253) as u8 + 2;
        let [a, b, c] = self.config.pod_subnet;
        let ip = if config.host_network {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            IpAddr::V4(Ipv4Addr::new(a, b, c, host))
        };
        let sandbox = SimSandbox {
            info: SandboxInfo {
                id: format!("sim-sandbox-{}", state.next_id),
                ip: Some(ip),
                ready: true,
                labels: BTreeMap::new(),
            },
            labels: KeptLabels::of(config.labels.clone()),
        };
        let info = sandbox.info();
        state.sandboxes.insert(info.id.clone(), Box::new(sandbox));
        Ok(info)
    }

    async fn stop_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let running: Vec<String> = {
            let mut state = self.lock();
            if let Some(sandbox) = state.sandboxes.get_mut(id) {
                sandbox.info.ready = false;
            }
            state
                .containers
                .iter()
                .filter(|(_, c)| c.info.sandbox_id == id)
                .map(|(k, _)| k.clone())
                .collect()
        };
        for container in running {
            self.finish(&container, 137, "Error", None);
        }
        Ok(())
    }

    async fn remove_sandbox(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.sandboxes.remove(id);
        state.containers.retain(|_, c| c.info.sandbox_id != id);
        Ok(())
    }

    async fn list_sandboxes(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<SandboxInfo>, RuntimeError> {
        Ok(self
            .lock()
            .sandboxes
            .values()
            .filter(|s| s.labels.matches(selector))
            .map(|s| s.info())
            .collect())
    }

    async fn image_status(&self, image: &str) -> Result<Option<String>, RuntimeError> {
        let present = self.config.images.is_none() || self.lock().pulled.contains(image);
        Ok(present.then(|| format!("sim://{image}")))
    }

    async fn pull_image(&self, image: &str) -> Result<String, RuntimeError> {
        if self
            .config
            .images
            .as_ref()
            .is_some_and(|images| !images.contains(image))
        {
            return Err(RuntimeError::ImagePull {
                image: image.into(),
                message: "not found in the simulated registry".into(),
            });
        }
        self.lock().pulled.insert(image.to_string());
        Ok(format!("sim://{image}"))
    }

    async fn create_container(
        &self,
        sandbox_id: &str,
        config: &ContainerConfig,
    ) -> Result<String, RuntimeError> {
        if config.image.is_empty() {
            return Err(RuntimeError::InvalidConfig("image is empty".into()));
        }
        let mut state = self.lock();
        if !state.sandboxes.contains_key(sandbox_id) {
            return Err(RuntimeError::NotFound(format!("sandbox {sandbox_id}")));
        }
        state.next_id += 1;
        let id = format!("sim-container-{}", state.next_id);
        // A simulated node may carry thousands of containers: the labels and environment are
        // kept compactly beside the config, and of the pod's annotations only the simulation's
        // own.
        let mut kept = config.clone();
        let labels = std::mem::take(&mut kept.labels);
        let env = KeptEnv::of(&std::mem::take(&mut kept.env));
        let env = match state.environments.get(&env) {
            Some(shared) => shared.clone(),
            None => {
                let env = Arc::new(env);
                state.environments.insert(env.clone());
                env
            }
        };
        kept.annotations
            .retain(|key, _| key.starts_with(SIM_ANNOTATION_PREFIX));
        let info = ContainerInfo {
            id: id.clone(),
            sandbox_id: sandbox_id.to_string(),
            image: config.image.clone(),
            image_id: format!("sim://{}", config.image),
            state: ContainerState::Created,
            labels: BTreeMap::new(),
        };
        state.containers.insert(
            id.clone(),
            Box::new(SimContainer {
                info,
                labels: KeptLabels::of(labels),
                env,
                config: kept,
                log: Vec::new(),
                run: 0,
            }),
        );
        Ok(id)
    }

    async fn start_container(&self, id: &str) -> Result<(), RuntimeError> {
        if !self.lock().containers.contains_key(id) {
            return Err(RuntimeError::NotFound(format!("container {id}")));
        }
        tokio::time::sleep(self.config.start_delay).await;
        let (run, exit) = {
            let mut state = self.lock();
            let container = state
                .containers
                .get_mut(id)
                .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
            if matches!(container.info.state, ContainerState::Running { .. }) {
                return Ok(());
            }
            let now = SystemTime::now();
            container.run += 1;
            container.info.state = ContainerState::Running { started_at: now };
            let name = container.config.name.clone();
            container
                .log
                .push((now, format!("started container {name}")));
            for word in container
                .config
                .command
                .iter()
                .chain(&container.config.args)
            {
                container.log.push((now, format!("arg: {word}")));
            }
            let annotations = &container.config.annotations;
            let lookup = |key: &str| {
                annotations
                    .get(&format!("{key}.{name}"))
                    .or_else(|| annotations.get(key))
            };
            let exit = lookup(EXIT_AFTER)
                .and_then(|d| parse_duration(d))
                .map(|after| {
                    let code = lookup(EXIT_CODE)
                        .and_then(|c| c.trim().parse().ok())
                        .unwrap_or(0);
                    (after, code)
                });
            (container.run, exit)
        };
        let _ = self.events.send(Arc::new(RuntimeEvent::Started {
            container_id: id.to_string(),
        }));
        if let Some((after, code)) = exit {
            let runtime = self.clone();
            let id = id.to_string();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let reason = if code == 0 { "Completed" } else { "Error" };
                runtime.finish(&id, code, reason, Some(run));
            });
        }
        Ok(())
    }

    async fn stop_container(&self, id: &str, _grace: Duration) -> Result<(), RuntimeError> {
        self.finish(id, 137, "Error", None);
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        if let Some(container) = state.containers.remove(id) {
            // The environment goes with its last container (the set holds the other count).
            if Arc::strong_count(&container.env) == 2 {
                state.environments.remove(&*container.env);
            }
        }
        Ok(())
    }

    async fn list_containers(
        &self,
        selector: &BTreeMap<String, String>,
    ) -> Result<Vec<ContainerInfo>, RuntimeError> {
        Ok(self
            .lock()
            .containers
            .values()
            .filter(|c| c.labels.matches(selector))
            .map(|c| c.info())
            .collect())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerInfo, RuntimeError> {
        self.lock()
            .containers
            .get(id)
            .map(|c| c.info())
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))
    }

    async fn logs(&self, id: &str, options: LogOptions) -> Result<LogStream, RuntimeError> {
        let state = self.lock();
        let container = state
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        let skip = options
            .tail_lines
            .map(|n| container.log.len().saturating_sub(n))
            .unwrap_or(0);
        let mut text = String::new();
        for (time, line) in &container.log[skip..] {
            if options.timestamps {
                text.push_str(&super::rfc3339(*time));
                text.push(' ');
            }
            text.push_str(line);
            text.push('\n');
        }
        let first = futures::stream::iter([Ok(Bytes::from(text))]);
        let running = matches!(container.info.state, ContainerState::Running { .. });
        drop(state);
        if !(options.follow && running) {
            return Ok(first.boxed());
        }
        // Following: nothing new is ever written by a simulated process, so the stream ends
        // when the container exits.
        let id = id.to_string();
        let events = self.events();
        let end = events
            .filter(move |e| {
                futures::future::ready(
                    matches!(e, RuntimeEvent::Exited { container_id, .. } if *container_id == id),
                )
            })
            .take(1)
            .filter_map(|_| futures::future::ready(None));
        Ok(first.chain(end).boxed())
    }

    async fn exec(
        &self,
        id: &str,
        command: &[String],
        _timeout: Duration,
    ) -> Result<ExecOutput, RuntimeError> {
        let state = self.lock();
        let container = state
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        if !matches!(container.info.state, ContainerState::Running { .. }) {
            return Err(RuntimeError::InvalidConfig(format!(
                "container {id} is not running"
            )));
        }
        let config = ContainerConfig {
            env: container.env.pairs(),
            ..container.config.clone()
        };
        Ok(sim_exec(command, &config))
    }

    async fn stats(&self, id: &str) -> Result<ContainerStats, RuntimeError> {
        let state = self.lock();
        let container = state
            .containers
            .get(id)
            .ok_or_else(|| RuntimeError::NotFound(format!("container {id}")))?;
        let now = SystemTime::now();
        let annotations = &container.config.annotations;
        let cpu_millis: u64 = annotations
            .get(CPU_MILLIS)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(1);
        let memory_bytes = annotations
            .get(MEMORY_BYTES)
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(4 << 20);
        let (cpu_usage_nanos, memory_bytes) = match container.info.state {
            ContainerState::Running { started_at } => {
                let elapsed = now.duration_since(started_at).unwrap_or_default();
                (
                    (elapsed.as_nanos() as u64 / 1000) * cpu_millis,
                    memory_bytes,
                )
            }
            _ => (0, 0),
        };
        Ok(ContainerStats {
            cpu_usage_nanos,
            memory_bytes,
            timestamp: now,
        })
    }

    fn events(&self) -> BoxStream<'static, RuntimeEvent> {
        let receiver = self.events.subscribe();
        futures::stream::unfold(receiver, |mut receiver| async move {
            loop {
                match receiver.recv().await {
                    Ok(event) => return Some((RuntimeEvent::clone(&event), receiver)),
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .boxed()
    }

    async fn connect(
        &self,
        _sandbox: &SandboxInfo,
        _port: u16,
    ) -> Result<Box<dyn super::PodConnection>, RuntimeError> {
        Err(RuntimeError::Unsupported("port-forward"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("2s"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("-1s"), None);
    }

    #[test]
    fn exec_understands_a_few_commands() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let config = ContainerConfig {
            env: vec![("A".into(), "1".into())],
            ..ContainerConfig::default()
        };
        let cmd = |w: &[&str]| words(w);
        let sim_exec = |c: &[String]| super::sim_exec(c, &config);
        assert_eq!(sim_exec(&cmd(&["printenv", "A"])).stdout, b"1\n");
        assert_eq!(sim_exec(&cmd(&["printenv", "B"])).exit_code, 1);
        assert_eq!(sim_exec(&cmd(&["true"])).exit_code, 0);
        assert_eq!(sim_exec(&cmd(&["false"])).exit_code, 1);
        assert_eq!(sim_exec(&cmd(&["sh", "-c", "exit 3"])).exit_code, 3);
        assert_eq!(
            sim_exec(&cmd(&["echo", "hi", "there"])).stdout,
            b"hi there\n"
        );
        assert_eq!(sim_exec(&cmd(&["frobnicate"])).exit_code, 127);
    }

    #[test]
    fn kept_env_gives_back_every_variable_in_order() {
        let env: Vec<(String, String)> = [("A", "1"), ("EQ", "x=y=z"), ("EMPTY", ""), ("A", "2")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        assert_eq!(KeptEnv::of(&env).pairs(), env);
        assert!(KeptEnv::of(&[]).pairs().is_empty());
    }

    #[tokio::test]
    async fn kept_labels_select_and_come_back_whole() {
        let runtime = SimRuntime::default();
        let labels = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mine = labels(&[("pod", "a"), ("node", "n"), ("z", "last")]);
        let sandbox = runtime
            .run_sandbox(&SandboxConfig {
                labels: mine.clone(),
                ..SandboxConfig::default()
            })
            .await
            .unwrap();
        assert_eq!(sandbox.labels, mine);
        let config = ContainerConfig {
            name: "c".into(),
            image: "busybox".into(),
            labels: mine.clone(),
            ..ContainerConfig::default()
        };
        let id = runtime
            .create_container(&sandbox.id, &config)
            .await
            .unwrap();
        assert_eq!(runtime.container_status(&id).await.unwrap().labels, mine);
        for (selector, found) in [
            (labels(&[]), 1),
            (labels(&[("pod", "a")]), 1),
            (labels(&[("pod", "a"), ("z", "last")]), 1),
            (labels(&[("pod", "b")]), 0),
            (labels(&[("other", "a")]), 0),
            (labels(&[("pod", "a"), ("node", "m")]), 0),
        ] {
            let containers = runtime.list_containers(&selector).await.unwrap();
            assert_eq!(containers.len(), found, "{selector:?}");
            assert_eq!(
                runtime.list_sandboxes(&selector).await.unwrap().len(),
                found
            );
            assert!(containers.iter().all(|c| c.labels == mine));
        }
    }

    #[tokio::test]
    async fn containers_of_one_environment_share_it_until_the_last_is_removed() {
        let runtime = SimRuntime::default();
        let sandbox = runtime
            .run_sandbox(&SandboxConfig::default())
            .await
            .unwrap();
        let config = |env: &[(&str, &str)]| ContainerConfig {
            name: "c".into(),
            image: "busybox".into(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..ContainerConfig::default()
        };
        let same = config(&[("SERVICE_HOST", "10.96.0.1"), ("MODE", "a")]);
        let mut ids = Vec::new();
        for c in [&same, &same, &config(&[("MODE", "b")])] {
            let id = runtime.create_container(&sandbox.id, c).await.unwrap();
            runtime.start_container(&id).await.unwrap();
            ids.push(id);
        }
        assert_eq!(runtime.lock().environments.len(), 2);
        let printenv = vec!["printenv".to_string(), "MODE".to_string()];
        let exec = |id: String| {
            let runtime = runtime.clone();
            let printenv = printenv.clone();
            async move {
                let output = runtime
                    .exec(&id, &printenv, Duration::from_secs(1))
                    .await
                    .unwrap();
                output.stdout
            }
        };
        assert_eq!(exec(ids[1].clone()).await, b"a\n");
        assert_eq!(exec(ids[2].clone()).await, b"b\n");
        runtime.remove_container(&ids[0]).await.unwrap();
        assert_eq!(runtime.lock().environments.len(), 2);
        assert_eq!(exec(ids[1].clone()).await, b"a\n");
        runtime.remove_container(&ids[1]).await.unwrap();
        runtime.remove_container(&ids[2]).await.unwrap();
        assert!(runtime.lock().environments.is_empty());
    }
}
