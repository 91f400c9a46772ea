//! The pods bound to a node, as its agent receives them: from the agent's own watch through the
//! API (a `spec.nodeName` field selector), or — for agents sharing a process with the API
//! server, as `capstan sim` runs thousands — routed by `spec.nodeName` from one shared pod
//! informer ([`SharedPodFeed`]), so each pod is decoded and cached once for the whole process
//! and the watch cache keeps one pod watcher instead of one per node.
//!
//! Either way the agent sees the same [`PodEvent`]s: a whole listing first (and again whenever
//! changes may have been missed), then each change.

use crate::controller::{pods_by_node, Change, Informer, InformerFactory, BY_POD_NODE};
use futures::stream::BoxStream;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// What an agent learns about the pods bound to its node.
pub(crate) enum PodEvent {
    /// Every pod bound to the node now (pods the agent runs and that are missing are gone).
    Listing(Vec<Arc<Pod>>),
    /// A pod was bound or changed.
    Applied(Arc<Pod>),
    /// A pod was deleted (its last state).
    Deleted(Arc<Pod>),
}

/// Where an agent's [`PodEvent`]s come from.
pub(crate) enum PodSource {
    /// The agent's own watch; `listing` gathers an initial list until it is complete.
    Watch {
        events: BoxStream<'static, watcher::Result<watcher::Event<Pod>>>,
        listing: Option<Vec<Arc<Pod>>>,
    },
    /// Routed from a [`SharedPodFeed`] (held, so routing goes on while a subscriber is left).
    Feed {
        events: mpsc::UnboundedReceiver<PodEvent>,
        _feed: SharedPodFeed,
    },
}

impl PodSource {
    /// A watch of the pods bound to `node` through `client`.
    pub(crate) fn watch(client: kube::Client, node: &str) -> Self {
        let api: kube::Api<Pod> = kube::Api::all(client);
        let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
        PodSource::Watch {
            events: watcher(api, config).boxed(),
            listing: None,
        }
    }

    /// The next event, or the error of a failed watch attempt (the watch retries by itself);
    /// `None` once the source has ended. Cancel-safe.
    pub(crate) async fn next(&mut self) -> Option<Result<PodEvent, watcher::Error>> {
        match self {
            PodSource::Feed { events, .. } => events.recv().await.map(Ok),
            PodSource::Watch { events, listing } => loop {
                let event = match events.next().await? {
                    // The agent never reads managed fields; a pod it holds goes without them.
                    Ok(event) => event.modify(|pod| pod.metadata.managed_fields = None),
                    Err(err) => return Some(Err(err)),
                };
                match event {
                    watcher::Event::Init => *listing = Some(Vec::new()),
                    watcher::Event::InitApply(pod) => {
                        if let Some(list) = listing.as_mut() {
                            list.push(Arc::new(pod));
                        }
                    }
                    watcher::Event::InitDone => {
                        return Some(Ok(PodEvent::Listing(listing.take().unwrap_or_default())))
                    }
                    watcher::Event::Apply(pod) => {
                        return Some(Ok(PodEvent::Applied(Arc::new(pod))))
                    }
                    watcher::Event::Delete(pod) => {
                        return Some(Ok(PodEvent::Deleted(Arc::new(pod))))
                    }
                }
            },
        }
    }
}

type Routes = Arc<Mutex<HashMap<String, mpsc::UnboundedSender<PodEvent>>>>;

struct FeedInner {
    pods: Informer<Pod>,
    routes: Routes,
    stop: CancellationToken,
}

impl Drop for FeedInner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One shared pod informer's changes, routed to the in-process node agents they concern
/// ([`NodeAgent::with_pod_feed`](super::NodeAgent::with_pod_feed)). Cloning shares it; routing
/// stops when every clone and every agent using it are gone. The pods come from the factory's informer, which runs
/// as long as the factory does.
#[derive(Clone)]
pub struct SharedPodFeed {
    inner: Arc<FeedInner>,
}

impl SharedPodFeed {
    /// A feed over `informers`' pod informer (indexed by node). Needs a Tokio runtime.
    pub fn new(informers: &InformerFactory) -> Self {
        let pods: Informer<Pod> = informers.informer();
        pods.add_index(BY_POD_NODE, pods_by_node());
        let routes: Routes = Arc::default();
        let stop = CancellationToken::new();
        tokio::spawn(route(pods.clone(), routes.clone(), stop.clone()));
        SharedPodFeed {
            inner: Arc::new(FeedInner { pods, routes, stop }),
        }
    }

    /// The events of the pods bound to `node`, from a listing once the informer has synced (a
    /// node subscribing again replaces its earlier subscription).
    pub(crate) async fn subscribe(&self, node: &str) -> PodSource {
        let (sender, receiver) = mpsc::unbounded_channel();
        self.inner.pods.wait_synced().await;
        // Under the routes lock, so no change routed after the listing is older than it.
        let mut routes = lock(&self.inner.routes);
        let _ = sender.send(PodEvent::Listing(
            self.inner.pods.by_index(BY_POD_NODE, node),
        ));
        routes.insert(node.to_string(), sender);
        PodSource::Feed {
            events: receiver,
            _feed: self.clone(),
        }
    }
}

