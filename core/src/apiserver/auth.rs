//! The authentication and authorization seams every request passes before the API core.
//!
//! Today's implementations allow everything (for development on loopback); real authenticators
//! and RBAC plug into the same traits.

use super::ApiError;
use async_trait::async_trait;
use axum::http::request::Parts;

/// Who is asking.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UserInfo {
    /// User name, e.g. `system:admin`.
    pub name: String,
    /// Groups, e.g. `system:masters`.
    pub groups: Vec<String>,
}

/// What is being asked, in RBAC terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestAttributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: String,
    /// API group.
    pub group: String,
    /// Resource (plural).
    pub resource: String,
    /// Subresource, if any.
    pub subresource: Option<String>,
    /// Namespace, if any.
    pub namespace: Option<String>,
    /// Object name, if any.
    pub name: Option<String>,
}

/// Establishes who sent a request.
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// The user, or a 401.
    async fn authenticate(&self, request: &Parts) -> Result<UserInfo, ApiError>;
}

/// Decides whether a user may do something.
#[async_trait]
pub trait Authorizer: Send + Sync {
    /// `Ok(())` if allowed, else a 403.
    async fn authorize(
        &self,
        user: &UserInfo,
        attributes: &RequestAttributes,
    ) -> Result<(), ApiError>;
}

/// Treats every request as `system:admin` in `system:masters`. For loopback development only.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl Authenticator for AllowAll {
    async fn authenticate(&self, _request: &Parts) -> Result<UserInfo, ApiError> {
        Ok(UserInfo {
            name: "system:admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        })
    }
}

#[async_trait]
impl Authorizer for AllowAll {
    async fn authorize(
        &self,
        _user: &UserInfo,
        _attributes: &RequestAttributes,
    ) -> Result<(), ApiError> {
        Ok(())
    }
}
