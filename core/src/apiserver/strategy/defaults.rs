//! Defaulting as Kubernetes does it for the built-in kinds, on JSON objects.

use crate::registry::ResourceKind;
use serde_json::{json, Map, Value};

fn obj(value: &mut Value) -> Option<&mut Map<String, Value>> {
    value.as_object_mut()
}

/// The label a Job's generated selector matches: the Job's uid.
pub const JOB_CONTROLLER_UID: &str = "batch.kubernetes.io/controller-uid";
/// The label naming a Job on its pods.
pub const JOB_NAME: &str = "batch.kubernetes.io/job-name";

fn set_default(map: &mut Map<String, Value>, key: &str, value: Value) {
    if map.get(key).is_none_or(Value::is_null) {
        map.insert(key.to_string(), value);
    }
}

fn child<'a>(map: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    if !map.get(key).is_some_and(Value::is_object) {
        map.insert(key.to_string(), json!({}));
    }
    map.get_mut(key)
        .and_then(Value::as_object_mut)
        .expect("just inserted an object")
}

/// The pull policy Kubernetes infers from an image reference: `Always` for `:latest` or no tag,
/// else `IfNotPresent`.
pub fn default_pull_policy(image: &str) -> &'static str {
    let without_digest = image.split('@').next().unwrap_or(image);
    let last = without_digest.rsplit('/').next().unwrap_or(without_digest);
    match last.split_once(':') {
        _ if image.contains('@') => "IfNotPresent",
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_container(container: &mut Value) {
    let Some(c) = obj(container) else { return };
    if let Some(image) = c.get("image").and_then(Value::as_str).map(str::to_string) {
        set_default(c, "imagePullPolicy", json!(default_pull_policy(&image)));
    }
    set_default(c, "terminationMessagePath", json!("/dev/termination-log"));
    set_default(c, "terminationMessagePolicy", json!("File"));
    if let Some(ports) = c.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(obj) {
            set_default(port, "protocol", json!("TCP"));
        }
    }
    for probe in ["livenessProbe", "readinessProbe", "startupProbe"] {
        if let Some(p) = c.get_mut(probe).and_then(Value::as_object_mut) {
            set_default(p, "timeoutSeconds", json!(1));
            set_default(p, "periodSeconds", json!(10));
            set_default(p, "successThreshold", json!(1));
            set_default(p, "failureThreshold", json!(3));
        }
    }
}

/// Defaults of a pod spec (also used inside templates).
pub fn default_pod_spec(spec: &mut Map<String, Value>) {
    set_default(spec, "restartPolicy", json!("Always"));
    set_default(spec, "dnsPolicy", json!("ClusterFirst"));
    set_default(spec, "terminationGracePeriodSeconds", json!(30));
    set_default(spec, "schedulerName", json!("default-scheduler"));
    set_default(spec, "securityContext", json!({}));
    set_default(spec, "enableServiceLinks", json!(true));
    for list in ["containers", "initContainers"] {
        if let Some(containers) = spec.get_mut(list).and_then(Value::as_array_mut) {
            containers.iter_mut().for_each(default_container);
        }
    }
}

fn default_template(spec: &mut Map<String, Value>) {
    let template = child(spec, "template");
    let template_spec = child(template, "spec");
    default_pod_spec(template_spec);
}

