//! kubectl 1.27 and 1.33 against the API server: server-side apply, CustomResourceDefinitions
//! used with get/apply/explain/delete, and the typed `kubectl create` commands and
//! `kubectl auth can-i` (protobuf bodies on 1.33).

use super::{kubectl_dir, serve, Kubectl};
use capstan_core::store::MemoryStore;
use std::sync::Arc;

fn deployment(replicas: u32, image: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: ssa}}\nspec:\n  replicas: {replicas}\n  selector: {{matchLabels: {{app: ssa}}}}\n  template:\n    metadata: {{labels: {{app: ssa}}}}\n    spec:\n      containers: [{{name: c, image: \"{image}\"}}]\n"
    )
}

fn crd(group: &str) -> String {
    format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  scope: Namespaced
  names: {{plural: widgets, singular: widget, kind: Widget, shortNames: [wd]}}
  versions:
  - name: v1
    served: true
    storage: true
    subresources: {{status: {{}}}}
    additionalPrinterColumns:
    - {{name: Size, type: integer, jsonPath: .spec.size}}
    schema:
      openAPIV3Schema:
        type: object
        description: A widget of some size.
        properties:
          spec:
            type: object
            description: What the widget should be.
            required: [size]
            properties:
              size: {{type: integer, minimum: 0, maximum: 10, description: How big the widget is.}}
"#
    )
}

fn widget(group: &str, size: i64) -> String {
    format!(
        "apiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: w1}}\nspec: {{size: {size}}}\n"
    )
}

fn server_side_apply(k: &Kubectl, ns: &str) {
    let n = ["-n", ns];
    let apply = |extra: &[&str], manifest: &str, expected: &[&str]| {
        let mut args = vec!["apply", "--server-side", "-f", "-"];
        args.extend_from_slice(&n);
        args.extend_from_slice(extra);
        k.ok(&args, Some(manifest), expected);
    };
    apply(
        &[],
        &deployment(2, "busybox:1.36"),
        &["deployment.apps/ssa serverside-applied"],
    );
    apply(
        &[],
        &deployment(3, "busybox:1.35"),
        &["deployment.apps/ssa serverside-applied"],
    );
    k.ok(
        &[
            "get",
            "deploy",
            "ssa",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].image}",
        ],
        None,
        &["3 busybox:1.35"],
    );
    // Another manager takes replicas; applying a different value conflicts until forced.
    k.ok(
        &["scale", "deploy", "ssa", "-n", ns, "--replicas=5"],
        None,
        &["scaled"],
    );
    let mut args = vec!["apply", "--server-side", "-f", "-"];
    args.extend_from_slice(&n);
    k.fails(
        &args,
        Some(&deployment(4, "busybox:1.35")),
        &["conflict", ".spec.replicas"],
    );
    apply(
        &["--force-conflicts"],
        &deployment(4, "busybox:1.35"),
        &["serverside-applied"],
    );
    k.ok(
        &[
            "get",
            "deploy",
            "ssa",
            "-n",
            ns,
            "-o",
            "yaml",
            "--show-managed-fields",
        ],
        None,
        &["manager: kubectl", "operation: Apply", "f:replicas: {}"],
    );
}

fn custom_resources(k: &Kubectl, ns: &str, group: &str) {
    let n = ["-n", ns];
    let name = format!("widgets.{group}");
    k.ok(
        &["apply", "-f", "-"],
        Some(&crd(group)),
        &[&format!(
            "customresourcedefinition.apiextensions.k8s.io/{name} created"
        )],
    );
    k.ok(
        &[
            "wait",
            "--for",
            "condition=established",
            &format!("crd/{name}"),
            "--timeout=20s",
        ],
        None,
        &["condition met"],
    );
    let mut apply = vec!["apply", "-f", "-"];
    apply.extend_from_slice(&n);
    k.ok(
        &apply,
        Some(&widget(group, 2)),
        &[&format!("widget.{group}/w1 created")],
    );
    k.ok(
        &apply,
        Some(&widget(group, 3)),
        &[&format!("widget.{group}/w1 configured")],
    );
    k.ok(
        &["get", &format!("widgets.{group}"), "-n", ns],
        None,
        &["SIZE", "w1"],
    );
    k.ok(
        &[
            "get",
            &format!("wd.{group}"),
            "w1",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.size}",
        ],
        None,
        &["3"],
    );
    k.fails(
        &apply,
        Some(&widget(group, 11)),
        &["spec.size", "less than or equal to 10"],
    );
    k.ok(
        &["explain", &format!("widgets.{group}.spec")],
        None,
        &["size", "How big the widget is"],
    );
    // Deleting the definition takes its objects with it.
    k.ok(&["delete", "crd", &name], None, &["deleted"]);
    k.fails(
        &["get", &format!("widgets.{group}"), "-n", ns],
        None,
        &["widgets"],
    );
}

