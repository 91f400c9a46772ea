//! `api-perf`: the API server's latency and fan-out, each figure beside the same work done
//! straight on the object storage underneath (the baseline, same memory store, same run), so
//! the ratio is what the API layer (HTTP, decoding, defaulting, admission, validation, field
//! management, encoding) adds.
//!
//! Cases, over HTTP (the kube crate) and in-process (`ApiServer::client()`):
//! - `<transport>-c<N>/<create|get|update>`: single-object latency p50/p99 with N concurrent
//!   clients (1, 16, 64);
//! - `<transport>-1000rps/update`: p99 of updates sent open-loop at 1000 requests/s (from the
//!   time each was due, so queueing counts) — target p99 <= 20 ms;
//! - `<transport>/list-10000-pods`: one LIST of 10k pods (median);
//! - `<transport>/fanout-1000-watchers`: one event delivered to 1000 watchers (p99 over
//!   watchers and events) — target p99 <= 100 ms.
//!
//! `--quick` for CI runs fewer operations and a shorter paced run.

use crate::{concurrently, Figure, Mode};
use capstan_core::apiserver::{ApiConfig, ApiServer};
use capstan_core::registry::ResourceKind;
use capstan_core::storage::{ObjectEvent, ObjectStorage};
use capstan_core::store::{MemoryStore, Store};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

const BENCH: &str = "api-perf";
const CONCURRENCY: [usize; 3] = [1, 16, 64];
const WATCHERS: usize = 1000;
const PODS: usize = 10_000;

fn config_map(name: &str, round: usize) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": name, "labels": {"bench": "api"}},
           "data": {"key": "x".repeat(200), "round": round.to_string()}})
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": {"app": "bench", "tier": "web"}},
           "spec": {"containers": [{"name": "app", "image": "busybox:1.36", "command": ["sleep", "3600"],
                    "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}}}],
                    "nodeName": "node-1"},
           "status": {"phase": "Running", "podIP": "10.244.1.7"}})
}

/// Where the operations go: the API through a kube client, or the storage directly.
#[derive(Clone)]
enum Target {
    Api(kube::Client),
    Storage(ObjectStorage, Arc<ResourceKind>, Arc<ResourceKind>),
}

impl Target {
    async fn namespace(&self, name: &str) {
        if let Target::Api(client) = self {
            let namespaces: Api<Namespace> = Api::all(client.clone());
            namespaces
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(json!({"metadata": {"name": name}}))
                        .expect("namespace"),
                )
                .await
                .expect("create namespace");
        }
    }

    async fn create(&self, ns: &str, name: &str) {
        match self {
            Target::Api(client) => {
                let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
                let object = serde_json::from_value(config_map(name, 0)).expect("config map");
                maps.create(&PostParams::default(), &object)
                    .await
                    .expect("create");
            }
            Target::Storage(storage, maps, _) => {
                let mut object = config_map(name, 0);
                object["metadata"]["namespace"] = json!(ns);
                storage.create(maps, object).await.expect("create");
            }
        }
    }

    async fn get(&self, ns: &str, name: &str) {
        match self {
            Target::Api(client) => {
                let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
                maps.get(name).await.expect("get");
            }
            Target::Storage(storage, maps, _) => {
                storage.get(maps, Some(ns), name).await.expect("get");
            }
        }
    }

    async fn update(&self, ns: &str, name: &str, round: usize) {
        match self {
            Target::Api(client) => {
                let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
                let patch = json!({"data": {"round": round.to_string()}});
                maps.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                    .expect("update");
            }
            Target::Storage(storage, maps, _) => {
                let mut object = config_map(name, round);
                object["metadata"]["namespace"] = json!(ns);
                storage.update(maps, object).await.expect("update");
            }
        }
    }

    async fn list_pods(&self, ns: &str) -> usize {
        match self {
            Target::Api(client) => {
                let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
                pods.list(&ListParams::default())
                    .await
                    .expect("list")
                    .items
                    .len()
            }
            Target::Storage(storage, _, pods) => storage
                .list(pods, Some(ns), None, None, None)
                .await
                .expect("list")
                .items
                .len(),
        }
    }
}

