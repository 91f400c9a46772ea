//! The control plane: the API server on its store, the controller manager (with node IPAM)
//! and the scheduler, the latter two under leader-election Leases so several servers can
//! share one store and one of each works.

use crate::cli::ControlPlaneArgs;
use capstan_core::apiserver::{
    serve_tls, ApiConfig, ApiServer, AuditLog, TlsServing, CONTROLLER_MANAGER_LEASE,
    SCHEDULER_LEASE,
};
use capstan_core::apiserver::{EndpointsConfig, ServiceRanges};
use capstan_core::authn::{
    AuthenticatorChain, BootstrapTokenAuthenticator, NodeCertificateSigner, ServiceAccountTokens,
    TokenFileAuthenticator, X509Authenticator,
};
use capstan_core::authz::{
    NodeAuthorizer, NodeRestriction, RbacAuthorizer, RbacEscalationCheck, MASTERS_GROUP,
};
use capstan_core::cidr::Ipv4Cidr;
use capstan_core::controller::{
    ControllerManager, ControllerManagerConfig, InformerFactory, LeaderElectionConfig,
    NodeIpamConfig, NodeLifecycleConfig, RunningControllers,
};
use capstan_core::pki::{write_file, ClusterCa, IssuedCertificate};
use capstan_core::scheduler::{ElectedScheduler, Scheduler, SchedulerConfig};
use capstan_core::store::{
    EmbeddedStore, EmbeddedStoreConfig, EncryptedStore, EncryptionKeys, MemoryStore, Store,
};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// A running control plane.
pub struct ControlPlane {
    /// The cluster CA (secure control planes).
    pub ca: Option<Arc<ClusterCa>>,
    /// The API server (in-process clients and informers come from it).
    pub server: ApiServer,
    /// Informers fed from the server's watch cache, shared by the scheduler, the controller
    /// manager and the in-process node's components, so each kind is cached once.
    pub informers: InformerFactory,
    /// The URL clients use (`https://…`, or `http://…` when insecure).
    pub url: String,
    serving: tokio::task::JoinHandle<std::io::Result<()>>,
    stop_serving: CancellationToken,
    /// Publishing this server in the `kubernetes` Service's endpoints (not when it listens on
    /// an unspecified address: it has none to publish).
    endpoints: Option<(CancellationToken, tokio::task::JoinHandle<()>)>,
    controllers: RunningControllers,
    scheduler: ElectedScheduler,
}

async fn open_store(args: &ControlPlaneArgs) -> Result<Arc<dyn Store>, String> {
    let etcd_endpoints = match args.store.strip_prefix("etcd://") {
        Some(hosts) => Some(hosts.split(',').map(|h| format!("http://{h}")).collect()),
        None if args.store == "etcd" => Some(args.etcd_endpoints.clone()),
        None => None,
    };
    if let Some(endpoints) = etcd_endpoints {
        return open_etcd(endpoints).await;
    }
    match args.store.as_str() {
        "embedded" => {
            let path = args.data_dir.join("store.redb");
            let store = EmbeddedStore::open(&path, EmbeddedStoreConfig::default())
                .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
            Ok(Arc::new(store))
        }
        "memory" => {
            eprintln!("warning: the memory store keeps nothing after exit");
            Ok(Arc::new(MemoryStore::new()))
        }
        other => Err(format!(
            "unknown store {other:?}: choose embedded, memory, etcd or etcd://HOST:PORT,..."
        )),
    }
}

/// Wraps the store so Secrets are encrypted at rest (see `--encryption-key-file`), and
/// re-encrypts those written under an older key or before encryption was on.
async fn encrypt_secrets(
    args: &ControlPlaneArgs,
    store: Arc<dyn Store>,
) -> Result<Arc<dyn Store>, String> {
    let keys = match &args.encryption_key_file {
        Some(path) => EncryptionKeys::from_file(path)
            .map_err(|e| format!("--encryption-key-file {}: {e}", path.display()))?,
        None if args.store == "embedded" => {
            let path = args.data_dir.join("secrets.key");
            EncryptionKeys::load_or_create(&path).map_err(|e| format!("{}: {e}", path.display()))?
        }
        None => return Ok(store),
    };
    let encrypted = EncryptedStore::new(store, keys);
    let rewritten = encrypted
        .rewrite()
        .await
        .map_err(|e| format!("cannot re-encrypt secrets: {e}"))?;
    if rewritten > 0 {
        println!("capstan: {rewritten} secrets re-encrypted with the current key");
    }
    Ok(Arc::new(encrypted))
}

