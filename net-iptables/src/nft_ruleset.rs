//! The `nft -f` text for a [`ServiceTable`]: pure functions, no system access.
//!
//! Everything lives in one table per address family, `ip capstan` and `ip6 capstan` (the same
//! objects; a family's table carries the cluster IPs and endpoints of its family, as Kubernetes
//! proxies each family of a dual-stack Service separately), so nothing else on the host is
//! touched and cleanup is deleting the tables. Lookups are maps, not rule lists, so a packet's cost and a
//! change's cost do not grow with the number of Services:
//! - `services` (from the nat prerouting and output hooks): `service-ips` maps cluster IP .
//!   protocol . port to the Service port's chain; local destinations go on to `nodeports`,
//!   where `service-nodeports` maps protocol . port (`nodeport-keys` marks them for masquerade).
//! - `svc-<hash>`: marks off-cluster clients for masquerade, then DNATs to an endpoint picked
//!   by `numgen random` in its own map `svc-<hash>-endpoints`; with ClientIP affinity it goes
//!   to per-endpoint chains `ep-<hash>` remembering clients in timed sets `ep-<hash>-affinity`.
//! - `masquerading` (nat postrouting): hairpin connections (`hairpin-pairs`) and marked ones.
//! - `reject-check` (filter prerouting and output, new connections): `no-endpoint-services`
//!   and `no-endpoint-nodeports` send Service ports without endpoints to `reject-chain`.
//!
//! A sync is one `nft -f` transaction: from scratch (the table deleted and rebuilt), a repair
//! (every object re-added and refilled; affinity sets keep their clients), or a delta against
//! the objects applied last (only changed chains, maps and elements).

use crate::rules::{digest, RuleSettings};
use capstan_core::proxy::{ServiceEntry, ServicePortName, ServiceTable};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

/// The address family a table serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    /// IPv4: table `ip capstan`.
    V4,
    /// IPv6: table `ip6 capstan`.
    V6,
}

impl Family {
    /// The table every object of this family lives in.
    pub(crate) fn table(self) -> &'static str {
        match self {
            Family::V4 => "ip capstan",
            Family::V6 => "ip6 capstan",
        }
    }

    /// The address match keyword (`ip`, `ip6`).
    fn keyword(self) -> &'static str {
        match self {
            Family::V4 => "ip",
            Family::V6 => "ip6",
        }
    }

    /// The address type of sets and maps.
    fn address_type(self) -> &'static str {
        match self {
            Family::V4 => "ipv4_addr",
            Family::V6 => "ipv6_addr",
        }
    }

    /// Loopback destinations, which never reach NodePorts.
    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1",
        }
    }

    fn owns(self, ip: &IpAddr) -> bool {
        ip.is_ipv6() == (self == Family::V6)
    }

    /// `ip` as a DNAT target with a port (`1.2.3.4:80`, `[fd00::1]:80`).
    fn target(self, ip: &IpAddr, port: u16) -> String {
        SocketAddr::new(*ip, port).to_string()
    }
}

const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NODEPORT_KEYS: &str = "nodeport-keys";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const HAIRPIN_PAIRS: &str = "hairpin-pairs";

/// The dispatch maps and sets filled per Service port.
const DISPATCH: [&str; 6] = [
    SERVICE_IPS,
    SERVICE_NODEPORTS,
    NODEPORT_KEYS,
    NO_ENDPOINT_SERVICES,
    NO_ENDPOINT_NODEPORTS,
    HAIRPIN_PAIRS,
];