fn percentile(samples: &mut [f64], p: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples.get(index).copied().unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One measured case: its figures as (case, metric, value, unit).
type Figures = Vec<(String, &'static str, f64, &'static str)>;

fn latency_figures(out: &mut Figures, case: String, mut samples: Vec<f64>) {
    out.push((case.clone(), "p50_ms", percentile(&mut samples, 0.5), "ms"));
    out.push((case, "p99_ms", percentile(&mut samples, 0.99), "ms"));
}

/// Single-object create/get/update latency with `clients` concurrent clients.
async fn concurrent_latency(
    target: &Target,
    ns: &str,
    clients: usize,
    ops: usize,
    out: &mut Figures,
) {
    for op in ["create", "get", "update"] {
        let samples = Arc::new(std::sync::Mutex::new(Vec::with_capacity(ops)));
        let start = Instant::now();
        concurrently(ops, clients, |i| {
            let target = target.clone();
            let samples = samples.clone();
            let name = format!("c{clients}-{i:06}");
            async move {
                let begin = Instant::now();
                match op {
                    "create" => target.create(ns, &name).await,
                    "get" => target.get(ns, &name).await,
                    _ => target.update(ns, &name, 1).await,
                }
                samples.lock().expect("samples").push(ms(begin.elapsed()));
            }
        })
        .await;
        let elapsed = start.elapsed().as_secs_f64();
        let samples = std::mem::take(&mut *samples.lock().expect("samples"));
        latency_figures(out, format!("c{clients}/{op}"), samples);
        out.push((
            format!("c{clients}/{op}"),
            "throughput",
            ops as f64 / elapsed,
            "ops/s",
        ));
    }
}

/// Updates sent open-loop at `rate` per second for `seconds`; latency from when each was due.
async fn paced_updates(target: &Target, ns: &str, rate: usize, seconds: usize, out: &mut Figures) {
    let pool = 500;
    concurrently(pool, 32, |i| {
        let target = target.clone();
        async move { target.create(ns, &format!("paced-{i:04}")).await }
    })
    .await;
    let total = rate * seconds;
    let interval = Duration::from_secs(1) / rate as u32;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let due = start + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let target = target.clone();
        let ns = ns.to_string();
        tasks.push(tokio::spawn(async move {
            target
                .update(&ns, &format!("paced-{:04}", i % pool), i)
                .await;
            ms(due.elapsed())
        }));
    }
    let mut samples = Vec::with_capacity(total);
    for task in tasks {
        samples.push(task.await.expect("update task"));
    }
    let achieved = total as f64 / start.elapsed().as_secs_f64();
    latency_figures(out, format!("{rate}rps/update"), samples);
    out.push((
        format!("{rate}rps/update"),
        "achieved_rate",
        achieved,
        "req/s",
    ));
}

async fn list_latency(target: &Target, ns: &str, rounds: usize, out: &mut Figures) {
    let mut samples = Vec::new();
    for _ in 0..rounds {
        let begin = Instant::now();
        let count = target.list_pods(ns).await;
        assert_eq!(count, PODS, "every pod listed");
        samples.push(ms(begin.elapsed()));
    }
    out.push((
        format!("list-{PODS}-pods"),
        "median_ms",
        percentile(&mut samples, 0.5),
        "ms",
    ));
}

/// One event delivered to `WATCHERS` watchers; p99 over watchers and events.
async fn fan_out(target: &Target, ns: &str, events: usize, out: &mut Figures) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    // Storage watchers start from before the warm-up event, so none can miss it.
    let start_revision = match target {
        Target::Storage(storage, _, _) => {
            storage.store().current_revision().await.expect("revision")
        }
        Target::Api(_) => 0,
    };
    let mut watchers = Vec::new();
    for _ in 0..WATCHERS {
        let tx = tx.clone();
        let target = target.clone();
        let ns = ns.to_string();
        watchers.push(tokio::spawn(async move {
            match target {
                Target::Api(client) => {
                    let maps: Api<ConfigMap> = Api::namespaced(client, &ns);
                    let mut stream = maps
                        .watch(&WatchParams::default().timeout(290), "0")
                        .await
                        .expect("watch")
                        .boxed();
                    while let Ok(Some(event)) = stream.try_next().await {
                        if let WatchEvent::Added(cm) = event {
                            let name = cm.metadata.name.unwrap_or_default();
                            if tx.send((name, Instant::now())).is_err() {
                                return;
                            }
                        }
                    }
                }
                Target::Storage(storage, maps, _) => {
                    let mut stream = storage
                        .watch(&maps, Some(&ns), start_revision)
                        .await
                        .expect("watch")
                        .boxed();
                    while let Some(Ok(event)) = stream.next().await {
                        if let ObjectEvent::Added(object) = event {
                            let name = object["metadata"]["name"]
                                .as_str()
                                .unwrap_or("")
                                .to_string();
                            if tx.send((name, Instant::now())).is_err() {
                                return;
                            }
                        }
                    }
                }
            }
        }));
    }
    drop(tx);
    // Every watcher is live once each has seen the warm-up event.
    let mut samples = Vec::new();
    for round in 0..=events {
        let name = format!("fan-{round:03}");
        let sent = Instant::now();
        target.create(ns, &name).await;
        let mut seen = 0;
        while seen < WATCHERS {
            let (got, at) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
                .await
                .expect("every watcher hears the event in time")
                .expect("watchers alive");
            if got == name {
                seen += 1;
                if round > 0 {
                    samples.push(ms(at - sent));
                }
            }
        }
    }
    for watcher in watchers {
        watcher.abort();
    }
    out.push((
        format!("fanout-{WATCHERS}-watchers"),
        "p99_ms",
        percentile(&mut samples, 0.99),
        "ms",
    ));
    out.push((
        format!("fanout-{WATCHERS}-watchers"),
        "p50_ms",
        percentile(&mut samples, 0.5),
        "ms",
    ));
}