/// Applies the kind's defaults to a new or replaced object.
pub fn apply_defaults(kind: &ResourceKind, object: &mut Value) {
    let Some(root) = obj(object) else { return };
    drop_empty_metadata(root);
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Pod") => {
            default_pod_spec(child(root, "spec"));
            let status = child(root, "status");
            set_default(status, "phase", json!("Pending"));
        }
        ("", "Namespace") => {
            let name = root.pointer_name();
            let spec = child(root, "spec");
            set_default(spec, "finalizers", json!(["kubernetes"]));
            let status = child(root, "status");
            set_default(status, "phase", json!("Active"));
            if let Some(name) = name {
                let labels = child(child(root, "metadata"), "labels");
                labels.insert("kubernetes.io/metadata.name".into(), json!(name));
            }
        }
        ("", "Service") => {
            let spec = child(root, "spec");
            set_default(spec, "type", json!("ClusterIP"));
            let external = spec.get("type").and_then(Value::as_str) == Some("ExternalName");
            set_default(spec, "sessionAffinity", json!("None"));
            if !external {
                // The families of the addresses asked for, else IPv4 (the primary family).
                let asked: Vec<&str> = match spec.get("clusterIPs").and_then(Value::as_array) {
                    Some(ips) if !ips.is_empty() => ips.iter().filter_map(Value::as_str).collect(),
                    _ => spec
                        .get("clusterIP")
                        .and_then(Value::as_str)
                        .into_iter()
                        .collect(),
                };
                let families: Vec<&str> = asked
                    .iter()
                    .filter_map(|ip| ip.parse::<std::net::IpAddr>().ok())
                    .map(|ip| if ip.is_ipv6() { "IPv6" } else { "IPv4" })
                    .collect();
                let families = if families.is_empty() {
                    vec!["IPv4"]
                } else {
                    families
                };
                set_default(spec, "ipFamilies", json!(families));
                // Two families (or two addresses) asked for mean dual-stack, as in Kubernetes.
                let two = spec
                    .get("ipFamilies")
                    .and_then(Value::as_array)
                    .is_some_and(|f| f.len() > 1);
                let policy = if two {
                    "RequireDualStack"
                } else {
                    "SingleStack"
                };
                set_default(spec, "ipFamilyPolicy", json!(policy));
                set_default(spec, "internalTrafficPolicy", json!("Cluster"));
            }
            if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
                for port in ports.iter_mut().filter_map(obj) {
                    set_default(port, "protocol", json!("TCP"));
                    if let Some(p) = port.get("port").cloned() {
                        set_default(port, "targetPort", p);
                    }
                }
            }
        }
        ("", "Secret") => {
            // An empty type is unset (Go's zero value; `kubectl create secret generic`).
            if root.get("type").is_none_or(|t| t == "") {
                root.insert("type".into(), json!("Opaque"));
            }
            // `stringData` is write-only: merged into `data` (base64), then dropped.
            if let Some(Value::Object(strings)) = root.remove("stringData") {
                let data = child(root, "data");
                for (key, value) in strings {
                    let bytes = value.as_str().unwrap_or_default().as_bytes().to_vec();
                    let encoded =
                        serde_json::to_value(k8s_openapi::ByteString(bytes)).unwrap_or(Value::Null);
                    data.insert(key, encoded);
                }
            }
        }
        ("apps", "Deployment") => {
            let spec = child(root, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "revisionHistoryLimit", json!(10));
            set_default(spec, "progressDeadlineSeconds", json!(600));
            let strategy = child(spec, "strategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let rolling = child(strategy, "rollingUpdate");
                set_default(rolling, "maxUnavailable", json!("25%"));
                set_default(rolling, "maxSurge", json!("25%"));
            }
            default_template(spec);
        }
        ("apps", "ReplicaSet") => {
            let spec = child(root, "spec");
            set_default(spec, "replicas", json!(1));
            default_template(spec);
        }
        ("apps", "StatefulSet") => {
            let spec = child(root, "spec");
            set_default(spec, "replicas", json!(1));
            set_default(spec, "podManagementPolicy", json!("OrderedReady"));
            set_default(spec, "revisionHistoryLimit", json!(10));
            let strategy = child(spec, "updateStrategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                set_default(child(strategy, "rollingUpdate"), "partition", json!(0));
            }
            set_default(
                spec,
                "persistentVolumeClaimRetentionPolicy",
                json!({"whenDeleted": "Retain", "whenScaled": "Retain"}),
            );
            default_template(spec);
        }
        ("apps", "DaemonSet") => {
            let spec = child(root, "spec");
            set_default(spec, "revisionHistoryLimit", json!(10));
            let strategy = child(spec, "updateStrategy");
            set_default(strategy, "type", json!("RollingUpdate"));
            if strategy.get("type").and_then(Value::as_str) == Some("RollingUpdate") {
                let rolling = child(strategy, "rollingUpdate");
                set_default(rolling, "maxUnavailable", json!(1));
                set_default(rolling, "maxSurge", json!(0));
            }
            default_template(spec);
        }
        ("batch", "Job") => {
            let (uid, name) = {
                let meta = child(root, "metadata");
                let text = |k: &str| meta.get(k).and_then(Value::as_str).map(str::to_string);
                (text("uid"), text("name"))
            };
            let spec = child(root, "spec");
            // Both unset: one pod to completion; only parallelism set: a work queue (any
            // success completes the Job), so completions stays unset.
            if spec.get("completions").is_none_or(Value::is_null)
                && spec.get("parallelism").is_none_or(Value::is_null)
            {
                spec.insert("completions".into(), json!(1));
            }
            set_default(spec, "parallelism", json!(1));
            // The generated selector and labels (unless the user manages the selector).
            let manual = spec.get("manualSelector").and_then(Value::as_bool) == Some(true);
            if let (Some(uid), false) = (uid, manual) {
                if spec.get("selector").is_none_or(Value::is_null) {
                    spec.insert(
                        "selector".into(),
                        json!({"matchLabels": {JOB_CONTROLLER_UID: uid}}),
                    );
                }
                let labels = child(child(child(spec, "template"), "metadata"), "labels");
                set_default(labels, JOB_CONTROLLER_UID, json!(uid));
                set_default(labels, "controller-uid", json!(uid));
                if let Some(name) = name {
                    set_default(labels, JOB_NAME, json!(name));
                    set_default(labels, "job-name", json!(name));
                }
            }
            set_default(spec, "backoffLimit", json!(6));
            set_default(spec, "completionMode", json!("NonIndexed"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "podReplacementPolicy", json!("TerminatingOrFailed"));
            let template_spec = child(child(spec, "template"), "spec");
            set_default(template_spec, "restartPolicy", json!("Never"));
            default_pod_spec(template_spec);
        }
        ("batch", "CronJob") => {
            let spec = child(root, "spec");
            set_default(spec, "concurrencyPolicy", json!("Allow"));
            set_default(spec, "suspend", json!(false));
            set_default(spec, "successfulJobsHistoryLimit", json!(3));
            set_default(spec, "failedJobsHistoryLimit", json!(1));
            let job_spec = child(child(spec, "jobTemplate"), "spec");
            set_default(job_spec, "backoffLimit", json!(6));
            let template_spec = child(child(job_spec, "template"), "spec");
            set_default(template_spec, "restartPolicy", json!("Never"));
            default_pod_spec(template_spec);
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            set_default(root, "preemptionPolicy", json!("PreemptLowerPriority"))
        }
        _ => {}
    }
}

