//! The controller runtime and the built-in controllers against the in-process API, with a
//! simulated kubelet (binds pending pods to one node and reports them running, ready unless
//! labelled otherwise, and finishes graceful deletions): ReplicaSets, Deployments (rolling,
//! recreate, rollback, pause, history), garbage collection with each propagation policy,
//! Endpoints and EndpointSlices, node lifecycle and taint eviction, leader election, events,
//! informers, and a proptest that a ReplicaSet converges under random deletions.

use capstan_core::apiserver::{ApiConfig, ApiServer};
use capstan_core::controller::{
    ControllerContext, ControllerManager, ControllerManagerConfig, EventType, InformerFactory,
    LeaderElectionConfig, LeaderElector, NodeLifecycleConfig, ObjectKey,
};
use capstan_core::store::MemoryStore;
use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Pods with this label stay running but not ready.
const NOT_READY: &str = "sim.capstan.dev/not-ready";
/// Pods with this label are never bound (they stay Pending).
const UNSCHEDULABLE: &str = "sim.capstan.dev/unschedulable";
const NODE: &str = "sim-node";

struct Cluster {
    _server: ApiServer,
    client: kube::Client,
    controllers: Option<capstan_core::controller::RunningControllers>,
    kubelet: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.kubelet.cancel();
    }
}

async fn cluster() -> Cluster {
    cluster_with(ControllerManagerConfig::default()).await
}

async fn cluster_with(config: ControllerManagerConfig) -> Cluster {
    cluster_on(ApiConfig::default(), config).await
}

async fn cluster_on(api: ApiConfig, config: ControllerManagerConfig) -> Cluster {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .config(api)
        .build()
        .await
        .unwrap();
    let client = server.client();
    let kubelet = CancellationToken::new();
    tokio::spawn(simulated_kubelet(client.clone(), kubelet.clone()));
    let controllers = ControllerManager::in_process(&server, config).start();
    Cluster {
        _server: server,
        client,
        controllers: Some(controllers),
        kubelet,
    }
}

/// Binds, runs and finishes pods as a scheduler plus kubelet would, without containers. Pods
/// get an IPv4 and an IPv6 address (`status.podIPs`), as on a dual-stack node.
async fn simulated_kubelet(client: kube::Client, stop: CancellationToken) {
    let all: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(all, watcher::Config::default()).boxed();
    let next_ip = AtomicU32::new(2);
    loop {
        let event = tokio::select! {
            _ = stop.cancelled() => return,
            e = events.next() => e,
        };
        let Some(Ok(event)) = event else { continue };
        let pods = match event {
            watcher::Event::Apply(p) | watcher::Event::InitApply(p) => vec![p],
            _ => continue,
        };
        for pod in pods {
            let ns = pod.metadata.namespace.clone().unwrap();
            let name = pod.metadata.name.clone().unwrap();
            let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
            let labels = pod.metadata.labels.clone().unwrap_or_default();
            let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
            if node.as_deref().is_some_and(|n| n != NODE) {
                continue;
            }
            if pod.metadata.deletion_timestamp.is_some() {
                let _ = api
                    .delete(&name, &DeleteParams::default().grace_period(0))
                    .await;
                continue;
            }
            if node.is_none() {
                if labels.contains_key(UNSCHEDULABLE) {
                    continue;
                }
                let binding = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name}, "target": {"kind": "Node", "name": NODE}});
                let request = axum::http::Request::post(format!(
                    "/api/v1/namespaces/{ns}/pods/{name}/binding"
                ))
                .header("content-type", "application/json")
                .body(serde_json::to_vec(&binding).unwrap())
                .unwrap();
                let _ = client.request::<Value>(request).await;
                continue;
            }
            let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
            let want_ready = !labels.contains_key(NOT_READY);
            let is_ready = capstan_core::controller::pod_facts::is_ready(&pod);
            if phase.as_deref() == Some("Running") && want_ready == is_ready {
                continue;
            }
            let ip = pod
                .status
                .as_ref()
                .and_then(|s| s.pod_ip.clone())
                .unwrap_or_else(|| {
                    let n = next_ip.fetch_add(1, Ordering::Relaxed);
                    format!("10.244.{}.{}", n / 250, n % 250 + 2)
                });
            let ready = if want_ready { "True" } else { "False" };
            let ip6 = format!("fd00:244::{}", ip.rsplit('.').next().unwrap_or("1"));
            let status = json!({"status": {
                "phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}, {"ip": ip6}],
                "conditions": [
                    {"type": "PodScheduled", "status": "True"},
                    {"type": "Ready", "status": ready, "lastTransitionTime": k8s_openapi::jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string()},
                ],
            }});
            let _ = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await;
        }
    }
}

/// Polls `check` until it returns `Some`, or panics after `seconds` naming `what`.
async fn eventually<T, F, Fut>(seconds: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn api<K>(c: &Cluster) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(c.client.clone(), "default")
}

async fn active_pods(c: &Cluster, selector: &str) -> Vec<Pod> {
    api::<Pod>(c)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect()
}

fn replica_set(name: &str, app: &str, replicas: i32) -> ReplicaSet {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": app}},
            "template": {"metadata": {"labels": {"app": app}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}},
        },
    }))
    .unwrap()
}

fn owner_uid(pod: &Pod) -> Option<String> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true))
        .map(|r| r.uid.clone())
}

