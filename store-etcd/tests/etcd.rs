//! `EtcdStore` against a real etcd (`CAPSTAN_ETCD_ENDPOINTS`): the conformance kit and the model
//! test, each case in a fresh key prefix. They run in one test function because compaction is
//! etcd-wide and would disturb concurrent cases.

use capstan_core::service_gate::service_from_env;
use capstan_core::store::testkit::{
    check_against_model, run_conformance, ConformanceConfig, ModelOp,
};
use capstan_core::store::{EncryptedStore, EncryptionKeys, Store, WatchEvent};
use capstan_store_etcd::testkit::LocalEtcd;
use capstan_store_etcd::{EtcdStore, EtcdStoreConfig};
use futures::StreamExt;
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
        ..Default::default()
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

/// Secrets through an `EncryptedStore` over etcd: etcd holds only ciphertext under the
/// encrypting key's name, reads give the plaintext back, and a rotation re-encrypts them.
#[tokio::test]
async fn secrets_in_etcd_are_encrypted_at_rest_and_rotate() {
    let Some(endpoints) = endpoints() else { return };
    let prefix = format!("/capstan-encryption-test-{}", std::process::id());
    let etcd: Arc<dyn Store> = Arc::new(
        EtcdStore::connect(EtcdStoreConfig::new(endpoints.iter().cloned()).with_prefix(&prefix))
            .await
            .unwrap(),
    );
    let old = "old:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let new = "new:HxwdHhscGRoXGBUWExQREg8QDQ4LDAkKBwgFBgMEAQI=";
    let store = EncryptedStore::new(etcd.clone(), EncryptionKeys::parse(old).unwrap());
    let key = "/core/secrets/default/db";
    let plaintext = br#"{"kind":"Secret","data":{"password":"aHVudGVyMg=="}}"#;
    store
        .create(key, bytes::Bytes::from_static(plaintext), None)
        .await
        .unwrap();
    store
        .create("/core/configmaps/default/c", "visible".into(), None)
        .await
        .unwrap();
    let mut raw = etcd_client::Client::connect(&endpoints, None)
        .await
        .unwrap();
    let raw_value = |raw: &etcd_client::Client, key: String| {
        let mut raw = raw.clone();
        async move {
            let got = raw.get(key, None).await.unwrap();
            got.kvs()[0].value().to_vec()
        }
    };
    let stored = raw_value(&raw, format!("{prefix}{key}")).await;
    assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:old:"));
    assert!(
        !stored.windows(8).any(|w| w == b"aHVudGVy"),
        "plaintext in etcd"
    );
    assert_eq!(
        raw_value(&raw, format!("{prefix}/core/configmaps/default/c")).await,
        b"visible"
    );
    assert_eq!(store.get(key).await.unwrap().unwrap().value, &plaintext[..]);

    // Rotation: the new key first, the old one still known; rewrite re-encrypts.
    let rotated = EncryptedStore::new(
        etcd.clone(),
        EncryptionKeys::parse(&format!("{new}\n{old}")).unwrap(),
    );
    assert_eq!(rotated.rewrite().await.unwrap(), 1);
    let stored = raw_value(&raw, format!("{prefix}{key}")).await;
    assert!(stored.starts_with(b"k8s:enc:aesgcm:v1:new:"));
    assert_eq!(
        rotated.get(key).await.unwrap().unwrap().value,
        &plaintext[..]
    );
    // The old key alone can no longer read it.
    assert!(store.get(key).await.is_err());
    raw.delete(
        prefix,
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn etcd_store_lists_beyond_the_grpc_default_message_size() {
    let Some(endpoints) = endpoints() else { return };
    let store = fresh_store(&endpoints).await;
    let big = bytes::Bytes::from(vec![b'x'; 1024 * 1024]);
    for i in 0..6 {
        store
            .create(&format!("/big/{i}"), big.clone(), None)
            .await
            .unwrap();
    }
    let page = store.list("/big/", Default::default()).await.unwrap();
    assert_eq!(
        page.items.len(),
        6,
        "a 6 MiB listing must not hit gRPC's 4 MiB limit"
    );
}

async fn eventually<T, F, Fut>(what: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, capstan_core::store::StoreError>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match attempt().await {
            Ok(value) => return value,
            Err(err) if tokio::time::Instant::now() < deadline => {
                assert!(
                    err.is_retryable(),
                    "{what}: a transport failure must be retryable, got {err}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(err) => panic!("{what}: still failing after 30 s: {err}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_store_reconnects_across_an_etcd_restart() {
    // Needs the etcd binary itself (the test restarts its own etcd), not just an endpoint.
    if service_from_env("CAPSTAN_ETCD_ENDPOINTS", "etcd").is_none() {
        return;
    }
    // Below the ephemeral port range (32768+), so no client connection holds it.
    let client_port = 24000 + (std::process::id() % 2000) as u16 * 2;
    let mut etcd = LocalEtcd::start(client_port)
        .await
        .expect("start a local etcd");
    let endpoint = etcd.endpoint();
    let config = EtcdStoreConfig {
        progress_interval: Duration::from_millis(300),
        ..EtcdStoreConfig::new([endpoint.clone()])
    };
    let store = eventually("connect", || EtcdStore::connect(config.clone())).await;
    let first = eventually("first write", || store.create("/r/a", "1".into(), None)).await;
    let mut watch = store.watch("/r/", first.mod_revision).await.unwrap();

    etcd.stop();
    // The open watch ends with a retryable error instead of hanging.
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match watch.next().await {
                Some(Ok(_)) => continue,
                Some(Err(err)) => return Some(err),
                None => return None,
            }
        }
    })
    .await
    .expect("the watch must notice that etcd went away");
    assert!(ended.as_ref().is_none_or(|e| e.is_retryable()), "{ended:?}");
    assert!(store.get("/r/a").await.is_err(), "etcd is down");

    etcd.restart().await.expect("restart etcd");
    let second = eventually("write after restart", || {
        store.create("/r/b", "2".into(), None)
    })
    .await;
    assert!(second.mod_revision > first.mod_revision);
    assert_eq!(
        store.get("/r/a").await.unwrap().unwrap(),
        first,
        "data survives the restart"
    );
    let mut resumed = eventually("re-watch", || store.watch("/r/", first.mod_revision)).await;
    let event = loop {
        match resumed.next().await.unwrap().unwrap() {
            WatchEvent::Progress(_) => continue,
            event => break event,
        }
    };
    assert_eq!(
        event.key(),
        Some("/r/b"),
        "resuming from the last revision misses nothing"
    );
}
