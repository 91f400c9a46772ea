//! Cached objects without spare room: serde grows a decoded list as it reads it, so a pod's
//! one container status keeps room for four and its five conditions room for eight. An
//! informer keeps every pod of a cluster for as long as it runs, so the lists of the pods it
//! caches are trimmed to their length once, as they arrive.

use k8s_openapi::api::core::v1::{Container, Pod, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use std::any::Any;

/// Trims `object`'s lists to their length (pods in depth; any kind's metadata).
pub(crate) fn trim<K: kube::Resource + Any>(mut object: K) -> K {
    if let Some(pod) = (&mut object as &mut dyn Any).downcast_mut::<Pod>() {
        trim_pod(pod);
    } else {
        trim_meta(object.meta_mut());
    }
    object
}

fn trim_list<T>(list: &mut Option<Vec<T>>) {
    if let Some(list) = list {
        list.shrink_to_fit();
    }
}

fn trim_meta(meta: &mut ObjectMeta) {
    trim_list(&mut meta.owner_references);
    trim_list(&mut meta.finalizers);
}

fn trim_container(container: &mut Container) {
    trim_list(&mut container.env);
    trim_list(&mut container.ports);
    trim_list(&mut container.volume_mounts);
    trim_list(&mut container.command);
    trim_list(&mut container.args);
}

/// A projected volume's sources (every pod's service-account token volume has three, of 336
/// bytes each, which serde leaves room for four of) and their items.
fn trim_volume(volume: &mut Volume) {
    let Some(projected) = &mut volume.projected else {
        return;
    };
    trim_list(&mut projected.sources);
    for source in projected.sources.iter_mut().flatten() {
        if let Some(config_map) = &mut source.config_map {
            trim_list(&mut config_map.items);
        }
        if let Some(secret) = &mut source.secret {
            trim_list(&mut secret.items);
        }
        if let Some(downward_api) = &mut source.downward_api {
            trim_list(&mut downward_api.items);
        }
    }
}

fn trim_pod(pod: &mut Pod) {
    trim_meta(&mut pod.metadata);
    if let Some(spec) = &mut pod.spec {
        spec.containers.shrink_to_fit();
        spec.containers.iter_mut().for_each(trim_container);
        if let Some(init) = &mut spec.init_containers {
            init.shrink_to_fit();
            init.iter_mut().for_each(trim_container);
        }
        trim_list(&mut spec.tolerations);
        trim_list(&mut spec.volumes);
        spec.volumes.iter_mut().flatten().for_each(trim_volume);
    }
    if let Some(status) = &mut pod.status {
        trim_list(&mut status.conditions);
        trim_list(&mut status.container_statuses);
        trim_list(&mut status.init_container_statuses);
        trim_list(&mut status.pod_ips);
        trim_list(&mut status.host_ips);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoded_pod_lists_keep_no_spare_room_and_the_same_content() {
        let text = serde_json::json!({
            "metadata": {"name": "p", "ownerReferences": [
                {"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "rs", "uid": "u"}]},
            "spec": {"containers": [{"name": "c", "env": [{"name": "A", "value": "1"}]}],
                     "tolerations": [{"key": "k", "operator": "Exists"}],
                     "volumes": [{"name": "token", "projected": {"sources": [
                         {"serviceAccountToken": {"path": "token"}},
                         {"configMap": {"name": "ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                         {"downwardAPI": {"items": [{"path": "namespace",
                             "fieldRef": {"fieldPath": "metadata.namespace"}}]}}]}}]},
            "status": {"conditions": [
                {"type": "Ready", "status": "True"}, {"type": "Initialized", "status": "True"},
                {"type": "PodScheduled", "status": "True"}, {"type": "ContainersReady", "status": "True"},
                {"type": "PodReadyToStartContainers", "status": "True"}],
                "containerStatuses": [{"name": "c", "image": "i", "imageID": "", "ready": true,
                                       "restartCount": 0}]},
        })
        .to_string();
        let decoded: Pod = serde_json::from_str(&text).expect("a pod");
        let status = decoded.status.as_ref().expect("status");
        let spare = |capacity: usize, len: usize| capacity > len;
        // serde leaves room: the test would say nothing if it did not.
        assert!(
            spare(
                status.conditions.as_ref().expect("conditions").capacity(),
                5
            ) || spare(
                status
                    .container_statuses
                    .as_ref()
                    .expect("statuses")
                    .capacity(),
                1
            )
        );
        let trimmed = trim(decoded.clone());
        assert_eq!(trimmed, decoded);
        let status = trimmed.status.as_ref().expect("status");
        assert_eq!(
            status.conditions.as_ref().expect("conditions").capacity(),
            5
        );
        assert_eq!(
            status
                .container_statuses
                .as_ref()
                .expect("statuses")
                .capacity(),
            1
        );
        let meta = &trimmed.metadata;
        assert_eq!(
            meta.owner_references.as_ref().expect("owners").capacity(),
            1
        );
        let spec = trimmed.spec.as_ref().expect("spec");
        assert_eq!(
            spec.tolerations.as_ref().expect("tolerations").capacity(),
            1
        );
        assert_eq!(spec.containers[0].env.as_ref().expect("env").capacity(), 1);
        let volumes = spec.volumes.as_ref().expect("volumes");
        let sources = volumes[0]
            .projected
            .as_ref()
            .and_then(|p| p.sources.as_ref())
            .expect("sources");
        assert_eq!(sources.capacity(), 3);
        let config_map_items = sources[1]
            .config_map
            .as_ref()
            .and_then(|c| c.items.as_ref());
        let downward_items = sources[2]
            .downward_api
            .as_ref()
            .and_then(|d| d.items.as_ref());
        assert_eq!(config_map_items.map(Vec::capacity), Some(1));
        assert_eq!(downward_items.map(Vec::capacity), Some(1));
    }
}