#[tokio::test]
async fn replica_sets_keep_replicas_adopt_release_and_report() {
    let c = cluster().await;
    let rs = api::<ReplicaSet>(&c)
        .create(&PostParams::default(), &replica_set("web", "web", 3))
        .await
        .unwrap();
    let uid = rs.metadata.uid.clone().unwrap();
    let pods = eventually(20, "3 pods exist", || async {
        let pods = active_pods(&c, "app=web").await;
        (pods.len() == 3).then_some(pods)
    })
    .await;
    for pod in &pods {
        assert_eq!(owner_uid(pod).as_deref(), Some(uid.as_str()));
        assert!(pod.metadata.name.as_ref().unwrap().starts_with("web-"));
    }
    eventually(20, "status shows 3 ready and available", || async {
        let rs = api::<ReplicaSet>(&c).get("web").await.unwrap();
        let s = rs.status?;
        (s.replicas == 3
            && s.ready_replicas == Some(3)
            && s.available_replicas == Some(3)
            && s.observed_generation == rs.metadata.generation)
            .then_some(())
    })
    .await;
    // Self-healing: a deleted pod is replaced.
    let victim = pods[0].metadata.name.clone().unwrap();
    api::<Pod>(&c)
        .delete(&victim, &DeleteParams::default())
        .await
        .unwrap();
    eventually(20, "the deleted pod is replaced", || async {
        let pods = active_pods(&c, "app=web").await;
        (pods.len() == 3
            && pods
                .iter()
                .all(|p| p.metadata.name.as_deref() != Some(&victim)))
        .then_some(())
    })
    .await;
    // Scaling down deletes the surplus.
    api::<ReplicaSet>(&c)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 1}})),
        )
        .await
        .unwrap();
    eventually(20, "one pod is left", || async {
        (active_pods(&c, "app=web").await.len() == 1).then_some(())
    })
    .await;
    // A matching orphan is adopted, and then it is surplus.
    let orphan: Pod = serde_json::from_value(json!({"metadata": {"name": "stray", "labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1"}]}})).unwrap();
    api::<Pod>(&c)
        .create(&PostParams::default(), &orphan)
        .await
        .unwrap();
    eventually(
        20,
        "the orphan is adopted and the count is back to one",
        || async {
            let pods = active_pods(&c, "app=web").await;
            (pods.len() == 1
                && pods
                    .iter()
                    .all(|p| owner_uid(p).as_deref() == Some(uid.as_str())))
            .then_some(())
        },
    )
    .await;
    // A pod relabelled out of the selector is released and replaced.
    let kept = active_pods(&c, "app=web").await.remove(0);
    let kept_name = kept.metadata.name.clone().unwrap();
    api::<Pod>(&c)
        .patch(
            &kept_name,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"app": "debug"}}})),
        )
        .await
        .unwrap();
    eventually(
        20,
        "the relabelled pod is released and replaced",
        || async {
            let released = api::<Pod>(&c).get(&kept_name).await.ok()?;
            let replacement = active_pods(&c, "app=web").await;
            (owner_uid(&released).is_none() && replacement.len() == 1).then_some(())
        },
    )
    .await;
    // Events record what the controller did.
    eventually(20, "SuccessfulCreate events exist", || async {
        let events = api::<Event>(&c)
            .list(&ListParams::default())
            .await
            .ok()?
            .items;
        events
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("SuccessfulCreate")
                    && e.involved_object.name.as_deref() == Some("web")
            })
            .then_some(())
    })
    .await;
}

fn deployment(name: &str, image: &str, strategy: Value) -> Deployment {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "replicas": 3,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {"app": name}},
            "strategy": strategy,
            "template": {"metadata": {"labels": {"app": name}}, "spec": {"containers": [{"name": "c", "image": image}]}},
        },
    }))
    .unwrap()
}

async fn owned_replica_sets(c: &Cluster, deployment: &str) -> Vec<ReplicaSet> {
    let d = api::<Deployment>(c).get(deployment).await.unwrap();
    let uid = d.metadata.uid.unwrap();
    api::<ReplicaSet>(c)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|rs| {
            rs.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|r| r.uid == uid && r.controller == Some(true))
        })
        .collect()
}

fn revision(meta: &kube::api::ObjectMeta) -> Option<String> {
    meta.annotations
        .as_ref()?
        .get("deployment.kubernetes.io/revision")
        .cloned()
}

fn image_of_rs(rs: &ReplicaSet) -> String {
    rs.spec
        .as_ref()
        .unwrap()
        .template
        .as_ref()
        .unwrap()
        .spec
        .as_ref()
        .unwrap()
        .containers[0]
        .image
        .clone()
        .unwrap()
}

/// Waits until the Deployment's rollout is complete (what `kubectl rollout status` checks).
async fn rolled_out(c: &Cluster, name: &str) -> Deployment {
    eventually(30, &format!("deployment {name} is rolled out"), || async {
        let d = api::<Deployment>(c).get(name).await.ok()?;
        let s = d.status.clone()?;
        let spec = d.spec.clone()?;
        let want = spec.replicas.unwrap_or(1);
        let progressing = s
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Progressing")?;
        (s.observed_generation >= d.metadata.generation
            && s.updated_replicas == Some(want)
            && s.replicas == Some(want)
            && s.available_replicas == Some(want)
            && progressing.reason.as_deref() == Some("NewReplicaSetAvailable"))
        .then_some(d)
    })
    .await
}

