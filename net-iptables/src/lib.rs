//! `capstan-net-iptables`: [`IptablesProxy`], the [`ProxyBackend`] that programs a node's
//! Service data path in iptables' nat and filter tables, as kube-proxy's iptables mode does.
//!
//! It owns only chains named `CAPSTAN-*` (see [`rules`](crate::rules) for their layout) and the
//! jump rules into them from the built-in chains; cleanup removes exactly those. Every sync
//! is one atomic `iptables-restore --noflush`. A sync whose table differs from the last one
//! applied rewrites only the chains of changed Service ports; a sync of an unchanged table
//! (the proxy's periodic resync) rewrites everything, repairing whatever was changed behind its
//! back. IPv4 only: IPv6 cluster IPs and endpoints are skipped. After a sync, UDP flows to
//! removed endpoints are deleted from connection tracking (the `conntrack` tool).
//!
//! [`NftablesProxy`] is the same contract on nftables: its own tables (IPv4, and IPv6 where
//! the host has it, so dual-stack Services answer on both cluster IPs), map lookups, and
//! incremental transactions that stay fast with thousands of Services.
//!
//! It also has [`NetlinkRoutes`], the host-gw pod network's
//! [`RouteBackend`](capstan_core::pod_network::RouteBackend): routes to other nodes' pod
//! subnets and the blackholes for the cluster and service ranges, over rtnetlink.
//!
//! ```no_run
//! # async fn run(informers: capstan_core::controller::InformerFactory) -> Result<(), capstan_core::proxy::ProxyError> {
//! use capstan_core::proxy::{ProxyConfig, ServiceProxy};
//! use capstan_net_iptables::{IptablesConfig, IptablesProxy};
//! use std::sync::Arc;
//!
//! let backend = IptablesProxy::new(IptablesConfig::default()).await?;
//! let proxy = ServiceProxy::new(&informers, Arc::new(backend), ProxyConfig::default()).start();
//! # Ok(()) }
//! ```

mod command;
mod conntrack;
mod nft_ruleset;
mod nftables;
mod routes;
mod rules;
mod variant;

pub use nftables::{NftablesConfig, NftablesProxy};
pub use routes::{NetlinkRoutes, ROUTE_PROTOCOL};
pub use rules::CHAIN_PREFIX;
pub use variant::Variant;

use async_trait::async_trait;
use capstan_core::proxy::{ProxyBackend, ProxyError, ServiceTable};
use rules::{RuleSettings, EXTERNAL_SERVICES, FORWARD, POD_EGRESS, POSTROUTING, SERVICES};
use std::collections::BTreeMap;
use tokio::sync::Mutex;

/// The connection-tracking tool both backends use to forget stale UDP flows.
const CONNTRACK: &str = "conntrack";

/// How an [`IptablesProxy`] programs its rules.
#[derive(Debug, Clone)]
pub struct IptablesConfig {
    /// The cluster's pod range: traffic to a cluster IP from outside it is masqueraded (so
    /// replies return through this node). `None`: only NodePort and hairpin traffic is.
    pub cluster_cidr: Option<String>,
    /// The packet mark bit that means "masquerade me" (kube-proxy uses 0x4000 too).
    pub masquerade_mark: u32,
    /// The iptables variant; `None` detects the host's.
    pub variant: Option<Variant>,
    /// Confine pods to the cluster: forwarded packets from `cluster_cidr` to addresses outside
    /// it are rejected (this host's own addresses stay reachable). For a single-node cluster
    /// whose pods must not reach beyond the machine; needs `cluster_cidr`.
    pub confine_pods: bool,
}

impl Default for IptablesConfig {
    fn default() -> Self {
        IptablesConfig {
            cluster_cidr: None,
            masquerade_mark: 0x4000,
            variant: None,
            confine_pods: false,
        }
    }
}

/// The iptables proxy backend.
pub struct IptablesProxy {
    settings: RuleSettings,
    variant: Variant,
    applied: Mutex<Option<Applied>>,
}

