//! Discovery documents: `/api`, `/apis`, per group-version `APIResourceList`s, and aggregated
//! discovery (`apidiscovery.k8s.io/v2`) with the exact Content-Type kubectl 1.33 requires.

use crate::registry::{Registry, ResourceKind};
use serde_json::{json, Value};

/// The Content-Type of an aggregated discovery response.
pub const AGGREGATED_CONTENT_TYPE: &str =
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList";

/// Whether the Accept header asks for aggregated discovery.
pub fn wants_aggregated(accept: &str) -> bool {
    accept.split(',').any(|part| {
        let part = part.replace(' ', "");
        part.contains("g=apidiscovery.k8s.io")
            && part.contains("v=v2")
            && part.contains("as=APIGroupDiscoveryList")
            && !part.contains("v=v2beta1")
    })
}

const ALL_VERBS: [&str; 8] = [
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// Whether the kind only answers creates, storing nothing: the access reviews and
/// SelfSubjectReview.
pub(super) fn is_review(kind: &ResourceKind) -> bool {
    kind.group == "authorization.k8s.io"
        || (kind.group == "authentication.k8s.io" && kind.plural == "selfsubjectreviews")
}

fn verbs(kind: &ResourceKind) -> Vec<&'static str> {
    if (kind.group.is_empty() && kind.plural == "componentstatuses")
        || kind.group == "metrics.k8s.io"
    {
        vec!["get", "list"]
    } else if is_review(kind) {
        vec!["create"]
    } else {
        ALL_VERBS.to_vec()
    }
}

fn server_address(address: &str) -> Value {
    json!([{"clientCIDR": "0.0.0.0/0", "serverAddress": address}])
}

/// `GET /api`.
pub fn core_versions(address: &str) -> Value {
    json!({"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": server_address(address)})
}

fn group_entry(registry: &Registry, group: &str) -> Value {
    let versions: Vec<Value> = registry
        .group_versions()
        .into_iter()
        .filter(|(g, _)| g == group)
        .map(|(g, v)| json!({"groupVersion": format!("{g}/{v}"), "version": v}))
        .collect();
    let preferred = versions.first().cloned().unwrap_or(Value::Null);
    json!({"name": group, "versions": versions, "preferredVersion": preferred})
}

fn groups(registry: &Registry) -> Vec<String> {
    let mut groups: Vec<String> = Vec::new();
    for (g, _) in registry.group_versions() {
        if !g.is_empty() && !groups.contains(&g) {
            groups.push(g);
        }
    }
    groups
}

/// `GET /apis`.
pub fn group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = groups(registry)
        .iter()
        .map(|g| group_entry(registry, g))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `GET /apis/{group}`, or `None` if the group is not served.
pub fn group(registry: &Registry, group: &str) -> Option<Value> {
    groups(registry).iter().any(|g| g == group).then(|| {
        let mut entry = group_entry(registry, group);
        entry["kind"] = json!("APIGroup");
        entry["apiVersion"] = json!("v1");
        entry
    })
}

/// `GET /api/v1` or `/apis/{group}/{version}`, or `None` if not served.
pub fn resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&std::sync::Arc<ResourceKind>> = registry
        .kinds()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut resources = Vec::new();
    for kind in kinds {
        let mut entry = json!({
            "name": kind.plural, "singularName": kind.singular, "namespaced": kind.namespaced,
            "kind": kind.kind, "verbs": verbs(kind),
        });
        if !kind.short_names.is_empty() {
            entry["shortNames"] = json!(kind.short_names);
        }
        if !kind.categories.is_empty() {
            entry["categories"] = json!(kind.categories);
        }
        resources.push(entry);
        for sub in &kind.subresources {
            let mut entry = json!({"name": format!("{}/{}", kind.plural, sub.name), "singularName": "", "namespaced": kind.namespaced, "kind": sub.kind, "verbs": sub.verbs});
            if sub.group != kind.group || sub.version != kind.version {
                entry["group"] = json!(sub.group);
                entry["version"] = json!(sub.version);
            }
            resources.push(entry);
        }
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    Some(
        json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": group_version, "resources": resources}),
    )
}

fn aggregated_group(registry: &Registry, group: &str) -> Value {
    let mut versions = Vec::new();
    for (g, version) in registry.group_versions() {
        if g != group {
            continue;
        }
        let resources: Vec<Value> = registry
            .kinds()
            .filter(|k| k.group == group && k.version == version)
            .map(|kind| {
                let mut entry = json!({
                    "resource": kind.plural,
                    "responseKind": {"group": kind.group, "version": kind.version, "kind": kind.kind},
                    "scope": if kind.namespaced { "Namespaced" } else { "Cluster" },
                    "singularResource": kind.singular,
                    "verbs": verbs(kind),
                });
                if !kind.short_names.is_empty() {
                    entry["shortNames"] = json!(kind.short_names);
                }
                if !kind.categories.is_empty() {
                    entry["categories"] = json!(kind.categories);
                }
                let subresources: Vec<Value> = kind
                    .subresources
                    .iter()
                    .map(|s| json!({"subresource": s.name, "responseKind": {"group": s.group, "version": s.version, "kind": s.kind}, "verbs": s.verbs}))
                    .collect();
                if !subresources.is_empty() {
                    entry["subresources"] = Value::Array(subresources);
                }
                entry
            })
            .collect();
        versions.push(json!({"version": version, "resources": resources, "freshness": "Current"}));
    }
    json!({"metadata": {"name": group, "creationTimestamp": null}, "versions": versions})
}

/// Aggregated discovery for `/api` (`core == true`) or `/apis`.
pub fn aggregated(registry: &Registry, core: bool) -> Value {
    let items: Vec<Value> = if core {
        vec![aggregated_group(registry, "")]
    } else {
        groups(registry)
            .iter()
            .map(|g| aggregated_group(registry, g))
            .collect()
    };
    json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
}
