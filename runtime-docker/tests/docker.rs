//! The Docker runtime against a real engine: the runtime conformance kit, and the node agent
//! running pods through it against the in-process API (two containers talking over localhost,
//! liveness restarts, back-off, a Job-like pod, configMap/secret volumes and env, SIGTERM on
//! deletion, adoption after an agent restart). Test images are built locally `FROM scratch`
//! with Debian's static busybox; nothing is pulled.

use capstan_core::apiserver::ApiServer;
use capstan_core::node::{NodeAgent, NodeConfig, RunningNode};
use capstan_core::runtime::{labels, ContainerRuntime};
use capstan_core::service_gate::missing_service;
use capstan_core::store::MemoryStore;
use capstan_runtime_docker::local_image::build_busybox_image;
use capstan_runtime_docker::{DockerRuntime, DockerRuntimeConfig};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, LogParams, PostParams};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// The busybox test image, built from the host's static busybox.
pub const TEST_IMAGE: &str = "capstan-test/busybox:1.35";

/// Connects to Docker for `node` (its own network and pod CIDR), building the test image when
/// missing; `None` (after printing why) when no engine answers and services are optional.
async fn docker(node: &str, pod_cidr: &str) -> Option<DockerRuntime> {
    let mut config = DockerRuntimeConfig::new(node);
    config.pod_cidr = Some(pod_cidr.to_string());
    let runtime = match DockerRuntime::connect(config).await {
        Ok(runtime) => runtime,
        Err(err) => {
            missing_service("a Docker engine", &err.to_string());
            return None;
        }
    };
    if runtime.docker().inspect_image(TEST_IMAGE).await.is_err() {
        build_busybox_image(
            runtime.docker(),
            TEST_IMAGE,
            std::path::Path::new("/bin/busybox"),
        )
        .await
        .expect("building the busybox test image");
    }
    Some(runtime)
}

