//! Pod volumes prepared by the node agent on the host: emptyDir directories, hostPath
//! pass-through, and configMap, secret, downwardAPI and projected volumes (those sources plus
//! service-account tokens from TokenRequest, refreshed before they expire) written as files
//! (rewritten when their source changes), then bind-mounted into containers.
//!
//! Everything is written under `<root>/pods/<uid>/volumes/<name>`; this module never touches
//! anything outside the pod's own directory except hostPath, which it only mounts.

use super::NodeError;
use crate::runtime::Mount;
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, ProjectedVolumeSource, Secret,
    ServiceAccount, ServiceAccountTokenProjection, Volume,
};
use kube::api::Api;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Files of a projected volume: relative path -> (content, mode).
type Projection = BTreeMap<String, (Vec<u8>, Option<i32>)>;

/// The directory of a pod's own files.
pub(crate) fn pod_dir(root: &Path, uid: &str) -> PathBuf {
    root.join("pods").join(uid)
}

fn write_if_changed(path: &Path, content: &[u8], mode: Option<i32>) -> Result<bool, NodeError> {
    if std::fs::read(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| NodeError::io(parent, e))?;
    }
    let temporary = path.with_extension("capstan-tmp");
    std::fs::write(&temporary, content).map_err(|e| NodeError::io(&temporary, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = mode.unwrap_or(0o644) as u32 & 0o777;
        std::fs::set_permissions(&temporary, std::fs::Permissions::from_mode(mode))
            .map_err(|e| NodeError::io(&temporary, e))?;
    }
    #[cfg(not(unix))]
    let _ = mode;
    std::fs::rename(&temporary, path).map_err(|e| NodeError::io(path, e))?;
    Ok(true)
}

/// Writes `files` into `dir`, removing files no longer projected.
fn project(dir: &Path, files: &Projection) -> Result<(), NodeError> {
    std::fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
    for (name, (content, mode)) in files {
        if name.split('/').any(|part| part == ".." || part.is_empty()) {
            return Err(NodeError::ContainerConfig(format!(
                "volume path {name:?} must be relative without '..'"
            )));
        }
        write_if_changed(&dir.join(name), content, *mode)?;
    }
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().to_string();
            let kept = files
                .keys()
                .any(|f| f == &name || f.starts_with(&format!("{name}/")));
            if !kept && entry.file_type().is_ok_and(|t| t.is_file()) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    Ok(())
}

fn select(
    data: BTreeMap<String, Vec<u8>>,
    items: Option<&[KeyToPath]>,
    default_mode: Option<i32>,
) -> Result<Projection, String> {
    match items {
        None => Ok(data
            .into_iter()
            .map(|(k, v)| (k, (v, default_mode)))
            .collect()),
        Some(items) => {
            let mut out = BTreeMap::new();
            for item in items {
                let value = data
                    .get(&item.key)
                    .ok_or_else(|| format!("key {:?} not found", item.key))?;
                out.insert(
                    item.path.clone(),
                    (value.clone(), item.mode.or(default_mode)),
                );
            }
            Ok(out)
        }
    }
}

async fn config_map_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, NodeError> {
    let map = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(NodeError::Api)?;
    match map {
        Some(map) => {
            let mut data: BTreeMap<String, Vec<u8>> = map
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            for (k, v) in map.binary_data.unwrap_or_default() {
                data.insert(k, v.0);
            }
            Ok(data)
        }
        None if optional == Some(true) => Ok(BTreeMap::new()),
        None => Err(NodeError::ContainerConfig(format!(
            "configmap {name:?} not found"
        ))),
    }
}

