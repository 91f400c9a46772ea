//! Protobuf request bodies (`application/vnd.kubernetes.protobuf`), as kubectl 1.32+ sends
//! for its typed commands: the `k8s\0` magic, a `runtime.Unknown` envelope naming the
//! apiVersion and kind, and the object's message (decoded with k8s-pb's prost types). The object
//! is converted to its JSON form, so everything after decoding is the same as for JSON bodies.
//! Kinds converted: Namespace, ConfigMap, Secret, ServiceAccount, autoscaling/v1 HorizontalPodAutoscaler
//! (`kubectl create namespace|configmap|secret`, `kubectl autoscale`) here, and Deployment,
//! Service, Job, CronJob and SelfSubjectAccessReview in `protobuf_workloads`, Role,
//! ClusterRole and their bindings in `protobuf_rbac`, PodDisruptionBudget and PriorityClass
//! in `protobuf_policy`; any other kind gets a clear 415.

use super::error::ApiError;
use super::protobuf_policy as policy;
use super::protobuf_rbac as rbac;
use super::protobuf_workloads as workloads;
use k8s_pb::api::apps::v1 as apps_v1;
use k8s_pb::api::authorization::v1 as authorization_v1;
use k8s_pb::api::autoscaling::v1 as autoscaling_v1;
use k8s_pb::api::batch::v1 as batch_v1;
use k8s_pb::api::core::v1 as core_v1;
use k8s_pb::api::rbac::v1 as rbac_v1;
use k8s_pb::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_pb::apimachinery::pkg::runtime::Unknown;
use prost::Message;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

/// The four bytes every Kubernetes protobuf body starts with.
const MAGIC: &[u8] = b"k8s\0";

fn unsupported(what: &str) -> ApiError {
    ApiError::unsupported_body(format!(
        "a protobuf body for {what} is not supported (protobuf bodies are accepted for Namespace, ConfigMap, Secret, ServiceAccount, Service, Deployment, Job, CronJob, autoscaling/v1 HorizontalPodAutoscaler, PodDisruptionBudget, PriorityClass, SelfSubjectAccessReview, SelfSubjectRulesReview, SelfSubjectReview, TokenRequest and the RBAC kinds); send it as JSON or YAML"
    ))
}

fn invalid(err: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("error decoding protobuf: {err}"))
}

