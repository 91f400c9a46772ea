//! Field selectors (`metadata.name=x,spec.nodeName=,status.phase!=Running`): parse with
//! Kubernetes' escaping rules, print canonically, check field names against a kind's table, and
//! match values read from an object.

use super::SelectorError;
use std::fmt;

/// One `field=value` or `field!=value` term.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldRequirement {
    /// The field path, e.g. `spec.nodeName`.
    pub field: String,
    /// Whether the value must differ (`!=`) rather than equal (`=`, `==`).
    pub negated: bool,
    /// The value (may be empty: `spec.nodeName=` selects unscheduled pods).
    pub value: String,
}

/// A conjunction of field terms; the empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct FieldSelector {
    requirements: Vec<FieldRequirement>,
}

fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '\\' | ',' | '=' | '!') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Splits on unescaped `sep`, keeping escapes in the parts.
fn split_unescaped(input: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut escaped = false;
    for (i, c) in input.char_indices() {
        if escaped {
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(&input[start..i]);
            start = i + 1;
        }
    }
    parts.push(&input[start..]);
    parts
}

/// Splits a term at its leftmost operator (`!=`, `==` or `=`, tried in that order at each
/// position, as Kubernetes does) into field, whether negated, and the still-escaped value.
fn split_term(term: &str) -> Option<(&str, bool, &str)> {
    term.char_indices().find_map(|(i, _)| {
        let rest = &term[i..];
        let (negated, operator) = if rest.starts_with("!=") {
            (true, 2)
        } else if rest.starts_with("==") {
            (false, 2)
        } else if rest.starts_with('=') {
            (false, 1)
        } else {
            return None;
        };
        Some((&term[..i], negated, &rest[operator..]))
    })
}

fn unescape(value: &str, whole: &str) -> Result<String, SelectorError> {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(next @ ('\\' | ',' | '=' | '!')) => out.push(next),
                Some(other) => {
                    return Err(SelectorError::new(format!(
                        "invalid field selector {whole:?}: invalid escape sequence '\\{other}'"
                    )))
                }
                None => {
                    return Err(SelectorError::new(format!(
                        "invalid field selector {whole:?}: trailing '\\'"
                    )))
                }
            },
            '=' | ',' => {
                return Err(SelectorError::new(format!(
                    "invalid field selector {whole:?}: unescaped '{c}' in value {value:?}"
                )))
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

impl FieldSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        FieldSelector::default()
    }

    /// Parses the string form used by `?fieldSelector=`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for term in split_unescaped(input, ',') {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            let Some((field, negated, value)) = split_term(term) else {
                return Err(SelectorError::new(format!(
                    "invalid field selector {input:?}: {term:?} is not of the form field=value, field==value or field!=value"
                )));
            };
            let field = field.trim();
            let field_chars = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_');
            if field.is_empty() || !field.chars().all(field_chars) {
                return Err(SelectorError::new(format!(
                    "invalid field selector {input:?}: bad field name {field:?}"
                )));
            }
            requirements.push(FieldRequirement {
                field: field.to_string(),
                negated,
                value: unescape(value, input)?,
            });
        }
        Ok(FieldSelector { requirements })
    }

    /// Builds a selector requiring `field` to equal `value`.
    pub fn equals(field: impl Into<String>, value: impl Into<String>) -> Self {
        FieldSelector {
            requirements: vec![FieldRequirement {
                field: field.into(),
                negated: false,
                value: value.into(),
            }],
        }
    }

    /// The terms.
    pub fn requirements(&self) -> &[FieldRequirement] {
        &self.requirements
    }

    /// Whether this selector matches everything.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// The value this selector requires for `field` with `=`, if any (for indexed lookups such
    /// as `spec.nodeName=`).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.field == field && !r.negated)
            .map(|r| r.value.as_str())
    }

    /// Fails naming the first field not in `supported`.
    pub fn check_fields(
        &self,
        kind: &str,
        supported: impl Fn(&str) -> bool,
    ) -> Result<(), SelectorError> {
        match self.requirements.iter().find(|r| !supported(&r.field)) {
            Some(bad) => Err(SelectorError::new(format!(
                "field label not supported: {:?} is not a supported field selector for {kind}",
                bad.field
            ))),
            None => Ok(()),
        }
    }

    /// Whether the object's fields, read through `field` (missing fields read as empty), satisfy
    /// every term.
    pub fn matches(&self, field: impl Fn(&str) -> Option<String>) -> bool {
        self.requirements.iter().all(|r| {
            let value = field(&r.field).unwrap_or_default();
            (value == r.value) != r.negated
        })
    }
}

impl fmt::Display for FieldSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            let op = if r.negated { "!=" } else { "=" };
            write!(f, "{}{op}{}", r.field, escape(&r.value))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_and_matches() {
        let s = FieldSelector::parse("spec.nodeName=,status.phase!=Running,metadata.name==a\\,b")
            .unwrap();
        assert_eq!(s.requirements().len(), 3);
        assert_eq!(s.requirements()[2].value, "a,b");
        assert_eq!(s.required_value("spec.nodeName"), Some(""));
        let fields = |f: &str| match f {
            "status.phase" => Some("Pending".to_string()),
            "metadata.name" => Some("a,b".to_string()),
            _ => None,
        };
        assert!(s.matches(fields));
        assert!(!FieldSelector::parse("spec.nodeName=n1")
            .unwrap()
            .matches(fields));
        assert!(FieldSelector::parse("").unwrap().is_everything());
        assert_eq!(
            s.to_string(),
            "spec.nodeName=,status.phase!=Running,metadata.name=a\\,b"
        );
    }

    #[test]
    fn rejects_bad_input() {
        for bad in [
            "name", "=x", "a=b=c", "a=\\q", "=j==", "a==b=", "a=b!=c", "! =", "a b=c",
        ] {
            assert!(FieldSelector::parse(bad).is_err(), "{bad:?}");
        }
        // The leftmost operator splits a term, as in Kubernetes.
        let s = FieldSelector::parse("a.b!=c=").unwrap_err().to_string();
        assert!(s.contains("unescaped '='"), "{s}");
        let s = FieldSelector::parse(" a.b != c ").unwrap();
        assert_eq!(s.requirements()[0].field, "a.b");
        assert_eq!(s.requirements()[0].value, " c");
        assert!(s.requirements()[0].negated);
        let s = FieldSelector::parse("spec.bogus=x").unwrap();
        let err = s
            .check_fields("pods", |f| f == "spec.nodeName")
            .unwrap_err()
            .to_string();
        assert!(err.contains("spec.bogus"), "{err}");
    }

    proptest! {
        #[test]
        fn parse_print_parse(terms in proptest::collection::vec(("[a-z]{1,4}(\\.[a-zA-Z]{1,4})?", any::<bool>(), "[a-z0-9,=!\\\\ -]{0,6}"), 0..4)) {
            let selector = FieldSelector {
                requirements: terms.into_iter().map(|(field, negated, value)| FieldRequirement { field, negated, value: value.trim().to_string() }).collect(),
            };
            let printed = selector.to_string();
            prop_assert_eq!(FieldSelector::parse(&printed).unwrap(), selector);
        }

        #[test]
        fn arbitrary_input_never_panics(input in "\\PC{0,40}") {
            let _ = FieldSelector::parse(&input);
        }
    }
}
