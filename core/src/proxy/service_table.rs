//! The desired state of a node's service data path: one [`ServiceEntry`] per Service port,
//! built from Services and EndpointSlices by a pure function. Backends turn it into rules or
//! listeners; it never touches the network itself.

use crate::service_addresses::{cluster_ips, ready_addresses, slice_service};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Kubernetes' default ClientIP affinity timeout (3 hours).
const DEFAULT_AFFINITY_TIMEOUT: Duration = Duration::from_secs(10_800);

/// A transport protocol a Service port carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP (carried by the iptables backend; the userspace backend skips it).
    Sctp,
}

impl Protocol {
    fn parse(value: Option<&str>) -> Option<Protocol> {
        match value.unwrap_or("TCP") {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    /// The lower-case name iptables and sockets use (`tcp`, `udp`, `sctp`).
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Sctp => "sctp",
        }
    }
}

/// Names one Service port: `namespace/name:port-name/protocol`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The port's name (empty for a Service's single unnamed port).
    pub port: String,
    /// The port's protocol.
    pub protocol: Protocol,
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace,
            self.name,
            self.port,
            self.protocol.as_str()
        )
    }
}

/// What one Service port must do on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// The Service's cluster IPs (the IPv4 one first when dual-stack).
    pub cluster_ips: Vec<IpAddr>,
    /// The Service port.
    pub port: u16,
    /// The NodePort, for NodePort and LoadBalancer Services.
    pub node_port: Option<u16>,
    /// ClientIP session affinity: how long a client sticks to its endpoint.
    pub affinity: Option<Duration>,
    /// Ready endpoints, sorted and without duplicates. Empty: connections are refused.
    pub endpoints: Vec<SocketAddr>,
}

/// The desired service data path of a node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceTable {
    /// Every proxied Service port.
    pub services: BTreeMap<ServicePortName, ServiceEntry>,
}

impl ServiceTable {
    /// The table for `services` and the `slices` of their endpoints: every port of every
    /// Service with a cluster IP (not headless, not ExternalName), carrying the ready endpoints
    /// of the slices labelled with its name whose port has the same name and protocol.
    /// Terminating and not-ready endpoints get no new connections.
    pub fn build<'a>(
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> ServiceTable {
        let mut endpoints: BTreeMap<ServicePortName, BTreeSet<SocketAddr>> = BTreeMap::new();
        for slice in slices {
            collect_slice(slice, &mut endpoints);
        }
        let mut table = ServiceTable::default();
        for service in services {
            let namespace = service.metadata.namespace.clone().unwrap_or_default();
            let Some(name) = service.metadata.name.clone() else {
                continue;
            };
            let Some(spec) = &service.spec else { continue };
            if spec.type_.as_deref() == Some("ExternalName") {
                continue;
            }
            let cluster_ips = cluster_ips(spec);
            if cluster_ips.is_empty() {
                continue;
            }
            let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
                spec.session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds)
                    .and_then(|s| u64::try_from(s).ok())
                    .map(Duration::from_secs)
                    .unwrap_or(DEFAULT_AFFINITY_TIMEOUT)
            });
            for port in spec.ports.iter().flatten() {
                let (Some(protocol), Ok(number)) = (
                    Protocol::parse(port.protocol.as_deref()),
                    u16::try_from(port.port),
                ) else {
                    continue;
                };
                let key = ServicePortName {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    port: port.name.clone().unwrap_or_default(),
                    protocol,
                };
                let node_port = port.node_port.and_then(|p| u16::try_from(p).ok());
                let ready = endpoints.remove(&key).unwrap_or_default();
                table.services.insert(
                    key,
                    ServiceEntry {
                        cluster_ips: cluster_ips.clone(),
                        port: number,
                        node_port,
                        affinity,
                        endpoints: ready.into_iter().collect(),
                    },
                );
            }
        }
        table
    }

    /// The Service ports whose entries differ between `self` and `other` (present in one only,
    /// or changed).
    pub fn changed_from<'a>(&'a self, other: &'a ServiceTable) -> BTreeSet<&'a ServicePortName> {
        let mut changed = BTreeSet::new();
        for (name, entry) in &self.services {
            if other.services.get(name) != Some(entry) {
                changed.insert(name);
            }
        }
        for name in other.services.keys() {
            if !self.services.contains_key(name) {
                changed.insert(name);
            }
        }
        changed
    }
}

