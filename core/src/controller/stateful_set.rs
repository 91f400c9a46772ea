//! The StatefulSet controller: pods with stable names `<set>-<ordinal>` and hostnames under the
//! set's headless Service (`hostname` = pod name, `subdomain` = `serviceName`). OrderedReady
//! creates ordinal n only once 0…n-1 are running and ready and removes the highest ordinal first,
//! one at a time; Parallel creates and removes at once. Templates are recorded as
//! ControllerRevisions; a RollingUpdate replaces pods from the highest ordinal down to
//! `partition`, one at a time and only while every pod is ready, and OnDelete only when pods are
//! deleted. Failed pods are replaced under the same name. `volumeClaimTemplates` are kept in the
//! spec (claims and volumes are a later issue).

use super::controller_revision::{self, REVISION_HASH};
use super::informer::Informer;
use super::pod_facts::{self, controller_of, controller_reference};
use super::runner::{Action, Reconciler};
use super::{ControllerContext, ControllerError, EventType, ObjectKey};
use k8s_openapi::api::apps::v1::{ControllerRevision, StatefulSet, StatefulSetStatus};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// The label naming a StatefulSet pod.
pub const POD_NAME: &str = "statefulset.kubernetes.io/pod-name";
/// The label carrying a StatefulSet pod's ordinal.
pub const POD_INDEX: &str = "apps.kubernetes.io/pod-index";

/// Reconciles StatefulSets.
pub struct StatefulSetController {
    ctx: ControllerContext,
    sets: Informer<StatefulSet>,
    pods: Informer<Pod>,
    revisions: Informer<ControllerRevision>,
}

/// `name-7` → 7, for pods of the set named `name`.
fn ordinal_of(set_name: &str, pod: &Pod) -> Option<i32> {
    pod.metadata
        .name
        .as_deref()?
        .strip_prefix(set_name)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

fn hash_of(pod: &Pod) -> Option<&str> {
    pod.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(REVISION_HASH))
        .map(String::as_str)
}

fn running_and_ready(pod: &Pod) -> bool {
    pod.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && pod_facts::is_ready(pod)
        && pod.metadata.deletion_timestamp.is_none()
}

/// The pod of ordinal `i` from `template` (revision `hash`).
fn pod_for(set: &StatefulSet, template: &PodTemplateSpec, hash: &str, i: i32) -> Pod {
    let set_name = set.metadata.name.clone().unwrap_or_default();
    let name = format!("{set_name}-{i}");
    let mut metadata = template.metadata.clone().unwrap_or_default();
    let mut spec = template.spec.clone().unwrap_or_default();
    metadata.name = Some(name.clone());
    metadata.generate_name = None;
    metadata.namespace = set.metadata.namespace.clone();
    metadata.owner_references = Some(vec![controller_reference(set)]);
    let labels = metadata.labels.get_or_insert_with(Default::default);
    labels.insert(REVISION_HASH.into(), hash.into());
    labels.insert(POD_NAME.into(), name.clone());
    labels.insert(POD_INDEX.into(), i.to_string());
    spec.hostname = Some(name);
    if let Some(service) = set.spec.as_ref().and_then(|s| s.service_name.clone()) {
        if !service.is_empty() {
            spec.subdomain = Some(service);
        }
    }
    Pod {
        metadata,
        spec: Some(spec),
        status: None,
    }
}

impl StatefulSetController {
    /// A controller over the context's shared informers.
    pub fn new(ctx: &ControllerContext) -> Self {
        StatefulSetController {
            ctx: ctx.clone(),
            sets: ctx.informers.informer(),
            pods: ctx.informers.informer(),
            revisions: ctx.informers.informer(),
        }
    }

    /// The informer keys each change affects.
    pub(crate) fn triggers(
        &self,
        queue: &Arc<super::WorkQueue<ObjectKey>>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let own = super::triggers::enqueue_own(&self.sets, queue.clone(), stop.clone());
        let sets = self.sets.clone();
        // Pods have stable names: the informer is the only expectation needed.
        let expectations = super::Expectations::default();
        let pods = super::triggers::enqueue_changes(
            &self.pods,
            queue.clone(),
            stop.clone(),
            move |change| super::triggers::owner_keys(change, "StatefulSet", &sets, &expectations),
        );
        vec![own, pods]
    }

