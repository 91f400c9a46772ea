//! The Endpoints controller: for each Service with a selector, an Endpoints object of the same
//! name listing the selected pods' IPs — ready ones under `addresses`, the others under
//! `notReadyAddresses` — with each service port resolved against the pod (named target ports
//! by container port name). Terminating pods are left out unless the Service publishes
//! not-ready addresses. Services without a selector keep user-managed Endpoints.

use super::informer::{Change, Informer};
use super::pod_facts;
use super::runner::{Action, Reconciler};
use super::{ControllerContext, ControllerError, ObjectKey, WorkQueue};
use k8s_openapi::api::core::v1::{
    EndpointAddress, EndpointPort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, PostParams};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A service port as a pod serves it: (name, port, protocol, appProtocol).
pub(crate) type ServedPort = (Option<String>, i32, String, Option<String>);

/// One pod behind a Service, with the service ports it serves.
#[derive(Debug, Clone)]
pub(crate) struct PodEndpoint {
    pub pod: Arc<Pod>,
    /// The pod's primary IP (`status.podIP`).
    pub ip: String,
    /// Every IP of the pod, one per family (`status.podIPs`, else the primary one).
    pub ips: Vec<String>,
    pub ready: bool,
    pub serving: bool,
    pub terminating: bool,
    /// (name, port, protocol, appProtocol) per service port this pod serves.
    pub ports: Vec<ServedPort>,
    /// The pod's hostname under the Service, when its `subdomain` names the Service (a
    /// StatefulSet's pods under their headless Service): what cluster DNS publishes.
    pub hostname: Option<String>,
}

fn resolve_port(pod: &Pod, target: Option<&IntOrString>, port: i32, protocol: &str) -> Option<i32> {
    match target {
        None => Some(port),
        Some(IntOrString::Int(n)) => Some(*n),
        Some(IntOrString::String(name)) => pod
            .spec
            .as_ref()?
            .containers
            .iter()
            .flat_map(|c| c.ports.iter().flatten())
            .find(|p| {
                p.name.as_deref() == Some(name.as_str())
                    && p.protocol.as_deref().unwrap_or("TCP") == protocol
            })
            .map(|p| p.container_port),
    }
}

/// The pods a Service selects and what each serves (`None` when the Service has no selector).
pub(crate) fn service_endpoints(service: &Service, pods: &[Arc<Pod>]) -> Option<Vec<PodEndpoint>> {
    let spec = service.spec.as_ref()?;
    let selector = spec.selector.as_ref().filter(|s| !s.is_empty())?;
    let publish_not_ready = spec.publish_not_ready_addresses == Some(true);
    let mut endpoints = Vec::new();
    for pod in pods {
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) || pod_facts::is_terminal(pod) {
            continue;
        }
        let Some(ip) = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .filter(|ip| !ip.is_empty())
        else {
            continue;
        };
        let mut ips: Vec<String> = pod
            .status
            .as_ref()
            .and_then(|s| s.pod_ips.as_ref())
            .map(|listed| listed.iter().map(|p| p.ip.clone()).collect())
            .unwrap_or_default();
        if !ips.contains(&ip) {
            ips.insert(0, ip.clone());
        }
        let terminating = pod.metadata.deletion_timestamp.is_some();
        let serving = pod_facts::is_ready(pod) || publish_not_ready;
        let ports = spec
            .ports
            .iter()
            .flatten()
            .filter_map(|sp| {
                let protocol = sp.protocol.clone().unwrap_or_else(|| "TCP".into());
                resolve_port(pod, sp.target_port.as_ref(), sp.port, &protocol)
                    .map(|port| (sp.name.clone(), port, protocol, sp.app_protocol.clone()))
            })
            .collect();
        let pod_spec = pod.spec.as_ref();
        let hostname = pod_spec
            .and_then(|s| s.hostname.clone())
            .filter(|h| !h.is_empty())
            .filter(|_| {
                pod_spec.and_then(|s| s.subdomain.as_deref()) == service.metadata.name.as_deref()
            });
        endpoints.push(PodEndpoint {
            pod: pod.clone(),
            hostname,
            ip,
            ips,
            ready: serving && !terminating,
            serving,
            terminating,
            ports,
        });
    }
    endpoints.sort_by(|a, b| a.ip.cmp(&b.ip));
    Some(endpoints)
}

/// The reference from an endpoint to its pod.
pub(crate) fn pod_reference(pod: &Pod) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".into()),
        namespace: pod.metadata.namespace.clone(),
        name: pod.metadata.name.clone(),
        uid: pod.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Keys of the Services in the pod's namespace whose selector matches the pod (before or
/// after the change).
pub(crate) fn services_for_pod(
    services: &Informer<Service>,
    change: &Change<Pod>,
) -> Vec<ObjectKey> {
    let pods: Vec<&Arc<Pod>> = match change {
        Change::Resync => return services.keys(),
        Change::Applied { old, new } => old.iter().chain(std::iter::once(new)).collect(),
        Change::Deleted(pod) => vec![pod],
    };
    let mut keys = Vec::new();
    for pod in pods {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        for service in services.in_namespace(&namespace) {
            let selects = service
                .spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .is_some_and(|sel| {
                    !sel.is_empty() && sel.iter().all(|(k, v)| labels.get(k) == Some(v))
                });
            let key = ObjectKey::of(service.as_ref());
            if selects && !keys.contains(&key) {
                keys.push(key);
            }
        }
    }
    keys
}

