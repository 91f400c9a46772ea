//! Serving the API over TLS (rustls): HTTP/1.1 with upgrades (exec, attach, port-forward,
//! websockets) on each accepted connection; a client certificate, when one is presented, must
//! chain to the cluster CA and is handed to the authenticators as a [`ClientCertificate`]
//! request extension. A connection that presents no certificate is still served (it may carry a
//! bearer token); one that presents a certificate the CA did not sign fails its handshake.

use axum::body::Body;
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM text holds no usable certificate or key.
    #[error("invalid PEM: {0}")]
    Pem(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// The client CA could not be used to verify client certificates.
    #[error("client CA: {0}")]
    ClientCa(#[from] rustls::server::VerifierBuilderError),
}

/// A verified client certificate (DER), put on each request of its connection.
#[derive(Debug, Clone)]
pub struct ClientCertificate(Arc<CertificateDer<'static>>);

impl ClientCertificate {
    /// The certificate's DER bytes.
    pub fn der(&self) -> &[u8] {
        self.0.as_ref()
    }
}

/// A TLS server configuration: serving certificate and, optionally, the CA that signs client
/// certificates.
#[derive(Clone)]
pub struct TlsServing {
    config: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsServing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsServing").finish_non_exhaustive()
    }
}

fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certificates = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if certificates.is_empty() {
        return Err(TlsError::Pem("no certificate".into()));
    }
    Ok(certificates)
}

impl TlsServing {
    /// Serves `certificate_pem` (chain) with `key_pem`; verifies client certificates against
    /// `client_ca_pem` when given.
    pub fn new(
        certificate_pem: &str,
        key_pem: &str,
        client_ca_pem: Option<&str>,
    ) -> Result<TlsServing, TlsError> {
        Self::build(certificate_pem, key_pem, client_ca_pem, false)
    }

    /// Serves `certificate_pem` with `key_pem` only to clients presenting a certificate
    /// `client_ca_pem` signed (a handshake without one fails).
    pub fn requiring_client_certificates(
        certificate_pem: &str,
        key_pem: &str,
        client_ca_pem: &str,
    ) -> Result<TlsServing, TlsError> {
        Self::build(certificate_pem, key_pem, Some(client_ca_pem), true)
    }

    fn build(
        certificate_pem: &str,
        key_pem: &str,
        client_ca_pem: Option<&str>,
        require_client: bool,
    ) -> Result<TlsServing, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certificates(certificate_pem)?;
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|e| TlsError::Pem(e.to_string()))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?;
        let mut config = match client_ca_pem {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for certificate in certificates(ca)? {
                    roots.add(certificate)?;
                }
                let clients = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                );
                let verifier = if require_client {
                    clients.build()?
                } else {
                    clients.allow_unauthenticated().build()?
                };
                builder
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain, key)?
            }
            None => builder.with_no_client_auth().with_single_cert(chain, key)?,
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(TlsServing {
            config: Arc::new(config),
        })
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` is cancelled; then stops accepting,
/// lets requests in progress finish for a moment and closes the rest (watches).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    router: axum::Router,
    tls: TlsServing,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let acceptor = acceptor.clone();
        let router = router.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let stream = match tokio::time::timeout(
                Duration::from_secs(10),
                acceptor.accept(stream),
            )
            .await
            {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => {
                    tracing::debug!("TLS handshake failed: {err}");
                    return;
                }
                Err(_) => return,
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| ClientCertificate(Arc::new(c.clone().into_owned())));
            let service = hyper::service::service_fn(
                move |mut request: hyper::Request<hyper::body::Incoming>| {
                    use tower::ServiceExt;
                    if let Some(certificate) = &certificate {
                        request.extensions_mut().insert(certificate.clone());
                    }
                    request
                        .extensions_mut()
                        .insert(axum::extract::ConnectInfo(peer));
                    router.clone().oneshot(request.map(Body::new))
                },
            );
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .with_upgrades();
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(err) = result {
                        tracing::debug!("connection ended: {err}");
                    }
                }
                _ = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(Duration::from_secs(1), connection).await;
                }
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
    Ok(())
}
