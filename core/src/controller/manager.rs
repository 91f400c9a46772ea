//! The controller manager: runs the built-in controllers over one set of shared informers,
//! optionally only while holding a leader-election Lease (so several replicas can run and one
//! works). The informers are its own, started afresh each term, or — composed in one process
//! with other components — a factory it shares with them.

use super::runner::{run_workers, ReconcileCounters, Reconciler};
use super::{
    AutoscalerConfig, AutoscalerController, ControllerContext, CronJobController,
    DaemonSetController, DeploymentController, DisruptionController, EndpointSliceController,
    EndpointsController, EventRecorder, GarbageCollector, InformerFactory, JobConfig,
    JobController, LeaderElectionConfig, LeaderElector, NodeIpamConfig, NodeIpamController,
    NodeLifecycleConfig, NodeLifecycleController, QueueConfig, ReplicaSetController,
    StatefulSetController, WorkQueue,
};
use crate::apiserver::ApiServer;
use std::sync::Arc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Settings of a [`ControllerManager`].
#[derive(Debug, Clone)]
pub struct ControllerManagerConfig {
    /// Concurrent reconciles per controller.
    pub workers: usize,
    /// Work queue settings of every controller.
    pub queue: QueueConfig,
    /// Node health settings.
    pub node_lifecycle: NodeLifecycleConfig,
    /// Job settings (failure back-off).
    pub job: JobConfig,
    /// HorizontalPodAutoscaler settings (sync period).
    pub autoscaler: AutoscalerConfig,
    /// When set, Nodes without a pod subnet get one from this range (off by default: nodes
    /// then bring their own `podCIDR`, or none).
    pub node_ipam: Option<NodeIpamConfig>,
    /// When set, the controllers run only while this candidate holds the Lease.
    pub leader_election: Option<LeaderElectionConfig>,
    /// The component name on recorded Events.
    pub component: String,
}

impl Default for ControllerManagerConfig {
    fn default() -> Self {
        ControllerManagerConfig {
            workers: 4,
            queue: QueueConfig::default(),
            node_lifecycle: NodeLifecycleConfig::default(),
            job: JobConfig::default(),
            autoscaler: AutoscalerConfig::default(),
            node_ipam: None,
            leader_election: None,
            component: "capstan-controller-manager".into(),
        }
    }
}

/// Runs ReplicaSet, Deployment, garbage collector, Endpoints, EndpointSlice and node lifecycle
/// controllers against an API.
pub struct ControllerManager {
    /// Where informers come from: a template for each term's own factory, or the shared one.
    informers: InformerFactory,
    /// Whether `informers` is shared (used as is, never stopped here).
    shares_informers: bool,
    config: ControllerManagerConfig,
}

