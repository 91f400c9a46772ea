//! `scheduler-perf`: scheduling throughput in the shape of kube-scheduler's scheduler_perf
//! "SchedulingBasic": N nodes (4 cpu, 32 GiB, 110 pods each), 1000 pods already placed, then
//! P pods to schedule. For each N:
//!
//! - `framework-{N}n-{P}p` (and `-allnodes`): the scheduling framework alone (with the
//!   scheduler's equivalence cache, as the scheduler runs it), on an in-memory snapshot with no API — the upper bound;
//! - `api-{N}n-{P}p` (and `-allnodes`): end to end through the in-process API server on the
//!   embedded store — pods created through the API, the scheduler's informers fed from the
//!   watch cache, every binding written — timed from the first create until every pod is
//!   bound, with the framework figure of the same N as its baseline.
//!
//! Default node sampling follows percentageOfNodesToScore's adaptive rule; `-allnodes` scores
//! every node. Peak resident memory (VmHWM, reset per case) is reported per case. Published anchor:
//! kube-scheduler's scheduler_perf threshold for 5000 nodes / 10000 pods is 680 pods/s.
//! `--quick` runs 500 nodes and 2000 pods for CI; `--nodes N`, `--sampling default|allnodes`
//! and `--only framework|api` narrow a run while profiling.

use crate::{concurrently, cpu_seconds, resident_mib, Bench, Mode};
use capstan_core::apiserver::ApiServer;
use capstan_core::scheduler::{
    decide_cached, Decision, EquivalenceCache, PodInfo, Profile, Scheduler, SchedulerConfig,
    Snapshot, TieBreaker,
};
use capstan_core::store::{EmbeddedStore, EmbeddedStoreConfig};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use serde_json::json;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BENCH: Bench = Bench("scheduler-perf");
const PLACED: usize = 1000;
const CONCURRENCY: usize = 64;

/// The peak resident set of this process during a case: the kernel's high-water mark
/// (`VmHWM`), reset when the case starts. (Not a counting allocator: its shared counter,
/// updated on every allocation from both cores, slowed the API path it measured.)
struct PeakResident;

impl PeakResident {
    fn start() -> Self {
        // "5" resets the process's peak RSS to its current RSS (Linux >= 4.0).
        if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
            eprintln!(
                "scheduler-perf: cannot reset the peak RSS ({e}); figures include earlier cases"
            );
        }
        PeakResident
    }

    /// The peak in MiB.
    fn stop(self) -> f64 {
        resident_mib(None, "VmHWM")
    }
}

fn node(i: usize) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": format!("node-{i}"), "labels": {"kubernetes.io/hostname": format!("node-{i}"), "zone": format!("z{}", i % 3)}},
        "status": {
            "allocatable": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "capacity": {"cpu": "4", "memory": "32Gi", "pods": "110"},
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    }))
    .expect("a valid node")
}

fn pod(name: &str, node: Option<String>) -> Pod {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "uid": name},
        "spec": {
            "nodeName": node,
            "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10", "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}}}],
        },
    }))
    .expect("a valid pod")
}

/// The framework alone: pods/s deciding and assuming on an in-memory snapshot.
fn framework(nodes: usize, pods: usize, percentage: u32) -> (f64, f64) {
    let heap = PeakResident::start();
    let profile = Profile::default_profile().scoring_percentage(percentage);
    let mut snapshot = Snapshot::new();
    for i in 0..nodes {
        snapshot.upsert_node(Arc::new(node(i)));
    }
    for i in 0..PLACED {
        let p = pod(&format!("placed-{i}"), Some(format!("node-{}", i % nodes)));
        snapshot.add_pod(
            &format!("node-{}", i % nodes),
            Arc::new(PodInfo::new(Arc::new(p))),
        );
    }
    let infos: Vec<Arc<PodInfo>> = (0..pods)
        .map(|i| Arc::new(PodInfo::new(Arc::new(pod(&format!("p-{i}"), None)))))
        .collect();
    let mut start = 0;
    let mut ties = TieBreaker::new(1);
    // As the scheduler runs it: node-local results remembered for pods of the same spec.
    let mut cache = EquivalenceCache::new();
    let began = Instant::now();
    for info in infos {
        match decide_cached(
            &profile, &info, &snapshot, &mut start, &mut ties, &mut cache,
        ) {
            Decision::Fits { node, .. } => snapshot.add_pod(&node, info),
            Decision::Unschedulable(why) => {
                panic!("unschedulable in the benchmark: {}", why.message)
            }
        }
    }
    let rate = pods as f64 / began.elapsed().as_secs_f64();
    (rate, heap.stop())
}

