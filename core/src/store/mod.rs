//! The `Store` trait: an etcd-shaped, byte-oriented, revisioned key-value store.
//!
//! This module owns the storage contract every backend implements (memory, embedded, etcd, or a
//! third party's) and the backends that live in core. It knows nothing about Kubernetes objects:
//! keys are strings, values are bytes, and every change gets a store-wide revision. The typed
//! layer on top lives in [`crate::storage`]. The API server is the only component that may hold a
//! `Store`; everything else goes through the API.
//!
//! # Contract
//!
//! - Every successful write (create, update, delete, lease-driven delete) gets a fresh revision,
//!   strictly greater than every revision before it. A key's `mod_revision` is the revision of
//!   its last change; its `create_revision` that of its creation.
//! - [`Store::list`] reads a consistent snapshot at one revision (the current one, or a past one
//!   still retained). Continuing a listing with the page's revision and the last key as
//!   `start_after` yields exactly the keys of that snapshot, whatever is written meanwhile.
//! - [`Store::watch`] delivers, in revision order, every change with revision greater than
//!   `after_revision` to keys under the prefix, each with the previous value, and interleaves
//!   [`WatchEvent::Progress`] notifications: a progress at revision R promises no further event
//!   at or below R. If history at or below the requested point has been compacted the call fails
//!   with [`StoreError::Compacted`]. A consumer that cannot keep up gets
//!   [`StoreError::WatchLagged`] as the last item, and resumes with a new watch.
//! - After [`Store::compact`] at revision C, lists at revisions below C and watches after
//!   revisions below C fail with `Compacted`; everything at or after C is retained.
//! - Keys attached to a lease are deleted (with delete events) when the lease expires or is
//!   revoked.
//! - Implementations never panic on any input, including corrupt stored bytes.

pub mod encrypted;
mod error;
mod event;
mod key;
mod lease_table;
pub mod memory;
mod revision_view;
mod watch_hub;

pub mod embedded;
#[cfg(feature = "testkit")]
pub mod testkit;

pub use embedded::{EmbeddedStore, EmbeddedStoreConfig};
pub use encrypted::{EncryptedStore, EncryptionKeys};
pub use error::StoreError;
pub use event::{WatchEvent, WatchStream};
pub use key::{validate_key, validate_value, MAX_KEY_BYTES, MAX_VALUE_BYTES};
pub use memory::MemoryStore;

pub(crate) use lease_table::LeaseTable;
pub(crate) use revision_view::{merge_page, state_before};
pub(crate) use watch_hub::WatchHub;

use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

/// A store-wide revision. Revision 0 means "before anything was written".
pub type Revision = i64;

/// The identity of a lease granted by [`Store::grant_lease`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LeaseId(pub i64);

impl std::fmt::Display for LeaseId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// One stored key with its value and revision bookkeeping.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyValue {
    /// The full key.
    pub key: String,
    /// The stored bytes.
    pub value: Bytes,
    /// Revision at which the key was (last) created.
    pub create_revision: Revision,
    /// Revision of the last change to the key.
    pub mod_revision: Revision,
    /// Number of writes since creation (1 after create).
    pub version: i64,
    /// Lease the key is attached to, if any.
    pub lease: Option<LeaseId>,
}

/// Options of [`Store::list`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// Return at most this many keys (`None`: all of them).
    pub limit: Option<usize>,
    /// Return only keys strictly greater than this one (continuation of a previous page).
    pub start_after: Option<String>,
    /// Read the snapshot at this revision (`None`: the current revision).
    pub revision: Option<Revision>,
}

/// One page of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    /// Keys in ascending order.
    pub items: Vec<KeyValue>,
    /// The revision of the snapshot the page was read from.
    pub revision: Revision,
    /// Whether keys remain after the last one returned.
    pub more: bool,
}

/// An etcd-shaped key-value store with revisions, watches and leases. See the module docs for
/// the whole contract; [`testkit`] (feature `testkit`) checks a backend against it.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Reads one key at the current revision; `Ok(None)` if absent.
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError>;

    /// Lists keys starting with `prefix`, in key order, from one consistent snapshot.
    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage, StoreError>;

    /// Creates a key that must not exist ([`StoreError::AlreadyExists`] otherwise).
    async fn create(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue, StoreError>;

    /// Replaces a key whose `mod_revision` must equal `expected_revision`; otherwise fails with
    /// [`StoreError::Conflict`] carrying the current value, or [`StoreError::NotFound`].
    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_revision: Revision,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue, StoreError>;

    /// Deletes a key, optionally only if its `mod_revision` equals `expected_revision`, and
    /// returns its last value.
    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError>;

    /// Streams every change under `prefix` with revision greater than `after_revision`.
    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError>;

    /// The revision of the last write.
    async fn current_revision(&self) -> Result<Revision, StoreError>;

    /// Discards history before `revision` (which must not exceed the current revision).
    async fn compact(&self, revision: Revision) -> Result<(), StoreError>;

    /// Grants a lease that expires `ttl` after the last keep-alive.
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError>;

    /// Renews a lease and returns its TTL; [`StoreError::LeaseNotFound`] once it has expired.
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError>;

    /// Revokes a lease at once, deleting its keys. Revoking an unknown lease is
    /// [`StoreError::LeaseNotFound`].
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError>;
}
