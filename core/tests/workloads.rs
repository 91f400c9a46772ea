//! The workload controllers (Jobs, CronJobs, DaemonSets, StatefulSets, disruption budgets and
//! eviction, horizontal autoscaling) against the in-process API with the real scheduler and
//! node agents on the simulated runtime: pods really run, exit (`sim.capstan.dev/exit-after`)
//! and use CPU (`sim.capstan.dev/cpu-millis`) as the annotations say.

use capstan_core::apiserver::ApiServer;
use capstan_core::controller::{
    AutoscalerConfig, ControllerManager, ControllerManagerConfig, InformerFactory, JobConfig,
};
use capstan_core::node::{NodeAgent, NodeConfig, RunningNode, SharedPodFeed};
use capstan_core::runtime::sim::{SimConfig, SimRuntime};
use capstan_core::scheduler::{Scheduler, SchedulerConfig};
use capstan_core::store::MemoryStore;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

pub struct Cluster {
    _server: ApiServer,
    _informers: InformerFactory,
    pub client: kube::Client,
    controllers: Option<capstan_core::controller::RunningControllers>,
    scheduler: Option<capstan_core::scheduler::RunningScheduler>,
    nodes: Vec<RunningNode>,
    _dirs: Vec<tempfile::TempDir>,
}

impl Cluster {
    pub async fn stop(mut self) {
        for node in self.nodes.drain(..) {
            node.stop().await;
        }
        if let Some(s) = self.scheduler.take() {
            s.stop().await;
        }
        if let Some(c) = self.controllers.take() {
            c.stop().await;
        }
    }
}

fn node_config(
    name: &str,
    index: u8,
    dir: &std::path::Path,
    labels: &[(&str, &str)],
) -> NodeConfig {
    let mut config = NodeConfig::new(name);
    config.capacity = Some(BTreeMap::from([
        ("cpu".into(), "4".into()),
        ("memory".into(), "8Gi".into()),
        ("pods".into(), "110".into()),
    ]));
    config.labels = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    config.root_dir = dir.to_path_buf();
    config.initial_backoff = Duration::from_millis(200);
    config.max_backoff = Duration::from_secs(1);
    config.resync_period = Duration::from_millis(500);
    config.stats_interval = Duration::from_millis(300);
    config.pod_cidr = Some(format!("10.244.{index}.0/24"));
    config
}

/// A control plane with `nodes` simulated nodes (`node-0`, `node-1`, …; `zone` label `z<i>`).
pub async fn cluster(nodes: usize) -> Cluster {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let client = server.client();
    let config = ControllerManagerConfig {
        job: JobConfig {
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(400),
        },
        autoscaler: AutoscalerConfig {
            sync_period: Duration::from_millis(500),
        },
        ..Default::default()
    };
    // Composed as `capstan sim` is: one set of informers for every component, the agents'
    // pods routed from the shared pod informer.
    let informers = InformerFactory::in_process(&server);
    let controllers = ControllerManager::with_informers(&informers, config).start();
    let scheduler = Scheduler::with_informers(&informers, SchedulerConfig::default()).start();
    let feed = SharedPodFeed::new(&informers);
    let mut running = Vec::new();
    let mut dirs = Vec::new();
    for i in 0..nodes {
        let dir = tempfile::tempdir().unwrap();
        let name = format!("node-{i}");
        let zone = format!("z{i}");
        let config = node_config(&name, i as u8 + 1, dir.path(), &[("zone", &zone)]);
        let runtime = SimRuntime::new(SimConfig {
            pod_subnet: [10, 244, i as u8 + 1],
            ..SimConfig::default()
        });
        let node = NodeAgent::new(client.clone(), Arc::new(runtime), config)
            .with_pod_feed(&feed)
            .start()
            .await
            .unwrap();
        running.push(node);
        dirs.push(dir);
    }
    Cluster {
        _server: server,
        _informers: informers,
        client,
        controllers: Some(controllers),
        scheduler: Some(scheduler),
        nodes: running,
        _dirs: dirs,
    }
}

pub async fn eventually<T, F, Fut>(seconds: u64, what: &str, mut check: F) -> T
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

pub fn api<K>(c: &Cluster) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    Api::namespaced(c.client.clone(), "default")
}

