//! The behaviour of kinds defined by CustomResourceDefinitions: pruning of the fields their
//! schema does not specify, and validation against that schema.

use crate::apiserver::Cause;
use crate::registry::ResourceKind;
use crate::validation::structural::{self, ViolationKind};
use serde_json::Value;

/// Drops the fields the kind's schema does not specify; the messages name each one as
/// `fieldValidation` reports unknown fields.
pub fn prune_custom(kind: &ResourceKind, object: &mut Value) -> Vec<String> {
    match kind.custom.as_ref().and_then(|c| c.schema.as_ref()) {
        Some(schema) => structural::prune(schema, object)
            .into_iter()
            .map(|path| format!("unknown field {path:?}"))
            .collect(),
        None => Vec::new(),
    }
}

/// Validates a custom object against its kind's schema.
pub(super) fn validate_custom(kind: &ResourceKind, object: &Value, causes: &mut Vec<Cause>) {
    let Some(schema) = kind.custom.as_ref().and_then(|c| c.schema.as_ref()) else {
        return;
    };
    for violation in structural::validate(schema, object, "") {
        causes.push(match violation.kind {
            ViolationKind::Required => Cause::required(violation.field),
            ViolationKind::NotSupported => Cause {
                reason: "FieldValueNotSupported",
                message: format!(
                    "Unsupported value: {}: {}",
                    violation.value, violation.detail
                ),
                field: violation.field,
            },
            ViolationKind::Type => Cause {
                reason: "FieldValueTypeInvalid",
                message: format!("Invalid value: {}: {}", violation.value, violation.detail),
                field: violation.field,
            },
            ViolationKind::Invalid => {
                Cause::invalid(violation.field, &violation.value, violation.detail)
            }
        });
    }
}
