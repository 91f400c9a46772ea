//! A container's environment as Kubernetes defines it: Service link variables, `envFrom`,
//! then `env` in order with `$(VAR)` expansion and `valueFrom` (fieldRef, resourceFieldRef,
//! configMapKeyRef, secretKeyRef).
//!
//! This module resolves values only; it reads ConfigMaps, Secrets and Services through the API
//! and never writes.

use super::NodeError;
use crate::quantity::Quantity;
use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret, Service};
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;

/// Reads what a pod's environment refers to.
pub(crate) struct EnvironmentSource<'a> {
    pub client: &'a kube::Client,
    pub pod: &'a Pod,
    pub pod_ip: Option<String>,
    pub host_ip: String,
    /// Node allocatable, the default for missing limits in resourceFieldRef.
    pub allocatable: &'a BTreeMap<String, String>,
}

fn service_prefix(name: &str) -> String {
    name.to_ascii_uppercase().replace('-', "_")
}

/// Docker-links-style variables of one Service (`<NAME>_SERVICE_HOST`, `<NAME>_PORT_…`).
pub(crate) fn service_variables(service: &Service, out: &mut Vec<(String, String)>) {
    let Some(spec) = &service.spec else { return };
    let Some(ip) = spec.cluster_ip.as_deref() else {
        return;
    };
    if ip.is_empty() || ip == "None" {
        return;
    }
    let name = service_prefix(service.metadata.name.as_deref().unwrap_or_default());
    let ports = spec.ports.as_deref().unwrap_or_default();
    let Some(first) = ports.first() else { return };
    out.push((format!("{name}_SERVICE_HOST"), ip.to_string()));
    out.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
    for port in ports {
        if let Some(port_name) = port.name.as_deref().filter(|n| !n.is_empty()) {
            out.push((
                format!("{name}_SERVICE_PORT_{}", service_prefix(port_name)),
                port.port.to_string(),
            ));
        }
    }
    let protocol = |p: &k8s_openapi::api::core::v1::ServicePort| {
        p.protocol.clone().unwrap_or_else(|| "TCP".into())
    };
    out.push((
        format!("{name}_PORT"),
        format!(
            "{}://{ip}:{}",
            protocol(first).to_ascii_lowercase(),
            first.port
        ),
    ));
    for port in ports {
        let proto = protocol(port);
        let prefix = format!("{name}_PORT_{}_{}", port.port, proto.to_ascii_uppercase());
        out.push((
            prefix.clone(),
            format!("{}://{ip}:{}", proto.to_ascii_lowercase(), port.port),
        ));
        out.push((format!("{prefix}_PROTO"), proto.to_ascii_lowercase()));
        out.push((format!("{prefix}_PORT"), port.port.to_string()));
        out.push((format!("{prefix}_ADDR"), ip.to_string()));
    }
}

