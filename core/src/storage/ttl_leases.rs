//! Store leases for kinds whose objects expire (Events): one lease is shared by every object
//! written within a minute, as kube-apiserver does, so a burst of Events costs one lease grant.
//! Each lease lasts the TTL plus that reuse window, so every object lives at least its TTL.

use crate::store::{LeaseId, Store, StoreError};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

/// How long a granted lease is reused for new writes at most (a tenth of the TTL for short
/// TTLs).
const REUSE: Duration = Duration::from_secs(60);

fn reuse_for(ttl: Duration) -> Duration {
    REUSE.min(ttl / 10)
}

/// Recently granted leases by TTL.
#[derive(Default)]
pub(crate) struct TtlLeases {
    granted: Mutex<HashMap<Duration, (LeaseId, Instant)>>,
}

impl TtlLeases {
    /// A lease under which an object lives at least `ttl` from now.
    pub(crate) async fn lease_for(
        &self,
        store: &Arc<dyn Store>,
        ttl: Duration,
    ) -> Result<LeaseId, StoreError> {
        let mut granted = self.granted.lock().await;
        if let Some((lease, at)) = granted.get(&ttl) {
            if at.elapsed() < reuse_for(ttl) {
                return Ok(*lease);
            }
        }
        let lease = store.grant_lease(ttl + reuse_for(ttl)).await?;
        granted.insert(ttl, (lease, Instant::now()));
        Ok(lease)
    }
}
