//! A Deployment's status from its ReplicaSets, and its `Available` and `Progressing`
//! conditions (what `kubectl rollout status` waits on).

use super::rollout::surge_and_unavailable;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus, ReplicaSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use std::time::Duration;

/// What happened in this sync, for the Progressing condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// A new ReplicaSet was created.
    Created,
    /// ReplicaSets were scaled.
    Scaled,
    /// Nothing changed.
    Idle,
}

fn now() -> Time {
    Time(k8s_openapi::jiff::Timestamp::now())
}

fn set_condition(conditions: &mut Vec<DeploymentCondition>, mut condition: DeploymentCondition) {
    if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == condition.type_) {
        if existing.status == condition.status {
            condition.last_transition_time = existing.last_transition_time.clone();
        }
        if existing.status == condition.status
            && existing.reason == condition.reason
            && existing.message == condition.message
        {
            // Unchanged: keep its timestamps.
            condition.last_update_time = existing.last_update_time.clone();
        }
        *existing = condition;
    } else {
        conditions.push(condition);
    }
}

fn condition(type_: &str, status: &str, reason: &str, message: String) -> DeploymentCondition {
    DeploymentCondition {
        type_: type_.into(),
        status: status.into(),
        reason: Some(reason.into()),
        message: Some(message),
        last_update_time: Some(now()),
        last_transition_time: Some(now()),
    }
}

/// The status of `deployment` given its new ReplicaSet (if any) and old ones, and when to look
/// again (for the progress deadline).
pub fn compute(
    deployment: &Deployment,
    new_rs: Option<&ReplicaSet>,
    old: &[&ReplicaSet],
    progress: Progress,
) -> (DeploymentStatus, Option<Duration>) {
    let spec = deployment.spec.clone().unwrap_or_default();
    let desired = spec.replicas.unwrap_or(1);
    let all: Vec<&ReplicaSet> = new_rs.into_iter().chain(old.iter().copied()).collect();
    let status_of = |rs: &ReplicaSet| rs.status.clone().unwrap_or_default();
    let replicas: i32 = all.iter().map(|rs| status_of(rs).replicas).sum();
    let updated = new_rs.map(|rs| status_of(rs).replicas).unwrap_or(0);
    let ready: i32 = all
        .iter()
        .map(|rs| status_of(rs).ready_replicas.unwrap_or(0))
        .sum();
    let available: i32 = all
        .iter()
        .map(|rs| status_of(rs).available_replicas.unwrap_or(0))
        .sum();
    let spec_total: i32 = all
        .iter()
        .map(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0))
        .sum();
    let old_status = deployment.status.clone().unwrap_or_default();
    let mut conditions = old_status.conditions.clone().unwrap_or_default();
    let (_, max_unavailable) = surge_and_unavailable(spec.strategy.as_ref(), desired);
    if available >= desired - max_unavailable {
        set_condition(
            &mut conditions,
            condition(
                "Available",
                "True",
                "MinimumReplicasAvailable",
                "Deployment has minimum availability.".into(),
            ),
        );
    } else {
        set_condition(
            &mut conditions,
            condition(
                "Available",
                "False",
                "MinimumReplicasUnavailable",
                "Deployment does not have minimum availability.".into(),
            ),
        );
    }
    let rs_name = new_rs
        .and_then(|rs| rs.metadata.name.clone())
        .unwrap_or_default();
    let complete = updated == desired && replicas == desired && available == desired;
    let deadline = spec
        .progress_deadline_seconds
        .map(|s| Duration::from_secs(s.max(0) as u64));
    let mut recheck = None;
    if spec.paused == Some(true) {
        set_condition(
            &mut conditions,
            condition(
                "Progressing",
                "Unknown",
                "DeploymentPaused",
                "Deployment is paused".into(),
            ),
        );
    } else if complete && new_rs.is_some() {
        set_condition(
            &mut conditions,
            condition(
                "Progressing",
                "True",
                "NewReplicaSetAvailable",
                format!("ReplicaSet \"{rs_name}\" has successfully progressed."),
            ),
        );
    } else if progress == Progress::Created {
        set_condition(
            &mut conditions,
            condition(
                "Progressing",
                "True",
                "NewReplicaSetCreated",
                format!("Created new replica set \"{rs_name}\""),
            ),
        );
    } else if progress == Progress::Scaled
        || updated > old_status.updated_replicas.unwrap_or(0)
        || ready > old_status.ready_replicas.unwrap_or(0)
        || available > old_status.available_replicas.unwrap_or(0)
    {
        // Any forward movement refreshes the progress clock.
        let mut c = condition(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{rs_name}\" is progressing."),
        );
        c.last_update_time = Some(now());
        if let Some(existing) = conditions.iter_mut().find(|c| c.type_ == "Progressing") {
            if existing.status == "True" {
                c.last_transition_time = existing.last_transition_time.clone();
            }
            *existing = c;
        } else {
            conditions.push(c);
        }
    }
    if let (Some(deadline), false) = (deadline, complete || spec.paused == Some(true)) {
        let progressing = conditions
            .iter()
            .find(|c| c.type_ == "Progressing")
            .cloned();
        if let Some(progressing) = progressing.filter(|c| c.status == "True") {
            let since = progressing
                .last_update_time
                .as_ref()
                .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0))
                .and_then(|d| Duration::try_from(d).ok())
                .unwrap_or_default();
            if since >= deadline {
                set_condition(
                    &mut conditions,
                    condition(
                        "Progressing",
                        "False",
                        "ProgressDeadlineExceeded",
                        format!("ReplicaSet \"{rs_name}\" has timed out progressing."),
                    ),
                );
            } else {
                recheck = Some(deadline - since + Duration::from_millis(100));
            }
        }
    }
    let status = DeploymentStatus {
        replicas: Some(replicas),
        updated_replicas: Some(updated),
        ready_replicas: Some(ready),
        available_replicas: Some(available),
        unavailable_replicas: Some((spec_total - available).max(0)),
        observed_generation: deployment.metadata.generation,
        collision_count: old_status.collision_count,
        conditions: Some(conditions),
        ..Default::default()
    };
    (status, recheck)
}
