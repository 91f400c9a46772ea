//! The iptables-restore text for a [`ServiceTable`]: pure functions, no system access.
//!
//! Chains (all prefixed `CAPSTAN-`, the only ones this backend touches):
//! - nat `CAPSTAN-SERVICES` (jumped to from PREROUTING and OUTPUT): one rule per cluster IP and
//!   port of a Service with endpoints, to its `CAPSTAN-SVC-*` chain; last, traffic to a local
//!   address goes on to `CAPSTAN-NODEPORTS`.
//! - nat `CAPSTAN-SVC-<hash>`: marks off-cluster traffic for masquerade, keeps ClientIP affinity
//!   (`recent`), then picks an endpoint with equal probability (`statistic`).
//! - nat `CAPSTAN-SEP-<hash>`: one endpoint: hairpin masquerade, affinity record, DNAT.
//! - nat `CAPSTAN-POSTROUTING` (from POSTROUTING) masquerades marked packets;
//!   `CAPSTAN-MARK-MASQ` sets the mark.
//! - filter `CAPSTAN-SERVICES` (INPUT, FORWARD, OUTPUT) and `CAPSTAN-EXTERNAL-SERVICES`
//!   (INPUT, FORWARD): REJECT for Services without endpoints, so clients fail at once.
//! - filter `CAPSTAN-FORWARD` (appended to FORWARD): accepts forwarded service traffic (marked
//!   for masquerade, or of an established connection) and, with a cluster CIDR, all traffic
//!   from or to pods, which a host firewall with a DROP policy (Docker's) would otherwise stop
//!   between nodes.
//! - filter `CAPSTAN-POD-EGRESS` (first in FORWARD, only when pods are confined): rejects
//!   forwarded packets from pods to anywhere outside the cluster CIDR.

use capstan_core::proxy::{ServiceEntry, ServicePortName, ServiceTable};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

/// The prefix of every chain this backend owns.
pub const CHAIN_PREFIX: &str = "CAPSTAN-";
pub(crate) const SERVICES: &str = "CAPSTAN-SERVICES";
pub(crate) const EXTERNAL_SERVICES: &str = "CAPSTAN-EXTERNAL-SERVICES";
pub(crate) const NODEPORTS: &str = "CAPSTAN-NODEPORTS";
pub(crate) const POSTROUTING: &str = "CAPSTAN-POSTROUTING";
pub(crate) const MARK_MASQ: &str = "CAPSTAN-MARK-MASQ";
pub(crate) const FORWARD: &str = "CAPSTAN-FORWARD";
pub(crate) const POD_EGRESS: &str = "CAPSTAN-POD-EGRESS";

/// Settings the rules depend on.
#[derive(Debug, Clone)]
pub(crate) struct RuleSettings {
    /// Traffic to a cluster IP from outside this range is masqueraded.
    pub cluster_cidr: Option<String>,
    /// The packet mark bit meaning "masquerade me".
    pub masquerade_mark: u32,
    /// Reject forwarded packets from pods to outside the cluster CIDR.
    pub confine_pods: bool,
}

impl RuleSettings {
    /// Whether the pod-egress chain is in use (confinement asked for, with a cluster CIDR).
    pub fn confines_pods(&self) -> bool {
        self.confine_pods && self.cluster_cidr.is_some()
    }
}

/// The per-Service chains of one Service port, by name, with their rules.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct ServiceChains {
    /// Chain name -> rule lines (`-A …`).
    pub nat: BTreeMap<String, Vec<String>>,
}

/// A 64-bit FNV-1a hash in 16 hex digits: stable across builds, so chain names are too.
pub(crate) fn digest(text: &str) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in text.bytes() {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{hash:016X}")
}

/// The `CAPSTAN-SVC-*` chain of a Service port (28 characters, iptables' limit).
pub(crate) fn service_chain(name: &ServicePortName) -> String {
    format!("CAPSTAN-SVC-{}", digest(&name.to_string()))
}

/// The `CAPSTAN-SEP-*` chain of one endpoint of a Service port.
pub(crate) fn endpoint_chain(name: &ServicePortName, endpoint: &SocketAddr) -> String {
    format!("CAPSTAN-SEP-{}", digest(&format!("{name}/{endpoint}")))
}

fn comment(name: &ServicePortName) -> String {
    // Quoted for iptables-restore; names hold no quotes (Kubernetes names are DNS labels).
    format!("-m comment --comment \"{name}\"")
}

fn ipv4s(ips: &[IpAddr]) -> impl Iterator<Item = &IpAddr> {
    ips.iter().filter(|ip| ip.is_ipv4())
}

