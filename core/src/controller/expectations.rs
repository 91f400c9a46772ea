//! Expectations: the creations and deletions a controller has asked for but not yet seen in its
//! informer. Until they are observed (or time out), the controller must not act on the cached
//! count again — otherwise a second reconcile, running before the cache catches up, would create
//! or delete the same pods twice.

use super::ObjectKey;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long unobserved expectations hold before the controller acts anyway.
const EXPECTATION_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Pending {
    adds: i64,
    deletes: i64,
    since: Instant,
}

/// Pending creations and deletions per controller key.
#[derive(Debug, Default)]
pub struct Expectations {
    pending: Mutex<HashMap<ObjectKey, Pending>>,
}

impl Expectations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectKey, Pending>> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records that `adds` creations and `deletes` deletions were requested for `key`.
    pub fn expect(&self, key: &ObjectKey, adds: i64, deletes: i64) {
        self.lock().insert(
            key.clone(),
            Pending {
                adds,
                deletes,
                since: Instant::now(),
            },
        );
    }

    /// A requested creation was seen (or failed, so will never be seen).
    pub fn creation_observed(&self, key: &ObjectKey) {
        if let Some(p) = self.lock().get_mut(key) {
            p.adds -= 1;
        }
    }

    /// A requested deletion was seen (or failed).
    pub fn deletion_observed(&self, key: &ObjectKey) {
        if let Some(p) = self.lock().get_mut(key) {
            p.deletes -= 1;
        }
    }

    /// Whether the controller may act on its cache for `key`: nothing is pending, or what is
    /// pending timed out.
    pub fn satisfied(&self, key: &ObjectKey) -> bool {
        match self.lock().get(key) {
            None => true,
            Some(p) => (p.adds <= 0 && p.deletes <= 0) || p.since.elapsed() > EXPECTATION_TIMEOUT,
        }
    }

    /// Forgets `key` (its owner is gone).
    pub fn forget(&self, key: &ObjectKey) {
        self.lock().remove(key);
    }
}
