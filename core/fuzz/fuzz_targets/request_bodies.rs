//! Fuzzes the API server's request decoding through its router: the first byte picks a resource,
//! a method and a content type (JSON, YAML, protobuf, the three patch types, apply YAML), the
//! rest is the body. Every answer is a client-facing status, never a panic or a server error, and
//! the seeded object stays readable.
#![no_main]

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use capstan_core::apiserver::ApiServer;
use capstan_core::store::MemoryStore;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};
use tokio::runtime::Runtime;
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

/// Collections fuzzed, each with an object named `seed` created at start.
const COLLECTIONS: &[(&str, &str)] = &[
    (
        "/api/v1/namespaces/default/configmaps",
        r#"{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"seed"},"data":{"a":"1"}}"#,
    ),
    (
        "/api/v1/namespaces/default/pods",
        r#"{"apiVersion":"v1","kind":"Pod","metadata":{"name":"seed","labels":{"app":"web"}},"spec":{"containers":[{"name":"c","image":"busybox","ports":[{"containerPort":80}]}]}}"#,
    ),
    (
        "/apis/apps/v1/namespaces/default/deployments",
        r#"{"apiVersion":"apps/v1","kind":"Deployment","metadata":{"name":"seed"},"spec":{"selector":{"matchLabels":{"app":"web"}},"template":{"metadata":{"labels":{"app":"web"}},"spec":{"containers":[{"name":"c","image":"busybox"}]}}}}"#,
    ),
];

struct Server {
    runtime: Runtime,
    router: axum::Router,
}

fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime");
        let router = runtime.block_on(async {
            let server = ApiServer::builder(Arc::new(MemoryStore::new()))
                .build()
                .await
                .expect("an API server");
            let router = server.router();
            for (collection, seed) in COLLECTIONS {
                let (status, _) = send(
                    &router,
                    Method::POST,
                    collection,
                    "application/json",
                    seed.as_bytes().to_vec(),
                )
                .await;
                assert_eq!(status, StatusCode::CREATED, "seeding {collection}");
            }
            router
        });
        Server { runtime, router }
    })
}

async fn send(
    router: &axum::Router,
    method: Method,
    uri: &str,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Vec<u8>) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", content_type)
        .body(Body::from(body))
        .expect("a request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("a body");
    (status, body.to_vec())
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let pick = usize::from(pick);
    let (collection, _) = COLLECTIONS[pick % COLLECTIONS.len()];
    let content_type = CONTENT_TYPES[(pick / COLLECTIONS.len()) % CONTENT_TYPES.len()];
    let seed = format!("{collection}/seed");
    let (method, uri) = match pick / (COLLECTIONS.len() * CONTENT_TYPES.len()) % 3 {
        0 => (Method::POST, collection.to_string()),
        1 => (Method::PUT, seed.clone()),
        _ => (Method::PATCH, format!("{seed}?fieldManager=fuzz")),
    };
    let server = server();
    server.runtime.block_on(async {
        let (status, answer) = send(
            &server.router,
            method.clone(),
            &uri,
            content_type,
            body.to_vec(),
        )
        .await;
        assert!(
            !status.is_server_error(),
            "{method} {uri} as {content_type}: {status} {}",
            String::from_utf8_lossy(&answer)
        );
        let (status, answer) = send(
            &server.router,
            Method::GET,
            &seed,
            "application/json",
            Vec::new(),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            String::from_utf8_lossy(&answer)
        );
        let object: serde_json::Value = serde_json::from_slice(&answer).expect("the seed as JSON");
        assert_eq!(object["metadata"]["name"], "seed");
    });
});
