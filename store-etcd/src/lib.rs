//! `EtcdStore`: the [`Store`] contract on etcd v3, through etcd-client.
//!
//! Every store key is placed under a configurable root prefix (default `/registry`, as in
//! Kubernetes), so the typed key `/core/pods/default/web` lives in etcd at
//! `/registry/core/pods/default/web`, and several stores can share one etcd. Creates, updates and
//! deletes are single etcd transactions comparing `mod_revision`; watches ask for previous values
//! and request progress notifications at a fixed interval; leases are etcd leases. The gRPC
//! channel reconnects by itself after an etcd restart; a broken watch ends with a retryable
//! `Unavailable` error so its consumer re-watches from its last revision.
//!
//! etcd's default request limit (`--max-request-bytes`, 1.5 MiB) counts the whole request, so a
//! value of exactly [`MAX_VALUE_BYTES`](capstan_core::store::MAX_VALUE_BYTES) needs a little
//! headroom: run etcd with `--max-request-bytes=1638400` (1.5 MiB + 64 KiB).

mod error_map;
#[cfg(feature = "testkit")]
mod local_etcd;

/// Helpers for tests and benchmarks (feature `testkit`).
#[cfg(feature = "testkit")]
pub mod testkit {
    pub use crate::local_etcd::LocalEtcd;
}

use async_trait::async_trait;
use bytes::Bytes;
use capstan_core::store::{
    validate_key, validate_value, KeyValue, LeaseId, ListOptions, ListPage, Revision, Store,
    StoreError, WatchEvent, WatchStream,
};
use error_map::map_error;
use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions,
};
use futures::StreamExt;
use std::time::Duration;

/// Attempts after the first for a request that never reached a member.
const UNSENT_RETRIES: u64 = 4;

/// Whether `err` says the request was never sent: the connection to the chosen member could
/// not be made.
fn unsent(err: &etcd_client::Error) -> bool {
    match err {
        etcd_client::Error::GRpcStatus(status) => {
            status.code() == tonic::Code::Unavailable
                && status.message().contains("tcp connect error")
        }
        _ => false,
    }
}

/// How an [`EtcdStore`] connects and lays out its keys.
#[derive(Debug, Clone)]
pub struct EtcdStoreConfig {
    /// etcd client URLs, e.g. `http://127.0.0.1:2379`.
    pub endpoints: Vec<String>,
    /// Root prefix prepended to every key (no trailing `/`).
    pub prefix: String,
    /// How often each watch asks etcd for a progress notification.
    pub progress_interval: Duration,
}

impl EtcdStoreConfig {
    /// Default layout (`/registry`) for the given endpoints.
    pub fn new(endpoints: impl IntoIterator<Item = impl Into<String>>) -> Self {
        EtcdStoreConfig {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: "/registry".into(),
            progress_interval: Duration::from_secs(5),
        }
    }

    /// Replaces the root prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into().trim_end_matches('/').to_string();
        self
    }
}

/// A [`Store`] backed by an etcd v3 cluster.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
    prefix: String,
    progress_interval: Duration,
}

