//! The node's own objects: registering the Node (capacity, allocatable, addresses, nodeInfo,
//! labels, pod CIDR, the agent's server port), renewing its Lease in `kube-node-lease`, and
//! posting its conditions (Ready, MemoryPressure, DiskPressure, PIDPressure).
//!
//! Writes only this node's Node and Lease.

use super::{node_events, NodeConfig, NodeError};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::SystemTime;

/// A `metav1.MicroTime` string for now.
fn micro_time_now() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S.%6fZ")
        .to_string()
}

/// Machine facts used when the configuration gives none.
pub(crate) fn machine_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo_field(&text, "MemTotal:")
}

fn meminfo_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

fn memory_pressure() -> bool {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| meminfo_field(&t, "MemAvailable:"))
        .is_some_and(|available| available < 100 << 20)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// The node's labels: the well-known ones plus the configured ones.
pub(crate) fn node_labels(config: &NodeConfig) -> BTreeMap<String, String> {
    let arch = if cfg!(target_arch = "x86_64") {
        "amd64"
    } else if cfg!(target_arch = "aarch64") {
        "arm64"
    } else {
        std::env::consts::ARCH
    };
    let mut labels = BTreeMap::from([
        ("kubernetes.io/hostname".to_string(), config.name.clone()),
        ("kubernetes.io/os".to_string(), "linux".to_string()),
        ("kubernetes.io/arch".to_string(), arch.to_string()),
        ("beta.kubernetes.io/os".to_string(), "linux".to_string()),
        ("beta.kubernetes.io/arch".to_string(), arch.to_string()),
    ]);
    labels.extend(config.labels.clone());
    labels
}

