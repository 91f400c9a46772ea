//! The garbage collector: deletes objects whose owners are all gone, and carries out the
//! deletion propagation policies of owners — `Foreground` (the owner stays, with the
//! `foregroundDeletion` finalizer, until its blocking dependents are deleted), `Orphan` (its
//! dependents lose their owner reference, then the `orphan` finalizer goes) and `Background`
//! (the owner goes at once and its dependents follow).
//!
//! It watches every listable kind the API serves (rediscovered periodically, so custom
//! resources join), through the shared informers, and indexes objects by owner uid. An owner
//! missing from the cache is confirmed absent with a live read before anything is deleted, so a
//! lagging cache never deletes a dependent of a just-created owner.

use super::cache::BY_OWNER;
use super::error::is_not_found;
use super::finalizer::remove_finalizer;
use super::informer::{Change, Informer, InformerFactory};
use super::metadata_patch::{set_metadata_field, Guard};
use super::work_queue::{QueueConfig, WorkQueue};
use super::{ControllerContext, ControllerError, ObjectKey};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, PropagationPolicy};
use kube::discovery::{verbs, Discovery, Scope};
use kube::Client;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The finalizer of owners deleted with `propagationPolicy: Foreground`.
pub const FOREGROUND: &str = "foregroundDeletion";
/// The finalizer of owners deleted with `propagationPolicy: Orphan`.
pub const ORPHAN: &str = "orphan";

/// How often served kinds are rediscovered.
const REDISCOVERY: Duration = Duration::from_secs(30);

/// Groups never watched: read-only views and high-churn records nobody owns.
const SKIPPED_GROUPS: [&str; 1] = ["metrics.k8s.io"];

#[derive(Clone)]
struct Watched {
    resource: ApiResource,
    namespaced: bool,
    informer: Informer<DynamicObject>,
}

/// An item of the collector's queue: a kind (by `group/version/plural`) and an object.
type Item = (String, ObjectKey);

/// The garbage collector.
pub struct GarbageCollector {
    client: Client,
    informers: InformerFactory,
    /// By `group/version/plural`.
    watched: RwLock<HashMap<String, Watched>>,
    /// `apiVersion/kind` -> `group/version/plural`.
    kinds: RwLock<HashMap<String, String>>,
    queue: Arc<WorkQueue<Item>>,
}

fn resource_id(resource: &ApiResource) -> String {
    format!(
        "{}/{}/{}",
        resource.group, resource.version, resource.plural
    )
}

fn is_deleting(object: &DynamicObject) -> bool {
    object.metadata.deletion_timestamp.is_some()
}

fn has_finalizer(object: &DynamicObject, finalizer: &str) -> bool {
    object
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == finalizer)
}

enum OwnerState {
    Present,
    /// Being deleted in the foreground: dependents that block it are deleted the same way.
    DeletingForeground,
    Absent,
}

impl GarbageCollector {
    /// A collector over the context's client and shared informers.
    pub fn new(ctx: &ControllerContext) -> Arc<Self> {
        Arc::new(GarbageCollector {
            client: ctx.client.clone(),
            informers: ctx.informers.clone(),
            watched: RwLock::new(HashMap::new()),
            kinds: RwLock::new(HashMap::new()),
            queue: Arc::new(WorkQueue::new(QueueConfig::default())),
        })
    }

    /// Runs with `workers` workers until `stop`.
    pub async fn run(self: Arc<Self>, workers: usize, stop: CancellationToken) {
        let mut tasks = Vec::new();
        for _ in 0..workers.max(1) {
            let gc = self.clone();
            tasks.push(tokio::spawn(async move {
                while let Some(item) = gc.queue.next().await {
                    match gc.process(&item).await {
                        Ok(()) => {
                            gc.queue.forget(&item);
                            gc.queue.done(&item);
                        }
                        Err(err) => {
                            tracing::debug!(kind = %item.0, key = %item.1, error = %err, "garbage collection failed; retrying");
                            gc.queue.done(&item);
                            gc.queue.add_rate_limited(item);
                        }
                    }
                }
            }));
        }
        loop {
            if let Err(err) = self.discover(&stop).await {
                tracing::debug!(error = %err, "garbage collector discovery failed");
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(REDISCOVERY) => {}
            }
        }
        self.queue.shut_down();
        for task in tasks {
            let _ = task.await;
        }
    }

