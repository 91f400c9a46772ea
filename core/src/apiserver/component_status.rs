//! `componentstatuses` (v1, deprecated but still what `kubectl get cs` reads): the store's health,
//! and the scheduler's and controller manager's from their leader-election Leases in
//! `kube-system` — healthy while a leader keeps its Lease fresh, wherever that leader runs.

use super::handler::Ctx;
use super::ApiError;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

/// The Lease the scheduler's leader holds (`kube-system`).
pub const SCHEDULER_LEASE: &str = "capstan-scheduler";
/// The Lease the controller manager's leader holds (`kube-system`).
pub const CONTROLLER_MANAGER_LEASE: &str = "capstan-controller-manager";

/// One component's condition: `Some(Ok(message))` healthy, `Some(Err(error))` unhealthy,
/// `None` unknown.
type Health = Option<Result<String, String>>;

fn status(name: &str, health: Health) -> Value {
    let (status, message, error) = match health {
        Some(Ok(message)) => ("True", message, String::new()),
        Some(Err(error)) => ("False", String::new(), error),
        None => ("Unknown", String::new(), String::new()),
    };
    json!({
        "kind": "ComponentStatus", "apiVersion": "v1", "metadata": {"name": name},
        "conditions": [{"type": "Healthy", "status": status, "message": message, "error": error}],
    })
}

/// A leader's health from its Lease, as of `now`.
pub(crate) fn lease_health(lease: Option<&Value>, now: DateTime<Utc>) -> Health {
    let Some(spec) = lease.and_then(|l| l.get("spec")) else {
        return Some(Err("no leader has been elected (no Lease)".into()));
    };
    let holder = spec
        .get("holderIdentity")
        .and_then(Value::as_str)
        .filter(|h| !h.is_empty());
    let renewed = spec
        .get("renewTime")
        .and_then(Value::as_str)
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    let duration = spec
        .get("leaseDurationSeconds")
        .and_then(Value::as_i64)
        .unwrap_or(15);
    let (Some(holder), Some(renewed)) = (holder, renewed) else {
        return Some(Err("no current leader".into()));
    };
    let age = (now - renewed).num_seconds().max(0);
    if age <= duration {
        Some(Ok(format!("ok (leader {holder})")))
    } else {
        Some(Err(format!(
            "leader {holder} last renewed its lease {age}s ago (lease: {duration}s)"
        )))
    }
}

/// Serves `GET /api/v1/componentstatuses[/NAME]`.
pub(crate) async fn serve(ctx: &Ctx, verb: &str) -> Result<Value, ApiError> {
    let store_health = match ctx.state.storage.store().current_revision().await {
        Ok(_) => Some(Ok("ok".to_string())),
        Err(err) => Some(Err(format!("store unavailable: {err}"))),
    };
    let mut items = vec![status("store-0", store_health)];
    let leases = ctx
        .state
        .registry()
        .get("coordination.k8s.io", "v1", "leases")
        .cloned();
    for (name, lease) in [
        ("scheduler", SCHEDULER_LEASE),
        ("controller-manager", CONTROLLER_MANAGER_LEASE),
    ] {
        let health = match &leases {
            Some(kind) => {
                let lease = ctx
                    .state
                    .storage
                    .get(kind, Some("kube-system"), lease)
                    .await
                    .ok();
                lease_health(lease.as_ref(), Utc::now())
            }
            None => None,
        };
        items.push(status(name, health));
    }
    match (verb, ctx.path.name.as_deref()) {
        ("list", _) => Ok(
            json!({"kind": "ComponentStatusList", "apiVersion": "v1", "metadata": {}, "items": items}),
        ),
        ("get", Some(name)) => items
            .into_iter()
            .find(|item| item["metadata"]["name"] == name)
            .ok_or_else(|| ApiError::not_found("componentstatuses", name)),
        _ => Err(ApiError::method_not_allowed(
            "componentstatuses are read-only",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leases_say_whether_a_leader_is_current() {
        let now = DateTime::parse_from_rfc3339("2026-01-01T00:01:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let lease = |renewed: &str| json!({"spec": {"holderIdentity": "server-a-1", "leaseDurationSeconds": 15, "renewTime": renewed}});
        assert_eq!(
            lease_health(Some(&lease("2026-01-01T00:00:50.123456Z")), now),
            Some(Ok("ok (leader server-a-1)".into()))
        );
        let stale = lease_health(Some(&lease("2026-01-01T00:00:30Z")), now);
        assert!(
            matches!(&stale, Some(Err(e)) if e.contains("30s ago")),
            "{stale:?}"
        );
        assert!(matches!(lease_health(None, now), Some(Err(_))));
        let released = json!({"spec": {"holderIdentity": "", "renewTime": "2026-01-01T00:00:59Z"}});
        assert!(matches!(lease_health(Some(&released), now), Some(Err(_))));
    }
}
