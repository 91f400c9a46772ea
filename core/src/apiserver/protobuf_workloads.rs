//! Protobuf messages of the workload kinds kubectl's typed commands send (`kubectl create
//! deployment|service|job|cronjob`, `kubectl auth can-i`) converted to their JSON form.
//!
//! Each converter takes the fields it knows out of the decoded message; whatever is left must
//! encode to nothing, so a field this module does not convert is refused (415) rather than
//! silently dropped. Empty messages (`resources: {}`, `strategy: {}`, `status: {}` as kubectl
//! sends them) become `{}`; status is dropped, as the server ignores it on create.

use super::error::ApiError;
use k8s_pb::api::apps::v1 as apps_v1;
use k8s_pb::api::authorization::v1 as authorization_v1;
use k8s_pb::api::batch::v1 as batch_v1;
use k8s_pb::api::core::v1 as core_v1;
use k8s_pb::apimachinery::pkg::api::resource::Quantity;
use k8s_pb::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_pb::apimachinery::pkg::util::intstr::IntOrString;
use prost::Message;
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;

pub(super) type Converted = Result<Value, ApiError>;

/// Refuses a message that still holds fields after conversion. Go's encoder writes every
/// non-pointer field, so zero values (`""`, `0`, `false`, empty messages) count as absent.
pub(super) fn consumed<M: Message>(rest: &M, what: &str) -> Result<(), ApiError> {
    if only_zero_values(&rest.encode_to_vec(), 0) {
        Ok(())
    } else {
        Err(ApiError::unsupported_body(format!(
            "the protobuf body sets fields of {what} that are not converted yet; send it as JSON or YAML"
        )))
    }
}

/// Whether protobuf wire bytes hold nothing but zero values, nested messages included (a
/// length-delimited field is taken as a nested message when it parses as one).
fn only_zero_values(mut bytes: &[u8], depth: usize) -> bool {
    use prost::encoding::{decode_key, decode_varint, WireType};
    if depth > 32 {
        return false;
    }
    while !bytes.is_empty() {
        let Ok((_, wire_type)) = decode_key(&mut bytes) else {
            return false;
        };
        let zero = match wire_type {
            WireType::Varint => decode_varint(&mut bytes).is_ok_and(|v| v == 0),
            WireType::LengthDelimited => {
                let Ok(length) = decode_varint(&mut bytes) else {
                    return false;
                };
                let Some((field, rest)) = usize::try_from(length)
                    .ok()
                    .and_then(|l| bytes.split_at_checked(l))
                else {
                    return false;
                };
                bytes = rest;
                field.is_empty() || only_zero_values(field, depth + 1)
            }
            WireType::ThirtyTwoBit => match bytes.split_at_checked(4) {
                Some((field, rest)) => {
                    bytes = rest;
                    field.iter().all(|b| *b == 0)
                }
                None => false,
            },
            WireType::SixtyFourBit => match bytes.split_at_checked(8) {
                Some((field, rest)) => {
                    bytes = rest;
                    field.iter().all(|b| *b == 0)
                }
                None => false,
            },
            WireType::StartGroup | WireType::EndGroup => false,
        };
        if !zero {
            return false;
        }
    }
    true
}

/// An optional message this module does not convert: accepted only when empty.
fn empty_message<M: Message>(message: Option<M>, what: &str) -> Result<Option<Value>, ApiError> {
    match message {
        None => Ok(None),
        Some(m) => consumed(&m, what).map(|()| Some(json!({}))),
    }
}

/// A JSON object built field by field, leaving out absent values.
#[derive(Default)]
pub(super) struct Object(Map<String, Value>);

impl Object {
    /// Sets `key` unless the value is absent or an empty string (Go's zero value, which its
    /// JSON form leaves out).
    pub(super) fn set(mut self, key: &str, value: Option<impl Into<Value>>) -> Self {
        if let Some(value) = value.map(Into::into) {
            if value.as_str() != Some("") {
                self.0.insert(key.to_string(), value);
            }
        }
        self
    }

    pub(super) fn list(mut self, key: &str, items: Vec<Value>) -> Self {
        if !items.is_empty() {
            self.0.insert(key.to_string(), Value::Array(items));
        }
        self
    }

    pub(super) fn strings(self, key: &str, items: Vec<String>) -> Self {
        self.list(key, items.into_iter().map(Value::String).collect())
    }

    fn map(mut self, key: &str, map: BTreeMap<String, String>) -> Self {
        if !map.is_empty() {
            self.0.insert(key.to_string(), json!(map));
        }
        self
    }

    pub(super) fn done(self) -> Value {
        Value::Object(self.0)
    }
}

