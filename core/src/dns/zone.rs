//! The cluster's DNS names, built from Services and EndpointSlices, and the pure lookup of a
//! query in them (Kubernetes' DNS specification for Services and Pods):
//!
//! - `<svc>.<ns>.svc.<domain>`: A of the cluster IP; for a headless Service, A of every ready
//!   endpoint; for an ExternalName Service, a CNAME to its external name;
//! - `<hostname>.<svc>.<ns>.svc.<domain>`: A of a headless Service's endpoint with that hostname
//!   (or whose address, dashed, is that label);
//! - `_<port>._<proto>.<svc>.<ns>.svc.<domain>`: SRV of a named port (the Service's name as
//!   target, or each endpoint's for a headless Service, with its A record as additional);
//! - `<a-b-c-d>.<ns>.pod.<domain>`: A of that address.
//!
//! Any other name — inside the domain or not — is NXDOMAIN: nothing is forwarded (no packet
//! leaves the machine). A known name without records of the asked type is NOERROR and empty.

use crate::service_addresses::{cluster_ips, ready_addresses, slice_service};
use hickory_proto::rr::rdata::{A, AAAA, CNAME, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

/// The TTL of every answer, in seconds (changes show up quickly).
const TTL: u32 = 5;

/// What one Service resolves to.
#[derive(Debug, Clone, Default)]
struct ServiceNames {
    cluster_ips: Vec<IpAddr>,
    headless: bool,
    external_name: Option<String>,
    /// (name, protocol lower-case, port)
    ports: Vec<(String, String, u16)>,
    /// Ready endpoints: (address, hostname).
    endpoints: Vec<(IpAddr, Option<String>)>,
}

/// The outcome of a lookup.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Lookup {
    /// Whether the name exists (false: NXDOMAIN).
    pub exists: bool,
    /// Answer records.
    pub answers: Vec<Record>,
    /// Additional records (the targets of SRV answers).
    pub additionals: Vec<Record>,
}

/// The cluster's names.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterZone {
    domain: String,
    services: HashMap<(String, String), ServiceNames>,
}

