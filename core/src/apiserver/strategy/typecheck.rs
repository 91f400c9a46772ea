//! Type checking of built-in kinds: an object must decode as its k8s-openapi type, so a wrong
//! type anywhere (a string where a port number belongs, an object where a list belongs) is a
//! 400 naming the field, as Kubernetes' decoder reports it, instead of being stored.

use super::super::ApiError;
use crate::registry::ResourceKind;
use k8s_openapi::api::{
    apps, autoscaling, batch, coordination, core, discovery, events, policy, scheduling,
};
use serde::de::DeserializeOwned;
use serde_json::Value;

fn decode<T: DeserializeOwned>(kind: &ResourceKind, object: &Value) -> Result<(), ApiError> {
    let mut tracked = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(object, &mut tracked);
    match T::deserialize(deserializer) {
        Ok(_) => Ok(()),
        Err(err) => {
            let path = tracked.path().to_string();
            Err(ApiError::bad_request(format!(
                "{} in version {:?} cannot be handled as a {}: {}: {err}",
                kind.kind,
                kind.version,
                kind.kind,
                if path == "." {
                    "<root>".to_string()
                } else {
                    path
                }
            )))
        }
    }
}

/// Checks that `object` decodes as the kind's built-in type (other kinds pass).
pub fn check_types(kind: &ResourceKind, object: &Value) -> Result<(), ApiError> {
    match (kind.group.as_str(), kind.kind.as_str()) {
        ("", "Namespace") => decode::<core::v1::Namespace>(kind, object),
        ("", "Pod") => decode::<core::v1::Pod>(kind, object),
        ("", "Node") => decode::<core::v1::Node>(kind, object),
        ("", "Service") => decode::<core::v1::Service>(kind, object),
        ("", "Endpoints") => decode::<core::v1::Endpoints>(kind, object),
        ("", "ConfigMap") => decode::<core::v1::ConfigMap>(kind, object),
        ("", "Secret") => decode::<core::v1::Secret>(kind, object),
        ("", "Event") => decode::<core::v1::Event>(kind, object),
        ("", "ServiceAccount") => decode::<core::v1::ServiceAccount>(kind, object),
        ("apps", "Deployment") => decode::<apps::v1::Deployment>(kind, object),
        ("apps", "ReplicaSet") => decode::<apps::v1::ReplicaSet>(kind, object),
        ("apps", "StatefulSet") => decode::<apps::v1::StatefulSet>(kind, object),
        ("apps", "DaemonSet") => decode::<apps::v1::DaemonSet>(kind, object),
        ("apps", "ControllerRevision") => decode::<apps::v1::ControllerRevision>(kind, object),
        ("batch", "Job") => decode::<batch::v1::Job>(kind, object),
        ("batch", "CronJob") => decode::<batch::v1::CronJob>(kind, object),
        ("coordination.k8s.io", "Lease") => decode::<coordination::v1::Lease>(kind, object),
        ("discovery.k8s.io", "EndpointSlice") => {
            decode::<discovery::v1::EndpointSlice>(kind, object)
        }
        ("events.k8s.io", "Event") => decode::<events::v1::Event>(kind, object),
        ("policy", "PodDisruptionBudget") => {
            decode::<policy::v1::PodDisruptionBudget>(kind, object)
        }
        ("scheduling.k8s.io", "PriorityClass") => {
            decode::<scheduling::v1::PriorityClass>(kind, object)
        }
        ("autoscaling", "HorizontalPodAutoscaler") => {
            decode::<autoscaling::v2::HorizontalPodAutoscaler>(kind, object)
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;
    use serde_json::json;

    #[test]
    fn wrong_types_name_their_path() {
        let registry = Registry::with_builtins();
        let pods = registry.get("", "v1", "pods").unwrap();
        let good = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": 80}]}]}});
        assert!(check_types(pods, &good).is_ok());
        let bad = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "eighty"}]}]}});
        let err = check_types(pods, &bad).unwrap_err();
        assert_eq!(err.code, 400);
        assert!(
            err.message
                .contains("spec.containers[0].ports[0].containerPort"),
            "{}",
            err.message
        );
        let bad = json!({"metadata": {"name": "p"}, "spec": "nope"});
        assert!(check_types(pods, &bad)
            .unwrap_err()
            .message
            .contains("spec"));
    }
}
