//! [`NftablesProxy`]: the [`ProxyBackend`] on nftables — every object in its own tables,
//! `ip capstan` and (where the host has IPv6) `ip6 capstan`, Service dispatch through maps,
//! one `nft -f` transaction per sync that carries only what changed (see
//! [`nft_ruleset`](crate::nft_ruleset)). It scales where iptables cannot: changing one Service
//! among thousands rewrites one chain and one map. Each family's table carries the cluster IPs
//! and endpoints of that family, so a dual-stack Service answers on both of its cluster IPs.
//!
//! Unlike [`IptablesProxy`](crate::IptablesProxy) it does not accept forwarded traffic past
//! another table's DROP policy (an nftables accept is final only in its own table), so hosts
//! whose forward policy drops (Docker's) need their own accept rules for the pod range.

use crate::nft_ruleset::{ruleset_text, ChangeSide, Family, Mode, Objects};
use crate::rules::RuleSettings;
use crate::{command, conntrack, CONNTRACK};
use async_trait::async_trait;
use capstan_core::proxy::{ProxyBackend, ProxyError, ServiceTable};
use tokio::sync::Mutex;

/// How an [`NftablesProxy`] programs its tables.
#[derive(Debug, Clone)]
pub struct NftablesConfig {
    /// The cluster's (IPv4) pod range: traffic to a cluster IP from outside it is masqueraded.
    pub cluster_cidr: Option<String>,
    /// The packet mark bit that means "masquerade me".
    pub masquerade_mark: u32,
    /// The `nft` program.
    pub nft: String,
    /// Whether to serve IPv6 Services; `None`: when the host has IPv6.
    pub ipv6: Option<bool>,
}

impl Default for NftablesConfig {
    fn default() -> Self {
        NftablesConfig {
            cluster_cidr: None,
            masquerade_mark: 0x4000,
            nft: "nft".into(),
            ipv6: None,
        }
    }
}

/// Whether this host's kernel has IPv6 (its addresses are listed).
fn host_has_ipv6() -> bool {
    std::path::Path::new("/proc/net/if_inet6").exists()
}

/// The nftables proxy backend.
pub struct NftablesProxy {
    settings: RuleSettings,
    nft: String,
    families: Vec<Family>,
    /// Per family, the objects of the last successful sync; `None` after a failure or before
    /// the first sync (the next sync rebuilds the tables).
    applied: Mutex<Option<Vec<Objects>>>,
}

impl NftablesProxy {
    /// A backend using `config.nft`; fails when nftables is unusable here.
    pub async fn new(config: NftablesConfig) -> Result<Self, ProxyError> {
        command::run(&config.nft, &["list", "tables"], None).await?;
        let mut families = vec![Family::V4];
        if config.ipv6.unwrap_or_else(host_has_ipv6) {
            families.push(Family::V6);
        }
        Ok(NftablesProxy {
            settings: RuleSettings {
                cluster_cidr: config.cluster_cidr,
                masquerade_mark: config.masquerade_mark,
                confine_pods: false,
            },
            nft: config.nft,
            families,
            applied: Mutex::new(None),
        })
    }

    /// Whether IPv6 Services are served.
    pub fn serves_ipv6(&self) -> bool {
        self.families.contains(&Family::V6)
    }

    fn build(&self, table: &ServiceTable) -> Vec<Objects> {
        self.families
            .iter()
            .map(|family| Objects::build(table, &self.settings, *family))
            .collect()
    }

    fn scratch_text(&self, objects: &[Objects]) -> String {
        objects
            .iter()
            .map(|o| ruleset_text(o, Mode::Scratch, &self.settings))
            .collect()
    }

    /// The `nft -f` text a sync from `previous` to `table` applies (benchmarks compare it with
    /// a raw `nft -f` of the same text).
    pub fn sync_text(&self, table: &ServiceTable, previous: Option<&ServiceTable>) -> String {
        match previous {
            None => self.scratch_text(&self.build(table)),
            Some(previous) => self
                .build(previous)
                .iter()
                .map(|before| {
                    let changes = before.changes(table, &self.settings);
                    ruleset_text(before, Mode::Delta(&changes), &self.settings)
                })
                .collect(),
        }
    }

    async fn apply(&self, text: &str) -> Result<(), ProxyError> {
        if text.is_empty() {
            return Ok(());
        }
        command::run(&self.nft, &["-f", "-"], Some(text))
            .await
            .map(drop)
    }

    /// Deletes every family's table (`add` first, so the delete finds one).
    fn delete_tables_text(&self) -> String {
        self.families
            .iter()
            .map(|f| {
                format!(
                    "add table {table}\ndelete table {table}\n",
                    table = f.table()
                )
            })
            .collect()
    }
}

#[async_trait]
impl ProxyBackend for NftablesProxy {
    async fn sync(&self, table: &ServiceTable) -> Result<(), ProxyError> {
        let mut applied = self.applied.lock().await;
        let Some(mut held) = applied.take() else {
            let objects = self.build(table);
            self.apply(&self.scratch_text(&objects)).await?;
            *applied = Some(objects);
            return Ok(());
        };
        let changes: Vec<_> = held
            .iter()
            .map(|objects| objects.changes(table, &self.settings))
            .collect();
        // The periodic resync of an unchanged table repairs whatever was changed behind the
        // backend's back, keeping affinity sets' clients; a changed one writes only changes.
        let repair = changes.iter().all(Vec::is_empty);
        let mut text = String::new();
        for (objects, changed) in held.iter().zip(&changes) {
            let mode = if repair {
                Mode::Repair
            } else {
                Mode::Delta(changed)
            };
            text.push_str(&ruleset_text(objects, mode, &self.settings));
        }
        match self.apply(&text).await {
            Ok(()) => {
                for (objects, changed) in held.iter_mut().zip(changes) {
                    let stale = conntrack::stale_udp_flows(
                        &ChangeSide::before(&changed),
                        &ChangeSide::after(&changed),
                    );
                    conntrack::delete(CONNTRACK, &stale).await;
                    objects.apply(changed);
                }
                *applied = Some(held);
                Ok(())
            }
            Err(err) => {
                // The kernel did not hold what was recorded (changed behind our back):
                // rebuild the tables from scratch at once.
                tracing::warn!(error = %err, "nftables delta failed; rebuilding the tables");
                let objects = self.build(table);
                self.apply(&self.scratch_text(&objects)).await?;
                *applied = Some(objects);
                Ok(())
            }
        }
    }

    async fn cleanup(&self) -> Result<(), ProxyError> {
        let mut applied = self.applied.lock().await;
        *applied = None;
        self.apply(&self.delete_tables_text()).await
    }
}
