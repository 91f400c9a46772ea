//! The memory store against the full conformance kit and the model test.

use capstan_core::store::memory::MemoryStoreConfig;
use capstan_core::store::testkit::{run_conformance, run_model_test, ConformanceConfig};
use capstan_core::store::{EncryptedStore, EncryptionKeys, MemoryStore, Store, StoreError};
use std::sync::Arc;
use std::time::Duration;

fn fast_config() -> MemoryStoreConfig {
    MemoryStoreConfig {
        progress_interval: Duration::from_millis(200),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_conformance() {
    let config = ConformanceConfig {
        progress_within: Duration::from_secs(2),
        lease_ttl: Duration::from_millis(500),
        expiry_slack: Duration::from_secs(2),
        ..Default::default()
    };
    run_conformance(
        || async { Arc::new(MemoryStore::with_config(fast_config())) as Arc<dyn Store> },
        config,
    )
    .await;
}

#[test]
fn memory_store_model() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    run_model_test(
        &runtime,
        || async { Arc::new(MemoryStore::new()) as Arc<dyn Store> },
        200,
    );
}

/// Encryption at rest keeps every Store contract: the kit over an `EncryptedStore` sealing all
/// values of a memory store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_store_conformance() {
    let keys = EncryptionKeys::parse("k1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
    let seal_all = |keys: EncryptionKeys| {
        let inner = Arc::new(MemoryStore::with_config(fast_config())) as Arc<dyn Store>;
        EncryptedStore::with_prefixes(inner, keys, vec!["/".into()])
    };
    let limit = seal_all(keys.clone()).max_value_bytes();
    let config = ConformanceConfig {
        progress_within: Duration::from_secs(2),
        lease_ttl: Duration::from_millis(500),
        expiry_slack: Duration::from_secs(2),
        max_value_bytes: limit,
    };
    run_conformance(
        || {
            let store = Arc::new(seal_all(keys.clone())) as Arc<dyn Store>;
            async move { store }
        },
        config,
    )
    .await;
    // One byte more than its envelope leaves room for: refused, naming the limit.
    let store = seal_all(keys);
    let over = bytes::Bytes::from(vec![b'z'; limit + 1]);
    match store.create("/k", over, None).await {
        Err(StoreError::ValueTooLarge { limit: named, .. }) => assert_eq!(named, limit),
        other => panic!("{other:?}"),
    }
    assert_eq!(store.get("/k").await.unwrap(), None);
}
