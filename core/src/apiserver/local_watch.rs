//! In-process watches straight from the watch cache, for components embedded beside the API
//! server (the controller manager's informers): the cache's encoded objects are handed over as
//! they are, with no HTTP framing, no watch-event wrapping and no per-watcher re-encoding. Such a
//! watch sees every object of its kind and skips authentication and authorization: it is for
//! trusted code in the server's own process, never for requests from outside.

use super::pending_deliveries::PendingDeliveries;
use super::selection::Selection;
use super::watch_cache::{Delivery, Start, Subscription};
use super::{ApiError, ApiServer};
use crate::selector::{FieldSelector, LabelSelector};
use crate::store::Revision;
use axum::body::Bytes;
use tokio::sync::mpsc;

/// One change as an in-process watch delivers it: the object's JSON as the cache holds it.
#[derive(Debug, Clone)]
pub enum LocalEvent {
    /// Created (or already there when the watch started from now).
    Added(Bytes),
    /// Changed.
    Modified(Bytes),
    /// Deleted (the last state, with the deletion's resourceVersion).
    Deleted(Bytes),
    /// Everything up to this revision has been delivered.
    Bookmark(Revision),
}

/// An in-process watch: what is owed at once, then the live feed.
pub struct LocalWatch {
    /// Due immediately: every object (from now) or the missed history (when resuming).
    pub initial: Vec<LocalEvent>,
    /// The revision the watch is current to after `initial`.
    pub revision: Revision,
    /// Live changes. It closes when the watcher falls behind or the cache resets: resume after
    /// the last revision seen, or start over from now when that fails.
    pub live: mpsc::Receiver<LocalEvent>,
    forward: tokio::task::JoinHandle<()>,
}

impl Drop for LocalWatch {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

/// Changes an in-process watcher (one of the process's own informers) may leave undelivered
/// before the watch cache closes it: in effect, no limit. A closed informer re-lists every
/// object of its kind (150,000 pods decoded a second time, beside the copies it holds), and
/// under load (tens of thousands of pod workers on two cores) the task taking deliveries over
/// can wait seconds for its turn; the deliveries are pointers to cached objects, the channel
/// takes memory only for what is pending, and the hand-over coalesces them per object.
const IN_PROCESS_BUFFER: usize = 1 << 22;

fn local(delivery: Delivery) -> LocalEvent {
    match delivery {
        Delivery::Event("ADDED", o) => LocalEvent::Added(o.bytes.to_bytes()),
        Delivery::Event("DELETED", o) => LocalEvent::Deleted(o.bytes.to_bytes()),
        Delivery::Event(_, o) => LocalEvent::Modified(o.bytes.to_bytes()),
        Delivery::Bookmark(revision) => LocalEvent::Bookmark(revision),
    }
}

impl ApiServer {
    /// Watches every object of `group/version/plural` from the watch cache: from now (with an
    /// `Added` for each existing object) or, with `after`, resuming after that revision. Fails
    /// with 410 Expired when the history no longer reaches `after`, 404 for a kind not served,
    /// and 503 while the cache cannot serve.
    pub async fn watch_local(
        &self,
        group: &str,
        version: &str,
        plural: &str,
        after: Option<Revision>,
    ) -> Result<LocalWatch, ApiError> {
        let registry = self.state.registry();
        let kind = registry
            .get(group, version, plural)
            .ok_or_else(|| ApiError::not_found(plural, ""))?;
        let kind = std::sync::Arc::new(kind.clone());
        let selection =
            Selection::from_parts(LabelSelector::everything(), FieldSelector::everything());
        let start = after.map_or(Start::Now, Start::After);
        let (Subscription { initial, live }, revision) = self
            .state
            .cache
            .subscribe_buffered(&kind, selection, None, true, start, IN_PROCESS_BUFFER)
            .await
            .map_err(|_| match after {
                Some(rv) => ApiError::expired(format!("too old resource version: {rv}")),
                None => ApiError::unavailable("the watch cache is not ready"),
            })?;
        let (tx, rx) = mpsc::channel(1024);
        let mut live = live;
        // Hands deliveries over as the watcher takes them; meanwhile the cache's are taken in
        // at once and coalesced, so a slow watcher neither fills the cache's buffer (and is
        // closed, and relists) nor decodes states already replaced.
        let forward = tokio::spawn(async move {
            let mut pending = PendingDeliveries::default();
            let mut open = true;
            loop {
                if pending.is_empty() && !open {
                    return;
                }
                tokio::select! {
                    delivery = live.recv(), if open => match delivery {
                        Some(delivery) => pending.push(delivery),
                        None => open = false,
                    },
                    permit = tx.reserve(), if !pending.is_empty() => {
                        let Ok(permit) = permit else { return };
                        if let Some(delivery) = pending.pop() {
                            permit.send(local(delivery));
                        }
                    }
                }
            }
        });
        Ok(LocalWatch {
            initial: initial.into_iter().map(local).collect(),
            revision,
            live: rx,
            forward,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::ApiConfig;
    use crate::store::MemoryStore;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Api, PostParams};
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test]
    async fn an_in_process_watcher_outlasts_a_remote_watchers_buffer() {
        // Remote watchers may fall 4 changes behind; this one falls 1500 behind (well past the
        // hand-over channel too) before it reads, and still gets every change.
        let server = ApiServer::builder(Arc::new(MemoryStore::default()))
            .config(ApiConfig {
                watch_buffer: 4,
                ..ApiConfig::default()
            })
            .build()
            .await
            .expect("server");
        let maps: Api<ConfigMap> = Api::default_namespaced(server.client());
        let mut watch = server
            .watch_local("", "v1", "configmaps", None)
            .await
            .expect("watch");
        let before = watch.initial.len();
        for i in 0..1500 {
            let map: ConfigMap = serde_json::from_value(serde_json::json!({
                "metadata": {"name": format!("m{i}"), "namespace": "default"},
            }))
            .expect("a config map");
            maps.create(&PostParams::default(), &map)
                .await
                .expect("create");
        }
        let mut added = 0;
        while added < 1500 {
            match tokio::time::timeout(Duration::from_secs(5), watch.live.recv())
                .await
                .expect("a change within 5 s")
            {
                Some(LocalEvent::Added(_)) => added += 1,
                Some(_) => {}
                None => panic!("the watch was closed after {added} of 1500 (initial {before})"),
            }
        }
    }
}