#[tokio::test]
async fn deployments_roll_update_roll_back_pause_and_prune_history() {
    let c = cluster().await;
    let strategy =
        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}});
    api::<Deployment>(&c)
        .create(
            &PostParams::default(),
            &deployment("web", "web:1", strategy),
        )
        .await
        .unwrap();
    let d = rolled_out(&c, "web").await;
    assert_eq!(revision(&d.metadata).as_deref(), Some("1"));
    let available = d
        .status
        .as_ref()
        .unwrap()
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .find(|c| c.type_ == "Available")
        .unwrap()
        .clone();
    assert_eq!(available.status, "True");
    let first = owned_replica_sets(&c, "web").await;
    assert_eq!(first.len(), 1);
    let hash = first[0].metadata.labels.as_ref().unwrap()["pod-template-hash"].clone();
    assert_eq!(
        first[0].metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    for pod in active_pods(&c, "app=web").await {
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()["pod-template-hash"],
            hash
        );
    }

    // Watch the ReplicaSets during the update: never more than replicas + maxSurge pods wanted.
    let rs_all: Api<ReplicaSet> = api(&c);
    let peak = Arc::new(AtomicU32::new(0));
    let stop_watch = CancellationToken::new();
    let watch_task = {
        let peak = peak.clone();
        let stop = stop_watch.clone();
        let c_client = c.client.clone();
        tokio::spawn(async move {
            let _ = rs_all;
            let api: Api<ReplicaSet> = Api::namespaced(c_client, "default");
            while !stop.is_cancelled() {
                let total: i32 = api
                    .list(&ListParams::default().labels("app=web"))
                    .await
                    .map(|l| {
                        l.items
                            .iter()
                            .map(|rs| rs.spec.as_ref().unwrap().replicas.unwrap_or(0))
                            .sum()
                    })
                    .unwrap_or(0);
                peak.fetch_max(total as u32, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    api::<Deployment>(&c)
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "web:2"}]}}}})))
        .await
        .unwrap();
    let d = rolled_out(&c, "web").await;
    stop_watch.cancel();
    watch_task.await.unwrap();
    assert!(
        peak.load(Ordering::Relaxed) <= 4,
        "peak {}",
        peak.load(Ordering::Relaxed)
    );
    assert_eq!(revision(&d.metadata).as_deref(), Some("2"));
    let sets = owned_replica_sets(&c, "web").await;
    assert_eq!(sets.len(), 2);
    for rs in &sets {
        let replicas = rs.spec.as_ref().unwrap().replicas.unwrap();
        match image_of_rs(rs).as_str() {
            "web:2" => assert_eq!(
                (replicas, revision(&rs.metadata).as_deref()),
                (3, Some("2"))
            ),
            _ => assert_eq!(
                (replicas, revision(&rs.metadata).as_deref()),
                (0, Some("1"))
            ),
        }
    }
    let pods = active_pods(&c, "app=web").await;
    assert_eq!(pods.len(), 3);
    assert!(pods
        .iter()
        .all(|p| p.spec.as_ref().unwrap().containers[0].image.as_deref() == Some("web:2")));

    // Rolling back is going back to the old template: the old ReplicaSet becomes revision 3.
    api::<Deployment>(&c)
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "web:1"}]}}}})))
        .await
        .unwrap();
    let d = rolled_out(&c, "web").await;
    assert_eq!(revision(&d.metadata).as_deref(), Some("3"));
    let sets = owned_replica_sets(&c, "web").await;
    assert_eq!(sets.len(), 2, "no new ReplicaSet for an old template");
    let back = sets.iter().find(|rs| image_of_rs(rs) == "web:1").unwrap();
    assert_eq!(
        back.metadata.name.as_deref(),
        Some(format!("web-{hash}").as_str())
    );
    assert_eq!(revision(&back.metadata).as_deref(), Some("3"));

    // Paused: a template change makes no new ReplicaSet until resumed.
    api::<Deployment>(&c)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": true}})),
        )
        .await
        .unwrap();
    api::<Deployment>(&c)
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "web:3"}]}}}})))
        .await
        .unwrap();
    eventually(
        20,
        "the paused deployment reports DeploymentPaused",
        || async {
            let d = api::<Deployment>(&c).get("web").await.ok()?;
            let s = d.status?;
            (s.observed_generation == d.metadata.generation
                && s.conditions
                    .iter()
                    .flatten()
                    .any(|c| c.reason.as_deref() == Some("DeploymentPaused")))
            .then_some(())
        },
    )
    .await;
    assert!(owned_replica_sets(&c, "web")
        .await
        .iter()
        .all(|rs| image_of_rs(rs) != "web:3"));
    api::<Deployment>(&c)
        .patch(
            "web",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"paused": false}})),
        )
        .await
        .unwrap();
    rolled_out(&c, "web").await;
    // Four revisions, history limit 2: the oldest empty ReplicaSet is gone.
    eventually(20, "history is pruned to 2 old ReplicaSets", || async {
        (owned_replica_sets(&c, "web").await.len() == 3).then_some(())
    })
    .await;

    // A stalled rollout reports ProgressDeadlineExceeded.
    api::<Deployment>(&c)
        .patch("web", &PatchParams::default(), &Patch::Merge(json!({"spec": {"progressDeadlineSeconds": 2, "template": {"metadata": {"labels": {NOT_READY: "yes"}}}}})))
        .await
        .unwrap();
    eventually(30, "the stalled rollout exceeds its deadline", || async {
        let d = api::<Deployment>(&c).get("web").await.ok()?;
        d.status?
            .conditions
            .iter()
            .flatten()
            .any(|c| {
                c.type_ == "Progressing"
                    && c.reason.as_deref() == Some("ProgressDeadlineExceeded")
                    && c.status == "False"
            })
            .then_some(())
    })
    .await;
    // maxUnavailable 0: the old pods stay while the new ones are not ready.
    assert_eq!(
        active_pods(&c, "app=web")
            .await
            .iter()
            .filter(|p| !p.metadata.labels.as_ref().unwrap().contains_key(NOT_READY))
            .count(),
        3
    );
}

#[tokio::test]
async fn recreate_deployments_stop_old_pods_before_starting_new_ones() {
    let c = cluster().await;
    api::<Deployment>(&c)
        .create(
            &PostParams::default(),
            &deployment("batch", "batch:1", json!({"type": "Recreate"})),
        )
        .await
        .unwrap();
    rolled_out(&c, "batch").await;
    let old_pods = active_pods(&c, "app=batch").await;
    // Record, from a watch, whether a new pod ever ran beside an old one.
    let overlap = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop = CancellationToken::new();
    let task = {
        let overlap = overlap.clone();
        let stop = stop.clone();
        let pods: Api<Pod> = api(&c);
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                let list = pods
                    .list(&ListParams::default().labels("app=batch"))
                    .await
                    .unwrap()
                    .items;
                let images: std::collections::HashSet<_> = list
                    .iter()
                    .map(|p| p.spec.as_ref().unwrap().containers[0].image.clone())
                    .collect();
                if images.len() > 1 {
                    overlap.store(true, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    api::<Deployment>(&c)
        .patch("batch", &PatchParams::default(), &Patch::Merge(json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "batch:2"}]}}}})))
        .await
        .unwrap();
    rolled_out(&c, "batch").await;
    stop.cancel();
    task.await.unwrap();
    assert!(
        !overlap.load(Ordering::Relaxed),
        "old and new pods overlapped"
    );
    let new_pods = active_pods(&c, "app=batch").await;
    assert_eq!(new_pods.len(), 3);
    assert!(new_pods
        .iter()
        .all(|p| old_pods.iter().all(|o| o.metadata.name != p.metadata.name)));
}