/// The declaration of dispatch map or set `name` (one of [`DISPATCH`]) in `family`'s table.
fn declaration(family: Family, name: &str) -> String {
    let table = family.table();
    let address = family.address_type();
    match name {
        SERVICE_IPS | NO_ENDPOINT_SERVICES => format!(
            "map {table} {name} {{ type {address} . inet_proto . inet_service : verdict; }}"
        ),
        SERVICE_NODEPORTS | NO_ENDPOINT_NODEPORTS => {
            format!("map {table} {name} {{ type inet_proto . inet_service : verdict; }}")
        }
        NODEPORT_KEYS => format!("set {table} {name} {{ type inet_proto . inet_service; }}"),
        _ => format!("set {table} {name} {{ type {address} . {address}; }}"),
    }
}

/// What one Service port needs.
#[derive(Debug, Default, PartialEq, Eq)]
struct ServiceObjects {
    /// Its chains and their rules.
    chains: Vec<(String, Vec<String>)>,
    /// Its endpoint maps: name, protocol, elements.
    maps: Vec<(String, &'static str, Vec<String>)>,
    /// Its affinity sets and their timeout in seconds.
    affinity_sets: Vec<(String, u64)>,
    /// Its dispatch elements: map or set, key, value (empty for sets).
    elements: Vec<(&'static str, String, String)>,
    /// Its endpoints' addresses (hairpin masquerade).
    hairpin: Vec<IpAddr>,
}

/// Everything the Service ports of a table need, by Service port.
#[derive(Debug, Clone)]
pub(crate) struct Objects {
    family: Family,
    services: BTreeMap<ServicePortName, Arc<(ServiceEntry, ServiceObjects)>>,
    /// Endpoint address -> how many Service ports have it.
    hairpin: BTreeMap<IpAddr, usize>,
}

/// One Service port whose entry changed: its objects before and after (`None`: absent).
#[derive(Debug)]
pub(crate) struct Change {
    name: ServicePortName,
    before: Option<Arc<(ServiceEntry, ServiceObjects)>>,
    after: Option<Arc<(ServiceEntry, ServiceObjects)>>,
}

impl Change {
    fn objects_before<'a>(&'a self, empty: &'a ServiceObjects) -> &'a ServiceObjects {
        self.before.as_ref().map_or(empty, |o| &o.1)
    }

    fn objects_after<'a>(&'a self, empty: &'a ServiceObjects) -> &'a ServiceObjects {
        self.after.as_ref().map_or(empty, |o| &o.1)
    }
}

/// How a sync writes the objects.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode<'a> {
    /// Delete the table and build it anew.
    Scratch,
    /// Re-add and refill everything (repairs tampering), deleting nothing.
    Repair,
    /// Only these changes to the objects the kernel holds.
    Delta(&'a [Change]),
}

fn endpoint_chain(name: &ServicePortName, endpoint: &SocketAddr) -> String {
    format!(
        "ep-{}",
        digest(&format!("{name}/{endpoint}")).to_ascii_lowercase()
    )
}

impl Objects {
    /// The objects `table` needs under `settings` in `family`'s table.
    pub(crate) fn build(table: &ServiceTable, settings: &RuleSettings, family: Family) -> Objects {
        let mut objects = Objects {
            family,
            services: BTreeMap::new(),
            hairpin: BTreeMap::new(),
        };
        let changes = objects.changes(table, settings);
        objects.apply(changes);
        objects
    }

    /// The Service ports whose entries differ between these objects and `table`, with their
    /// objects before and after. One merge walk over both sorted maps: unchanged Service ports
    /// cost a comparison, nothing is copied.
    pub(crate) fn changes(&self, table: &ServiceTable, settings: &RuleSettings) -> Vec<Change> {
        let build = |name: &ServicePortName, entry: &ServiceEntry| {
            let objects = service_objects(name, entry, settings, self.family);
            Some(Arc::new((entry.clone(), objects)))
        };
        let mut changes = Vec::new();
        let mut old = self.services.iter().peekable();
        let mut new = table.services.iter().peekable();
        loop {
            let order = match (old.peek(), new.peek()) {
                (None, None) => break,
                (Some(_), None) => std::cmp::Ordering::Less,
                (None, Some(_)) => std::cmp::Ordering::Greater,
                (Some((a, _)), Some((b, _))) => a.cmp(b),
            };
            match order {
                std::cmp::Ordering::Less => {
                    if let Some((name, before)) = old.next() {
                        changes.push(Change {
                            name: name.clone(),
                            before: Some(before.clone()),
                            after: None,
                        });
                    }
                }
                std::cmp::Ordering::Greater => {
                    if let Some((name, entry)) = new.next() {
                        changes.push(Change {
                            name: name.clone(),
                            before: None,
                            after: build(name, entry),
                        });
                    }
                }
                std::cmp::Ordering::Equal => {
                    if let (Some((name, before)), Some((_, entry))) = (old.next(), new.next()) {
                        if &before.0 != entry {
                            changes.push(Change {
                                name: name.clone(),
                                before: Some(before.clone()),
                                after: build(name, entry),
                            });
                        }
                    }
                }
            }
        }
        changes
    }

    /// Takes `changes` in (once the kernel holds them).
    pub(crate) fn apply(&mut self, changes: Vec<Change>) {
        for change in changes {
            if let Some(before) = &change.before {
                release(&mut self.hairpin, &before.1.hairpin);
            }
            match change.after {
                Some(after) => {
                    for ip in &after.1.hairpin {
                        *self.hairpin.entry(*ip).or_default() += 1;
                    }
                    self.services.insert(change.name, after);
                }
                None => {
                    self.services.remove(&change.name);
                }
            }
        }
    }

    /// The endpoint addresses `changes` take out of every Service port (gone) and bring in
    /// for the first time (fresh).
    fn hairpin_changes(&self, changes: &[Change]) -> (Vec<IpAddr>, Vec<IpAddr>) {
        let mut delta: BTreeMap<IpAddr, isize> = BTreeMap::new();
        for change in changes {
            for ip in change.before.iter().flat_map(|b| &b.1.hairpin) {
                *delta.entry(*ip).or_default() -= 1;
            }
            for ip in change.after.iter().flat_map(|a| &a.1.hairpin) {
                *delta.entry(*ip).or_default() += 1;
            }
        }
        let (mut gone, mut fresh) = (Vec::new(), Vec::new());
        for (ip, delta) in delta {
            let count = self.hairpin.get(&ip).copied().unwrap_or(0) as isize;
            if count > 0 && count + delta <= 0 {
                gone.push(ip);
            } else if count == 0 && delta > 0 {
                fresh.push(ip);
            }
        }
        (gone, fresh)
    }
}

/// One side of a list of changes, as the UDP flow cleanup reads entries.
pub(crate) struct ChangeSide<'a> {
    changes: &'a [Change],
    after: bool,
}

impl<'a> ChangeSide<'a> {
    /// The entries `changes` replaced.
    pub(crate) fn before(changes: &'a [Change]) -> Self {
        ChangeSide {
            changes,
            after: false,
        }
    }

