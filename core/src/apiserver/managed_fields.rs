//! Field management (`metadata.managedFields`) and server-side apply.
//!
//! Every write records which manager set which fields: a create gives its manager every field,
//! an update gives its manager the fields it changed and takes them from the others. A
//! server-side apply (`application/apply-patch+yaml`) declares the whole set of fields its
//! manager cares about: fields another manager owns with a different value are conflicts (409)
//! unless forced, the applied values are merged into the live object, and fields the manager
//! applied before but applies no more are removed unless someone else owns them.

use super::error::ApiError;
use crate::patch::{display_path, value_at, FieldSet};
use crate::registry::ResourceKind;
use serde_json::{json, Map, Value};

/// Who is writing: the manager's name, the API version it wrote with, and the subresource.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    pub manager: String,
    pub api_version: String,
    pub subresource: Option<String>,
}

/// One `managedFields` entry.
#[derive(Debug, Clone)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: Option<Value>,
    subresource: Option<String>,
    fields: FieldSet,
}

impl Entry {
    /// A new entry for `writer`'s `operation` (`Apply` or `Update`), timed now.
    fn new(writer: &Writer, operation: &str, fields: FieldSet) -> Entry {
        Entry {
            manager: writer.manager.clone(),
            operation: operation.into(),
            api_version: writer.api_version.clone(),
            time: Some(now()),
            subresource: writer.subresource.clone(),
            fields,
        }
    }

    fn read(value: &Value) -> Option<Entry> {
        let text = |key: &str| value.get(key).and_then(Value::as_str).map(str::to_string);
        Some(Entry {
            manager: text("manager").unwrap_or_default(),
            operation: text("operation")?,
            api_version: text("apiVersion").unwrap_or_default(),
            time: value.get("time").cloned(),
            subresource: text("subresource").filter(|s| !s.is_empty()),
            fields: value
                .get("fieldsV1")
                .map(FieldSet::from_fields_v1)
                .unwrap_or_default(),
        })
    }

    fn into_value(self) -> Value {
        let mut map = Map::new();
        map.insert("manager".into(), Value::String(self.manager));
        map.insert("operation".into(), Value::String(self.operation));
        map.insert("apiVersion".into(), Value::String(self.api_version));
        if let Some(time) = self.time {
            map.insert("time".into(), time);
        }
        map.insert("fieldsType".into(), json!("FieldsV1"));
        map.insert("fieldsV1".into(), self.fields.into_fields_v1());
        if let Some(sub) = self.subresource {
            map.insert("subresource".into(), Value::String(sub));
        }
        Value::Object(map)
    }

    fn is(&self, writer: &Writer, operation: &str) -> bool {
        self.manager == writer.manager
            && self.operation == operation
            && self.subresource == writer.subresource
    }

    /// How conflict messages name the manager.
    fn describe(&self) -> String {
        let mut text = format!("{:?}", self.manager);
        if self.operation == "Update" {
            text.push_str(&format!(" using {}", self.api_version));
        }
        text
    }
}

fn now() -> Value {
    json!(k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string())
}

fn read_entries(object: &Value) -> Vec<Entry> {
    object
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .map(|list| list.iter().filter_map(Entry::read).collect())
        .unwrap_or_default()
}

fn write_entries(object: &mut Value, entries: Vec<Entry>) {
    let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) else {
        return;
    };
    let list: Vec<Value> = entries
        .into_iter()
        .filter(|e| !e.fields.is_empty())
        .map(Entry::into_value)
        .collect();
    if list.is_empty() {
        meta.remove("managedFields");
    } else {
        meta.insert("managedFields".into(), Value::Array(list));
    }
}

/// The fields a writer through `subresource` may own: the status subresource owns `status`,
/// the main resource everything else (for kinds with a status subresource).
fn scoped(kind: &ResourceKind, writer: &Writer, fields: FieldSet) -> FieldSet {
    if kind.subresource("status").is_none() {
        return fields;
    }
    let mut rest = fields;
    let status = rest.take_field("status");
    match writer.subresource.as_deref() {
        Some("status") => status,
        _ => rest,
    }
}

