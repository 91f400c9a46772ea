//! The conformance kit for [`Store`] backends (feature `testkit`).
//!
//! Every backend — memory, embedded, etcd, or a third party's — runs [`run_conformance`] and
//! [`run_model_test`] from its own tests. The factory must return a store whose key space is
//! empty (for a shared server such as etcd: a fresh key prefix); cases run one after another
//! because compaction is store-wide. Cases assert only what the [`Store`] contract promises:
//! revisions increase but need not be consecutive.

use super::{KeyValue, ListOptions, Revision, Store, StoreError, WatchEvent, WatchStream};
use bytes::Bytes;
use futures::StreamExt;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Knobs for backends whose timing differs.
#[derive(Debug, Clone)]
pub struct ConformanceConfig {
    /// Longest wait for a progress notification on a quiet watch.
    pub progress_within: Duration,
    /// TTL used in lease tests (etcd rounds small TTLs up to about 2 s).
    pub lease_ttl: Duration,
    /// Longest wait, beyond the TTL, for an expired lease's keys to disappear.
    pub expiry_slack: Duration,
    /// The largest value the store must accept: [`MAX_VALUE_BYTES`](super::MAX_VALUE_BYTES),
    /// less any envelope a wrapping store adds (see `EncryptedStore::max_value_bytes`).
    pub max_value_bytes: usize,
}

impl Default for ConformanceConfig {
    fn default() -> Self {
        ConformanceConfig {
            progress_within: Duration::from_secs(12),
            lease_ttl: Duration::from_secs(2),
            expiry_slack: Duration::from_secs(8),
            max_value_bytes: super::MAX_VALUE_BYTES,
        }
    }
}

type Case = fn(Arc<dyn Store>, ConformanceConfig) -> futures::future::BoxFuture<'static, ()>;

