//! events.k8s.io/v1 Events, served through the stored core v1 Events, as Kubernetes serves both
//! from one storage: an Event a controller records through either API (kube-runtime's
//! `Recorder` and client-go's new events library write events.k8s.io/v1) is listed by both,
//! and `kubectl describe` finds it. The two forms differ only in names: `regarding` is
//! `involvedObject`, `note` is `message`, `reportingController` is `reportingComponent`, and the
//! core-only fields are kept as `deprecatedSource`, `deprecatedFirstTimestamp`,
//! `deprecatedLastTimestamp` and `deprecatedCount`.

use super::version_view::VersionView;
use serde_json::{json, Value};

/// events.k8s.io/v1 Events, served through the stored core v1 ones.
pub(crate) static VIEW: VersionView = VersionView {
    served_prefix: "/apis/events.k8s.io/v1/",
    stored_prefix: "/api/v1/",
    served_api_version: "events.k8s.io/v1",
    plural: "events",
    kind: "Event",
    up,
    down,
    renamed_fields: &[
        ("regarding.", "involvedObject."),
        ("reportingController", "reportingComponent"),
    ],
};

/// Member names: (events.k8s.io/v1, core v1).
const RENAMED: [(&str, &str); 7] = [
    ("regarding", "involvedObject"),
    ("note", "message"),
    ("reportingController", "reportingComponent"),
    ("deprecatedSource", "source"),
    ("deprecatedFirstTimestamp", "firstTimestamp"),
    ("deprecatedLastTimestamp", "lastTimestamp"),
    ("deprecatedCount", "count"),
];

fn renamed(mut object: Value, api_version: &str, to_core: bool) -> Value {
    if let Some(members) = object.as_object_mut() {
        for (served, stored) in RENAMED {
            let (from, to) = if to_core {
                (served, stored)
            } else {
                (stored, served)
            };
            if let Some(value) = members.remove(from) {
                members.insert(to.to_string(), value);
            }
        }
        members.insert("apiVersion".into(), json!(api_version));
    }
    object
}

/// An events.k8s.io/v1 Event as a core v1 Event.
fn up(object: Value) -> Value {
    renamed(object, "v1", true)
}

/// A core v1 Event as an events.k8s.io/v1 Event.
fn down(object: Value) -> Value {
    renamed(object, "events.k8s.io/v1", false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_forms_convert_both_ways_without_loss() {
        let core = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": "web.1", "namespace": "default"},
            "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default", "uid": "u1"},
            "reason": "Pulled", "message": "Container image already present", "type": "Normal",
            "source": {"component": "kubelet", "host": "n1"},
            "firstTimestamp": "2026-01-01T00:00:00Z", "lastTimestamp": "2026-01-01T00:00:05Z",
            "count": 2, "reportingComponent": "kubelet", "reportingInstance": "n1",
            "eventTime": null, "action": "Pull",
        });
        let events = down(core.clone());
        assert_eq!(events["apiVersion"], "events.k8s.io/v1");
        assert_eq!(events["regarding"]["name"], "web");
        assert_eq!(events["note"], "Container image already present");
        assert_eq!(events["reportingController"], "kubelet");
        assert_eq!(events["deprecatedCount"], 2);
        assert_eq!(events["deprecatedSource"]["host"], "n1");
        assert!(events.get("involvedObject").is_none() && events.get("message").is_none());
        assert_eq!(up(events), core);
    }

    #[test]
    fn only_events_paths_are_served_and_selectors_are_renamed() {
        assert!(VIEW.serves("/apis/events.k8s.io/v1/namespaces/x/events"));
        assert!(VIEW.serves("/apis/events.k8s.io/v1/watch/events"));
        assert!(!VIEW.serves("/api/v1/namespaces/x/events"));
        assert!(!VIEW.serves("/apis/events.k8s.io/v1"));
    }
}
