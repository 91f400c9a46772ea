//! Pods reaching Services by DNS name and ClusterIP on real Docker engines.
//!
//! `capstan up --proxy iptables` on this machine: its pods sit on a routed bridge, confined to
//! the cluster's addresses, and reach a Service's pods through the iptables rules.
//!
//! A cluster across "hosts": `capstan server` in one network namespace, and two `capstan agent`
//! hosts, each a network namespace with its own dockerd (own data root, exec root, socket and
//! containerd namespace), joined by a bridge with no route out (DESIGN.md, network safety).
//! The agents get their pod subnets from the server's node IPAM, program host-gw routes and
//! iptables service rules, and serve cluster DNS. Driven by kubectl 1.33 from the server's
//! namespace: a pod reaches a Service by DNS name and by ClusterIP, landing on pods on its own
//! host and on the other one, and reaches the other host's pod by pod IP.

use super::{ensure_test_image, free_port, kubectl_dir, start_capstan_with, Kubectl, TEST_IMAGE};
use capstan_core::proxy::testkit::network_namespaces_available;
use capstan_core::proxy::ProxyBackend;
use capstan_core::service_gate::missing_service;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVER_IP: &str = "10.250.10.1";

/// Standard output of a finished `program args`, or everything it said when it failed.
fn outcome(program: &str, args: &[&str], out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

fn run(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    outcome(program, args, out)
}

fn ip(args: &[&str]) {
    run("ip", args).expect("ip");
}

/// Everything the test made; torn down on drop, in reverse.
struct Lab {
    id: String,
    /// The kubeconfig kubectl uses (default: the server's in `ctl/`).
    kubeconfig: PathBuf,
    dir: tempfile::TempDir,
    namespaces: Vec<String>,
    children: Vec<Child>,
    dockerds: Vec<(Child, String)>,
}

impl Lab {
    /// A one-use bootstrap token from `capstan token`, run in the servers' namespace against
    /// the server whose data dir is `server_dir`.
    fn bootstrap_token(&self, server_dir: &Path) -> String {
        let made = self
            .command_in(
                &self.namespace("ctl"),
                env!("CARGO_BIN_EXE_capstan"),
                &["token", "--data-dir", server_dir.to_str().expect("path")],
            )
            .output()
            .expect("capstan token");
        assert!(
            made.status.success(),
            "{}",
            String::from_utf8_lossy(&made.stderr)
        );
        String::from_utf8_lossy(&made.stdout).trim().to_string()
    }

    fn namespace(&self, role: &str) -> String {
        format!("cap-{role}-{}", self.id)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The server's namespace with the `lan` bridge at `SERVER_IP`; hosts join it.
    fn create() -> Lab {
        // Unique per lab: tests in this process build labs at the same time.
        static LABS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let id = format!(
            "{}-{}",
            std::process::id(),
            LABS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let mut lab = Lab {
            id,
            kubeconfig: dir.path().join("ctl/kubeconfig"),
            dir,
            namespaces: Vec::new(),
            children: Vec::new(),
            dockerds: Vec::new(),
        };
        let ctl = lab.namespace("ctl");
        ip(&["netns", "add", &ctl]);
        lab.namespaces.push(ctl.clone());
        ip(&["-n", &ctl, "link", "set", "lo", "up"]);
        ip(&["-n", &ctl, "link", "add", "lan", "type", "bridge"]);
        ip(&[
            "-n",
            &ctl,
            "addr",
            "add",
            &format!("{SERVER_IP}/24"),
            "dev",
            "lan",
        ]);
        ip(&["-n", &ctl, "link", "set", "lan", "up"]);
        lab
    }

    /// A host namespace on the bridge at `address`.
    fn add_host(&mut self, role: &str, address: &str) -> String {
        let (ctl, host) = (self.namespace("ctl"), self.namespace(role));
        ip(&["netns", "add", &host]);
        self.namespaces.push(host.clone());
        ip(&["-n", &host, "link", "set", "lo", "up"]);
        let port = format!("to-{role}");
        ip(&[
            "-n", &ctl, "link", "add", &port, "type", "veth", "peer", "name", "uplink", "netns",
            &host,
        ]);
        ip(&["-n", &ctl, "link", "set", &port, "master", "lan", "up"]);
        ip(&[
            "-n",
            &host,
            "addr",
            "add",
            &format!("{address}/24"),
            "dev",
            "uplink",
        ]);
        ip(&["-n", &host, "link", "set", "uplink", "up"]);
        host
    }

    /// `program args` inside `namespace` (nsenter keeps /sys and the cgroup mounts dockerd
    /// needs, unlike `ip netns exec`).
    fn command_in(&self, namespace: &str, program: &str, args: &[&str]) -> Command {
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net=/run/netns/{namespace}"))
            .arg(program)
            .args(args);
        command
    }

    /// Starts a dockerd in `namespace`; returns its socket once it answers.
    fn start_dockerd(&mut self, namespace: &str, role: &str) -> String {
        let root = self.path(&format!("docker-{role}"));
        // Unix socket paths are short: keep the exec root under /run.
        let exec_root = format!("/run/capstan-e2e-{}-{role}", self.id);
        let socket = format!("unix://{exec_root}.sock");
        let log = std::fs::File::create(self.path(&format!("dockerd-{role}.log"))).expect("log");
        let child = self
            .command_in(
                namespace,
                "dockerd",
                &[
                    "--data-root",
                    root.to_str().expect("path"),
                    "--exec-root",
                    &exec_root,
                    "--pidfile",
                    &format!("{exec_root}.pid"),
                    "-H",
                    &socket,
                    "--bridge",
                    "none",
                    "--containerd-namespace",
                    &format!("capstan-e2e-{}-{role}", self.id),
                    "--containerd-plugins-namespace",
                    &format!("capstan-e2e-{}-{role}-plugins", self.id),
                ],
            )
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start dockerd");
        self.dockerds.push((child, socket.clone()));
        let deadline = Instant::now() + Duration::from_secs(60);
        while run("docker", &["-H", &socket, "version"]).is_err() {
            assert!(
                Instant::now() < deadline,
                "dockerd in {namespace} did not start: {}",
                std::fs::read_to_string(self.path(&format!("dockerd-{role}.log")))
                    .unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        // No registry: the test image comes from this machine's engine.
        let saved = self.path("image.tar");
        if !saved.exists() {
            run(
                "docker",
                &["save", "-o", saved.to_str().expect("path"), TEST_IMAGE],
            )
            .expect("docker save");
        }
        run(
            "docker",
            &["-H", &socket, "load", "-i", saved.to_str().expect("path")],
        )
        .expect("docker load");
        socket
    }

    /// Starts `capstan args` in `namespace` and waits for a line containing `ready_line`.
    fn start_capstan(
        &mut self,
        namespace: &str,
        args: &[&str],
        env: &[(&str, &str)],
        ready_line: &str,
    ) -> u32 {
        let mut command = self.command_in(namespace, env!("CARGO_BIN_EXE_capstan"), args);
        command
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().expect("start capstan");
        let pid = child.id();
        let stdout = child.stdout.take().expect("stdout");
        let (lines_tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("[capstan] {line}");
                let _ = lines_tx.send(line);
            }
        });
        self.children.push(child);
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(ready_line) => break,
                Ok(_) => {}
                Err(_) => panic!("capstan {} never said {ready_line:?}", args.join(" ")),
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        std::thread::spawn(move || while lines.recv().is_ok() {});
        pid
    }

    /// kubectl 1.33 from the server's namespace.
    fn kubectl(
        &self,
        kubectl: &Path,
        args: &[&str],
        input: Option<&str>,
    ) -> Result<String, String> {
        let kubeconfig = self.kubeconfig.clone();
        let mut command = self.command_in(
            &self.namespace("ctl"),
            kubectl.to_str().expect("path"),
            &[&["--kubeconfig", kubeconfig.to_str().expect("path")], args].concat(),
        );
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|e| e.to_string())?;
        if let Some(text) = input {
            use std::io::Write;
            let _ = child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes());
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        outcome("kubectl", args, out)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // Last started, first stopped: agents, then servers, then etcd.
        for child in self.children.iter_mut().rev() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        for (child, socket) in &mut self.dockerds {
            if let Ok(ids) = run("docker", &["-H", socket, "ps", "-aq"]) {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                if !ids.is_empty() {
                    let _ = run("docker", &[&["-H", socket, "rm", "-f"], &ids[..]].concat());
                }
            }
            let _ = run("docker", &["-H", socket, "network", "prune", "-f"]);
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
        for namespace in self.namespaces.iter().rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", namespace])
                .status();
        }
        for (_, socket) in &self.dockerds {
            let exec_root = socket
                .trim_start_matches("unix://")
                .trim_end_matches(".sock");
            let _ = std::fs::remove_dir_all(exec_root);
            let _ = std::fs::remove_file(format!("{exec_root}.sock"));
            let _ = std::fs::remove_file(format!("{exec_root}.pid"));
        }
    }
}

fn dockerd_available() -> Result<(), String> {
    run("dockerd", &["--version"]).map(drop)
}

fn manifests() -> String {
    format!(
        r#"apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: echo}}
spec:
  selector: {{matchLabels: {{app: echo}}}}
  template:
    metadata: {{labels: {{app: echo}}}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {TEST_IMAGE}
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
        ports: [{{containerPort: 8080, name: http}}]
        readinessProbe:
          tcpSocket: {{port: 8080}}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata: {{name: echo}}
spec:
  selector: {{app: echo}}
  ports: [{{port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client}}
spec:
  nodeName: host-a
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {TEST_IMAGE}
    command: [sleep, '3600']
"#
    )
}

/// Fetches `url` `times` times from the client pod; the distinct answers. (`wget -T`
/// crashes Debian's static busybox, so `timeout` bounds each fetch.)
fn answers(lab: &Lab, kubectl: &Path, url: &str, times: usize) -> Vec<String> {
    let script =
        format!("for i in $(seq 1 {times}); do timeout 5 wget -qO- {url} || echo FAILED; done");
    let out = lab
        .kubectl(
            kubectl,
            &["exec", "client", "--", "sh", "-c", &script],
            None,
        )
        .unwrap_or_else(|e| e);
    let mut distinct: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
    distinct.sort();
    distinct.dedup();
    distinct
}

#[test]
fn pods_reach_services_across_two_docker_hosts() {
    let Some(kubectl_dir) = kubectl_dir() else {
        return;
    };
    if let Err(why) = network_namespaces_available() {
        return missing_service("root with network namespaces", &why);
    }
    if let Err(why) = dockerd_available() {
        return missing_service("dockerd", &why);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if !runtime.block_on(ensure_test_image()) {
        return;
    }
    let kubectl = kubectl_dir.join("kubectl.1.33");
    let mut lab = Lab::create();
    let ctl = lab.namespace("ctl");
    let server_dir = lab.path("ctl");
    // A secure server (TLS, RBAC, Node authorizer); each agent joins with a bootstrap token of
    // its own and runs with the node certificate it is issued.
    lab.start_capstan(
        &ctl,
        &[
            "server",
            "--listen",
            &format!("{SERVER_IP}:6443"),
            "--store",
            "memory",
            "--data-dir",
            server_dir.to_str().expect("path"),
        ],
        &[],
        "control plane ready",
    );
    let ca = server_dir.join("pki").join("ca.crt");
    for (role, address) in [("host-a", "10.250.10.11"), ("host-b", "10.250.10.12")] {
        let namespace = lab.add_host(role, address);
        let socket = lab.start_dockerd(&namespace, role);
        let agent_dir = lab.path(role);
        let token = lab.bootstrap_token(&server_dir);
        lab.start_capstan(
            &namespace,
            &[
                "agent",
                "--token",
                &token,
                "--ca-cert",
                ca.to_str().expect("path"),
                "--server",
                &format!("https://{SERVER_IP}:6443"),
                "--node-name",
                role,
                "--node-ip",
                address,
                "--runtime",
                "docker",
                "--proxy",
                "iptables",
                "--pod-network",
                "host-gw",
                "--data-dir",
                agent_dir.to_str().expect("path"),
            ],
            &[("DOCKER_HOST", &socket)],
            "agent joined",
        );
    }
    let cidrs = lab
        .kubectl(
            &kubectl,
            &[
                "get",
                "nodes",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}={.spec.podCIDR} {end}",
            ],
            None,
        )
        .expect("nodes");
    assert!(
        cidrs.contains("host-a=10.244.") && cidrs.contains("host-b=10.244."),
        "node IPAM gave both hosts subnets: {cidrs}"
    );
    lab.kubectl(&kubectl, &["apply", "-f", "-"], Some(&manifests()))
        .expect("apply");
    lab.kubectl(
        &kubectl,
        &["rollout", "status", "daemonset/echo", "--timeout=120s"],
        None,
    )
    .expect("the echo DaemonSet runs on both hosts");
    lab.kubectl(
        &kubectl,
        &[
            "wait",
            "--for=condition=Ready",
            "pod/client",
            "--timeout=60s",
        ],
        None,
    )
    .expect("client pod ready");
    let pods = lab
        .kubectl(
            &kubectl,
            &[
                "get",
                "pods",
                "-l",
                "app=echo",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name},{.spec.nodeName},{.status.podIP} {end}",
            ],
            None,
        )
        .expect("echo pods");
    let pods: Vec<(String, String, String)> = pods
        .split_whitespace()
        .map(|p| {
            let parts: Vec<&str> = p.split(',').collect();
            (parts[0].into(), parts[1].into(), parts[2].into())
        })
        .collect();
    assert_eq!(pods.len(), 2, "one echo pod per host: {pods:?}");
    let mut names: Vec<String> = pods.iter().map(|p| p.0.clone()).collect();
    names.sort();
    let remote = pods
        .iter()
        .find(|p| p.1 == "host-b")
        .expect("an echo pod on host-b");

    // By pod IP, across hosts (host-gw routes).
    let direct = answers(&lab, &kubectl, &format!("http://{}:8080/", remote.2), 3);
    assert_eq!(direct, vec![remote.0.clone()], "pod IP across hosts");

    // By ClusterIP and by DNS name: both pods answer, the local and the remote one.
    let cluster_ip = lab
        .kubectl(
            &kubectl,
            &["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"],
            None,
        )
        .expect("cluster IP");
    let deadline = Instant::now() + Duration::from_secs(30);
    for url in [
        format!("http://{cluster_ip}/"),
        "http://echo/".to_string(),
        "http://echo.default.svc.cluster.local/".to_string(),
    ] {
        loop {
            let seen = answers(&lab, &kubectl, &url, 24);
            if seen == names {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{url} should reach both echo pods {names:?}, saw {seen:?}"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Fetches `url` `times` times from pod `client` through `k`; the distinct answers.
fn answers_via(k: &Kubectl, url: &str, times: usize) -> Vec<String> {
    let script =
        format!("for i in $(seq 1 {times}); do timeout 5 wget -qO- {url} || echo FAILED; done");
    let (_, out) = k.run(&["exec", "client", "--", "sh", "-c", &script], None);
    let mut distinct: Vec<String> = out.lines().map(|l| l.trim().to_string()).collect();
    distinct.sort();
    distinct.dedup();
    distinct
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capstan_up_with_iptables_serves_cluster_ips_to_pods() {
    let Some(dir) = kubectl_dir() else { return };
    if let Err(why) = network_namespaces_available() {
        return missing_service("root (iptables and routes)", &why);
    }
    if !ensure_test_image().await {
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut child = start_capstan_with(
        data.path(),
        port,
        &[
            "--runtime",
            "docker",
            "--node-name",
            "e2e-iptables",
            "--pod-cidr",
            "10.244.204.0/24",
            "--proxy",
            "iptables",
            "--pod-network",
            "host-gw",
        ],
    );
    let k = Kubectl {
        binary: dir.join("kubectl.1.33"),
        kubeconfig: data.path().join("kubeconfig"),
    };
    let result = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !k.run(&["get", "node", "e2e-iptables"], None).0 {
            assert!(Instant::now() < deadline, "the node never registered");
            std::thread::sleep(Duration::from_millis(200));
        }
        let manifests = manifests().replace("nodeName: host-a", "nodeName: e2e-iptables");
        // Two echo pods on the one node: a Deployment instead of the DaemonSet.
        let manifests = manifests
            .replace("kind: DaemonSet", "kind: Deployment")
            .replace(
                "spec:\n  selector: {matchLabels: {app: echo}}",
                "spec:\n  replicas: 2\n  selector: {matchLabels: {app: echo}}",
            );
        k.ok(
            &["apply", "-f", "-"],
            Some(&manifests),
            &["deployment.apps/echo created"],
        );
        k.ok(
            &["rollout", "status", "deployment/echo", "--timeout=120s"],
            None,
            &["successfully rolled out"],
        );
        k.ok(
            &[
                "wait",
                "--for=condition=Ready",
                "pod/client",
                "--timeout=60s",
            ],
            None,
            &["condition met"],
        );
        let names = k.ok(
            &[
                "get",
                "pods",
                "-l",
                "app=echo",
                "-o",
                "jsonpath={.items[*].metadata.name}",
            ],
            None,
            &[],
        );
        let mut names: Vec<String> = names.split_whitespace().map(str::to_string).collect();
        names.sort();
        assert_eq!(names.len(), 2, "{names:?}");
        let cluster_ip = k.ok(
            &["get", "service", "echo", "-o", "jsonpath={.spec.clusterIP}"],
            None,
            &[],
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for url in [format!("http://{cluster_ip}/"), "http://echo/".to_string()] {
            loop {
                let seen = answers_via(&k, &url, 24);
                if seen == names {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{url} should reach both echo pods {names:?}, saw {seen:?}"
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
        // The pods are confined: forwarded traffic from them to outside the cluster is refused.
        let saved = run("iptables-save", &["-t", "filter"]).expect("iptables-save");
        assert!(
            saved.contains("-A CAPSTAN-POD-EGRESS -s 10.244.0.0/16 ! -d 10.244.0.0/16"),
            "{saved}"
        );
        k.ok(&["delete", "deployment", "echo"], None, &["deleted"]);
        k.ok(
            &["delete", "pod", "client", "--wait=true", "--timeout=60s"],
            None,
            &["deleted"],
        );
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join");
    // The rules outlive the process by design (traffic keeps flowing across restarts); this
    // machine's other tests must not see them.
    capstan_net_iptables::IptablesProxy::new(capstan_net_iptables::IptablesConfig::default())
        .await
        .expect("iptables")
        .cleanup()
        .await
        .expect("cleanup");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
    assert!(status.expect("wait").success());
}

/// Two `capstan server`s on a three-member etcd and two Docker hosts: when the leading server
/// dies the other one's scheduler and controllers take over; when an etcd member dies the API
/// keeps serving; when a host's agent stops its node goes not ready and its pods are recreated
/// on the other host.
#[cfg(feature = "etcd")]
#[test]
fn the_cluster_survives_a_lost_server_and_a_lost_host() {
    let Some(kubectl_dir) = kubectl_dir() else {
        return;
    };
    if let Err(why) = network_namespaces_available() {
        return missing_service("root with network namespaces", &why);
    }
    if let Err(why) = run("etcd", &["--version"]).and(dockerd_available()) {
        return missing_service("etcd and dockerd", &why);
    }
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    if !runtime.block_on(ensure_test_image()) {
        return;
    }
    let kubectl = kubectl_dir.join("kubectl.1.33");
    let mut lab = Lab::create();
    let ctl = lab.namespace("ctl");
    // A three-member etcd inside the servers' namespace, on its loopback.
    let members: Vec<(String, u16, u16)> = (0..3)
        .map(|i| (format!("e2e{i}"), 23790 + i, 23800 + i))
        .collect();
    let initial_cluster = members
        .iter()
        .map(|(name, _, peer)| format!("{name}=http://127.0.0.1:{peer}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut etcd_pids = Vec::new();
    for (name, client, peer) in &members {
        let data = lab.path(&format!("etcd-{name}"));
        let client_url = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let etcd = lab
            .command_in(
                &ctl,
                "etcd",
                &[
                    "--name",
                    name,
                    "--data-dir",
                    data.to_str().expect("path"),
                    "--listen-client-urls",
                    &client_url,
                    "--advertise-client-urls",
                    &client_url,
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                    "--initial-cluster",
                    &initial_cluster,
                ],
            )
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start etcd");
        etcd_pids.push(etcd.id());
        lab.children.push(etcd);
    }
    let ctl_for_probe = ctl.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    while capstan_core::proxy::testkit::in_namespace(&ctl_for_probe, || {
        (23790..23793).all(|port| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok())
    }) != Ok(true)
    {
        assert!(Instant::now() < deadline, "etcd did not start");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Secure servers (TLS, RBAC, Node authorizer) sharing one cluster CA, service-account key
    // and encryption key: the first creates the CA; the second starts from a copy of it, as a
    // second control-plane machine would.
    let encryption_key = lab.path("secrets.key");
    std::fs::write(
        &encryption_key,
        "key1:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=\n",
    )
    .expect("write the encryption key");
    let mut servers: Vec<(u32, u16, PathBuf)> = Vec::new();
    for (port, dir) in [(6443, "ctl-a"), (6444, "ctl-b")] {
        let data = lab.path(dir);
        if let Some((_, _, first)) = servers.first() {
            std::fs::create_dir_all(data.join("pki")).expect("pki dir");
            for file in ["ca.crt", "ca.key", "service-account.key"] {
                std::fs::copy(first.join("pki").join(file), data.join("pki").join(file))
                    .expect("copy the shared PKI");
            }
        }
        let pid = lab.start_capstan(
            &ctl,
            &[
                "server",
                "--listen",
                &format!("{SERVER_IP}:{port}"),
                "--encryption-key-file",
                encryption_key.to_str().expect("path"),
                "--store",
                "etcd://127.0.0.1:23790,127.0.0.1:23791,127.0.0.1:23792",
                "--node-monitor-grace-period",
                "6s",
                "--data-dir",
                data.to_str().expect("path"),
            ],
            &[],
            "control plane ready",
        );
        servers.push((pid, port, data));
    }
    // Whoever leads the scheduler is the one to lose; everything else talks to the other.
    lab.kubeconfig = servers[0].2.join("kubeconfig");
    let deadline = Instant::now() + Duration::from_secs(30);
    let holder = loop {
        let holder = lab
            .kubectl(
                &kubectl,
                &[
                    "get",
                    "lease",
                    "-n",
                    "kube-system",
                    "capstan-scheduler",
                    "-o",
                    "jsonpath={.spec.holderIdentity}",
                ],
                None,
            )
            .unwrap_or_default();
        if !holder.is_empty() {
            break holder;
        }
        assert!(Instant::now() < deadline, "no scheduler leader");
        std::thread::sleep(Duration::from_millis(300));
    };
    let leader = servers
        .iter()
        .position(|(pid, _, _)| holder.ends_with(&format!("-{pid}")))
        .unwrap_or_else(|| panic!("the leader {holder} is one of the servers"));
    let survivor = &servers[1 - leader];
    lab.kubeconfig = survivor.2.join("kubeconfig");
    let survivor_url = format!("https://{SERVER_IP}:{}", survivor.1);
    // One CA: the leader's admin credentials work on the survivor, and a Secret written
    // through the leader (encrypted in etcd) reads back through the survivor.
    let leader_kubeconfig = servers[leader].2.join("kubeconfig");
    let as_leader_admin = |args: &[&str]| {
        let mut full = vec![
            "--kubeconfig",
            leader_kubeconfig.to_str().expect("path"),
            "--server",
            &survivor_url,
        ];
        full.extend_from_slice(args);
        lab.kubectl(&kubectl, &full, None)
    };
    as_leader_admin(&[
        "create",
        "secret",
        "generic",
        "shared",
        "--from-literal=k=v",
    ])
    .expect("create a Secret with the leader's credentials on the survivor");
    let leader_url = format!("https://{SERVER_IP}:{}", servers[leader].1);
    let read_back = lab
        .kubectl(
            &kubectl,
            &[
                "--kubeconfig",
                survivor.2.join("kubeconfig").to_str().expect("path"),
                "--server",
                &leader_url,
                "get",
                "secret",
                "shared",
                "-o",
                "jsonpath={.data.k}",
            ],
            None,
        )
        .expect("read the Secret through the leader");
    assert_eq!(read_back, "dg==");
    let ca = survivor.2.join("pki").join("ca.crt");
    for (role, address) in [("host-a", "10.250.10.11"), ("host-b", "10.250.10.12")] {
        let namespace = lab.add_host(role, address);
        let socket = lab.start_dockerd(&namespace, role);
        let agent_dir = lab.path(role);
        let token = lab.bootstrap_token(&survivor.2);
        lab.start_capstan(
            &namespace,
            &[
                "agent",
                "--token",
                &token,
                "--ca-cert",
                ca.to_str().expect("path"),
                "--server",
                &survivor_url,
                "--node-name",
                role,
                "--node-ip",
                address,
                "--runtime",
                "docker",
                "--proxy",
                "iptables",
                "--pod-network",
                "host-gw",
                "--data-dir",
                agent_dir.to_str().expect("path"),
            ],
            &[("DOCKER_HOST", &socket)],
            "agent joined",
        );
    }
    // Both nodes are Ready before the spread is asserted: ScheduleAnyway may place both
    // replicas on one host while the other is still not ready.
    lab.kubectl(
        &kubectl,
        &[
            "wait",
            "--for=condition=Ready",
            "node/host-a",
            "node/host-b",
            "--timeout=60s",
        ],
        None,
    )
    .expect("both hosts' nodes become Ready");
    // Two replicas, one per host; they leave an unreachable node after two seconds.
    let web = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 1
      topologySpreadConstraints:
      - {{maxSkew: 1, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: ScheduleAnyway, labelSelector: {{matchLabels: {{app: web}}}}}}
      tolerations:
      - {{key: node.kubernetes.io/unreachable, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}
      - {{key: node.kubernetes.io/not-ready, operator: Exists, effect: NoExecute, tolerationSeconds: 2}}
      containers:
      - name: httpd
        image: {TEST_IMAGE}
        command: [sh, -c, 'mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 8080 -h /www']
"#
    );
    lab.kubectl(&kubectl, &["apply", "-f", "-"], Some(&web))
        .expect("apply web");
    lab.kubectl(
        &kubectl,
        &["rollout", "status", "deployment/web", "--timeout=120s"],
        None,
    )
    .expect("web rolls out");
    let placements = || {
        lab.kubectl(
            &kubectl,
            &["get", "pods", "-l", "app=web", "-o", "jsonpath={range .items[*]}{.spec.nodeName},{.status.phase},{.metadata.deletionTimestamp} {end}"],
            None,
        )
        .unwrap_or_default()
    };
    let spread = placements();
    assert!(
        spread.contains("host-a,Running") && spread.contains("host-b,Running"),
        "one replica per host: {spread}"
    );

    // The leading server dies: the survivor's scheduler and controllers take over.
    let _ = Command::new("kill")
        .args(["-KILL", &servers[leader].0.to_string()])
        .status();
    lab.kubectl(&kubectl, &["scale", "deployment/web", "--replicas=4"], None)
        .expect("scale");
    lab.kubectl(
        &kubectl,
        &["rollout", "status", "deployment/web", "--timeout=120s"],
        None,
    )
    .expect("the surviving server schedules and runs the new replicas");

    // One etcd member dies: the API keeps serving reads and writes.
    let _ = Command::new("kill")
        .args(["-KILL", &etcd_pids[2].to_string()])
        .status();
    for i in 0..5 {
        let name = format!("after-member-loss-{i}");
        lab.kubectl(
            &kubectl,
            &["create", "configmap", &name, "--from-literal=a=1"],
            None,
        )
        .expect("writes go on with two of three etcd members");
        lab.kubectl(&kubectl, &["get", "configmap", &name], None)
            .expect("reads go on with two of three etcd members");
    }

    // host-b's agent stops: its node goes not ready and its pods come back on host-a.
    let agent_b = lab.children.len() - 1;
    let _ = Command::new("kill")
        .args(["-TERM", &lab.children[agent_b].id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let ready = lab
            .kubectl(
                &kubectl,
                &[
                    "get",
                    "node",
                    "host-b",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
                None,
            )
            .unwrap_or_default();
        let live: Vec<String> = placements()
            .split_whitespace()
            .filter(|p| p.split(',').nth(2).is_none_or(str::is_empty))
            .map(str::to_string)
            .collect();
        let on_a = live
            .iter()
            .filter(|p| p.starts_with("host-a,Running"))
            .count();
        if ready != "True" && on_a == 4 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "host-b ready={ready:?}; live web pods: {live:?}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// `capstan up` on Docker killed with SIGKILL and started again on the same data directory:
/// every object is still there and the running containers are adopted, none duplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capstan_up_killed_and_restarted_keeps_objects_and_adopts_containers() {
    let Some(dir) = kubectl_dir() else { return };
    if !ensure_test_image().await {
        return;
    }
    let data = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let flags = [
        "--runtime",
        "docker",
        "--node-name",
        "e2e-restart",
        "--pod-cidr",
        "10.244.205.0/24",
        "--pod-network",
        "none",
    ];
    let child = start_capstan_with(data.path(), port, &flags);
    let k = Kubectl {
        binary: dir.join("kubectl.1.33"),
        kubeconfig: data.path().join("kubeconfig"),
    };
    let containers = || {
        let mut ids: Vec<String> = run(
            "docker",
            &[
                "ps",
                "-q",
                "--no-trunc",
                "--filter",
                "label=capstan.dev/node=e2e-restart",
            ],
        )
        .expect("docker ps")
        .split_whitespace()
        .map(str::to_string)
        .collect();
        ids.sort();
        ids
    };
    let deployment = format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: sleeper}}\nspec:\n  replicas: 2\n  selector: {{matchLabels: {{app: sleeper}}}}\n  template:\n    metadata: {{labels: {{app: sleeper}}}}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers: [{{name: main, image: \"{TEST_IMAGE}\", command: [sleep, '3600']}}]\n"
    );
    let (child, before, pods_before) = tokio::task::spawn_blocking({
        let k = Kubectl {
            binary: k.binary.clone(),
            kubeconfig: k.kubeconfig.clone(),
        };
        move || {
            let mut child = child;
            let deadline = Instant::now() + Duration::from_secs(30);
            while !k.run(&["get", "node", "e2e-restart"], None).0 {
                assert!(Instant::now() < deadline, "the node never registered");
                std::thread::sleep(Duration::from_millis(200));
            }
            k.ok(&["apply", "-f", "-"], Some(&deployment), &["created"]);
            k.ok(
                &["create", "configmap", "kept", "--from-literal=a=1"],
                None,
                &["created"],
            );
            k.ok(
                &["rollout", "status", "deployment/sleeper", "--timeout=120s"],
                None,
                &["successfully rolled out"],
            );
            let pods = k.ok(
                &[
                    "get",
                    "pods",
                    "-l",
                    "app=sleeper",
                    "-o",
                    "jsonpath={.items[*].metadata.uid}",
                ],
                None,
                &[],
            );
            let before = containers();
            // Two pods: a sandbox and an app container each.
            assert_eq!(before.len(), 4, "{before:?}");
            let _ = Command::new("kill")
                .args(["-KILL", &child.id().to_string()])
                .status();
            let _ = child.wait();
            (child, before, pods)
        }
    })
    .await
    .expect("join");
    drop(child);
    assert_eq!(
        containers(),
        before,
        "the containers outlive the killed process"
    );
    let mut child = start_capstan_with(data.path(), port, &flags);
    let result = tokio::task::spawn_blocking(move || {
        k.ok(
            &["get", "configmap", "kept", "-o", "jsonpath={.data.a}"],
            None,
            &["1"],
        );
        k.ok(
            &["rollout", "status", "deployment/sleeper", "--timeout=120s"],
            None,
            &["successfully rolled out"],
        );
        // Give the agent time to (wrongly) start anything twice, then compare.
        std::thread::sleep(Duration::from_secs(5));
        let pods = k.ok(
            &[
                "get",
                "pods",
                "-l",
                "app=sleeper",
                "-o",
                "jsonpath={.items[*].metadata.uid}",
            ],
            None,
            &[],
        );
        assert_eq!(pods, pods_before, "the same pods");
        k.ok(&["get", "pods", "-l", "app=sleeper"], None, &["Running"]);
        assert_eq!(
            containers(),
            before,
            "the same containers, adopted, none duplicated"
        );
        k.ok(&["delete", "deployment", "sleeper"], None, &["deleted"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while !containers().is_empty() {
            assert!(
                Instant::now() < deadline,
                "containers left: {:?}",
                containers()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .expect("join");
    if let Err(panic) = result {
        std::panic::resume_unwind(panic.into_panic());
    }
    assert!(status.expect("wait").success());
}
