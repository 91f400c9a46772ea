//! Allocation of Service cluster IPs (from the service ranges: IPv4, plus IPv6 on a
//! dual-stack cluster) and node ports (30000-32767 by default), persisted in the store and
//! claimed by compare-and-swap, so allocations survive restarts and several API servers never
//! hand out the same address.

use super::{ApiError, Cause};
pub use crate::cidr::{Ipv4Cidr, Ipv6Cidr};
use crate::store::{Store, StoreError};
use bytes::Bytes;
use serde_json::Value;
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::sync::Arc;

const IP_KEY: &str = "/ranges/serviceips";
const IPV6_KEY: &str = "/ranges/serviceips-ipv6";
const PORT_KEY: &str = "/ranges/servicenodeports";
/// The largest IPv6 service range, as kube-apiserver allows (20 host bits).
const SMALLEST_IPV6_PREFIX: u8 = 108;

/// A cluster's service ranges: an IPv4 range, and an IPv6 one when the cluster is dual-stack,
/// written `10.96.0.0/12` or `10.96.0.0/12,fd00:10:96::/112`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceRanges {
    /// The IPv4 range (the primary family).
    pub ipv4: Ipv4Cidr,
    /// The IPv6 range of a dual-stack cluster.
    pub ipv6: Option<Ipv6Cidr>,
}

impl ServiceRanges {
    /// Parses one IPv4 range, optionally followed by a comma and an IPv6 range of at most
    /// 20 host bits (`/108` or longer).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = text.split(',').map(str::trim);
        let first = parts.next().unwrap_or_default();
        let ipv4 = Ipv4Cidr::parse(first)
            .ok_or_else(|| format!("{first:?} is not an IPv4 CIDR with a prefix from 8 to 30"))?;
        let ipv6 = match parts.next() {
            None => None,
            Some(second) => {
                let cidr = Ipv6Cidr::parse(second)
                    .filter(|c| c.prefix() >= SMALLEST_IPV6_PREFIX)
                    .ok_or_else(|| {
                        format!("{second:?} is not an IPv6 CIDR with a prefix from {SMALLEST_IPV6_PREFIX} to 126")
                    })?;
                Some(cidr)
            }
        };
        if parts.next().is_some() {
            return Err(format!("{text:?}: at most one IPv4 and one IPv6 range"));
        }
        Ok(ServiceRanges { ipv4, ipv6 })
    }

    /// The range `family` allocates from, if the cluster has one: its allocation key and
    /// size (an IPv6 range is at most 2^20 addresses).
    fn of(&self, family: IpFamily) -> Option<(&'static str, u32)> {
        match family {
            IpFamily::V4 => Some((IP_KEY, self.ipv4.size())),
            IpFamily::V6 => self.ipv6.map(|c| (IPV6_KEY, c.size().min(1 << 20) as u32)),
        }
    }

    fn address(&self, family: IpFamily, offset: u32) -> Option<IpAddr> {
        match family {
            IpFamily::V4 => self.ipv4.address(offset).map(IpAddr::V4),
            IpFamily::V6 => self.ipv6?.address(u128::from(offset)).map(IpAddr::V6),
        }
    }

    fn offset(&self, ip: IpAddr) -> Option<u32> {
        match ip {
            IpAddr::V4(v4) => self.ipv4.offset(v4),
            IpAddr::V6(v6) => self.ipv6?.offset(v6).and_then(|o| u32::try_from(o).ok()),
        }
    }

    fn describe(&self, family: IpFamily) -> String {
        match (family, self.ipv6) {
            (IpFamily::V4, _) => self.ipv4.to_string(),
            (IpFamily::V6, Some(v6)) => v6.to_string(),
            (IpFamily::V6, None) => "none".into(),
        }
    }
}

/// A 422 for a Service request with one field cause (`allocate_for` names the Service).
fn invalid(cause: Cause) -> ApiError {
    ApiError::invalid("Service", "", vec![cause])
}

