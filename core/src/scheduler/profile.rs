//! Scheduling profiles: which plugins run, with which score weights, for pods naming the
//! profile in `spec.schedulerName`. A user adds their own plugin with
//! [`Profile::with_plugin`].

use super::framework::Plugin;
use super::plugins::{
    BalancedAllocation, DefaultPreemption, ImageLocality, InterPodAffinity, NodeAffinity, NodeName,
    NodePorts, NodeResourcesFit, NodeUnschedulable, PodTopologySpread, TaintToleration,
};
use std::sync::Arc;

/// The scheduler name of the default profile.
pub const DEFAULT_SCHEDULER: &str = "default-scheduler";

/// A named set of plugins and score weights.
#[derive(Clone)]
pub struct Profile {
    /// The `spec.schedulerName` this profile serves.
    pub scheduler_name: String,
    /// The plugins, in the order they run, with their score weights (unused for plugins that
    /// do not score).
    pub plugins: Vec<(Arc<dyn Plugin>, i64)>,
    /// Percentage of nodes to find feasible before scoring (like kube-scheduler's
    /// `percentageOfNodesToScore`): 0 picks it adaptively from the cluster size, 100 scores
    /// every node.
    pub percentage_of_nodes_to_score: u32,
}

impl Profile {
    /// Kubernetes' default plugins and weights. Binding is added by the scheduler (through
    /// its client) unless the profile has its own bind plugin.
    pub fn default_profile() -> Self {
        Profile {
            scheduler_name: DEFAULT_SCHEDULER.into(),
            plugins: vec![
                (Arc::new(NodeUnschedulable), 0),
                (Arc::new(NodeName), 0),
                (Arc::new(TaintToleration), 3),
                (Arc::new(NodeAffinity), 2),
                (Arc::new(NodePorts), 0),
                (Arc::new(NodeResourcesFit::default()), 1),
                (Arc::new(PodTopologySpread), 2),
                (Arc::new(InterPodAffinity), 2),
                (Arc::new(BalancedAllocation), 1),
                (Arc::new(ImageLocality), 1),
                (Arc::new(DefaultPreemption), 0),
            ],
            percentage_of_nodes_to_score: 0,
        }
    }

    /// The same plugins under another scheduler name.
    pub fn named(mut self, scheduler_name: &str) -> Self {
        self.scheduler_name = scheduler_name.into();
        self
    }

    /// Adds a plugin (before the binder, so its filters and scores run with the others).
    pub fn with_plugin(mut self, plugin: Arc<dyn Plugin>, weight: i64) -> Self {
        let at = self
            .plugins
            .iter()
            .position(|(p, _)| p.as_bind().is_some())
            .unwrap_or(self.plugins.len());
        self.plugins.insert(at, (plugin, weight));
        self
    }

    /// Removes the plugin named `name`.
    pub fn without_plugin(mut self, name: &str) -> Self {
        self.plugins.retain(|(p, _)| p.name() != name);
        self
    }

    /// Replaces a plugin of the same name (keeping its place), e.g. to change its arguments.
    pub fn replacing(mut self, plugin: Arc<dyn Plugin>, weight: i64) -> Self {
        if let Some(slot) = self
            .plugins
            .iter_mut()
            .find(|(p, _)| p.name() == plugin.name())
        {
            *slot = (plugin, weight);
            self
        } else {
            self.with_plugin(plugin, weight)
        }
    }

    /// Sets the percentage of nodes to score (0: adaptive; 100: all).
    pub fn scoring_percentage(mut self, percentage: u32) -> Self {
        self.percentage_of_nodes_to_score = percentage.min(100);
        self
    }
}

/// How many feasible nodes to find before scoring, out of `nodes`: all below 100 nodes or at
/// 100%, else the percentage (adaptive: 50% minus 1% per 125 nodes, at least 5%), at least 100.
pub fn feasible_nodes_to_find(nodes: usize, percentage: u32) -> usize {
    if nodes < 100 || percentage >= 100 {
        return nodes;
    }
    let percentage = if percentage == 0 {
        50usize.saturating_sub(nodes / 125).max(5)
    } else {
        percentage as usize
    };
    (nodes * percentage / 100).max(100)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sampling_follows_kube_scheduler() {
        assert_eq!(feasible_nodes_to_find(50, 0), 50);
        assert_eq!(feasible_nodes_to_find(5000, 0), 500);
        assert_eq!(feasible_nodes_to_find(15000, 0), 750);
        assert_eq!(feasible_nodes_to_find(500, 0), 230);
        assert_eq!(feasible_nodes_to_find(5000, 100), 5000);
        assert_eq!(feasible_nodes_to_find(1000, 1), 100);
    }
}
