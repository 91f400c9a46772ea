//! The Deployment controller: declarative updates through ReplicaSets. Each distinct pod
//! template gets a ReplicaSet named `<deployment>-<pod-template-hash>` carrying a
//! `deployment.kubernetes.io/revision`; a RollingUpdate scales the new one up and the old ones
//! down within `maxSurge` / `maxUnavailable` (counting pods available after
//! `minReadySeconds`), a Recreate scales the old ones to zero and waits for their pods to go
//! before starting the new one. Rolling back (`kubectl rollout undo`) is a template change back
//! to an old ReplicaSet's template, which then becomes the newest revision. Old ReplicaSets
//! beyond `revisionHistoryLimit` are deleted; paused Deployments only scale.

pub(crate) mod revision;
pub(crate) mod rollout;
mod status;

pub use revision::{template_hash, POD_TEMPLATE_HASH, REVISION};

use super::informer::{Change, Informer};
use super::metadata_patch::{set_metadata_field, Guard};
use super::pod_facts::{controller_of, controller_reference};
use super::runner::{Action, Reconciler};
use super::{ControllerContext, ControllerError, EventType, ObjectKey, WorkQueue};
use crate::selector::LabelSelector;
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet, ReplicaSetSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use revision::{
    copied_annotation, equal_ignoring_hash, revision_of, DESIRED_REPLICAS, MAX_REPLICAS,
};
use rollout::Counts;
use serde_json::json;
use status::Progress;
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Reconciles Deployments.
pub struct DeploymentController {
    ctx: ControllerContext,
    deployments: Informer<Deployment>,
    replica_sets: Informer<ReplicaSet>,
    pods: Informer<Pod>,
}

fn spec_replicas(rs: &ReplicaSet) -> i32 {
    rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0)
}

fn counts(rs: &ReplicaSet) -> Counts {
    Counts {
        replicas: spec_replicas(rs),
        available: rs
            .status
            .as_ref()
            .and_then(|s| s.available_replicas)
            .unwrap_or(0),
    }
}

fn created(rs: &ReplicaSet) -> Option<k8s_openapi::jiff::Timestamp> {
    rs.metadata.creation_timestamp.as_ref().map(|t| t.0)
}

impl DeploymentController {
    /// A controller over the context's shared informers.
    pub fn new(ctx: &ControllerContext) -> Self {
        DeploymentController {
            ctx: ctx.clone(),
            deployments: ctx.informers.informer(),
            replica_sets: ctx.informers.informer(),
            pods: ctx.informers.informer(),
        }
    }

    pub(crate) fn triggers(
        &self,
        queue: &Arc<WorkQueue<ObjectKey>>,
        stop: &CancellationToken,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        let own = super::triggers::enqueue_own(&self.deployments, queue.clone(), stop.clone());
        let deployments = self.deployments.clone();
        let rs_trigger = super::triggers::enqueue_changes(
            &self.replica_sets,
            queue.clone(),
            stop.clone(),
            move |change| {
                let Some(rs) = change.object() else {
                    return deployments.keys();
                };
                let namespace = rs.metadata.namespace.clone().unwrap_or_default();
                match controller_of(&rs.metadata) {
                    Some(r) if r.kind == "Deployment" => {
                        vec![ObjectKey::namespaced(namespace, r.name.clone())]
                    }
                    Some(_) => Vec::new(),
                    None => {
                        let labels = rs.metadata.labels.clone().unwrap_or_default();
                        deployments
                            .in_namespace(&namespace)
                            .iter()
                            .filter(|d| {
                                d.spec
                                    .as_ref()
                                    .and_then(|s| LabelSelector::try_from(&s.selector).ok())
                                    .is_some_and(|s| !s.is_everything() && s.matches(&labels))
                            })
                            .map(|d| ObjectKey::of(d.as_ref()))
                            .collect()
                    }
                }
            },
        );
        // Recreate waits for old pods to go: their deletion wakes the Deployment.
        let replica_sets = self.replica_sets.clone();
        let pod_trigger = super::triggers::enqueue_changes(
            &self.pods,
            queue.clone(),
            stop.clone(),
            move |change| {
                let Change::Deleted(pod) = change else {
                    return Vec::new();
                };
                let namespace = pod.metadata.namespace.clone().unwrap_or_default();
                controller_of(&pod.metadata)
                    .filter(|r| r.kind == "ReplicaSet")
                    .and_then(|r| {
                        replica_sets.get(&ObjectKey::namespaced(namespace.clone(), r.name.clone()))
                    })
                    .and_then(|rs| controller_of(&rs.metadata).map(|r| r.name.clone()))
                    .map(|name| vec![ObjectKey::namespaced(namespace, name)])
                    .unwrap_or_default()
            },
        );
        vec![own, rs_trigger, pod_trigger]
    }

