//! The HorizontalPodAutoscaler controller (autoscaling/v2): every sync period, reads the scale
//! subresource of the target (Deployment, ReplicaSet or StatefulSet), the CPU or memory its
//! pods use from the metrics.k8s.io API (served from what node agents report) and what they
//! request, and sets `replicas` so that utilization (or average value) meets the target:
//! `ceil(ready pods × current / target)`, unchanged within a 10% tolerance, the largest over all
//! metrics, within `minReplicas…maxReplicas`. Recommendations are stabilized as Kubernetes does
//! (scaling down follows the highest recommendation of the scale-down window, 300 s by default;
//! scaling up the lowest of the scale-up window, 0 s by default). Reports `status` with the
//! current metrics and the AbleToScale, ScalingActive and ScalingLimited conditions.

use super::informer::Informer;
use super::pod_facts;
use super::runner::{Action, Reconciler};
use super::{ControllerContext, ControllerError, EventType, ObjectKey};
use crate::quantity::Quantity;
use crate::selector::LabelSelector;
use k8s_openapi::api::autoscaling::v2::{
    HorizontalPodAutoscaler, HorizontalPodAutoscalerCondition, HorizontalPodAutoscalerStatus,
    MetricSpec, MetricStatus, MetricValueStatus, ResourceMetricStatus,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as ApiQuantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Ratios within this distance of 1 change nothing.
const TOLERANCE: f64 = 0.1;

/// Settings of the autoscaler.
#[derive(Debug, Clone)]
pub struct AutoscalerConfig {
    /// How often each autoscaler looks at its metrics.
    pub sync_period: Duration,
}

impl Default for AutoscalerConfig {
    fn default() -> Self {
        AutoscalerConfig {
            sync_period: Duration::from_secs(15),
        }
    }
}

/// Reconciles HorizontalPodAutoscalers.
pub struct AutoscalerController {
    ctx: ControllerContext,
    autoscalers: Informer<HorizontalPodAutoscaler>,
    pods: Informer<Pod>,
    config: AutoscalerConfig,
    /// Recent recommendations per autoscaler, for stabilization.
    recommendations: Mutex<HashMap<ObjectKey, Vec<(Instant, i32)>>>,
}

/// What one metric asks for.
struct Proposal {
    replicas: i32,
    status: MetricStatus,
}

/// The replicas a usage-to-target ratio calls for, with Kubernetes' tolerance.
pub fn replicas_for_ratio(ratio: f64, current: i32, counted_pods: usize) -> i32 {
    if (ratio - 1.0).abs() <= TOLERANCE {
        current
    } else {
        (ratio * counted_pods as f64).ceil() as i32
    }
}

/// The stabilized recommendation: scaling down follows the highest recommendation within the
/// down window, scaling up the lowest within the up window.
pub fn stabilize(
    history: &[(Instant, i32)],
    now: Instant,
    current: i32,
    desired: i32,
    up_window: Duration,
    down_window: Duration,
) -> i32 {
    let within = |window: Duration| {
        history
            .iter()
            .filter(move |(at, _)| now.duration_since(*at) <= window)
            .map(|(_, r)| *r)
    };
    if desired < current {
        within(down_window)
            .chain([desired])
            .max()
            .unwrap_or(desired)
            .min(current)
    } else if desired > current {
        within(up_window)
            .chain([desired])
            .min()
            .unwrap_or(desired)
            .max(current)
    } else {
        current
    }
}

fn condition(
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
) -> HorizontalPodAutoscalerCondition {
    HorizontalPodAutoscalerCondition {
        type_: type_.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_transition_time: Some(Time(Timestamp::now())),
    }
}

fn amount(resource: &str, q: &ApiQuantity) -> i64 {
    match Quantity::try_from(q) {
        Ok(q) if resource == "cpu" => q.milli_value(),
        Ok(q) => q.value(),
        Err(_) => 0,
    }
}

fn quantity_of(resource: &str, amount: i64) -> ApiQuantity {
    if resource == "cpu" {
        ApiQuantity(format!("{amount}m"))
    } else {
        ApiQuantity(amount.to_string())
    }
}

/// The scale subresource path of a target.
fn scale_path(namespace: &str, api_version: &str, kind: &str, name: &str) -> Option<String> {
    let plural = match kind {
        "Deployment" => "deployments",
        "ReplicaSet" => "replicasets",
        "StatefulSet" => "statefulsets",
        _ => return None,
    };
    Some(format!(
        "/apis/{api_version}/namespaces/{namespace}/{plural}/{name}/scale"
    ))
}

impl AutoscalerController {
    /// A controller over the context's shared informers.
    pub fn new(ctx: &ControllerContext, config: AutoscalerConfig) -> Self {
        AutoscalerController {
            ctx: ctx.clone(),
            autoscalers: ctx.informers.informer(),
            pods: ctx.informers.informer(),
            config,
            recommendations: Mutex::new(HashMap::new()),
        }
    }

    /// The informer keys each change affects (metrics are polled, not watched).
    pub(crate) fn triggers(
        &self,
        queue: &Arc<super::WorkQueue<ObjectKey>>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        vec![super::triggers::enqueue_own(
            &self.autoscalers,
            queue.clone(),
            stop.clone(),
        )]
    }

    async fn request(
        &self,
        request: axum::http::Request<Vec<u8>>,
    ) -> Result<Value, ControllerError> {
        Ok(self.ctx.client.request::<Value>(request).await?)
    }

    /// Usage per pod name of `resource`, from metrics.k8s.io.
    async fn usage(
        &self,
        namespace: &str,
        resource: &str,
    ) -> Result<HashMap<String, i64>, ControllerError> {
        let request = axum::http::Request::get(format!(
            "/apis/metrics.k8s.io/v1beta1/namespaces/{namespace}/pods"
        ))
        .body(Vec::new())
        .map_err(|e| ControllerError::Invalid(e.to_string()))?;
        let list = self.request(request).await?;
        let mut usage = HashMap::new();
        for item in list["items"].as_array().into_iter().flatten() {
            let name = item["metadata"]["name"].as_str().unwrap_or_default();
            let total: i64 = item["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|c| c["usage"][resource].as_str())
                .map(|q| amount(resource, &ApiQuantity(q.to_string())))
                .sum();
            usage.insert(name.to_string(), total);
        }
        Ok(usage)
    }

    /// What one Resource metric asks for, over `pods`.
    async fn propose(
        &self,
        namespace: &str,
        metric: &MetricSpec,
        pods: &[Arc<Pod>],
        current: i32,
    ) -> Result<Proposal, String> {
        let source = metric
            .resource
            .as_ref()
            .filter(|_| metric.type_ == "Resource")
            .ok_or_else(|| {
                format!(
                    "metric type {:?} is not supported (only Resource)",
                    metric.type_
                )
            })?;
        let resource = source.name.as_str();
        let usage = self
            .usage(namespace, resource)
            .await
            .map_err(|e| format!("unable to get metrics for resource {resource}: {e}"))?;
        let mut used = 0i64;
        let mut requested = 0i64;
        let mut counted = 0usize;
        for pod in pods {
            let name = pod.metadata.name.as_deref().unwrap_or_default();
            let Some(u) = usage.get(name) else { continue };
            if !pod_facts::is_ready(pod) {
                continue;
            }
            counted += 1;
            used += u;
            requested += pod
                .spec
                .iter()
                .flat_map(|s| &s.containers)
                .filter_map(|c| c.resources.as_ref()?.requests.as_ref()?.get(resource))
                .map(|q| amount(resource, q))
                .sum::<i64>();
        }
        if counted == 0 {
            return Err(format!(
                "did not receive metrics for targeted pods (pods might be unready): {resource}"
            ));
        }
        let average = used / counted as i64;
        let target = &source.target;
        let (replicas, status) = match (target.average_utilization, &target.average_value) {
            (Some(percent), _) => {
                if requested == 0 {
                    return Err(format!("missing request for {resource} in containers"));
                }
                let utilization = used as f64 * 100.0 / requested as f64;
                let ratio = utilization / percent.max(1) as f64;
                (
                    replicas_for_ratio(ratio, current, counted),
                    MetricValueStatus {
                        average_utilization: Some(utilization.round() as i32),
                        average_value: Some(quantity_of(resource, average)),
                        value: None,
                    },
                )
            }
            (None, Some(value)) => {
                let per_pod = amount(resource, value).max(1);
                let ratio = average as f64 / per_pod as f64;
                (
                    replicas_for_ratio(ratio, current, counted),
                    MetricValueStatus {
                        average_utilization: None,
                        average_value: Some(quantity_of(resource, average)),
                        value: None,
                    },
                )
            }
            _ => {
                return Err(format!(
                    "the {resource} target needs averageUtilization or averageValue"
                ))
            }
        };
        Ok(Proposal {
            replicas,
            status: MetricStatus {
                type_: "Resource".into(),
                resource: Some(ResourceMetricStatus {
                    name: resource.into(),
                    current: status,
                }),
                ..Default::default()
            },
        })
    }
}

#[async_trait::async_trait]
impl Reconciler for AutoscalerController {
    fn name(&self) -> &str {
        "horizontalpodautoscaler"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        let Some(hpa) = self.autoscalers.get(key) else {
            self.recommendations
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(key);
            return Ok(Action::Done);
        };
        let namespace = key.namespace_or_empty();
        let spec = hpa.spec.clone().unwrap_or_default();
        let target = &spec.scale_target_ref;
        let old = hpa.status.clone().unwrap_or_default();
        let mut status = HorizontalPodAutoscalerStatus {
            observed_generation: hpa.metadata.generation,
            last_scale_time: old.last_scale_time.clone(),
            ..Default::default()
        };
        let mut conditions = Vec::new();
        let api_version = target
            .api_version
            .clone()
            .unwrap_or_else(|| "apps/v1".into());
        let Some(path) = scale_path(namespace, &api_version, &target.kind, &target.name) else {
            conditions.push(condition(
                "AbleToScale",
                false,
                "FailedGetScale",
                &format!("the HPA controller cannot scale {}", target.kind),
            ));
            status.conditions = Some(conditions);
            self.write_status(key, &old, status).await?;
            return Ok(Action::RequeueAfter(self.config.sync_period));
        };
        let get = axum::http::Request::get(&path)
            .body(Vec::new())
            .map_err(|e| ControllerError::Invalid(e.to_string()))?;
        let scale = match self.request(get).await {
            Ok(scale) => scale,
            Err(err) => {
                conditions.push(condition(
                    "AbleToScale",
                    false,
                    "FailedGetScale",
                    &err.to_string(),
                ));
                status.conditions = Some(conditions);
                self.write_status(key, &old, status).await?;
                return Ok(Action::RequeueAfter(self.config.sync_period));
            }
        };
        let current = scale["spec"]["replicas"].as_i64().unwrap_or(0) as i32;
        status.current_replicas = Some(
            scale["status"]["replicas"]
                .as_i64()
                .unwrap_or(current as i64) as i32,
        );
        status.desired_replicas = current;
        if current == 0 {
            conditions.push(condition(
                "ScalingActive",
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count of the target is zero",
            ));
            status.conditions = Some(conditions);
            self.write_status(key, &old, status).await?;
            return Ok(Action::RequeueAfter(self.config.sync_period));
        }
        let selector = scale["status"]["selector"]
            .as_str()
            .and_then(|s| s.parse::<LabelSelector>().ok());
        let pods: Vec<Arc<Pod>> = match &selector {
            Some(selector) => self
                .pods
                .in_namespace(namespace)
                .into_iter()
                .filter(|p| {
                    pod_facts::is_active(p)
                        && selector.matches(&p.metadata.labels.clone().unwrap_or_default())
                })
                .collect(),
            None => Vec::new(),
        };
        let metrics = spec.metrics.clone().filter(|m| !m.is_empty()).unwrap_or_else(|| {
            // autoscaling/v1's default: 80% CPU.
            vec![serde_json::from_value(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}}})).unwrap_or_default()]
        });
        let mut wanted: Option<i32> = None;
        let mut current_metrics = Vec::new();
        let mut failure = None;
        for metric in &metrics {
            match self.propose(namespace, metric, &pods, current).await {
                Ok(p) => {
                    wanted = Some(wanted.map_or(p.replicas, |w| w.max(p.replicas)));
                    current_metrics.push(p.status);
                }
                Err(message) => failure = Some(message),
            }
        }
        let min = spec.min_replicas.unwrap_or(1).max(1);
        let max = spec.max_replicas.max(min);
        let Some(raw) = wanted else {
            let message = failure.unwrap_or_else(|| "no metrics".into());
            conditions.push(condition(
                "AbleToScale",
                true,
                "SucceededGetScale",
                "the HPA controller was able to get the target's current scale",
            ));
            conditions.push(condition(
                "ScalingActive",
                false,
                "FailedGetResourceMetric",
                &message,
            ));
            status.conditions = Some(conditions);
            self.write_status(key, &old, status).await?;
            return Ok(Action::RequeueAfter(self.config.sync_period));
        };
        let limited = raw.clamp(min, max);
        let window = |rules: Option<&k8s_openapi::api::autoscaling::v2::HPAScalingRules>,
                      default: i32| {
            Duration::from_secs(
                rules
                    .and_then(|r| r.stabilization_window_seconds)
                    .unwrap_or(default)
                    .max(0) as u64,
            )
        };
        let behavior = spec.behavior.clone().unwrap_or_default();
        let now = Instant::now();
        let desired = {
            let mut all = self
                .recommendations
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let history = all.entry(key.clone()).or_default();
            let up = window(behavior.scale_up.as_ref(), 0);
            let down = window(behavior.scale_down.as_ref(), 300);
            let longest = up.max(down);
            history.retain(|(at, _)| now.duration_since(*at) <= longest);
            let desired = stabilize(history, now, current, limited, up, down);
            history.push((now, limited));
            desired
        };
        status.desired_replicas = desired;
        status.current_metrics = Some(current_metrics);
        conditions.push(condition(
            "AbleToScale",
            true,
            "ReadyForNewScale",
            "recommended size matches current size",
        ));
        conditions.push(condition(
            "ScalingActive",
            true,
            "ValidMetricFound",
            "the HPA was able to successfully calculate a replica count",
        ));
        conditions.push(if raw != limited {
            condition(
                "ScalingLimited",
                true,
                if raw > max {
                    "TooManyReplicas"
                } else {
                    "TooFewReplicas"
                },
                "the desired replica count is outside the allowed range",
            )
        } else {
            condition(
                "ScalingLimited",
                false,
                "DesiredWithinRange",
                "the desired count is within the acceptable range",
            )
        });
        if desired != current {
            let patch = axum::http::Request::patch(&path)
                .header("content-type", "application/merge-patch+json")
                .body(
                    serde_json::to_vec(&json!({"spec": {"replicas": desired}})).unwrap_or_default(),
                )
                .map_err(|e| ControllerError::Invalid(e.to_string()))?;
            self.request(patch).await?;
            status.last_scale_time = Some(Time(Timestamp::now()));
            let reason = current_metrics_summary(&status);
            self.ctx.recorder.record_for(
                hpa.as_ref(),
                EventType::Normal,
                "SuccessfulRescale",
                &format!("New size: {desired}; reason: {reason}"),
            );
        }
        status.conditions = Some(conditions);
        self.write_status(key, &old, status).await?;
        Ok(Action::RequeueAfter(self.config.sync_period))
    }
}