pub async fn create<K>(c: &Cluster, manifest: Value) -> K
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + serde::Serialize
        + std::fmt::Debug,
{
    let object: K = serde_json::from_value(manifest).unwrap();
    api::<K>(c)
        .create(&PostParams::default(), &object)
        .await
        .unwrap()
}

pub async fn pods_with(c: &Cluster, selector: &str) -> Vec<Pod> {
    api::<Pod>(c)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

fn condition<'a>(status: &'a Value, type_: &str) -> Option<&'a Value> {
    status["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_ && c["status"] == "True")
}

fn job(name: &str, spec: Value, annotations: Value) -> Value {
    let mut spec = spec;
    spec["template"] = json!({
        "metadata": {"labels": {"app": name}, "annotations": annotations},
        "spec": {"restartPolicy": "Never", "containers": [{"name": "work", "image": "busybox"}]},
    });
    json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec})
}

async fn job_status(c: &Cluster, name: &str) -> Value {
    let job = api::<Job>(c).get(name).await.unwrap();
    serde_json::to_value(job.status.unwrap_or_default()).unwrap()
}

#[tokio::test]
async fn jobs_run_to_completion_in_parallel_and_by_index() {
    let c = cluster(2).await;
    create::<Job>(
        &c,
        job(
            "batch",
            json!({"completions": 4, "parallelism": 2}),
            json!({"sim.capstan.dev/exit-after": "300ms"}),
        ),
    )
    .await;
    create::<Job>(
        &c,
        job(
            "indexed",
            json!({"completions": 3, "parallelism": 3, "completionMode": "Indexed"}),
            json!({"sim.capstan.dev/exit-after": "200ms"}),
        ),
    )
    .await;
    // Never more than `parallelism` running at once, until Complete with 4 successes.
    let most_running = std::sync::atomic::AtomicUsize::new(0);
    let status = eventually(30, "the Job completes", || {
        let c = &c;
        let most = &most_running;
        async move {
            let running = pods_with(c, "app=batch")
                .await
                .iter()
                .filter(|p| {
                    !matches!(
                        p.status.as_ref().and_then(|s| s.phase.as_deref()),
                        Some("Succeeded" | "Failed")
                    )
                })
                .count();
            most.fetch_max(running, std::sync::atomic::Ordering::Relaxed);
            let status = job_status(c, "batch").await;
            condition(&status, "Complete").is_some().then_some(status)
        }
    })
    .await;
    let most_running = most_running.into_inner();
    assert!(most_running <= 2, "{most_running} pods ran at once");
    assert_eq!(status["succeeded"], 4);
    assert!(status["completionTime"].is_string());
    assert_eq!(pods_with(&c, "app=batch").await.len(), 4);
    let status = eventually(30, "the Indexed Job completes", || async {
        let status = job_status(&c, "indexed").await;
        condition(&status, "Complete").is_some().then_some(status)
    })
    .await;
    assert_eq!(status["completedIndexes"], "0-2");
    let mut indexes: Vec<String> = pods_with(&c, "app=indexed")
        .await
        .iter()
        .map(|p| {
            let spec = p.spec.as_ref().unwrap();
            let index = p.metadata.annotations.as_ref().unwrap()
                ["batch.kubernetes.io/job-completion-index"]
                .clone();
            let env = spec.containers[0].env.as_ref().unwrap();
            assert!(env
                .iter()
                .any(|e| e.name == "JOB_COMPLETION_INDEX" && e.value.as_deref() == Some(&index)));
            assert_eq!(
                spec.hostname.as_deref(),
                Some(format!("indexed-{index}").as_str())
            );
            index
        })
        .collect();
    indexes.sort();
    assert_eq!(indexes, ["0", "1", "2"]);
    // The generated selector names the Job's uid.
    let job = api::<Job>(&c).get("batch").await.unwrap();
    let selector = job.spec.unwrap().selector.unwrap().match_labels.unwrap();
    assert_eq!(
        selector.get("batch.kubernetes.io/controller-uid"),
        job.metadata.uid.as_ref()
    );
    c.stop().await;
}

