//! Protobuf messages of the access kinds — RBAC (`kubectl create role|clusterrole|
//! rolebinding|clusterrolebinding` on kubectl 1.32+), TokenRequest (`kubectl create
//! token`) and SelfSubjectReview (`kubectl auth whoami`) — converted to their JSON form. As in `protobuf_workloads`, a field left
//! unconverted (an aggregation rule, a bound object) is refused, not dropped.

use super::protobuf::metadata;
use super::protobuf_workloads::{consumed, Converted, Object};
use k8s_pb::api::rbac::v1 as rbac_v1;
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

fn rule(mut rule: rbac_v1::PolicyRule) -> Converted {
    let value = Object::default()
        .strings("verbs", std::mem::take(&mut rule.verbs))
        .strings("apiGroups", std::mem::take(&mut rule.api_groups))
        .strings("resources", std::mem::take(&mut rule.resources))
        .strings("resourceNames", std::mem::take(&mut rule.resource_names))
        .strings(
            "nonResourceURLs",
            std::mem::take(&mut rule.non_resource_ur_ls),
        )
        .done();
    consumed(&rule, "a policy rule")?;
    Ok(value)
}

fn rules(rules: Vec<rbac_v1::PolicyRule>) -> Result<Vec<Value>, super::ApiError> {
    rules.into_iter().map(rule).collect()
}

/// rbac.authorization.k8s.io/v1 Role.
pub(super) fn role(mut role: rbac_v1::Role) -> Converted {
    let value = Object::default()
        .set("metadata", Some(metadata(role.metadata.take())))
        .list("rules", rules(std::mem::take(&mut role.rules))?)
        .done();
    consumed(&role, "a Role")?;
    Ok(value)
}

/// rbac.authorization.k8s.io/v1 ClusterRole (aggregation rules are not converted).
pub(super) fn cluster_role(mut role: rbac_v1::ClusterRole) -> Converted {
    let value = Object::default()
        .set("metadata", Some(metadata(role.metadata.take())))
        .list("rules", rules(std::mem::take(&mut role.rules))?)
        .done();
    consumed(&role, "a ClusterRole")?;
    Ok(value)
}

/// RoleBinding and ClusterRoleBinding: subjects and the role they are given.
pub(super) fn binding(
    meta: Option<ObjectMeta>,
    subjects: Vec<rbac_v1::Subject>,
    role_ref: Option<rbac_v1::RoleRef>,
) -> Converted {
    let mut converted = Vec::with_capacity(subjects.len());
    for mut subject in subjects {
        converted.push(
            Object::default()
                .set("kind", subject.kind.take())
                .set("apiGroup", subject.api_group.take())
                .set("name", subject.name.take())
                .set("namespace", subject.namespace.take())
                .done(),
        );
        consumed(&subject, "a subject")?;
    }
    let role_ref = match role_ref {
        None => None,
        Some(mut r) => {
            let value = Object::default()
                .set("apiGroup", r.api_group.take())
                .set("kind", r.kind.take())
                .set("name", r.name.take())
                .done();
            consumed(&r, "a role reference")?;
            Some(value)
        }
    };
    Ok(Object::default()
        .set("metadata", Some(metadata(meta)))
        .list("subjects", converted)
        .set("roleRef", role_ref)
        .done())
}

/// authentication.k8s.io/v1 TokenRequest: audiences and lifetime (bound objects are not
/// converted).
pub(super) fn token_request(
    mut request: k8s_pb::api::authentication::v1::TokenRequest,
) -> Converted {
    let mut spec = request.spec.take().unwrap_or_default();
    let spec_value = Object::default()
        .strings("audiences", std::mem::take(&mut spec.audiences))
        .set("expirationSeconds", spec.expiration_seconds.take())
        .done();
    consumed(&spec, "a token request spec")?;
    request.status = None;
    let value = Object::default()
        .set("metadata", Some(metadata(request.metadata.take())))
        .set("spec", Some(spec_value))
        .done();
    consumed(&request, "a TokenRequest")?;
    Ok(value)
}

/// authentication.k8s.io/v1 SelfSubjectReview (`kubectl auth whoami`): metadata only.
pub(super) fn self_subject_review(
    mut review: k8s_pb::api::authentication::v1::SelfSubjectReview,
) -> Converted {
    review.status = None;
    let value = Object::default()
        .set("metadata", Some(metadata(review.metadata.take())))
        .done();
    consumed(&review, "a SelfSubjectReview")?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn roles_and_bindings_convert_and_aggregation_is_refused() {
        let role = role(rbac_v1::Role {
            metadata: Some(ObjectMeta {
                name: Some("reader".into()),
                ..ObjectMeta::default()
            }),
            rules: vec![rbac_v1::PolicyRule {
                verbs: vec!["get".into()],
                api_groups: vec!["".into()],
                resources: vec!["pods".into()],
                ..rbac_v1::PolicyRule::default()
            }],
        })
        .unwrap();
        assert_eq!(
            role["rules"],
            json!([{"verbs": ["get"], "apiGroups": [""], "resources": ["pods"]}])
        );
        let binding = binding(
            None,
            vec![rbac_v1::Subject {
                kind: Some("User".into()),
                name: Some("jane".into()),
                api_group: Some("rbac.authorization.k8s.io".into()),
                namespace: None,
            }],
            Some(rbac_v1::RoleRef {
                api_group: Some("rbac.authorization.k8s.io".into()),
                kind: Some("ClusterRole".into()),
                name: Some("view".into()),
            }),
        )
        .unwrap();
        assert_eq!(binding["subjects"][0]["name"], "jane");
        assert_eq!(binding["roleRef"]["name"], "view");
        let aggregated = cluster_role(rbac_v1::ClusterRole {
            aggregation_rule: Some(rbac_v1::AggregationRule {
                cluster_role_selectors: vec![
                    k8s_pb::apimachinery::pkg::apis::meta::v1::LabelSelector {
                        match_labels: [("aggregate".to_string(), "yes".to_string())].into(),
                        ..Default::default()
                    },
                ],
            }),
            ..rbac_v1::ClusterRole::default()
        });
        assert_eq!(aggregated.unwrap_err().code, 415);
    }
}
