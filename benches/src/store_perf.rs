//! `store-perf`: the same operations against the memory, embedded and etcd `Store` backends and,
//! in the same run, against etcd through raw etcd-client calls. EtcdStore figures carry the raw
//! etcd-client figure as baseline; embedded-store figures carry raw etcd's; memory figures have
//! none. Run with `--quick` for CI-sized cases.

use crate::{etcd_endpoints, Figure, Mode};
use bytes::Bytes;
use capstan_core::store::{EmbeddedStore, EmbeddedStoreConfig, MemoryStore, Store, WatchEvent};
use capstan_store_etcd::{EtcdStore, EtcdStoreConfig};
use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp, WatchOptions};
use futures::StreamExt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const BENCH: &str = "store-perf";
const WRITERS: usize = 16;

/// Sizes of one run.
#[derive(Clone, Copy)]
struct Sizes {
    creates: usize,
    updates_per_writer: usize,
    gets: usize,
    list_objects: usize,
    watch_events: usize,
}

/// Measured figures of one backend, by operation.
type Results = BTreeMap<&'static str, (f64, &'static str, &'static str)>;

fn value_of(size: usize) -> Bytes {
    Bytes::from(format!(
        "{{\"kind\":\"Pod\",\"spec\":{{\"pad\":\"{}\"}}}}",
        "x".repeat(size)
    ))
}

fn per_second(n: usize, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64()
}

fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples.get(samples.len() / 2).copied().unwrap_or(0.0)
}