#[tokio::test]
async fn failing_jobs_stop_at_their_backoff_limit_or_deadline_and_finished_jobs_expire() {
    let c = cluster(1).await;
    create::<Job>(
        &c,
        job(
            "flaky",
            json!({"backoffLimit": 2}),
            json!({"sim.capstan.dev/exit-after": "100ms", "sim.capstan.dev/exit-code": "1"}),
        ),
    )
    .await;
    create::<Job>(
        &c,
        job("slow", json!({"activeDeadlineSeconds": 1}), json!({})),
    )
    .await;
    create::<Job>(
        &c,
        job(
            "short-lived",
            json!({"ttlSecondsAfterFinished": 1}),
            json!({"sim.capstan.dev/exit-after": "100ms"}),
        ),
    )
    .await;
    let status = eventually(30, "the flaky Job fails", || async {
        let status = job_status(&c, "flaky").await;
        condition(&status, "Failed")
            .cloned()
            .map(|cond| (status, cond))
    })
    .await;
    assert_eq!(status.1["reason"], "BackoffLimitExceeded");
    assert_eq!(
        status.0["failed"], 3,
        "backoffLimit 2 allows three attempts"
    );
    let failed = eventually(20, "the slow Job passes its deadline", || async {
        condition(&job_status(&c, "slow").await, "Failed").cloned()
    })
    .await;
    assert_eq!(failed["reason"], "DeadlineExceeded");
    eventually(20, "the slow Job's pod is gone", || async {
        pods_with(&c, "app=slow")
            .await
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(())
    })
    .await;
    eventually(20, "the finished Job is deleted after its TTL", || async {
        api::<Job>(&c)
            .get_opt("short-lived")
            .await
            .unwrap()
            .is_none()
            .then_some(())
    })
    .await;
    c.stop().await;
}

fn cron_job(name: &str, policy: &str, annotations: Value) -> Value {
    json!({
        "apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name},
        "spec": {
            "schedule": "* * * * *",
            "concurrencyPolicy": policy,
            "successfulJobsHistoryLimit": 1,
            "jobTemplate": {"spec": {"template": {
                "metadata": {"labels": {"cron": name}, "annotations": annotations},
                "spec": {"restartPolicy": "Never", "containers": [{"name": "work", "image": "busybox"}]},
            }}},
        },
    })
}

/// Pretends the CronJob last ran `minutes` ago, so a run is due now.
async fn backdate(c: &Cluster, name: &str, minutes: i64) {
    let at = k8s_openapi::jiff::Timestamp::now()
        .checked_sub(k8s_openapi::jiff::SignedDuration::from_secs(minutes * 60))
        .unwrap()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    api::<CronJob>(c)
        .patch_status(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"lastScheduleTime": at}})),
        )
        .await
        .unwrap();
}

async fn jobs_of(c: &Cluster, cron_job: &str) -> Vec<Job> {
    let uid = api::<CronJob>(c)
        .get(cron_job)
        .await
        .unwrap()
        .metadata
        .uid
        .unwrap();
    let mut jobs: Vec<Job> = api::<Job>(c)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|j| {
            j.metadata.deletion_timestamp.is_none()
                && j.metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == uid)
        })
        .collect();
    jobs.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    jobs
}

