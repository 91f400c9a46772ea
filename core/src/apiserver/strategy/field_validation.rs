//! Field validation (`fieldValidation=Strict|Warn|Ignore`): unknown fields (anything the kind's
//! type does not define) and duplicate keys in the request body. Strict makes them a 400, Warn
//! turns them into `Warning` headers, Ignore drops the check.

use super::super::ApiError;
use serde::de::{DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::Value;
use std::fmt;

/// What to do with unknown and duplicate fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldValidation {
    /// Refuse the request (400).
    Strict,
    /// Accept it with `Warning` headers (the default).
    Warn,
    /// Accept it silently.
    Ignore,
}

impl FieldValidation {
    /// Reads the `fieldValidation` query parameter.
    pub fn parse(value: Option<&str>) -> Result<Self, ApiError> {
        match value.unwrap_or("") {
            "" | "Warn" => Ok(FieldValidation::Warn),
            "Strict" => Ok(FieldValidation::Strict),
            "Ignore" => Ok(FieldValidation::Ignore),
            other => Err(ApiError::bad_request(format!(
                "fieldValidation parameter unsupported: {other:?}: supported values are \"Ignore\", \"Warn\" and \"Strict\""
            ))),
        }
    }

    /// Applies the mode to the problems found: an error, warnings, or nothing.
    pub fn enforce(
        self,
        problems: Vec<String>,
        warnings: &mut Vec<String>,
    ) -> Result<(), ApiError> {
        if problems.is_empty() {
            return Ok(());
        }
        match self {
            FieldValidation::Strict => Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                problems.join(", ")
            ))),
            FieldValidation::Warn => {
                warnings.extend(problems);
                Ok(())
            }
            FieldValidation::Ignore => Ok(()),
        }
    }
}

/// One step of a field path, rendered only when a problem is reported.
#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn render(path: &[Step<'_>]) -> String {
    let mut text = String::new();
    for step in path {
        match step {
            Step::Key(key) if text.is_empty() => text.push_str(key),
            Step::Key(key) => {
                text.push('.');
                text.push_str(key);
            }
            Step::Index(i) => text.push_str(&format!("[{i}]")),
        }
    }
    text
}

fn compare<'a>(
    input: &'a Value,
    known: &Value,
    path: &mut Vec<Step<'a>>,
    problems: &mut Vec<String>,
) {
    match (input, known) {
        (Value::Object(given), Value::Object(kept)) => {
            for (key, value) in given {
                path.push(Step::Key(key));
                match kept.get(key) {
                    Some(child) => compare(value, child, path, problems),
                    None if value.is_null() => {}
                    None => problems.push(format!("unknown field {:?}", render(path))),
                }
                path.pop();
            }
        }
        (Value::Array(given), Value::Array(kept)) if given.len() == kept.len() => {
            for (i, (g, k)) in given.iter().zip(kept).enumerate() {
                path.push(Step::Index(i));
                compare(g, k, path, problems);
                path.pop();
            }
        }
        _ => {}
    }
}

/// The fields of `given` missing from `known` (the same object as its type re-encoded it).
pub fn unknown_fields(given: &Value, known: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    compare(given, known, &mut Vec::new(), &mut problems);
    problems
}

/// Every key that appears twice in one JSON object of `body`, by path.
pub fn duplicate_fields(body: &[u8]) -> Vec<String> {
    // Nearly every body has none: a scan that borrows its keys and builds no paths says so,
    // and only a body with a duplicate is scanned again to name them.
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    if matches!(DuplicateProbe.deserialize(&mut deserializer), Ok(false)) {
        return Vec::new();
    }
    let mut problems = Vec::new();
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let _ = DuplicateScan {
        path: String::new(),
        problems: &mut problems,
    }
    .deserialize(&mut deserializer);
    problems
}

/// Whether any JSON object of a document repeats a key.
struct DuplicateProbe;

