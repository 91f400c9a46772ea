//! `scale-perf`: the whole orchestrator at scale in one process, composed as `capstan sim` is —
//! the API server on the memory store, the controller manager, the scheduler and N node agents
//! on the simulated runtime, all reading one set of shared informers. Deployments totalling P replicas are created at once; the figures
//! are the time until every pod is Running (`all_running_s`), the p99 latency of a probe
//! reading through the API every 100 ms during the run (`api_p99_ms`), and the process's peak
//! RSS (`peak_rss_mib`). A progress line goes to stderr every five seconds. No baseline
//! applies (the anchors are other systems': kwok keeps 1k nodes / 100k pods; k0s's controller
//! uses 2.3 GB with 10k pods); targets: 150k pods Running within 5 minutes, under 3 GiB.
//!
//! The standard case is `5000n-150000p` (minutes and gigabytes); `--quick` runs `100n-3000p`;
//! `--nodes N --pods P` picks another size. First, `idle-up` measures an idle `capstan up`
//! beside an idle etcd (see `idle`).

mod idle;

use crate::{resident_mib, Bench, Mode};
use capstan_core::apiserver::ApiServer;
use capstan_core::controller::{
    ControllerManager, ControllerManagerConfig, Informer, InformerFactory,
};
use capstan_core::node::{NodeAgent, NodeConfig, SharedPodFeed};
use capstan_core::runtime::sim::SimRuntime;
use capstan_core::scheduler::{Scheduler, SchedulerConfig};
use capstan_core::store::MemoryStore;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BENCH: Bench = Bench("scale-perf");
/// Replicas per Deployment.
const PER_DEPLOYMENT: usize = 1000;

/// This process's peak resident set (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    resident_mib(None, "VmHWM")
}

fn deployment(i: usize, replicas: usize) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": format!("scale-{i}"), "namespace": "default"},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": format!("scale-{i}")}},
            "template": {
                "metadata": {"labels": {"app": format!("scale-{i}")}},
                "spec": {"containers": [{
                    "name": "c",
                    "image": "busybox:1.36",
                    "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}},
                }]},
            },
        },
    }))
    .expect("a valid deployment")
}

/// Pods whose phase is Running in `pods`' cache.
fn running_pods(pods: &Informer<Pod>) -> usize {
    pods.list()
        .iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .count()
}

async fn run_case(nodes: usize, pods: usize) {
    let case = format!("{nodes}n-{pods}p");
    eprintln!("scale-perf: {case}");
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .expect("server");
    // One set of informers for the whole process, as `capstan sim` composes it.
    let informers = InformerFactory::in_process(&server);
    let controllers =
        ControllerManager::with_informers(&informers, ControllerManagerConfig::default()).start();
    let scheduler = Scheduler::with_informers(&informers, SchedulerConfig::default()).start();
    let capacity: std::collections::BTreeMap<String, String> =
        [("cpu", "32"), ("memory", "128Gi"), ("pods", "110")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let dir = tempfile::tempdir().expect("tempdir");
    // The agents take their pods from the shared pod informer, routed by node.
    let feed = SharedPodFeed::new(&informers);
    // One in-process client for every node, as `capstan sim` shares it.
    let agent_client = server.client();
    let mut agents = Vec::with_capacity(nodes);
    for i in 0..nodes {
        let name = format!("sim-node-{i}");
        let mut config = NodeConfig::new(&name);
        config.capacity = Some(capacity.clone());
        config.root_dir = dir.path().join(&name);
        // As `capstan sim` composes its nodes: no per-container Events.
        config.record_events = false;
        agents.push(
            NodeAgent::new(
                agent_client.clone(),
                Arc::new(SimRuntime::default()),
                config,
            )
            .with_pod_feed(&feed)
            .start()
            .await
            .expect("node agent"),
        );
    }
    eprintln!("scale-perf: {nodes} nodes up");
    let client = server.client();
    let pod_api: Api<Pod> = Api::default_namespaced(client.clone());
    // The probe: one small read every 100 ms, timed.
    let probe_stop = tokio_util::sync::CancellationToken::new();
    let probe = {
        let stop = probe_stop.clone();
        let pods = pod_api.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while !stop.is_cancelled() {
                let began = Instant::now();
                let _ = pods.list(&ListParams::default().limit(1)).await;
                latencies.push(began.elapsed());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            latencies
        })
    };
    // Progress is counted in the shared pod informer's cache, not by listing.
    let watched: Informer<Pod> = informers.informer();
    watched.wait_synced().await;
    let deployments: Api<Deployment> = Api::default_namespaced(client.clone());
    let began = Instant::now();
    let mut left = pods;
    let mut i = 0;
    while left > 0 {
        let replicas = left.min(PER_DEPLOYMENT);
        deployments
            .create(&PostParams::default(), &deployment(i, replicas))
            .await
            .expect("create deployment");
        left -= replicas;
        i += 1;
    }
    let mut last_report = Instant::now();
    loop {
        let running = running_pods(&watched);
        if running >= pods {
            break;
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "scale-perf: {running}/{pods} running after {:.0} s (peak RSS {:.0} MiB)",
                began.elapsed().as_secs_f64(),
                peak_rss_mib()
            );
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let all_running = began.elapsed();
    probe_stop.cancel();
    let mut latencies = probe.await.unwrap_or_default();
    latencies.sort();
    let p99 = latencies
        .get((latencies.len() * 99 / 100).min(latencies.len().saturating_sub(1)))
        .map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0);
    BENCH.figure(&case, "all_running_s", all_running.as_secs_f64(), "s", None);
    BENCH.figure(&case, "api_p99_ms", p99, "ms", None);
    BENCH.figure(&case, "peak_rss_mib", peak_rss_mib(), "MiB", None);
    futures::future::join_all(agents.into_iter().map(|a| a.stop())).await;
    scheduler.stop().await;
    controllers.stop().await;
    informers.stop();
}

/// Runs the harness with the command line's arguments.
#[tokio::main]
pub async fn main() {
    // Warnings (a relisting informer, a failing sync) go to stderr beside the progress lines;
    // RUST_LOG picks more.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .try_init();
    let mode = Mode::from_args();
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse::<usize>().ok())
    };
    let (nodes, pods) = match (value_of("--nodes"), value_of("--pods"), mode) {
        (Some(n), Some(p), _) => (n, p),
        (_, _, Mode::Quick) => (100, 3000),
        (_, _, Mode::Standard) => (5000, 150_000),
    };
    if let Err(err) = idle::run(BENCH).await {
        eprintln!("scale-perf: idle-up: {err}");
        std::process::exit(1);
    }
    run_case(nodes, pods).await;
}
