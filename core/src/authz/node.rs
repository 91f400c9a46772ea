//! The Node authorizer: a node agent (user `system:node:<name>` in group `system:nodes`) may
//! read and write only what its node needs — its own Node and Lease, the pods bound to it
//! (listed and watched with `fieldSelector=spec.nodeName=<name>`), the Secrets and ConfigMaps
//! those pods use — plus reading Services, Endpoints, EndpointSlices and Namespaces for its
//! proxy and DNS, and writing Events. Which pods are bound where is read from the store under
//! the API server at decision time. Requests from anyone else, and what this authorizer has no
//! opinion on, go to the next authorizer (RBAC).

use super::rbac::denial;
use crate::apiserver::{ApiError, Authorizer, RequestAttributes, UserInfo};
use crate::store::{ListOptions, Store};
use async_trait::async_trait;
use k8s_openapi::api::rbac::v1::PolicyRule;
use serde_json::Value;
use std::sync::Arc;

/// The group of node agents.
pub const NODES_GROUP: &str = "system:nodes";
/// Node agents' user names are this prefix and the node's name.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// The name of the node `user` is, if it is a node agent.
pub fn node_name_of(user: &UserInfo) -> Option<&str> {
    if !user.groups.iter().any(|g| g == NODES_GROUP) {
        return None;
    }
    user.name
        .strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty())
}

enum Decision {
    Allow,
    Deny(String),
    NoOpinion,
}

/// Authorizes node agents by what is bound to their node; everyone else by `next`.
pub struct NodeAuthorizer {
    store: Arc<dyn Store>,
    next: Arc<dyn Authorizer>,
}

impl std::fmt::Debug for NodeAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeAuthorizer").finish_non_exhaustive()
    }
}

fn reads(verb: &str) -> bool {
    matches!(verb, "get" | "list" | "watch")
}

fn bound_to(pod: &Value, node: &str) -> bool {
    pod.pointer("/spec/nodeName").and_then(Value::as_str) == Some(node)
}

