//! A kind of your own, served by an embedded API and reconciled by your own controller.
//!
//! `Greeting` is a Rust struct (kube's `CustomResource` derive, schema from schemars),
//! registered with the API server beside the built-in kinds. A kube-rs `Controller` — the
//! same code would run against any Kubernetes — keeps one ConfigMap per Greeting, owned by
//! it: created with the message, updated when the message changes, and removed by the
//! garbage collector when the Greeting is deleted.
//!
//! `cargo run -p capstan-examples --example custom_resource`

use capstan_core::apiserver::ApiServer;
use capstan_core::controller::{ControllerManager, ControllerManagerConfig};
use capstan_core::registry::{Registry, ResourceKind};
use capstan_core::store::MemoryStore;
use futures::StreamExt;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{CustomResource, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

/// What a Greeting asks for: a message to publish.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "example.capstan.dev",
    version = "v1",
    kind = "Greeting",
    namespaced
)]
pub struct GreetingSpec {
    /// The text the ConfigMap carries.
    pub message: String,
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
enum ReconcileError {
    #[error(transparent)]
    Api(#[from] kube::Error),
}

/// Makes the Greeting's ConfigMap say its message (server-side, idempotent).
async fn reconcile(
    greeting: Arc<Greeting>,
    client: Arc<kube::Client>,
) -> Result<Action, ReconcileError> {
    let namespace = greeting.namespace().unwrap_or_default();
    let name = format!("{}-greeting", greeting.name_any());
    let owner = greeting
        .controller_owner_ref(&())
        .expect("a stored Greeting has a name and uid");
    let mut config_map = ConfigMap::default();
    config_map.metadata.name = Some(name.clone());
    config_map.metadata.owner_references = Some(vec![owner]);
    config_map.data = Some([("message".to_string(), greeting.spec.message.clone())].into());
    let config_maps: Api<ConfigMap> = Api::namespaced((*client).clone(), &namespace);
    match config_maps
        .create(&PostParams::default(), &config_map)
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {
            let patch = serde_json::json!({"data": {"message": greeting.spec.message}});
            config_maps
                .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        Err(err) => return Err(err.into()),
    }
    Ok(Action::await_change())
}

fn error_policy(_: Arc<Greeting>, error: &ReconcileError, _: Arc<kube::Client>) -> Action {
    eprintln!("reconcile failed: {error}");
    Action::requeue(Duration::from_secs(1))
}

/// Polls until `read` gives `Some`, for at most ten seconds.
async fn eventually<T, F, Fut>(what: &str, mut read: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    for _ in 0..200 {
        if let Some(value) = read().await {
            return Ok(value);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("timed out waiting until {what}"))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Serve the user kind beside the built-in ones.
    let mut registry = Registry::with_builtins();
    registry.register(ResourceKind::of::<Greeting>().with_schema::<Greeting>())?;
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .registry(registry)
        .build()
        .await?;
    // The built-in controllers, for the garbage collector.
    let controllers =
        ControllerManager::in_process(&server, ControllerManagerConfig::default()).start();

    // The user's controller: plain kube-rs.
    let client = server.client();
    let greetings: Api<Greeting> = Api::default_namespaced(client.clone());
    let config_maps: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let controller = tokio::spawn(
        Controller::new(greetings.clone(), watcher::Config::default())
            .owns(config_maps.clone(), watcher::Config::default())
            .run(reconcile, error_policy, Arc::new(client.clone()))
            .for_each(|_| async {}),
    );

    let hello = Greeting::new(
        "hello",
        GreetingSpec {
            message: "hello, world".into(),
        },
    );
    greetings.create(&PostParams::default(), &hello).await?;
    let said = eventually("the ConfigMap exists", || async {
        config_maps
            .get("hello-greeting")
            .await
            .ok()?
            .data?
            .remove("message")
    })
    .await?;
    println!("hello-greeting says {said:?}");
    assert_eq!(said, "hello, world");

    greetings
        .patch(
            "hello",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"message": "hello again"}})),
        )
        .await?;
    let said = eventually("the ConfigMap follows the message", || async {
        let message = config_maps
            .get("hello-greeting")
            .await
            .ok()?
            .data?
            .remove("message")?;
        (message == "hello again").then_some(message)
    })
    .await?;
    println!("hello-greeting now says {said:?}");

    greetings.delete("hello", &DeleteParams::default()).await?;
    eventually("the garbage collector removes the ConfigMap", || async {
        config_maps
            .get_opt("hello-greeting")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await?;
    println!("deleting the Greeting removed its ConfigMap");

    controller.abort();
    controllers.stop().await;
    Ok(())
}
