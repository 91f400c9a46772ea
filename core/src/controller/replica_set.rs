//! The ReplicaSet controller: keeps `spec.replicas` active pods matching each ReplicaSet's
//! selector — adopting matching orphans, releasing owned pods that stopped matching, creating
//! missing pods from the template (in slow-start batches) and deleting surplus ones
//! (unscheduled, pending and not-ready first, then the newest) — and reports `status`.

use super::expectations::Expectations;
use super::informer::{Change, Informer};
use super::metadata_patch::{set_metadata_field, Guard};
use super::pod_facts::{self, controller_of, controller_reference};
use super::runner::{Action, Reconciler};
use super::{ControllerContext, ControllerError, EventType, ObjectKey};
use crate::selector::LabelSelector;
use k8s_openapi::api::apps::v1::{ReplicaSet, ReplicaSetCondition, ReplicaSetStatus};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Pods created or deleted per reconcile at most (Kubernetes' burstReplicas).
const BURST: usize = 500;

/// Reconciles ReplicaSets.
pub struct ReplicaSetController {
    ctx: ControllerContext,
    replica_sets: Informer<ReplicaSet>,
    pods: Informer<Pod>,
    expectations: Arc<Expectations>,
}

impl ReplicaSetController {
    /// A controller over the context's shared informers.
    pub fn new(ctx: &ControllerContext) -> Self {
        ReplicaSetController {
            ctx: ctx.clone(),
            replica_sets: ctx.informers.informer(),
            pods: ctx.informers.informer(),
            expectations: Arc::new(Expectations::default()),
        }
    }

    /// The pods a ReplicaSet may own or adopt: those referring to it and, of the others, those
    /// carrying its selector's first `matchLabels` pair — found through the owner and label
    /// indexes instead of a scan of the namespace (every pod the selector matches carries that
    /// pair). A selector without `matchLabels` scans the namespace.
    fn candidates(
        &self,
        namespace: &str,
        uid: &str,
        selector: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
    ) -> Vec<Arc<Pod>> {
        let Some((key, value)) = selector.match_labels.as_ref().and_then(|m| m.iter().next())
        else {
            return self.pods.in_namespace(namespace);
        };
        let mut pods = self.pods.owned_by(uid);
        pods.retain(|p| p.metadata.namespace.as_deref() == Some(namespace));
        // Labelled pods that reference `uid` are in `pods` already.
        let references_owner = |p: &Pod| {
            p.metadata
                .owner_references
                .as_ref()
                .is_some_and(|refs| refs.iter().any(|r| r.uid == uid))
        };
        let labelled: Vec<Arc<Pod>> = self
            .pods
            .by_index(super::cache::BY_LABEL, &format!("{key}={value}"))
            .into_iter()
            .filter(|p| p.metadata.namespace.as_deref() == Some(namespace) && !references_owner(p))
            .collect();
        pods.extend(labelled);
        pods
    }

    /// The informer keys each change affects (for [`super::triggers::enqueue_changes`]).
    pub(crate) fn triggers(
        &self,
        queue: &Arc<super::WorkQueue<ObjectKey>>,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let rs_trigger =
            super::triggers::enqueue_own(&self.replica_sets, queue.clone(), stop.clone());
        let replica_sets = self.replica_sets.clone();
        let expectations = self.expectations.clone();
        let pod_trigger = super::triggers::enqueue_changes(
            &self.pods,
            queue.clone(),
            stop.clone(),
            move |change| pod_owner_keys(&replica_sets, &expectations, change),
        );
        vec![rs_trigger, pod_trigger]
    }

    async fn manage_replicas(
        &self,
        key: &ObjectKey,
        rs: &ReplicaSet,
        owned: &[Arc<Pod>],
    ) -> Result<(), ControllerError> {
        let desired = rs
            .spec
            .as_ref()
            .and_then(|s| s.replicas)
            .unwrap_or(1)
            .max(0) as usize;
        let namespace = key.namespace_or_empty();
        let pods: Api<Pod> = Api::namespaced(self.ctx.client.clone(), namespace);
        if owned.len() < desired {
            let missing = (desired - owned.len()).min(BURST);
            self.expectations.expect(key, missing as i64, 0);
            let template = pod_from_template(rs)?;
            // Slow start: 1, 2, 4, … pods at a time, stopping at the first failure, so a
            // template the API refuses fails once instead of `missing` times.
            let mut created = 0;
            let mut batch = 1;
            while created < missing {
                let count = batch.min(missing - created);
                let params = PostParams::default();
                // Each created pod is reduced to its name as its answer arrives: a batch holds
                // no decoded pods while its slowest create is outstanding.
                let results = futures::future::join_all((0..count).map(|_| async {
                    let pod = pods.create(&params, &template).await?;
                    Ok::<_, kube::Error>(pod.metadata.name.unwrap_or_default())
                }))
                .await;
                let mut failure = None;
                for result in results {
                    match result {
                        Ok(name) => self.ctx.recorder.record_for(
                            rs,
                            EventType::Normal,
                            "SuccessfulCreate",
                            &format!("Created pod: {name}"),
                        ),
                        Err(err) => {
                            self.expectations.creation_observed(key);
                            failure.get_or_insert(err);
                        }
                    }
                }
                created += count;
                if let Some(err) = failure {
                    // Whatever was never attempted will not be observed either.
                    for _ in created..missing {
                        self.expectations.creation_observed(key);
                    }
                    self.ctx.recorder.record_for(
                        rs,
                        EventType::Warning,
                        "FailedCreate",
                        &format!("Error creating: {err}"),
                    );
                    self.set_failure_condition(key, rs, &err.to_string()).await;
                    return Err(err.into());
                }
                batch *= 2;
            }
        } else if owned.len() > desired {
            let surplus = (owned.len() - desired).min(BURST);
            let mut ranked: Vec<&Arc<Pod>> = owned.iter().collect();
            ranked.sort_by(|a, b| pod_facts::deletion_order(a, b));
            self.expectations.expect(key, 0, surplus as i64);
            let results = futures::future::join_all(ranked.iter().take(surplus).map(|pod| {
                let name = pod.metadata.name.clone().unwrap_or_default();
                let pods = pods.clone();
                async move {
                    // The answer (the deleted pod) is not kept.
                    let deleted = pods.delete(&name, &DeleteParams::default()).await;
                    (deleted.map(drop), name)
                }
            }))
            .await;
            let mut failure = None;
            for (result, name) in results {
                match result {
                    Ok(_) => self.ctx.recorder.record_for(
                        rs,
                        EventType::Normal,
                        "SuccessfulDelete",
                        &format!("Deleted pod: {name}"),
                    ),
                    Err(err) => {
                        self.expectations.deletion_observed(key);
                        if !super::error::is_not_found(&err) {
                            failure.get_or_insert(err);
                        }
                    }
                }
            }
            if let Some(err) = failure {
                return Err(err.into());
            }
        }
        Ok(())
    }

    async fn set_failure_condition(&self, key: &ObjectKey, rs: &ReplicaSet, message: &str) {
        let mut status = rs.status.clone().unwrap_or_default();
        let condition = ReplicaSetCondition {
            type_: "ReplicaFailure".into(),
            status: "True".into(),
            reason: Some("FailedCreate".into()),
            message: Some(message.into()),
            last_transition_time: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::now(),
            )),
        };
        let conditions = status.conditions.get_or_insert_with(Vec::new);
        if conditions.iter().any(|c| c.type_ == "ReplicaFailure") {
            return;
        }
        conditions.push(condition);
        let api: Api<ReplicaSet> =
            Api::namespaced(self.ctx.client.clone(), key.namespace_or_empty());
        let _ = api
            .patch_status(
                &key.name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": status})),
            )
            .await;
    }
}

