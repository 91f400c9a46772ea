//! The error of a reconcile.

/// Why a reconcile failed. Every variant is retried with the key's backoff.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// A request to the API failed (retryable: conflicts, timeouts, unavailability).
    #[error("API request failed: {0}")]
    Api(#[from] kube::Error),
    /// An object could not be converted (a bug or an object the API should have refused).
    #[error("cannot convert object: {0}")]
    Json(#[from] serde_json::Error),
    /// The object cannot be reconciled as it is; retried in case it changes.
    #[error("{0}")]
    Invalid(String),
}

impl ControllerError {
    /// Whether the error is the API's 404.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ControllerError::Api(kube::Error::Api(status)) if status.code == 404)
    }

    /// Whether the error is the API's 409 (a conflicting write or an existing object).
    pub fn is_conflict(&self) -> bool {
        matches!(self, ControllerError::Api(kube::Error::Api(status)) if status.code == 409)
    }
}

/// Whether a kube error is the API's 404.
pub(crate) fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// Whether a kube error is the API's 409.
pub(crate) fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}
