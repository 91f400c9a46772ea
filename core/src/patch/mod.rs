//! Patches on JSON objects: Kubernetes' strategic merge patch, driven by a hand-kept table of
//! patch metadata for the built-in kinds (k8s-openapi's schemas carry none). JSON merge patch
//! and JSON patch come from the `json-patch` crate.

mod field_set;
mod metadata;
mod strategic;

pub use field_set::{display_path, value_at, FieldSet, PathElement};
pub use metadata::{list_strategy, supports_strategic_merge, ListStrategy};
pub use strategic::{strategic_merge, PatchError};