#[tokio::test]
async fn garbage_collection_follows_each_propagation_policy() {
    let c = cluster().await;
    let rs_api: Api<ReplicaSet> = api(&c);
    // Background: the owner goes, then its pods.
    rs_api
        .create(&PostParams::default(), &replica_set("bg", "bg", 2))
        .await
        .unwrap();
    eventually(20, "bg pods exist", || async {
        (active_pods(&c, "app=bg").await.len() == 2).then_some(())
    })
    .await;
    rs_api
        .delete("bg", &DeleteParams::background())
        .await
        .unwrap();
    eventually(20, "bg pods are collected", || async {
        let all = api::<Pod>(&c)
            .list(&ListParams::default().labels("app=bg"))
            .await
            .ok()?
            .items;
        all.is_empty().then_some(())
    })
    .await;

    // Orphan: the owner goes, its pods stay without the reference.
    rs_api
        .create(&PostParams::default(), &replica_set("orph", "orph", 2))
        .await
        .unwrap();
    eventually(20, "orph pods exist", || async {
        (active_pods(&c, "app=orph").await.len() == 2).then_some(())
    })
    .await;
    rs_api
        .delete("orph", &DeleteParams::orphan())
        .await
        .unwrap();
    eventually(20, "the orphaning owner is gone", || async {
        rs_api.get("orph").await.is_err().then_some(())
    })
    .await;
    let pods = active_pods(&c, "app=orph").await;
    assert_eq!(pods.len(), 2);
    assert!(pods.iter().all(|p| p
        .metadata
        .owner_references
        .as_ref()
        .is_none_or(|r| r.is_empty())));

    // Foreground: the owner stays, marked, until its pods are gone.
    let fg = rs_api
        .create(&PostParams::default(), &replica_set("fg", "fg", 2))
        .await
        .unwrap();
    eventually(20, "fg pods exist", || async {
        (active_pods(&c, "app=fg").await.len() == 2).then_some(())
    })
    .await;
    let pod_names: Vec<String> = active_pods(&c, "app=fg")
        .await
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    // One pod is held by a finalizer, so the owner must wait for it.
    api::<Pod>(&c)
        .patch(
            &pod_names[0],
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
        )
        .await
        .unwrap();
    rs_api
        .delete("fg", &DeleteParams::foreground())
        .await
        .unwrap();
    eventually(20, "the other fg pod is gone", || async {
        api::<Pod>(&c)
            .get(&pod_names[1])
            .await
            .is_err()
            .then_some(())
    })
    .await;
    let waiting = rs_api.get("fg").await.unwrap();
    assert!(waiting.metadata.deletion_timestamp.is_some());
    assert!(waiting
        .metadata
        .finalizers
        .unwrap()
        .contains(&"foregroundDeletion".to_string()));
    assert_eq!(waiting.metadata.uid, fg.metadata.uid);
    api::<Pod>(&c)
        .patch(
            &pod_names[0],
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    eventually(
        20,
        "the foreground owner goes after its last pod",
        || async { rs_api.get("fg").await.is_err().then_some(()) },
    )
    .await;

    // Any kind: a ConfigMap owned by another ConfigMap follows it.
    let cms: Api<ConfigMap> = api(&c);
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}})).unwrap(),
        )
        .await
        .unwrap();
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "dependent", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]}})).unwrap(),
    )
    .await
    .unwrap();
    // A dependent of an owner that never existed is collected too.
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "dangling", "ownerReferences": [{"apiVersion": "v1", "kind": "ConfigMap", "name": "ghost", "uid": "00000000-0000-0000-0000-000000000000"}]}})).unwrap(),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        cms.get("dependent").await.is_ok(),
        "a dependent of a live owner is kept"
    );
    cms.delete("owner", &DeleteParams::default()).await.unwrap();
    eventually(
        20,
        "the dependent and the dangling ConfigMaps are collected",
        || async {
            (cms.get("dependent").await.is_err() && cms.get("dangling").await.is_err())
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn endpoints_and_slices_follow_pods() {
    let c = cluster().await;
    let svc: Service = serde_json::from_value(json!({
        "metadata": {"name": "web", "labels": {"tier": "front"}},
        "spec": {"selector": {"app": "web"}, "ports": [
            {"name": "http", "port": 80, "targetPort": "http"},
            {"name": "metrics", "port": 9090, "targetPort": 9090},
        ]},
    }))
    .unwrap();
    api::<Service>(&c)
        .create(&PostParams::default(), &svc)
        .await
        .unwrap();
    let pod = |name: &str, ready: bool| -> Pod {
        let mut labels = json!({"app": "web"});
        if !ready {
            labels[NOT_READY] = json!("yes");
        }
        serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}, "spec": {"containers": [{"name": "c", "image": "web:1", "ports": [{"name": "http", "containerPort": 8080}]}]}})).unwrap()
    };
    for (name, ready) in [("a", true), ("b", true), ("c", false)] {
        api::<Pod>(&c)
            .create(&PostParams::default(), &pod(name, ready))
            .await
            .unwrap();
    }
    let endpoints = eventually(
        20,
        "Endpoints list 2 ready and 1 not-ready address",
        || async {
            let ep = api::<Endpoints>(&c).get("web").await.ok()?;
            let subsets = ep.subsets.clone()?;
            let ready: usize = subsets
                .iter()
                .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                .sum();
            let not_ready: usize = subsets
                .iter()
                .map(|s| s.not_ready_addresses.as_ref().map_or(0, Vec::len))
                .sum();
            (ready == 2 && not_ready == 1).then_some(ep)
        },
    )
    .await;
    assert_eq!(endpoints.metadata.labels.as_ref().unwrap()["tier"], "front");
    let ports = endpoints.subsets.unwrap()[0].ports.clone().unwrap();
    let http = ports
        .iter()
        .find(|p| p.name.as_deref() == Some("http"))
        .unwrap();
    assert_eq!(
        http.port, 8080,
        "the named target port resolves to the container port"
    );
    assert!(ports
        .iter()
        .any(|p| p.name.as_deref() == Some("metrics") && p.port == 9090));

    let slices: Api<EndpointSlice> = api(&c);
    let slice = eventually(20, "one EndpointSlice with 3 endpoints", || async {
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?
            .items;
        (list.len() == 1 && list[0].endpoints.len() == 3).then(|| list[0].clone())
    })
    .await;
    assert_eq!(slice.address_type, "IPv4");
    assert_eq!(
        slice.metadata.labels.as_ref().unwrap()["endpointslice.kubernetes.io/managed-by"],
        "endpointslice-controller.k8s.io"
    );
    assert_eq!(
        slice.metadata.owner_references.as_ref().unwrap()[0].kind,
        "Service"
    );
    let ready_count = slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().unwrap().ready == Some(true))
        .count();
    assert_eq!(ready_count, 2);

    // A terminating pod (held by a finalizer) leaves Endpoints but stays in the slice as
    // terminating.
    api::<Pod>(&c)
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": ["example.com/hold"]}})),
        )
        .await
        .unwrap();
    api::<Pod>(&c)
        .delete("a", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        20,
        "the terminating pod is marked in the slice and gone from Endpoints",
        || async {
            let ep = api::<Endpoints>(&c).get("web").await.ok()?;
            let ready: usize = ep
                .subsets
                .iter()
                .flatten()
                .map(|s| s.addresses.as_ref().map_or(0, Vec::len))
                .sum();
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await
                .ok()?
                .items;
            let terminating = list
                .iter()
                .flat_map(|s| &s.endpoints)
                .find(|e| e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some("a"))?;
            let cond = terminating.conditions.clone()?;
            (ready == 1
                && cond.terminating == Some(true)
                && cond.ready == Some(false)
                && cond.serving == Some(true))
            .then_some(())
        },
    )
    .await;
    api::<Pod>(&c)
        .patch(
            "a",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"finalizers": null}})),
        )
        .await
        .unwrap();
    // Deleting the Service removes its Endpoints and slices.
    api::<Service>(&c)
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually(20, "Endpoints and slices go with the Service", || async {
        let gone = api::<Endpoints>(&c).get("web").await.is_err();
        let list = slices
            .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
            .await
            .ok()?
            .items;
        (gone && list.is_empty()).then_some(())
    })
    .await;
}