/// What the last successful sync left in the kernel.
struct Applied {
    table: ServiceTable,
    chains: BTreeMap<String, Vec<String>>,
}

/// A jump from a built-in chain into ours: table, chain, extra matches, target. Jumps are
/// inserted first in their chain, except those in [`APPENDED`].
const JUMPS: &[(&str, &str, &[&str], &str)] = &[
    ("nat", "PREROUTING", &[], SERVICES),
    ("nat", "OUTPUT", &[], SERVICES),
    ("nat", "POSTROUTING", &[], POSTROUTING),
    ("filter", "INPUT", NEW, SERVICES),
    ("filter", "FORWARD", NEW, SERVICES),
    ("filter", "OUTPUT", NEW, SERVICES),
    ("filter", "INPUT", NEW, EXTERNAL_SERVICES),
    ("filter", "FORWARD", NEW, EXTERNAL_SERVICES),
    ("filter", "FORWARD", &[], FORWARD),
    ("filter", "FORWARD", &[], POD_EGRESS),
];
/// Targets whose jump goes last in its chain: the forwarding accepts must not bypass the
/// REJECTs of Services without endpoints, while still coming before a DROP policy (Docker's).
const APPENDED: &[&str] = &[FORWARD];
const NEW: &[&str] = &["-m", "conntrack", "--ctstate", "NEW"];

const JUMP_COMMENT: &str = "capstan service portals";

fn jump_spec(matches: &[&str], target: &str) -> Vec<String> {
    let mut spec: Vec<String> = matches.iter().map(|m| m.to_string()).collect();
    spec.extend(
        ["-m", "comment", "--comment", JUMP_COMMENT, "-j", target]
            .into_iter()
            .map(String::from),
    );
    spec
}

/// Our chains and jump rules in one table, as iptables-save printed them.
struct Existing {
    chains: Vec<String>,
    jumps: Vec<String>,
}

impl Existing {
    /// Whether the jump from `chain` to `target` is there.
    fn has_jump(&self, chain: &str, target: &str) -> bool {
        self.jumps
            .iter()
            .any(|l| l.starts_with(&format!("-A {chain} ")) && l.ends_with(&format!("-j {target}")))
    }
}

/// Restore lines inserting the jumps missing from `existing` (in the same transaction as the
/// chains, so a first sync needs no separate commands).
fn missing_jumps(
    existing: &BTreeMap<&'static str, Existing>,
    settings: &RuleSettings,
) -> rules::ExtraRules {
    let mut extra = rules::ExtraRules::default();
    for (table, chain, matches, target) in JUMPS {
        if *target == POD_EGRESS && !settings.confines_pods() {
            continue;
        }
        if existing
            .get(table)
            .is_some_and(|e| e.has_jump(chain, target))
        {
            continue;
        }
        let mut line = if APPENDED.contains(target) {
            format!("-A {chain} ")
        } else {
            format!("-I {chain} 1 ")
        };
        for m in *matches {
            line.push_str(m);
            line.push(' ');
        }
        line.push_str(&format!(
            "-m comment --comment \"{JUMP_COMMENT}\" -j {target}"
        ));
        match *table {
            "nat" => extra.nat.push(line),
            _ => extra.filter.push(line),
        }
    }
    extra
}

impl IptablesProxy {
    /// A backend on the configured (or detected) iptables variant; fails when the other
    /// variant holds chains of ours.
    pub async fn new(config: IptablesConfig) -> Result<Self, ProxyError> {
        let variant = match config.variant {
            Some(variant) => variant,
            None => Variant::detect().await?,
        };
        variant.refuse_mixing().await?;
        Ok(IptablesProxy {
            settings: RuleSettings {
                cluster_cidr: config.cluster_cidr,
                masquerade_mark: config.masquerade_mark,
                confine_pods: config.confine_pods,
            },
            variant,
            applied: Mutex::new(None),
        })
    }

