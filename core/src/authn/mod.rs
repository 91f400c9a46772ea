//! Authenticators: who sent a request, from its TLS client certificate ([`X509Authenticator`])
//! or bearer token ([`TokenFileAuthenticator`], [`ServiceAccountTokens`],
//! [`BootstrapTokenAuthenticator`]), tried in order by an [`AuthenticatorChain`]. A request no authenticator recognizes is
//! anonymous and gets 401; a credential that is recognized but wrong (an unknown token) is
//! refused at once rather than passed on.

mod bootstrap_token;
mod chain;
mod node_certificates;
mod service_account;
mod token_file;
mod x509;

pub use bootstrap_token::{
    bootstrap_token_secret, generate_bootstrap_token, parse_bootstrap_token,
    BootstrapTokenAuthenticator, BOOTSTRAPPERS_GROUP, BOOTSTRAP_TOKEN_TYPE, BOOTSTRAP_USER_PREFIX,
};
pub use chain::AuthenticatorChain;
pub use node_certificates::{NodeCertificateSigner, KUBELET_CLIENT_SIGNER};
pub use service_account::{
    IssuedToken, ServiceAccountTokenError, ServiceAccountTokens, API_AUDIENCE,
};
pub use token_file::{TokenFileAuthenticator, TokenFileError};
pub use x509::{first_certificate_der, user_of_certificate, X509Authenticator};

/// The group every authenticated user belongs to.
pub const AUTHENTICATED_GROUP: &str = "system:authenticated";

/// The bearer token of a request (`Authorization: Bearer ...`), if it has one.
pub fn bearer_token(request: &axum::http::request::Parts) -> Option<&str> {
    let value = request
        .headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}
