//! OpenAPI v3 documents: `/openapi/v3` (an index of group-versions with content hashes) and one
//! document per group-version with `components.schemas` generated from the types' JSON schemas
//! (k8s-openapi's for built-in kinds, the registered schema for a user's kind), each served
//! kind's schema carrying `x-kubernetes-group-version-kind`. This is what `kubectl explain`
//! reads, and each kind's create, read, replace and patch operations declare the
//! `fieldValidation` parameter, so kubectl leaves field validation to the server and sends
//! `fieldValidation=Strict`.

use super::strategy::{visit_builtin, BuiltinVisitor};
use crate::registry::{Registry, ResourceKind};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

/// Adds a type's schema (and everything it references) to a generator.
struct AddSchema<'g>(&'g mut schemars::SchemaGenerator);

impl BuiltinVisitor for AddSchema<'_> {
    type Output = String;
    fn visit<T: DeserializeOwned + serde::Serialize + schemars::JsonSchema>(self) -> String {
        self.0.subschema_for::<T>();
        T::schema_name().into_owned()
    }
}

fn gv_path(group: &str, version: &str) -> String {
    if group.is_empty() {
        format!("api/{version}")
    } else {
        format!("apis/{group}/{version}")
    }
}

/// Rewrites JSON-schema `$defs` references of a user kind's schema into component references.
fn relocate_refs(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(reference)) = map.get_mut("$ref") {
                if let Some(name) = reference
                    .strip_prefix("#/$defs/")
                    .or_else(|| reference.strip_prefix("#/definitions/"))
                {
                    *reference = format!("#/components/schemas/{name}");
                }
            }
            map.values_mut().for_each(relocate_refs);
        }
        Value::Array(items) => items.iter_mut().for_each(relocate_refs),
        _ => {}
    }
}

fn gvk(kind: &ResourceKind) -> Value {
    json!([{"group": kind.group, "version": kind.version, "kind": kind.kind}])
}

/// The OpenAPI v3 document of one group-version, or `None` if nothing is served there.
pub fn group_version_document(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let kinds: Vec<&std::sync::Arc<ResourceKind>> = registry
        .kinds()
        .filter(|k| k.group == group && k.version == version)
        .collect();
    if kinds.is_empty() {
        return None;
    }
    let mut generator = schemars::generate::SchemaSettings::openapi3().into_generator();
    let mut tagged: Vec<(String, Value)> = Vec::new();
    let mut user_schemas: Map<String, Value> = Map::new();
    let mut paths = Map::new();
    for kind in &kinds {
        let schema_name = if let Some(name) = visit_builtin(kind, AddSchema(&mut generator)) {
            tagged.push((name.clone(), gvk(kind)));
            Some(name)
        } else if let Some(schema) = &kind.schema {
            let mut schema = schema.clone();
            relocate_refs(&mut schema);
            let name = format!(
                "{}.{}.{}",
                if kind.group.is_empty() {
                    "core"
                } else {
                    &kind.group
                },
                kind.version,
                kind.kind
            );
            if let Some(map) = schema.as_object_mut() {
                for key in ["$schema", "title"] {
                    map.remove(key);
                }
                for defs in ["$defs", "definitions"] {
                    if let Some(Value::Object(defs)) = map.remove(defs) {
                        user_schemas.extend(defs);
                    }
                }
                map.insert("x-kubernetes-group-version-kind".into(), gvk(kind));
            }
            user_schemas.insert(name.clone(), schema);
            Some(name)
        } else {
            None
        };
        if let Some(schema_name) = schema_name {
            let base = format!("/{}", gv_path(group, version));
            let collection = if kind.namespaced {
                format!("{base}/namespaces/{{namespace}}/{}", kind.plural)
            } else {
                format!("{base}/{}", kind.plural)
            };
            let tag = json!({"group": kind.group, "version": kind.version, "kind": kind.kind});
            let body = json!({"content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema_name}")}}}});
            let ok = json!({"200": {"description": "OK", "content": body["content"]}});
            // Declaring fieldValidation tells kubectl the server validates fields itself.
            let validation = json!([{"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}}]);
            let operation = |action: &str, verb: &str| {
                json!({
                    "operationId": format!("{verb}{}", kind.kind),
                    "x-kubernetes-action": action,
                    "x-kubernetes-group-version-kind": tag,
                    "parameters": if action == "get" { json!([]) } else { validation.clone() },
                    "requestBody": if action == "get" { Value::Null } else { body.clone() },
                    "responses": ok,
                })
            };
            let strip_null = |mut op: Value| {
                if let Some(map) = op.as_object_mut() {
                    map.retain(|_, v| !v.is_null());
                }
                op
            };
            paths.insert(
                collection.clone(),
                json!({"post": strip_null(operation("post", "create"))}),
            );
            paths.insert(
                format!("{collection}/{{name}}"),
                json!({
                    "get": strip_null(operation("get", "read")),
                    "put": strip_null(operation("put", "replace")),
                    "patch": strip_null(operation("patch", "patch")),
                }),
            );
        }
    }
    let mut schemas = generator.take_definitions(true);
    for (name, tag) in tagged {
        if let Some(Value::Object(schema)) = schemas.get_mut(&name) {
            schema.insert("x-kubernetes-group-version-kind".into(), tag);
        }
    }
    schemas.extend(user_schemas);
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": "v1.33.0"},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

/// A short content hash, for the index's `serverRelativeURL`s.
fn content_hash(value: &Value) -> String {
    // FNV-1a over the serialized document: stable across runs, cheap, and only a cache key.
    let mut hash: u64 = 0xcbf29ce484222325;
    for byte in value.to_string().bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x100000001b3);
    }
    format!("{hash:016X}")
}

/// `GET /openapi/v3`.
pub fn index(registry: &Registry) -> Value {
    let mut paths = Map::new();
    for (group, version) in registry.group_versions() {
        if let Some(document) = group_version_document(registry, &group, &version) {
            let path = gv_path(&group, &version);
            paths.insert(path.clone(), json!({"serverRelativeURL": format!("/openapi/v3/{path}?hash={}", content_hash(&document))}));
        }
    }
    json!({"paths": paths})
}

/// `GET /openapi/v3/{api/v1 | apis/group/version}`.
pub fn document_for_path(registry: &Registry, path: &str) -> Option<Value> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    match parts.as_slice() {
        ["api", version] => group_version_document(registry, "", version),
        ["apis", group, version] => group_version_document(registry, group, version),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_tag_served_kinds() {
        let registry = Registry::with_builtins();
        let core = group_version_document(&registry, "", "v1").unwrap();
        let pod = &core["components"]["schemas"]["io.k8s.api.core.v1.Pod"];
        assert_eq!(pod["x-kubernetes-group-version-kind"][0]["kind"], "Pod");
        assert!(pod["description"]
            .as_str()
            .unwrap()
            .contains("collection of containers"));
        assert!(
            core["components"]["schemas"]["io.k8s.api.core.v1.PodSpec"].is_object(),
            "referenced types are included"
        );
        let reference = pod["properties"]["spec"]["$ref"]
            .as_str()
            .or_else(|| pod["properties"]["spec"]["allOf"][0]["$ref"].as_str())
            .unwrap();
        assert!(
            reference.starts_with("#/components/schemas/"),
            "{reference}"
        );
        let index = index(&registry);
        assert!(index["paths"]["apis/apps/v1"]["serverRelativeURL"]
            .as_str()
            .unwrap()
            .starts_with("/openapi/v3/apis/apps/v1?hash="));
        assert!(document_for_path(&registry, "apis/nope/v1").is_none());
    }
}