/// Runs every conformance case, each on a fresh store from `make`. Panics (naming the case) on
/// the first violation.
pub async fn run_conformance<F, Fut>(make: F, config: ConformanceConfig)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let cases: &[(&str, Case)] = &[
        ("crud", |s, _| Box::pin(crud(s))),
        ("bad_input_changes_nothing", |s, c| {
            Box::pin(bad_input(s, c))
        }),
        ("cas_under_concurrency", |s, _| {
            Box::pin(cas_under_concurrency(s))
        }),
        ("list_prefix_and_pages", |s, _| {
            Box::pin(list_prefix_and_pages(s))
        }),
        ("pagination_stable_under_writes", |s, _| {
            Box::pin(pagination_under_writes(s))
        }),
        ("list_at_past_revision", |s, _| {
            Box::pin(list_at_past_revision(s))
        }),
        ("watch_order_and_resume", |s, _| {
            Box::pin(watch_order_and_resume(s))
        }),
        ("watch_live_events", |s, _| Box::pin(watch_live_events(s))),
        ("compaction", |s, _| Box::pin(compaction(s))),
        ("progress_notifications", |s, c| Box::pin(progress(s, c))),
        ("leases", |s, c| Box::pin(leases(s, c))),
    ];
    for (name, case) in cases {
        eprintln!("store conformance: {name} ...");
        let store = make().await;
        case(store, config.clone()).await;
        eprintln!("store conformance: {name} ok");
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

async fn next_change(stream: &mut WatchStream, within: Duration) -> WatchEvent {
    loop {
        let item = tokio::time::timeout(within, stream.next())
            .await
            .expect("timed out waiting for a watch event")
            .expect("watch stream ended");
        match item.expect("watch stream failed") {
            WatchEvent::Progress(_) => continue,
            event => return event,
        }
    }
}

async fn crud(store: Arc<dyn Store>) {
    let start = store.current_revision().await.unwrap();
    let a = store.create("/c/a", b("1"), None).await.unwrap();
    assert!(a.mod_revision > start);
    assert_eq!(
        (a.create_revision, a.version, a.value.clone()),
        (a.mod_revision, 1, b("1"))
    );
    // Other writers may share the backend (etcd), so the revision may have moved on.
    assert!(store.current_revision().await.unwrap() >= a.mod_revision);
    assert_eq!(store.get("/c/a").await.unwrap(), Some(a.clone()));
    assert!(store.get("/c/missing").await.unwrap().is_none());
    assert!(matches!(
        store.create("/c/a", b("x"), None).await,
        Err(StoreError::AlreadyExists { .. })
    ));

    let a2 = store
        .update("/c/a", b("2"), a.mod_revision, None)
        .await
        .unwrap();
    assert!(a2.mod_revision > a.mod_revision);
    assert_eq!((a2.create_revision, a2.version), (a.create_revision, 2));
    match store.update("/c/a", b("3"), a.mod_revision, None).await {
        Err(StoreError::Conflict {
            current: Some(current),
            ..
        }) => assert_eq!(*current, a2),
        other => panic!("stale update must conflict with the current value, got {other:?}"),
    }
    assert!(matches!(
        store.update("/c/missing", b("3"), 1, None).await,
        Err(StoreError::NotFound { .. })
    ));
    match store.delete("/c/a", Some(a.mod_revision)).await {
        Err(StoreError::Conflict {
            current: Some(current),
            ..
        }) => assert_eq!(*current, a2),
        other => panic!("stale delete must conflict, got {other:?}"),
    }
    assert_eq!(store.get("/c/a").await.unwrap(), Some(a2.clone()));
    let deleted = store.delete("/c/a", Some(a2.mod_revision)).await.unwrap();
    assert_eq!(deleted, a2);
    assert!(store.get("/c/a").await.unwrap().is_none());
    assert!(store.current_revision().await.unwrap() > a2.mod_revision);
    assert!(matches!(
        store.delete("/c/a", None).await,
        Err(StoreError::NotFound { .. })
    ));

    // Re-creation starts a new life.
    let again = store.create("/c/a", b("4"), None).await.unwrap();
    assert_eq!(
        (again.version, again.create_revision),
        (1, again.mod_revision)
    );
    let gone = store.delete("/c/a", None).await.unwrap();
    assert_eq!(gone, again);
}

async fn bad_input(store: Arc<dyn Store>, config: ConformanceConfig) {
    store.create("/bad/ok", b("v"), None).await.unwrap();
    let before = store.current_revision().await.unwrap();
    for key in [
        "",
        "no-slash",
        "/with space",
        "/nul\0byte",
        "/tab\t",
        "/ümlaut",
    ] {
        assert!(
            matches!(
                store.create(key, b("v"), None).await,
                Err(StoreError::InvalidKey { .. })
            ),
            "key {key:?} must be refused"
        );
        assert!(matches!(
            store.get(key).await,
            Err(StoreError::InvalidKey { .. })
        ));
    }
    let huge = Bytes::from(vec![b'x'; super::MAX_VALUE_BYTES + 1]);
    assert!(matches!(
        store.create("/bad/huge", huge.clone(), None).await,
        Err(StoreError::ValueTooLarge { .. })
    ));
    let ok = store.get("/bad/ok").await.unwrap().unwrap();
    assert!(matches!(
        store.update("/bad/ok", huge, ok.mod_revision, None).await,
        Err(StoreError::ValueTooLarge { .. })
    ));
    let at_limit = Bytes::from(vec![b'y'; config.max_value_bytes]);
    let big = store
        .create("/bad/at-limit", at_limit.clone(), None)
        .await
        .unwrap();
    assert_eq!(
        store.get("/bad/at-limit").await.unwrap().unwrap().value,
        at_limit
    );
    assert!(big.mod_revision > before);
    assert_eq!(store.get("/bad/ok").await.unwrap(), Some(ok));
    assert!(matches!(
        store
            .list(
                "/bad/",
                ListOptions {
                    revision: Some(big.mod_revision + 1000),
                    ..Default::default()
                }
            )
            .await,
        Err(StoreError::FutureRevision { .. })
    ));
}

async fn cas_under_concurrency(store: Arc<dyn Store>) {
    const TASKS: usize = 16;
    const INCREMENTS: usize = 20;
    store.create("/cas/counter", b("0"), None).await.unwrap();
    let mut handles = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            let mut conflicts = 0usize;
            for _ in 0..INCREMENTS {
                let mut current = store.get("/cas/counter").await.unwrap().unwrap();
                loop {
                    let n: u64 = std::str::from_utf8(&current.value)
                        .unwrap()
                        .parse()
                        .unwrap();
                    let next = Bytes::from((n + 1).to_string());
                    match store
                        .update("/cas/counter", next, current.mod_revision, None)
                        .await
                    {
                        Ok(_) => break,
                        Err(StoreError::Conflict {
                            current: Some(now), ..
                        }) => {
                            conflicts += 1;
                            current = *now;
                        }
                        Err(err) => panic!("unexpected error {err}"),
                    }
                }
            }
            conflicts
        }));
    }
    for handle in handles {
        handle.await.unwrap();
    }
    let last = store.get("/cas/counter").await.unwrap().unwrap();
    assert_eq!(
        last.value,
        Bytes::from((TASKS * INCREMENTS).to_string()),
        "lost update"
    );
    assert_eq!(last.version, (TASKS * INCREMENTS + 1) as i64);
}