    /// The variant this backend programs.
    pub fn variant(&self) -> Variant {
        self.variant
    }

    async fn iptables(&self, args: &[&str]) -> Result<String, ProxyError> {
        command::run(&self.variant.binary("iptables"), args, None).await
    }

    /// What the kernel holds of ours, per table: our chains and the jump rules into them.
    async fn existing(&self) -> Result<BTreeMap<&'static str, Existing>, ProxyError> {
        let mut existing = BTreeMap::new();
        for table in ["nat", "filter"] {
            let saved =
                command::run(&self.variant.binary("iptables-save"), &["-t", table], None).await?;
            let chains = saved
                .lines()
                .filter_map(|l| l.strip_prefix(':'))
                .filter_map(|l| l.split_whitespace().next())
                .filter(|c| c.starts_with(CHAIN_PREFIX))
                .map(str::to_string)
                .collect();
            let jumps = saved
                .lines()
                .filter(|l| l.contains(JUMP_COMMENT))
                .map(str::to_string)
                .collect();
            existing.insert(table, Existing { chains, jumps });
        }
        Ok(existing)
    }

    async fn restore(&self, text: &str) -> Result<(), ProxyError> {
        command::run(
            &self.variant.binary("iptables-restore"),
            &["--noflush"],
            Some(text),
        )
        .await
        .map(|_| ())
    }
}

#[async_trait]
impl ProxyBackend for IptablesProxy {
    async fn sync(&self, table: &ServiceTable) -> Result<(), ProxyError> {
        let mut applied = self.applied.lock().await;
        let partial = applied
            .as_ref()
            .filter(|a| &a.table != table)
            .map(|a| a.chains.clone());
        // A full sync rewrites every chain, deletes ours that are no longer wanted (including
        // those a previous process left) and puts back missing jumps into our chains.
        let (previous, extra) = match partial {
            Some(chains) => (chains, rules::ExtraRules::default()),
            None => {
                let existing = self.existing().await?;
                let previous = existing
                    .get("nat")
                    .map(|e| e.chains.clone())
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|c| c.starts_with("CAPSTAN-SVC-") || c.starts_with("CAPSTAN-SEP-"))
                    .map(|c| (c, Vec::new()))
                    .collect();
                (previous, missing_jumps(&existing, &self.settings))
            }
        };
        let (text, chains) = rules::restore_text(table, Some(&previous), &self.settings, &extra);
        let before = applied.take().map(|a| a.table);
        self.restore(&text).await?;
        if let Some(before) = &before {
            conntrack::delete(CONNTRACK, &conntrack::stale_udp_flows(before, table)).await;
        }
        *applied = Some(Applied {
            table: table.clone(),
            chains,
        });
        Ok(())
    }

    async fn cleanup(&self) -> Result<(), ProxyError> {
        let mut applied = self.applied.lock().await;
        *applied = None;
        for (table, chain, matches, target) in JUMPS {
            let spec = jump_spec(matches, target);
            let spec: Vec<&str> = spec.iter().map(String::as_str).collect();
            let mut delete = vec!["-t", table, "-D", chain];
            delete.extend(&spec);
            // Deleted until none is left (a crashed run may have inserted it twice).
            for _ in 0..8 {
                if self.iptables(&delete).await.is_err() {
                    break;
                }
            }
        }
        let mut text = String::new();
        for (table, existing) in self.existing().await? {
            let chains = existing.chains;
            if chains.is_empty() {
                continue;
            }
            text.push_str(&format!("*{table}\n"));
            for chain in &chains {
                text.push_str(&format!(":{chain} - [0:0]\n"));
            }
            for chain in &chains {
                text.push_str(&format!("-X {chain}\n"));
            }
            text.push_str("COMMIT\n");
        }
        if !text.is_empty() {
            self.restore(&text).await?;
        }
        Ok(())
    }
}
