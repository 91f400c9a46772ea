//! The Job controller: runs a Job's pods to completion — `parallelism` at a time until
//! `completions` succeed (or, without `completions`, until one succeeds and the rest stop),
//! one pod per index in `Indexed` mode — recreating failed pods after an exponential back-off,
//! failing the Job past `backoffLimit` failures or `activeDeadlineSeconds`, honouring `suspend`,
//! reporting `status` (active, ready, succeeded, failed, completedIndexes, Complete/Failed
//! conditions) and deleting finished Jobs `ttlSecondsAfterFinished` after they finish.
//!
//! Counts are taken from the Job's pods as they exist (finished pods are kept until the Job is
//! deleted), without Kubernetes' tracking finalizers.

use super::expectations::Expectations;
use super::informer::Informer;
use super::pod_facts::{self, controller_of, controller_reference};
use super::runner::{Action, Reconciler};
use super::{ControllerContext, ControllerError, EventType, ObjectKey};
use k8s_openapi::api::batch::v1::{Job, JobCondition};
use k8s_openapi::api::core::v1::{EnvVar, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams, PropagationPolicy};
use serde_json::json;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

/// The annotation and label carrying an Indexed Job pod's completion index.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// Pods created per reconcile at most.
const BURST: usize = 500;

/// Settings of the Job controller.
#[derive(Debug, Clone)]
pub struct JobConfig {
    /// The delay before recreating a pod after the first failure; doubled per further failure.
    pub backoff: Duration,
    /// The longest such delay.
    pub max_backoff: Duration,
}

impl Default for JobConfig {
    fn default() -> Self {
        JobConfig {
            backoff: Duration::from_secs(10),
            max_backoff: Duration::from_secs(360),
        }
    }
}

/// Reconciles Jobs.
pub struct JobController {
    ctx: ControllerContext,
    jobs: Informer<Job>,
    pods: Informer<Pod>,
    expectations: Arc<Expectations>,
    config: JobConfig,
}

/// What a Job's pods say.
#[derive(Default)]
struct Tally {
    active: Vec<Arc<Pod>>,
    succeeded: usize,
    failed: usize,
    ready: usize,
    /// Indexes with a succeeded pod (Indexed mode).
    succeeded_indexes: BTreeSet<i32>,
    /// Indexes with an active pod (Indexed mode).
    active_indexes: BTreeSet<i32>,
    /// Container restarts of active pods (they count as failures under OnFailure).
    restarts: usize,
    /// When the last failed pod finished.
    last_failure: Option<Timestamp>,
}

fn index_of(pod: &Pod) -> Option<i32> {
    pod.metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(COMPLETION_INDEX))
        .and_then(|v| v.parse().ok())
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

fn finished_at(pod: &Pod) -> Option<Timestamp> {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|t| t.0)
        .max()
        .or_else(|| pod.metadata.creation_timestamp.as_ref().map(|t| t.0))
}

fn tally(pods: &[Arc<Pod>]) -> Tally {
    let mut t = Tally::default();
    for pod in pods {
        match phase(pod) {
            Some("Succeeded") => {
                t.succeeded += 1;
                if let Some(i) = index_of(pod) {
                    t.succeeded_indexes.insert(i);
                }
            }
            Some("Failed") => {
                t.failed += 1;
                t.last_failure = t.last_failure.max(finished_at(pod));
            }
            _ if pod.metadata.deletion_timestamp.is_none() => {
                if pod_facts::is_ready(pod) {
                    t.ready += 1;
                }
                t.restarts += pod
                    .status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .map(|cs| cs.iter().map(|c| c.restart_count.max(0) as usize).sum())
                    .unwrap_or(0);
                if let Some(i) = index_of(pod) {
                    t.active_indexes.insert(i);
                }
                t.active.push(pod.clone());
            }
            _ => {}
        }
    }
    t
}

/// `0-2,4,6-7` as Kubernetes writes completed indexes.
fn format_indexes(indexes: &BTreeSet<i32>) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut run: Option<(i32, i32)> = None;
    for &i in indexes {
        run = match run {
            Some((a, b)) if i == b + 1 => Some((a, i)),
            Some((a, b)) => {
                parts.push(if a == b {
                    a.to_string()
                } else {
                    format!("{a}-{b}")
                });
                Some((i, i))
            }
            None => Some((i, i)),
        };
    }
    if let Some((a, b)) = run {
        parts.push(if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        });
    }
    parts.join(",")
}

