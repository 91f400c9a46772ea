//! Validation and pruning of objects against a structural OpenAPI v3 schema, as
//! CustomResourceDefinitions declare in `openAPIV3Schema`: types, `nullable`, `required`,
//! `enum`, numeric bounds, string lengths and `pattern`, item and property counts,
//! `uniqueItems`, `allOf`/`anyOf`/`oneOf`/`not`, and the Kubernetes extensions
//! `x-kubernetes-int-or-string`, `x-kubernetes-preserve-unknown-fields` and
//! `x-kubernetes-embedded-resource`. Pruning drops the fields the schema does not specify.

use serde_json::{Map, Value};

/// What is wrong with a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViolationKind {
    /// A required field is missing.
    Required,
    /// The value has the wrong type.
    Type,
    /// The value is not one of the enumerated ones.
    NotSupported,
    /// Any other rule.
    Invalid,
}

/// One rule a value breaks.
#[derive(Debug, Clone, PartialEq)]
pub struct Violation {
    /// Field path, e.g. `spec.replicas` or `spec.items[1].name`.
    pub field: String,
    /// Which kind of rule.
    pub kind: ViolationKind,
    /// What the rule says, e.g. `should be less than or equal to 10`.
    pub detail: String,
    /// The offending value (`Null` for a missing one).
    pub value: Value,
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

fn type_name(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

/// Validates `value` (a whole object, or any value at `path`) against `schema`.
pub fn validate(schema: &Value, value: &Value, path: &str) -> Vec<Violation> {
    let mut out = Vec::new();
    check(schema, value, path, &mut out);
    out
}

fn violation(
    out: &mut Vec<Violation>,
    path: &str,
    kind: ViolationKind,
    detail: String,
    value: &Value,
) {
    out.push(Violation {
        field: path.to_string(),
        kind,
        detail,
        value: value.clone(),
    });
}

fn check(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    if !schema.is_object() {
        return;
    }
    if value.is_null() {
        if !flag(schema, "nullable") && schema.get("type").is_some() {
            violation(
                out,
                path,
                ViolationKind::Type,
                "must not be null".into(),
                value,
            );
        }
        return;
    }
    let actual = type_name(value);
    if flag(schema, "x-kubernetes-int-or-string") {
        if !matches!(actual, "integer" | "string") {
            violation(
                out,
                path,
                ViolationKind::Type,
                format!("got \"{actual}\", expected \"integer\" or \"string\""),
                value,
            );
            return;
        }
    } else if let Some(expected) = schema.get("type").and_then(Value::as_str) {
        let fits = expected == actual || (expected == "number" && actual == "integer");
        if !fits {
            violation(
                out,
                path,
                ViolationKind::Type,
                format!("got \"{actual}\", expected \"{expected}\""),
                value,
            );
            return;
        }
    }
    if let Some(options) = schema.get("enum").and_then(Value::as_array) {
        if !options.contains(value) {
            let list: Vec<String> = options.iter().map(Value::to_string).collect();
            violation(
                out,
                path,
                ViolationKind::NotSupported,
                format!("supported values: {}", list.join(", ")),
                value,
            );
        }
    }
    check_bounds(schema, value, path, out);
    match value {
        Value::Object(map) => check_object(schema, map, path, out),
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(item_schema, item, &format!("{path}[{i}]"), out);
                }
            }
        }
        _ => {}
    }
    check_combinators(schema, value, path, out);
}

fn check_object(schema: &Value, map: &Map<String, Value>, path: &str, out: &mut Vec<Violation>) {
    if let Some(required) = schema.get("required").and_then(Value::as_array) {
        for name in required.iter().filter_map(Value::as_str) {
            if !map.contains_key(name) {
                violation(
                    out,
                    &join(path, name),
                    ViolationKind::Required,
                    "Required value".into(),
                    &Value::Null,
                );
            }
        }
    }
    let properties = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties").filter(|a| a.is_object());
    for (name, child) in map {
        if path.is_empty() && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
            continue;
        }
        if let Some(child_schema) = properties.and_then(|p| p.get(name)) {
            check(child_schema, child, &join(path, name), out);
        } else if let Some(additional) = additional {
            check(additional, child, &join(path, name), out);
        }
    }
}