/// A Service's IP family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl IpFamily {
    fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv6() {
            IpFamily::V6
        } else {
            IpFamily::V4
        }
    }

    fn parse(name: &str) -> Option<Self> {
        match name {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            _ => None,
        }
    }

    /// The name the API uses (`IPv4`, `IPv6`).
    pub fn name(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    fn other(self) -> Self {
        match self {
            IpFamily::V4 => IpFamily::V6,
            IpFamily::V6 => IpFamily::V4,
        }
    }
}

/// Settles a new Service's `ipFamilies` under its `ipFamilyPolicy` on this cluster, as
/// Kubernetes does: `SingleStack` keeps one family; `PreferDualStack` adds the other family
/// when the cluster is dual-stack (and drops a second family a single-stack cluster lacks);
/// `RequireDualStack` needs a dual-stack cluster. Any other family the cluster has no range
/// for is invalid.
fn settle_ip_families(
    object: &mut Value,
    ranges: &ServiceRanges,
) -> Result<Vec<IpFamily>, ApiError> {
    let policy = object
        .pointer("/spec/ipFamilyPolicy")
        .cloned()
        .unwrap_or_else(|| Value::String("SingleStack".into()));
    let listed: Vec<Value> = object
        .pointer("/spec/ipFamilies")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_else(|| vec![Value::String("IPv4".into())]);
    let mut families = Vec::new();
    for (i, family) in listed.iter().enumerate() {
        let field = format!("spec.ipFamilies[{i}]");
        let Some(parsed) = family.as_str().and_then(IpFamily::parse) else {
            return Err(invalid(Cause::not_supported(
                field,
                family,
                &["IPv4", "IPv6"],
            )));
        };
        if families.contains(&parsed) {
            return Err(invalid(Cause::duplicate(field, family)));
        }
        families.push(parsed);
    }
    let dual = ranges.ipv6.is_some();
    let prefer = match policy.as_str() {
        Some("SingleStack") if families.len() > 1 => {
            return Err(invalid(Cause::invalid(
                "spec.ipFamilies",
                &Value::Array(listed),
                "when spec.ipFamilyPolicy is SingleStack only one ipFamily is allowed",
            )))
        }
        Some("RequireDualStack") if !dual => {
            return Err(invalid(Cause::invalid(
                "spec.ipFamilyPolicy",
                &policy,
                "this cluster is not configured for dual-stack services",
            )))
        }
        Some("SingleStack") => false,
        Some("PreferDualStack" | "RequireDualStack") => true,
        _ => {
            return Err(invalid(Cause::not_supported(
                "spec.ipFamilyPolicy",
                &policy,
                &["SingleStack", "PreferDualStack", "RequireDualStack"],
            )))
        }
    };
    for (i, family) in families.iter().enumerate() {
        // PreferDualStack on a single-stack cluster keeps its first family only.
        if ranges.of(*family).is_none() && !(i > 0 && prefer && !dual) {
            return Err(invalid(Cause::invalid(
                format!("spec.ipFamilies[{i}]"),
                &listed[i],
                "not configured on this cluster",
            )));
        }
    }
    let primary = families.first().copied().unwrap_or(IpFamily::V4);
    let families = if prefer && dual {
        vec![primary, primary.other()]
    } else {
        vec![primary]
    };
    object["spec"]["ipFamilies"] = families.iter().map(|f| f.name()).collect();
    Ok(families)
}

/// Hands out cluster IPs and node ports.
#[derive(Clone)]
pub struct ServiceAllocator {
    store: Arc<dyn Store>,
    ranges: ServiceRanges,
    node_ports: (u16, u16),
}

fn random_u32() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32
}

/// A random value of `low..=high` not in `taken` (none when the span is empty or full).
fn free_value(taken: &BTreeSet<u32>, low: u32, high: u32) -> Option<u32> {
    if high < low {
        return None;
    }
    let span = high - low + 1;
    let start = random_u32() % span;
    (0..span)
        .map(|i| low + (start + i) % span)
        .find(|v| !taken.contains(v))
}

/// Where the lower, static band of a range of `size` values ends: Kubernetes' min(max(16,
/// size/step), cap), none for ranges of 16 or fewer.
fn static_band(size: u32, step: u32, cap: u32) -> u32 {
    if size <= 16 {
        0
    } else {
        (size / step).clamp(16, cap)
    }
}

