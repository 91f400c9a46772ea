//! Client-certificate authentication: the TLS layer verified the certificate against the
//! cluster CA; its subject's CN is the user and each O a group, as in Kubernetes.

use crate::apiserver::{ApiError, Authenticator, ClientCertificate, UserInfo};
use async_trait::async_trait;
use axum::http::request::Parts;

/// Authenticates requests that came with a verified client certificate.
#[derive(Debug, Clone, Copy, Default)]
pub struct X509Authenticator;

/// The user a (DER) certificate names: CN, and O as groups plus `system:authenticated`.
/// `None` for a certificate that cannot be parsed or has no CN.
pub fn user_of_certificate(der: &[u8]) -> Option<UserInfo> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = certificate.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    if name.is_empty() {
        return None;
    }
    let mut groups: Vec<String> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(str::to_string))
        .collect();
    groups.push(super::AUTHENTICATED_GROUP.into());
    Some(UserInfo { name, groups })
}

/// The DER bytes of the first certificate in a PEM text.
pub fn first_certificate_der(pem: &str) -> Option<Vec<u8>> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .next()?
        .ok()
        .map(|c| c.to_vec())
}

#[async_trait]
impl Authenticator for X509Authenticator {
    async fn authenticate(&self, request: &Parts) -> Result<Option<UserInfo>, ApiError> {
        let Some(certificate) = request.extensions.get::<ClientCertificate>() else {
            return Ok(None);
        };
        user_of_certificate(certificate.der())
            .map(Some)
            .ok_or_else(ApiError::unauthorized)
    }
}