#[tokio::test]
async fn unreachable_nodes_are_tainted_and_their_pods_evicted() {
    let config = ControllerManagerConfig {
        node_lifecycle: NodeLifecycleConfig {
            grace_period: Duration::from_secs(2),
        },
        ..Default::default()
    };
    let c = cluster_with(config).await;
    let now = || {
        k8s_openapi::jiff::Timestamp::now()
            .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
            .to_string()
    };
    let nodes: Api<Node> = Api::all(c.client.clone());
    nodes
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "far"}})).unwrap(),
        )
        .await
        .unwrap();
    let ready_status = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now().split('.').next().unwrap().to_string() + "Z"}]}});
    nodes
        .patch_status(
            "far",
            &PatchParams::default(),
            &Patch::Merge(ready_status.clone()),
        )
        .await
        .unwrap();
    let leases: Api<Lease> = Api::namespaced(c.client.clone(), "kube-node-lease");
    leases
        .create(&PostParams::default(), &serde_json::from_value(json!({"metadata": {"name": "far"}, "spec": {"holderIdentity": "far", "leaseDurationSeconds": 2, "renewTime": now()}})).unwrap())
        .await
        .unwrap();
    // Two pods on the node: one tolerating unreachability for a second, one for long.
    for (name, seconds) in [("brief", 1), ("patient", 3600)] {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": name}, "spec": {"nodeName": "far", "containers": [{"name": "c", "image": "x:1"}],
            "tolerations": [{"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": seconds}]}})).unwrap();
        api::<Pod>(&c)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }
    // The patient pod was running and ready before the node went silent.
    let running = json!({"status": {"phase": "Running", "podIP": "10.244.9.9", "conditions": [{"type": "Ready", "status": "True"}]}});
    api::<Pod>(&c)
        .patch_status("patient", &PatchParams::default(), &Patch::Merge(running))
        .await
        .unwrap();
    // The default tolerations were added for the not-ready taint.
    let brief = api::<Pod>(&c).get("brief").await.unwrap();
    assert!(brief
        .spec
        .unwrap()
        .tolerations
        .unwrap()
        .iter()
        .any(|t| t.key.as_deref() == Some("node.kubernetes.io/not-ready")
            && t.toleration_seconds == Some(300)));
    // While the lease is renewed the node stays untainted.
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut lease = leases.get("far").await.unwrap();
        lease.spec.as_mut().unwrap().renew_time =
            Some(serde_json::from_value(json!(now())).unwrap());
        leases
            .replace("far", &PostParams::default(), &lease)
            .await
            .unwrap();
    }
    let node = nodes.get("far").await.unwrap();
    assert!(node
        .spec
        .and_then(|s| s.taints)
        .is_none_or(|t| t.is_empty()));
    // Silence: NotReady (Unknown), tainted, and the brief pod is evicted.
    let node = eventually(20, "the silent node is Unknown and tainted", || async {
        let node = nodes.get("far").await.ok()?;
        let ready = node
            .status
            .clone()?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Ready")?;
        let taints = node.spec.clone()?.taints?;
        (ready.status == "Unknown"
            && taints
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoExecute")
            && taints
                .iter()
                .any(|t| t.key == "node.kubernetes.io/unreachable" && t.effect == "NoSchedule"))
        .then_some(node)
    })
    .await;
    assert_eq!(
        node.status
            .unwrap()
            .conditions
            .unwrap()
            .iter()
            .find(|c| c.type_ == "Ready")
            .unwrap()
            .reason
            .as_deref(),
        Some("NodeStatusUnknown")
    );
    eventually(20, "the brief pod is evicted", || async {
        match api::<Pod>(&c).get("brief").await {
            Err(_) => Some(()),
            Ok(pod) => pod.metadata.deletion_timestamp.is_some().then_some(()),
        }
    })
    .await;
    let patient = api::<Pod>(&c).get("patient").await.unwrap();
    assert!(patient.metadata.deletion_timestamp.is_none());
    let ready = patient
        .status
        .unwrap()
        .conditions
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(
        ready.status, "False",
        "pods on an unreachable node are not ready"
    );
    // Back: renewed and Ready again, the taints go.
    let mut lease = leases.get("far").await.unwrap();
    lease.spec.as_mut().unwrap().renew_time = Some(serde_json::from_value(json!(now())).unwrap());
    leases
        .replace("far", &PostParams::default(), &lease)
        .await
        .unwrap();
    let back = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now().split('.').next().unwrap().to_string() + "Z"}]}});
    nodes
        .patch_status("far", &PatchParams::default(), &Patch::Merge(back))
        .await
        .unwrap();
    eventually(20, "the recovered node loses its taints", || async {
        let node = nodes.get("far").await.ok()?;
        node.spec?.taints.is_none_or(|t| t.is_empty()).then_some(())
    })
    .await;
    // As `kubectl describe node` finds them: the node controller announced the node and its
    // silence; a deleted node is announced gone.
    let uid = nodes.get("far").await.unwrap().metadata.uid.unwrap();
    nodes.delete("far", &DeleteParams::default()).await.unwrap();
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let reasons = eventually(20, "the node's events", || async {
        let listed = events
            .list(&ListParams::default().fields(&format!(
                "involvedObject.kind=Node,involvedObject.name=far,involvedObject.uid={uid}"
            )))
            .await
            .ok()?;
        let reasons: Vec<(String, String)> = listed
            .items
            .into_iter()
            .map(|e| (e.reason.unwrap_or_default(), e.message.unwrap_or_default()))
            .collect();
        reasons
            .iter()
            .any(|(r, _)| r == "RemovingNode")
            .then_some(reasons)
    })
    .await;
    for (reason, message) in [
        (
            "RegisteredNode",
            "Node far event: Registered Node far in Controller",
        ),
        ("NodeNotReady", "Node far status is now: NodeNotReady"),
        (
            "RemovingNode",
            "Node far event: Removing Node far from Controller",
        ),
    ] {
        assert!(
            reasons.iter().any(|(r, m)| r == reason && m == message),
            "{reason}: {reasons:?}"
        );
    }
}

