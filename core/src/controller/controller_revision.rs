//! ControllerRevisions: the recorded pod templates of DaemonSets and StatefulSets (what
//! `kubectl rollout history` lists and `rollout undo` restores). A revision is named
//! `<owner>-<hash of the template>`, numbered, owned by its workload, and holds the template as
//! the patch kubectl applies to roll back (`{"spec": {"template": {…, "$patch": "replace"}}}`).

use super::deployment::revision::template_hash;
use super::pod_facts::controller_of;
use super::ControllerError;
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::apimachinery::pkg::runtime::RawExtension;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};
use std::sync::Arc;

/// The label on pods (and revisions) naming the revision they were made from.
pub const REVISION_HASH: &str = "controller-revision-hash";

/// The data a revision records for `template`.
fn data_of(template: &PodTemplateSpec) -> Value {
    let mut template = serde_json::to_value(template).unwrap_or(Value::Null);
    if let Some(map) = template.as_object_mut() {
        map.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

/// The template a revision records.
pub fn template_of(revision: &ControllerRevision) -> Option<PodTemplateSpec> {
    let mut template = revision.data.as_ref()?.0.pointer("/spec/template")?.clone();
    if let Some(map) = template.as_object_mut() {
        map.remove("$patch");
    }
    serde_json::from_value(template).ok()
}

/// The revisions controlled by `owner_uid`, oldest revision number first.
pub fn owned(all: Vec<Arc<ControllerRevision>>, owner_uid: &str) -> Vec<Arc<ControllerRevision>> {
    let mut owned: Vec<_> = all
        .into_iter()
        .filter(|r| controller_of(&r.metadata).is_some_and(|o| o.uid == owner_uid))
        .collect();
    owned.sort_by_key(|r| r.revision);
    owned
}

/// The revision for `template`: an existing one recording the same template (renumbered as the
/// newest when it is not, as after a rollback) or a new one. Returns its hash (the pod label
/// value) and revision number.
pub async fn ensure(
    api: &Api<ControllerRevision>,
    owner: OwnerReference,
    template: &PodTemplateSpec,
    existing: &[Arc<ControllerRevision>],
) -> Result<(String, i64), ControllerError> {
    let hash = template_hash(template, None);
    let name = format!("{}-{hash}", owner.name);
    let newest = existing.iter().map(|r| r.revision).max().unwrap_or(0);
    if let Some(found) = existing
        .iter()
        .find(|r| r.metadata.name.as_deref() == Some(name.as_str()))
    {
        if found.revision == newest {
            return Ok((hash, found.revision));
        }
        let patch = json!({"revision": newest + 1});
        api.patch(&name, &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        return Ok((hash, newest + 1));
    }
    // The template's labels too: kubectl finds a workload's revisions by its selector.
    let mut labels = template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .unwrap_or_default();
    labels.insert(REVISION_HASH.to_string(), hash.clone());
    let revision = ControllerRevision {
        metadata: kube::api::ObjectMeta {
            name: Some(name.clone()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..Default::default()
        },
        data: Some(RawExtension(data_of(template))),
        revision: newest + 1,
    };
    match api.create(&PostParams::default(), &revision).await {
        Ok(_) => Ok((hash, newest + 1)),
        // Created by an earlier reconcile the informer has not shown yet.
        Err(err) if super::error::is_conflict(&err) => {
            let current = api.get(&name).await?;
            Ok((hash, current.revision))
        }
        Err(err) => Err(err.into()),
    }
}

/// Deletes the oldest revisions beyond `limit` that no pod uses (`in_use`: hashes).
pub async fn prune(
    api: &Api<ControllerRevision>,
    existing: &[Arc<ControllerRevision>],
    in_use: &[String],
    limit: usize,
) -> Result<(), ControllerError> {
    let unused: Vec<&Arc<ControllerRevision>> = existing
        .iter()
        .filter(|r| {
            let hash = r
                .metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(REVISION_HASH));
            !hash.is_some_and(|h| in_use.contains(h))
        })
        .collect();
    // The newest revision is the current template's: never pruned.
    let removable = unused.len().saturating_sub(limit);
    for revision in unused.into_iter().take(removable) {
        let newest = existing
            .last()
            .is_some_and(|n| n.metadata.name == revision.metadata.name);
        if newest {
            continue;
        }
        let name = revision.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(err) if super::error::is_not_found(&err) => {}
            Err(err) => return Err(err.into()),
        }
    }
    Ok(())
}
