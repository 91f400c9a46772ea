//! Bootstrap tokens, as Kubernetes keeps them: `<id>.<secret>` (6 and 16 characters of
//! `[a-z0-9]`), stored as Secret `kube-system/bootstrap-token-<id>` of type
//! `bootstrap.kubernetes.io/token` with an expiration. A new node agent authenticates with one
//! as `system:bootstrap:<id>` in `system:bootstrappers`, which may only ask for its node
//! certificate; the token is deleted once that certificate is issued (one use).

use crate::apiserver::{ApiError, Authenticator, UserInfo};
use crate::store::Store;
use async_trait::async_trait;
use axum::http::request::Parts;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The group bootstrap-token users are in.
pub const BOOTSTRAPPERS_GROUP: &str = "system:bootstrappers";
/// Bootstrap-token users are named this prefix and the token id.
pub const BOOTSTRAP_USER_PREFIX: &str = "system:bootstrap:";
/// The Secret type of bootstrap tokens.
pub const BOOTSTRAP_TOKEN_TYPE: &str = "bootstrap.kubernetes.io/token";

fn is_token_part(text: &str, length: usize) -> bool {
    text.len() == length
        && text
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

/// Splits `<id>.<secret>` when it has a bootstrap token's shape.
pub fn parse_bootstrap_token(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    (is_token_part(id, 6) && is_token_part(secret, 16)).then_some((id, secret))
}

/// A fresh random token `<id>.<secret>`.
pub fn generate_bootstrap_token() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let random = uuid::Uuid::new_v4().as_u128() ^ (uuid::Uuid::new_v4().as_u128() >> 7);
    let mut value = random;
    let mut pick = |n: usize| -> String {
        (0..n)
            .map(|_| {
                let c = ALPHABET[(value % ALPHABET.len() as u128) as usize] as char;
                value /= ALPHABET.len() as u128;
                c
            })
            .collect()
    };
    let id = pick(6);
    let secret = pick(16);
    format!("{id}.{secret}")
}

/// The Secret (JSON, `kube-system`) holding `token` until `ttl` from now.
pub fn bootstrap_token_secret(token: &str, ttl: Duration) -> Option<Value> {
    let (id, secret) = parse_bootstrap_token(token)?;
    let expires = chrono::Utc::now() + chrono::Duration::seconds(ttl.as_secs() as i64);
    Some(json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": format!("bootstrap-token-{id}"), "namespace": "kube-system"},
        "type": BOOTSTRAP_TOKEN_TYPE,
        "stringData": {
            "token-id": id,
            "token-secret": secret,
            "usage-bootstrap-authentication": "true",
            "expiration": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        },
    }))
}

/// Authenticates bootstrap tokens against their Secrets.
pub struct BootstrapTokenAuthenticator {
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for BootstrapTokenAuthenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BootstrapTokenAuthenticator")
            .finish_non_exhaustive()
    }
}

impl BootstrapTokenAuthenticator {
    /// Reads token Secrets from `store` (the store under the API server).
    pub fn new(store: Arc<dyn Store>) -> Self {
        BootstrapTokenAuthenticator { store }
    }
}

fn data_field(secret: &Value, key: &str) -> Option<String> {
    let encoded = secret.pointer(&format!("/data/{key}"))?.as_str()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// Compares without stopping at the first difference.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |diff, (x, y)| diff | (x ^ y))
            == 0
}

#[async_trait]
impl Authenticator for BootstrapTokenAuthenticator {
    async fn authenticate(&self, request: &Parts) -> Result<Option<UserInfo>, ApiError> {
        let Some(token) = super::bearer_token(request) else {
            return Ok(None);
        };
        let Some((id, secret)) = parse_bootstrap_token(token) else {
            return Ok(None);
        };
        let key = format!("/core/secrets/kube-system/bootstrap-token-{id}");
        let stored = match self.store.get(&key).await {
            Ok(Some(kv)) => crate::storage::read_stored::<Value>(&kv.value),
            Ok(None) => None,
            Err(err) => return Err(ApiError::internal(format!("bootstrap tokens: {err}"))),
        };
        let Some(stored) = stored else {
            return Err(ApiError::unauthorized());
        };
        let valid = stored.get("type").and_then(Value::as_str) == Some(BOOTSTRAP_TOKEN_TYPE)
            && data_field(&stored, "token-secret").is_some_and(|s| same(&s, secret))
            && data_field(&stored, "usage-bootstrap-authentication").as_deref() == Some("true")
            && data_field(&stored, "expiration")
                .and_then(|e| chrono::DateTime::parse_from_rfc3339(&e).ok())
                .is_none_or(|expires| expires > chrono::Utc::now());
        if !valid {
            return Err(ApiError::unauthorized());
        }
        Ok(Some(UserInfo {
            name: format!("{BOOTSTRAP_USER_PREFIX}{id}"),
            groups: vec![
                BOOTSTRAPPERS_GROUP.into(),
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

    fn stored(secret: &Value) -> Bytes {
        // The API server stores stringData as base64 data.
        let mut stored = secret.clone();
        let data: serde_json::Map<String, Value> = stored["stringData"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| {
                let encoded = base64::engine::general_purpose::STANDARD.encode(v.as_str().unwrap());
                (k.clone(), Value::String(encoded))
            })
            .collect();
        stored["data"] = Value::Object(data);
        Bytes::from(stored.to_string())
    }

    #[tokio::test]
    async fn tokens_authenticate_until_they_expire_or_are_deleted() {
        let token = generate_bootstrap_token();
        assert!(parse_bootstrap_token(&token).is_some(), "{token}");
        assert_ne!(token, generate_bootstrap_token());
        let (id, _) = parse_bootstrap_token(&token).unwrap();
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let key = format!("/core/secrets/kube-system/bootstrap-token-{id}");
        let secret = bootstrap_token_secret(&token, Duration::from_secs(600)).unwrap();
        store.create(&key, stored(&secret), None).await.unwrap();
        let authenticator = BootstrapTokenAuthenticator::new(store.clone());
        let user = authenticator
            .authenticate(&request(&token))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.name, format!("system:bootstrap:{id}"));
        assert_eq!(user.groups[0], BOOTSTRAPPERS_GROUP);
        let wrong = format!("{id}.0000000000000000");
        assert_eq!(
            authenticator
                .authenticate(&request(&wrong))
                .await
                .unwrap_err()
                .code,
            401
        );
        assert_eq!(
            authenticator
                .authenticate(&request("not-a-token"))
                .await
                .unwrap(),
            None
        );
        // Expired.
        let mut old = secret.clone();
        old["stringData"]["expiration"] = json!("2001-01-01T00:00:00Z");
        let current = store.get(&key).await.unwrap().unwrap();
        store
            .update(&key, stored(&old), current.mod_revision, None)
            .await
            .unwrap();
        assert_eq!(
            authenticator
                .authenticate(&request(&token))
                .await
                .unwrap_err()
                .code,
            401
        );
        // Deleted.
        store.delete(&key, None).await.unwrap();
        assert_eq!(
            authenticator
                .authenticate(&request(&token))
                .await
                .unwrap_err()
                .code,
            401
        );
    }
}
