//! Cutting `metadata.managedFields` out of an object's JSON text before it is decoded.
//!
//! Informers cache objects without managed fields (as client-go's informers in kube-scheduler
//! and kube-controller-manager strip them), and decoding them only to drop them was about half
//! the cost of decoding a pod that a node agent had written status to. The text is scanned —
//! strings, escapes and nesting respected, nothing allocated — for the member of the top-level
//! `metadata` object named `managedFields`, and a copy without that member (and one adjacent
//! comma) is decoded instead. Anything unexpected leaves the text as it is; the caller then
//! decodes the whole object and drops the field.

use std::ops::Range;

/// `json` without its `metadata.managedFields` member, or `None` when there is none to cut (or
/// the text is not the object this scanner expects).
pub(crate) fn without_managed_fields(json: &[u8]) -> Option<Vec<u8>> {
    let cut = managed_fields_span(json)?;
    let mut trimmed = Vec::with_capacity(json.len() - cut.len());
    trimmed.extend_from_slice(&json[..cut.start]);
    trimmed.extend_from_slice(&json[cut.end..]);
    Some(trimmed)
}

/// The bytes to remove: `"managedFields": <value>` inside the top-level `metadata` object with
/// the comma that follows it, or, when it is the last member, the comma before it.
fn managed_fields_span(json: &[u8]) -> Option<Range<usize>> {
    let mut text = Cursor { json, at: 0 };
    text.expect(b'{')?;
    if text.peek()? == b'}' {
        return None;
    }
    loop {
        let key = text.string()?;
        text.expect(b':')?;
        if key == b"metadata" {
            return text.member_span_in_object(b"managedFields");
        }
        text.skip_value()?;
        match text.next_byte()? {
            b',' => continue,
            _ => return None,
        }
    }
}

