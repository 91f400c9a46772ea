//! Label selectors: the string form (`a=b,c!=d,e in (x,y),f notin (z),g,!h,n>1`) and the
//! structured `metav1.LabelSelector` (matchLabels + matchExpressions), both turned into one
//! [`LabelSelector`] that prints canonically and matches label maps.

use super::lexer::{tokenize, Token};
use super::SelectorError;
use crate::validation::{is_label_value, is_qualified_name};
use k8s_openapi::apimachinery::pkg::apis::meta::v1 as metav1;
use std::collections::BTreeMap;
use std::fmt;

/// How a requirement compares a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Operator {
    /// `key=value` / `key==value` / `key in (a,b)`: present with one of the values.
    In,
    /// `key!=value` / `key notin (a,b)`: absent, or present with none of the values.
    NotIn,
    /// `key`: present.
    Exists,
    /// `!key`: absent.
    DoesNotExist,
    /// `key>n`: present with an integer value greater than n.
    GreaterThan,
    /// `key<n`: present with an integer value less than n.
    LessThan,
}

/// One condition on one label key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Requirement {
    key: String,
    operator: Operator,
    values: Vec<String>,
}

impl Requirement {
    /// Builds a validated requirement; values are sorted and deduplicated.
    pub fn new(
        key: impl Into<String>,
        operator: Operator,
        values: impl IntoIterator<Item = impl Into<String>>,
    ) -> Result<Self, SelectorError> {
        let key = key.into();
        if let Err(problems) = is_qualified_name(&key) {
            return Err(SelectorError::new(format!(
                "invalid label key {key:?}: {}",
                problems[0]
            )));
        }
        let mut values: Vec<String> = values.into_iter().map(Into::into).collect();
        values.sort();
        values.dedup();
        match operator {
            Operator::In | Operator::NotIn if values.is_empty() => {
                return Err(SelectorError::new(format!(
                    "for 'in', 'notin' operators, values set can't be empty (key {key:?})"
                )));
            }
            Operator::Exists | Operator::DoesNotExist if !values.is_empty() => {
                return Err(SelectorError::new(format!(
                    "values set must be empty for exists and does not exist (key {key:?})"
                )));
            }
            Operator::GreaterThan | Operator::LessThan => {
                if values.len() != 1 || values[0].parse::<i64>().is_err() {
                    return Err(SelectorError::new(format!("for 'gt', 'lt' operators, exactly one integer value is required (key {key:?}, values {values:?})")));
                }
            }
            _ => {
                for value in &values {
                    if let Err(problems) = is_label_value(value) {
                        return Err(SelectorError::new(format!(
                            "invalid label value {value:?} for key {key:?}: {}",
                            problems[0]
                        )));
                    }
                }
            }
        }
        Ok(Requirement {
            key,
            operator,
            values,
        })
    }

    /// The label key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The operator.
    pub fn operator(&self) -> Operator {
        self.operator
    }

    /// The values (sorted).
    pub fn values(&self) -> &[String] {
        &self.values
    }

    /// Whether a label value (or its absence) satisfies this requirement.
    pub fn matches_value(&self, value: Option<&str>) -> bool {
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.iter().any(|x| x == v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.iter().any(|x| x == v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
            Operator::GreaterThan | Operator::LessThan => {
                let (Some(v), Ok(bound)) = (
                    value.and_then(|v| v.parse::<i64>().ok()),
                    self.values[0].parse::<i64>(),
                ) else {
                    return false;
                };
                if self.operator == Operator::GreaterThan {
                    v > bound
                } else {
                    v < bound
                }
            }
        }
    }
}

impl fmt::Display for Requirement {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = &self.key;
        match (self.operator, self.values.as_slice()) {
            (Operator::In, [one]) => write!(f, "{key}={one}"),
            (Operator::NotIn, [one]) => write!(f, "{key}!={one}"),
            (Operator::In, values) => write!(f, "{key} in ({})", values.join(",")),
            (Operator::NotIn, values) => write!(f, "{key} notin ({})", values.join(",")),
            (Operator::Exists, _) => write!(f, "{key}"),
            (Operator::DoesNotExist, _) => write!(f, "!{key}"),
            (Operator::GreaterThan, values) => write!(f, "{key}>{}", values[0]),
            (Operator::LessThan, values) => write!(f, "{key}<{}", values[0]),
        }
    }
}

