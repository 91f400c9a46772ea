//! The controller runtime and the core controllers.
//!
//! The runtime is what embedders use for their own controllers: shared, indexed
//! [`Informer`]s from an [`InformerFactory`] (built on kube-runtime's watcher), a
//! [`WorkQueue`] with per-key backoff, a [`Reconciler`] trait run by [`run_workers`],
//! [`LeaderElector`] on a Lease, an [`EventRecorder`], finalizer helpers and [`Expectations`].
//!
//! The controllers ([`ControllerManager`]) — ReplicaSet, Deployment, garbage collector,
//! Endpoints and EndpointSlices, node lifecycle, node IPAM — read through informers and write through the
//! API with a `kube::Client`; they never touch the store. Each is level-triggered: a reconcile
//! reads the current state of its object, so missed, repeated or reordered changes are harmless.

mod cache;
mod compact;
mod controller_revision;
mod cron_job;
mod daemon_set;
mod deployment;
mod disruption;
mod endpoint_slices;
mod endpoints;
mod error;
mod event_recorder;
mod expectations;
mod finalizer;
mod garbage_collector;
mod horizontal_pod_autoscaler;
mod informer;
mod job;
mod leader_election;
mod managed_fields_text;
mod manager;
mod metadata_patch;
mod node_ipam;
mod node_lifecycle;
mod object_key;
pub mod pod_facts;
mod replica_set;
mod runner;
mod stateful_set;
mod status_patch;
mod triggers;
mod work_queue;

pub use cache::{pods_by_node, IndexFn, BY_LABEL, BY_NAMESPACE, BY_OWNER, BY_POD_NODE};
pub use controller_revision::REVISION_HASH;
pub use cron_job::{CronJobController, Schedule};
pub use daemon_set::DaemonSetController;
pub use deployment::DeploymentController;
pub use disruption::DisruptionController;
pub use endpoint_slices::EndpointSliceController;
pub use endpoints::EndpointsController;
pub use error::ControllerError;
pub use event_recorder::{object_reference, EventRecorder, EventType};
pub use expectations::Expectations;
pub use finalizer::{add_finalizer, remove_finalizer};
pub use garbage_collector::GarbageCollector;
pub use horizontal_pod_autoscaler::{AutoscalerConfig, AutoscalerController};
pub use informer::{Change, Informer, InformerFactory, Subscription};
pub use job::{JobConfig, JobController, COMPLETION_INDEX};
pub use leader_election::{LeaderElectionConfig, LeaderElector};
pub use manager::{ControllerManager, ControllerManagerConfig, RunningControllers};
pub use node_ipam::{NodeIpamConfig, NodeIpamController};
pub use node_lifecycle::{NodeLifecycleConfig, NodeLifecycleController};
pub use object_key::ObjectKey;
pub use replica_set::ReplicaSetController;
pub use runner::{run_workers, Action, ReconcileCounters, Reconciler};
pub use stateful_set::{StatefulSetController, POD_INDEX, POD_NAME};
pub use triggers::{enqueue_changes, enqueue_own};
pub use work_queue::{QueueConfig, WorkQueue};

/// What every built-in controller shares: the client it writes with, the shared informers it
/// reads, and the event recorder.
#[derive(Clone)]
pub struct ControllerContext {
    /// Writes go through this client.
    pub client: kube::Client,
    /// Reads come from these shared informers.
    pub informers: InformerFactory,
    /// Events about reconciled objects.
    pub recorder: EventRecorder,
}

impl ControllerContext {
    /// A context over `client` with a fresh informer factory; events are reported as
    /// `component`.
    pub fn new(client: kube::Client, component: &str) -> Self {
        ControllerContext {
            informers: InformerFactory::new(client.clone()),
            recorder: EventRecorder::new(client.clone(), component),
            client,
        }
    }

    /// A context for controllers in `server`'s own process: informers fed straight from its
    /// watch cache, writes through its in-process client.
    pub fn in_process(server: &crate::apiserver::ApiServer, component: &str) -> Self {
        let client = server.client();
        ControllerContext {
            informers: InformerFactory::in_process(server),
            recorder: EventRecorder::new(client.clone(), component),
            client,
        }
    }
}
