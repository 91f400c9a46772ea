//! Errors of typed object storage.

use crate::store::StoreError;

/// What an [`ObjectStorage`](super::ObjectStorage) operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// No such object. Fatal for this request.
    #[error("{resource} {name:?} not found")]
    NotFound {
        /// `plural.group`.
        resource: String,
        /// The object's name.
        name: String,
    },
    /// An object with this name exists. Fatal for this request.
    #[error("{resource} {name:?} already exists")]
    AlreadyExists {
        /// `plural.group`.
        resource: String,
        /// The object's name.
        name: String,
    },
    /// The object changed since it was read. Retry after re-reading.
    #[error("Operation cannot be fulfilled on {resource} {name:?}: the object has been modified; please apply your changes to the latest version and try again")]
    Conflict {
        /// `plural.group`.
        resource: String,
        /// The object's name.
        name: String,
    },
    /// The object is unusable (missing name, bad namespace, not an object). Fatal.
    #[error("{field}: {message}")]
    Invalid {
        /// Path of the offending field, e.g. `metadata.name`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// Stored bytes do not decode. Fatal; the data needs attention.
    #[error("corrupt object at {key}: {reason}")]
    Corrupt {
        /// The store key.
        key: String,
        /// What is wrong.
        reason: String,
    },
    /// The store failed (see [`StoreError::is_retryable`]).
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl StorageError {
    pub(crate) fn invalid(field: &str, message: &str) -> Self {
        StorageError::Invalid {
            field: field.to_string(),
            message: message.to_string(),
        }
    }
}