/// Removes everything the runtime made for `node`.
async fn clean(runtime: &DockerRuntime, node: &str) {
    let selector = BTreeMap::from([(labels::NODE.to_string(), node.to_string())]);
    for sandbox in runtime.list_sandboxes(&selector).await.unwrap_or_default() {
        let _ = runtime.remove_sandbox(&sandbox.id).await;
    }
    for container in runtime.list_containers(&selector).await.unwrap_or_default() {
        let _ = runtime.remove_container(&container.id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_runtime_passes_the_conformance_kit() {
    let Some(runtime) = docker("conformance", "10.244.201.0/24").await else {
        return;
    };
    clean(&runtime, "conformance").await;
    let result = capstan_core::runtime::testkit::run_conformance(
        &runtime,
        &capstan_core::runtime::testkit::Fixture {
            image: TEST_IMAGE.into(),
            missing_image: "capstan-test/absent:0".into(),
            prefix: "conformance".into(),
        },
    )
    .await;
    clean(&runtime, "conformance").await;
    result.unwrap_or_else(|e| panic!("docker conformance: {e}"));
}

struct Cluster {
    _server: ApiServer,
    client: kube::Client,
    runtime: DockerRuntime,
    node: Option<RunningNode>,
    config: NodeConfig,
    _dir: tempfile::TempDir,
}

async fn cluster(node: &str, pod_cidr: &str) -> Option<Cluster> {
    let runtime = docker(node, pod_cidr).await?;
    clean(&runtime, node).await;
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let client = server.client();
    let dir = tempfile::tempdir().unwrap();
    let mut config = NodeConfig::new(node);
    config.root_dir = dir.path().join("agent");
    config.pod_cidr = Some(pod_cidr.into());
    config.initial_backoff = Duration::from_millis(500);
    config.max_backoff = Duration::from_secs(2);
    config.resync_period = Duration::from_millis(500);
    let agent = NodeAgent::new(client.clone(), Arc::new(runtime.clone()), config.clone())
        .start()
        .await
        .unwrap();
    Some(Cluster {
        _server: server,
        client,
        runtime,
        node: Some(agent),
        config,
        _dir: dir,
    })
}

fn pods(c: &Cluster) -> Api<Pod> {
    Api::namespaced(c.client.clone(), "default")
}

async fn create_pod(c: &Cluster, mut manifest: Value) {
    manifest["spec"]["nodeName"] = json!(c.config.name);
    let pod: Pod = serde_json::from_value(manifest).unwrap();
    pods(c).create(&PostParams::default(), &pod).await.unwrap();
}

async fn wait_pod(c: &Cluster, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    wait_pod_until(c, name, what, deadline, check).await
}

async fn wait_pod_until(
    c: &Cluster,
    name: &str,
    what: &str,
    deadline: tokio::time::Instant,
    check: impl Fn(&Value) -> bool,
) -> Value {
    let mut last = Value::Null;
    while tokio::time::Instant::now() < deadline {
        last = pods(c)
            .get_opt(name)
            .await
            .unwrap()
            .map(|p| serde_json::to_value(p).unwrap())
            .unwrap_or(Value::Null);
        if check(&last) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("pod {name}: {what} did not happen; last state: {last:#}");
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or("")
}

async fn exec(c: &Cluster, pod: &Value, container: &str, command: &[&str]) -> (i32, String) {
    let selector = BTreeMap::from([
        (
            labels::POD_UID.to_string(),
            pod["metadata"]["uid"].as_str().unwrap().to_string(),
        ),
        (labels::CONTAINER.to_string(), container.to_string()),
    ]);
    let mut list = c.runtime.list_containers(&selector).await.unwrap();
    list.sort_by_key(|i| std::cmp::Reverse(i.restart_count()));
    let command: Vec<String> = command.iter().map(|s| s.to_string()).collect();
    let out = c
        .runtime
        .exec(&list[0].id, &command, Duration::from_secs(10))
        .await
        .unwrap();
    (
        out.exit_code,
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_agent_runs_pods_on_docker() {
    let Some(mut c) = cluster("docker-node", "10.244.202.0/24").await else {
        return;
    };
    let shared = tempfile::tempdir().unwrap();
    let shared_path = shared.path().to_str().unwrap().to_string();
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(c.client.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "web-content"}, "data": {"index.html": "hello from capstan"}})).unwrap(),
        )
        .await
        .unwrap();
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(c.client.clone(), "default")
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "token"}, "stringData": {"value": "s3cret"}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    // Two containers sharing the pod network: a web server and a client on localhost.
    create_pod(
        &c,
        json!({
            "metadata": {"name": "pair"},
            "spec": {
                "terminationGracePeriodSeconds": 3,
                "containers": [
                    {"name": "web", "image": TEST_IMAGE, "command": ["httpd", "-f", "-p", "8080", "-h", "/www"],
                     "ports": [{"name": "http", "containerPort": 8080}],
                     "readinessProbe": {"httpGet": {"path": "/index.html", "port": "http"}, "periodSeconds": 1},
                     "volumeMounts": [{"name": "content", "mountPath": "/www"}]},
                    {"name": "client", "image": TEST_IMAGE,
                     "command": ["sh", "-c", "trap 'echo got-sigterm > /shared/term; exit 0' TERM; while true; do wget -q -O - http://localhost:8080/index.html; echo; sleep 1 & wait $!; done"],
                     "env": [{"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "token", "key": "value"}}}],
                     "volumeMounts": [{"name": "token", "mountPath": "/etc/token", "readOnly": true},
                                      {"name": "shared", "mountPath": "/shared"}]}
                ],
                "volumes": [
                    {"name": "content", "configMap": {"name": "web-content"}},
                    {"name": "token", "secret": {"secretName": "token"}},
                    {"name": "shared", "hostPath": {"path": shared_path}}
                ]
            }
        }),
    )
    .await;
    // A liveness probe against a port nothing listens on restarts the container. `sleep` as
    // PID 1 ignores SIGTERM, so each kill takes the default 30 s grace period; the restart must
    // be reported when it happens, not after the next kill's grace period (~60 s).
    let sick_created = tokio::time::Instant::now();
    create_pod(
        &c,
        json!({"metadata": {"name": "sick"}, "spec": {"containers": [{"name": "main", "image": TEST_IMAGE,
            "command": ["sleep", "3600"],
            "livenessProbe": {"tcpSocket": {"port": 9999}, "periodSeconds": 1, "failureThreshold": 1}}]}}),
    )
    .await;
    // A crashing container backs off.
    create_pod(
        &c,
        json!({"metadata": {"name": "crash"}, "spec": {"containers": [{"name": "main", "image": TEST_IMAGE,
            "command": ["sh", "-c", "echo crashing; exit 1"]}]}}),
    )
    .await;
    // A run-to-completion pod.
    create_pod(
        &c,
        json!({"metadata": {"name": "job"}, "spec": {"restartPolicy": "Never", "containers": [{"name": "main", "image": TEST_IMAGE,
            "command": ["sh", "-c", "echo done"]}]}}),
    )
    .await;

    let pair = wait_pod(&c, "pair", "Running and Ready", |p| {
        phase(p) == "Running"
            && p["status"]["containerStatuses"]
                .as_array()
                .is_some_and(|s| s.iter().all(|c| c["ready"] == true))
    })
    .await;
    let pod_ip = pair["status"]["podIP"].as_str().unwrap();
    assert!(pod_ip.starts_with("10.244.202."), "{pod_ip}");
    // The client reached the server over localhost.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let logs = pods(&c)
            .logs(
                "pair",
                &LogParams {
                    container: Some("client".into()),
                    ..LogParams::default()
                },
            )
            .await
            .unwrap();
        if logs.contains("hello from capstan") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "client logs: {logs}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        exec(&c, &pair, "client", &["cat", "/etc/token/value"]).await,
        (0, "s3cret".into())
    );
    assert_eq!(
        exec(&c, &pair, "client", &["sh", "-c", "echo $TOKEN"]).await,
        (0, "s3cret\n".into())
    );
    let (code, env) = exec(
        &c,
        &pair,
        "client",
        &["sh", "-c", "echo $KUBERNETES_SERVICE_HOST"],
    )
    .await;
    assert_eq!((code, env.trim()), (0, "10.96.0.1"));
    assert_eq!(
        exec(&c, &pair, "client", &["sh", "-c", "exit 7"]).await.0,
        7
    );

    let restart_reported = sick_created + Duration::from_secs(48);
    let sick = wait_pod_until(&c, "sick", "a liveness restart", restart_reported, |p| {
        p["status"]["containerStatuses"][0]["restartCount"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    assert_eq!(phase(&sick), "Running");
    wait_pod(&c, "crash", "CrashLoopBackOff", |p| {
        p["status"]["containerStatuses"][0]["state"]["waiting"]["reason"] == "CrashLoopBackOff"
    })
    .await;
    let previous = pods(&c)
        .logs(
            "crash",
            &LogParams {
                previous: true,
                ..LogParams::default()
            },
        )
        .await
        .unwrap();
    assert!(previous.contains("crashing"), "{previous}");
    let job = wait_pod(&c, "job", "Succeeded", |p| phase(p) == "Succeeded").await;
    assert_eq!(
        job["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
        0
    );
    let logs = pods(&c).logs("job", &LogParams::default()).await.unwrap();
    assert_eq!(logs.trim(), "done");

    // An agent restart adopts running containers without duplicates.
    let uid = pair["metadata"]["uid"].as_str().unwrap().to_string();
    let by_uid = BTreeMap::from([(labels::POD_UID.to_string(), uid.clone())]);
    let mut before: Vec<String> = c
        .runtime
        .list_containers(&by_uid)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    before.sort();
    c.node.take().unwrap().stop().await;
    let agent = NodeAgent::new(
        c.client.clone(),
        Arc::new(c.runtime.clone()),
        c.config.clone(),
    )
    .start()
    .await
    .unwrap();
    c.node = Some(agent);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut after: Vec<String> = c
        .runtime
        .list_containers(&by_uid)
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    after.sort();
    assert_eq!(
        before, after,
        "the restarted agent must adopt, not recreate"
    );
    assert_eq!(c.runtime.list_sandboxes(&by_uid).await.unwrap().len(), 1);

    // Graceful deletion delivers SIGTERM, then removes everything.
    pods(&c)
        .delete("pair", &DeleteParams::default())
        .await
        .unwrap();
    wait_pod(&c, "pair", "deletion", |p| p.is_null()).await;
    let term = std::fs::read_to_string(shared.path().join("term")).unwrap_or_default();
    assert_eq!(term.trim(), "got-sigterm");
    assert!(c.runtime.list_containers(&by_uid).await.unwrap().is_empty());
    assert!(c.runtime.list_sandboxes(&by_uid).await.unwrap().is_empty());

    c.node.take().unwrap().stop().await;
    clean(&c.runtime, "docker-node").await;
}