/// A position in JSON text.
struct Cursor<'a> {
    json: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn skip_whitespace(&mut self) {
        while matches!(self.json.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// The next significant byte, not consumed.
    fn peek(&mut self) -> Option<u8> {
        self.skip_whitespace();
        self.json.get(self.at).copied()
    }

    /// The next significant byte, consumed.
    fn next_byte(&mut self) -> Option<u8> {
        let byte = self.peek()?;
        self.at += 1;
        Some(byte)
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next_byte()? == byte).then_some(())
    }

    /// A string's raw contents (escapes left as written), the cursor after its closing quote.
    fn string(&mut self) -> Option<&'a [u8]> {
        self.expect(b'"')?;
        let start = self.at;
        loop {
            match *self.json.get(self.at)? {
                b'\\' => self.at += 2,
                b'"' => {
                    self.at += 1;
                    return Some(&self.json[start..self.at - 1]);
                }
                _ => self.at += 1,
            }
        }
    }

    /// Moves past one value of any type.
    fn skip_value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' | b'[' => {
                let mut depth = 0usize;
                loop {
                    match *self.json.get(self.at)? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.at += 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.at += 1;
                }
            }
            _ => {
                let start = self.at;
                while !matches!(
                    self.json.get(self.at),
                    None | Some(b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r')
                ) {
                    self.at += 1;
                }
                (self.at > start).then_some(())
            }
        }
    }

    /// In the object starting here, the span of the member named `name` with one adjacent
    /// comma (see [`managed_fields_span`]).
    fn member_span_in_object(&mut self, name: &[u8]) -> Option<Range<usize>> {
        self.expect(b'{')?;
        if self.peek()? == b'}' {
            return None;
        }
        let mut comma_before: Option<usize> = None;
        loop {
            self.skip_whitespace();
            let start = self.at;
            let key = self.string()?;
            self.expect(b':')?;
            self.skip_value()?;
            let end = self.at;
            let separator = self.peek()?;
            if key == name {
                return match (separator, comma_before) {
                    (b',', _) => Some(start..self.at + 1),
                    (b'}', Some(comma)) => Some(comma..end),
                    (b'}', None) => Some(start..end),
                    _ => None,
                };
            }
            match separator {
                b',' => {
                    comma_before = Some(self.at);
                    self.at += 1;
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// What the scanner's cut must equal: the object decoded whole, then the member dropped.
    fn expected(object: &Value) -> Value {
        let mut expected = object.clone();
        if let Some(meta) = expected.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("managedFields");
        }
        expected
    }

    fn cut(text: &str) -> Option<Value> {
        without_managed_fields(text.as_bytes())
            .map(|t| serde_json::from_slice(&t).expect("the cut text is JSON"))
    }

    #[test]
    fn the_member_goes_wherever_it_stands() {
        for text in [
            r#"{"kind":"Pod","metadata":{"managedFields":[{"a":1}],"name":"x"},"spec":{}}"#,
            r#"{"metadata":{"name":"x","managedFields":[{"a":"}]\"{"}]}}"#,
            r#"{"metadata":{"managedFields":[]}}"#,
            r#" { "metadata" : { "name" : "x" , "managedFields" : [ ] , "uid" : "u" } } "#,
        ] {
            let object: Value = serde_json::from_str(text).unwrap();
            assert_eq!(cut(text), Some(expected(&object)), "{text}");
        }
    }

    #[test]
    fn only_the_metadata_member_counts() {
        // A label or annotation of that name, or a member elsewhere, stays.
        let text = r#"{"metadata":{"labels":{"managedFields":"x"},"name":"x"},"spec":{"managedFields":1}}"#;
        assert_eq!(cut(text), None);
        let text = r#"{"a":"\"metadata\":{\"managedFields\":1}","metadata":{"annotations":{"managedFields":"[]"},"managedFields":[{}]}}"#;
        let object: Value = serde_json::from_str(text).unwrap();
        assert_eq!(cut(text), Some(expected(&object)));
        assert_eq!(
            expected(&object)["metadata"]["annotations"],
            json!({"managedFields": "[]"})
        );
    }

    #[test]
    fn unexpected_text_is_left_alone() {
        for text in [
            "",
            "[]",
            "{",
            r#"{"metadata":"#,
            r#"{"metadata":{"managedFields":"#,
            "{}",
        ] {
            assert_eq!(without_managed_fields(text.as_bytes()), None, "{text}");
        }
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| json!(f)),
            "[\\\\\"{}\\[\\],: a-zA-Z\u{e9}\u{1F600}]{0,8}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("managedFields".to_string()),
                        Just("metadata".to_string()),
                        "[a-z\"\\\\{}]{0,6}"
                    ],
                    inner,
                    0..4
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the object, pretty or compact, decoding the cut text gives the object
        /// without `metadata.managedFields`; the cut is made exactly when that member exists.
        #[test]
        fn cutting_equals_decoding_then_dropping(
            object in prop::collection::btree_map("[a-z]{1,3}|metadata", json_value(), 0..4),
            meta in prop::collection::btree_map("[a-z]{1,3}|managedFields|labels", json_value(), 0..5),
            with_meta in any::<bool>(),
            pretty in any::<bool>(),
        ) {
            let mut object: serde_json::Map<String, Value> = object.into_iter().collect();
            if with_meta {
                object.insert("metadata".into(), Value::Object(meta.into_iter().collect()));
            }
            let object = Value::Object(object);
            let text = if pretty {
                serde_json::to_string_pretty(&object).unwrap()
            } else {
                serde_json::to_string(&object).unwrap()
            };
            // Compared with the text decoded whole (floats need not survive a round trip).
            let object: Value = serde_json::from_str(&text).unwrap();
            let has_member = object
                .get("metadata")
                .and_then(Value::as_object)
                .is_some_and(|m| m.contains_key("managedFields"));
            match cut(&text) {
                Some(cut) => {
                    prop_assert!(has_member);
                    prop_assert_eq!(cut, expected(&object));
                }
                None => prop_assert!(!has_member),
            }
        }
    }
}
