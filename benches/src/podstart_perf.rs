//! `podstart-perf`: how long a pod takes from `create` to `Running` through the whole path —
//! API server, node agent watch, pod worker, Docker runtime, status write — beside, in the same
//! run, the same container work done with the docker CLI alone (`docker run -d` of a sandbox
//! container, then of the app container joined to its network namespace) as the baseline.
//! Also 100 pods at once on Docker, and the simulated runtime carrying many nodes in one
//! process (1000 nodes x 30 pods) to show the agent's own overhead at scale.
//!
//! Docker cases need a Docker engine and Debian's static busybox (`/bin/busybox`); without
//! them they are skipped with a printed reason. `--quick` runs small cases for CI.

use crate::{Bench, Mode};
use capstan_core::apiserver::ApiServer;
use capstan_core::node::{NodeAgent, NodeConfig, RunningNode};
use capstan_core::runtime::sim::{SimConfig, SimRuntime};
use capstan_core::runtime::{labels, ContainerRuntime};
use capstan_core::store::MemoryStore;
use capstan_runtime_docker::{DockerRuntime, DockerRuntimeConfig};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, PostParams};
use kube::runtime::watcher::{self, watcher};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BENCH: Bench = Bench("podstart-perf");
const IMAGE: &str = "capstan-test/busybox:1.35";

fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[index]
}

/// Says on stderr which phase the harness is in (the figures go to stdout).
fn progress(what: &str) {
    eprintln!("podstart-perf: {what}");
}

/// Records when each pod of a namespace is first seen Running.
struct RunningWatch {
    seen: Arc<Mutex<HashMap<String, Instant>>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningWatch {
    async fn start(client: kube::Client, namespace: &str) -> Self {
        let api: Api<Pod> = Api::namespaced(client, namespace);
        let seen = Arc::new(Mutex::new(HashMap::new()));
        let record = seen.clone();
        // kube's watcher re-watches (relisting when needed) if the server ends or drops a
        // watch, e.g. one that falls behind a burst of pod updates.
        let mut stream = watcher(api, watcher::Config::default()).boxed();
        let task = tokio::spawn(async move {
            while let Some(event) = stream.next().await {
                let (Ok(watcher::Event::Apply(pod)) | Ok(watcher::Event::InitApply(pod))) = event
                else {
                    continue;
                };
                let running =
                    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
                if running {
                    let name = pod.metadata.name.unwrap_or_default();
                    record
                        .lock()
                        .unwrap()
                        .entry(name)
                        .or_insert_with(Instant::now);
                }
            }
        });
        RunningWatch { seen, task }
    }

    fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    fn count_prefix(&self, prefix: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .keys()
            .filter(|k| k.starts_with(prefix))
            .count()
    }

    async fn wait_for(&self, name: &str, limit: Duration) -> Option<Instant> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(at) = self.seen.lock().unwrap().get(name) {
                return Some(*at);
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        None
    }
}

impl Drop for RunningWatch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn pod(name: &str, node: &str, image: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node,
            "terminationGracePeriodSeconds": 0,
            "enableServiceLinks": false,
            "containers": [{"name": "main", "image": image, "command": ["sleep", "3600"]}]
        }
    }))
    .expect("valid pod")
}

async fn docker_available() -> Option<DockerRuntime> {
    let mut config = DockerRuntimeConfig::new("podstart-bench");
    config.pod_cidr = Some("10.244.210.0/24".into());
    let runtime = match DockerRuntime::connect(config).await {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("podstart-perf: Docker cases skipped: {err}");
            return None;
        }
    };
    if runtime.docker().inspect_image(IMAGE).await.is_err() {
        if let Err(err) = capstan_runtime_docker::local_image::build_busybox_image(
            runtime.docker(),
            IMAGE,
            std::path::Path::new("/bin/busybox"),
        )
        .await
        {
            eprintln!("podstart-perf: Docker cases skipped: {err}");
            return None;
        }
    }
    Some(runtime)
}

