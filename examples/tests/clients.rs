//! Real clients against a real API server on loopback: kubectl 1.27 and 1.33 (by full path),
//! the official Python client 37.0.2, and the kube crate over HTTP and in-process. Each runs
//! against the memory store and, when `CAPSTAN_ETCD_ENDPOINTS` is set, against etcd. Missing
//! clients skip with a printed reason, or fail under `CAPSTAN_REQUIRE_SERVICES=1`.

#[path = "clients/api_extensions.rs"]
mod api_extensions;
#[path = "clients/networking.rs"]
mod networking;
#[path = "clients/security.rs"]
mod security;

use capstan_core::apiserver::{ApiConfig, ApiServer};
use capstan_core::service_gate::{service_from_env, services_required};
use capstan_core::store::{MemoryStore, Store};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// A served API on a loopback port, with a kubeconfig pointing at it.
struct Served {
    server: ApiServer,
    kubeconfig: PathBuf,
    _dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(store: Arc<dyn Store>) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    let config = ApiConfig {
        advertise_address: address.to_string(),
        ..ApiConfig::default()
    };
    let server = ApiServer::builder(store)
        .config(config)
        .build()
        .await
        .unwrap();
    let router = server.router();
    let task = tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://{address}\ncontexts:\n- name: c\n  context:\n    cluster: c\n    user: u\n    namespace: default\ncurrent-context: c\nusers:\n- name: u\n  user: {{}}\n"),
    )
    .unwrap();
    Served {
        server,
        kubeconfig,
        _dir: dir,
        task,
    }
}

async fn stores() -> Vec<(&'static str, Arc<dyn Store>)> {
    let mut stores: Vec<(&'static str, Arc<dyn Store>)> =
        vec![("memory", Arc::new(MemoryStore::new()))];
    if let Ok(endpoints) = std::env::var("CAPSTAN_ETCD_ENDPOINTS") {
        if !endpoints.trim().is_empty() {
            let prefix = format!("/capstan-clients-{}-{}", std::process::id(), uuid_suffix());
            let config =
                capstan_store_etcd::EtcdStoreConfig::new(endpoints.split(',').map(str::to_string))
                    .with_prefix(prefix);
            stores.push((
                "etcd",
                Arc::new(
                    capstan_store_etcd::EtcdStore::connect(config)
                        .await
                        .unwrap(),
                ),
            ));
        }
    } else {
        let _ = service_from_env(
            "CAPSTAN_ETCD_ENDPOINTS",
            "etcd (for the etcd-backed client runs)",
        );
    }
    stores
}

fn uuid_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

/// The folder holding `kubectl.1.N`, found beside the file `kubectl` resolves to.
fn kubectl_dir() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join("kubectl"))
            .find(|p| p.exists())
    });
    let dir = found
        .and_then(|p| std::fs::canonicalize(p).ok())
        .and_then(|p| p.parent().map(Path::to_path_buf));
    match dir.filter(|d| d.join("kubectl.1.27").exists() && d.join("kubectl.1.33").exists()) {
        Some(dir) => Some(dir),
        None => {
            assert!(
                !services_required(),
                "kubectl.1.27 and kubectl.1.33 are required (CAPSTAN_REQUIRE_SERVICES=1)"
            );
            eprintln!("SKIPPED: kubectl.1.27 / kubectl.1.33 not found beside kubectl");
            None
        }
    }
}

struct Kubectl {
    binary: PathBuf,
    kubeconfig: PathBuf,
}

impl Kubectl {
    fn run(&self, args: &[&str], stdin: Option<&str>) -> (bool, String) {
        use std::io::Write;
        let mut command = Command::new(&self.binary);
        command.arg("--kubeconfig").arg(&self.kubeconfig).args(args);
        command
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let mut child = command.spawn().expect("run kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        } else {
            drop(child.stdin.take());
        }
        let output = child.wait_with_output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        (output.status.success(), text)
    }

    /// Runs and requires the given outcome and every `expected` fragment in the output.
    fn expect(
        &self,
        succeed: bool,
        args: &[&str],
        stdin: Option<&str>,
        expected: &[&str],
    ) -> String {
        let (success, text) = self.run(args, stdin);
        let outcome = if succeed { "succeed" } else { "fail" };
        assert_eq!(
            success,
            succeed,
            "{} {args:?} should {outcome}:\n{text}",
            self.binary.display()
        );
        for e in expected {
            assert!(
                text.contains(e),
                "{} {args:?}: expected {e:?} in:\n{text}",
                self.binary.display()
            );
        }
        text
    }

    /// Runs and requires success and every `expected` fragment in the output.
    fn ok(&self, args: &[&str], stdin: Option<&str>, expected: &[&str]) -> String {
        self.expect(true, args, stdin, expected)
    }

    /// Runs and requires failure with every `expected` fragment in the output.
    fn fails(&self, args: &[&str], stdin: Option<&str>, expected: &[&str]) {
        self.expect(false, args, stdin, expected);
    }
}

