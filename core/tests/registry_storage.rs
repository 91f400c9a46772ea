//! The registry (built-in and user kinds), field selectors on real objects, and typed object
//! storage (metadata ownership, generation, conflicts, paging, watch, corrupt data) on the
//! memory store.

use capstan_core::registry::{Registry, RegistryError, ResourceKind};
use capstan_core::selector::FieldSelector;
use capstan_core::storage::{ObjectEvent, ObjectStorage, StorageError};
use capstan_core::store::{MemoryStore, Store};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, Node, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::json;
use std::borrow::Cow;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct Widget {
    #[serde(rename = "apiVersion")]
    api_version: String,
    kind: String,
    #[schemars(skip)]
    metadata: ObjectMeta,
    spec: WidgetSpec,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
struct WidgetSpec {
    size: u32,
}

impl kube_core::Resource for Widget {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;
    fn kind(_: &()) -> Cow<'_, str> {
        "Widget".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "example.com".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "widgets".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[test]
fn builtin_registry_resolves_like_kubectl() {
    let registry = Registry::with_builtins();
    assert_eq!(registry.resolve("po")[0].plural, "pods");
    assert_eq!(registry.resolve("Deployment")[0].group, "apps");
    assert_eq!(registry.resolve("deployments.apps")[0].kind, "Deployment");
    assert_eq!(
        registry.resolve("ev").len(),
        2,
        "core and events.k8s.io events share 'ev'"
    );
    assert!(registry.resolve("nonsense").is_empty());
    let deploy = registry.by_api_version("apps/v1", "Deployment").unwrap();
    assert!(deploy.namespaced);
    assert_eq!(deploy.subresource("scale").unwrap().kind, "Scale");
    assert!(!registry.get("", "v1", "nodes").unwrap().namespaced);
    let gvs = registry.group_versions();
    for gv in [
        ("", "v1"),
        ("apps", "v1"),
        ("batch", "v1"),
        ("autoscaling", "v2"),
        ("policy", "v1"),
        ("coordination.k8s.io", "v1"),
    ] {
        assert!(
            gvs.contains(&(gv.0.to_string(), gv.1.to_string())),
            "{gv:?} missing"
        );
    }
    // 29 stored kinds (CustomResourceDefinitions, CertificateSigningRequests and the four RBAC
    // kinds among them),
    // autoscaling/v1 HPAs (converted from the stored v2), the two read-only metrics.k8s.io
    // kinds and the reviews (SelfSubjectAccessReview, SelfSubjectRulesReview and
    // SelfSubjectReview: answered, never stored).
    assert_eq!(registry.kinds().count(), 35);
    let hpa_versions: Vec<&str> = registry
        .kinds()
        .filter(|k| k.kind == "HorizontalPodAutoscaler")
        .map(|k| k.version.as_str())
        .collect();
    assert_eq!(
        hpa_versions,
        ["v2", "v1"],
        "v2 is listed first: the preferred version"
    );
    assert!(registry.get("metrics.k8s.io", "v1beta1", "pods").is_some());
    let all: Vec<_> = registry
        .kinds()
        .filter(|k| k.categories.iter().any(|c| c == "all"))
        .map(|k| k.plural.as_str())
        .collect();
    assert!(all.contains(&"pods") && all.contains(&"deployments") && !all.contains(&"configmaps"));
}

#[test]
fn user_kinds_join_like_builtins() {
    let mut registry = Registry::with_builtins();
    let kind = registry
        .register(
            ResourceKind::of::<Widget>()
                .with_schema::<Widget>()
                .with_short_names(&["wd"]),
        )
        .unwrap();
    assert_eq!(
        (kind.group.as_str(), kind.plural.as_str(), kind.namespaced),
        ("example.com", "widgets", true)
    );
    assert!(kind.schema.as_ref().unwrap().to_string().contains("size"));
    assert_eq!(registry.resolve("wd")[0].kind, "Widget");
    assert!(matches!(
        registry.register(ResourceKind::of::<Widget>()),
        Err(RegistryError::Duplicate(_))
    ));
    assert!(matches!(
        registry.register(ResourceKind::new(
            "Bad_Group",
            "v1",
            "Thing",
            "things",
            true
        )),
        Err(RegistryError::Invalid { .. })
    ));
    assert!(registry
        .unregister("example.com", "v1", "widgets")
        .is_some());
    assert!(registry.resolve("wd").is_empty());
    assert_eq!(
        registry.resolve("po")[0].plural,
        "pods",
        "indexes stay right after removal"
    );
}

#[test]
fn field_selectors_read_objects_through_the_kind_table() {
    let registry = Registry::with_builtins();
    let pods = registry.get("", "v1", "pods").unwrap();
    let unscheduled = json!({"metadata": {"name": "a", "namespace": "default"}, "spec": {"hostNetwork": false}, "status": {"phase": "Pending"}});
    let scheduled = json!({"metadata": {"name": "b", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
    let selector = FieldSelector::parse("spec.nodeName=").unwrap();
    selector
        .check_fields("pods", |f| pods.supports_field(f))
        .unwrap();
    assert!(selector.matches(|f| pods.field_value(&unscheduled, f)));
    assert!(!selector.matches(|f| pods.field_value(&scheduled, f)));
    let running = FieldSelector::parse(
        "status.phase!=Pending,metadata.namespace=default,spec.hostNetwork!=true",
    )
    .unwrap();
    assert!(running.matches(|f| pods.field_value(&scheduled, f)));
    assert_eq!(
        pods.field_value(&unscheduled, "spec.hostNetwork")
            .as_deref(),
        Some("false")
    );
    let unsupported = FieldSelector::parse("spec.containers=x").unwrap();
    let err = unsupported
        .check_fields("pods", |f| pods.supports_field(f))
        .unwrap_err();
    assert!(err.to_string().contains("spec.containers"));
    let events = registry.get("", "v1", "events").unwrap();
    let event = json!({"involvedObject": {"name": "a", "uid": "u1"}, "source": {"component": "kubelet"}, "type": "Normal"});
    assert!(
        FieldSelector::parse("involvedObject.uid=u1,source=kubelet,type=Normal")
            .unwrap()
            .matches(|f| events.field_value(&event, f))
    );
    let nodes = registry.get("", "v1", "nodes").unwrap();
    assert!(
        !nodes.supports_field("metadata.namespace"),
        "cluster kinds have no namespace field"
    );
    assert!(registry
        .get("", "v1", "secrets")
        .unwrap()
        .supports_field("type"));
}

fn pod(name: &str, image: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container {
                name: "main".into(),
                image: Some(image.into()),
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn object_storage_owns_metadata_and_detects_conflicts() {
    let registry = Registry::with_builtins();
    let pods = registry.get("", "v1", "pods").unwrap().clone();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let storage = ObjectStorage::new(store.clone());

    let created: Pod = storage
        .create_as(&pods, &pod("web", "busybox:1"))
        .await
        .unwrap();
    let meta = &created.metadata;
    assert!(meta.uid.as_deref().is_some_and(|u| u.len() == 36));
    assert!(meta.creation_timestamp.is_some());
    assert_eq!(meta.generation, Some(1));
    let rv: i64 = meta.resource_version.as_deref().unwrap().parse().unwrap();
    let stored = store
        .get("/core/pods/default/web")
        .await
        .unwrap()
        .expect("key layout /core/pods/<ns>/<name>");
    assert_eq!(stored.mod_revision, rv);
    assert!(
        !String::from_utf8_lossy(
            &capstan_core::storage::stored_object_json(&stored.value).unwrap()
        )
        .contains("resourceVersion"),
        "resourceVersion is the revision, not stored"
    );

    // Label-only change keeps the generation; a spec change bumps it.
    let mut relabeled = created.clone();
    relabeled.metadata.labels = Some([("app".to_string(), "web".to_string())].into());
    relabeled.metadata.uid = Some("forged".into());
    let relabeled: Pod = storage.update_as(&pods, &relabeled).await.unwrap();
    assert_eq!(relabeled.metadata.generation, Some(1));
    assert_eq!(
        relabeled.metadata.uid, created.metadata.uid,
        "uid is immutable"
    );
    let mut respec = relabeled.clone();
    respec.spec.as_mut().unwrap().containers[0].image = Some("busybox:2".into());
    let respec: Pod = storage.update_as(&pods, &respec).await.unwrap();
    assert_eq!(respec.metadata.generation, Some(2));
    assert!(respec.metadata.resource_version > relabeled.metadata.resource_version);

    // A stale resourceVersion conflicts and changes nothing.
    let stale = storage.update_as(&pods, &relabeled).await;
    assert!(
        matches!(stale, Err(StorageError::Conflict { .. })),
        "{stale:?}"
    );
    let now: Pod = storage.get_as(&pods, Some("default"), "web").await.unwrap();
    assert_eq!(now, respec);

    assert!(matches!(
        storage.create_as(&pods, &pod("web", "x")).await,
        Err(StorageError::AlreadyExists { .. })
    ));
    let mut no_ns = pod("x", "x");
    no_ns.metadata.namespace = None;
    assert!(
        matches!(storage.create_as(&pods, &no_ns).await, Err(StorageError::Invalid { ref field, .. }) if field == "metadata.namespace")
    );
    let mut no_name = pod("", "x");
    no_name.metadata.name = None;
    assert!(
        matches!(storage.create_as(&pods, &no_name).await, Err(StorageError::Invalid { ref field, .. }) if field == "metadata.name")
    );

    // generateName.
    let mut generated = pod("", "x");
    generated.metadata.name = None;
    generated.metadata.generate_name = Some("web-".into());
    let generated: Pod = storage.create_as(&pods, &generated).await.unwrap();
    let name = generated.metadata.name.unwrap();
    assert!(name.starts_with("web-") && name.len() == 9, "{name}");

    // Cluster-scoped kinds ignore a namespace.
    let nodes = registry.get("", "v1", "nodes").unwrap();
    let node = Node {
        metadata: ObjectMeta {
            name: Some("n1".into()),
            namespace: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let node: Node = storage.create_as(nodes, &node).await.unwrap();
    assert_eq!(node.metadata.namespace, None);
    assert!(store.get("/core/nodes/n1").await.unwrap().is_some());

    // Delete returns the last state; then it is gone.
    let deleted = storage
        .delete(&pods, Some("default"), "web", None)
        .await
        .unwrap();
    assert_eq!(deleted["spec"]["containers"][0]["image"], "busybox:2");
    assert!(matches!(
        storage.get(&pods, Some("default"), "web").await,
        Err(StorageError::NotFound { .. })
    ));
}

#[tokio::test]
async fn object_storage_pages_watches_and_round_trips_unknown_kinds() {
    let gadgets = ResourceKind::new("example.com", "v1alpha1", "Gadget", "gadgets", true);
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let storage = ObjectStorage::new(store.clone());
    let start = store.current_revision().await.unwrap();
    let mut watch = storage.watch(&gadgets, Some("ns1"), start).await.unwrap();

    let original = json!({
        "apiVersion": "example.com/v1alpha1", "kind": "Gadget",
        "metadata": {"name": "g0", "namespace": "ns1", "annotations": {"a": "b"}},
        "spec": {"nested": {"list": [1, 2.5, "x", null, {"deep": true}], "big": 9007199254740993u64}},
        "extra": "kept"
    });
    let created = storage.create(&gadgets, original.clone()).await.unwrap();
    for field in ["spec", "extra"] {
        assert_eq!(created[field], original[field], "unknown fields round-trip");
    }
    assert_eq!(
        storage.get(&gadgets, Some("ns1"), "g0").await.unwrap(),
        created
    );
    for i in 1..7 {
        let object = json!({"metadata": {"name": format!("g{i}"), "namespace": if i % 2 == 0 { "ns1" } else { "ns2" }}});
        storage.create(&gadgets, object).await.unwrap();
    }
    // Paging all namespaces three at a time at one revision.
    let first = storage
        .list(&gadgets, None, Some(3), None, None)
        .await
        .unwrap();
    assert_eq!(first.items.len(), 3);
    let mut names: Vec<String> = first
        .items
        .iter()
        .map(|o| o["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let mut next = first.continue_after.clone();
    while let Some(after) = next {
        let page = storage
            .list(&gadgets, None, Some(3), Some(&after), Some(first.revision))
            .await
            .unwrap();
        names.extend(
            page.items
                .iter()
                .map(|o| o["metadata"]["name"].as_str().unwrap().to_string()),
        );
        next = page.continue_after;
    }
    names.sort();
    assert_eq!(names, ["g0", "g1", "g2", "g3", "g4", "g5", "g6"]);
    let ns1 = storage
        .list(&gadgets, Some("ns1"), None, None, None)
        .await
        .unwrap();
    assert_eq!(ns1.items.len(), 4);

    storage
        .delete(&gadgets, Some("ns1"), "g0", None)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while seen.len() < 5 {
        match watch.next().await.unwrap().unwrap() {
            ObjectEvent::Added(o) => {
                seen.push(format!("+{}", o["metadata"]["name"].as_str().unwrap()))
            }
            ObjectEvent::Deleted(o) => {
                seen.push(format!("-{}", o["metadata"]["name"].as_str().unwrap()))
            }
            ObjectEvent::Modified { current, .. } => {
                seen.push(format!("~{}", current["metadata"]["name"]))
            }
            ObjectEvent::Progress(_) => {}
        }
    }
    assert_eq!(
        seen,
        ["+g0", "+g2", "+g4", "+g6", "-g0"],
        "only ns1, in order"
    );

    // Corrupt stored bytes are an error, not a panic.
    store
        .create("/example.com/gadgets/ns1/broken", "{not json".into(), None)
        .await
        .unwrap();
    assert!(matches!(
        storage.get(&gadgets, Some("ns1"), "broken").await,
        Err(StorageError::Corrupt { .. })
    ));
    assert!(storage
        .list(&gadgets, Some("ns1"), None, None, None)
        .await
        .is_err());
    assert!(matches!(
        storage.get(&gadgets, Some("ns1"), "a/b").await,
        Err(StorageError::Invalid { .. })
    ));
}

#[tokio::test]
async fn objects_of_kinds_with_a_ttl_expire_after_their_last_write() {
    let registry = Registry::with_builtins();
    let events = registry.get("", "v1", "events").unwrap();
    assert_eq!(
        events.ttl,
        Some(std::time::Duration::from_secs(3600)),
        "Events live an hour"
    );
    let short = (**events)
        .clone()
        .with_ttl(std::time::Duration::from_secs(1));
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let storage = ObjectStorage::new(store);
    let event = serde_json::json!({"metadata": {"name": "e", "namespace": "default"}, "involvedObject": {"kind": "Pod", "name": "p"}, "reason": "Tested"});
    let created = storage.create(&short, event).await.unwrap();
    // A write renews the time to live.
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    let mut updated = created.clone();
    updated["count"] = serde_json::json!(2);
    storage.update(&short, updated).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert!(
        storage.get(&short, Some("default"), "e").await.is_ok(),
        "renewed by the update"
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while storage.get(&short, Some("default"), "e").await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the event did not expire"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn large_objects_are_stored_compressed_and_every_read_returns_their_json() {
    let registry = Registry::with_builtins();
    let pods = registry.get("", "v1", "pods").unwrap().clone();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let storage = ObjectStorage::new(store.clone());
    let mut big = pod("big", "busybox:1.36");
    big.metadata.labels = Some(
        (0..40)
            .map(|i| (format!("example.com/label-{i}"), format!("value-{i}")))
            .collect(),
    );
    let created: Pod = storage.create_as(&pods, &big).await.unwrap();
    let json = serde_json::to_vec(&created).unwrap();
    let mut encoded_events = storage
        .watch_encoded(&pods, Some("default"), 0)
        .await
        .unwrap();
    let raw = store.get("/core/pods/default/big").await.unwrap().unwrap();
    // Compressed: not JSON, and well under half of it.
    assert_ne!(raw.value.first(), Some(&b'{'));
    assert!(
        raw.value.len() * 2 < json.len(),
        "{} of {}",
        raw.value.len(),
        json.len()
    );
    let stored: Pod =
        serde_json::from_slice(&capstan_core::storage::stored_object_json(&raw.value).unwrap())
            .unwrap();
    assert_eq!(stored.metadata.labels, created.metadata.labels);
    // Get, list and both watches read it whole, with its resourceVersion.
    let got: Pod = storage.get_as(&pods, Some("default"), "big").await.unwrap();
    assert_eq!(got, created);
    let listed = storage
        .list(&pods, Some("default"), None, None, None)
        .await
        .unwrap();
    assert_eq!(
        serde_json::from_value::<Pod>(listed.items[0].clone()).unwrap(),
        created
    );
    let Some(Ok(capstan_core::storage::EncodedEvent::Added(_, bytes))) =
        encoded_events.next().await
    else {
        panic!("an added event");
    };
    let mut sent = Vec::new();
    bytes.write_to(&mut sent);
    assert_eq!(serde_json::from_slice::<Pod>(&sent).unwrap(), created);
    let mut events = storage.watch(&pods, Some("default"), 0).await.unwrap();
    let Some(Ok(ObjectEvent::Added(added))) = events.next().await else {
        panic!("an added event");
    };
    assert_eq!(serde_json::from_value::<Pod>(added).unwrap(), created);
    // A small object stays plain JSON.
    storage
        .create_as(&pods, &pod("small", "busybox:1.36"))
        .await
        .unwrap();
    let raw = store
        .get("/core/pods/default/small")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(raw.value.first(), Some(&b'{'));
}