    fn rs_api(&self, namespace: &str) -> Api<ReplicaSet> {
        Api::namespaced(self.ctx.client.clone(), namespace)
    }

    /// The ReplicaSets this Deployment controls, adopting matching orphans and releasing owned
    /// ones that no longer match.
    async fn claim_replica_sets(
        &self,
        d: &Deployment,
        selector: &LabelSelector,
    ) -> Result<Vec<Arc<ReplicaSet>>, ControllerError> {
        let namespace = d.metadata.namespace.clone().unwrap_or_default();
        let uid = d.metadata.uid.clone().unwrap_or_default();
        let api = self.rs_api(&namespace);
        let deleting = d.metadata.deletion_timestamp.is_some();
        let mut owned = Vec::new();
        for rs in self.replica_sets.in_namespace(&namespace) {
            let labels = rs.metadata.labels.clone().unwrap_or_default();
            let matches = selector.matches(&labels);
            match controller_of(&rs.metadata) {
                Some(r) if r.uid == uid => {
                    if matches {
                        owned.push(rs);
                    } else if !deleting {
                        let refs: Vec<OwnerReference> = rs
                            .metadata
                            .owner_references
                            .clone()
                            .unwrap_or_default()
                            .into_iter()
                            .filter(|r| r.uid != uid)
                            .collect();
                        set_metadata_field(
                            &api,
                            &rs.metadata,
                            "ownerReferences",
                            refs,
                            Guard::ResourceVersion,
                        )
                        .await?;
                    }
                }
                Some(_) => {}
                None if matches && !deleting && rs.metadata.deletion_timestamp.is_none() => {
                    let mut refs = rs.metadata.owner_references.clone().unwrap_or_default();
                    refs.push(controller_reference(d));
                    set_metadata_field(
                        &api,
                        &rs.metadata,
                        "ownerReferences",
                        refs,
                        Guard::ResourceVersion,
                    )
                    .await?;
                    owned.push(rs);
                }
                None => {}
            }
        }
        Ok(owned)
    }