const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  labels: {app: web}\nspec:\n  containers:\n  - name: main\n    image: busybox:1.36\n    ports: [{containerPort: 80}]\n";
const DEPLOYMENT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d1}\nspec:\n  replicas: 2\n  selector: {matchLabels: {app: d1}}\n  template:\n    metadata: {labels: {app: d1}}\n    spec:\n      containers: [{name: c, image: \"busybox:1.36\"}]\n";
const INVALID_POD: &str =
    "apiVersion: v1\nkind: Pod\nmetadata: {name: invalid-x}\nspec:\n  containers: [{name: main}]\n";

fn kubectl_suite(k: &Kubectl, ns: &str) {
    let n = ["-n", ns];
    k.ok(&["version"], None, &["Server Version", "v1.33.0-capstan"]);
    k.ok(
        &["api-resources"],
        None,
        &["deployments", "deploy", "apps/v1", "pods", "po"],
    );
    // kubectl asks for strict server-side field validation.
    let bogus = POD
        .replace(
            "    ports: [{containerPort: 80}]\n",
            "    ports: [{containerPort: 80}]\n    bogusField: 1\n",
        )
        .replace("name: web", "name: bogus");
    k.fails(
        &["-n", "default", "create", "-f", "-"],
        Some(&bogus),
        &[
            "strict decoding error",
            "unknown field \"spec.containers[0].bogusField\"",
        ],
    );
    // OpenAPI v3 documents drive `kubectl explain`.
    k.ok(
        &["explain", "pods"],
        None,
        &["KIND:", "Pod", "collection of containers"],
    );
    k.ok(
        &["explain", "deployment.spec.strategy"],
        None,
        &["DeploymentStrategy", "rollingUpdate"],
    );
    // A namespace from a manifest (JSON); `kubectl create namespace` (protobuf on 1.33) is
    // covered in clients/api_extensions.rs.
    let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n");
    k.ok(&["create", "-f", "-"], Some(&namespace), &["created"]);
    k.ok(
        &["get", "namespaces"],
        None,
        &["default", "kube-system", ns],
    );
    k.ok(&["get", "nodes"], None, &[]);
    k.ok(
        &[&n[..], &["create", "-f", "-"]].concat(),
        Some(POD),
        &["pod/web created"],
    );
    k.ok(
        &[&n[..], &["get", "pods", "-o", "wide"]].concat(),
        None,
        &[
            "NAME",
            "READY",
            "STATUS",
            "NOMINATED NODE",
            "web",
            "0/1",
            "Pending",
        ],
    );
    k.ok(&["get", "pods", "-A"], None, &["NAMESPACE", ns, "web"]);
    k.ok(
        &[&n[..], &["get", "pod", "web", "-o", "yaml"]].concat(),
        None,
        &[
            "imagePullPolicy: IfNotPresent",
            "restartPolicy: Always",
            "uid:",
            "resourceVersion:",
        ],
    );
    k.ok(
        &[&n[..], &["describe", "pod", "web"]].concat(),
        None,
        &["Name:", "web", "busybox:1.36", "Service Account:  default"],
    );
    // Ephemeral containers are not served: kubectl debug says so (it reads the NotFound's
    // details to tell a missing subresource from a missing pod).
    k.fails(
        &[
            &n[..],
            &["debug", "web", "--image=busybox:1.36", "--", "true"],
        ]
        .concat(),
        None,
        &["ephemeral containers are disabled for this cluster"],
    );
    k.ok(
        &[&n[..], &["label", "pod", "web", "tier=front"]].concat(),
        None,
        &["labeled"],
    );
    k.ok(
        &[&n[..], &["annotate", "pod", "web", "note=hello"]].concat(),
        None,
        &["annotate"],
    );
    k.ok(
        &[&n[..], &["get", "pods", "-l", "tier=front", "-o", "name"]].concat(),
        None,
        &["pod/web"],
    );
    k.ok(
        &[&n[..], &["create", "-f", "-"]].concat(),
        Some(DEPLOYMENT),
        &["deployment.apps/d1 created"],
    );
    k.ok(
        &[&n[..], &["scale", "deployment", "d1", "--replicas=3"]].concat(),
        None,
        &["scaled"],
    );
    k.ok(
        &[
            &n[..],
            &["get", "deploy", "d1", "-o", "jsonpath={.spec.replicas}"],
        ]
        .concat(),
        None,
        &["3"],
    );
    k.ok(
        &[
            &n[..],
            &[
                "patch",
                "deploy",
                "d1",
                "--type=merge",
                "-p",
                r#"{"spec":{"replicas":1}}"#,
            ],
        ]
        .concat(),
        None,
        &["patched"],
    );
    k.ok(
        &[
            &n[..],
            &[
                "patch",
                "deploy",
                "d1",
                "--type=json",
                "-p",
                r#"[{"op":"replace","path":"/spec/replicas","value":4}]"#,
            ],
        ]
        .concat(),
        None,
        &["patched"],
    );
    k.ok(
        &[&n[..], &["get", "deploy", "-o", "wide"]].concat(),
        None,
        &["d1", "0/4", "busybox:1.36", "app=d1"],
    );
    let yaml = k.ok(
        &[&n[..], &["get", "deploy", "d1", "-o", "yaml"]].concat(),
        None,
        &["replicas: 4"],
    );
    // An identical replace writes nothing (as in Kubernetes); a changed one moves the
    // resourceVersion, so the first read is stale afterwards.
    k.ok(
        &[&n[..], &["replace", "-f", "-"]].concat(),
        Some(&yaml),
        &["replaced"],
    );
    let changed = yaml.replacen("replicas: 4", "replicas: 3", 1);
    k.ok(
        &[&n[..], &["replace", "-f", "-"]].concat(),
        Some(&changed),
        &["replaced"],
    );
    k.fails(
        &[&n[..], &["replace", "-f", "-"]].concat(),
        Some(&yaml),
        &["Conflict", "the object has been modified"],
    );
    k.fails(
        &[&n[..], &["create", "-f", "-"]].concat(),
        Some(DEPLOYMENT),
        &["AlreadyExists", "already exists"],
    );
    k.fails(
        &[&n[..], &["get", "pod", "nope"]].concat(),
        None,
        &["NotFound", "pods \"nope\" not found"],
    );
    k.fails(
        &[&n[..], &["create", "-f", "-"]].concat(),
        Some(INVALID_POD),
        &["The Pod \"invalid-x\" is invalid: spec.containers[0].image: Required value"],
    );
    // The store is healthy; no scheduler or controller manager runs beside this API server,
    // so none holds a Lease.
    k.ok(
        &["get", "cs"],
        None,
        &[
            "store-0",
            "Healthy",
            "scheduler",
            "Unhealthy",
            "no leader has been elected",
        ],
    );
    // Client-side apply (strategic merge patch with the last-applied annotation), twice.
    let applied = DEPLOYMENT
        .replace("name: d1}", "name: applied}")
        .replace("app: d1", "app: applied");
    k.ok(
        &[&n[..], &["apply", "-f", "-"]].concat(),
        Some(&applied),
        &["deployment.apps/applied created"],
    );
    let changed = applied
        .replace("replicas: 2", "replicas: 3")
        .replace("busybox:1.36", "busybox:1.37");
    k.ok(
        &[&n[..], &["apply", "-f", "-"]].concat(),
        Some(&changed),
        &["deployment.apps/applied configured"],
    );
    k.ok(
        &[&n[..], &["apply", "-f", "-"]].concat(),
        Some(&changed),
        &["deployment.apps/applied unchanged"],
    );
    k.ok(
        &[
            &n[..],
            &[
                "get",
                "deploy",
                "applied",
                "-o",
                "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image}",
            ],
        ]
        .concat(),
        None,
        &["3 busybox:1.37"],
    );
    // The default `kubectl patch` is strategic: containers merge by name.
    let env_patch = r#"{"spec":{"template":{"spec":{"containers":[{"name":"c","env":[{"name":"A","value":"1"}]}]}}}}"#;
    k.ok(
        &[&n[..], &["patch", "deploy", "applied", "-p", env_patch]].concat(),
        None,
        &["patched"],
    );
    k.ok(&[&n[..], &["get", "deploy", "applied", "-o", "jsonpath={.spec.template.spec.containers[0].image} {.spec.template.spec.containers[0].env[0].name}"]].concat(), None, &["busybox:1.37 A"]);
    k.ok(
        &[&n[..], &["rollout", "restart", "deploy", "applied"]].concat(),
        None,
        &["restarted"],
    );
    k.ok(
        &[
            &n[..],
            &[
                "get",
                "deploy",
                "applied",
                "-o",
                "jsonpath={.spec.template.metadata.annotations}",
            ],
        ]
        .concat(),
        None,
        &["kubectl.kubernetes.io/restartedAt"],
    );
    // Server-side apply, then `kubectl diff`: nothing to show until the manifest changes.
    let settings =
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: settings}\ndata: {mode: fast}\n";
    k.ok(
        &[&n[..], &["apply", "--server-side", "-f", "-"]].concat(),
        Some(settings),
        &["serverside-applied"],
    );
    let unchanged = k.ok(
        &[&n[..], &["diff", "-f", "-"]].concat(),
        Some(settings),
        &[],
    );
    assert!(unchanged.trim().is_empty(), "{unchanged}");
    k.fails(
        &[&n[..], &["diff", "-f", "-"]].concat(),
        Some(&settings.replace("fast", "slow")),
        &["-  mode: fast", "+  mode: slow"],
    );
    // `--sort-by` sorts the objects the Table rows carry (`includeObject=Object`).
    let sorted = k.ok(
        &[&n[..], &["get", "deploy", "--sort-by=.metadata.name"]].concat(),
        None,
        &["applied", "d1"],
    );
    assert!(sorted.find("applied") < sorted.find("d1"), "{sorted}");
    // Typed commands (protobuf on 1.33): Go's zero values are left out, and a Secret without
    // a type is Opaque.
    k.ok(
        &[
            &n[..],
            &["create", "deployment", "made", "--image=busybox:1.36"],
        ]
        .concat(),
        None,
        &["created"],
    );
    let made = k.ok(
        &[&n[..], &["get", "deploy", "made", "-o", "json"]].concat(),
        None,
        &["busybox:1.36"],
    );
    assert!(
        !made.contains("\"stdin\"") && !made.contains("\"tty\""),
        "{made}"
    );
    k.ok(
        &[
            &n[..],
            &[
                "create",
                "secret",
                "generic",
                "creds",
                "--from-literal=pw=x",
            ],
        ]
        .concat(),
        None,
        &["created"],
    );
    k.ok(
        &[
            &n[..],
            &["get", "secret", "creds", "-o", "jsonpath={.type}"],
        ]
        .concat(),
        None,
        &["Opaque"],
    );
    k.ok(
        &[&n[..], &["delete", "-f", "-"]].concat(),
        Some(DEPLOYMENT),
        &["deleted"],
    );
    k.ok(
        &[&n[..], &["delete", "pod", "web"]].concat(),
        None,
        &["deleted"],
    );
    k.fails(
        &[&n[..], &["get", "pod", "web"]].concat(),
        None,
        &["NotFound"],
    );
}

fn kubectl_watch(k: &Kubectl, ns: &str) {
    let mut watcher = Command::new(&k.binary)
        .arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .args(["-n", ns, "get", "pods", "-w"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    k.ok(
        &["-n", ns, "create", "-f", "-"],
        Some(&POD.replace("name: web", "name: watched")),
        &["created"],
    );
    k.ok(&["-n", ns, "delete", "pod", "watched"], None, &["deleted"]);
    std::thread::sleep(Duration::from_millis(700));
    watcher.kill().unwrap();
    let output = watcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(
        text.matches("watched").count() >= 2,
        "get -w should show the pod's events:\n{text}"
    );
    assert!(text.contains("NAME") && text.contains("Pending"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_against_capstan() {
    let Some(dir) = kubectl_dir() else { return };
    for (store_name, store) in stores().await {
        let served = serve(store).await;
        for version in ["1.27", "1.33"] {
            let k = Kubectl {
                binary: dir.join(format!("kubectl.{version}")),
                kubeconfig: served.kubeconfig.clone(),
            };
            let ns = format!("k{}-{store_name}", version.replace('.', ""));
            eprintln!("kubectl {version} against the {store_name} store");
            let handle = tokio::task::spawn_blocking(move || {
                kubectl_suite(&k, &ns);
                kubectl_watch(&k, &ns);
            });
            handle.await.unwrap();
        }
    }
}

fn python_client_available() -> bool {
    let ok = Command::new("python3")
        .args([
            "-c",
            "import kubernetes, sys; sys.exit(0 if kubernetes.__version__ == '37.0.2' else 1)",
        ])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        assert!(
            !services_required(),
            "the Python client kubernetes==37.0.2 is required (CAPSTAN_REQUIRE_SERVICES=1)"
        );
        eprintln!("SKIPPED: python3 with kubernetes==37.0.2 not available");
    }
    ok
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_against_capstan() {
    if !python_client_available() {
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/python_client.py");
    for (store_name, store) in stores().await {
        let served = serve(store).await;
        let kubeconfig = served.kubeconfig.clone();
        let script = script.clone();
        let output = tokio::task::spawn_blocking(move || {
            Command::new("python3")
                .arg(&script)
                .arg(&kubeconfig)
                .arg(format!("py-{store_name}"))
                .output()
                .unwrap()
        })
        .await
        .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && text.contains("all steps passed"),
            "python client against the {store_name} store:\n{text}"
        );
    }
}

async fn kube_crud_and_watch(client: kube::Client, ns: &str) {
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap(),
        )
        .await
        .unwrap();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let mut events = maps
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    let cm: ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "cfg"}, "data": {"a": "1"}}),
    )
    .unwrap();
    let created = maps.create(&PostParams::default(), &cm).await.unwrap();
    assert!(created.metadata.resource_version.is_some());
    let patched = maps
        .patch(
            "cfg",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"data": {"b": "2"}})),
        )
        .await
        .unwrap();
    assert_eq!(patched.data.unwrap().len(), 2);
    assert_eq!(
        maps.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
    maps.delete("cfg", &DeleteParams::default()).await.unwrap();
    let mut kinds = Vec::new();
    while kinds.len() < 3 {
        match tokio::time::timeout(Duration::from_secs(10), events.try_next())
            .await
            .expect("watch event in time")
            .unwrap()
        {
            Some(WatchEvent::Added(_)) => kinds.push("ADDED"),
            Some(WatchEvent::Modified(_)) => kinds.push("MODIFIED"),
            Some(WatchEvent::Deleted(_)) => kinds.push("DELETED"),
            Some(_) => {}
            None => panic!("watch ended early"),
        }
    }
    assert_eq!(kinds, ["ADDED", "MODIFIED", "DELETED"]);
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let err = pods.get("missing").await.unwrap_err();
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_crate_over_http_and_in_process() {
    for (store_name, store) in stores().await {
        let served = serve(store).await;
        kube_crud_and_watch(served.server.client(), &format!("inproc-{store_name}")).await;
        let kubeconfig = kube::config::Kubeconfig::read_from(&served.kubeconfig).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .unwrap();
        let client = kube::Client::try_from(config).unwrap();
        kube_crud_and_watch(client, &format!("http-{store_name}")).await;
    }
}

/// Starts `capstan up` and waits for its "listening" line.
fn start_capstan(data_dir: &Path, port: u16) -> std::process::Child {
    start_capstan_with(data_dir, port, &["--runtime", "sim"])
}

/// Starts `capstan up` with extra flags.
fn start_capstan_with(data_dir: &Path, port: u16, extra: &[&str]) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["up", "--data-dir"])
        .arg(data_dir)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start capstan up");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    // Lines before it say what happened at start (e.g. secrets re-encrypted).
    let listening = lines
        .by_ref()
        .take(5)
        .map_while(Result::ok)
        .find(|line| line.contains("listening on"))
        .expect("capstan never said it was listening");
    assert!(
        listening.contains("listening on https://127.0.0.1"),
        "{listening}"
    );
    // Keep draining so the child never blocks on a full pipe; collect for the final check.
    std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capstan_up_serves_persists_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = start_capstan(dir.path(), port);
    let kubeconfig = kube::config::Kubeconfig::read_from(dir.path().join("kubeconfig"))
        .expect("capstan up writes DIR/kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let maps: Api<ConfigMap> =
        Api::default_namespaced(kube::Client::try_from(config.clone()).unwrap());
    let cm: ConfigMap = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "kept"}, "data": {"a": "1"}}),
    )
    .unwrap();
    maps.create(&PostParams::default(), &cm).await.unwrap();

    // The whole orchestrator: a Deployment's pods are created, scheduled and run.
    let client = kube::Client::try_from(config.clone()).unwrap();
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> =
        Api::default_namespaced(client.clone());
    let deployment = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "hello"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "hello"}},
            "template": {"metadata": {"labels": {"app": "hello"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}},
    }))
    .unwrap();
    deployments
        .create(&PostParams::default(), &deployment)
        .await
        .unwrap();
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let running = pods
            .list(&ListParams::default().labels("app=hello"))
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
            .count();
        if running == 2 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the deployment's pods did not run under capstan up"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // `kubectl get cs`: the store, and the elected scheduler and controller manager.
    let statuses: Api<k8s_openapi::api::core::v1::ComponentStatus> = Api::all(client.clone());
    let listed = statuses.list(&ListParams::default()).await.unwrap();
    let health: Vec<(String, String)> = listed
        .items
        .iter()
        .map(|cs| {
            let condition = &cs.conditions.as_ref().unwrap()[0];
            (cs.metadata.name.clone().unwrap(), condition.status.clone())
        })
        .collect();
    assert_eq!(
        health,
        [
            ("store-0", "True"),
            ("scheduler", "True"),
            ("controller-manager", "True")
        ]
        .map(|(n, s)| (n.to_string(), s.to_string()))
    );
    // The kubernetes Service leads to this API server.
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> = Api::default_namespaced(client);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let published: Vec<(String, i32)> = endpoints
            .get_opt("kubernetes")
            .await
            .unwrap()
            .and_then(|e| e.subsets)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| {
                let port = s.ports.unwrap_or_default().first().map_or(0, |p| p.port);
                s.addresses
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |a| (a.ip, port))
            })
            .collect();
        if published == [("127.0.0.1".to_string(), i32::from(port))] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the kubernetes Service's endpoints: {published:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(
        status.success(),
        "capstan up must exit cleanly on SIGTERM: {status}"
    );

    let mut child = start_capstan(dir.path(), port);
    let maps: Api<ConfigMap> = Api::default_namespaced(kube::Client::try_from(config).unwrap());
    let kept = maps
        .get("kept")
        .await
        .expect("the embedded store keeps objects across restarts");
    assert_eq!(kept.data.unwrap()["a"], "1");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
        .success());
}

