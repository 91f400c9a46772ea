//! Encryption at rest: [`EncryptedStore`] wraps any [`Store`] and encrypts the values under
//! chosen key prefixes (Secrets by default) with AES-256-GCM before they reach the backend,
//! decrypting them on every way out (get, list, watch events, deletes, conflicts). Stored values
//! look like Kubernetes' `aesgcm` provider's: `k8s:enc:aesgcm:v1:<key name>:` then a random
//! 12-byte nonce and the ciphertext, authenticated with the storage key, so a value copied to
//! another key does not decrypt. Values written before encryption was turned on are read as
//! they are; [`EncryptedStore::rewrite`] re-encrypts everything with the current key (rotation).
//!
//! It never writes plaintext under an encrypted prefix and never hands ciphertext upward.

use super::WatchStream;
use super::{
    KeyValue, LeaseId, ListOptions, ListPage, Revision, Store, StoreError, WatchEvent,
    MAX_VALUE_BYTES,
};
use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::Aes256Gcm;
use async_trait::async_trait;
use base64::Engine;
use bytes::Bytes;
use futures::StreamExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The prefix of encrypted values, before the key name.
const MARKER: &[u8] = b"k8s:enc:aesgcm:v1:";
const NONCE_BYTES: usize = 12;
const TAG_BYTES: usize = 16;

/// Why encryption keys could not be read or made.
#[derive(Debug, thiserror::Error)]
pub enum EncryptionKeyError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line is not `name:base64-of-32-bytes`.
    #[error("line {line}: expected NAME:BASE64 of a 32-byte key")]
    Malformed {
        /// 1-based line number.
        line: usize,
    },
    /// The file holds no key.
    #[error("no key")]
    Empty,
}

/// AES-256-GCM keys by name: the first encrypts, every one decrypts (so a new key can be put
/// first while values written with the old one stay readable until they are rewritten).
#[derive(Clone)]
pub struct EncryptionKeys {
    keys: Vec<(String, Aes256Gcm)>,
}

impl std::fmt::Debug for EncryptionKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.keys.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("EncryptionKeys")
            .field("names", &names)
            .finish()
    }
}

impl EncryptionKeys {
    /// Parses `name:base64` lines (`#` comments allowed); the first key encrypts.
    pub fn parse(text: &str) -> Result<Self, EncryptionKeyError> {
        let mut keys = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let malformed = || EncryptionKeyError::Malformed { line: index + 1 };
            let (name, secret) = line.split_once(':').ok_or_else(malformed)?;
            let name = name.trim();
            if name.is_empty() || name.contains(':') {
                return Err(malformed());
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(secret.trim())
                .map_err(|_| malformed())?;
            let cipher = Aes256Gcm::new_from_slice(&bytes).map_err(|_| malformed())?;
            keys.push((name.to_string(), cipher));
        }
        if keys.is_empty() {
            return Err(EncryptionKeyError::Empty);
        }
        Ok(EncryptionKeys { keys })
    }

    /// Reads a key file.
    pub fn from_file(path: &Path) -> Result<Self, EncryptionKeyError> {
        let text = std::fs::read_to_string(path).map_err(|source| EncryptionKeyError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// Reads `path`, or first writes there (readable by its owner only) a fresh random key
    /// named `key1`.
    pub fn load_or_create(path: &Path) -> Result<Self, EncryptionKeyError> {
        if !path.exists() {
            let key = Aes256Gcm::generate_key(OsRng);
            let line = format!(
                "# AES-256-GCM keys for secrets at rest; the first encrypts.\nkey1:{}\n",
                base64::engine::general_purpose::STANDARD.encode(key)
            );
            crate::pki::write_file(path, &line, true).map_err(|e| EncryptionKeyError::Io {
                path: path.display().to_string(),
                source: std::io::Error::other(e.to_string()),
            })?;
        }
        Self::from_file(path)
    }

    fn encrypt(&self, storage_key: &str, plaintext: &[u8]) -> Result<Bytes, StoreError> {
        let (name, cipher) = &self.keys[0];
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad: storage_key.as_bytes(),
                },
            )
            .map_err(|_| corrupt(storage_key, "encryption failed"))?;
        let mut out =
            Vec::with_capacity(MARKER.len() + name.len() + 1 + NONCE_BYTES + sealed.len());
        out.extend_from_slice(MARKER);
        out.extend_from_slice(name.as_bytes());
        out.push(b':');
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        Ok(Bytes::from(out))
    }