fn collect_slice(
    slice: &EndpointSlice,
    endpoints: &mut BTreeMap<ServicePortName, BTreeSet<SocketAddr>>,
) {
    let Some(service) = slice_service(slice) else {
        return;
    };
    let namespace = slice.metadata.namespace.clone().unwrap_or_default();
    for port in slice.ports.iter().flatten() {
        let (Some(protocol), Some(number)) = (
            Protocol::parse(port.protocol.as_deref()),
            port.port.and_then(|p| u16::try_from(p).ok()),
        ) else {
            continue;
        };
        let key = ServicePortName {
            namespace: namespace.clone(),
            name: service.clone(),
            port: port.name.clone().unwrap_or_default(),
            protocol,
        };
        let addresses = endpoints.entry(key).or_default();
        for (ip, _) in ready_addresses(slice) {
            addresses.insert(SocketAddr::new(ip, number));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn service(value: serde_json::Value) -> Service {
        serde_json::from_value(value).unwrap()
    }

    fn slice(value: serde_json::Value) -> EndpointSlice {
        serde_json::from_value(value).unwrap()
    }

    fn web() -> Service {
        service(json!({
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                "sessionAffinity": "ClientIP",
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "nodePort": 30080},
                          {"name": "dns", "port": 53, "protocol": "UDP"}]},
        }))
    }

    fn web_slice(name: &str, endpoints: serde_json::Value) -> EndpointSlice {
        slice(json!({
            "metadata": {"name": name, "namespace": "default",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                      {"name": "dns", "port": 5353, "protocol": "UDP"}],
            "endpoints": endpoints,
        }))
    }

    #[test]
    fn ready_endpoints_of_every_slice_per_port() {
        let services = [web()];
        let slices = [
            web_slice(
                "web-a",
                json!([
                    {"addresses": ["10.244.0.5"], "conditions": {"ready": true}},
                    {"addresses": ["10.244.0.6"], "conditions": {"ready": false, "serving": true, "terminating": true}},
                ]),
            ),
            web_slice(
                "web-b",
                json!([{"addresses": ["10.244.1.7"]}, {"addresses": ["10.244.0.5"]}]),
            ),
        ];
        let table = ServiceTable::build(&services, &slices);
        assert_eq!(table.services.len(), 2);
        let http = &table.services[&ServicePortName {
            namespace: "default".into(),
            name: "web".into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        }];
        assert_eq!(
            http.endpoints,
            vec![
                "10.244.0.5:8080".parse().unwrap(),
                "10.244.1.7:8080".parse().unwrap()
            ]
        );
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(http.affinity, Some(DEFAULT_AFFINITY_TIMEOUT));
        assert_eq!(
            http.cluster_ips,
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
        let dns = table
            .services
            .iter()
            .find(|(k, _)| k.protocol == Protocol::Udp)
            .unwrap()
            .1;
        assert_eq!(dns.port, 53);
        assert_eq!(dns.endpoints.len(), 2);
        assert!(dns.endpoints.iter().all(|e| e.port() == 5353));
    }

    #[test]
    fn headless_external_name_and_other_namespaces_are_skipped() {
        let services = [
            service(json!({"metadata": {"name": "h", "namespace": "default"},
                "spec": {"clusterIP": "None", "ports": [{"port": 80}]}})),
            service(json!({"metadata": {"name": "x", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "example.org"}})),
            web(),
        ];
        let other = slice(json!({
            "metadata": {"name": "web-z", "namespace": "other",
                "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [{"addresses": ["10.244.9.9"]}],
        }));
        let table = ServiceTable::build(&services, [&other]);
        assert_eq!(table.services.len(), 2);
        assert!(table.services.values().all(|e| e.endpoints.is_empty()));
    }

    #[test]
    fn changes_name_added_removed_and_modified_ports() {
        let services = [web()];
        let before = ServiceTable::build(&services, []);
        let slices = [web_slice("web-a", json!([{"addresses": ["10.244.0.5"]}]))];
        let after = ServiceTable::build(&services, &slices);
        assert_eq!(after.changed_from(&before).len(), 2);
        assert!(after.changed_from(&after).is_empty());
        let empty = ServiceTable::default();
        assert_eq!(empty.changed_from(&after).len(), 2);
    }
}