#[cfg(feature = "etcd")]
async fn open_etcd(endpoints: Vec<String>) -> Result<Arc<dyn Store>, String> {
    let config = capstan_store_etcd::EtcdStoreConfig::new(endpoints);
    let store = capstan_store_etcd::EtcdStore::connect(config)
        .await
        .map_err(|e| format!("cannot connect to etcd: {e}"))?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "etcd"))]
async fn open_etcd(_endpoints: Vec<String>) -> Result<Arc<dyn Store>, String> {
    Err("this capstan was built without etcd support: rebuild with `--features etcd`".into())
}

/// A kubeconfig for the server at `server`: with the CA it trusts and a client certificate
/// when it is served over TLS.
fn kubeconfig(server: &str, tls: Option<(&str, &IssuedCertificate)>) -> String {
    use base64::Engine;
    let b64 = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
    let (cluster_extra, user) = match tls {
        Some((ca, client)) => (
            format!("\n    certificate-authority-data: {}", b64(ca)),
            format!(
                "\n    client-certificate-data: {}\n    client-key-data: {}",
                b64(&client.certificate_pem),
                b64(&client.key_pem)
            ),
        ),
        None => (String::new(), " {}".to_string()),
    };
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: capstan\n  cluster:\n    server: {server}{cluster_extra}\ncontexts:\n- name: capstan\n  context:\n    cluster: capstan\n    user: capstan-admin\n    namespace: default\ncurrent-context: capstan\nusers:\n- name: capstan-admin\n  user:{user}\n"
    )
}

/// How the API is served.
enum Serving {
    /// Plain HTTP, every request an administrator.
    Insecure,
    /// TLS with the cluster CA; authentication and RBAC.
    Secure {
        tls: TlsServing,
        ca_pem: String,
        admin: IssuedCertificate,
        ca: Arc<ClusterCa>,
    },
}

/// The names the serving certificate is valid for: loopback, the listen address, the
/// `kubernetes` Service's names and first address.
fn serving_names(address: &SocketAddr, service_cidr: &str) -> Vec<String> {
    let mut names: Vec<String> = [
        "localhost",
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
        "127.0.0.1",
        "::1",
    ]
    .iter()
    .map(|n| n.to_string())
    .collect();
    if !address.ip().is_unspecified() {
        names.push(address.ip().to_string());
    }
    if let Ok(ranges) = ServiceRanges::parse(service_cidr) {
        names.push(ranges.ipv4.first().to_string());
    }
    names.sort();
    names.dedup();
    names
}

fn secure_serving(args: &ControlPlaneArgs, address: &SocketAddr) -> Result<Serving, String> {
    let pki = args.data_dir.join("pki");
    let ca = ClusterCa::load_or_create(&pki).map_err(|e| format!("cluster CA: {e}"))?;
    let serving = ca
        .serving_certificate(&serving_names(address, &args.service_cidr))
        .map_err(|e| format!("serving certificate: {e}"))?;
    let admin = ca
        .client_certificate("capstan-admin", Some(MASTERS_GROUP))
        .map_err(|e| format!("admin certificate: {e}"))?;
    let tls = TlsServing::new(
        &serving.certificate_pem,
        &serving.key_pem,
        Some(ca.certificate_pem()),
    )
    .map_err(|e| format!("TLS: {e}"))?;
    Ok(Serving::Secure {
        tls,
        ca_pem: ca.certificate_pem().to_string(),
        admin,
        ca: Arc::new(ca),
    })
}

