//! The embedded (redb) store: the conformance kit, the model test, reopening, and the kill -9
//! crash test (a child process writing through the store is killed with SIGKILL; every write it
//! had acknowledged must be present after reopen).

use capstan_core::store::testkit::{run_conformance, run_model_test, ConformanceConfig};
use capstan_core::store::{EmbeddedStore, EmbeddedStoreConfig, ListOptions, Store};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

fn fast_config() -> EmbeddedStoreConfig {
    EmbeddedStoreConfig {
        progress_interval: Duration::from_millis(200),
        ..Default::default()
    }
}

fn open_in(dir: &tempfile::TempDir, config: EmbeddedStoreConfig) -> Arc<dyn Store> {
    let path = dir.path().join(format!("{}.redb", uuid_like()));
    Arc::new(EmbeddedStore::open(path, config).expect("open embedded store"))
}

fn uuid_like() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "store-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let config = ConformanceConfig {
        progress_within: Duration::from_secs(2),
        lease_ttl: Duration::from_millis(500),
        expiry_slack: Duration::from_secs(2),
        ..Default::default()
    };
    run_conformance(|| async { open_in(&dir, fast_config()) }, config).await;
}

#[test]
fn embedded_store_model() {
    let dir = tempfile::tempdir().unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    run_model_test(
        &runtime,
        || async { open_in(&dir, EmbeddedStoreConfig::default()) },
        64,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_survives_reopen_and_bounds_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("reopen.redb");
    let config = EmbeddedStoreConfig {
        history: 50,
        ..fast_config()
    };
    let last = {
        let store = EmbeddedStore::open(&path, config.clone()).unwrap();
        let mut kv = store.create("/hb/node", "0".into(), None).await.unwrap();
        // A heartbeat key rewritten many times: history must stay bounded.
        for i in 1..500 {
            kv = store
                .update("/hb/node", i.to_string().into(), kv.mod_revision, None)
                .await
                .unwrap();
        }
        store.create("/other/a", "a".into(), None).await.unwrap();
        kv
    };
    // Dropping the last handle releases the file.
    let store = EmbeddedStore::open(&path, config.clone()).unwrap();
    assert_eq!(store.get("/hb/node").await.unwrap(), Some(last.clone()));
    let revision = store.current_revision().await.unwrap();
    assert_eq!(revision, last.mod_revision + 1);
    // Old history is compacted away: watching from the start is refused, recent history works.
    assert!(store.watch("/hb/", 1).await.is_err());
    assert!(store
        .list(
            "/",
            ListOptions {
                revision: Some(revision - 10),
                ..Default::default()
            }
        )
        .await
        .is_ok());
    let file_size = std::fs::metadata(&path).unwrap().len();
    assert!(
        file_size < 16 * 1024 * 1024,
        "history not bounded: {file_size} bytes"
    );
}

const CHILD_DIR: &str = "CAPSTAN_CRASH_CHILD_DIR";

/// The child side of the crash test: writes forever, printing each acknowledged write.
#[test]
fn embedded_crash_child() {
    let Ok(dir) = std::env::var(CHILD_DIR) else {
        return;
    };
    let round: usize = std::env::var("CAPSTAN_CRASH_ROUND")
        .unwrap()
        .parse()
        .unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let store = Arc::new(
            EmbeddedStore::open(format!("{dir}/crash.redb"), EmbeddedStoreConfig::default())
                .unwrap(),
        );
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for writer in 0..16 {
            let store = store.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let key = format!("/crash/{round}/{writer}/{i}");
                    let kv = store
                        .create(&key, format!("v{i}").into(), None)
                        .await
                        .unwrap();
                    tx.send(format!("ack {} {}", kv.key, kv.mod_revision))
                        .unwrap();
                }
            });
        }
        let mut out = std::io::stdout().lock();
        while let Some(line) = rx.recv().await {
            writeln!(out, "{line}").unwrap();
            out.flush().unwrap();
        }
    });
}

/// Concurrent writers wait `gather_delay` to share a commit: each write still commits exactly
/// once, at its own revision, and is there after a reopen.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_gathers_concurrent_writes_without_losing_any() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gather.redb");
    let config = EmbeddedStoreConfig {
        gather_delay: Duration::from_millis(20),
        ..fast_config()
    };
    let store = Arc::new(EmbeddedStore::open(&path, config.clone()).unwrap());
    let writes = (0..64).map(|i| {
        let store = store.clone();
        async move {
            store
                .create(&format!("/gather/{i:02}"), format!("{i}").into(), None)
                .await
        }
    });
    let written: Vec<_> = futures::future::join_all(writes).await;
    let mut revisions: Vec<i64> = written
        .iter()
        .map(|w| {
            w.as_ref()
                .expect("every concurrent write commits")
                .mod_revision
        })
        .collect();
    revisions.sort();
    revisions.dedup();
    assert_eq!(revisions.len(), 64, "each write has its own revision");
    assert_eq!(
        revisions[63] - revisions[0],
        63,
        "no revision is skipped or reused"
    );
    // A write after the burst (a lone writer) commits as before.
    store
        .create("/gather/after", "x".into(), None)
        .await
        .unwrap();
    drop(store);
    let reopened = EmbeddedStore::open(&path, config).unwrap();
    let page = reopened
        .list("/gather/", ListOptions::default())
        .await
        .unwrap();
    assert_eq!(page.items.len(), 65, "every acknowledged write is stored");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_loses_nothing_acknowledged_on_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut acknowledged = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "store_embedded::embedded_crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir.path())
            .env("CAPSTAN_CRASH_ROUND", round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .filter_map(|l| {
                    l.strip_prefix("ack ")
                        .map(|rest| rest.split(' ').next().unwrap().to_string())
                })
                .collect::<Vec<_>>()
        });
        // Kill at a varying moment after writes have started.
        let wait = 300 + (round as u64 * 257 + std::process::id() as u64 % 200);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        child.kill().unwrap(); // SIGKILL on Unix
        child.wait().unwrap();
        let acked = reader.join().unwrap();
        assert!(
            !acked.is_empty(),
            "round {round}: the child acknowledged no write before the kill"
        );
        acknowledged.extend(acked);
        let store = EmbeddedStore::open(
            dir.path().join("crash.redb"),
            EmbeddedStoreConfig::default(),
        )
        .unwrap();
        for key in &acknowledged {
            assert!(
                store.get(key).await.unwrap().is_some(),
                "acknowledged write {key} lost after SIGKILL"
            );
        }
        let listed = store.list("/crash/", ListOptions::default()).await.unwrap();
        assert!(listed.items.len() >= acknowledged.len());
        eprintln!(
            "crash round {round}: {} acknowledged writes survived",
            acknowledged.len()
        );
    }
}
