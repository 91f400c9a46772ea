//! The CronJob controller: creates a Job from `jobTemplate` at each time `schedule` (standard
//! five-field cron syntax or `@hourly`, `@daily`…, parsed by croner) names in `timeZone`
//! (default UTC), honouring `suspend`, `startingDeadlineSeconds` (a run missed by more is
//! skipped), `concurrencyPolicy` (Allow, Forbid: skip while a Job runs, Replace: delete the
//! running Job first) and the successful/failed history limits, and reports `status.active`,
//! `lastScheduleTime` and `lastSuccessfulTime`.

use super::informer::Informer;
use super::job::finished;
use super::pod_facts::controller_of;
use super::runner::{Action, Reconciler};
use super::{object_reference, ControllerContext, ControllerError, EventType, ObjectKey};
use chrono::{DateTime, TimeZone, Utc};
use croner::parser::{CronParser, Seconds, Year};
use croner::Cron;
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The annotation on a Job recording the time it was scheduled for.
pub const SCHEDULED_TIMESTAMP: &str = "batch.kubernetes.io/cronjob-scheduled-timestamp";

/// Missed runs beyond this many are not counted one by one (Kubernetes' limit too).
const MAX_MISSED: usize = 100;

/// A parsed schedule in its time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    zone: chrono_tz::Tz,
}

impl Schedule {
    /// Parses `schedule` (five fields or a `@` nickname) for `time_zone` (an IANA name; `None`
    /// is UTC).
    pub fn parse(schedule: &str, time_zone: Option<&str>) -> Result<Self, String> {
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .year(Year::Disallowed)
            .build()
            .parse(schedule)
            .map_err(|e| format!("unparseable schedule {schedule:?}: {e}"))?;
        let zone = match time_zone {
            None | Some("") => chrono_tz::UTC,
            Some(name) => name
                .parse::<chrono_tz::Tz>()
                .map_err(|_| format!("unknown time zone {name:?}"))?,
        };
        Ok(Schedule { cron, zone })
    }

