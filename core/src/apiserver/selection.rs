//! The label and field selection of a list or watch, applied to full objects or to the few
//! fields the watch cache keeps.

use super::handler::Ctx;
use super::ApiError;
use crate::registry::ResourceKind;
use crate::selector::{FieldSelector, LabelSelector};
use serde_json::Value;
use std::collections::BTreeMap;

/// The label and field selection of a list or watch.
#[derive(Clone)]
pub(crate) struct Selection {
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Selection {
    /// A selection from parsed selectors.
    pub(crate) fn from_parts(labels: LabelSelector, fields: FieldSelector) -> Self {
        Selection { labels, fields }
    }

    /// Reads `labelSelector` and `fieldSelector`; unknown fields are a 400.
    pub(crate) fn from_query(ctx: &Ctx) -> Result<Self, ApiError> {
        let labels = LabelSelector::parse(ctx.query.get("labelSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let fields = FieldSelector::parse(ctx.query.get("fieldSelector").unwrap_or(""))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        fields
            .check_fields(&ctx.kind.plural, |f| ctx.kind.supports_field(f))
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        Ok(Selection { labels, fields })
    }

    /// Whether an object is selected, its labels and fields read through `label` and `field`.
    pub(crate) fn matches_with<'a>(
        &self,
        label: impl Fn(&str) -> Option<&'a str>,
        field: impl Fn(&str) -> Option<String>,
    ) -> bool {
        self.labels.matches_with(label) && self.fields.matches(field)
    }

    /// The node a `spec.nodeName=` field selector pins, if any.
    pub(crate) fn pinned_node(&self) -> Option<&str> {
        self.fields.required_value("spec.nodeName")
    }

    /// Whether an object is selected.
    pub(crate) fn matches(&self, kind: &ResourceKind, object: &Value) -> bool {
        let labels: BTreeMap<String, String> = object
            .pointer("/metadata/labels")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        self.labels.matches(&labels) && self.fields.matches(|f| kind.field_value(object, f))
    }

    /// The namespace a `metadata.namespace=` field selector pins, if any.
    pub(crate) fn pinned_namespace(&self) -> Option<&str> {
        self.fields.required_value("metadata.namespace")
    }
}
