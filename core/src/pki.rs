//! The cluster's certificate authority: created once in a directory (`ca.crt`, `ca.key`, the
//! key readable by its owner only) and reused on every start, and the certificates it issues —
//! the API server's serving certificate and client certificates whose subject names a user
//! (CN) and their groups (O), as Kubernetes reads them.
//!
//! It never issues a certificate whose signing key it does not hold, and never writes a key
//! file others can read.

use chrono::Datelike;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Why the cluster's certificates could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// Key generation or signing failed (fatal).
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A subject alternative name is neither a DNS name nor an IP address.
    #[error("invalid subject alternative name {0:?}")]
    InvalidName(String),
    /// A certificate request this CA will not sign.
    #[error("certificate request refused: {0}")]
    Refused(String),
}

/// A certificate and its private key, PEM-encoded.
#[derive(Clone)]
pub struct IssuedCertificate {
    /// The certificate (PEM).
    pub certificate_pem: String,
    /// Its private key (PEM, PKCS#8).
    pub key_pem: String,
}

impl std::fmt::Debug for IssuedCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedCertificate")
            .field("certificate_pem", &self.certificate_pem)
            .finish_non_exhaustive()
    }
}

/// The cluster CA.
pub struct ClusterCa {
    certificate_pem: String,
    params: CertificateParams,
    key: KeyPair,
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("certificate_pem", &self.certificate_pem)
            .finish_non_exhaustive()
    }
}

const CA_NAME: &str = "capstan-ca";

fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, CA_NAME);
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let year = chrono::Utc::now().year();
    params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(year + 10, 1, 1);
    params
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Writes `text` to `path` readable by the owner only (when `secret`), atomically.
pub fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), PkiError> {
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    };
    let temporary = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(&temporary)
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&temporary, path).map_err(io)
}

