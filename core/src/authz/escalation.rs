//! The RBAC escalation check (an admission plugin): a user may create or change a Role or
//! ClusterRole only with rules they already hold, and bind a role only if they hold all its
//! rules — unless RBAC grants them `escalate` (roles) or `bind` (bindings) on it, as in
//! Kubernetes.

use super::policy_rule::rules_cover;
use super::rbac::RbacAuthorizer;
use crate::apiserver::{AdmissionPlugin, AdmissionRequest, ApiError, Operation, RequestAttributes};
use async_trait::async_trait;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;
use std::sync::Arc;

/// Refuses role and binding writes that would grant more than the writer holds.
#[derive(Debug)]
pub struct RbacEscalationCheck {
    rbac: Arc<RbacAuthorizer>,
}

impl RbacEscalationCheck {
    /// Checks writes against the rules `rbac` grants.
    pub fn new(rbac: Arc<RbacAuthorizer>) -> Self {
        RbacEscalationCheck { rbac }
    }
}

const GROUP: &str = "rbac.authorization.k8s.io";

fn rules_in(object: &Value) -> Result<Vec<PolicyRule>, ApiError> {
    match object.get("rules") {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(rules) => serde_json::from_value(rules.clone())
            .map_err(|e| ApiError::bad_request(format!("rules: {e}"))),
    }
}

#[async_trait]
impl AdmissionPlugin for RbacEscalationCheck {
    fn name(&self) -> &str {
        "RBACEscalation"
    }

    async fn validate(
        &self,
        request: &AdmissionRequest<'_>,
        object: &Value,
    ) -> Result<(), ApiError> {
        if request.operation == Operation::Delete
            || request.kind.group != GROUP
            || request.subresource.is_some()
        {
            return Ok(());
        }
        let user = request.user;
        let namespace = request.namespace.filter(|ns| !ns.is_empty());
        let may = |verb: &str, resource: &str, name: &str| {
            self.rbac.allows(
                user,
                &RequestAttributes {
                    verb: verb.into(),
                    group: GROUP.into(),
                    resource: resource.into(),
                    subresource: None,
                    namespace: namespace.map(str::to_string),
                    name: Some(name.into()),
                    path: None,
                    field_selector: None,
                },
            )
        };
        let plural = request.kind.plural.as_str();
        let granted = match plural {
            "roles" | "clusterroles" => {
                if may("escalate", plural, request.name) {
                    return Ok(());
                }
                rules_in(object)?
            }
            "rolebindings" | "clusterrolebindings" => {
                let role_kind = object
                    .pointer("/roleRef/kind")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let role_name = object
                    .pointer("/roleRef/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                let role_plural = if role_kind == "Role" {
                    "roles"
                } else {
                    "clusterroles"
                };
                if may("bind", role_plural, role_name) {
                    return Ok(());
                }
                let Some(role_kind_def) = request.registry.get(GROUP, "v1", role_plural) else {
                    return Ok(());
                };
                let role_namespace = if role_kind == "Role" { namespace } else { None };
                match request
                    .storage
                    .get(role_kind_def, role_namespace, role_name)
                    .await
                {
                    Ok(role) => rules_in(&role)?,
                    // Binding a role that does not exist grants nothing yet; creating the
                    // role later is checked then.
                    Err(_) => Vec::new(),
                }
            }
            _ => return Ok(()),
        };
        let held = self.rbac.rules_of(user, namespace);
        let missing: Vec<&PolicyRule> = granted.iter().filter(|r| !rules_cover(&held, r)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        let described: Vec<String> = missing
            .iter()
            .map(|r| {
                format!(
                    "{{APIGroups:{:?}, Resources:{:?}, ResourceNames:{:?}, NonResourceURLs:{:?}, Verbs:{:?}}}",
                    r.api_groups.clone().unwrap_or_default(),
                    r.resources.clone().unwrap_or_default(),
                    r.resource_names.clone().unwrap_or_default(),
                    r.non_resource_urls.clone().unwrap_or_default(),
                    r.verbs
                )
            })
            .collect();
        Err(ApiError::forbidden(format!(
            "{plural}.{GROUP} \"{}\" is forbidden: user \"{}\" (groups={:?}) is attempting to grant RBAC permissions not currently held: {}",
            request.name,
            user.name,
            user.groups,
            described.join(", ")
        )))
    }
}
