//! ServiceAccount tokens: ES256-signed JWTs with Kubernetes' claims (issuer, subject
//! `system:serviceaccount:<ns>:<name>`, audiences, expiry, the account's uid), issued through
//! the TokenRequest subresource (`kubectl create token`) and verified on every request —
//! signature, expiry, audience, and that the account still exists with the same uid (a
//! deleted and re-created account's old tokens stop working).

use crate::apiserver::{ApiError, Authenticator, UserInfo};
use crate::store::Store;
use async_trait::async_trait;
use axum::http::request::Parts;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The issuer and default audience of the tokens, as Kubernetes names them.
pub const API_AUDIENCE: &str = "https://kubernetes.default.svc.cluster.local";

/// Why the signing key could not be read or made, or a token not issued.
#[derive(Debug, thiserror::Error)]
pub enum ServiceAccountTokenError {
    /// The key file could not be read or written.
    #[error("{0}")]
    Key(String),
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

#[derive(Debug, Serialize, Deserialize)]
struct AccountClaim {
    name: String,
    uid: String,
}

#[derive(Debug, Serialize, Deserialize)]
struct KubernetesClaim {
    namespace: String,
    serviceaccount: AccountClaim,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: Vec<String>,
    exp: u64,
    iat: u64,
    nbf: u64,
    #[serde(rename = "kubernetes.io")]
    kubernetes: KubernetesClaim,
}

/// Issues and verifies ServiceAccount tokens with one ECDSA P-256 key.
pub struct ServiceAccountTokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for ServiceAccountTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountTokens")
            .finish_non_exhaustive()
    }
}

/// What a TokenRequest produced.
#[derive(Debug, Clone)]
pub struct IssuedToken {
    /// The JWT.
    pub token: String,
    /// When it stops being accepted.
    pub expires: chrono::DateTime<chrono::Utc>,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl ServiceAccountTokens {
    /// Signs with the PKCS#8 key at `path` (created, readable by its owner only, when absent);
    /// looks accounts up in `store`. Servers sharing a store must share the key.
    pub fn load_or_create(
        path: &Path,
        store: Arc<dyn Store>,
    ) -> Result<ServiceAccountTokens, ServiceAccountTokenError> {
        let pem = match std::fs::read_to_string(path) {
            Ok(pem) => pem,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key = rcgen::KeyPair::generate()
                    .map_err(|e| ServiceAccountTokenError::Key(e.to_string()))?;
                let pem = key.serialize_pem();
                crate::pki::write_file(path, &pem, true)
                    .map_err(|e| ServiceAccountTokenError::Key(e.to_string()))?;
                pem
            }
            Err(err) => {
                return Err(ServiceAccountTokenError::Key(format!(
                    "{}: {err}",
                    path.display()
                )))
            }
        };
        let key = rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| ServiceAccountTokenError::Key(format!("{}: {e}", path.display())))?;
        Ok(ServiceAccountTokens {
            encoding: EncodingKey::from_ec_pem(pem.as_bytes())?,
            decoding: DecodingKey::from_ec_pem(key.public_key_pem().as_bytes())?,
            store,
        })
    }

    /// A token for the account `namespace/name` (whose uid is `uid`) for `audiences`, valid
    /// for `lifetime`.
    pub fn issue(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        audiences: Vec<String>,
        lifetime: Duration,
    ) -> Result<IssuedToken, ServiceAccountTokenError> {
        let issued = now();
        let exp = issued + lifetime.as_secs();
        let claims = Claims {
            iss: API_AUDIENCE.into(),
            sub: format!("system:serviceaccount:{namespace}:{name}"),
            aud: audiences,
            exp,
            iat: issued,
            nbf: issued,
            kubernetes: KubernetesClaim {
                namespace: namespace.into(),
                serviceaccount: AccountClaim {
                    name: name.into(),
                    uid: uid.into(),
                },
            },
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::ES256), &claims, &self.encoding)?;
        let expires = chrono::DateTime::from_timestamp(exp as i64, 0).unwrap_or_default();
        Ok(IssuedToken { token, expires })
    }

    async fn account_uid(&self, namespace: &str, name: &str) -> Option<String> {
        let key = format!("/core/serviceaccounts/{namespace}/{name}");
        let kv = self.store.get(&key).await.ok()??;
        let account: Value = crate::storage::read_stored(&kv.value)?;
        account
            .pointer("/metadata/uid")
            .and_then(Value::as_str)
            .map(str::to_string)
    }
}