async fn bench_store(store: Arc<dyn Store>, sizes: Sizes, tag: &str) -> Results {
    let mut results = Results::new();
    let value = value_of(1000);

    let start = Instant::now();
    for i in 0..sizes.creates {
        store
            .create(&format!("/{tag}/create/{i:08}"), value.clone(), None)
            .await
            .expect("create");
    }
    results.insert(
        "create-1w",
        (
            per_second(sizes.creates, start.elapsed()),
            "throughput",
            "ops/s",
        ),
    );

    let mut keys = Vec::new();
    for w in 0..WRITERS {
        let kv = store
            .create(&format!("/{tag}/update/{w}"), value.clone(), None)
            .await
            .expect("create");
        keys.push(kv);
    }
    let start = Instant::now();
    let handles: Vec<_> = keys
        .into_iter()
        .map(|mut kv| {
            let store = store.clone();
            let value = value.clone();
            tokio::spawn(async move {
                for _ in 0..sizes.updates_per_writer {
                    kv = store
                        .update(&kv.key, value.clone(), kv.mod_revision, None)
                        .await
                        .expect("update");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("writer");
    }
    results.insert(
        "update-16w",
        (
            per_second(WRITERS * sizes.updates_per_writer, start.elapsed()),
            "throughput",
            "ops/s",
        ),
    );

    let start = Instant::now();
    for i in 0..sizes.gets {
        store
            .get(&format!("/{tag}/create/{:08}", i % sizes.creates))
            .await
            .expect("get")
            .expect("present");
    }
    results.insert(
        "get",
        (
            per_second(sizes.gets, start.elapsed()),
            "throughput",
            "ops/s",
        ),
    );

    let list_value = value_of(500);
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let store = store.clone();
            let list_value = list_value.clone();
            let tag = tag.to_string();
            tokio::spawn(async move {
                for i in (w..sizes.list_objects).step_by(WRITERS) {
                    store
                        .create(&format!("/{tag}/list/{i:08}"), list_value.clone(), None)
                        .await
                        .expect("create");
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let mut samples = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let page = store
            .list(&format!("/{tag}/list/"), Default::default())
            .await
            .expect("list");
        assert_eq!(page.items.len(), sizes.list_objects);
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    results.insert("list", (median(samples), "latency_median", "ms"));

    let revision = store.current_revision().await.expect("revision");
    let mut watch = store
        .watch(&format!("/{tag}/watch/"), revision)
        .await
        .expect("watch");
    let mut samples = Vec::new();
    for i in 0..sizes.watch_events {
        let start = Instant::now();
        store
            .create(&format!("/{tag}/watch/{i:08}"), value.clone(), None)
            .await
            .expect("create");
        while let WatchEvent::Progress(_) =
            watch.next().await.expect("watch open").expect("watch ok")
        {}
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    results.insert("watch-latency", (median(samples), "latency_median", "us"));
    results
}

async fn bench_raw_etcd(endpoints: &[String], sizes: Sizes, tag: &str) -> Results {
    let client = Client::connect(endpoints, None)
        .await
        .expect("connect etcd");
    let mut results = Results::new();
    let value = value_of(1000).to_vec();
    let create = |client: &Client, key: String, value: Vec<u8>| {
        let mut kv = client
            .kv_client()
            .max_decoding_message_size(i32::MAX as usize);
        async move {
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value, None)]);
            let response = kv.txn(txn).await.expect("txn");
            assert!(response.succeeded());
            response.header().expect("header").revision()
        }
    };

    let start = Instant::now();
    for i in 0..sizes.creates {
        create(&client, format!("/{tag}/create/{i:08}"), value.clone()).await;
    }
    results.insert(
        "create-1w",
        (
            per_second(sizes.creates, start.elapsed()),
            "throughput",
            "ops/s",
        ),
    );

    let mut revisions = Vec::new();
    for w in 0..WRITERS {
        revisions.push(create(&client, format!("/{tag}/update/{w}"), value.clone()).await);
    }
    let start = Instant::now();
    let handles: Vec<_> = revisions
        .into_iter()
        .enumerate()
        .map(|(w, mut revision)| {
            let mut kv = client
                .kv_client()
                .max_decoding_message_size(i32::MAX as usize);
            let value = value.clone();
            let key = format!("/{tag}/update/{w}");
            tokio::spawn(async move {
                for _ in 0..sizes.updates_per_writer {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            revision,
                        )])
                        .and_then([TxnOp::put(key.clone(), value.clone(), None)]);
                    let response = kv.txn(txn).await.expect("txn");
                    assert!(response.succeeded());
                    revision = response.header().expect("header").revision();
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("writer");
    }
    results.insert(
        "update-16w",
        (
            per_second(WRITERS * sizes.updates_per_writer, start.elapsed()),
            "throughput",
            "ops/s",
        ),
    );

    let mut kv = client
        .kv_client()
        .max_decoding_message_size(i32::MAX as usize);
    let start = Instant::now();
    for i in 0..sizes.gets {
        let response = kv
            .get(format!("/{tag}/create/{:08}", i % sizes.creates), None)
            .await
            .expect("get");
        assert_eq!(response.kvs().len(), 1);
    }
    results.insert(
        "get",
        (
            per_second(sizes.gets, start.elapsed()),
            "throughput",
            "ops/s",
        ),
    );

    let list_value = value_of(500).to_vec();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let client = client.clone();
            let list_value = list_value.clone();
            let tag = tag.to_string();
            tokio::spawn(async move {
                for i in (w..sizes.list_objects).step_by(WRITERS) {
                    create(&client, format!("/{tag}/list/{i:08}"), list_value.clone()).await;
                }
            })
        })
        .collect();
    for writer in writers {
        writer.await.expect("writer");
    }
    let mut samples = Vec::new();
    for _ in 0..3 {
        let start = Instant::now();
        let response = kv
            .get(
                format!("/{tag}/list/"),
                Some(GetOptions::new().with_prefix()),
            )
            .await
            .expect("list");
        assert_eq!(response.kvs().len(), sizes.list_objects);
        samples.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    results.insert("list", (median(samples), "latency_median", "ms"));

    let mut watch = client
        .watch_client()
        .watch(
            format!("/{tag}/watch/"),
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .expect("watch");
    let mut samples = Vec::new();
    for i in 0..sizes.watch_events {
        let start = Instant::now();
        create(&client, format!("/{tag}/watch/{i:08}"), value.clone()).await;
        loop {
            let message = watch
                .message()
                .await
                .expect("watch ok")
                .expect("watch open");
            if !message.events().is_empty() {
                break;
            }
        }
        samples.push(start.elapsed().as_secs_f64() * 1e6);
    }
    results.insert("watch-latency", (median(samples), "latency_median", "us"));
    results
}

fn print(backend: &str, results: &Results, baseline: Option<&Results>) {
    for (op, (value, metric, unit)) in results {
        Figure {
            bench: BENCH,
            case: format!("{backend}/{op}"),
            metric,
            value: *value,
            unit,
            baseline: baseline.and_then(|b| b.get(op)).map(|(v, _, _)| *v),
        }
        .print();
    }
}

/// Runs the harness with the command line's arguments.
#[tokio::main]
pub async fn main() {
    let mode = Mode::from_args();
    let sizes = Sizes {
        creates: mode.pick(200, 2000),
        updates_per_writer: mode.pick(10, 100),
        gets: mode.pick(2000, 20000),
        list_objects: mode.pick(1000, 10_000),
        watch_events: mode.pick(50, 500),
    };
    let run = format!("bench-{}", std::process::id());

    let memory = bench_store(Arc::new(MemoryStore::new()), sizes, &run).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let embedded_store = EmbeddedStore::open(
        dir.path().join("bench.redb"),
        EmbeddedStoreConfig::default(),
    )
    .expect("open");
    let embedded = bench_store(Arc::new(embedded_store), sizes, &run).await;

    let etcd = etcd_endpoints().await;
    let (raw, via_store) = match &etcd {
        Some((endpoints, _guard)) => {
            let raw = bench_raw_etcd(endpoints, sizes, &format!("{run}-raw")).await;
            let config = EtcdStoreConfig::new(endpoints.iter().cloned())
                .with_prefix(format!("/{run}-store"));
            let store = EtcdStore::connect(config).await.expect("connect EtcdStore");
            (
                Some(raw),
                Some(bench_store(Arc::new(store), sizes, "s").await),
            )
        }
        None => (None, None),
    };
    print("memory", &memory, None);
    print("embedded", &embedded, raw.as_ref());
    if let (Some(raw), Some(via_store)) = (&raw, &via_store) {
        print("etcd-store", via_store, Some(raw));
        print("etcd-raw", raw, None);
    }
}
