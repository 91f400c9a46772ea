//! Forgetting UDP flows whose endpoint went away. UDP has no connection to close, so the
//! kernel's connection tracking keeps sending a client's datagrams to the endpoint it was
//! DNATed to first for as long as the client keeps talking — a DNS client could keep asking a
//! deleted pod. After a sync, flows to removed UDP endpoints are deleted, and so are flows to
//! a Service port that just got its first endpoint (they were being rejected), as kube-proxy
//! does, with the `conntrack` tool.

use crate::command;
use capstan_core::proxy::{Protocol, ServiceEntry, ServicePortName, ServiceTable};
use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};

/// What to delete: flows DNATed to an endpoint, or flows to a cluster IP and port.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum StaleFlows {
    /// Replies come from this removed endpoint.
    Endpoint(SocketAddr),
    /// Sent to this Service address, which had no endpoints.
    Service(IpAddr, u16),
}

/// Service ports and their entries, as a sync saw them.
pub(crate) trait Entries {
    /// The entry of `name`, if present.
    fn entry(&self, name: &ServicePortName) -> Option<&ServiceEntry>;
    /// Every Service port with its entry.
    fn entries(&self) -> Box<dyn Iterator<Item = (&ServicePortName, &ServiceEntry)> + '_>;
}

impl Entries for ServiceTable {
    fn entry(&self, name: &ServicePortName) -> Option<&ServiceEntry> {
        self.services.get(name)
    }
    fn entries(&self) -> Box<dyn Iterator<Item = (&ServicePortName, &ServiceEntry)> + '_> {
        Box::new(self.services.iter())
    }
}

/// The UDP flows `current` makes stale, given what `previous` programmed.
pub(crate) fn stale_udp_flows(
    previous: &dyn Entries,
    current: &dyn Entries,
) -> BTreeSet<StaleFlows> {
    let mut stale = BTreeSet::new();
    for (name, before) in previous.entries() {
        if name.protocol != Protocol::Udp {
            continue;
        }
        let kept: BTreeSet<&SocketAddr> = current
            .entry(name)
            .map(|a| a.endpoints.iter().collect())
            .unwrap_or_default();
        for endpoint in before.endpoints.iter().filter(|e| !kept.contains(e)) {
            stale.insert(StaleFlows::Endpoint(*endpoint));
        }
    }
    for (name, after) in current.entries() {
        if name.protocol != Protocol::Udp || after.endpoints.is_empty() {
            continue;
        }
        let had_none = previous
            .entry(name)
            .is_none_or(|before| before.endpoints.is_empty());
        if had_none {
            for ip in &after.cluster_ips {
                stale.insert(StaleFlows::Service(*ip, after.port));
            }
        }
    }
    stale
}

/// Deletes the flows (`-f ipv6` for IPv6 ones); "nothing to delete" is success.
pub(crate) async fn delete(program: &str, flows: &BTreeSet<StaleFlows>) {
    for flow in flows {
        let (ip, args): (IpAddr, Vec<String>) = match flow {
            StaleFlows::Endpoint(endpoint) => (
                endpoint.ip(),
                vec![
                    "--reply-src".into(),
                    endpoint.ip().to_string(),
                    "--reply-port-src".into(),
                    endpoint.port().to_string(),
                ],
            ),
            StaleFlows::Service(ip, port) => (
                *ip,
                vec![
                    "--orig-dst".into(),
                    ip.to_string(),
                    "--orig-port-dst".into(),
                    port.to_string(),
                ],
            ),
        };
        let family = if ip.is_ipv6() { "ipv6" } else { "ipv4" };
        let mut all = vec!["-D", "-f", family, "-p", "udp"];
        all.extend(args.iter().map(String::as_str));
        // conntrack exits 1 when no flow matched; a missing tool only costs stale flows.
        if let Err(err) = command::run(program, &all, None).await {
            if !err.to_string().contains("0 flow entries") {
                tracing::debug!(error = %err, "conntrack flush failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(protocol: Protocol, endpoints: &[&str]) -> ServiceTable {
        let mut table = ServiceTable::default();
        table.services.insert(
            ServicePortName {
                namespace: "default".into(),
                name: "dns".into(),
                port: "dns".into(),
                protocol,
            },
            ServiceEntry {
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                port: 53,
                node_port: None,
                affinity: None,
                endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            },
        );
        table
    }

    #[test]
    fn removed_udp_endpoints_and_revived_services_are_stale() {
        let two = table(Protocol::Udp, &["10.1.0.2:53", "10.1.0.3:53"]);
        let one = table(Protocol::Udp, &["10.1.0.3:53"]);
        let none = table(Protocol::Udp, &[]);
        assert_eq!(
            stale_udp_flows(&two, &one),
            BTreeSet::from([StaleFlows::Endpoint("10.1.0.2:53".parse().unwrap())])
        );
        assert_eq!(
            stale_udp_flows(&none, &one),
            BTreeSet::from([StaleFlows::Service("10.96.0.10".parse().unwrap(), 53)])
        );
        assert!(stale_udp_flows(&one, &one).is_empty());
        let tcp = (
            table(Protocol::Tcp, &["10.1.0.2:53"]),
            table(Protocol::Tcp, &[]),
        );
        assert!(
            stale_udp_flows(&tcp.0, &tcp.1).is_empty(),
            "TCP flows end by themselves"
        );
    }
}
