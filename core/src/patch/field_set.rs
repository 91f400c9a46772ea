//! Sets of field paths in Kubernetes' `FieldsV1` shape, as server-side apply records them in
//! `metadata.managedFields`: `f:<name>` for a field, `k:{"<key>":<value>}` for an element of a
//! list merged by key, `v:<json>` for an element of a set of primitives, and `.` for "this
//! element itself" beside its fields. A leaf is `{}`.
//!
//! The set of an object is derived from the object and the kind's patch metadata (the same
//! table strategic merge patch uses): objects are granular, keyed lists and primitive sets are
//! granular per element, every other list is atomic.

use super::metadata::{list_strategy, ListStrategy};
use crate::registry::ResourceKind;
use serde_json::{Map, Value};
use std::collections::BTreeMap;

/// A set of field paths, as a tree keyed by `FieldsV1` path elements.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSet {
    /// Whether the node itself is in the set (a leaf, or `.` beside children).
    member: bool,
    children: BTreeMap<String, FieldSet>,
}

/// One step of a field path, decoded from its `FieldsV1` key.
#[derive(Debug, Clone, PartialEq)]
pub enum PathElement {
    /// `f:<name>`: a field of an object.
    Field(String),
    /// `k:{...}`: the element of a keyed list whose key fields have these values.
    Key(Map<String, Value>),
    /// `v:<json>`: the element of a primitive set equal to this value.
    Value(Value),
}

impl PathElement {
    /// Decodes a `FieldsV1` key; `None` for anything unknown (`i:` positions included).
    pub fn parse(key: &str) -> Option<PathElement> {
        let (tag, rest) = key.split_at_checked(2)?;
        match tag {
            "f:" => Some(PathElement::Field(rest.to_string())),
            "k:" => match serde_json::from_str(rest) {
                Ok(Value::Object(map)) => Some(PathElement::Key(map)),
                _ => None,
            },
            "v:" => serde_json::from_str(rest).ok().map(PathElement::Value),
            _ => None,
        }
    }

    /// The element of `value` this step names.
    pub fn find<'v>(&self, value: &'v Value) -> Option<&'v Value> {
        match (self, value) {
            (PathElement::Field(name), Value::Object(map)) => map.get(name),
            (PathElement::Key(key), Value::Array(items)) => {
                items.iter().find(|item| key_matches(item, key))
            }
            (PathElement::Value(wanted), Value::Array(items)) => {
                items.iter().find(|item| *item == wanted)
            }
            _ => None,
        }
    }

    fn find_mut<'v>(&self, value: &'v mut Value) -> Option<&'v mut Value> {
        match (self, value) {
            (PathElement::Field(name), Value::Object(map)) => map.get_mut(name),
            (PathElement::Key(key), Value::Array(items)) => {
                items.iter_mut().find(|item| key_matches(item, key))
            }
            (PathElement::Value(wanted), Value::Array(items)) => {
                items.iter_mut().find(|item| *item == wanted)
            }
            _ => None,
        }
    }

    /// Removes the element this step names from `value`; whether something was removed.
    fn remove_from(&self, value: &mut Value) -> bool {
        match (self, value) {
            (PathElement::Field(name), Value::Object(map)) => map.remove(name).is_some(),
            (PathElement::Key(key), Value::Array(items)) => {
                let before = items.len();
                items.retain(|item| !key_matches(item, key));
                items.len() != before
            }
            (PathElement::Value(wanted), Value::Array(items)) => {
                let before = items.len();
                items.retain(|item| item != wanted);
                items.len() != before
            }
            _ => false,
        }
    }

    /// The element as a path segment for messages: `.name`, `[name="x"]`, `[="x"]`.
    fn display(&self) -> String {
        match self {
            PathElement::Field(name) => format!(".{name}"),
            PathElement::Key(key) => {
                let parts: Vec<String> = key.iter().map(|(k, v)| format!("{k}={v}")).collect();
                format!("[{}]", parts.join(","))
            }
            PathElement::Value(v) => format!("[={v}]"),
        }
    }
}

fn key_matches(item: &Value, key: &Map<String, Value>) -> bool {
    key.iter().all(|(k, v)| item.get(k) == Some(v))
}

fn field_key(name: &str) -> String {
    format!("f:{name}")
}

fn keyed_key(merge_key: &str, value: &Value) -> String {
    let mut map = Map::new();
    map.insert(merge_key.to_string(), value.clone());
    format!("k:{}", Value::Object(map))
}