/// Whether `pod` uses the Secret (`secrets`), ConfigMap (`configmaps`) or ServiceAccount
/// (`serviceaccounts`) named `name`.
fn pod_uses(pod: &Value, plural: &str, name: &str) -> bool {
    if plural == "serviceaccounts" {
        let account = pod
            .pointer("/spec/serviceAccountName")
            .and_then(Value::as_str)
            .filter(|a| !a.is_empty())
            .unwrap_or("default");
        return account == name;
    }
    let (volume_key, volume_name, env_ref, env_from) = match plural {
        "secrets" => ("secret", "secretName", "secretKeyRef", "secretRef"),
        _ => ("configMap", "name", "configMapKeyRef", "configMapRef"),
    };
    let named = |v: Option<&Value>, key: &str| {
        v.and_then(|v| v.get(key)).and_then(Value::as_str) == Some(name)
    };
    let spec = pod.get("spec");
    let volumes = spec
        .and_then(|s| s.get("volumes"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten();
    for volume in volumes {
        if named(volume.get(volume_key), volume_name) {
            return true;
        }
        let sources = volume
            .pointer("/projected/sources")
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        for source in sources {
            if named(source.get(volume_key), "name") {
                return true;
            }
        }
    }
    if plural == "secrets" {
        let pulls = spec
            .and_then(|s| s.get("imagePullSecrets"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten();
        if pulls.into_iter().any(|p| named(Some(p), "name")) {
            return true;
        }
    }
    ["containers", "initContainers", "ephemeralContainers"]
        .iter()
        .filter_map(|key| spec.and_then(|s| s.get(*key)).and_then(Value::as_array))
        .flatten()
        .any(|container| {
            let env = container
                .get("env")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|e| named(e.pointer("/valueFrom").and_then(|v| v.get(env_ref)), "name"));
            let env_from = container
                .get("envFrom")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .any(|e| named(e.get(env_from), "name"));
            env || env_from
        })
}

/// Whether a field selector restricts to `spec.nodeName=<node>`.
fn selects_node(selector: Option<&str>, node: &str) -> bool {
    selector.is_some_and(|s| {
        s.split(',').any(|term| {
            let term = term.trim();
            term == format!("spec.nodeName={node}") || term == format!("spec.nodeName=={node}")
        })
    })
}

impl NodeAuthorizer {
    /// Node agents by the objects in `store`; everyone else (and anything this authorizer has
    /// no opinion on) by `next`.
    pub fn new(store: Arc<dyn Store>, next: Arc<dyn Authorizer>) -> Self {
        NodeAuthorizer { store, next }
    }

    async fn pod(&self, namespace: &str, name: &str) -> Result<Option<Value>, ApiError> {
        let key = format!("/core/pods/{namespace}/{name}");
        match self.store.get(&key).await {
            Ok(Some(kv)) => Ok(crate::storage::read_stored(&kv.value)),
            Ok(None) => Ok(None),
            Err(err) => Err(ApiError::internal(format!("node authorizer: {err}"))),
        }
    }

    async fn used_by_bound_pod(
        &self,
        node: &str,
        namespace: &str,
        plural: &str,
        name: &str,
    ) -> Result<bool, ApiError> {
        let prefix = format!("/core/pods/{namespace}/");
        let page = self
            .store
            .list(&prefix, ListOptions::default())
            .await
            .map_err(|e| ApiError::internal(format!("node authorizer: {e}")))?;
        Ok(page.items.iter().any(|kv| {
            crate::storage::read_stored::<Value>(&kv.value)
                .is_some_and(|pod| bound_to(&pod, node) && pod_uses(&pod, plural, name))
        }))
    }

    async fn decide(&self, node: &str, a: &RequestAttributes) -> Result<Decision, ApiError> {
        if a.path.is_some() {
            return Ok(Decision::NoOpinion);
        }
        let namespace = a.namespace.as_deref().unwrap_or_default();
        let name = a.name.as_deref();
        let sub = a.subresource.as_deref();
        let verb = a.verb.as_str();
        Ok(match (a.group.as_str(), a.resource.as_str()) {
            ("", "nodes") if sub.is_none() && reads(verb) => Decision::Allow,
            // Which Node a create makes is checked by `NodeRestriction` (the name is in the
            // body, not the path).
            ("", "nodes") if verb == "create" && name.is_none() => Decision::Allow,
            ("", "nodes") if matches!(sub, None | Some("status")) && name == Some(node) => {
                Decision::Allow
            }
            ("", "nodes") => Decision::Deny(format!("node {node:?} may change only its own Node")),
            ("coordination.k8s.io", "leases") => {
                if namespace == "kube-node-lease"
                    && (name == Some(node) || (verb == "create" && name.is_none()))
                {
                    Decision::Allow
                } else {
                    Decision::Deny(format!("node {node:?} may use only its own Lease"))
                }
            }
            ("", "pods") if matches!(verb, "list" | "watch") => {
                if sub.is_none() && selects_node(a.field_selector.as_deref(), node) {
                    Decision::Allow
                } else {
                    Decision::Deny(format!(
                        "node {node:?} may list only its own pods (fieldSelector spec.nodeName={node})"
                    ))
                }
            }
            ("", "pods")
                if matches!(sub, None | Some("status") | Some("log"))
                    && matches!(verb, "get" | "update" | "patch" | "delete") =>
            {
                match (name, self.pod(namespace, name.unwrap_or_default()).await?) {
                    (Some(_), Some(pod)) if bound_to(&pod, node) => Decision::Allow,
                    // Absent: the request answers 404 and reveals nothing.
                    (Some(_), None) => Decision::Allow,
                    _ => Decision::Deny(format!("node {node:?} may use only pods bound to it")),
                }
            }
            ("", "pods") => Decision::Deny(format!("node {node:?} may not {verb} pods")),
            ("", plural @ ("secrets" | "configmaps")) => match name {
                Some(object) if verb == "get" => {
                    if self
                        .used_by_bound_pod(node, namespace, plural, object)
                        .await?
                    {
                        Decision::Allow
                    } else {
                        Decision::Deny(format!(
                            "no pod bound to node {node:?} uses {plural} {namespace}/{object}"
                        ))
                    }
                }
                _ => Decision::Deny(format!("node {node:?} may only get {plural} its pods use")),
            },
            ("", "serviceaccounts") if sub == Some("token") && verb == "create" => {
                let account = name.unwrap_or_default();
                if self
                    .used_by_bound_pod(node, namespace, "serviceaccounts", account)
                    .await?
                {
                    Decision::Allow
                } else {
                    Decision::Deny(format!(
                        "no pod bound to node {node:?} runs as {namespace}/{account}"
                    ))
                }
            }
            ("", "events") | ("events.k8s.io", "events")
                if matches!(verb, "create" | "update" | "patch") =>
            {
                Decision::Allow
            }
            ("", "services" | "endpoints" | "namespaces")
            | ("discovery.k8s.io", "endpointslices")
                if sub.is_none() && reads(verb) =>
            {
                Decision::Allow
            }
            ("authorization.k8s.io", "selfsubjectaccessreviews") if verb == "create" => {
                Decision::Allow
            }
            _ => Decision::NoOpinion,
        })
    }
}

/// Admission for node agents' writes, as Kubernetes' NodeRestriction: the Node and Lease a
/// node creates or changes must be its own (the authorizer cannot see a create's name).
#[derive(Debug, Clone, Copy, Default)]
pub struct NodeRestriction;

#[async_trait]
impl crate::apiserver::AdmissionPlugin for NodeRestriction {
    fn name(&self) -> &str {
        "NodeRestriction"
    }

    async fn validate(
        &self,
        request: &crate::apiserver::AdmissionRequest<'_>,
        _object: &Value,
    ) -> Result<(), ApiError> {
        let Some(node) = node_name_of(request.user) else {
            return Ok(());
        };
        let own = match (request.kind.group.as_str(), request.kind.plural.as_str()) {
            ("", "nodes") => request.name == node,
            ("coordination.k8s.io", "leases") => {
                request.namespace == Some("kube-node-lease") && request.name == node
            }
            _ => return Ok(()),
        };
        if own {
            Ok(())
        } else {
            Err(ApiError::forbidden(format!(
                "node {node:?} may not write {} {:?} (NodeRestriction)",
                request.kind.plural, request.name
            )))
        }
    }
}

#[async_trait]
impl Authorizer for NodeAuthorizer {
    async fn authorize(
        &self,
        user: &UserInfo,
        attributes: &RequestAttributes,
    ) -> Result<(), ApiError> {
        let Some(node) = node_name_of(user) else {
            return self.next.authorize(user, attributes).await;
        };
        match self.decide(node, attributes).await? {
            Decision::Allow => Ok(()),
            Decision::Deny(reason) => {
                let mut err = denial(user, attributes);
                err.message = format!("{}: {reason}", err.message);
                Err(err)
            }
            Decision::NoOpinion => self.next.authorize(user, attributes).await,
        }
    }

    /// What RBAC grants; a node's own objects, decided per request, are not listed.
    fn rules_for(&self, user: &UserInfo, namespace: Option<&str>) -> Option<Vec<PolicyRule>> {
        self.next.rules_for(user, namespace)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::AllowAll;
    use crate::store::MemoryStore;
    use bytes::Bytes;
    use serde_json::json;

    struct DenyAll;

    #[async_trait]
    impl Authorizer for DenyAll {
        async fn authorize(&self, user: &UserInfo, a: &RequestAttributes) -> Result<(), ApiError> {
            Err(denial(user, a))
        }
    }

    fn request(
        verb: &str,
        resource: &str,
        namespace: &str,
        name: Option<&str>,
    ) -> RequestAttributes {
        let (group, resource) = match resource.split_once(':') {
            Some((g, r)) => (g.to_string(), r.to_string()),
            None => (String::new(), resource.to_string()),
        };
        let (resource, subresource) = match resource.split_once('/') {
            Some((r, s)) => (r.to_string(), Some(s.to_string())),
            None => (resource, None),
        };
        RequestAttributes {
            verb: verb.into(),
            group,
            resource,
            subresource,
            namespace: (!namespace.is_empty()).then(|| namespace.to_string()),
            name: name.map(str::to_string),
            path: None,
            field_selector: None,
        }
    }

    #[tokio::test]
    async fn nodes_reach_only_their_own_objects() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let pod = |name: &str, node: &str| {
            Bytes::from(
                json!({"metadata": {"name": name}, "spec": {"nodeName": node,
                    "volumes": [{"name": "v", "secret": {"secretName": format!("{name}-secret")}}],
                    "containers": [{"name": "c", "envFrom": [{"configMapRef": {"name": format!("{name}-config")}}]}]}})
                .to_string(),
            )
        };
        store
            .create("/core/pods/ns/mine", pod("mine", "a"), None)
            .await
            .unwrap();
        store
            .create("/core/pods/ns/theirs", pod("theirs", "b"), None)
            .await
            .unwrap();
        let authorizer = NodeAuthorizer::new(store, Arc::new(DenyAll));
        let node_a = UserInfo {
            name: "system:node:a".into(),
            groups: vec![NODES_GROUP.into(), "system:authenticated".into()],
        };
        let allowed = |a: RequestAttributes| {
            let authorizer = &authorizer;
            let node_a = node_a.clone();
            async move { authorizer.authorize(&node_a, &a).await.is_ok() }
        };
        assert!(allowed(request("get", "nodes", "", Some("b"))).await);
        assert!(allowed(request("patch", "nodes/status", "", Some("a"))).await);
        assert!(!allowed(request("patch", "nodes/status", "", Some("b"))).await);
        assert!(!allowed(request("delete", "nodes", "", Some("b"))).await);
        assert!(
            allowed(request(
                "update",
                "coordination.k8s.io:leases",
                "kube-node-lease",
                Some("a")
            ))
            .await
        );
        assert!(
            !allowed(request(
                "update",
                "coordination.k8s.io:leases",
                "kube-node-lease",
                Some("b")
            ))
            .await
        );
        assert!(allowed(request("patch", "pods/status", "ns", Some("mine"))).await);
        assert!(!allowed(request("patch", "pods/status", "ns", Some("theirs"))).await);
        assert!(!allowed(request("delete", "pods", "ns", Some("theirs"))).await);
        assert!(!allowed(request("create", "pods", "ns", None)).await);
        let mut list = request("watch", "pods", "", None);
        assert!(!allowed(list.clone()).await);
        list.field_selector = Some("spec.nodeName=a".into());
        assert!(allowed(list.clone()).await);
        list.field_selector = Some("spec.nodeName=b".into());
        assert!(!allowed(list).await);
        assert!(allowed(request("get", "secrets", "ns", Some("mine-secret"))).await);
        assert!(!allowed(request("get", "secrets", "ns", Some("theirs-secret"))).await);
        assert!(allowed(request("get", "configmaps", "ns", Some("mine-config"))).await);
        assert!(!allowed(request("get", "configmaps", "ns", Some("theirs-config"))).await);
        assert!(!allowed(request("list", "secrets", "ns", None)).await);
        assert!(
            allowed(request(
                "watch",
                "discovery.k8s.io:endpointslices",
                "",
                None
            ))
            .await
        );
        assert!(allowed(request("create", "events", "ns", None)).await);
        assert!(
            allowed(request(
                "create",
                "serviceaccounts/token",
                "ns",
                Some("default")
            ))
            .await
        );
        assert!(
            !allowed(request(
                "create",
                "serviceaccounts/token",
                "ns",
                Some("admin")
            ))
            .await
        );
        // No opinion: the next authorizer (here: deny) decides; others go straight to it.
        assert!(!allowed(request("get", "apps:deployments", "ns", Some("d"))).await);
        let someone = UserInfo {
            name: "system:node:a".into(),
            groups: vec!["system:authenticated".into()],
        };
        assert!(authorizer
            .authorize(&someone, &request("get", "nodes", "", Some("a")))
            .await
            .is_err());
        let open = NodeAuthorizer::new(Arc::new(MemoryStore::new()), Arc::new(AllowAll));
        assert!(open
            .authorize(&someone, &request("delete", "nodes", "", Some("b")))
            .await
            .is_ok());
    }
}
