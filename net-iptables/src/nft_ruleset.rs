//! The `nft -f` text for a [`ServiceTable`]: pure functions, no system access.
//!
//! Everything lives in one table, `ip capstan`, so nothing else on the host is touched and
//! cleanup is deleting the table. Lookups are maps, not rule lists, so a packet's cost and a
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
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

/// The table every object lives in.
pub(crate) const TABLE: &str = "ip capstan";

const SERVICE_IPS: &str = "service-ips";
const SERVICE_NODEPORTS: &str = "service-nodeports";
const NODEPORT_KEYS: &str = "nodeport-keys";
const NO_ENDPOINT_SERVICES: &str = "no-endpoint-services";
const NO_ENDPOINT_NODEPORTS: &str = "no-endpoint-nodeports";
const HAIRPIN_PAIRS: &str = "hairpin-pairs";

/// The dispatch maps and sets filled per Service port, with their declarations.
const DISPATCH: [(&str, &str); 6] = [
    (
        SERVICE_IPS,
        "map service-ips { type ipv4_addr . inet_proto . inet_service : verdict; }",
    ),
    (
        SERVICE_NODEPORTS,
        "map service-nodeports { type inet_proto . inet_service : verdict; }",
    ),
    (
        NODEPORT_KEYS,
        "set nodeport-keys { type inet_proto . inet_service; }",
    ),
    (
        NO_ENDPOINT_SERVICES,
        "map no-endpoint-services { type ipv4_addr . inet_proto . inet_service : verdict; }",
    ),
    (
        NO_ENDPOINT_NODEPORTS,
        "map no-endpoint-nodeports { type inet_proto . inet_service : verdict; }",
    ),
    (
        HAIRPIN_PAIRS,
        "set hairpin-pairs { type ipv4_addr . ipv4_addr; }",
    ),
];

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
    hairpin: Vec<Ipv4Addr>,
}

/// Everything the Service ports of a table need, by Service port; unchanged Service ports
/// share their objects with the previous sync's.
#[derive(Debug, Clone, Default)]
pub(crate) struct Objects {
    services: BTreeMap<ServicePortName, Arc<(ServiceEntry, ServiceObjects)>>,
    /// Endpoint address -> how many Service ports have it.
    hairpin: BTreeMap<Ipv4Addr, usize>,
}

/// How a sync writes the objects.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode<'a> {
    /// Delete the table and build it anew.
    Scratch,
    /// Re-add and refill everything (repairs tampering), deleting nothing.
    Repair,
    /// Only what changed since `previous` was applied.
    Delta(&'a Objects),
}

fn ipv4(ip: &IpAddr) -> Option<Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(*v4),
        IpAddr::V6(_) => None,
    }
}

fn endpoint_chain(name: &ServicePortName, endpoint: &SocketAddr) -> String {
    format!(
        "ep-{}",
        digest(&format!("{name}/{endpoint}")).to_ascii_lowercase()
    )
}

impl Objects {
    /// The objects `table` needs under `settings`.
    pub(crate) fn build(table: &ServiceTable, settings: &RuleSettings) -> Objects {
        Objects::default().update(table, settings).0
    }

    /// The objects `table` needs, reusing this (previous) sync's for unchanged Service ports,
    /// and whether anything changed.
    pub(crate) fn update(&self, table: &ServiceTable, settings: &RuleSettings) -> (Objects, bool) {
        let mut changed = table.services.len() != self.services.len();
        let mut hairpin = self.hairpin.clone();
        let mut services = BTreeMap::new();
        for (name, entry) in &table.services {
            let objects = match self.services.get(name) {
                Some(previous) if &previous.0 == entry => previous.clone(),
                previous => {
                    changed = true;
                    if let Some(previous) = previous {
                        release(&mut hairpin, &previous.1.hairpin);
                    }
                    let objects = service_objects(name, entry, settings);
                    for ip in &objects.hairpin {
                        *hairpin.entry(*ip).or_default() += 1;
                    }
                    Arc::new((entry.clone(), objects))
                }
            };
            services.insert(name.clone(), objects);
        }
        for (name, previous) in &self.services {
            if !table.services.contains_key(name) {
                changed = true;
                release(&mut hairpin, &previous.1.hairpin);
            }
        }
        (Objects { services, hairpin }, changed)
    }
}

impl crate::conntrack::Entries for Objects {
    fn entry(&self, name: &ServicePortName) -> Option<&ServiceEntry> {
        self.services.get(name).map(|o| &o.0)
    }
    fn entries(&self) -> Box<dyn Iterator<Item = (&ServicePortName, &ServiceEntry)> + '_> {
        Box::new(self.services.iter().map(|(name, o)| (name, &o.0)))
    }
}