/// The chains one Service port with endpoints needs.
pub(crate) fn chains_for(
    name: &ServicePortName,
    entry: &ServiceEntry,
    settings: &RuleSettings,
) -> ServiceChains {
    let mut chains = ServiceChains::default();
    let endpoints: Vec<&SocketAddr> = entry.endpoints.iter().filter(|e| e.is_ipv4()).collect();
    if endpoints.is_empty() {
        return chains;
    }
    let protocol = name.protocol.as_str();
    let svc = service_chain(name);
    let mut svc_rules = Vec::new();
    if let Some(cidr) = &settings.cluster_cidr {
        for ip in ipv4s(&entry.cluster_ips) {
            svc_rules.push(format!(
                "-A {svc} {} ! -s {cidr} -d {ip}/32 -p {protocol} -m {protocol} --dport {} -j {MARK_MASQ}",
                comment(name),
                entry.port
            ));
        }
    }
    let seps: Vec<String> = endpoints.iter().map(|e| endpoint_chain(name, e)).collect();
    if let Some(timeout) = entry.affinity {
        for sep in &seps {
            svc_rules.push(format!(
                "-A {svc} {} -m recent --name {sep} --mask 255.255.255.255 --rsource --rcheck --seconds {} --reap -j {sep}",
                comment(name),
                timeout.as_secs().max(1)
            ));
        }
    }
    let n = seps.len();
    for (i, sep) in seps.iter().enumerate() {
        let remaining = n - i;
        if remaining > 1 {
            svc_rules.push(format!(
                "-A {svc} {} -m statistic --mode random --probability {:.10} -j {sep}",
                comment(name),
                1.0 / remaining as f64
            ));
        } else {
            svc_rules.push(format!("-A {svc} {} -j {sep}", comment(name)));
        }
    }
    chains.nat.insert(svc, svc_rules);
    for (endpoint, sep) in endpoints.iter().zip(seps) {
        let affinity = if entry.affinity.is_some() {
            format!(" -m recent --name {sep} --mask 255.255.255.255 --rsource --set")
        } else {
            String::new()
        };
        let rules = vec![
            format!(
                "-A {sep} {} -s {}/32 -j {MARK_MASQ}",
                comment(name),
                endpoint.ip()
            ),
            format!(
                "-A {sep} {} -p {protocol}{affinity} -m {protocol} -j DNAT --to-destination {endpoint}",
                comment(name)
            ),
        ];
        chains.nat.insert(sep, rules);
    }
    chains
}

/// The rules of the chains every sync rewrites whole: nat `CAPSTAN-SERVICES` and
/// `CAPSTAN-NODEPORTS`, filter `CAPSTAN-SERVICES` and `CAPSTAN-EXTERNAL-SERVICES`.
struct EntryRules {
    nat_services: Vec<String>,
    nat_nodeports: Vec<String>,
    filter_services: Vec<String>,
    filter_external: Vec<String>,
}

fn entry_rules(table: &ServiceTable) -> EntryRules {
    let mut rules = EntryRules {
        nat_services: Vec::new(),
        nat_nodeports: Vec::new(),
        filter_services: Vec::new(),
        filter_external: Vec::new(),
    };
    for (name, entry) in &table.services {
        let protocol = name.protocol.as_str();
        let has_endpoints = entry.endpoints.iter().any(SocketAddr::is_ipv4);
        let svc = service_chain(name);
        for ip in ipv4s(&entry.cluster_ips) {
            let matched = format!(
                "{} -d {ip}/32 -p {protocol} -m {protocol} --dport {}",
                comment(name),
                entry.port
            );
            if has_endpoints {
                rules
                    .nat_services
                    .push(format!("-A {SERVICES} {matched} -j {svc}"));
            } else {
                rules.filter_services.push(format!(
                    "-A {SERVICES} {matched} -j REJECT --reject-with icmp-port-unreachable"
                ));
            }
        }
        if let Some(node_port) = entry.node_port {
            let matched = format!(
                "{} -p {protocol} -m {protocol} --dport {node_port}",
                comment(name)
            );
            if has_endpoints {
                rules
                    .nat_nodeports
                    .push(format!("-A {NODEPORTS} {matched} -j {MARK_MASQ}"));
                rules
                    .nat_nodeports
                    .push(format!("-A {NODEPORTS} {matched} -j {svc}"));
            } else {
                rules.filter_external.push(format!(
                    "-A {EXTERNAL_SERVICES} -m addrtype --dst-type LOCAL {matched} -j REJECT --reject-with icmp-port-unreachable"
                ));
            }
        }
    }
    rules.nat_services.push(format!(
        "-A {SERVICES} -m comment --comment \"capstan service nodeports\" -m addrtype --dst-type LOCAL -j {NODEPORTS}"
    ));
    rules
}

