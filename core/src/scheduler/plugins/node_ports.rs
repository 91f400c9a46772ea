//! NodePorts: a pod fits where none of its host ports is already taken (same port and
//! protocol on the same or a wildcard address).

use crate::scheduler::framework::{
    Action, ClusterEvent, CycleState, EventResource, FilterPlugin, Plugin, Rejection,
};
use crate::scheduler::{NodeInfo, PodInfo};

/// Its name.
pub const NAME: &str = "NodePorts";

/// The NodePorts plugin.
pub struct NodePorts;

impl Plugin for NodePorts {
    fn name(&self) -> &str {
        NAME
    }
    fn node_local(&self) -> bool {
        true
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn events_to_register(&self) -> Vec<ClusterEvent> {
        vec![
            ClusterEvent::new(EventResource::Pod, Action::Delete),
            ClusterEvent::new(EventResource::Node, Action::Add),
        ]
    }
}

impl FilterPlugin for NodePorts {
    fn applies(&self, _: &CycleState, pod: &PodInfo) -> bool {
        !pod.host_ports.is_empty()
    }

    fn filter(&self, _: &CycleState, pod: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
        if pod.host_ports.iter().any(|p| node.port_conflicts(p)) {
            Err(Rejection::unschedulable(
                NAME,
                vec!["node(s) didn't have free ports for the requested pod ports".into()],
            ))
        } else {
            Ok(())
        }
    }
}
