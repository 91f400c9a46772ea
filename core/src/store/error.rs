//! Errors of the [`Store`](super::Store) contract, shared by every backend.

use super::{KeyValue, LeaseId, Revision};

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The key does not exist. Fatal for this request.
    #[error("key {key:?} not found")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A create found the key already present. Fatal for this request.
    #[error("key {key:?} already exists")]
    AlreadyExists {
        /// The key asked for.
        key: String,
    },
    /// A compare-and-swap found another revision. Retry after re-reading `current`.
    #[error("key {key:?} was modified concurrently (current revision {})", .current.as_ref().map_or(0, |c| c.mod_revision))]
    Conflict {
        /// The key asked for.
        key: String,
        /// The value now stored (`None` if the key is gone).
        current: Option<Box<KeyValue>>,
    },
    /// The requested revision is older than the compacted history. Fatal; relist.
    #[error("revision {requested} has been compacted (oldest retained: {compacted})")]
    Compacted {
        /// The revision asked for.
        requested: Revision,
        /// The compaction point.
        compacted: Revision,
    },
    /// The requested revision lies in the future. Fatal for this request.
    #[error("revision {requested} is newer than the current revision {current}")]
    FutureRevision {
        /// The revision asked for.
        requested: Revision,
        /// The current revision.
        current: Revision,
    },
    /// The key is malformed. Fatal.
    #[error("invalid key {key:?}: {reason}")]
    InvalidKey {
        /// The offending key (truncated for display).
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An argument is out of range (a zero lease TTL, a compaction beyond the current revision).
    /// Fatal.
    #[error("invalid argument: {reason}")]
    InvalidArgument {
        /// What is wrong.
        reason: String,
    },
    /// The value exceeds the backend's size limit. Fatal.
    #[error("value for key {key:?} is {size} bytes, over the limit of {limit}")]
    ValueTooLarge {
        /// The key.
        key: String,
        /// The value size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The lease does not exist (never granted, revoked, or expired). Fatal.
    #[error("lease {0} not found")]
    LeaseNotFound(LeaseId),
    /// A watcher fell too far behind and was closed. Retryable: watch again after `revision`.
    #[error("watch fell behind and was closed; resume after revision {revision}")]
    WatchLagged {
        /// The last revision delivered to this watcher.
        revision: Revision,
    },
    /// Stored bytes could not be decoded. Fatal; the data needs attention.
    #[error("corrupt stored data at {location}: {reason}")]
    Corrupt {
        /// Where the bad data was found.
        location: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend is unreachable or failed transiently. Retryable.
    #[error("store unavailable: {0}")]
    Unavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The backend failed in a way that retrying will not fix.
    #[error("store failure: {0}")]
    Backend(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl StoreError {
    /// Whether retrying the same request later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict { .. }
                | StoreError::WatchLagged { .. }
                | StoreError::Unavailable(_)
        )
    }

    /// Wraps any backend error as [`StoreError::Backend`].
    pub fn backend(err: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        StoreError::Backend(err.into())
    }
}
