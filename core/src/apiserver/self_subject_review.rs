//! `SelfSubjectReview` (authentication.k8s.io/v1): "who am I?", answered with the user the
//! server authenticated the request as, as `kubectl auth whoami` asks it. Create-only;
//! nothing is stored.

use super::handler::Ctx;
use serde_json::{json, Value};

/// Answers a review: the request's metadata with `status.userInfo` filled.
pub(crate) fn review(ctx: &Ctx, body: &Value) -> Value {
    let metadata = body
        .get("metadata")
        .filter(|m| m.is_object())
        .cloned()
        .unwrap_or_else(|| json!({}));
    json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "SelfSubjectReview",
        "metadata": metadata,
        "status": {"userInfo": {"username": ctx.user.name, "groups": ctx.user.groups}},
    })
}
