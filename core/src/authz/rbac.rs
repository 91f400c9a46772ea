//! The RBAC authorizer: Roles, ClusterRoles and their bindings, kept in memory from a watch of
//! the store under the API server, evaluated on every request as Kubernetes does. Members of
//! `system:masters` may do anything. It never writes.

use super::policy_rule::{combined_resource, rule_allows};
use crate::apiserver::{ApiError, Authorizer, RequestAttributes, UserInfo};
use crate::store::{ListOptions, Store, StoreError, WatchEvent};
use async_trait::async_trait;
use futures::StreamExt;
use k8s_openapi::api::rbac::v1::{PolicyRule, RoleRef, Subject};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

/// The group whose members are allowed everything.
pub const MASTERS_GROUP: &str = "system:masters";

const PREFIX: &str = "/rbac.authorization.k8s.io/";

#[derive(Debug, Default, Deserialize)]
struct StoredRole {
    #[serde(default)]
    rules: Option<Vec<PolicyRule>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredBinding {
    #[serde(default)]
    subjects: Option<Vec<Subject>>,
    role_ref: RoleRef,
}

/// Roles and bindings by namespace (`""` for cluster-scoped ones) and name.
#[derive(Debug, Default)]
struct RbacIndex {
    roles: HashMap<(String, String), Vec<PolicyRule>>,
    cluster_roles: HashMap<String, Vec<PolicyRule>>,
    role_bindings: HashMap<(String, String), StoredBinding>,
    cluster_role_bindings: HashMap<String, StoredBinding>,
}

fn subject_matches(subject: &Subject, binding_namespace: &str, user: &UserInfo) -> bool {
    match subject.kind.as_str() {
        "User" => subject.name == user.name,
        "Group" => user.groups.contains(&subject.name),
        "ServiceAccount" => {
            let namespace = subject
                .namespace
                .as_deref()
                .filter(|ns| !ns.is_empty())
                .unwrap_or(binding_namespace);
            user.name == format!("system:serviceaccount:{namespace}:{}", subject.name)
        }
        _ => false,
    }
}

impl RbacIndex {
    fn apply(&mut self, key: &str, value: Option<&[u8]>) {
        let Some(rest) = key.strip_prefix(PREFIX) else {
            return;
        };
        let mut segments = rest.splitn(3, '/');
        let (Some(plural), Some(first)) = (segments.next(), segments.next()) else {
            return;
        };
        let namespaced = segments
            .next()
            .map(|name| (first.to_string(), name.to_string()));
        let role = |bytes: &[u8]| {
            crate::storage::read_stored::<StoredRole>(bytes)
                .map(|r| r.rules.unwrap_or_default())
                .or_else(|| {
                    tracing::warn!(key, "unreadable role");
                    None
                })
        };
        let binding = |bytes: &[u8]| {
            crate::storage::read_stored::<StoredBinding>(bytes).or_else(|| {
                tracing::warn!(key, "unreadable binding");
                None
            })
        };
        match (plural, namespaced) {
            ("roles", Some(id)) => match value.and_then(role) {
                Some(rules) => drop(self.roles.insert(id, rules)),
                None => drop(self.roles.remove(&id)),
            },
            ("rolebindings", Some(id)) => match value.and_then(binding) {
                Some(b) => drop(self.role_bindings.insert(id, b)),
                None => drop(self.role_bindings.remove(&id)),
            },
            ("clusterroles", None) => match value.and_then(role) {
                Some(rules) => drop(self.cluster_roles.insert(first.to_string(), rules)),
                None => drop(self.cluster_roles.remove(first)),
            },
            ("clusterrolebindings", None) => match value.and_then(binding) {
                Some(b) => drop(self.cluster_role_bindings.insert(first.to_string(), b)),
                None => drop(self.cluster_role_bindings.remove(first)),
            },
            _ => {}
        }
    }

    /// Every rule granted to `user`: cluster-wide ones, and (with `namespace`) those bound in
    /// that namespace.
    fn rules(&self, user: &UserInfo, namespace: Option<&str>) -> Vec<PolicyRule> {
        let mut rules = Vec::new();
        for binding in self.cluster_role_bindings.values() {
            let bound = binding
                .subjects
                .iter()
                .flatten()
                .any(|s| subject_matches(s, "", user));
            if bound && binding.role_ref.kind == "ClusterRole" {
                if let Some(granted) = self.cluster_roles.get(&binding.role_ref.name) {
                    rules.extend(granted.iter().cloned());
                }
            }
        }
        if let Some(namespace) = namespace {
            for ((binding_namespace, _), binding) in &self.role_bindings {
                if binding_namespace != namespace
                    || !binding
                        .subjects
                        .iter()
                        .flatten()
                        .any(|s| subject_matches(s, namespace, user))
                {
                    continue;
                }
                let granted = match binding.role_ref.kind.as_str() {
                    "ClusterRole" => self.cluster_roles.get(&binding.role_ref.name),
                    "Role" => self
                        .roles
                        .get(&(namespace.to_string(), binding.role_ref.name.clone())),
                    _ => None,
                };
                rules.extend(granted.into_iter().flatten().cloned());
            }
        }
        rules
    }
}

/// Evaluates RBAC on every request, from an in-memory index the store watch keeps current.
/// Dropping it stops the watch.
pub struct RbacAuthorizer {
    index: Arc<RwLock<RbacIndex>>,
    watch: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RbacAuthorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RbacAuthorizer").finish_non_exhaustive()
    }
}