/// A conjunction of label requirements. The empty selector matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct LabelSelector {
    requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// The selector that matches everything.
    pub fn everything() -> Self {
        LabelSelector::default()
    }

    /// A selector from requirements (kept in key order).
    pub fn from_requirements(mut requirements: Vec<Requirement>) -> Self {
        requirements.sort_by(|a, b| a.key.cmp(&b.key).then(a.operator.cmp(&b.operator)));
        requirements.dedup();
        LabelSelector { requirements }
    }

    /// Parses the string form used by `?labelSelector=` and `kubectl -l`.
    pub fn parse(input: &str) -> Result<Self, SelectorError> {
        let tokens = tokenize(input)?;
        let mut requirements = Vec::new();
        let mut rest = tokens.as_slice();
        let bad = |what: &str| {
            SelectorError::new(format!("unable to parse label selector {input:?}: {what}"))
        };
        while !rest.is_empty() {
            let (requirement, after) = parse_requirement(rest).map_err(|e| bad(&e))?;
            requirements.push(requirement?);
            rest = match after {
                [] => after,
                [Token::Comma, more @ ..] if !more.is_empty() => more,
                [Token::Comma] => return Err(bad("trailing ','")),
                [other, ..] => return Err(bad(&format!("expected ',' but found {other:?}"))),
            };
        }
        Ok(Self::from_requirements(requirements))
    }

    /// The requirements, in key order.
    pub fn requirements(&self) -> &[Requirement] {
        &self.requirements
    }

    /// Whether this selector matches everything.
    pub fn is_everything(&self) -> bool {
        self.requirements.is_empty()
    }

    /// Whether the labels satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.matches_with(|key| labels.get(key).map(String::as_str))
    }

    /// Whether the labels, read through `label`, satisfy every requirement.
    pub fn matches_with<'a>(&self, label: impl Fn(&str) -> Option<&'a str>) -> bool {
        self.requirements
            .iter()
            .all(|r| r.matches_value(label(&r.key)))
    }
}

type Parsed<'t> = (Result<Requirement, SelectorError>, &'t [Token]);

fn parse_requirement(tokens: &[Token]) -> Result<Parsed<'_>, String> {
    match tokens {
        [Token::Not, Token::Identifier(key), rest @ ..] => Ok((
            Requirement::new(key.clone(), Operator::DoesNotExist, Vec::<String>::new()),
            rest,
        )),
        [Token::Identifier(key), rest @ ..] => {
            let single = |op, rest| single_value(key, op, rest);
            match rest {
                [] | [Token::Comma, ..] => Ok((
                    Requirement::new(key.clone(), Operator::Exists, Vec::<String>::new()),
                    rest,
                )),
                [Token::Equals | Token::DoubleEquals, more @ ..] => single(Operator::In, more),
                [Token::NotEquals, more @ ..] => single(Operator::NotIn, more),
                [Token::Greater, more @ ..] => single(Operator::GreaterThan, more),
                [Token::Less, more @ ..] => single(Operator::LessThan, more),
                [op @ (Token::In | Token::NotIn), Token::Open, more @ ..] => {
                    let operator = if *op == Token::In {
                        Operator::In
                    } else {
                        Operator::NotIn
                    };
                    let (values, after) = parse_values(more)?;
                    Ok((Requirement::new(key.clone(), operator, values), after))
                }
                [Token::In | Token::NotIn, ..] => {
                    Err(format!("expected '(' after the set operator of {key:?}"))
                }
                [other, ..] => Err(format!("unexpected {other:?} after key {key:?}")),
            }
        }
        [other, ..] => Err(format!("expected a label key, found {other:?}")),
        [] => Err("expected a requirement".into()),
    }
}

fn single_value<'t>(key: &str, op: Operator, rest: &'t [Token]) -> Result<Parsed<'t>, String> {
    match rest {
        [Token::Identifier(value), more @ ..] => {
            Ok((Requirement::new(key, op, [value.clone()]), more))
        }
        [] | [Token::Comma, ..] => Ok((Requirement::new(key, op, [String::new()]), rest)),
        [other, ..] => Err(format!("expected a value after {key:?}, found {other:?}")),
    }
}

