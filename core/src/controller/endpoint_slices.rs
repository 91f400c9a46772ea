//! The EndpointSlice controller: for each Service with a selector, `discovery.k8s.io/v1`
//! EndpointSlices (at most 100 endpoints each, one group per distinct port set) labelled
//! `kubernetes.io/service-name` and owned by the Service. Unlike Endpoints, slices keep
//! terminating pods, with `ready: false`, `serving` from the pod's readiness and
//! `terminating: true`, so proxies can drain them.

use super::endpoints::{
    pod_reference, service_endpoints, services_for_pod, PodEndpoint, ServedPort,
};
use super::informer::Informer;
use super::runner::{Action, Reconciler};
use super::{ControllerContext, ControllerError, ObjectKey, WorkQueue};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, PostParams};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// The label naming a slice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The label naming the controller managing a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`].
pub const MANAGED_BY: &str = "endpointslice-controller.k8s.io";
/// Endpoints per slice at most.
const MAX_ENDPOINTS: usize = 100;

/// Reconciles EndpointSlices.
pub struct EndpointSliceController {
    ctx: ControllerContext,
    services: Informer<Service>,
    pods: Informer<Pod>,
    slices: Informer<EndpointSlice>,
}

const BY_SERVICE: &str = "endpointslice-service";

impl EndpointSliceController {
    /// A controller over the context's shared informers.
    pub fn new(ctx: &ControllerContext) -> Self {
        let slices: Informer<EndpointSlice> = ctx.informers.informer();
        slices.add_index(
            BY_SERVICE,
            Arc::new(|s: &EndpointSlice| {
                let labels = s.metadata.labels.clone().unwrap_or_default();
                if labels.get(MANAGED_BY_LABEL).map(String::as_str) != Some(MANAGED_BY) {
                    return Vec::new();
                }
                labels
                    .get(SERVICE_NAME_LABEL)
                    .map(|name| {
                        vec![format!(
                            "{}/{name}",
                            s.metadata.namespace.clone().unwrap_or_default()
                        )]
                    })
                    .unwrap_or_default()
            }),
        );
        EndpointSliceController {
            ctx: ctx.clone(),
            services: ctx.informers.informer(),
            pods: ctx.informers.informer(),
            slices,
        }
    }

    pub(crate) fn triggers(
        &self,
        queue: &Arc<WorkQueue<ObjectKey>>,
        stop: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let own = super::triggers::enqueue_own(&self.services, queue.clone(), stop.clone());
        let services = self.services.clone();
        let pods = super::triggers::enqueue_changes(
            &self.pods,
            queue.clone(),
            stop.clone(),
            move |change| services_for_pod(&services, change),
        );
        let slices =
            super::triggers::enqueue_changes(&self.slices, queue.clone(), stop.clone(), |change| {
                let Some(slice) = change.object() else {
                    return Vec::new();
                };
                let labels = slice.metadata.labels.clone().unwrap_or_default();
                match (labels.get(SERVICE_NAME_LABEL), labels.get(MANAGED_BY_LABEL)) {
                    (Some(service), Some(by)) if by == MANAGED_BY => vec![ObjectKey::namespaced(
                        slice.metadata.namespace.clone().unwrap_or_default(),
                        service.clone(),
                    )],
                    _ => Vec::new(),
                }
            });
        vec![own, pods, slices]
    }
}

fn endpoint(e: &PodEndpoint, address: &str) -> Endpoint {
    Endpoint {
        addresses: vec![address.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(e.ready),
            serving: Some(e.serving),
            terminating: Some(e.terminating),
        }),
        node_name: e.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
        target_ref: Some(pod_reference(&e.pod)),
        hostname: e.hostname.clone(),
        ..Default::default()
    }
}

/// The address families a Service's slices carry (`spec.ipFamilies`, IPv4 by default), as
/// slice address types.
fn address_types(service: &Service) -> Vec<&'static str> {
    let families = service
        .spec
        .as_ref()
        .and_then(|s| s.ip_families.clone())
        .unwrap_or_default();
    let mut types: Vec<&'static str> = families
        .iter()
        .map(|f| if f == "IPv6" { "IPv6" } else { "IPv4" })
        .collect();
    types.dedup();
    if types.is_empty() {
        types.push("IPv4");
    }
    types
}

/// The slices' contents for one address type: (ports, endpoints) per slice, each pod at its
/// address of that family (pods without one are left out).
fn desired_slices(
    endpoints: &[PodEndpoint],
    address_type: &str,
) -> Vec<(Vec<EndpointPort>, Vec<Endpoint>)> {
    let mut groups: BTreeMap<Vec<ServedPort>, Vec<Endpoint>> = BTreeMap::new();
    for e in endpoints {
        let Some(address) = e
            .ips
            .iter()
            .find(|ip| ip.contains(':') == (address_type == "IPv6"))
        else {
            continue;
        };
        let mut ports = e.ports.clone();
        ports.sort();
        groups.entry(ports).or_default().push(endpoint(e, address));
    }
    let mut slices = Vec::new();
    for (ports, endpoints) in groups {
        let ports: Vec<EndpointPort> = ports
            .into_iter()
            .map(|(name, port, protocol, app_protocol)| EndpointPort {
                name,
                port: Some(port),
                protocol: Some(protocol),
                app_protocol,
            })
            .collect();
        for chunk in endpoints.chunks(MAX_ENDPOINTS) {
            slices.push((ports.clone(), chunk.to_vec()));
        }
    }
    slices
}

