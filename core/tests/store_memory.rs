//! The memory store against the full conformance kit and the model test.

use capstan_core::store::memory::MemoryStoreConfig;
use capstan_core::store::testkit::{run_conformance, run_model_test, ConformanceConfig};
use capstan_core::store::{MemoryStore, Store};
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
