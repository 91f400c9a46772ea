//! NodeUnschedulable: cordoned nodes (`spec.unschedulable`) take only pods tolerating the
//! `node.kubernetes.io/unschedulable:NoSchedule` taint.

use crate::scheduler::framework::{CycleState, FilterPlugin, Plugin, Rejection};
use crate::scheduler::{NodeInfo, PodInfo};
use crate::taints::tolerated;
use k8s_openapi::api::core::v1::Taint;

/// The NodeUnschedulable plugin.
pub struct NodeUnschedulable;

/// Its name.
pub const NAME: &str = "NodeUnschedulable";

impl Plugin for NodeUnschedulable {
    fn name(&self) -> &str {
        NAME
    }
    fn node_local(&self) -> bool {
        true
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
}

impl FilterPlugin for NodeUnschedulable {
    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
        if !node.unschedulable() {
            return Ok(());
        }
        let taint = Taint {
            key: "node.kubernetes.io/unschedulable".into(),
            effect: "NoSchedule".into(),
            ..Default::default()
        };
        let tolerations = pod
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.tolerations.as_deref())
            .unwrap_or_default();
        if tolerated(tolerations, &taint) {
            Ok(())
        } else {
            Err(Rejection::unresolvable(NAME, "node(s) were unschedulable"))
        }
    }
}