/// Expands `$(VAR)` references to earlier variables; `$$` escapes a `$`.
pub(crate) fn expand(value: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(value.len());
    let mut rest = value;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
        } else if let Some(body) = after.strip_prefix('(') {
            match body.find(')') {
                Some(end) => {
                    let name = &body[..end];
                    match env.iter().rev().find(|(k, _)| k == name) {
                        Some((_, v)) => out.push_str(v),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &body[end + 1..];
                }
                None => {
                    out.push('$');
                    rest = after;
                }
            }
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

fn config_error(message: String) -> NodeError {
    NodeError::ContainerConfig(message)
}

impl EnvironmentSource<'_> {
    fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }

    async fn config_map(&self, name: &str) -> Result<Option<ConfigMap>, NodeError> {
        Api::<ConfigMap>::namespaced(self.client.clone(), self.namespace())
            .get_opt(name)
            .await
            .map_err(NodeError::Api)
    }

    async fn secret(&self, name: &str) -> Result<Option<Secret>, NodeError> {
        Api::<Secret>::namespaced(self.client.clone(), self.namespace())
            .get_opt(name)
            .await
            .map_err(NodeError::Api)
    }

    fn field(&self, path: &str) -> Result<String, NodeError> {
        let meta = &self.pod.metadata;
        let spec = self.pod.spec.as_ref();
        let keyed = |prefix: &str, map: Option<&BTreeMap<String, String>>| {
            path.strip_prefix(prefix)
                .and_then(|r| r.strip_suffix("']"))
                .map(|key| map.and_then(|m| m.get(key)).cloned().unwrap_or_default())
        };
        if let Some(v) = keyed("metadata.labels['", meta.labels.as_ref()) {
            return Ok(v);
        }
        if let Some(v) = keyed("metadata.annotations['", meta.annotations.as_ref()) {
            return Ok(v);
        }
        Ok(match path {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => self.namespace().to_string(),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
            "spec.serviceAccountName" => spec
                .and_then(|s| s.service_account_name.clone())
                .unwrap_or_else(|| "default".into()),
            "status.podIP" | "status.podIPs" => self.pod_ip.clone().unwrap_or_default(),
            "status.hostIP" | "status.hostIPs" => self.host_ip.clone(),
            other => {
                return Err(config_error(format!(
                    "unsupported fieldRef fieldPath {other:?}"
                )))
            }
        })
    }

    fn resource_field(
        &self,
        container: &Container,
        reference: &k8s_openapi::api::core::v1::ResourceFieldSelector,
    ) -> Result<String, NodeError> {
        let (section, resource) = reference
            .resource
            .split_once('.')
            .ok_or_else(|| config_error(format!("invalid resource {:?}", reference.resource)))?;
        let resources = container.resources.as_ref();
        let declared = match section {
            "limits" => resources.and_then(|r| r.limits.as_ref()),
            "requests" => resources.and_then(|r| r.requests.as_ref()),
            _ => None,
        }
        .and_then(|m| m.get(resource))
        .map(|q| q.0.clone());
        let value = declared
            .or_else(|| self.allocatable.get(resource).cloned())
            .unwrap_or_else(|| "0".into());
        let value = Quantity::parse(&value)
            .map_err(|e| config_error(format!("resource {resource}: {e}")))?;
        let divisor = reference
            .divisor
            .as_ref()
            .map(|d| Quantity::parse(&d.0))
            .transpose()
            .map_err(|e| config_error(format!("divisor: {e}")))?
            .unwrap_or_else(|| Quantity::from_units(1));
        let divisor_nanos = divisor.nanos().max(1);
        // Kubernetes rounds up to the next whole multiple of the divisor.
        let units = (value.nanos() + divisor_nanos - 1) / divisor_nanos;
        Ok(units.to_string())
    }

    /// The full environment of `container`, in Kubernetes' order.
    pub async fn resolve(&self, container: &Container) -> Result<Vec<(String, String)>, NodeError> {
        let mut env: Vec<(String, String)> = Vec::new();
        let spec = self.pod.spec.as_ref();
        if spec.and_then(|s| s.enable_service_links).unwrap_or(true) {
            let mut services = Api::<Service>::namespaced(self.client.clone(), self.namespace())
                .list(&ListParams::default())
                .await
                .map_err(NodeError::Api)?
                .items;
            if self.namespace() != "default" {
                if let Some(master) = Api::<Service>::namespaced(self.client.clone(), "default")
                    .get_opt("kubernetes")
                    .await
                    .map_err(NodeError::Api)?
                {
                    services.push(master);
                }
            }
            for service in &services {
                service_variables(service, &mut env);
            }
        }
        for source in container.env_from.as_deref().unwrap_or_default() {
            let prefix = source.prefix.clone().unwrap_or_default();
            if let Some(reference) = &source.config_map_ref {
                match self.config_map(&reference.name).await? {
                    Some(map) => {
                        for (k, v) in map.data.unwrap_or_default() {
                            env.push((format!("{prefix}{k}"), v));
                        }
                    }
                    None if reference.optional == Some(true) => {}
                    None => {
                        return Err(config_error(format!(
                            "configmap {:?} not found",
                            reference.name
                        )))
                    }
                }
            }
            if let Some(reference) = &source.secret_ref {
                match self.secret(&reference.name).await? {
                    Some(secret) => {
                        for (k, v) in secret.data.unwrap_or_default() {
                            env.push((
                                format!("{prefix}{k}"),
                                String::from_utf8_lossy(&v.0).into_owned(),
                            ));
                        }
                    }
                    None if reference.optional == Some(true) => {}
                    None => {
                        return Err(config_error(format!(
                            "secret {:?} not found",
                            reference.name
                        )))
                    }
                }
            }
        }
        for var in container.env.as_deref().unwrap_or_default() {
            let value = match &var.value_from {
                None => expand(var.value.as_deref().unwrap_or_default(), &env),
                Some(from) => {
                    if let Some(field) = &from.field_ref {
                        self.field(&field.field_path)?
                    } else if let Some(resource) = &from.resource_field_ref {
                        self.resource_field(container, resource)?
                    } else if let Some(key) = &from.config_map_key_ref {
                        let value = self
                            .config_map(&key.name)
                            .await?
                            .and_then(|m| m.data.and_then(|mut d| d.remove(&key.key)));
                        match value {
                            Some(v) => v,
                            None if key.optional == Some(true) => continue,
                            None => {
                                return Err(config_error(format!(
                                    "couldn't find key {} in ConfigMap {}/{}",
                                    key.key,
                                    self.namespace(),
                                    key.name
                                )))
                            }
                        }
                    } else if let Some(key) = &from.secret_key_ref {
                        let value = self
                            .secret(&key.name)
                            .await?
                            .and_then(|s| s.data.and_then(|mut d| d.remove(&key.key)));
                        match value {
                            Some(v) => String::from_utf8_lossy(&v.0).into_owned(),
                            None if key.optional == Some(true) => continue,
                            None => {
                                return Err(config_error(format!(
                                    "couldn't find key {} in Secret {}/{}",
                                    key.key,
                                    self.namespace(),
                                    key.name
                                )))
                            }
                        }
                    } else {
                        continue;
                    }
                }
            };
            env.push((var.name.clone(), value));
        }
        // Later definitions win; keep the last of each name, in first-seen order.
        let mut seen = BTreeMap::new();
        for (i, (k, _)) in env.iter().enumerate() {
            seen.insert(k.clone(), i);
        }
        Ok(env
            .into_iter()
            .enumerate()
            .filter(|(i, (k, _))| seen.get(k) == Some(i))
            .map(|(_, kv)| kv)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_kubernetes() {
        let env = vec![("A".to_string(), "x".to_string())];
        assert_eq!(expand("$(A)-$(B)", &env), "x-$(B)");
        assert_eq!(expand("$$(A)", &env), "$(A)");
        assert_eq!(expand("cost $5", &env), "cost $5");
        assert_eq!(expand("$(A", &env), "$(A");
    }

    #[test]
    fn service_links_name_every_port() {
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "redis-primary"},
            "spec": {"clusterIP": "10.0.0.11", "ports": [{"name": "db", "port": 6379, "protocol": "TCP"}]}
        }))
        .unwrap();
        let mut env = Vec::new();
        service_variables(&service, &mut env);
        let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        assert_eq!(get("REDIS_PRIMARY_SERVICE_HOST"), Some("10.0.0.11"));
        assert_eq!(get("REDIS_PRIMARY_SERVICE_PORT"), Some("6379"));
        assert_eq!(get("REDIS_PRIMARY_SERVICE_PORT_DB"), Some("6379"));
        assert_eq!(get("REDIS_PRIMARY_PORT"), Some("tcp://10.0.0.11:6379"));
        assert_eq!(get("REDIS_PRIMARY_PORT_6379_TCP_ADDR"), Some("10.0.0.11"));
    }
}