    /// The entries `changes` bring.
    pub(crate) fn after(changes: &'a [Change]) -> Self {
        ChangeSide {
            changes,
            after: true,
        }
    }

    fn side(&self, change: &'a Change) -> Option<&'a ServiceEntry> {
        let objects = if self.after {
            &change.after
        } else {
            &change.before
        };
        objects.as_ref().map(|o| &o.0)
    }
}

impl crate::conntrack::Entries for ChangeSide<'_> {
    fn entry(&self, name: &ServicePortName) -> Option<&ServiceEntry> {
        let change = self.changes.iter().find(|c| &c.name == name)?;
        self.side(change)
    }
    fn entries(&self) -> Box<dyn Iterator<Item = (&ServicePortName, &ServiceEntry)> + '_> {
        Box::new(
            self.changes
                .iter()
                .filter_map(|c| self.side(c).map(|e| (&c.name, e))),
        )
    }
}

fn release(hairpin: &mut BTreeMap<IpAddr, usize>, ips: &[IpAddr]) {
    for ip in ips {
        if let Some(count) = hairpin.get_mut(ip) {
            *count -= 1;
            if *count == 0 {
                hairpin.remove(ip);
            }
        }
    }
}

fn service_objects(
    name: &ServicePortName,
    entry: &ServiceEntry,
    settings: &RuleSettings,
    family: Family,
) -> ServiceObjects {
    let mut objects = ServiceObjects::default();
    let protocol = name.protocol.as_str();
    let endpoints: Vec<(IpAddr, u16)> = entry
        .endpoints
        .iter()
        .filter(|e| family.owns(&e.ip()))
        .map(|e| (e.ip(), e.port()))
        .collect();
    let cluster_ips: Vec<IpAddr> = entry
        .cluster_ips
        .iter()
        .filter(|ip| family.owns(ip))
        .copied()
        .collect();
    if cluster_ips.is_empty() {
        // A Service of the other family only: nothing in this table.
        return objects;
    }
    if endpoints.is_empty() {
        for ip in &cluster_ips {
            let key = format!("{ip} . {protocol} . {}", entry.port);
            objects
                .elements
                .push((NO_ENDPOINT_SERVICES, key, "goto reject-chain".into()));
        }
        if let Some(node_port) = entry.node_port {
            let key = format!("{protocol} . {node_port}");
            objects
                .elements
                .push((NO_ENDPOINT_NODEPORTS, key, "goto reject-chain".into()));
        }
        return objects;
    }
    let svc = format!("svc-{}", digest(&name.to_string()).to_ascii_lowercase());
    for ip in &cluster_ips {
        let key = format!("{ip} . {protocol} . {}", entry.port);
        objects
            .elements
            .push((SERVICE_IPS, key, format!("goto {svc}")));
    }
    if let Some(node_port) = entry.node_port {
        let key = format!("{protocol} . {node_port}");
        objects
            .elements
            .push((SERVICE_NODEPORTS, key.clone(), format!("goto {svc}")));
        objects.elements.push((NODEPORT_KEYS, key, String::new()));
    }
    objects.hairpin = endpoints.iter().map(|(ip, _)| *ip).collect();
    objects.hairpin.sort();
    objects.hairpin.dedup();
    let mut rules = Vec::new();
    // The cluster range is IPv4: off-cluster IPv6 clients are not told apart.
    if let (Some(cidr), Family::V4) = (&settings.cluster_cidr, family) {
        for ip in &cluster_ips {
            rules.push(format!(
                "ip saddr != {cidr} ip daddr {ip} jump mark-for-masquerade"
            ));
        }
    }
    let n = endpoints.len();
    match entry.affinity {
        None => {
            let map = format!("{svc}-endpoints");
            let elements = endpoints
                .iter()
                .enumerate()
                .map(|(i, (ip, port))| format!("{i} : {ip} . {port}"))
                .collect();
            rules.push(format!(
                "meta l4proto {protocol} dnat {} addr . port to numgen random mod {n} map @{map}",
                family.keyword()
            ));
            objects.maps.push((map, protocol, elements));
        }
        Some(timeout) => {
            let seconds = timeout.as_secs().max(1);
            let mut verdicts = Vec::new();
            for (i, (ip, port)) in endpoints.iter().enumerate() {
                let endpoint = SocketAddr::new(*ip, *port);
                let chain = endpoint_chain(name, &endpoint);
                let set = format!("{chain}-affinity");
                rules.push(format!("{} saddr @{set} goto {chain}", family.keyword()));
                verdicts.push(format!("{i} : goto {chain}"));
                objects.chains.push((
                    chain,
                    vec![
                        format!("update @{set} {{ {} saddr }}", family.keyword()),
                        format!(
                            "meta l4proto {protocol} dnat {} to {}",
                            family.keyword(),
                            family.target(ip, *port)
                        ),
                    ],
                ));
                objects.affinity_sets.push((set, seconds));
            }
            rules.push(format!(
                "numgen random mod {n} vmap {{ {} }}",
                verdicts.join(", ")
            ));
        }
    }
    objects.chains.push((svc, rules));
    objects
}