/// Records a create: the writer owns every field it set.
pub(crate) fn track_create(kind: &ResourceKind, object: &mut Value, writer: &Writer) {
    let fields = scoped(kind, writer, FieldSet::of_object(kind, object));
    let entry = Entry::new(writer, "Update", fields);
    write_entries(object, vec![entry]);
}

/// Records an update from `old` to `new`: the writer takes the fields it changed; fields that
/// no longer exist leave every entry. Entries the client sent replace the stored ones.
pub(crate) fn track_update(kind: &ResourceKind, old: &Value, new: &mut Value, writer: &Writer) {
    let sent = new
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .is_some_and(|l| !l.is_empty());
    let mut entries = if sent {
        read_entries(new)
    } else {
        read_entries(old)
    };
    let changed = scoped(kind, writer, FieldSet::changed(kind, old, new));
    if !changed.is_empty() {
        for entry in entries.iter_mut() {
            if !entry.is(writer, "Update") {
                entry.fields = entry.fields.difference(&changed);
            }
        }
        match entries.iter_mut().find(|e| e.is(writer, "Update")) {
            Some(mine) => {
                mine.fields = mine.fields.union(&changed);
                mine.time = Some(now());
                mine.api_version = writer.api_version.clone();
            }
            None => entries.push(Entry::new(writer, "Update", changed)),
        }
    }
    prune(&mut entries, new);
    write_entries(new, entries);
}

/// Drops the fields that no longer exist in `object` from every entry.
fn prune(entries: &mut [Entry], object: &Value) {
    for entry in entries.iter_mut() {
        entry.fields = entry.fields.retain_existing(object);
    }
}

/// Keeps the entries of an object the server rewrote (a finalizer, a binding) consistent with
/// what is left in it.
pub(crate) fn prune_only(new: &mut Value) {
    let mut entries = read_entries(new);
    if entries.is_empty() {
        return;
    }
    prune(&mut entries, new);
    write_entries(new, entries);
}

