//! The node IPAM controller: gives every Node without one a pod subnet (`spec.podCIDR`, by
//! default a /24) carved from the cluster pod CIDR, the fact a host-gw pod network routes by —
//! what flannel keeps under `/coreos.com/network/subnets`. Subnets a node registered with
//! itself are respected; a deleted node's subnet becomes free again. Allocation is local to
//! the controller (which runs once, under leader election) and confirmed by a patch that
//! carries the Node's resourceVersion, so a node is never given two subnets.

use super::informer::{Change, Informer};
use super::runner::{Action, Reconciler};
use super::{ControllerContext, ControllerError, EventType, ObjectKey};
use crate::cidr::Ipv4Cidr;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the node IPAM controller hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIpamConfig {
    /// The cluster pod CIDR (default `10.244.0.0/16`).
    pub cluster_cidr: Ipv4Cidr,
    /// The prefix length of each node's subnet (default 24: 254 pods a node, 256 nodes).
    pub node_prefix: u8,
}

impl Default for NodeIpamConfig {
    fn default() -> Self {
        NodeIpamConfig {
            cluster_cidr: Ipv4Cidr::parse("10.244.0.0/16").unwrap_or_else(|| unreachable!()),
            node_prefix: 24,
        }
    }
}

/// Which subnets are taken, by whom.
#[derive(Default)]
struct Subnets {
    by_node: HashMap<String, u32>,
    /// Subnet index -> how many nodes hold it (more than one only if nodes registered with
    /// the same subnet themselves).
    holders: BTreeMap<u32, u32>,
    primed: bool,
}

impl Subnets {
    fn record(&mut self, node: &str, index: u32) {
        if self.by_node.get(node) == Some(&index) {
            return;
        }
        self.release(node);
        self.by_node.insert(node.to_string(), index);
        *self.holders.entry(index).or_default() += 1;
    }

    fn release(&mut self, node: &str) {
        if let Some(index) = self.by_node.remove(node) {
            if let Some(count) = self.holders.get_mut(&index) {
                *count -= 1;
                if *count == 0 {
                    self.holders.remove(&index);
                }
            }
        }
    }

    /// The lowest free index below `count`.
    fn lowest_free(&self, count: u32) -> Option<u32> {
        let mut candidate = 0u32;
        for &taken in self.holders.keys() {
            if taken > candidate {
                break;
            }
            candidate = taken + 1;
        }
        (candidate < count).then_some(candidate)
    }
}

/// Assigns pod subnets to Nodes.
pub struct NodeIpamController {
    ctx: ControllerContext,
    nodes: Informer<Node>,
    config: NodeIpamConfig,
    subnets: Mutex<Subnets>,
}

fn pod_cidr(node: &Node) -> Option<Ipv4Cidr> {
    let spec = node.spec.as_ref()?;
    spec.pod_cidr
        .as_deref()
        .or_else(|| spec.pod_cidrs.as_ref()?.first().map(String::as_str))
        .and_then(Ipv4Cidr::parse)
}

impl NodeIpamController {
    /// A controller over the context's shared Node informer.
    pub fn new(ctx: &ControllerContext, config: NodeIpamConfig) -> Self {
        NodeIpamController {
            ctx: ctx.clone(),
            nodes: ctx.informers.informer(),
            config,
            subnets: Mutex::new(Subnets::default()),
        }
    }

    pub(crate) fn triggers(
        &self,
        queue: &Arc<super::WorkQueue<ObjectKey>>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let own = super::triggers::enqueue_own(&self.nodes, queue.clone(), stop.clone());
        // A deleted node's subnet may be what a waiting node needs.
        let nodes = self.nodes.clone();
        let freed = super::triggers::enqueue_changes(
            &self.nodes,
            queue.clone(),
            stop.clone(),
            move |change| match change {
                Change::Deleted(_) => nodes
                    .list()
                    .iter()
                    .filter(|n| pod_cidr(n).is_none())
                    .map(|n| ObjectKey::of(n.as_ref()))
                    .collect(),
                _ => Vec::new(),
            },
        );
        vec![own, freed]
    }