fn condition(type_: &str, reason: &str, message: &str) -> JobCondition {
    let now = Time(Timestamp::now());
    JobCondition {
        type_: type_.into(),
        status: "True".into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(now.clone()),
        last_transition_time: Some(now),
    }
}

/// Whether the Job has finished (a Complete or Failed condition that is True), and when.
pub fn finished(job: &Job) -> Option<(&str, Option<Timestamp>)> {
    job.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        .map(|c| {
            (
                c.type_.as_str(),
                c.last_transition_time.as_ref().map(|t| t.0),
            )
        })
}

/// A new pod for the Job (for `index` in Indexed mode).
fn pod_for(job: &Job, index: Option<i32>) -> Result<Pod, ControllerError> {
    let name = job.metadata.name.clone().unwrap_or_default();
    let template = job
        .spec
        .as_ref()
        .map(|s| s.template.clone())
        .ok_or_else(|| ControllerError::Invalid("the Job has no spec".into()))?;
    let mut metadata = template.metadata.unwrap_or_default();
    let mut spec = template.spec.unwrap_or_default();
    metadata.name = None;
    metadata.namespace = job.metadata.namespace.clone();
    metadata.owner_references = Some(vec![controller_reference(job)]);
    match index {
        Some(i) => {
            metadata.generate_name = Some(format!("{name}-{i}-"));
            metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(COMPLETION_INDEX.into(), i.to_string());
            metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(COMPLETION_INDEX.into(), i.to_string());
            spec.hostname = Some(format!("{name}-{i}"));
            for c in spec
                .containers
                .iter_mut()
                .chain(spec.init_containers.iter_mut().flatten())
            {
                let env = c.env.get_or_insert_with(Vec::new);
                env.retain(|e| e.name != "JOB_COMPLETION_INDEX");
                env.push(EnvVar {
                    name: "JOB_COMPLETION_INDEX".into(),
                    value: Some(i.to_string()),
                    value_from: None,
                });
            }
        }
        None => metadata.generate_name = Some(format!("{name}-")),
    }
    Ok(Pod {
        metadata,
        spec: Some(spec),
        status: None,
    })
}

impl JobController {
    /// A controller over the context's shared informers.
    pub fn new(ctx: &ControllerContext, config: JobConfig) -> Self {
        JobController {
            ctx: ctx.clone(),
            jobs: ctx.informers.informer(),
            pods: ctx.informers.informer(),
            expectations: Arc::new(Expectations::default()),
            config,
        }
    }

    /// The informer keys each change affects.
    pub(crate) fn triggers(
        &self,
        queue: &Arc<super::WorkQueue<ObjectKey>>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let own = super::triggers::enqueue_own(&self.jobs, queue.clone(), stop.clone());
        let jobs = self.jobs.clone();
        let expectations = self.expectations.clone();
        let pods = super::triggers::enqueue_changes(
            &self.pods,
            queue.clone(),
            stop.clone(),
            move |change| super::triggers::owner_keys(change, "Job", &jobs, &expectations),
        );
        vec![own, pods]
    }

