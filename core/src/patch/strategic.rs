//! Strategic merge patch: JSON merge patch, except that lists with a merge key are merged
//! element by element, primitive lists with the merge strategy are merged as sets, and the
//! directives `$patch: replace|delete|merge`, `$setElementOrder/<list>`, `$retainKeys` and
//! `$deleteFromPrimitiveList/<list>` are honoured. `null` deletes a field.

use super::metadata::{list_strategy, ListStrategy};
use crate::registry::ResourceKind;
use serde_json::{Map, Value};

/// A patch that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatchError {
    /// A directive or element is malformed.
    #[error("invalid strategic merge patch at {path}: {reason}")]
    Invalid {
        /// Where, as a dotted path.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

const PATCH: &str = "$patch";
const RETAIN_KEYS: &str = "$retainKeys";
const SET_ORDER: &str = "$setElementOrder/";
const DELETE_PRIMITIVE: &str = "$deleteFromPrimitiveList/";

fn invalid(path: &[&str], reason: impl Into<String>) -> PatchError {
    PatchError::Invalid {
        path: if path.is_empty() {
            "<root>".into()
        } else {
            path.join(".")
        },
        reason: reason.into(),
    }
}

/// Applies a strategic merge patch to an object of `kind`.
pub fn strategic_merge(
    kind: &ResourceKind,
    original: &Value,
    patch: &Value,
) -> Result<Value, PatchError> {
    let Some(patch) = patch.as_object() else {
        return Err(invalid(
            &[],
            "a strategic merge patch must be a JSON object",
        ));
    };
    let original = original.as_object().cloned().unwrap_or_default();
    Ok(merge_map(kind, original, patch, &mut Vec::new())?
        .map(Value::Object)
        .unwrap_or(Value::Object(Map::new())))
}

/// Merges `patch` into `original`; `None` means the map itself is deleted (`$patch: delete`).
fn merge_map<'p>(
    kind: &ResourceKind,
    mut original: Map<String, Value>,
    patch: &'p Map<String, Value>,
    path: &mut Vec<&'p str>,
) -> Result<Option<Map<String, Value>>, PatchError> {
    match patch.get(PATCH).map(|v| v.as_str()) {
        None | Some(Some("merge")) => {}
        Some(Some("replace")) => return Ok(Some(without_directives(patch))),
        Some(Some("delete")) => return Ok(None),
        Some(other) => return Err(invalid(path, format!("unknown $patch value {other:?}"))),
    }
    let retain = match patch.get(RETAIN_KEYS) {
        Some(Value::Array(keys)) => Some(
            keys.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect::<Vec<_>>(),
        ),
        Some(_) => return Err(invalid(path, "$retainKeys must be a list of strings")),
        None => None,
    };
    for (key, value) in patch {
        if key == PATCH
            || key == RETAIN_KEYS
            || key.starts_with(SET_ORDER)
            || key.starts_with(DELETE_PRIMITIVE)
        {
            continue;
        }
        path.push(key.as_str());
        match value {
            Value::Null => {
                original.remove(key);
            }
            Value::Object(child) => {
                let base = match original.remove(key) {
                    Some(Value::Object(map)) => map,
                    _ => Map::new(),
                };
                if let Some(merged) = merge_map(kind, base, child, path)? {
                    original.insert(key.clone(), Value::Object(merged));
                }
            }
            Value::Array(items) => {
                let base = match original.remove(key) {
                    Some(Value::Array(list)) => list,
                    _ => Vec::new(),
                };
                let order = patch.get(&format!("{SET_ORDER}{key}"));
                let merged = merge_list(kind, base, items, order, path)?;
                original.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                original.insert(key.clone(), scalar.clone());
            }
        }
        path.pop();
    }
    // Directives about lists the patch does not otherwise touch.
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE) {
            let Value::Array(remove) = value else {
                return Err(invalid(path, format!("{key} must be a list")));
            };
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|item| !remove.contains(item));
            }
        } else if let Some(field) = key.strip_prefix(SET_ORDER) {
            if !patch.contains_key(field) {
                let Value::Array(order) = value else {
                    return Err(invalid(path, format!("{key} must be a list")));
                };
                path.push(field);
                let strategy = list_strategy(kind, path);
                path.pop();
                if let Some(Value::Array(list)) = original.get_mut(field) {
                    reorder(list, order, strategy);
                }
            }
        }
    }
    if let Some(keep) = retain {
        original.retain(|k, _| keep.iter().any(|r| r == k));
    }
    Ok(Some(original))
}