    /// Starts watching every listable, watchable, deletable kind not yet watched. Every kind
    /// found is known (as an owner's kind) before any of their objects is processed: an
    /// owner whose kind was not yet registered would read as absent, and its dependents as
    /// garbage.
    async fn discover(self: &Arc<Self>, stop: &CancellationToken) -> Result<(), ControllerError> {
        let discovery = Discovery::new(self.client.clone()).run().await?;
        let mut found = Vec::new();
        for group in discovery.groups() {
            if SKIPPED_GROUPS.contains(&group.name()) {
                continue;
            }
            for (resource, capabilities) in group.recommended_resources() {
                let usable = [verbs::LIST, verbs::WATCH, verbs::DELETE, verbs::PATCH]
                    .iter()
                    .all(|v| capabilities.supports_operation(v));
                if !usable || resource.plural == "events" {
                    continue;
                }
                let id = resource_id(&resource);
                if self
                    .watched
                    .read()
                    .unwrap_or_else(|p| p.into_inner())
                    .contains_key(&id)
                {
                    continue;
                }
                let informer = self.informers.ownership_metadata(&resource);
                let watched = Watched {
                    namespaced: capabilities.scope == Scope::Namespaced,
                    resource: resource.clone(),
                    informer: informer.clone(),
                };
                self.kinds
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(
                        format!("{}/{}", resource.api_version, resource.kind),
                        id.clone(),
                    );
                self.watched
                    .write()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id.clone(), watched);
                found.push((id, informer));
            }
        }
        for (id, informer) in found {
            let gc = self.clone();
            let informer_for_resync = informer.clone();
            let mut changes = informer.subscribe();
            let stop = stop.clone();
            tokio::spawn(async move {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = informer_for_resync.wait_synced() => {}
                }
                gc.resync(&id, &informer_for_resync);
                loop {
                    let change = tokio::select! {
                        _ = stop.cancelled() => return,
                        change = changes.next() => change,
                    };
                    match change {
                        None => return,
                        Some(Change::Resync) => gc.resync(&id, &informer_for_resync),
                        Some(change) => gc.on_change(&id, &change),
                    }
                }
            });
        }
        Ok(())
    }

    fn resync(&self, id: &str, informer: &Informer<DynamicObject>) {
        for object in informer.list() {
            let interesting = object
                .metadata
                .owner_references
                .as_ref()
                .is_some_and(|r| !r.is_empty())
                || has_finalizer(&object, FOREGROUND)
                || has_finalizer(&object, ORPHAN);
            if interesting {
                self.queue
                    .add((id.to_string(), ObjectKey::of(object.as_ref())));
            }
        }
    }

    fn on_change(&self, id: &str, change: &Change<DynamicObject>) {
        match change {
            Change::Applied { old, new } => {
                let refs_changed = old
                    .as_ref()
                    .is_none_or(|o| o.metadata.owner_references != new.metadata.owner_references);
                let deletion_changed = old.as_ref().is_none_or(|o| {
                    o.metadata.deletion_timestamp != new.metadata.deletion_timestamp
                        || o.metadata.finalizers != new.metadata.finalizers
                });
                let has_refs = new
                    .metadata
                    .owner_references
                    .as_ref()
                    .is_some_and(|r| !r.is_empty());
                if (refs_changed && has_refs)
                    || (deletion_changed
                        && (has_finalizer(new, FOREGROUND) || has_finalizer(new, ORPHAN)))
                {
                    self.queue
                        .add((id.to_string(), ObjectKey::of(new.as_ref())));
                }
            }
            Change::Deleted(object) => {
                // Its dependents may now be orphans.
                if let Some(uid) = &object.metadata.uid {
                    for (dep_id, dependent) in self.dependents(uid) {
                        self.queue.add((dep_id, ObjectKey::of(dependent.as_ref())));
                    }
                }
                // An owner waiting in the foreground for it may now go.
                let namespace = object.metadata.namespace.clone();
                for owner in object.metadata.owner_references.iter().flatten() {
                    if let Some(owner_id) = self.resource_of(owner) {
                        let namespaced = self.watched_of(&owner_id).is_some_and(|w| w.namespaced);
                        let key = ObjectKey {
                            namespace: if namespaced { namespace.clone() } else { None },
                            name: owner.name.clone(),
                        };
                        self.queue.add((owner_id, key));
                    }
                }
            }
            Change::Resync => {}
        }
    }

    fn watched_of(&self, id: &str) -> Option<Watched> {
        self.watched
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned()
    }

    fn resource_of(&self, owner: &OwnerReference) -> Option<String> {
        self.kinds
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&format!("{}/{}", owner.api_version, owner.kind))
            .cloned()
    }

    /// Every cached object, of any kind, with an owner reference to `uid`.
    fn dependents(&self, uid: &str) -> Vec<(String, Arc<DynamicObject>)> {
        let watched: Vec<(String, Watched)> = self
            .watched
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        watched
            .into_iter()
            .flat_map(|(id, w)| {
                w.informer
                    .by_index(BY_OWNER, uid)
                    .into_iter()
                    .map(move |o| (id.clone(), o))
            })
            .collect()
    }

    fn api(&self, watched: &Watched, namespace: Option<&str>) -> Api<DynamicObject> {
        match (watched.namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, &watched.resource),
            _ => Api::all_with(self.client.clone(), &watched.resource),
        }
    }

    /// Whether the owner a reference names exists (checked live when the cache lacks it).
    async fn owner_state(
        &self,
        owner: &OwnerReference,
        namespace: Option<&str>,
    ) -> Result<OwnerState, ControllerError> {
        let Some(id) = self.resource_of(owner) else {
            // A kind that is not served (any more): its objects cannot exist.
            return Ok(OwnerState::Absent);
        };
        let Some(watched) = self.watched_of(&id) else {
            return Ok(OwnerState::Absent);
        };
        let key = ObjectKey {
            namespace: if watched.namespaced {
                namespace.map(str::to_string)
            } else {
                None
            },
            name: owner.name.clone(),
        };
        let object = match watched.informer.get(&key) {
            Some(o) if o.metadata.uid.as_deref() == Some(&owner.uid) => Some(o.as_ref().clone()),
            _ => match self
                .api(&watched, key.namespace.as_deref())
                .get(&owner.name)
                .await
            {
                Ok(o) => Some(o),
                Err(err) if is_not_found(&err) => None,
                Err(err) => return Err(err.into()),
            },
        };
        Ok(match object {
            Some(o) if o.metadata.uid.as_deref() == Some(&owner.uid) => {
                if is_deleting(&o) && has_finalizer(&o, FOREGROUND) {
                    OwnerState::DeletingForeground
                } else {
                    OwnerState::Present
                }
            }
            _ => OwnerState::Absent,
        })
    }

    async fn process(&self, (id, key): &Item) -> Result<(), ControllerError> {
        let Some(watched) = self.watched_of(id) else {
            return Ok(());
        };
        let Some(object) = watched.informer.get(key) else {
            return Ok(());
        };
        let api = self.api(&watched, key.namespace.as_deref());
        let uid = object.metadata.uid.clone().unwrap_or_default();

        // As an owner being deleted with a propagation policy.
        if is_deleting(&object) && has_finalizer(&object, ORPHAN) {
            for (dep_id, dependent) in self.dependents(&uid) {
                let Some(dep_watched) = self.watched_of(&dep_id) else {
                    continue;
                };
                let refs: Vec<OwnerReference> = dependent
                    .metadata
                    .owner_references
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|r| r.uid != uid)
                    .collect();
                let dep_api = self.api(&dep_watched, dependent.metadata.namespace.as_deref());
                set_metadata_field(
                    &dep_api,
                    &dependent.metadata,
                    "ownerReferences",
                    refs,
                    Guard::Uid,
                )
                .await?;
            }
            remove_finalizer(&api, object.as_ref(), ORPHAN).await?;
            return Ok(());
        }
        if is_deleting(&object) && has_finalizer(&object, FOREGROUND) {
            let dependents = self.dependents(&uid);
            let mut blocking = 0;
            for (dep_id, dependent) in &dependents {
                let blocks = dependent
                    .metadata
                    .owner_references
                    .iter()
                    .flatten()
                    .any(|r| r.uid == uid && r.block_owner_deletion == Some(true));
                if blocks {
                    blocking += 1;
                }
                if is_deleting(dependent) {
                    continue;
                }
                let Some(dep_watched) = self.watched_of(dep_id) else {
                    continue;
                };
                let dep_api = self.api(&dep_watched, dependent.metadata.namespace.as_deref());
                let name = dependent.metadata.name.clone().unwrap_or_default();
                let params = DeleteParams {
                    propagation_policy: Some(PropagationPolicy::Foreground),
                    ..DeleteParams::default()
                };
                match dep_api.delete(&name, &params).await {
                    Ok(_) => {}
                    Err(err) if is_not_found(&err) => {}
                    Err(err) => return Err(err.into()),
                }
            }
            if blocking == 0 {
                remove_finalizer(&api, object.as_ref(), FOREGROUND).await?;
            }
            // Otherwise each dependent's deletion wakes this owner again.
            return Ok(());
        }

        // As a dependent.
        let refs = object.metadata.owner_references.clone().unwrap_or_default();
        if refs.is_empty() || is_deleting(&object) {
            return Ok(());
        }
        let mut absent = Vec::new();
        let mut waiting = false;
        let mut solid = 0;
        for owner in &refs {
            match self.owner_state(owner, key.namespace.as_deref()).await? {
                OwnerState::Present => solid += 1,
                OwnerState::DeletingForeground => waiting = true,
                OwnerState::Absent => absent.push(owner.uid.clone()),
            }
        }
        if solid > 0 {
            // Still owned: only references to owners that are gone are removed.
            if !absent.is_empty() {
                let kept: Vec<OwnerReference> = refs
                    .into_iter()
                    .filter(|r| !absent.contains(&r.uid))
                    .collect();
                set_metadata_field(&api, &object.metadata, "ownerReferences", kept, Guard::Uid)
                    .await?;
            }
            return Ok(());
        }
        // Every owner is gone or going: so is this object, in the foreground when an owner
        // waits for it.
        let policy = if waiting {
            PropagationPolicy::Foreground
        } else {
            PropagationPolicy::Background
        };
        let params = DeleteParams {
            propagation_policy: Some(policy),
            preconditions: Some(kube::api::Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match api.delete(&key.name, &params).await {
            Ok(_) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}