/// The ReplicaSets a pod change concerns: its controller (old and new), or for an orphan every
/// ReplicaSet in its namespace whose selector matches it (it may be adopted). Observes
/// expectations on the way.
fn pod_owner_keys(
    replica_sets: &Informer<ReplicaSet>,
    expectations: &Expectations,
    change: &Change<Pod>,
) -> Vec<ObjectKey> {
    let owner_key = |pod: &Pod| {
        controller_of(&pod.metadata)
            .filter(|r| r.kind == "ReplicaSet")
            .map(|r| {
                ObjectKey::namespaced(
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    r.name.clone(),
                )
            })
    };
    let matching = |pod: &Pod| -> Vec<ObjectKey> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let labels = pod.metadata.labels.clone().unwrap_or_default();
        replica_sets
            .in_namespace(&namespace)
            .iter()
            .filter(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| LabelSelector::try_from(&s.selector).ok())
                    .is_some_and(|sel| !sel.is_everything() && sel.matches(&labels))
            })
            .map(|rs| ObjectKey::of(rs.as_ref()))
            .collect()
    };
    let mut keys = Vec::new();
    match change {
        Change::Resync => return replica_sets.keys(),
        Change::Applied { old, new } => {
            let owner = owner_key(new);
            if let Some(owner) = &owner {
                let newly_deleting = new.metadata.deletion_timestamp.is_some()
                    && old
                        .as_ref()
                        .is_none_or(|o| o.metadata.deletion_timestamp.is_none());
                if old.is_none() {
                    expectations.creation_observed(owner);
                }
                if newly_deleting {
                    expectations.deletion_observed(owner);
                }
                keys.push(owner.clone());
            } else {
                keys.extend(matching(new));
            }
            if let Some(old) = old {
                if let Some(old_owner) = owner_key(old) {
                    if Some(&old_owner) != owner.as_ref() {
                        keys.push(old_owner);
                    }
                }
                if old.metadata.labels != new.metadata.labels && owner.is_none() {
                    keys.extend(matching(old));
                }
            }
        }
        Change::Deleted(pod) => {
            if let Some(owner) = owner_key(pod) {
                if pod.metadata.deletion_timestamp.is_none() {
                    expectations.deletion_observed(&owner);
                }
                keys.push(owner);
            }
        }
    }
    keys
}