/// Fills in the key and size of a size error reported by etcd.
fn sized(err: StoreError, key: &str, size: usize) -> StoreError {
    match err {
        StoreError::ValueTooLarge { limit, .. } => StoreError::ValueTooLarge {
            key: key.to_string(),
            size,
            limit,
        },
        other => other,
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
fn range_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

impl EtcdStore {
    /// Connects to etcd.
    pub async fn connect(config: EtcdStoreConfig) -> Result<Self, StoreError> {
        let client = Client::connect(&config.endpoints, None)
            .await
            .map_err(map_error)?;
        Ok(EtcdStore {
            client,
            prefix: config.prefix,
            progress_interval: config.progress_interval,
        })
    }

    /// A KV client that accepts responses of any size: a large listing may exceed gRPC's 4 MiB
    /// default (Kubernetes lifts the limit the same way).
    fn kv(&self) -> etcd_client::KvClient {
        self.client
            .kv_client()
            .max_decoding_message_size(i32::MAX as usize)
    }

    /// A range read. A request the channel could not even send (it picked a member that
    /// refuses connections, e.g. one that just died) is retried at once on another: with
    /// several endpoints, losing one member costs no failed request.
    async fn range(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<etcd_client::GetResponse, etcd_client::Error> {
        let key: Vec<u8> = key.into();
        let mut attempt = 0;
        loop {
            match self.kv().get(key.clone(), options.clone()).await {
                Err(err) if unsent(&err) && attempt < UNSENT_RETRIES => attempt += 1,
                result => return result,
            }
            tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
        }
    }

    /// A transaction, retried like [`range`](Self::range) when it could not be sent (so it
    /// cannot have been applied).
    async fn transact(&self, txn: Txn) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
        let mut attempt = 0;
        loop {
            match self.kv().txn(txn.clone()).await {
                Err(err) if unsent(&err) && attempt < UNSENT_RETRIES => attempt += 1,
                result => return result,
            }
            tokio::time::sleep(Duration::from_millis(20 * attempt)).await;
        }
    }

    /// The root prefix of this store's keys in etcd.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    fn convert(prefix: &str, kv: &etcd_client::KeyValue) -> Result<KeyValue, StoreError> {
        let full = std::str::from_utf8(kv.key()).map_err(|_| StoreError::Corrupt {
            location: String::from_utf8_lossy(kv.key()).into_owned(),
            reason: "key is not UTF-8".into(),
        })?;
        let key = full
            .strip_prefix(prefix)
            .ok_or_else(|| StoreError::Corrupt {
                location: full.to_string(),
                reason: format!("key outside the store prefix {prefix:?}"),
            })?;
        Ok(KeyValue {
            key: key.to_string(),
            value: Bytes::copy_from_slice(kv.value()),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: (kv.lease() != 0).then_some(LeaseId(kv.lease())),
        })
    }

    fn header_revision(
        header: Option<&etcd_client::ResponseHeader>,
    ) -> Result<Revision, StoreError> {
        header
            .map(|h| h.revision())
            .ok_or_else(|| StoreError::backend("etcd response without header"))
    }

    /// The error for a transaction whose compare failed: Conflict with the current value, or
    /// NotFound when the key is gone.
    fn failed_compare(
        &self,
        key: &str,
        responses: Vec<TxnOpResponse>,
    ) -> Result<StoreError, StoreError> {
        Ok(match self.failure_value(responses)? {
            Some(current) => StoreError::Conflict {
                key: key.to_string(),
                current: Some(Box::new(current)),
            },
            None => StoreError::NotFound {
                key: key.to_string(),
            },
        })
    }

    /// Reads the current value from the failure branch of a transaction.
    fn failure_value(&self, responses: Vec<TxnOpResponse>) -> Result<Option<KeyValue>, StoreError> {
        for response in responses {
            if let TxnOpResponse::Get(get) = response {
                return get
                    .kvs()
                    .first()
                    .map(|kv| Self::convert(&self.prefix, kv))
                    .transpose();
            }
        }
        Ok(None)
    }

    /// Fails with `Compacted` or `FutureRevision` unless a read at `revision` is possible.
    async fn check_readable(&self, revision: Revision) -> Result<Revision, StoreError> {
        let mut kv = self.kv();
        let options = GetOptions::new().with_count_only().with_revision(revision);
        let response =
            kv.get(self.prefix.clone(), Some(options))
                .await
                .map_err(|e| match map_error(e) {
                    StoreError::Compacted { compacted, .. } => StoreError::Compacted {
                        requested: revision,
                        compacted,
                    },
                    StoreError::FutureRevision { .. } => StoreError::FutureRevision {
                        requested: revision,
                        current: -1,
                    },
                    other => other,
                })?;
        Self::header_revision(response.header())
    }
}

#[async_trait]
impl Store for EtcdStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(key)?;
        let response = self
            .range(self.full_key(key), None)
            .await
            .map_err(map_error)?;
        response
            .kvs()
            .first()
            .map(|kv| Self::convert(&self.prefix, kv))
            .transpose()
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage, StoreError> {
        validate_key(prefix)?;
        let full_prefix = self.full_key(prefix);
        let start = match &options.start_after {
            Some(after) if after.as_str() >= prefix => {
                let mut start = self.full_key(after).into_bytes();
                start.push(0);
                start
            }
            _ => full_prefix.clone().into_bytes(),
        };
        let mut get = GetOptions::new().with_range(range_end(full_prefix.as_bytes()));
        if let Some(limit) = options.limit.filter(|l| *l > 0) {
            get = get.with_limit(i64::try_from(limit).unwrap_or(i64::MAX));
        }
        if let Some(revision) = options.revision {
            if revision <= 0 {
                return Err(StoreError::InvalidArgument {
                    reason: format!("revision {revision} must be positive"),
                });
            }
            get = get.with_revision(revision);
        }
        let response = self
            .range(start, Some(get))
            .await
            .map_err(|e| match map_error(e) {
                StoreError::Compacted { compacted, .. } => StoreError::Compacted {
                    requested: options.revision.unwrap_or_default(),
                    compacted,
                },
                StoreError::FutureRevision { .. } => StoreError::FutureRevision {
                    requested: options.revision.unwrap_or_default(),
                    current: -1,
                },
                other => other,
            })?;
        let items = response
            .kvs()
            .iter()
            .map(|kv| Self::convert(&self.prefix, kv))
            .collect::<Result<Vec<_>, _>>()?;
        let revision = match options.revision {
            Some(revision) => revision,
            None => Self::header_revision(response.header())?,
        };
        Ok(ListPage {
            items,
            revision,
            more: response.more(),
        })
    }

    async fn create(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let full = self.full_key(key);
        let put = lease.map(|l| PutOptions::new().with_lease(l.0));
        let txn = Txn::new()
            .when([Compare::create_revision(full.clone(), CompareOp::Equal, 0)])
            .and_then([TxnOp::put(full.clone(), value.to_vec(), put)])
            .or_else([TxnOp::get(full, None)]);
        let response = self
            .transact(txn)
            .await
            .map_err(|e| sized(map_error(e), key, value.len()))?;
        if !response.succeeded() {
            return Err(StoreError::AlreadyExists {
                key: key.to_string(),
            });
        }
        let revision = Self::header_revision(response.header())?;
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: revision,
            mod_revision: revision,
            version: 1,
            lease,
        })
    }

    async fn update(
        &self,
        key: &str,
        value: Bytes,
        expected_revision: Revision,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        validate_value(key, &value)?;
        let full = self.full_key(key);
        let put = lease.map(|l| PutOptions::new().with_lease(l.0));
        // A keys-only read after the put returns the new metadata without the previous value.
        let txn = Txn::new()
            .when([Compare::mod_revision(
                full.clone(),
                CompareOp::Equal,
                expected_revision,
            )])
            .and_then([
                TxnOp::put(full.clone(), value.to_vec(), put),
                TxnOp::get(full.clone(), Some(GetOptions::new().with_keys_only())),
            ])
            .or_else([TxnOp::get(full, None)]);
        let response = self
            .transact(txn)
            .await
            .map_err(|e| sized(map_error(e), key, value.len()))?;
        if !response.succeeded() {
            return Err(self.failed_compare(key, response.op_responses())?);
        }
        let written = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(get) => get.kvs().first().cloned(),
            _ => None,
        });
        let written = written
            .ok_or_else(|| StoreError::backend("etcd returned no metadata for an update"))?;
        Ok(KeyValue {
            key: key.to_string(),
            value,
            create_revision: written.create_revision(),
            mod_revision: written.mod_revision(),
            version: written.version(),
            lease,
        })
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        let full = self.full_key(key);
        let compare = match expected_revision {
            Some(rev) => Compare::mod_revision(full.clone(), CompareOp::Equal, rev),
            None => Compare::create_revision(full.clone(), CompareOp::Greater, 0),
        };
        let txn = Txn::new()
            .when([compare])
            .and_then([TxnOp::delete(
                full.clone(),
                Some(etcd_client::DeleteOptions::new().with_prev_key()),
            )])
            .or_else([TxnOp::get(full, None)]);
        let response = self.transact(txn).await.map_err(map_error)?;
        if !response.succeeded() {
            return Err(self.failed_compare(key, response.op_responses())?);
        }
        let previous = response.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Delete(delete) => delete.prev_kvs().first().cloned(),
            _ => None,
        });
        match previous {
            Some(previous) => Self::convert(&self.prefix, &previous),
            None => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
        }
    }

    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        validate_key(prefix)?;
        if after_revision > 0 {
            let current = self.check_readable(after_revision).await?;
            if after_revision > current {
                return Err(StoreError::FutureRevision {
                    requested: after_revision,
                    current,
                });
            }
        }
        let options = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_progress_notify()
            .with_start_revision(after_revision + 1);
        let stream = self
            .client
            .watch_client()
            .watch(self.full_key(prefix), Some(options))
            .await
            .map_err(map_error)?;
        let state = EtcdWatch {
            stream,
            prefix: self.prefix.clone(),
            ticker: tokio::time::interval_at(
                tokio::time::Instant::now() + self.progress_interval,
                self.progress_interval,
            ),
            pending: Default::default(),
            done: false,
            requested: after_revision,
        };
        Ok(futures::stream::unfold(state, EtcdWatch::next).boxed())
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let response = self
            .range(
                self.prefix.clone(),
                Some(GetOptions::new().with_count_only()),
            )
            .await
            .map_err(map_error)?;
        Self::header_revision(response.header())
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        match self.kv().compact(revision, None).await.map_err(map_error) {
            Ok(_) | Err(StoreError::Compacted { .. }) => Ok(()),
            Err(StoreError::FutureRevision { .. }) => Err(StoreError::FutureRevision {
                requested: revision,
                current: self.current_revision().await?,
            }),
            Err(err) => Err(err),
        }
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        if ttl.is_zero() {
            return Err(StoreError::InvalidArgument {
                reason: "lease TTL must be positive".into(),
            });
        }
        let seconds =
            i64::try_from(ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0)).unwrap_or(i64::MAX);
        let response = self
            .client
            .lease_client()
            .grant(seconds, None)
            .await
            .map_err(map_error)?;
        Ok(LeaseId(response.id()))
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        let not_found = |e| match map_error(e) {
            StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease),
            other => other,
        };
        let (mut keeper, mut responses) = self
            .client
            .lease_client()
            .keep_alive(lease.0)
            .await
            .map_err(not_found)?;
        keeper.keep_alive().await.map_err(not_found)?;
        match responses.message().await.map_err(not_found)? {
            Some(response) if response.ttl() > 0 => Ok(Duration::from_secs(response.ttl() as u64)),
            _ => Err(StoreError::LeaseNotFound(lease)),
        }
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.client
            .lease_client()
            .revoke(lease.0)
            .await
            .map(drop)
            .map_err(|e| match map_error(e) {
                StoreError::LeaseNotFound(_) => StoreError::LeaseNotFound(lease),
                other => other,
            })
    }
}

