//! The addresses Services and EndpointSlices carry, as the proxy and the cluster DNS both
//! read them: a Service's cluster IPs, a slice's Service, and its ready endpoint addresses.

use k8s_openapi::api::core::v1::ServiceSpec;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use std::net::IpAddr;

/// The label naming an EndpointSlice's Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A Service's cluster IPs (`clusterIPs`, else `clusterIP`), IPv4 first; none when headless.
pub(crate) fn cluster_ips(spec: &ServiceSpec) -> Vec<IpAddr> {
    let listed = spec.cluster_ips.clone().unwrap_or_default();
    let all = if listed.is_empty() {
        spec.cluster_ip.iter().cloned().collect()
    } else {
        listed
    };
    let mut ips: Vec<IpAddr> = all.iter().filter_map(|ip| ip.parse().ok()).collect();
    ips.sort_by_key(|ip| ip.is_ipv6());
    ips
}

/// The name of the Service a slice belongs to.
pub(crate) fn slice_service(slice: &EndpointSlice) -> Option<&String> {
    slice.metadata.labels.as_ref()?.get(SERVICE_NAME_LABEL)
}

/// Every address of the slice's ready endpoints (not-ready and terminating ones get no
/// traffic), with its endpoint.
pub(crate) fn ready_addresses(slice: &EndpointSlice) -> impl Iterator<Item = (IpAddr, &Endpoint)> {
    slice
        .endpoints
        .iter()
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(true))
        .flat_map(|e| {
            e.addresses
                .iter()
                .filter_map(move |a| a.parse::<IpAddr>().ok().map(|ip| (ip, e)))
        })
}