    /// The key name a stored value was encrypted with, if it is encrypted.
    fn key_name_of(stored: &[u8]) -> Option<&str> {
        let rest = stored.strip_prefix(MARKER)?;
        let end = rest.iter().position(|b| *b == b':')?;
        std::str::from_utf8(&rest[..end]).ok()
    }

    fn decrypt(&self, storage_key: &str, stored: &Bytes) -> Result<Bytes, StoreError> {
        let Some(rest) = stored.strip_prefix(MARKER) else {
            // Written before encryption was turned on.
            return Ok(stored.clone());
        };
        let end = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or_else(|| corrupt(storage_key, "no key name"))?;
        let name = std::str::from_utf8(&rest[..end]).unwrap_or_default();
        let (_, cipher) =
            self.keys.iter().find(|(n, _)| n == name).ok_or_else(|| {
                corrupt(storage_key, &format!("encrypted with unknown key {name:?}"))
            })?;
        let body = &rest[end + 1..];
        if body.len() < NONCE_BYTES {
            return Err(corrupt(storage_key, "truncated ciphertext"));
        }
        let (nonce, sealed) = body.split_at(NONCE_BYTES);
        cipher
            .decrypt(
                nonce.into(),
                Payload {
                    msg: sealed,
                    aad: storage_key.as_bytes(),
                },
            )
            .map(Bytes::from)
            .map_err(|_| corrupt(storage_key, "cannot decrypt (wrong key or tampered value)"))
    }
}

fn corrupt(key: &str, reason: &str) -> StoreError {
    StoreError::Corrupt {
        location: key.to_string(),
        reason: reason.to_string(),
    }
}

/// A [`Store`] that encrypts the values under some key prefixes.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    keys: EncryptionKeys,
    prefixes: Vec<String>,
}

impl std::fmt::Debug for EncryptedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EncryptedStore")
            .field("keys", &self.keys)
            .field("prefixes", &self.prefixes)
            .finish()
    }
}

/// The storage prefix of Secrets.
pub const SECRETS_PREFIX: &str = "/core/secrets/";

impl EncryptedStore {
    /// Encrypts Secrets in `inner` with `keys`.
    pub fn new(inner: Arc<dyn Store>, keys: EncryptionKeys) -> Self {
        Self::with_prefixes(inner, keys, vec![SECRETS_PREFIX.to_string()])
    }

    /// Encrypts the values under each of `prefixes`.
    pub fn with_prefixes(
        inner: Arc<dyn Store>,
        keys: EncryptionKeys,
        prefixes: Vec<String>,
    ) -> Self {
        EncryptedStore {
            inner,
            keys,
            prefixes,
        }
    }

