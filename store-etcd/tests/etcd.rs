//! `EtcdStore` against a real etcd (`CAPSTAN_ETCD_ENDPOINTS`): the conformance kit and the model
//! test, each case in a fresh key prefix. They run in one test function because compaction is
//! etcd-wide and would disturb concurrent cases.

use capstan_core::service_gate::service_from_env;
use capstan_core::store::testkit::{
    check_against_model, run_conformance, ConformanceConfig, ModelOp,
};
use capstan_core::store::Store;
use capstan_store_etcd::{EtcdStore, EtcdStoreConfig};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

fn endpoints() -> Option<Vec<String>> {
    service_from_env("CAPSTAN_ETCD_ENDPOINTS", "etcd")
        .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
}

async fn fresh_store(endpoints: &[String]) -> Arc<dyn Store> {
    static N: AtomicUsize = AtomicUsize::new(0);
    let prefix = format!(
        "/capstan-test/{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let config = EtcdStoreConfig {
        progress_interval: Duration::from_millis(300),
        ..EtcdStoreConfig::new(endpoints.iter().cloned())
    }
    .with_prefix(prefix);
    Arc::new(EtcdStore::connect(config).await.expect("connect to etcd"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_conformance_and_model() {
    let Some(endpoints) = endpoints() else { return };
    let config = ConformanceConfig {
        progress_within: Duration::from_secs(5),
        lease_ttl: Duration::from_secs(2),
        expiry_slack: Duration::from_secs(8),
    };
    run_conformance(|| fresh_store(&endpoints), config).await;

    // The model test, with a fixed seed set of random sequences.
    use proptest::strategy::{Strategy, ValueTree};
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let strategy = proptest::collection::vec(capstan_core::store::testkit::model_op(), 1..40);
    for case in 0..40 {
        let ops: Vec<ModelOp> = strategy.new_tree(&mut runner).unwrap().current();
        let store = fresh_store(&endpoints).await;
        if let Err(err) = check_against_model(store, ops.clone()).await {
            panic!("etcd model case {case} failed: {err}\nops: {ops:?}");
        }
    }
}

#[tokio::test]
async fn etcd_store_keeps_keys_under_its_prefix() {
    let Some(endpoints) = endpoints() else { return };
    let store = EtcdStore::connect(
        EtcdStoreConfig::new(endpoints.iter().cloned()).with_prefix("/capstan-prefix-test"),
    )
    .await
    .unwrap();
    let key = format!("/core/pods/default/p{}", std::process::id());
    store.create(&key, "x".into(), None).await.unwrap();
    let mut raw = etcd_client::Client::connect(&endpoints, None)
        .await
        .unwrap();
    let got = raw
        .get(format!("/capstan-prefix-test{key}"), None)
        .await
        .unwrap();
    assert_eq!(
        got.kvs().len(),
        1,
        "the key must live under the configured prefix in etcd"
    );
    store.delete(&key, None).await.unwrap();
}
