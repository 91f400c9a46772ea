//! An object's JSON with its `metadata.resourceVersion`, made from the stored bytes (which
//! leave the revision out) by splicing the field in after the `{` that opens the top-level
//! `metadata` object — no decode and re-encode of the whole object. Callers must know the
//! stored bytes have no `resourceVersion` of their own (else the result would hold it twice).

use crate::store::Revision;
use bytes::{BufMut, Bytes, BytesMut};

/// `stored` with `"resourceVersion":"<revision>"` added to its top-level metadata; `None` when
/// `stored` has no top-level `metadata` object.
pub(super) fn with_resource_version(stored: &[u8], revision: Revision) -> Option<Bytes> {
    let at = metadata_body_start(stored)?;
    let empty = stored[at..]
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'}');
    let field = format!(
        "\"resourceVersion\":\"{revision}\"{}",
        if empty { "" } else { "," }
    );
    let mut out = BytesMut::with_capacity(stored.len() + field.len());
    out.put_slice(&stored[..at]);
    out.put_slice(field.as_bytes());
    out.put_slice(&stored[at..]);
    Some(out.freeze())
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