/// The name of a Service's `index`-th slice: stable (so a lagging cache cannot make a
/// duplicate) and, like Kubernetes' generated names, the Service's name plus a short suffix.
fn slice_name(service: &str, uid: &str, index: usize) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for b in uid.bytes().chain(index.to_string().bytes()) {
        hash ^= b as u32;
        hash = hash.wrapping_mul(0x0100_0193);
    }
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let suffix: String = (0..5)
        .map(|i| ALPHABET[((hash >> (i * 6)) as usize) % ALPHABET.len()] as char)
        .collect();
    let prefix: String = service.chars().take(57).collect();
    format!("{prefix}-{suffix}")
}

#[async_trait::async_trait]
impl Reconciler for EndpointSliceController {
    fn name(&self) -> &str {
        "endpointslice"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        let namespace = key.namespace_or_empty();
        let api: Api<EndpointSlice> = Api::namespaced(self.ctx.client.clone(), namespace);
        let mut existing: Vec<Arc<EndpointSlice>> =
            self.slices.by_index(BY_SERVICE, &key.to_string());
        existing.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let service = self.services.get(key);
        let wanted: Vec<(&str, Vec<EndpointPort>, Vec<Endpoint>)> = match &service {
            Some(service) => {
                let pods = self.pods.in_namespace(namespace);
                match service_endpoints(service, &pods) {
                    Some(endpoints) => address_types(service)
                        .into_iter()
                        .flat_map(|family| {
                            desired_slices(&endpoints, family)
                                .into_iter()
                                .map(move |(ports, endpoints)| (family, ports, endpoints))
                        })
                        .collect(),
                    None => Vec::new(),
                }
            }
            None => Vec::new(),
        };
        let Some(service) = service else {
            // The Service is gone: its slices go too (the garbage collector would also do it).
            for slice in existing {
                let name = slice.metadata.name.clone().unwrap_or_default();
                match api.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(err) if super::error::is_not_found(&err) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            return Ok(Action::Done);
        };
        let mut labels = service.metadata.labels.clone().unwrap_or_default();
        labels.insert(SERVICE_NAME_LABEL.into(), key.name.clone());
        labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
        let owner = OwnerReference {
            api_version: "v1".into(),
            kind: "Service".into(),
            name: key.name.clone(),
            uid: service.metadata.uid.clone().unwrap_or_default(),
            controller: Some(true),
            block_owner_deletion: Some(true),
        };
        // A Service with no selected endpoints still gets one (empty) slice, of its first
        // family.
        let wanted = if wanted.is_empty()
            && service
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|s| !s.is_empty())
        {
            vec![(address_types(&service)[0], Vec::new(), Vec::new())]
        } else {
            wanted
        };
        let uid = service.metadata.uid.clone().unwrap_or_default();
        let mut kept = Vec::new();
        for (index, (address_type, ports, endpoints)) in wanted.into_iter().enumerate() {
            let name = slice_name(&key.name, &uid, index);
            let mut slice = EndpointSlice {
                metadata: kube::api::ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.to_string()),
                    labels: Some(labels.clone()),
                    owner_references: Some(vec![owner.clone()]),
                    ..Default::default()
                },
                address_type: address_type.into(),
                endpoints,
                ports: Some(ports),
            };
            kept.push(name.clone());
            let current = existing
                .iter()
                .find(|s| s.metadata.name.as_deref() == Some(name.as_str()));
            if let Some(current) = current {
                let same = current.endpoints == slice.endpoints
                    && current.address_type == slice.address_type
                    && current.ports.clone().unwrap_or_default()
                        == slice.ports.clone().unwrap_or_default()
                    && current.metadata.labels == slice.metadata.labels;
                if same {
                    continue;
                }
                slice.metadata.resource_version = current.metadata.resource_version.clone();
                api.replace(&name, &PostParams::default(), &slice).await?;
                continue;
            }
            match api.create(&PostParams::default(), &slice).await {
                Ok(_) => {}
                // Created earlier but not cached yet: overwrite with what is wanted now.
                Err(err) if super::error::is_conflict(&err) => {
                    let current = api.get(&name).await?;
                    slice.metadata.resource_version = current.metadata.resource_version;
                    api.replace(&name, &PostParams::default(), &slice).await?;
                }
                Err(err) => return Err(err.into()),
            }
        }
        for surplus in existing {
            let name = surplus.metadata.name.clone().unwrap_or_default();
            if kept.contains(&name) {
                continue;
            }
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => {}
                Err(err) if super::error::is_not_found(&err) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(Action::Done)
    }
}
