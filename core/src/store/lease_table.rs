//! Lease bookkeeping for in-process backends: TTLs, deadlines and the keys attached to each
//! lease. It decides which leases have expired; deleting their keys is the backend's job.

use super::{LeaseId, StoreError};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio::time::Instant;

/// The live leases of one store.
#[derive(Default)]
pub(crate) struct LeaseTable {
    leases: HashMap<LeaseId, LeaseEntry>,
}

struct LeaseEntry {
    ttl: Duration,
    deadline: Instant,
    keys: BTreeSet<String>,
}

impl LeaseTable {
    /// A fresh, unused lease id.
    pub(crate) fn new_id(&self) -> LeaseId {
        loop {
            let id = LeaseId((uuid::Uuid::new_v4().as_u64_pair().0 >> 1) as i64);
            if id.0 != 0 && !self.leases.contains_key(&id) {
                return id;
            }
        }
    }

    /// Adds a lease that expires `ttl` from now.
    pub(crate) fn insert(&mut self, id: LeaseId, ttl: Duration) {
        let deadline = Instant::now() + ttl;
        self.leases.insert(
            id,
            LeaseEntry {
                ttl,
                deadline,
                keys: BTreeSet::new(),
            },
        );
    }

    /// Whether the lease exists and has not expired.
    pub(crate) fn is_live(&self, id: LeaseId) -> bool {
        self.leases
            .get(&id)
            .is_some_and(|l| l.deadline > Instant::now())
    }

    /// Fails with `LeaseNotFound` unless the lease is live.
    pub(crate) fn check(&self, id: Option<LeaseId>) -> Result<(), StoreError> {
        match id {
            Some(id) if !self.is_live(id) => Err(StoreError::LeaseNotFound(id)),
            _ => Ok(()),
        }
    }

    /// Renews a live lease.
    pub(crate) fn keep_alive(&mut self, id: LeaseId) -> Result<Duration, StoreError> {
        let now = Instant::now();
        match self.leases.get_mut(&id) {
            Some(lease) if lease.deadline > now => {
                lease.deadline = now + lease.ttl;
                Ok(lease.ttl)
            }
            _ => Err(StoreError::LeaseNotFound(id)),
        }
    }

    /// Removes a lease, returning the keys attached to it.
    pub(crate) fn remove(&mut self, id: LeaseId) -> Option<BTreeSet<String>> {
        self.leases.remove(&id).map(|l| l.keys)
    }

    /// Records that `key` now belongs to `new` instead of `old`.
    pub(crate) fn reattach(&mut self, key: &str, old: Option<LeaseId>, new: Option<LeaseId>) {
        if old == new {
            return;
        }
        if let Some(lease) = old.and_then(|id| self.leases.get_mut(&id)) {
            lease.keys.remove(key);
        }
        if let Some(lease) = new.and_then(|id| self.leases.get_mut(&id)) {
            lease.keys.insert(key.to_string());
        }
    }

    /// Leases whose deadline has passed.
    pub(crate) fn expired(&self) -> Vec<LeaseId> {
        let now = Instant::now();
        self.leases
            .iter()
            .filter(|(_, l)| l.deadline <= now)
            .map(|(id, _)| *id)
            .collect()
    }

    /// The TTL of a lease, if it exists.
    #[allow(dead_code)]
    pub(crate) fn ttl(&self, id: LeaseId) -> Option<Duration> {
        self.leases.get(&id).map(|l| l.ttl)
    }
}

/// Rejects a zero TTL.
pub(crate) fn validate_ttl(ttl: Duration) -> Result<(), StoreError> {
    if ttl.is_zero() {
        return Err(StoreError::InvalidArgument {
            reason: "lease TTL must be positive".into(),
        });
    }
    Ok(())
}