/// Decodes a protobuf body into the object's JSON form.
pub fn decode(bytes: &[u8]) -> Result<Value, ApiError> {
    let envelope = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| invalid("the body does not start with the k8s protobuf magic"))?;
    let unknown = Unknown::decode(envelope).map_err(invalid)?;
    let type_meta = unknown.type_meta.unwrap_or_default();
    let api_version = type_meta.api_version.unwrap_or_default();
    let kind = type_meta.kind.unwrap_or_default();
    if unknown
        .content_encoding
        .as_deref()
        .is_some_and(|e| !e.is_empty())
    {
        return Err(invalid("content encodings are not supported"));
    }
    let raw = unknown.raw.unwrap_or_default();
    let mut object = match (api_version.as_str(), kind.as_str()) {
        ("v1", "Namespace") => {
            let ns = core_v1::Namespace::decode(raw.as_slice()).map_err(invalid)?;
            let mut object = json!({"metadata": metadata(ns.metadata)});
            if let Some(finalizers) = ns.spec.map(|s| s.finalizers).filter(|f| !f.is_empty()) {
                object["spec"] = json!({"finalizers": finalizers});
            }
            object
        }
        ("v1", "ConfigMap") => {
            let cm = core_v1::ConfigMap::decode(raw.as_slice()).map_err(invalid)?;
            let mut object = json!({"metadata": metadata(cm.metadata)});
            if !cm.data.is_empty() {
                object["data"] = json!(cm.data);
            }
            if !cm.binary_data.is_empty() {
                object["binaryData"] = base64_map(cm.binary_data);
            }
            if let Some(immutable) = cm.immutable {
                object["immutable"] = json!(immutable);
            }
            object
        }
        ("v1", "ServiceAccount") => {
            let mut account = core_v1::ServiceAccount::decode(raw.as_slice()).map_err(invalid)?;
            let mut object = json!({"metadata": metadata(account.metadata.take())});
            if let Some(automount) = account.automount_service_account_token.take() {
                object["automountServiceAccountToken"] = json!(automount);
            }
            let pulls: Vec<Value> = std::mem::take(&mut account.image_pull_secrets)
                .into_iter()
                .map(|r| json!({"name": r.name.unwrap_or_default()}))
                .collect();
            if !pulls.is_empty() {
                object["imagePullSecrets"] = json!(pulls);
            }
            workloads::consumed(&account, "a ServiceAccount")?;
            object
        }
        ("v1", "Secret") => {
            let secret = core_v1::Secret::decode(raw.as_slice()).map_err(invalid)?;
            let mut object = json!({"metadata": metadata(secret.metadata)});
            if !secret.data.is_empty() {
                object["data"] = base64_map(secret.data);
            }
            if !secret.string_data.is_empty() {
                object["stringData"] = json!(secret.string_data);
            }
            if let Some(type_) = secret.r#type.filter(|t| !t.is_empty()) {
                object["type"] = json!(type_);
            }
            if let Some(immutable) = secret.immutable {
                object["immutable"] = json!(immutable);
            }
            object
        }
        ("autoscaling/v1", "HorizontalPodAutoscaler") => {
            let hpa =
                autoscaling_v1::HorizontalPodAutoscaler::decode(raw.as_slice()).map_err(invalid)?;
            let spec = hpa.spec.unwrap_or_default();
            let target = spec.scale_target_ref.unwrap_or_default();
            let mut object = json!({
                "metadata": metadata(hpa.metadata),
                "spec": {
                    "scaleTargetRef": {"kind": target.kind, "name": target.name, "apiVersion": target.api_version},
                    "maxReplicas": spec.max_replicas,
                },
            });
            if let Some(min) = spec.min_replicas {
                object["spec"]["minReplicas"] = json!(min);
            }
            if let Some(cpu) = spec.target_cpu_utilization_percentage {
                object["spec"]["targetCPUUtilizationPercentage"] = json!(cpu);
            }
            object
        }
        ("v1", "Service") => {
            workloads::service(core_v1::Service::decode(raw.as_slice()).map_err(invalid)?)?
        }
        ("apps/v1", "Deployment") => {
            workloads::deployment(apps_v1::Deployment::decode(raw.as_slice()).map_err(invalid)?)?
        }
        ("batch/v1", "Job") => {
            workloads::job(batch_v1::Job::decode(raw.as_slice()).map_err(invalid)?)?
        }
        ("policy/v1", "PodDisruptionBudget") => policy::pod_disruption_budget(
            k8s_pb::api::policy::v1::PodDisruptionBudget::decode(raw.as_slice())
                .map_err(invalid)?,
        )?,
        ("scheduling.k8s.io/v1", "PriorityClass") => policy::priority_class(
            k8s_pb::api::scheduling::v1::PriorityClass::decode(raw.as_slice()).map_err(invalid)?,
        )?,
        ("batch/v1", "CronJob") => {
            workloads::cron_job(batch_v1::CronJob::decode(raw.as_slice()).map_err(invalid)?)?
        }
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => {
            workloads::self_subject_access_review(
                authorization_v1::SelfSubjectAccessReview::decode(raw.as_slice())
                    .map_err(invalid)?,
            )?
        }
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => {
            workloads::self_subject_rules_review(
                authorization_v1::SelfSubjectRulesReview::decode(raw.as_slice())
                    .map_err(invalid)?,
            )?
        }
        ("authentication.k8s.io/v1", "SelfSubjectReview") => rbac::self_subject_review(
            k8s_pb::api::authentication::v1::SelfSubjectReview::decode(raw.as_slice())
                .map_err(invalid)?,
        )?,
        ("authentication.k8s.io/v1", "TokenRequest") => rbac::token_request(
            k8s_pb::api::authentication::v1::TokenRequest::decode(raw.as_slice())
                .map_err(invalid)?,
        )?,
        ("rbac.authorization.k8s.io/v1", "Role") => {
            rbac::role(rbac_v1::Role::decode(raw.as_slice()).map_err(invalid)?)?
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRole") => {
            rbac::cluster_role(rbac_v1::ClusterRole::decode(raw.as_slice()).map_err(invalid)?)?
        }
        ("rbac.authorization.k8s.io/v1", "RoleBinding") => {
            let binding = rbac_v1::RoleBinding::decode(raw.as_slice()).map_err(invalid)?;
            rbac::binding(binding.metadata, binding.subjects, binding.role_ref)?
        }
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding") => {
            let binding = rbac_v1::ClusterRoleBinding::decode(raw.as_slice()).map_err(invalid)?;
            rbac::binding(binding.metadata, binding.subjects, binding.role_ref)?
        }
        _ => return Err(unsupported(&format!("{api_version} {kind}"))),
    };
    object["apiVersion"] = json!(api_version);
    object["kind"] = json!(kind);
    strip_nulls(&mut object);
    Ok(object)
}

fn base64_map(map: BTreeMap<String, Vec<u8>>) -> Value {
    let encoded: Map<String, Value> = map
        .into_iter()
        .map(|(k, v)| {
            let text = serde_json::to_value(k8s_openapi::ByteString(v)).unwrap_or(Value::Null);
            (k, text)
        })
        .collect();
    Value::Object(encoded)
}

