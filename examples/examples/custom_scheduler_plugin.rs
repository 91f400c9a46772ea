//! A custom scheduler plugin in a few lines: `SpreadByLabel` spreads a profile's pods evenly
//! over the values of a node label (here racks), where the default profile spreads them over
//! nodes. Four nodes — three in rack `r1`, one in `r2` — and eight pods per profile: the
//! default profile puts six in r1; with the plugin it is four and four.
//!
//! `cargo run -p capstan-examples --example custom_scheduler_plugin`

use capstan_core::apiserver::ApiServer;
use capstan_core::scheduler::framework::{
    CycleState, FilterPlugin, Plugin, PreScore, PreScorePlugin, Rejection, ScorePlugin,
    MAX_NODE_SCORE,
};
use capstan_core::scheduler::{NodeInfo, PodInfo, Profile, Scheduler, SchedulerConfig};
use capstan_core::store::MemoryStore;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Spreads pods of its profile over the values of the node label `key`; nodes without the label
/// are filtered out.
struct SpreadByLabel {
    key: String,
}

/// Pods of this scheduler per label value, computed once per cycle.
#[derive(Clone, Default)]
struct Counts(HashMap<String, i64>);

impl Plugin for SpreadByLabel {
    fn name(&self) -> &str {
        "SpreadByLabel"
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
        Some(self)
    }
    fn as_pre_score(&self) -> Option<&dyn PreScorePlugin> {
        Some(self)
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
}

impl FilterPlugin for SpreadByLabel {
    fn filter(&self, _: &CycleState, _: &PodInfo, node: &NodeInfo) -> Result<(), Rejection> {
        match node.labels().and_then(|l| l.get(&self.key)) {
            Some(_) => Ok(()),
            None => Err(Rejection::unresolvable(
                "SpreadByLabel",
                format!("node(s) had no {} label", self.key),
            )),
        }
    }
}

impl PreScorePlugin for SpreadByLabel {
    fn pre_score(&self, state: &mut CycleState, pod: &PodInfo, nodes: &[&NodeInfo]) -> PreScore {
        let mut counts = Counts::default();
        for node in nodes {
            let Some(value) = node.labels().and_then(|l| l.get(&self.key)) else {
                continue;
            };
            let ours = node
                .pods
                .values()
                .filter(|p| p.scheduler_name() == pod.scheduler_name())
                .count() as i64;
            *counts.0.entry(value.clone()).or_insert(0) += ours;
        }
        state.write(counts);
        PreScore::Score
    }
}

impl ScorePlugin for SpreadByLabel {
    fn score(&self, state: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        let value = node.labels().and_then(|l| l.get(&self.key));
        let counts = state.read::<Counts>();
        value
            .and_then(|v| counts.and_then(|c| c.0.get(v)))
            .copied()
            .unwrap_or(0)
    }

    /// The emptiest label value scores highest.
    fn normalize(&self, _: &CycleState, _: &PodInfo, scores: &mut [i64]) {
        let (min, max) = (
            scores.iter().copied().min().unwrap_or(0),
            scores.iter().copied().max().unwrap_or(0),
        );
        for s in scores.iter_mut() {
            *s = if max == min {
                MAX_NODE_SCORE
            } else {
                MAX_NODE_SCORE * (max - *s) / (max - min)
            };
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await?;
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    for (name, rack) in [("n1", "r1"), ("n2", "r1"), ("n3", "r1"), ("n4", "r2")] {
        let node: Node = serde_json::from_value(json!({
            "metadata": {"name": name, "labels": {"topology.example.com/rack": rack}},
            "status": {"allocatable": {"cpu": "8", "memory": "16Gi", "pods": "110"}},
        }))?;
        nodes.create(&PostParams::default(), &node).await?;
    }
    let spread = Profile::default_profile().named("rack-spread").with_plugin(
        Arc::new(SpreadByLabel {
            key: "topology.example.com/rack".into(),
        }),
        10,
    );
    let config = SchedulerConfig {
        profiles: vec![Profile::default_profile(), spread],
        ..SchedulerConfig::default()
    };
    let scheduler = Scheduler::in_process(&server, config).start();

    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for scheduler_name in ["default-scheduler", "rack-spread"] {
        for i in 0..8 {
            let pod: Pod = serde_json::from_value(json!({
                "metadata": {"name": format!("{scheduler_name}-{i}"), "labels": {"by": scheduler_name}},
                "spec": {"schedulerName": scheduler_name, "containers": [{"name": "c", "image": "busybox:1.36", "resources": {"requests": {"cpu": "100m"}}}]},
            }))?;
            pods.create(&PostParams::default(), &pod).await?;
        }
    }
    let mut by_rack: BTreeMap<&str, BTreeMap<String, usize>> = BTreeMap::new();
    for scheduler_name in ["default-scheduler", "rack-spread"] {
        let placed = loop {
            let list = pods
                .list(&ListParams::default().labels(&format!("by={scheduler_name}")))
                .await?;
            let nodes: Vec<String> = list
                .items
                .iter()
                .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                .collect();
            if nodes.len() == 8 {
                break nodes;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        for node in placed {
            let rack = if node == "n4" { "r2" } else { "r1" };
            *by_rack
                .entry(scheduler_name)
                .or_default()
                .entry(rack.to_string())
                .or_insert(0) += 1;
        }
    }
    for (scheduler_name, racks) in &by_rack {
        println!("{scheduler_name}: {racks:?}");
    }
    assert_eq!(
        by_rack["rack-spread"]["r1"], 4,
        "the plugin evens out racks"
    );
    assert!(
        by_rack["default-scheduler"]["r1"] > 4,
        "the default spreads over nodes, not racks"
    );
    scheduler.stop().await;
    Ok(())
}
