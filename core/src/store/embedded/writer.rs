//! The embedded store's single writer thread: group commit, compaction and lease expiry.
//!
//! Requests queue on a channel; the thread takes every waiting request (up to `max_batch`) into
//! one durable redb transaction (optionally, when more writers seem to be on their way, after
//! waiting `gather_delay` for them, as PostgreSQL's `commit_delay` does), commits, dispatches the
//! committed events to the watch hub, and only then answers. A failed commit stops the writer for good (every later write answers
//! `Unavailable`): in-memory lease state could no longer be trusted, and the store must be
//! reopened.

use super::{
    codec, db_error, EmbeddedStoreConfig, KV, LEASES, LOG, META, META_COMPACTED, META_REVISION,
};
use crate::store::{KeyValue, LeaseId, LeaseTable, Revision, StoreError, WatchEvent, WatchHub};
use bytes::Bytes;
use redb::{Database, ReadableDatabase, ReadableTable, Table};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::sync::oneshot;

/// Log rows physically removed per batch at most, so compaction never stalls a commit.
const PURGE_PER_BATCH: u64 = 8192;

/// One write asked of the writer.
pub(super) enum WriteOp {
    Create {
        key: String,
        value: Bytes,
        lease: Option<LeaseId>,
    },
    Update {
        key: String,
        value: Bytes,
        expected_revision: Revision,
        lease: Option<LeaseId>,
    },
    Delete {
        key: String,
        expected_revision: Option<Revision>,
    },
    Compact {
        revision: Revision,
    },
    GrantLease {
        ttl: Duration,
    },
    RevokeLease {
        id: LeaseId,
    },
}

/// What a successful write returns.
#[derive(Debug)]
pub(super) enum WriteOutcome {
    Kv(KeyValue),
    Done,
    Lease(LeaseId),
}

/// A write and where to send its answer.
pub(super) struct WriteRequest {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<WriteOutcome, StoreError>>,
}

struct Writer {
    db: Arc<Database>,
    hub: Arc<WatchHub>,
    leases: Arc<Mutex<LeaseTable>>,
    config: EmbeddedStoreConfig,
    revision: Revision,
    compacted: Revision,
    purged: Revision,
}

struct Tables<'t> {
    kv: Table<'t, &'static str, &'static [u8]>,
    log: Table<'t, u64, &'static [u8]>,
    meta: Table<'t, &'static str, u64>,
    leases: Table<'t, u64, u64>,
}

/// Starts the writer thread; it stops when every sender is dropped.
pub(super) fn spawn(
    db: Arc<Database>,
    hub: Arc<WatchHub>,
    leases: Arc<Mutex<LeaseTable>>,
    config: EmbeddedStoreConfig,
    revision: Revision,
) -> Result<(Sender<WriteRequest>, std::thread::JoinHandle<()>), StoreError> {
    let (compacted, purged) = {
        let txn = db.begin_read().map_err(db_error)?;
        let meta = txn.open_table(META).map_err(db_error)?;
        let compacted = meta
            .get(META_COMPACTED)
            .map_err(db_error)?
            .map_or(0, |v| v.value()) as i64;
        let log = txn.open_table(LOG).map_err(db_error)?;
        let first = log
            .first()
            .map_err(db_error)?
            .map_or(revision as u64 + 1, |(k, _)| k.value());
        (compacted, first as i64 - 1)
    };
    let (tx, rx) = std::sync::mpsc::channel();
    let writer = Writer {
        db,
        hub,
        leases,
        config,
        revision,
        compacted,
        purged,
    };
    let handle = std::thread::Builder::new()
        .name("capstan-embedded-writer".into())
        .spawn(move || writer.run(rx))
        .map_err(StoreError::backend)?;
    Ok((tx, handle))
}

