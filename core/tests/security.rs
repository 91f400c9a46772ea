//! Authorization and limits through the router: RBAC decisions for users and service accounts
//! as bindings change, the escalation check, 401 for requests nobody authenticated, and the
//! request timeout.

use async_trait::async_trait;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use capstan_core::apiserver::{ApiConfig, ApiServer, InProcessUser, UserInfo};
use capstan_core::authn::{AuthenticatorChain, TokenFileAuthenticator};
use capstan_core::authz::{RbacAuthorizer, RbacEscalationCheck};
use capstan_core::store::{
    KeyValue, LeaseId, ListOptions, ListPage, MemoryStore, Revision, Store, StoreError, WatchStream,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

async fn call(
    router: &axum::Router,
    user: Option<&UserInfo>,
    method: Method,
    uri: &str,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json");
    if let Some(user) = user {
        request = request.extension(InProcessUser(user.clone()));
    }
    let body = body.map_or_else(Vec::new, |b| serde_json::to_vec(&b).unwrap());
    let response = router
        .clone()
        .oneshot(request.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn user(name: &str, groups: &[&str]) -> UserInfo {
    UserInfo {
        name: name.into(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
    }
}

/// Retries until the status is `want` (RBAC changes arrive through a watch).
async fn eventually(router: &axum::Router, who: &UserInfo, uri: &str, want: StatusCode) {
    for _ in 0..100 {
        if call(router, Some(who), Method::GET, uri, None).await.0 == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("GET {uri} as {} never answered {want}", who.name);
}

#[tokio::test]
async fn rbac_follows_bindings_and_refuses_escalation() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let rbac = Arc::new(RbacAuthorizer::watching(store.clone()).await.unwrap());
    let tokens = TokenFileAuthenticator::parse("t1,jane,1\n").unwrap();
    let server = ApiServer::builder(store)
        .authenticator(Arc::new(AuthenticatorChain::new().with(Arc::new(tokens))))
        .authorizer(rbac.clone())
        .admission_plugin(Arc::new(RbacEscalationCheck::new(rbac)))
        .build()
        .await
        .unwrap();
    let router = server.router();
    let admin = user("admin", &["system:masters", "system:authenticated"]);
    let jane = user("jane", &["system:authenticated"]);
    let robot = user(
        "system:serviceaccount:default:robot",
        &["system:serviceaccounts", "system:authenticated"],
    );
    let pods = "/api/v1/namespaces/default/pods";

    // Nobody authenticated: 401 (the token file knows no such token; no token at all).
    let request = Request::builder()
        .uri(pods)
        .header("authorization", "Bearer nope")
        .body(Body::empty())
        .unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        call(&router, None, Method::GET, pods, None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        call(&router, None, Method::GET, "/healthz", None).await.0,
        StatusCode::OK
    );

    // Authenticated users get discovery and access reviews from the default policy.
    eventually(&router, &jane, "/api", StatusCode::OK).await;
    assert_eq!(
        call(&router, Some(&jane), Method::GET, "/metrics", None)
            .await
            .0,
        StatusCode::FORBIDDEN
    );
    let (status, denied) = call(&router, Some(&jane), Method::GET, pods, None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        denied["message"],
        "pods is forbidden: User \"jane\" cannot list resource \"pods\" in API group \"\" in the namespace \"default\""
    );
    let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {"verb": "list", "resource": "pods", "namespace": "default"}}});
    let (status, answer) = call(
        &router,
        Some(&jane),
        Method::POST,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Some(review.clone()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(answer["status"]["allowed"], false);

    // A Role and a RoleBinding for the user and a service account.
    let role = json!({"metadata": {"name": "pod-reader"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}]});
    call(
        &router,
        Some(&admin),
        Method::POST,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        Some(role),
    )
    .await;
    let binding = json!({"metadata": {"name": "readers"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pod-reader"},
        "subjects": [{"kind": "User", "name": "jane"}, {"kind": "ServiceAccount", "name": "robot"}]});
    let (status, _) = call(
        &router,
        Some(&admin),
        Method::POST,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        Some(binding),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    eventually(&router, &jane, pods, StatusCode::OK).await;
    eventually(&router, &robot, pods, StatusCode::OK).await;
    let (_, answer) = call(
        &router,
        Some(&jane),
        Method::POST,
        "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
        Some(review),
    )
    .await;
    assert_eq!(answer["status"]["allowed"], true);
    // What jane may do, per namespace (`kubectl auth can-i --list`).
    let rules_in = |namespace: &str| {
        let review = json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": namespace}});
        let router = router.clone();
        let jane = jane.clone();
        async move {
            let (status, answer) = call(
                &router,
                Some(&jane),
                Method::POST,
                "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
                Some(review),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{answer}");
            assert_eq!(answer["status"]["incomplete"], false);
            answer["status"].clone()
        }
    };
    let reads_pods = |status: &Value| {
        status["resourceRules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|rule| {
                rule["resources"] == json!(["pods"])
                    && rule["verbs"] == json!(["get", "list", "watch"])
            })
    };
    let in_default = rules_in("default").await;
    assert!(reads_pods(&in_default), "{in_default}");
    assert!(
        in_default["nonResourceRules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|rule| rule["nonResourceURLs"]
                .as_array()
                .unwrap()
                .contains(&json!("/api"))),
        "{in_default}"
    );
    let in_kube_system = rules_in("kube-system").await;
    assert!(!reads_pods(&in_kube_system), "{in_kube_system}");
    // Only in that namespace, only those verbs.
    assert_eq!(
        call(
            &router,
            Some(&jane),
            Method::GET,
            "/api/v1/namespaces/kube-system/pods",
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &router,
            Some(&jane),
            Method::DELETE,
            "/api/v1/namespaces/default/pods/x",
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(
            &router,
            Some(&jane),
            Method::GET,
            "/api/v1/namespaces/default/secrets",
            None
        )
        .await
        .0,
        StatusCode::FORBIDDEN
    );

    // Escalation: jane may write roles (granted below) but only with rules she holds.
    let writer = json!({"metadata": {"name": "role-writer"},
        "rules": [{"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles", "rolebindings"], "verbs": ["create"]}]});
    call(
        &router,
        Some(&admin),
        Method::POST,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles",
        Some(writer),
    )
    .await;
    let writer_binding = json!({"metadata": {"name": "writers"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "role-writer"},
        "subjects": [{"kind": "User", "name": "jane"}]});
    call(
        &router,
        Some(&admin),
        Method::POST,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        Some(writer_binding),
    )
    .await;
    let roles = "/apis/rbac.authorization.k8s.io/v1/namespaces/default/roles";
    let held = json!({"metadata": {"name": "held"}, "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}]});
    let mut created = StatusCode::FORBIDDEN;
    for _ in 0..100 {
        created = call(
            &router,
            Some(&jane),
            Method::POST,
            roles,
            Some(held.clone()),
        )
        .await
        .0;
        if created == StatusCode::CREATED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(created, StatusCode::CREATED);
    let more = json!({"metadata": {"name": "more"}, "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]});
    let (status, refused) = call(&router, Some(&jane), Method::POST, roles, Some(more)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert!(refused["message"]
        .as_str()
        .unwrap()
        .contains("not currently held"));
    let grab = json!({"metadata": {"name": "grab"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "User", "name": "jane"}]});
    let (status, _) = call(
        &router,
        Some(&jane),
        Method::POST,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings",
        Some(grab),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Nothing was written by the refused requests.
    let (_, listed) = call(&router, Some(&admin), Method::GET, roles, None).await;
    let names: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["held", "pod-reader", "role-writer"]);

    // Deleting the binding takes the access away again.
    call(
        &router,
        Some(&admin),
        Method::DELETE,
        "/apis/rbac.authorization.k8s.io/v1/namespaces/default/rolebindings/readers",
        None,
    )
    .await;
    eventually(&router, &jane, pods, StatusCode::FORBIDDEN).await;
}

/// A store whose listings take two seconds.
struct SlowLists(MemoryStore);

#[async_trait]
impl Store for SlowLists {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>, StoreError> {
        self.0.get(key).await
    }
    async fn list(&self, prefix: &str, options: ListOptions) -> Result<ListPage, StoreError> {
        if prefix.starts_with("/core/configmaps/") {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        self.0.list(prefix, options).await
    }
    async fn create(
        &self,
        key: &str,
        value: bytes::Bytes,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue, StoreError> {
        self.0.create(key, value, lease).await
    }
    async fn update(
        &self,
        key: &str,
        value: bytes::Bytes,
        expected: Revision,
        lease: Option<LeaseId>,
    ) -> Result<KeyValue, StoreError> {
        self.0.update(key, value, expected, lease).await
    }
    async fn delete(&self, key: &str, expected: Option<Revision>) -> Result<KeyValue, StoreError> {
        self.0.delete(key, expected).await
    }
    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream, StoreError> {
        self.0.watch(prefix, after).await
    }
    async fn current_revision(&self) -> Result<Revision, StoreError> {
        self.0.current_revision().await
    }
    async fn compact(&self, revision: Revision) -> Result<(), StoreError> {
        self.0.compact(revision).await
    }
    async fn grant_lease(&self, ttl: Duration) -> Result<LeaseId, StoreError> {
        self.0.grant_lease(ttl).await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<Duration, StoreError> {
        self.0.keep_alive(lease).await
    }
    async fn revoke_lease(&self, lease: LeaseId) -> Result<(), StoreError> {
        self.0.revoke_lease(lease).await
    }
}

#[tokio::test]
async fn slow_requests_time_out_with_504() {
    let server = ApiServer::builder(Arc::new(SlowLists(MemoryStore::new())))
        .config(ApiConfig {
            request_timeout: Duration::from_millis(500),
            ..ApiConfig::default()
        })
        .build()
        .await
        .unwrap();
    let router = server.router();
    // A consistent list (resourceVersion unset) reads the store.
    let started = std::time::Instant::now();
    let (status, body) = call(
        &router,
        None,
        Method::GET,
        "/api/v1/namespaces/default/configmaps?timeout=100ms",
        None,
    )
    .await;
    assert_eq!(status, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["reason"], "Timeout");
    assert!(started.elapsed() < Duration::from_secs(1));
    let (status, _) = call(
        &router,
        None,
        Method::GET,
        "/api/v1/namespaces/default/configmaps?timeout=10s",
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::GATEWAY_TIMEOUT,
        "the server's limit caps the client's"
    );
    // Fast requests are unaffected.
    assert_eq!(
        call(
            &router,
            None,
            Method::GET,
            "/api/v1/namespaces/default",
            None
        )
        .await
        .0,
        StatusCode::OK
    );
}

mod decoding {
    //! Bounded fuzzing of the request decoding paths through the router: arbitrary bytes as
    //! JSON, YAML, protobuf and every patch type, arbitrary label and field selectors. Every
    //! answer is a status, never a panic or a server error, and nothing bad is stored.
    use super::call;
    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use capstan_core::apiserver::ApiServer;
    use capstan_core::store::MemoryStore;
    use proptest::prelude::*;
    use serde_json::json;
    use std::sync::Arc;
    use tower::ServiceExt;

    const CONTENT_TYPES: &[&str] = &[
        "application/json",
        "application/yaml",
        "application/vnd.kubernetes.protobuf",
        "application/merge-patch+json",
        "application/json-patch+json",
        "application/strategic-merge-patch+json",
        "application/apply-patch+yaml",
    ];

    fn body() -> impl Strategy<Value = Vec<u8>> {
        let prefix = prop_oneof![
            Just(Vec::new()),
            Just(b"k8s\0".to_vec()),
            Just(b"{\"apiVersion\":\"v1\",\"kind\":\"ConfigMap\",\"metadata\":".to_vec()),
            Just(b"apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: ".to_vec()),
            Just(b"[{\"op\":\"".to_vec()),
        ];
        (prefix, proptest::collection::vec(any::<u8>(), 0..256)).prop_map(|(mut p, rest)| {
            p.extend(rest);
            p
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
        #[test]
        fn arbitrary_bodies_and_selectors_get_statuses(
            bytes in body(),
            content_type in 0..CONTENT_TYPES.len(),
            selector in "\\PC{0,40}",
        ) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                let server = ApiServer::builder(Arc::new(MemoryStore::new())).build().await.unwrap();
                let router = server.router();
                let base = "/api/v1/namespaces/default/configmaps";
                call(&router, None, Method::POST, base, Some(json!({"metadata": {"name": "seed"}, "data": {"a": "1"}}))).await;
                let content_type = CONTENT_TYPES[content_type];
                for (method, uri) in [(Method::POST, base.to_string()), (Method::PATCH, format!("{base}/seed?fieldManager=fuzz")), (Method::PUT, format!("{base}/seed"))] {
                    let request = Request::builder()
                        .method(method.clone())
                        .uri(&uri)
                        .header("content-type", content_type)
                        .body(Body::from(bytes.clone()))
                        .unwrap();
                    let status = router.clone().oneshot(request).await.unwrap().status();
                    prop_assert!(!status.is_server_error(), "{method} {uri} as {content_type}: {status}");
                }
                let encoded: String = url_escape(&selector);
                for key in ["labelSelector", "fieldSelector"] {
                    let (status, _) = call(&router, None, Method::GET, &format!("{base}?{key}={encoded}"), None).await;
                    prop_assert!(status == StatusCode::OK || status == StatusCode::BAD_REQUEST, "{key}={selector:?}: {status}");
                }
                // The seed is still a well-formed ConfigMap.
                let (status, seed) = call(&router, None, Method::GET, &format!("{base}/seed"), None).await;
                prop_assert_eq!(status, StatusCode::OK);
                prop_assert_eq!(&seed["kind"], "ConfigMap");
                Ok(())
            })?;
        }
    }

    fn url_escape(text: &str) -> String {
        text.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                    (b as char).to_string()
                }
                other => format!("%{other:02X}"),
            })
            .collect()
    }
}