async fn list_prefix_and_pages(store: Arc<dyn Store>) {
    for key in ["/l/b", "/l/a", "/l/c/d", "/lx", "/l", "/m/a"] {
        store.create(key, b(key), None).await.unwrap();
    }
    let all = store.list("/l/", ListOptions::default()).await.unwrap();
    let keys: Vec<_> = all.items.iter().map(|kv| kv.key.as_str()).collect();
    assert_eq!(keys, ["/l/a", "/l/b", "/l/c/d"]);
    assert!(!all.more);
    assert!(all.revision <= store.current_revision().await.unwrap());
    let everything = store.list("/", ListOptions::default()).await.unwrap();
    assert_eq!(everything.items.len(), 6);

    let first = store
        .list(
            "/l/",
            ListOptions {
                limit: Some(2),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(first.items.len(), 2);
    assert!(first.more);
    let rest = store
        .list(
            "/l/",
            ListOptions {
                limit: Some(2),
                start_after: Some(first.items[1].key.clone()),
                revision: Some(first.revision),
            },
        )
        .await
        .unwrap();
    assert_eq!(
        rest.items
            .iter()
            .map(|kv| kv.key.as_str())
            .collect::<Vec<_>>(),
        ["/l/c/d"]
    );
    assert!(!rest.more);
    let empty = store
        .list("/nothing/", ListOptions::default())
        .await
        .unwrap();
    assert!(empty.items.is_empty() && !empty.more);
}

async fn pagination_under_writes(store: Arc<dyn Store>) {
    for i in 0..60 {
        store
            .create(&format!("/p/{i:03}"), b("v0"), None)
            .await
            .unwrap();
    }
    let snapshot = store.list("/p/", ListOptions::default()).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..60 {
                let key = format!("/p/{i:03}");
                match i % 3 {
                    0 => drop(store.delete(&key, None).await),
                    1 => {
                        if let Ok(Some(kv)) = store.get(&key).await {
                            drop(store.update(&key, b("v1"), kv.mod_revision, None).await);
                        }
                    }
                    _ => drop(store.create(&format!("/p/{i:03}x"), b("new"), None).await),
                }
                tokio::task::yield_now().await;
            }
        })
    };
    let mut paged: Vec<KeyValue> = Vec::new();
    let mut start_after = None;
    loop {
        let page = store
            .list(
                "/p/",
                ListOptions {
                    limit: Some(7),
                    start_after: start_after.clone(),
                    revision: Some(snapshot.revision),
                },
            )
            .await
            .unwrap();
        assert_eq!(page.revision, snapshot.revision);
        start_after = page.items.last().map(|kv| kv.key.clone());
        paged.extend(page.items);
        if !page.more {
            break;
        }
        tokio::task::yield_now().await;
    }
    writer.await.unwrap();
    assert_eq!(
        paged, snapshot.items,
        "pages at one revision must equal the snapshot"
    );
}