#[tokio::test]
async fn cron_jobs_fire_on_schedule_keep_history_and_follow_their_concurrency_policy() {
    let c = cluster(1).await;
    // A due run fires at once, completes, and is the last successful one; history keeps one.
    create::<CronJob>(
        &c,
        cron_job(
            "tick",
            "Allow",
            json!({"sim.capstan.dev/exit-after": "100ms"}),
        ),
    )
    .await;
    backdate(&c, "tick", 3).await;
    let first = eventually(20, "the due run starts a Job", || async {
        jobs_of(&c, "tick").await.into_iter().next()
    })
    .await;
    assert!(first.metadata.annotations.as_ref().unwrap()
        ["batch.kubernetes.io/cronjob-scheduled-timestamp"]
        .ends_with(":00Z"));
    eventually(20, "the run succeeds and is recorded", || async {
        let cj = api::<CronJob>(&c).get("tick").await.unwrap();
        let status = cj.status.unwrap_or_default();
        (status.last_successful_time.is_some() && status.active.is_none()).then_some(())
    })
    .await;
    // A run missed by more than startingDeadlineSeconds is skipped, not started late.
    let mut yearly = cron_job("yearly", "Allow", json!({}));
    yearly["spec"]["schedule"] = json!("0 0 1 1 *");
    yearly["spec"]["startingDeadlineSeconds"] = json!(10);
    create::<CronJob>(&c, yearly).await;
    backdate(&c, "yearly", 2 * 366 * 24 * 60).await;
    eventually(
        20,
        "the missed yearly run is recorded as skipped",
        || async {
            let status = api::<CronJob>(&c).get("yearly").await.unwrap().status?;
            let at = status.last_schedule_time?.0;
            // Moved from two years ago to the last January 1st.
            (k8s_openapi::jiff::Timestamp::now()
                .duration_since(at)
                .as_secs()
                < 366 * 24 * 3600)
                .then_some(())
        },
    )
    .await;
    assert!(
        jobs_of(&c, "yearly").await.is_empty(),
        "a run past its deadline never starts"
    );
    // A suspended CronJob starts nothing.
    let mut suspended = cron_job("paused", "Allow", json!({}));
    suspended["spec"]["suspend"] = json!(true);
    create::<CronJob>(&c, suspended).await;
    backdate(&c, "paused", 3).await;
    // Long-running Jobs: at the next minute, Forbid skips the run, Replace swaps the Job.
    create::<CronJob>(&c, cron_job("forbid", "Forbid", json!({}))).await;
    create::<CronJob>(&c, cron_job("replace", "Replace", json!({}))).await;
    backdate(&c, "forbid", 2).await;
    backdate(&c, "replace", 2).await;
    let (forbid_first, replace_first) = eventually(20, "both start a Job", || async {
        let f = jobs_of(&c, "forbid").await;
        let r = jobs_of(&c, "replace").await;
        (f.len() == 1 && r.len() == 1)
            .then(|| (f[0].metadata.name.clone(), r[0].metadata.name.clone()))
    })
    .await;
    eventually(
        75,
        "the next minute's run replaces the running Job",
        || async {
            let r = jobs_of(&c, "replace").await;
            (r.len() == 1 && r[0].metadata.name != replace_first).then_some(())
        },
    )
    .await;
    let forbid = jobs_of(&c, "forbid").await;
    assert_eq!(
        forbid
            .iter()
            .map(|j| j.metadata.name.clone())
            .collect::<Vec<_>>(),
        [forbid_first],
        "Forbid never runs two at once"
    );
    assert!(
        jobs_of(&c, "paused").await.is_empty(),
        "suspended CronJobs start nothing"
    );
    // History: `tick` ran again this minute; with a limit of one successful Job, only the
    // newest is kept once it succeeds.
    eventually(30, "only the newest successful run is kept", || async {
        let jobs = jobs_of(&c, "tick").await;
        (jobs.len() == 1 && jobs[0].metadata.name != first.metadata.name).then_some(())
    })
    .await;
    c.stop().await;
}

fn daemon_set(name: &str, node_selector: Option<Value>) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
        "spec": {
            "selector": {"matchLabels": {"ds": name}},
            "template": {
                "metadata": {"labels": {"ds": name}},
                "spec": {"nodeSelector": node_selector, "containers": [{"name": "agent", "image": "busybox"}]},
            },
        },
    })
}

/// Active pods of a selector by the node they are bound to.
async fn pods_by_node(c: &Cluster, selector: &str) -> BTreeMap<String, Vec<Pod>> {
    let mut by_node: BTreeMap<String, Vec<Pod>> = BTreeMap::new();
    for pod in pods_with(c, selector).await {
        if pod.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        by_node.entry(node).or_default().push(pod);
    }
    by_node
}

async fn ds_rolled_out(c: &Cluster, name: &str) -> Option<Value> {
    let ds = api::<k8s_openapi::api::apps::v1::DaemonSet>(c)
        .get(name)
        .await
        .unwrap();
    let generation = ds.metadata.generation;
    let status = ds.status?;
    let desired = status.desired_number_scheduled;
    (status.observed_generation >= generation
        && status.updated_number_scheduled.unwrap_or(0) >= desired
        && status.number_available.unwrap_or(0) >= desired)
        .then(|| serde_json::to_value(status).unwrap())
}

