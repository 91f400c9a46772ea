//! API errors as Kubernetes `Status` objects: reason, HTTP code, message and field causes.

use crate::storage::StorageError;
use crate::store::StoreError;
use serde_json::{json, Value};

/// One field-level cause of an `Invalid` error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// `FieldValueRequired`, `FieldValueInvalid`, `FieldValueDuplicate`, `FieldValueNotSupported`,
    /// `FieldValueForbidden`, `FieldValueTooLong`.
    pub reason: &'static str,
    /// Human-readable message, e.g. `Required value`.
    pub message: String,
    /// Field path, e.g. `spec.containers[0].image`.
    pub field: String,
}

impl Cause {
    /// A required field is missing.
    pub fn required(field: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueRequired",
            message: "Required value".into(),
            field: field.into(),
        }
    }

    /// A field has a bad value.
    pub fn invalid(field: impl Into<String>, value: &Value, detail: impl AsRef<str>) -> Self {
        Cause {
            reason: "FieldValueInvalid",
            message: format!("Invalid value: {value}: {}", detail.as_ref()),
            field: field.into(),
        }
    }

    /// A value longer than `limit` bytes.
    pub fn too_long(field: impl Into<String>, limit: usize) -> Self {
        Cause {
            reason: "FieldValueTooLong",
            message: format!("Too long: must have at most {limit} bytes"),
            field: field.into(),
        }
    }

    /// A value appears twice where it must be unique.
    pub fn duplicate(field: impl Into<String>, value: &Value) -> Self {
        Cause {
            reason: "FieldValueDuplicate",
            message: format!("Duplicate value: {value}"),
            field: field.into(),
        }
    }

    /// A value outside the supported set.
    pub fn not_supported(field: impl Into<String>, value: &Value, supported: &[&str]) -> Self {
        let supported: Vec<String> = supported.iter().map(|s| format!("{s:?}")).collect();
        Cause {
            reason: "FieldValueNotSupported",
            message: format!(
                "Unsupported value: {value}: supported values: {}",
                supported.join(", ")
            ),
            field: field.into(),
        }
    }

    /// A change or value that is not allowed.
    pub fn forbidden(field: impl Into<String>, detail: impl Into<String>) -> Self {
        Cause {
            reason: "FieldValueForbidden",
            message: format!("Forbidden: {}", detail.into()),
            field: field.into(),
        }
    }

    /// `field: message`, as kubectl prints causes.
    pub fn describe(&self) -> String {
        format!("{}: {}", self.field, self.message)
    }
}

/// An error answered to an API client, rendered as a `Status`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Machine-readable reason, e.g. `NotFound`.
    pub reason: &'static str,
    /// Human-readable message.
    pub message: String,
    /// The `details` of the Status.
    pub details: Box<ErrorDetails>,
}