impl ClusterZone {
    /// The names of `services` and their `slices` under `domain` (e.g. `cluster.local`).
    pub fn build<'a>(
        domain: &str,
        services: impl IntoIterator<Item = &'a Service>,
        slices: impl IntoIterator<Item = &'a EndpointSlice>,
    ) -> ClusterZone {
        let mut zone = ClusterZone {
            domain: domain.trim_end_matches('.').to_ascii_lowercase(),
            services: HashMap::new(),
        };
        for service in services {
            let (Some(name), Some(spec)) = (&service.metadata.name, &service.spec) else {
                continue;
            };
            let namespace = service.metadata.namespace.clone().unwrap_or_default();
            let mut names = ServiceNames::default();
            if spec.type_.as_deref() == Some("ExternalName") {
                names.external_name = spec.external_name.clone();
            } else if spec.cluster_ip.as_deref() == Some("None") {
                names.headless = true;
            } else {
                names.cluster_ips = cluster_ips(spec);
            }
            for port in spec.ports.iter().flatten() {
                if let (Some(port_name), Ok(number)) = (&port.name, u16::try_from(port.port)) {
                    let protocol = port
                        .protocol
                        .as_deref()
                        .unwrap_or("TCP")
                        .to_ascii_lowercase();
                    names
                        .ports
                        .push((port_name.to_ascii_lowercase(), protocol, number));
                }
            }
            zone.services
                .insert((namespace, name.to_ascii_lowercase()), names);
        }
        for slice in slices {
            let Some(service) = slice_service(slice) else {
                continue;
            };
            let namespace = slice.metadata.namespace.clone().unwrap_or_default();
            let Some(names) = zone
                .services
                .get_mut(&(namespace, service.to_ascii_lowercase()))
            else {
                continue;
            };
            if !names.headless {
                continue;
            }
            for (ip, endpoint) in ready_addresses(slice) {
                if !names.endpoints.iter().any(|(known, _)| *known == ip) {
                    names.endpoints.push((ip, endpoint.hostname.clone()));
                }
            }
        }
        for names in zone.services.values_mut() {
            names.endpoints.sort();
        }
        zone
    }

    /// Looks `name` (any case, with or without the final dot) up for `record_type`.
    pub fn lookup(&self, name: &Name, record_type: RecordType) -> Lookup {
        let text = name.to_ascii().trim_end_matches('.').to_ascii_lowercase();
        let Some(rest) = text
            .strip_suffix(&self.domain)
            .and_then(|r| r.strip_suffix('.'))
        else {
            return Lookup::default();
        };
        let labels: Vec<&str> = rest.split('.').collect();
        let mut lookup = Lookup::default();
        match labels.as_slice() {
            [ip, _namespace, "pod"] => {
                if let Ok(ip) = ip.replace('-', ".").parse::<Ipv4Addr>() {
                    lookup.exists = true;
                    push_address(&mut lookup.answers, name, IpAddr::V4(ip), record_type);
                }
            }
            [service, namespace, "svc"] => {
                let Some(names) = self.service(namespace, service) else {
                    return lookup;
                };
                lookup.exists = true;
                if let Some(external) = &names.external_name {
                    if let Ok(target) = Name::from_ascii(format!("{external}.")) {
                        lookup.answers.push(Record::from_rdata(
                            name.clone(),
                            TTL,
                            RData::CNAME(CNAME(target)),
                        ));
                    }
                } else if names.headless {
                    for (ip, _) in &names.endpoints {
                        push_address(&mut lookup.answers, name, *ip, record_type);
                    }
                } else {
                    for ip in &names.cluster_ips {
                        push_address(&mut lookup.answers, name, *ip, record_type);
                    }
                }
            }
            [host, service, namespace, "svc"] if !host.starts_with('_') => {
                let Some(names) = self.service(namespace, service) else {
                    return lookup;
                };
                for (ip, hostname) in &names.endpoints {
                    if hostname.as_deref() == Some(*host) || dashed(*ip) == *host {
                        lookup.exists = true;
                        push_address(&mut lookup.answers, name, *ip, record_type);
                    }
                }
            }
            [port, protocol, service, namespace, "svc"] => {
                let (Some(port), Some(protocol)) =
                    (port.strip_prefix('_'), protocol.strip_prefix('_'))
                else {
                    return lookup;
                };
                let Some(names) = self.service(namespace, service) else {
                    return lookup;
                };
                let Some((_, _, number)) = names
                    .ports
                    .iter()
                    .find(|(n, p, _)| n == port && p == protocol)
                else {
                    return lookup;
                };
                lookup.exists = true;
                if record_type != RecordType::SRV && record_type != RecordType::ANY {
                    return lookup;
                }
                let service_name = format!("{service}.{namespace}.svc.{}.", self.domain);
                if names.headless {
                    let weight = (100 / names.endpoints.len().max(1)) as u16;
                    for (ip, hostname) in &names.endpoints {
                        let host = hostname.clone().unwrap_or_else(|| dashed(*ip));
                        let Ok(target) = Name::from_ascii(format!("{host}.{service_name}")) else {
                            continue;
                        };
                        lookup
                            .answers
                            .push(srv(name, *number, weight, target.clone()));
                        push_address(&mut lookup.additionals, &target, *ip, RecordType::ANY);
                    }
                } else if let Ok(target) = Name::from_ascii(&service_name) {
                    lookup.answers.push(srv(name, *number, 100, target.clone()));
                    for ip in &names.cluster_ips {
                        push_address(&mut lookup.additionals, &target, *ip, RecordType::ANY);
                    }
                }
            }
            _ => {}
        }
        lookup
    }

    fn service(&self, namespace: &str, name: &str) -> Option<&ServiceNames> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }
}

fn dashed(ip: IpAddr) -> String {
    ip.to_string().replace(['.', ':'], "-")
}

fn srv(name: &Name, port: u16, weight: u16, target: Name) -> Record {
    Record::from_rdata(
        name.clone(),
        TTL,
        RData::SRV(SRV::new(0, weight, port, target)),
    )
}