#[tokio::test]
async fn daemon_sets_run_one_pod_per_eligible_node_and_roll() {
    use k8s_openapi::api::apps::v1::{ControllerRevision, DaemonSet};
    use k8s_openapi::api::core::v1::Node;
    let mut c = cluster(3).await;
    create::<DaemonSet>(&c, daemon_set("everywhere", None)).await;
    create::<DaemonSet>(&c, daemon_set("picky", Some(json!({"zone": "z1"})))).await;
    let nodes = ["node-0", "node-1", "node-2"];
    eventually(30, "one running pod per node", || async {
        let by_node = pods_by_node(&c, "ds=everywhere").await;
        (nodes
            .iter()
            .all(|n| by_node.get(*n).is_some_and(|p| p.len() == 1))
            && by_node.len() == 3)
            .then_some(())
    })
    .await;
    let status = eventually(30, "the DaemonSet reports itself rolled out", || {
        ds_rolled_out(&c, "everywhere")
    })
    .await;
    assert_eq!(status["desiredNumberScheduled"], 3);
    eventually(
        20,
        "the selective DaemonSet lands on node-1 only",
        || async {
            let by_node = pods_by_node(&c, "ds=picky").await;
            (by_node.len() == 1 && by_node.contains_key("node-1")).then_some(())
        },
    )
    .await;
    // A node that starts matching gets a pod; one that stops matching loses it.
    let node_api: Api<Node> = Api::all(c.client.clone());
    node_api
        .patch(
            "node-0",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"zone": "z1"}}})),
        )
        .await
        .unwrap();
    node_api
        .patch(
            "node-1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"zone": "z9"}}})),
        )
        .await
        .unwrap();
    eventually(20, "the selective DaemonSet follows the labels", || async {
        let by_node = pods_by_node(&c, "ds=picky").await;
        (by_node.len() == 1 && by_node.contains_key("node-0")).then_some(())
    })
    .await;
    // A rolling update replaces every pod, keeping the old revision on record.
    let ds_api = api::<DaemonSet>(&c);
    let before: Vec<String> = pods_with(&c, "ds=everywhere")
        .await
        .iter()
        .map(|p| p.metadata.uid.clone().unwrap())
        .collect();
    ds_api
        .patch(
            "everywhere",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"v": "2"}}}}})),
        )
        .await
        .unwrap();
    eventually(40, "every pod is replaced by the new template", || async {
        let by_node = pods_by_node(&c, "ds=everywhere").await;
        let fresh = by_node.values().flatten().all(|p| {
            !before.contains(p.metadata.uid.as_ref().unwrap())
                && p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get("v"))
                    .map(String::as_str)
                    == Some("2")
        });
        (fresh && by_node.values().map(Vec::len).sum::<usize>() == 3).then_some(())
    })
    .await;
    eventually(20, "the update is reported done", || {
        ds_rolled_out(&c, "everywhere")
    })
    .await;
    let revisions: Vec<ControllerRevision> = api::<ControllerRevision>(&c)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| {
            r.metadata
                .name
                .as_deref()
                .unwrap_or("")
                .starts_with("everywhere-")
        })
        .collect();
    assert_eq!(revisions.len(), 2, "both templates are recorded");
    // A node that goes away takes its daemon pod with it.
    let gone = c.nodes.remove(2);
    gone.stop().await;
    node_api
        .delete("node-2", &Default::default())
        .await
        .unwrap();
    eventually(20, "the departed node's pod is deleted", || async {
        let by_node = pods_by_node(&c, "ds=everywhere").await;
        (!by_node.contains_key("node-2") && by_node.len() == 2).then_some(())
    })
    .await;
    c.stop().await;
}

fn running_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && capstan_core::controller::pod_facts::is_ready(pod)
}

async fn set_pods(c: &Cluster, set: &str) -> BTreeMap<String, Pod> {
    pods_with(c, &format!("app={set}"))
        .await
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| (p.metadata.name.clone().unwrap(), p))
        .collect()
}

fn revision_of(pod: &Pod) -> String {
    pod.metadata.labels.as_ref().unwrap()["controller-revision-hash"].clone()
}