async fn secret_data(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, NodeError> {
    let secret = Api::<Secret>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(NodeError::Api)?;
    match secret {
        Some(secret) => {
            let mut data: BTreeMap<String, Vec<u8>> = secret
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            for (k, v) in secret.string_data.unwrap_or_default() {
                data.insert(k, v.into_bytes());
            }
            Ok(data)
        }
        None if optional == Some(true) => Ok(BTreeMap::new()),
        None => Err(NodeError::ContainerConfig(format!(
            "secret {name:?} not found"
        ))),
    }
}

fn downward_files(
    pod: &Pod,
    items: &[DownwardAPIVolumeFile],
    default_mode: Option<i32>,
) -> Result<Projection, NodeError> {
    let meta = &pod.metadata;
    let mut files = BTreeMap::new();
    for item in items {
        let Some(field) = &item.field_ref else {
            continue;
        };
        let render = |map: Option<&BTreeMap<String, String>>| {
            map.map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={v:?}\n"))
                    .collect::<String>()
            })
            .unwrap_or_default()
        };
        let value = match field.field_path.as_str() {
            "metadata.name" => meta.name.clone().unwrap_or_default(),
            "metadata.namespace" => meta.namespace.clone().unwrap_or_else(|| "default".into()),
            "metadata.uid" => meta.uid.clone().unwrap_or_default(),
            "metadata.labels" => render(meta.labels.as_ref()),
            "metadata.annotations" => render(meta.annotations.as_ref()),
            other => {
                return Err(NodeError::ContainerConfig(format!(
                    "unsupported downwardAPI fieldPath {other:?}"
                )))
            }
        };
        files.insert(
            item.path.clone(),
            (value.into_bytes(), item.mode.or(default_mode)),
        );
    }
    Ok(files)
}

/// A token for the pod's service account (TokenRequest), reused from `existing` until 80% of
/// its lifetime has passed, as the kubelet refreshes projected tokens.
async fn service_account_token(
    client: &kube::Client,
    pod: &Pod,
    source: &ServiceAccountTokenProjection,
    existing: &Path,
) -> Result<Vec<u8>, NodeError> {
    let lifetime = source.expiration_seconds.unwrap_or(3607).max(600) as u64;
    let fresh = std::fs::metadata(existing)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age.as_secs() < lifetime * 8 / 10);
    if fresh {
        if let Ok(token) = std::fs::read(existing) {
            return Ok(token);
        }
    }
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let account = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.as_deref())
        .filter(|n| !n.is_empty())
        .unwrap_or("default");
    let mut spec = serde_json::json!({"expirationSeconds": lifetime,
        "boundObjectRef": {"kind": "Pod", "apiVersion": "v1",
            "name": pod.metadata.name, "uid": pod.metadata.uid}});
    if let Some(audience) = source.audience.as_deref().filter(|a| !a.is_empty()) {
        spec["audiences"] = serde_json::json!([audience]);
    }
    let request: TokenRequest = serde_json::from_value(serde_json::json!({"spec": spec}))
        .map_err(|e| NodeError::ContainerConfig(e.to_string()))?;
    let issued: TokenRequest = Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .create_subresource("token", account, &Default::default(), &request)
        .await
        .map_err(NodeError::Api)?;
    Ok(issued
        .status
        .map(|s| s.token.into_bytes())
        .unwrap_or_default())
}

/// The files of a projected volume's sources, merged.
async fn projected_files(
    client: &kube::Client,
    pod: &Pod,
    source: &ProjectedVolumeSource,
    dir: &Path,
) -> Result<Projection, NodeError> {
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let mode = source.default_mode;
    let mut files = Projection::new();
    for part in source.sources.as_deref().unwrap_or_default() {
        if let Some(map) = &part.config_map {
            let data = config_map_data(client, namespace, &map.name, map.optional).await?;
            let selected = select(data, map.items.as_deref(), mode)
                .map_err(|e| NodeError::ContainerConfig(format!("configmap {}: {e}", map.name)))?;
            files.extend(selected);
        }
        if let Some(secret) = &part.secret {
            let data = secret_data(client, namespace, &secret.name, secret.optional).await?;
            let selected = select(data, secret.items.as_deref(), mode)
                .map_err(|e| NodeError::ContainerConfig(format!("secret {}: {e}", secret.name)))?;
            files.extend(selected);
        }
        if let Some(downward) = &part.downward_api {
            files.extend(downward_files(
                pod,
                downward.items.as_deref().unwrap_or_default(),
                mode,
            )?);
        }
        if let Some(token) = &part.service_account_token {
            let content = service_account_token(client, pod, token, &dir.join(&token.path)).await?;
            files.insert(token.path.clone(), (content, mode.or(Some(0o600))));
        }
    }
    Ok(files)
}