/// `capstan sim` with its settings from a YAML file (`--config`) overridden by a flag: every
/// simulated node registers Ready with the given capacity, and SIGTERM stops it cleanly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capstan_sim_runs_simulated_nodes_from_a_config_file() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("capstan.yaml");
    std::fs::write(
        &config,
        format!(
            "listen: 127.0.0.1:{port}\nstore: memory\nnodes: 2\ncapacity: cpu=8,memory=32Gi,pods=50\ndata-dir: {}\n",
            dir.path().display()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["sim", "--config"])
        .arg(&config)
        // The command line wins over the file.
        .args(["--nodes", "5", "--log-format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let ready = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        let found = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("simulated nodes ready"));
        std::thread::spawn(move || lines.for_each(drop));
        found
    })
    .await
    .unwrap()
    .expect("capstan sim reports its nodes ready");
    assert!(ready.contains("5 simulated nodes ready"), "{ready}");
    let kubeconfig = kube::config::Kubeconfig::read_from(dir.path().join("kubeconfig")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let nodes: Api<k8s_openapi::api::core::v1::Node> =
        Api::all(kube::Client::try_from(config).unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let list = nodes.list(&ListParams::default()).await.unwrap();
        let ready = list
            .items
            .iter()
            .filter(|n| {
                n.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .count();
        if ready == 5 {
            let node = &list.items[0];
            let capacity = node
                .status
                .as_ref()
                .and_then(|s| s.capacity.clone())
                .unwrap();
            assert_eq!(capacity["cpu"].0, "8");
            assert_eq!(capacity["pods"].0, "50");
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{ready} of 5 nodes Ready"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn capstan_up_refuses_plain_http_off_loopback_and_bad_flags() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args([
            "up",
            "--insecure-http",
            "--listen",
            "0.0.0.0:0",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("loopback"));
    let output = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["up", "--bogus"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unexpected argument '--bogus'"));
    let output = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["up", "--proxy", "ipvs"])
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("invalid value 'ipvs'")
            && stderr.contains("userspace, iptables, nftables, none"),
        "{stderr}"
    );
}

#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capstan_up_on_etcd() {
    let Some(endpoints) = service_from_env("CAPSTAN_ETCD_ENDPOINTS", "etcd") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = start_capstan_with(
        dir.path(),
        port,
        &[
            "--store",
            "etcd",
            "--etcd-endpoints",
            &endpoints,
            "--runtime",
            "sim",
        ],
    );
    let kubeconfig = kube::config::Kubeconfig::read_from(dir.path().join("kubeconfig")).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let maps: Api<ConfigMap> = Api::default_namespaced(kube::Client::try_from(config).unwrap());
    let name = format!("on-etcd-{}", uuid_suffix());
    let cm: ConfigMap =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    maps.create(&PostParams::default(), &cm).await.unwrap();
    let mut raw = etcd_client_get(
        &endpoints,
        &format!("/registry/core/configmaps/default/{name}"),
    )
    .await;
    assert_eq!(
        raw.len(),
        1,
        "the object lives in etcd under /registry/core/configmaps/default/"
    );
    raw.clear();
    maps.delete(&name, &DeleteParams::default()).await.unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap()
        .success());
}

#[cfg(feature = "etcd")]
async fn etcd_client_get(endpoints: &str, key: &str) -> Vec<Vec<u8>> {
    let mut client = etcd_client::Client::connect(endpoints.split(',').collect::<Vec<_>>(), None)
        .await
        .unwrap();
    client
        .get(key, None)
        .await
        .unwrap()
        .kvs()
        .iter()
        .map(|kv| kv.value().to_vec())
        .collect()
}

/// The busybox test image, built locally from Debian's static busybox.
const TEST_IMAGE: &str = "capstan-test/busybox:1.35";

/// Builds the busybox test image on `docker` unless it is there.
async fn ensure_image(docker: &capstan_runtime_docker::DockerRuntime) {
    if docker.docker().inspect_image(TEST_IMAGE).await.is_err() {
        capstan_runtime_docker::local_image::build_busybox_image(
            docker.docker(),
            TEST_IMAGE,
            Path::new("/bin/busybox"),
        )
        .await
        .expect("building the busybox test image");
    }
}

/// Builds the test image on this machine's engine; false (after the missing-service report)
/// when there is no engine.
async fn ensure_test_image() -> bool {
    match capstan_runtime_docker::DockerRuntime::connect(
        capstan_runtime_docker::DockerRuntimeConfig::new("e2e-images"),
    )
    .await
    {
        Ok(docker) => {
            ensure_image(&docker).await;
            true
        }
        Err(err) => {
            capstan_core::service_gate::missing_service("a Docker engine", &err.to_string());
            false
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `kubectl port-forward pod/<pod> :<port>` and returns what an HTTP GET through the
/// forwarded local port answers.
/// `GET /` on a loopback port; the response, or the error as text.
fn http_get_local(port: u16) -> String {
    use std::io::{Read, Write};
    let attempt = || -> std::io::Result<String> {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
        let mut body = String::new();
        stream.read_to_string(&mut body)?;
        Ok(body)
    };
    attempt().unwrap_or_else(|e| e.to_string())
}

fn port_forward_get(k: &Kubectl, pod: &str, port: u16) -> String {
    port_forward_run(k, pod, port).0
}

/// Runs `kubectl port-forward pod/<pod> :<port>`, sends an HTTP GET through it and returns the
/// answer and what kubectl wrote on stderr.
fn port_forward_run(k: &Kubectl, pod: &str, port: u16) -> (String, String) {
    use std::io::{BufRead, Read, Write};
    let mut child = Command::new(&k.binary)
        .arg("--kubeconfig")
        .arg(&k.kubeconfig)
        .args(["port-forward", &format!("pod/{pod}"), &format!(":{port}")])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    // "Forwarding from 127.0.0.1:40123 -> 8080"
    let local: Option<u16> = first
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok());
    let answer = local.map(|local| {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", local)).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        stream
            .write_all(b"GET /index.html HTTP/1.0\r\nHost: pod\r\n\r\n")
            .unwrap();
        let mut body = String::new();
        let _ = stream.read_to_string(&mut body);
        body
    });
    std::thread::sleep(Duration::from_millis(300));
    let _ = child.kill();
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    let answer =
        answer.unwrap_or_else(|| panic!("kubectl port-forward did not start: {first:?} {stderr}"));
    (answer, stderr)
}

/// `capstan up` with the Docker runtime, then what users do with running pods through kubectl
/// 1.33: logs (--tail, -c, -f, --previous), exec (output and exit code), port-forward (also
/// with 1.27, and a refused port), top; and a clear
/// error for kubectl 1.27's SPDY exec.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_logs_exec_and_top_on_docker() {
    let Some(dir) = kubectl_dir() else { return };
    let docker = match capstan_runtime_docker::DockerRuntime::connect(
        capstan_runtime_docker::DockerRuntimeConfig::new("e2e-images"),
    )
    .await
    {
        Ok(docker) => docker,
        Err(err) => {
            return capstan_core::service_gate::missing_service("a Docker engine", &err.to_string())
        }
    };
    ensure_image(&docker).await;
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut child = start_capstan_with(
        data.path(),
        port,
        &[
            "--runtime",
            "docker",
            "--node-name",
            "e2e-node",
            "--pod-cidr",
            "10.244.203.0/24",
        ],
    );
    let k = Kubectl {
        binary: dir.join("kubectl.1.33"),
        kubeconfig: data.path().join("kubeconfig"),
    };
    let old = Kubectl {
        binary: dir.join("kubectl.1.27"),
        kubeconfig: data.path().join("kubeconfig"),
    };
    let result = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !k.run(&["get", "node", "e2e-node"], None).0 {
            assert!(std::time::Instant::now() < deadline, "the node never registered");
            std::thread::sleep(Duration::from_millis(200));
        }
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: talker, labels: {{app: talker}}}}\nspec:\n  nodeName: e2e-node\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {TEST_IMAGE}\n    command: [sh, -c, 'i=0; while true; do echo line-$i; i=$((i+1)); sleep 0.2; done']\n  - name: side\n    image: {TEST_IMAGE}\n    command: [sh, -c, 'mkdir -p /www && echo forwarded-ok > /www/index.html && exec httpd -f -p 8080 -h /www']\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: crasher}}\nspec:\n  nodeName: e2e-node\n  containers:\n  - name: main\n    image: {TEST_IMAGE}\n    command: [sh, -c, 'echo boom; exit 1']\n"
        );
        k.ok(&["apply", "-f", "-"], Some(&manifest), &["pod/talker created"]);
        k.ok(
            &["wait", "--for=condition=Ready", "pod/talker", "--timeout=60s"],
            None,
            &["condition met"],
        );
        k.ok(&["get", "pods", "-o", "wide"], None, &["talker", "Running", "10.244.203.", "e2e-node"]);
        // `kubectl describe` lists what kubelet and the node controller recorded.
        k.ok(
            &["describe", "pod", "talker"],
            None,
            &["Pulled", "already present on machine", "Created container: side", "Started container main"],
        );
        k.ok(
            &["describe", "node", "e2e-node"],
            None,
            &["Starting kubelet.", "Node e2e-node status is now: NodeReady", "Registered Node e2e-node in Controller"],
        );

        // A NodePort Service reaches the pod through the userspace proxy on loopback.
        k.ok(
            &["expose", "pod", "talker", "--type=NodePort", "--port=80", "--target-port=8080"],
            None,
            &["service/talker exposed"],
        );
        let node_port: u16 = k
            .ok(&["get", "service", "talker", "-o", "jsonpath={.spec.ports[0].nodePort}"], None, &[])
            .trim()
            .parse()
            .expect("a NodePort");
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        loop {
            let body = http_get_local(node_port);
            if body.contains("forwarded-ok") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "NodePort {node_port} never answered: {body}");
            std::thread::sleep(Duration::from_millis(300));
        }
        // Cluster DNS: the pod's resolver points at it and resolves the Service's name.
        let cluster_ip = k.ok(&["get", "service", "talker", "-o", "jsonpath={.spec.clusterIP}"], None, &[]);
        k.ok(
            &["exec", "talker", "-c", "main", "--", "cat", "/etc/resolv.conf"],
            None,
            // Docker's embedded resolver (127.0.0.11) forwards to the cluster DNS on user networks.
            &["search default.svc.cluster.local svc.cluster.local cluster.local", "ndots:5"],
        );
        k.ok(
            &["exec", "talker", "-c", "main", "--", "nslookup", "talker.default.svc.cluster.local"],
            None,
            &[cluster_ip.trim()],
        );
        k.fails(
            &["exec", "talker", "-c", "main", "--", "nslookup", "nothing.default.svc.cluster.local"],
            None,
            &["NXDOMAIN"],
        );
        k.ok(&["delete", "service", "talker"], None, &["deleted"]);

        // logs: --tail and -c.
        std::thread::sleep(Duration::from_secs(1));
        let tail = k.ok(&["logs", "talker", "-c", "main", "--tail", "2"], None, &["line-"]);
        assert_eq!(tail.lines().count(), 2, "{tail}");
        k.ok(&["logs", "talker", "--tail", "1"], None, &["Defaulted container \"main\" out of: main, side"]);
        k.fails(&["logs", "talker", "-c", "nope"], None, &["container nope is not valid for pod talker"]);
        // logs -f keeps streaming.
        let mut follow = Command::new(&k.binary)
            .arg("--kubeconfig")
            .arg(&k.kubeconfig)
            .args(["logs", "-f", "talker", "-c", "main", "--tail", "1"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = follow.stdout.take().unwrap();
        let lines: Vec<String> = {
            use std::io::BufRead;
            std::io::BufReader::new(stdout)
                .lines()
                .take(6)
                .map_while(Result::ok)
                .collect()
        };
        let _ = follow.kill();
        let _ = follow.wait();
        assert_eq!(lines.len(), 6, "logs -f must keep streaming: {lines:?}");
        let numbers: Vec<u64> = lines
            .iter()
            .filter_map(|l| l.strip_prefix("line-")?.parse().ok())
            .collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "{lines:?}");

        // exec: output and exit code.
        k.ok(&["exec", "talker", "-c", "main", "--", "echo", "hello", "exec"], None, &["hello exec"]);
        // The service account's token, the cluster CA and the namespace are mounted where
        // in-cluster clients look; the token authenticates as the pod's account.
        let mounted = "/var/run/secrets/kubernetes.io/serviceaccount";
        k.ok(&["exec", "talker", "-c", "side", "--", "cat", &format!("{mounted}/namespace")], None, &["default"]);
        k.ok(&["exec", "talker", "-c", "main", "--", "cat", &format!("{mounted}/ca.crt")], None, &["BEGIN CERTIFICATE"]);
        let token = k.ok(&["exec", "talker", "-c", "main", "--", "cat", &format!("{mounted}/token")], None, &[]);
        let server = format!("https://127.0.0.1:{port}");
        let pod_config = k.kubeconfig.with_file_name("pod-kubeconfig");
        std::fs::write(
            &pod_config,
            format!("apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: default}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{token: {}}}\n",
                k.kubeconfig.with_file_name("pki").join("ca.crt").display(), token.trim()),
        )
        .unwrap();
        let as_pod = Kubectl { binary: k.binary.clone(), kubeconfig: pod_config };
        as_pod.fails(&["get", "secrets"], None, &["User \"system:serviceaccount:default:default\" cannot list"]);
        let output = Command::new(&k.binary)
            .arg("--kubeconfig")
            .arg(&k.kubeconfig)
            .args(["exec", "talker", "-c", "side", "--", "sh", "-c", "echo from-side; exit 3"])
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(3), "{output:?}");
        assert!(String::from_utf8_lossy(&output.stdout).contains("from-side"));
        // The two containers share the pod's network namespace.
        k.ok(
            &["exec", "talker", "-c", "side", "--", "sh", "-c", "hostname -i 2>/dev/null || ip addr"],
            None,
            &["10.244.203."],
        );
        old.fails(&["exec", "talker", "-c", "main", "--", "echo", "hi"], None, &["SPDY"]);

        // port-forward: kubectl 1.33 (websocket offer declined, SPDY fallback) and 1.27 (SPDY).
        for kubectl in [&k, &old] {
            for _ in 0..2 {
                let body = port_forward_get(kubectl, "talker", 8080);
                assert!(body.contains("forwarded-ok"), "{body}");
            }
        }
        let (_, stderr) = port_forward_run(&k, "talker", 9999);
        assert!(stderr.contains("error forwarding port 9999 to pod default/talker"), "{stderr}");

        // logs --previous after a crash.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, text) = k.run(&["logs", "crasher", "--previous"], None);
            if ok && text.contains("boom") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no previous logs: {text}");
            std::thread::sleep(Duration::from_millis(500));
        }

        // top pods from the node's usage reports.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let (ok, text) = k.run(&["top", "pods"], None);
            if ok && text.contains("talker") && text.contains("CPU(cores)") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "kubectl top pods: {text}");
            std::thread::sleep(Duration::from_secs(1));
        }
        k.ok(&["top", "nodes"], None, &["e2e-node"]);
        k.ok(&["delete", "pod", "talker", "crasher", "--wait=true", "--timeout=60s"], None, &["deleted"]);
        k.fails(&["get", "pod", "talker"], None, &["NotFound"]);
    })
    .await;
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait().unwrap())
        .await
        .unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
    assert!(status.success());
}

