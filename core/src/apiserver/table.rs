//! Server-side printing: `meta.k8s.io/v1` Tables with the columns `kubectl get` shows for each
//! served kind (wide columns at priority 1), for lists, single objects and watch events.

use crate::registry::{json_path_pointer, CustomKind, ResourceKind};
use serde_json::{json, Value};
use std::borrow::Cow;

type Cell = Box<dyn Fn(&Value) -> Value + Send + Sync>;

/// One column of a kind's table.
pub struct Column {
    name: Cow<'static, str>,
    kind: Cow<'static, str>,
    priority: i64,
    description: Cow<'static, str>,
    cell: Cell,
}

fn col(
    name: &'static str,
    priority: u8,
    cell: impl Fn(&Value) -> Value + Send + Sync + 'static,
) -> Column {
    Column {
        name: name.into(),
        kind: "string".into(),
        priority: priority.into(),
        description: "".into(),
        cell: Box::new(cell),
    }
}

fn int_col(
    name: &'static str,
    priority: u8,
    cell: impl Fn(&Value) -> Value + Send + Sync + 'static,
) -> Column {
    Column {
        name: name.into(),
        kind: "integer".into(),
        priority: priority.into(),
        description: "".into(),
        cell: Box::new(cell),
    }
}

fn s(v: &Value, pointer: &str) -> String {
    match v.pointer(pointer) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(Value::Bool(b)) => b.to_string(),
        _ => String::new(),
    }
}

fn or_none(text: String) -> Value {
    Value::String(if text.is_empty() {
        "<none>".into()
    } else {
        text
    })
}

fn not_applicable(text: String) -> Value {
    Value::String(if text.is_empty() { "N/A".into() } else { text })
}

fn i(v: &Value, pointer: &str) -> i64 {
    v.pointer(pointer).and_then(Value::as_i64).unwrap_or(0)
}

/// Seconds since an RFC 3339 timestamp.
fn seconds_since(timestamp: &str) -> Option<i64> {
    let then: k8s_openapi::jiff::Timestamp = timestamp.parse().ok()?;
    Some(k8s_openapi::jiff::Timestamp::now().as_second() - then.as_second())
}

/// Kubernetes' human-readable duration (`45s`, `5m10s`, `3h`, `2d5h`, `3y`).
pub fn human_duration(seconds: i64) -> String {
    let s = seconds.max(0);
    // "5m" or "5m10s": the larger unit, and the smaller one when it is not zero.
    let pair = |major: i64, major_unit: &str, minor: i64, minor_unit: &str| {
        if minor == 0 {
            format!("{major}{major_unit}")
        } else {
            format!("{major}{major_unit}{minor}{minor_unit}")
        }
    };
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => pair(s / 60, "m", s % 60, "s"),
        600..=10799 => format!("{}m", s / 60),
        10800..=28799 => pair(s / 3600, "h", (s % 3600) / 60, "m"),
        28800..=172799 => format!("{}h", s / 3600),
        172800..=691199 => pair(s / 86400, "d", (s % 86400) / 3600, "h"),
        691200..=31535999 => format!("{}d", s / 86400),
        _ => format!("{}y", s / 31536000),
    }
}

fn age(v: &Value) -> Value {
    let ts = s(v, "/metadata/creationTimestamp");
    Value::String(seconds_since(&ts).map_or("<unknown>".into(), human_duration))
}

fn name_col() -> Column {
    Column {
        name: "Name".into(),
        kind: "string".into(),
        priority: 0,
        description: "Name must be unique within a namespace.".into(),
        cell: Box::new(|v| json!(s(v, "/metadata/name"))),
    }
}

fn age_col() -> Column {
    col("Age", 0, age)
}

fn selector_text(v: &Value, pointer: &str) -> String {
    let Some(labels) = v.pointer(pointer).and_then(Value::as_object) else {
        return String::new();
    };
    labels
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
        .collect::<Vec<_>>()
        .join(",")
}

fn label_selector_text(v: &Value) -> String {
    let Some(sel) = v.pointer("/spec/selector") else {
        return String::new();
    };
    let ls: Result<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector, _> =
        serde_json::from_value(sel.clone());
    ls.ok()
        .and_then(|ls| crate::selector::LabelSelector::try_from(&ls).ok())
        .map(|s| s.to_string())
        .unwrap_or_default()
}

