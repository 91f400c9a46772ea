//! The node agent with the simulated runtime against the in-process API: registration and
//! lease, pods to Running with env and volumes, Jobs, crash loops with back-off, probes, init
//! containers, graceful deletion, node admission, adoption after an agent restart, logs through
//! the API, the metrics.k8s.io API and the Events kubelet records about containers.

use capstan_core::apiserver::ApiServer;
use capstan_core::node::{NodeAgent, NodeConfig, RunningNode};
use capstan_core::runtime::sim::{SimConfig, SimRuntime};
use capstan_core::runtime::{labels, ContainerRuntime};
use capstan_core::store::MemoryStore;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, LogParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

struct Cluster {
    _server: ApiServer,
    client: kube::Client,
    runtime: SimRuntime,
    node: Option<RunningNode>,
    _dir: tempfile::TempDir,
    config: NodeConfig,
}

fn node_config(dir: &std::path::Path) -> NodeConfig {
    let mut config = NodeConfig::new("node-a");
    config.capacity = Some(BTreeMap::from([
        ("cpu".into(), "4".into()),
        ("memory".into(), "8Gi".into()),
        ("pods".into(), "110".into()),
    ]));
    config.root_dir = dir.to_path_buf();
    config.initial_backoff = Duration::from_millis(400);
    config.max_backoff = Duration::from_secs(2);
    config.resync_period = Duration::from_millis(500);
    config.volume_refresh = Duration::from_millis(300);
    config.stats_interval = Duration::from_millis(300);
    config.pod_cidr = Some("10.244.1.0/24".into());
    config
}

async fn cluster_with(runtime: SimRuntime) -> Cluster {
    let store = Arc::new(MemoryStore::default());
    let server = ApiServer::builder(store).build().await.unwrap();
    let client = server.client();
    let dir = tempfile::tempdir().unwrap();
    let config = node_config(dir.path());
    let node = NodeAgent::new(client.clone(), Arc::new(runtime.clone()), config.clone())
        .start()
        .await
        .unwrap();
    Cluster {
        _server: server,
        client,
        runtime,
        node: Some(node),
        _dir: dir,
        config,
    }
}

async fn cluster() -> Cluster {
    cluster_with(SimRuntime::default()).await
}

fn pods(c: &Cluster) -> Api<Pod> {
    Api::namespaced(c.client.clone(), "default")
}

async fn create_pod(c: &Cluster, manifest: Value) -> Pod {
    let mut pod: Pod = serde_json::from_value(manifest).unwrap();
    pod.spec.as_mut().unwrap().node_name = Some("node-a".into());
    pods(c).create(&PostParams::default(), &pod).await.unwrap()
}