#[tokio::test]
async fn stateful_sets_keep_names_order_and_partitioned_updates() {
    use k8s_openapi::api::apps::v1::StatefulSet;
    use k8s_openapi::api::core::v1::Service;
    let c = cluster(2).await;
    create::<Service>(
        &c,
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
               "spec": {"clusterIP": "None", "selector": {"app": "web"}, "ports": [{"port": 80}]}}),
    )
    .await;
    create::<StatefulSet>(
        &c,
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "web"},
            "spec": {
                "replicas": 3, "serviceName": "web",
                "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                             "spec": {"containers": [{"name": "web", "image": "busybox"}]}},
            },
        }),
    )
    .await;
    // OrderedReady: whenever ordinal n exists, n-1 is running and ready.
    let pods = eventually(30, "three ordered pods run", || async {
        let pods = set_pods(&c, "web").await;
        for n in 1..3 {
            if pods.contains_key(&format!("web-{n}")) {
                let previous = &pods[&format!("web-{}", n - 1)];
                assert!(
                    running_ready(previous),
                    "web-{n} started before web-{} was ready",
                    n - 1
                );
            }
        }
        (pods.len() == 3 && pods.values().all(running_ready)).then_some(pods)
    })
    .await;
    for (name, pod) in &pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_ref(), Some(name));
        assert_eq!(spec.subdomain.as_deref(), Some("web"));
        let labels = pod.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["statefulset.kubernetes.io/pod-name"], *name);
        assert_eq!(
            labels["apps.kubernetes.io/pod-index"],
            name.trim_start_matches("web-")
        );
    }
    // The headless Service publishes each pod under its stable hostname.
    eventually(20, "the Service's endpoints name every pod", || async {
        let slices = Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(
            c.client.clone(),
            "default",
        )
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await
        .unwrap();
        let mut hostnames: Vec<String> = slices
            .items
            .iter()
            .flat_map(|s| s.endpoints.iter())
            .filter_map(|e| e.hostname.clone())
            .collect();
        hostnames.sort();
        (hostnames == ["web-0", "web-1", "web-2"]).then_some(())
    })
    .await;
    // A deleted pod comes back under its name.
    let old_uid = pods["web-1"].metadata.uid.clone().unwrap();
    api::<Pod>(&c)
        .delete("web-1", &Default::default())
        .await
        .unwrap();
    eventually(30, "web-1 is recreated", || async {
        set_pods(&c, "web")
            .await
            .get("web-1")
            .filter(|p| p.metadata.uid.as_ref() != Some(&old_uid) && running_ready(p))
            .map(|_| ())
    })
    .await;
    let original = revision_of(&pods["web-0"]);
    // A partitioned update changes ordinals at or above the partition only.
    let sets = api::<StatefulSet>(&c);
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"partition": 2}},
            "template": {"metadata": {"annotations": {"v": "2"}}},
        }})),
    )
    .await
    .unwrap();
    let status = eventually(30, "web-2 is updated", || async {
        let pods = set_pods(&c, "web").await;
        let status = sets.get("web").await.unwrap().status?;
        let updated = status.update_revision.clone()?;
        (pods.len() == 3
            && pods.values().all(running_ready)
            && pods
                .get("web-2")
                .is_some_and(|p| updated.ends_with(&revision_of(p)))
            && status.updated_replicas == Some(1))
        .then_some(status)
    })
    .await;
    let pods = set_pods(&c, "web").await;
    assert_eq!(revision_of(&pods["web-0"]), original);
    assert_eq!(revision_of(&pods["web-1"]), original);
    assert_ne!(status.current_revision, status.update_revision);
    // Partition 0: the rest follow, and the update becomes current.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"updateStrategy": {"rollingUpdate": {"partition": 0}}}})),
    )
    .await
    .unwrap();
    eventually(40, "every pod is on the update revision", || async {
        let status = sets.get("web").await.unwrap().status?;
        (status.updated_replicas == Some(3)
            && status.ready_replicas == Some(3)
            && status.current_revision == status.update_revision)
            .then_some(())
    })
    .await;
    // With pods that never become ready, OrderedReady stops at ordinal 0 while Parallel
    // creates every pod at once.
    for (name, policy) in [("ordered", "OrderedReady"), ("parallel", "Parallel")] {
        create::<StatefulSet>(
            &c,
            json!({
                "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name},
                "spec": {
                    "replicas": 3, "serviceName": name, "podManagementPolicy": policy,
                    "selector": {"matchLabels": {"app": name}},
                    "template": {"metadata": {"labels": {"app": name}},
                                 "spec": {"containers": [{"name": "c", "image": "busybox",
                                          "readinessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1}}]}},
                },
            }),
        )
        .await;
    }
    eventually(30, "the Parallel set creates all three pods", || async {
        (set_pods(&c, "parallel").await.len() == 3).then_some(())
    })
    .await;
    eventually(30, "the OrderedReady set creates ordinal 0", || async {
        set_pods(&c, "ordered")
            .await
            .contains_key("ordered-0")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ordered = set_pods(&c, "ordered").await;
    assert_eq!(
        ordered.keys().collect::<Vec<_>>(),
        ["ordered-0"],
        "OrderedReady waits for ordinal 0 to be ready"
    );
    // Scaling down removes the highest ordinal first.
    sets.patch(
        "web",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"replicas": 1}})),
    )
    .await
    .unwrap();
    eventually(30, "only web-0 remains", || async {
        let pods = set_pods(&c, "web").await;
        if !pods.contains_key("web-1") {
            assert!(!pods.contains_key("web-2"), "web-1 went before web-2");
        }
        (pods.len() == 1 && pods.contains_key("web-0")).then_some(())
    })
    .await;
    c.stop().await;
}

/// POSTs an Eviction for `pod`; the response status code and body.
async fn evict(c: &Cluster, pod: &str) -> (u16, Value) {
    let eviction = json!({"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": "default"}});
    let request =
        axum::http::Request::post(format!("/api/v1/namespaces/default/pods/{pod}/eviction"))
            .header("content-type", "application/json")
            .body(serde_json::to_vec(&eviction).unwrap())
            .unwrap();
    match c.client.request::<Value>(request).await {
        Ok(body) => (201, body),
        Err(kube::Error::Api(status)) => (status.code, serde_json::to_value(&status).unwrap()),
        Err(other) => panic!("eviction request failed: {other}"),
    }
}