fn value_key(value: &Value) -> String {
    format!("v:{value}")
}

impl FieldSet {
    /// The empty set.
    pub fn new() -> FieldSet {
        FieldSet::default()
    }

    fn leaf() -> FieldSet {
        FieldSet {
            member: true,
            children: BTreeMap::new(),
        }
    }

    /// Whether the set holds no path.
    pub fn is_empty(&self) -> bool {
        !self.member && self.children.values().all(FieldSet::is_empty)
    }

    /// The set of every field of `object` (an object of `kind`), leaving out the fields the
    /// server owns (`apiVersion`, `kind`, identity and system metadata, `managedFields`).
    pub fn of_object(kind: &ResourceKind, object: &Value) -> FieldSet {
        let mut set = FieldSet::new();
        if let Value::Object(map) = object {
            for (name, value) in map {
                if matches!(name.as_str(), "apiVersion" | "kind") {
                    continue;
                }
                let mut path = vec![name.as_str()];
                let child = if name == "metadata" {
                    metadata_fields(kind, value, &mut path)
                } else {
                    fields_of(kind, value, &mut path)
                };
                if !child.is_empty() {
                    set.children.insert(field_key(name), child);
                }
            }
        }
        set
    }

    /// The paths whose values `new` sets differently from `old` (added or changed; removed
    /// fields are not paths of `new`), in the shape `of_object` gives.
    pub fn changed(kind: &ResourceKind, old: &Value, new: &Value) -> FieldSet {
        let all = FieldSet::of_object(kind, new);
        all.filter_changed(old, new)
    }

    fn filter_changed(&self, old: &Value, new: &Value) -> FieldSet {
        let mut out = FieldSet::new();
        for (key, child) in &self.children {
            let Some(step) = PathElement::parse(key) else {
                continue;
            };
            let Some(new_value) = step.find(new) else {
                continue;
            };
            match step.find(old) {
                None => {
                    out.children.insert(key.clone(), child.clone());
                }
                Some(old_value) if old_value == new_value => {}
                Some(old_value) => {
                    let sub = if child.children.is_empty() {
                        child.clone()
                    } else {
                        let mut sub = child.filter_changed(old_value, new_value);
                        // An element that existed keeps its `.` with its previous owner.
                        sub.member = child.member && child.children.is_empty();
                        sub
                    };
                    if !sub.is_empty() {
                        out.children.insert(key.clone(), sub);
                    }
                }
            }
        }
        out
    }

    /// Reads a `FieldsV1` document.
    pub fn from_fields_v1(value: &Value) -> FieldSet {
        let mut set = FieldSet::new();
        if let Value::Object(map) = value {
            if map.is_empty() {
                set.member = true;
            }
            for (key, child) in map {
                if key == "." {
                    set.member = true;
                } else {
                    set.children
                        .insert(key.clone(), FieldSet::from_fields_v1(child));
                }
            }
        }
        set
    }

    /// Writes the set as a `FieldsV1` document.
    pub fn to_fields_v1(&self) -> Value {
        self.clone().into_fields_v1()
    }

    /// Like [`to_fields_v1`](Self::to_fields_v1), consuming the set (its keys move into the
    /// JSON rather than being copied).
    pub fn into_fields_v1(self) -> Value {
        let mut map = Map::new();
        if self.member && !self.children.is_empty() {
            map.insert(".".into(), Value::Object(Map::new()));
        }
        for (key, child) in self.children {
            if !child.is_empty() {
                map.insert(key, child.into_fields_v1());
            }
        }
        Value::Object(map)
    }

    /// The paths in either set.
    pub fn union(&self, other: &FieldSet) -> FieldSet {
        let mut out = self.clone();
        out.member |= other.member;
        for (key, child) in &other.children {
            let merged = match out.children.get(key) {
                Some(mine) => mine.union(child),
                None => child.clone(),
            };
            out.children.insert(key.clone(), merged);
        }
        out
    }

