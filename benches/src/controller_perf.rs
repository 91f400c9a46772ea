//! `controller-perf`: the controller manager under a burst. N Deployments x 10 replicas are
//! created at once through the in-process API; the figure is the time until every ReplicaSet
//! and pod exists (`all_pods_created_s`), beside, in the same run, the time to create the same
//! objects (Deployments, ReplicaSets, pods) directly through the same API with no controllers
//! — the floor any controller is bounded by. Also reconciles per second during the burst, and
//! the memory of a pod informer's cache per 10k pods beside those pods' encoded size.
//!
//! `--quick` runs 100 Deployments for CI; the standard case is 1000.

use crate::{concurrently, Bench, Mode};
use capstan_core::apiserver::ApiServer;
use capstan_core::controller::{ControllerManager, ControllerManagerConfig, InformerFactory};
use capstan_core::store::MemoryStore;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BENCH: Bench = Bench("controller-perf");
const REPLICAS: usize = 10;
/// Requests in flight at once while creating.
const CONCURRENCY: usize = 32;

fn deployment(i: usize) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": format!("d{i}"), "namespace": "default"},
        "spec": {
            "replicas": REPLICAS,
            "selector": {"matchLabels": {"app": format!("d{i}")}},
            "template": {"metadata": {"labels": {"app": format!("d{i}")}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}},
        },
    }))
    .expect("a valid deployment")
}

/// Live heap bytes, read from the counting allocator the binary installs.
static HEAP_BYTES: std::sync::OnceLock<fn() -> usize> = std::sync::OnceLock::new();

/// Live heap bytes of this process.
fn heap_bytes() -> f64 {
    HEAP_BYTES.get().map_or(f64::NAN, |read| read() as f64)
}

async fn server() -> ApiServer {
    ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .expect("API server")
}

/// The same objects the controllers make, created directly.
async fn direct(deployments: usize) -> f64 {
    let server = server().await;
    let client = server.client();
    let start = Instant::now();
    let d_api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    let rs_api: Api<ReplicaSet> = Api::namespaced(client.clone(), "default");
    let pod_api: Api<Pod> = Api::namespaced(client.clone(), "default");
    concurrently(deployments, CONCURRENCY, |i| {
        let d_api = d_api.clone();
        let rs_api = rs_api.clone();
        async move {
            let d = d_api.create(&PostParams::default(), &deployment(i)).await.expect("create deployment");
            let mut rs: ReplicaSet = serde_json::from_value(json!({
                "metadata": {"name": format!("d{i}-abc"), "namespace": "default", "labels": {"app": format!("d{i}")}},
                "spec": {"replicas": REPLICAS, "selector": {"matchLabels": {"app": format!("d{i}")}}, "template": d.spec.expect("spec").template},
            }))
            .expect("a valid replica set");
            rs.metadata.owner_references = None;
            rs_api.create(&PostParams::default(), &rs).await.expect("create replica set");
        }
    })
    .await;
    concurrently(deployments * REPLICAS, CONCURRENCY, |i| {
        let pod_api = pod_api.clone();
        async move {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"generateName": format!("d{}-abc-", i / REPLICAS), "namespace": "default", "labels": {"app": format!("d{}", i / REPLICAS)}},
                "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]},
            }))
            .expect("a valid pod");
            pod_api.create(&PostParams::default(), &pod).await.expect("create pod");
        }
    })
    .await;
    start.elapsed().as_secs_f64()
}

/// The controllers making them from Deployments; returns (seconds, reconciles per second).
async fn with_controllers(deployments: usize) -> (f64, f64, ApiServer) {
    let server = server().await;
    let client = server.client();
    let controllers =
        ControllerManager::in_process(&server, ControllerManagerConfig::default()).start();
    // Watch progress through separate informers, synced before the burst.
    let observer = InformerFactory::in_process(&server);
    let pods = observer.informer::<Pod>();
    let sets = observer.informer::<ReplicaSet>();
    pods.wait_synced().await;
    sets.wait_synced().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reconciles_before = controllers.reconciles();
    let start = Instant::now();
    let d_api: Api<Deployment> = Api::namespaced(client.clone(), "default");
    concurrently(deployments, CONCURRENCY, |i| {
        let d_api = d_api.clone();
        async move {
            d_api
                .create(&PostParams::default(), &deployment(i))
                .await
                .expect("create deployment");
        }
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(600);
    while pods.len() < deployments * REPLICAS || sets.len() < deployments {
        assert!(
            Instant::now() < deadline,
            "the controllers did not create every pod in 10 minutes ({} pods, {} replica sets)",
            pods.len(),
            sets.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    let reconciles = (controllers.reconciles() - reconciles_before) as f64 / elapsed;
    controllers.stop().await;
    observer.stop();
    (elapsed, reconciles, server)
}

/// Heap held by a fresh pod informer (its cache and indexes) over the server's pods, and their
/// encoded size.
async fn informer_memory(server: &ApiServer) -> (f64, f64, usize) {
    let client = server.client();
    let listed: Api<Pod> = Api::all(client.clone());
    let items = listed
        .list(&Default::default())
        .await
        .expect("list pods")
        .items;
    let encoded: usize = items
        .iter()
        .map(|p| serde_json::to_vec(p).map_or(0, |v| v.len()))
        .sum();
    let count = items.len();
    drop(items);
    let before = heap_bytes();
    let factory = InformerFactory::in_process(server);
    let informer = factory.informer::<Pod>();
    informer.wait_synced().await;
    // Let the listing's transient buffers go.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = heap_bytes();
    assert_eq!(informer.len(), count);
    let per_10k = |bytes: f64| bytes / count.max(1) as f64 * 10_000.0 / (1024.0 * 1024.0);
    (
        per_10k((after - before).max(0.0)),
        per_10k(encoded as f64),
        count,
    )
}

/// Runs the harness with the command line's arguments; `heap_bytes` reads the live heap bytes
/// from the binary's counting allocator.
pub fn main(heap_bytes: fn() -> usize) {
    let _ = HEAP_BYTES.set(heap_bytes);
    run();
}

#[tokio::main]
async fn run() {
    let mode = Mode::from_args();
    let deployments = mode.pick(100, 1000);
    let case = format!("api-{deployments}d-{REPLICAS}r");
    eprintln!("controller-perf: baseline: creating the objects directly");
    let baseline = direct(deployments).await;
    eprintln!("controller-perf: {deployments} deployments through the controllers");
    let (elapsed, reconciles, server) = with_controllers(deployments).await;
    BENCH.figure(&case, "all_pods_created_s", elapsed, "s", Some(baseline));
    BENCH.figure(&case, "reconciles_per_s", reconciles, "reconciles/s", None);
    let (cache, encoded, count) = informer_memory(&server).await;
    BENCH.figure(
        format!("pod-informer-{count}p"),
        "cache_mib_per_10k_pods",
        cache,
        "MiB",
        Some(encoded),
    );
}
