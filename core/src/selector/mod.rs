//! Label and field selectors with Kubernetes semantics: parsing the string forms, printing them
//! canonically, and matching. Which fields a kind supports is the registry's knowledge
//! ([`crate::registry::ResourceKind::field_selectors`]); this module only checks names against
//! the list it is given.

mod field;
mod label;
mod lexer;

pub use field::{FieldRequirement, FieldSelector};
pub use label::{LabelSelector, Operator, Requirement};

/// A selector that could not be parsed or is not allowed, naming the offending part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SelectorError {
    /// What is wrong, quoting the bad part.
    pub message: String,
}

impl SelectorError {
    pub(crate) fn new(message: impl Into<String>) -> Self {
        SelectorError {
            message: message.into(),
        }
    }
}
