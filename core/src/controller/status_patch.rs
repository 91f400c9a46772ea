//! Writing a controller's observations: a merge patch of the `status` subresource, where an
//! object deleted meanwhile is not an error (the reconcile simply ends).

use super::ControllerError;
use kube::api::{Api, Patch, PatchParams};
use serde::Serialize;

/// Merge-patches the status of `name` with `patch` (an object with a `status` field);
/// `Ok(false)` when the object is gone.
pub(crate) async fn merge_status<K, P>(
    api: &Api<K>,
    name: &str,
    patch: P,
) -> Result<bool, ControllerError>
where
    K: Clone + serde::de::DeserializeOwned + std::fmt::Debug,
    P: Serialize + std::fmt::Debug,
{
    match api
        .patch_status(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(err) if super::error::is_not_found(&err) => Ok(false),
        Err(err) => Err(err.into()),
    }
}