#[tokio::test]
async fn evictions_respect_disruption_budgets() {
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    let c = cluster(2).await;
    // Bare pods: nothing replaces an evicted one until the test says so.
    let db_pod = |name: &str| {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": {"app": "db"}},
               "spec": {"containers": [{"name": "db", "image": "busybox"}]}})
    };
    for name in ["db-0", "db-1", "db-2"] {
        create::<Pod>(&c, db_pod(name)).await;
    }
    create::<PodDisruptionBudget>(
        &c,
        json!({"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": {"name": "db"},
               "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "db"}}}}),
    )
    .await;
    let budgets = api::<PodDisruptionBudget>(&c);
    let allowed = |n: i32| {
        let budgets = budgets.clone();
        async move {
            let status = budgets.get("db").await.unwrap().status?;
            (status.disruptions_allowed == n && status.current_healthy == 3 - (1 - n).max(0))
                .then_some(status)
        }
    };
    let status = eventually(30, "the budget allows one disruption", || allowed(1)).await;
    assert_eq!((status.expected_pods, status.desired_healthy), (3, 2));
    let pods: Vec<String> = pods_with(&c, "app=db")
        .await
        .iter()
        .map(|p| p.metadata.name.clone().unwrap())
        .collect();
    // The first eviction spends the disruption; the second, at once, is refused with 429.
    let (code, _) = evict(&c, &pods[0]).await;
    assert_eq!(code, 201);
    let gone = api::<Pod>(&c).get_opt(&pods[0]).await.unwrap();
    assert!(gone.is_none_or(|p| p.metadata.deletion_timestamp.is_some()));
    let (code, body) = evict(&c, &pods[1]).await;
    assert_eq!(code, 429, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("would violate the pod's disruption budget"));
    // As Kubernetes answers it: no retryAfterSeconds, so clients report it instead of retrying
    // on their own.
    assert!(body["details"].get("retryAfterSeconds").is_none(), "{body}");
    let still = api::<Pod>(&c).get(&pods[1]).await.unwrap();
    assert!(
        still.metadata.deletion_timestamp.is_none(),
        "a refused eviction deletes nothing"
    );
    // Once a replacement is ready, the budget allows one again.
    create::<Pod>(&c, db_pod("db-3")).await;
    eventually(30, "the budget recovers", || allowed(1)).await;
    let (code, _) = evict(&c, &pods[1]).await;
    assert_eq!(code, 201);
    // Evicting a pod no budget covers just deletes it; a missing pod is 404.
    create::<Pod>(
        &c,
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "lone"},
               "spec": {"containers": [{"name": "c", "image": "busybox"}]}}),
    )
    .await;
    assert_eq!(evict(&c, "lone").await.0, 201);
    assert_eq!(evict(&c, "nobody").await.0, 404);
    c.stop().await;
}

