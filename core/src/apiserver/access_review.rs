//! `SelfSubjectAccessReview` (authorization.k8s.io/v1): "may I do this?", and
//! `SelfSubjectRulesReview`: "what may I do in this namespace?", answered by the server's
//! authorizer for the requesting user, as `kubectl auth can-i` and `kubectl auth can-i --list`
//! ask them. Create-only; nothing is stored.

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

/// Answers a rules review: the request body with `status.resourceRules`, `nonResourceRules`
/// and `incomplete` filled for `spec.namespace`.
pub(crate) fn rules_review(ctx: &Ctx, mut body: Value) -> Value {
    let namespace = body
        .pointer("/spec/namespace")
        .and_then(Value::as_str)
        .filter(|ns| !ns.is_empty())
        .map(str::to_string);
    let rules = ctx
        .state
        .authorizer
        .rules_for(&ctx.user, namespace.as_deref());
    let incomplete = rules.is_none();
    let (mut resource_rules, mut non_resource_rules) = (Vec::new(), Vec::new());
    for rule in rules.unwrap_or_default() {
        if let Some(resources) = rule.resources.filter(|r| !r.is_empty()) {
            resource_rules.push(json!({
                "verbs": rule.verbs,
                "apiGroups": rule.api_groups.unwrap_or_default(),
                "resources": resources,
                "resourceNames": rule.resource_names.unwrap_or_default(),
            }));
        }
        if let Some(urls) = rule.non_resource_urls.filter(|u| !u.is_empty()) {
            non_resource_rules.push(json!({"verbs": rule.verbs, "nonResourceURLs": urls}));
        }
    }
    body["apiVersion"] = json!("authorization.k8s.io/v1");
    body["kind"] = json!("SelfSubjectRulesReview");
    if body.get("metadata").is_none_or(|m| !m.is_object()) {
        body["metadata"] = json!({});
    }
    body["status"] = json!({
        "resourceRules": resource_rules,
        "nonResourceRules": non_resource_rules,
        "incomplete": incomplete,
    });
    body
}