/// The fixed chains (with their hooks) and their rules.
fn base_chains(
    settings: &RuleSettings,
    family: Family,
) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let mark = format!("0x{:x}", settings.masquerade_mark);
    let ip = family.keyword();
    let loopback = family.loopback();
    vec![
        (
            "nat-prerouting",
            "type nat hook prerouting priority dstnat; policy accept;",
            vec!["jump services".into()],
        ),
        (
            "nat-output",
            "type nat hook output priority -100; policy accept;",
            vec!["jump services".into()],
        ),
        (
            "nat-postrouting",
            "type nat hook postrouting priority srcnat; policy accept;",
            vec!["jump masquerading".into()],
        ),
        (
            "filter-prerouting",
            "type filter hook prerouting priority -110; policy accept;",
            vec!["ct state new jump reject-check".into()],
        ),
        (
            "filter-output",
            "type filter hook output priority -110; policy accept;",
            vec!["ct state new jump reject-check".into()],
        ),
        (
            "services",
            "",
            vec![
                format!("{ip} daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
                format!("fib daddr type local {ip} daddr != {loopback} jump nodeports"),
            ],
        ),
        (
            "nodeports",
            "",
            vec![
                format!("meta l4proto . th dport @{NODEPORT_KEYS} jump mark-for-masquerade"),
                format!("meta l4proto . th dport vmap @{SERVICE_NODEPORTS}"),
            ],
        ),
        (
            "mark-for-masquerade",
            "",
            vec![format!("meta mark set meta mark | {mark}")],
        ),
        (
            "masquerading",
            "",
            vec![
                format!("ct status dnat {ip} saddr . {ip} daddr @{HAIRPIN_PAIRS} masquerade"),
                format!("meta mark & {mark} == 0 return"),
                format!("meta mark set meta mark ^ {mark}"),
                "masquerade fully-random".into(),
            ],
        ),
        (
            "reject-check",
            "",
            vec![
                format!("{ip} daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"),
                format!(
                    "fib daddr type local meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"
                ),
            ],
        ),
        (
            "reject-chain",
            "",
            vec![
                "meta l4proto tcp reject with tcp reset".into(),
                "reject".into(),
            ],
        ),
    ]
}

