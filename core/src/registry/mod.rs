//! The registry of served kinds: for each, its group, version, kind, plural, singular, short
//! names, categories, scope, subresources and supported field selectors. Built-in kinds come
//! from `k8s-openapi`; a user's own kind joins through the same [`ResourceKind::of`] path, and a
//! kind known only at run time (a CRD) through [`ResourceKind::new`]. The registry describes
//! kinds; it stores and serves nothing.

mod builtin;
mod custom;
mod kind;

pub use custom::{json_path_pointer, CustomKind, PrinterColumn, ScalePaths};
pub use kind::{FieldSpec, KindScope, ResourceKind, Subresource};

use std::collections::HashMap;
use std::sync::Arc;

/// Why a kind cannot be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Another kind already serves this group, version and plural.
    #[error("resource {0} is already registered")]
    Duplicate(String),
    /// The kind's names are unusable.
    #[error("invalid resource kind {kind}: {reason}")]
    Invalid {
        /// The kind.
        kind: String,
        /// What is wrong.
        reason: String,
    },
}

/// The set of served kinds, looked up by resource, by kind, or by any name kubectl accepts.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    kinds: Vec<Arc<ResourceKind>>,
    by_resource: HashMap<(String, String, String), usize>,
    by_kind: HashMap<(String, String, String), usize>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Registry::default()
    }

    /// A registry serving every built-in kind (core/v1, apps/v1, batch/v1, coordination,
    /// discovery, events, policy, scheduling, autoscaling/v2).
    pub fn with_builtins() -> Self {
        let mut registry = Registry::new();
        for kind in builtin::kinds() {
            // Built-in names are distinct by construction.
            let _ = registry.register(kind);
        }
        registry
    }

    /// Adds a kind.
    pub fn register(&mut self, kind: ResourceKind) -> Result<Arc<ResourceKind>, RegistryError> {
        kind.validate()?;
        let resource = (
            kind.group.clone(),
            kind.version.clone(),
            kind.plural.clone(),
        );
        if self.by_resource.contains_key(&resource) {
            return Err(RegistryError::Duplicate(kind.resource_name()));
        }
        let index = self.kinds.len();
        self.by_kind.insert(
            (kind.group.clone(), kind.version.clone(), kind.kind.clone()),
            index,
        );
        self.by_resource.insert(resource, index);
        let kind = Arc::new(kind);
        self.kinds.push(kind.clone());
        Ok(kind)
    }

    /// Removes the kind serving `group/version` `plural` (e.g. when its CRD is deleted).
    pub fn unregister(
        &mut self,
        group: &str,
        version: &str,
        plural: &str,
    ) -> Option<Arc<ResourceKind>> {
        let index = self
            .by_resource
            .get(&(group.into(), version.into(), plural.into()))
            .copied()?;
        let removed = self.kinds.remove(index);
        self.reindex();
        Some(removed)
    }

    fn reindex(&mut self) {
        self.by_resource.clear();
        self.by_kind.clear();
        for (i, k) in self.kinds.iter().enumerate() {
            self.by_resource
                .insert((k.group.clone(), k.version.clone(), k.plural.clone()), i);
            self.by_kind
                .insert((k.group.clone(), k.version.clone(), k.kind.clone()), i);
        }
    }

    /// The kind served at `group/version/plural` (core group: `""`).
    pub fn get(&self, group: &str, version: &str, plural: &str) -> Option<&Arc<ResourceKind>> {
        self.by_resource
            .get(&(group.into(), version.into(), plural.into()))
            .map(|&i| &self.kinds[i])
    }

    /// The kind with this group, version and kind name.
    pub fn by_kind(&self, group: &str, version: &str, kind: &str) -> Option<&Arc<ResourceKind>> {
        self.by_kind
            .get(&(group.into(), version.into(), kind.into()))
            .map(|&i| &self.kinds[i])
    }

    /// The kind named by `apiVersion` and `kind`, as written in a manifest.
    pub fn by_api_version(&self, api_version: &str, kind: &str) -> Option<&Arc<ResourceKind>> {
        let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
        self.by_kind(group, version, kind)
    }

    /// Every kind a user may mean by `name` as kubectl accepts it: plural, singular, short name
    /// or kind (case-insensitive), optionally qualified as `name.group`.
    pub fn resolve(&self, name: &str) -> Vec<&Arc<ResourceKind>> {
        let name = name.to_ascii_lowercase();
        let matches = |k: &ResourceKind, n: &str| {
            k.plural == n
                || k.singular == n
                || k.kind.to_ascii_lowercase() == n
                || k.short_names.iter().any(|s| s == n)
        };
        let mut found: Vec<_> = self.kinds.iter().filter(|k| matches(k, &name)).collect();
        if found.is_empty() {
            if let Some((short, group)) = name.split_once('.') {
                found = self
                    .kinds
                    .iter()
                    .filter(|k| k.group == group && matches(k, short))
                    .collect();
            }
        }
        found
    }

    /// Every registered kind, in registration order.
    pub fn kinds(&self) -> impl Iterator<Item = &Arc<ResourceKind>> {
        self.kinds.iter()
    }

    /// Every served `(group, version)` pair, core first, in registration order.
    pub fn group_versions(&self) -> Vec<(String, String)> {
        let mut seen = Vec::new();
        for k in &self.kinds {
            let gv = (k.group.clone(), k.version.clone());
            if !seen.contains(&gv) {
                seen.push(gv);
            }
        }
        seen
    }
}
