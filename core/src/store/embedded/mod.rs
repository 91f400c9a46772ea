//! `EmbeddedStore`: the durable, single-process [`Store`] on redb, the reference binary's
//! default.
//!
//! redb keeps no history, so this module builds MVCC on top: a `kv` table with the current value
//! of every key and a `log` table of every change by revision (with previous values), from which
//! past-revision lists and watch resumption are served. All writes go through one writer thread
//! that gathers whatever requests are waiting into a single durable transaction (group commit:
//! concurrent writers share one fsync) and answers them only after the commit, so nothing
//! acknowledged is lost on `kill -9`. The same thread compacts the log after every batch once it
//! exceeds the configured history, so high-churn keys (heartbeats, leases) cannot grow the file
//! without bound, and expires leases. It never touches the hub's watchers except by handing it
//! committed events.

mod codec;
mod writer;

use super::key::{validate_key, validate_prefix, validate_value};
use super::lease_table::validate_ttl;
use super::revision_view::{check_readable, in_list_range};
use super::{
    merge_page, state_before, KeyValue, LeaseId, LeaseTable, ListOptions, ListPage, Revision,
    Store, StoreError, WatchHub, WatchStream,
};
use async_trait::async_trait;
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use writer::{WriteOp, WriteOutcome, WriteRequest};

const KV: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
const LOG: TableDefinition<u64, &[u8]> = TableDefinition::new("log");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const LEASES: TableDefinition<u64, u64> = TableDefinition::new("leases");
const META_REVISION: &str = "revision";
const META_COMPACTED: &str = "compacted";

/// Tuning of an [`EmbeddedStore`].
#[derive(Debug, Clone)]
pub struct EmbeddedStoreConfig {
    /// Revisions of history kept for watch resumption and past-revision lists; older ones are
    /// compacted after each write batch.
    pub history: u64,
    /// Largest number of requests committed in one transaction.
    pub max_batch: usize,
    /// How long the writer waits for more requests to join a transaction when fewer are
    /// waiting than joined the previous one (more writers are likely on their way), so that
    /// they share one fsync; zero (the default) never waits. A lone writer is never delayed.
    pub gather_delay: Duration,
    /// Events buffered per watcher before a slow watcher is closed.
    pub watch_buffer: usize,
    /// How often watchers receive progress notifications.
    pub progress_interval: Duration,
    /// How often expired leases are looked for.
    pub lease_check_interval: Duration,
}

impl Default for EmbeddedStoreConfig {
    fn default() -> Self {
        EmbeddedStoreConfig {
            history: 100_000,
            max_batch: 512,
            gather_delay: Duration::ZERO,
            watch_buffer: 4096,
            progress_interval: Duration::from_secs(5),
            lease_check_interval: Duration::from_millis(100),
        }
    }
}

/// A durable [`Store`] in one redb file. Cloning shares the same database and writer.
#[derive(Clone)]
pub struct EmbeddedStore {
    inner: Arc<Inner>,
}

