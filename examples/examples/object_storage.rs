//! Embedding Capstan's storage layer: a durable embedded store, the built-in kinds, typed
//! object storage, a field-selected listing and a watch.
//!
//! `cargo run -p capstan-examples --example object_storage [DIR]`

use capstan_core::registry::Registry;
use capstan_core::selector::FieldSelector;
use capstan_core::storage::{ObjectEvent, ObjectStorage};
use capstan_core::store::{EmbeddedStore, EmbeddedStoreConfig, Store};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::sync::Arc;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| {
        std::env::temp_dir()
            .join("capstan-example")
            .display()
            .to_string()
    });
    std::fs::create_dir_all(&dir)?;
    let store: Arc<dyn Store> = Arc::new(EmbeddedStore::open(
        format!("{dir}/store.redb"),
        EmbeddedStoreConfig::default(),
    )?);
    let registry = Registry::with_builtins();
    let pods = registry.resolve("po")[0].clone();
    let storage = ObjectStorage::new(store.clone());

    let mut events = storage
        .watch(&pods, Some("default"), store.current_revision().await?)
        .await?;
    for (name, node) in [("web", Some("node-1")), ("batch", None)] {
        let pod = Pod {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}-")),
                namespace: Some("default".into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: node.map(str::to_string),
                containers: vec![Container {
                    name: "main".into(),
                    image: Some("busybox:1.36".into()),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let created: Pod = storage.create_as(&pods, &pod).await?;
        println!(
            "created {} at resourceVersion {}",
            created.metadata.name.unwrap_or_default(),
            created.metadata.resource_version.unwrap_or_default()
        );
    }
    let unscheduled = FieldSelector::parse("spec.nodeName=")?;
    let listed = storage
        .list(&pods, Some("default"), None, None, None)
        .await?;
    for pod in listed
        .items
        .iter()
        .filter(|p| unscheduled.matches(|f| pods.field_value(p, f)))
    {
        println!("unscheduled: {}", pod["metadata"]["name"]);
    }
    for _ in 0..2 {
        if let Some(Ok(ObjectEvent::Added(pod))) = events.next().await {
            println!("watch saw ADDED {}", pod["metadata"]["name"]);
        }
    }
    Ok(())
}