    fn encrypts(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// The largest value stored under an encrypted prefix: the store's limit less the envelope
    /// (marker, key name, nonce and tag) around the ciphertext. Secrets, at most 1 MiB of data,
    /// stay well below it.
    pub fn max_value_bytes(&self) -> usize {
        let (name, _) = &self.keys.keys[0];
        MAX_VALUE_BYTES - (MARKER.len() + name.len() + 1 + NONCE_BYTES + TAG_BYTES)
    }

    fn seal(&self, key: &str, value: Bytes) -> Result<Bytes, StoreError> {
        if !self.encrypts(key) {
            return Ok(value);
        }
        let limit = self.max_value_bytes();
        if value.len() > limit {
            return Err(StoreError::ValueTooLarge {
                key: key.to_string(),
                size: value.len(),
                limit,
            });
        }
        self.keys.encrypt(key, &value)
    }

    fn open(&self, mut kv: KeyValue) -> Result<KeyValue, StoreError> {
        if self.encrypts(&kv.key) {
            kv.value = self.keys.decrypt(&kv.key, &kv.value)?;
        }
        Ok(kv)
    }

    fn open_error(&self, err: StoreError) -> StoreError {
        match err {
            StoreError::Conflict {
                key,
                current: Some(current),
            } => match self.open(*current) {
                Ok(current) => StoreError::Conflict {
                    key,
                    current: Some(Box::new(current)),
                },
                Err(err) => err,
            },
            other => other,
        }
    }

    /// Re-encrypts every value under the encrypted prefixes that is not encrypted with the
    /// first key (plaintext, or an older key); returns how many were rewritten. Values changed
    /// concurrently are re-read and retried.
    pub async fn rewrite(&self) -> Result<usize, StoreError> {
        let current = self.keys.keys[0].0.as_str();
        let mut rewritten = 0;
        for prefix in &self.prefixes {
            let page = self.inner.list(prefix, ListOptions::default()).await?;
            for item in page.items {
                let mut stored = item;
                loop {
                    if EncryptionKeys::key_name_of(&stored.value) == Some(current) {
                        break;
                    }
                    let plain = self.keys.decrypt(&stored.key, &stored.value)?;
                    let sealed = self.keys.encrypt(&stored.key, &plain)?;
                    match self
                        .inner
                        .update(&stored.key, sealed, stored.mod_revision, stored.lease)
                        .await
                    {
                        Ok(_) => {
                            rewritten += 1;
                            break;
                        }
                        Err(StoreError::Conflict {
                            current: Some(now), ..
                        }) => stored = *now,
                        Err(StoreError::NotFound { .. }) => break,
                        Err(err) => return Err(err),
                    }
                }
            }
        }
        Ok(rewritten)
    }
}

#[async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.inner
            .get(key)
            .await?
            .map(|kv| self.open(kv))
            .transpose()
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage, StoreError> {
        let mut page = self.inner.list(prefix, options).await?;
        page.items = page
            .items
            .into_iter()
            .map(|kv| self.open(kv))
            .collect::<Result<_, _>>()?;
        Ok(page)
    }

