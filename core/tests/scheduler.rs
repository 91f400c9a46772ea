//! The scheduler against the in-process API (nodes as objects, no agents): placement by
//! resources, node selectors and affinity, taints and tolerations, host ports, pre-bound pods;
//! `FailedScheduling` events and the `PodScheduled` condition; retries on the cluster events the
//! rejecting plugins registered for; a custom plugin; and proptests of the framework's
//! invariants over random clusters.

use capstan_core::apiserver::ApiServer;
use capstan_core::scheduler::framework::{
    CycleState, FilterPlugin, Plugin, Rejection, ScorePlugin,
};
use capstan_core::scheduler::{
    decide, decide_cached, Decision, EquivalenceCache, NodeInfo, PodInfo, Profile, Scheduler,
    SchedulerConfig, Snapshot, TieBreaker,
};
use capstan_core::store::MemoryStore;
use k8s_openapi::api::core::v1::{Event, Node, Pod};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

fn node(name: &str, cpu: &str, labels: Value, taints: Value) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": taints},
        "status": {"allocatable": {"cpu": cpu, "memory": "8Gi", "pods": "110"}, "capacity": {"cpu": cpu, "memory": "8Gi", "pods": "110"}},
    }))
    .unwrap()
}

fn pod(name: &str, cpu: &str, extra: Value) -> Pod {
    let mut spec = json!({"containers": [{"name": "c", "image": "x:1", "resources": {"requests": {"cpu": cpu}}}]});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            if k == "ports" {
                spec["containers"][0]["ports"] = v.clone();
            } else {
                spec.insert(k.clone(), v.clone());
            }
        }
    }
    serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec})).unwrap()
}