async fn clean(runtime: &DockerRuntime) {
    let selector = BTreeMap::from([(labels::NODE.to_string(), "podstart-bench".to_string())]);
    for sandbox in runtime.list_sandboxes(&selector).await.unwrap_or_default() {
        let _ = runtime.remove_sandbox(&sandbox.id).await;
    }
}

/// The baseline: what the docker CLI alone takes for a pod's containers.
fn docker_cli_pod(network: &str, sandbox_image: &str, index: usize) -> f64 {
    let name = format!("podstart-cli-{}-{index}", std::process::id());
    let started = Instant::now();
    let sandbox = std::process::Command::new("docker")
        .args([
            "run",
            "-d",
            "--name",
            &name,
            "--network",
            network,
            "--ipc",
            "shareable",
            "--label",
            "capstan.dev/bench=podstart",
        ])
        .arg(sandbox_image)
        .output()
        .expect("docker CLI");
    assert!(sandbox.status.success(), "{sandbox:?}");
    let app = std::process::Command::new("docker")
        .args(["run", "-d", "--label", "capstan.dev/bench=podstart"])
        .arg(format!("--network=container:{name}"))
        .arg(format!("--ipc=container:{name}"))
        .args([IMAGE, "sleep", "3600"])
        .output()
        .expect("docker CLI");
    assert!(app.status.success(), "{app:?}");
    let elapsed = started.elapsed().as_secs_f64() * 1000.0;
    let app_id = String::from_utf8_lossy(&app.stdout).trim().to_string();
    let _ = std::process::Command::new("docker")
        .args(["rm", "-f", &app_id, &name])
        .output();
    elapsed
}

/// An API server on a memory store, its in-process client, and a directory for node roots.
async fn in_memory_api() -> (ApiServer, kube::Client, tempfile::TempDir) {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .expect("API server");
    let client = server.client();
    (server, client, tempfile::tempdir().expect("temp dir"))
}

async fn docker_cases(mode: Mode, runtime: DockerRuntime) {
    clean(&runtime).await;
    progress("docker: starting");
    let (_server, client, dir) = in_memory_api().await;
    let mut config = NodeConfig::new("podstart-bench");
    config.root_dir = dir.path().to_path_buf();
    config.pod_cidr = Some("10.244.210.0/24".into());
    let agent = NodeAgent::new(client.clone(), Arc::new(runtime.clone()), config)
        .start()
        .await
        .expect("node agent");
    let sequential = mode.pick(10, 50);
    let watch = RunningWatch::start(client.clone(), "default").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // One warm-up pod (image and network caches).
    pods.create(
        &PostParams::default(),
        &pod("warmup", "podstart-bench", IMAGE),
    )
    .await
    .expect("create");
    watch.wait_for("warmup", Duration::from_secs(60)).await;
    let mut samples = Vec::new();
    for i in 0..sequential {
        let name = format!("seq-{i}");
        let created = Instant::now();
        pods.create(&PostParams::default(), &pod(&name, "podstart-bench", IMAGE))
            .await
            .expect("create");
        let running = watch
            .wait_for(&name, Duration::from_secs(60))
            .await
            .expect("pod never Running");
        samples.push(running.duration_since(created).as_secs_f64() * 1000.0);
    }
    let sandbox_image = capstan_runtime_docker::default_sandbox_image();
    let baseline: Vec<f64> = (0..sequential)
        .map(|i| docker_cli_pod(runtime.network(), &sandbox_image, i))
        .collect();
    let case = format!("docker/sequential-{sequential}");
    BENCH.figure(
        &case,
        "create_to_running_p50_ms",
        percentile(&samples, 0.5),
        "ms",
        Some(percentile(&baseline, 0.5)),
    );
    BENCH.figure(
        &case,
        "create_to_running_p99_ms",
        percentile(&samples, 0.99),
        "ms",
        Some(percentile(&baseline, 0.99)),
    );

    // Many at once.
    let burst = mode.pick(20, 100);
    let started = Instant::now();
    let creates = (0..burst).map(|i| {
        let pods = pods.clone();
        async move {
            pods.create(
                &PostParams::default(),
                &pod(&format!("burst-{i}"), "podstart-bench", IMAGE),
            )
            .await
            .expect("create");
        }
    });
    futures::future::join_all(creates).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while watch.count_prefix("burst-") < burst && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all_running = started.elapsed().as_secs_f64();
    let cli_started = Instant::now();
    std::thread::scope(|scope| {
        for chunk in 0..2 {
            let network = runtime.network().to_string();
            let image = sandbox_image.clone();
            scope.spawn(move || {
                for i in (chunk..burst).step_by(2) {
                    docker_cli_pod(&network, &image, 10_000 + i);
                }
            });
        }
    });
    let cli = cli_started.elapsed().as_secs_f64();
    BENCH.figure(
        format!("docker/burst-{burst}"),
        "all_running_s",
        all_running,
        "s",
        Some(cli),
    );

    drop(watch);
    progress("docker: stopping the node agent");
    agent.stop().await;
    progress("docker: removing the pods");
    let _ = pods
        .delete_collection(&DeleteParams::default(), &Default::default())
        .await;
    clean(&runtime).await;
}

