//! The API server: the Kubernetes REST API over any [`Store`](crate::store::Store), as an axum
//! router that is served over HTTP or called in-process as a `tower::Service`.
//!
//! Every request passes authentication and authorization, then is decoded, defaulted, admitted
//! (mutating then validating plugins), validated per kind and written through
//! [`ObjectStorage`]. The API server is the only component that touches the store; everything
//! else — scheduler, controllers, node agents, kubectl — goes through this API.

mod access_review;
mod admission;
mod audit;
mod auth;
mod body;
mod component_status;
mod crd;
mod discovery;
mod error;
mod events_v1;
mod eviction;
mod handler;
mod hpa_v1;
mod kubernetes_endpoints;
mod list;
mod local_watch;
mod managed_fields;
mod metrics;
mod node_proxy;
mod node_tls;
mod openapi;
mod pending_deliveries;
mod pod_binding;
mod port_forward;
mod protobuf;
mod protobuf_policy;
mod protobuf_rbac;
mod protobuf_workloads;
mod request;
mod selection;
mod self_subject_review;
mod service_ips;
mod spdy;
mod strategy;
mod table;
mod tls;
mod token_mount;
mod token_request;
mod version_view;
mod watch;
mod watch_cache;

pub use admission::{
    builtin_plugins, AdmissionPlugin, AdmissionRequest, CachedReads, DefaultTolerationSeconds,
    Operation, DEFAULT_TOLERATION_SECONDS,
};
pub use audit::{AuditLog, AuditRecord};
pub use auth::{AllowAll, Authenticator, Authorizer, InProcessUser, RequestAttributes, UserInfo};
pub use component_status::{CONTROLLER_MANAGER_LEASE, SCHEDULER_LEASE};
pub use error::{ApiError, Cause, ErrorDetails};
pub use kubernetes_endpoints::EndpointsConfig;
pub use local_watch::{LocalEvent, LocalWatch};
pub use request::{parse_path, Query, ResourcePath, Target};
pub use service_ips::{IpFamily, Ipv4Cidr, Ipv6Cidr, ServiceAllocator, ServiceRanges};
pub use tls::{serve_tls, ClientCertificate, TlsError, TlsServing};
pub use token_mount::{ServiceAccountTokenMount, ROOT_CA_CONFIG_MAP, SERVICE_ACCOUNT_MOUNT_PATH};

use crate::registry::Registry;
use crate::storage::{ObjectStorage, StorageError};
use crate::store::Store;
use serde_json::{json, Value};
use std::sync::{Arc, RwLock};

/// Settings of an [`ApiServer`].
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Ranges Service cluster IPs are allocated from: an IPv4 CIDR, and on a dual-stack
    /// cluster a comma and an IPv6 CIDR (see [`ServiceRanges`]).
    pub service_cidr: String,
    /// Inclusive range of Service node ports.
    pub node_port_range: (u16, u16),
    /// Largest request body accepted (413 beyond).
    pub max_body_bytes: usize,
    /// `host:port` advertised in discovery.
    pub advertise_address: String,
    /// Requests (other than watches) served at once; beyond it clients get 429 with
    /// `Retry-After` and retry.
    pub max_in_flight: usize,
    /// Events buffered per watcher before a slow watcher is closed.
    pub watch_buffer: usize,
    /// Recent events kept per kind for watch resumption from the cache.
    pub watch_history: usize,
    /// Longest a request other than a watch or stream may take (a request's `?timeout=` may
    /// shorten it); beyond it the client gets 504.
    pub request_timeout: std::time::Duration,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            service_cidr: "10.96.0.0/12".into(),
            node_port_range: (30000, 32767),
            max_body_bytes: 3 * 1024 * 1024,
            advertise_address: "127.0.0.1:6443".into(),
            max_in_flight: 400,
            watch_buffer: 1024,
            watch_history: 4096,
            request_timeout: std::time::Duration::from_secs(60),
        }
    }
}

