//! An agent's credentials: the kubeconfig it is given, the one it was issued on an earlier
//! start (`DATA_DIR/node.kubeconfig`), or a bootstrap token exchanged once for a node
//! certificate through a CertificateSigningRequest. Also makes bootstrap tokens.

use crate::cli::AgentArgs;
use base64::Engine;
use capstan_core::authn::{
    bootstrap_token_secret, generate_bootstrap_token, KUBELET_CLIENT_SIGNER,
};
use capstan_core::pki::{certificate_request, write_file};
use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use std::path::Path;

async fn from_kubeconfig(path: &Path) -> Result<kube::Config, String> {
    let file = kube::config::Kubeconfig::read_from(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    kube::Config::from_custom_kubeconfig(file, &Default::default())
        .await
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The cluster CA (PEM) a kubeconfig's current cluster trusts, if it names one inline.
fn kubeconfig_ca(path: &Path) -> Option<String> {
    let file = kube::config::Kubeconfig::read_from(path).ok()?;
    let data = file
        .clusters
        .first()?
        .cluster
        .as_ref()?
        .certificate_authority_data
        .clone()?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(data.trim())
        .ok()?;
    String::from_utf8(bytes).ok()
}

/// The agent's client configuration (see the module docs) and the cluster CA it trusts (PEM),
/// if the server is a secure one.
pub async fn agent_config(
    args: &AgentArgs,
    node_name: &str,
) -> Result<(kube::Config, Option<String>), String> {
    let issued = args.data_dir.join("node.kubeconfig");
    let ca_file = match &args.ca_cert {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| format!("--ca-cert {}: {e}", path.display()))?,
        ),
        None => None,
    };
    let (mut config, ca) = if let Some(path) = &args.kubeconfig {
        (
            from_kubeconfig(path).await?,
            ca_file.or_else(|| kubeconfig_ca(path)),
        )
    } else if issued.exists() {
        (
            from_kubeconfig(&issued).await?,
            ca_file.or_else(|| kubeconfig_ca(&issued)),
        )
    } else if let (Some(token), Some(ca_path), Some(server)) =
        (&args.token, &args.ca_cert, &args.server)
    {
        let ca = std::fs::read_to_string(ca_path)
            .map_err(|e| format!("--ca-cert {}: {e}", ca_path.display()))?;
        let bootstrap = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: u}}\ncurrent-context: c\nusers:\n- name: u\n  user: {{token: {token}}}\n",
            b64(&ca)
        );
        let file = kube::config::Kubeconfig::from_yaml(&bootstrap).map_err(|e| e.to_string())?;
        let config = kube::Config::from_custom_kubeconfig(file, &Default::default())
            .await
            .map_err(|e| e.to_string())?;
        let client = kube::Client::try_from(config).map_err(|e| e.to_string())?;
        let (request, key) =
            certificate_request(&format!("system:node:{node_name}"), "system:nodes")
                .map_err(|e| e.to_string())?;
        let csr: CertificateSigningRequest = serde_json::from_value(serde_json::json!({
            "metadata": {"generateName": "node-csr-"},
            "spec": {
                "request": b64(&request),
                "signerName": KUBELET_CLIENT_SIGNER,
                "usages": ["digital signature", "client auth"],
            },
        }))
        .map_err(|e| e.to_string())?;
        let signed = Api::<CertificateSigningRequest>::all(client)
            .create(&PostParams::default(), &csr)
            .await
            .map_err(|e| format!("cannot get a node certificate with the bootstrap token: {e}"))?;
        let certificate = signed
            .status
            .and_then(|s| s.certificate)
            .map(|c| String::from_utf8_lossy(&c.0).to_string())
            .ok_or("the server did not sign the node certificate")?;
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: c\n  context: {{cluster: c, user: node}}\ncurrent-context: c\nusers:\n- name: node\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
            b64(&ca),
            b64(&certificate),
            b64(&key)
        );
        write_file(&issued, &text, true).map_err(|e| e.to_string())?;
        println!(
            "capstan: node certificate for system:node:{node_name} issued; credentials in {}",
            issued.display()
        );
        (from_kubeconfig(&issued).await?, Some(ca))
    } else {
        if args
            .server
            .as_deref()
            .is_some_and(|s| s.starts_with("https"))
        {
            return Err(
                "an https server needs credentials: --token with --ca-cert, or --kubeconfig".into(),
            );
        }
        (
            kube::Config::new(http::Uri::from_static("http://127.0.0.1:6443")),
            None,
        )
    };
    if let Some(server) = &args.server {
        config.cluster_url = server
            .parse()
            .map_err(|e| format!("--server {server:?}: {e}"))?;
    }
    Ok((config, ca))
}

/// Creates a bootstrap token valid for `ttl` through `client` and returns it.
pub async fn create_token(
    client: kube::Client,
    ttl: std::time::Duration,
) -> Result<String, String> {
    let token = generate_bootstrap_token();
    let secret = bootstrap_token_secret(&token, ttl).ok_or("bad token")?;
    let secret: Secret = serde_json::from_value(secret).map_err(|e| e.to_string())?;
    Api::<Secret>::namespaced(client, "kube-system")
        .create(&PostParams::default(), &secret)
        .await
        .map_err(|e| format!("cannot create a bootstrap token: {e}"))?;
    Ok(token)
}