    async fn create(&self, set: &StatefulSet, pod: Pod) -> Result<(), ControllerError> {
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            set.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => {
                self.ctx.recorder.record_for(
                    set,
                    EventType::Normal,
                    "SuccessfulCreate",
                    &format!(
                        "create Pod {name} in StatefulSet {} successful",
                        set.metadata.name.clone().unwrap_or_default()
                    ),
                );
                Ok(())
            }
            // The informer has not shown it yet.
            Err(err) if super::error::is_conflict(&err) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn delete(&self, set: &StatefulSet, pod: &Pod) -> Result<(), ControllerError> {
        let api: Api<Pod> = Api::namespaced(
            self.ctx.client.clone(),
            set.metadata.namespace.as_deref().unwrap_or_default(),
        );
        let name = pod.metadata.name.clone().unwrap_or_default();
        let params = DeleteParams {
            preconditions: Some(kube::api::Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..Default::default()
        };
        match api.delete(&name, &params).await {
            Ok(_) => {
                self.ctx.recorder.record_for(
                    set,
                    EventType::Normal,
                    "SuccessfulDelete",
                    &format!(
                        "delete Pod {name} in StatefulSet {} successful",
                        set.metadata.name.clone().unwrap_or_default()
                    ),
                );
                Ok(())
            }
            Err(err) if super::error::is_not_found(&err) || super::error::is_conflict(&err) => {
                Ok(())
            }
            Err(err) => Err(err.into()),
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for StatefulSetController {
    fn name(&self) -> &str {
        "statefulset"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        let Some(set) = self.sets.get(key) else {
            return Ok(Action::Done);
        };
        if set.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let namespace = key.namespace_or_empty();
        let uid = set.metadata.uid.clone().unwrap_or_default();
        let spec = set.spec.clone().unwrap_or_default();
        let replicas = spec.replicas.unwrap_or(1).max(0);
        let parallel = spec.pod_management_policy.as_deref() == Some("Parallel");
        let strategy = spec.update_strategy.clone().unwrap_or_default();
        let rolling = strategy.type_.as_deref().unwrap_or("RollingUpdate") == "RollingUpdate";
        let partition = strategy
            .rolling_update
            .as_ref()
            .and_then(|r| r.partition)
            .unwrap_or(0)
            .max(0);
        let revisions_api: Api<ControllerRevision> =
            Api::namespaced(self.ctx.client.clone(), namespace);
        let revisions = controller_revision::owned(self.revisions.in_namespace(namespace), &uid);
        let (update_hash, _) = controller_revision::ensure(
            &revisions_api,
            controller_reference(set.as_ref()),
            &spec.template,
            &revisions,
        )
        .await?;
        let old_status = set.status.clone().unwrap_or_default();
        let current_hash = old_status
            .current_revision
            .as_ref()
            .map(|name| {
                name.strip_prefix(&format!("{}-", key.name))
                    .unwrap_or(name)
                    .to_string()
            })
            .unwrap_or_else(|| update_hash.clone());
        // The template of the current revision, for ordinals below the partition.
        let current_template = revisions
            .iter()
            .find(|r| {
                r.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(REVISION_HASH))
                    == Some(&current_hash)
            })
            .and_then(|r| controller_revision::template_of(r))
            .unwrap_or_else(|| spec.template.clone());
        let mut slots: Vec<Option<Arc<Pod>>> = vec![None; replicas as usize];
        let mut condemned: Vec<(i32, Arc<Pod>)> = Vec::new();
        for pod in self.pods.owned_by(&uid) {
            if controller_of(&pod.metadata).is_none_or(|r| r.uid != uid) {
                continue;
            }
            match ordinal_of(&key.name, &pod) {
                Some(i) if i >= 0 && i < replicas => slots[i as usize] = Some(pod),
                Some(i) => condemned.push((i, pod)),
                None => condemned.push((i32::MAX, pod)),
            }
        }
        condemned.sort_by_key(|(i, _)| std::cmp::Reverse(*i));
        let mut blocked = false;
        for (i, slot) in slots.iter().enumerate() {
            let i = i as i32;
            match slot {
                None => {
                    let (template, hash) = if i < partition && rolling {
                        (&current_template, current_hash.as_str())
                    } else {
                        (&spec.template, update_hash.as_str())
                    };
                    self.create(&set, pod_for(&set, template, hash, i)).await?;
                    if !parallel {
                        blocked = true;
                        break;
                    }
                }
                Some(pod)
                    if pod_facts::is_terminal(pod) && pod.metadata.deletion_timestamp.is_none() =>
                {
                    // Replaced under the same name once gone.
                    self.delete(&set, pod).await?;
                    if !parallel {
                        blocked = true;
                        break;
                    }
                }
                Some(pod) if !running_and_ready(pod) && !parallel => {
                    blocked = true;
                    break;
                }
                Some(_) => {}
            }
        }
        let all_ready = slots
            .iter()
            .all(|s| s.as_ref().is_some_and(|p| running_and_ready(p)));
        // Scale down: highest ordinal first; one at a time (and only when the rest is
        // healthy) unless Parallel.
        if !condemned.is_empty() && (parallel || (!blocked && all_ready)) {
            for (_, pod) in &condemned {
                if pod.metadata.deletion_timestamp.is_none() {
                    self.delete(&set, pod).await?;
                }
                if !parallel {
                    break;
                }
            }
        } else if rolling && condemned.is_empty() && !blocked && all_ready {
            // Roll: the highest ordinal at or above the partition not on the update revision.
            let stale = slots
                .iter()
                .enumerate()
                .rev()
                .filter(|(i, _)| *i as i32 >= partition)
                .filter_map(|(_, s)| s.as_ref())
                .find(|p| hash_of(p) != Some(update_hash.as_str()));
            if let Some(pod) = stale {
                self.delete(&set, pod).await?;
            }
        }
        // Status from what the cache shows.
        let live: Vec<&Arc<Pod>> = slots
            .iter()
            .flatten()
            .chain(condemned.iter().map(|(_, p)| p))
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect();
        let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
        let count = |f: &dyn Fn(&Pod) -> bool| live.iter().filter(|p| f(p)).count() as i32;
        let updated = count(&|p| hash_of(p) == Some(update_hash.as_str()));
        let mut current_revision_hash = current_hash.clone();
        let ready = count(&|p| running_and_ready(p));
        if updated == replicas && ready == replicas {
            current_revision_hash = update_hash.clone();
        }
        let status = StatefulSetStatus {
            observed_generation: set.metadata.generation,
            replicas: live.len() as i32,
            ready_replicas: Some(ready),
            available_replicas: Some(count(&|p| {
                running_and_ready(p) && pod_facts::is_available(p, min_ready)
            })),
            current_replicas: Some(count(&|p| {
                hash_of(p) == Some(current_revision_hash.as_str())
            })),
            updated_replicas: Some(updated),
            current_revision: Some(format!("{}-{current_revision_hash}", key.name)),
            update_revision: Some(format!("{}-{update_hash}", key.name)),
            collision_count: Some(0),
            conditions: old_status.conditions.clone(),
        };
        if status != old_status {
            let api: Api<StatefulSet> = Api::namespaced(self.ctx.client.clone(), namespace);
            if !crate::controller::status_patch::merge_status(
                &api,
                &key.name,
                json!({"status": status}),
            )
            .await?
            {
                return Ok(Action::Done);
            }
        }
        let in_use: Vec<String> = live
            .iter()
            .filter_map(|p| hash_of(p).map(str::to_string))
            .chain([update_hash.clone(), current_hash.clone()])
            .collect();
        let limit = spec.revision_history_limit.unwrap_or(10).max(0) as usize;
        controller_revision::prune(&revisions_api, &revisions, &in_use, limit).await?;
        let next = live
            .iter()
            .filter_map(|p| pod_facts::available_in(p, min_ready))
            .min();
        Ok(match next {
            Some(wait) => Action::RequeueAfter(wait + Duration::from_millis(100)),
            None => Action::Done,
        })
    }
}