    fn index_of(&self, node: &Node) -> Option<u32> {
        let cidr = pod_cidr(node)?;
        (cidr.prefix() == self.config.node_prefix)
            .then(|| self.config.cluster_cidr.subnet_index(&cidr))
            .flatten()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Subnets> {
        self.subnets.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes a subnet for `name` (keeping one it was already given), recording it.
    fn choose(&self, name: &str) -> Option<Ipv4Cidr> {
        let mut subnets = self.lock();
        if !subnets.primed {
            for node in self.nodes.list() {
                if let Some(index) = self.index_of(&node) {
                    subnets.record(node.metadata.name.as_deref().unwrap_or_default(), index);
                }
            }
            subnets.primed = true;
        }
        let count = self
            .config
            .cluster_cidr
            .subnet_count(self.config.node_prefix);
        let index = match subnets.by_node.get(name) {
            Some(&index) => index,
            None => {
                if subnets.lowest_free(count).is_none() {
                    // Nodes deleted but not reconciled yet still hold subnets: free them now.
                    let gone: Vec<String> = subnets
                        .by_node
                        .keys()
                        .filter(|n| self.nodes.get(&ObjectKey::cluster(n.as_str())).is_none())
                        .cloned()
                        .collect();
                    for node in gone {
                        subnets.release(&node);
                    }
                }
                let index = subnets.lowest_free(count)?;
                subnets.record(name, index);
                index
            }
        };
        self.config
            .cluster_cidr
            .subnet(index, self.config.node_prefix)
    }
}

#[async_trait::async_trait]
impl Reconciler for NodeIpamController {
    fn name(&self) -> &str {
        "node-ipam"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        self.nodes.wait_synced().await;
        let Some(node) = self.nodes.get(key) else {
            self.lock().release(&key.name);
            return Ok(Action::Done);
        };
        if pod_cidr(&node).is_some() {
            if let Some(index) = self.index_of(&node) {
                self.lock().record(&key.name, index);
            }
            return Ok(Action::Done);
        }
        let Some(subnet) = self.choose(&key.name) else {
            self.ctx.recorder.record_for(
                node.as_ref(),
                EventType::Warning,
                "CIDRNotAvailable",
                &format!(
                    "Node {} status is now: CIDRNotAvailable (no /{} left in {})",
                    key.name, self.config.node_prefix, self.config.cluster_cidr
                ),
            );
            return Ok(Action::RequeueAfter(Duration::from_secs(30)));
        };
        let cidr = subnet.to_string();
        let api: Api<Node> = Api::all(self.ctx.client.clone());
        let patch = json!({
            "metadata": {"resourceVersion": node.metadata.resource_version},
            "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        });
        match api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                tracing::info!(node = %key.name, %cidr, "assigned pod CIDR");
                self.ctx.recorder.record_for(
                    node.as_ref(),
                    EventType::Normal,
                    "CIDRAssignmentSucceeded",
                    &format!("Node {} was given pod CIDR {cidr}", key.name),
                );
                Ok(Action::Done)
            }
            Err(err) => {
                // Gone or changed meanwhile: the next reconcile decides afresh.
                self.lock().release(&key.name);
                Err(err.into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_fill_lowest_first_and_reuse_released_ones() {
        let mut subnets = Subnets::default();
        assert_eq!(subnets.lowest_free(4), Some(0));
        subnets.record("a", 0);
        subnets.record("b", 2);
        assert_eq!(subnets.lowest_free(4), Some(1));
        subnets.record("c", 1);
        assert_eq!(subnets.lowest_free(4), Some(3));
        subnets.record("d", 3);
        assert_eq!(subnets.lowest_free(4), None);
        subnets.release("b");
        assert_eq!(subnets.lowest_free(4), Some(2));
        // Two nodes claiming one subnet keep it taken until both are gone.
        subnets.record("e", 0);
        subnets.release("a");
        assert_eq!(subnets.lowest_free(4), Some(2));
        subnets.record("b", 2);
        subnets.release("e");
        assert_eq!(subnets.lowest_free(4), Some(0));
    }
}