impl Drop for RbacAuthorizer {
    fn drop(&mut self) {
        if let Some(task) = self.watch.take() {
            task.abort();
        }
    }
}

async fn load(store: &dyn Store, index: &RwLock<RbacIndex>) -> Result<i64, StoreError> {
    let page = store.list(PREFIX, ListOptions::default()).await?;
    let mut fresh = RbacIndex::default();
    for item in &page.items {
        fresh.apply(&item.key, Some(&item.value));
    }
    *index.write().unwrap_or_else(|p| p.into_inner()) = fresh;
    Ok(page.revision)
}

impl RbacAuthorizer {
    /// Reads every role and binding in `store` and follows their changes.
    pub async fn watching(store: Arc<dyn Store>) -> Result<RbacAuthorizer, StoreError> {
        let index = Arc::new(RwLock::new(RbacIndex::default()));
        let mut revision = load(store.as_ref(), &index).await?;
        let task = {
            let index = index.clone();
            tokio::spawn(async move {
                loop {
                    match store.watch(PREFIX, revision).await {
                        Ok(mut events) => {
                            while let Some(event) = events.next().await {
                                match event {
                                    Ok(event) => {
                                        revision = revision.max(event.revision());
                                        if let Some(key) = event.key() {
                                            let value = match &event {
                                                WatchEvent::Deleted { .. } => None,
                                                other => other.current().map(|kv| &kv.value[..]),
                                            };
                                            index
                                                .write()
                                                .unwrap_or_else(|p| p.into_inner())
                                                .apply(key, value);
                                        }
                                    }
                                    Err(err) => {
                                        tracing::warn!("RBAC watch ended: {err}");
                                        break;
                                    }
                                }
                            }
                        }
                        Err(err) => tracing::warn!("RBAC watch failed: {err}"),
                    }
                    // Start over from a fresh listing (history may be compacted).
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    match load(store.as_ref(), &index).await {
                        Ok(listed) => revision = listed,
                        Err(err) => tracing::warn!("RBAC relist failed: {err}"),
                    }
                }
            })
        };
        Ok(RbacAuthorizer {
            index,
            watch: Some(task),
        })
    }

    /// The rules `user` holds cluster-wide and, with `namespace`, in that namespace.
    pub fn rules_of(&self, user: &UserInfo, namespace: Option<&str>) -> Vec<PolicyRule> {
        if user.groups.iter().any(|g| g == MASTERS_GROUP) {
            return vec![PolicyRule {
                verbs: vec!["*".into()],
                api_groups: Some(vec!["*".into()]),
                resources: Some(vec!["*".into()]),
                non_resource_urls: Some(vec!["*".into()]),
                resource_names: None,
            }];
        }
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .rules(user, namespace)
    }

    /// Whether `user` may do what `attributes` describe.
    pub fn allows(&self, user: &UserInfo, attributes: &RequestAttributes) -> bool {
        if user.groups.iter().any(|g| g == MASTERS_GROUP) {
            return true;
        }
        let namespace = attributes.namespace.as_deref().filter(|ns| !ns.is_empty());
        self.index
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .rules(user, namespace)
            .iter()
            .any(|rule| rule_allows(rule, attributes))
    }
}

/// Kubernetes' wording of a denial.
pub(super) fn denial(user: &UserInfo, attributes: &RequestAttributes) -> ApiError {
    if let Some(path) = &attributes.path {
        return ApiError::forbidden(format!(
            "forbidden: User \"{}\" cannot {} path \"{path}\"",
            user.name, attributes.verb
        ));
    }
    let resource = combined_resource(attributes);
    let scope = match attributes.namespace.as_deref().filter(|ns| !ns.is_empty()) {
        Some(ns) => format!(" in the namespace \"{ns}\""),
        None => " at the cluster scope".to_string(),
    };
    let subject = match &attributes.name {
        Some(name) => format!("{} \"{name}\"", attributes.resource),
        None => attributes.resource.clone(),
    };
    ApiError::forbidden(format!(
        "{subject} is forbidden: User \"{}\" cannot {} resource \"{resource}\" in API group \"{}\"{scope}",
        user.name, attributes.verb, attributes.group
    ))
}

#[async_trait]
impl Authorizer for RbacAuthorizer {
    async fn authorize(
        &self,
        user: &UserInfo,
        attributes: &RequestAttributes,
    ) -> Result<(), ApiError> {
        if self.allows(user, attributes) {
            Ok(())
        } else {
            Err(denial(user, attributes))
        }
    }

    fn rules_for(&self, user: &UserInfo, namespace: Option<&str>) -> Option<Vec<PolicyRule>> {
        Some(self.rules_of(user, namespace))
    }
}