    /// The delay before the next pod may start after `failures` failures.
    fn backoff(&self, failures: usize) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let factor = 1u32 << (failures - 1).min(16);
        self.config
            .backoff
            .saturating_mul(factor)
            .min(self.config.max_backoff)
    }

    async fn delete_pods(&self, job: &Job, pods: &[Arc<Pod>]) -> Result<(), ControllerError> {
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            job.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let key = ObjectKey::of(job);
        self.expectations.expect(&key, 0, pods.len() as i64);
        let results = futures::future::join_all(pods.iter().map(|p| {
            let name = p.metadata.name.clone().unwrap_or_default();
            let api = api.clone();
            async move { (api.delete(&name, &DeleteParams::background()).await, name) }
        }))
        .await;
        for (result, name) in results {
            match result {
                Ok(_) => self.ctx.recorder.record_for(
                    job,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!("Deleted pod: {name}"),
                ),
                Err(err) => {
                    self.expectations.deletion_observed(&key);
                    if !super::error::is_not_found(&err) {
                        return Err(err.into());
                    }
                }
            }
        }
        Ok(())
    }

    async fn create_pods(
        &self,
        job: &Job,
        indexes: Vec<Option<i32>>,
    ) -> Result<(), ControllerError> {
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            job.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let key = ObjectKey::of(job);
        self.expectations.expect(&key, indexes.len() as i64, 0);
        let templates: Vec<Pod> = indexes
            .into_iter()
            .map(|i| pod_for(job, i))
            .collect::<Result<_, _>>()?;
        let params = PostParams::default();
        let results =
            futures::future::join_all(templates.iter().map(|pod| api.create(&params, pod))).await;
        let mut failure = None;
        for result in results {
            match result {
                Ok(pod) => self.ctx.recorder.record_for(
                    job,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!("Created pod: {}", pod.metadata.name.unwrap_or_default()),
                ),
                Err(err) => {
                    self.expectations.creation_observed(&key);
                    failure.get_or_insert(err);
                }
            }
        }
        match failure {
            Some(err) => {
                self.ctx.recorder.record_for(
                    job,
                    EventType::Warning,
                    "FailedCreate",
                    &format!("Error creating: {err}"),
                );
                Err(err.into())
            }
            None => Ok(()),
        }
    }

    /// Deletes a finished Job once its time to live has passed; otherwise says when to look again.
    async fn expire(
        &self,
        job: &Job,
        finished_at: Option<Timestamp>,
    ) -> Result<Action, ControllerError> {
        let Some(ttl) = job.spec.as_ref().and_then(|s| s.ttl_seconds_after_finished) else {
            return Ok(Action::Done);
        };
        let finished_at = job
            .status
            .as_ref()
            .and_then(|s| s.completion_time.as_ref())
            .map(|t| t.0)
            .or(finished_at)
            .unwrap_or_else(Timestamp::now);
        let elapsed =
            Duration::try_from(Timestamp::now().duration_since(finished_at)).unwrap_or_default();
        let ttl = Duration::from_secs(ttl.max(0) as u64);
        if elapsed < ttl {
            return Ok(Action::RequeueAfter(
                ttl - elapsed + Duration::from_millis(50),
            ));
        }
        let api: Api<Job> = Api::namespaced(
            self.ctx.client.clone(),
            job.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let params = DeleteParams {
            propagation_policy: Some(PropagationPolicy::Background),
            preconditions: Some(kube::api::Preconditions {
                uid: job.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api
            .delete(job.metadata.name.as_deref().unwrap_or_default(), &params)
            .await
        {
            Ok(_) => Ok(Action::Done),
            Err(err) if super::error::is_not_found(&err) => Ok(Action::Done),
            Err(err) => Err(err.into()),
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for JobController {
    fn name(&self) -> &str {
        "job"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        let Some(job) = self.jobs.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        if job.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let uid = job.metadata.uid.clone().unwrap_or_default();
        let pods: Vec<Arc<Pod>> = self
            .pods
            .owned_by(&uid)
            .into_iter()
            .filter(|p| controller_of(&p.metadata).is_some_and(|r| r.uid == uid))
            .collect();
        let t = tally(&pods);
        if let Some((_, finished_at)) = finished(&job) {
            // Finished: nothing may still run.
            if !t.active.is_empty() {
                self.delete_pods(&job, &t.active).await?;
            }
            return self.expire(&job, finished_at).await;
        }
        let spec = job.spec.clone().unwrap_or_default();
        let old = job.status.clone().unwrap_or_default();
        let mut status = old.clone();
        let mut conditions = old.conditions.clone().unwrap_or_default();
        let now = Timestamp::now();
        let suspended = spec.suspend == Some(true);
        let indexed = spec.completion_mode.as_deref() == Some("Indexed");
        let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
        let completions = spec.completions.map(|c| c.max(0) as usize);
        let on_failure = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.restart_policy.as_deref())
            == Some("OnFailure");
        let failures = t.failed + if on_failure { t.restarts } else { 0 };
        let backoff_limit = spec.backoff_limit.unwrap_or(6).max(0) as usize;
        if status.start_time.is_none() && !suspended {
            status.start_time = Some(Time(now));
        }
        let deadline = spec
            .active_deadline_seconds
            .zip(status.start_time.as_ref())
            .filter(|_| !suspended)
            .map(|(secs, start)| {
                let elapsed = Duration::try_from(now.duration_since(start.0)).unwrap_or_default();
                Duration::from_secs(secs.max(0) as u64).saturating_sub(elapsed)
            });
        let complete = match (indexed, completions) {
            (true, Some(n)) => (0..n as i32).all(|i| t.succeeded_indexes.contains(&i)),
            (false, Some(n)) => t.succeeded >= n,
            (_, None) => t.succeeded >= 1 && t.active.is_empty(),
        };
        let mut requeue = None;
        let failure = if failures > backoff_limit {
            Some((
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ))
        } else if deadline == Some(Duration::ZERO) {
            Some((
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ))
        } else {
            None
        };
        if let Some((reason, message)) = failure {
            self.delete_pods(&job, &t.active).await?;
            conditions.push(condition("FailureTarget", reason, message));
            conditions.push(condition("Failed", reason, message));
            self.ctx
                .recorder
                .record_for(job.as_ref(), EventType::Warning, reason, message);
        } else if complete {
            conditions.push(condition(
                "SuccessCriteriaMet",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            conditions.push(condition(
                "Complete",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ));
            status.completion_time = Some(Time(now));
            self.ctx.recorder.record_for(
                job.as_ref(),
                EventType::Normal,
                "Completed",
                "Job completed",
            );
        } else if suspended {
            if !t.active.is_empty() {
                self.delete_pods(&job, &t.active).await?;
            }
            if !conditions
                .iter()
                .any(|c| c.type_ == "Suspended" && c.status == "True")
            {
                conditions.retain(|c| c.type_ != "Suspended");
                conditions.push(condition("Suspended", "JobSuspended", "Job suspended"));
            }
        } else {
            if let Some(c) = conditions.iter_mut().find(|c| c.type_ == "Suspended") {
                if c.status == "True" {
                    *c = condition("Suspended", "JobResumed", "Job resumed");
                    c.status = "False".into();
                }
            }
            if self.expectations.satisfied(key) {
                let wanted: Vec<Option<i32>> = if indexed {
                    let n = completions.unwrap_or(0) as i32;
                    (0..n)
                        .filter(|i| {
                            !t.succeeded_indexes.contains(i) && !t.active_indexes.contains(i)
                        })
                        .take(parallelism.saturating_sub(t.active.len()))
                        .map(Some)
                        .collect()
                } else {
                    let target = match completions {
                        Some(n) => parallelism.min(n.saturating_sub(t.succeeded)),
                        None if t.succeeded > 0 => 0,
                        None => parallelism,
                    };
                    if t.active.len() > target {
                        let mut surplus: Vec<Arc<Pod>> = t.active.clone();
                        surplus.sort_by(|a, b| pod_facts::deletion_order(a, b));
                        surplus.truncate(t.active.len() - target);
                        self.delete_pods(&job, &surplus).await?;
                    }
                    vec![None; target.saturating_sub(t.active.len())]
                };
                if !wanted.is_empty() {
                    // After failures, new pods wait out the back-off.
                    let wait = t
                        .last_failure
                        .map(|at| {
                            let since =
                                Duration::try_from(now.duration_since(at)).unwrap_or_default();
                            self.backoff(failures).saturating_sub(since)
                        })
                        .unwrap_or_default();
                    if wait.is_zero() {
                        let mut wanted = wanted;
                        wanted.truncate(BURST);
                        self.create_pods(&job, wanted).await?;
                    } else {
                        requeue = Some(wait);
                    }
                }
            }
            requeue = match (requeue, deadline) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        status.active = Some(t.active.len() as i32);
        status.ready = Some(t.ready as i32);
        status.succeeded = Some(t.succeeded as i32);
        status.failed = Some(t.failed as i32);
        status.completed_indexes = (indexed && !t.succeeded_indexes.is_empty())
            .then(|| format_indexes(&t.succeeded_indexes));
        status.conditions = (!conditions.is_empty()).then_some(conditions);
        if status != old {
            let api: Api<Job> = Api::namespaced(self.ctx.client.clone(), key.namespace_or_empty());
            if !crate::controller::status_patch::merge_status(
                &api,
                &key.name,
                json!({"status": status}),
            )
            .await?
            {
                return Ok(Action::Done);
            }
        }
        Ok(match requeue {
            Some(wait) => Action::RequeueAfter(wait + Duration::from_millis(20)),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completed_indexes_are_written_as_ranges() {
        let set = |v: &[i32]| v.iter().copied().collect::<BTreeSet<i32>>();
        assert_eq!(format_indexes(&set(&[])), "");
        assert_eq!(format_indexes(&set(&[3])), "3");
        assert_eq!(format_indexes(&set(&[0, 1, 2, 4, 6, 7])), "0-2,4,6-7");
    }
}
