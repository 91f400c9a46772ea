//! An orchestrator embedded in your own process: the API server on an in-memory store, the
//! controller manager, the scheduler and one node agent running pods on the simulated
//! runtime — then a Deployment created with the typed kube client, waited on until all its
//! replicas are available. Nothing listens on a port: clients call the API in-process.
//!
//! `cargo run -p capstan-examples --example embed`

use capstan_core::apiserver::ApiServer;
use capstan_core::controller::{ControllerManager, ControllerManagerConfig};
use capstan_core::node::{NodeAgent, NodeConfig};
use capstan_core::runtime::sim::SimRuntime;
use capstan_core::scheduler::{Scheduler, SchedulerConfig};
use capstan_core::store::MemoryStore;
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, PostParams};
use std::sync::Arc;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The control plane, in this process.
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await?;
    let controllers =
        ControllerManager::in_process(&server, ControllerManagerConfig::default()).start();
    let scheduler = Scheduler::in_process(&server, SchedulerConfig::default()).start();
    // One node whose containers are simulated (swap in capstan_runtime_docker for real ones).
    let node = NodeAgent::new(
        server.client(),
        Arc::new(SimRuntime::default()),
        NodeConfig::new("node-1"),
    )
    .start()
    .await?;

    // Any kube-rs code works against it.
    let deployments: Api<Deployment> = Api::default_namespaced(server.client());
    let deployment: Deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hello"},
        "spec": {
            "replicas": 3,
            "selector": {"matchLabels": {"app": "hello"}},
            "template": {
                "metadata": {"labels": {"app": "hello"}},
                "spec": {"containers": [{"name": "hello", "image": "hello:1.0"}]},
            },
        },
    }))?;
    deployments
        .create(&PostParams::default(), &deployment)
        .await?;
    let available = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let status = deployments.get("hello").await?.status.unwrap_or_default();
            if status.available_replicas == Some(3) {
                return Ok::<_, kube::Error>(status);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await??;
    println!(
        "deployment hello: {} of 3 replicas available (observed generation {})",
        available.available_replicas.unwrap_or_default(),
        available.observed_generation.unwrap_or_default()
    );

    node.stop().await;
    scheduler.stop().await;
    controllers.stop().await;
    Ok(())
}