impl ControlPlane {
    /// Opens the store, serves the API on `args.listen` (loopback only unless
    /// `allow_remote`), writes `DATA_DIR/kubeconfig` and starts the controller manager (with
    /// node IPAM when `node_ipam`) and the scheduler as candidates named `identity`.
    pub async fn start(
        args: &ControlPlaneArgs,
        allow_remote: bool,
        node_ipam: bool,
        identity: &str,
    ) -> Result<ControlPlane, String> {
        let cluster_cidr = Ipv4Cidr::parse(&args.cluster_cidr)
            .ok_or_else(|| format!("--cluster-cidr {:?} is not an IPv4 CIDR", args.cluster_cidr))?;
        std::fs::create_dir_all(&args.data_dir)
            .map_err(|e| format!("cannot create {}: {e}", args.data_dir.display()))?;
        let listener = tokio::net::TcpListener::bind(&args.listen)
            .await
            .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
        let address = listener.local_addr().map_err(|e| e.to_string())?;
        let insecure = args.insecure_http || allow_remote;
        // Without authentication every request is an administrator's, so plain HTTP stays on
        // loopback unless the operator says the network is private.
        if insecure && !address.ip().is_loopback() && !allow_remote {
            return Err(format!(
                "refusing to serve plain HTTP on {address}: without authentication the API server listens on loopback addresses only (`capstan server --insecure-no-auth` overrides this on a private network)"
            ));
        }
        let mode = if insecure {
            Serving::Insecure
        } else {
            secure_serving(args, &address)?
        };
        let store = encrypt_secrets(args, open_store(args).await?).await?;
        let config = ApiConfig {
            advertise_address: address.to_string(),
            service_cidr: args.service_cidr.clone(),
            ..ApiConfig::default()
        };
        let mut builder = ApiServer::builder(store.clone()).config(config);
        if let Some(path) = &args.audit_log {
            let log = AuditLog::to_file(path)
                .map_err(|e| format!("--audit-log {}: {e}", path.display()))?;
            builder = builder.audit_log(Arc::new(log));
        }
        if let Serving::Secure { ca, .. } = &mode {
            let mut authenticators = AuthenticatorChain::new()
                .with(Arc::new(X509Authenticator))
                .with(Arc::new(BootstrapTokenAuthenticator::new(store.clone())));
            // Node agents of a secure cluster take calls only from the API server.
            let node_client = ca
                .client_certificate("capstan-apiserver", Some(MASTERS_GROUP))
                .map_err(|e| format!("node client certificate: {e}"))?;
            builder = builder
                .admission_plugin(Arc::new(NodeCertificateSigner::new(ca.clone())))
                .root_ca_certificate(ca.certificate_pem())
                .node_client_certificate(node_client.certificate_pem, node_client.key_pem);
            if let Some(path) = &args.token_auth_file {
                let tokens = TokenFileAuthenticator::from_file(path)
                    .map_err(|e| format!("--token-auth-file: {e}"))?;
                authenticators = authenticators.with(Arc::new(tokens));
            }
            let key = args.data_dir.join("pki").join("service-account.key");
            let tokens = Arc::new(
                ServiceAccountTokens::load_or_create(&key, store.clone())
                    .map_err(|e| format!("service account tokens: {e}"))?,
            );
            authenticators = authenticators.with(tokens.clone());
            builder = builder.service_account_tokens(tokens);
            let rbac = Arc::new(
                RbacAuthorizer::watching(store.clone())
                    .await
                    .map_err(|e| format!("RBAC: {e}"))?,
            );
            builder = builder
                .authenticator(Arc::new(authenticators))
                .authorizer(Arc::new(NodeAuthorizer::new(store, rbac.clone())))
                .admission_plugin(Arc::new(RbacEscalationCheck::new(rbac)))
                .admission_plugin(Arc::new(NodeRestriction));
        }
        let server = builder
            .build()
            .await
            .map_err(|e| format!("cannot start the API server: {e}"))?;
        // The kubeconfig exists before the "listening" line, so whoever waits for that line
        // can use it.
        let kubeconfig_path = args.data_dir.join("kubeconfig");
        let reachable = if address.ip().is_unspecified() {
            SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), address.port())
        } else {
            address
        };
        let (url, text) = match &mode {
            Serving::Insecure => {
                let url = format!("http://{reachable}");
                let text = kubeconfig(&url, None);
                (url, text)
            }
            Serving::Secure { ca_pem, admin, .. } => {
                let url = format!("https://{reachable}");
                let text = kubeconfig(&url, Some((ca_pem, admin)));
                (url, text)
            }
        };
        write_file(&kubeconfig_path, &text, true)
            .map_err(|e| format!("cannot write the kubeconfig: {e}"))?;
        let ca = match &mode {
            Serving::Secure { ca, .. } => Some(ca.clone()),
            Serving::Insecure => None,
        };
        let router = server.router();
        let stop_serving = CancellationToken::new();
        let serving = {
            let stop = stop_serving.clone();
            match mode {
                Serving::Insecure => tokio::spawn(async move {
                    axum::serve(listener, router)
                        .with_graceful_shutdown(async move { stop.cancelled().await })
                        .await
                }),
                Serving::Secure { tls, .. } => {
                    tokio::spawn(async move { serve_tls(listener, router, tls, stop).await })
                }
            }
        };
        println!(
            "capstan: API server listening on {url} (store: {})",
            args.store
        );
        let endpoints = if address.ip().is_unspecified() {
            None
        } else {
            let stop = CancellationToken::new();
            let task = server
                .publish_endpoints(EndpointsConfig::default(), stop.clone())
                .map_err(|e| format!("cannot publish the API server's endpoints: {e}"))?;
            Some((stop, task))
        };
        let informers = InformerFactory::in_process(&server);
        let controllers = ControllerManager::with_informers(
            &informers,
            ControllerManagerConfig {
                leader_election: Some(LeaderElectionConfig::new(
                    "kube-system",
                    CONTROLLER_MANAGER_LEASE,
                    identity,
                )),
                node_lifecycle: NodeLifecycleConfig {
                    grace_period: args.node_monitor_grace_period,
                },
                node_ipam: node_ipam.then(|| NodeIpamConfig {
                    cluster_cidr,
                    ..NodeIpamConfig::default()
                }),
                ..ControllerManagerConfig::default()
            },
        )
        .start();
        let ipam = if node_ipam {
            format!(", node IPAM from {cluster_cidr}")
        } else {
            String::new()
        };
        println!("capstan: controller manager started (replicasets, deployments, daemonsets, statefulsets, jobs, cronjobs, autoscalers, disruption budgets, garbage collector, endpoints, endpointslices, node lifecycle{ipam})");
        let scheduler =
            Scheduler::with_informers(&informers, SchedulerConfig::default()).start_elected(
                LeaderElectionConfig::new("kube-system", SCHEDULER_LEASE, identity),
            );
        println!("capstan: scheduler started (default profile)");
        Ok(ControlPlane {
            ca,
            server,
            informers,
            url,
            serving,
            stop_serving,
            endpoints,
            controllers,
            scheduler,
        })
    }

    /// The path of the kubeconfig this control plane wrote.
    pub fn kubeconfig_path(args: &ControlPlaneArgs) -> std::path::PathBuf {
        let path = args.data_dir.join("kubeconfig");
        std::fs::canonicalize(&path).unwrap_or(path)
    }

    /// Stops serving, then the scheduler and the controllers.
    pub async fn stop(self) -> Result<(), String> {
        if let Some((stop, task)) = self.endpoints {
            // Out of the kubernetes Service first, so no client is sent to a stopped server.
            stop.cancel();
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), task).await;
        }
        self.stop_serving.cancel();
        let served = self.serving.await;
        self.scheduler.stop().await;
        self.controllers.stop().await;
        self.informers.stop();
        served
            .map_err(|e| format!("server task failed: {e}"))?
            .map_err(|e| format!("server error: {e}"))
    }
}
