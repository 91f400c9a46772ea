//! [`NftablesProxy`]: the [`ProxyBackend`] on nftables — every object in its own table
//! `ip capstan`, Service dispatch through maps, one `nft -f` transaction per sync that carries
//! only what changed (see [`nft_ruleset`](crate::nft_ruleset)). It scales where iptables
//! cannot: changing one Service among thousands rewrites one chain and one map.
//!
//! Unlike [`IptablesProxy`](crate::IptablesProxy) it does not accept forwarded traffic past
//! another table's DROP policy (an nftables accept is final only in its own table), so hosts
//! whose forward policy drops (Docker's) need their own accept rules for the pod range.

use crate::nft_ruleset::{ruleset_text, Mode, Objects, TABLE};
use crate::rules::RuleSettings;
use crate::{command, conntrack, CONNTRACK};
use async_trait::async_trait;
use capstan_core::proxy::{ProxyBackend, ProxyError, ServiceTable};
use tokio::sync::Mutex;

/// How an [`NftablesProxy`] programs its table.
#[derive(Debug, Clone)]
pub struct NftablesConfig {
    /// The cluster's pod range: traffic to a cluster IP from outside it is masqueraded.
    pub cluster_cidr: Option<String>,
    /// The packet mark bit that means "masquerade me".
    pub masquerade_mark: u32,
    /// The `nft` program.
    pub nft: String,
}

impl Default for NftablesConfig {
    fn default() -> Self {
        NftablesConfig {
            cluster_cidr: None,
            masquerade_mark: 0x4000,
            nft: "nft".into(),
        }
    }
}

/// The nftables proxy backend.
pub struct NftablesProxy {
    settings: RuleSettings,
    nft: String,
    /// The objects of the last successful sync; `None` after a failure or before the first
    /// sync (the next sync rebuilds the table).
    applied: Mutex<Option<Objects>>,
}

impl NftablesProxy {
    /// A backend using `config.nft`; fails when nftables is unusable here.
    pub async fn new(config: NftablesConfig) -> Result<Self, ProxyError> {
        command::run(&config.nft, &["list", "tables"], None).await?;
        Ok(NftablesProxy {
            settings: RuleSettings {
                cluster_cidr: config.cluster_cidr,
                masquerade_mark: config.masquerade_mark,
                confine_pods: false,
            },
            nft: config.nft,
            applied: Mutex::new(None),
        })
    }

    /// The `nft -f` text a sync from `previous` to `table` applies (benchmarks compare it with
    /// a raw `nft -f` of the same text).
    pub fn sync_text(&self, table: &ServiceTable, previous: Option<&ServiceTable>) -> String {
        match previous {
            None => ruleset_text(
                &Objects::build(table, &self.settings),
                Mode::Scratch,
                &self.settings,
            ),
            Some(previous) => {
                let before = Objects::build(previous, &self.settings);
                let (objects, _) = before.update(table, &self.settings);
                ruleset_text(&objects, Mode::Delta(&before), &self.settings)
            }
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
}

#[async_trait]
impl ProxyBackend for NftablesProxy {
    async fn sync(&self, table: &ServiceTable) -> Result<(), ProxyError> {
        let mut applied = self.applied.lock().await;
        let previous = applied.take();
        let (objects, text) = match &previous {
            None => {
                let objects = Objects::build(table, &self.settings);
                let text = ruleset_text(&objects, Mode::Scratch, &self.settings);
                (objects, text)
            }
            Some(before) => {
                let (objects, changed) = before.update(table, &self.settings);
                // The periodic resync of an unchanged table repairs whatever was changed
                // behind the backend's back, keeping affinity sets' clients.
                let mode = if changed {
                    Mode::Delta(before)
                } else {
                    Mode::Repair
                };
                let text = ruleset_text(&objects, mode, &self.settings);
                (objects, text)
            }
        };
        match self.apply(&text).await {
            Ok(()) => {
                if let Some(before) = &previous {
                    let stale = conntrack::stale_udp_flows(before, &objects);
                    conntrack::delete(CONNTRACK, &stale).await;
                }
                *applied = Some(objects);
                Ok(())
            }
            Err(err) if previous.is_some() => {
                // The kernel did not hold what was recorded (changed behind our back):
                // rebuild the table from scratch at once.
                tracing::warn!(error = %err, "nftables delta failed; rebuilding the table");
                let objects = Objects::build(table, &self.settings);
                self.apply(&ruleset_text(&objects, Mode::Scratch, &self.settings))
                    .await?;
                *applied = Some(objects);
                Ok(())
            }
            Err(err) => Err(err),
        }
    }

    async fn cleanup(&self) -> Result<(), ProxyError> {
        let mut applied = self.applied.lock().await;
        *applied = None;
        self.apply(&format!("add table {TABLE}\ndelete table {TABLE}\n"))
            .await
    }
}
