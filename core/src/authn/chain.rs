//! Tries authenticators in order; the first that recognizes the request's credential decides.

use crate::apiserver::{ApiError, Authenticator, UserInfo};
use async_trait::async_trait;
use axum::http::request::Parts;
use std::sync::Arc;

/// Authenticators tried in order. A request none recognizes gets 401 (anonymous requests are
/// not served, except the health endpoints, which never reach an authenticator).
#[derive(Clone, Default)]
pub struct AuthenticatorChain {
    members: Vec<Arc<dyn Authenticator>>,
}

impl std::fmt::Debug for AuthenticatorChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthenticatorChain")
            .field("members", &self.members.len())
            .finish()
    }
}

impl AuthenticatorChain {
    /// An empty chain (which refuses everything).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends an authenticator.
    pub fn with(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.members.push(authenticator);
        self
    }
}

#[async_trait]
impl Authenticator for AuthenticatorChain {
    async fn authenticate(&self, request: &Parts) -> Result<Option<UserInfo>, ApiError> {
        for member in &self.members {
            if let Some(user) = member.authenticate(request).await? {
                return Ok(Some(user));
            }
        }
        Err(ApiError::unauthorized())
    }
}