/// Adds an A or AAAA record for `ip` when `record_type` asks for its family.
fn push_address(records: &mut Vec<Record>, name: &Name, ip: IpAddr, record_type: RecordType) {
    let rdata = match (ip, record_type) {
        (IpAddr::V4(v4), RecordType::A | RecordType::ANY) => RData::A(A(v4)),
        (IpAddr::V6(v6), RecordType::AAAA | RecordType::ANY) => RData::AAAA(AAAA(v6)),
        _ => return,
    };
    records.push(Record::from_rdata(name.clone(), TTL, rdata));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn zone() -> ClusterZone {
        let services: Vec<Service> = [
            json!({"metadata": {"name": "web", "namespace": "default"},
                "spec": {"clusterIP": "10.96.0.10", "ports": [{"name": "http", "port": 80}]}}),
            json!({"metadata": {"name": "db", "namespace": "data"},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
            json!({"metadata": {"name": "ext", "namespace": "default"},
                "spec": {"type": "ExternalName", "externalName": "example.org"}}),
        ]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        let slices: Vec<EndpointSlice> = [json!({
            "metadata": {"name": "db-x", "namespace": "data",
                "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432}],
            "endpoints": [
                {"addresses": ["10.244.0.7"], "hostname": "db-0"},
                {"addresses": ["10.244.0.8"], "hostname": "db-1"},
                {"addresses": ["10.244.0.9"], "conditions": {"ready": false}},
            ],
        })]
        .into_iter()
        .map(|v| serde_json::from_value(v).unwrap())
        .collect();
        ClusterZone::build("cluster.local", &services, &slices)
    }

    fn ask(name: &str, record_type: RecordType) -> Lookup {
        zone().lookup(&Name::from_ascii(name).unwrap(), record_type)
    }

    fn addresses(records: &[Record]) -> Vec<String> {
        records
            .iter()
            .filter_map(|r| match r.data() {
                RData::A(a) => Some(a.0.to_string()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn services_headless_endpoints_and_pods() {
        let web = ask("Web.default.svc.cluster.local.", RecordType::A);
        assert!(web.exists);
        assert_eq!(addresses(&web.answers), vec!["10.96.0.10"]);
        let db = ask("db.data.svc.cluster.local", RecordType::A);
        assert_eq!(addresses(&db.answers), vec!["10.244.0.7", "10.244.0.8"]);
        let db1 = ask("db-1.db.data.svc.cluster.local", RecordType::A);
        assert_eq!(addresses(&db1.answers), vec!["10.244.0.8"]);
        let pod = ask("10-244-3-4.default.pod.cluster.local", RecordType::A);
        assert_eq!(addresses(&pod.answers), vec!["10.244.3.4"]);
        let ext = ask("ext.default.svc.cluster.local", RecordType::A);
        assert!(
            matches!(ext.answers[0].data(), RData::CNAME(c) if c.0.to_ascii() == "example.org.")
        );
    }

    #[test]
    fn srv_for_named_ports() {
        let web = ask("_http._tcp.web.default.svc.cluster.local", RecordType::SRV);
        assert!(
            matches!(web.answers[0].data(), RData::SRV(s) if s.port() == 80 && s.target().to_ascii() == "web.default.svc.cluster.local.")
        );
        assert_eq!(addresses(&web.additionals), vec!["10.96.0.10"]);
        let db = ask("_pg._tcp.db.data.svc.cluster.local", RecordType::SRV);
        assert_eq!(db.answers.len(), 2);
        assert_eq!(addresses(&db.additionals), vec!["10.244.0.7", "10.244.0.8"]);
    }

    #[test]
    fn unknown_names_do_not_exist_and_known_names_may_be_empty() {
        for name in [
            "nope.default.svc.cluster.local",
            "web.other.svc.cluster.local",
            "_nope._tcp.web.default.svc.cluster.local",
            "db-9.db.data.svc.cluster.local",
            "example.org",
            "cluster.local",
            "x.y.pod.cluster.local",
        ] {
            assert!(!ask(name, RecordType::A).exists, "{name}");
        }
        let empty = ask("web.default.svc.cluster.local", RecordType::AAAA);
        assert!(empty.exists && empty.answers.is_empty());
    }

    #[test]
    fn a_dual_stack_service_answers_a_and_aaaa() {
        let service: Service = serde_json::from_value(json!({
            "metadata": {"name": "dual", "namespace": "default"},
            "spec": {"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20", "fd00:10:96::20"],
                "ipFamilies": ["IPv4", "IPv6"], "ports": [{"port": 80}]}}))
        .unwrap();
        let zone = ClusterZone::build("cluster.local", &[service], &[]);
        let name = Name::from_ascii("dual.default.svc.cluster.local").unwrap();
        let answers = |record_type| -> Vec<String> {
            zone.lookup(&name, record_type)
                .answers
                .iter()
                .map(|r| match r.data() {
                    RData::A(a) => a.0.to_string(),
                    RData::AAAA(aaaa) => aaaa.0.to_string(),
                    other => format!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(answers(RecordType::A), ["10.96.0.20"]);
        assert_eq!(answers(RecordType::AAAA), ["fd00:10:96::20"]);
    }
}