async fn run(target: &Target, prefix: &str, mode: Mode) -> Figures {
    let mut out = Figures::new();
    let ops = mode.pick(300, 3000);
    for clients in CONCURRENCY {
        let ns = format!("{prefix}-c{clients}");
        target.namespace(&ns).await;
        concurrent_latency(target, &ns, clients, ops, &mut out).await;
    }
    let ns = format!("{prefix}-paced");
    target.namespace(&ns).await;
    paced_updates(target, &ns, 1000, mode.pick(2, 10), &mut out).await;
    list_latency(target, "bench-pods", mode.pick(3, 5), &mut out).await;
    let ns = format!("{prefix}-fanout");
    target.namespace(&ns).await;
    fan_out(target, &ns, mode.pick(3, 10), &mut out).await;
    out
}

fn print(transport: &str, figures: &Figures, baseline: &Figures) {
    for (case, metric, value, unit) in figures {
        let base = baseline
            .iter()
            .find(|(c, m, _, _)| c == case && m == metric)
            .map(|(_, _, v, _)| *v);
        Figure {
            bench: BENCH,
            case: format!("{transport}-{case}"),
            metric,
            value: *value,
            unit,
            baseline: base,
        }
        .print();
    }
}

/// Runs the harness with the command line's arguments.
#[tokio::main]
pub async fn main() {
    let mode = Mode::from_args();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("address");
    let server = ApiServer::builder(store.clone())
        .config(ApiConfig {
            advertise_address: address.to_string(),
            max_in_flight: 4096,
            ..ApiConfig::default()
        })
        .build()
        .await
        .expect("API server");
    let router = server.router();
    let serving = tokio::spawn(async move { axum::serve(listener, router).await });

    let registry = server.registry();
    let maps = registry
        .get("", "v1", "configmaps")
        .expect("configmaps")
        .clone();
    let pods = registry.get("", "v1", "pods").expect("pods").clone();
    let storage = ObjectStorage::new(store.clone());
    let in_process = Target::Api(server.client());
    // The pods every LIST reads, written straight to storage.
    in_process.namespace("bench-pods").await;
    concurrently(PODS, 32, |i| {
        let storage = storage.clone();
        let pods = pods.clone();
        async move {
            let mut object = pod(&format!("pod-{i:05}"));
            object["metadata"]["namespace"] = json!("bench-pods");
            storage.create(&pods, object).await.expect("seed pod");
        }
    })
    .await;
    // Namespaces for the baseline exist too, so both paths see the same store.
    for suffix in ["c1", "c16", "c64", "paced", "fanout"] {
        in_process.namespace(&format!("direct-{suffix}")).await;
    }
    let direct = Target::Storage(storage.clone(), maps, pods);
    let baseline = run(&direct, "direct", mode).await;

    let http_config = kube::Config::new(format!("http://{address}").parse().expect("url"));
    let http = Target::Api(kube::Client::try_from(http_config).expect("HTTP client"));
    let over_http = run(&http, "http", mode).await;
    let in_process_figures = run(&in_process, "inproc", mode).await;

    print("api-http", &over_http, &baseline);
    print("api-in-process", &in_process_figures, &baseline);
    print("storage-direct", &baseline, &Figures::new());
    serving.abort();
}