impl ClusterCa {
    /// Reads `DIR/ca.crt` and `DIR/ca.key`, or creates them (and `DIR`) when absent.
    pub fn load_or_create(dir: &Path) -> Result<ClusterCa, PkiError> {
        std::fs::create_dir_all(dir).map_err(|source| PkiError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let cert_path = dir.join("ca.crt");
        let key_path = dir.join("ca.key");
        if let (Some(certificate_pem), Some(key_pem)) = (read(&cert_path)?, read(&key_path)?) {
            let key = KeyPair::from_pem(&key_pem)?;
            return Ok(ClusterCa {
                certificate_pem,
                params: ca_params(),
                key,
            });
        }
        let key = KeyPair::generate()?;
        let params = ca_params();
        let certificate_pem = params.clone().self_signed(&key)?.pem();
        write_file(&key_path, &key.serialize_pem(), true)?;
        write_file(&cert_path, &certificate_pem, false)?;
        Ok(ClusterCa {
            certificate_pem,
            params,
            key,
        })
    }

    /// The CA certificate (PEM), which clients trust.
    pub fn certificate_pem(&self) -> &str {
        &self.certificate_pem
    }

    fn sign(&self, params: CertificateParams) -> Result<IssuedCertificate, PkiError> {
        // The issuer is rebuilt from the same name and key as the stored CA certificate, so
        // what it signs verifies against that certificate.
        let issuer = self.params.clone().self_signed(&self.key)?;
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &issuer, &self.key)?;
        Ok(IssuedCertificate {
            certificate_pem: certificate.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    fn leaf_params(common_name: &str, organization: Option<&str>) -> CertificateParams {
        let mut params = CertificateParams::default();
        let mut name = DistinguishedName::new();
        name.push(DnType::CommonName, common_name);
        if let Some(organization) = organization {
            name.push(DnType::OrganizationName, organization);
        }
        params.distinguished_name = name;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let year = chrono::Utc::now().year();
        params.not_before = rcgen::date_time_ymd(year - 1, 1, 1);
        params.not_after = rcgen::date_time_ymd(year + 2, 1, 1);
        params.use_authority_key_identifier_extension = true;
        params
    }

    /// A serving certificate for the API server under `names` (DNS names or IP addresses).
    pub fn serving_certificate(&self, names: &[String]) -> Result<IssuedCertificate, PkiError> {
        let mut params = Self::leaf_params("capstan-apiserver", None);
        for name in names {
            let san = match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => {
                    crate::validation::is_dns1123_subdomain(name)
                        .map_err(|_| PkiError::InvalidName(name.clone()))?;
                    SanType::DnsName(
                        name.clone()
                            .try_into()
                            .map_err(|_| PkiError::InvalidName(name.clone()))?,
                    )
                }
            };
            params.subject_alt_names.push(san);
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.sign(params)
    }

    /// A client certificate for `user`, in `group` if given (CN and O, as Kubernetes reads
    /// them; the certificates this CA issues carry at most one group).
    pub fn client_certificate(
        &self,
        user: &str,
        group: Option<&str>,
    ) -> Result<IssuedCertificate, PkiError> {
        let mut params = Self::leaf_params(user, group);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.sign(params)
    }
}

/// A self-signed serving certificate for `names` (IP addresses or DNS names), as a node
/// agent's server uses when nothing verifies it by a CA.
pub fn self_signed_serving_certificate(names: &[String]) -> Result<IssuedCertificate, PkiError> {
    let mut params = ClusterCa::leaf_params("capstan-node-agent", None);
    for name in names {
        params
            .subject_alt_names
            .push(match name.parse::<std::net::IpAddr>() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName(
                    name.clone()
                        .try_into()
                        .map_err(|_| PkiError::InvalidName(name.clone()))?,
                ),
            });
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = false;
    let key = KeyPair::generate()?;
    let certificate = params.self_signed(&key)?;
    Ok(IssuedCertificate {
        certificate_pem: certificate.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A new key and a PEM certificate request for it naming `common_name` in `organization`
/// (a node agent asks for `system:node:<name>` in `system:nodes`). Returns (request, key).
pub fn certificate_request(
    common_name: &str,
    organization: &str,
) -> Result<(String, String), PkiError> {
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    name.push(DnType::OrganizationName, organization);
    params.distinguished_name = name;
    let key = KeyPair::generate()?;
    let request = params.serialize_request(&key)?;
    Ok((request.pem()?, key.serialize_pem()))
}

fn dn_text(name: &DistinguishedName, kind: DnType) -> Option<String> {
    match name.get(&kind)? {
        rcgen::DnValue::Utf8String(text) => Some(text.clone()),
        rcgen::DnValue::PrintableString(text) => Some(text.as_str().to_string()),
        _ => None,
    }
}

/// The CN and O a PEM certificate request asks for (after checking its signature).
pub fn request_subject(request_pem: &str) -> Result<(String, String), PkiError> {
    let request = rcgen::CertificateSigningRequestParams::from_pem(request_pem)
        .map_err(|e| PkiError::Refused(format!("not a valid certificate request: {e}")))?;
    let subject = &request.params.distinguished_name;
    Ok((
        dn_text(subject, DnType::CommonName).unwrap_or_default(),
        dn_text(subject, DnType::OrganizationName).unwrap_or_default(),
    ))
}

impl ClusterCa {
    /// Signs a PEM certificate request as a client certificate for `common_name` in
    /// `organization`, refusing a request whose subject names anything else. Only the
    /// request's public key is taken; the subject, usages and validity are this CA's.
    pub fn sign_client_request(
        &self,
        request_pem: &str,
        common_name: &str,
        organization: &str,
    ) -> Result<String, PkiError> {
        let request = rcgen::CertificateSigningRequestParams::from_pem(request_pem)
            .map_err(|e| PkiError::Refused(format!("not a valid certificate request: {e}")))?;
        let subject = &request.params.distinguished_name;
        let asked = (
            dn_text(subject, DnType::CommonName),
            dn_text(subject, DnType::OrganizationName),
        );
        if asked
            != (
                Some(common_name.to_string()),
                Some(organization.to_string()),
            )
        {
            return Err(PkiError::Refused(format!(
                "the request names CN={:?} O={:?}, not CN={common_name:?} O={organization:?}",
                asked.0.unwrap_or_default(),
                asked.1.unwrap_or_default()
            )));
        }
        let mut params = Self::leaf_params(common_name, Some(organization));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = self.params.clone().self_signed(&self.key)?;
        let signed = rcgen::CertificateSigningRequestParams {
            params,
            public_key: request.public_key,
        }
        .signed_by(&issuer, &self.key)?;
        Ok(signed.pem())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_created_once_and_what_it_signs_names_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let ca = ClusterCa::load_or_create(dir.path()).unwrap();
        let again = ClusterCa::load_or_create(dir.path()).unwrap();
        assert_eq!(ca.certificate_pem(), again.certificate_pem());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is private");
        let client = again.client_certificate("jane", Some("dev")).unwrap();
        let der = crate::authn::first_certificate_der(&client.certificate_pem).unwrap();
        let user = crate::authn::user_of_certificate(&der).unwrap();
        assert_eq!(user.name, "jane");
        assert_eq!(user.groups, vec!["dev", "system:authenticated"]);
        let alone = again.client_certificate("joe", None).unwrap();
        let der = crate::authn::first_certificate_der(&alone.certificate_pem).unwrap();
        assert_eq!(
            crate::authn::user_of_certificate(&der).unwrap().groups,
            vec!["system:authenticated"]
        );
        assert!(again
            .serving_certificate(&["localhost".into(), "127.0.0.1".into()])
            .is_ok());
        assert!(again.serving_certificate(&["not a name".into()]).is_err());
        let (request, _key) = certificate_request("system:node:n1", "system:nodes").unwrap();
        let signed = again
            .sign_client_request(&request, "system:node:n1", "system:nodes")
            .unwrap();
        let der = crate::authn::first_certificate_der(&signed).unwrap();
        let node = crate::authn::user_of_certificate(&der).unwrap();
        assert_eq!(node.name, "system:node:n1");
        assert_eq!(node.groups, vec!["system:nodes", "system:authenticated"]);
        let (other, _) = certificate_request("system:node:n2", "system:masters").unwrap();
        assert!(again
            .sign_client_request(&other, "system:node:n2", "system:nodes")
            .is_err());
        assert!(again
            .sign_client_request("garbage", "system:node:n1", "system:nodes")
            .is_err());
    }
}