struct Inner {
    db: Arc<Database>,
    hub: Arc<WatchHub>,
    leases: Arc<Mutex<LeaseTable>>,
    requests: Option<std::sync::mpsc::Sender<WriteRequest>>,
    writer: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Drop for Inner {
    /// Closes the request queue and waits for the writer to finish its batch, so that the file
    /// is released when the last handle is dropped.
    fn drop(&mut self) {
        self.requests.take();
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn db_error(err: impl Into<redb::Error>) -> StoreError {
    match err.into() {
        redb::Error::Corrupted(reason) => StoreError::Corrupt {
            location: "redb database".into(),
            reason,
        },
        other => StoreError::backend(other),
    }
}

fn corrupt_meta(what: &str) -> StoreError {
    StoreError::Corrupt {
        location: "meta table".into(),
        reason: format!("{what} out of range"),
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store in the file at `path`.
    pub fn open(path: impl AsRef<Path>, config: EmbeddedStoreConfig) -> Result<Self, StoreError> {
        let path = path.as_ref().to_path_buf();
        let db = Database::create(&path).map_err(db_error)?;
        let txn = db.begin_write().map_err(db_error)?;
        let (revision, leases) = {
            txn.open_table(KV).map_err(db_error)?;
            txn.open_table(LOG).map_err(db_error)?;
            let meta = txn.open_table(META).map_err(db_error)?;
            let revision = meta
                .get(META_REVISION)
                .map_err(db_error)?
                .map_or(0, |v| v.value());
            let lease_rows = txn.open_table(LEASES).map_err(db_error)?;
            let mut leases = LeaseTable::default();
            // Deadlines are not persisted: like etcd after a restart, every lease gets a full TTL.
            for row in lease_rows.iter().map_err(db_error)? {
                let (id, ttl_ms) = row.map_err(db_error)?;
                leases.insert(
                    LeaseId(id.value() as i64),
                    Duration::from_millis(ttl_ms.value()),
                );
            }
            (revision, leases)
        };
        txn.commit().map_err(db_error)?;
        let revision = i64::try_from(revision).map_err(|_| corrupt_meta("revision"))?;
        let db = Arc::new(db);
        let hub = WatchHub::new(config.watch_buffer, config.progress_interval, revision);
        let leases = Arc::new(Mutex::new(leases));
        // Reattach keys to their leases.
        {
            let read = db.begin_read().map_err(db_error)?;
            let kv = read.open_table(KV).map_err(db_error)?;
            let mut table = leases.lock().unwrap_or_else(|p| p.into_inner());
            for row in kv.iter().map_err(db_error)? {
                let (key, value) = row.map_err(db_error)?;
                let kv = codec::decode_kv(value.value(), key.value())?;
                if kv.lease.is_some() {
                    table.reattach(&kv.key, None, kv.lease);
                }
            }
        }
        let (requests, writer) =
            writer::spawn(db.clone(), hub.clone(), leases.clone(), config, revision)?;
        tracing::info!(path = %path.display(), revision, "opened embedded store");
        Ok(EmbeddedStore {
            inner: Arc::new(Inner {
                db,
                hub,
                leases,
                requests: Some(requests),
                writer: Some(writer),
                path,
            }),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    async fn write(&self, op: WriteOp) -> Result<WriteOutcome, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .requests
            .as_ref()
            .ok_or_else(|| StoreError::Unavailable("the embedded store is closed".into()))?
            .send(WriteRequest { op, reply })
            .map_err(|_| {
                StoreError::Unavailable("the embedded store's writer has stopped".into())
            })?;
        answer.await.map_err(|_| {
            StoreError::Unavailable("the embedded store's writer has stopped".into())
        })?
    }

    async fn write_kv(&self, op: WriteOp) -> Result<KeyValue, StoreError> {
        match self.write(op).await? {
            WriteOutcome::Kv(kv) => Ok(kv),
            other => Err(StoreError::backend(format!(
                "writer answered {other:?} to a key write"
            ))),
        }
    }

    fn read_meta(
        meta: &impl ReadableTable<&'static str, u64>,
    ) -> Result<(Revision, Revision), StoreError> {
        let read = |name: &str| -> Result<Revision, StoreError> {
            let value = meta.get(name).map_err(db_error)?.map_or(0, |v| v.value());
            i64::try_from(value).map_err(|_| corrupt_meta(name))
        };
        Ok((read(META_REVISION)?, read(META_COMPACTED)?))
    }

    fn list_blocking(
        db: &Database,
        prefix: &str,
        options: ListOptions,
    ) -> Result<ListPage, StoreError> {
        let txn = db.begin_read().map_err(db_error)?;
        let (current, compacted) = Self::read_meta(&txn.open_table(META).map_err(db_error)?)?;
        let revision = options.revision.unwrap_or(current);
        check_readable(revision, current, compacted)?;
        let kv = txn.open_table(KV).map_err(db_error)?;
        let start_after = options.start_after.as_deref();
        let overlay = if revision < current {
            let log = txn.open_table(LOG).map_err(db_error)?;
            let events = log
                .range((revision + 1) as u64..)
                .map_err(db_error)?
                .map(|row| {
                    let (rev, data) = row.map_err(db_error)?;
                    codec::decode_event(data.value(), &format!("log@{}", rev.value()))
                })
                .collect::<Result<Vec<_>, _>>()?;
            state_before(events.iter(), |k| in_list_range(k, prefix, start_after))
        } else {
            Default::default()
        };
        let lower = match start_after {
            Some(after) if after >= prefix => std::ops::Bound::Excluded(after),
            _ => std::ops::Bound::Included(prefix),
        };
        let rows = kv
            .range::<&str>((lower, std::ops::Bound::Unbounded))
            .map_err(db_error)?;
        let current_rows = rows
            .map(|row| {
                let (key, value) = row.map_err(db_error)?;
                Ok((key.value().to_string(), value))
            })
            .take_while(|row: &Result<_, StoreError>| {
                row.as_ref().map_or(true, |(k, _)| k.starts_with(prefix))
            })
            .map(|row| row.and_then(|(key, value)| codec::decode_kv(value.value(), &key)));
        let (items, more) = merge_page(current_rows, overlay, options.limit)?;
        Ok(ListPage {
            items,
            revision,
            more,
        })
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        validate_key(key)?;
        let txn = self.inner.db.begin_read().map_err(db_error)?;
        let kv = txn.open_table(KV).map_err(db_error)?;
        let value = kv.get(key).map_err(db_error)?;
        value.map(|v| codec::decode_kv(v.value(), key)).transpose()
    }

    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage, StoreError> {
        validate_prefix(prefix)?;
        let db = self.inner.db.clone();
        let prefix = prefix.to_string();
        tokio::task::spawn_blocking(move || Self::list_blocking(&db, &prefix, options))
            .await
            .map_err(StoreError::backend)?
    }

    async fn create(
        &self,
        key: &str,
        value: Bytes,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        validate_value(key, &value)?;
        self.write_kv(WriteOp::Create {
            key: key.to_string(),
            value,
            lease,
        })
        .await
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
        self.write_kv(WriteOp::Update {
            key: key.to_string(),
            value,
            expected_revision,
            lease,
        })
        .await
    }

    async fn delete(
        &self,
        key: &str,
        expected_revision: Option<Revision>,
    ) -> Result<KeyValue, StoreError> {
        validate_key(key)?;
        self.write_kv(WriteOp::Delete {
            key: key.to_string(),
            expected_revision,
        })
        .await
    }

    async fn watch(
        &self,
        prefix: &str,
        after_revision: Revision,
    ) -> Result<WatchStream, StoreError> {
        validate_prefix(prefix)?;
        let db = &self.inner.db;
        self.inner.hub.subscribe(prefix, after_revision, || {
            let txn = db.begin_read().map_err(db_error)?;
            let (current, compacted) = Self::read_meta(&txn.open_table(META).map_err(db_error)?)?;
            check_readable(after_revision, current, compacted)?;
            let log = txn.open_table(LOG).map_err(db_error)?;
            let mut events = Vec::new();
            for row in log.range((after_revision + 1) as u64..).map_err(db_error)? {
                let (rev, data) = row.map_err(db_error)?;
                let event = codec::decode_event(data.value(), &format!("log@{}", rev.value()))?;
                if event.key().is_some_and(|k| k.starts_with(prefix)) {
                    events.push(event);
                }
            }
            Ok(events)
        })
    }

    async fn current_revision(&self) -> Result<Revision, StoreError> {
        let txn = self.inner.db.begin_read().map_err(db_error)?;
        Ok(Self::read_meta(&txn.open_table(META).map_err(db_error)?)?.0)
    }

    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.write(WriteOp::Compact { revision }).await.map(drop)
    }

    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        validate_ttl(ttl)?;
        match self.write(WriteOp::GrantLease { ttl }).await? {
            WriteOutcome::Lease(id) => Ok(id),
            other => Err(StoreError::backend(format!(
                "writer answered {other:?} to a lease grant"
            ))),
        }
    }

    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.inner
            .leases
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .keep_alive(lease)
    }

    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.write(WriteOp::RevokeLease { id: lease })
            .await
            .map(drop)
    }
}