/// What a client may set in metadata (the server owns the rest).
pub(super) fn metadata(meta: Option<ObjectMeta>) -> Value {
    let meta = meta.unwrap_or_default();
    // Go writes empty strings for unset names; they mean "unset".
    let set = |s: Option<String>| s.filter(|s| !s.is_empty());
    let mut out = json!({
        "name": set(meta.name),
        "generateName": set(meta.generate_name),
        "namespace": set(meta.namespace),
    });
    if !meta.labels.is_empty() {
        out["labels"] = json!(meta.labels);
    }
    if !meta.annotations.is_empty() {
        out["annotations"] = json!(meta.annotations);
    }
    if !meta.finalizers.is_empty() {
        out["finalizers"] = json!(meta.finalizers);
    }
    if !meta.owner_references.is_empty() {
        let refs: Vec<Value> = meta
            .owner_references
            .into_iter()
            .map(|r| {
                json!({"apiVersion": r.api_version, "kind": r.kind, "name": r.name, "uid": r.uid,
                       "controller": r.controller, "blockOwnerDeletion": r.block_owner_deletion})
            })
            .collect();
        out["ownerReferences"] = Value::Array(refs);
    }
    out
}

fn strip_nulls(value: &mut Value) {
    match value {
        Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(strip_nulls);
        }
        Value::Array(items) => items.iter_mut().for_each(strip_nulls),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_pb::apimachinery::pkg::runtime::TypeMeta;

    fn envelope(api_version: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some(api_version.into()),
                kind: Some(kind.into()),
            }),
            raw: Some(raw),
            content_encoding: Some(String::new()),
            content_type: Some(String::new()),
        };
        let mut bytes = MAGIC.to_vec();
        bytes.extend(unknown.encode_to_vec());
        bytes
    }

    fn meta(name: &str) -> Option<ObjectMeta> {
        Some(ObjectMeta {
            name: Some(name.into()),
            labels: [("a".to_string(), "b".to_string())].into(),
            ..Default::default()
        })
    }

    #[test]
    fn namespaces_config_maps_secrets_and_autoscalers_decode_to_json() {
        let ns = core_v1::Namespace {
            metadata: meta("team"),
            ..Default::default()
        };
        let value = decode(&envelope("v1", "Namespace", ns.encode_to_vec())).unwrap();
        assert_eq!(
            value,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "team", "labels": {"a": "b"}}})
        );
        let secret = core_v1::Secret {
            metadata: meta("s"),
            data: [("k".to_string(), b"hi".to_vec())].into(),
            r#type: Some("Opaque".into()),
            ..Default::default()
        };
        let value = decode(&envelope("v1", "Secret", secret.encode_to_vec())).unwrap();
        assert_eq!(value["data"]["k"], "aGk=");
        assert_eq!(value["type"], "Opaque");
        let cm = core_v1::ConfigMap {
            metadata: meta("c"),
            data: [("x".to_string(), "y".to_string())].into(),
            ..Default::default()
        };
        let value = decode(&envelope("v1", "ConfigMap", cm.encode_to_vec())).unwrap();
        assert_eq!(value["data"], json!({"x": "y"}));
        let hpa = autoscaling_v1::HorizontalPodAutoscaler {
            metadata: meta("web"),
            spec: Some(autoscaling_v1::HorizontalPodAutoscalerSpec {
                scale_target_ref: Some(autoscaling_v1::CrossVersionObjectReference {
                    kind: Some("Deployment".into()),
                    name: Some("web".into()),
                    api_version: Some("apps/v1".into()),
                }),
                min_replicas: Some(1),
                max_replicas: Some(3),
                target_cpu_utilization_percentage: Some(50),
            }),
            status: None,
        };
        let value = decode(&envelope(
            "autoscaling/v1",
            "HorizontalPodAutoscaler",
            hpa.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(value["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(value["spec"]["scaleTargetRef"]["name"], "web");
    }

    #[test]
    fn deployments_services_jobs_and_cron_jobs_decode_to_json() {
        let template = core_v1::PodTemplateSpec {
            metadata: meta("ignored"),
            spec: Some(core_v1::PodSpec {
                containers: vec![core_v1::Container {
                    name: Some("app".into()),
                    image: Some("busybox".into()),
                    command: vec!["sleep".into(), "1".into()],
                    resources: Some(Default::default()),
                    ports: vec![core_v1::ContainerPort {
                        container_port: Some(80),
                        ..Default::default()
                    }],
                    // Zero values, as Go writes them for unset fields: absent.
                    working_dir: Some(String::new()),
                    stdin: Some(false),
                    stdin_once: Some(false),
                    tty: Some(false),
                    liveness_probe: Some(core_v1::Probe {
                        period_seconds: Some(0),
                        ..Default::default()
                    }),
                    ..Default::default()
                }],
                restart_policy: Some("Never".into()),
                ..Default::default()
            }),
        };
        let deployment = apps_v1::Deployment {
            metadata: meta("web"),
            spec: Some(apps_v1::DeploymentSpec {
                replicas: Some(2),
                selector: Some(k8s_pb::apimachinery::pkg::apis::meta::v1::LabelSelector {
                    match_labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                }),
                template: Some(template.clone()),
                strategy: Some(Default::default()),
                min_ready_seconds: Some(0),
                paused: Some(false),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        let value = decode(&envelope(
            "apps/v1",
            "Deployment",
            deployment.encode_to_vec(),
        ))
        .unwrap();
        assert_eq!(value["spec"]["replicas"], 2);
        assert_eq!(value["spec"]["selector"]["matchLabels"]["app"], "web");
        let container = &value["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(container["command"], json!(["sleep", "1"]));
        assert_eq!(container["resources"], json!({}));
        assert!(container.get("workingDir").is_none() && container.get("livenessProbe").is_none());
        // Go's omitempty booleans and numbers at zero are left out, as every other client
        // sends the template (its hash must not depend on the encoding).
        for absent in ["stdin", "stdinOnce", "tty"] {
            assert!(container.get(absent).is_none(), "{absent}: {container}");
        }
        assert!(
            value["spec"].get("paused").is_none() && value["spec"].get("minReadySeconds").is_none()
        );
        assert_eq!(container["ports"][0]["containerPort"], 80);
        assert_eq!(value["spec"]["strategy"], json!({}));
        assert!(value.get("status").is_none());

        let service = core_v1::Service {
            metadata: meta("web"),
            spec: Some(core_v1::ServiceSpec {
                ports: vec![core_v1::ServicePort {
                    name: Some("80-8080".into()),
                    port: Some(80),
                    target_port: Some(k8s_pb::apimachinery::pkg::util::intstr::IntOrString {
                        r#type: Some(0),
                        int_val: Some(8080),
                        str_val: None,
                    }),
                    ..Default::default()
                }],
                r#type: Some("ClusterIP".into()),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        let value = decode(&envelope("v1", "Service", service.encode_to_vec())).unwrap();
        assert_eq!(value["spec"]["ports"][0]["targetPort"], 8080);
        assert_eq!(value["spec"]["type"], "ClusterIP");

        let job_spec = batch_v1::JobSpec {
            template: Some(template),
            ..Default::default()
        };
        let cron_job = batch_v1::CronJob {
            metadata: meta("tick"),
            spec: Some(batch_v1::CronJobSpec {
                schedule: Some("*/1 * * * *".into()),
                job_template: Some(batch_v1::JobTemplateSpec {
                    metadata: meta("tick"),
                    spec: Some(job_spec.clone()),
                }),
                ..Default::default()
            }),
            status: None,
        };
        let value = decode(&envelope("batch/v1", "CronJob", cron_job.encode_to_vec())).unwrap();
        assert_eq!(value["spec"]["schedule"], "*/1 * * * *");
        assert_eq!(
            value["spec"]["jobTemplate"]["spec"]["template"]["spec"]["restartPolicy"],
            "Never"
        );
        let job = batch_v1::Job {
            metadata: meta("once"),
            spec: Some(job_spec),
            status: None,
        };
        let value = decode(&envelope("batch/v1", "Job", job.encode_to_vec())).unwrap();
        assert_eq!(value["kind"], "Job");
        assert_eq!(
            value["spec"]["template"]["spec"]["containers"][0]["image"],
            "busybox"
        );
    }

    #[test]
    fn other_kinds_and_garbage_are_refused_clearly() {
        let err = decode(&envelope("apps/v1", "StatefulSet", Vec::new())).unwrap_err();
        assert_eq!(err.code, 415);
        assert!(err.message.contains("apps/v1 StatefulSet"));
        // A field the converter does not know is refused, not dropped.
        let deployment = apps_v1::Deployment {
            metadata: meta("web"),
            spec: Some(apps_v1::DeploymentSpec {
                template: Some(core_v1::PodTemplateSpec {
                    metadata: None,
                    spec: Some(core_v1::PodSpec {
                        containers: vec![core_v1::Container {
                            name: Some("app".into()),
                            liveness_probe: Some(core_v1::Probe {
                                period_seconds: Some(3),
                                ..Default::default()
                            }),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            }),
            status: Some(Default::default()),
        };
        let err = decode(&envelope(
            "apps/v1",
            "Deployment",
            deployment.encode_to_vec(),
        ))
        .unwrap_err();
        assert_eq!(err.code, 415);
        assert!(err.message.contains("a container"), "{}", err.message);
        assert_eq!(decode(b"{\"json\": true}").unwrap_err().code, 400);
        assert_eq!(decode(b"k8s\0\xff\xff\xff").unwrap_err().code, 400);
    }
}
