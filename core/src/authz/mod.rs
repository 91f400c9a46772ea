//! Authorizers behind the [`Authorizer`](crate::apiserver::Authorizer) seam: the
//! [`NodeAuthorizer`] for node agents, then RBAC ([`RbacAuthorizer`], with the escalation
//! check [`RbacEscalationCheck`] and the [`default_policy`] every cluster starts with).

mod default_policy;
mod escalation;
mod node;
mod policy_rule;
mod rbac;

pub use default_policy::default_policy;
pub use escalation::RbacEscalationCheck;
pub use node::{node_name_of, NodeAuthorizer, NodeRestriction, NODES_GROUP, NODE_USER_PREFIX};
pub use policy_rule::{rule_allows, rules_cover};
pub use rbac::{RbacAuthorizer, MASTERS_GROUP};