impl Writer {
    fn leases(&self) -> MutexGuard<'_, LeaseTable> {
        self.leases.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn run(mut self, rx: Receiver<WriteRequest>) {
        let mut last_batch = 0;
        loop {
            let mut batch = Vec::new();
            match rx.recv_timeout(self.config.lease_check_interval) {
                Ok(request) => batch.push(request),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            self.gather(&rx, &mut batch);
            // Fewer writes are waiting than joined the last commit: more writers are likely on
            // their way, and a moment's wait lets them share this commit's fsync. (A lone writer,
            // or writers that all joined already, are never kept waiting.)
            let straggling =
                !batch.is_empty() && batch.len() < last_batch.min(self.config.max_batch);
            if straggling && !self.config.gather_delay.is_zero() {
                std::thread::sleep(self.config.gather_delay);
                self.gather(&rx, &mut batch);
            }
            last_batch = batch.len();
            let expired = self.leases().expired();
            if batch.is_empty() && expired.is_empty() && self.purged >= self.compacted {
                continue;
            }
            if let Err(err) = self.commit_batch(batch, expired) {
                tracing::error!(error = %err, "embedded store commit failed; the writer stops");
                // Answer everything still queued, then stop; dropping rx fails later sends.
                while let Ok(request) = rx.try_recv() {
                    let _ = request.reply.send(Err(StoreError::Unavailable(
                        "the embedded store's writer stopped after a failed commit".into(),
                    )));
                }
                return;
            }
        }
    }

    /// Adds the requests waiting on `rx` to `batch`, up to `max_batch`.
    fn gather(&self, rx: &Receiver<WriteRequest>, batch: &mut Vec<WriteRequest>) {
        while batch.len() < self.config.max_batch {
            match rx.try_recv() {
                Ok(request) => batch.push(request),
                Err(_) => break,
            }
        }
    }

    fn commit_batch(
        &mut self,
        batch: Vec<WriteRequest>,
        expired: Vec<LeaseId>,
    ) -> Result<(), StoreError> {
        let fail_all = |batch: Vec<WriteRequest>, err: &StoreError| {
            for request in batch {
                let _ = request
                    .reply
                    .send(Err(StoreError::Unavailable(err.to_string().into())));
            }
        };
        let txn = match self.db.begin_write() {
            Ok(txn) => txn,
            Err(err) => {
                let err = db_error(err);
                fail_all(batch, &err);
                return Err(err);
            }
        };
        let mut revision = self.revision;
        let mut compacted = self.compacted;
        let mut events = Vec::new();
        let mut answers = Vec::with_capacity(batch.len());
        let staged = (|| -> Result<Revision, StoreError> {
            let mut tables = Tables {
                kv: txn.open_table(KV).map_err(db_error)?,
                log: txn.open_table(LOG).map_err(db_error)?,
                meta: txn.open_table(META).map_err(db_error)?,
                leases: txn.open_table(LEASES).map_err(db_error)?,
            };
            for request in batch {
                let result = self.apply(
                    &mut tables,
                    &mut revision,
                    &mut compacted,
                    request.op,
                    &mut events,
                );
                answers.push((request.reply, result));
            }
            for id in expired {
                tracing::debug!(lease = %id, "lease expired");
                self.revoke(&mut tables, &mut revision, id, &mut events)?;
            }
            tables
                .meta
                .insert(META_REVISION, revision as u64)
                .map_err(db_error)?;
            // Automatic compaction keeps at most `history` revisions.
            let floor = revision - self.config.history as i64;
            if floor > compacted {
                compacted = floor;
            }
            tables
                .meta
                .insert(META_COMPACTED, compacted as u64)
                .map_err(db_error)?;
            let purge_to = compacted.min(self.purged + PURGE_PER_BATCH as i64);
            if purge_to > self.purged {
                let from = (self.purged + 1) as u64;
                tables
                    .log
                    .retain_in(from..=purge_to as u64, |_, _| false)
                    .map_err(db_error)?;
            }
            Ok(purge_to.max(self.purged))
        })();
        let purged = match staged.and_then(|purged| txn.commit().map_err(db_error).map(|()| purged))
        {
            Ok(purged) => purged,
            Err(err) => {
                for (reply, _) in answers {
                    let _ = reply.send(Err(StoreError::Unavailable(err.to_string().into())));
                }
                return Err(err);
            }
        };
        self.revision = revision;
        self.compacted = compacted;
        self.purged = purged;
        self.hub.dispatch(&events);
        for (reply, result) in answers {
            let _ = reply.send(result);
        }
        Ok(())
    }

    fn apply(
        &self,
        tables: &mut Tables<'_>,
        revision: &mut Revision,
        compacted: &mut Revision,
        op: WriteOp,
        events: &mut Vec<WatchEvent>,
    ) -> Result<WriteOutcome, StoreError> {
        match op {
            WriteOp::Create { key, value, lease } => {
                if tables.kv.get(key.as_str()).map_err(db_error)?.is_some() {
                    return Err(StoreError::AlreadyExists { key });
                }
                self.leases().check(lease)?;
                *revision += 1;
                let kv = KeyValue {
                    key,
                    value,
                    create_revision: *revision,
                    mod_revision: *revision,
                    version: 1,
                    lease,
                };
                self.put(tables, &kv, WatchEvent::Created(kv.clone()), events)?;
                self.leases().reattach(&kv.key, None, lease);
                Ok(WriteOutcome::Kv(kv))
            }
            WriteOp::Update {
                key,
                value,
                expected_revision,
                lease,
            } => {
                let previous =
                    Self::read(tables, &key)?.ok_or(StoreError::NotFound { key: key.clone() })?;
                if previous.mod_revision != expected_revision {
                    return Err(StoreError::Conflict {
                        key,
                        current: Some(Box::new(previous)),
                    });
                }
                self.leases().check(lease)?;
                *revision += 1;
                let kv = KeyValue {
                    key,
                    value,
                    create_revision: previous.create_revision,
                    mod_revision: *revision,
                    version: previous.version + 1,
                    lease,
                };
                let old_lease = previous.lease;
                let event = WatchEvent::Modified {
                    current: kv.clone(),
                    previous,
                };
                self.put(tables, &kv, event, events)?;
                self.leases().reattach(&kv.key, old_lease, lease);
                Ok(WriteOutcome::Kv(kv))
            }
            WriteOp::Delete {
                key,
                expected_revision,
            } => {
                let current =
                    Self::read(tables, &key)?.ok_or(StoreError::NotFound { key: key.clone() })?;
                if expected_revision.is_some_and(|rev| rev != current.mod_revision) {
                    return Err(StoreError::Conflict {
                        key,
                        current: Some(Box::new(current)),
                    });
                }
                self.remove(tables, revision, current.clone(), events)?;
                Ok(WriteOutcome::Kv(current))
            }
            WriteOp::Compact { revision: to } => {
                if to > *revision {
                    return Err(StoreError::FutureRevision {
                        requested: to,
                        current: *revision,
                    });
                }
                *compacted = (*compacted).max(to);
                Ok(WriteOutcome::Done)
            }
            WriteOp::GrantLease { ttl } => {
                let id = self.leases().new_id();
                let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
                tables
                    .leases
                    .insert(id.0 as u64, ttl_ms)
                    .map_err(db_error)?;
                self.leases().insert(id, ttl);
                Ok(WriteOutcome::Lease(id))
            }
            WriteOp::RevokeLease { id } => {
                if self.revoke(tables, revision, id, events)? {
                    Ok(WriteOutcome::Done)
                } else {
                    Err(StoreError::LeaseNotFound(id))
                }
            }
        }
    }

    fn read(tables: &Tables<'_>, key: &str) -> Result<Option<KeyValue>, StoreError> {
        let value = tables.kv.get(key).map_err(db_error)?;
        value.map(|v| codec::decode_kv(v.value(), key)).transpose()
    }

    fn put(
        &self,
        tables: &mut Tables<'_>,
        kv: &KeyValue,
        event: WatchEvent,
        events: &mut Vec<WatchEvent>,
    ) -> Result<(), StoreError> {
        tables
            .kv
            .insert(kv.key.as_str(), codec::encode_kv(kv).as_slice())
            .map_err(db_error)?;
        tables
            .log
            .insert(
                kv.mod_revision as u64,
                codec::encode_event(&event).as_slice(),
            )
            .map_err(db_error)?;
        events.push(event);
        Ok(())
    }

    fn remove(
        &self,
        tables: &mut Tables<'_>,
        revision: &mut Revision,
        previous: KeyValue,
        events: &mut Vec<WatchEvent>,
    ) -> Result<(), StoreError> {
        *revision += 1;
        tables.kv.remove(previous.key.as_str()).map_err(db_error)?;
        self.leases().reattach(&previous.key, previous.lease, None);
        let event = WatchEvent::Deleted {
            previous,
            revision: *revision,
        };
        tables
            .log
            .insert(*revision as u64, codec::encode_event(&event).as_slice())
            .map_err(db_error)?;
        events.push(event);
        Ok(())
    }

    fn revoke(
        &self,
        tables: &mut Tables<'_>,
        revision: &mut Revision,
        id: LeaseId,
        events: &mut Vec<WatchEvent>,
    ) -> Result<bool, StoreError> {
        let Some(keys) = self.leases().remove(id) else {
            return Ok(false);
        };
        tables.leases.remove(id.0 as u64).map_err(db_error)?;
        for key in keys {
            if let Some(current) = Self::read(tables, &key)? {
                self.remove(tables, revision, current, events)?;
            }
        }
        Ok(true)
    }
}