/// Reconciles Endpoints.
pub struct EndpointsController {
    ctx: ControllerContext,
    services: Informer<Service>,
    pods: Informer<Pod>,
    endpoints: Informer<Endpoints>,
}

impl EndpointsController {
    /// A controller over the context's shared informers.
    pub fn new(ctx: &ControllerContext) -> Self {
        EndpointsController {
            ctx: ctx.clone(),
            services: ctx.informers.informer(),
            pods: ctx.informers.informer(),
            endpoints: ctx.informers.informer(),
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
        // A changed or deleted Endpoints object is put back.
        let services = self.services.clone();
        let endpoints = super::triggers::enqueue_changes(
            &self.endpoints,
            queue.clone(),
            stop.clone(),
            move |change| {
                change
                    .object()
                    .map(|o| ObjectKey::of(o.as_ref()))
                    .filter(|k| services.get(k).is_some())
                    .into_iter()
                    .collect()
            },
        );
        vec![own, pods, endpoints]
    }
}

fn subsets(endpoints: &[PodEndpoint], publish_not_ready: bool) -> Vec<EndpointSubset> {
    // One subset per distinct port set, as Kubernetes repacks them.
    type Addresses = (Vec<EndpointAddress>, Vec<EndpointAddress>);
    let mut groups: BTreeMap<Vec<ServedPort>, Addresses> = BTreeMap::new();
    for endpoint in endpoints {
        if endpoint.ports.is_empty() || (endpoint.terminating && !publish_not_ready) {
            continue;
        }
        let address = EndpointAddress {
            ip: endpoint.ip.clone(),
            node_name: endpoint.pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            target_ref: Some(pod_reference(&endpoint.pod)),
            hostname: endpoint.hostname.clone(),
        };
        let mut ports = endpoint.ports.clone();
        ports.sort();
        let entry = groups.entry(ports).or_default();
        if endpoint.serving {
            entry.0.push(address);
        } else {
            entry.1.push(address);
        }
    }
    groups
        .into_iter()
        .map(|(ports, (ready, not_ready))| EndpointSubset {
            addresses: (!ready.is_empty()).then_some(ready),
            not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
            ports: Some(
                ports
                    .into_iter()
                    .map(|(name, port, protocol, app_protocol)| EndpointPort {
                        name,
                        port,
                        protocol: Some(protocol),
                        app_protocol,
                    })
                    .collect(),
            ),
        })
        .collect()
}

#[async_trait::async_trait]
impl Reconciler for EndpointsController {
    fn name(&self) -> &str {
        "endpoints"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        let namespace = key.namespace_or_empty();
        let api: Api<Endpoints> = Api::namespaced(self.ctx.client.clone(), namespace);
        let Some(service) = self.services.get(key) else {
            if self.endpoints.get(key).is_some() {
                match api.delete(&key.name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(err) if super::error::is_not_found(&err) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            return Ok(Action::Done);
        };
        let pods = self.pods.in_namespace(namespace);
        let Some(endpoints) = service_endpoints(&service, &pods) else {
            return Ok(Action::Done);
        };
        let publish = service
            .spec
            .as_ref()
            .and_then(|s| s.publish_not_ready_addresses)
            == Some(true);
        let subsets = subsets(&endpoints, publish);
        let mut labels = service.metadata.labels.clone().unwrap_or_default();
        if service.spec.as_ref().and_then(|s| s.cluster_ip.as_deref()) == Some("None") {
            labels.insert("service.kubernetes.io/headless".into(), String::new());
        }
        let existing = self.endpoints.get(key);
        let wanted_subsets = (!subsets.is_empty()).then_some(subsets);
        if let Some(existing) = &existing {
            if existing.subsets == wanted_subsets
                && existing.metadata.labels.clone().unwrap_or_default() == labels
            {
                return Ok(Action::Done);
            }
        }
        let mut object = Endpoints {
            metadata: kube::api::ObjectMeta {
                name: Some(key.name.clone()),
                namespace: Some(namespace.to_string()),
                labels: Some(labels),
                ..Default::default()
            },
            subsets: wanted_subsets,
        };
        match existing {
            Some(existing) => {
                object.metadata.resource_version = existing.metadata.resource_version.clone();
                object.metadata.annotations = existing.metadata.annotations.clone();
                api.replace(&key.name, &PostParams::default(), &object)
                    .await?;
            }
            None => match api.create(&PostParams::default(), &object).await {
                Ok(_) => {}
                // Created meanwhile (or not cached yet): the next change reconciles again.
                Err(err) if super::error::is_conflict(&err) => {
                    let current = api.get(&key.name).await?;
                    object.metadata.resource_version = current.metadata.resource_version;
                    api.replace(&key.name, &PostParams::default(), &object)
                        .await?;
                }
                Err(err) => return Err(err.into()),
            },
        }
        Ok(Action::Done)
    }
}