    /// Creates the ReplicaSet of the current template with `replicas`, or finds the one the
    /// cache has not shown yet. A name taken by a different template bumps the collision count.
    async fn create_new_rs(
        &self,
        d: &Deployment,
        revision: i64,
        replicas: i32,
        max_total: i32,
    ) -> Result<ReplicaSet, ControllerError> {
        let namespace = d.metadata.namespace.clone().unwrap_or_default();
        let name = d.metadata.name.clone().unwrap_or_default();
        let spec = d.spec.clone().unwrap_or_default();
        let collision_count = d.status.as_ref().and_then(|s| s.collision_count);
        let hash = template_hash(&spec.template, collision_count);
        let mut template = spec.template.clone();
        let template_meta = template.metadata.get_or_insert_with(Default::default);
        template_meta
            .labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut selector = spec.selector.clone();
        selector
            .match_labels
            .get_or_insert_with(BTreeMap::new)
            .insert(POD_TEMPLATE_HASH.into(), hash.clone());
        let mut annotations: BTreeMap<String, String> = d
            .metadata
            .annotations
            .clone()
            .unwrap_or_default()
            .into_iter()
            .filter(|(k, _)| copied_annotation(k))
            .collect();
        annotations.insert(REVISION.into(), revision.to_string());
        annotations.insert(
            DESIRED_REPLICAS.into(),
            spec.replicas.unwrap_or(1).to_string(),
        );
        annotations.insert(MAX_REPLICAS.into(), max_total.to_string());
        let rs = ReplicaSet {
            metadata: kube::api::ObjectMeta {
                name: Some(format!("{name}-{hash}")),
                namespace: Some(namespace.clone()),
                labels: template_meta.labels.clone(),
                annotations: Some(annotations),
                owner_references: Some(vec![controller_reference(d)]),
                ..Default::default()
            },
            spec: Some(ReplicaSetSpec {
                replicas: Some(replicas),
                min_ready_seconds: spec.min_ready_seconds,
                selector,
                template: Some(template),
            }),
            status: None,
        };
        let api = self.rs_api(&namespace);
        match api.create(&PostParams::default(), &rs).await {
            Ok(created) => {
                self.ctx.recorder.record_for(
                    d,
                    EventType::Normal,
                    "ScalingReplicaSet",
                    &format!(
                        "Scaled up replica set {} from 0 to {replicas}",
                        created.metadata.name.clone().unwrap_or_default()
                    ),
                );
                Ok(created)
            }
            Err(err) if super::error::is_conflict(&err) => {
                let existing = api.get(&format!("{name}-{hash}")).await?;
                let ours = controller_of(&existing.metadata)
                    .is_some_and(|r| Some(&r.uid) == d.metadata.uid.as_ref());
                let same = existing
                    .spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignoring_hash(t, &spec.template));
                if ours && same {
                    return Ok(existing);
                }
                // A hash collision: count it so the next hash differs.
                let api: Api<Deployment> = Api::namespaced(self.ctx.client.clone(), &namespace);
                let count = collision_count.unwrap_or(0) + 1;
                api.patch_status(
                    &name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"status": {"collisionCount": count}})),
                )
                .await?;
                Err(ControllerError::Invalid(format!(
                    "replica set name {name}-{hash} is taken by another template; collision count now {count}"
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Sets a ReplicaSet's replicas (and the annotations recording the Deployment's size).
    async fn scale(
        &self,
        d: &Deployment,
        rs: &ReplicaSet,
        replicas: i32,
        max_total: i32,
    ) -> Result<bool, ControllerError> {
        let current = spec_replicas(rs);
        let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
        let annotations = rs.metadata.annotations.clone().unwrap_or_default();
        let annotated = annotations.get(DESIRED_REPLICAS) == Some(&desired.to_string())
            && annotations.get(MAX_REPLICAS) == Some(&max_total.to_string());
        if current == replicas && annotated {
            return Ok(false);
        }
        let name = rs.metadata.name.clone().unwrap_or_default();
        let patch = json!({
            "metadata": {"annotations": {DESIRED_REPLICAS: desired.to_string(), MAX_REPLICAS: max_total.to_string()}},
            "spec": {"replicas": replicas},
        });
        self.rs_api(rs.metadata.namespace.as_deref().unwrap_or_default())
            .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        if current != replicas {
            let direction = if replicas > current { "up" } else { "down" };
            self.ctx.recorder.record_for(
                d,
                EventType::Normal,
                "ScalingReplicaSet",
                &format!("Scaled {direction} replica set {name} from {current} to {replicas}"),
            );
        }
        Ok(current != replicas)
    }

    /// Deletes old, empty ReplicaSets beyond `revisionHistoryLimit`, oldest revision first.
    async fn clean_up_history(
        &self,
        d: &Deployment,
        old: &[&ReplicaSet],
    ) -> Result<(), ControllerError> {
        let limit = d
            .spec
            .as_ref()
            .and_then(|s| s.revision_history_limit)
            .unwrap_or(10)
            .max(0) as usize;
        let mut empty: Vec<&&ReplicaSet> = old
            .iter()
            .filter(|rs| {
                spec_replicas(rs) == 0
                    && rs.status.as_ref().is_none_or(|s| s.replicas == 0)
                    && rs.metadata.deletion_timestamp.is_none()
            })
            .collect();
        if empty.len() <= limit {
            return Ok(());
        }
        empty.sort_by_key(|rs| revision_of(rs));
        let excess = empty.len() - limit;
        for rs in empty.into_iter().take(excess) {
            let name = rs.metadata.name.clone().unwrap_or_default();
            match self
                .rs_api(rs.metadata.namespace.as_deref().unwrap_or_default())
                .delete(&name, &DeleteParams::background())
                .await
            {
                Ok(_) => {}
                Err(err) if super::error::is_not_found(&err) => {}
                Err(err) => return Err(err.into()),
            }
        }
        Ok(())
    }

    /// Whether pods of the old ReplicaSets still exist and are not finished.
    fn old_pods_running(&self, old: &[&ReplicaSet]) -> bool {
        old.iter().any(|rs| {
            let uid = rs.metadata.uid.clone().unwrap_or_default();
            self.pods
                .owned_by(&uid)
                .iter()
                .any(|p| !super::pod_facts::is_terminal(p))
        })
    }
}

#[async_trait::async_trait]
impl Reconciler for DeploymentController {
    fn name(&self) -> &str {
        "deployment"
    }

    async fn reconcile(&self, key: &ObjectKey) -> Result<Action, ControllerError> {
        let Some(d) = self.deployments.get(key) else {
            return Ok(Action::Done);
        };
        if d.metadata.deletion_timestamp.is_some() {
            return Ok(Action::Done);
        }
        let spec = d.spec.clone().unwrap_or_default();
        let Ok(selector) = LabelSelector::try_from(&spec.selector) else {
            return Err(ControllerError::Invalid("invalid selector".into()));
        };
        if selector.is_everything() {
            self.ctx.recorder.record_for(
                d.as_ref(),
                EventType::Warning,
                "SelectingAll",
                "This deployment is selecting all pods. A non-empty selector is required.",
            );
            return Ok(Action::Done);
        }
        let owned = self.claim_replica_sets(&d, &selector).await?;
        let desired = spec.replicas.unwrap_or(1).max(0);
        let (surge, max_unavailable) =
            rollout::surge_and_unavailable(spec.strategy.as_ref(), desired);
        let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
        let max_total = if recreate { desired } else { desired + surge };
        let mut new_rs: Option<ReplicaSet> = owned
            .iter()
            .filter(|rs| {
                rs.spec
                    .as_ref()
                    .and_then(|s| s.template.as_ref())
                    .is_some_and(|t| equal_ignoring_hash(t, &spec.template))
            })
            .min_by_key(|rs| created(rs))
            .map(|rs| rs.as_ref().clone());
        let new_uid = new_rs.as_ref().and_then(|rs| rs.metadata.uid.clone());
        let mut old: Vec<ReplicaSet> = owned
            .iter()
            .filter(|rs| rs.metadata.uid != new_uid || new_uid.is_none())
            .map(|rs| rs.as_ref().clone())
            .collect();
        old.sort_by_key(created);
        let max_old_revision = old.iter().map(revision_of).max().unwrap_or(0);
        let paused = spec.paused == Some(true);
        let mut progress = Progress::Idle;

        // The new ReplicaSet is the newest revision (after a rollback it was an old one).
        if let Some(rs) = &new_rs {
            let revision = revision_of(rs);
            let mut annotations = rs.metadata.annotations.clone().unwrap_or_default();
            let mut changed = false;
            if revision <= max_old_revision {
                annotations.insert(REVISION.into(), (max_old_revision + 1).to_string());
                changed = true;
            }
            for (k, v) in d.metadata.annotations.iter().flatten() {
                if copied_annotation(k) && annotations.get(k) != Some(v) {
                    annotations.insert(k.clone(), v.clone());
                    changed = true;
                }
            }
            if changed && !paused {
                let name = rs.metadata.name.clone().unwrap_or_default();
                let updated = self
                    .rs_api(key.namespace_or_empty())
                    .patch(
                        &name,
                        &PatchParams::default(),
                        &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
                    )
                    .await?;
                new_rs = Some(updated);
            }
        }

        if !paused {
            if recreate {
                let mut scaled_old = false;
                for rs in &old {
                    if spec_replicas(rs) > 0 {
                        self.scale(&d, rs, 0, max_total).await?;
                        scaled_old = true;
                    }
                }
                let old_refs: Vec<&ReplicaSet> = old.iter().collect();
                if !scaled_old && !self.old_pods_running(&old_refs) {
                    match &new_rs {
                        None => {
                            new_rs = Some(
                                self.create_new_rs(&d, max_old_revision + 1, desired, max_total)
                                    .await?,
                            );
                            progress = Progress::Created;
                        }
                        Some(rs) => {
                            if self.scale(&d, rs, desired, max_total).await? {
                                progress = Progress::Scaled;
                            }
                        }
                    }
                } else if scaled_old {
                    progress = Progress::Scaled;
                }
            } else {
                let old_total: i32 = old.iter().map(spec_replicas).sum();
                match &new_rs {
                    None => {
                        let replicas = rollout::new_replicas(desired, surge, 0, old_total);
                        new_rs = Some(
                            self.create_new_rs(&d, max_old_revision + 1, replicas, max_total)
                                .await?,
                        );
                        progress = Progress::Created;
                    }
                    Some(rs) => {
                        let replicas =
                            rollout::new_replicas(desired, surge, spec_replicas(rs), old_total);
                        if self.scale(&d, rs, replicas, max_total).await? {
                            progress = Progress::Scaled;
                        }
                    }
                }
                let new_counts = new_rs.as_ref().map(counts).unwrap_or(Counts {
                    replicas: 0,
                    available: 0,
                });
                let old_counts: Vec<Counts> = old.iter().map(counts).collect();
                let targets =
                    rollout::scale_down_old(desired, max_unavailable, new_counts, &old_counts);
                for (rs, target) in old.iter().zip(targets) {
                    if target != spec_replicas(rs) && self.scale(&d, rs, target, max_total).await? {
                        progress = Progress::Scaled;
                    }
                }
            }
        } else if let Some(rs) = &new_rs {
            // Paused: only scaling, and only when no rollout is under way.
            if old.iter().all(|rs| spec_replicas(rs) == 0) {
                self.scale(&d, rs, desired, max_total).await?;
            }
        }

        let old_refs: Vec<&ReplicaSet> = old.iter().collect();
        self.clean_up_history(&d, &old_refs).await?;

        // The Deployment's revision annotation follows its new ReplicaSet.
        if let Some(revision) = new_rs.as_ref().map(revision_of).filter(|r| *r > 0) {
            let current = d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(REVISION))
                .cloned();
            if current != Some(revision.to_string()) {
                let api: Api<Deployment> =
                    Api::namespaced(self.ctx.client.clone(), key.namespace_or_empty());
                api.patch(
                    &key.name,
                    &PatchParams::default(),
                    &Patch::Merge(
                        json!({"metadata": {"annotations": {REVISION: revision.to_string()}}}),
                    ),
                )
                .await?;
            }
        }

        let (status, recheck) = status::compute(&d, new_rs.as_ref(), &old_refs, progress);
        if Some(&status) != d.status.as_ref() {
            let api: Api<Deployment> =
                Api::namespaced(self.ctx.client.clone(), key.namespace_or_empty());
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
        Ok(match recheck {
            Some(after) => Action::RequeueAfter(after),
            None => Action::Done,
        })
    }
}