fn release(hairpin: &mut BTreeMap<Ipv4Addr, usize>, ips: &[Ipv4Addr]) {
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
) -> ServiceObjects {
    let mut objects = ServiceObjects::default();
    let protocol = name.protocol.as_str();
    let endpoints: Vec<(Ipv4Addr, u16)> = entry
        .endpoints
        .iter()
        .filter_map(|e| ipv4(&e.ip()).map(|ip| (ip, e.port())))
        .collect();
    let cluster_ips: Vec<Ipv4Addr> = entry.cluster_ips.iter().filter_map(ipv4).collect();
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
    if let Some(cidr) = &settings.cluster_cidr {
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
                "meta l4proto {protocol} dnat ip addr . port to numgen random mod {n} map @{map}"
            ));
            objects.maps.push((map, protocol, elements));
        }
        Some(timeout) => {
            let seconds = timeout.as_secs().max(1);
            let mut verdicts = Vec::new();
            for (i, (ip, port)) in endpoints.iter().enumerate() {
                let endpoint = SocketAddr::new(IpAddr::V4(*ip), *port);
                let chain = endpoint_chain(name, &endpoint);
                let set = format!("{chain}-affinity");
                rules.push(format!("ip saddr @{set} goto {chain}"));
                verdicts.push(format!("{i} : goto {chain}"));
                objects.chains.push((
                    chain,
                    vec![
                        format!("update @{set} {{ ip saddr }}"),
                        format!("meta l4proto {protocol} dnat ip to {ip}:{port}"),
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
fn base_chains(settings: &RuleSettings) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let mark = format!("0x{:x}", settings.masquerade_mark);
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
                format!("ip daddr . meta l4proto . th dport vmap @{SERVICE_IPS}"),
                "fib daddr type local ip daddr != 127.0.0.0/8 jump nodeports".into(),
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
                format!("ct status dnat ip saddr . ip daddr @{HAIRPIN_PAIRS} masquerade"),
                format!("meta mark & {mark} == 0 return"),
                format!("meta mark set meta mark ^ {mark}"),
                "masquerade fully-random".into(),
            ],
        ),
        (
            "reject-check",
            "",
            vec![
                format!("ip daddr . meta l4proto . th dport vmap @{NO_ENDPOINT_SERVICES}"),
                format!(
                    "fib daddr type local meta l4proto . th dport vmap @{NO_ENDPOINT_NODEPORTS}"
                ),
            ],
        ),
        ("reject-chain", "", vec!["reject".into()]),
    ]
}

fn write_chain(text: &mut String, name: &str, rules: &[String]) {
    let _ = writeln!(text, "add chain {TABLE} {name}");
    let _ = writeln!(text, "flush chain {TABLE} {name}");
    for rule in rules {
        let _ = writeln!(text, "add rule {TABLE} {name} {rule}");
    }
}

fn write_map(text: &mut String, name: &str, protocol: &str, elements: &[String]) {
    let _ = writeln!(
        text,
        "add map {TABLE} {name} {{ typeof numgen random mod 1 : ip daddr . {protocol} dport; }}"
    );
    let _ = writeln!(text, "flush map {TABLE} {name}");
    let _ = writeln!(
        text,
        "add element {TABLE} {name} {{ {} }}",
        elements.join(", ")
    );
}

fn write_affinity_set(text: &mut String, name: &str, seconds: u64) {
    let _ = writeln!(
        text,
        "add set {TABLE} {name} {{ type ipv4_addr; flags dynamic,timeout; timeout {seconds}s; }}"
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
fn write_elements(text: &mut String, verb: &str, set: &str, items: &[String]) {
    for batch in items.chunks(2000) {
        let _ = writeln!(
            text,
            "{verb} element {TABLE} {set} {{ {} }}",
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

/// The `nft -f` text taking the kernel from what `mode` says it holds to `objects`.
pub(crate) fn ruleset_text(objects: &Objects, mode: Mode<'_>, settings: &RuleSettings) -> String {
    let mut text = String::with_capacity(1024);
    let full = !matches!(mode, Mode::Delta(_));
    if full {
        if matches!(mode, Mode::Scratch) {
            // `add` first so the delete finds a table even on the very first sync.
            let _ = writeln!(text, "add table {TABLE}");
            let _ = writeln!(text, "delete table {TABLE}");
        }
        let _ = writeln!(text, "add table {TABLE}");
        for (_, declaration) in DISPATCH {
            let _ = writeln!(
                text,
                "add {}",
                declaration.replacen(' ', &format!(" {TABLE} "), 1)
            );
        }
        for (name, hook, _) in base_chains(settings) {
            if hook.is_empty() {
                let _ = writeln!(text, "add chain {TABLE} {name}");
            } else {
                let _ = writeln!(text, "add chain {TABLE} {name} {{ {hook} }}");
            }
        }
    }
    // The Service ports to write: all of them, or the changed ones with their old objects.
    let empty = ServiceObjects::default();
    let changed: Vec<(&ServiceObjects, &ServiceObjects)> = match mode {
        Mode::Delta(previous) => {
            let mut changed = Vec::new();
            for (name, now) in &objects.services {
                match previous.services.get(name) {
                    Some(before) if Arc::ptr_eq(before, now) => {}
                    Some(before) => changed.push((&before.1, &now.1)),
                    None => changed.push((&empty, &now.1)),
                }
            }
            for (name, before) in &previous.services {
                if !objects.services.contains_key(name) {
                    changed.push((&before.1, &empty));
                }
            }
            changed
        }
        _ => objects.services.values().map(|o| (&empty, &o.1)).collect(),
    };
    // Objects first (maps and sets before the chains whose rules use them), then the
    // dispatch elements pointing at them, then whatever is no longer needed.
    for (before, now) in &changed {
        for (name, seconds) in &now.affinity_sets {
            if !before.affinity_sets.iter().any(|(n, _)| n == name) {
                write_affinity_set(&mut text, name, *seconds);
            }
        }
        for map in &now.maps {
            if !before.maps.contains(map) {
                write_map(&mut text, &map.0, map.1, &map.2);
            }
        }
        for chain in &now.chains {
            if !before.chains.contains(chain) {
                write_chain(&mut text, &chain.0, &chain.1);
            }
        }
    }
    if full {
        for (name, _, rules) in base_chains(settings) {
            write_chain(&mut text, name, &rules);
        }
        for (set, _) in DISPATCH {
            let _ = writeln!(text, "flush {} {TABLE} {set}", set_kind(set));
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
    let pair = |ip: &Ipv4Addr| format!("{ip} . {ip}");
    match mode {
        Mode::Delta(previous) => {
            let gone = previous
                .hairpin
                .keys()
                .filter(|ip| !objects.hairpin.contains_key(*ip));
            elements
                .delete
                .entry(HAIRPIN_PAIRS)
                .or_default()
                .extend(gone.map(pair));
            let fresh = objects
                .hairpin
                .keys()
                .filter(|ip| !previous.hairpin.contains_key(*ip));
            elements
                .add
                .entry(HAIRPIN_PAIRS)
                .or_default()
                .extend(fresh.map(pair));
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
        write_elements(&mut text, "delete", set, keys);
    }
    for (set, items) in &elements.add {
        write_elements(&mut text, "add", set, items);
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
        let _ = writeln!(text, "flush chain {TABLE} {chain}");
    }
    for chain in &gone_chains {
        let _ = writeln!(text, "delete chain {TABLE} {chain}");
    }
    for (before, now) in &changed {
        for (name, _, _) in &before.maps {
            if !now.maps.iter().any(|(n, _, _)| n == name) {
                let _ = writeln!(text, "delete map {TABLE} {name}");
            }
        }
        for (name, _) in &before.affinity_sets {
            if !now.affinity_sets.iter().any(|(n, _)| n == name) {
                let _ = writeln!(text, "delete set {TABLE} {name}");
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
        );
        let text = ruleset_text(&objects, Mode::Scratch, &settings());
        assert!(text.starts_with("add table ip capstan\ndelete table ip capstan\n"));
        assert!(text.contains("dnat ip addr . port to numgen random mod 2 map @svc-"));
        assert!(text.contains("{ 0 : 10.1.0.2 . 8080, 1 : 10.1.0.3 . 8080 }"));
        assert!(
            text.contains("add element ip capstan service-ips { 10.96.0.10 . tcp . 80 : goto svc-")
        );
        assert!(text.contains("add element ip capstan nodeport-keys { tcp . 30080 }"));
        let none = Objects::build(&table(&[], false), &settings());
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
        );
        let after = Objects::build(&table(&["10.1.0.2:8080"], false), &settings());
        let delta = ruleset_text(&after, Mode::Delta(&before), &settings());
        assert!(!delta.contains("add table"), "{delta}");
        assert!(delta.contains("flush map ip capstan svc-"), "{delta}");
        assert!(delta.contains("mod 1 map"), "{delta}");
        assert!(delta.contains("delete element ip capstan hairpin-pairs { 10.1.0.3 . 10.1.0.3 }"));
        assert!(
            !delta.contains("service-ips"),
            "the dispatch element did not change: {delta}"
        );
        assert_eq!(ruleset_text(&after, Mode::Delta(&after), &settings()), "");
        // Losing every endpoint: the Service port moves to the reject maps, its chain goes.
        let empty = Objects::build(&table(&[], false), &settings());
        let delta = ruleset_text(&empty, Mode::Delta(&after), &settings());
        assert!(delta.contains("delete element ip capstan service-ips { 10.96.0.10 . tcp . 80 }"));
        assert!(delta.contains("add element ip capstan no-endpoint-services"));
        let chain_delete = delta.find("delete chain").expect("chain deleted");
        assert!(delta.find("delete element ip capstan service-ips").unwrap() < chain_delete);
        assert!(delta.contains("delete map ip capstan svc-"));
    }

    #[test]
    fn affinity_remembers_clients_per_endpoint() {
        let objects = Objects::build(
            &table(&["10.1.0.2:8080", "10.1.0.3:8080"], true),
            &settings(),
        );
        let text = ruleset_text(&objects, Mode::Repair, &settings());
        assert!(text.contains("flags dynamic,timeout; timeout 60s;"));
        assert!(text.contains("update @ep-"));
        assert!(text.contains("numgen random mod 2 vmap { 0 : goto ep-"));
        assert!(!text.contains("delete table"));
    }
}
