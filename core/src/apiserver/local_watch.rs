//! In-process watches straight from the watch cache, for components embedded beside the API
//! server (the controller manager's informers): the cache's encoded objects are handed over as
//! they are, with no HTTP framing, no watch-event wrapping and no per-watcher re-encoding. Such a
//! watch sees every object of its kind and skips authentication and authorization: it is for
//! trusted code in the server's own process, never for requests from outside.

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

fn local(delivery: Delivery) -> LocalEvent {
    match delivery {
        Delivery::Event("ADDED", o) => LocalEvent::Added(o.bytes.clone()),
        Delivery::Event("DELETED", o) => LocalEvent::Deleted(o.bytes.clone()),
        Delivery::Event(_, o) => LocalEvent::Modified(o.bytes.clone()),
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
            .subscribe(&kind, selection, None, true, start)
            .await
            .map_err(|_| match after {
                Some(rv) => ApiError::expired(format!("too old resource version: {rv}")),
                None => ApiError::unavailable("the watch cache is not ready"),
            })?;
        let (tx, rx) = mpsc::channel(1024);
        let mut live = live;
        let forward = tokio::spawn(async move {
            while let Some(delivery) = live.recv().await {
                if tx.send(local(delivery)).await.is_err() {
                    return;
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
