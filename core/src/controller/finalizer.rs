//! Adding and removing a finalizer on an object, guarded by its resourceVersion so a concurrent
//! change makes the call fail with a conflict (and the reconcile retry) instead of overwriting.

use super::metadata_patch::{set_metadata_field, Guard};
use super::ControllerError;
use kube::api::Api;
use kube::Resource;
use serde::de::DeserializeOwned;
use std::fmt::Debug;

/// Adds `finalizer` to `object` (no request when it is already there); returns the object as
/// stored.
pub async fn add_finalizer<K>(
    api: &Api<K>,
    object: &K,
    finalizer: &str,
) -> Result<K, ControllerError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let mut finalizers = object.meta().finalizers.clone().unwrap_or_default();
    if finalizers.iter().any(|f| f == finalizer) {
        return Ok(object.clone());
    }
    finalizers.push(finalizer.to_string());
    set_metadata_field(
        api,
        object.meta(),
        "finalizers",
        finalizers,
        Guard::ResourceVersion,
    )
    .await?
    .ok_or_else(|| ControllerError::Invalid("the object is gone".into()))
}

/// Removes `finalizer` from `object` (no request when it is absent, none when the object is
/// gone). Removing the last finalizer of an object being deleted lets the API server remove it.
pub async fn remove_finalizer<K>(
    api: &Api<K>,
    object: &K,
    finalizer: &str,
) -> Result<(), ControllerError>
where
    K: Resource + Clone + DeserializeOwned + Debug,
{
    let finalizers = object.meta().finalizers.clone().unwrap_or_default();
    if !finalizers.iter().any(|f| f == finalizer) {
        return Ok(());
    }
    let kept: Vec<String> = finalizers.into_iter().filter(|f| f != finalizer).collect();
    set_metadata_field(
        api,
        object.meta(),
        "finalizers",
        kept,
        Guard::ResourceVersion,
    )
    .await?;
    Ok(())
}
