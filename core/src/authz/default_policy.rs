//! The roles and bindings every cluster starts with (labelled
//! `kubernetes.io/bootstrapping: rbac-defaults`, as Kubernetes labels its own): `cluster-admin`
//! for `system:masters`; `admin`, `edit` and `view` for users to bind; discovery, version and
//! health for everyone; certificate requests for bootstrapping nodes; the scheduler's, the controller manager's and the nodes' roles (the last
//! bound to nobody: node agents are authorized by the Node authorizer, as in Kubernetes). Created
//! when absent, never overwritten (an operator's change stays).

use serde_json::{json, Value};

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

fn urls(paths: &[&str], verbs: &[&str]) -> Value {
    json!({"nonResourceURLs": paths, "verbs": verbs})
}

const READ: &[&str] = &["get", "list", "watch"];
const ALL: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "delete",
    "deletecollection",
    "patch",
    "update",
];

fn cluster_role(name: &str, rules: Vec<Value>) -> (&'static str, Value) {
    (
        "clusterroles",
        json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "rules": rules,
        }),
    )
}

fn cluster_binding(name: &str, role: &str, subjects: Value) -> (&'static str, Value) {
    (
        "clusterrolebindings",
        json!({
            "metadata": {"name": name, "labels": {"kubernetes.io/bootstrapping": "rbac-defaults"}},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": subjects,
        }),
    )
}

fn group(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": name})
}

fn user(name: &str) -> Value {
    json!({"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": name})
}

/// What namespaced users may read (`view`) — everything but secrets and RBAC.
fn view_rules() -> Vec<Value> {
    vec![
        rule(
            &[""],
            &[
                "pods",
                "pods/log",
                "pods/status",
                "services",
                "services/status",
                "endpoints",
                "configmaps",
                "serviceaccounts",
                "persistentvolumeclaims",
                "events",
                "replicationcontrollers",
                "limitranges",
                "resourcequotas",
                "namespaces",
            ],
            READ,
        ),
        rule(
            &["apps"],
            &[
                "deployments",
                "deployments/scale",
                "deployments/status",
                "replicasets",
                "replicasets/scale",
                "replicasets/status",
                "statefulsets",
                "statefulsets/scale",
                "statefulsets/status",
                "daemonsets",
                "daemonsets/status",
                "controllerrevisions",
            ],
            READ,
        ),
        rule(
            &["batch"],
            &["jobs", "jobs/status", "cronjobs", "cronjobs/status"],
            READ,
        ),
        rule(
            &["autoscaling"],
            &[
                "horizontalpodautoscalers",
                "horizontalpodautoscalers/status",
            ],
            READ,
        ),
        rule(
            &["policy"],
            &["poddisruptionbudgets", "poddisruptionbudgets/status"],
            READ,
        ),
        rule(&["discovery.k8s.io"], &["endpointslices"], READ),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            READ,
        ),
        rule(&["events.k8s.io"], &["events"], READ),
    ]
}

/// What `edit` adds: writes to workloads, config and secrets, exec and port-forward.
fn edit_rules() -> Vec<Value> {
    let mut rules = view_rules();
    rules.extend([
        rule(
            &[""],
            &[
                "pods",
                "pods/exec",
                "pods/attach",
                "pods/portforward",
                "pods/eviction",
                "services",
                "endpoints",
                "configmaps",
                "secrets",
                "serviceaccounts",
                "persistentvolumeclaims",
                "replicationcontrollers",
            ],
            ALL,
        ),
        rule(
            &["apps"],
            &[
                "deployments",
                "deployments/scale",
                "deployments/rollback",
                "replicasets",
                "replicasets/scale",
                "statefulsets",
                "statefulsets/scale",
                "daemonsets",
            ],
            ALL,
        ),
        rule(&["batch"], &["jobs", "cronjobs"], ALL),
        rule(&["autoscaling"], &["horizontalpodautoscalers"], ALL),
        rule(&["policy"], &["poddisruptionbudgets"], ALL),
        rule(
            &["networking.k8s.io"],
            &["ingresses", "networkpolicies"],
            ALL,
        ),
    ]);
    rules
}

fn admin_rules() -> Vec<Value> {
    let mut rules = edit_rules();
    rules.extend([
        rule(
            &["rbac.authorization.k8s.io"],
            &["roles", "rolebindings"],
            ALL,
        ),
        rule(
            &["authorization.k8s.io"],
            &["localsubjectaccessreviews"],
            &["create"],
        ),
    ]);
    rules
}