async fn eventually<T, F, Fut>(seconds: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

async fn node_of(pods: &Api<Pod>, name: &str) -> String {
    eventually(10, &format!("{name} is scheduled"), || async {
        pods.get(name).await.ok()?.spec?.node_name
    })
    .await
}

async fn failed_scheduling(events: &Api<Event>, pod: &str, fragment: &str) -> String {
    eventually(
        10,
        &format!("{pod} gets FailedScheduling mentioning {fragment:?}"),
        || async {
            let list = events
                .list(&ListParams::default().fields(&format!("involvedObject.name={pod}")))
                .await
                .ok()?;
            list.items
                .into_iter()
                .filter(|e| e.reason.as_deref() == Some("FailedScheduling"))
                .filter_map(|e| e.message)
                .find(|m| m.contains(fragment))
        },
    )
    .await
}

#[tokio::test]
async fn pods_land_where_resources_selectors_taints_and_ports_allow() {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    for n in [
        node("small", "2", json!({"zone": "a"}), json!([])),
        node("medium", "4", json!({"zone": "b"}), json!([])),
        node(
            "gpu",
            "8",
            json!({}),
            json!([{"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}]),
        ),
    ] {
        nodes.create(&PostParams::default(), &n).await.unwrap();
    }
    let scheduler = Scheduler::in_process(&server, SchedulerConfig::default()).start();

    // A pod bound by hand counts against its node: 1.5 of small's 2 cpus are taken.
    let mut prebound = pod("prebound", "1500m", json!({}));
    prebound.spec.as_mut().unwrap().node_name = Some("small".into());
    pods.create(&PostParams::default(), &prebound)
        .await
        .unwrap();

    pods.create(&PostParams::default(), &pod("big", "3", json!({})))
        .await
        .unwrap();
    assert_eq!(
        node_of(&pods, "big").await,
        "medium",
        "the tainted node is off limits"
    );
    pods.create(&PostParams::default(), &pod("tolerant", "6", json!({"tolerations": [{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]}))).await.unwrap();
    assert_eq!(node_of(&pods, "tolerant").await, "gpu");
    pods.create(
        &PostParams::default(),
        &pod("zoned", "100m", json!({"nodeSelector": {"zone": "a"}})),
    )
    .await
    .unwrap();
    assert_eq!(node_of(&pods, "zoned").await, "small");
    pods.create(&PostParams::default(), &pod("affine", "100m", json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "In", "values": ["b"]}]}]}}}}))).await.unwrap();
    assert_eq!(node_of(&pods, "affine").await, "medium");

    // small has 0.4 cpu left: a 1-cpu pod limited to zone a waits, with every reason counted.
    pods.create(
        &PostParams::default(),
        &pod("waiting", "1", json!({"nodeSelector": {"zone": "a"}})),
    )
    .await
    .unwrap();
    let message = failed_scheduling(&events, "waiting", "Insufficient cpu").await;
    assert_eq!(
        message,
        "0/3 nodes are available: 1 Insufficient cpu, 1 node(s) didn't match Pod's node affinity/selector, 1 node(s) had untolerated taint {dedicated: gpu}."
    );
    let condition = eventually(10, "PodScheduled=False", || async {
        let pod = pods.get("waiting").await.ok()?;
        pod.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
    })
    .await;
    assert_eq!(condition.reason.as_deref(), Some("Unschedulable"));
    // Freeing cpu on small (a pod deletion NodeResourcesFit registered for) lets it in.
    pods.delete("prebound", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(node_of(&pods, "waiting").await, "small");

    // Host ports: the second pod wanting 8080 on zone b waits until the first goes.
    let port = json!([{"containerPort": 80, "hostPort": 8080}]);
    pods.create(
        &PostParams::default(),
        &pod(
            "port-1",
            "10m",
            json!({"nodeSelector": {"zone": "b"}, "ports": port}),
        ),
    )
    .await
    .unwrap();
    assert_eq!(node_of(&pods, "port-1").await, "medium");
    pods.create(
        &PostParams::default(),
        &pod(
            "port-2",
            "10m",
            json!({"nodeSelector": {"zone": "b"}, "ports": port}),
        ),
    )
    .await
    .unwrap();
    failed_scheduling(&events, "port-2", "didn't have free ports").await;
    pods.delete("port-1", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    assert_eq!(node_of(&pods, "port-2").await, "medium");

    // A pod that fits nowhere waits for a node; a new node (an event every filter registered
    // for) brings it in.
    pods.create(&PostParams::default(), &pod("huge", "16", json!({})))
        .await
        .unwrap();
    failed_scheduling(&events, "huge", "Insufficient cpu").await;
    nodes
        .create(
            &PostParams::default(),
            &node("large", "32", json!({}), json!([])),
        )
        .await
        .unwrap();
    assert_eq!(node_of(&pods, "huge").await, "large");
    let scheduled = eventually(10, "a Scheduled event", || async {
        let list = events
            .list(&ListParams::default().fields("involvedObject.name=huge"))
            .await
            .ok()?;
        list.items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("Scheduled"))
            .and_then(|e| e.message)
    })
    .await;
    assert_eq!(scheduled, "Successfully assigned default/huge to large");
    // Pods for another scheduler are left alone.
    pods.create(
        &PostParams::default(),
        &pod("foreign", "10m", json!({"schedulerName": "someone-else"})),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(pods
        .get("foreign")
        .await
        .unwrap()
        .spec
        .unwrap()
        .node_name
        .is_none());
    scheduler.stop().await;
}

/// Spreads pods across the values of a node label: nodes whose label value holds fewer of the
/// profile's pods score higher (the kind of plugin a user writes in a few lines).
struct SpreadByLabel {
    key: String,
}

impl Plugin for SpreadByLabel {
    fn name(&self) -> &str {
        "SpreadByLabel"
    }
    fn as_score(&self) -> Option<&dyn ScorePlugin> {
        Some(self)
    }
    fn as_filter(&self) -> Option<&dyn FilterPlugin> {
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

impl ScorePlugin for SpreadByLabel {
    fn score(&self, _: &CycleState, _: &PodInfo, node: &NodeInfo) -> i64 {
        100 - (node.pods.len() as i64 * 10).min(100)
    }
}

#[tokio::test]
async fn a_custom_plugin_changes_placements() {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    for (name, rack) in [
        ("r1-a", Some("r1")),
        ("r2-a", Some("r2")),
        ("unlabelled", None),
    ] {
        let labels = rack.map_or(json!({}), |r| json!({"rack": r}));
        nodes
            .create(&PostParams::default(), &node(name, "64", labels, json!([])))
            .await
            .unwrap();
    }
    let config = SchedulerConfig {
        profiles: vec![Profile::default_profile()
            .named("rack-spreader")
            .with_plugin(Arc::new(SpreadByLabel { key: "rack".into() }), 10)],
        ..SchedulerConfig::default()
    };
    let scheduler = Scheduler::in_process(&server, config).start();
    for i in 0..6 {
        pods.create(
            &PostParams::default(),
            &pod(
                &format!("s{i}"),
                "10m",
                json!({"schedulerName": "rack-spreader"}),
            ),
        )
        .await
        .unwrap();
    }
    let mut per_node = std::collections::BTreeMap::new();
    for i in 0..6 {
        *per_node
            .entry(node_of(&pods, &format!("s{i}")).await)
            .or_insert(0) += 1;
    }
    assert_eq!(
        per_node.get("unlabelled"),
        None,
        "the custom filter keeps pods off unlabelled nodes"
    );
    assert_eq!(per_node.get("r1-a"), Some(&3), "{per_node:?}");
    assert_eq!(per_node.get("r2-a"), Some(&3), "{per_node:?}");
    scheduler.stop().await;
}

mod invariants {
    use super::*;
    use capstan_core::scheduler::framework::FilterPlugin;
    use proptest::prelude::*;

    fn cluster(nodes: &[(i64, bool, u8)]) -> Snapshot {
        let mut snapshot = Snapshot::new();
        for (i, (cpu, tainted, zone)) in nodes.iter().enumerate() {
            let taints = if *tainted {
                json!([{"key": "t", "effect": "NoSchedule"}])
            } else {
                json!([])
            };
            let n = node(
                &format!("n{i}"),
                &format!("{cpu}m"),
                json!({"zone": format!("z{zone}")}),
                taints,
            );
            snapshot.upsert_node(Arc::new(n));
        }
        snapshot
    }

    fn pod_info(i: usize, cpu: i64, zone: Option<u8>, tolerate: bool) -> Arc<PodInfo> {
        let mut extra = json!({});
        if let Some(z) = zone {
            extra["nodeSelector"] = json!({"zone": format!("z{z}")});
        }
        if tolerate {
            extra["tolerations"] = json!([{"key": "t", "operator": "Exists"}]);
        }
        let mut p = pod(&format!("p{i}"), &format!("{cpu}m"), extra);
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some(format!("uid-{i}"));
        Arc::new(PodInfo::new(Arc::new(p)))
    }

    fn passes_all(profile: &Profile, pod: &PodInfo, node: &NodeInfo) -> bool {
        profile
            .plugins
            .iter()
            .filter_map(|(p, _)| p.as_filter())
            .all(|f: &dyn FilterPlugin| f.filter(&CycleState::default(), pod, node).is_ok())
    }

    /// Decides a stream of pods (`templates`: cpu, zone selector, toleration) on a cluster
    /// (`nodes`: cpu, tainted, zone), with or without the equivalence cache. Each step
    /// (template, action, which, cpu) may first delete a placed pod (action 0) or resize,
    /// retaint or cordon a node (action 1). Returns each pod's node or refusal message.
    fn decide_stream(
        profile: &Profile,
        nodes: &[(i64, bool, u8)],
        templates: &[(i64, Option<u8>, bool)],
        steps: &[(usize, u8, usize, i64)],
        seed: u64,
        cached: bool,
    ) -> Vec<Result<String, String>> {
        let mut snapshot = cluster(nodes);
        let mut cache = EquivalenceCache::new();
        let (mut start, mut ties) = (0, TieBreaker::new(seed));
        let mut placed: Vec<Arc<PodInfo>> = Vec::new();
        let mut outcomes = Vec::new();
        for (i, (template, action, which, cpu)) in steps.iter().enumerate() {
            match action {
                0 if !placed.is_empty() => {
                    let gone = placed.remove(which % placed.len());
                    snapshot.remove_pod(&gone.uid);
                }
                1 => {
                    let (_, tainted, zone) = nodes[which % nodes.len()];
                    let taints = if tainted {
                        json!([{"key": "t", "effect": "NoSchedule"}])
                    } else {
                        json!([])
                    };
                    let mut n = node(
                        &format!("n{}", which % nodes.len()),
                        &format!("{cpu}m"),
                        json!({"zone": format!("z{zone}")}),
                        taints,
                    );
                    n.spec.get_or_insert_with(Default::default).unschedulable = Some(cpu % 5 == 0);
                    snapshot.upsert_node(Arc::new(n));
                }
                _ => {}
            }
            let (pod_cpu, zone, tolerate) = templates[template % templates.len()];
            let info = pod_info(i, pod_cpu, zone, tolerate);
            let decision = if cached {
                decide_cached(profile, &info, &snapshot, &mut start, &mut ties, &mut cache)
            } else {
                decide(profile, &info, &snapshot, &mut start, &mut ties)
            };
            match decision {
                Decision::Fits { node, .. } => {
                    snapshot.add_pod(&node, info.clone());
                    placed.push(info);
                    outcomes.push(Ok(node));
                }
                Decision::Unschedulable(why) => outcomes.push(Err(why.message)),
            }
        }
        outcomes
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

        /// Scheduling a random stream of pods on a random cluster: no node's allocatable is
        /// ever exceeded, every placement passes every filter, a pod is refused only when no
        /// node passes every filter, and the same seed gives the same placements.
        #[test]
        fn placements_are_valid_complete_and_reproducible(
            nodes in proptest::collection::vec((500i64..4000, any::<bool>(), 0u8..3), 1..12),
            pods in proptest::collection::vec((50i64..1500, proptest::option::of(0u8..3), any::<bool>()), 1..40),
            percentage in prop_oneof![Just(0u32), Just(100u32), 1u32..100],
            seed in any::<u64>(),
        ) {
            let profile = Profile::default_profile()
                .scoring_percentage(percentage);
            let run = |seed: u64| {
                let mut snapshot = cluster(&nodes);
                let mut start = 0;
                let mut ties = TieBreaker::new(seed);
                let mut placements = Vec::new();
                for (i, (cpu, zone, tolerate)) in pods.iter().enumerate() {
                    let info = pod_info(i, *cpu, *zone, *tolerate);
                    let any_fits = snapshot.nodes().iter().any(|n| passes_all(&profile, &info, n));
                    match decide(&profile, &info, &snapshot, &mut start, &mut ties) {
                        Decision::Fits { node, .. } => {
                            let chosen = snapshot.node(&node).unwrap();
                            assert!(passes_all(&profile, &info, chosen), "placed on a node failing a filter");
                            snapshot.add_pod(&node, info.clone());
                            let after = snapshot.node(&node).unwrap();
                            assert!(after.requested.milli_cpu <= after.allocatable.milli_cpu, "allocatable exceeded");
                            placements.push(Some(node));
                        }
                        Decision::Unschedulable(why) => {
                            assert!(!any_fits, "refused although a node fits: {}", why.message);
                            placements.push(None);
                        }
                    }
                }
                placements
            };
            prop_assert_eq!(run(seed), run(seed));
        }

        /// The equivalence cache changes no decision: a stream of pods from a few specs
        /// (placed, some later deleted, nodes resized or cordoned meanwhile) gets the same
        /// placements and the same refusal messages with the cache as without, and the cache
        /// is actually used (pods of one spec repeat).
        #[test]
        fn the_equivalence_cache_changes_no_decision(
            nodes in proptest::collection::vec((500i64..4000, any::<bool>(), 0u8..3), 1..12),
            templates in proptest::collection::vec((50i64..1500, proptest::option::of(0u8..3), any::<bool>()), 1..4),
            steps in proptest::collection::vec((0usize..4, 0u8..10, 0usize..12, 500i64..4000), 1..60),
            percentage in prop_oneof![Just(0u32), Just(100u32), 1u32..100],
            seed in any::<u64>(),
        ) {
            let profile = Profile::default_profile().scoring_percentage(percentage);
            let run = |cached| decide_stream(&profile, &nodes, &templates, &steps, seed, cached);
            prop_assert_eq!(run(true), run(false));
        }
    }

    /// The same on a cluster large enough for the cycle's large-cluster paths (nodes settled
    /// from remembered verdicts in one pass, the rest filtered and scored in parallel; only
    /// changed nodes rescored): every placement and refusal equal with and without the cache,
    /// scoring every node and with default sampling.
    #[test]
    fn the_equivalence_cache_changes_no_decision_on_a_large_cluster() {
        // A small deterministic generator (splitmix64) for the cluster and the stream.
        let mut state = 7u64;
        let mut next = move |below: u64| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            (z ^ (z >> 31)) % below
        };
        let nodes: Vec<(i64, bool, u8)> = (0..1500)
            .map(|_| (500 + next(3500) as i64, next(10) == 0, next(3) as u8))
            .collect();
        let templates = [
            (100i64, None, false),
            (700, Some(1u8), false),
            (300, None, true),
        ];
        let steps: Vec<(usize, u8, usize, i64)> = (0..300)
            .map(|_| {
                let template = next(templates.len() as u64) as usize;
                (
                    template,
                    next(12) as u8,
                    next(1500) as usize,
                    500 + next(3500) as i64,
                )
            })
            .collect();
        for percentage in [100u32, 0] {
            let profile = Profile::default_profile().scoring_percentage(percentage);
            let run = |cached| decide_stream(&profile, &nodes, &templates, &steps, 11, cached);
            let (with, without) = (run(true), run(false));
            assert!(
                with.iter().filter(|o| o.is_ok()).count() > 200,
                "most pods fit"
            );
            assert_eq!(with, without, "percentage {percentage}");
        }
    }
}

mod placement_rules {
    use super::*;

    fn snapshot(nodes: &[(&str, &str)]) -> Snapshot {
        let mut s = Snapshot::new();
        for (name, zone) in nodes {
            s.upsert_node(Arc::new(node(
                name,
                "8",
                json!({"zone": zone, "kubernetes.io/hostname": name}),
                json!([]),
            )));
        }
        s
    }

    fn info(name: &str, labels: Value, extra: Value) -> Arc<PodInfo> {
        let mut p = pod(name, "10m", extra);
        p.metadata.namespace = Some("default".into());
        p.metadata.uid = Some(name.into());
        p.metadata.labels = serde_json::from_value(labels).unwrap();
        Arc::new(PodInfo::new(Arc::new(p)))
    }

    /// Schedules each pod in turn, assuming placements; `None` for a pod that fits nowhere
    /// (with its message).
    fn place(s: &mut Snapshot, pods: Vec<Arc<PodInfo>>) -> Vec<Result<String, String>> {
        let profile = Profile::default_profile();
        let (mut start, mut ties) = (0, TieBreaker::new(7));
        pods.into_iter()
            .map(|p| match decide(&profile, &p, s, &mut start, &mut ties) {
                Decision::Fits { node, .. } => {
                    s.add_pod(&node, p);
                    Ok(node)
                }
                Decision::Unschedulable(why) => Err(why.message),
            })
            .collect()
    }

    #[test]
    fn topology_spread_keeps_zones_within_max_skew() {
        let mut s = snapshot(&[("a1", "a"), ("a2", "a"), ("a3", "a"), ("b1", "b")]);
        let spread = json!({"topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "zone", "whenUnsatisfiable": "DoNotSchedule", "labelSelector": {"matchLabels": {"app": "web"}}}]});
        let pods = (0..6)
            .map(|i| info(&format!("w{i}"), json!({"app": "web"}), spread.clone()))
            .collect();
        let placed = place(&mut s, pods);
        let zone = |n: &str| if n.starts_with('a') { "a" } else { "b" };
        let in_a = placed
            .iter()
            .filter(|r| zone(r.as_ref().unwrap()) == "a")
            .count();
        assert_eq!(in_a, 3, "{placed:?}");
        // A node without the key cannot take a constrained pod.
        s.upsert_node(Arc::new(node("bare", "8", json!({}), json!([]))));
        let placed = place(&mut s, vec![info("w6", json!({"app": "web"}), spread)]);
        assert!(placed[0].as_ref().is_ok_and(|n| n != "bare"));
    }

    #[test]
    fn anti_affinity_separates_and_affinity_joins() {
        let mut s = snapshot(&[("a1", "a"), ("a2", "a"), ("b1", "b")]);
        let anti = json!({"affinity": {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "cache"}}, "topologyKey": "kubernetes.io/hostname"}]}}});
        let pods = (0..4)
            .map(|i| info(&format!("c{i}"), json!({"app": "cache"}), anti.clone()))
            .collect();
        let placed = place(&mut s, pods);
        let nodes: std::collections::HashSet<_> =
            placed.iter().take(3).map(|r| r.clone().unwrap()).collect();
        assert_eq!(nodes.len(), 3, "one cache pod per node: {placed:?}");
        assert!(
            placed[3]
                .as_ref()
                .unwrap_err()
                .contains("anti-affinity rules"),
            "{placed:?}"
        );
        // An existing pod's anti-affinity also keeps others away: a plain pod labelled
        // app=cache fits nowhere.
        let plain = place(
            &mut s,
            vec![info("plain", json!({"app": "cache"}), json!({}))],
        );
        assert!(
            plain[0]
                .as_ref()
                .unwrap_err()
                .contains("existing pods anti-affinity"),
            "{plain:?}"
        );

        let mut s = snapshot(&[("a1", "a"), ("a2", "a"), ("b1", "b"), ("b2", "b")]);
        place(
            &mut s,
            vec![info(
                "db",
                json!({"app": "db"}),
                json!({"nodeSelector": {"zone": "b"}}),
            )],
        );
        let near_db = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "db"}}, "topologyKey": "zone"}]}}});
        let placed = place(
            &mut s,
            (0..3)
                .map(|i| info(&format!("api{i}"), json!({"app": "api"}), near_db.clone()))
                .collect(),
        );
        assert!(
            placed.iter().all(|r| r.as_ref().unwrap().starts_with('b')),
            "{placed:?}"
        );
        // The first of a group matching its own affinity may start anywhere.
        let mut s = snapshot(&[("a1", "a")]);
        let self_affine = json!({"affinity": {"podAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [{"labelSelector": {"matchLabels": {"app": "group"}}, "topologyKey": "zone"}]}}});
        assert!(place(
            &mut s,
            vec![info("g0", json!({"app": "group"}), self_affine)]
        )[0]
        .is_ok());
    }
}

/// Finishes graceful deletions at once, as a kubelet whose pods stop instantly would.
async fn finish_deletions(client: kube::Client) {
    use futures::StreamExt;
    let all: Api<Pod> = Api::all(client.clone());
    let mut events = kube::runtime::watcher(all, Default::default()).boxed();
    while let Some(event) = events.next().await {
        if let Ok(kube::runtime::watcher::Event::Apply(p)) = event {
            if p.metadata.deletion_timestamp.is_some() {
                let api: Api<Pod> =
                    Api::namespaced(client.clone(), p.metadata.namespace.as_deref().unwrap());
                let _ = api
                    .delete(
                        p.metadata.name.as_deref().unwrap(),
                        &DeleteParams::default().grace_period(0),
                    )
                    .await;
            }
        }
    }
}

#[tokio::test]
async fn higher_priority_pods_preempt_the_fewest_lowest_priority_ones() {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let client = server.client();
    let kubelet = tokio::spawn(finish_deletions(client.clone()));
    let classes: Api<k8s_openapi::api::scheduling::v1::PriorityClass> = Api::all(client.clone());
    for (name, value, policy) in [
        ("low", 10, "PreemptLowerPriority"),
        ("mid", 100, "PreemptLowerPriority"),
        ("high", 1000, "PreemptLowerPriority"),
        ("high-polite", 1000, "Never"),
    ] {
        classes
            .create(
                &PostParams::default(),
                &serde_json::from_value(
                    json!({"metadata": {"name": name}, "value": value, "preemptionPolicy": policy}),
                )
                .unwrap(),
            )
            .await
            .unwrap();
    }
    let nodes: Api<Node> = Api::all(client.clone());
    nodes
        .create(
            &PostParams::default(),
            &node("only", "3", json!({}), json!([])),
        )
        .await
        .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let events: Api<Event> = Api::namespaced(client.clone(), "default");
    let scheduler = Scheduler::in_process(&server, SchedulerConfig::default()).start();
    for (name, class) in [("low-1", "low"), ("mid-1", "mid"), ("low-2", "low")] {
        pods.create(
            &PostParams::default(),
            &pod(name, "1", json!({"priorityClassName": class})),
        )
        .await
        .unwrap();
        node_of(&pods, name).await;
    }
    // Needs 2 cpus: the two low-priority pods go, the mid one stays. A mid-priority pod
    // arriving at once must not take the room freed for it.
    pods.create(
        &PostParams::default(),
        &pod("important", "2", json!({"priorityClassName": "high"})),
    )
    .await
    .unwrap();
    pods.create(
        &PostParams::default(),
        &pod("sneaky", "1", json!({"priorityClassName": "mid"})),
    )
    .await
    .unwrap();
    assert_eq!(node_of(&pods, "important").await, "only");
    assert!(
        pods.get("mid-1").await.is_ok(),
        "the higher of the lower-priority pods is spared"
    );
    for victim in ["low-1", "low-2"] {
        assert!(pods.get(victim).await.is_err(), "{victim} was preempted");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let sneaky = pods.get("sneaky").await.unwrap();
    assert!(
        sneaky.spec.unwrap().node_name.is_none(),
        "the nominated room was kept for the preemptor"
    );
    let nominated = pods
        .get("important")
        .await
        .unwrap()
        .status
        .and_then(|s| s.nominated_node_name);
    assert_eq!(nominated.as_deref(), Some("only"));
    let preempted = eventually(10, "Preempted events", || async {
        let list = events.list(&ListParams::default()).await.ok()?;
        let n = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("Preempted"))
            .count();
        (n == 2).then_some(list)
    })
    .await;
    assert!(preempted
        .items
        .iter()
        .any(|e| e.message.as_deref() == Some("Preempted by default/important on node only")));
    // A pod whose class may not preempt waits instead (evicting mid-1 would make room).
    pods.create(
        &PostParams::default(),
        &pod("polite", "1", json!({"priorityClassName": "high-polite"})),
    )
    .await
    .unwrap();
    failed_scheduling(&events, "polite", "Insufficient cpu").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        pods.get("mid-1").await.is_ok(),
        "a Never-preempting pod evicts nobody"
    );
    scheduler.stop().await;
    kubelet.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_nodes_through_the_api_never_overcommit() {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let client = server.client();
    let nodes: Api<Node> = Api::all(client.clone());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let node_count = 300;
    for i in 0..node_count {
        // Mixed sizes: 1, 2 or 4 cpus.
        let cpu = ["1", "2", "4"][i % 3];
        nodes
            .create(
                &PostParams::default(),
                &node(
                    &format!("n{i}"),
                    cpu,
                    json!({"zone": format!("z{}", i % 4)}),
                    json!([]),
                ),
            )
            .await
            .unwrap();
    }
    let scheduler = Scheduler::in_process(&server, SchedulerConfig::default()).start();
    // 2100 pods asking for 100-500m each: about 630 cpus of the 700 there are.
    let requests = |i: usize| format!("{}m", 100 + (i * 37) % 5 * 100);
    let total = 2100;
    futures::future::join_all((0..total).map(|i| {
        let pods = pods.clone();
        let cpu = requests(i);
        async move {
            pods.create(
                &PostParams::default(),
                &pod(&format!("p{i}"), &cpu, json!({})),
            )
            .await
            .unwrap();
        }
    }))
    .await;
    let settled = eventually(
        120,
        "every pod is bound or reported unschedulable",
        || async {
            let list = pods.list(&ListParams::default()).await.ok()?.items;
            let bound = list
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
                .count();
            let waiting = list
                .iter()
                .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_none())
                .filter(|p| {
                    p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter()
                                .any(|c| c.type_ == "PodScheduled" && c.status == "False")
                        })
                })
                .count();
            (bound + waiting == total).then_some(list)
        },
    )
    .await;
    let mut used: std::collections::HashMap<String, i64> = Default::default();
    for p in &settled {
        if let Some(node) = p.spec.as_ref().and_then(|s| s.node_name.clone()) {
            *used.entry(node).or_insert(0) +=
                capstan_core::scheduler::Resources::of_pod(p).milli_cpu;
        }
    }
    for i in 0..node_count {
        let capacity = [1000, 2000, 4000][i % 3];
        let on_node = used.get(&format!("n{i}")).copied().unwrap_or(0);
        assert!(
            on_node <= capacity,
            "n{i} overcommitted: {on_node}m of {capacity}m"
        );
    }
    let bound: usize = settled
        .iter()
        .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some())
        .count();
    assert!(bound >= total * 9 / 10, "only {bound} of {total} bound");
    assert_eq!(
        scheduler
            .counters()
            .bind_failures
            .load(std::sync::atomic::Ordering::Relaxed),
        0
    );
    scheduler.stop().await;
}