fn current_metrics_summary(status: &HorizontalPodAutoscalerStatus) -> String {
    let parts: Vec<String> = status
        .current_metrics
        .iter()
        .flatten()
        .filter_map(|m| m.resource.as_ref())
        .map(|r| match r.current.average_utilization {
            Some(u) => format!(
                "{} resource utilization (percentage of request) {u}%",
                r.name
            ),
            None => format!("{} resource average value", r.name),
        })
        .collect();
    if parts.is_empty() {
        "metrics".into()
    } else {
        parts.join(", ")
    }
}

impl AutoscalerController {
    /// Writes `status` unless only the conditions' times differ from `old`.
    async fn write_status(
        &self,
        key: &ObjectKey,
        old: &HorizontalPodAutoscalerStatus,
        mut status: HorizontalPodAutoscalerStatus,
    ) -> Result<(), ControllerError> {
        // Keep transition times of conditions whose state did not change.
        let previous: BTreeMap<String, HorizontalPodAutoscalerCondition> = old
            .conditions
            .iter()
            .flatten()
            .map(|c| (c.type_.clone(), c.clone()))
            .collect();
        for c in status.conditions.iter_mut().flatten() {
            if let Some(p) = previous.get(&c.type_) {
                if p.status == c.status && p.reason == c.reason && p.message == c.message {
                    c.last_transition_time = p.last_transition_time.clone();
                }
            }
        }
        if &status == old {
            return Ok(());
        }
        let api: Api<HorizontalPodAutoscaler> =
            Api::namespaced(self.ctx.client.clone(), key.namespace_or_empty());
        match api
            .patch_status(
                &key.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if super::error::is_not_found(&err) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios_within_tolerance_keep_the_count() {
        assert_eq!(replicas_for_ratio(1.05, 3, 3), 3);
        assert_eq!(replicas_for_ratio(2.0, 3, 3), 6);
        assert_eq!(replicas_for_ratio(0.5, 4, 4), 2);
        assert_eq!(replicas_for_ratio(6.0, 1, 1), 6);
    }

    #[test]
    fn scaling_down_waits_for_the_window_and_up_follows_the_lowest() {
        let now = Instant::now();
        let ago = |s: u64| now - Duration::from_secs(s);
        let history = [(ago(200), 5), (ago(100), 4), (ago(10), 2)];
        let five_min = Duration::from_secs(300);
        // Down: the highest recommendation in the window holds.
        assert_eq!(stabilize(&history, now, 5, 1, Duration::ZERO, five_min), 5);
        assert_eq!(
            stabilize(
                &history,
                now,
                5,
                1,
                Duration::ZERO,
                Duration::from_secs(150)
            ),
            4
        );
        assert_eq!(
            stabilize(&history, now, 5, 1, Duration::ZERO, Duration::ZERO),
            1
        );
        // Up with no window: at once.
        assert_eq!(stabilize(&history, now, 2, 6, Duration::ZERO, five_min), 6);
        // Up with a window: the lowest recommendation in it.
        assert_eq!(
            stabilize(&history, now, 2, 6, Duration::from_secs(60), five_min),
            2
        );
    }
}
