//! One served kind: its names, scope, subresources and field-selector table.

use super::RegistryError;
use crate::validation::{is_dns1123_label, is_dns1123_subdomain};
use serde_json::Value;

/// Tells at compile time whether a kind is namespaced; implemented for k8s-openapi's scopes.
pub trait KindScope {
    /// Whether objects of the kind live in namespaces.
    const NAMESPACED: bool;
}

impl KindScope for k8s_openapi::NamespaceResourceScope {
    const NAMESPACED: bool = true;
}

impl KindScope for k8s_openapi::ClusterResourceScope {
    const NAMESPACED: bool = false;
}

/// A subresource such as `status`, `scale` or `binding`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subresource {
    /// The path segment, e.g. `scale`.
    pub name: String,
    /// Group of the subresource's kind (e.g. `autoscaling` for `scale`).
    pub group: String,
    /// Version of the subresource's kind.
    pub version: String,
    /// The subresource's kind (e.g. `Scale`).
    pub kind: String,
    /// Verbs it supports.
    pub verbs: Vec<String>,
}

/// A field usable in field selectors and where its value is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldSpec {
    /// The selector name, e.g. `spec.nodeName`.
    pub name: String,
    /// JSON pointer to the value, e.g. `/spec/nodeName`.
    pub pointer: String,
}

impl FieldSpec {
    /// A field whose pointer follows its dotted name.
    pub fn new(name: &str) -> Self {
        FieldSpec {
            name: name.to_string(),
            pointer: format!("/{}", name.replace('.', "/")),
        }
    }

    /// A field read from another place (e.g. events' `source` from `/source/component`).
    pub fn at(name: &str, pointer: &str) -> Self {
        FieldSpec {
            name: name.to_string(),
            pointer: pointer.to_string(),
        }
    }
}

/// Everything the API needs to know about one served kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceKind {
    /// API group (`""` for core).
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Kind, e.g. `Deployment`.
    pub kind: String,
    /// Resource (plural) name, e.g. `deployments`.
    pub plural: String,
    /// Singular name, e.g. `deployment`.
    pub singular: String,
    /// Short names, e.g. `deploy`.
    pub short_names: Vec<String>,
    /// Categories, e.g. `all`.
    pub categories: Vec<String>,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Subresources served besides the main resource.
    pub subresources: Vec<Subresource>,
    /// Fields usable in field selectors besides `metadata.name` and `metadata.namespace`.
    pub field_selectors: Vec<FieldSpec>,
    /// JSON schema of the kind, when known (user kinds, CRDs).
    pub schema: Option<Value>,
    /// How long objects of the kind live after their last write (Events: one hour), if limited.
    pub ttl: Option<std::time::Duration>,
    /// What its CustomResourceDefinition says, for kinds defined by one.
    pub custom: Option<std::sync::Arc<super::CustomKind>>,
}

impl ResourceKind {
    /// A kind known only at run time.
    pub fn new(group: &str, version: &str, kind: &str, plural: &str, namespaced: bool) -> Self {
        ResourceKind {
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            plural: plural.to_string(),
            singular: kind.to_ascii_lowercase(),
            short_names: Vec::new(),
            categories: Vec::new(),
            namespaced,
            subresources: Vec::new(),
            field_selectors: Vec::new(),
            schema: None,
            ttl: None,
            custom: None,
        }
    }

    /// The kind of a Rust type: a k8s-openapi type or a user's own type implementing kube-core's
    /// `Resource` with a static scope.
    pub fn of<K>() -> Self
    where
        K: kube_core::Resource<DynamicType = ()>,
        K::Scope: KindScope,
    {
        ResourceKind::new(
            &K::group(&()),
            &K::version(&()),
            &K::kind(&()),
            &K::plural(&()),
            K::Scope::NAMESPACED,
        )
    }

    /// Attaches the JSON schema of a type.
    pub fn with_schema<K: schemars::JsonSchema>(mut self) -> Self {
        self.schema = serde_json::to_value(schemars::schema_for!(K)).ok();
        self
    }

    /// Sets the short names.
    pub fn with_short_names(mut self, names: &[&str]) -> Self {
        self.short_names = names.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Sets the categories.
    pub fn with_categories(mut self, categories: &[&str]) -> Self {
        self.categories = categories.iter().map(|s| s.to_string()).collect();
        self
    }

    /// Adds a subresource whose kind is this kind (e.g. `status`).
    pub fn with_subresource(mut self, name: &str, verbs: &[&str]) -> Self {
        let (group, version, kind) = (self.group.clone(), self.version.clone(), self.kind.clone());
        self.subresources.push(Subresource {
            name: name.to_string(),
            group,
            version,
            kind,
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    /// Adds a subresource of another kind (e.g. `scale` as autoscaling/v1 `Scale`).
    pub fn with_foreign_subresource(
        mut self,
        name: &str,
        group: &str,
        version: &str,
        kind: &str,
        verbs: &[&str],
    ) -> Self {
        self.subresources.push(Subresource {
            name: name.to_string(),
            group: group.to_string(),
            version: version.to_string(),
            kind: kind.to_string(),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
        });
        self
    }

    /// Limits how long objects of the kind live after their last write.
    pub fn with_ttl(mut self, ttl: std::time::Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Adds field-selector fields.
    pub fn with_fields(mut self, fields: impl IntoIterator<Item = FieldSpec>) -> Self {
        self.field_selectors.extend(fields);
        self
    }

    /// `group/version`, or `version` for the core group.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `plural.group` (or `plural` in the core group), as in error messages.
    pub fn resource_name(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }

    /// The subresource called `name`, if served.
    pub fn subresource(&self, name: &str) -> Option<&Subresource> {
        self.subresources.iter().find(|s| s.name == name)
    }

    /// Whether `field` may be used in a field selector on this kind.
    pub fn supports_field(&self, field: &str) -> bool {
        field == "metadata.name"
            || (field == "metadata.namespace" && self.namespaced)
            || self.field_selectors.iter().any(|f| f.name == field)
    }

    /// Reads a field-selector field from an object (strings as they are, booleans and numbers
    /// printed); `None` if unsupported or absent.
    pub fn field_value(&self, object: &Value, field: &str) -> Option<String> {
        let pointer = match field {
            "metadata.name" => "/metadata/name",
            "metadata.namespace" => "/metadata/namespace",
            other => self
                .field_selectors
                .iter()
                .find(|f| f.name == other)?
                .pointer
                .as_str(),
        };
        match object.pointer(pointer)? {
            Value::String(s) => Some(s.clone()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        }
    }

    pub(super) fn validate(&self) -> Result<(), RegistryError> {
        let invalid = |reason: String| RegistryError::Invalid {
            kind: self.kind.clone(),
            reason,
        };
        if !self.group.is_empty() {
            is_dns1123_subdomain(&self.group).map_err(|e| invalid(format!("group: {}", e[0])))?;
        }
        for (what, name) in [("plural", &self.plural), ("singular", &self.singular)] {
            is_dns1123_label(name).map_err(|e| invalid(format!("{what}: {}", e[0])))?;
        }
        if self.version.is_empty()
            || self.kind.is_empty()
            || !self.kind.starts_with(|c: char| c.is_ascii_uppercase())
        {
            return Err(invalid(
                "version must be set and kind must start with an upper-case letter".into(),
            ));
        }
        Ok(())
    }
}