fn write_chain(text: &mut String, family: Family, name: &str, rules: &[String]) {
    let table = family.table();
    let _ = writeln!(text, "add chain {table} {name}");
    let _ = writeln!(text, "flush chain {table} {name}");
    for rule in rules {
        let _ = writeln!(text, "add rule {table} {name} {rule}");
    }
}

fn write_map(text: &mut String, family: Family, name: &str, protocol: &str, elements: &[String]) {
    let (table, ip) = (family.table(), family.keyword());
    let _ = writeln!(
        text,
        "add map {table} {name} {{ typeof numgen random mod 1 : {ip} daddr . {protocol} dport; }}"
    );
    let _ = writeln!(text, "flush map {table} {name}");
    let _ = writeln!(
        text,
        "add element {table} {name} {{ {} }}",
        elements.join(", ")
    );
}

fn write_affinity_set(text: &mut String, family: Family, name: &str, seconds: u64) {
    let _ = writeln!(
        text,
        "add set {} {name} {{ type {}; flags dynamic,timeout; timeout {seconds}s; }}",
        family.table(),
        family.address_type()
    );
}

fn element_text(key: &str, value: &str) -> String {
    if value.is_empty() {
        key.to_string()
    } else {
        format!("{key} : {value}")
    }
}

/// Writes `verb element` lines for `items` in batches (one line per few thousand elements).
fn write_elements(text: &mut String, family: Family, verb: &str, set: &str, items: &[String]) {
    for batch in items.chunks(2000) {
        let _ = writeln!(
            text,
            "{verb} element {} {set} {{ {} }}",
            family.table(),
            batch.join(", ")
        );
    }
}