fn number(schema: &Value, key: &str) -> Option<f64> {
    schema.get(key).and_then(Value::as_f64)
}

fn check_bounds(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    let mut fail = |detail: String| violation(out, path, ViolationKind::Invalid, detail, value);
    match value {
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or_default();
            if let Some(max) = number(schema, "maximum") {
                if flag(schema, "exclusiveMaximum") && x >= max {
                    fail(format!("should be less than {max}"));
                } else if x > max {
                    fail(format!("should be less than or equal to {max}"));
                }
            }
            if let Some(min) = number(schema, "minimum") {
                if flag(schema, "exclusiveMinimum") && x <= min {
                    fail(format!("should be greater than {min}"));
                } else if x < min {
                    fail(format!("should be greater than or equal to {min}"));
                }
            }
            if let Some(step) = number(schema, "multipleOf").filter(|s| *s > 0.0) {
                if (x / step).fract() != 0.0 {
                    fail(format!("should be a multiple of {step}"));
                }
            }
        }
        Value::String(text) => {
            let length = text.chars().count() as f64;
            if number(schema, "maxLength").is_some_and(|m| length > m) {
                fail(format!(
                    "should be at most {} chars long",
                    number(schema, "maxLength").unwrap_or_default()
                ));
            }
            if number(schema, "minLength").is_some_and(|m| length < m) {
                fail(format!(
                    "should be at least {} chars long",
                    number(schema, "minLength").unwrap_or_default()
                ));
            }
            if let Some(pattern) = schema.get("pattern").and_then(Value::as_str) {
                match regex::Regex::new(pattern) {
                    Ok(re) if !re.is_match(text) => fail(format!("should match '{pattern}'")),
                    Ok(_) => {}
                    Err(_) => fail(format!(
                        "the schema's pattern '{pattern}' is not a valid regular expression"
                    )),
                }
            }
        }
        Value::Array(items) => {
            let count = items.len() as f64;
            if number(schema, "maxItems").is_some_and(|m| count > m) {
                fail(format!(
                    "must have at most {} items",
                    number(schema, "maxItems").unwrap_or_default()
                ));
            }
            if number(schema, "minItems").is_some_and(|m| count < m) {
                fail(format!(
                    "should have at least {} items",
                    number(schema, "minItems").unwrap_or_default()
                ));
            }
            if flag(schema, "uniqueItems") {
                let duplicate = items
                    .iter()
                    .enumerate()
                    .any(|(i, a)| items[..i].contains(a));
                if duplicate {
                    fail("shouldn't contain duplicates".into());
                }
            }
        }
        Value::Object(map) => {
            let count = map.len() as f64;
            if number(schema, "maxProperties").is_some_and(|m| count > m) {
                fail(format!(
                    "must have at most {} properties",
                    number(schema, "maxProperties").unwrap_or_default()
                ));
            }
            if number(schema, "minProperties").is_some_and(|m| count < m) {
                fail(format!(
                    "should have at least {} properties",
                    number(schema, "minProperties").unwrap_or_default()
                ));
            }
        }
        _ => {}
    }
}

fn check_combinators(schema: &Value, value: &Value, path: &str, out: &mut Vec<Violation>) {
    if let Some(all) = schema.get("allOf").and_then(Value::as_array) {
        for sub in all {
            check(sub, value, path, out);
        }
    }
    let passes = |sub: &Value| validate(sub, value, path).is_empty();
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(passes) {
            violation(
                out,
                path,
                ViolationKind::Invalid,
                "must validate at least one schema (anyOf)".into(),
                value,
            );
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let matched = one.iter().filter(|s| passes(s)).count();
        if matched != 1 {
            violation(
                out,
                path,
                ViolationKind::Invalid,
                format!("must validate one and only one schema (oneOf), matched {matched}"),
                value,
            );
        }
    }
    if let Some(not) = schema.get("not") {
        if passes(not) {
            violation(
                out,
                path,
                ViolationKind::Invalid,
                "must not validate the schema (not)".into(),
                value,
            );
        }
    }
}

