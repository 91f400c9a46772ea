//! NodeName: a pod that names its node (`spec.nodeName` set before scheduling) fits only there.

use crate::scheduler::framework::{CycleState, FilterPlugin, Plugin, Rejection};
use crate::scheduler::{NodeInfo, PodInfo};

/// The NodeName plugin.
pub struct NodeName;

/// Its name.
pub const NAME: &str = "NodeName";

impl Plugin for NodeName {
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

impl FilterPlugin for NodeName {
    fn applies(&self, _: &CycleState, pod: &PodInfo) -> bool {
        pod.node_name().is_some()
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
        match pod.node_name() {
            Some(wanted) if wanted != node.name => Err(Rejection::unresolvable(
                NAME,
                "node(s) didn't match the requested node name",
            )),
            _ => Ok(()),
        }
    }
}