trait PointerName {
    fn pointer_name(&self) -> Option<String>;
}

impl PointerName for Map<String, Value> {
    fn pointer_name(&self) -> Option<String> {
        self.get("metadata")?
            .get("name")?
            .as_str()
            .map(str::to_string)
    }
}

/// Metadata members Go leaves out when empty (`omitempty` maps and lists).
const OMITTED_WHEN_EMPTY: [&str; 4] = ["labels", "annotations", "finalizers", "ownerReferences"];

/// Drops empty labels, annotations, finalizers and owner references, as Kubernetes stores them
/// (absent): a patch that empties one leaves the object as a client that never set it sees it,
/// so `kubectl diff` shows no change where there is none.
fn drop_empty_metadata(root: &mut Map<String, Value>) {
    let Some(meta) = root.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    meta.retain(|key, value| {
        let empty = match value {
            Value::Null => true,
            Value::Object(map) => map.is_empty(),
            Value::Array(list) => list.is_empty(),
            _ => false,
        };
        !(empty && OMITTED_WHEN_EMPTY.contains(&key.as_str()))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn pull_policy_follows_the_tag() {
        assert_eq!(default_pull_policy("busybox"), "Always");
        assert_eq!(default_pull_policy("busybox:latest"), "Always");
        assert_eq!(default_pull_policy("busybox:1.36"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/busybox"), "Always");
        assert_eq!(
            default_pull_policy("localhost:5000/busybox:1"),
            "IfNotPresent"
        );
        assert_eq!(default_pull_policy("busybox@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn deployment_defaults() {
        let registry = Registry::with_builtins();
        let kind = registry.get("apps", "v1", "deployments").unwrap();
        let mut d = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "image": "x:1", "ports": [{"containerPort": 80}]}]}}}});
        apply_defaults(kind, &mut d);
        assert_eq!(d["spec"]["replicas"], 1);
        assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], "25%");
        assert_eq!(d["spec"]["revisionHistoryLimit"], 10);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent");
        assert_eq!(c["ports"][0]["protocol"], "TCP");
        assert_eq!(d["spec"]["template"]["spec"]["restartPolicy"], "Always");
        // Explicit values stay.
        let mut d = json!({"spec": {"replicas": 0, "strategy": {"type": "Recreate"}}});
        apply_defaults(kind, &mut d);
        assert_eq!(d["spec"]["replicas"], 0);
        assert!(d["spec"]["strategy"].get("rollingUpdate").is_none());
    }

    #[test]
    fn empty_metadata_maps_and_lists_are_absent() {
        let registry = Registry::with_builtins();
        let kind = registry.get("", "v1", "configmaps").unwrap();
        let mut map = json!({"metadata": {"name": "m", "annotations": {}, "labels": null,
            "finalizers": [], "ownerReferences": [], "generateName": ""}});
        apply_defaults(kind, &mut map);
        assert_eq!(map["metadata"], json!({"name": "m", "generateName": ""}));
        let mut kept = json!({"metadata": {"name": "m", "annotations": {"a": "1"}}});
        apply_defaults(kind, &mut kept);
        assert_eq!(kept["metadata"]["annotations"]["a"], "1");
    }

    #[test]
    fn secrets_without_a_type_are_opaque() {
        let registry = Registry::with_builtins();
        let kind = registry.get("", "v1", "secrets").unwrap();
        for mut secret in [json!({}), json!({"type": ""})] {
            apply_defaults(kind, &mut secret);
            assert_eq!(secret["type"], "Opaque");
        }
        let mut tls = json!({"type": "kubernetes.io/tls"});
        apply_defaults(kind, &mut tls);
        assert_eq!(tls["type"], "kubernetes.io/tls");
    }
}
