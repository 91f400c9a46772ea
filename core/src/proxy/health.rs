//! What a proxy reports about its last sync, and the `/healthz` endpoint that serves it, as
//! kube-proxy's does: 200 with the last sync time while healthy, 503 otherwise.

use axum::http::StatusCode;
use axum::response::IntoResponse;
use std::time::SystemTime;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The state of a proxy's syncing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyHealth {
    /// When the last successful sync finished.
    pub last_synced: Option<SystemTime>,
    /// The error of the last sync, if it failed.
    pub last_error: Option<String>,
    /// Successful syncs so far.
    pub syncs: u64,
    /// Service ports in the last table synced.
    pub service_ports: usize,
}

impl ProxyHealth {
    /// Healthy: synced at least once and the last attempt succeeded.
    pub fn is_healthy(&self) -> bool {
        self.last_synced.is_some() && self.last_error.is_none()
    }
}

/// The `/healthz` body: kube-proxy's `lastUpdated` and `currentTime`, and what Capstan adds.
fn health_body(health: &ProxyHealth) -> serde_json::Value {
    serde_json::json!({
        "lastUpdated": health.last_synced.map(crate::runtime::rfc3339),
        "currentTime": crate::runtime::rfc3339(SystemTime::now()),
        "syncs": health.syncs,
        "servicePorts": health.service_ports,
        "lastError": health.last_error,
    })
}

/// Serves `GET /healthz` on `listener` from `health` until `stop`: 200 and the JSON body
/// while healthy, 503 and the same body (naming the last error) otherwise.
pub(crate) async fn serve_health(
    listener: tokio::net::TcpListener,
    health: watch::Receiver<ProxyHealth>,
    stop: CancellationToken,
) {
    let router = axum::Router::new().route(
        "/healthz",
        axum::routing::get(move || {
            let health = health.borrow().clone();
            async move {
                let status = if health.is_healthy() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                let body = health_body(&health).to_string();
                let json = [(axum::http::header::CONTENT_TYPE, "application/json")];
                (status, json, body).into_response()
            }
        }),
    );
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await;
    if let Err(err) = served {
        tracing::warn!(error = %err, "proxy health endpoint stopped");
    }
}
