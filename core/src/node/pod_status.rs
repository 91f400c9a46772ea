//! Building a pod's `status` from what the runtime reports: phase, conditions, container
//! statuses (state, lastState, restartCount, ready, started, ids) and QoS class.
//!
//! Pure functions over runtime facts; the worker decides what to run and writes the result.

use crate::runtime::{ContainerInfo, ContainerState};
use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// Formats a time the way Kubernetes serializes `metav1.Time` (whole seconds, UTC).
pub(crate) fn time_string(time: SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(time)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// Why a container is waiting, when the agent knows better than "ContainerCreating".
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Waiting {
    pub reason: String,
    pub message: String,
}

fn state_json(info: &ContainerInfo, runtime_name: &str) -> Value {
    match &info.state {
        ContainerState::Created => json!({"waiting": {"reason": "ContainerCreating"}}),
        ContainerState::Running { started_at } => {
            json!({"running": {"startedAt": time_string(*started_at)}})
        }
        ContainerState::Exited {
            exit_code,
            reason,
            started_at,
            finished_at,
        } => {
            let mut terminated = json!({
                "exitCode": exit_code,
                "reason": reason,
                "finishedAt": time_string(*finished_at),
                "containerID": format!("{runtime_name}://{}", info.id),
            });
            if let Some(started) = started_at {
                terminated["startedAt"] = json!(time_string(*started));
            }
            json!({ "terminated": terminated })
        }
    }
}

/// One entry of `containerStatuses` / `initContainerStatuses`. `instances` are the runtime's
/// containers for this spec container, newest (highest restart count) first.
pub(crate) fn container_status(
    spec: &Container,
    instances: &[ContainerInfo],
    waiting: Option<&Waiting>,
    ready: bool,
    started: bool,
    runtime_name: &str,
) -> Value {
    let image = spec.image.clone().unwrap_or_default();
    let mut status = json!({
        "name": spec.name,
        "image": image,
        "imageID": "",
        "ready": false,
        "restartCount": 0,
        "started": false,
        "state": {"waiting": {"reason": "ContainerCreating"}},
        "lastState": {},
    });
    if let Some(latest) = instances.first() {
        status["imageID"] = json!(latest.image_id);
        status["containerID"] = json!(format!("{runtime_name}://{}", latest.id));
        status["restartCount"] = json!(latest.restart_count());
        status["state"] = state_json(latest, runtime_name);
        let running = matches!(latest.state, ContainerState::Running { .. });
        status["ready"] = json!(running && ready);
        status["started"] = json!(running && started);
        if let Some(previous) = instances.get(1) {
            status["lastState"] = state_json(previous, runtime_name);
        }
        // A dead container about to be restarted is reported as waiting, its death as lastState.
        if let (Some(waiting), ContainerState::Exited { .. }) = (waiting, &latest.state) {
            status["lastState"] = state_json(latest, runtime_name);
            status["state"] =
                json!({"waiting": {"reason": waiting.reason, "message": waiting.message}});
        }
    } else if let Some(waiting) = waiting {
        status["state"] =
            json!({"waiting": {"reason": waiting.reason, "message": waiting.message}});
    }
    status
}

/// The pod's QoS class from its containers' requests and limits.
pub(crate) fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = &pod.spec else {
        return "BestEffort";
    };
    let all = spec
        .containers
        .iter()
        .chain(spec.init_containers.as_deref().unwrap_or_default());
    let mut any = false;
    let mut guaranteed = true;
    for container in all {
        let resources = container.resources.as_ref();
        let requests = resources
            .and_then(|r| r.requests.clone())
            .unwrap_or_default();
        let limits = resources.and_then(|r| r.limits.clone()).unwrap_or_default();
        if !requests.is_empty() || !limits.is_empty() {
            any = true;
        }
        for key in ["cpu", "memory"] {
            match (requests.get(key), limits.get(key)) {
                (_, None) => guaranteed = false,
                (Some(r), Some(l)) if r != l => guaranteed = false,
                _ => {}
            }
        }
    }
    match (any, guaranteed) {
        (false, _) => "BestEffort",
        (true, true) => "Guaranteed",
        (true, false) => "Burstable",
    }
}

/// Sets a condition, keeping its last transition time when its status did not change.
pub(crate) fn conditions(
    previous: Option<&Value>,
    wanted: &[(&str, bool, Option<&str>)],
    now: &str,
) -> Value {
    let old: BTreeMap<String, Map<String, Value>> = previous
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let c = c.as_object()?;
            Some((c.get("type")?.as_str()?.to_string(), c.clone()))
        })
        .collect();
    Value::Array(
        wanted
            .iter()
            .map(|(kind, ok, reason)| {
                let status = if *ok { "True" } else { "False" };
                let since = old
                    .get(*kind)
                    .filter(|c| c.get("status").and_then(Value::as_str) == Some(status))
                    .and_then(|c| c.get("lastTransitionTime").cloned())
                    .unwrap_or_else(|| json!(now));
                let mut condition = json!({
                    "type": kind, "status": status, "lastProbeTime": null, "lastTransitionTime": since,
                });
                if let Some(reason) = reason {
                    condition["reason"] = json!(reason);
                }
                condition
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn info(restarts: u32, state: ContainerState) -> ContainerInfo {
        ContainerInfo {
            id: format!("id{restarts}"),
            sandbox_id: "s".into(),
            image: "img:1".into(),
            image_id: "sha256:x".into(),
            state,
            labels: BTreeMap::from([(
                crate::runtime::labels::RESTART_COUNT.to_string(),
                restarts.to_string(),
            )]),
        }
    }

    #[test]
    fn crash_loop_reports_waiting_and_last_state() {
        let spec: Container =
            serde_json::from_value(json!({"name": "c", "image": "img:1"})).unwrap();
        let epoch = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let dead = info(
            2,
            ContainerState::Exited {
                exit_code: 1,
                reason: "Error".into(),
                started_at: Some(epoch),
                finished_at: epoch,
            },
        );
        let waiting = Waiting {
            reason: "CrashLoopBackOff".into(),
            message: "back-off 20s".into(),
        };
        let status = container_status(&spec, &[dead], Some(&waiting), true, true, "sim");
        assert_eq!(status["restartCount"], 2);
        assert_eq!(status["state"]["waiting"]["reason"], "CrashLoopBackOff");
        assert_eq!(status["lastState"]["terminated"]["exitCode"], 1);
        assert_eq!(status["ready"], false);
    }

    #[test]
    fn conditions_keep_transition_times() {
        let first = conditions(None, &[("Ready", true, None)], "T1");
        let previous = json!({"conditions": first});
        let same = conditions(Some(&previous), &[("Ready", true, None)], "T2");
        assert_eq!(same[0]["lastTransitionTime"], "T1");
        let flipped = conditions(Some(&previous), &[("Ready", false, None)], "T3");
        assert_eq!(flipped[0]["lastTransitionTime"], "T3");
    }
}
