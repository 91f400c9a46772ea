//! The Rust type behind each built-in kind, for code that needs the type itself (decoding for
//! type checks, JSON schemas for OpenAPI). One table, visited generically.

use crate::registry::ResourceKind;
use k8s_openapi::api::{
    apps, autoscaling, batch, coordination, core, discovery, events, policy, scheduling,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Something done with a built-in kind's type.
pub trait BuiltinVisitor {
    /// What the visit yields.
    type Output;
    /// Visits the type `T` of the kind.
    fn visit<T: DeserializeOwned + Serialize + schemars::JsonSchema>(self) -> Self::Output;
}

/// Visits the type of a built-in kind; `None` for other kinds.
pub fn visit_builtin<V: BuiltinVisitor>(kind: &ResourceKind, visitor: V) -> Option<V::Output> {
    Some(
        match (
            kind.group.as_str(),
            kind.version.as_str(),
            kind.kind.as_str(),
        ) {
            ("", "v1", "Namespace") => visitor.visit::<core::v1::Namespace>(),
            ("", "v1", "Pod") => visitor.visit::<core::v1::Pod>(),
            ("", "v1", "Node") => visitor.visit::<core::v1::Node>(),
            ("", "v1", "Service") => visitor.visit::<core::v1::Service>(),
            ("", "v1", "Endpoints") => visitor.visit::<core::v1::Endpoints>(),
            ("", "v1", "ConfigMap") => visitor.visit::<core::v1::ConfigMap>(),
            ("", "v1", "Secret") => visitor.visit::<core::v1::Secret>(),
            ("", "v1", "Event") => visitor.visit::<core::v1::Event>(),
            ("", "v1", "ServiceAccount") => visitor.visit::<core::v1::ServiceAccount>(),
            ("", "v1", "ComponentStatus") => visitor.visit::<core::v1::ComponentStatus>(),
            ("apps", "v1", "Deployment") => visitor.visit::<apps::v1::Deployment>(),
            ("apps", "v1", "ReplicaSet") => visitor.visit::<apps::v1::ReplicaSet>(),
            ("apps", "v1", "StatefulSet") => visitor.visit::<apps::v1::StatefulSet>(),
            ("apps", "v1", "DaemonSet") => visitor.visit::<apps::v1::DaemonSet>(),
            ("apps", "v1", "ControllerRevision") => visitor.visit::<apps::v1::ControllerRevision>(),
            ("batch", "v1", "Job") => visitor.visit::<batch::v1::Job>(),
            ("batch", "v1", "CronJob") => visitor.visit::<batch::v1::CronJob>(),
            ("coordination.k8s.io", "v1", "Lease") => visitor.visit::<coordination::v1::Lease>(),
            ("discovery.k8s.io", "v1", "EndpointSlice") => {
                visitor.visit::<discovery::v1::EndpointSlice>()
            }
            ("events.k8s.io", "v1", "Event") => visitor.visit::<events::v1::Event>(),
            ("policy", "v1", "PodDisruptionBudget") => {
                visitor.visit::<policy::v1::PodDisruptionBudget>()
            }
            ("scheduling.k8s.io", "v1", "PriorityClass") => {
                visitor.visit::<scheduling::v1::PriorityClass>()
            }
            ("autoscaling", "v2", "HorizontalPodAutoscaler") => {
                visitor.visit::<autoscaling::v2::HorizontalPodAutoscaler>()
            }
            _ => return None,
        },
    )
}