/// The `details` of a `Status`: what object, which fields, when to retry.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ErrorDetails {
    /// Name of the object concerned.
    pub name: Option<String>,
    /// Group of the object concerned.
    pub group: Option<String>,
    /// Resource (plural) or kind concerned.
    pub kind: Option<String>,
    /// Field causes (Invalid) or other details.
    pub causes: Vec<Cause>,
    /// Seconds after which to retry (429, 503).
    pub retry_after: Option<u64>,
}

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            code,
            reason,
            message: message.into(),
            details: Box::default(),
        }
    }

    /// Names the object concerned.
    pub fn about(mut self, group: &str, kind: &str, name: &str) -> Self {
        self.details.group = (!group.is_empty()).then(|| group.to_string());
        self.details.kind = Some(kind.to_string());
        self.details.name = (!name.is_empty()).then(|| name.to_string());
        self
    }

    /// 400 BadRequest.
    pub fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(400, "BadRequest", message)
    }

    /// 404 NotFound for `resource` (plural, with group if any) `name`.
    pub fn not_found(resource: &str, name: &str) -> Self {
        ApiError::new(404, "NotFound", format!("{resource} {name:?} not found"))
            .about("", resource, name)
    }

    /// 404 for a path nothing serves.
    pub fn no_route() -> Self {
        ApiError::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    /// 409 AlreadyExists.
    pub fn already_exists(resource: &str, name: &str) -> Self {
        ApiError::new(
            409,
            "AlreadyExists",
            format!("{resource} {name:?} already exists"),
        )
        .about("", resource, name)
    }

    /// 409 Conflict.
    pub fn conflict(resource: &str, name: &str, detail: &str) -> Self {
        ApiError::new(
            409,
            "Conflict",
            format!("Operation cannot be fulfilled on {resource} {name:?}: {detail}"),
        )
        .about("", resource, name)
    }

    /// 409 Conflict of a server-side apply: fields another manager owns with other values.
    /// `conflicts` holds (manager description, field path) pairs.
    pub fn apply_conflict(conflicts: Vec<(String, String)>) -> Self {
        let lines: Vec<String> = conflicts
            .iter()
            .map(|(manager, field)| format!("conflict with {manager}: {field}"))
            .collect();
        let count = conflicts.len();
        let plural = if count == 1 { "" } else { "s" };
        let message = match lines.as_slice() {
            [one] => format!("Apply failed with 1 conflict: {one}"),
            many => format!(
                "Apply failed with {count} conflict{plural}: {}",
                many.join("\n")
            ),
        };
        let mut err = ApiError::new(409, "Conflict", message);
        err.details.causes = conflicts
            .into_iter()
            .map(|(manager, field)| Cause {
                reason: "FieldManagerConflict",
                message: format!("conflict with {manager}"),
                field,
            })
            .collect();
        err
    }

    /// 422 Invalid with field causes.
    pub fn invalid(kind: &str, name: &str, causes: Vec<Cause>) -> Self {
        let list: Vec<String> = causes.iter().map(Cause::describe).collect();
        let summary = match list.as_slice() {
            [one] => one.clone(),
            many => format!("[{}]", many.join(", ")),
        };
        let mut err = ApiError::new(
            422,
            "Invalid",
            format!("{kind} {name:?} is invalid: {summary}"),
        )
        .about("", kind, name);
        err.details.causes = causes;
        err
    }

    /// 401 Unauthorized: no credential, or one that is not valid.
    pub fn unauthorized() -> Self {
        ApiError::new(401, "Unauthorized", "Unauthorized")
    }

    /// 403 Forbidden.
    pub fn forbidden(message: impl Into<String>) -> Self {
        ApiError::new(403, "Forbidden", message)
    }

    /// 405 MethodNotAllowed.
    pub fn method_not_allowed(message: impl Into<String>) -> Self {
        ApiError::new(405, "MethodNotAllowed", message)
    }

    /// 410 Expired (a resourceVersion too old).
    pub fn expired(message: impl Into<String>) -> Self {
        ApiError::new(410, "Expired", message)
    }

    /// 504 Timeout: the request took longer than allowed; the client may retry.
    pub fn timeout(limit: std::time::Duration) -> Self {
        let mut err = ApiError::new(
            504,
            "Timeout",
            format!(
                "the request did not complete within {}s",
                limit.as_secs_f64()
            ),
        );
        err.details.retry_after = Some(1);
        err
    }

    /// 413 RequestEntityTooLarge.
    pub fn too_large(limit: usize) -> Self {
        ApiError::new(
            413,
            "RequestEntityTooLarge",
            format!("Request entity too large: limit is {limit} bytes"),
        )
    }

    /// 415 UnsupportedMediaType.
    pub fn unsupported_media_type(content_type: &str) -> Self {
        ApiError::new(415, "UnsupportedMediaType", format!("the body of the request was in an unknown format - accepted media types include: application/json, application/yaml, application/merge-patch+json, application/json-patch+json (got {content_type:?})"))
    }

    /// 415 UnsupportedMediaType with a message of its own.
    pub fn unsupported_body(message: impl Into<String>) -> Self {
        ApiError::new(415, "UnsupportedMediaType", message)
    }

    /// 429 TooManyRequests.
    pub fn too_many_requests(retry_after: u64) -> Self {
        let mut err = ApiError::new(
            429,
            "TooManyRequests",
            "too many requests, please try again later",
        );
        err.details.retry_after = Some(retry_after);
        err
    }

    /// 429 TooManyRequests because an eviction would break a PodDisruptionBudget.
    pub fn disruption_budget(message: impl Into<String>) -> Self {
        let message = message.into();
        let mut err = ApiError::new(
            429,
            "TooManyRequests",
            "Cannot evict pod as it would violate the pod's disruption budget.",
        );
        err.details.causes = vec![Cause {
            reason: "DisruptionBudget",
            message,
            field: String::new(),
        }];
        // No Retry-After, as Kubernetes answers: client-go would otherwise retry the eviction
        // itself, silently, instead of letting `kubectl drain` report the budget and retry.
        err
    }

    /// 500 InternalError.
    pub fn internal(message: impl Into<String>) -> Self {
        ApiError::new(
            500,
            "InternalError",
            format!("Internal error occurred: {}", message.into()),
        )
    }

    /// 503 ServiceUnavailable.
    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut err = ApiError::new(503, "ServiceUnavailable", message);
        err.details.retry_after = Some(1);
        err
    }

    /// The `Status` object.
    pub fn status(&self) -> Value {
        let mut details = serde_json::Map::new();
        let d = &self.details;
        if let Some(name) = &d.name {
            details.insert("name".into(), json!(name));
        }
        if let Some(group) = &d.group {
            details.insert("group".into(), json!(group));
        }
        if let Some(kind) = &d.kind {
            details.insert("kind".into(), json!(kind));
        }
        if !d.causes.is_empty() {
            let causes: Vec<Value> = d
                .causes
                .iter()
                .map(|c| json!({"reason": c.reason, "message": c.message, "field": c.field}))
                .collect();
            details.insert("causes".into(), Value::Array(causes));
        }
        if let Some(seconds) = d.retry_after {
            details.insert("retryAfterSeconds".into(), json!(seconds));
        }
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        // A NotFound always carries details, as Kubernetes' do (empty for a missing route):
        // kubectl reads them to tell a missing object from a missing subresource.
        if !details.is_empty() || self.code == 404 {
            status["details"] = Value::Object(details);
        }
        status
    }
}