const ROLLOUT: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  annotations: {kubernetes.io/change-cause: first}\nspec:\n  replicas: 3\n  selector: {matchLabels: {app: web}}\n  strategy: {rollingUpdate: {maxSurge: 1, maxUnavailable: 0}}\n  template:\n    metadata: {labels: {app: web}}\n    spec:\n      containers: [{name: c, image: \"busybox:1.36\"}]\n";

/// kubectl's rollout commands against Deployments run by the controllers, with pods placed by
/// the scheduler and run by a node agent on the simulated runtime.
#[tokio::test]
async fn kubectl_rollout_status_history_and_undo() {
    let Some(dir) = kubectl_dir() else { return };
    let served = serve(Arc::new(MemoryStore::new())).await;
    let client = served.server.client();
    let controllers = capstan_core::controller::ControllerManager::new(
        client.clone(),
        capstan_core::controller::ControllerManagerConfig::default(),
    )
    .start();
    let node_dir = tempfile::tempdir().unwrap();
    let mut node_config = capstan_core::node::NodeConfig::new("sim-1");
    node_config.root_dir = node_dir.path().to_path_buf();
    node_config.pod_cidr = Some("10.244.7.0/24".into());
    let runtime = Arc::new(capstan_core::runtime::sim::SimRuntime::default());
    let agent = capstan_core::node::NodeAgent::new(client.clone(), runtime, node_config)
        .start()
        .await
        .unwrap();
    let scheduler = capstan_core::scheduler::Scheduler::new(
        client.clone(),
        capstan_core::scheduler::SchedulerConfig::default(),
    )
    .start();
    for version in ["1.33", "1.27"] {
        let k = Kubectl {
            binary: dir.join(format!("kubectl.{version}")),
            kubeconfig: served.kubeconfig.clone(),
        };
        let ns = format!("rollout-{}", version.replace('.', ""));
        tokio::task::spawn_blocking(move || {
            let n = ["-n", ns.as_str()];
            let with = |args: &[&'static str]| -> Vec<String> {
                args.iter().map(|s| s.to_string()).chain(n.iter().map(|s| s.to_string())).collect()
            };
            let run_ok = |args: &[&'static str], expected: &[&str]| {
                let owned = with(args);
                let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
                k.ok(&refs, None, expected)
            };
            let namespace = format!("apiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}}}\n");
            k.ok(&["apply", "-f", "-"], Some(&namespace), &["created"]);
            let apply: Vec<&str> = vec!["apply", "-f", "-", "-n", &ns];
            k.ok(&apply, Some(ROLLOUT), &["deployment.apps/web created"]);
            run_ok(&["rollout", "status", "deployment/web", "--timeout=90s"], &["successfully rolled out"]);
            run_ok(&["set", "image", "deployment/web", "c=busybox:1.37"], &["image updated"]);
            run_ok(&["annotate", "deployment/web", "kubernetes.io/change-cause=second", "--overwrite"], &["deployment.apps/web annotate"]);
            run_ok(&["rollout", "status", "deployment/web", "--timeout=90s"], &["successfully rolled out"]);
            let history = run_ok(&["rollout", "history", "deployment/web"], &["REVISION", "CHANGE-CAUSE"]);
            assert!(history.lines().any(|l| l.trim_start().starts_with('1')), "{history}");
            assert!(history.lines().any(|l| l.trim_start().starts_with('2') && l.contains("second")), "{history}");
            run_ok(&["rollout", "history", "deployment/web", "--revision=1"], &["busybox:1.36"]);
            run_ok(&["rollout", "undo", "deployment/web"], &["rolled back"]);
            run_ok(&["rollout", "status", "deployment/web", "--timeout=90s"], &["successfully rolled out"]);
            let image = run_ok(&["get", "deployment/web", "-o", "jsonpath={.spec.template.spec.containers[0].image}"], &[]);
            assert_eq!(image.trim(), "busybox:1.36");
            let history = run_ok(&["rollout", "history", "deployment/web"], &[]);
            assert!(history.lines().any(|l| l.trim_start().starts_with('3')), "the rollback is revision 3: {history}");
            assert!(!history.lines().any(|l| l.trim_start().starts_with("1 ")), "revision 1 became 3: {history}");
            let pods = run_ok(&["get", "pods", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.spec.containers[0].image} {.status.phase}{\"\\n\"}{end}"], &[]);
            let running: Vec<&str> = pods.lines().filter(|l| l.ends_with("Running")).collect();
            assert!(running.len() >= 3 && running.iter().all(|l| l.starts_with("busybox:1.36")), "{pods}");
            run_ok(&["rollout", "pause", "deployment/web"], &["paused"]);
            run_ok(&["set", "image", "deployment/web", "c=busybox:1.38"], &["image updated"]);
            k.fails(&with(&["rollout", "undo", "deployment/web"]).iter().map(String::as_str).collect::<Vec<_>>(), None, &["paused"]);
            run_ok(&["rollout", "resume", "deployment/web"], &["resumed"]);
            run_ok(&["rollout", "status", "deployment/web", "--timeout=90s"], &["successfully rolled out"]);
            run_ok(&["get", "rs", "-l", "app=web"], &["web-"]);
            run_ok(&["delete", "deployment", "web"], &["deleted"]);
        })
        .await
        .unwrap();
    }
    scheduler.stop().await;
    agent.stop().await;
    controllers.stop().await;
}

const WORKLOADS: &str = r#"
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: agent}
spec:
  selector: {matchLabels: {app: agent}}
  template:
    metadata: {labels: {app: agent}}
    spec:
      containers: [{name: agent, image: "busybox:1.36"}]
---
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{port: 5432}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  replicas: 2
  serviceName: db
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      containers: [{name: db, image: "busybox:1.36"}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
      annotations: {sim.capstan.dev/cpu-millis: "300"}
    spec:
      containers:
      - name: web
        image: "busybox:1.36"
        resources: {requests: {cpu: 100m}}
"#;

const BLOCKING_BUDGET: &str = "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: web}\nspec:\n  maxUnavailable: 0\n  selector: {matchLabels: {app: web}}\n";

#[tokio::test]
async fn kubectl_workload_rollouts_autoscale_cordon_and_drain() {
    let Some(dir) = kubectl_dir() else { return };
    let served = serve(Arc::new(MemoryStore::new())).await;
    let client = served.server.client();
    let config = capstan_core::controller::ControllerManagerConfig {
        autoscaler: capstan_core::controller::AutoscalerConfig {
            sync_period: std::time::Duration::from_secs(1),
        },
        ..Default::default()
    };
    let controllers =
        capstan_core::controller::ControllerManager::new(client.clone(), config).start();
    let mut agents = Vec::new();
    let mut dirs = Vec::new();
    for (i, name) in ["sim-a", "sim-b"].into_iter().enumerate() {
        let node_dir = tempfile::tempdir().unwrap();
        let mut node_config = capstan_core::node::NodeConfig::new(name);
        node_config.root_dir = node_dir.path().to_path_buf();
        node_config.pod_cidr = Some(format!("10.244.{}.0/24", 20 + i));
        node_config.stats_interval = std::time::Duration::from_millis(500);
        let runtime = Arc::new(capstan_core::runtime::sim::SimRuntime::new(
            capstan_core::runtime::sim::SimConfig {
                pod_subnet: [10, 244, 20 + i as u8],
                ..Default::default()
            },
        ));
        let agent = capstan_core::node::NodeAgent::new(client.clone(), runtime, node_config)
            .start()
            .await
            .unwrap();
        agents.push(agent);
        dirs.push(node_dir);
    }
    let scheduler = capstan_core::scheduler::Scheduler::new(
        client.clone(),
        capstan_core::scheduler::SchedulerConfig::default(),
    )
    .start();
    let k = Kubectl {
        binary: dir.join("kubectl.1.33"),
        kubeconfig: served.kubeconfig.clone(),
    };
    tokio::task::spawn_blocking(move || {
        let ns = "workloads";
        k.ok(&["apply", "-f", "-"], Some("apiVersion: v1\nkind: Namespace\nmetadata: {name: workloads}\n"), &["created"]);
        let n = |args: &[&str]| -> Vec<String> {
            args.iter().map(|s| s.to_string()).chain(["-n".to_string(), ns.to_string()]).collect()
        };
        let ok = |args: &[&str], expected: &[&str]| {
            let owned = n(args);
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            k.ok(&refs, None, expected)
        };
        let fails = |args: &[&str], expected: &[&str]| {
            let owned = n(args);
            let refs: Vec<&str> = owned.iter().map(String::as_str).collect();
            k.fails(&refs, None, expected)
        };
        // kubectl 1.33's typed commands send protobuf bodies.
        k.ok(&["create", "namespace", "from-protobuf"], None, &["namespace/from-protobuf created"]);
        ok(&["create", "configmap", "settings", "--from-literal=mode=fast"], &["configmap/settings created"]);
        ok(&["create", "secret", "generic", "token", "--from-literal=key=s3cret"], &["secret/token created"]);
        let mode = ok(&["get", "configmap", "settings", "-o", "jsonpath={.data.mode}"], &[]);
        assert_eq!(mode.trim(), "fast");
        let key = ok(&["get", "secret", "token", "-o", "jsonpath={.data.key}"], &[]);
        assert_eq!(key.trim(), "czNjcmV0", "base64 of s3cret");
        ok(&["create", "poddisruptionbudget", "pb", "--selector=app=pb", "--min-available=1"], &["poddisruptionbudget.policy/pb created"]);
        // A protobuf field that is not converted gets a clear 415, not a silent drop.
        k.fails(&["create", "clusterrole", "pb-aggregated", "--aggregation-rule=rbac.example.com/aggregate=true"], None, &["not converted yet"]);
        k.ok(&["apply", "-n", ns, "-f", "-"], Some(WORKLOADS), &["daemonset.apps/agent created", "statefulset.apps/db created"]);
        // Rollouts of DaemonSets and StatefulSets, as kubectl reads their status.
        ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"], &["successfully rolled out"]);
        ok(&["rollout", "status", "statefulset/db", "--timeout=60s"], &["roll out complete: 2 new pods have been updated"]);
        ok(&["set", "image", "statefulset/db", "db=busybox:1.37"], &["image updated"]);
        ok(&["rollout", "status", "statefulset/db", "--timeout=60s"], &["roll out complete: 2 new pods have been updated"]);
        let images = ok(&["get", "pods", "-l", "app=db", "-o", "jsonpath={range .items[*]}{.metadata.name}={.spec.containers[0].image} {end}"], &[]);
        assert!(images.contains("db-0=busybox:1.37") && images.contains("db-1=busybox:1.37"), "{images}");
        ok(&["set", "image", "daemonset/agent", "agent=busybox:1.37"], &["image updated"]);
        ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"], &["successfully rolled out"]);
        let history = ok(&["rollout", "history", "daemonset/agent"], &["REVISION"]);
        assert!(history.lines().any(|l| l.trim_start().starts_with('2')), "{history}");
        ok(&["rollout", "undo", "daemonset/agent"], &["rolled back"]);
        ok(&["rollout", "status", "daemonset/agent", "--timeout=60s"], &["successfully rolled out"]);
        let image = ok(&["get", "ds", "agent", "-o", "jsonpath={.spec.template.spec.containers[0].image}"], &[]);
        assert_eq!(image.trim(), "busybox:1.36");
        // Autoscaling: 300m used of 100m requested against 50% → up to the maximum.
        ok(&["autoscale", "deployment", "web", "--min=1", "--max=3", "--cpu-percent=50"], &["autoscaled"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let replicas = ok(&["get", "deployment", "web", "-o", "jsonpath={.spec.replicas}"], &[]);
            if replicas.trim() == "3" {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the autoscaler never scaled web to 3 (at {replicas})");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        ok(&["get", "hpa", "web"], &["web", "Deployment/web"]);
        // Cordon and uncordon.
        k.ok(&["cordon", "sim-b"], None, &["node/sim-b cordoned"]);
        k.ok(&["get", "node", "sim-b"], None, &["SchedulingDisabled"]);
        k.ok(&["uncordon", "sim-b"], None, &["node/sim-b uncordoned"]);
        // A budget allowing no disruption holds a drain back (429s until the timeout) …
        k.ok(&["apply", "-n", ns, "-f", "-"], Some(BLOCKING_BUDGET), &["poddisruptionbudget.policy/web created"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while !ok(&["get", "pdb", "web", "-o", "jsonpath={.status.expectedPods}"], &[]).trim().eq("3") {
            assert!(std::time::Instant::now() < deadline, "the budget never saw the pods");
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        let on_a = ok(&["get", "pods", "-l", "app=web", "--field-selector", "spec.nodeName=sim-a", "-o", "name"], &[]);
        let drain = ["drain", "sim-a", "--ignore-daemonsets", "--timeout=8s"];
        if on_a.trim().is_empty() {
            // Nothing of web's on sim-a: the budget cannot block; drain sim-b instead.
            k.fails(&["drain", "sim-b", "--ignore-daemonsets", "--timeout=8s"], None, &["will retry after 5s", "disruption budget"]);
            k.ok(&["uncordon", "sim-b"], None, &["uncordoned"]);
        } else {
            // kubectl reports the budget and retries on its own (no Retry-After for client-go
            // to retry silently on).
            k.fails(&drain, None, &["will retry after 5s", "disruption budget"]);
        }
        // … and once it is gone the node drains: its pods move to the other node.
        ok(&["delete", "pdb", "web"], &["deleted"]);
        k.ok(&["drain", "sim-a", "--ignore-daemonsets", "--timeout=60s"], None, &["node/sim-a drained"]);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let placed = ok(&["get", "pods", "-o", "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase}{\"\\n\"}{end}"], &[]);
            let moved = placed.lines().filter(|l| !l.starts_with("agent-")).all(|l| l.contains(" sim-b Running"));
            let count = placed.lines().filter(|l| l.starts_with("web-") || l.starts_with("db-")).count();
            if moved && count >= 5 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "pods did not move off the drained node:\n{placed}");
            std::thread::sleep(std::time::Duration::from_millis(300));
        }
        k.ok(&["uncordon", "sim-a"], None, &["node/sim-a uncordoned"]);
        fails(&["rollout", "status", "deployment/nonexistent", "--timeout=2s"], &["not found"]);
        ok(&["delete", "hpa", "web"], &["deleted"]);
    })
    .await
    .unwrap();
    scheduler.stop().await;
    for agent in agents {
        agent.stop().await;
    }
    controllers.stop().await;
}