/// A non-pointer `bool` with `omitempty` in Go: protobuf carries `false` for it, which its JSON
/// form leaves out (a stored `false` would differ from what other clients send, and change a
/// pod template's hash).
pub(super) fn set_flag(value: Option<bool>) -> Option<bool> {
    value.filter(|v| *v)
}

pub(super) fn int_or_string(value: Option<IntOrString>) -> Option<Value> {
    value.map(|v| match v.r#type {
        Some(1) => json!(v.str_val.unwrap_or_default()),
        _ => json!(v.int_val.unwrap_or_default()),
    })
}

fn quantities(map: BTreeMap<String, Quantity>) -> BTreeMap<String, String> {
    map.into_iter()
        .map(|(k, q)| (k, q.string.unwrap_or_default()))
        .collect()
}

pub(super) fn label_selector(selector: Option<LabelSelector>) -> Result<Option<Value>, ApiError> {
    let Some(mut selector) = selector else {
        return Ok(None);
    };
    let expressions = std::mem::take(&mut selector.match_expressions)
        .into_iter()
        .map(|mut e| {
            let value = Object::default()
                .set("key", e.key.take())
                .set("operator", e.operator.take())
                .strings("values", std::mem::take(&mut e.values))
                .done();
            consumed(&e, "a label selector requirement").map(|()| value)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let value = Object::default()
        .map("matchLabels", std::mem::take(&mut selector.match_labels))
        .list("matchExpressions", expressions)
        .done();
    consumed(&selector, "a label selector")?;
    Ok(Some(value))
}

fn container(mut c: core_v1::Container) -> Converted {
    let ports = std::mem::take(&mut c.ports)
        .into_iter()
        .map(|mut p| {
            let value = Object::default()
                .set("name", p.name.take())
                .set("containerPort", p.container_port.take())
                .set("hostPort", p.host_port.take().filter(|p| *p != 0))
                .set("protocol", p.protocol.take())
                .set("hostIP", p.host_ip.take())
                .done();
            consumed(&p, "a container port").map(|()| value)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let env = std::mem::take(&mut c.env)
        .into_iter()
        .map(|mut e| {
            let value = Object::default()
                .set("name", e.name.take())
                .set("value", e.value.take())
                .done();
            consumed(&e, "an environment variable").map(|()| value)
        })
        .collect::<Result<Vec<_>, _>>()?;
    let resources = match c.resources.take() {
        None => None,
        Some(mut r) => {
            let value = Object::default()
                .map("limits", quantities(std::mem::take(&mut r.limits)))
                .map("requests", quantities(std::mem::take(&mut r.requests)))
                .done();
            consumed(&r, "container resources")?;
            Some(value)
        }
    };
    let value = Object::default()
        .set("name", c.name.take())
        .set("image", c.image.take())
        .strings("command", std::mem::take(&mut c.command))
        .strings("args", std::mem::take(&mut c.args))
        .set("workingDir", c.working_dir.take())
        .list("ports", ports)
        .list("env", env)
        .set("resources", resources)
        .set("imagePullPolicy", c.image_pull_policy.take())
        .set("terminationMessagePath", c.termination_message_path.take())
        .set(
            "terminationMessagePolicy",
            c.termination_message_policy.take(),
        )
        .set("stdin", set_flag(c.stdin.take()))
        .set("stdinOnce", set_flag(c.stdin_once.take()))
        .set("tty", set_flag(c.tty.take()))
        .set(
            "securityContext",
            empty_message(c.security_context.take(), "a container security context")?,
        )
        .done();
    consumed(&c, "a container")?;
    Ok(value)
}

fn pod_spec(mut spec: core_v1::PodSpec) -> Converted {
    let containers = std::mem::take(&mut spec.containers)
        .into_iter()
        .map(container)
        .collect::<Result<Vec<_>, _>>()?;
    let init_containers = std::mem::take(&mut spec.init_containers)
        .into_iter()
        .map(container)
        .collect::<Result<Vec<_>, _>>()?;
    let value = Object::default()
        .list("initContainers", init_containers)
        .list("containers", containers)
        .set("restartPolicy", spec.restart_policy.take())
        .set(
            "terminationGracePeriodSeconds",
            spec.termination_grace_period_seconds.take(),
        )
        .set("activeDeadlineSeconds", spec.active_deadline_seconds.take())
        .set("dnsPolicy", spec.dns_policy.take())
        .map("nodeSelector", std::mem::take(&mut spec.node_selector))
        .set("serviceAccountName", spec.service_account_name.take())
        .set("nodeName", spec.node_name.take())
        .set("hostname", spec.hostname.take())
        .set("subdomain", spec.subdomain.take())
        .set("schedulerName", spec.scheduler_name.take())
        .set("priorityClassName", spec.priority_class_name.take())
        .set(
            "securityContext",
            empty_message(spec.security_context.take(), "a pod security context")?,
        )
        .done();
    consumed(&spec, "a pod spec")?;
    Ok(value)
}

fn pod_template(template: Option<core_v1::PodTemplateSpec>) -> Result<Option<Value>, ApiError> {
    let Some(mut template) = template else {
        return Ok(None);
    };
    let spec = template.spec.take().map(pod_spec).transpose()?;
    let value = Object::default()
        .set(
            "metadata",
            Some(super::protobuf::metadata(template.metadata.take())),
        )
        .set("spec", spec)
        .done();
    consumed(&template, "a pod template")?;
    Ok(Some(value))
}

/// apps/v1 Deployment.
pub(super) fn deployment(mut d: apps_v1::Deployment) -> Converted {
    let spec = match d.spec.take() {
        None => None,
        Some(mut s) => {
            let strategy = match s.strategy.take() {
                None => None,
                Some(mut st) => {
                    let rolling = match st.rolling_update.take() {
                        None => None,
                        Some(mut r) => {
                            let value = Object::default()
                                .set("maxUnavailable", int_or_string(r.max_unavailable.take()))
                                .set("maxSurge", int_or_string(r.max_surge.take()))
                                .done();
                            consumed(&r, "a rolling update")?;
                            Some(value)
                        }
                    };
                    let value = Object::default()
                        .set("type", st.r#type.take())
                        .set("rollingUpdate", rolling)
                        .done();
                    consumed(&st, "a deployment strategy")?;
                    Some(value)
                }
            };
            let value = Object::default()
                .set("replicas", s.replicas.take())
                .set("selector", label_selector(s.selector.take())?)
                .set("template", pod_template(s.template.take())?)
                .set("strategy", strategy)
                .set(
                    "minReadySeconds",
                    s.min_ready_seconds.take().filter(|s| *s != 0),
                )
                .set("revisionHistoryLimit", s.revision_history_limit.take())
                .set("paused", set_flag(s.paused.take()))
                .set(
                    "progressDeadlineSeconds",
                    s.progress_deadline_seconds.take(),
                )
                .done();
            consumed(&s, "a deployment spec")?;
            Some(value)
        }
    };
    d.status = None;
    let value = Object::default()
        .set(
            "metadata",
            Some(super::protobuf::metadata(d.metadata.take())),
        )
        .set("spec", spec)
        .done();
    consumed(&d, "a Deployment")?;
    Ok(value)
}

/// v1 Service.
pub(super) fn service(mut svc: core_v1::Service) -> Converted {
    let spec = match svc.spec.take() {
        None => None,
        Some(mut s) => {
            let ports = std::mem::take(&mut s.ports)
                .into_iter()
                .map(|mut p| {
                    let value = Object::default()
                        .set("name", p.name.take())
                        .set("protocol", p.protocol.take())
                        .set("appProtocol", p.app_protocol.take())
                        .set("port", p.port.take())
                        .set("targetPort", int_or_string(p.target_port.take()))
                        .set("nodePort", p.node_port.take().filter(|p| *p != 0))
                        .done();
                    consumed(&p, "a service port").map(|()| value)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let value = Object::default()
                .list("ports", ports)
                .map("selector", std::mem::take(&mut s.selector))
                .set("clusterIP", s.cluster_ip.take())
                .strings("clusterIPs", std::mem::take(&mut s.cluster_ips))
                .set("type", s.r#type.take())
                .strings("externalIPs", std::mem::take(&mut s.external_ips))
                .set("sessionAffinity", s.session_affinity.take())
                .set("externalName", s.external_name.take())
                .set("externalTrafficPolicy", s.external_traffic_policy.take())
                .set(
                    "publishNotReadyAddresses",
                    s.publish_not_ready_addresses.take(),
                )
                .strings("ipFamilies", std::mem::take(&mut s.ip_families))
                .set("ipFamilyPolicy", s.ip_family_policy.take())
                .set("internalTrafficPolicy", s.internal_traffic_policy.take())
                .done();
            consumed(&s, "a service spec")?;
            Some(value)
        }
    };
    svc.status = None;
    let value = Object::default()
        .set(
            "metadata",
            Some(super::protobuf::metadata(svc.metadata.take())),
        )
        .set("spec", spec)
        .done();
    consumed(&svc, "a Service")?;
    Ok(value)
}

fn job_spec(mut s: batch_v1::JobSpec) -> Converted {
    let value = Object::default()
        .set("parallelism", s.parallelism.take())
        .set("completions", s.completions.take())
        .set("activeDeadlineSeconds", s.active_deadline_seconds.take())
        .set("backoffLimit", s.backoff_limit.take())
        .set("selector", label_selector(s.selector.take())?)
        .set("manualSelector", s.manual_selector.take())
        .set("template", pod_template(s.template.take())?)
        .set(
            "ttlSecondsAfterFinished",
            s.ttl_seconds_after_finished.take(),
        )
        .set("completionMode", s.completion_mode.take())
        .set("suspend", s.suspend.take())
        .done();
    consumed(&s, "a job spec")?;
    Ok(value)
}

/// batch/v1 Job.
pub(super) fn job(mut job: batch_v1::Job) -> Converted {
    let spec = job.spec.take().map(job_spec).transpose()?;
    job.status = None;
    let value = Object::default()
        .set(
            "metadata",
            Some(super::protobuf::metadata(job.metadata.take())),
        )
        .set("spec", spec)
        .done();
    consumed(&job, "a Job")?;
    Ok(value)
}

/// batch/v1 CronJob.
pub(super) fn cron_job(mut cj: batch_v1::CronJob) -> Converted {
    let spec = match cj.spec.take() {
        None => None,
        Some(mut s) => {
            let template = match s.job_template.take() {
                None => None,
                Some(mut t) => {
                    let value = Object::default()
                        .set(
                            "metadata",
                            Some(super::protobuf::metadata(t.metadata.take())),
                        )
                        .set("spec", t.spec.take().map(job_spec).transpose()?)
                        .done();
                    consumed(&t, "a job template")?;
                    Some(value)
                }
            };
            let value = Object::default()
                .set("schedule", s.schedule.take())
                .set("timeZone", s.time_zone.take())
                .set(
                    "startingDeadlineSeconds",
                    s.starting_deadline_seconds.take(),
                )
                .set("concurrencyPolicy", s.concurrency_policy.take())
                .set("suspend", s.suspend.take())
                .set("jobTemplate", template)
                .set(
                    "successfulJobsHistoryLimit",
                    s.successful_jobs_history_limit.take(),
                )
                .set("failedJobsHistoryLimit", s.failed_jobs_history_limit.take())
                .done();
            consumed(&s, "a cron job spec")?;
            Some(value)
        }
    };
    cj.status = None;
    let value = Object::default()
        .set(
            "metadata",
            Some(super::protobuf::metadata(cj.metadata.take())),
        )
        .set("spec", spec)
        .done();
    consumed(&cj, "a CronJob")?;
    Ok(value)
}

/// authorization.k8s.io/v1 SelfSubjectAccessReview (`kubectl auth can-i`).
pub(super) fn self_subject_access_review(
    mut review: authorization_v1::SelfSubjectAccessReview,
) -> Converted {
    let mut spec = review.spec.take().unwrap_or_default();
    let resource = match spec.resource_attributes.take() {
        None => None,
        Some(mut r) => {
            let value = Object::default()
                .set("namespace", r.namespace.take())
                .set("verb", r.verb.take())
                .set("group", r.group.take())
                .set("version", r.version.take())
                .set("resource", r.resource.take())
                .set("subresource", r.subresource.take())
                .set("name", r.name.take())
                .done();
            consumed(&r, "resource attributes")?;
            Some(value)
        }
    };
    let non_resource = match spec.non_resource_attributes.take() {
        None => None,
        Some(mut n) => {
            let value = Object::default()
                .set("path", n.path.take())
                .set("verb", n.verb.take())
                .done();
            consumed(&n, "non-resource attributes")?;
            Some(value)
        }
    };
    consumed(&spec, "a self subject access review spec")?;
    review.status = None;
    let value = Object::default()
        .set(
            "metadata",
            Some(super::protobuf::metadata(review.metadata.take())),
        )
        .set(
            "spec",
            Some(
                Object::default()
                    .set("resourceAttributes", resource)
                    .set("nonResourceAttributes", non_resource)
                    .done(),
            ),
        )
        .done();
    consumed(&review, "a SelfSubjectAccessReview")?;
    Ok(value)
}

/// authorization.k8s.io/v1 SelfSubjectRulesReview (`kubectl auth can-i --list`).
pub(super) fn self_subject_rules_review(
    mut review: authorization_v1::SelfSubjectRulesReview,
) -> Converted {
    let mut spec = review.spec.take().unwrap_or_default();
    let namespace = spec.namespace.take();
    consumed(&spec, "a self subject rules review spec")?;
    review.status = None;
    let value = Object::default()
        .set(
            "metadata",
            Some(super::protobuf::metadata(review.metadata.take())),
        )
        .set(
            "spec",
            Some(Object::default().set("namespace", namespace).done()),
        )
        .done();
    consumed(&review, "a SelfSubjectRulesReview")?;
    Ok(value)
}