async fn list_at_past_revision(store: Arc<dyn Store>) {
    let a = store.create("/h/a", b("a1"), None).await.unwrap();
    let bkv = store.create("/h/b", b("b1"), None).await.unwrap();
    let r1 = store.current_revision().await.unwrap();
    store
        .update("/h/a", b("a2"), a.mod_revision, None)
        .await
        .unwrap();
    store.delete("/h/b", None).await.unwrap();
    store.create("/h/c", b("c1"), None).await.unwrap();
    let past = store
        .list(
            "/h/",
            ListOptions {
                revision: Some(r1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(past.items, vec![a.clone(), bkv.clone()]);
    assert_eq!(past.revision, r1);
    let page = store
        .list(
            "/h/",
            ListOptions {
                revision: Some(r1),
                limit: Some(1),
                start_after: None,
            },
        )
        .await
        .unwrap();
    assert_eq!((page.items, page.more), (vec![a], true));
    let now = store.list("/h/", ListOptions::default()).await.unwrap();
    let values: Vec<_> = now.items.iter().map(|kv| kv.value.clone()).collect();
    assert_eq!(values, vec![b("a2"), b("c1")]);
}

async fn record_changes(store: &Arc<dyn Store>) -> Vec<Revision> {
    let a = store.create("/w/a", b("1"), None).await.unwrap();
    let a2 = store
        .update("/w/a", b("2"), a.mod_revision, None)
        .await
        .unwrap();
    store.create("/other/x", b("noise"), None).await.unwrap();
    let bkv = store.create("/w/b", b("1"), None).await.unwrap();
    let del = store.delete("/w/a", None).await.unwrap();
    let after_delete = store.current_revision().await.unwrap();
    assert_eq!(del, a2);
    vec![
        a.mod_revision,
        a2.mod_revision,
        bkv.mod_revision,
        after_delete,
    ]
}

async fn watch_order_and_resume(store: Arc<dyn Store>) {
    let start = store.current_revision().await.unwrap();
    let revisions = record_changes(&store).await;
    let mut stream = store.watch("/w/", start).await.unwrap();
    let mut events = Vec::new();
    for _ in 0..4 {
        events.push(next_change(&mut stream, Duration::from_secs(5)).await);
    }
    let got: Vec<Revision> = events.iter().map(WatchEvent::revision).collect();
    assert_eq!(
        got, revisions,
        "events must come in revision order, only under the prefix"
    );
    assert!(
        matches!(&events[0], WatchEvent::Created(kv) if kv.value == b("1") && kv.key == "/w/a")
    );
    assert!(
        matches!(&events[1], WatchEvent::Modified { current, previous }
        if current.value == b("2") && previous.value == b("1"))
    );
    assert!(matches!(&events[2], WatchEvent::Created(kv) if kv.key == "/w/b"));
    assert!(matches!(&events[3], WatchEvent::Deleted { previous, .. }
        if previous.key == "/w/a" && previous.value == b("2")));
    // Resuming after any delivered revision yields exactly the suffix.
    for (i, rev) in revisions.iter().enumerate() {
        let mut resumed = store.watch("/w/", *rev).await.unwrap();
        for expected in &events[i + 1..] {
            assert_eq!(
                &next_change(&mut resumed, Duration::from_secs(5)).await,
                expected
            );
        }
        let extra = tokio::time::timeout(Duration::from_millis(200), async {
            loop {
                match resumed.next().await {
                    Some(Ok(WatchEvent::Progress(_))) => continue,
                    other => return other,
                }
            }
        })
        .await;
        assert!(
            extra.is_err(),
            "no event may be duplicated after resume: {extra:?}"
        );
    }
}

async fn watch_live_events(store: Arc<dyn Store>) {
    let start = store.current_revision().await.unwrap();
    let mut stream = store.watch("/live/", start).await.unwrap();
    let writer = {
        let store = store.clone();
        tokio::spawn(async move {
            for i in 0..200 {
                store
                    .create(&format!("/live/{i:03}"), b("v"), None)
                    .await
                    .unwrap();
                store
                    .create(&format!("/quiet/{i:03}"), b("v"), None)
                    .await
                    .unwrap();
            }
        })
    };
    let mut last = start;
    for i in 0..200 {
        let event = next_change(&mut stream, Duration::from_secs(10)).await;
        assert!(event.revision() > last, "revisions must increase");
        last = event.revision();
        assert_eq!(event.key(), Some(format!("/live/{i:03}").as_str()));
    }
    writer.await.unwrap();
}

async fn compaction(store: Arc<dyn Store>) {
    let first = store.create("/k/a", b("1"), None).await.unwrap();
    let mut kv = first.clone();
    for i in 0..5 {
        kv = store
            .update("/k/a", Bytes::from(format!("{i}")), kv.mod_revision, None)
            .await
            .unwrap();
    }
    let compact_at = kv.mod_revision;
    store.compact(compact_at).await.unwrap();
    let after = store
        .update("/k/a", b("after"), kv.mod_revision, None)
        .await
        .unwrap();
    assert!(matches!(
        store.watch("/k/", first.mod_revision - 1).await.map(|_| ()),
        Err(StoreError::Compacted { .. })
    ));
    assert!(matches!(
        store
            .list(
                "/k/",
                ListOptions {
                    revision: Some(first.mod_revision),
                    ..Default::default()
                }
            )
            .await,
        Err(StoreError::Compacted { .. })
    ));
    let at = store
        .list(
            "/k/",
            ListOptions {
                revision: Some(compact_at),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(at.items, vec![kv.clone()]);
    let mut stream = store.watch("/k/", compact_at).await.unwrap();
    assert_eq!(
        next_change(&mut stream, Duration::from_secs(5)).await,
        WatchEvent::Modified {
            current: after,
            previous: kv
        }
    );
    // Compacting again at or below the compaction point is harmless.
    store.compact(compact_at).await.unwrap();
}

async fn progress(store: Arc<dyn Store>, config: ConformanceConfig) {
    store.create("/busy/x", b("v"), None).await.unwrap();
    let start = store.current_revision().await.unwrap();
    let mut stream = store.watch("/quiet/", start).await.unwrap();
    store.create("/busy/y", b("v"), None).await.unwrap();
    let written = store.current_revision().await.unwrap();
    let deadline = tokio::time::Instant::now() + config.progress_within;
    loop {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .expect("no progress notification on a quiet watch in time")
            .expect("watch ended");
        match item.expect("watch failed") {
            WatchEvent::Progress(rev) if rev >= written => break,
            WatchEvent::Progress(rev) => assert!(rev >= start),
            other => panic!("unexpected event on a quiet prefix: {other:?}"),
        }
    }
}

async fn leases(store: Arc<dyn Store>, config: ConformanceConfig) {
    let ttl = config.lease_ttl;
    let start = store.current_revision().await.unwrap();
    let mut stream = store.watch("/lease/", start).await.unwrap();

    // Expiry deletes the key and emits a delete event.
    let short = store.grant_lease(ttl).await.unwrap();
    store
        .create("/lease/short", b("v"), Some(short))
        .await
        .unwrap();
    let created = next_change(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(created.current().and_then(|kv| kv.lease), Some(short));
    let deleted = next_change(&mut stream, ttl + config.expiry_slack).await;
    assert!(
        matches!(&deleted, WatchEvent::Deleted { previous, .. } if previous.key == "/lease/short")
    );
    assert!(store.get("/lease/short").await.unwrap().is_none());
    let gone = tokio::time::timeout(config.expiry_slack, async {
        loop {
            match store.keep_alive(short).await {
                Err(StoreError::LeaseNotFound(_)) => return,
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    })
    .await;
    assert!(gone.is_ok(), "an expired lease must not be renewable");

    // Keep-alive holds a key past its TTL.
    let kept = store.grant_lease(ttl).await.unwrap();
    store
        .create("/lease/kept", b("v"), Some(kept))
        .await
        .unwrap();
    let until = tokio::time::Instant::now() + ttl * 2;
    while tokio::time::Instant::now() < until {
        assert_eq!(store.keep_alive(kept).await.unwrap(), ttl);
        tokio::time::sleep(ttl / 4).await;
    }
    assert!(
        store.get("/lease/kept").await.unwrap().is_some(),
        "kept-alive key expired"
    );

    // Revocation deletes at once.
    store.revoke_lease(kept).await.unwrap();
    assert!(store.get("/lease/kept").await.unwrap().is_none());
    assert!(matches!(
        store.keep_alive(kept).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(matches!(
        store.create("/lease/orphan", b("v"), Some(kept)).await,
        Err(StoreError::LeaseNotFound(_))
    ));
    assert!(store.get("/lease/orphan").await.unwrap().is_none());
}

/// One operation of the model test.
#[derive(Debug, Clone)]
pub enum ModelOp {
    /// Create a key.
    Create(usize, u8),
    /// Update a key, with its current revision or a stale one.
    Update(usize, u8, bool),
    /// Delete a key, with no precondition, the current revision, or a stale one.
    Delete(usize, Option<bool>),
    /// Read a key.
    Get(usize),
    /// List a prefix with an optional limit.
    List(usize, Option<usize>),
}

const MODEL_KEYS: [&str; 5] = ["/m/a", "/m/b", "/m/c", "/m/c/d", "/n/a"];
const MODEL_PREFIXES: [&str; 4] = ["/", "/m/", "/m/c", "/n/"];

/// The strategy generating one [`ModelOp`].
pub fn model_op() -> impl Strategy<Value = ModelOp> {
    let key = 0..MODEL_KEYS.len();
    prop_oneof![
        (key.clone(), any::<u8>()).prop_map(|(k, v)| ModelOp::Create(k, v)),
        (key.clone(), any::<u8>(), any::<bool>()).prop_map(|(k, v, s)| ModelOp::Update(k, v, s)),
        (key.clone(), proptest::option::of(any::<bool>())).prop_map(|(k, p)| ModelOp::Delete(k, p)),
        key.prop_map(ModelOp::Get),
        (0..MODEL_PREFIXES.len(), proptest::option::of(1usize..4))
            .prop_map(|(p, l)| ModelOp::List(p, l)),
    ]
}

/// Applies `ops` to `store` and to a `BTreeMap` model, checking every answer, then checks that a
/// watch from the start replays into the model's final state.
pub async fn check_against_model(store: Arc<dyn Store>, ops: Vec<ModelOp>) -> Result<(), String> {
    let mut model: BTreeMap<String, KeyValue> = BTreeMap::new();
    let start = store.current_revision().await.map_err(|e| e.to_string())?;
    for op in ops {
        match op {
            ModelOp::Create(k, v) => {
                let key = MODEL_KEYS[k];
                let got = store.create(key, Bytes::from(vec![v]), None).await;
                match (model.contains_key(key), got) {
                    (false, Ok(kv)) => drop(model.insert(key.to_string(), kv)),
                    (true, Err(StoreError::AlreadyExists { .. })) => {}
                    (present, other) => {
                        return Err(format!("create {key} (present={present}): {other:?}"))
                    }
                }
            }
            ModelOp::Update(k, v, stale) => {
                let key = MODEL_KEYS[k];
                let expected = model
                    .get(key)
                    .map_or(1, |kv| kv.mod_revision - i64::from(stale));
                let got = store
                    .update(key, Bytes::from(vec![v]), expected, None)
                    .await;
                match (model.get(key), got) {
                    (Some(old), Ok(kv)) if !stale && kv.version == old.version + 1 => {
                        drop(model.insert(key.to_string(), kv))
                    }
                    (
                        Some(old),
                        Err(StoreError::Conflict {
                            current: Some(cur), ..
                        }),
                    ) if stale && *cur == *old => {}
                    (None, Err(StoreError::NotFound { .. })) => {}
                    (old, other) => {
                        return Err(format!(
                            "update {key} stale={stale} model={old:?}: {other:?}"
                        ))
                    }
                }
            }
            ModelOp::Delete(k, precondition) => {
                let key = MODEL_KEYS[k];
                let expected = precondition
                    .and_then(|stale| model.get(key).map(|kv| kv.mod_revision - i64::from(stale)));
                let got = store.delete(key, expected).await;
                let stale = precondition == Some(true);
                match (model.get(key).cloned(), got) {
                    (Some(old), Ok(prev)) if !stale && prev == old => drop(model.remove(key)),
                    (
                        Some(old),
                        Err(StoreError::Conflict {
                            current: Some(cur), ..
                        }),
                    ) if stale && *cur == old => {}
                    (None, Err(StoreError::NotFound { .. })) => {}
                    (old, other) => {
                        return Err(format!(
                            "delete {key} {precondition:?} model={old:?}: {other:?}"
                        ))
                    }
                }
            }
            ModelOp::Get(k) => {
                let key = MODEL_KEYS[k];
                let got = store.get(key).await.map_err(|e| e.to_string())?;
                if got.as_ref() != model.get(key) {
                    return Err(format!("get {key}: {got:?} != {:?}", model.get(key)));
                }
            }
            ModelOp::List(p, limit) => {
                let prefix = MODEL_PREFIXES[p];
                let page = store
                    .list(
                        prefix,
                        ListOptions {
                            limit,
                            ..Default::default()
                        },
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                let all: Vec<KeyValue> = model
                    .values()
                    .filter(|kv| kv.key.starts_with(prefix))
                    .cloned()
                    .collect();
                let n = limit.unwrap_or(usize::MAX).min(all.len());
                if page.items != all[..n] || page.more != (n < all.len()) {
                    return Err(format!("list {prefix} {limit:?}: {page:?} != {all:?}"));
                }
            }
        }
    }
    // Replaying the watch from the start reproduces the final state.
    let end = store.current_revision().await.map_err(|e| e.to_string())?;
    let mut replay: BTreeMap<String, KeyValue> = BTreeMap::new();
    if end > start {
        let mut stream = store.watch("/", start).await.map_err(|e| e.to_string())?;
        loop {
            let event = next_change(&mut stream, Duration::from_secs(5)).await;
            let revision = event.revision();
            match event {
                WatchEvent::Created(kv) | WatchEvent::Modified { current: kv, .. } => {
                    replay.insert(kv.key.clone(), kv);
                }
                WatchEvent::Deleted { previous, .. } => drop(replay.remove(&previous.key)),
                WatchEvent::Progress(_) => {}
            }
            if revision >= end {
                break;
            }
        }
    }
    if replay != model {
        return Err(format!("watch replay {replay:?} != model {model:?}"));
    }
    Ok(())
}

/// Runs `cases` random operation sequences against the model, each on a fresh store from
/// `make`, driving async work on `runtime`. Panics with the minimal failing sequence.
pub fn run_model_test<F, Fut>(runtime: &tokio::runtime::Runtime, make: F, cases: u32)
where
    F: Fn() -> Fut,
    Fut: Future<Output = Arc<dyn Store>>,
{
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let strategy = proptest::collection::vec(model_op(), 1..40);
    let result = runner.run(&strategy, |ops| {
        runtime
            .block_on(async {
                let store = make().await;
                check_against_model(store, ops).await
            })
            .map_err(TestCaseError::fail)
    });
    if let Err(err) = result {
        panic!("store model test failed: {err}");
    }
}
