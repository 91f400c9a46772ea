//! [`NetlinkRoutes`]: the [`RouteBackend`] that programs the host-gw pod network into the
//! kernel's main routing table over rtnetlink — a unicast route per other node's pod subnet via
//! that node's address, and blackhole routes for the cluster and service ranges.
//!
//! Routes it owns carry the routing protocol number [`ROUTE_PROTOCOL`] (`ip route show proto
//! 201`); every other route is left alone. Each call opens its own netlink socket, so the
//! routes land in the network namespace of the calling thread.

use async_trait::async_trait;
use capstan_core::cidr::{IpCidr, Ipv4Cidr, Ipv6Cidr};
use capstan_core::pod_network::{HostRoutes, RouteBackend, RouteError};
use futures::TryStreamExt;
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::{Handle, RouteMessageBuilder};
use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

/// The routing protocol number marking Capstan's routes.
pub const ROUTE_PROTOCOL: u8 = 201;

/// One route as this backend sees it: destination, and the gateway (`None`: blackhole; pod
/// subnets are IPv4, blackholes of either family).
type RouteKey = (IpCidr, Option<Ipv4Addr>);

/// Programs pod-network routes with rtnetlink.
#[derive(Debug, Clone, Default)]
pub struct NetlinkRoutes {}

impl NetlinkRoutes {
    /// A backend for the calling thread's network namespace.
    pub fn new() -> Self {
        NetlinkRoutes {}
    }
}

fn netlink_error(operation: impl Into<String>, err: impl std::fmt::Display) -> RouteError {
    RouteError::Netlink {
        operation: operation.into(),
        detail: err.to_string(),
    }
}

fn connect() -> Result<Handle, RouteError> {
    let (connection, handle, _) =
        rtnetlink::new_connection().map_err(|e| netlink_error("open netlink socket", e))?;
    // The connection ends when the handle (and so the request channel) is dropped.
    tokio::spawn(connection);
    Ok(handle)
}

fn message(key: &RouteKey) -> RouteMessage {
    let protocol = RouteProtocol::Other(ROUTE_PROTOCOL);
    match key {
        (IpCidr::V4(destination), gateway) => {
            let builder = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(destination.network(), destination.prefix())
                .protocol(protocol);
            match gateway {
                Some(gateway) => builder.gateway(*gateway).build(),
                None => builder.kind(RouteType::BlackHole).build(),
            }
        }
        (IpCidr::V6(destination), _) => RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(destination.network(), destination.prefix())
            .protocol(protocol)
            .kind(RouteType::BlackHole)
            .build(),
    }
}

fn describe(key: &RouteKey) -> String {
    match key {
        (destination, Some(gateway)) => format!("route {destination} via {gateway}"),
        (destination, None) => format!("blackhole {destination}"),
    }
}

/// The key of a route of ours in the main table, `None` for anybody else's.
fn owned_key(route: &RouteMessage) -> Option<RouteKey> {
    if route.header.protocol != RouteProtocol::Other(ROUTE_PROTOCOL)
        || route.header.table != RouteHeader::RT_TABLE_MAIN
    {
        return None;
    }
    let mut destination = None;
    let mut gateway = None;
    let prefix = route.header.destination_prefix_length;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => {
                destination = Ipv4Cidr::parse(&format!("{ip}/{prefix}")).map(IpCidr::V4)
            }
            RouteAttribute::Destination(RouteAddress::Inet6(ip)) => {
                destination = Ipv6Cidr::parse(&format!("{ip}/{prefix}")).map(IpCidr::V6)
            }
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => gateway = Some(*ip),
            _ => {}
        }
    }
    let cidr = destination?;
    match route.header.kind {
        RouteType::BlackHole => Some((cidr, None)),
        RouteType::Unicast => Some((cidr, gateway)),
        _ => None,
    }
}

async fn owned_routes(handle: &Handle) -> Result<Vec<(RouteKey, RouteMessage)>, RouteError> {
    let mut routes: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink_error("list routes", e))?;
    // A host without IPv6 has no IPv6 routes to list.
    if std::path::Path::new("/proc/net/if_inet6").exists() {
        let v6: Vec<RouteMessage> = handle
            .route()
            .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
            .execute()
            .try_collect()
            .await
            .map_err(|e| netlink_error("list IPv6 routes", e))?;
        routes.extend(v6);
    }
    Ok(routes
        .into_iter()
        .filter_map(|r| owned_key(&r).map(|k| (k, r)))
        .collect())
}

fn desired_keys(desired: &HostRoutes) -> BTreeSet<RouteKey> {
    desired
        .routes
        .iter()
        .map(|r| (IpCidr::V4(r.destination), Some(r.gateway)))
        .chain(desired.blackholes.iter().map(|b| (*b, None)))
        .collect()
}

#[async_trait]
impl RouteBackend for NetlinkRoutes {
    async fn sync(&self, desired: &HostRoutes) -> Result<(), RouteError> {
        let handle = connect()?;
        let wanted = desired_keys(desired);
        let present = owned_routes(&handle).await?;
        let mut first_error = None;
        let mut have = BTreeSet::new();
        for (key, route) in present {
            if wanted.contains(&key) && have.insert(key) {
                continue;
            }
            if let Err(err) = handle.route().del(route).execute().await {
                first_error.get_or_insert(netlink_error(format!("delete {}", describe(&key)), err));
            }
        }
        // A node whose address is not on a directly connected network cannot be a host-gw
        // next hop: the kernel refuses that route, the others still go in, the error is
        // reported and the next sync tries again.
        for key in wanted.difference(&have) {
            if let Err(err) = handle.route().add(message(key)).replace().execute().await {
                first_error.get_or_insert(netlink_error(format!("add {}", describe(key)), err));
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn cleanup(&self) -> Result<(), RouteError> {
        let handle = connect()?;
        for (key, route) in owned_routes(&handle).await? {
            handle
                .route()
                .del(route)
                .execute()
                .await
                .map_err(|e| netlink_error(format!("delete {}", describe(&key)), e))?;
        }
        Ok(())
    }
}