/// The restore text for `table`. `previous` (the table last applied, with the chains it made)
/// makes it partial: only the chains of changed Service ports are rewritten; chains no longer
/// needed are flushed and deleted. Without `previous`, every chain is written.
/// Rules of other chains to add in the same transaction (the jumps into ours), per table.
#[derive(Debug, Clone, Default)]
pub(crate) struct ExtraRules {
    pub nat: Vec<String>,
    pub filter: Vec<String>,
}

pub(crate) fn restore_text(
    table: &ServiceTable,
    previous: Option<&BTreeMap<String, Vec<String>>>,
    settings: &RuleSettings,
    extra: &ExtraRules,
) -> (String, BTreeMap<String, Vec<String>>) {
    let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, entry) in &table.services {
        wanted.extend(chains_for(name, entry, settings).nat);
    }
    let rules = entry_rules(table);
    let mark = format!("0x{:x}", settings.masquerade_mark);
    let mut text = String::with_capacity(256 + wanted.len() * 300);
    text.push_str("*nat\n");
    for chain in [SERVICES, NODEPORTS, POSTROUTING, MARK_MASQ] {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    let changed: BTreeSet<&String> = wanted
        .iter()
        .filter(|(chain, lines)| previous.is_none_or(|p| p.get(*chain) != Some(*lines)))
        .map(|(chain, _)| chain)
        .collect();
    let removed: Vec<&String> = previous
        .map(|p| p.keys().filter(|c| !wanted.contains_key(*c)).collect())
        .unwrap_or_default();
    for chain in changed.iter().copied().chain(removed.iter().copied()) {
        let _ = writeln!(text, ":{chain} - [0:0]");
    }
    let _ = writeln!(
        text,
        "-A {POSTROUTING} -m mark ! --mark {mark}/{mark} -j RETURN"
    );
    let _ = writeln!(text, "-A {POSTROUTING} -j MARK --xor-mark {mark}");
    let _ = writeln!(
        text,
        "-A {POSTROUTING} -m comment --comment \"capstan service traffic requiring SNAT\" -j MASQUERADE"
    );
    let _ = writeln!(text, "-A {MARK_MASQ} -j MARK --or-mark {mark}");
    for line in rules.nat_services.iter().chain(&rules.nat_nodeports) {
        text.push_str(line);
        text.push('\n');
    }
    for chain in &changed {
        for line in &wanted[*chain] {
            text.push_str(line);
            text.push('\n');
        }
    }
    for chain in &removed {
        let _ = writeln!(text, "-X {chain}");
    }
    for line in &extra.nat {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("COMMIT\n*filter\n");
    let _ = writeln!(text, ":{SERVICES} - [0:0]");
    let _ = writeln!(text, ":{EXTERNAL_SERVICES} - [0:0]");
    let _ = writeln!(text, ":{FORWARD} - [0:0]");
    let _ = writeln!(text, "-A {FORWARD} -m conntrack --ctstate INVALID -j DROP");
    let _ = writeln!(text, "-A {FORWARD} -m mark --mark {mark}/{mark} -j ACCEPT");
    let _ = writeln!(
        text,
        "-A {FORWARD} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    if let Some(cidr) = &settings.cluster_cidr {
        let _ = writeln!(text, "-A {FORWARD} -s {cidr} -j ACCEPT");
        let _ = writeln!(text, "-A {FORWARD} -d {cidr} -j ACCEPT");
        if settings.confines_pods() {
            let _ = writeln!(text, ":{POD_EGRESS} - [0:0]");
            let _ = writeln!(
                text,
                "-A {POD_EGRESS} -s {cidr} ! -d {cidr} -m comment --comment \"pods stay in the cluster\" -j REJECT --reject-with icmp-net-prohibited"
            );
        }
    }
    for line in rules.filter_services.iter().chain(&rules.filter_external) {
        text.push_str(line);
        text.push('\n');
    }
    for line in &extra.filter {
        text.push_str(line);
        text.push('\n');
    }
    text.push_str("COMMIT\n");
    (text, wanted)
}

/// What the rule-text tests of both backends share.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::RuleSettings;
    use capstan_core::proxy::{Protocol, ServicePortName};

    /// The `http` TCP port of Service `default/{service}`.
    pub(crate) fn name(service: &str) -> ServicePortName {
        ServicePortName {
            namespace: "default".into(),
            name: service.into(),
            port: "http".into(),
            protocol: Protocol::Tcp,
        }
    }

    /// Cluster CIDR 10.244.0.0/16, mark 0x4000, pods not confined.
    pub(crate) fn settings() -> RuleSettings {
        RuleSettings {
            cluster_cidr: Some("10.244.0.0/16".into()),
            confine_pods: false,
            masquerade_mark: 0x4000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{name, settings};
    use super::*;
    use std::time::Duration;

    fn table(endpoints: &[&str]) -> ServiceTable {
        let mut table = ServiceTable::default();
        table.services.insert(
            name("web"),
            ServiceEntry {
                cluster_ips: vec!["10.96.0.10".parse().unwrap()],
                port: 80,
                node_port: Some(30080),
                affinity: Some(Duration::from_secs(60)),
                endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
            },
        );
        table
    }

    #[test]
    fn chain_names_fit_iptables_and_are_stable() {
        let chain = service_chain(&name("web"));
        assert_eq!(chain.len(), 28);
        assert_eq!(chain, service_chain(&name("web")));
        assert_ne!(chain, service_chain(&name("api")));
    }

    #[test]
    fn equal_probability_selection_and_affinity() {
        let (text, chains) = restore_text(
            &table(&["10.244.0.5:8080", "10.244.1.6:8080", "10.244.2.7:8080"]),
            None,
            &settings(),
            &ExtraRules::default(),
        );
        assert_eq!(chains.len(), 4);
        assert!(text.contains("--probability 0.3333333333"));
        assert!(text.contains("--probability 0.5000000000"));
        assert_eq!(text.matches("--rcheck --seconds 60").count(), 3);
        assert_eq!(text.matches("-j DNAT --to-destination").count(), 3);
        assert!(text.contains("! -s 10.244.0.0/16 -d 10.96.0.10/32"));
        assert!(text.contains("--dport 30080 -j CAPSTAN-SVC-"));
        assert!(!text.contains("REJECT"));
    }

    #[test]
    fn confined_pods_get_an_egress_reject_and_unconfined_ones_none() {
        let table = ServiceTable::default();
        let extra = ExtraRules::default();
        let (open, _) = restore_text(&table, None, &settings(), &extra);
        assert!(!open.contains(POD_EGRESS));
        assert!(open.contains("-A CAPSTAN-FORWARD -d 10.244.0.0/16 -j ACCEPT"));
        let confined = RuleSettings {
            confine_pods: true,
            ..settings()
        };
        let (text, _) = restore_text(&table, None, &confined, &extra);
        assert!(text.contains(&format!(
            "-A {POD_EGRESS} -s 10.244.0.0/16 ! -d 10.244.0.0/16 -m comment --comment \"pods stay in the cluster\" -j REJECT"
        )));
        let no_cidr = RuleSettings {
            cluster_cidr: None,
            ..confined
        };
        assert!(!restore_text(&table, None, &no_cidr, &extra)
            .0
            .contains(POD_EGRESS));
    }

    #[test]
    fn no_endpoints_means_reject_and_no_service_chains() {
        let (text, chains) = restore_text(&table(&[]), None, &settings(), &ExtraRules::default());
        assert!(chains.is_empty());
        assert!(text.contains("-A CAPSTAN-SERVICES -m comment --comment \"default/web:http/tcp\" -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j REJECT"));
        assert!(text.contains("-A CAPSTAN-EXTERNAL-SERVICES -m addrtype --dst-type LOCAL"));
    }

    #[test]
    fn partial_text_rewrites_changed_chains_and_deletes_stale_ones() {
        let (_, before) = restore_text(
            &table(&["10.244.0.5:8080", "10.244.1.6:8080"]),
            None,
            &settings(),
            &ExtraRules::default(),
        );
        let (text, after) = restore_text(
            &table(&["10.244.0.5:8080"]),
            Some(&before),
            &settings(),
            &ExtraRules::default(),
        );
        let stale: Vec<&String> = before.keys().filter(|c| !after.contains_key(*c)).collect();
        assert_eq!(stale.len(), 1);
        assert!(text.contains(&format!("-X {}", stale[0])));
        // The remaining endpoint's chain is unchanged and not rewritten; the service chain is.
        let kept = endpoint_chain(&name("web"), &"10.244.0.5:8080".parse().unwrap());
        assert!(!text.contains(&format!(":{kept}")));
        assert!(text.contains(&format!(":{}", service_chain(&name("web")))));
        let (unchanged, _) = restore_text(
            &table(&["10.244.0.5:8080"]),
            Some(&after),
            &settings(),
            &ExtraRules::default(),
        );
        assert!(!unchanged.contains("CAPSTAN-SEP-"));
    }
}