/// The consuming side of one etcd watch.
struct EtcdWatch {
    stream: etcd_client::WatchStream,
    prefix: String,
    ticker: tokio::time::Interval,
    pending: std::collections::VecDeque<WatchEvent>,
    done: bool,
    requested: Revision,
}

type Item = Result<WatchEvent, StoreError>;

impl EtcdWatch {
    async fn next(mut self) -> Option<(Item, EtcdWatch)> {
        loop {
            if self.done {
                return None;
            }
            if let Some(event) = self.pending.pop_front() {
                return Some((Ok(event), self));
            }
            let message = tokio::select! {
                message = self.stream.message() => message,
                _ = self.ticker.tick() => {
                    if let Err(err) = self.stream.request_progress().await {
                        return self.fail(map_error(err));
                    }
                    continue;
                }
            };
            let response = match message {
                Ok(Some(response)) => response,
                Ok(None) => {
                    return self.fail(StoreError::Unavailable(
                        "etcd closed the watch stream".into(),
                    ))
                }
                Err(err) => return self.fail(map_error(err)),
            };
            if response.compact_revision() > 0 {
                let compacted = response.compact_revision();
                let requested = self.requested;
                return self.fail(StoreError::Compacted {
                    requested,
                    compacted,
                });
            }
            if response.canceled() {
                let reason = format!("etcd canceled the watch: {}", response.cancel_reason());
                return self.fail(StoreError::Unavailable(reason.into()));
            }
            if response.created() && response.events().is_empty() {
                continue;
            }
            if response.events().is_empty() {
                let revision = response.header().map_or(0, |h| h.revision());
                return Some((Ok(WatchEvent::Progress(revision)), self));
            }
            for event in response.events() {
                match self.convert(event) {
                    Ok(event) => self.pending.push_back(event),
                    Err(err) => return self.fail(err),
                }
            }
        }
    }

    fn fail(mut self, err: StoreError) -> Option<(Item, EtcdWatch)> {
        self.done = true;
        Some((Err(err), self))
    }

    fn convert(&self, event: &etcd_client::Event) -> Result<WatchEvent, StoreError> {
        let kv = event
            .kv()
            .ok_or_else(|| StoreError::backend("etcd watch event without a key"))?;
        let current = EtcdStore::convert(&self.prefix, kv)?;
        let previous = event
            .prev_kv()
            .map(|prev| EtcdStore::convert(&self.prefix, prev))
            .transpose()?;
        let missing_previous = || StoreError::Compacted {
            requested: self.requested,
            compacted: current.mod_revision,
        };
        Ok(match event.event_type() {
            EventType::Put if current.version == 1 => WatchEvent::Created(current),
            EventType::Put => WatchEvent::Modified {
                previous: previous.ok_or_else(missing_previous)?,
                current,
            },
            EventType::Delete => {
                let revision = current.mod_revision;
                WatchEvent::Deleted {
                    previous: previous.ok_or_else(missing_previous)?,
                    revision,
                }
            }
        })
    }
}
