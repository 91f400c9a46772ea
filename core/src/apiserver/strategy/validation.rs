//! Validation of built-in kinds with Kubernetes' field paths: metadata (names, labels,
//! annotations), pods, workloads (selector matches template, selector immutable), services
//! and config data. Returns every problem found, not just the first.

use super::super::Cause;
use crate::registry::ResourceKind;
use crate::selector::LabelSelector;
use crate::validation::{
    is_dns1035_label, is_dns1123_label, is_dns1123_subdomain, is_label_value, is_path_segment_name,
    is_qualified_name,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use serde_json::Value;
use std::collections::{BTreeMap, HashSet};

fn str_at<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

/// A name, label or value rule from [`crate::validation`].
type NameRule = fn(&str) -> Result<(), Vec<crate::validation::NameError>>;

fn name_rule(kind: &ResourceKind) -> NameRule {
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Namespace") => is_dns1123_label,
        ("", "Service") => is_dns1035_label,
        ("", "Node") | ("", "Event") | ("events.k8s.io", "Event") => is_path_segment_name,
        ("", _)
        | ("apps", _)
        | ("batch", _)
        | ("policy", _)
        | ("scheduling.k8s.io", _)
        | ("coordination.k8s.io", _)
        | ("discovery.k8s.io", _)
        | ("autoscaling", _) => is_dns1123_subdomain,
        _ => is_path_segment_name,
    }
}

fn validate_metadata(kind: &ResourceKind, object: &Value, causes: &mut Vec<Cause>) {
    let Some(meta) = object.get("metadata").filter(|m| m.is_object()) else {
        causes.push(Cause::required("metadata"));
        return;
    };
    match meta.get("name").and_then(Value::as_str) {
        Some(name) if !name.is_empty() => {
            if let Err(problems) = name_rule(kind)(name) {
                for p in problems {
                    causes.push(Cause::invalid(
                        "metadata.name",
                        &Value::String(name.into()),
                        p.0,
                    ));
                }
            }
        }
        _ => causes.push(Cause::required("metadata.name")),
    }
    let mut check_map = |field: &str, value_rule: Option<NameRule>| {
        let Some(map) = meta.get(field) else { return };
        let Some(map) = map.as_object() else {
            if !map.is_null() {
                causes.push(Cause::invalid(
                    format!("metadata.{field}"),
                    map,
                    "must be a map of strings",
                ));
            }
            return;
        };
        for (key, value) in map {
            if let Err(problems) = is_qualified_name(key) {
                causes.push(Cause::invalid(
                    format!("metadata.{field}"),
                    &Value::String(key.clone()),
                    &problems[0].0,
                ));
            }
            match (value.as_str(), value_rule) {
                (None, _) => causes.push(Cause::invalid(
                    format!("metadata.{field}.{key}"),
                    value,
                    "must be a string",
                )),
                (Some(v), Some(rule)) => {
                    if let Err(problems) = rule(v) {
                        causes.push(Cause::invalid(
                            format!("metadata.{field}"),
                            value,
                            &problems[0].0,
                        ));
                    }
                }
                _ => {}
            }
        }
    };
    check_map("labels", Some(is_label_value));
    check_map("annotations", None);
    let total: usize = meta
        .get("annotations")
        .and_then(Value::as_object)
        .map_or(0, |m| {
            m.iter()
                .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
                .sum()
        });
    if total > 256 * 1024 {
        causes.push(Cause {
            reason: "FieldValueTooLong",
            message: format!("Too long: may not be more than 262144 bytes (got {total})"),
            field: "metadata.annotations".into(),
        });
    }
}

fn validate_ports(ports: Option<&Value>, path: &str, causes: &mut Vec<Cause>, number_field: &str) {
    let Some(ports) = ports.and_then(Value::as_array) else {
        return;
    };
    let mut names = HashSet::new();
    for (i, port) in ports.iter().enumerate() {
        let here = format!("{path}[{i}]");
        match port.get(number_field) {
            Some(Value::Number(n)) if n.as_i64().is_some_and(|p| (1..=65535).contains(&p)) => {}
            Some(v) => causes.push(Cause::invalid(
                format!("{here}.{number_field}"),
                v,
                "must be between 1 and 65535, inclusive",
            )),
            None => causes.push(Cause::required(format!("{here}.{number_field}"))),
        }
        if let Some(protocol) = port.get("protocol") {
            if !matches!(protocol.as_str(), Some("TCP" | "UDP" | "SCTP")) {
                causes.push(Cause::not_supported(
                    format!("{here}.protocol"),
                    protocol,
                    &["SCTP", "TCP", "UDP"],
                ));
            }
        }
        if let Some(name) = port
            .get("name")
            .and_then(Value::as_str)
            .filter(|n| !n.is_empty())
        {
            if !names.insert(name.to_string()) {
                causes.push(Cause::duplicate(
                    format!("{here}.name"),
                    &Value::String(name.into()),
                ));
            }
        }
    }
}

