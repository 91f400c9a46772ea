//! Node client certificates through CertificateSigningRequests (certificates.k8s.io/v1), as
//! kubelets get theirs: an admission plugin that, when a bootstrap-token user (or a node
//! renewing its own) creates a request for signer `kubernetes.io/kube-apiserver-client-kubelet`
//! naming `system:node:<name>` in `system:nodes`, approves and signs it with the cluster CA at
//! once — the answer to the create carries `status.certificate` — and deletes the bootstrap
//! token it was made with (one use). Any other request is refused; clients never write a
//! request's status.

use super::bootstrap_token::{BOOTSTRAPPERS_GROUP, BOOTSTRAP_USER_PREFIX};
use crate::apiserver::{AdmissionPlugin, AdmissionRequest, ApiError, Operation};
use crate::authz::{node_name_of, NODES_GROUP, NODE_USER_PREFIX};
use crate::pki::ClusterCa;
use async_trait::async_trait;
use base64::Engine;
use serde_json::{json, Value};
use std::sync::Arc;

/// The signer of node agents' client certificates.
pub const KUBELET_CLIENT_SIGNER: &str = "kubernetes.io/kube-apiserver-client-kubelet";

/// Approves and signs node agents' certificate requests.
pub struct NodeCertificateSigner {
    ca: Arc<ClusterCa>,
}

impl std::fmt::Debug for NodeCertificateSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCertificateSigner")
            .finish_non_exhaustive()
    }
}

impl NodeCertificateSigner {
    /// Signs with `ca`.
    pub fn new(ca: Arc<ClusterCa>) -> Self {
        NodeCertificateSigner { ca }
    }
}

fn refuse(reason: impl std::fmt::Display) -> ApiError {
    ApiError::forbidden(format!("certificate signing request refused: {reason}"))
}

#[async_trait]
impl AdmissionPlugin for NodeCertificateSigner {
    fn name(&self) -> &str {
        "NodeCertificateSigner"
    }

    async fn mutate(
        &self,
        request: &AdmissionRequest<'_>,
        object: &mut Value,
    ) -> Result<(), ApiError> {
        if request.kind.group != "certificates.k8s.io"
            || request.kind.kind != "CertificateSigningRequest"
        {
            return Ok(());
        }
        match request.operation {
            Operation::Create => {}
            Operation::Update => {
                // Status is the signer's alone.
                object["status"] = request
                    .old
                    .and_then(|old| old.get("status"))
                    .cloned()
                    .unwrap_or(json!({}));
                return Ok(());
            }
            Operation::Delete => return Ok(()),
        }
        let user = request.user;
        let bootstrap_id = user
            .name
            .strip_prefix(BOOTSTRAP_USER_PREFIX)
            .filter(|_| user.groups.iter().any(|g| g == BOOTSTRAPPERS_GROUP));
        let renewing = node_name_of(user);
        if bootstrap_id.is_none() && renewing.is_none() {
            return Err(refuse(
                "only bootstrap-token users and nodes may request node certificates",
            ));
        }
        let signer = object.pointer("/spec/signerName").and_then(Value::as_str);
        if signer != Some(KUBELET_CLIENT_SIGNER) {
            return Err(refuse(format!(
                "the signer must be {KUBELET_CLIENT_SIGNER}"
            )));
        }
        let pem = object
            .pointer("/spec/request")
            .and_then(Value::as_str)
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .ok_or_else(|| refuse("spec.request is not a base64 PEM certificate request"))?;
        let (common_name, organization) = crate::pki::request_subject(&pem).map_err(refuse)?;
        let Some(node) = common_name
            .strip_prefix(NODE_USER_PREFIX)
            .filter(|n| !n.is_empty())
        else {
            return Err(refuse(format!(
                "the subject {common_name:?} is not system:node:<name>"
            )));
        };
        if let Some(own) = renewing {
            if own != node {
                return Err(refuse(format!(
                    "node {own:?} may not ask for {common_name:?}"
                )));
            }
        }
        if organization != NODES_GROUP {
            return Err(refuse(format!("the organization must be {NODES_GROUP}")));
        }
        let certificate = self
            .ca
            .sign_client_request(&pem, &common_name, NODES_GROUP)
            .map_err(refuse)?;
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        object["spec"]["username"] = json!(user.name);
        object["spec"]["groups"] = json!(user.groups);
        object["status"] = json!({
            "conditions": [{
                "type": "Approved", "status": "True", "reason": "AutoApproved",
                "message": format!("auto-approved node client certificate for {node}"),
                "lastUpdateTime": now, "lastTransitionTime": now,
            }],
            "certificate": base64::engine::general_purpose::STANDARD.encode(certificate),
        });
        if let (Some(id), false) = (bootstrap_id, request.dry_run) {
            if let Some(secrets) = request.registry.get("", "v1", "secrets") {
                let name = format!("bootstrap-token-{id}");
                if let Err(err) = request
                    .storage
                    .delete(secrets, Some("kube-system"), &name, None)
                    .await
                {
                    tracing::warn!("cannot retire bootstrap token {id}: {err}");
                }
            }
        }
        Ok(())
    }
}