fn typed_creates(k: &Kubectl, ns: &str, expect_protobuf: bool) {
    let protobuf = if expect_protobuf {
        vec!["application/vnd.kubernetes.protobuf"]
    } else {
        vec![]
    };
    let verbose = |args: &[&str], expected: &[&str]| {
        // Flags first: whatever follows `--` is the container's command.
        let mut all = vec!["-n", ns, "-v=8"];
        all.extend_from_slice(args);
        let mut wanted = expected.to_vec();
        wanted.extend(protobuf.iter().copied());
        k.ok(&all, None, &wanted);
    };
    verbose(
        &[
            "create",
            "deployment",
            "pbdep",
            "--image=busybox:1.36",
            "--replicas=2",
            "--port=80",
        ],
        &["pbdep"],
    );
    verbose(
        &["create", "service", "clusterip", "pbsvc", "--tcp=80:8080"],
        &["pbsvc"],
    );
    verbose(
        &[
            "create",
            "job",
            "pbjob",
            "--image=busybox:1.36",
            "--",
            "true",
        ],
        &["pbjob"],
    );
    verbose(
        &[
            "create",
            "cronjob",
            "pbcron",
            "--image=busybox:1.36",
            "--schedule=*/5 * * * *",
            "--",
            "true",
        ],
        &["pbcron"],
    );
    verbose(
        &["create", "configmap", "pbcm", "--from-literal=a=b"],
        &["pbcm"],
    );
    verbose(
        &[
            "create",
            "poddisruptionbudget",
            "pbpdb",
            "--selector=app=pb",
            "--min-available=50%",
        ],
        &["pbpdb"],
    );
    let class = format!("pb-{ns}");
    verbose(
        &["create", "priorityclass", &class, "--value=1000"],
        &[&class],
    );
    k.ok(
        &[
            "get",
            "pdb",
            "pbpdb",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.minAvailable}",
        ],
        None,
        &["50%"],
    );
    k.ok(
        &["get", "priorityclass", &class, "-o", "jsonpath={.value}"],
        None,
        &["1000"],
    );
    k.ok(
        &[
            "get",
            "deploy",
            "pbdep",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.replicas} {.spec.template.spec.containers[0].ports[0].containerPort}",
        ],
        None,
        &["2 80"],
    );
    k.ok(
        &[
            "get",
            "svc",
            "pbsvc",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.ports[0].targetPort}",
        ],
        None,
        &["8080"],
    );
    k.ok(
        &[
            "get",
            "job",
            "pbjob",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].command}",
        ],
        None,
        &["true"],
    );
    k.ok(
        &[
            "get",
            "cronjob",
            "pbcron",
            "-n",
            ns,
            "-o",
            "jsonpath={.spec.schedule}",
        ],
        None,
        &["*/5 * * * *"],
    );
    k.ok(
        &["auth", "can-i", "create", "pods", "-n", ns],
        None,
        &["yes"],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_server_side_apply_crds_and_typed_creates() {
    let Some(dir) = kubectl_dir() else { return };
    let served = serve(Arc::new(MemoryStore::new())).await;
    for version in ["1.27", "1.33"] {
        let k = Kubectl {
            binary: dir.join(format!("kubectl.{version}")),
            kubeconfig: served.kubeconfig.clone(),
        };
        let short = version.replace('.', "");
        let ns = format!("ext{short}");
        let group = format!("example{short}.org");
        eprintln!("kubectl {version}: server-side apply, CRDs, typed creates");
        tokio::task::spawn_blocking(move || {
            k.ok(&["create", "namespace", &ns], None, &["created"]);
            server_side_apply(&k, &ns);
            custom_resources(&k, &ns, &group);
            typed_creates(&k, &ns, version == "1.33");
        })
        .await
        .unwrap();
    }
}