fn parse_values(mut tokens: &[Token]) -> Result<(Vec<String>, &[Token]), String> {
    let mut values = Vec::new();
    let mut expect_value = true;
    loop {
        match tokens {
            [Token::Close, rest @ ..] => {
                if expect_value && !values.is_empty() {
                    values.push(String::new());
                }
                return Ok((values, rest));
            }
            [Token::Identifier(v), rest @ ..] if expect_value => {
                values.push(v.clone());
                expect_value = false;
                tokens = rest;
            }
            [Token::Comma, rest @ ..] => {
                if expect_value {
                    values.push(String::new());
                }
                expect_value = true;
                tokens = rest;
            }
            [other, ..] => return Err(format!("unexpected {other:?} in a value set")),
            [] => return Err("missing ')' at the end of a value set".into()),
        }
    }
}

impl fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, requirement) in self.requirements.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{requirement}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for LabelSelector {
    type Err = SelectorError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        LabelSelector::parse(s)
    }
}

impl TryFrom<&metav1::LabelSelector> for LabelSelector {
    type Error = SelectorError;

    /// Converts matchLabels and matchExpressions; an empty `LabelSelector` matches everything.
    fn try_from(selector: &metav1::LabelSelector) -> Result<Self, SelectorError> {
        let mut requirements = Vec::new();
        for (key, value) in selector.match_labels.iter().flatten() {
            requirements.push(Requirement::new(
                key.clone(),
                Operator::In,
                [value.clone()],
            )?);
        }
        for (i, expression) in selector.match_expressions.iter().flatten().enumerate() {
            let operator = match expression.operator.as_str() {
                "In" => Operator::In,
                "NotIn" => Operator::NotIn,
                "Exists" => Operator::Exists,
                "DoesNotExist" => Operator::DoesNotExist,
                other => {
                    return Err(SelectorError::new(format!(
                        "matchExpressions[{i}].operator: unsupported value {other:?}: supported values: \"In\", \"NotIn\", \"Exists\", \"DoesNotExist\""
                    )))
                }
            };
            let values = expression.values.clone().unwrap_or_default();
            let requirement = Requirement::new(expression.key.clone(), operator, values)
                .map_err(|e| SelectorError::new(format!("matchExpressions[{i}]: {e}")))?;
            requirements.push(requirement);
        }
        Ok(LabelSelector::from_requirements(requirements))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn parses_every_form() {
        let s =
            LabelSelector::parse("a=b,c!=d, e in (x, y),f notin (z),g,!h,n>1,m<5,k==v").unwrap();
        assert_eq!(s.to_string(), "a=b,c!=d,e in (x,y),f!=z,g,!h,k=v,m<5,n>1");
        let l = labels(&[
            ("a", "b"),
            ("c", "x"),
            ("e", "y"),
            ("g", ""),
            ("n", "2"),
            ("m", "3"),
            ("k", "v"),
        ]);
        assert!(s.matches(&l));
        let mut l2 = l.clone();
        l2.insert("h".into(), "1".into());
        assert!(!s.matches(&l2));
        assert!(LabelSelector::parse("").unwrap().matches(&BTreeMap::new()));
        assert!(LabelSelector::parse("a=")
            .unwrap()
            .matches(&labels(&[("a", "")])));
        assert!(
            LabelSelector::parse("a!=b")
                .unwrap()
                .matches(&BTreeMap::new()),
            "!= matches absent labels"
        );
    }

    #[test]
    fn errors_name_the_bad_part() {
        for (input, part) in [
            ("a in ()", "can't be empty"),
            ("-a=b", "\"-a\""),
            ("a=b,", "trailing"),
            ("a in (b", "missing ')'"),
            ("a=b c", "expected ','"),
            ("a>x", "integer"),
            ("a=-b", "\"-b\""),
        ] {
            let err = LabelSelector::parse(input).unwrap_err().to_string();
            assert!(err.contains(part), "{input:?}: {err}");
        }
    }

    #[test]
    fn from_structured_selector() {
        let selector = metav1::LabelSelector {
            match_labels: Some([("app".to_string(), "web".to_string())].into()),
            match_expressions: Some(vec![metav1::LabelSelectorRequirement {
                key: "tier".into(),
                operator: "NotIn".into(),
                values: Some(vec!["db".into()]),
            }]),
        };
        let s = LabelSelector::try_from(&selector).unwrap();
        assert_eq!(s.to_string(), "app=web,tier!=db");
        assert!(LabelSelector::try_from(&metav1::LabelSelector::default())
            .unwrap()
            .is_everything());
        let bad = metav1::LabelSelector {
            match_expressions: Some(vec![metav1::LabelSelectorRequirement {
                key: "a".into(),
                operator: "Bogus".into(),
                values: None,
            }]),
            ..Default::default()
        };
        assert!(LabelSelector::try_from(&bad)
            .unwrap_err()
            .to_string()
            .contains("matchExpressions[0].operator"));
    }

    fn key() -> impl Strategy<Value = String> {
        prop_oneof!["[a-z]{1,3}", "[a-z]{1,3}\\.io/[a-z]{1,3}"]
    }
    fn value() -> impl Strategy<Value = String> {
        "[a-z0-9]{0,3}"
    }
    fn requirement() -> impl Strategy<Value = Requirement> {
        prop_oneof![
            (key(), proptest::collection::vec(value(), 1..3)).prop_map(|(k, v)| Requirement::new(
                k,
                Operator::In,
                v
            )
            .unwrap()),
            (key(), proptest::collection::vec(value(), 1..3)).prop_map(|(k, v)| Requirement::new(
                k,
                Operator::NotIn,
                v
            )
            .unwrap()),
            key()
                .prop_map(|k| Requirement::new(k, Operator::Exists, Vec::<String>::new()).unwrap()),
            key().prop_map(
                |k| Requirement::new(k, Operator::DoesNotExist, Vec::<String>::new()).unwrap()
            ),
            (key(), -5i64..5).prop_map(|(k, n)| Requirement::new(
                k,
                Operator::GreaterThan,
                [n.to_string()]
            )
            .unwrap()),
            (key(), -5i64..5).prop_map(|(k, n)| Requirement::new(
                k,
                Operator::LessThan,
                [n.to_string()]
            )
            .unwrap()),
        ]
    }

    /// An independent model of selector semantics over (key, value) pairs.
    fn model_matches(requirements: &[Requirement], labels: &BTreeMap<String, String>) -> bool {
        requirements.iter().all(|r| {
            let present = labels.get(r.key());
            let in_set = present.map(|v| r.values().contains(v));
            let number = present.and_then(|v| v.parse::<i64>().ok());
            let bound = r.values().first().and_then(|v| v.parse::<i64>().ok());
            match r.operator() {
                Operator::In => in_set == Some(true),
                Operator::NotIn => in_set != Some(true),
                Operator::Exists => present.is_some(),
                Operator::DoesNotExist => present.is_none(),
                Operator::GreaterThan => matches!((number, bound), (Some(n), Some(b)) if n > b),
                Operator::LessThan => matches!((number, bound), (Some(n), Some(b)) if n < b),
            }
        })
    }

    proptest! {
        #[test]
        fn parse_print_parse_is_identity(reqs in proptest::collection::vec(requirement(), 0..5)) {
            let selector = LabelSelector::from_requirements(reqs);
            let printed = selector.to_string();
            let reparsed = LabelSelector::parse(&printed).unwrap();
            prop_assert_eq!(&reparsed, &selector);
            prop_assert_eq!(reparsed.to_string(), printed);
        }

        #[test]
        fn matching_agrees_with_model(
            reqs in proptest::collection::vec(requirement(), 0..4),
            labels in proptest::collection::btree_map(key(), prop_oneof![value(), (-6i64..6).prop_map(|n| n.to_string())], 0..5),
        ) {
            let selector = LabelSelector::from_requirements(reqs.clone());
            prop_assert_eq!(selector.matches(&labels), model_matches(&reqs, &labels));
        }

        #[test]
        fn keywords_are_names_outside_operator_position(word in prop_oneof![Just("in"), Just("notin")]) {
            let s = LabelSelector::parse(&format!("{word}={word},!{word}x,x in ({word})")).unwrap();
            prop_assert_eq!(s.requirements().len(), 3);
            prop_assert_eq!(s.requirements()[0].values(), &[word.to_string()][..]);
        }

        #[test]
        fn parsing_arbitrary_input_never_panics(input in "\\PC{0,40}") {
            let _ = LabelSelector::parse(&input);
        }
    }
}