fn without_directives(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .filter(|(k, _)| {
            !(k.as_str() == PATCH
                || k.as_str() == RETAIN_KEYS
                || k.starts_with(SET_ORDER)
                || k.starts_with(DELETE_PRIMITIVE))
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

fn merge_list<'p>(
    kind: &ResourceKind,
    original: Vec<Value>,
    patch: &'p [Value],
    order: Option<&Value>,
    path: &mut Vec<&'p str>,
) -> Result<Vec<Value>, PatchError> {
    let strategy = list_strategy(kind, path);
    // `{"$patch": "replace"}` among the elements replaces the list with the other elements.
    let replace = patch
        .iter()
        .any(|item| item.get(PATCH).and_then(Value::as_str) == Some("replace"));
    let mut result = match (strategy, replace) {
        (_, true) => patch
            .iter()
            .filter(|item| item.get(PATCH).is_none())
            .cloned()
            .collect(),
        (ListStrategy::Replace, false) => patch
            .iter()
            .map(|item| match item {
                Value::Object(map) => Value::Object(without_directives(map)),
                other => other.clone(),
            })
            .collect(),
        (ListStrategy::MergePrimitives, false) => {
            let mut merged = original;
            for item in patch {
                if !merged.contains(item) {
                    merged.push(item.clone());
                }
            }
            merged
        }
        (ListStrategy::MergeByKey(key), false) => {
            let mut merged = original;
            for item in patch {
                let Value::Object(element) = item else {
                    return Err(invalid(
                        path,
                        format!("elements must be objects with the merge key {key:?}"),
                    ));
                };
                let Some(id) = element.get(key) else {
                    return Err(invalid(
                        path,
                        format!("an element lacks the merge key {key:?}"),
                    ));
                };
                let position = merged
                    .iter()
                    .position(|existing| existing.get(key) == Some(id));
                let deleting = element.get(PATCH).and_then(Value::as_str) == Some("delete");
                match (position, deleting) {
                    (Some(i), true) => {
                        merged.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => {
                        let base = merged[i].as_object().cloned().unwrap_or_default();
                        match merge_map(kind, base, element, path)? {
                            Some(map) => merged[i] = Value::Object(map),
                            None => {
                                merged.remove(i);
                            }
                        }
                    }
                    (None, false) => merged.push(Value::Object(without_directives(element))),
                }
            }
            merged
        }
    };
    if let Some(order) = order {
        let Value::Array(order) = order else {
            return Err(invalid(path, "$setElementOrder must be a list"));
        };
        reorder(&mut result, order, strategy);
    }
    Ok(result)
}

/// Orders `list` as `order` says; elements it does not name keep their relative order after.
fn reorder(list: &mut [Value], order: &[Value], strategy: ListStrategy) {
    let rank = |item: &Value| -> usize {
        let found = match strategy {
            ListStrategy::MergeByKey(key) => order
                .iter()
                .position(|o| o.get(key).is_some() && o.get(key) == item.get(key)),
            _ => order.iter().position(|o| o == item),
        };
        found.unwrap_or(usize::MAX)
    };
    list.sort_by_key(|item| rank(item));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use proptest::prelude::*;
    use serde_json::json;

    fn deployments() -> std::sync::Arc<ResourceKind> {
        Registry::with_builtins()
            .get("apps", "v1", "deployments")
            .unwrap()
            .clone()
    }

    fn template(containers: Value) -> Value {
        json!({"spec": {"template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn containers_merge_by_name() {
        let kind = deployments();
        let original = template(
            json!([{"name": "a", "image": "a:1", "env": [{"name": "X", "value": "1"}]}, {"name": "b", "image": "b:1"}]),
        );
        let patch =
            template(json!([{"name": "a", "image": "a:2", "env": [{"name": "Y", "value": "2"}]}]));
        let merged = strategic_merge(&kind, &original, &patch).unwrap();
        assert_eq!(
            merged,
            template(
                json!([{"name": "a", "image": "a:2", "env": [{"name": "X", "value": "1"}, {"name": "Y", "value": "2"}]}, {"name": "b", "image": "b:1"}])
            )
        );
    }

    #[test]
    fn directives() {
        let kind = deployments();
        let original = template(
            json!([{"name": "a", "image": "a:1"}, {"name": "b", "image": "b:1"}, {"name": "c", "image": "c:1"}]),
        );
        // Delete one element by key.
        let merged = strategic_merge(
            &kind,
            &original,
            &template(json!([{"name": "b", "$patch": "delete"}])),
        )
        .unwrap();
        assert_eq!(
            merged["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            2
        );
        // Replace the whole list.
        let merged = strategic_merge(
            &kind,
            &original,
            &template(json!([{"name": "z", "image": "z:1"}, {"$patch": "replace"}])),
        )
        .unwrap();
        assert_eq!(merged, template(json!([{"name": "z", "image": "z:1"}])));
        // Reorder with $setElementOrder (kubectl apply sends it with every list it touches).
        let patch = json!({"spec": {"template": {"spec": {"$setElementOrder/containers": [{"name": "c"}, {"name": "a"}, {"name": "b"}], "containers": [{"name": "a", "image": "a:9"}]}}}});
        let merged = strategic_merge(&kind, &original, &patch).unwrap();
        let names: Vec<&str> = merged["spec"]["template"]["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["c", "a", "b"]);
        assert_eq!(
            merged["spec"]["template"]["spec"]["containers"][1]["image"],
            "a:9"
        );
        // null deletes; $patch: replace on a map replaces it.
        let original = json!({"metadata": {"labels": {"a": "1", "b": "2"}}, "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}}}});
        let patch = json!({"metadata": {"labels": {"a": null}}, "spec": {"strategy": {"$retainKeys": ["type"], "type": "Recreate"}}});
        let merged = strategic_merge(&kind, &original, &patch).unwrap();
        assert_eq!(
            merged,
            json!({"metadata": {"labels": {"b": "2"}}, "spec": {"strategy": {"type": "Recreate"}}})
        );
        let patch = json!({"metadata": {"labels": {"$patch": "replace", "c": "3"}}});
        assert_eq!(
            strategic_merge(&kind, &original, &patch).unwrap()["metadata"]["labels"],
            json!({"c": "3"})
        );
        // Primitive set lists.
        let original = json!({"metadata": {"finalizers": ["a", "b"]}});
        let merged = strategic_merge(&kind, &original, &json!({"metadata": {"finalizers": ["c"], "$deleteFromPrimitiveList/finalizers": ["a"]}})).unwrap();
        assert_eq!(merged["metadata"]["finalizers"], json!(["b", "c"]));
        // Lists without a strategy are replaced.
        let original = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["x", "y"]}]}}}});
        let merged = strategic_merge(
            &kind,
            &original,
            &template(json!([{"name": "a", "args": ["z"]}])),
        )
        .unwrap();
        assert_eq!(
            merged["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["z"])
        );
    }

    #[test]
    fn bad_patches_are_errors() {
        let kind = deployments();
        assert!(strategic_merge(&kind, &json!({}), &json!([1])).is_err());
        assert!(
            strategic_merge(&kind, &json!({}), &template(json!([{"image": "no-name"}]))).is_err()
        );
        assert!(strategic_merge(&kind, &json!({}), &json!({"$patch": "explode"})).is_err());
    }

    fn small_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (0i64..4).prop_map(Value::from),
            "[ab]{0,2}".prop_map(Value::from)
        ];
        leaf.prop_recursive(3, 12, 3, |inner| {
            proptest::collection::btree_map("[a-c]", inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        })
    }

    proptest! {
        /// Without lists or directives, a strategic merge patch is a JSON merge patch.
        #[test]
        fn maps_merge_like_json_merge_patch(original in small_json(), patch in small_json()) {
            let kind = deployments();
            let original = json!({"spec": original});
            let patch = json!({"spec": patch});
            let mut expected = original.clone();
            json_patch::merge(&mut expected, &patch);
            let got = strategic_merge(&kind, &original, &patch).unwrap();
            if patch["spec"].is_object() {
                prop_assert_eq!(got, expected);
            }
        }

        /// Patching containers by name never loses a container the patch does not mention, and
        /// every patched container carries the patch's image.
        #[test]
        fn keyed_merge_keeps_unmentioned_elements(originals in proptest::collection::btree_set("[a-e]", 0..5), patched in proptest::collection::btree_set("[a-e]", 0..5)) {
            let kind = deployments();
            let original = template(Value::Array(originals.iter().map(|n| json!({"name": n, "image": "old"})).collect()));
            let patch = template(Value::Array(patched.iter().map(|n| json!({"name": n, "image": "new"})).collect()));
            let merged = strategic_merge(&kind, &original, &patch).unwrap();
            let containers = merged["spec"]["template"]["spec"]["containers"].as_array().unwrap().clone();
            prop_assert_eq!(containers.len(), originals.union(&patched).count());
            for c in containers {
                let name = c["name"].as_str().unwrap().to_string();
                let expected = if patched.contains(&name) { "new" } else { "old" };
                prop_assert_eq!(c["image"].as_str().unwrap(), expected);
            }
        }
    }
}
