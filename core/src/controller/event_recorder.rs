//! Records core/v1 Events about objects, as `kubectl describe` shows them. Repeats of one event
//! (same object, type, reason and message) are aggregated into one Event whose `count` and
//! `lastTimestamp` grow. Recording never blocks or fails the caller: events go through a
//! bounded channel to one background writer, and are dropped (with a log line) when it is full.
//! The API server expires Events after their TTL, so they do not grow forever.

use k8s_openapi::api::core::v1::{Event, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long an aggregated event keeps being counted up instead of recreated.
const AGGREGATION_WINDOW: Duration = Duration::from_secs(600);
/// Distinct events remembered for aggregation.
const AGGREGATION_ENTRIES: usize = 4096;
/// Events waiting to be written before new ones are dropped.
const QUEUE: usize = 4096;

/// `Normal` or `Warning`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventType {
    /// Routine.
    Normal,
    /// Something a user may need to act on.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

struct Pending {
    regarding: ObjectReference,
    kind: EventType,
    reason: String,
    message: String,
}

/// A handle for recording events; cloning shares the writer.
#[derive(Clone)]
pub struct EventRecorder {
    sender: mpsc::Sender<Pending>,
}

/// The reference `kubectl describe` matches events against.
pub fn object_reference<K: Resource<DynamicType = ()>>(object: &K) -> ObjectReference {
    let meta = object.meta();
    ObjectReference {
        api_version: Some(K::api_version(&()).into_owned()),
        kind: Some(K::kind(&()).into_owned()),
        namespace: meta.namespace.clone(),
        name: meta.name.clone(),
        uid: meta.uid.clone(),
        resource_version: meta.resource_version.clone(),
        ..Default::default()
    }
}

impl EventRecorder {
    /// A recorder writing as `component` (the Event's `source.component` and
    /// `reportingComponent`); its writer stops when every clone is dropped.
    pub fn new(client: Client, component: &str) -> Self {
        Self::start(client, component, None)
    }

    /// A recorder writing as `component` on `host` (a node agent's: the Event's `source.host`
    /// and `reportingInstance`, as kubelet writes them).
    pub fn on_host(client: Client, component: &str, host: &str) -> Self {
        Self::start(client, component, Some(host.to_string()))
    }

    fn start(client: Client, component: &str, host: Option<String>) -> Self {
        let (sender, receiver) = mpsc::channel(QUEUE);
        let source = Source {
            component: component.to_string(),
            host,
        };
        tokio::spawn(write_events(client, source, receiver));
        EventRecorder { sender }
    }

    /// Records an event about `regarding`.
    pub fn record(&self, regarding: ObjectReference, kind: EventType, reason: &str, message: &str) {
        let pending = Pending {
            regarding,
            kind,
            reason: reason.into(),
            message: message.into(),
        };
        if self.sender.try_send(pending).is_err() {
            tracing::debug!(reason, "event dropped: the recorder is behind");
        }
    }

    /// Records an event about `object`.
    pub fn record_for<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        self.record(object_reference(object), kind, reason, message);
    }
}

type AggregationKey = (String, String, String, EventType, String, String);

/// Who writes the events.
struct Source {
    component: String,
    host: Option<String>,
}

struct Aggregate {
    namespace: String,
    name: String,
    count: i32,
    first: Time,
    seen: Instant,
}

async fn write_events(client: Client, source: Source, mut receiver: mpsc::Receiver<Pending>) {
    let component = &source.component;
    let mut recent: HashMap<AggregationKey, Aggregate> = HashMap::new();
    while let Some(pending) = receiver.recv().await {
        let namespace = pending
            .regarding
            .namespace
            .clone()
            .filter(|ns| !ns.is_empty())
            .unwrap_or_else(|| "default".into());
        let key: AggregationKey = (
            namespace.clone(),
            pending.regarding.kind.clone().unwrap_or_default(),
            pending.regarding.name.clone().unwrap_or_default(),
            pending.kind,
            pending.reason.clone(),
            pending.message.clone(),
        );
        let api: Api<Event> = Api::namespaced(client.clone(), &namespace);
        let now = Time(k8s_openapi::jiff::Timestamp::now());
        if recent.len() >= AGGREGATION_ENTRIES {
            recent.retain(|_, a| a.seen.elapsed() < AGGREGATION_WINDOW);
            if recent.len() >= AGGREGATION_ENTRIES {
                recent.clear();
            }
        }
        if let Some(aggregate) = recent
            .get_mut(&key)
            .filter(|a| a.seen.elapsed() < AGGREGATION_WINDOW)
        {
            let count = aggregate.count + 1;
            let patch = serde_json::json!({"count": count, "lastTimestamp": now});
            let patched = Api::<Event>::namespaced(client.clone(), &aggregate.namespace)
                .patch(
                    &aggregate.name,
                    &PatchParams::default(),
                    &Patch::Merge(&patch),
                )
                .await;
            if patched.is_ok() {
                aggregate.count = count;
                aggregate.seen = Instant::now();
                continue;
            }
        }
        let name = format!(
            "{}.{:x}",
            pending.regarding.name.clone().unwrap_or_default(),
            k8s_openapi::jiff::Timestamp::now().as_nanosecond()
        );
        let first = recent
            .get(&key)
            .map(|a| a.first.clone())
            .unwrap_or_else(|| now.clone());
        let event = Event {
            metadata: kube::api::ObjectMeta {
                name: Some(name.clone()),
                namespace: Some(namespace.clone()),
                ..Default::default()
            },
            involved_object: pending.regarding.clone(),
            reason: Some(pending.reason.clone()),
            message: Some(pending.message.clone()),
            type_: Some(pending.kind.as_str().into()),
            count: Some(1),
            first_timestamp: Some(first.clone()),
            last_timestamp: Some(now),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some(component.clone()),
                host: source.host.clone(),
            }),
            reporting_component: Some(component.clone()),
            reporting_instance: Some(source.host.clone().unwrap_or_else(|| component.clone())),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &event).await {
            Ok(_) => {
                recent.insert(
                    key,
                    Aggregate {
                        namespace,
                        name,
                        count: 1,
                        first,
                        seen: Instant::now(),
                    },
                );
            }
            Err(err) => tracing::debug!(error = %err, "could not record an event"),
        }
    }
}
