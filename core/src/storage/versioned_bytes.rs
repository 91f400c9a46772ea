//! An object's JSON with its `metadata.resourceVersion`, made from the stored bytes (which
//! leave the revision out) by splicing the field in after the `{` that opens the top-level
//! `metadata` object — no decode and re-encode of the whole object, and, held as
//! [`ObjectBytes`], no second copy of it beside the store's (which stays in its compressed
//! [stored form](super::stored_value) until written out). Callers must know the stored bytes
//! have no `resourceVersion` of their own (else the result would hold it twice).

use super::stored_value::unpack;
use crate::store::Revision;
use bytes::Bytes;
use std::borrow::Cow;

/// `stored` with `"resourceVersion":"<revision>"` added to its top-level metadata; `None` when
/// `stored` has no top-level `metadata` object.
#[cfg(test)]
fn with_resource_version(stored: &[u8], revision: Revision) -> Option<Bytes> {
    ObjectBytes::stored(Bytes::copy_from_slice(stored), revision).map(|o| o.to_bytes())
}

/// An object's JSON with its resourceVersion, held as the bytes the store keeps (compressed or
/// not) plus where in their JSON to splice the revision in. A cache of objects then shares each
/// object's bytes with the store (one copy of every object in memory, not two); the versioned
/// JSON is written out when it is sent.
#[derive(Debug, Clone, Default)]
pub struct ObjectBytes {
    bytes: Bytes,
    splice: Option<Splice>,
}

#[derive(Debug, Clone, Copy)]
struct Splice {
    /// Just after the `{` opening the top-level `metadata`.
    at: usize,
    revision: Revision,
    /// Whether the metadata object is empty (the field then takes no trailing comma).
    empty: bool,
}

impl Splice {
    /// Where `revision` goes in the JSON `text`; `None` without a top-level `metadata` object.
    fn in_text(text: &[u8], revision: Revision) -> Option<Self> {
        let at = metadata_body_start(text)?;
        let empty = text[at..]
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|b| *b == b'}');
        Some(Splice {
            at,
            revision,
            empty,
        })
    }
}

impl ObjectBytes {
    /// JSON that already carries its resourceVersion.
    pub fn complete(bytes: Bytes) -> Self {
        ObjectBytes {
            bytes,
            splice: None,
        }
    }

    /// A stored value (JSON without a resourceVersion, compressed or not), to be written with
    /// `revision`; `None` when its JSON has no top-level `metadata` object (or it is corrupt).
    pub(super) fn stored(bytes: Bytes, revision: Revision) -> Option<Self> {
        let splice = Splice::in_text(&unpack(&bytes).ok()?, revision)?;
        Some(ObjectBytes {
            bytes,
            splice: Some(splice),
        })
    }

    /// [`stored`](Self::stored) for a value whose JSON the caller has at hand: `text`.
    pub(super) fn stored_as(bytes: Bytes, text: &[u8], revision: Revision) -> Option<Self> {
        Some(ObjectBytes {
            bytes,
            splice: Some(Splice::in_text(text, revision)?),
        })
    }

    /// Appends the versioned JSON to `out`.
    pub fn write_to(&self, out: &mut Vec<u8>) {
        let Some(splice) = self.splice else {
            out.extend_from_slice(&self.bytes);
            return;
        };
        // Stored bytes were read once when this was made: they unpack.
        let text = unpack(&self.bytes).unwrap_or(Cow::Borrowed(&self.bytes[..]));
        let at = splice.at.min(text.len());
        out.reserve(text.len() + 40);
        out.extend_from_slice(&text[..at]);
        out.extend_from_slice(b"\"resourceVersion\":\"");
        out.extend_from_slice(splice.revision.to_string().as_bytes());
        out.extend_from_slice(if splice.empty {
            &b"\""[..]
        } else {
            &b"\","[..]
        });
        out.extend_from_slice(&text[at..]);
    }