    /// The paths of `self` not in `other`.
    pub fn difference(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && !other.member,
            children: BTreeMap::new(),
        };
        for (key, child) in &self.children {
            let rest = match other.children.get(key) {
                Some(theirs) => child.difference(theirs),
                None => child.clone(),
            };
            if !rest.is_empty() {
                out.children.insert(key.clone(), rest);
            }
        }
        out
    }

    /// The paths in both sets.
    pub fn intersection(&self, other: &FieldSet) -> FieldSet {
        let mut out = FieldSet {
            member: self.member && other.member,
            children: BTreeMap::new(),
        };
        for (key, child) in &self.children {
            if let Some(theirs) = other.children.get(key) {
                let both = child.intersection(theirs);
                if !both.is_empty() {
                    out.children.insert(key.clone(), both);
                }
            }
        }
        out
    }

    /// Whether the set holds the node at `key` or anything beneath it.
    fn touches(&self, key: &str) -> bool {
        self.children.get(key).is_some_and(|c| !c.is_empty())
    }

    /// Drops the paths that do not exist in `object` any more.
    pub fn retain_existing(&self, object: &Value) -> FieldSet {
        let mut out = FieldSet {
            member: self.member,
            children: BTreeMap::new(),
        };
        for (key, child) in &self.children {
            let Some(step) = PathElement::parse(key) else {
                continue;
            };
            if let Some(value) = step.find(object) {
                let kept = child.retain_existing(value);
                if !kept.is_empty() {
                    out.children.insert(key.clone(), kept);
                }
            }
        }
        out
    }

    /// Splits off the top-level field `name`: (the set under it, the rest).
    pub fn split_field(&self, name: &str) -> (FieldSet, FieldSet) {
        let mut rest = self.clone();
        let only = rest.take_field(name);
        (only, rest)
    }

    /// Removes the top-level field `name` from the set and returns the set under it.
    pub fn take_field(&mut self, name: &str) -> FieldSet {
        let key = field_key(name);
        let mut only = FieldSet::new();
        if let Some(sub) = self.children.remove(&key) {
            only.children.insert(key, sub);
        }
        only
    }

    /// The member paths that have nothing beneath them (values compared whole).
    pub fn leaf_paths(&self) -> Vec<Vec<PathElement>> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out, true);
        out
    }

    /// Every member path, as the list of its steps, shallowest first.
    pub fn paths(&self) -> Vec<Vec<PathElement>> {
        let mut out = Vec::new();
        self.collect_paths(&mut Vec::new(), &mut out, false);
        out
    }

    fn collect_paths(
        &self,
        prefix: &mut Vec<PathElement>,
        out: &mut Vec<Vec<PathElement>>,
        leaves_only: bool,
    ) {
        if self.member && !prefix.is_empty() && (!leaves_only || self.children.is_empty()) {
            out.push(prefix.clone());
        }
        for (key, child) in &self.children {
            if let Some(step) = PathElement::parse(key) {
                prefix.push(step);
                child.collect_paths(prefix, out, leaves_only);
                prefix.pop();
            }
        }
    }

    /// Removes from `object` every member path of `self` that `keep` neither holds nor holds
    /// anything beneath; containers emptied by the removal go too.
    pub fn remove_from(&self, object: &mut Value, keep: &FieldSet) {
        for (key, child) in &self.children {
            let Some(step) = PathElement::parse(key) else {
                continue;
            };
            let kept = keep.children.get(key);
            let kept_below = kept.is_some_and(|k| !k.is_empty());
            if child.member && !kept_below {
                step.remove_from(object);
                continue;
            }
            let empty_set = FieldSet::new();
            let Some(value) = step.find_mut(object) else {
                continue;
            };
            child.remove_from(value, kept.unwrap_or(&empty_set));
            let emptied = match value {
                Value::Object(map) => map.is_empty(),
                Value::Array(items) => items.is_empty(),
                _ => false,
            };
            if emptied && !kept_below && !keep.touches(key) {
                step.remove_from(object);
            }
        }
    }
}

/// Renders a path as Kubernetes does in conflict messages: `.spec.replicas`,
/// `.spec.containers[name="app"].image`.
pub fn display_path(path: &[PathElement]) -> String {
    path.iter().map(PathElement::display).collect()
}

/// The value at `path` in `object`.
pub fn value_at<'v>(object: &'v Value, path: &[PathElement]) -> Option<&'v Value> {
    path.iter().try_fold(object, |value, step| step.find(value))
}

fn metadata_fields<'a>(kind: &ResourceKind, value: &'a Value, path: &mut Vec<&'a str>) -> FieldSet {
    let mut set = FieldSet::new();
    if let Value::Object(map) = value {
        for (name, child) in map {
            if matches!(
                name.as_str(),
                "name"
                    | "namespace"
                    | "uid"
                    | "resourceVersion"
                    | "generation"
                    | "creationTimestamp"
                    | "deletionTimestamp"
                    | "deletionGracePeriodSeconds"
                    | "managedFields"
                    | "selfLink"
            ) {
                continue;
            }
            path.push(name);
            let fields = fields_of(kind, child, path);
            path.pop();
            if !fields.is_empty() {
                set.children.insert(field_key(name), fields);
            }
        }
    }
    set
}