#[tokio::test]
async fn one_leader_at_a_time_and_stopping_hands_over() {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let client = server.client();
    let config = |id: &str| LeaderElectionConfig {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_millis(1500),
        retry_period: Duration::from_millis(200),
        ..LeaderElectionConfig::new("kube-system", "test-leader", id)
    };
    let leading = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let max_concurrent = Arc::new(AtomicU32::new(0));
    let mut stops = Vec::new();
    let mut tasks = Vec::new();
    for id in ["a", "b"] {
        let elector = LeaderElector::new(client.clone(), config(id));
        let stop = CancellationToken::new();
        let leading = leading.clone();
        let max_concurrent = max_concurrent.clone();
        let id = id.to_string();
        stops.push(stop.clone());
        tasks.push(tokio::spawn(async move {
            elector
                .run(stop, move |term| {
                    let leading = leading.clone();
                    let max_concurrent = max_concurrent.clone();
                    let id = id.clone();
                    async move {
                        let now = {
                            let mut l = leading.lock().unwrap();
                            l.push(id.clone());
                            l.len() as u32
                        };
                        max_concurrent.fetch_max(now, Ordering::Relaxed);
                        term.cancelled().await;
                        leading.lock().unwrap().retain(|x| *x != id);
                    }
                })
                .await
        }));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(leading.lock().unwrap().clone(), ["a"]);
    // Stopping the leader releases the lease; the other takes over well within a lease term.
    stops[0].cancel();
    eventually(5, "b leads", || async {
        (leading.lock().unwrap().clone() == ["b"]).then_some(())
    })
    .await;
    assert_eq!(max_concurrent.load(Ordering::Relaxed), 1);
    let lease: Lease = Api::namespaced(client.clone(), "kube-system")
        .get("test-leader")
        .await
        .unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("b"));
    assert_eq!(spec.lease_transitions, Some(1));
    // Losing the lease (another holder took it) stops the leader's work.
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-system");
    let mut stolen = leases.get("test-leader").await.unwrap();
    let spec = stolen.spec.as_mut().unwrap();
    spec.holder_identity = Some("intruder".into());
    spec.lease_duration_seconds = Some(60);
    spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
        k8s_openapi::jiff::Timestamp::now(),
    ));
    leases
        .replace("test-leader", &PostParams::default(), &stolen)
        .await
        .unwrap();
    eventually(5, "b stops working after losing the lease", || async {
        leading.lock().unwrap().is_empty().then_some(())
    })
    .await;
    stops[1].cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn events_aggregate_and_informers_are_shared_and_indexed() {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let client = server.client();
    let ctx = ControllerContext::new(client.clone(), "test-controller");
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    let cm = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "subject", "labels": {"team": "a"}}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    for _ in 0..3 {
        ctx.recorder
            .record_for(&cm, EventType::Warning, "Flapping", "it flapped");
    }
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let event = eventually(10, "one aggregated event with count 3", || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=subject"))
            .await
            .ok()?
            .items;
        (list.len() == 1 && list[0].count == Some(3)).then(|| list[0].clone())
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Warning"));
    assert_eq!(
        event.source.unwrap().component.as_deref(),
        Some("test-controller")
    );

    // Informers: one per kind, joinable after start, indexed.
    let factory = InformerFactory::new(client.clone());
    let first = factory.informer::<ConfigMap>();
    first.wait_synced().await;
    assert!(first
        .get(&ObjectKey::namespaced("default", "subject"))
        .is_some());
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "other", "labels": {"team": "a"}}}))
            .unwrap(),
    )
    .await
    .unwrap();
    let late = factory.informer::<ConfigMap>();
    eventually(10, "the late joiner sees both", || async {
        (late.is_synced()
            && late
                .by_index(capstan_core::controller::BY_LABEL, "team=a")
                .len()
                == 2)
            .then_some(())
    })
    .await;
    assert_eq!(first.len(), late.len());
    late.add_index(
        "by-name-length",
        Arc::new(|cm: &ConfigMap| {
            vec![cm.metadata.name.as_ref().map_or(0, String::len).to_string()]
        }),
    );
    assert_eq!(
        first.by_index("by-name-length", "7").len(),
        1,
        "indexes are shared too"
    );
    cms.delete("other", &DeleteParams::default()).await.unwrap();
    eventually(10, "deletions reach the cache and its indexes", || async {
        (first
            .by_index(capstan_core::controller::BY_LABEL, "team=a")
            .len()
            == 1)
            .then_some(())
    })
    .await;
}