/// Removes the fields `schema` does not specify from `value` (the whole object: `apiVersion`,
/// `kind` and `metadata` are kept at the root). Returns the removed fields' paths.
pub fn prune(schema: &Value, value: &mut Value) -> Vec<String> {
    let mut removed = Vec::new();
    prune_at(schema, value, "", true, &mut removed);
    removed
}

fn prune_at(schema: &Value, value: &mut Value, path: &str, root: bool, removed: &mut Vec<String>) {
    if flag(schema, "x-kubernetes-preserve-unknown-fields") && schema.get("properties").is_none() {
        return;
    }
    match value {
        Value::Object(map) => {
            let keep_meta = root || flag(schema, "x-kubernetes-embedded-resource");
            let properties = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties").filter(|a| a.is_object());
            let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
            let names: Vec<String> = map.keys().cloned().collect();
            for name in names {
                if keep_meta && matches!(name.as_str(), "apiVersion" | "kind" | "metadata") {
                    continue;
                }
                let child_path = join(path, &name);
                let child_schema = properties.and_then(|p| p.get(&name)).or(additional);
                match (child_schema, map.get_mut(&name)) {
                    (Some(child_schema), Some(child)) => {
                        prune_at(child_schema, child, &child_path, false, removed)
                    }
                    (None, _) if preserve => {}
                    (None, _) => {
                        map.remove(&name);
                        removed.push(child_path);
                    }
                    (Some(_), None) => {}
                }
            }
        }
        Value::Array(items) => {
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    prune_at(item_schema, item, &format!("{path}[{i}]"), false, removed);
                }
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 1, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"]},
                "port": {"x-kubernetes-int-or-string": true},
                "tags": {"type": "array", "maxItems": 2, "items": {"type": "string", "pattern": "^[a-z]+$"}},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
            }},
            "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}},
        }})
    }

    #[test]
    fn valid_objects_pass_and_each_rule_is_reported_with_its_path() {
        let good = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a"},
            "spec": {"size": 3, "color": "red", "port": "http", "tags": ["a"], "labels": {"k": "v"}, "free": {"any": [1]}}});
        assert_eq!(validate(&schema(), &good, ""), vec![]);
        let bad = json!({"spec": {"size": 11, "color": "green", "port": true, "tags": ["A", "b", "c"], "labels": {"k": 1}}});
        let fields: Vec<(String, ViolationKind)> = validate(&schema(), &bad, "")
            .into_iter()
            .map(|v| (v.field, v.kind))
            .collect();
        assert!(
            fields.contains(&("spec.size".into(), ViolationKind::Invalid)),
            "{fields:?}"
        );
        assert!(fields.contains(&("spec.color".into(), ViolationKind::NotSupported)));
        assert!(fields.contains(&("spec.port".into(), ViolationKind::Type)));
        assert!(fields.contains(&("spec.tags".into(), ViolationKind::Invalid)));
        assert!(fields.contains(&("spec.tags[0]".into(), ViolationKind::Invalid)));
        assert!(fields.contains(&("spec.labels.k".into(), ViolationKind::Type)));
        let missing = validate(&schema(), &json!({"spec": {}}), "");
        assert_eq!(missing[0].field, "spec.size");
        assert_eq!(missing[0].kind, ViolationKind::Required);
        assert_eq!(
            validate(&schema(), &json!({"spec": "x"}), "")[0].kind,
            ViolationKind::Type
        );
    }

    #[test]
    fn pruning_drops_unknown_fields_and_keeps_preserved_ones() {
        let mut object = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "a", "x": 1},
            "spec": {"size": 1, "extra": true, "free": {"anything": {"goes": 1}}, "labels": {"k": "v"}},
            "status": {"ready": true, "phase": "Up"}, "junk": 1});
        let mut removed = prune(&schema(), &mut object);
        removed.sort();
        assert_eq!(removed, vec!["junk", "spec.extra", "status.phase"]);
        assert_eq!(object["spec"]["free"]["anything"]["goes"], 1);
        assert_eq!(object["metadata"]["x"], 1);
        assert_eq!(object["spec"]["labels"]["k"], "v");
    }
}