async fn sim_case(mode: Mode) {
    let nodes = mode.pick(100, 1000);
    let per_node = mode.pick(10, 30);
    let (_server, client, dir) = in_memory_api().await;
    let mut agents: Vec<RunningNode> = Vec::with_capacity(nodes);
    let registered = Instant::now();
    for n in 0..nodes {
        let mut config = NodeConfig::new(&format!("sim-{n}"));
        config.capacity = Some(BTreeMap::from([
            ("cpu".into(), "32".into()),
            ("memory".into(), "128Gi".into()),
            ("pods".into(), "110".into()),
        ]));
        config.root_dir = dir.path().join(format!("sim-{n}"));
        config.resync_period = Duration::from_secs(30);
        // As `capstan sim` composes its nodes: no per-container Events.
        config.record_events = false;
        let runtime = SimRuntime::new(SimConfig {
            pod_subnet: [10, (n / 256) as u8, (n % 256) as u8],
            ..SimConfig::default()
        });
        agents.push(
            NodeAgent::new(client.clone(), Arc::new(runtime), config)
                .start()
                .await
                .expect("node agent"),
        );
    }
    let registration = registered.elapsed().as_secs_f64();
    progress(&format!(
        "sim: {nodes} nodes registered; creating {} pods",
        nodes * per_node
    ));
    let watch = RunningWatch::start(client.clone(), "default").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let total = nodes * per_node;
    let started = Instant::now();
    let creates = futures::stream::iter(0..total).for_each_concurrent(64, |i| {
        let pods = pods.clone();
        async move {
            let node = format!("sim-{}", i % nodes);
            pods.create(
                &PostParams::default(),
                &pod(&format!("p-{i}"), &node, "busybox:1.35"),
            )
            .await
            .expect("create");
        }
    });
    creates.await;
    let created = started.elapsed().as_secs_f64();
    progress("sim: pods created; waiting for Running");
    let deadline = Instant::now() + Duration::from_secs(900);
    while watch.count() < total && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all_running = started.elapsed().as_secs_f64();
    let case = format!("sim/{nodes}-nodes-x-{per_node}-pods");
    BENCH.figure(&case, "nodes_registered_s", registration, "s", None);
    // Baseline: creating the pods alone, measured in the same run; the ratio is what the node
    // agents add on top of the API writes.
    BENCH.figure(&case, "all_running_s", all_running, "s", Some(created));
    BENCH.figure(
        &case,
        "pods_running_per_s",
        watch.count() as f64 / all_running,
        "pods/s",
        None,
    );
    drop(watch);
    progress("sim: stopping the node agents");
    for agent in agents {
        agent.stop().await;
    }
}

/// Runs the harness with the command line's arguments.
#[tokio::main]
pub async fn main() {
    let mode = Mode::from_args();
    if let Some(runtime) = docker_available().await {
        docker_cases(mode, runtime).await;
    }
    sim_case(mode).await;
}