mod convergence {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 6, .. ProptestConfig::default() })]

        /// From any start (stray matching pods, any replica count) and under random pod
        /// deletions and scale changes, a ReplicaSet ends with exactly `replicas` active pods,
        /// all owned by it.
        #[test]
        fn replica_set_converges(
            strays in 0usize..5,
            steps in proptest::collection::vec((0i32..6, 0usize..4), 1..5),
        ) {
            let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            runtime.block_on(async move {
                let c = cluster().await;
                for i in 0..strays {
                    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": format!("stray-{i}"), "labels": {"app": "conv"}}, "spec": {"containers": [{"name": "c", "image": "x:1"}]}})).unwrap();
                    api::<Pod>(&c).create(&PostParams::default(), &pod).await.unwrap();
                }
                let rs = api::<ReplicaSet>(&c).create(&PostParams::default(), &replica_set("conv", "conv", steps[0].0)).await.unwrap();
                let uid = rs.metadata.uid.unwrap();
                let mut replicas = steps[0].0;
                for (step, (scale, deletions)) in steps.iter().enumerate() {
                    if step > 0 {
                        replicas = *scale;
                        api::<ReplicaSet>(&c).patch("conv", &PatchParams::default(), &Patch::Merge(json!({"spec": {"replicas": replicas}}))).await.unwrap();
                    }
                    tokio::time::sleep(Duration::from_millis(30)).await;
                    let pods = active_pods(&c, "app=conv").await;
                    for pod in pods.iter().take(*deletions) {
                        let _ = api::<Pod>(&c).delete(pod.metadata.name.as_ref().unwrap(), &DeleteParams::default()).await;
                    }
                }
                eventually(30, "the ReplicaSet converges", || async {
                    let pods = active_pods(&c, "app=conv").await;
                    (pods.len() == replicas as usize && pods.iter().all(|p| owner_uid(p).as_deref() == Some(uid.as_str()))).then_some(())
                }).await;
                // And stays there.
                tokio::time::sleep(Duration::from_millis(300)).await;
                assert_eq!(active_pods(&c, "app=conv").await.len(), replicas as usize);
                if let Some(controllers) = c.controllers.as_ref() {
                    assert!(controllers.reconciles() > 0);
                }
            });
        }
    }
}

#[tokio::test]
async fn controllers_stop_cleanly() {
    let mut c = cluster().await;
    let controllers = c.controllers.take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), controllers.stop())
        .await
        .expect("the controllers stop within 10 s");
}

fn pod_cidr_of(node: &Node) -> Option<String> {
    node.spec.as_ref().and_then(|s| s.pod_cidr.clone())
}

#[tokio::test]
async fn node_ipam_gives_each_node_its_own_subnet_and_reuses_freed_ones() {
    let c = cluster_with(ControllerManagerConfig {
        node_ipam: Some(capstan_core::controller::NodeIpamConfig {
            cluster_cidr: capstan_core::cidr::Ipv4Cidr::parse("10.60.0.0/22").unwrap(),
            node_prefix: 24,
        }),
        ..ControllerManagerConfig::default()
    })
    .await;
    let nodes: Api<Node> = Api::all(c.client.clone());
    let create = |name: &str, cidr: Option<&str>| {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": cidr.map(|c| json!({"podCIDR": c, "podCIDRs": [c]})).unwrap_or(json!({})),
        }))
        .unwrap();
        let nodes = nodes.clone();
        async move { nodes.create(&PostParams::default(), &node).await.unwrap() }
    };
    // A node that brings its own subnet keeps it, and nobody else is given it.
    create("own", Some("10.60.0.0/24")).await;
    for name in ["n1", "n2"] {
        create(name, None).await;
    }
    let assigned = eventually(10, "n1 and n2 have subnets", || async {
        let n1 = pod_cidr_of(&nodes.get("n1").await.ok()?)?;
        let n2 = pod_cidr_of(&nodes.get("n2").await.ok()?)?;
        Some((n1, n2))
    })
    .await;
    let mut all = vec![
        "10.60.0.0/24".to_string(),
        assigned.0.clone(),
        assigned.1.clone(),
    ];
    all.sort();
    all.dedup();
    assert_eq!(all.len(), 3, "three distinct subnets: {all:?}");
    let n2 = nodes.get("n2").await.unwrap();
    assert_eq!(
        n2.spec.as_ref().and_then(|s| s.pod_cidrs.clone()),
        Some(vec![assigned.1.clone()])
    );
    // The range holds four /24s: the fourth node takes the last, a fifth waits with an event.
    create("n3", None).await;
    let third = eventually(10, "n3 has a subnet", || async {
        pod_cidr_of(&nodes.get("n3").await.ok()?)
    })
    .await;
    assert!(!all.contains(&third));
    create("n4", None).await;
    let events: Api<Event> = Api::all(c.client.clone());
    eventually(10, "a CIDRNotAvailable event for n4", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        list.items
            .iter()
            .any(|e| {
                e.reason.as_deref() == Some("CIDRNotAvailable")
                    && e.involved_object.name.as_deref() == Some("n4")
            })
            .then_some(())
    })
    .await;
    assert_eq!(pod_cidr_of(&nodes.get("n4").await.unwrap()), None);
    // Deleting a node frees its subnet for the waiting one.
    nodes.delete("n1", &DeleteParams::default()).await.unwrap();
    let reused = eventually(60, "n4 gets n1's freed subnet", || async {
        pod_cidr_of(&nodes.get("n4").await.ok()?)
    })
    .await;
    assert_eq!(reused, assigned.0);
}

