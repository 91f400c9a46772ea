//! The endpoints of the `default/kubernetes` Service, as kube-apiserver's lease reconciler keeps
//! them: every API server of a cluster holds a Lease in `kube-system` naming its advertised
//! address and renews it; each writes the Service's Endpoints and EndpointSlice from the
//! addresses whose Leases are fresh. So the Service's cluster IP leads to a live API server
//! (in-cluster clients: `KUBERNETES_SERVICE_HOST`), and `kubectl describe service kubernetes`
//! lists them. A server that stops takes itself out; one that dies drops out when its Lease
//! expires.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The label on the API servers' Leases.
const LEASE_LABEL: &str = "capstan.dev/apiserver-endpoint";
const LEASE_NAMESPACE: &str = "kube-system";
/// The Service, its Endpoints and its EndpointSlice share this name in `default`.
const NAME: &str = "kubernetes";

/// How often an API server renews its Lease and rewrites the endpoints; its Lease lasts three
/// times as long.
#[derive(Debug, Clone)]
pub struct EndpointsConfig {
    /// The renewal period (Kubernetes: 10 s).
    pub renew_interval: Duration,
}

impl Default for EndpointsConfig {
    fn default() -> Self {
        EndpointsConfig {
            renew_interval: Duration::from_secs(10),
        }
    }
}

fn lease_name(address: &SocketAddr) -> String {
    let host: String = address
        .ip()
        .to_string()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    format!("apiserver-{host}-{}", address.port())
}

/// Keeps this server's Lease and the endpoints until `stop` fires, then takes it out.
pub(super) async fn run(
    client: kube::Client,
    address: SocketAddr,
    config: EndpointsConfig,
    stop: CancellationToken,
) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let name = lease_name(&address);
    let mut tick = tokio::time::interval(config.renew_interval);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        let renewed = renew(&leases, &name, &address, &config).await;
        let written = match renewed {
            Ok(()) => publish(&client, None).await,
            Err(err) => Err(err),
        };
        if let Err(err) = written {
            tracing::warn!(%address, "keeping the kubernetes Service's endpoints failed: {err}");
        }
    }
    let gone = leases
        .delete(&name, &DeleteParams::default())
        .await
        .map(|_| ());
    if let Err(err) = gone.and(publish(&client, Some(&name)).await) {
        tracing::warn!(%address, "taking this API server out of the kubernetes Service failed: {err}");
    }
}

/// Creates or renews this server's Lease.
async fn renew(
    leases: &Api<Lease>,
    name: &str,
    address: &SocketAddr,
    config: &EndpointsConfig,
) -> Result<(), kube::Error> {
    let seconds = (config.renew_interval.as_secs_f64() * 3.0).ceil().max(1.0) as i32;
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": name, "namespace": LEASE_NAMESPACE, "labels": {LEASE_LABEL: "true"}},
        "spec": {
            "holderIdentity": address.to_string(),
            "leaseDurationSeconds": seconds,
            "renewTime": MicroTime(k8s_openapi::jiff::Timestamp::now()),
        },
    });
    leases
        .patch(
            name,
            &PatchParams::apply("capstan-apiserver").force(),
            &Patch::Apply(lease),
        )
        .await
        .map(|_| ())
}

/// The addresses of the API servers whose Leases are fresh (leaving out `without`).
async fn live_addresses(
    client: &kube::Client,
    without: Option<&str>,
) -> Result<Vec<SocketAddr>, kube::Error> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), LEASE_NAMESPACE);
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut addresses: Vec<SocketAddr> = leases
        .list(&ListParams::default().labels(LEASE_LABEL))
        .await?
        .items
        .into_iter()
        .filter(|l| l.metadata.name.as_deref() != without)
        .filter_map(|lease| {
            let spec = lease.spec?;
            let renewed = spec.renew_time?.0;
            let lasts = Duration::from_secs(spec.lease_duration_seconds?.max(0) as u64);
            let fresh = jiff_after(renewed, lasts) > now;
            fresh.then(|| spec.holder_identity?.parse().ok()).flatten()
        })
        .collect();
    addresses.sort();
    addresses.dedup();
    Ok(addresses)
}

fn jiff_after(time: k8s_openapi::jiff::Timestamp, by: Duration) -> k8s_openapi::jiff::Timestamp {
    k8s_openapi::jiff::SignedDuration::try_from(by)
        .ok()
        .and_then(|d| time.checked_add(d).ok())
        .unwrap_or(time)
}

/// Writes the Endpoints and EndpointSlice of the live API servers (and the Service's target
/// port, when they agree on one) wherever they differ from what is stored.
async fn publish(client: &kube::Client, without: Option<&str>) -> Result<(), kube::Error> {
    let addresses = live_addresses(client, without).await?;
    let mut ports: Vec<u16> = addresses.iter().map(SocketAddr::port).collect();
    ports.sort();
    ports.dedup();
    let subsets: Vec<serde_json::Value> = ports
        .iter()
        .map(|port| {
            let ips: Vec<serde_json::Value> = addresses
                .iter()
                .filter(|a| a.port() == *port)
                .map(|a| json!({"ip": a.ip().to_string()}))
                .collect();
            json!({"addresses": ips, "ports": [{"name": "https", "port": port, "protocol": "TCP"}]})
        })
        .collect();
    let endpoints = json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": "default", "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
        "subsets": subsets,
    });
    let ready = json!({"ready": true, "serving": true, "terminating": false});
    let slice_endpoints: Vec<serde_json::Value> = addresses
        .iter()
        .filter(|a| a.is_ipv4())
        .map(|a| json!({"addresses": [a.ip().to_string()], "conditions": ready}))
        .collect();
    let slice_port = ports.first().copied().unwrap_or(443);
    let slice = json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": NAME, "namespace": "default", "labels": {
            "kubernetes.io/service-name": NAME,
            "endpointslice.kubernetes.io/managed-by": "capstan-apiserver",
        }},
        "addressType": "IPv4",
        "endpoints": slice_endpoints,
        "ports": [{"name": "https", "port": slice_port, "protocol": "TCP"}],
    });
    let params = PatchParams::apply("capstan-apiserver").force();
    Api::<Endpoints>::namespaced(client.clone(), "default")
        .patch(NAME, &params, &Patch::Apply(endpoints))
        .await?;
    Api::<EndpointSlice>::namespaced(client.clone(), "default")
        .patch(NAME, &params, &Patch::Apply(slice))
        .await?;
    if let [port] = ports[..] {
        let services: Api<Service> = Api::namespaced(client.clone(), "default");
        if let Some(service) = services.get_opt(NAME).await? {
            let target = service
                .spec
                .and_then(|s| s.ports)
                .and_then(|p| p.into_iter().next())
                .and_then(|p| p.target_port);
            let wanted =
                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port.into());
            if target.as_ref() != Some(&wanted) {
                let patch = json!({"spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}]}});
                services
                    .patch(NAME, &PatchParams::default(), &Patch::Strategic(patch))
                    .await?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_dns_labels() {
        let v4: SocketAddr = "10.0.0.1:6443".parse().unwrap();
        assert_eq!(lease_name(&v4), "apiserver-10-0-0-1-6443");
        let v6: SocketAddr = "[fd00::1]:6443".parse().unwrap();
        assert_eq!(lease_name(&v6), "apiserver-fd00--1-6443");
    }
}