/// End to end through the API: pods/s from the first create until every pod is bound.
async fn through_api(nodes: usize, pods: usize, percentage: u32) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store = EmbeddedStore::open(
        dir.path().join("store.redb"),
        EmbeddedStoreConfig::default(),
    )
    .expect("embedded store");
    let server = ApiServer::builder(Arc::new(store))
        .build()
        .await
        .expect("API server");
    let client = server.client();
    let node_api: Api<Node> = Api::all(client.clone());
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    concurrently(nodes, CONCURRENCY, |i| {
        let node_api = node_api.clone();
        async move {
            node_api
                .create(&PostParams::default(), &node(i))
                .await
                .expect("create node");
        }
    })
    .await;
    concurrently(PLACED, CONCURRENCY, |i| {
        let pod_api = pod_api.clone();
        async move {
            let p = pod(&format!("placed-{i}"), Some(format!("node-{}", i % nodes)));
            pod_api
                .create(&PostParams::default(), &p)
                .await
                .expect("create placed pod");
        }
    })
    .await;
    let config = SchedulerConfig {
        profiles: vec![Profile::default_profile().scoring_percentage(percentage)],
        ..SchedulerConfig::default()
    };
    let scheduler = Scheduler::in_process(&server, config).start();
    // Let the scheduler's informers sync before the clock starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let heap = PeakResident::start();
    let cpu_before = cpu_seconds();
    let began = Instant::now();
    concurrently(pods, CONCURRENCY, |i| {
        let pod_api = pod_api.clone();
        async move {
            pod_api
                .create(&PostParams::default(), &pod(&format!("p-{i}"), None))
                .await
                .expect("create pod");
        }
    })
    .await;
    eprintln!(
        "scheduler-perf: {pods} pods created in {:.2} s ({} bound meanwhile)",
        began.elapsed().as_secs_f64(),
        scheduler.counters().scheduled.load(Ordering::Relaxed)
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let bound = scheduler.counters().scheduled.load(Ordering::Relaxed) as usize;
        if bound >= pods {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {bound} of {pods} pods bound in 10 minutes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = pods as f64 / began.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu_before;
    eprintln!(
        "scheduler-perf: {:.2} CPU seconds for {pods} pods ({:.0} us a pod: create, schedule, bind)",
        cpu,
        cpu * 1e6 / pods as f64
    );
    let peak = heap.stop();
    // Every binding is in the API (read after the clock stopped, so no extra watcher competes
    // with the scheduler during the run).
    let bound_seen = async {
        loop {
            let bound = pod_api
                .list(&Default::default())
                .await
                .expect("list pods")
                .items
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                .count();
            if bound >= pods + PLACED {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), bound_seen)
        .await
        .expect("every binding reaches the API");
    scheduler.stop().await;
    (rate, peak)
}

/// Runs the harness with the command line's arguments.
#[tokio::main]
pub async fn main() {
    let mode = Mode::from_args();
    let node_counts: &[usize] = match mode {
        Mode::Quick => &[500],
        Mode::Standard => &[500, 1000, 5000, 15000],
    };
    let pods = mode.pick(2000, 10_000);
    // `--nodes N` runs one cluster size only; `--only framework|api` one side only.
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let chosen: Vec<usize> = match value_of("--nodes").and_then(|n| n.parse().ok()) {
        Some(n) => vec![n],
        None => node_counts.to_vec(),
    };
    let only = value_of("--only");
    let sampling = value_of("--sampling");
    for &nodes in &chosen {
        for (suffix, percentage) in [("", 0u32), ("-allnodes", 100u32)] {
            let name = if suffix.is_empty() {
                "default"
            } else {
                "allnodes"
            };
            if sampling.as_deref().is_some_and(|s| s != name) {
                continue;
            }
            if only.as_deref() == Some("framework") {
                let (rate, _) = framework(nodes, pods, percentage);
                BENCH.figure(
                    format!("framework-{nodes}n-{pods}p{suffix}"),
                    "pods_per_s",
                    rate,
                    "pods/s",
                    None,
                );
                continue;
            }
            if only.as_deref() == Some("api") {
                let (rate, _) = through_api(nodes, pods, percentage).await;
                BENCH.figure(
                    format!("api-{nodes}n-{pods}p{suffix}"),
                    "pods_per_s",
                    rate,
                    "pods/s",
                    None,
                );
                continue;
            }
            eprintln!("scheduler-perf: {nodes} nodes{suffix}: framework");
            let (framework_rate, framework_peak) = framework(nodes, pods, percentage);
            let case = format!("framework-{nodes}n-{pods}p{suffix}");
            BENCH.figure(&case, "pods_per_s", framework_rate, "pods/s", None);
            BENCH.figure(&case, "peak_rss_mib", framework_peak, "MiB", None);
            eprintln!("scheduler-perf: {nodes} nodes{suffix}: through the API");
            let (api_rate, api_peak) = through_api(nodes, pods, percentage).await;
            let case = format!("api-{nodes}n-{pods}p{suffix}");
            BENCH.figure(
                &case,
                "pods_per_s",
                api_rate,
                "pods/s",
                Some(framework_rate),
            );
            BENCH.figure(&case, "peak_rss_mib", api_peak, "MiB", None);
        }
    }
    eprintln!("scheduler-perf: anchor: kube-scheduler's threshold at 5000 nodes / 10000 pods is 680 pods/s");
}
