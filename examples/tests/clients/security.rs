//! Security end to end against `capstan up` (TLS by default) with kubectl 1.27 and 1.33: the
//! admin kubeconfig's certificate, a static token user governed by RBAC (denied, then granted
//! by a RoleBinding, never allowed to grant more than they hold), anonymous requests (401), a
//! wrong CA and a client certificate from another CA (refused); Secrets encrypted in the
//! embedded store's file and re-encrypted after a key rotation; the audit log.

use super::{free_port, kubectl_dir, start_capstan_with, Kubectl};
use capstan_core::pki::ClusterCa;
use capstan_core::store::{EmbeddedStore, EmbeddedStoreConfig, ListOptions, Store};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn kubeconfig(path: &Path, server: &str, ca_file: &Path, user: &str) {
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u, namespace: default}}\ncurrent-context: c\nusers:\n- name: u\n  user: {user}\n",
        ca_file.display()
    );
    std::fs::write(path, text).unwrap();
}

/// Runs until `args` succeed (RBAC changes reach the authorizer through a watch).
fn eventually(k: &Kubectl, args: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, text) = k.run(args, None);
        if ok {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{args:?} never succeeded: {text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `capstan up` process, killed if the test fails before stopping it.
struct Running(Option<std::process::Child>);

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn stop(mut running: Running) {
    let mut child = running.0.take().unwrap();
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(child.wait().unwrap().success());
}

async fn raw_store_values(path: &Path) -> Vec<(String, Vec<u8>)> {
    let store = EmbeddedStore::open(path, EmbeddedStoreConfig::default()).unwrap();
    store
        .list("/", ListOptions::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|kv| (kv.key, kv.value.to_vec()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_authentication_rbac_encryption_at_rest_and_audit() {
    let Some(bin) = kubectl_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let tokens = dir.path().join("tokens.csv");
    std::fs::write(&tokens, "jane-token,jane,1001,\"dev\"\n").unwrap();
    let audit = dir.path().join("audit.log");
    let flags = [
        "--runtime",
        "sim",
        "--token-auth-file",
        tokens.to_str().unwrap(),
        "--audit-log",
        audit.to_str().unwrap(),
    ];
    let child = Running(Some(start_capstan_with(&data, port, &flags)));
    let server = format!("https://127.0.0.1:{port}");
    let ca = data.join("pki").join("ca.crt");
    let jane_config = dir.path().join("jane");
    kubeconfig(&jane_config, &server, &ca, "{token: jane-token}");
    let unknown_token_config = dir.path().join("unknown-token");
    kubeconfig(&unknown_token_config, &server, &ca, "{token: not-a-token}");
    // With no credential at all (kubectl would prompt for a password): 401, except health.
    let anonymous = |path: &str| {
        let script = format!(
            "import ssl, urllib.request, urllib.error\nctx = ssl.create_default_context(cafile='{}')\ntry:\n    r = urllib.request.urlopen('{server}{path}', context=ctx)\n    print(r.status, r.read().decode())\nexcept urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n",
            ca.display()
        );
        let output = Command::new("python3")
            .arg("-c")
            .arg(script)
            .output()
            .unwrap();
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let healthz = anonymous("/healthz");
    assert!(healthz.starts_with("200 ok"), "{healthz}");
    for path in [
        "/api/v1/namespaces/default/pods",
        "/metrics",
        "/apis",
        "/openapi/v3",
    ] {
        let answer = anonymous(path);
        assert!(
            answer.starts_with("401") && answer.contains("\"reason\":\"Unauthorized\""),
            "{path}: {answer}"
        );
    }
    // Another cluster's CA: the server is not trusted, and its client certificates are not
    // accepted.
    let other = ClusterCa::load_or_create(&dir.path().join("other-pki")).unwrap();
    let other_ca = dir.path().join("other-pki").join("ca.crt");
    let wrong_ca_config = dir.path().join("wrong-ca");
    kubeconfig(&wrong_ca_config, &server, &other_ca, "{token: jane-token}");
    let foreign = other
        .client_certificate("intruder", Some("system:masters"))
        .unwrap();
    let cert_file = dir.path().join("foreign.crt");
    let key_file = dir.path().join("foreign.key");
    std::fs::write(&cert_file, &foreign.certificate_pem).unwrap();
    std::fs::write(&key_file, &foreign.key_pem).unwrap();
    let foreign_config = dir.path().join("foreign");
    kubeconfig(
        &foreign_config,
        &server,
        &ca,
        &format!(
            "{{client-certificate: {}, client-key: {}}}",
            cert_file.display(),
            key_file.display()
        ),
    );

    let versions = ["1.27", "1.33"];
    let run = {
        let bin = bin.clone();
        let (data, jane_config, unknown_token_config, wrong_ca_config, foreign_config) = (
            data.clone(),
            jane_config.clone(),
            unknown_token_config.clone(),
            wrong_ca_config.clone(),
            foreign_config.clone(),
        );
        move || {
            for version in versions {
                let binary = bin.join(format!("kubectl.{version}"));
                let as_ = |config: &Path| Kubectl {
                    binary: binary.clone(),
                    kubeconfig: config.to_path_buf(),
                };
                let admin = as_(&data.join("kubeconfig"));
                let jane = as_(&jane_config);
                let ns = format!("sec-{}", version.replace('.', ""));
                admin.ok(&["auth", "can-i", "*", "*"], None, &["yes"]);
                admin.ok(&["create", "namespace", &ns], None, &[]);
                admin.ok(
                    &[
                        "create",
                        "secret",
                        "generic",
                        "s1",
                        "-n",
                        &ns,
                        &format!("--from-literal=password=hunter2-{ns}"),
                    ],
                    None,
                    &["created"],
                );

                // Authenticated but not authorized.
                jane.fails(
                    &["get", "pods", "-n", &ns],
                    None,
                    &["Forbidden", "User \"jane\" cannot list resource \"pods\""],
                );
                jane.fails(&["auth", "can-i", "list", "pods", "-n", &ns], None, &["no"]);
                // Who the server takes jane for (SelfSubjectReview, GA since 1.28).
                if version == "1.33" {
                    jane.ok(
                        &["auth", "whoami"],
                        None,
                        &["Username", "jane", "system:authenticated"],
                    );
                }
                // Granted by a RoleBinding (a protobuf body from kubectl 1.33).
                admin.ok(
                    &[
                        "create",
                        "rolebinding",
                        "jane-view",
                        "--clusterrole",
                        "view",
                        "--user",
                        "jane",
                        "-n",
                        &ns,
                    ],
                    None,
                    &["created"],
                );
                eventually(&jane, &["get", "pods", "-n", &ns]);
                jane.ok(
                    &["auth", "can-i", "list", "pods", "-n", &ns],
                    None,
                    &["yes"],
                );
                // What jane holds there (SelfSubjectRulesReview).
                jane.ok(
                    &["auth", "can-i", "--list", "-n", &ns],
                    None,
                    &[
                        "pods ",
                        "[get list watch]",
                        "selfsubjectrulesreviews.authorization.k8s.io",
                    ],
                );
                jane.fails(&["get", "secrets", "-n", &ns], None, &["Forbidden"]);
                jane.fails(&["get", "pods", "-n", "default"], None, &["Forbidden"]);
                // Namespace admin: may create roles with what they hold, not more.
                admin.ok(
                    &[
                        "create",
                        "rolebinding",
                        "jane-admin",
                        "--clusterrole",
                        "admin",
                        "--user",
                        "jane",
                        "-n",
                        &ns,
                    ],
                    None,
                    &["created"],
                );
                eventually(&jane, &["get", "secrets", "-n", &ns]);
                jane.ok(
                    &[
                        "create",
                        "role",
                        "readers",
                        "--verb",
                        "get",
                        "--resource",
                        "pods",
                        "-n",
                        &ns,
                    ],
                    None,
                    &["created"],
                );
                jane.fails(
                    &[
                        "create",
                        "role",
                        "nodes",
                        "--verb",
                        "get",
                        "--resource",
                        "nodes",
                        "-n",
                        &ns,
                    ],
                    None,
                    &["attempting to grant RBAC permissions not currently held"],
                );
                jane.fails(
                    &[
                        "create",
                        "rolebinding",
                        "grab",
                        "--clusterrole",
                        "cluster-admin",
                        "--user",
                        "jane",
                        "-n",
                        &ns,
                    ],
                    None,
                    &["attempting to grant RBAC permissions not currently held"],
                );
                jane.fails(
                    &[
                        "create",
                        "clusterrolebinding",
                        "grab",
                        "--clusterrole",
                        "view",
                        "--user",
                        "jane",
                    ],
                    None,
                    &["forbidden"],
                );
                jane.fails(&["get", "nodes"], None, &["forbidden"]);

                // A ServiceAccount's token from `kubectl create token` (TokenRequest; a
                // protobuf body from 1.33): authenticated as the account, authorized by RBAC,
                // refused once the account is gone.
                admin.ok(
                    &["create", "serviceaccount", "robot", "-n", &ns],
                    None,
                    &["created"],
                );
                let token = admin.ok(
                    &["create", "token", "robot", "-n", &ns, "--duration", "1h"],
                    None,
                    &[],
                );
                let robot_config = data.join(format!("robot-{ns}"));
                kubeconfig(
                    &robot_config,
                    &format!("https://127.0.0.1:{port}"),
                    &data.join("pki").join("ca.crt"),
                    &format!("{{token: {}}}", token.trim()),
                );
                let robot = as_(&robot_config);
                robot.fails(
                    &["get", "pods", "-n", &ns],
                    None,
                    &[&format!(
                        "User \"system:serviceaccount:{ns}:robot\" cannot list"
                    )],
                );
                admin.ok(
                    &[
                        "create",
                        "rolebinding",
                        "robot-view",
                        "--clusterrole",
                        "view",
                        "--serviceaccount",
                        &format!("{ns}:robot"),
                        "-n",
                        &ns,
                    ],
                    None,
                    &["created"],
                );
                eventually(&robot, &["get", "pods", "-n", &ns]);
                admin.fails(
                    &["create", "token", "robot", "-n", &ns, "--duration", "1m"],
                    None,
                    &["less than 10 minutes"],
                );
                admin.ok(
                    &["delete", "serviceaccount", "robot", "-n", &ns],
                    None,
                    &["deleted"],
                );
                robot.fails(&["get", "pods", "-n", &ns], None, &["Unauthorized"]);

                // An unknown token, the wrong CA, a certificate from another CA.
                as_(&unknown_token_config).fails(&["get", "pods"], None, &["Unauthorized"]);
                as_(&wrong_ca_config).fails(&["get", "pods"], None, &["certificate"]);
                let (ok, text) = as_(&foreign_config).run(&["get", "pods"], None);
                assert!(!ok, "a certificate from another CA was accepted: {text}");
            }
        }
    };
    tokio::task::spawn_blocking(run).await.unwrap();
    stop(child);

    // At rest: no plaintext anywhere in the store file; Secrets carry the aesgcm prefix.
    let store_file = data.join("store.redb");
    let values = raw_store_values(&store_file).await;
    let mut secrets = 0;
    for (key, value) in &values {
        assert!(
            !value.windows(7).any(|w| w == b"hunter2"),
            "plaintext secret at {key}"
        );
        if key.starts_with("/core/secrets/sec-") {
            assert!(value.starts_with(b"k8s:enc:aesgcm:v1:key1:"), "{key}");
            secrets += 1;
        }
    }
    assert_eq!(secrets, 2);

    // Rotation: a new key first; the restart re-encrypts, reads still work.
    let key_file = data.join("secrets.key");
    let old = std::fs::read_to_string(&key_file).unwrap();
    std::fs::write(
        &key_file,
        format!("key2:AQIDBAUGBwgJCgsMDQ4PEBESExQVFhcYGRobHB0eHyA=\n{old}"),
    )
    .unwrap();
    let child = Running(Some(start_capstan_with(&data, port, &flags)));
    let admin = Kubectl {
        binary: bin.join("kubectl.1.33"),
        kubeconfig: data.join("kubeconfig"),
    };
    let password = tokio::task::spawn_blocking(move || {
        admin.ok(
            &[
                "get",
                "secret",
                "s1",
                "-n",
                "sec-133",
                "-o",
                "jsonpath={.data.password}",
            ],
            None,
            &[],
        )
    })
    .await
    .unwrap();
    assert_eq!(
        password.trim(),
        "aHVudGVyMi1zZWMtMTMz",
        "base64 of hunter2-sec-133"
    );
    stop(child);
    for (key, value) in raw_store_values(&store_file).await {
        if key.starts_with("/core/secrets/sec-") {
            assert!(
                value.starts_with(b"k8s:enc:aesgcm:v1:key2:"),
                "{key} not rotated"
            );
        }
    }

    // The audit log: who did what, and how it ended.
    let events: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let has = |user: &str, verb: &str, resource: &str, code: u64| {
        events.iter().any(|e| {
            e["user"]["username"] == user
                && e["verb"] == verb
                && e["objectRef"]["resource"] == resource
                && e["responseStatus"]["code"] == code
        })
    };
    assert!(
        has("jane", "list", "pods", 403),
        "jane's denied list is audited"
    );
    assert!(
        has("jane", "list", "pods", 200),
        "jane's allowed list is audited"
    );
    assert!(has("capstan-admin", "create", "rolebindings", 201));
    assert!(has("system:anonymous", "list", "pods", 401));
    assert!(
        events
            .iter()
            .all(|e| e["apiVersion"] == "audit.k8s.io/v1"
                && e["requestReceivedTimestamp"].is_string())
    );
}

/// Spawns `capstan args` with stdout piped; returns it and its stdout lines as they come.
fn spawn_capstan(args: &[&str]) -> (Running, std::sync::mpsc::Receiver<String>) {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        .spawn()
        .expect("start capstan");
    let stdout = child.stdout.take().unwrap();
    let (sender, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            println!("[capstan] {line}");
            let _ = sender.send(line);
        }
    });
    (Running(Some(child)), lines)
}

fn wait_for_line(lines: &std::sync::mpsc::Receiver<String>, fragment: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(fragment) => return line,
            Ok(_) => {}
            Err(_) => panic!("capstan never printed {fragment:?}"),
        }
    }
}

/// `capstan server` (TLS, RBAC) prints a one-use bootstrap token; `capstan agent --token`
/// exchanges it for a node certificate and runs the node with it; the Node authorizer keeps
/// that node to its own objects; the token does not work twice; `capstan token` makes more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_join_with_one_use_bootstrap_tokens() {
    let Some(bin) = kubectl_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let (_server, server_lines) = spawn_capstan(&[
        "server",
        "--store",
        "memory",
        "--listen",
        &listen,
        "--data-dir",
        data.to_str().unwrap(),
    ]);
    let join = wait_for_line(&server_lines, "--token ");
    let words: Vec<&str> = join.split_whitespace().collect();
    let after = |flag: &str| {
        let at = words.iter().position(|w| *w == flag).unwrap();
        words[at + 1].to_string()
    };
    let (token, ca) = (after("--token"), after("--ca-cert"));
    std::thread::spawn(move || while server_lines.recv().is_ok() {});
    let agent_dir = dir.path().join("agent");
    let agent_args = |data_dir: &Path, name: &str| -> Vec<String> {
        [
            "agent",
            "--server",
            &url,
            "--token",
            &token,
            "--ca-cert",
            &ca,
            "--data-dir",
            data_dir.to_str().unwrap(),
            "--node-name",
            name,
            "--runtime",
            "sim",
            "--proxy",
            "none",
            "--pod-network",
            "none",
            "--pod-cidr",
            "10.244.9.0/24",
            "--node-ip",
            "127.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let first: Vec<String> = agent_args(&agent_dir, "joiner");
    let first: Vec<&str> = first.iter().map(String::as_str).collect();
    let (_agent, agent_lines) = spawn_capstan(&first);
    wait_for_line(
        &agent_lines,
        "node certificate for system:node:joiner issued",
    );
    std::thread::spawn(move || while agent_lines.recv().is_ok() {});

    let admin = Kubectl {
        binary: bin.join("kubectl.1.33"),
        kubeconfig: data.join("kubeconfig"),
    };
    let node = Kubectl {
        binary: bin.join("kubectl.1.33"),
        kubeconfig: agent_dir.join("node.kubeconfig"),
    };
    let token_id = token.split('.').next().unwrap().to_string();
    let checks = move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, ready) = admin.run(
                &[
                    "get",
                    "node",
                    "joiner",
                    "-o",
                    "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
                ],
                None,
            );
            if ready.trim() == "True" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the joined node never became Ready: {ready}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        // One use: the token is gone; the request was approved and signed.
        admin.fails(
            &[
                "get",
                "secret",
                "-n",
                "kube-system",
                &format!("bootstrap-token-{token_id}"),
            ],
            None,
            &["NotFound"],
        );
        let approved = admin.ok(
            &[
                "get",
                "csr",
                "-o",
                "jsonpath={.items[*].status.conditions[*].type}",
            ],
            None,
            &[],
        );
        assert_eq!(approved.trim(), "Approved");

        // The node's own credentials, kept to its own objects.
        node.ok(&["get", "nodes"], None, &["joiner"]);
        node.ok(
            &["label", "node", "joiner", "capstan.dev/joined=yes"],
            None,
            &["labeled"],
        );
        admin.ok(
            &["create", "-f", "-"],
            Some("apiVersion: v1\nkind: Node\nmetadata: {name: other}\n"),
            &["created"],
        );
        node.fails(
            &["label", "node", "other", "stolen=yes"],
            None,
            &["forbidden"],
        );
        node.fails(
            &["create", "-f", "-"],
            Some("apiVersion: v1\nkind: Node\nmetadata: {name: impostor}\n"),
            &["NodeRestriction"],
        );
        node.fails(
            &["get", "secrets", "-n", "kube-system"],
            None,
            &["forbidden"],
        );
        node.fails(&["get", "pods", "-A"], None, &["forbidden"]);
        node.ok(
            &[
                "get",
                "pods",
                "-A",
                "--field-selector",
                "spec.nodeName=joiner",
            ],
            None,
            &[],
        );
        // A pod bound to it runs (its status written with the node's credentials) and may
        // read the Secret it uses, not another.
        admin.ok(
            &["create", "secret", "generic", "used", "--from-literal=k=v"],
            None,
            &["created"],
        );
        admin.ok(
            &[
                "create",
                "secret",
                "generic",
                "unused",
                "--from-literal=k=v",
            ],
            None,
            &["created"],
        );
        admin.ok(
            &["create", "-f", "-"],
            Some("apiVersion: v1\nkind: Pod\nmetadata: {name: worker}\nspec:\n  nodeName: joiner\n  containers:\n  - name: c\n    image: busybox:1.36\n    env: [{name: K, valueFrom: {secretKeyRef: {name: used, key: k}}}]\n"),
            &["created"],
        );
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (_, phase) = admin.run(
                &["get", "pod", "worker", "-o", "jsonpath={.status.phase}"],
                None,
            );
            if phase.trim() == "Running" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the pod never ran on the joined node: {phase}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
        node.ok(&["get", "secret", "used"], None, &["used"]);
        // The agent's own server (logs, exec, port-forward) answers the API server only: a
        // caller without a client certificate from the cluster CA is refused; the API server
        // proxies logs over it.
        admin.ok(&["logs", "worker"], None, &[]);
        let port = admin.ok(
            &[
                "get",
                "node",
                "joiner",
                "-o",
                "jsonpath={.status.daemonEndpoints.kubeletEndpoint.Port}",
            ],
            None,
            &[],
        );
        let probe = format!(
            "import ssl, urllib.request\nctx = ssl.create_default_context()\nctx.check_hostname = False\nctx.verify_mode = ssl.CERT_NONE\nfor url in ['https://127.0.0.1:{0}/containerLogs/default/worker/c', 'http://127.0.0.1:{0}/containerLogs/default/worker/c']:\n    try:\n        urllib.request.urlopen(url, context=ctx if url.startswith('https') else None, timeout=5)\n        print('open', url)\n    except Exception as e:\n        print('refused', url, type(e).__name__)\n",
            port.trim()
        );
        let answers = Command::new("python3")
            .arg("-c")
            .arg(probe)
            .output()
            .unwrap();
        let answers = String::from_utf8_lossy(&answers.stdout).to_string();
        assert_eq!(answers.matches("refused").count(), 2, "{answers}");
        node.fails(&["get", "secret", "unused"], None, &["forbidden"]);
        node.fails(
            &["get", "pods", "-n", "kube-system", "anything", "-o", "name"],
            None,
            &["NotFound"],
        );
    };
    tokio::task::spawn_blocking(checks).await.unwrap();

    // The token does not work twice.
    let second_dir = dir.path().join("second");
    let second: Vec<String> = agent_args(&second_dir, "second");
    let output = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(&second)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Unauthorized"), "{stderr}");
    // `capstan token` makes a new one through the API.
    let output = Command::new(env!("CARGO_BIN_EXE_capstan"))
        .args(["token", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let fresh = String::from_utf8_lossy(&output.stdout).trim().to_string();
    assert!(
        capstan_core::authn::parse_bootstrap_token(&fresh).is_some(),
        "{fresh}"
    );
}
