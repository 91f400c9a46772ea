//! The authentication and authorization seams every request passes before the API core.
//!
//! [`AllowAll`] lets everything through (development on loopback, benchmarks); the
//! authenticators of [`crate::authn`] and the authorizers of [`crate::authz`] plug into the same
//! traits. Requests made in-process through [`ApiServer::client_as`](super::ApiServer::client_as)
//! carry their user as an [`InProcessUser`] extension, which only in-process code can set.

use super::ApiError;
use async_trait::async_trait;
use axum::http::request::Parts;
use k8s_openapi::api::rbac::v1::PolicyRule;

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
    /// For a request that names no resource (discovery, `/metrics`, `/openapi/...`): its URL
    /// path; the resource fields are then empty.
    pub path: Option<String>,
    /// The field selector of a list or watch, if any (the Node authorizer lets a node list
    /// only the pods bound to it).
    pub field_selector: Option<String>,
}

impl RequestAttributes {
    /// A request for a URL path that names no resource.
    pub fn non_resource(verb: &str, path: &str) -> Self {
        RequestAttributes {
            verb: verb.into(),
            group: String::new(),
            resource: String::new(),
            subresource: None,
            namespace: None,
            name: None,
            path: Some(path.into()),
            field_selector: None,
        }
    }
}

/// The user of a request made in-process ([`ApiServer::client_as`](super::ApiServer::client_as)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InProcessUser(pub UserInfo);

/// Establishes who sent a request.
#[async_trait]
pub trait Authenticator: Send + Sync {
    /// The user; `None` when the request carries no credential this authenticator knows; a
    /// 401 when it carries one that is wrong (unknown token, expired, ...).
    async fn authenticate(&self, request: &Parts) -> Result<Option<UserInfo>, ApiError>;
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

    /// The rules `user` holds in `namespace` (cluster-wide ones included), as
    /// `SelfSubjectRulesReview` (`kubectl auth can-i --list`) reports them; `None` when this
    /// authorizer cannot enumerate what it allows (the review then says it is incomplete).
    fn rules_for(&self, _user: &UserInfo, _namespace: Option<&str>) -> Option<Vec<PolicyRule>> {
        None
    }
}

/// Treats every request as `system:admin` in `system:masters`. For loopback development only.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

#[async_trait]
impl Authenticator for AllowAll {
    async fn authenticate(&self, _request: &Parts) -> Result<Option<UserInfo>, ApiError> {
        Ok(Some(UserInfo {
            name: "system:admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }))
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

    fn rules_for(&self, _user: &UserInfo, _namespace: Option<&str>) -> Option<Vec<PolicyRule>> {
        Some(vec![PolicyRule {
            verbs: vec!["*".into()],
            api_groups: Some(vec!["*".into()]),
            resources: Some(vec!["*".into()]),
            non_resource_urls: Some(vec!["*".into()]),
            resource_names: None,
        }])
    }
}