/// Waits until `check` holds for the pod's JSON; panics with the last seen state.
async fn wait_pod(c: &Cluster, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut last = Value::Null;
    while tokio::time::Instant::now() < deadline {
        if let Some(pod) = pods(c).get_opt(name).await.unwrap() {
            last = serde_json::to_value(pod).unwrap();
            if check(&last) {
                return last;
            }
        } else {
            last = Value::Null;
            if check(&last) {
                return last;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("pod {name}: {what} did not happen; last state: {last:#}");
}

async fn exec_in(c: &Cluster, pod: &Value, container: &str, command: &[&str]) -> String {
    let uid = pod["metadata"]["uid"].as_str().unwrap().to_string();
    let selector = BTreeMap::from([
        (labels::POD_UID.to_string(), uid),
        (labels::CONTAINER.to_string(), container.to_string()),
    ]);
    let mut list = c.runtime.list_containers(&selector).await.unwrap();
    list.sort_by_key(|i| std::cmp::Reverse(i.restart_count()));
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let out = c
        .runtime
        .exec(&list[0].id, &command, Duration::from_secs(5))
        .await
        .unwrap();
    String::from_utf8(out.stdout).unwrap()
}

/// Waits until the Events about pod `name` hold one of `reason` whose message contains
/// `fragment`, written by this node's kubelet; panics with the events seen.
async fn wait_event(c: &Cluster, name: &str, reason: &str, fragment: &str) -> Event {
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let selector = format!("involvedObject.name={name}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut seen = Vec::new();
    while tokio::time::Instant::now() < deadline {
        seen = events
            .list(&ListParams::default().fields(&selector))
            .await
            .unwrap()
            .items;
        let found = seen.iter().find(|e| {
            e.reason.as_deref() == Some(reason)
                && e.message.as_deref().is_some_and(|m| m.contains(fragment))
        });
        if let Some(event) = found {
            let source = event.source.clone().unwrap_or_default();
            assert_eq!(source.component.as_deref(), Some("kubelet"), "{event:?}");
            assert_eq!(source.host.as_deref(), Some("node-a"), "{event:?}");
            assert_eq!(event.involved_object.kind.as_deref(), Some("Pod"));
            return event.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let seen: Vec<_> = seen
        .iter()
        .map(|e| format!("{:?}: {:?}", e.reason, e.message))
        .collect();
    panic!("pod {name}: no {reason} event with {fragment:?}; events: {seen:#?}");
}

/// The Events about pod `name` with `reason`.
async fn events_of(c: &Cluster, name: &str, reason: &str) -> Vec<Event> {
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| e.reason.as_deref() == Some(reason))
        .collect()
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

#[tokio::test]
async fn sim_runtime_passes_the_conformance_kit() {
    // Only `busybox:test` exists in the simulated registry; pulling it makes it present.
    let runtime = SimRuntime::new(SimConfig {
        images: Some(["busybox:test".to_string()].into()),
        ..SimConfig::default()
    });
    assert_eq!(runtime.image_status("busybox:test").await.unwrap(), None);
    runtime.pull_image("busybox:test").await.unwrap();
    assert!(matches!(
        runtime.pull_image("missing:none").await,
        Err(capstan_core::runtime::RuntimeError::ImagePull { .. })
    ));
    capstan_core::runtime::testkit::run_conformance(
        &runtime,
        &capstan_core::runtime::testkit::Fixture {
            image: "busybox:test".into(),
            missing_image: "missing:none".into(),
            prefix: "sim".into(),
        },
    )
    .await
    .unwrap_or_else(|e| panic!("sim conformance: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_registers_and_runs_a_pod_with_env_and_volumes() {
    let c = cluster().await;
    let node = Api::<Node>::all(c.client.clone())
        .get("node-a")
        .await
        .unwrap();
    let node = serde_json::to_value(node).unwrap();
    assert_eq!(node["status"]["capacity"]["cpu"], "4");
    assert_eq!(node["spec"]["podCIDR"], "10.244.1.0/24");
    assert_eq!(
        node["metadata"]["labels"]["kubernetes.io/hostname"],
        "node-a"
    );
    let ready = node["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");
    let lease = Api::<Lease>::namespaced(c.client.clone(), "kube-node-lease")
        .get("node-a")
        .await
        .unwrap();
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some("node-a")
    );
    // The Events kubelet records about its Node, as `kubectl describe node` selects them
    // (kubelet's node reference carries the node's name as its uid).
    let events: Api<Event> = Api::namespaced(c.client.clone(), "default");
    let selector = "involvedObject.kind=Node,involvedObject.name=node-a,involvedObject.uid=node-a";
    let wanted = [
        ("Starting", "Starting kubelet."),
        (
            "NodeHasSufficientMemory",
            "Node node-a status is now: NodeHasSufficientMemory",
        ),
        (
            "NodeHasNoDiskPressure",
            "Node node-a status is now: NodeHasNoDiskPressure",
        ),
        (
            "NodeHasSufficientPID",
            "Node node-a status is now: NodeHasSufficientPID",
        ),
        ("NodeReady", "Node node-a status is now: NodeReady"),
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let node_events = loop {
        let listed = events
            .list(&ListParams::default().fields(selector))
            .await
            .unwrap()
            .items;
        let has_all = wanted.iter().all(|(reason, message)| {
            listed.iter().any(|e| {
                e.reason.as_deref() == Some(reason) && e.message.as_deref() == Some(message)
            })
        });
        if has_all || tokio::time::Instant::now() > deadline {
            break listed;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (reason, message) in wanted {
        let event = node_events
            .iter()
            .find(|e| e.reason.as_deref() == Some(reason))
            .unwrap_or_else(|| panic!("no {reason} event about the node: {node_events:?}"));
        assert_eq!(event.message.as_deref(), Some(message));
        assert_eq!(
            event.source.as_ref().unwrap().component.as_deref(),
            Some("kubelet")
        );
        // Once: heartbeats that change nothing record nothing.
        assert_eq!(event.count, Some(1), "{event:?}");
    }

    let configs: Api<ConfigMap> = Api::namespaced(c.client.clone(), "default");
    configs
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "settings"}, "data": {"mode": "fast", "file.txt": "v1"}}))
                .unwrap(),
        )
        .await
        .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.client.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "creds"}, "stringData": {"password": "hunter2"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    create_pod(
        &c,
        json!({
            "metadata": {"name": "web", "labels": {"app": "web"}},
            "spec": {
                "containers": [{
                    "name": "main", "image": "busybox:1.35",
                    "env": [
                        {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
                        {"name": "PASSWORD", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "password"}}},
                        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
                        {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
                        {"name": "GREETING", "value": "hello $(POD_NAME)"},
                        {"name": "MEM", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory", "divisor": "1Mi"}}}
                    ],
                    "resources": {"limits": {"memory": "64Mi", "cpu": "100m"}},
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/etc/config"},
                        {"name": "secret", "mountPath": "/etc/secret", "readOnly": true},
                        {"name": "info", "mountPath": "/etc/info"}
                    ]
                }],
                "volumes": [
                    {"name": "config", "configMap": {"name": "settings"}},
                    {"name": "secret", "secret": {"secretName": "creds"}},
                    {"name": "info", "downwardAPI": {"items": [{"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}}]}}
                ]
            }
        }),
    )
    .await;
    let pod = wait_pod(&c, "web", "Running and Ready", |p| {
        phase(p) == "Running" && p["status"]["containerStatuses"][0]["ready"] == true
    })
    .await;
    assert!(pod["status"]["podIP"]
        .as_str()
        .unwrap()
        .starts_with("10.244."));
    assert_eq!(pod["status"]["hostIP"], "127.0.0.1");
    assert_eq!(pod["status"]["qosClass"], "Guaranteed");
    assert_eq!(pod["status"]["containerStatuses"][0]["restartCount"], 0);
    assert!(pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .unwrap()
        .starts_with("sim://"));
    let ready = pod["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Ready")
        .unwrap();
    assert_eq!(ready["status"], "True");

    for (name, value) in [
        ("MODE", "fast"),
        ("PASSWORD", "hunter2"),
        ("POD_NAME", "web"),
        ("APP", "web"),
        ("GREETING", "hello web"),
        ("MEM", "64"),
        ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
        ("KUBERNETES_SERVICE_PORT", "443"),
    ] {
        assert_eq!(
            exec_in(&c, &pod, "main", &["printenv", name]).await.trim(),
            value,
            "env {name}"
        );
    }
    assert_eq!(
        exec_in(&c, &pod, "main", &["cat", "/etc/config/mode"]).await,
        "fast"
    );
    assert_eq!(
        exec_in(&c, &pod, "main", &["cat", "/etc/secret/password"]).await,
        "hunter2"
    );
    assert_eq!(
        exec_in(&c, &pod, "main", &["cat", "/etc/info/labels"]).await,
        "app=\"web\"\n"
    );

    // A configMap volume follows its source.
    configs
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"mode": "slow"}})),
        )
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if exec_in(&c, &pod, "main", &["cat", "/etc/config/mode"]).await == "slow" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "configMap volume was not updated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Logs through the API.
    let logs = pods(&c).logs("web", &LogParams::default()).await.unwrap();
    assert!(logs.contains("started container main"), "{logs}");
    let tail = pods(&c)
        .logs(
            "web",
            &LogParams {
                tail_lines: Some(1),
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert_eq!(tail.lines().count(), 1, "{tail}");
    let err = pods(&c)
        .logs(
            "web",
            &LogParams {
                container: Some("nope".into()),
                ..LogParams::default()
            },
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not valid for pod"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_succeed_or_fail_and_crash_loops_back_off() {
    let c = cluster().await;
    create_pod(
        &c,
        json!({
            "metadata": {"name": "done", "annotations": {"sim.capstan.dev/exit-after": "200ms"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox:1.35"}]}
        }),
    )
    .await;
    create_pod(
        &c,
        json!({
            "metadata": {"name": "broken", "annotations": {"sim.capstan.dev/exit-after": "200ms", "sim.capstan.dev/exit-code": "2"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": "busybox:1.35"}]}
        }),
    )
    .await;
    create_pod(
        &c,
        json!({
            "metadata": {"name": "crasher", "annotations": {"sim.capstan.dev/exit-after": "100ms", "sim.capstan.dev/exit-code": "1"}},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.35"}]}
        }),
    )
    .await;
    let done = wait_pod(&c, "done", "Succeeded", |p| phase(p) == "Succeeded").await;
    assert_eq!(
        done["status"]["containerStatuses"][0]["state"]["terminated"]["reason"],
        "Completed"
    );
    let broken = wait_pod(&c, "broken", "Failed", |p| phase(p) == "Failed").await;
    assert_eq!(
        broken["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        2
    );
    wait_pod(&c, "crasher", "CrashLoopBackOff", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    let back_off = wait_event(
        &c,
        "crasher",
        "BackOff",
        "Back-off restarting failed container main in pod crasher_default",
    )
    .await;
    assert_eq!(back_off.type_.as_deref(), Some("Warning"));
    let crasher = wait_pod(&c, "crasher", "three restarts", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0)
            >= 3
    })
    .await;
    assert_eq!(phase(&crasher), "Running");
    assert_eq!(
        crasher["status"]["containerStatuses"][0]["lastState"]["terminated"]["exitCode"],
        1
    );
    // The previous instance's logs are kept.
    let previous = pods(&c)
        .logs(
            "crasher",
            &LogParams {
                previous: true,
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert!(previous.contains("exited with code 1"), "{previous}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_init_containers_and_admission() {
    let c = cluster().await;
    create_pod(
        &c,
        json!({
            "metadata": {"name": "unhealthy"},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.35",
                "livenessProbe": {"exec": {"command": ["false"]}, "periodSeconds": 1, "failureThreshold": 1}}]}
        }),
    )
    .await;
    create_pod(
        &c,
        json!({
            "metadata": {"name": "unready"},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.35",
                "readinessProbe": {"exec": {"command": ["sh", "-c", "exit 1"]}, "periodSeconds": 1, "failureThreshold": 1}}]}
        }),
    )
    .await;
    create_pod(
        &c,
        json!({
            "metadata": {"name": "staged", "annotations": {"sim.capstan.dev/exit-after.setup": "200ms"}},
            "spec": {"initContainers": [{"name": "setup", "image": "busybox:1.35"}],
                     "containers": [{"name": "main", "image": "busybox:1.35"}]}
        }),
    )
    .await;
    create_pod(
        &c,
        json!({
            "metadata": {"name": "huge"},
            "spec": {"containers": [{"name": "main", "image": "busybox:1.35", "resources": {"requests": {"cpu": "100"}}}]}
        }),
    )
    .await;
    wait_pod(&c, "unhealthy", "a liveness restart", |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    // As kubelet reports them: the image, the containers made and started, the failed probes,
    // the kill.
    wait_event(
        &c,
        "unhealthy",
        "Pulled",
        r#"Container image "busybox:1.35" already present on machine"#,
    )
    .await;
    wait_event(&c, "unhealthy", "Created", "Created container: main").await;
    wait_event(&c, "unhealthy", "Started", "Started container main").await;
    let unhealthy = wait_event(&c, "unhealthy", "Unhealthy", "Liveness probe failed").await;
    assert_eq!(unhealthy.type_.as_deref(), Some("Warning"));
    wait_event(
        &c,
        "unhealthy",
        "Killing",
        "Container main failed liveness probe, will be restarted",
    )
    .await;
    wait_event(&c, "unready", "Unhealthy", "Readiness probe failed").await;
    let unready = wait_pod(&c, "unready", "Running", |p| phase(p) == "Running").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let unready = serde_json::to_value(pods(&c).get("unready").await.unwrap()).unwrap_or(unready);
    assert_eq!(unready["status"]["containerStatuses"][0]["ready"], false);
    assert_eq!(unready["status"]["containerStatuses"][0]["restartCount"], 0);
    let staged = wait_pod(&c, "staged", "Running after init", |p| {
        phase(p) == "Running" && p["status"]["containerStatuses"][0]["ready"] == true
    })
    .await;
    assert_eq!(
        staged["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    let huge = wait_pod(&c, "huge", "rejected", |p| phase(p) == "Failed").await;
    assert_eq!(huge["status"]["reason"], "Outcpu");
    assert!(huge["status"]["message"]
        .as_str()
        .unwrap()
        .contains("Node didn't have enough resource: cpu"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_is_graceful_and_a_restarted_agent_adopts_its_containers() {
    let mut c = cluster().await;
    create_pod(
        &c,
        json!({"metadata": {"name": "keep", "annotations": {"sim.capstan.dev/cpu-millis": "250"}},
               "spec": {"containers": [{"name": "main", "image": "busybox:1.35"}]}}),
    )
    .await;
    create_pod(
        &c,
        json!({"metadata": {"name": "goner"}, "spec": {"terminationGracePeriodSeconds": 5,
               "containers": [{"name": "main", "image": "busybox:1.35"}]}}),
    )
    .await;
    create_pod(
        &c,
        json!({"metadata": {"name": "orphan"}, "spec": {"containers": [{"name": "main", "image": "busybox:1.35"}]}}),
    )
    .await;
    let keep = wait_pod(&c, "keep", "Running", |p| phase(p) == "Running").await;
    let goner = wait_pod(&c, "goner", "Running", |p| phase(p) == "Running").await;
    let orphan = wait_pod(&c, "orphan", "Running", |p| phase(p) == "Running").await;

    // metrics.k8s.io from the node's usage reports.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let request =
            axum::http::Request::get("/apis/metrics.k8s.io/v1beta1/namespaces/default/pods/keep")
                .body(Vec::new())
                .unwrap();
        if let Ok(metrics) = c.client.request::<Value>(request).await {
            let cpu = metrics["containers"][0]["usage"]["cpu"]
                .as_str()
                .unwrap_or("0n");
            let nanos: u64 = cpu.trim_end_matches('n').parse().unwrap_or(0);
            if nanos > 150_000_000 && nanos < 400_000_000 {
                assert_eq!(metrics["kind"], "PodMetrics");
                break;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no pod metrics near 250m"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let request = axum::http::Request::get("/apis/metrics.k8s.io/v1beta1/nodes")
        .body(Vec::new())
        .unwrap();
    let nodes: Value = c.client.request(request).await.unwrap();
    assert_eq!(nodes["items"][0]["metadata"]["name"], "node-a");

    pods(&c)
        .delete("goner", &DeleteParams::default())
        .await
        .unwrap();
    wait_pod(&c, "goner", "deletion", |p| p.is_null()).await;
    wait_event(&c, "goner", "Killing", "Stopping container main").await;
    let uid = |p: &Value| p["metadata"]["uid"].as_str().unwrap().to_string();
    let left = c
        .runtime
        .list_containers(&BTreeMap::from([(
            labels::POD_UID.to_string(),
            uid(&goner),
        )]))
        .await
        .unwrap();
    assert!(left.is_empty(), "containers left after deletion: {left:?}");

    // Stop the agent; force-delete one pod while it is away.
    let ids_before = c
        .runtime
        .list_containers(&BTreeMap::from([(labels::POD_UID.to_string(), uid(&keep))]))
        .await
        .unwrap();
    c.node.take().unwrap().stop().await;
    pods(&c)
        .delete(
            "orphan",
            &DeleteParams {
                grace_period_seconds: Some(0),
                ..DeleteParams::default()
            },
        )
        .await
        .unwrap();
    let node = NodeAgent::new(
        c.client.clone(),
        Arc::new(c.runtime.clone()),
        c.config.clone(),
    )
    .start()
    .await
    .unwrap();
    c.node = Some(node);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let orphans = c
            .runtime
            .list_sandboxes(&BTreeMap::from([(
                labels::POD_UID.to_string(),
                uid(&orphan),
            )]))
            .await
            .unwrap();
        if orphans.is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "orphan sandbox not removed"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids_after = c
        .runtime
        .list_containers(&BTreeMap::from([(labels::POD_UID.to_string(), uid(&keep))]))
        .await
        .unwrap();
    assert_eq!(
        ids_before, ids_after,
        "the restarted agent must adopt, not recreate"
    );
    let keep = serde_json::to_value(pods(&c).get("keep").await.unwrap()).unwrap();
    assert_eq!(phase(&keep), "Running");
    assert_eq!(keep["status"]["containerStatuses"][0]["restartCount"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_images_are_pulled_reported_and_backed_off() {
    let c = cluster_with(SimRuntime::new(SimConfig {
        images: Some(["busybox:1.35".to_string()].into()),
        ..SimConfig::default()
    }))
    .await;
    create_pod(
        &c,
        json!({"metadata": {"name": "noimage"}, "spec": {"containers": [{"name": "main", "image": "absent:1", "imagePullPolicy": "Never"}]}}),
    )
    .await;
    let pod = wait_pod(&c, "noimage", "ErrImageNeverPull", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ErrImageNeverPull"
    })
    .await;
    assert_eq!(phase(&pod), "Pending");
    let never = wait_event(
        &c,
        "noimage",
        "ErrImageNeverPull",
        r#"Container image "absent:1" is not present with pull policy of Never"#,
    )
    .await;
    assert_eq!(never.type_.as_deref(), Some("Warning"));
    // Once for the episode, however many syncs retry it.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let failures = events_of(&c, "noimage", "ErrImageNeverPull").await;
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].count, Some(1), "{failures:?}");
    // An image the node does not have yet is pulled, then found present.
    for name in ["first", "second"] {
        create_pod(
            &c,
            json!({"metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": "busybox:1.35", "imagePullPolicy": "IfNotPresent"}]}}),
        )
        .await;
        wait_pod(&c, name, "Running", |p| phase(p) == "Running").await;
    }
    let pulling = wait_event(&c, "first", "Pulling", r#"Pulling image "busybox:1.35""#).await;
    let pulled = wait_event(
        &c,
        "first",
        "Pulled",
        r#"Successfully pulled image "busybox:1.35" in "#,
    )
    .await;
    assert!(pulling.first_timestamp <= pulled.first_timestamp);
    wait_event(
        &c,
        "second",
        "Pulled",
        r#"Container image "busybox:1.35" already present on machine"#,
    )
    .await;
    let pulls = events_of(&c, "second", "Pulling").await;
    assert!(pulls.is_empty(), "a present image is not pulled: {pulls:?}");
    // An image no registry has: ErrImagePull, then pulls back off (ImagePullBackOff).
    create_pod(
        &c,
        json!({"metadata": {"name": "nowhere"}, "spec": {"containers": [{"name": "main", "image": "nowhere:1"}]}}),
    )
    .await;
    let failed = wait_event(
        &c,
        "nowhere",
        "Failed",
        r#"Failed to pull image "nowhere:1": "#,
    )
    .await;
    // The runtime's reason once, not wrapped in a second "failed to pull".
    assert_eq!(
        failed.message.as_deref(),
        Some(r#"Failed to pull image "nowhere:1": not found in the simulated registry"#)
    );
    let backing_off = wait_pod(&c, "nowhere", "ImagePullBackOff", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "ImagePullBackOff"
    })
    .await;
    assert_eq!(
        backing_off["status"]["containerStatuses"][0]["state"]["waiting"]["message"],
        r#"Back-off pulling image "nowhere:1""#
    );
    wait_event(
        &c,
        "nowhere",
        "BackOff",
        r#"Back-off pulling image "nowhere:1""#,
    )
    .await;
    // Back-off 0.4 s doubling to 2 s: a handful of pulls in 3 s, not one every sync.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let pulls: i32 = events_of(&c, "nowhere", "Pulling")
        .await
        .iter()
        .map(|e| e.count.unwrap_or(1))
        .sum();
    assert!((2..=6).contains(&pulls), "{pulls} pulls in ~4 s");
}