#[async_trait]
impl Authenticator for ServiceAccountTokens {
    async fn authenticate(&self, request: &Parts) -> Result<Option<UserInfo>, ApiError> {
        let Some(token) = super::bearer_token(request) else {
            return Ok(None);
        };
        if token.matches('.').count() != 2 {
            return Ok(None);
        }
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_audience(&[API_AUDIENCE]);
        validation.set_issuer(&[API_AUDIENCE]);
        validation.leeway = 0;
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|e| {
                tracing::debug!("service account token refused: {e}");
                ApiError::unauthorized()
            })?
            .claims;
        let namespace = &claims.kubernetes.namespace;
        let account = &claims.kubernetes.serviceaccount;
        if claims.sub != format!("system:serviceaccount:{namespace}:{}", account.name)
            || self.account_uid(namespace, &account.name).await.as_deref()
                != Some(account.uid.as_str())
        {
            return Err(ApiError::unauthorized());
        }
        Ok(Some(UserInfo {
            name: claims.sub,
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                super::AUTHENTICATED_GROUP.into(),
            ],
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;
    use bytes::Bytes;

    fn request(token: &str) -> Parts {
        axum::http::Request::builder()
            .header("Authorization", format!("Bearer {token}"))
            .body(())
            .unwrap()
            .into_parts()
            .0
    }

    #[tokio::test]
    async fn tokens_verify_until_expiry_for_the_api_audience_and_a_living_account() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        store
            .create(
                "/core/serviceaccounts/ns/robot",
                Bytes::from_static(br#"{"metadata":{"name":"robot","namespace":"ns","uid":"u1"}}"#),
                None,
            )
            .await
            .unwrap();
        let key = dir.path().join("sa.key");
        let tokens = ServiceAccountTokens::load_or_create(&key, store.clone()).unwrap();
        let api = vec![API_AUDIENCE.to_string()];
        let good = tokens
            .issue("ns", "robot", "u1", api.clone(), Duration::from_secs(600))
            .unwrap();
        let user = tokens
            .authenticate(&request(&good.token))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.name, "system:serviceaccount:ns:robot");
        assert!(user
            .groups
            .contains(&"system:serviceaccounts:ns".to_string()));
        // The same key, reloaded, verifies it.
        let reloaded = ServiceAccountTokens::load_or_create(&key, store.clone()).unwrap();
        assert!(reloaded.authenticate(&request(&good.token)).await.is_ok());

        let refused = |token: String| {
            let tokens = &tokens;
            async move {
                tokens
                    .authenticate(&request(&token))
                    .await
                    .unwrap_err()
                    .code
            }
        };
        let expired = tokens
            .issue("ns", "robot", "u1", api.clone(), Duration::ZERO)
            .unwrap();
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(refused(expired.token).await, 401);
        let elsewhere = tokens
            .issue(
                "ns",
                "robot",
                "u1",
                vec!["vault".into()],
                Duration::from_secs(600),
            )
            .unwrap();
        assert_eq!(refused(elsewhere.token).await, 401);
        let other_uid = tokens
            .issue("ns", "robot", "u0", api.clone(), Duration::from_secs(600))
            .unwrap();
        assert_eq!(refused(other_uid.token).await, 401);
        let other_key = ServiceAccountTokens::load_or_create(&dir.path().join("other.key"), store)
            .unwrap()
            .issue("ns", "robot", "u1", api, Duration::from_secs(600))
            .unwrap();
        assert_eq!(refused(other_key.token).await, 401);
        let mut tampered = good.token.clone();
        tampered.insert(tampered.find('.').unwrap() + 3, 'x');
        assert_eq!(refused(tampered).await, 401);
        assert_eq!(tokens.authenticate(&request("plain")).await.unwrap(), None);
    }
}
