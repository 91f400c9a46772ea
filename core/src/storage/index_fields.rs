//! Decoding only what a cache indexes of a stored object: its metadata (without
//! `managedFields`) and the kind's selectable fields. A watch cache keeps every object as bytes
//! and needs just these parts to key, label-select and field-select it, so building (and
//! dropping) the whole JSON tree of every change would be wasted work.

use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;

/// Which parts of a JSON value to keep.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Shape {
    /// The whole value.
    Whole,
    /// Nothing: the value is skipped and left out.
    Skip,
    /// An object's members: the named ones shaped as given, any other one as `others`. A value
    /// that is not an object is kept whole.
    Members {
        named: BTreeMap<String, Shape>,
        others: Box<Shape>,
    },
}

impl Shape {
    /// The shape a cache of objects with these selectable fields (JSON pointers) needs:
    /// `apiVersion`, `kind`, `metadata` without `managedFields`, and each pointed-to value.
    pub(crate) fn for_index<'a>(pointers: impl IntoIterator<Item = &'a str>) -> Shape {
        let metadata = Shape::Members {
            named: [("managedFields".to_string(), Shape::Skip)].into(),
            others: Box::new(Shape::Whole),
        };
        let mut shape = Shape::Members {
            named: [
                ("apiVersion".to_string(), Shape::Whole),
                ("kind".to_string(), Shape::Whole),
                ("metadata".to_string(), metadata),
            ]
            .into(),
            others: Box::new(Shape::Skip),
        };
        for pointer in pointers {
            shape.keep(pointer);
        }
        shape
    }

    /// Adds the value at a JSON pointer to what is kept.
    fn keep(&mut self, pointer: &str) {
        let mut node = self;
        let tokens: Vec<String> = pointer
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        for (i, token) in tokens.iter().enumerate() {
            let last = i + 1 == tokens.len();
            let Shape::Members { named, others } = node else {
                return;
            };
            if **others == Shape::Whole && !named.contains_key(token) {
                // Already kept whole with everything else of this object.
                return;
            }
            let next = named.entry(token.clone()).or_insert_with(|| {
                if last {
                    Shape::Whole
                } else {
                    Shape::Members {
                        named: BTreeMap::new(),
                        others: Box::new(Shape::Skip),
                    }
                }
            });
            if last {
                *next = Shape::Whole;
                return;
            }
            if *next == Shape::Skip {
                *next = Shape::Members {
                    named: BTreeMap::new(),
                    others: Box::new(Shape::Skip),
                };
            }
            node = next;
        }
    }

    /// Decodes `bytes` keeping only this shape's parts.
    pub(crate) fn decode(&self, bytes: &[u8]) -> serde_json::Result<Value> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let value = self.deserialize(&mut deserializer)?;
        deserializer.end()?;
        Ok(value)
    }
}

impl<'de> DeserializeSeed<'de> for &Shape {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self {
            Shape::Whole => serde::Deserialize::deserialize(deserializer),
            Shape::Skip => {
                IgnoredAny::deserialize(deserializer)?;
                Ok(Value::Null)
            }
            Shape::Members { .. } => deserializer.deserialize_any(MembersVisitor(self)),
        }
    }
}

struct MembersVisitor<'a>(&'a Shape);

impl<'de> Visitor<'de> for MembersVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let Shape::Members { named, others } = self.0 else {
            return Err(serde::de::Error::custom("not an object shape"));
        };
        let mut map = Map::new();
        while let Some(key) = access.next_key::<String>()? {
            let shape = named.get(&key).unwrap_or(others);
            if *shape == Shape::Skip {
                access.next_value::<IgnoredAny>()?;
                continue;
            }
            let value = access.next_value_seed(shape)?;
            map.insert(key, value);
        }
        Ok(Value::Object(map))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut access: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = access.next_element::<Value>()? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_string()))
    }

    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keeps_metadata_and_the_pointed_fields_only() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"},
                         "managedFields": [{"manager": "kubectl"}], "resourceVersion": "5"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i"}],
                     "a/b": {"c": 1}},
            "status": {"phase": "Running", "conditions": [{"type": "Ready"}]},
        });
        let shape = Shape::for_index(["/spec/nodeName", "/status/phase", "/spec/a~1b/c"]);
        let sparse = shape.decode(&serde_json::to_vec(&pod).unwrap()).unwrap();
        assert_eq!(
            sparse,
            json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "web"},
                             "resourceVersion": "5"},
                "spec": {"nodeName": "n1", "a/b": {"c": 1}},
                "status": {"phase": "Running"},
            })
        );
    }

    #[test]
    fn values_of_an_unexpected_type_are_kept_whole_and_garbage_is_an_error() {
        let shape = Shape::for_index(["/spec/nodeName"]);
        let odd = json!({"metadata": "text", "spec": [1, {"x": null}], "status": 3});
        assert_eq!(
            shape.decode(&serde_json::to_vec(&odd).unwrap()).unwrap(),
            json!({"metadata": "text", "spec": [1, {"x": null}]})
        );
        assert!(shape.decode(b"{\"metadata\": {").is_err());
        assert!(shape.decode(b"{} trailing").is_err());
        // A pointer inside a kept-whole member changes nothing.
        let mut again = Shape::for_index(["/metadata/labels/app"]);
        assert_eq!(again, Shape::for_index([]));
        again.keep("/spec/nodeName");
        assert_eq!(again, shape);
    }
}
