//! The `pods/eviction` subresource: deletes a pod unless that would break the
//! PodDisruptionBudget covering it. A pod that is not running (pending or finished) is deleted
//! at once; otherwise the one budget selecting it must allow a disruption, which the eviction
//! takes (decrementing `disruptionsAllowed` and recording the pod in `disruptedPods`, written
//! with a compare-and-swap so two evictions cannot spend the same disruption) before deleting
//! the pod with the eviction's `deleteOptions`. A budget that allows none answers 429, which
//! `kubectl drain` retries.

use super::error::ApiError;
use super::handler::{delete_object, delete_options, get, Ctx};
use crate::selector::LabelSelector;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Evicts pod `name`; the body is a policy/v1 (or v1beta1) `Eviction`.
pub(crate) async fn evict(ctx: &mut Ctx, name: &str, body: &[u8]) -> Result<Value, ApiError> {
    let eviction: Value = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("invalid Eviction: {e}")))?
    };
    if let Some(named) = eviction.pointer("/metadata/name").and_then(Value::as_str) {
        if named != name {
            return Err(ApiError::bad_request(format!(
                "name in URL does not match name in Eviction object ({named} != {name})"
            )));
        }
    }
    let delete_body = match eviction.get("deleteOptions") {
        Some(options) if !options.is_null() => serde_json::to_vec(options)
            .map_err(|e| ApiError::bad_request(format!("invalid deleteOptions: {e}")))?,
        _ => Vec::new(),
    };
    let options = delete_options(ctx, &delete_body)?;
    let namespace = ctx.path.namespace.clone().unwrap_or_default();
    // A concurrent eviction may take the same budget's last disruption: re-read and retry.
    for _ in 0..5 {
        let pod = get(ctx, name).await?;
        let phase = pod.pointer("/status/phase").and_then(Value::as_str);
        let running = !matches!(phase, Some("Pending" | "Succeeded" | "Failed") | None);
        if running
            && pod
                .pointer("/metadata/deletionTimestamp")
                .is_none_or(Value::is_null)
        {
            match take_disruption(ctx, &namespace, name, &pod).await? {
                Taken::Yes | Taken::NoBudget => {}
                Taken::Raced => continue,
            }
        }
        // Deleted as the pod itself, not as its subresource.
        let saved = ctx.path.subresource.take();
        let deleted = delete_object(ctx, name, pod, &options).await;
        ctx.path.subresource = saved;
        deleted?;
        return Ok(
            json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}),
        );
    }
    Err(ApiError::too_many_requests(1))
}

enum Taken {
    /// The budget allowed it and now counts it.
    Yes,
    /// No budget covers the pod.
    NoBudget,
    /// Another write changed the budget first.
    Raced,
}

async fn take_disruption(
    ctx: &Ctx,
    namespace: &str,
    name: &str,
    pod: &Value,
) -> Result<Taken, ApiError> {
    let Some(kind) = ctx
        .registry
        .get("policy", "v1", "poddisruptionbudgets")
        .cloned()
    else {
        return Ok(Taken::NoBudget);
    };
    let labels: BTreeMap<String, String> = pod
        .pointer("/metadata/labels")
        .and_then(|l| serde_json::from_value(l.clone()).ok())
        .unwrap_or_default();
    let list = ctx
        .state
        .storage
        .list(&kind, Some(namespace), None, None, None)
        .await?;
    let mut covering: Vec<(Value, PodDisruptionBudget)> = Vec::new();
    for raw in list.items {
        let Ok(pdb) = serde_json::from_value::<PodDisruptionBudget>(raw.clone()) else {
            continue;
        };
        // policy/v1: a null selector selects nothing; an empty one everything.
        let selects = pdb
            .spec
            .as_ref()
            .and_then(|s| s.selector.as_ref())
            .and_then(|s| LabelSelector::try_from(s).ok())
            .is_some_and(|s| s.matches(&labels));
        if selects {
            covering.push((raw, pdb));
        }
    }
    let (raw, pdb) = match covering.len() {
        0 => return Ok(Taken::NoBudget),
        1 => covering.remove(0),
        _ => {
            return Err(ApiError::internal(
                "This pod has more than one PodDisruptionBudget, which the eviction subresource does not support.",
            ))
        }
    };
    let pdb_name = pdb.metadata.name.clone().unwrap_or_default();
    let status = pdb.status.clone().unwrap_or_default();
    if status.observed_generation.unwrap_or(0) < pdb.metadata.generation.unwrap_or(0) {
        return Err(ApiError::disruption_budget(format!(
            "The disruption budget {pdb_name} is still being processed by the server."
        )));
    }
    if status.disruptions_allowed <= 0 {
        return Err(ApiError::disruption_budget(format!(
            "The disruption budget {pdb_name} needs {} healthy pods and has {} currently",
            status.desired_healthy, status.current_healthy
        )));
    }
    let mut updated = raw.clone();
    updated["status"]["disruptionsAllowed"] = json!(status.disruptions_allowed - 1);
    let now = k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string();
    if !updated["status"]["disruptedPods"].is_object() {
        updated["status"]["disruptedPods"] = json!({});
    }
    updated["status"]["disruptedPods"][name] = json!(now);
    match ctx.state.storage.update_from(&kind, &raw, updated).await {
        Ok(_) => Ok(Taken::Yes),
        Err(crate::storage::StorageError::Conflict { .. }) => Ok(Taken::Raced),
        Err(err) => Err(err.into()),
    }
}