/// Element lines to delete and to add, per dispatch map or set.
#[derive(Default)]
struct ElementChanges {
    delete: BTreeMap<&'static str, Vec<String>>,
    add: BTreeMap<&'static str, Vec<String>>,
}

/// The `nft -f` text taking the kernel to `objects` (Scratch, Repair), or from `objects` by
/// the changes of a Delta.
pub(crate) fn ruleset_text(objects: &Objects, mode: Mode<'_>, settings: &RuleSettings) -> String {
    let mut text = String::with_capacity(1024);
    let family = objects.family;
    let table = family.table();
    let full = !matches!(mode, Mode::Delta(_));
    if full {
        if matches!(mode, Mode::Scratch) {
            // `add` first so the delete finds a table even on the very first sync.
            let _ = writeln!(text, "add table {table}");
            let _ = writeln!(text, "delete table {table}");
        }
        let _ = writeln!(text, "add table {table}");
        for name in DISPATCH {
            let _ = writeln!(text, "add {}", declaration(family, name));
        }
        for (name, hook, _) in base_chains(settings, family) {
            if hook.is_empty() {
                let _ = writeln!(text, "add chain {table} {name}");
            } else {
                let _ = writeln!(text, "add chain {table} {name} {{ {hook} }}");
            }
        }
    }
    // The Service ports to write: all of them, or the changed ones with their old objects.
    let empty = ServiceObjects::default();
    let changed: Vec<(&ServiceObjects, &ServiceObjects)> = match mode {
        Mode::Delta(changes) => changes
            .iter()
            .map(|c| (c.objects_before(&empty), c.objects_after(&empty)))
            .collect(),
        _ => objects.services.values().map(|o| (&empty, &o.1)).collect(),
    };
    // Objects first (maps and sets before the chains whose rules use them), then the
    // dispatch elements pointing at them, then whatever is no longer needed.
    for (before, now) in &changed {
        for (name, seconds) in &now.affinity_sets {
            if !before.affinity_sets.iter().any(|(n, _)| n == name) {
                write_affinity_set(&mut text, family, name, *seconds);
            }
        }
        for map in &now.maps {
            if !before.maps.contains(map) {
                write_map(&mut text, family, &map.0, map.1, &map.2);
            }
        }
        for chain in &now.chains {
            if !before.chains.contains(chain) {
                write_chain(&mut text, family, &chain.0, &chain.1);
            }
        }
    }
    if full {
        for (name, _, rules) in base_chains(settings, family) {
            write_chain(&mut text, family, name, &rules);
        }
        for set in DISPATCH {
            let _ = writeln!(text, "flush {} {table} {set}", set_kind(set));
        }
    }
    let mut elements = ElementChanges::default();
    let mut claimed = std::collections::BTreeSet::new();
    for (before, now) in &changed {
        for (set, key, value) in &before.elements {
            if !now
                .elements
                .iter()
                .any(|(s, k, v)| s == set && k == key && v == value)
            {
                elements.delete.entry(set).or_default().push(key.clone());
            }
        }
        for (set, key, value) in &now.elements {
            // Two Service ports claiming one key (a NodePort twice) is invalid input: the
            // first keeps it (a delta colliding with a kept key fails and the backend
            // rebuilds the table, where the first by name wins).
            if !before
                .elements
                .iter()
                .any(|(s, k, v)| s == set && k == key && v == value)
                && claimed.insert((*set, key.as_str()))
            {
                elements
                    .add
                    .entry(set)
                    .or_default()
                    .push(element_text(key, value));
            }
        }
    }
    let pair = |ip: &IpAddr| format!("{ip} . {ip}");
    match mode {
        Mode::Delta(changes) => {
            let (gone, fresh) = objects.hairpin_changes(changes);
            elements
                .delete
                .entry(HAIRPIN_PAIRS)
                .or_default()
                .extend(gone.iter().map(pair));
            elements
                .add
                .entry(HAIRPIN_PAIRS)
                .or_default()
                .extend(fresh.iter().map(pair));
        }
        _ => {
            elements
                .add
                .entry(HAIRPIN_PAIRS)
                .or_default()
                .extend(objects.hairpin.keys().map(pair));
        }
    }
    for (set, keys) in &elements.delete {
        write_elements(&mut text, family, "delete", set, keys);
    }
    for (set, items) in &elements.add {
        write_elements(&mut text, family, "add", set, items);
    }
    let gone_chains: Vec<&String> = changed
        .iter()
        .flat_map(|(before, now)| {
            before
                .chains
                .iter()
                .filter(|(name, _)| !now.chains.iter().any(|(n, _)| n == name))
                .map(|(name, _)| name)
        })
        .collect();
    for chain in &gone_chains {
        let _ = writeln!(text, "flush chain {table} {chain}");
    }
    for chain in &gone_chains {
        let _ = writeln!(text, "delete chain {table} {chain}");
    }
    for (before, now) in &changed {
        for (name, _, _) in &before.maps {
            if !now.maps.iter().any(|(n, _, _)| n == name) {
                let _ = writeln!(text, "delete map {table} {name}");
            }
        }
        for (name, _) in &before.affinity_sets {
            if !now.affinity_sets.iter().any(|(n, _)| n == name) {
                let _ = writeln!(text, "delete set {table} {name}");
            }
        }
    }
    text
}