fn conditions(now: &str, previous: Option<&Value>, pressure: bool) -> Value {
    let since = |kind: &str, status: &str| {
        previous
            .and_then(|p| p.pointer("/status/conditions"))
            .and_then(Value::as_array)
            .and_then(|list| {
                list.iter()
                    .find(|c| c["type"] == json!(kind) && c["status"] == json!(status))
            })
            .and_then(|c| c.get("lastTransitionTime").cloned())
            .unwrap_or_else(|| json!(now))
    };
    let condition = |kind: &str, ok: bool, reason: &str, message: &str| {
        let status = if ok { "True" } else { "False" };
        json!({
            "type": kind, "status": status, "reason": reason, "message": message,
            "lastHeartbeatTime": now, "lastTransitionTime": since(kind, status),
        })
    };
    json!([
        condition(
            "MemoryPressure",
            pressure,
            if pressure {
                "KubeletHasInsufficientMemory"
            } else {
                "KubeletHasSufficientMemory"
            },
            "kubelet has sufficient memory available"
        ),
        condition(
            "DiskPressure",
            false,
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        condition(
            "PIDPressure",
            false,
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        condition(
            "Ready",
            true,
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}

/// The Node object this agent registers.
pub(crate) fn node_object(
    config: &NodeConfig,
    capacity: &BTreeMap<String, String>,
    allocatable: &BTreeMap<String, String>,
    server_port: u16,
    runtime_name: &str,
) -> Value {
    let now = super::pod_status::time_string(SystemTime::now());
    let mut spec = json!({});
    if let Some(cidr) = &config.pod_cidr {
        spec = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
    }
    let machine_id = read_trimmed("/etc/machine-id");
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": config.name, "labels": node_labels(config)},
        "spec": spec,
        "status": {
            "capacity": capacity,
            "allocatable": allocatable,
            "addresses": [
                {"type": "InternalIP", "address": config.address.to_string()},
                {"type": "Hostname", "address": config.name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": server_port}},
            "nodeInfo": {
                "machineID": machine_id,
                "systemUUID": machine_id,
                "bootID": read_trimmed("/proc/sys/kernel/random/boot_id"),
                "kernelVersion": read_trimmed("/proc/sys/kernel/osrelease"),
                "osImage": "Capstan node",
                "containerRuntimeVersion": format!("{runtime_name}://{}", env!("CARGO_PKG_VERSION")),
                "kubeletVersion": "v1.33.0-capstan",
                "kubeProxyVersion": "v1.33.0-capstan",
                "operatingSystem": "linux",
                "architecture": node_labels(config).get("kubernetes.io/arch").cloned().unwrap_or_default(),
            },
            "conditions": conditions(&now, None, false),
        },
    })
}

/// Creates the Node, or updates an existing one (a restarted agent) with fresh facts; returns
/// the reasons of the conditions this changed ([`node_events::condition_changes`]).
pub(crate) async fn register(
    client: &kube::Client,
    node: Value,
) -> Result<Vec<&'static str>, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let name = node["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let typed: Node = serde_json::from_value(node.clone())
        .map_err(|e| NodeError::ContainerConfig(format!("node object: {e}")))?;
    let conditions = &node["status"]["conditions"];
    match api.create(&PostParams::default(), &typed).await {
        Ok(_) => Ok(node_events::condition_changes(None, conditions)),
        Err(kube::Error::Api(response)) if response.code == 409 => {
            let previous = api
                .get_opt(&name)
                .await
                .map_err(NodeError::Api)?
                .and_then(|n| serde_json::to_value(n.status?.conditions?).ok());
            let meta_spec =
                json!({"metadata": {"labels": node["metadata"]["labels"]}, "spec": node["spec"]});
            api.patch(&name, &PatchParams::default(), &Patch::Merge(meta_spec))
                .await
                .map_err(NodeError::Api)?;
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": node["status"]})),
            )
            .await
            .map_err(NodeError::Api)?;
            Ok(node_events::condition_changes(
                previous.as_ref(),
                conditions,
            ))
        }
        Err(err) => Err(NodeError::Api(err)),
    }
}

/// Registers the Node `config` names if it does not exist yet (labels, addresses and the
/// configured pod CIDR; no status, so it is not Ready) and waits until it has a pod subnet —
/// its own `config.pod_cidr`, or one the node IPAM controller gave it — returning it. An
/// agent whose runtime needs the subnet up front (a Docker bridge network) calls this before
/// building the runtime.
pub async fn await_pod_cidr(
    client: &kube::Client,
    config: &NodeConfig,
    timeout: std::time::Duration,
) -> Result<String, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let mut spec = json!({});
    if let Some(cidr) = &config.pod_cidr {
        spec = json!({"podCIDR": cidr, "podCIDRs": [cidr]});
    }
    let node: Node = serde_json::from_value(json!({
        "metadata": {"name": config.name, "labels": node_labels(config)},
        "spec": spec,
    }))
    .map_err(|e| NodeError::ContainerConfig(format!("node object: {e}")))?;
    match api.create(&PostParams::default(), &node).await {
        Ok(_) => {}
        Err(kube::Error::Api(response)) if response.code == 409 => {}
        Err(err) => return Err(NodeError::Api(err)),
    }
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let current = api.get(&config.name).await.map_err(NodeError::Api)?;
        if let Some(cidr) = current
            .spec
            .and_then(|s| s.pod_cidr)
            .filter(|c| !c.is_empty())
        {
            return Ok(cidr);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::NoPodCidr {
                node: config.name.clone(),
                waited: timeout,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// Renews the node's Lease (creating it when missing).
pub(crate) async fn renew_lease(
    client: &kube::Client,
    config: &NodeConfig,
) -> Result<(), NodeError> {
    let api: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let now = micro_time_now();
    let seconds = config.lease_duration.as_secs() as i64;
    let patch = json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": config.name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": config.name, "leaseDurationSeconds": seconds, "renewTime": now},
    });
    match api
        .patch(&config.name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(response)) if response.code == 404 => {
            let mut lease: Lease = serde_json::from_value(patch)
                .map_err(|e| NodeError::ContainerConfig(format!("lease object: {e}")))?;
            lease.spec.get_or_insert_with(Default::default).acquire_time =
                lease.spec.as_ref().and_then(|s| s.renew_time.clone());
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(response)) if response.code == 409 => Ok(()),
                Err(err) => Err(NodeError::Api(err)),
            }
        }
        Err(err) => Err(NodeError::Api(err)),
    }
}

/// Posts the node's conditions with a fresh heartbeat; returns the reasons of the conditions
/// this changed ([`node_events::condition_changes`]).
pub(crate) async fn post_status(
    client: &kube::Client,
    config: &NodeConfig,
) -> Result<Vec<&'static str>, NodeError> {
    let api: Api<Node> = Api::all(client.clone());
    let previous = api
        .get_opt(&config.name)
        .await
        .map_err(NodeError::Api)?
        .and_then(|n| serde_json::to_value(n).ok());
    let now = super::pod_status::time_string(SystemTime::now());
    let pressure = config.capacity.is_none() && memory_pressure();
    let conditions = conditions(&now, previous.as_ref(), pressure);
    api.patch_status(
        &config.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"conditions": conditions}})),
    )
    .await
    .map_err(NodeError::Api)?;
    let before = previous.as_ref().map(|p| &p["status"]["conditions"]);
    Ok(node_events::condition_changes(before, &conditions))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meminfo_is_read_in_bytes() {
        let text = "MemTotal:       16384 kB\nMemAvailable:    1024 kB\n";
        assert_eq!(meminfo_field(text, "MemTotal:"), Some(16384 * 1024));
        assert_eq!(meminfo_field(text, "MemAvailable:"), Some(1024 * 1024));
        assert_eq!(meminfo_field(text, "Swap:"), None);
    }
}