    /// The latest scheduled time in `(after, now]` and how many there were (capped).
    pub fn missed(
        &self,
        after: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> (Option<DateTime<Utc>>, usize) {
        let mut last = None;
        let mut count = 0;
        let mut cursor = after.with_timezone(&self.zone);
        while let Ok(next) = self.cron.find_next_occurrence(&cursor, false) {
            if next.with_timezone(&Utc) > now {
                break;
            }
            count += 1;
            last = Some(next.with_timezone(&Utc));
            if count >= MAX_MISSED {
                // Too many to walk: the most recent one is what matters.
                let latest = self
                    .cron
                    .find_previous_occurrence(&now.with_timezone(&self.zone), true)
                    .ok()
                    .map(|t| t.with_timezone(&Utc));
                return (latest.or(last), count);
            }
            cursor = next;
        }
        (last, count)
    }

    /// The first scheduled time after `now`.
    pub fn next_after(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        self.cron
            .find_next_occurrence(&now.with_timezone(&self.zone), false)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    }
}

fn to_chrono(t: Timestamp) -> DateTime<Utc> {
    Utc.timestamp_opt(t.as_second(), t.subsec_nanosecond().max(0) as u32)
        .single()
        .unwrap_or_default()
}

fn to_time(t: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// Reconciles CronJobs.
pub struct CronJobController {
    ctx: ControllerContext,
    cron_jobs: Informer<CronJob>,
    jobs: Informer<Job>,
}

impl CronJobController {
    /// A controller over the context's shared informers.
    pub fn new(ctx: &ControllerContext) -> Self {
        CronJobController {
            ctx: ctx.clone(),
            cron_jobs: ctx.informers.informer(),
            jobs: ctx.informers.informer(),
        }
    }

    /// The informer keys each change affects.
    pub(crate) fn triggers(
        &self,
        queue: &Arc<super::WorkQueue<ObjectKey>>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let own = super::triggers::enqueue_own(&self.cron_jobs, queue.clone(), stop.clone());
        let cron_jobs = self.cron_jobs.clone();
        let expectations = super::Expectations::default();
        let jobs = super::triggers::enqueue_changes(
            &self.jobs,
            queue.clone(),
            stop.clone(),
            move |change| super::triggers::owner_keys(change, "CronJob", &cron_jobs, &expectations),
        );
        vec![own, jobs]
    }

    fn job_from_template(cj: &CronJob, at: DateTime<Utc>) -> Job {
        let name = cj.metadata.name.clone().unwrap_or_default();
        let template = cj
            .spec
            .as_ref()
            .map(|s| s.job_template.clone())
            .unwrap_or_default();
        let mut metadata = template.metadata.unwrap_or_default();
        metadata.name = Some(format!("{name}-{}", at.timestamp() / 60));
        metadata.namespace = cj.metadata.namespace.clone();
        metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(
                SCHEDULED_TIMESTAMP.into(),
                at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            );
        metadata.owner_references = Some(vec![super::pod_facts::controller_reference(cj)]);
        Job {
            metadata,
            spec: template.spec,
            status: None,
        }
    }

    async fn delete_job(&self, job: &Job) -> Result<(), ControllerError> {
        let api: Api<Job> = Api::namespaced(
            self.ctx.client.clone(),
            job.metadata.namespace.as_deref().unwrap_or_default(),
        );
        match api
            .delete(
                job.metadata.name.as_deref().unwrap_or_default(),
                &DeleteParams::background(),
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if super::error::is_not_found(&err) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    /// Deletes the oldest finished Jobs beyond the history limits.
    async fn trim_history(&self, cj: &CronJob, jobs: &[Arc<Job>]) -> Result<(), ControllerError> {
        let spec = cj.spec.clone().unwrap_or_default();
        for (kind, limit) in [
            ("Complete", spec.successful_jobs_history_limit.unwrap_or(3)),
            ("Failed", spec.failed_jobs_history_limit.unwrap_or(1)),
        ] {
            let mut done: Vec<&Arc<Job>> = jobs
                .iter()
                .filter(|j| finished(j).is_some_and(|(k, _)| k == kind))
                .collect();
            done.sort_by_key(|j| j.metadata.creation_timestamp.as_ref().map(|t| t.0));
            let excess = done.len().saturating_sub(limit.max(0) as usize);
            for job in done.into_iter().take(excess) {
                self.delete_job(job).await?;
            }
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl Reconciler for CronJobController {
    fn name(&self) -> &str {
        "cronjob"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        let Some(cj) = self.cron_jobs.get(key) else {
            return Ok(Action::Done);
        };
        if cj.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let uid = cj.metadata.uid.clone().unwrap_or_default();
        let jobs: Vec<Arc<Job>> = self
            .jobs
            .owned_by(&uid)
            .into_iter()
            .filter(|j| controller_of(&j.metadata).is_some_and(|r| r.uid == uid))
            .collect();
        self.trim_history(&cj, &jobs).await?;
        let spec = cj.spec.clone().unwrap_or_default();
        let old = cj.status.clone().unwrap_or_default();
        let mut status = old.clone();
        let mut active: Vec<&Arc<Job>> = jobs
            .iter()
            .filter(|j| finished(j).is_none() && j.metadata.deletion_timestamp.is_none())
            .collect();
        status.last_successful_time = jobs
            .iter()
            .filter(|j| finished(j).is_some_and(|(k, _)| k == "Complete"))
            .filter_map(|j| j.status.as_ref()?.completion_time.clone())
            .max_by_key(|t| t.0)
            .or(old.last_successful_time.clone());
        let mut requeue = None;
        let schedule = match Schedule::parse(&spec.schedule, spec.time_zone.as_deref()) {
            Ok(s) => Some(s),
            Err(message) => {
                self.ctx.recorder.record_for(
                    cj.as_ref(),
                    EventType::Warning,
                    "UnparseableSchedule",
                    &message,
                );
                None
            }
        };
        if let (Some(schedule), false) = (&schedule, spec.suspend == Some(true)) {
            let now = Utc::now();
            let earliest = old
                .last_schedule_time
                .as_ref()
                .or(cj.metadata.creation_timestamp.as_ref())
                .map(|t| to_chrono(t.0))
                .unwrap_or(now);
            let (missed, count) = schedule.missed(earliest, now);
            if count >= MAX_MISSED {
                self.ctx.recorder.record_for(
                    cj.as_ref(),
                    EventType::Warning,
                    "TooManyMissedTimes",
                    "too many missed start times; check clock skew or set startingDeadlineSeconds",
                );
            }
            if let Some(at) = missed {
                let too_late = spec
                    .starting_deadline_seconds
                    .is_some_and(|deadline| (now - at).num_seconds() > deadline);
                let policy = spec.concurrency_policy.as_deref().unwrap_or("Allow");
                if too_late {
                    self.ctx.recorder.record_for(
                        cj.as_ref(),
                        EventType::Warning,
                        "MissSchedule",
                        &format!("Missed scheduled time to start a job: {}", at.to_rfc3339()),
                    );
                    status.last_schedule_time = Some(to_time(at));
                } else if policy == "Forbid" && !active.is_empty() {
                    // Not now: look again shortly, the running Job may finish in time.
                    requeue = Some(Duration::from_secs(1));
                } else {
                    if policy == "Replace" {
                        for job in active.drain(..) {
                            self.delete_job(job).await?;
                            self.ctx.recorder.record_for(
                                cj.as_ref(),
                                EventType::Normal,
                                "SuccessfulDelete",
                                &format!(
                                    "Deleted job {}",
                                    job.metadata.name.clone().unwrap_or_default()
                                ),
                            );
                        }
                    }
                    let job = Self::job_from_template(&cj, at);
                    let api: Api<Job> =
                        Api::namespaced(self.ctx.client.clone(), key.namespace_or_empty());
                    match api.create(&PostParams::default(), &job).await {
                        Ok(created) => {
                            self.ctx.recorder.record_for(
                                cj.as_ref(),
                                EventType::Normal,
                                "SuccessfulCreate",
                                &format!(
                                    "Created job {}",
                                    created.metadata.name.clone().unwrap_or_default()
                                ),
                            );
                        }
                        // Created by an earlier attempt whose status write was lost.
                        Err(err) if super::error::is_conflict(&err) => {}
                        Err(err) => return Err(err.into()),
                    }
                    status.last_schedule_time = Some(to_time(at));
                }
            }
            if let Some(next) = schedule.next_after(now) {
                let wait = (next - now).to_std().unwrap_or_default() + Duration::from_millis(100);
                requeue = Some(requeue.map_or(wait, |r: Duration| r.min(wait)));
            }
        }
        let mut refs: Vec<_> = active
            .iter()
            .map(|j| object_reference(j.as_ref()))
            .collect();
        // The Job just created shows up through the informer; keep it listed meanwhile.
        if let Some(at) = &status.last_schedule_time {
            if old.last_schedule_time.as_ref() != Some(at) {
                let name = format!(
                    "{}-{}",
                    cj.metadata.name.clone().unwrap_or_default(),
                    at.0.as_second() / 60
                );
                if !refs
                    .iter()
                    .any(|r| r.name.as_deref() == Some(name.as_str()))
                {
                    refs.push(k8s_openapi::api::core::v1::ObjectReference {
                        api_version: Some("batch/v1".into()),
                        kind: Some("Job".into()),
                        name: Some(name),
                        namespace: cj.metadata.namespace.clone(),
                        ..Default::default()
                    });
                }
            }
        }
        refs.sort_by(|a, b| a.name.cmp(&b.name));
        status.active = (!refs.is_empty()).then_some(refs);
        if status != old {
            let api: Api<CronJob> =
                Api::namespaced(self.ctx.client.clone(), key.namespace_or_empty());
            let mut patch = json!({"status": status});
            if status.active.is_none() {
                patch["status"]["active"] = serde_json::Value::Null;
            }
            if !crate::controller::status_patch::merge_status(&api, &key.name, patch).await? {
                return Ok(Action::Done);
            }
        }
        Ok(match requeue {
            Some(wait) => Action::RequeueAfter(wait),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn schedules_find_the_latest_missed_time_and_the_next_one() {
        let every_5 = Schedule::parse("*/5 * * * *", None).unwrap();
        let (last, count) = every_5.missed(at("2026-01-01T00:00:00Z"), at("2026-01-01T00:17:30Z"));
        assert_eq!(last, Some(at("2026-01-01T00:15:00Z")));
        assert_eq!(count, 3);
        assert_eq!(
            every_5.next_after(at("2026-01-01T00:17:30Z")),
            Some(at("2026-01-01T00:20:00Z"))
        );
        let hourly = Schedule::parse("@hourly", None).unwrap();
        assert_eq!(
            hourly.next_after(at("2026-01-01T10:20:00Z")),
            Some(at("2026-01-01T11:00:00Z"))
        );
        // Nothing missed inside the window.
        assert_eq!(
            hourly.missed(at("2026-01-01T10:00:00Z"), at("2026-01-01T10:59:59Z")),
            (None, 0)
        );
    }

    #[test]
    fn schedules_follow_their_time_zone() {
        // 09:00 in New York is 14:00 UTC in winter.
        let nine = Schedule::parse("0 9 * * *", Some("America/New_York")).unwrap();
        assert_eq!(
            nine.next_after(at("2026-01-15T00:00:00Z")),
            Some(at("2026-01-15T14:00:00Z"))
        );
        assert!(Schedule::parse("0 9 * * *", Some("Mars/Olympus")).is_err());
        assert!(Schedule::parse("not a schedule", None).is_err());
        assert!(
            Schedule::parse("0 0 9 * * *", None).is_err(),
            "seconds are not cron syntax"
        );
    }

    #[test]
    fn too_many_missed_times_still_give_the_latest() {
        let minutely = Schedule::parse("* * * * *", None).unwrap();
        let (last, count) = minutely.missed(at("2026-01-01T00:00:00Z"), at("2026-01-02T00:00:30Z"));
        assert_eq!(count, MAX_MISSED);
        assert_eq!(last, Some(at("2026-01-02T00:00:00Z")));
    }
}