/// Named counters of the running controllers.
pub type ControllerCounters = Vec<(&'static str, Arc<ReconcileCounters>)>;

/// Running controllers; [`RunningControllers::stop`] stops them.
pub struct RunningControllers {
    stop: CancellationToken,
    task: JoinHandle<()>,
    counters: ControllerCounters,
}

impl RunningControllers {
    /// Stops every controller and waits for in-flight reconciles.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }

    /// Reconciles run so far, over every controller.
    pub fn reconciles(&self) -> u64 {
        self.counters.iter().map(|(_, c)| c.total()).sum()
    }

    /// Reconcile counters by controller name.
    pub fn counters(&self) -> &ControllerCounters {
        &self.counters
    }
}

const NAMES: [&str; 12] = [
    "horizontalpodautoscaler",
    "disruption",
    "replicaset",
    "deployment",
    "daemonset",
    "statefulset",
    "job",
    "cronjob",
    "endpoints",
    "endpointslice",
    "node-lifecycle",
    "node-ipam",
];

impl ControllerManager {
    /// A manager writing and reading through `client`.
    pub fn new(client: kube::Client, config: ControllerManagerConfig) -> Self {
        ControllerManager {
            informers: InformerFactory::new(client),
            shares_informers: false,
            config,
        }
    }

    /// A manager in `server`'s own process: informers fed straight from its watch cache,
    /// writes through its in-process client.
    pub fn in_process(server: &ApiServer, config: ControllerManagerConfig) -> Self {
        ControllerManager {
            informers: InformerFactory::in_process(server),
            shares_informers: false,
            config,
        }
    }

    /// A manager reading from `informers`, shared with other components of the process (a
    /// scheduler, node agents) so each kind is cached once; writes go through its client. The
    /// informers outlive leadership terms and are stopped by their owner, not by the manager.
    pub fn with_informers(informers: &InformerFactory, config: ControllerManagerConfig) -> Self {
        ControllerManager {
            informers: informers.clone(),
            shares_informers: true,
            config,
        }
    }

    /// Starts the controllers (campaigning first, when leader election is configured).
    pub fn start(self) -> RunningControllers {
        let stop = CancellationToken::new();
        let counters: ControllerCounters = NAMES
            .iter()
            .map(|n| (*n, Arc::new(ReconcileCounters::default())))
            .collect();
        let task = {
            let stop = stop.clone();
            let counters = counters.clone();
            let config = self.config.clone();
            let informers = self.informers.clone();
            let shared = self.shares_informers;
            tokio::spawn(async move {
                let term_informers = move || {
                    if shared {
                        informers.clone()
                    } else {
                        informers.fresh()
                    }
                };
                match config.leader_election.clone() {
                    None => run_term(term_informers(), shared, config, counters, stop).await,
                    Some(election) => {
                        let client = term_informers().client().clone();
                        let elector = LeaderElector::new(client, election);
                        elector
                            .run(stop, move |term| {
                                run_term(
                                    term_informers(),
                                    shared,
                                    config.clone(),
                                    counters.clone(),
                                    term,
                                )
                            })
                            .await
                    }
                }
            })
        };
        RunningControllers {
            stop,
            task,
            counters,
        }
    }
}

/// Connects a controller's informers to its queue.
type Triggers<'a> = &'a dyn Fn(&Arc<WorkQueue<super::ObjectKey>>) -> Vec<JoinHandle<()>>;

/// One term: every controller over `informers` (stopped at the end unless `shared`), until
/// `stop`.
async fn run_term(
    informers: InformerFactory,
    shared: bool,
    config: ControllerManagerConfig,
    counters: ControllerCounters,
    stop: CancellationToken,
) {
    let client = informers.client().clone();
    let ctx = ControllerContext {
        recorder: EventRecorder::new(client.clone(), &config.component),
        client,
        informers,
    };
    let counter = |name: &str| {
        counters
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, c)| c.clone())
            .unwrap_or_default()
    };
    let mut tasks: Vec<JoinHandle<()>> = Vec::new();
    let mut spawn = |reconciler: Arc<dyn Reconciler>, triggers: Triggers<'_>| {
        let queue = Arc::new(WorkQueue::new(config.queue.clone()));
        tasks.extend(triggers(&queue));
        let counters = counter(reconciler.name());
        tasks.push(tokio::spawn(run_workers(
            queue,
            reconciler,
            config.workers,
            counters,
            stop.clone(),
        )));
    };
    let rs = Arc::new(ReplicaSetController::new(&ctx));
    spawn(rs.clone(), &|q| rs.triggers(q, &stop));
    let deployments = Arc::new(DeploymentController::new(&ctx));
    spawn(deployments.clone(), &|q| deployments.triggers(q, &stop));
    let daemon_sets = Arc::new(DaemonSetController::new(&ctx));
    spawn(daemon_sets.clone(), &|q| daemon_sets.triggers(q, &stop));
    let stateful_sets = Arc::new(StatefulSetController::new(&ctx));
    spawn(stateful_sets.clone(), &|q| stateful_sets.triggers(q, &stop));
    let autoscalers = Arc::new(AutoscalerController::new(&ctx, config.autoscaler.clone()));
    spawn(autoscalers.clone(), &|q| autoscalers.triggers(q, &stop));
    let budgets = Arc::new(DisruptionController::new(&ctx));
    spawn(budgets.clone(), &|q| budgets.triggers(q, &stop));
    let jobs = Arc::new(JobController::new(&ctx, config.job.clone()));
    spawn(jobs.clone(), &|q| jobs.triggers(q, &stop));
    let cron_jobs = Arc::new(CronJobController::new(&ctx));
    spawn(cron_jobs.clone(), &|q| cron_jobs.triggers(q, &stop));
    let endpoints = Arc::new(EndpointsController::new(&ctx));
    spawn(endpoints.clone(), &|q| endpoints.triggers(q, &stop));
    let slices = Arc::new(EndpointSliceController::new(&ctx));
    spawn(slices.clone(), &|q| slices.triggers(q, &stop));
    let nodes = Arc::new(NodeLifecycleController::new(
        &ctx,
        config.node_lifecycle.clone(),
    ));
    spawn(nodes.clone(), &|q| nodes.triggers(q, &stop));
    if let Some(ipam) = config.node_ipam.clone() {
        let ipam = Arc::new(NodeIpamController::new(&ctx, ipam));
        spawn(ipam.clone(), &|q| ipam.triggers(q, &stop));
    }
    tasks.push(tokio::spawn(
        GarbageCollector::new(&ctx).run(config.workers, stop.clone()),
    ));
    stop.cancelled().await;
    if !shared {
        ctx.informers.stop();
    }
    for task in tasks {
        let _ = task.await;
    }
}