/// Shared state behind the router.
pub(crate) struct ApiState {
    registry: RwLock<Arc<Registry>>,
    /// The kinds served without CustomResourceDefinitions (built-in and the builder's).
    base_registry: Arc<Registry>,
    definitions: crd::Definitions,
    storage: ObjectStorage,
    admission: Vec<Arc<dyn AdmissionPlugin>>,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    audit: Option<Arc<AuditLog>>,
    tokens: Option<Arc<crate::authn::ServiceAccountTokens>>,
    /// The cluster CA published to every namespace as `kube-root-ca.crt`.
    root_ca: Option<String>,
    services: ServiceAllocator,
    cache: watch_cache::WatchCache,
    in_flight: Arc<tokio::sync::Semaphore>,
    metrics: metrics::Metrics,
    background: std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    node_client: node_tls::NodeClient,
    /// Whether node agents are reached over HTTPS.
    node_https: bool,
    config: ApiConfig,
}

impl Drop for ApiState {
    fn drop(&mut self) {
        for task in self
            .background
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            task.abort();
        }
    }
}

impl ApiState {
    /// Keeps a background task so that it stops with the server.
    pub(crate) fn own_task(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = self.background.lock().unwrap_or_else(|p| p.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task);
    }

    /// `https` when node agents are reached over TLS, else `http`.
    pub(crate) fn node_scheme(&self) -> &'static str {
        if self.node_https {
            "https"
        } else {
            "http"
        }
    }

    /// A snapshot of the served kinds.
    pub(crate) fn registry(&self) -> Arc<Registry> {
        self.registry
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Builds an [`ApiServer`].
pub struct ApiServerBuilder {
    store: Arc<dyn Store>,
    registry: Registry,
    config: ApiConfig,
    admission: Vec<Arc<dyn AdmissionPlugin>>,
    authenticator: Arc<dyn Authenticator>,
    authorizer: Arc<dyn Authorizer>,
    audit: Option<Arc<AuditLog>>,
    tokens: Option<Arc<crate::authn::ServiceAccountTokens>>,
    root_ca: Option<String>,
    node_identity: Option<(String, String)>,
}

impl ApiServerBuilder {
    /// Reaches node agents over HTTPS presenting this client certificate and key (PEM),
    /// which agents of a secure cluster require; without it, plain HTTP.
    pub fn node_client_certificate(
        mut self,
        certificate_pem: impl Into<String>,
        key_pem: impl Into<String>,
    ) -> Self {
        self.node_identity = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// Publishes `ca_pem` in every namespace as the ConfigMap `kube-root-ca.crt` (key
    /// `ca.crt`), which in-cluster clients use to trust the server.
    pub fn root_ca_certificate(mut self, ca_pem: impl Into<String>) -> Self {
        self.root_ca = Some(ca_pem.into());
        self
    }

    /// Issues ServiceAccount tokens (the `serviceaccounts/token` subresource) with `tokens`
    /// and mounts them into new pods ([`ServiceAccountTokenMount`]); add the same to the
    /// authenticators so they are accepted.
    pub fn service_account_tokens(
        mut self,
        tokens: Arc<crate::authn::ServiceAccountTokens>,
    ) -> Self {
        self.tokens = Some(tokens);
        self.admission.push(Arc::new(ServiceAccountTokenMount));
        self
    }

    /// Records every request in `log`.
    pub fn audit_log(mut self, log: Arc<AuditLog>) -> Self {
        self.audit = Some(log);
        self
    }

    /// Replaces the settings.
    pub fn config(mut self, config: ApiConfig) -> Self {
        self.config = config;
        self
    }

    /// Replaces the served kinds (default: the built-ins).
    pub fn registry(mut self, registry: Registry) -> Self {
        self.registry = registry;
        self
    }

    /// Appends an admission plugin after the built-ins.
    pub fn admission_plugin(mut self, plugin: Arc<dyn AdmissionPlugin>) -> Self {
        self.admission.push(plugin);
        self
    }

    /// Replaces the authenticator (default: [`AllowAll`]).
    pub fn authenticator(mut self, authenticator: Arc<dyn Authenticator>) -> Self {
        self.authenticator = authenticator;
        self
    }

    /// Replaces the authorizer (default: [`AllowAll`]).
    pub fn authorizer(mut self, authorizer: Arc<dyn Authorizer>) -> Self {
        self.authorizer = authorizer;
        self
    }

    /// Builds the server and bootstraps what a cluster starts with: the `default`,
    /// `kube-system`, `kube-public` and `kube-node-lease` namespaces and the `kubernetes`
    /// Service.
    pub async fn build(self) -> Result<ApiServer, ApiError> {
        let ranges = ServiceRanges::parse(&self.config.service_cidr)
            .map_err(|err| ApiError::bad_request(format!("invalid service CIDR: {err}")))?;
        let services =
            ServiceAllocator::new(self.store.clone(), ranges, self.config.node_port_range);
        let storage = ObjectStorage::new(self.store);
        let base_registry = Arc::new(self.registry);
        let state = ApiState {
            registry: RwLock::new(base_registry.clone()),
            base_registry,
            definitions: crd::Definitions::default(),
            cache: watch_cache::WatchCache::new(
                storage.clone(),
                watch_cache::CacheConfig {
                    history: self.config.watch_history,
                    watcher_buffer: self.config.watch_buffer,
                },
            ),
            storage,
            in_flight: Arc::new(tokio::sync::Semaphore::new(
                self.config.max_in_flight.max(1),
            )),
            metrics: metrics::Metrics::default(),
            background: std::sync::Mutex::new(Vec::new()),
            admission: self.admission,
            authenticator: self.authenticator,
            authorizer: self.authorizer,
            audit: self.audit,
            tokens: self.tokens,
            root_ca: self.root_ca,
            services,
            node_client: node_tls::node_client(
                self.node_identity
                    .as_ref()
                    .map(|(c, k)| (c.as_str(), k.as_str())),
            )
            .map_err(|e| ApiError::internal(format!("node client: {e}")))?,
            node_https: self.node_identity.is_some(),
            config: self.config,
        };
        let server = ApiServer {
            state: Arc::new(state),
        };
        server.bootstrap().await?;
        Ok(server)
    }
}

/// The API server. Cloning shares it.
#[derive(Clone)]
pub struct ApiServer {
    state: Arc<ApiState>,
}

impl ApiServer {
    /// A builder over `store` with the built-in kinds, admission plugins and allow-all auth.
    pub fn builder(store: Arc<dyn Store>) -> ApiServerBuilder {
        ApiServerBuilder {
            store,
            registry: Registry::with_builtins(),
            config: ApiConfig::default(),
            admission: builtin_plugins(),
            authenticator: Arc::new(AllowAll),
            authorizer: Arc::new(AllowAll),
            audit: None,
            tokens: None,
            root_ca: None,
            node_identity: None,
        }
    }

    /// The axum router serving the whole API.
    pub fn router(&self) -> axum::Router {
        axum::Router::new()
            .fallback(handler::handle)
            .with_state(self.state.clone())
    }

    /// The typed storage behind the API (for embedders' tests and tools; components should use
    /// the API).
    pub fn storage(&self) -> &ObjectStorage {
        &self.state.storage
    }

    /// A snapshot of the served kinds.
    pub fn registry(&self) -> Arc<Registry> {
        self.state.registry()
    }

    /// Keeps the `default/kubernetes` Service's Endpoints and EndpointSlice pointing at the
    /// cluster's live API servers — this one, at `config.advertise_address`, among them — until
    /// `stop` fires, then takes this server out (kube-apiserver's lease endpoint reconciler).
    /// A server reachable over the network calls it once it listens; an embedded one need not.
    pub fn publish_endpoints(
        &self,
        config: EndpointsConfig,
        stop: tokio_util::sync::CancellationToken,
    ) -> Result<tokio::task::JoinHandle<()>, ApiError> {
        let address: std::net::SocketAddr =
            self.state.config.advertise_address.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "the advertise address {:?} is not an IP address and port",
                    self.state.config.advertise_address
                ))
            })?;
        Ok(tokio::spawn(kubernetes_endpoints::run(
            self.client(),
            address,
            config,
            stop,
        )))
    }

    async fn ensure(&self, plural: &str, group: &str, object: Value) -> Result<(), ApiError> {
        let registry = self.state.registry();
        let version = "v1";
        let kind = registry
            .get(group, version, plural)
            .ok_or_else(|| ApiError::internal(format!("{plural} are not served")))?;
        let mut object = object;
        strategy::apply_defaults(kind, &mut object);
        match self.state.storage.create(kind, object).await {
            Ok(_) | Err(StorageError::AlreadyExists { .. }) => Ok(()),
            Err(err) => Err(err.into()),
        }
    }

    async fn bootstrap(&self) -> Result<(), ApiError> {
        // The kinds of stored CustomResourceDefinitions are served from the start.
        crd::sync(&self.state).await;
        crd::start(&self.state);
        self.state.cache.start_all(self.state.registry().kinds());
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            self.ensure("namespaces", "", json!({"metadata": {"name": ns}}))
                .await?;
            self.ensure(
                "serviceaccounts",
                "",
                json!({"metadata": {"name": "default", "namespace": ns}}),
            )
            .await?;
        }
        for (plural, object) in crate::authz::default_policy() {
            self.ensure(plural, "rbac.authorization.k8s.io", object)
                .await?;
        }
        let registry = self.state.registry();
        // Namespaces left terminating by a previous run finish now.
        if let Some(namespaces) = registry.get("", "v1", "namespaces") {
            for ns in self
                .state
                .storage
                .list(namespaces, None, None, None, None)
                .await?
                .items
            {
                let name = ns
                    .pointer("/metadata/name")
                    .and_then(Value::as_str)
                    .unwrap_or_default();
                // Every namespace holds the cluster CA for in-cluster clients.
                if let Some(ca) = &self.state.root_ca {
                    self.ensure(
                        "configmaps",
                        "",
                        json!({"metadata": {"name": ROOT_CA_CONFIG_MAP, "namespace": name}, "data": {"ca.crt": ca}}),
                    )
                    .await?;
                }
                if ns.pointer("/status/phase").and_then(Value::as_str) == Some("Terminating") {
                    let name = name.to_string();
                    handler::finalize_namespace(self.state.clone(), registry.clone(), name);
                }
            }
        }
        if let Some(services) = registry.get("", "v1", "services") {
            if let Err(StorageError::NotFound { .. }) = self
                .state
                .storage
                .get(services, Some("default"), "kubernetes")
                .await
            {
                let first = self.state.services.ranges().ipv4.first().to_string();
                let mut service = json!({
                    "metadata": {"name": "kubernetes", "namespace": "default", "labels": {"component": "apiserver", "provider": "kubernetes"}},
                    "spec": {"clusterIP": first, "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
                });
                strategy::apply_defaults(services, &mut service);
                match self.state.services.allocate_for(&mut service).await {
                    Ok(()) => match self.state.storage.create(services, service).await {
                        Ok(_) | Err(StorageError::AlreadyExists { .. }) => {}
                        Err(err) => return Err(err.into()),
                    },
                    // Another API server holds the address and is creating the service.
                    Err(err) if err.code == 422 => {}
                    Err(err) => return Err(err),
                }
            }
        }
        Ok(())
    }
}

impl ApiServer {
    /// A `kube::Client` that calls this server in-process: the same router as over HTTP, used
    /// as a `tower::Service`, so any kube-rs code runs against an embedded control plane with
    /// identical semantics.
    ///
    /// Its requests are made as `system:admin` in `system:masters`.
    pub fn client(&self) -> kube::Client {
        self.client_as(UserInfo {
            name: "system:admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        })
    }

    /// Like [`client`](Self::client), with every request made as `user` (authorized as that
    /// user; no credential is checked, since only code in this process can call it).
    pub fn client_as(&self, user: UserInfo) -> kube::Client {
        use tower::ServiceExt;
        let router = self.router();
        let user = InProcessUser(user);
        let service = tower::service_fn(
            move |mut request: axum::http::Request<kube::client::Body>| {
                let router = router.clone();
                request.extensions_mut().insert(user.clone());
                async move { router.oneshot(request.map(axum::body::Body::new)).await }
            },
        );
        kube::Client::new(service, "default")
    }
}