fn fields_of<'a>(kind: &ResourceKind, value: &'a Value, path: &mut Vec<&'a str>) -> FieldSet {
    match value {
        Value::Object(map) if !map.is_empty() => {
            let mut set = FieldSet::new();
            for (name, child) in map {
                path.push(name);
                let fields = fields_of(kind, child, path);
                path.pop();
                set.children.insert(field_key(name), fields);
            }
            set
        }
        Value::Array(items) if !items.is_empty() => match list_strategy(kind, path) {
            ListStrategy::MergeByKey(merge_key) => {
                let mut set = FieldSet::new();
                for item in items {
                    let Some(key_value) = item.get(merge_key) else {
                        // An element without its key can only be owned with the whole list.
                        return FieldSet::leaf();
                    };
                    let mut element = fields_of(kind, item, path);
                    element.member = true;
                    set.children
                        .insert(keyed_key(merge_key, key_value), element);
                }
                set
            }
            ListStrategy::MergePrimitives => {
                let mut set = FieldSet::new();
                for item in items {
                    set.children.insert(value_key(item), FieldSet::leaf());
                }
                set
            }
            ListStrategy::Replace => FieldSet::leaf(),
        },
        _ => FieldSet::leaf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployments() -> std::sync::Arc<ResourceKind> {
        crate::registry::Registry::with_builtins()
            .get("apps", "v1", "deployments")
            .cloned()
            .expect("deployments are built in")
    }

    fn deployment(replicas: i64, image: &str) -> Value {
        json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "labels": {"app": "web"}, "resourceVersion": "3"},
            "spec": {"replicas": replicas, "template": {"spec": {"containers": [
                {"name": "app", "image": image, "args": ["a", "b"]}
            ]}}}
        })
    }

    #[test]
    fn an_object_s_fields_follow_the_patch_metadata() {
        let set = FieldSet::of_object(&deployments(), &deployment(2, "x"));
        assert_eq!(
            set.to_fields_v1(),
            json!({
                "f:metadata": {"f:labels": {"f:app": {}}},
                "f:spec": {"f:replicas": {}, "f:template": {"f:spec": {"f:containers": {
                    "k:{\"name\":\"app\"}": {".": {}, "f:name": {}, "f:image": {}, "f:args": {}}
                }}}}
            })
        );
        assert_eq!(FieldSet::from_fields_v1(&set.to_fields_v1()), set);
    }

    #[test]
    fn changed_fields_are_only_the_differences() {
        let kind = deployments();
        let changed = FieldSet::changed(&kind, &deployment(2, "x"), &deployment(3, "x"));
        assert_eq!(
            changed.to_fields_v1(),
            json!({"f:spec": {"f:replicas": {}}})
        );
        let changed = FieldSet::changed(&kind, &deployment(2, "x"), &deployment(2, "y"));
        assert_eq!(
            changed.to_fields_v1(),
            json!({"f:spec": {"f:template": {"f:spec": {"f:containers": {
                "k:{\"name\":\"app\"}": {"f:image": {}}
            }}}}})
        );
    }

    #[test]
    fn set_algebra_and_removal() {
        let kind = deployments();
        let object = deployment(2, "x");
        let all = FieldSet::of_object(&kind, &object);
        let replicas = FieldSet::from_fields_v1(&json!({"f:spec": {"f:replicas": {}}}));
        assert_eq!(all.intersection(&replicas), replicas);
        assert!(all.difference(&all).is_empty());
        assert_eq!(all.difference(&replicas).union(&replicas), all);

        // Removing the container element everywhere but keeping replicas.
        let mut target = object.clone();
        all.remove_from(&mut target, &replicas);
        assert_eq!(target["spec"], json!({"replicas": 2}));
        assert!(target["metadata"].get("labels").is_none());
        assert_eq!(target["metadata"]["name"], "web");

        let paths = replicas.paths();
        assert_eq!(display_path(&paths[0]), ".spec.replicas");
        assert_eq!(value_at(&object, &paths[0]), Some(&json!(2)));
        assert!(all.retain_existing(&json!({"spec": {"replicas": 1}})) == replicas);
    }
}
