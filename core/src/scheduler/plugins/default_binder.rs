//! DefaultBinder: writes the placement through the `pods/binding` subresource.

use crate::scheduler::framework::{BindPlugin, Plugin, Rejection};
use crate::scheduler::PodInfo;

/// Its name.
pub const NAME: &str = "DefaultBinder";

/// The DefaultBinder plugin.
pub struct DefaultBinder {
    client: kube::Client,
}

impl DefaultBinder {
    /// A binder writing through `client`.
    pub fn new(client: kube::Client) -> Self {
        DefaultBinder { client }
    }
}

impl Plugin for DefaultBinder {
    fn name(&self) -> &str {
        NAME
    }
    fn as_bind(&self) -> Option<&dyn BindPlugin> {
        Some(self)
    }
}

#[async_trait::async_trait]
impl BindPlugin for DefaultBinder {
    async fn bind(&self, pod: &PodInfo, node: &str) -> Result<bool, Rejection> {
        let namespace = pod.key.namespace_or_empty();
        let name = &pod.key.name;
        let binding = serde_json::json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": namespace, "uid": pod.uid},
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        });
        let body =
            serde_json::to_vec(&binding).map_err(|e| Rejection::error(NAME, e.to_string()))?;
        let request = axum::http::Request::post(format!(
            "/api/v1/namespaces/{namespace}/pods/{name}/binding"
        ))
        .header("content-type", "application/json")
        .body(body)
        .map_err(|e| Rejection::error(NAME, e.to_string()))?;
        self.client
            .request::<serde_json::Value>(request)
            .await
            .map(|_| true)
            .map_err(|e| Rejection::error(NAME, e.to_string()))
    }
}