fn template_field(v: &Value, field: &str) -> String {
    v.pointer("/spec/template/spec/containers")
        .and_then(Value::as_array)
        .map(|cs| {
            cs.iter()
                .map(|c| s(c, &format!("/{field}")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn pod_status(v: &Value) -> String {
    if v.pointer("/metadata/deletionTimestamp")
        .is_some_and(|t| !t.is_null())
    {
        return "Terminating".into();
    }
    let reason = s(v, "/status/reason");
    if !reason.is_empty() {
        return reason;
    }
    for list in ["/status/initContainerStatuses", "/status/containerStatuses"] {
        for cs in v
            .pointer(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let waiting = s(cs, "/state/waiting/reason");
            if !waiting.is_empty() && waiting != "ContainerCreating" {
                return waiting;
            }
            let terminated = s(cs, "/state/terminated/reason");
            if !terminated.is_empty()
                && list.ends_with("containerStatuses")
                && s(v, "/status/phase") != "Succeeded"
                && s(v, "/status/phase") != "Failed"
            {
                return terminated;
            }
        }
    }
    let phase = s(v, "/status/phase");
    if phase.is_empty() {
        "Pending".into()
    } else {
        phase
    }
}

fn pod_ready(v: &Value) -> String {
    let total = v
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let ready = v
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |cs| {
            cs.iter()
                .filter(|c| c["ready"].as_bool() == Some(true))
                .count()
        });
    format!("{ready}/{total}")
}

fn pod_restarts(v: &Value) -> Value {
    let n: i64 = v
        .pointer("/status/containerStatuses")
        .and_then(Value::as_array)
        .map_or(0, |cs| {
            cs.iter()
                .map(|c| c["restartCount"].as_i64().unwrap_or(0))
                .sum()
        });
    json!(n)
}

fn node_status(v: &Value) -> String {
    let ready = v
        .pointer("/status/conditions")
        .and_then(Value::as_array)
        .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
        .map(|c| s(c, "/status"));
    let mut status = match ready.as_deref() {
        Some("True") => "Ready".to_string(),
        Some(_) => "NotReady".to_string(),
        None => "Unknown".to_string(),
    };
    if v.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
        status.push_str(",SchedulingDisabled");
    }
    status
}

fn node_roles(v: &Value) -> String {
    let roles: Vec<String> = v
        .pointer("/metadata/labels")
        .and_then(Value::as_object)
        .map(|labels| {
            labels
                .keys()
                .filter_map(|k| k.strip_prefix("node-role.kubernetes.io/"))
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default();
    if roles.is_empty() {
        "<none>".into()
    } else {
        roles.join(",")
    }
}

fn node_address(v: &Value, kind: &str) -> Value {
    let found = v
        .pointer("/status/addresses")
        .and_then(Value::as_array)
        .and_then(|a| a.iter().find(|x| x["type"] == kind))
        .map(|x| s(x, "/address"));
    or_none(found.unwrap_or_default())
}

fn service_ports(v: &Value) -> String {
    let ports: Vec<String> = v
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|p| {
            let node = p
                .get("nodePort")
                .and_then(Value::as_i64)
                .map(|n| format!(":{n}"))
                .unwrap_or_default();
            format!("{}{node}/{}", i(p, "/port"), s(p, "/protocol"))
        })
        .collect();
    if ports.is_empty() {
        "<none>".into()
    } else {
        ports.join(",")
    }
}

fn count_map(v: &Value, fields: &[&str]) -> Value {
    json!(fields
        .iter()
        .map(|f| v.get(*f).and_then(Value::as_object).map_or(0, |m| m.len()))
        .sum::<usize>())
}

/// The wide columns of workloads with a pod template: containers, images and (optionally) the
/// selector.
fn template_columns(with_selector: bool) -> Vec<Column> {
    let mut columns = vec![
        col("Containers", 1, |v| json!(template_field(v, "name"))),
        col("Images", 1, |v| json!(template_field(v, "image"))),
    ];
    if with_selector {
        columns.push(col("Selector", 1, |v| json!(label_selector_text(v))));
    }
    columns
}

/// The columns of a kind.
pub fn columns(kind: &ResourceKind) -> Vec<Column> {
    match (kind.group.as_str(), kind.plural.as_str()) {
        ("", "pods") => vec![
            name_col(),
            col("Ready", 0, |v| json!(pod_ready(v))),
            col("Status", 0, |v| json!(pod_status(v))),
            int_col("Restarts", 0, pod_restarts),
            age_col(),
            col("IP", 1, |v| or_none(s(v, "/status/podIP"))),
            col("Node", 1, |v| or_none(s(v, "/spec/nodeName"))),
            col("Nominated Node", 1, |v| {
                or_none(s(v, "/status/nominatedNodeName"))
            }),
            col("Readiness Gates", 1, |_| json!("<none>")),
        ],
        ("", "nodes") => vec![
            name_col(),
            col("Status", 0, |v| json!(node_status(v))),
            col("Roles", 0, |v| json!(node_roles(v))),
            age_col(),
            col("Version", 0, |v| {
                json!(s(v, "/status/nodeInfo/kubeletVersion"))
            }),
            col("Internal-IP", 1, |v| node_address(v, "InternalIP")),
            col("External-IP", 1, |v| node_address(v, "ExternalIP")),
            col("OS-Image", 1, |v| json!(s(v, "/status/nodeInfo/osImage"))),
            col("Kernel-Version", 1, |v| {
                json!(s(v, "/status/nodeInfo/kernelVersion"))
            }),
            col("Container-Runtime", 1, |v| {
                json!(s(v, "/status/nodeInfo/containerRuntimeVersion"))
            }),
        ],
        ("", "namespaces") => vec![
            name_col(),
            col("Status", 0, |v| json!(s(v, "/status/phase"))),
            age_col(),
        ],
        ("", "services") => vec![
            name_col(),
            col("Type", 0, |v| json!(s(v, "/spec/type"))),
            col("Cluster-IP", 0, |v| or_none(s(v, "/spec/clusterIP"))),
            col("External-IP", 0, |v| {
                let ext = s(v, "/spec/externalName");
                or_none(ext)
            }),
            col("Port(s)", 0, |v| json!(service_ports(v))),
            age_col(),
            col("Selector", 1, |v| {
                or_none(selector_text(v, "/spec/selector"))
            }),
        ],
        ("", "endpoints") => vec![
            name_col(),
            col("Endpoints", 0, |v| {
                let mut out = Vec::new();
                for subset in v
                    .get("subsets")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                {
                    for a in subset
                        .get("addresses")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                    {
                        for p in subset
                            .get("ports")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            out.push(format!("{}:{}", s(a, "/ip"), i(p, "/port")));
                        }
                    }
                }
                or_none(out.join(","))
            }),
            age_col(),
        ],
        ("", "configmaps") => vec![
            name_col(),
            int_col("Data", 0, |v| count_map(v, &["data", "binaryData"])),
            age_col(),
        ],
        ("", "secrets") => vec![
            name_col(),
            col("Type", 0, |v| json!(s(v, "/type"))),
            int_col("Data", 0, |v| count_map(v, &["data"])),
            age_col(),
        ],
        ("", "serviceaccounts") => vec![
            name_col(),
            int_col("Secrets", 0, |v| {
                json!(v
                    .get("secrets")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len))
            }),
            age_col(),
        ],
        ("", "componentstatuses") => vec![
            name_col(),
            col("Status", 0, |v| {
                json!(
                    match v.pointer("/conditions/0/status").and_then(Value::as_str) {
                        Some("True") => "Healthy",
                        Some("False") => "Unhealthy",
                        _ => "Unknown",
                    }
                )
            }),
            col("Message", 0, |v| json!(s(v, "/conditions/0/message"))),
            col("Error", 0, |v| json!(s(v, "/conditions/0/error"))),
        ],
        ("", "events") => vec![
            col("Last Seen", 0, |v| {
                let ts = [
                    s(v, "/lastTimestamp"),
                    s(v, "/eventTime"),
                    s(v, "/metadata/creationTimestamp"),
                ]
                .into_iter()
                .find(|t| !t.is_empty())
                .unwrap_or_default();
                json!(seconds_since(&ts).map_or("<unknown>".into(), human_duration))
            }),
            col("Type", 0, |v| json!(s(v, "/type"))),
            col("Reason", 0, |v| json!(s(v, "/reason"))),
            col("Object", 0, |v| {
                json!(format!(
                    "{}/{}",
                    s(v, "/involvedObject/kind").to_lowercase(),
                    s(v, "/involvedObject/name")
                ))
            }),
            col("Message", 0, |v| json!(s(v, "/message"))),
        ],
        ("apps", "deployments") => vec![
            name_col(),
            col("Ready", 0, |v| {
                json!(format!(
                    "{}/{}",
                    i(v, "/status/readyReplicas"),
                    i(v, "/spec/replicas")
                ))
            }),
            int_col("Up-to-date", 0, |v| json!(i(v, "/status/updatedReplicas"))),
            int_col("Available", 0, |v| json!(i(v, "/status/availableReplicas"))),
            age_col(),
        ]
        .into_iter()
        .chain(template_columns(true))
        .collect(),
        ("apps", "replicasets") => vec![
            name_col(),
            int_col("Desired", 0, |v| json!(i(v, "/spec/replicas"))),
            int_col("Current", 0, |v| json!(i(v, "/status/replicas"))),
            int_col("Ready", 0, |v| json!(i(v, "/status/readyReplicas"))),
            age_col(),
        ]
        .into_iter()
        .chain(template_columns(true))
        .collect(),
        ("apps", "statefulsets") => vec![
            name_col(),
            col("Ready", 0, |v| {
                json!(format!(
                    "{}/{}",
                    i(v, "/status/readyReplicas"),
                    i(v, "/spec/replicas")
                ))
            }),
            age_col(),
        ]
        .into_iter()
        .chain(template_columns(false))
        .collect(),
        ("apps", "daemonsets") => vec![
            name_col(),
            int_col("Desired", 0, |v| {
                json!(i(v, "/status/desiredNumberScheduled"))
            }),
            int_col("Current", 0, |v| {
                json!(i(v, "/status/currentNumberScheduled"))
            }),
            int_col("Ready", 0, |v| json!(i(v, "/status/numberReady"))),
            int_col("Up-to-date", 0, |v| {
                json!(i(v, "/status/updatedNumberScheduled"))
            }),
            int_col("Available", 0, |v| json!(i(v, "/status/numberAvailable"))),
            col("Node Selector", 0, |v| {
                or_none(selector_text(v, "/spec/template/spec/nodeSelector"))
            }),
            age_col(),
        ]
        .into_iter()
        .chain(template_columns(false))
        .collect(),
        ("apps", "controllerrevisions") => vec![
            name_col(),
            col("Controller", 0, |v| {
                let owner = v.pointer("/metadata/ownerReferences/0");
                json!(owner.map_or("<none>".into(), |o| format!(
                    "{}/{}",
                    s(o, "/kind").to_lowercase(),
                    s(o, "/name")
                )))
            }),
            int_col("Revision", 0, |v| json!(i(v, "/revision"))),
            age_col(),
        ],
        ("batch", "jobs") => vec![
            name_col(),
            col("Status", 0, |v| {
                let done = v
                    .pointer("/status/conditions")
                    .and_then(Value::as_array)
                    .and_then(|cs| {
                        cs.iter().find(|c| {
                            c["status"] == "True"
                                && (c["type"] == "Complete" || c["type"] == "Failed")
                        })
                    })
                    .map(|c| s(c, "/type"));
                json!(done.unwrap_or_else(|| "Running".into()))
            }),
            col("Completions", 0, |v| {
                json!(format!(
                    "{}/{}",
                    i(v, "/status/succeeded"),
                    v.pointer("/spec/completions")
                        .and_then(Value::as_i64)
                        .unwrap_or(1)
                ))
            }),
            col("Duration", 0, |v| {
                let start = s(v, "/status/startTime");
                json!(seconds_since(&start).map_or(String::new(), human_duration))
            }),
            age_col(),
        ],
        ("batch", "cronjobs") => vec![
            name_col(),
            col("Schedule", 0, |v| json!(s(v, "/spec/schedule"))),
            col("Timezone", 0, |v| or_none(s(v, "/spec/timeZone"))),
            col("Suspend", 0, |v| {
                json!(v
                    .pointer("/spec/suspend")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string()
                    .replace('f', "F")
                    .replace('t', "T"))
            }),
            int_col("Active", 0, |v| {
                json!(v
                    .pointer("/status/active")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len))
            }),
            col("Last Schedule", 0, |v| {
                json!(seconds_since(&s(v, "/status/lastScheduleTime"))
                    .map_or("<none>".into(), human_duration))
            }),
            age_col(),
        ],
        ("coordination.k8s.io", "leases") => vec![
            name_col(),
            col("Holder", 0, |v| json!(s(v, "/spec/holderIdentity"))),
            age_col(),
        ],
        ("discovery.k8s.io", "endpointslices") => vec![
            name_col(),
            col("AddressType", 0, |v| json!(s(v, "/addressType"))),
            col("Ports", 0, |v| {
                json!(v
                    .get("ports")
                    .and_then(Value::as_array)
                    .map(|ps| ps
                        .iter()
                        .map(|p| i(p, "/port").to_string())
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default())
            }),
            col("Endpoints", 0, |v| {
                json!(v
                    .get("endpoints")
                    .and_then(Value::as_array)
                    .map(|es| es
                        .iter()
                        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                        .filter_map(|a| a.as_str().map(str::to_string))
                        .collect::<Vec<_>>()
                        .join(","))
                    .unwrap_or_default())
            }),
            age_col(),
        ],
        ("policy", "poddisruptionbudgets") => vec![
            name_col(),
            col("Min Available", 0, |v| {
                not_applicable(s(v, "/spec/minAvailable"))
            }),
            col("Max Unavailable", 0, |v| {
                not_applicable(s(v, "/spec/maxUnavailable"))
            }),
            int_col("Allowed Disruptions", 0, |v| {
                json!(i(v, "/status/disruptionsAllowed"))
            }),
            age_col(),
        ],
        ("scheduling.k8s.io", "priorityclasses") => vec![
            name_col(),
            int_col("Value", 0, |v| json!(i(v, "/value"))),
            col("Global-Default", 0, |v| {
                json!(v
                    .get("globalDefault")
                    .and_then(Value::as_bool)
                    .unwrap_or(false)
                    .to_string())
            }),
            age_col(),
            col("PreemptionPolicy", 0, |v| json!(s(v, "/preemptionPolicy"))),
        ],
        ("autoscaling", "horizontalpodautoscalers") => vec![
            name_col(),
            col("Reference", 0, |v| {
                json!(format!(
                    "{}/{}",
                    s(v, "/spec/scaleTargetRef/kind"),
                    s(v, "/spec/scaleTargetRef/name")
                ))
            }),
            col("Targets", 0, |_| json!("<unknown>")),
            int_col("MinPods", 0, |v| {
                json!(v
                    .pointer("/spec/minReplicas")
                    .and_then(Value::as_i64)
                    .unwrap_or(1))
            }),
            int_col("MaxPods", 0, |v| json!(i(v, "/spec/maxReplicas"))),
            int_col("Replicas", 0, |v| json!(i(v, "/status/currentReplicas"))),
            age_col(),
        ],
        _ => match &kind.custom {
            Some(custom) => custom_columns(custom),
            None => vec![
                name_col(),
                Column {
                    name: "Created At".into(),
                    kind: "date".into(),
                    priority: 0,
                    description: "CreationTimestamp".into(),
                    cell: Box::new(|v| json!(s(v, "/metadata/creationTimestamp"))),
                },
            ],
        },
    }
}

/// A custom kind's columns: its CRD's printer columns (read by simple JSONPath), or Age.
fn custom_columns(custom: &CustomKind) -> Vec<Column> {
    let mut columns = vec![name_col()];
    if custom.printer_columns.is_empty() {
        columns.push(age_col());
    }
    for printer in &custom.printer_columns {
        let pointer = json_path_pointer(&printer.json_path);
        let is_date = printer.type_ == "date";
        let is_age = is_date && pointer == "/metadata/creationTimestamp";
        columns.push(Column {
            name: printer.name.clone().into(),
            kind: printer.type_.clone().into(),
            priority: printer.priority,
            description: printer.description.clone().into(),
            cell: Box::new(move |v| match v.pointer(&pointer) {
                None => Value::Null,
                Some(_) if is_age => age(v),
                Some(Value::String(ts)) if is_date => {
                    Value::String(seconds_since(ts).map_or_else(|| ts.clone(), human_duration))
                }
                Some(value) => value.clone(),
            }),
        });
    }
    columns
}

/// What each row of a Table carries besides its cells (the `includeObject` parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RowObject {
    /// Nothing.
    None,
    /// The object's metadata, as a `PartialObjectMetadata` (the default).
    #[default]
    Metadata,
    /// The whole object (kubectl asks for it to sort by a field: `--sort-by`).
    Object,
}

impl RowObject {
    /// The choice an `includeObject` value names; an absent or unknown one is the default.
    pub fn named(value: Option<&str>) -> RowObject {
        match value {
            Some("None") => RowObject::None,
            Some("Object") => RowObject::Object,
            _ => RowObject::Metadata,
        }
    }

    fn of(self, object: &Value) -> Value {
        match self {
            RowObject::None => Value::Null,
            RowObject::Metadata => {
                json!({"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": object.get("metadata").cloned().unwrap_or(json!({}))})
            }
            RowObject::Object => object.clone(),
        }
    }
}

/// The column definitions of a kind.
pub fn column_definitions(columns: &[Column]) -> Value {
    Value::Array(
        columns
            .iter()
            .map(|c| {
                let format = if c.name == "Name" { "name" } else { "" };
                json!({"name": c.name, "type": c.kind, "format": format, "description": c.description, "priority": c.priority})
            })
            .collect(),
    )
}

/// One table row for an object.
pub fn row(columns: &[Column], object: &Value, include: RowObject) -> Value {
    let cells: Vec<Value> = columns.iter().map(|c| (c.cell)(object)).collect();
    match include.of(object) {
        Value::Null => json!({"cells": cells}),
        carried => json!({"cells": cells, "object": carried}),
    }
}

/// A Table of objects.
pub fn table(
    kind: &ResourceKind,
    objects: &[Value],
    resource_version: &str,
    continue_token: Option<&str>,
    with_definitions: bool,
    include: RowObject,
) -> Value {
    let columns = columns(kind);
    let rows: Vec<Value> = objects.iter().map(|o| row(&columns, o, include)).collect();
    let mut metadata = json!({"resourceVersion": resource_version});
    if let Some(token) = continue_token {
        metadata["continue"] = json!(token);
    }
    let definitions = if with_definitions {
        column_definitions(&columns)
    } else {
        json!([])
    };
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": metadata, "columnDefinitions": definitions, "rows": rows})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(130), "2m10s");
        assert_eq!(human_duration(3600 * 5 + 60 * 3), "5h3m");
        assert_eq!(human_duration(86400 * 3 + 3600), "3d1h");
        assert_eq!(human_duration(86400 * 40), "40d");
    }

    #[test]
    fn pod_rows() {
        let registry = crate::registry::Registry::with_builtins();
        let pods = registry.get("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "web"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}], "nodeName": "n1"},
            "status": {"phase": "Running", "podIP": "10.244.0.5", "containerStatuses": [{"ready": true, "restartCount": 2}, {"ready": false, "restartCount": 1}]}});
        let rows = |include| table(pods, std::slice::from_ref(&pod), "7", None, true, include);
        let t = rows(RowObject::named(None));
        assert_eq!(t["rows"][0]["cells"][0], "web");
        assert_eq!(t["rows"][0]["cells"][1], "1/2");
        assert_eq!(t["rows"][0]["cells"][2], "Running");
        assert_eq!(t["rows"][0]["cells"][3], 3);
        assert_eq!(t["rows"][0]["cells"][5], "10.244.0.5");
        assert_eq!(t["columnDefinitions"][5]["priority"], 1);
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        // `includeObject=Object` (kubectl --sort-by) embeds the whole object; `None` nothing.
        assert_eq!(
            rows(RowObject::named(Some("Object")))["rows"][0]["object"],
            pod
        );
        assert!(rows(RowObject::named(Some("None")))["rows"][0]
            .get("object")
            .is_none());
    }
}