/// Prepares every volume of `pod` and returns, per volume name, the host path to mount.
pub(crate) async fn prepare(
    client: &kube::Client,
    root: &Path,
    pod: &Pod,
) -> Result<BTreeMap<String, PathBuf>, NodeError> {
    let uid = pod.metadata.uid.as_deref().unwrap_or_default();
    let namespace = pod.metadata.namespace.as_deref().unwrap_or("default");
    let base = pod_dir(root, uid).join("volumes");
    let mut paths = BTreeMap::new();
    let volumes: &[Volume] = pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.as_deref())
        .unwrap_or_default();
    for volume in volumes {
        let dir = base.join(&volume.name);
        if let Some(host) = &volume.host_path {
            paths.insert(volume.name.clone(), PathBuf::from(&host.path));
            if host.type_.as_deref() == Some("DirectoryOrCreate") {
                std::fs::create_dir_all(&host.path)
                    .map_err(|e| NodeError::io(Path::new(&host.path), e))?;
            }
            continue;
        }
        if let Some(source) = &volume.config_map {
            let data = config_map_data(client, namespace, &source.name, source.optional).await?;
            let files =
                select(data, source.items.as_deref(), source.default_mode).map_err(|e| {
                    NodeError::ContainerConfig(format!("configmap {}: {e}", source.name))
                })?;
            project(&dir, &files)?;
        } else if let Some(source) = &volume.secret {
            let name = source.secret_name.clone().unwrap_or_default();
            let data = secret_data(client, namespace, &name, source.optional).await?;
            let files = select(
                data,
                source.items.as_deref(),
                source.default_mode.or(Some(0o644)),
            )
            .map_err(|e| NodeError::ContainerConfig(format!("secret {name}: {e}")))?;
            project(&dir, &files)?;
        } else if let Some(source) = &volume.downward_api {
            let files = downward_files(
                pod,
                source.items.as_deref().unwrap_or_default(),
                source.default_mode,
            )?;
            project(&dir, &files)?;
        } else if let Some(source) = &volume.projected {
            let files = projected_files(client, pod, source, &dir).await?;
            project(&dir, &files)?;
        } else {
            // emptyDir, and anything else this agent does not manage, is an empty directory.
            std::fs::create_dir_all(&dir).map_err(|e| NodeError::io(&dir, e))?;
        }
        paths.insert(volume.name.clone(), dir);
    }
    Ok(paths)
}

/// The bind mounts of `container` given the prepared volume paths.
pub(crate) fn mounts(
    container: &Container,
    volumes: &BTreeMap<String, PathBuf>,
) -> Result<Vec<Mount>, NodeError> {
    container
        .volume_mounts
        .as_deref()
        .unwrap_or_default()
        .iter()
        .map(|m| {
            let mut host = volumes.get(&m.name).cloned().ok_or_else(|| {
                NodeError::ContainerConfig(format!("volume {:?} is not defined", m.name))
            })?;
            if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
                if sub.split('/').any(|p| p == "..") {
                    return Err(NodeError::ContainerConfig(format!(
                        "subPath {sub:?} must not contain '..'"
                    )));
                }
                host = host.join(sub);
            }
            Ok(Mount {
                host_path: host,
                container_path: m.mount_path.clone(),
                read_only: m.read_only.unwrap_or(false),
            })
        })
        .collect()
}

/// Removes a pod's files.
pub(crate) fn remove(root: &Path, uid: &str) {
    let dir = pod_dir(root, uid);
    if let Err(err) = std::fs::remove_dir_all(&dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), "removing pod files failed: {err}");
        }
    }
}
