//! Adding and removing a finalizer on an object, guarded by its resourceVersion so a concurrent
//! change makes the call fail with a conflict (and the reconcile retry) instead of overwriting.

use super::ControllerError;
use kube::api::{Api, Patch, PatchParams};
use kube::Resource;
use serde::de::DeserializeOwned;
use serde_json::json;
use std::fmt::Debug;

fn guarded_patch<K: Resource>(object: &K, finalizers: Vec<String>) -> json_patch::Patch {
    let rv = object.meta().resource_version.clone().unwrap_or_default();
    let patch = json!([
        {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
        {"op": "add", "path": "/metadata/finalizers", "value": finalizers},
    ]);
    // The literal above is always a valid JSON patch.
    serde_json::from_value(patch).unwrap_or_else(|_| json_patch::Patch(Vec::new()))
}

/// Adds `finalizer` to `object` (no request when it is already there); returns the object as
/// stored.
pub async fn add_finalizer<K>(
    api: &Api<K>,
    object: &K,
    finalizer: &str,
) -> Result<K, ControllerError>
where
    K: Resource + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    let mut finalizers = object.meta().finalizers.clone().unwrap_or_default();
    if finalizers.iter().any(|f| f == finalizer) {
        return Ok(object.clone());
    }
    finalizers.push(finalizer.to_string());
    let name = object.meta().name.clone().unwrap_or_default();
    Ok(api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::<()>::Json(guarded_patch(object, finalizers)),
        )
        .await?)
}

/// Removes `finalizer` from `object` (no request when it is absent). Removing the last finalizer
/// of an object being deleted lets the API server remove it.
pub async fn remove_finalizer<K>(
    api: &Api<K>,
    object: &K,
    finalizer: &str,
) -> Result<(), ControllerError>
where
    K: Resource + Clone + DeserializeOwned + Debug + serde::Serialize,
{
    let finalizers = object.meta().finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let kept: Vec<String> = finalizers.into_iter().filter(|f| f != finalizer).collect();
    let name = object.meta().name.clone().unwrap_or_default();
    match api
        .patch(
            &name,
            &PatchParams::default(),
            &Patch::<()>::Json(guarded_patch(object, kept)),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(err) if super::error::is_not_found(&err) => Ok(()),
        Err(err) => Err(err.into()),
    }
}
