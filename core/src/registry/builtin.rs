//! The built-in kinds with the names, subresources and field selectors Kubernetes serves them
//! with.

use super::{FieldSpec, ResourceKind};
use k8s_openapi::api::{
    apps, autoscaling, batch, coordination, core, discovery, events, policy, scheduling,
};

const STATUS: &[&str] = &["get", "patch", "update"];

/// How long Events live after their last write (kube-apiserver's `--event-ttl` default).
pub const EVENT_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

fn scaled(kind: ResourceKind) -> ResourceKind {
    kind.with_subresource("status", STATUS)
        .with_foreign_subresource("scale", "autoscaling", "v1", "Scale", STATUS)
}

/// Every built-in kind.
pub(super) fn kinds() -> Vec<ResourceKind> {
    let f = FieldSpec::new;
    vec![
        ResourceKind::of::<core::v1::Namespace>()
            .with_short_names(&["ns"])
            .with_subresource("status", STATUS)
            .with_subresource("finalize", &["update"])
            .with_fields([f("status.phase")]),
        ResourceKind::of::<core::v1::Pod>()
            .with_short_names(&["po"])
            .with_categories(&["all"])
            .with_subresource("status", STATUS)
            .with_foreign_subresource("binding", "", "v1", "Binding", &["create"])
            .with_foreign_subresource("eviction", "policy", "v1", "Eviction", &["create"])
            .with_foreign_subresource("log", "", "v1", "Pod", &["get"])
            .with_foreign_subresource("exec", "", "v1", "PodExecOptions", &["create", "get"])
            .with_foreign_subresource("attach", "", "v1", "PodAttachOptions", &["create", "get"])
            .with_foreign_subresource(
                "portforward",
                "",
                "v1",
                "PodPortForwardOptions",
                &["create", "get"],
            )
            .with_fields([
                f("spec.nodeName"),
                f("spec.restartPolicy"),
                f("spec.schedulerName"),
                f("spec.serviceAccountName"),
                f("spec.hostNetwork"),
                f("status.phase"),
                f("status.podIP"),
                f("status.nominatedNodeName"),
            ]),
        ResourceKind::of::<core::v1::Node>()
            .with_short_names(&["no"])
            .with_subresource("status", STATUS)
            .with_fields([f("spec.unschedulable")]),
        ResourceKind::of::<core::v1::Service>()
            .with_short_names(&["svc"])
            .with_categories(&["all"])
            .with_subresource("status", STATUS),
        ResourceKind::of::<core::v1::Endpoints>().with_short_names(&["ep"]),
        ResourceKind::of::<core::v1::ConfigMap>().with_short_names(&["cm"]),
        ResourceKind::of::<core::v1::Secret>().with_fields([f("type")]),
        ResourceKind::of::<core::v1::Event>()
            .with_short_names(&["ev"])
            .with_ttl(EVENT_TTL)
            .with_fields([
                f("involvedObject.kind"),
                f("involvedObject.namespace"),
                f("involvedObject.name"),
                f("involvedObject.uid"),
                f("involvedObject.apiVersion"),
                f("involvedObject.resourceVersion"),
                f("involvedObject.fieldPath"),
                f("reason"),
                f("reportingComponent"),
                FieldSpec::at("source", "/source/component"),
                f("type"),
            ]),
        ResourceKind::of::<core::v1::ServiceAccount>()
            .with_short_names(&["sa"])
            .with_foreign_subresource(
                "token",
                "authentication.k8s.io",
                "v1",
                "TokenRequest",
                &["create"],
            ),
        ResourceKind::of::<core::v1::ComponentStatus>().with_short_names(&["cs"]),
        ResourceKind::of::<
            k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition,
        >()
        .with_short_names(&["crd", "crds"])
        .with_categories(&["api-extensions"])
        .with_subresource("status", STATUS),
        ResourceKind::of::<k8s_openapi::api::certificates::v1::CertificateSigningRequest>()
            .with_short_names(&["csr"]),
        ResourceKind::of::<k8s_openapi::api::rbac::v1::Role>(),
        ResourceKind::of::<k8s_openapi::api::rbac::v1::RoleBinding>(),
        ResourceKind::of::<k8s_openapi::api::rbac::v1::ClusterRole>(),
        ResourceKind::of::<k8s_openapi::api::rbac::v1::ClusterRoleBinding>(),
        // Answered by the authorizer, never stored (create only).
        ResourceKind::new(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectAccessReview",
            "selfsubjectaccessreviews",
            false,
        ),
        ResourceKind::new(
            "authorization.k8s.io",
            "v1",
            "SelfSubjectRulesReview",
            "selfsubjectrulesreviews",
            false,
        ),
        // Answered with the requesting user, never stored (create only).
        ResourceKind::new(
            "authentication.k8s.io",
            "v1",
            "SelfSubjectReview",
            "selfsubjectreviews",
            false,
        ),
        // Served from the node agents' usage reports (read-only).
        ResourceKind::new("metrics.k8s.io", "v1beta1", "PodMetrics", "pods", true),
        ResourceKind::new("metrics.k8s.io", "v1beta1", "NodeMetrics", "nodes", false),
        scaled(
            ResourceKind::of::<apps::v1::Deployment>()
                .with_short_names(&["deploy"])
                .with_categories(&["all"]),
        ),
        scaled(
            ResourceKind::of::<apps::v1::ReplicaSet>()
                .with_short_names(&["rs"])
                .with_categories(&["all"]),
        )
        .with_fields([f("status.replicas")]),
        scaled(
            ResourceKind::of::<apps::v1::StatefulSet>()
                .with_short_names(&["sts"])
                .with_categories(&["all"]),
        ),
        ResourceKind::of::<apps::v1::DaemonSet>()
            .with_short_names(&["ds"])
            .with_categories(&["all"])
            .with_subresource("status", STATUS),
        ResourceKind::of::<apps::v1::ControllerRevision>(),
        ResourceKind::of::<batch::v1::Job>()
            .with_categories(&["all"])
            .with_subresource("status", STATUS)
            .with_fields([f("status.successful")]),
        ResourceKind::of::<batch::v1::CronJob>()
            .with_short_names(&["cj"])
            .with_categories(&["all"])
            .with_subresource("status", STATUS),
        ResourceKind::of::<coordination::v1::Lease>(),
        ResourceKind::of::<discovery::v1::EndpointSlice>(),
        ResourceKind::of::<events::v1::Event>()
            .with_short_names(&["ev"])
            .with_ttl(EVENT_TTL)
            .with_fields([
                f("regarding.kind"),
                f("regarding.namespace"),
                f("regarding.name"),
                f("regarding.uid"),
                f("reason"),
                f("reportingController"),
                f("type"),
            ]),
        ResourceKind::of::<policy::v1::PodDisruptionBudget>()
            .with_short_names(&["pdb"])
            .with_subresource("status", STATUS),
        ResourceKind::of::<scheduling::v1::PriorityClass>().with_short_names(&["pc"]),
        ResourceKind::of::<autoscaling::v2::HorizontalPodAutoscaler>()
            .with_short_names(&["hpa"])
            .with_categories(&["all"])
            .with_subresource("status", STATUS),
        // Served by conversion to the stored v2 form (apiserver::hpa_v1); listed after v2 so
        // v2 is the preferred version.
        ResourceKind::of::<autoscaling::v1::HorizontalPodAutoscaler>()
            .with_subresource("status", STATUS),
    ]
}