fn set_kind(name: &str) -> &'static str {
    match name {
        NODEPORT_KEYS | HAIRPIN_PAIRS => "set",
        _ => "map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rules::fixtures::{name, settings};
    use std::time::Duration;

    fn table(endpoints: &[&str], affinity: bool) -> ServiceTable {
        let mut table = ServiceTable::default();
        table.services.insert(
            name("web"),
            ServiceEntry {
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                port: 80,
                node_port: Some(30080),
                affinity: affinity.then_some(Duration::from_secs(60)),
                endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            },
        );
        table
    }

    #[test]
    fn services_with_endpoints_dnat_through_a_map_and_others_reject() {
        let objects = Objects::build(
            &table(&["10.1.0.2:8080", "10.1.0.3:8080"], false),
            &settings(),
            Family::V4,
        );
        let text = ruleset_text(&objects, Mode::Scratch, &settings());
        assert!(text.starts_with("add table ip capstan\ndelete table ip capstan\n"));
        assert!(text.contains("dnat ip addr . port to numgen random mod 2 map @svc-"));
        assert!(text.contains("{ 0 : 10.1.0.2 . 8080, 1 : 10.1.0.3 . 8080 }"));
        assert!(
            text.contains("add element ip capstan service-ips { 10.96.0.10 . tcp . 80 : goto svc-")
        );
        assert!(text.contains("add element ip capstan nodeport-keys { tcp . 30080 }"));
        let none = Objects::build(&table(&[], false), &settings(), Family::V4);
        let text = ruleset_text(&none, Mode::Scratch, &settings());
        assert!(text.contains(
            "add element ip capstan no-endpoint-services { 10.96.0.10 . tcp . 80 : goto reject-chain }"
        ));
        assert!(text.contains(
            "add element ip capstan no-endpoint-nodeports { tcp . 30080 : goto reject-chain }"
        ));
        assert!(!text.contains("dnat ip addr"));
    }

    #[test]
    fn a_delta_touches_only_what_changed_and_removes_what_went() {
        let before = Objects::build(
            &table(&["10.1.0.2:8080", "10.1.0.3:8080"], false),
            &settings(),
            Family::V4,
        );
        let changes = before.changes(&table(&["10.1.0.2:8080"], false), &settings());
        assert_eq!(changes.len(), 1);
        let delta = ruleset_text(&before, Mode::Delta(&changes), &settings());
        assert!(!delta.contains("add table"), "{delta}");
        assert!(delta.contains("flush map ip capstan svc-"), "{delta}");
        assert!(delta.contains("mod 1 map"), "{delta}");
        assert!(delta.contains("delete element ip capstan hairpin-pairs { 10.1.0.3 . 10.1.0.3 }"));
        assert!(
            !delta.contains("service-ips"),
            "the dispatch element did not change: {delta}"
        );
        let mut after = before.clone();
        after.apply(changes);
        let after_table = table(&["10.1.0.2:8080"], false);
        assert!(after.changes(&after_table, &settings()).is_empty());
        assert_eq!(ruleset_text(&after, Mode::Delta(&[]), &settings()), "");
        // Losing every endpoint: the Service port moves to the reject maps, its chain goes.
        let changes = after.changes(&table(&[], false), &settings());
        let delta = ruleset_text(&after, Mode::Delta(&changes), &settings());
        assert!(delta.contains("delete element ip capstan service-ips { 10.96.0.10 . tcp . 80 }"));
        assert!(delta.contains("add element ip capstan no-endpoint-services"));
        let chain_delete = delta.find("delete chain").expect("chain deleted");
        assert!(delta.find("delete element ip capstan service-ips").unwrap() < chain_delete);
        assert!(delta.contains("delete map ip capstan svc-"));
    }

    #[test]
    fn each_family_table_carries_its_own_addresses() {
        let mut dual = table(&["10.1.0.2:8080", "[fd00:1::2]:8080"], false);
        let entry = dual.services.values_mut().next().unwrap();
        entry.cluster_ips.push("fd00:96::10".parse().unwrap());
        let v6 = Objects::build(&dual, &settings(), Family::V6);
        let text = ruleset_text(&v6, Mode::Scratch, &settings());
        assert!(text.starts_with("add table ip6 capstan\ndelete table ip6 capstan\n"));
        assert!(text.contains("type ipv6_addr . inet_proto . inet_service : verdict"));
        assert!(
            text.contains("service-ips { fd00:96::10 . tcp . 80 : goto svc-"),
            "{text}"
        );
        assert!(text.contains("dnat ip6 addr . port to numgen random mod 1 map @svc-"));
        assert!(text.contains("{ 0 : fd00:1::2 . 8080 }"), "{text}");
        assert!(text.contains("ip6 daddr != ::1 jump nodeports"));
        assert!(
            !text.contains("10.1.0.2") && !text.contains("10.96.0.10"),
            "{text}"
        );
        let v4 = Objects::build(&dual, &settings(), Family::V4);
        let text = ruleset_text(&v4, Mode::Scratch, &settings());
        assert!(!text.contains("fd00"), "{text}");
        // An IPv4-only Service leaves the IPv6 table without entries.
        let v6 = Objects::build(&table(&["10.1.0.2:8080"], false), &settings(), Family::V6);
        let text = ruleset_text(&v6, Mode::Scratch, &settings());
        assert!(
            !text.contains("add element ip6 capstan service-ips"),
            "{text}"
        );
        assert!(
            !text.contains("add element ip6 capstan service-nodeports"),
            "{text}"
        );
    }

    #[test]
    fn affinity_remembers_clients_per_endpoint() {
        let objects = Objects::build(
            &table(&["10.1.0.2:8080", "10.1.0.3:8080"], true),
            &settings(),
            Family::V4,
        );
        let text = ruleset_text(&objects, Mode::Repair, &settings());
        assert!(text.contains("flags dynamic,timeout; timeout 60s;"));
        assert!(text.contains("update @ep-"));
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto ep-"));
        assert!(!text.contains("delete table"));
    }
}
