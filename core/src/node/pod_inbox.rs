//! What a node agent tells one pod's worker: the pod's latest state (or that it is gone) and
//! wake-ups when its containers change.
//!
//! One per pod on the node, so kept small: a watch channel per pod carried eight notifiers, and
//! a simulated cluster runs 150,000 workers in one process. The worker takes only the latest
//! state; states sent while it syncs collapse into one.

use k8s_openapi::api::core::v1::Pod;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// The agent's side and the worker's side of one pod's messages.
#[derive(Debug)]
pub(crate) struct PodInbox {
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug)]
struct State {
    /// The pod as last sent (`None`: gone).
    latest: Option<Arc<Pod>>,
    /// Whether the worker has yet to take `latest`.
    unread: bool,
    /// The agent dropped its side: the worker ends.
    closed: bool,
}

/// What the worker finds on waking.
#[derive(Debug)]
pub(crate) enum Mail {
    /// The pod changed.
    Pod(Arc<Pod>),
    /// The pod is gone.
    Gone,
    /// Nothing new (a wake-up, or a state already taken).
    Nothing,
    /// The agent is gone.
    Closed,
}

impl PodInbox {
    /// An inbox holding `pod`, unread.
    pub(crate) fn new(pod: Arc<Pod>) -> Arc<Self> {
        Arc::new(PodInbox {
            state: Mutex::new(State {
                latest: Some(pod),
                unread: true,
                closed: false,
            }),
            wake: Notify::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends the pod's new state (`None`: it is gone) and wakes the worker.
    pub(crate) fn send(&self, pod: Option<Arc<Pod>>) {
        {
            let mut state = self.lock();
            state.latest = pod;
            state.unread = true;
        }
        self.wake.notify_one();
    }

    /// Wakes the worker without news about the pod (one of its containers changed).
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }

    /// Tells the worker the agent is gone, and wakes it to end.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_one();
    }

    /// Whether `pod` is the state last sent: the same object, or the same resourceVersion.
    pub(crate) fn holds(&self, pod: &Arc<Pod>) -> bool {
        self.lock().latest.as_ref().is_some_and(|current| {
            Arc::ptr_eq(current, pod)
                || (pod.metadata.resource_version.is_some()
                    && current.metadata.resource_version == pod.metadata.resource_version)
        })
    }

    /// The latest state, if the worker has not taken it yet.
    pub(crate) fn take(&self) -> Mail {
        let mut state = self.lock();
        if state.closed {
            return Mail::Closed;
        }
        if !std::mem::take(&mut state.unread) {
            return Mail::Nothing;
        }
        match &state.latest {
            Some(pod) => Mail::Pod(pod.clone()),
            None => Mail::Gone,
        }
    }

    /// Waits for a wake-up (one sent while nobody waited is kept for the next wait).
    pub(crate) async fn woken(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(version: &str) -> Arc<Pod> {
        let mut pod = Pod::default();
        pod.metadata.resource_version = Some(version.into());
        Arc::new(pod)
    }

    #[tokio::test]
    async fn the_worker_takes_the_latest_state_once_and_is_woken_for_each_change() {
        let inbox = PodInbox::new(pod("1"));
        assert!(
            matches!(inbox.take(), Mail::Pod(p) if p.metadata.resource_version.as_deref() == Some("1"))
        );
        assert!(matches!(inbox.take(), Mail::Nothing));
        // Two states sent while the worker is busy: it wakes and finds the second.
        inbox.send(Some(pod("2")));
        inbox.send(Some(pod("3")));
        tokio::time::timeout(std::time::Duration::from_secs(1), inbox.woken())
            .await
            .expect("woken");
        assert!(
            matches!(inbox.take(), Mail::Pod(p) if p.metadata.resource_version.as_deref() == Some("3"))
        );
        assert!(inbox.holds(&pod("3")));
        assert!(!inbox.holds(&pod("2")));
        // A bare wake-up carries no state.
        inbox.wake();
        inbox.woken().await;
        assert!(matches!(inbox.take(), Mail::Nothing));
        inbox.send(None);
        assert!(matches!(inbox.take(), Mail::Gone));
        inbox.close();
        inbox.woken().await;
        assert!(matches!(inbox.take(), Mail::Closed));
    }
}