    async fn create(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue, StoreError> {
        let sealed = self.seal(key, value.clone())?;
        let mut kv = self.inner.create(key, sealed, lease).await?;
        kv.value = value;
        Ok(kv)
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_revision: Revision,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue, StoreError> {
        let sealed = self.seal(key, value.clone())?;
        let mut kv = self
            .inner
            .update(key, sealed, expected_revision, lease)
            .await
            .map_err(|e| self.open_error(e))?;
        kv.value = value;
        Ok(kv)
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        let kv = self
            .inner
            .delete(key, expected_revision)
            .await
            .map_err(|e| self.open_error(e))?;
        self.open(kv)
    }

    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        let stream = self.inner.watch(prefix, after_revision).await?;
        let keys = self.keys.clone();
        let prefixes = self.prefixes.clone();
        let opener = EncryptedStore {
            inner: self.inner.clone(),
            keys,
            prefixes,
        };
        Ok(stream
            .map(move |event| {
                Ok(match event? {
                    WatchEvent::Created(kv) => WatchEvent::Created(opener.open(kv)?),
                    WatchEvent::Modified { current, previous } => WatchEvent::Modified {
                        current: opener.open(current)?,
                        previous: opener.open(previous)?,
                    },
                    WatchEvent::Deleted { previous, revision } => WatchEvent::Deleted {
                        previous: opener.open(previous)?,
                        revision,
                    },
                    progress @ WatchEvent::Progress(_) => progress,
                })
            })
            .boxed())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.inner.current_revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.inner.compact(revision).await
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.inner.grant_lease(ttl).await
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.inner.keep_alive(lease).await
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.inner.revoke_lease(lease).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn key_line(name: &str, byte: u8) -> String {
        format!(
            "{name}:{}\n",
            base64::engine::general_purpose::STANDARD.encode([byte; 32])
        )
    }

    #[tokio::test]
    async fn secrets_are_ciphertext_below_and_plaintext_above_and_keys_rotate() {
        let raw: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let old = EncryptionKeys::parse(&key_line("old", 1)).unwrap();
        let store = EncryptedStore::new(raw.clone(), old);
        let key = "/core/secrets/default/s";
        let secret = Bytes::from_static(b"{\"data\":{\"password\":\"hunter2\"}}");
        store.create(key, secret.clone(), None).await.unwrap();
        store
            .create(
                "/core/configmaps/default/c",
                Bytes::from_static(b"plain"),
                None,
            )
            .await
            .unwrap();
        let below = raw.get(key).await.unwrap().unwrap();
        assert!(below.value.starts_with(b"k8s:enc:aesgcm:v1:old:"));
        assert!(!below.value.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(store.get(key).await.unwrap().unwrap().value, secret);
        let configmap = raw
            .get("/core/configmaps/default/c")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&configmap.value[..], b"plain");

        // Rotation: a new key first, the old one still readable; rewrite moves everything.
        let both = EncryptionKeys::parse(&(key_line("new", 2) + &key_line("old", 1))).unwrap();
        let rotated = EncryptedStore::new(raw.clone(), both);
        assert_eq!(rotated.get(key).await.unwrap().unwrap().value, secret);
        assert_eq!(rotated.rewrite().await.unwrap(), 1);
        assert_eq!(rotated.rewrite().await.unwrap(), 0);
        let below = raw.get(key).await.unwrap().unwrap();
        assert!(below.value.starts_with(b"k8s:enc:aesgcm:v1:new:"));
        let only_new = EncryptedStore::new(
            raw.clone(),
            EncryptionKeys::parse(&key_line("new", 2)).unwrap(),
        );
        assert_eq!(only_new.get(key).await.unwrap().unwrap().value, secret);

        // A wrong key is an error, never ciphertext handed upward.
        let wrong = EncryptedStore::new(
            raw.clone(),
            EncryptionKeys::parse(&key_line("new", 3)).unwrap(),
        );
        assert!(matches!(
            wrong.get(key).await,
            Err(StoreError::Corrupt { .. })
        ));
        // A value moved to another key does not decrypt.
        raw.create("/core/secrets/default/copy", below.value.clone(), None)
            .await
            .unwrap();
        assert!(only_new.get("/core/secrets/default/copy").await.is_err());
        assert!(EncryptionKeys::parse("bad line\n").is_err());
        assert!(EncryptionKeys::parse("k:c2hvcnQ=\n").is_err());
    }

    #[tokio::test]
    async fn watches_and_conflicts_see_plaintext() {
        let raw: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let store = EncryptedStore::new(raw, EncryptionKeys::parse(&key_line("k", 7)).unwrap());
        let key = "/core/secrets/ns/w";
        let mut events = store.watch(SECRETS_PREFIX, 0).await.unwrap();
        let created = store
            .create(key, Bytes::from_static(b"one"), None)
            .await
            .unwrap();
        store
            .update(key, Bytes::from_static(b"two"), created.mod_revision, None)
            .await
            .unwrap();
        match events.next().await.unwrap().unwrap() {
            WatchEvent::Created(kv) => assert_eq!(&kv.value[..], b"one"),
            other => panic!("{other:?}"),
        }
        match events.next().await.unwrap().unwrap() {
            WatchEvent::Modified { current, previous } => {
                assert_eq!(&current.value[..], b"two");
                assert_eq!(&previous.value[..], b"one");
            }
            other => panic!("{other:?}"),
        }
        match store
            .update(
                key,
                Bytes::from_static(b"three"),
                created.mod_revision,
                None,
            )
            .await
        {
            Err(StoreError::Conflict {
                current: Some(current),
                ..
            }) => assert_eq!(&current.value[..], b"two"),
            other => panic!("{other:?}"),
        }
        assert_eq!(&store.delete(key, None).await.unwrap().value[..], b"two");
    }
}
