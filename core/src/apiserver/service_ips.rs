//! Allocation of Service cluster IPs (from the service CIDR) and node ports (30000-32767 by
//! default), persisted in the store and claimed by compare-and-swap, so allocations survive
//! restarts and several API servers never hand out the same address.

use super::{ApiError, Cause};
pub use crate::cidr::Ipv4Cidr;
use crate::store::{Store, StoreError};
use bytes::Bytes;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::sync::Arc;

const IP_KEY: &str = "/ranges/serviceips";
const PORT_KEY: &str = "/ranges/servicenodeports";

/// Settles a new Service's dual-stack fields on this IPv4-only cluster, as Kubernetes does
/// on a single-stack one: `PreferDualStack` keeps the IPv4 family only; `RequireDualStack`,
/// an IPv6 primary family, or two families under `SingleStack` are invalid.
fn settle_ip_families(object: &mut Value) -> Result<(), ApiError> {
    let invalid = |cause: Cause| ApiError::invalid("Service", "", vec![cause]);
    let policy = object
        .pointer("/spec/ipFamilyPolicy")
        .cloned()
        .unwrap_or_else(|| Value::String("SingleStack".into()));
    let families: Vec<Value> = object
        .pointer("/spec/ipFamilies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| vec![Value::String("IPv4".into())]);
    for (i, family) in families.iter().enumerate() {
        if !matches!(family.as_str(), Some("IPv4" | "IPv6")) {
            return Err(invalid(Cause::not_supported(
                format!("spec.ipFamilies[{i}]"),
                family,
                &["IPv4", "IPv6"],
            )));
        }
    }
    match policy.as_str() {
        Some("SingleStack") if families.len() > 1 => Err(invalid(Cause::invalid(
            "spec.ipFamilies",
            &Value::Array(families),
            "when spec.ipFamilyPolicy is SingleStack only one ipFamily is allowed",
        ))),
        Some("RequireDualStack") => Err(invalid(Cause::invalid(
            "spec.ipFamilyPolicy",
            &policy,
            "this cluster is not configured for dual-stack services",
        ))),
        Some("SingleStack" | "PreferDualStack") => {
            if families.first().and_then(Value::as_str) == Some("IPv6") {
                return Err(invalid(Cause::invalid(
                    "spec.ipFamilies[0]",
                    &families[0],
                    "not configured on this cluster",
                )));
            }
            object["spec"]["ipFamilies"] = serde_json::json!(["IPv4"]);
            Ok(())
        }
        _ => Err(invalid(Cause::not_supported(
            "spec.ipFamilyPolicy",
            &policy,
            &["SingleStack", "PreferDualStack", "RequireDualStack"],
        ))),
    }
}

/// Hands out cluster IPs and node ports.
#[derive(Clone)]
pub struct ServiceAllocator {
    store: Arc<dyn Store>,
    cidr: Ipv4Cidr,
    node_ports: (u16, u16),
}

fn random_u32() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

impl ServiceAllocator {
    /// An allocator over `cidr` and the inclusive node-port range.
    pub fn new(store: Arc<dyn Store>, cidr: Ipv4Cidr, node_ports: (u16, u16)) -> Self {
        ServiceAllocator {
            store,
            cidr,
            node_ports,
        }
    }

    /// The service CIDR.
    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    /// Claims one value in the set stored at `key`: `requested` if free, else a random free
    /// one among `low..=high`.
    async fn claim(
        &self,
        key: &str,
        low: u32,
        high: u32,
        requested: Option<u32>,
    ) -> Result<Option<u32>, ApiError> {
        for _ in 0..64 {
            let current = self.store.get(key).await?;
            let mut taken: BTreeSet<u32> = match &current {
                Some(kv) => serde_json::from_slice::<Value>(&kv.value)
                    .ok()
                    .and_then(|v| serde_json::from_value(v["allocated"].clone()).ok())
                    .ok_or_else(|| {
                        ApiError::internal(format!("corrupt allocation record at {key}"))
                    })?,
                None => BTreeSet::new(),
            };
            let chosen = match requested {
                Some(value) if taken.contains(&value) => return Ok(None),
                Some(value) => value,
                None => {
                    let span = high - low + 1;
                    let start = random_u32() % span;
                    match (0..span)
                        .map(|i| low + (start + i) % span)
                        .find(|v| !taken.contains(v))
                    {
                        Some(v) => v,
                        None => return Err(ApiError::internal(format!("range {key} is full"))),
                    }
                }
            };
            taken.insert(chosen);
            let value = Bytes::from(
                serde_json::to_vec(&serde_json::json!({"allocated": taken})).unwrap_or_default(),
            );
            let written = match &current {
                Some(kv) => self
                    .store
                    .update(key, value, kv.mod_revision, None)
                    .await
                    .map(drop),
                None => self.store.create(key, value, None).await.map(drop),
            };
            match written {
                Ok(()) => return Ok(Some(chosen)),
                Err(StoreError::Conflict { .. } | StoreError::AlreadyExists { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(ApiError::unavailable(format!(
            "too much contention allocating from {key}"
        )))
    }

    async fn release(&self, key: &str, value: u32) -> Result<(), ApiError> {
        for _ in 0..64 {
            let Some(kv) = self.store.get(key).await? else {
                return Ok(());
            };
            let mut taken: BTreeSet<u32> = serde_json::from_slice::<Value>(&kv.value)
                .ok()
                .and_then(|v| serde_json::from_value(v["allocated"].clone()).ok())
                .unwrap_or_default();
            if !taken.remove(&value) {
                return Ok(());
            }
            let bytes = Bytes::from(
                serde_json::to_vec(&serde_json::json!({"allocated": taken})).unwrap_or_default(),
            );
            match self.store.update(key, bytes, kv.mod_revision, None).await {
                Ok(_) => return Ok(()),
                Err(StoreError::Conflict { .. }) => continue,
                Err(err) => return Err(err.into()),
            }
        }
        Err(ApiError::unavailable(format!(
            "too much contention releasing from {key}"
        )))
    }

    /// Allocates a cluster IP: the requested one (if in range and free) or any free one.
    pub async fn allocate_ip(&self, requested: Option<&str>) -> Result<Ipv4Addr, ApiError> {
        let size = self.cidr.size();
        let wanted = match requested {
            Some(text) => {
                let ip: Ipv4Addr = text.parse().map_err(|_| {
                    ApiError::invalid(
                        "Service",
                        "",
                        vec![Cause::invalid(
                            "spec.clusterIPs[0]",
                            &Value::String(text.into()),
                            "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)",
                        )],
                    )
                })?;
                if !self.cidr.contains(ip) {
                    return Err(ApiError::invalid("Service", "", vec![Cause::invalid("spec.clusterIPs", &Value::String(text.into()), format!("failed to allocate IP {text}: provided IP is not in the valid range. The range of valid IPs is {}", self.cidr))]));
                }
                self.cidr.offset(ip)
            }
            None => None,
        };
        // Offsets 0 (network) and size-1 (broadcast) are never handed out; 1 only on request.
        match self.claim(IP_KEY, 2, size - 2, wanted).await? {
            Some(offset) => self.cidr.address(offset).ok_or_else(|| {
                ApiError::internal(format!(
                    "allocated offset {offset} is outside {}",
                    self.cidr
                ))
            }),
            None => Err(ApiError::invalid(
                "Service",
                "",
                vec![Cause::invalid(
                    "spec.clusterIPs",
                    &Value::String(requested.unwrap_or_default().into()),
                    format!(
                        "failed to allocate IP {}: provided IP is already allocated",
                        requested.unwrap_or_default()
                    ),
                )],
            )),
        }
    }

    /// Returns a cluster IP to the pool.
    pub async fn release_ip(&self, ip: &str) -> Result<(), ApiError> {
        match ip.parse::<Ipv4Addr>() {
            Ok(ip) if self.cidr.contains(ip) => {
                self.release(IP_KEY, u32::from(ip) - u32::from(self.cidr.network()))
                    .await
            }
            _ => Ok(()),
        }
    }

    /// Allocates a node port: the requested one (if in range and free) or any free one.
    pub async fn allocate_node_port(
        &self,
        requested: Option<u16>,
        field: &str,
    ) -> Result<u16, ApiError> {
        let (low, high) = self.node_ports;
        if let Some(port) = requested {
            if !(low..=high).contains(&port) {
                return Err(ApiError::invalid("Service", "", vec![Cause::invalid(field, &Value::from(port), format!("provided port is not in the valid range. The range of valid ports is {low}-{high}"))]));
            }
        }
        match self
            .claim(
                PORT_KEY,
                u32::from(low),
                u32::from(high),
                requested.map(u32::from),
            )
            .await?
        {
            Some(port) => Ok(port as u16),
            None => Err(ApiError::invalid(
                "Service",
                "",
                vec![Cause::invalid(
                    field,
                    &Value::from(requested.unwrap_or_default()),
                    "provided port is already allocated",
                )],
            )),
        }
    }

    /// Returns a node port to the pool.
    pub async fn release_node_port(&self, port: u16) -> Result<(), ApiError> {
        self.release(PORT_KEY, u32::from(port)).await
    }

    /// Gives a new Service its cluster IP and node ports (mutating `object`); on failure,
    /// whatever was claimed is released.
    pub async fn allocate_for(&self, object: &mut Value) -> Result<(), ApiError> {
        let spec_type = object
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if spec_type == "ExternalName" {
            return Ok(());
        }
        settle_ip_families(object)?;
        let requested = object
            .pointer("/spec/clusterIP")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_string);
        let ip = match requested.as_deref() {
            Some("None") => None,
            other => Some(self.allocate_ip(other).await?),
        };
        let ip_text = ip.map_or("None".to_string(), |ip| ip.to_string());
        object["spec"]["clusterIP"] = Value::String(ip_text.clone());
        object["spec"]["clusterIPs"] = serde_json::json!([ip_text]);
        if matches!(spec_type.as_str(), "NodePort" | "LoadBalancer") {
            let count = object
                .pointer("/spec/ports")
                .and_then(Value::as_array)
                .map_or(0, Vec::len);
            let mut claimed = Vec::new();
            for i in 0..count {
                let requested = object["spec"]["ports"][i]["nodePort"]
                    .as_u64()
                    .map(|p| p as u16);
                match self
                    .allocate_node_port(requested, &format!("spec.ports[{i}].nodePort"))
                    .await
                {
                    Ok(port) => {
                        claimed.push(port);
                        object["spec"]["ports"][i]["nodePort"] = Value::from(port);
                    }
                    Err(err) => {
                        for port in claimed {
                            let _ = self.release_node_port(port).await;
                        }
                        if let Some(ip) = ip {
                            let _ = self.release_ip(&ip.to_string()).await;
                        }
                        return Err(err);
                    }
                }
            }
        }
        Ok(())
    }

    /// Releases everything a Service held.
    pub async fn release_for(&self, object: &Value) -> Result<(), ApiError> {
        if let Some(ip) = object.pointer("/spec/clusterIP").and_then(Value::as_str) {
            self.release_ip(ip).await?;
        }
        for port in object
            .pointer("/spec/ports")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            if let Some(node_port) = port.get("nodePort").and_then(Value::as_u64) {
                self.release_node_port(node_port as u16).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    #[tokio::test]
    async fn allocations_are_unique_and_persistent() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let cidr = Ipv4Cidr::parse("10.96.0.0/28").unwrap();
        let a = ServiceAllocator::new(store.clone(), cidr, (30000, 30002));
        let b = ServiceAllocator::new(store.clone(), cidr, (30000, 30002));
        let mut seen = BTreeSet::new();
        for i in 0..13 {
            let allocator = if i % 2 == 0 { &a } else { &b };
            let ip = allocator.allocate_ip(None).await.unwrap();
            assert!(cidr.contains(ip) && ip != cidr.first());
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        assert!(a.allocate_ip(None).await.is_err(), "the range is full");
        assert_eq!(
            a.allocate_ip(Some("10.96.0.1")).await.unwrap(),
            cidr.first()
        );
        assert!(
            a.allocate_ip(Some("10.96.0.1")).await.is_err(),
            "already allocated"
        );
        assert!(
            a.allocate_ip(Some("10.97.0.1")).await.is_err(),
            "out of range"
        );
        a.release_ip("10.96.0.1").await.unwrap();
        assert!(b.allocate_ip(Some("10.96.0.1")).await.is_ok());
        let p = a.allocate_node_port(Some(30001), "f").await.unwrap();
        assert_eq!(p, 30001);
        assert!(b.allocate_node_port(Some(30001), "f").await.is_err());
        assert!(b.allocate_node_port(Some(80), "f").await.is_err());
    }
}