impl ServiceAllocator {
    /// An allocator over `ranges` and the inclusive node-port range.
    pub fn new(store: Arc<dyn Store>, ranges: ServiceRanges, node_ports: (u16, u16)) -> Self {
        ServiceAllocator {
            store,
            ranges,
            node_ports,
        }
    }

    /// The service ranges.
    pub fn ranges(&self) -> ServiceRanges {
        self.ranges
    }

    /// Claims one value in the set stored at `key`: `requested` if free, else a random free
    /// one among `low..=high`, taken from below `static_end` only when every value above it
    /// is taken (the lower band is kept for values users ask for, as Kubernetes does).
    async fn claim(
        &self,
        key: &str,
        (low, high): (u32, u32),
        static_end: u32,
        requested: Option<u32>,
    ) -> Result<Option<u32>, ApiError> {
        for _ in 0..64 {
            let current = self.store.get(key).await?;
            let mut taken: BTreeSet<u32> = match &current {
                Some(kv) => crate::storage::read_stored::<Value>(&kv.value)
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
                    let split = static_end.clamp(low, high);
                    match free_value(&taken, split, high)
                        .or_else(|| free_value(&taken, low, split.saturating_sub(1)))
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
            let mut taken: BTreeSet<u32> = crate::storage::read_stored::<Value>(&kv.value)
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

    /// Allocates a cluster IP of `family`: the requested one (if in range and free) or any
    /// free one. `field` names the request's field in errors.
    pub async fn allocate_ip(
        &self,
        family: IpFamily,
        requested: Option<&str>,
        field: &str,
    ) -> Result<IpAddr, ApiError> {
        let invalid = |text: &str, detail: String| {
            invalid(Cause::invalid(field, &Value::String(text.into()), detail))
        };
        let Some((key, size)) = self.ranges.of(family) else {
            return Err(invalid(
                requested.unwrap_or_default(),
                format!("{} is not configured on this cluster", family.name()),
            ));
        };
        let wanted = match requested {
            Some(text) => {
                let ip: IpAddr = text.parse().map_err(|_| {
                    invalid(
                        text,
                        "must be a valid IP address, (e.g. 10.9.8.7 or 2001:db8::ffff)".into(),
                    )
                })?;
                if IpFamily::of(&ip) != family {
                    return Err(invalid(
                        text,
                        format!(
                            "expected an {} value as indicated by `ipFamilies`",
                            family.name()
                        ),
                    ));
                }
                match self.ranges.offset(ip) {
                    Some(offset) if offset < size => Some(offset),
                    _ => return Err(invalid(text, format!("failed to allocate IP {text}: provided IP is not in the valid range. The range of valid IPs is {}", self.ranges.describe(family)))),
                }
            }
            None => None,
        };
        // Offsets 0 (network) and size-1 (broadcast) are never handed out; 1 only on request.
        match self
            .claim(key, (2, size - 2), static_band(size, 16, 256), wanted)
            .await?
        {
            Some(offset) => self.ranges.address(family, offset).ok_or_else(|| {
                ApiError::internal(format!(
                    "allocated offset {offset} is outside {}",
                    self.ranges.describe(family)
                ))
            }),
            None => {
                let text = requested.unwrap_or_default();
                Err(invalid(
                    text,
                    format!("failed to allocate IP {text}: provided IP is already allocated"),
                ))
            }
        }
    }

    /// Returns a cluster IP to the pool.
    pub async fn release_ip(&self, ip: &str) -> Result<(), ApiError> {
        let Ok(ip) = ip.parse::<IpAddr>() else {
            return Ok(());
        };
        match (self.ranges.of(IpFamily::of(&ip)), self.ranges.offset(ip)) {
            (Some((key, size)), Some(offset)) if offset < size => self.release(key, offset).await,
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
                return Err(invalid(Cause::invalid(field, &Value::from(port), format!("provided port is not in the valid range. The range of valid ports is {low}-{high}"))));
            }
        }
        match self
            .claim(
                PORT_KEY,
                (u32::from(low), u32::from(high)),
                u32::from(low) + static_band(u32::from(high - low) + 1, 32, 128),
                requested.map(u32::from),
            )
            .await?
        {
            Some(port) => Ok(port as u16),
            None => Err(invalid(Cause::invalid(
                field,
                &Value::from(requested.unwrap_or_default()),
                "provided port is already allocated",
            ))),
        }
    }

    /// Returns a node port to the pool.
    pub async fn release_node_port(&self, port: u16) -> Result<(), ApiError> {
        self.release(PORT_KEY, u32::from(port)).await
    }

    /// Gives a new Service its cluster IP and node ports (mutating `object`); on failure,
    /// whatever was claimed is released, and an invalid request names the Service.
    pub async fn allocate_for(&self, object: &mut Value) -> Result<(), ApiError> {
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.allocate(object).await.map_err(|err| match err.code {
            422 => ApiError::invalid("Service", &name, err.details.causes),
            _ => err,
        })
    }

    async fn allocate(&self, object: &mut Value) -> Result<(), ApiError> {
        let spec_type = object
            .pointer("/spec/type")
            .and_then(Value::as_str)
            .unwrap_or("ClusterIP")
            .to_string();
        if spec_type == "ExternalName" {
            return Ok(());
        }
        let families = settle_ip_families(object, &self.ranges)?;
        let requested = requested_cluster_ips(object)?;
        let ips = if requested.first().map(String::as_str) == Some("None") {
            object["spec"]["clusterIP"] = Value::String("None".into());
            object["spec"]["clusterIPs"] = serde_json::json!(["None"]);
            Vec::new()
        } else {
            if requested.len() > families.len() {
                return Err(invalid(Cause::invalid(
                    "spec.clusterIPs",
                    &serde_json::json!(requested),
                    "may not hold more IPs than spec.ipFamilies has families",
                )));
            }
            let mut ips: Vec<IpAddr> = Vec::new();
            for (i, family) in families.iter().enumerate() {
                let field = format!("spec.clusterIPs[{i}]");
                match self
                    .allocate_ip(
                        *family,
                        requested
                            .get(i)
                            .map(String::as_str)
                            .filter(|s| !s.is_empty()),
                        &field,
                    )
                    .await
                {
                    Ok(ip) => ips.push(ip),
                    Err(err) => {
                        for ip in ips {
                            let _ = self.release_ip(&ip.to_string()).await;
                        }
                        return Err(err);
                    }
                }
            }
            let texts: Vec<String> = ips.iter().map(IpAddr::to_string).collect();
            object["spec"]["clusterIP"] = Value::String(texts[0].clone());
            object["spec"]["clusterIPs"] = serde_json::json!(texts);
            ips
        };
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
                        for ip in &ips {
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
        let listed = object
            .pointer("/spec/clusterIPs")
            .and_then(Value::as_array)
            .filter(|ips| !ips.is_empty());
        let ips: Vec<&str> = match listed {
            Some(ips) => ips.iter().filter_map(Value::as_str).collect(),
            None => object
                .pointer("/spec/clusterIP")
                .and_then(Value::as_str)
                .into_iter()
                .collect(),
        };
        for ip in ips {
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

/// The cluster IPs a new Service asks for: `spec.clusterIPs`, else `spec.clusterIP`; when
/// both are given they must agree on the first.
fn requested_cluster_ips(object: &Value) -> Result<Vec<String>, ApiError> {
    let single = object
        .pointer("/spec/clusterIP")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty());
    let listed: Vec<String> = object
        .pointer("/spec/clusterIPs")
        .and_then(Value::as_array)
        .map(|ips| {
            ips.iter()
                .map(|ip| ip.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    match (single, listed.first()) {
        (Some(single), Some(first)) if single != first => Err(invalid(Cause::invalid(
            "spec.clusterIPs",
            &serde_json::json!(listed),
            "must match spec.clusterIP in its first element",
        ))),
        (Some(single), None) => Ok(vec![single.to_string()]),
        _ => Ok(listed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn ranges(text: &str) -> ServiceRanges {
        ServiceRanges::parse(text).unwrap()
    }

    #[tokio::test]
    async fn allocations_are_unique_and_persistent() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let ranges = ranges("10.96.0.0/28");
        let cidr = ranges.ipv4;
        let a = ServiceAllocator::new(store.clone(), ranges, (30000, 30002));
        let b = ServiceAllocator::new(store.clone(), ranges, (30000, 30002));
        let v4 = IpFamily::V4;
        let mut seen = BTreeSet::new();
        for i in 0..13 {
            let allocator = if i % 2 == 0 { &a } else { &b };
            let ip = allocator.allocate_ip(v4, None, "f").await.unwrap();
            assert!(cidr.contains(ip.to_string().parse().unwrap()));
            assert_ne!(ip.to_string(), cidr.first().to_string());
            assert!(seen.insert(ip), "{ip} handed out twice");
        }
        assert!(
            a.allocate_ip(v4, None, "f").await.is_err(),
            "the range is full"
        );
        assert_eq!(
            a.allocate_ip(v4, Some("10.96.0.1"), "f")
                .await
                .unwrap()
                .to_string(),
            "10.96.0.1"
        );
        assert!(
            a.allocate_ip(v4, Some("10.96.0.1"), "f").await.is_err(),
            "already allocated"
        );
        assert!(
            a.allocate_ip(v4, Some("10.97.0.1"), "f").await.is_err(),
            "out of range"
        );
        assert!(
            a.allocate_ip(IpFamily::V6, None, "f").await.is_err(),
            "no IPv6 range on a single-stack cluster"
        );
        a.release_ip("10.96.0.1").await.unwrap();
        assert!(b.allocate_ip(v4, Some("10.96.0.1"), "f").await.is_ok());
        let p = a.allocate_node_port(Some(30001), "f").await.unwrap();
        assert_eq!(p, 30001);
        assert!(b.allocate_node_port(Some(30001), "f").await.is_err());
        assert!(b.allocate_node_port(Some(80), "f").await.is_err());
    }

    #[tokio::test]
    async fn dynamic_addresses_leave_the_static_band_until_the_rest_is_full() {
        // A /26 has 64 addresses; the first 16 are kept for requested addresses.
        let allocator = ServiceAllocator::new(
            Arc::new(MemoryStore::new()),
            ranges("10.96.0.0/26"),
            (30000, 32767),
        );
        let last_octet = |ip: IpAddr| match ip {
            IpAddr::V4(v4) => v4.octets()[3],
            IpAddr::V6(_) => panic!("an IPv6 address from an IPv4 range"),
        };
        for _ in 16..=62 {
            let ip = allocator
                .allocate_ip(IpFamily::V4, None, "f")
                .await
                .unwrap();
            assert!(last_octet(ip) >= 16, "{ip} is in the static band");
        }
        let ip = allocator
            .allocate_ip(IpFamily::V4, None, "f")
            .await
            .unwrap();
        assert!(last_octet(ip) < 16, "{ip}: the upper band is full");
        // Node ports: 30000..30086 (2768 / 32) are the static band.
        for _ in 0..200 {
            let port = allocator.allocate_node_port(None, "f").await.unwrap();
            assert!(port >= 30086, "{port} is in the static band");
        }
    }

    #[test]
    fn ranges_parse_one_or_two_families() {
        assert!(ranges("10.96.0.0/12").ipv6.is_none());
        let dual = ranges("10.96.0.0/12, fd00:10:96::/112");
        assert_eq!(dual.ipv6.unwrap().to_string(), "fd00:10:96::/112");
        assert!(
            ServiceRanges::parse("fd00:10:96::/112").is_err(),
            "IPv4 first"
        );
        assert!(
            ServiceRanges::parse("10.96.0.0/12,fd00::/64").is_err(),
            "too large"
        );
        assert!(ServiceRanges::parse("10.96.0.0/12,10.100.0.0/16").is_err());
        assert!(ServiceRanges::parse("10.96.0.0/12,fd00::/112,fd01::/112").is_err());
    }

    async fn create(allocator: &ServiceAllocator, spec: Value) -> Result<Value, ApiError> {
        let mut object = serde_json::json!({"metadata": {"name": "s"}, "spec": spec});
        allocator.allocate_for(&mut object).await.map(|()| object)
    }

    #[tokio::test]
    async fn families_follow_the_policy_and_the_cluster() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let single = ServiceAllocator::new(store.clone(), ranges("10.96.0.0/24"), (30000, 30002));
        let dual = ServiceAllocator::new(
            Arc::new(MemoryStore::new()),
            ranges("10.96.0.0/24,fd00:96::/120"),
            (30000, 30002),
        );
        let ports = serde_json::json!([{"port": 80}]);
        // Single-stack: PreferDualStack keeps IPv4; RequireDualStack and IPv6 are invalid.
        let prefer = serde_json::json!({"ipFamilyPolicy": "PreferDualStack", "ports": ports});
        let made = create(&single, prefer.clone()).await.unwrap();
        assert_eq!(made["spec"]["ipFamilies"], serde_json::json!(["IPv4"]));
        assert_eq!(made["spec"]["clusterIPs"].as_array().unwrap().len(), 1);
        let require = serde_json::json!({"ipFamilyPolicy": "RequireDualStack", "ports": ports});
        let err = create(&single, require.clone()).await.unwrap_err();
        assert!(
            err.message.starts_with("Service \"s\" is invalid"),
            "{}",
            err.message
        );
        assert!(
            format!("{err:?}").contains("spec.ipFamilyPolicy"),
            "{err:?}"
        );
        let v6 = serde_json::json!({"ipFamilies": ["IPv6"], "ports": ports});
        let err = create(&single, v6.clone()).await.unwrap_err();
        assert!(format!("{err:?}").contains("spec.ipFamilies[0]"), "{err:?}");
        // Dual-stack: both families, in the order asked, from both ranges.
        let made = create(&dual, require).await.unwrap();
        assert_eq!(
            made["spec"]["ipFamilies"],
            serde_json::json!(["IPv4", "IPv6"])
        );
        let ips: Vec<IpAddr> = serde_json::from_value(made["spec"]["clusterIPs"].clone()).unwrap();
        assert!(ips[0].is_ipv4() && ips[1].is_ipv6(), "{ips:?}");
        assert_eq!(made["spec"]["clusterIP"], made["spec"]["clusterIPs"][0]);
        let six_first = serde_json::json!({"ipFamilies": ["IPv6"], "ipFamilyPolicy": "PreferDualStack", "ports": ports});
        let made = create(&dual, six_first).await.unwrap();
        assert_eq!(
            made["spec"]["ipFamilies"],
            serde_json::json!(["IPv6", "IPv4"])
        );
        let made = create(&dual, v6).await.unwrap();
        let ip: IpAddr = serde_json::from_value(made["spec"]["clusterIP"].clone()).unwrap();
        assert!(dual.ranges().ipv6.unwrap().contains(match ip {
            IpAddr::V6(v6) => v6,
            IpAddr::V4(_) => panic!("an IPv4 address for an IPv6 Service"),
        }));
        // A requested address of the wrong family, duplicates, and released addresses.
        let wrong =
            serde_json::json!({"ipFamilies": ["IPv6"], "clusterIP": "10.96.0.9", "ports": ports});
        let err = create(&dual, wrong).await.unwrap_err();
        assert!(format!("{err:?}").contains("spec.clusterIPs[0]"), "{err:?}");
        let twice = serde_json::json!({"ipFamilies": ["IPv4", "IPv4"], "ipFamilyPolicy": "RequireDualStack", "ports": ports});
        assert!(create(&dual, twice).await.is_err());
        let pinned = serde_json::json!({"ipFamilyPolicy": "RequireDualStack", "clusterIPs": ["10.96.0.10", "fd00:96::a"], "ports": ports});
        let made = create(&dual, pinned.clone()).await.unwrap();
        assert!(
            create(&dual, pinned.clone()).await.is_err(),
            "already allocated"
        );
        dual.release_for(&made).await.unwrap();
        create(&dual, pinned).await.unwrap();
        // Headless Services get no address of either family.
        let headless = serde_json::json!({"clusterIP": "None", "ipFamilyPolicy": "RequireDualStack", "ports": ports});
        let made = create(&dual, headless).await.unwrap();
        assert_eq!(made["spec"]["clusterIPs"], serde_json::json!(["None"]));
    }
}
