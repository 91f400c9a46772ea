//! `api-perf`: the API server's cost over the storage it wraps. The same operations — create,
//! get, a full list, watch event latency — go through the API (over HTTP with the kube crate,
//! and in-process through `ApiServer::client()`) and, in the same run, straight to the object
//! storage underneath (the baseline), on the same memory store. Ratios show what the API layer
//! (HTTP, decoding, defaulting, admission, validation, encoding) adds. `--quick` for CI.

use capstan_benches::{Figure, Mode};
use capstan_core::apiserver::{ApiConfig, ApiServer};
use capstan_core::registry::ResourceKind;
use capstan_core::storage::{ObjectEvent, ObjectStorage};
use capstan_core::store::{MemoryStore, Store};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, ListParams, PostParams, WatchEvent, WatchParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

const BENCH: &str = "api-perf";

type Results = BTreeMap<&'static str, (f64, &'static str, &'static str)>;

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name, "labels": {"bench": "api"}}, "data": {"key": "x".repeat(200)}})).expect("valid ConfigMap")
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}

/// The operations through the API with a kube client.
async fn through_api(
    client: kube::Client,
    namespace: &str,
    n: usize,
    lists: usize,
    watch_events: usize,
) -> Results {
    let mut results = Results::new();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": namespace}})).expect("namespace"),
        )
        .await
        .expect("create namespace");
    let maps: Api<ConfigMap> = Api::namespaced(client, namespace);
    let start = Instant::now();
    for i in 0..n {
        maps.create(&PostParams::default(), &config_map(&format!("cm-{i:06}")))
            .await
            .expect("create");
    }
    results.insert(
        "create",
        (
            n as f64 / start.elapsed().as_secs_f64(),
            "throughput",
            "ops/s",
        ),
    );
    let start = Instant::now();
    for i in 0..n {
        maps.get(&format!("cm-{i:06}")).await.expect("get");
    }
    results.insert(
        "get",
        (
            n as f64 / start.elapsed().as_secs_f64(),
            "throughput",
            "ops/s",
        ),
    );
    let mut samples = Vec::new();
    for _ in 0..lists {
        let start = Instant::now();
        let list = maps.list(&ListParams::default()).await.expect("list");
        assert_eq!(list.items.len(), n);
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    results.insert("list", (median(samples), "latency_median", "ms"));
    let rv = maps
        .list(&ListParams::default().limit(1))
        .await
        .expect("list")
        .metadata
        .resource_version
        .unwrap_or_default();
    let mut events = maps
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch")
        .boxed();
    let mut samples = Vec::new();
    for i in 0..watch_events {
        let start = Instant::now();
        maps.create(&PostParams::default(), &config_map(&format!("w-{i:06}")))
            .await
            .expect("create");
        loop {
            match events
                .try_next()
                .await
                .expect("watch ok")
                .expect("watch open")
            {
                WatchEvent::Added(_) => break,
                _ => continue,
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    results.insert("watch-latency", (median(samples), "latency_median", "us"));
    results
}

/// The same operations straight on the object storage (the baseline).
async fn direct(
    storage: &ObjectStorage,
    kind: &ResourceKind,
    namespace: &str,
    n: usize,
    lists: usize,
    watch_events: usize,
) -> Results {
    let mut results = Results::new();
    let start = Instant::now();
    for i in 0..n {
        let mut object = serde_json::to_value(config_map(&format!("cm-{i:06}"))).expect("json");
        object["metadata"]["namespace"] = json!(namespace);
        storage.create(kind, object).await.expect("create");
    }
    results.insert(
        "create",
        (
            n as f64 / start.elapsed().as_secs_f64(),
            "throughput",
            "ops/s",
        ),
    );
    let start = Instant::now();
    for i in 0..n {
        storage
            .get(kind, Some(namespace), &format!("cm-{i:06}"))
            .await
            .expect("get");
    }
    results.insert(
        "get",
        (
            n as f64 / start.elapsed().as_secs_f64(),
            "throughput",
            "ops/s",
        ),
    );
    let mut samples = Vec::new();
    for _ in 0..lists {
        let start = Instant::now();
        let list = storage
            .list(kind, Some(namespace), None, None, None)
            .await
            .expect("list");
        assert_eq!(list.items.len(), n);
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    results.insert("list", (median(samples), "latency_median", "ms"));
    let revision = storage.store().current_revision().await.expect("revision");
    let mut events = storage
        .watch(kind, Some(namespace), revision)
        .await
        .expect("watch")
        .boxed();
    let mut samples = Vec::new();
    for i in 0..watch_events {
        let start = Instant::now();
        let mut object = serde_json::to_value(config_map(&format!("w-{i:06}"))).expect("json");
        object["metadata"]["namespace"] = json!(namespace);
        storage.create(kind, object).await.expect("create");
        while !matches!(
            events.next().await.expect("watch open").expect("watch ok"),
            ObjectEvent::Added(_)
        ) {}
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    results.insert("watch-latency", (median(samples), "latency_median", "us"));
    results
}

fn print(case: &str, results: &Results, baseline: &Results) {
    for (op, (value, metric, unit)) in results {
        Figure {
            bench: BENCH,
            case: format!("{case}/{op}"),
            metric,
            value: *value,
            unit,
            baseline: baseline.get(op).map(|(v, _, _)| *v),
        }
        .print();
    }
}

#[tokio::main]
async fn main() {
    let mode = Mode::from_args();
    let n = mode.pick(300, 3000);
    let lists = mode.pick(3, 5);
    let watch_events = mode.pick(50, 300);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let address = listener.local_addr().expect("address");
    let server = ApiServer::builder(store.clone())
        .config(ApiConfig {
            advertise_address: address.to_string(),
            ..ApiConfig::default()
        })
        .build()
        .await
        .expect("API server");
    let router = server.router();
    let serving = tokio::spawn(async move { axum::serve(listener, router).await });

    let kind = server
        .registry()
        .get("", "v1", "configmaps")
        .expect("configmaps")
        .clone();
    let storage = ObjectStorage::new(store.clone());
    // The baseline namespace is created through the API too, so both paths share one store.
    let baseline_ns = "bench-direct";
    let client = server.client();
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": baseline_ns}})).expect("namespace"),
        )
        .await
        .expect("namespace");
    let baseline = direct(&storage, &kind, baseline_ns, n, lists, watch_events).await;

    let http_config = kube::Config::new(format!("http://{address}").parse().expect("url"));
    let http = kube::Client::try_from(http_config).expect("HTTP client");
    let over_http = through_api(http, "bench-http", n, lists, watch_events).await;
    let in_process = through_api(client, "bench-inproc", n, lists, watch_events).await;

    print("api-http", &over_http, &baseline);
    print("api-in-process", &in_process, &baseline);
    print("storage-direct", &baseline, &Results::new());
    serving.abort();
}