/// A new pod for `rs`: the template's metadata and spec, a generated name, and the controller
/// reference.
fn pod_from_template(rs: &ReplicaSet) -> Result<Pod, ControllerError> {
    let template = rs
        .spec
        .as_ref()
        .and_then(|s| s.template.clone())
        .ok_or_else(|| ControllerError::Invalid("the ReplicaSet has no pod template".into()))?;
    let mut metadata = template.metadata.unwrap_or_default();
    metadata.name = None;
    metadata.generate_name = Some(format!("{}-", rs.metadata.name.clone().unwrap_or_default()));
    metadata.namespace = rs.metadata.namespace.clone();
    metadata.owner_references = Some(vec![controller_reference(rs)]);
    Ok(Pod {
        metadata,
        spec: template.spec,
        status: None,
    })
}

/// An owner-reference list with `owner` added (for adoption).
fn with_owner(pod: &Pod, owner: OwnerReference) -> Vec<OwnerReference> {
    let mut refs = pod.metadata.owner_references.clone().unwrap_or_default();
    refs.retain(|r| r.uid != owner.uid);
    refs.push(owner);
    refs
}

#[async_trait::async_trait]
impl Reconciler for ReplicaSetController {
    fn name(&self) -> &str {
        "replicaset"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        let Some(rs) = self.replica_sets.get(key) else {
            self.expectations.forget(key);
            return Ok(Action::Done);
        };
        let namespace = key.namespace_or_empty();
        let uid = rs.metadata.uid.clone().unwrap_or_default();
        let spec = rs.spec.clone().unwrap_or_default();
        let selector = LabelSelector::try_from(&spec.selector).ok();
        let deleting = rs.metadata.deletion_timestamp.is_some();
        let pods_api: Api<Pod> = Api::namespaced(self.ctx.client.clone(), namespace);
        let mut owned = Vec::new();
        for pod in self.candidates(namespace, &uid, &spec.selector) {
            if !pod_facts::is_active(&pod) {
                continue;
            }
            let labels = pod.metadata.labels.as_ref();
            let matches = selector.as_ref().is_some_and(|s| {
                !s.is_everything()
                    && s.matches_with(|k| labels.and_then(|l| l.get(k)).map(String::as_str))
            });
            match controller_of(&pod.metadata) {
                Some(r) if r.uid == uid => {
                    if matches {
                        owned.push(pod);
                    } else if !deleting {
                        // Release: the pod no longer matches.
                        let refs: Vec<OwnerReference> = pod
                            .metadata
                            .owner_references
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|r| r.uid != uid)
                            .collect();
                        set_metadata_field(
                            &pods_api,
                            &pod.metadata,
                            "ownerReferences",
                            refs,
                            Guard::ResourceVersion,
                        )
                        .await?;
                    }
                }
                Some(_) => {}
                None if matches && !deleting => {
                    set_metadata_field(
                        &pods_api,
                        &pod.metadata,
                        "ownerReferences",
                        with_owner(&pod, controller_reference(rs.as_ref())),
                        Guard::ResourceVersion,
                    )
                    .await?;
                    owned.push(pod);
                }
                None => {}
            }
        }
        if self.expectations.satisfied(key) && !deleting {
            self.manage_replicas(key, &rs, &owned).await?;
        }
        // Status from what the cache shows now.
        let min_ready = Duration::from_secs(spec.min_ready_seconds.unwrap_or(0).max(0) as u64);
        let template_labels = spec
            .template
            .as_ref()
            .and_then(|t| t.metadata.as_ref())
            .and_then(|m| m.labels.clone())
            .unwrap_or_default();
        let fully_labeled = owned
            .iter()
            .filter(|p| {
                let labels = p.metadata.labels.as_ref();
                template_labels
                    .iter()
                    .all(|(k, v)| labels.and_then(|l| l.get(k)) == Some(v))
            })
            .count() as i32;
        let ready = owned.iter().filter(|p| pod_facts::is_ready(p)).count() as i32;
        let available = owned
            .iter()
            .filter(|p| pod_facts::is_available(p, min_ready))
            .count() as i32;
        let old = rs.status.clone().unwrap_or_default();
        let mut conditions = old.conditions.clone().unwrap_or_default();
        // A failure condition clears once the count is right.
        let desired = spec.replicas.unwrap_or(1);
        if owned.len() as i32 == desired {
            conditions.retain(|c| c.type_ != "ReplicaFailure");
        }
        let status = ReplicaSetStatus {
            replicas: owned.len() as i32,
            fully_labeled_replicas: Some(fully_labeled),
            ready_replicas: Some(ready),
            available_replicas: Some(available),
            observed_generation: rs.metadata.generation,
            conditions: (!conditions.is_empty()).then_some(conditions),
            ..Default::default()
        };
        if status != old {
            let api: Api<ReplicaSet> = Api::namespaced(self.ctx.client.clone(), namespace);
            let mut patch = json!({"status": status});
            if status.conditions.is_none() {
                patch["status"]["conditions"] = serde_json::Value::Null;
            }
            if !crate::controller::status_patch::merge_status(&api, &key.name, patch).await? {
                return Ok(Action::Done);
            }
        }
        // Pods that are ready but not yet available change the status by time alone.
        let next = owned
            .iter()
            .filter_map(|p| pod_facts::available_in(p, min_ready))
            .min();
        Ok(match next {
            Some(wait) => Action::RequeueAfter(wait + Duration::from_millis(100)),
            None => Action::Done,
        })
    }
}