/// A key as the document holds it: borrowed unless it has escapes.
struct Key<'de>(std::borrow::Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a key")
            }
            fn visit_borrowed_str<E>(self, key: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Borrowed(key)))
            }
            fn visit_str<E>(self, key: &str) -> Result<Key<'de>, E> {
                Ok(Key(std::borrow::Cow::Owned(key.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> DeserializeSeed<'de> for DuplicateProbe {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<bool, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DuplicateProbe {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<bool, A::Error> {
        let mut keys = Vec::new();
        let mut found = false;
        while let Some(key) = map.next_key::<Key<'de>>()? {
            keys.push(key.0);
            found |= map.next_value_seed(DuplicateProbe)?;
        }
        keys.sort_unstable();
        Ok(found || keys.windows(2).any(|pair| pair[0] == pair[1]))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<bool, A::Error> {
        let mut found = false;
        while let Some(inner) = seq.next_element_seed(DuplicateProbe)? {
            found |= inner;
        }
        Ok(found)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }
    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

struct DuplicateScan<'a> {
    path: String,
    problems: &'a mut Vec<String>,
}

impl<'de> DeserializeSeed<'de> for DuplicateScan<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for DuplicateScan<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let mut seen = std::collections::HashSet::new();
        while let Some(key) = map.next_key::<String>()? {
            let here = if self.path.is_empty() {
                key.clone()
            } else {
                format!("{}.{key}", self.path)
            };
            if !seen.insert(key) {
                self.problems.push(format!("duplicate field {here:?}"));
            }
            map.next_value_seed(DuplicateScan {
                path: here,
                problems: self.problems,
            })?;
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        while seq
            .next_element_seed(DuplicateScan {
                path: format!("{}[{i}]", self.path),
                problems: self.problems,
            })?
            .is_some()
        {
            i += 1;
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E>(self) -> Result<(), E> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn unknown_and_duplicate_fields_are_found() {
        let registry = Registry::with_builtins();
        let pods = registry.get("", "v1", "pods").unwrap();
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p", "creationTimestamp": null, "bogus": 1},
            "spec": {"containers": [{"name": "c", "image": "i", "imag": "typo"}], "extra": {"a": 1}}, "status": {}});
        let known = crate::apiserver::strategy::check_types(pods, &pod)
            .unwrap()
            .unwrap();
        let mut found = unknown_fields(&pod, &known);
        found.sort();
        assert_eq!(
            found,
            [
                "unknown field \"metadata.bogus\"",
                "unknown field \"spec.containers[0].imag\"",
                "unknown field \"spec.extra\""
            ]
        );
        let clean = json!({"metadata": {"name": "p"}, "spec": {"containers": []}});
        assert!(unknown_fields(
            &clean,
            &crate::apiserver::strategy::check_types(pods, &clean)
                .unwrap()
                .unwrap()
        )
        .is_empty());
        let dupes = duplicate_fields(
            br#"{"metadata": {"name": "a", "name": "b"}, "spec": {"containers": [{"name": "x"}]}}"#,
        );
        assert_eq!(dupes, ["duplicate field \"metadata.name\""]);
        // An escaped spelling of a key is the same key; duplicates deep in lists are found.
        let dupes = duplicate_fields(
            br#"{"spec": {"containers": [{"name": "x"}, {"name": "y", "\u006eame": "z"}]}}"#,
        );
        assert_eq!(dupes, ["duplicate field \"spec.containers[1].name\""]);
        assert!(
            duplicate_fields(br#"{"a": {"b": 1}, "b": {"a": [{"a": 1}, {"a": 2}]}}"#).is_empty()
        );
        // The path of an unknown field deep in a list is named in full.
        let pod = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}, {"name": "d", "image": "i", "ports": [{"containerPort": 1, "hostPorts": 2}]}]}});
        let known = crate::apiserver::strategy::check_types(pods, &pod)
            .unwrap()
            .unwrap();
        assert_eq!(
            unknown_fields(&pod, &known),
            ["unknown field \"spec.containers[1].ports[0].hostPorts\""]
        );
        assert!(FieldValidation::parse(Some("Loose")).is_err());
        let mut warnings = Vec::new();
        assert!(FieldValidation::Strict
            .enforce(vec!["x".into()], &mut warnings)
            .is_err());
        FieldValidation::Warn
            .enforce(vec!["x".into()], &mut warnings)
            .unwrap();
        assert_eq!(warnings, ["x"]);
    }
}
