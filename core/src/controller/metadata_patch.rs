//! Replacing one metadata list (owner references, finalizers) of an object with a JSON patch
//! guarded by a `test` of its resourceVersion or uid, so a concurrent change or a recreated
//! object makes the write fail instead of being overwritten.

use super::error::is_not_found;
use super::ControllerError;
use kube::api::{Api, ObjectMeta, Patch, PatchParams};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use std::fmt::Debug;

/// What must still hold for the write to apply.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Guard {
    /// Nothing changed since the object was read.
    ResourceVersion,
    /// It is still the same object (not deleted and recreated under the same name).
    Uid,
}

/// Sets `metadata.<field>` to `value`; `Ok(None)` when the object is gone.
pub(crate) async fn set_metadata_field<K, V>(
    api: &Api<K>,
    meta: &ObjectMeta,
    field: &str,
    value: V,
    guard: Guard,
) -> Result<Option<K>, ControllerError>
where
    K: Clone + DeserializeOwned + Debug,
    V: Serialize,
{
    let test = match guard {
        Guard::ResourceVersion => {
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": meta.resource_version})
        }
        Guard::Uid => json!({"op": "test", "path": "/metadata/uid", "value": meta.uid}),
    };
    let patch = json!([test, {"op": "add", "path": format!("/metadata/{field}"), "value": value}]);
    let patch: json_patch::Patch = serde_json::from_value(patch)?;
    let name = meta.name.clone().unwrap_or_default();
    match api
        .patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
        .await
    {
        Ok(object) => Ok(Some(object)),
        Err(err) if is_not_found(&err) => Ok(None),
        Err(err) => Err(err.into()),
    }
}