#[tokio::test]
async fn an_agent_waits_for_its_pod_cidr_from_node_ipam() {
    let c = cluster_with(ControllerManagerConfig {
        node_ipam: Some(capstan_core::controller::NodeIpamConfig::default()),
        ..ControllerManagerConfig::default()
    })
    .await;
    let config = capstan_core::node::NodeConfig::new("joining");
    let cidr = capstan_core::node::await_pod_cidr(&c.client, &config, Duration::from_secs(10))
        .await
        .expect("a subnet from the cluster range");
    assert!(
        cidr.starts_with("10.244.") && cidr.ends_with("/24"),
        "{cidr}"
    );
    // Without IPAM the wait ends with a clear error.
    let lonely = cluster().await;
    let err =
        capstan_core::node::await_pod_cidr(&lonely.client, &config, Duration::from_millis(500))
            .await
            .expect_err("nobody hands out subnets");
    assert!(err.to_string().contains("node IPAM"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dual_stack_services_get_an_address_and_slices_per_family() {
    let api_config = ApiConfig {
        service_cidr: "10.96.0.0/16,fd00:10:96::/112".into(),
        ..ApiConfig::default()
    };
    let c = cluster_on(api_config, ControllerManagerConfig::default()).await;
    let services: Api<Service> = api(&c);
    let service = |name: &str, policy: &str| -> Service {
        serde_json::from_value(json!({"metadata": {"name": name}, "spec": {
            "selector": {"app": "dual"}, "ipFamilyPolicy": policy,
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}}))
        .unwrap()
    };
    let dual = services
        .create(&PostParams::default(), &service("dual", "RequireDualStack"))
        .await
        .unwrap();
    let spec = dual.spec.clone().unwrap();
    assert_eq!(spec.ip_families.unwrap(), ["IPv4", "IPv6"]);
    let ips = spec.cluster_ips.unwrap();
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(
        ips[0].starts_with("10.96.") && ips[1].starts_with("fd00:10:96::"),
        "{ips:?}"
    );
    let single = services
        .create(&PostParams::default(), &service("single", "SingleStack"))
        .await
        .unwrap();
    assert_eq!(single.spec.unwrap().cluster_ips.unwrap().len(), 1);
    for name in ["a", "b"] {
        let pod: Pod = serde_json::from_value(
            json!({"metadata": {"name": name, "labels": {"app": "dual"}},
            "spec": {"containers": [{"name": "c", "image": "web:1"}]}}),
        )
        .unwrap();
        api::<Pod>(&c)
            .create(&PostParams::default(), &pod)
            .await
            .unwrap();
    }
    let slices: Api<EndpointSlice> = api(&c);
    let of = |service: &'static str| {
        let slices = slices.clone();
        async move {
            let selector = format!("kubernetes.io/service-name={service}");
            let mut list = slices
                .list(&ListParams::default().labels(&selector))
                .await
                .ok()?
                .items;
            list.sort_by(|a, b| a.address_type.cmp(&b.address_type));
            Some(list)
        }
    };
    let dual_slices = eventually(20, "an IPv4 and an IPv6 slice of 2 endpoints", || async {
        let list = of("dual").await?;
        let types: Vec<&str> = list.iter().map(|s| s.address_type.as_str()).collect();
        let full = list.iter().all(|s| s.endpoints.len() == 2);
        (types == ["IPv4", "IPv6"] && full).then_some(list)
    })
    .await;
    for slice in &dual_slices {
        for endpoint in &slice.endpoints {
            let v6 = endpoint.addresses[0].contains(':');
            assert_eq!(v6, slice.address_type == "IPv6", "{endpoint:?}");
        }
    }
    let single_slices = eventually(20, "the single-stack Service's IPv4 slice", || async {
        let list = of("single").await?;
        (list.len() == 1 && list[0].endpoints.len() == 2).then_some(list)
    })
    .await;
    assert_eq!(single_slices[0].address_type, "IPv4");
    // The proxy's view: both cluster IPs, each family's endpoints.
    let dual = services.get("dual").await.unwrap();
    let table = capstan_core::proxy::ServiceTable::build([&dual], dual_slices.iter());
    let entry = table
        .services
        .values()
        .next()
        .expect("the dual Service's port");
    assert_eq!(entry.cluster_ips.len(), 2);
    let v6 = entry.endpoints.iter().filter(|e| e.is_ipv6()).count();
    assert_eq!((entry.endpoints.len(), v6), (4, 2), "{entry:?}");
}
