//! `SelfSubjectAccessReview` (authorization.k8s.io/v1): "may I do this?", answered by the
//! server's authorizer for the requesting user, as `kubectl auth can-i` asks it. Create-only;
//! nothing is stored.

use super::handler::Ctx;
use super::{ApiError, RequestAttributes};
use serde_json::{json, Value};

/// Answers a review: the request body with `status.allowed` (and the denial's reason) filled.
pub(crate) async fn review(ctx: &Ctx, mut body: Value) -> Result<Value, ApiError> {
    let spec = body.get("spec").cloned().unwrap_or(Value::Null);
    let text = |value: &Value, key: &str| {
        value
            .get(key)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let attributes = if let Some(resource) = spec.get("resourceAttributes") {
        RequestAttributes {
            verb: text(resource, "verb").unwrap_or_default(),
            group: text(resource, "group").unwrap_or_default(),
            resource: text(resource, "resource").unwrap_or_default(),
            subresource: text(resource, "subresource"),
            namespace: text(resource, "namespace"),
            name: text(resource, "name"),
            path: None,
            field_selector: None,
        }
    } else if let Some(non_resource) = spec.get("nonResourceAttributes") {
        RequestAttributes::non_resource(
            &text(non_resource, "verb").unwrap_or_default(),
            &text(non_resource, "path").unwrap_or_default(),
        )
    } else {
        return Err(ApiError::invalid(
            "SelfSubjectAccessReview",
            "",
            vec![super::Cause::required("spec.resourceAttributes")],
        ));
    };
    if attributes.verb.is_empty() {
        return Err(ApiError::invalid(
            "SelfSubjectAccessReview",
            "",
            vec![super::Cause::required("spec.resourceAttributes.verb")],
        ));
    }
    let status = match ctx.state.authorizer.authorize(&ctx.user, &attributes).await {
        Ok(()) => json!({"allowed": true}),
        Err(err) if err.code == 403 => json!({"allowed": false, "reason": err.message}),
        Err(err) => json!({"allowed": false, "evaluationError": err.message}),
    };
    body["apiVersion"] = json!("authorization.k8s.io/v1");
    body["kind"] = json!("SelfSubjectAccessReview");
    if body.get("metadata").is_none_or(|m| !m.is_object()) {
        body["metadata"] = json!({});
    }
    body["status"] = status;
    Ok(body)
}