fn validate_pod_spec(spec: Option<&Value>, path: &str, causes: &mut Vec<Cause>) {
    let Some(spec) = spec.filter(|s| s.is_object()) else {
        causes.push(Cause::required(path.to_string()));
        return;
    };
    let mut names = HashSet::new();
    let containers = spec.get("containers").and_then(Value::as_array);
    if containers.is_none_or(Vec::is_empty) {
        causes.push(Cause::required(format!("{path}.containers")));
    }
    for (list, items) in [
        (
            "initContainers",
            spec.get("initContainers").and_then(Value::as_array),
        ),
        ("containers", containers),
    ] {
        for (i, c) in items.into_iter().flatten().enumerate() {
            let here = format!("{path}.{list}[{i}]");
            match c.get("name").and_then(Value::as_str) {
                Some(name) if !name.is_empty() => {
                    if let Err(problems) = is_dns1123_label(name) {
                        causes.push(Cause::invalid(
                            format!("{here}.name"),
                            &Value::String(name.into()),
                            &problems[0].0,
                        ));
                    }
                    if !names.insert(name.to_string()) {
                        causes.push(Cause::duplicate(
                            format!("{here}.name"),
                            &Value::String(name.into()),
                        ));
                    }
                }
                _ => causes.push(Cause::required(format!("{here}.name"))),
            }
            if c.get("image")
                .and_then(Value::as_str)
                .is_none_or(|i| i.trim().is_empty())
            {
                causes.push(Cause::required(format!("{here}.image")));
            }
            if let Some(policy) = c.get("imagePullPolicy") {
                if !matches!(policy.as_str(), Some("Always" | "IfNotPresent" | "Never")) {
                    causes.push(Cause::not_supported(
                        format!("{here}.imagePullPolicy"),
                        policy,
                        &["Always", "IfNotPresent", "Never"],
                    ));
                }
            }
            validate_ports(
                c.get("ports"),
                &format!("{here}.ports"),
                causes,
                "containerPort",
            );
        }
    }
    if let Some(policy) = spec.get("restartPolicy") {
        if !matches!(policy.as_str(), Some("Always" | "OnFailure" | "Never")) {
            causes.push(Cause::not_supported(
                format!("{path}.restartPolicy"),
                policy,
                &["Always", "OnFailure", "Never"],
            ));
        }
    }
    if let Some(grace) = spec.get("terminationGracePeriodSeconds") {
        if grace.as_i64().is_none_or(|g| g < 0) {
            causes.push(Cause::invalid(
                format!("{path}.terminationGracePeriodSeconds"),
                grace,
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn validate_selector_and_template(spec: &Value, causes: &mut Vec<Cause>, require_selector: bool) {
    let selector = spec.get("selector");
    let parsed = match selector {
        None | Some(Value::Null) => {
            if require_selector {
                causes.push(Cause::required("spec.selector"));
            }
            None
        }
        Some(s) => match serde_json::from_value::<metav1::LabelSelector>(s.clone()) {
            Ok(ls) => match LabelSelector::try_from(&ls) {
                Ok(sel) if sel.is_everything() && require_selector => {
                    causes.push(Cause::invalid(
                        "spec.selector",
                        s,
                        "empty selector is invalid for deployment",
                    ));
                    None
                }
                Ok(sel) => Some(sel),
                Err(e) => {
                    causes.push(Cause::invalid("spec.selector", s, e.to_string()));
                    None
                }
            },
            Err(e) => {
                causes.push(Cause::invalid("spec.selector", s, e.to_string()));
                None
            }
        },
    };
    let labels: BTreeMap<String, String> = spec
        .pointer("/template/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    if let Some(selector) = parsed {
        if !selector.matches(&labels) {
            causes.push(Cause::invalid(
                "spec.template.metadata.labels",
                &serde_json::to_value(&labels).unwrap_or_default(),
                "`selector` does not match template `labels`",
            ));
        }
    }
    validate_pod_spec(spec.pointer("/template/spec"), "spec.template.spec", causes);
}

fn non_negative(spec: &Value, field: &str, causes: &mut Vec<Cause>) {
    if let Some(v) = spec.get(field) {
        if v.as_i64().is_none_or(|n| n < 0) {
            causes.push(Cause::invalid(
                format!("spec.{field}"),
                v,
                "must be greater than or equal to 0",
            ));
        }
    }
}

fn validate_service(object: &Value, causes: &mut Vec<Cause>) {
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    let kind = spec
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    if !matches!(
        kind,
        "ClusterIP" | "NodePort" | "LoadBalancer" | "ExternalName"
    ) {
        causes.push(Cause::not_supported(
            "spec.type",
            &spec["type"],
            &["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"],
        ));
    }
    let headless = spec.get("clusterIP").and_then(Value::as_str) == Some("None");
    if kind == "ExternalName" {
        if str_at(&spec, "/externalName").is_none_or(str::is_empty) {
            causes.push(Cause::required("spec.externalName"));
        }
    } else if spec
        .get("ports")
        .and_then(Value::as_array)
        .is_none_or(Vec::is_empty)
        && !headless
    {
        causes.push(Cause::required("spec.ports"));
    }
    validate_ports(spec.get("ports"), "spec.ports", causes, "port");
    if let Some(ports) = spec.get("ports").and_then(Value::as_array) {
        if ports.len() > 1 {
            for (i, port) in ports.iter().enumerate() {
                if port
                    .get("name")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    causes.push(Cause::required(format!("spec.ports[{i}].name")));
                }
            }
        }
        for (i, port) in ports.iter().enumerate() {
            if let Some(node_port) = port.get("nodePort") {
                if kind == "ClusterIP" {
                    causes.push(Cause::forbidden(
                        format!("spec.ports[{i}].nodePort"),
                        "may not be used when `type` is 'ClusterIP'",
                    ));
                } else if node_port.as_i64().is_none_or(|p| !(1..=65535).contains(&p)) {
                    causes.push(Cause::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        node_port,
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
        }
    }
}

fn validate_data_keys(object: &Value, causes: &mut Vec<Cause>) {
    for field in ["data", "binaryData", "stringData"] {
        for key in object
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
            .map(|(k, _)| k)
        {
            let ok = !key.is_empty()
                && key.len() <= 253
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                && key != "."
                && key != "..";
            if !ok {
                causes.push(Cause::invalid(
                    field,
                    &Value::String(key.clone()),
                    "a valid config key must consist of alphanumeric characters, '-', '_' or '.'",
                ));
            }
        }
    }
}

/// Most bytes of data a ConfigMap or Secret may hold (keys and decoded values), as in Kubernetes.
const MAX_DATA_BYTES: usize = 1024 * 1024;

fn validate_data_size(kind: &str, object: &Value, causes: &mut Vec<Cause>) {
    let mut total = 0;
    for field in ["data", "binaryData", "stringData"] {
        for (key, value) in object
            .get(field)
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let text = value.as_str().unwrap_or_default();
            // Base64 in a Secret's data and in binaryData: count the bytes it decodes to.
            let base64 = field == "binaryData" || (field == "data" && kind == "Secret");
            total += key.len()
                + if base64 {
                    text.trim_end_matches('=').len() * 3 / 4
                } else {
                    text.len()
                };
        }
    }
    if total > MAX_DATA_BYTES {
        causes.push(Cause::too_long(
            if kind == "Secret" { "data" } else { "[]" },
            MAX_DATA_BYTES,
        ));
    }
}

/// Validates an object of `kind` on create (and as the new state on update).
pub fn validate_object(kind: &ResourceKind, object: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    if !object.is_object() {
        return vec![Cause::invalid("", object, "must be a JSON object")];
    }
    validate_metadata(kind, object, &mut causes);
    super::custom::validate_custom(kind, object, &mut causes);
    if kind.group == "apiextensions.k8s.io" && kind.kind == "CustomResourceDefinition" {
        causes.extend(crate::apiserver::crd::validate_definition(object));
    }
    let spec = object.get("spec").cloned().unwrap_or(Value::Null);
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Pod") => validate_pod_spec(object.get("spec"), "spec", &mut causes),
        ("", "Service") => validate_service(object, &mut causes),
        ("", "ConfigMap") | ("", "Secret") => {
            validate_data_keys(object, &mut causes);
            validate_data_size(&kind.kind, object, &mut causes);
        }
        ("apps", "Deployment") | ("apps", "ReplicaSet") | ("apps", "StatefulSet") => {
            non_negative(&spec, "replicas", &mut causes);
            validate_selector_and_template(&spec, &mut causes, true);
        }
        ("apps", "DaemonSet") => validate_selector_and_template(&spec, &mut causes, true),
        ("batch", "Job") => {
            for f in ["parallelism", "completions", "backoffLimit"] {
                non_negative(&spec, f, &mut causes);
            }
            if let Some(policy) = spec.pointer("/template/spec/restartPolicy") {
                if !matches!(policy.as_str(), Some("Never" | "OnFailure")) {
                    causes.push(Cause::not_supported(
                        "spec.template.spec.restartPolicy",
                        policy,
                        &["OnFailure", "Never"],
                    ));
                }
            }
            validate_pod_spec(
                spec.pointer("/template/spec"),
                "spec.template.spec",
                &mut causes,
            );
        }
        ("batch", "CronJob") => {
            if str_at(&spec, "/schedule").is_none_or(str::is_empty) {
                causes.push(Cause::required("spec.schedule"));
            }
            validate_pod_spec(
                spec.pointer("/jobTemplate/spec/template/spec"),
                "spec.jobTemplate.spec.template.spec",
                &mut causes,
            );
        }
        ("scheduling.k8s.io", "PriorityClass")
            if object.get("value").and_then(Value::as_i64).is_none() =>
        {
            causes.push(Cause::required("value"));
        }
        _ => {}
    }
    causes
}

/// Checks the rules that only apply to a change: immutable fields.
pub fn validate_update(kind: &ResourceKind, old: &Value, new: &Value) -> Vec<Cause> {
    let mut causes = Vec::new();
    let immutable: &[(&str, &str)] = match (kind.group.as_str(), kind.kind.as_str()) {
        ("apps", "Deployment")
        | ("apps", "ReplicaSet")
        | ("apps", "DaemonSet")
        | ("apps", "StatefulSet") => &[("/spec/selector", "spec.selector")],
        ("batch", "Job") => &[
            ("/spec/selector", "spec.selector"),
            ("/spec/completionMode", "spec.completionMode"),
        ],
        ("", "Service") => &[("/spec/clusterIP", "spec.clusterIP")],
        ("", "Pod") => &[("/spec/containers/0/name", "spec.containers[0].name")],
        _ => &[],
    };
    for (pointer, field) in immutable {
        if old.pointer(pointer) != new.pointer(pointer) && new.pointer(pointer).is_some() {
            causes.push(Cause::invalid(
                *field,
                new.pointer(pointer).unwrap_or(&Value::Null),
                "field is immutable",
            ));
        }
    }
    if let (Some(old_ns), Some(new_ns)) = (
        old.pointer("/metadata/namespace"),
        new.pointer("/metadata/namespace"),
    ) {
        if old_ns != new_ns {
            causes.push(Cause::invalid(
                "metadata.namespace",
                new_ns,
                "field is immutable",
            ));
        }
    }
    causes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn pod_errors_name_their_fields() {
        let registry = Registry::with_builtins();
        let pods = registry.get("", "v1", "pods").unwrap();
        let pod = json!({"metadata": {"name": "Bad_Name", "labels": {"-x": "y"}}, "spec": {"containers": [
            {"name": "a", "image": ""}, {"name": "a", "image": "x", "ports": [{"containerPort": 70000}]}]}});
        let fields: Vec<String> = validate_object(pods, &pod)
            .into_iter()
            .map(|c| c.field)
            .collect();
        for expected in [
            "metadata.name",
            "metadata.labels",
            "spec.containers[0].image",
            "spec.containers[1].name",
            "spec.containers[1].ports[0].containerPort",
        ] {
            assert!(
                fields.iter().any(|f| f == expected),
                "{expected} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn deployment_selector_must_match_and_is_immutable() {
        let registry = Registry::with_builtins();
        let deploy = registry.get("apps", "v1", "deployments").unwrap();
        let d = json!({"metadata": {"name": "d"}, "spec": {"selector": {"matchLabels": {"app": "a"}}, "template": {"metadata": {"labels": {"app": "b"}}, "spec": {"containers": [{"name": "c", "image": "i"}]}}}});
        let causes = validate_object(deploy, &d);
        assert_eq!(causes.len(), 1, "{causes:?}");
        assert_eq!(causes[0].field, "spec.template.metadata.labels");
        let mut changed = d.clone();
        changed["spec"]["selector"]["matchLabels"]["app"] = json!("b");
        assert_eq!(
            validate_update(deploy, &d, &changed)[0].field,
            "spec.selector"
        );
    }
}
