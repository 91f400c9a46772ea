//! Watch events and the stream type returned by [`Store::watch`](super::Store::watch).

use super::{KeyValue, Revision, StoreError};
use futures::stream::BoxStream;

/// A stream of watch events; it ends after yielding an error.
pub type WatchStream = BoxStream<'static, Result<WatchEvent, StoreError>>;

/// One change seen by a watch, or a progress notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// A key was created.
    Created(KeyValue),
    /// A key was changed.
    Modified {
        /// The new value.
        current: KeyValue,
        /// The value before the change.
        previous: KeyValue,
    },
    /// A key was deleted.
    Deleted {
        /// The last value before deletion.
        previous: KeyValue,
        /// The revision of the deletion.
        revision: Revision,
    },
    /// Every change at or below this revision has been delivered.
    Progress(Revision),
}

impl WatchEvent {
    /// The revision of the change (or of the progress notification).
    pub fn revision(&self) -> Revision {
        match self {
            WatchEvent::Created(kv) => kv.mod_revision,
            WatchEvent::Modified { current, .. } => current.mod_revision,
            WatchEvent::Deleted { revision, .. } => *revision,
            WatchEvent::Progress(revision) => *revision,
        }
    }

    /// The key changed, or `None` for a progress notification.
    pub fn key(&self) -> Option<&str> {
        match self {
            WatchEvent::Created(kv) => Some(&kv.key),
            WatchEvent::Modified { current, .. } => Some(&current.key),
            WatchEvent::Deleted { previous, .. } => Some(&previous.key),
            WatchEvent::Progress(_) => None,
        }
    }

    /// The key's value after the change (`None` for deletions and progress).
    pub fn current(&self) -> Option<&KeyValue> {
        match self {
            WatchEvent::Created(kv) | WatchEvent::Modified { current: kv, .. } => Some(kv),
            _ => None,
        }
    }

    /// The key's value before the change (`None` for creations and progress).
    pub fn previous(&self) -> Option<&KeyValue> {
        match self {
            WatchEvent::Modified { previous, .. } | WatchEvent::Deleted { previous, .. } => {
                Some(previous)
            }
            _ => None,
        }
    }
}