fn lock(
    routes: &Routes,
) -> std::sync::MutexGuard<'_, HashMap<String, mpsc::UnboundedSender<PodEvent>>> {
    routes.lock().unwrap_or_else(|p| p.into_inner())
}

fn node_of(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// Routes each change to the node it concerns until `stop`; after missed changes, every
/// subscribed node gets a fresh listing. Subscriptions whose agent has gone are dropped.
async fn route(pods: Informer<Pod>, routes: Routes, stop: CancellationToken) {
    let mut changes = pods.subscribe();
    loop {
        let change = tokio::select! {
            _ = stop.cancelled() => return,
            change = changes.next() => change,
        };
        let (node, event) = match change {
            None => return,
            Some(Change::Applied { new, .. }) => match node_of(&new) {
                Some(node) => (node.to_string(), PodEvent::Applied(new)),
                None => continue,
            },
            Some(Change::Deleted(old)) => match node_of(&old) {
                Some(node) => (node.to_string(), PodEvent::Deleted(old)),
                None => continue,
            },
            Some(Change::Resync) => {
                lock(&routes).retain(|node, sender| {
                    sender
                        .send(PodEvent::Listing(pods.by_index(BY_POD_NODE, node)))
                        .is_ok()
                });
                continue;
            }
        };
        let mut routes = lock(&routes);
        if let Some(sender) = routes.get(&node) {
            if sender.send(event).is_err() {
                routes.remove(&node);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::ApiServer;
    use crate::store::MemoryStore;
    use kube::api::{Api, DeleteParams, PostParams};
    use std::time::Duration;

    fn pod(name: &str, node: Option<&str>) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
        }))
        .expect("a valid pod")
    }

    fn names(pods: &[Arc<Pod>]) -> Vec<String> {
        let mut names: Vec<String> = pods
            .iter()
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        names.sort();
        names
    }

    async fn next(source: &mut PodSource) -> PodEvent {
        tokio::time::timeout(Duration::from_secs(5), source.next())
            .await
            .expect("an event within 5 s")
            .expect("the feed is open")
            .expect("no watch error")
    }

    #[tokio::test]
    async fn routes_each_pod_to_its_node_only() {
        let server = ApiServer::builder(Arc::new(MemoryStore::default()))
            .build()
            .await
            .expect("server");
        let pods: Api<Pod> = Api::default_namespaced(server.client());
        let create = |p: Pod| {
            let pods = pods.clone();
            async move {
                pods.create(&PostParams::default(), &p)
                    .await
                    .expect("create")
            }
        };
        create(pod("a1", Some("n1"))).await;
        create(pod("b1", Some("n2"))).await;
        create(pod("unbound", None)).await;
        let informers = InformerFactory::in_process(&server);
        let feed = SharedPodFeed::new(&informers);
        let mut n1 = feed.subscribe("n1").await;
        match next(&mut n1).await {
            PodEvent::Listing(pods) => assert_eq!(names(&pods), ["a1"]),
            _ => panic!("the first event is not a listing"),
        }
        // Other nodes' pods and unbound pods never reach n1; its own do, in order.
        create(pod("b2", Some("n2"))).await;
        create(pod("free", None)).await;
        create(pod("a2", Some("n1"))).await;
        pods.delete("a1", &DeleteParams::default().grace_period(0))
            .await
            .expect("delete");
        match next(&mut n1).await {
            PodEvent::Applied(p) => assert_eq!(p.metadata.name.as_deref(), Some("a2")),
            _ => panic!("expected a2 applied"),
        }
        match next(&mut n1).await {
            PodEvent::Deleted(p) => assert_eq!(p.metadata.name.as_deref(), Some("a1")),
            _ => panic!("expected a1 deleted"),
        }
        // A second subscriber for another node starts from its own listing.
        let mut n2 = feed.subscribe("n2").await;
        match next(&mut n2).await {
            PodEvent::Listing(pods) => assert_eq!(names(&pods), ["b1", "b2"]),
            _ => panic!("the first event is not a listing"),
        }
        assert!(
            tokio::time::timeout(Duration::from_millis(300), n1.next())
                .await
                .is_err(),
            "n1 got an event about another node's pod"
        );
        // Routing goes on for the subscribers once the feed itself is dropped.
        drop(feed);
        create(pod("a3", Some("n1"))).await;
        match next(&mut n1).await {
            PodEvent::Applied(p) => assert_eq!(p.metadata.name.as_deref(), Some("a3")),
            _ => panic!("expected a3 applied"),
        }
        informers.stop();
    }
}