fn busy_deployment(cpu_millis: &str) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "busy"},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "busy"}},
                 "template": {"metadata": {"labels": {"app": "busy"}, "annotations": {"sim.capstan.dev/cpu-millis": cpu_millis}},
                              "spec": {"containers": [{"name": "c", "image": "busybox",
                                                       "resources": {"requests": {"cpu": "100m"}}}]}}},
    })
}

#[tokio::test]
async fn autoscalers_follow_cpu_use_within_bounds() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
    let c = cluster(2).await;
    // Each pod uses 300m of its 100m request: 300% against a 50% target.
    create::<Deployment>(&c, busy_deployment("300")).await;
    create::<HorizontalPodAutoscaler>(
        &c,
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "busy"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "busy"},
                "minReplicas": 1, "maxReplicas": 4,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}}],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
            },
        }),
    )
    .await;
    let deployments = api::<Deployment>(&c);
    let autoscalers = api::<HorizontalPodAutoscaler>(&c);
    eventually(40, "the Deployment is scaled up to maxReplicas", || async {
        let d = deployments.get("busy").await.unwrap();
        (d.spec.unwrap().replicas == Some(4)).then_some(())
    })
    .await;
    let status = eventually(
        20,
        "the autoscaler reports its metric and the limit",
        || async {
            let status = autoscalers.get("busy").await.unwrap().status?;
            let limited = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "ScalingLimited" && c.status == "True");
            let utilization = status
                .current_metrics
                .as_ref()?
                .first()?
                .resource
                .as_ref()?
                .current
                .average_utilization?;
            (limited && utilization >= 200).then_some(status)
        },
    )
    .await;
    assert_eq!(status.desired_replicas, 4);
    assert!(status.last_scale_time.is_some());
    // An average-value target on a StatefulSet: every pod uses 200m against 100m, so each
    // round doubles the set, up to maxReplicas.
    create::<k8s_openapi::api::apps::v1::StatefulSet>(
        &c,
        json!({
            "apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "worker"},
            "spec": {"replicas": 1, "serviceName": "worker", "selector": {"matchLabels": {"app": "worker"}},
                     "template": {"metadata": {"labels": {"app": "worker"}, "annotations": {"sim.capstan.dev/cpu-millis": "200"}},
                                  "spec": {"containers": [{"name": "c", "image": "busybox"}]}}},
        }),
    )
    .await;
    create::<HorizontalPodAutoscaler>(
        &c,
        json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "worker"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": "worker"},
                "maxReplicas": 3,
                "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {"type": "AverageValue", "averageValue": "100m"}}}],
            },
        }),
    )
    .await;
    let sets = api::<k8s_openapi::api::apps::v1::StatefulSet>(&c);
    eventually(40, "the StatefulSet is scaled to maxReplicas", || async {
        let s = sets.get("worker").await.unwrap();
        (s.spec.unwrap().replicas == Some(3)).then_some(())
    })
    .await;
    let worker = autoscalers.get("worker").await.unwrap().status.unwrap();
    let average = worker.current_metrics.unwrap()[0]
        .resource
        .as_ref()
        .unwrap()
        .current
        .average_value
        .clone()
        .unwrap();
    let millis: i64 = average.0.trim_end_matches('m').parse().unwrap_or(0);
    assert!(
        (150..=250).contains(&millis),
        "average cpu per pod {average:?}"
    );
    // Quiet pods (10m of 100m: 10%) bring it back to minReplicas.
    deployments
        .patch(
            "busy",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"template": {"metadata": {"annotations": {"sim.capstan.dev/cpu-millis": "10"}}}}})),
        )
        .await
        .unwrap();
    eventually(
        60,
        "the Deployment is scaled down to minReplicas",
        || async {
            let d = deployments.get("busy").await.unwrap();
            (d.spec.unwrap().replicas == Some(1)).then_some(())
        },
    )
    .await;
    c.stop().await;
}
