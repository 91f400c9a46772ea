//! The ServiceAccount token mount (admission, as Kubernetes' ServiceAccount plugin does it when
//! tokens are issued): each new pod gets a projected volume `kube-api-access-<suffix>` — a token
//! for its service account, the cluster CA from the `kube-root-ca.crt` ConfigMap and its
//! namespace — mounted read-only at `/var/run/secrets/kubernetes.io/serviceaccount` in every
//! container, unless the pod or its account sets `automountServiceAccountToken: false` or the
//! pod already mounts something there.

use super::admission::{AdmissionPlugin, AdmissionRequest};
use super::ApiError;
use async_trait::async_trait;
use serde_json::{json, Value};

/// Where in-cluster clients look for the token, CA and namespace.
pub const SERVICE_ACCOUNT_MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The ConfigMap every namespace holds with the cluster CA (`ca.crt`).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";

/// Mounts service-account tokens into new pods.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServiceAccountTokenMount;

fn suffix() -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut value = uuid::Uuid::new_v4().as_u128();
    (0..5)
        .map(|_| {
            let c = ALPHABET[(value % ALPHABET.len() as u128) as usize] as char;
            value /= ALPHABET.len() as u128;
            c
        })
        .collect()
}

#[async_trait]
impl AdmissionPlugin for ServiceAccountTokenMount {
    fn name(&self) -> &str {
        "ServiceAccountTokenMount"
    }

    async fn mutate(
        &self,
        request: &AdmissionRequest<'_>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        if !request.creates_pod() {
            return Ok(());
        }
        let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) else {
            return Ok(());
        };
        if spec.get("automountServiceAccountToken") == Some(&Value::Bool(false)) {
            return Ok(());
        }
        let account = spec
            .get("serviceAccountName")
            .and_then(Value::as_str)
            .unwrap_or("default")
            .to_string();
        if let Some(accounts) = request.registry.get("", "v1", "serviceaccounts") {
            if let Ok(stored) = request
                .storage
                .get(accounts, request.namespace, &account)
                .await
            {
                if stored.get("automountServiceAccountToken") == Some(&Value::Bool(false)) {
                    return Ok(());
                }
            }
        }
        let mounted_already = ["containers", "initContainers"]
            .iter()
            .filter_map(|key| spec.get(*key).and_then(Value::as_array))
            .flatten()
            .filter_map(|c| c.get("volumeMounts").and_then(Value::as_array))
            .flatten()
            .any(|m| {
                m.get("mountPath").and_then(Value::as_str) == Some(SERVICE_ACCOUNT_MOUNT_PATH)
            });
        if mounted_already {
            return Ok(());
        }
        let name = format!("kube-api-access-{}", suffix());
        let volume = json!({"name": name, "projected": {"defaultMode": 420, "sources": [
            {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
            {"configMap": {"name": ROOT_CA_CONFIG_MAP, "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
            {"downwardAPI": {"items": [{"path": "namespace",
                "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
        ]}});
        match spec.get_mut("volumes").and_then(Value::as_array_mut) {
            Some(volumes) => volumes.push(volume),
            None => {
                spec.insert("volumes".into(), json!([volume]));
            }
        }
        let mount =
            json!({"name": name, "mountPath": SERVICE_ACCOUNT_MOUNT_PATH, "readOnly": true});
        for key in ["containers", "initContainers"] {
            for container in spec
                .get_mut(key)
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                match container
                    .get_mut("volumeMounts")
                    .and_then(Value::as_array_mut)
                {
                    Some(mounts) => mounts.push(mount.clone()),
                    None => container["volumeMounts"] = json!([mount]),
                }
            }
        }
        Ok(())
    }
}
