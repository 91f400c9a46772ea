//! The pod network across nodes, host-gw style (flannel's `host-gw` backend): every node's pods
//! live in the node's own subnet (`node.spec.podCIDR`, from the node IPAM controller), and each
//! host routes every other node's subnet via that node's address. No encapsulation, so the
//! hosts must share a layer-2 link (or routers that know the routes).
//!
//! [`HostRoutes::build`] turns the Nodes into the routes one host needs plus the ranges it
//! blackholes (the cluster pod CIDR and the service CIDR: a packet for an address nobody owns
//! goes nowhere instead of out of the default route; the more specific routes win).
//! A [`RouteBackend`] programs them — full and level-triggered, like a proxy backend — and
//! [`PodNetwork`] keeps it in sync with the Nodes. `capstan-net-iptables` has the netlink
//! implementation.

mod runner;

pub use runner::{PodNetwork, PodNetworkConfig, RunningPodNetwork};

use crate::cidr::{IpCidr, Ipv4Cidr};
use k8s_openapi::api::core::v1::Node;
use std::net::Ipv4Addr;

/// A route to another node's pods.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PodRoute {
    /// The other node's pod subnet.
    pub destination: Ipv4Cidr,
    /// The other node's address (its `InternalIP`).
    pub gateway: Ipv4Addr,
    /// The other node's name.
    pub node: String,
}

/// Everything one host's routing table should hold for the pod network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostRoutes {
    /// Routes to the other nodes' pod subnets, sorted.
    pub routes: Vec<PodRoute>,
    /// Ranges routed nowhere (blackhole routes), sorted.
    pub blackholes: Vec<IpCidr>,
}

fn internal_ip(node: &Node) -> Option<Ipv4Addr> {
    node.status
        .as_ref()?
        .addresses
        .as_ref()?
        .iter()
        .filter(|a| a.type_ == "InternalIP")
        .find_map(|a| a.address.parse::<Ipv4Addr>().ok())
}

fn pod_subnet(node: &Node) -> Option<Ipv4Cidr> {
    node.spec
        .as_ref()?
        .pod_cidr
        .as_deref()
        .and_then(Ipv4Cidr::parse)
}

impl HostRoutes {
    /// The routes `local_node` needs to reach every other node's pods, and `blackholes`.
    /// Nodes without a pod subnet or a usable IPv4 `InternalIP` (none, loopback, unspecified)
    /// get no route; neither does a subnet that two nodes claim (the first by name wins) or
    /// the local node's own.
    pub fn build<'a>(
        nodes: impl IntoIterator<Item = &'a Node>,
        local_node: &str,
        blackholes: &[IpCidr],
    ) -> Self {
        let mut routes: Vec<PodRoute> = nodes
            .into_iter()
            .filter(|n| n.metadata.name.as_deref() != Some(local_node))
            .filter_map(|node| {
                let gateway =
                    internal_ip(node).filter(|ip| !ip.is_loopback() && !ip.is_unspecified())?;
                Some(PodRoute {
                    destination: pod_subnet(node)?,
                    gateway,
                    node: node.metadata.name.clone().unwrap_or_default(),
                })
            })
            .collect();
        routes.sort_by(|a, b| (a.destination, &a.node).cmp(&(b.destination, &b.node)));
        routes.dedup_by(|later, first| later.destination == first.destination);
        routes.sort();
        let mut blackholes = blackholes.to_vec();
        blackholes.sort();
        blackholes.dedup();
        HostRoutes { routes, blackholes }
    }
}

/// Why a route backend could not program the host.
#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    /// The kernel refused a change or could not be asked. Retryable: the next sync tries again.
    #[error("{operation}: {detail}")]
    Netlink {
        /// What was being done (`add route 10.244.1.0/24 via 10.0.0.2`).
        operation: String,
        /// The kernel's or the socket's error.
        detail: String,
    },
}

/// Programs one host's routing table for the pod network.
///
/// Contract: `sync` is full and idempotent — afterwards the host holds exactly the given routes
/// and blackholes among the routes this backend owns (others are never touched), whatever was
/// there before, including routes a previous process left. `cleanup` removes every route the
/// backend owns.
#[async_trait::async_trait]
pub trait RouteBackend: Send + Sync + 'static {
    /// Makes the host's routes match `desired`.
    async fn sync(&self, desired: &HostRoutes) -> Result<(), RouteError>;

    /// Removes every route this backend owns.
    async fn cleanup(&self) -> Result<(), RouteError>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, cidr: Option<&str>, ip: &str) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": cidr.map(|c| json!({"podCIDR": c})).unwrap_or(json!({})),
            "status": {"addresses": [
                {"type": "Hostname", "address": name},
                {"type": "InternalIP", "address": ip},
            ]},
        }))
        .unwrap()
    }

    #[test]
    fn routes_go_to_other_nodes_with_subnets_and_addresses() {
        let nodes = [
            node("a", Some("10.244.0.0/24"), "10.0.0.1"),
            node("b", Some("10.244.1.0/24"), "10.0.0.2"),
            node("c", None, "10.0.0.3"),
            node("d", Some("10.244.3.0/24"), "127.0.0.1"),
            node("e", Some("10.244.1.0/24"), "10.0.0.5"),
            node("f", Some("10.244.2.0/24"), "10.0.0.6"),
        ];
        let blackholes = [
            Ipv4Cidr::parse("10.96.0.0/12").unwrap().into(),
            Ipv4Cidr::parse("10.244.0.0/16").unwrap().into(),
        ];
        let host = HostRoutes::build(&nodes, "a", &blackholes);
        let described: Vec<String> = host
            .routes
            .iter()
            .map(|r| format!("{} via {} ({})", r.destination, r.gateway, r.node))
            .collect();
        assert_eq!(
            described,
            [
                "10.244.1.0/24 via 10.0.0.2 (b)",
                "10.244.2.0/24 via 10.0.0.6 (f)"
            ]
        );
        assert_eq!(host.blackholes.len(), 2);
        assert_eq!(host.blackholes[1].to_string(), "10.244.0.0/16");
    }
}