impl From<StorageError> for ApiError {
    fn from(err: StorageError) -> Self {
        match err {
            StorageError::NotFound { resource, name } => ApiError::not_found(&resource, &name),
            StorageError::AlreadyExists { resource, name } => ApiError::already_exists(&resource, &name),
            StorageError::Conflict { resource, name } => ApiError::conflict(
                &resource,
                &name,
                "the object has been modified; please apply your changes to the latest version and try again",
            ),
            StorageError::Invalid { field, message } => {
                let mut err = ApiError::new(422, "Invalid", format!("{field}: {message}"));
                err.details.causes = vec![Cause { reason: "FieldValueInvalid", message, field }];
                err
            }
            StorageError::Corrupt { key, reason } => ApiError::internal(format!("corrupt object at {key}: {reason}")),
            StorageError::Store(err) => err.into(),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match &err {
            StoreError::Compacted { .. } => {
                ApiError::expired(format!("too old resource version: {err}"))
            }
            StoreError::FutureRevision { requested, .. } => {
                let mut e = ApiError::new(
                    504,
                    "Timeout",
                    format!("Too large resource version: {requested}"),
                );
                e.details.retry_after = Some(1);
                e
            }
            StoreError::ValueTooLarge { .. } => {
                ApiError::new(413, "RequestEntityTooLarge", err.to_string())
            }
            StoreError::InvalidKey { .. } | StoreError::InvalidArgument { .. } => {
                ApiError::bad_request(err.to_string())
            }
            StoreError::Unavailable(_) | StoreError::WatchLagged { .. } => {
                ApiError::unavailable(err.to_string())
            }
            _ => ApiError::internal(err.to_string()),
        }
    }
}