/// The default roles and bindings as (plural, object) pairs in `rbac.authorization.k8s.io/v1`.
pub fn default_policy() -> Vec<(&'static str, Value)> {
    vec![
        cluster_role(
            "cluster-admin",
            vec![rule(&["*"], &["*"], &["*"]), urls(&["*"], &["*"])],
        ),
        cluster_role("admin", admin_rules()),
        cluster_role("edit", edit_rules()),
        cluster_role("view", view_rules()),
        cluster_role(
            "system:discovery",
            vec![urls(
                &[
                    "/api",
                    "/api/*",
                    "/apis",
                    "/apis/*",
                    "/openapi",
                    "/openapi/*",
                    "/version",
                    "/version/",
                    "/healthz",
                    "/livez",
                    "/readyz",
                ],
                &["get"],
            )],
        ),
        cluster_role(
            "system:public-info-viewer",
            vec![urls(
                &["/healthz", "/livez", "/readyz", "/version", "/version/"],
                &["get"],
            )],
        ),
        cluster_role(
            "system:basic-user",
            vec![
                rule(
                    &["authorization.k8s.io"],
                    &["selfsubjectaccessreviews", "selfsubjectrulesreviews"],
                    &["create"],
                ),
                rule(
                    &["authentication.k8s.io"],
                    &["selfsubjectreviews"],
                    &["create"],
                ),
            ],
        ),
        cluster_role(
            "system:kube-scheduler",
            vec![
                rule(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["create", "get", "update"],
                ),
                rule(
                    &[""],
                    &[
                        "nodes",
                        "namespaces",
                        "services",
                        "replicationcontrollers",
                        "persistentvolumeclaims",
                        "persistentvolumes",
                    ],
                    READ,
                ),
                rule(&[""], &["pods"], &["get", "list", "watch", "delete"]),
                rule(&[""], &["bindings", "pods/binding"], &["create"]),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&["apps"], &["replicasets", "statefulsets"], READ),
                rule(&["policy"], &["poddisruptionbudgets"], READ),
                rule(&["scheduling.k8s.io"], &["priorityclasses"], READ),
            ],
        ),
        cluster_role(
            "system:kube-controller-manager",
            // One identity runs every controller here (Kubernetes splits them by service
            // account): it manages workloads, nodes' lifecycle and garbage collection.
            vec![rule(&["*"], &["*"], &["*"])],
        ),
        cluster_role(
            "system:node",
            vec![
                rule(
                    &[""],
                    &["nodes"],
                    &[
                        "get", "list", "watch", "create", "update", "patch", "delete",
                    ],
                ),
                rule(&[""], &["nodes/status"], &["patch", "update"]),
                rule(
                    &[""],
                    &["pods"],
                    &["get", "list", "watch", "create", "delete"],
                ),
                rule(&[""], &["pods/status"], &["patch", "update"]),
                rule(&[""], &["pods/eviction"], &["create"]),
                rule(
                    &[""],
                    &[
                        "services",
                        "endpoints",
                        "namespaces",
                        "configmaps",
                        "secrets",
                    ],
                    READ,
                ),
                rule(&["discovery.k8s.io"], &["endpointslices"], READ),
                rule(
                    &["", "events.k8s.io"],
                    &["events"],
                    &["create", "patch", "update"],
                ),
                rule(
                    &["coordination.k8s.io"],
                    &["leases"],
                    &["get", "create", "update", "patch", "delete"],
                ),
                rule(&[""], &["serviceaccounts/token"], &["create"]),
            ],
        ),
        cluster_role(
            "system:node-bootstrapper",
            vec![rule(
                &["certificates.k8s.io"],
                &["certificatesigningrequests"],
                &["create", "get", "list", "watch"],
            )],
        ),
        cluster_binding(
            "cluster-admin",
            "cluster-admin",
            json!([group("system:masters")]),
        ),
        cluster_binding(
            "system:node-bootstrapper",
            "system:node-bootstrapper",
            json!([group("system:bootstrappers"), group("system:nodes")]),
        ),
        cluster_binding(
            "system:discovery",
            "system:discovery",
            json!([group("system:authenticated")]),
        ),
        cluster_binding(
            "system:public-info-viewer",
            "system:public-info-viewer",
            json!([
                group("system:authenticated"),
                group("system:unauthenticated")
            ]),
        ),
        cluster_binding(
            "system:basic-user",
            "system:basic-user",
            json!([group("system:authenticated")]),
        ),
        cluster_binding(
            "system:kube-scheduler",
            "system:kube-scheduler",
            json!([user("system:kube-scheduler")]),
        ),
        cluster_binding(
            "system:kube-controller-manager",
            "system:kube-controller-manager",
            json!([user("system:kube-controller-manager")]),
        ),
    ]
}