/// A server-side apply of `applied` by `writer` onto `live` (`None`: the object does not
/// exist). Returns the object to write, its `managedFields` set.
pub(crate) fn apply(
    kind: &ResourceKind,
    live: Option<&Value>,
    applied: &Value,
    writer: &Writer,
    force: bool,
) -> Result<Value, ApiError> {
    let applied_fields = scoped(kind, writer, FieldSet::of_object(kind, applied));
    let Some(live) = live else {
        let mut object = applied.clone();
        let entry = Entry::new(writer, "Apply", applied_fields);
        write_entries(&mut object, vec![entry]);
        return Ok(object);
    };
    let mut entries = read_entries(live);
    if entries.is_empty() {
        // An object written before anyone tracked fields: its fields belong to a placeholder
        // manager, as Kubernetes does.
        entries.push(Entry {
            manager: "before-first-apply".into(),
            operation: "Update".into(),
            api_version: writer.api_version.clone(),
            time: Some(now()),
            subresource: None,
            fields: scoped(kind, writer, FieldSet::of_object(kind, live)),
        });
    }

    // Conflicts: fields another manager owns whose live value differs from the applied one.
    let mut conflicts = Vec::new();
    for entry in entries.iter().filter(|e| !e.is(writer, "Apply")) {
        for path in entry.fields.intersection(&applied_fields).leaf_paths() {
            if value_at(live, &path) != value_at(applied, &path) {
                conflicts.push((entry.describe(), display_path(&path)));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(ApiError::apply_conflict(conflicts));
    }

    // Merge the applied values into the live object.
    let mut object = crate::patch::strategic_merge(kind, live, &without_identity(applied))
        .map_err(|e| ApiError::bad_request(e.to_string()))?;

    // Fields this manager applied before and applies no more go, unless another owns them.
    let previous = entries
        .iter()
        .find(|e| e.is(writer, "Apply"))
        .map(|e| e.fields.clone())
        .unwrap_or_default();
    let dropped = previous.difference(&applied_fields);
    if !dropped.is_empty() {
        let mut keep = applied_fields.clone();
        for entry in entries.iter().filter(|e| !e.is(writer, "Apply")) {
            keep = keep.union(&entry.fields);
        }
        dropped.remove_from(&mut object, &keep);
    }

    // Ownership: forced fields leave the other managers; otherwise they are shared.
    if force {
        for entry in entries.iter_mut().filter(|e| !e.is(writer, "Apply")) {
            entry.fields = entry.fields.difference(&applied_fields);
        }
    }
    match entries.iter_mut().find(|e| e.is(writer, "Apply")) {
        Some(mine) => {
            if mine.fields != applied_fields {
                mine.time = Some(now());
            }
            mine.fields = applied_fields;
            mine.api_version = writer.api_version.clone();
        }
        None => entries.push(Entry::new(writer, "Apply", applied_fields)),
    }
    prune(&mut entries, &object);
    write_entries(&mut object, entries);
    Ok(object)
}

/// The applied configuration without what the server owns, ready to merge.
fn without_identity(applied: &Value) -> Value {
    let mut patch = applied.clone();
    if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        for field in [
            "managedFields",
            "resourceVersion",
            "uid",
            "creationTimestamp",
            "generation",
        ] {
            meta.remove(field);
        }
    }
    patch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind() -> std::sync::Arc<ResourceKind> {
        crate::registry::Registry::with_builtins()
            .get("apps", "v1", "deployments")
            .cloned()
            .expect("deployments are built in")
    }

    fn writer(name: &str) -> Writer {
        Writer {
            manager: name.into(),
            api_version: "apps/v1".into(),
            subresource: None,
        }
    }

    fn config(replicas: Option<i64>, image: &str, env: bool) -> Value {
        let mut container = json!({"name": "app", "image": image});
        if env {
            container["env"] = json!([{"name": "MODE", "value": "x"}]);
        }
        let mut spec = json!({"template": {"spec": {"containers": [container]}}});
        if let Some(r) = replicas {
            spec["replicas"] = json!(r);
        }
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web"}, "spec": spec})
    }

    fn managers(object: &Value) -> Vec<(String, String)> {
        read_entries(object)
            .into_iter()
            .map(|e| (e.manager, e.operation))
            .collect()
    }

    #[test]
    fn apply_creates_then_updates_removes_and_conflicts() {
        let kind = kind();
        let first = apply(
            &kind,
            None,
            &config(Some(2), "a", true),
            &writer("ci"),
            false,
        )
        .expect("create");
        assert_eq!(managers(&first), vec![("ci".into(), "Apply".into())]);

        // Another writer scales: it takes replicas.
        let mut scaled = first.clone();
        scaled["spec"]["replicas"] = json!(5);
        track_update(&kind, &first, &mut scaled, &writer("kubectl-scale"));
        assert_eq!(managers(&scaled).len(), 2);

        // Applying a different replicas conflicts with the scaler...
        let err = apply(
            &kind,
            Some(&scaled),
            &config(Some(3), "a", true),
            &writer("ci"),
            false,
        )
        .expect_err("conflict");
        assert_eq!(err.code, 409);
        assert!(err.message.contains("kubectl-scale"), "{}", err.message);
        assert_eq!(err.details.causes[0].field, ".spec.replicas");

        // ...the same value does not, and leaving replicas out keeps the scaler's value.
        let same = apply(
            &kind,
            Some(&scaled),
            &config(Some(5), "b", true),
            &writer("ci"),
            false,
        )
        .expect("same value");
        assert_eq!(same["spec"]["replicas"], 5);
        let dropped = apply(
            &kind,
            Some(&same),
            &config(None, "b", false),
            &writer("ci"),
            false,
        )
        .expect("no replicas");
        assert_eq!(dropped["spec"]["replicas"], 5, "owned by kubectl-scale too");
        assert!(
            dropped["spec"]["template"]["spec"]["containers"][0]
                .get("env")
                .is_none(),
            "env no longer applied: {dropped}"
        );
        assert_eq!(
            dropped["spec"]["template"]["spec"]["containers"][0]["image"],
            "b"
        );

        // Forcing takes the field.
        let forced = apply(
            &kind,
            Some(&scaled),
            &config(Some(3), "a", true),
            &writer("ci"),
            true,
        )
        .expect("forced");
        assert_eq!(forced["spec"]["replicas"], 3);
        let scaler = read_entries(&forced)
            .into_iter()
            .find(|e| e.manager == "kubectl-scale");
        assert!(scaler.is_none(), "the scaler lost its only field");
    }
}