    /// The stored JSON (without a resourceVersion) and the revision spliced into it; `None`
    /// when these bytes carry their resourceVersion themselves.
    pub(crate) fn stored_parts(&self) -> Option<(Cow<'_, [u8]>, Revision)> {
        let splice = self.splice?;
        Some((unpack(&self.bytes).ok()?, splice.revision))
    }

    /// The versioned JSON (shared, not copied, when nothing is spliced).
    pub fn to_bytes(&self) -> Bytes {
        if self.splice.is_none() {
            return self.bytes.clone();
        }
        let mut out = Vec::new();
        self.write_to(&mut out);
        Bytes::from(out)
    }
}

/// The offset just after the `{` opening the value of the top-level key `metadata`.
fn metadata_body_start(json: &[u8]) -> Option<usize> {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                i = start;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
                let end = i.min(json.len());
                i += 1;
                if depth == 1 && &json[start..end] == b"metadata" {
                    let mut j = skip_whitespace(json, i);
                    if json.get(j) == Some(&b':') {
                        j = skip_whitespace(json, j + 1);
                        return (json.get(j) == Some(&b'{')).then_some(j + 1);
                    }
                }
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    None
}

fn skip_whitespace(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    fn spliced(value: &Value, revision: Revision) -> Value {
        let bytes = with_resource_version(&serde_json::to_vec(value).unwrap(), revision).unwrap();
        serde_json::from_slice(&bytes).unwrap()
    }

    #[test]
    fn adds_the_revision_to_top_level_metadata_only() {
        let object = json!({
            "apiVersion": "apps/v1", "kind": "metadata",
            "spec": {"template": {"metadata": {"labels": {"a": "b"}}}},
            "metadata": {"name": "x", "annotations": {"metadata": "{"}},
        });
        let mut expected = object.clone();
        expected["metadata"]["resourceVersion"] = json!("42");
        assert_eq!(spliced(&object, 42), expected);
    }

    #[test]
    fn keeps_the_stored_bytes_and_splices_when_written() {
        let stored = Bytes::from_static(br#"{"kind":"Pod","metadata":{"name":"x"}}"#);
        let object = ObjectBytes::stored(stored.clone(), 9).unwrap();
        assert_eq!(object.bytes.as_ptr(), stored.as_ptr(), "shared, not copied");
        let mut out = b"[".to_vec();
        object.write_to(&mut out);
        let expected = br#"{"kind":"Pod","metadata":{"resourceVersion":"9","name":"x"}}"#;
        assert_eq!(&out[1..], &expected[..]);
        assert_eq!(&object.to_bytes()[..], &expected[..]);
        let complete = ObjectBytes::complete(stored.clone());
        assert_eq!(complete.to_bytes().as_ptr(), stored.as_ptr());
    }

    #[test]
    fn empty_metadata_and_whitespace() {
        let bytes = with_resource_version(br#"{ "metadata" : { } }"#, 7).unwrap();
        let value: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(value, json!({"metadata": {"resourceVersion": "7"}}));
    }

    #[test]
    fn no_metadata_object_is_none() {
        assert!(with_resource_version(br#"{"spec":{"metadata":{}}}"#, 1).is_none());
        assert!(with_resource_version(br#"{"metadata":"x"}"#, 1).is_none());
        assert!(with_resource_version(b"", 1).is_none());
        assert!(with_resource_version(br#"{"a":"\"metadata\":{"}"#, 1).is_none());
    }

    proptest! {
        #[test]
        fn splicing_equals_setting_the_field(
            name in "\\PC{0,12}",
            label in "[\"\\\\{}a-z:]{0,12}",
            revision in any::<i64>(),
        ) {
            let object = json!({
                "apiVersion": label.clone(),
                "kind": "Pod",
                "metadata": {"name": name, "labels": {label.clone(): label}},
                "spec": {"metadata": {}},
            });
            let mut expected = object.clone();
            expected["metadata"]["resourceVersion"] = json!(revision.to_string());
            prop_assert_eq!(spliced(&object, revision), expected);
        }
    }
}
