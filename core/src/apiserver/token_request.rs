//! The `serviceaccounts/token` subresource (authentication.k8s.io/v1 TokenRequest), as
//! `kubectl create token` calls it: a signed token for an existing ServiceAccount, for the
//! requested audiences (default: the API server) and lifetime (default one hour, at least ten
//! minutes, at most a day). Nothing is stored.

use super::handler::Ctx;
use super::ApiError;
use crate::authn::API_AUDIENCE;
use serde_json::{json, Value};
use std::time::Duration;

const DEFAULT_LIFETIME: u64 = 3600;
const MIN_LIFETIME: u64 = 600;
const MAX_LIFETIME: u64 = 86_400;

/// Issues a token for the account `name` and answers the TokenRequest with it.
pub(crate) async fn issue(ctx: &Ctx, name: &str, mut request: Value) -> Result<Value, ApiError> {
    let tokens = ctx.state.tokens.as_ref().ok_or_else(|| {
        ApiError::method_not_allowed("this server issues no service account tokens")
    })?;
    let namespace = ctx.path.namespace.clone().unwrap_or_default();
    let account = super::handler::get(ctx, name).await?;
    let uid = account
        .pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let spec = request.get("spec").cloned().unwrap_or(json!({}));
    let audiences: Vec<String> = match spec.get("audiences") {
        None | Some(Value::Null) => vec![API_AUDIENCE.to_string()],
        Some(list @ Value::Array(items)) => {
            let strings: Option<Vec<String>> = items
                .iter()
                .map(|a| a.as_str().map(str::to_string))
                .collect();
            match strings {
                Some(list) if list.is_empty() => vec![API_AUDIENCE.to_string()],
                Some(list) => list,
                None => {
                    return Err(ApiError::invalid(
                        "TokenRequest",
                        name,
                        vec![super::Cause::invalid(
                            "spec.audiences",
                            list,
                            "must be strings",
                        )],
                    ))
                }
            }
        }
        Some(other) => {
            return Err(ApiError::invalid(
                "TokenRequest",
                name,
                vec![super::Cause::invalid(
                    "spec.audiences",
                    other,
                    "must be a list",
                )],
            ))
        }
    };
    let lifetime = match spec.get("expirationSeconds") {
        None | Some(Value::Null) => DEFAULT_LIFETIME,
        Some(value) => match value.as_u64() {
            Some(seconds) if seconds >= MIN_LIFETIME => seconds.min(MAX_LIFETIME),
            _ => {
                return Err(ApiError::invalid(
                    "TokenRequest",
                    name,
                    vec![super::Cause::invalid(
                        "spec.expirationSeconds",
                        value,
                        "may not specify a duration less than 10 minutes",
                    )],
                ))
            }
        },
    };
    let issued = tokens
        .issue(
            &namespace,
            name,
            &uid,
            audiences.clone(),
            Duration::from_secs(lifetime),
        )
        .map_err(|e| ApiError::internal(e.to_string()))?;
    request["apiVersion"] = json!("authentication.k8s.io/v1");
    request["kind"] = json!("TokenRequest");
    request["metadata"] = json!({"name": name, "namespace": namespace,
        "creationTimestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
    request["spec"]["audiences"] = json!(audiences);
    request["spec"]["expirationSeconds"] = json!(lifetime);
    request["status"] = json!({
        "token": issued.token,
        "expirationTimestamp": issued.expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    });
    Ok(request)
}
