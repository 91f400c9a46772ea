//! What a proxy reports about its last sync, as kube-proxy's `/healthz` does.

use std::time::SystemTime;

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
