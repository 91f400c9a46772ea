//! The API server through its router (the same tower::Service served over HTTP): error
//! statuses, paging, watch semantics, services, deletion, subresources, discovery, tables, and
//! proptests of merge patch and watch resumption.

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use capstan_core::apiserver::ApiServer;
use capstan_core::store::memory::MemoryStoreConfig;
use capstan_core::store::{MemoryStore, Store};
use futures::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

pub(crate) struct Api {
    router: axum::Router,
    store: Arc<dyn Store>,
}

pub(crate) async fn api() -> Api {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::with_config(MemoryStoreConfig {
        progress_interval: Duration::from_millis(200),
        ..Default::default()
    }));
    // A kind without a Rust type keeps arbitrary fields, for patch tests over free-form data.
    let mut registry = capstan_core::registry::Registry::with_builtins();
    registry
        .register(capstan_core::registry::ResourceKind::new(
            "example.com",
            "v1",
            "Document",
            "documents",
            true,
        ))
        .unwrap();
    let server = ApiServer::builder(store.clone())
        .registry(registry)
        .build()
        .await
        .unwrap();
    Api {
        router: server.router(),
        store,
    }
}

impl Api {
    pub(crate) async fn raw(
        &self,
        method: Method,
        uri: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
        accept: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(ct) = content_type {
            request = request.header("content-type", ct);
        }
        if let Some(accept) = accept {
            request = request.header("accept", accept);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, headers, bytes.to_vec())
    }

    pub(crate) async fn call(
        &self,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.send(method, uri, "application/json", body).await
    }

    pub(crate) async fn send(
        &self,
        method: Method,
        uri: &str,
        content_type: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let bytes = body
            .map(|b| serde_json::to_vec(&b).unwrap())
            .unwrap_or_default();
        let (status, _, bytes) = self.raw(method, uri, Some(content_type), bytes, None).await;
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    pub(crate) async fn ok(&self, method: Method, uri: &str, body: Option<Value>) -> Value {
        let (status, value) = self.call(method.clone(), uri, body).await;
        assert!(status.is_success(), "{method} {uri}: {status} {value}");
        value
    }

    /// Opens a watch and returns its event stream.
    pub(crate) async fn watch(&self, uri: &str) -> futures::stream::BoxStream<'static, Value> {
        let request = Request::builder().uri(uri).body(Body::empty()).unwrap();
        let response = self.router.clone().oneshot(request).await.unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let mut buffer = Vec::new();
        response
            .into_body()
            .into_data_stream()
            .flat_map(move |chunk| {
                buffer.extend_from_slice(&chunk.unwrap());
                let mut lines = Vec::new();
                while let Some(pos) = buffer.iter().position(|b| *b == b'\n') {
                    let line: Vec<u8> = buffer.drain(..=pos).collect();
                    lines.push(serde_json::from_slice::<Value>(&line).unwrap());
                }
                futures::stream::iter(lines)
            })
            .boxed()
    }
}

pub(crate) async fn next_event(stream: &mut futures::stream::BoxStream<'static, Value>) -> Value {
    loop {
        let event = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .expect("event in time")
            .expect("stream open");
        if event["type"] != "BOOKMARK" {
            return event;
        }
    }
}

fn cm(name: &str, labels: Value) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "labels": labels}, "data": {"k": "v"}})
}

fn pod(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": {"containers": [{"name": "main", "image": "busybox:1.36"}]}})
}

#[tokio::test]
async fn bad_input_gets_a_status_and_changes_nothing() {
    let api = api().await;
    let before = api.store.current_revision().await.unwrap();
    let (status, body) = api.call(Method::GET, "/api/v1/nothings", None).await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (404, Some("NotFound"))
    );
    let (status, _, body) = api
        .raw(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some("application/xml"),
            b"<x/>".to_vec(),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 415, "{}", String::from_utf8_lossy(&body));
    let huge = vec![b' '; 4 * 1024 * 1024];
    let (status, _, _) = api
        .raw(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            None,
            huge,
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 413);
    let (status, _, body) = api
        .raw(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            None,
            b"{not json".to_vec(),
            None,
        )
        .await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (400, Some("BadRequest"))
    );
    let (status, _) = api
        .call(Method::GET, "/api/v1/pods?watch=maybe", None)
        .await;
    assert_eq!(status.as_u16(), 400);
    let (status, body) = api
        .call(
            Method::GET,
            "/api/v1/pods?fieldSelector=spec.bogus%3Dx",
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 400);
    assert!(body["message"].as_str().unwrap().contains("spec.bogus"));
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/nope/configmaps",
            Some(cm("a", json!({}))),
        )
        .await;
    assert_eq!(status.as_u16(), 404, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("namespaces \"nope\" not found"));
    let mut mismatched = cm("a", json!({}));
    mismatched["metadata"]["namespace"] = json!("kube-system");
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(mismatched),
        )
        .await;
    assert_eq!(status.as_u16(), 400);
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}})),
        )
        .await;
    assert_eq!(status.as_u16(), 400);
    let (status, body) = api.call(Method::POST, "/api/v1/namespaces/default/pods", Some(json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "Bad_Name", "image": ""}]}}))).await;
    assert_eq!(status.as_u16(), 422);
    let fields: Vec<&str> = body["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert!(
        fields.contains(&"spec.containers[0].name") && fields.contains(&"spec.containers[0].image"),
        "{fields:?}"
    );
    assert_eq!(body["details"]["kind"], "Pod");
    let wrong_type = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i", "ports": [{"containerPort": "eighty"}]}]}});
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(wrong_type),
        )
        .await;
    assert_eq!(status.as_u16(), 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("spec.containers[0].ports[0].containerPort"),
        "{body}"
    );
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps?dryRun=All",
            Some(cm("dry", json!({}))),
        )
        .await;
    assert_eq!(status.as_u16(), 201, "{body}");
    let (status, _) = api
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/dry",
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 404, "dry run stores nothing");
    assert_eq!(
        api.store.current_revision().await.unwrap(),
        before,
        "no bad request changed the store"
    );

    api.ok(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(cm("a", json!({}))),
    )
    .await;
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(cm("a", json!({}))),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (409, Some("AlreadyExists"))
    );
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/namespaces/default/configmaps/other",
            Some(cm("a", json!({}))),
        )
        .await;
    assert_eq!(status.as_u16(), 400, "name in body and URL differ");
    // More than 1 MiB of data in a Secret (decoded) or a ConfigMap: refused, nothing stored.
    let decoded_over = "QUFB".repeat(1024 * 1024 / 3 + 1);
    let text_over = "a".repeat(1024 * 1024);
    for (collection, object, field) in [
        (
            "secrets",
            json!({"metadata": {"name": "big"}, "data": {"k": decoded_over}}),
            "data",
        ),
        (
            "configmaps",
            json!({"metadata": {"name": "big"}, "data": {"k": text_over}}),
            "[]",
        ),
    ] {
        let uri = format!("/api/v1/namespaces/default/{collection}");
        let (status, body) = api.call(Method::POST, &uri, Some(object)).await;
        assert_eq!(status.as_u16(), 422, "{body}");
        let cause = &body["details"]["causes"][0];
        assert_eq!(
            (cause["reason"].as_str(), cause["field"].as_str()),
            (Some("FieldValueTooLong"), Some(field)),
            "{body}"
        );
        let (status, _) = api.call(Method::GET, &format!("{uri}/big"), None).await;
        assert_eq!(status.as_u16(), 404);
    }
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/secrets",
            Some(json!({"metadata": {"name": "big"}, "data": {"k": "QUFB".repeat(1024 * 1024 / 3 - 100)}})),
        )
        .await;
    assert_eq!(status.as_u16(), 201, "just under 1 MiB decoded");
    let mut stale = cm("a", json!({}));
    stale["metadata"]["resourceVersion"] = json!("1");
    let (status, body) = api
        .call(
            Method::PUT,
            "/api/v1/namespaces/default/configmaps/a",
            Some(stale),
        )
        .await;
    assert_eq!(
        (status.as_u16(), body["reason"].as_str()),
        (409, Some("Conflict"))
    );
}

/// Admission lookups and bindings start from the watch cache, which trails storage by the
/// writes in flight: a namespace created a moment ago is found (storage is asked before a
/// namespace is reported missing), and a binding from a stale cached pod neither loses the write
/// the cache has not seen nor binds a pod twice.
#[tokio::test]
async fn reads_through_the_watch_cache_never_act_on_a_stale_copy() {
    let api = api().await;
    for i in 0..20 {
        let namespace = format!("fresh-{i}");
        api.ok(
            Method::POST,
            "/api/v1/namespaces",
            Some(json!({"metadata": {"name": namespace}})),
        )
        .await;
        // Straight after the namespace: the cache has most likely not applied it yet.
        api.ok(
            Method::POST,
            &format!("/api/v1/namespaces/{namespace}/pods"),
            Some(pod("p")),
        )
        .await;
        let pod_uri = format!("/api/v1/namespaces/{namespace}/pods/p");
        let (status, body) = api
            .send(
                Method::PATCH,
                &pod_uri,
                "application/merge-patch+json",
                Some(json!({"metadata": {"annotations": {"written": format!("{i}")}}})),
            )
            .await;
        assert!(status.is_success(), "{status} {body}");
        // Two bindings at once, from a cache that may not hold the annotation yet.
        let binding_uri = format!("/api/v1/namespaces/{namespace}/pods/p/binding");
        let bind = |node: &'static str| {
            api.call(
                Method::POST,
                &binding_uri,
                Some(json!({"target": {"kind": "Node", "name": node}})),
            )
        };
        let ((first, _), (second, _)) = tokio::join!(bind("n1"), bind("n2"));
        let mut codes = [first.as_u16(), second.as_u16()];
        codes.sort();
        assert_eq!(codes, [201, 409], "exactly one binding wins");
        let bound = api.ok(Method::GET, &pod_uri, None).await;
        assert!(
            matches!(bound["spec"]["nodeName"].as_str(), Some("n1" | "n2")),
            "{bound}"
        );
        assert_eq!(
            bound["metadata"]["annotations"]["written"],
            format!("{i}"),
            "the write before the binding is kept"
        );
    }
    // A namespace that does not exist is still refused.
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/never-made/pods",
            Some(pod("p")),
        )
        .await;
    assert_eq!(status.as_u16(), 404);
}

#[tokio::test]
async fn lists_page_consistently_and_select() {
    let api = api().await;
    for i in 0..7 {
        api.ok(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(cm(
                &format!("c{i}"),
                json!({"n": if i % 2 == 0 { "even" } else { "odd" }}),
            )),
        )
        .await;
    }
    let first = api
        .ok(
            Method::GET,
            "/api/v1/namespaces/default/configmaps?limit=3",
            None,
        )
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let mut names: Vec<String> = first["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let mut token = first["metadata"]["continue"].as_str().map(str::to_string);
    api.ok(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(cm("c9-late", json!({}))),
    )
    .await;
    while let Some(t) = token {
        let page = api
            .ok(
                Method::GET,
                &format!("/api/v1/namespaces/default/configmaps?limit=3&continue={t}"),
                None,
            )
            .await;
        assert_eq!(
            page["metadata"]["resourceVersion"],
            first["metadata"]["resourceVersion"]
        );
        names.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|i| i["metadata"]["name"].as_str().unwrap().to_string()),
        );
        token = page["metadata"]["continue"].as_str().map(str::to_string);
    }
    assert_eq!(
        names,
        ["c0", "c1", "c2", "c3", "c4", "c5", "c6"],
        "one consistent snapshot, no late object"
    );
    let odd = api
        .ok(
            Method::GET,
            "/api/v1/namespaces/default/configmaps?labelSelector=n%3Dodd&limit=2",
            None,
        )
        .await;
    assert_eq!(odd["items"].as_array().unwrap().len(), 2);
    assert!(odd["metadata"]["continue"].is_string());
    let all = api
        .ok(
            Method::GET,
            "/api/v1/configmaps?fieldSelector=metadata.name%3Dc3",
            None,
        )
        .await;
    assert_eq!(all["items"][0]["metadata"]["namespace"], "default");
    let (status, _) = api
        .call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps?limit=3&continue=zzzz",
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 400);
}

#[tokio::test]
async fn watches_resume_select_bookmark_and_expire() {
    let api = api().await;
    let listed = api
        .ok(Method::GET, "/api/v1/namespaces/default/configmaps", None)
        .await;
    let rv = listed["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    api.ok(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(cm("w1", json!({"app": "x"}))),
    )
    .await;
    let mut from_rv = api.watch(&format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&labelSelector=app%3Dx&allowWatchBookmarks=true")).await;
    let added = next_event(&mut from_rv).await;
    assert_eq!(
        (
            added["type"].as_str(),
            added["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("w1"))
    );
    // Leaving the selection is a DELETED for this watcher.
    let _ = api
        .send(
            Method::PATCH,
            "/api/v1/namespaces/default/configmaps/w1",
            "application/merge-patch+json",
            Some(json!({"metadata": {"labels": {"app": "y"}}})),
        )
        .await;
    let left = next_event(&mut from_rv).await;
    assert_eq!(left["type"], "DELETED");
    // A bookmark arrives on a quiet watch.
    let bookmark = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let e = from_rv.next().await.unwrap();
            if e["type"] == "BOOKMARK" {
                return e;
            }
        }
    })
    .await
    .unwrap();
    assert!(bookmark["object"]["metadata"]["resourceVersion"].is_string());
    // No resourceVersion: synthetic ADDED for what exists.
    let mut fresh = api
        .watch("/api/v1/namespaces/default/configmaps?watch=1")
        .await;
    assert_eq!(next_event(&mut fresh).await["type"], "ADDED");
    // timeoutSeconds ends the stream.
    let mut short = api.watch(&format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={rv}&timeoutSeconds=1")).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while short.next().await.is_some() {}
    })
    .await;
    assert!(ended.is_ok(), "the watch must end after timeoutSeconds");
    // Compacted history is a 410 ERROR event.
    let current = api.store.current_revision().await.unwrap();
    api.store.compact(current).await.unwrap();
    let mut old = api
        .watch("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion=1")
        .await;
    let error = next_event(&mut old).await;
    assert_eq!(
        (error["type"].as_str(), error["object"]["code"].as_i64()),
        (Some("ERROR"), Some(410))
    );
}

#[tokio::test]
async fn services_get_unique_addresses_that_are_released() {
    let api = api().await;
    let svc = |name: &str, extra: Value| {
        let mut s = json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name}, "spec": {"selector": {"app": name}, "ports": [{"port": 80}]}});
        json_patch::merge(&mut s, &extra);
        s
    };
    let kubernetes = api
        .ok(
            Method::GET,
            "/api/v1/namespaces/default/services/kubernetes",
            None,
        )
        .await;
    assert_eq!(kubernetes["spec"]["clusterIP"], "10.96.0.1");
    let a = api
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(svc("a", json!({}))),
        )
        .await;
    let b = api
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(svc("b", json!({}))),
        )
        .await;
    let (ip_a, ip_b) = (
        a["spec"]["clusterIP"].as_str().unwrap(),
        b["spec"]["clusterIP"].as_str().unwrap(),
    );
    assert_ne!(ip_a, ip_b);
    assert!(ip_a.starts_with("10.") && a["spec"]["ports"][0]["targetPort"] == 80);
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(svc("c", json!({"spec": {"clusterIP": ip_a}}))),
        )
        .await;
    assert_eq!(status.as_u16(), 422, "{body}");
    assert!(body["message"]
        .as_str()
        .unwrap()
        .contains("already allocated"));
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(svc("c", json!({"spec": {"clusterIP": "192.168.1.1"}}))),
        )
        .await;
    assert_eq!(status.as_u16(), 422);
    let headless = api
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(svc("h", json!({"spec": {"clusterIP": "None"}}))),
        )
        .await;
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let np = api
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(svc("np", json!({"spec": {"type": "NodePort"}}))),
        )
        .await;
    let port = np["spec"]["ports"][0]["nodePort"].as_i64().unwrap();
    assert!((30000..=32767).contains(&port));
    let ext = api.ok(Method::POST, "/api/v1/namespaces/default/services", Some(json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "example.invalid"}}))).await;
    assert!(ext["spec"].get("clusterIP").is_none());
    api.ok(
        Method::DELETE,
        "/api/v1/namespaces/default/services/a",
        None,
    )
    .await;
    let again = api
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(svc("c", json!({"spec": {"clusterIP": ip_a}}))),
        )
        .await;
    assert_eq!(
        again["spec"]["clusterIP"], ip_a,
        "a released address can be claimed again"
    );

    // Dual-stack fields on this IPv4-only cluster: preferring dual-stack settles on IPv4;
    // requiring it, or IPv6 first, is refused with the field and changes nothing.
    let prefer = api
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/services",
            Some(svc(
                "prefer",
                json!({"spec": {"ipFamilyPolicy": "PreferDualStack", "ipFamilies": ["IPv4", "IPv6"]}}),
            )),
        )
        .await;
    assert_eq!(prefer["spec"]["ipFamilies"], json!(["IPv4"]));
    assert_eq!(prefer["spec"]["ipFamilyPolicy"], "PreferDualStack");
    assert_eq!(
        prefer["spec"]["clusterIPs"].as_array().map(Vec::len),
        Some(1)
    );
    for (name, spec, field) in [
        (
            "require",
            json!({"ipFamilyPolicy": "RequireDualStack", "ipFamilies": ["IPv4", "IPv6"]}),
            "spec.ipFamilyPolicy",
        ),
        ("six", json!({"ipFamilies": ["IPv6"]}), "spec.ipFamilies[0]"),
        (
            "two",
            json!({"ipFamilyPolicy": "SingleStack", "ipFamilies": ["IPv4", "IPv6"]}),
            "spec.ipFamilies",
        ),
        ("odd", json!({"ipFamilies": ["IPv5"]}), "spec.ipFamilies[0]"),
    ] {
        let (status, body) = api
            .call(
                Method::POST,
                "/api/v1/namespaces/default/services",
                Some(svc(name, json!({ "spec": spec }))),
            )
            .await;
        assert_eq!(status.as_u16(), 422, "{name}: {body}");
        assert_eq!(
            body["details"]["causes"][0]["field"], field,
            "{name}: {body}"
        );
        let (status, _) = api
            .call(
                Method::GET,
                &format!("/api/v1/namespaces/default/services/{name}"),
                None,
            )
            .await;
        assert_eq!(status.as_u16(), 404, "{name} was not created");
    }
}

#[tokio::test]
async fn deletion_honours_grace_finalizers_and_preconditions() {
    let api = api().await;
    // An unscheduled pod goes at once.
    api.ok(
        Method::POST,
        "/api/v1/namespaces/default/pods",
        Some(pod("free")),
    )
    .await;
    api.ok(Method::DELETE, "/api/v1/namespaces/default/pods/free", None)
        .await;
    assert_eq!(
        api.call(Method::GET, "/api/v1/namespaces/default/pods/free", None)
            .await
            .0
            .as_u16(),
        404
    );
    // A scheduled pod is deleted gracefully; grace 0 finishes it.
    api.ok(
        Method::POST,
        "/api/v1/namespaces/default/pods",
        Some(pod("bound")),
    )
    .await;
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/pods/bound/binding",
            Some(json!({"target": {"kind": "Pod", "name": "n1"}})),
        )
        .await;
    assert_eq!(status.as_u16(), 422, "{body}");
    assert_eq!(
        body["details"]["causes"][0]["field"], "target.kind",
        "{body}"
    );
    let before = api
        .ok(Method::GET, "/api/v1/namespaces/default/pods/bound", None)
        .await;
    api.ok(Method::POST, "/api/v1/namespaces/default/pods/bound/binding", Some(json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": "bound"}, "target": {"kind": "Node", "name": "n1"}}))).await;
    // The binding sets the node and the PodScheduled condition and nothing else.
    let after = api
        .ok(Method::GET, "/api/v1/namespaces/default/pods/bound", None)
        .await;
    assert_eq!(after["spec"]["nodeName"], "n1");
    let scheduled = after["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == "PodScheduled"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(scheduled["status"], "True", "{after}");
    assert_eq!(
        after["metadata"]["managedFields"], before["metadata"]["managedFields"],
        "a binding is no field manager's write"
    );
    assert_ne!(
        after["metadata"]["resourceVersion"],
        before["metadata"]["resourceVersion"]
    );
    assert_eq!(
        after["metadata"]["generation"].as_i64(),
        before["metadata"]["generation"].as_i64().map(|g| g + 1),
        "setting the node changes the spec: {after}"
    );
    // Apart from those, the pod is exactly what it was.
    let rest = |pod: &serde_json::Value| {
        let mut pod = pod.clone();
        for pointer in ["/metadata", "/spec", "/status"] {
            let Some(map) = pod.pointer_mut(pointer).and_then(|v| v.as_object_mut()) else {
                continue;
            };
            for field in ["resourceVersion", "generation", "nodeName", "conditions"] {
                map.remove(field);
            }
        }
        pod
    };
    assert_eq!(
        rest(&after),
        rest(&before),
        "a binding changes nothing else"
    );
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/pods/bound/binding",
            Some(json!({"target": {"kind": "Node", "name": "n2"}})),
        )
        .await;
    assert_eq!(status.as_u16(), 409, "a bound pod cannot be bound again");
    let marked = api
        .ok(
            Method::DELETE,
            "/api/v1/namespaces/default/pods/bound",
            Some(json!({"propagationPolicy": "Background"})),
        )
        .await;
    assert!(marked["metadata"]["deletionTimestamp"].is_string());
    assert_eq!(marked["metadata"]["deletionGracePeriodSeconds"], 30);
    assert_eq!(
        api.call(Method::GET, "/api/v1/namespaces/default/pods/bound", None)
            .await
            .0
            .as_u16(),
        200
    );
    api.ok(
        Method::DELETE,
        "/api/v1/namespaces/default/pods/bound?gracePeriodSeconds=0",
        None,
    )
    .await;
    assert_eq!(
        api.call(Method::GET, "/api/v1/namespaces/default/pods/bound", None)
            .await
            .0
            .as_u16(),
        404
    );
    // Finalizers hold an object until they are removed.
    let mut held = cm("held", json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    let created = api
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(held),
        )
        .await;
    let (status, _) = api
        .call(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/held",
            Some(json!({"preconditions": {"uid": "wrong"}})),
        )
        .await;
    assert_eq!(status.as_u16(), 409);
    let deleting = api
        .ok(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/held",
            Some(json!({"preconditions": {"uid": created["metadata"]["uid"]}})),
        )
        .await;
    assert!(deleting["metadata"]["deletionTimestamp"].is_string());
    let mut release = api
        .ok(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/held",
            None,
        )
        .await;
    release["metadata"]["finalizers"] = json!([]);
    api.ok(
        Method::PUT,
        "/api/v1/namespaces/default/configmaps/held",
        Some(release),
    )
    .await;
    assert_eq!(
        api.call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/held",
            None
        )
        .await
        .0
        .as_u16(),
        404,
        "gone once unfinalized"
    );
    // Foreground deletion leaves the work to the garbage collector's finalizer.
    api.ok(
        Method::POST,
        "/api/v1/namespaces/default/configmaps",
        Some(cm("fg", json!({}))),
    )
    .await;
    let fg = api
        .ok(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps/fg",
            Some(json!({"propagationPolicy": "Foreground"})),
        )
        .await;
    assert_eq!(fg["metadata"]["finalizers"], json!(["foregroundDeletion"]));
    // deletecollection with a selector.
    for (name, team) in [("x1", "a"), ("x2", "a"), ("x3", "b")] {
        api.ok(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some(cm(name, json!({"team": team}))),
        )
        .await;
    }
    let gone = api
        .ok(
            Method::DELETE,
            "/api/v1/namespaces/default/configmaps?labelSelector=team%3Da",
            None,
        )
        .await;
    assert_eq!(gone["items"].as_array().unwrap().len(), 2);
    assert_eq!(
        api.call(
            Method::GET,
            "/api/v1/namespaces/default/configmaps/x3",
            None
        )
        .await
        .0
        .as_u16(),
        200
    );
}

#[tokio::test]
async fn namespaces_terminate_and_take_their_content() {
    let api = api().await;
    api.ok(
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "team"}})),
    )
    .await;
    let sa = api
        .ok(
            Method::GET,
            "/api/v1/namespaces/team/serviceaccounts/default",
            None,
        )
        .await;
    assert_eq!(sa["metadata"]["name"], "default");
    api.ok(
        Method::POST,
        "/api/v1/namespaces/team/configmaps",
        Some(cm("c", json!({}))),
    )
    .await;
    let (status, body) = api
        .call(Method::DELETE, "/api/v1/namespaces/kube-system", None)
        .await;
    assert_eq!(status.as_u16(), 403, "{body}");
    let terminating = api
        .ok(Method::DELETE, "/api/v1/namespaces/team", None)
        .await;
    assert_eq!(terminating["status"]["phase"], "Terminating");
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/team/configmaps",
            Some(cm("late", json!({}))),
        )
        .await;
    assert!(
        status.as_u16() == 403 || status.as_u16() == 404,
        "no new content in a terminating namespace: {status}"
    );
    let gone = tokio::time::timeout(Duration::from_secs(5), async {
        while api
            .call(Method::GET, "/api/v1/namespaces/team", None)
            .await
            .0
            .as_u16()
            != 404
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the namespace must go away");
    assert_eq!(
        api.call(
            Method::GET,
            "/api/v1/configmaps?fieldSelector=metadata.namespace%3Dteam",
            None
        )
        .await
        .1["items"],
        json!([])
    );
}

#[tokio::test]
async fn subresources_scale_status_and_generation() {
    let api = api().await;
    let deploy = json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"generateName": "web-"}, "spec": {"selector": {"matchLabels": {"app": "w"}}, "template": {"metadata": {"labels": {"app": "w"}}, "spec": {"containers": [{"name": "c", "image": "busybox:1.36"}]}}}});
    let created = api
        .ok(
            Method::POST,
            "/apis/apps/v1/namespaces/default/deployments",
            Some(deploy),
        )
        .await;
    let name = created["metadata"]["name"].as_str().unwrap().to_string();
    assert!(name.starts_with("web-") && name.len() == 9);
    assert_eq!(
        (
            created["spec"]["replicas"].as_i64(),
            created["metadata"]["generation"].as_i64()
        ),
        (Some(1), Some(1))
    );
    let base = format!("/apis/apps/v1/namespaces/default/deployments/{name}");
    let scale = api.ok(Method::GET, &format!("{base}/scale"), None).await;
    assert_eq!(
        (scale["kind"].as_str(), scale["status"]["selector"].as_str()),
        (Some("Scale"), Some("app=w"))
    );
    let scaled = api
        .send(
            Method::PATCH,
            &format!("{base}/scale"),
            "application/merge-patch+json",
            Some(json!({"spec": {"replicas": 5}})),
        )
        .await
        .1;
    assert_eq!(scaled["spec"]["replicas"], 5);
    let after = api.ok(Method::GET, &base, None).await;
    assert_eq!(
        (
            after["spec"]["replicas"].as_i64(),
            after["metadata"]["generation"].as_i64()
        ),
        (Some(5), Some(2))
    );
    // A status write changes only status; a main write keeps status.
    let mut status_write = after.clone();
    status_write["status"] = json!({"replicas": 5, "observedGeneration": 2});
    status_write["spec"]["replicas"] = json!(9);
    let written = api
        .ok(Method::PUT, &format!("{base}/status"), Some(status_write))
        .await;
    assert_eq!(
        (
            written["spec"]["replicas"].as_i64(),
            written["status"]["replicas"].as_i64()
        ),
        (Some(5), Some(5))
    );
    assert_eq!(
        written["metadata"]["generation"], 2,
        "status writes do not bump generation"
    );
    let mut main_write = written.clone();
    main_write["status"] = json!({"replicas": 0});
    let kept = api.ok(Method::PUT, &base, Some(main_write)).await;
    assert_eq!(kept["status"]["replicas"], 5);
    // The selector is immutable.
    let (status, body) = api.send(Method::PATCH, &base, "application/merge-patch+json", Some(json!({"spec": {"selector": {"matchLabels": {"app": "z"}}, "template": {"metadata": {"labels": {"app": "z"}}}}}))).await;
    assert_eq!(status.as_u16(), 422, "{body}");
    assert!(body["message"].as_str().unwrap().contains("spec.selector"));
    // JSON patch that cannot apply is refused.
    let (status, _) = api
        .send(
            Method::PATCH,
            &base,
            "application/json-patch+json",
            Some(json!([{"op": "remove", "path": "/spec/nothing"}])),
        )
        .await;
    assert_eq!(status.as_u16(), 422);
}

#[tokio::test]
async fn discovery_tables_and_priority() {
    let api = api().await;
    let (status, headers, body) = api.raw(Method::GET, "/apis", None, Vec::new(), Some("application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,application/json")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers["content-type"],
        "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList"
    );
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert!(body["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["metadata"]["name"] == "apps"));
    let core = api.ok(Method::GET, "/api/v1", None).await;
    let names: Vec<&str> = core["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"pods/status") && names.contains(&"pods/binding"));
    let apps = api.ok(Method::GET, "/apis/apps/v1", None).await;
    let scale = apps["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "deployments/scale")
        .unwrap();
    assert_eq!(
        (scale["group"].as_str(), scale["kind"].as_str()),
        (Some("autoscaling"), Some("Scale"))
    );
    // Every served kind prints as a Table with a Name column.
    let server_kinds = api.ok(Method::GET, "/apis", None).await;
    let mut paths = vec!["/api/v1".to_string()];
    paths.extend(server_kinds["groups"].as_array().unwrap().iter().map(|g| {
        format!(
            "/apis/{}",
            g["preferredVersion"]["groupVersion"].as_str().unwrap()
        )
    }));
    for gv in paths {
        let list = api.ok(Method::GET, &gv, None).await;
        for resource in list["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| !r["name"].as_str().unwrap().contains('/'))
            .filter(|r| r["verbs"].as_array().unwrap().contains(&json!("list")))
        {
            let name = resource["name"].as_str().unwrap();
            let uri = format!("{gv}/{name}");
            let (status, _, body) = api
                .raw(
                    Method::GET,
                    &uri,
                    None,
                    Vec::new(),
                    Some("application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),
                )
                .await;
            let table: Value = serde_json::from_slice(&body).unwrap();
            assert_eq!(status, StatusCode::OK, "{uri}: {table}");
            assert_eq!(table["kind"], "Table", "{uri}");
            assert!(
                !table["columnDefinitions"].as_array().unwrap().is_empty(),
                "{uri}"
            );
        }
    }
    // PriorityClass admission resolves the global default into spec.priority.
    api.ok(
        Method::POST,
        "/apis/scheduling.k8s.io/v1/priorityclasses",
        Some(json!({"metadata": {"name": "high"}, "value": 1000, "globalDefault": true})),
    )
    .await;
    let p = api
        .ok(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(pod("prio")),
        )
        .await;
    assert_eq!(
        (
            p["spec"]["priority"].as_i64(),
            p["spec"]["priorityClassName"].as_str()
        ),
        (Some(1000), Some("high"))
    );
    let mut missing = pod("prio2");
    missing["spec"]["priorityClassName"] = json!("nope");
    assert_eq!(
        api.call(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(missing)
        )
        .await
        .0
        .as_u16(),
        403
    );
    let version = api.ok(Method::GET, "/version", None).await;
    assert_eq!(
        (version["major"].as_str(), version["minor"].as_str()),
        (Some("1"), Some("33"))
    );
}

/// RFC 7386's examples, as the server applies merge patches.
#[tokio::test]
async fn merge_patch_follows_rfc_7386() {
    let api = api().await;
    let cases = [
        (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
        (
            json!({"a": "b"}),
            json!({"b": "c"}),
            json!({"a": "b", "b": "c"}),
        ),
        (json!({"a": "b"}), json!({"a": null}), json!({})),
        (
            json!({"a": "b", "b": "c"}),
            json!({"a": null}),
            json!({"b": "c"}),
        ),
        (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
        (json!({"a": "c"}), json!({"a": ["b"]}), json!({"a": ["b"]})),
        (
            json!({"a": {"b": "c"}}),
            json!({"a": {"b": "d", "c": null}}),
            json!({"a": {"b": "d"}}),
        ),
        (
            json!({"a": [{"b": "c"}]}),
            json!({"a": [1]}),
            json!({"a": [1]}),
        ),
        (
            json!({"e": null}),
            json!({"a": 1}),
            json!({"e": null, "a": 1}),
        ),
    ];
    for (i, (data, patch, expected)) in cases.into_iter().enumerate() {
        // Carry the document in an object of a kind without a Rust type, which keeps it verbatim.
        let name = format!("rfc{i}");
        let object = json!({"apiVersion": "example.com/v1", "kind": "Document", "metadata": {"name": name}, "doc": data});
        api.ok(
            Method::POST,
            "/apis/example.com/v1/namespaces/default/documents",
            Some(object),
        )
        .await;
        let (status, patched) = api
            .send(
                Method::PATCH,
                &format!("/apis/example.com/v1/namespaces/default/documents/{name}"),
                "application/merge-patch+json",
                Some(json!({"doc": patch})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{patched}");
        let got = patched.get("doc").cloned().unwrap_or(json!({}));
        let expected = if expected == json!({}) && got.is_null() {
            Value::Null
        } else {
            expected
        };
        assert_eq!(got, expected, "case {i}");
    }
}

mod watch_resume {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

        /// Resuming a watch from any resourceVersion seen yields exactly the later events: none
        /// skipped, none repeated.
        #[test]
        fn resume_never_skips_or_duplicates(ops in proptest::collection::vec((0usize..4, 0u8..3), 1..25), resume_at in 0usize..25) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let api = api().await;
                let start = api.ok(Method::GET, "/api/v1/namespaces/default/configmaps", None).await["metadata"]["resourceVersion"].as_str().unwrap().to_string();
                let mut all = api.watch(&format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={start}")).await;
                let mut expected = 0usize;
                for (key, op) in &ops {
                    let name = format!("k{key}");
                    let uri = format!("/api/v1/namespaces/default/configmaps/{name}");
                    let status = match op {
                        0 => api.call(Method::POST, "/api/v1/namespaces/default/configmaps", Some(cm(&name, json!({})))).await.0,
                        1 => api.send(Method::PATCH, &uri, "application/merge-patch+json", Some(json!({"data": {"n": format!("{expected}")}}))).await.0,
                        _ => api.call(Method::DELETE, &uri, None).await.0,
                    };
                    if status.is_success() {
                        expected += 1;
                    }
                }
                let mut events = Vec::new();
                for _ in 0..expected {
                    events.push(next_event(&mut all).await);
                }
                let rvs: Vec<String> = events.iter().map(|e| e["object"]["metadata"]["resourceVersion"].as_str().unwrap().to_string()).collect();
                if rvs.is_empty() {
                    return;
                }
                let cut = resume_at % rvs.len();
                let mut resumed = api.watch(&format!("/api/v1/namespaces/default/configmaps?watch=true&resourceVersion={}", rvs[cut])).await;
                for expected_event in &events[cut + 1..] {
                    let got = next_event(&mut resumed).await;
                    assert_eq!(got["type"], expected_event["type"]);
                    assert_eq!(got["object"]["metadata"]["resourceVersion"], expected_event["object"]["metadata"]["resourceVersion"]);
                }
                let extra = tokio::time::timeout(Duration::from_millis(300), async {
                    loop {
                        let e = resumed.next().await;
                        if e.as_ref().is_none_or(|e| e["type"] != "BOOKMARK") {
                            return e;
                        }
                    }
                }).await;
                assert!(extra.is_err(), "an event was repeated: {extra:?}");
            });
        }
    }
}

#[tokio::test]
async fn yaml_bodies_user_kinds_warnings_and_overload() {
    use capstan_core::apiserver::{AdmissionPlugin, AdmissionRequest, ApiConfig, ApiError};
    use capstan_core::registry::{Registry, ResourceKind};

    /// An admission plugin that holds every create for a while, to fill the server.
    struct Slow;
    #[async_trait::async_trait]
    impl AdmissionPlugin for Slow {
        fn name(&self) -> &str {
            "Slow"
        }
        async fn validate(
            &self,
            request: &AdmissionRequest<'_>,
            _object: &Value,
        ) -> Result<(), ApiError> {
            if request.name.starts_with("slow") {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Ok(())
        }
    }

    let mut registry = Registry::with_builtins();
    registry
        .register(
            ResourceKind::new("example.com", "v1", "Widget", "widgets", true)
                .with_short_names(&["wd"]),
        )
        .unwrap();
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = ApiServer::builder(store.clone())
        .registry(registry)
        .config(ApiConfig {
            max_in_flight: 1,
            ..ApiConfig::default()
        })
        .admission_plugin(Arc::new(Slow))
        .build()
        .await
        .unwrap();
    let api = Api {
        router: server.router(),
        store,
    };

    // YAML in; the user's kind is served like a built-in.
    let yaml =
        b"apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w1\nspec:\n  size: 3\n"
            .to_vec();
    let (status, _, body) = api
        .raw(
            Method::POST,
            "/apis/example.com/v1/namespaces/default/widgets",
            Some("application/yaml"),
            yaml,
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let widget = api
        .ok(
            Method::GET,
            "/apis/example.com/v1/namespaces/default/widgets/w1",
            None,
        )
        .await;
    assert_eq!(widget["spec"]["size"], 3);
    let discovery = api.ok(Method::GET, "/apis/example.com/v1", None).await;
    assert_eq!(discovery["resources"][0]["shortNames"], json!(["wd"]));

    // Deprecated kinds carry a Warning header.
    let (_, headers, _) = api
        .raw(
            Method::GET,
            "/api/v1/componentstatuses",
            None,
            Vec::new(),
            None,
        )
        .await;
    assert!(headers
        .get("warning")
        .and_then(|w| w.to_str().ok())
        .is_some_and(|w| w.starts_with("299 - ") && w.contains("deprecated")));

    // Over the in-flight limit: 429 with Retry-After, and the limit frees up afterwards.
    let slow = {
        let api = Api {
            router: api.router.clone(),
            store: api.store.clone(),
        };
        tokio::spawn(async move {
            api.call(
                Method::POST,
                "/apis/example.com/v1/namespaces/default/widgets",
                Some(json!({"metadata": {"name": "slow1"}})),
            )
            .await
            .0
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (status, headers, _) = api
        .raw(
            Method::GET,
            "/apis/example.com/v1/namespaces/default/widgets/w1",
            None,
            Vec::new(),
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 429);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(slow.await.unwrap(), StatusCode::CREATED);
    api.ok(
        Method::GET,
        "/apis/example.com/v1/namespaces/default/widgets/slow1",
        None,
    )
    .await;
}

mod merge_patch_model {
    use super::*;
    use proptest::prelude::*;

    /// RFC 7386's MergePatch pseudo-code, as the reference.
    fn merge_reference(target: Value, patch: &Value) -> Value {
        let Some(patch) = patch.as_object() else {
            return patch.clone();
        };
        let mut target = match target {
            Value::Object(map) => map,
            _ => serde_json::Map::new(),
        };
        for (key, value) in patch {
            if value.is_null() {
                target.remove(key);
            } else {
                let current = target.remove(key).unwrap_or(Value::Null);
                target.insert(key.clone(), merge_reference(current, value));
            }
        }
        Value::Object(target)
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            (-5i64..5).prop_map(Value::from),
            "[a-c]{0,2}".prop_map(Value::from)
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                proptest::collection::btree_map("[a-d]", inner, 0..4)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

        /// The server applies merge patches exactly as RFC 7386 defines them.
        #[test]
        fn server_merge_patch_matches_rfc_7386(doc in json_value(), patch in json_value()) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let api = api().await;
                let mut object = json!({"apiVersion": "example.com/v1", "kind": "Document", "metadata": {"name": "doc"}});
                if !doc.is_null() {
                    object["doc"] = doc.clone();
                }
                api.ok(Method::POST, "/apis/example.com/v1/namespaces/default/documents", Some(object)).await;
                let (status, patched) = api.send(Method::PATCH, "/apis/example.com/v1/namespaces/default/documents/doc", "application/merge-patch+json", Some(json!({"doc": patch.clone()}))).await;
                assert_eq!(status, StatusCode::OK, "{patched}");
                let expected = if patch.is_null() { Value::Null } else { merge_reference(doc.clone(), &patch) };
                assert_eq!(patched.get("doc").cloned().unwrap_or(Value::Null), expected, "doc {doc} patch {patch}");
            });
        }
    }
}

#[tokio::test]
async fn a_namespace_left_terminating_finishes_after_a_restart() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    // A namespace marked Terminating by an API server that stopped before emptying it.
    let first = ApiServer::builder(store.clone()).build().await.unwrap();
    let namespaces = first
        .registry()
        .get("", "v1", "namespaces")
        .unwrap()
        .clone();
    let maps = first
        .registry()
        .get("", "v1", "configmaps")
        .unwrap()
        .clone();
    first
        .storage()
        .create(
            &namespaces,
            json!({"metadata": {"name": "gone"}, "status": {"phase": "Active"}}),
        )
        .await
        .unwrap();
    first
        .storage()
        .create(
            &maps,
            json!({"metadata": {"name": "c", "namespace": "gone"}}),
        )
        .await
        .unwrap();
    let mut ns = first
        .storage()
        .get(&namespaces, None, "gone")
        .await
        .unwrap();
    ns["status"]["phase"] = json!("Terminating");
    ns["metadata"]["deletionTimestamp"] = json!("2026-01-01T00:00:00Z");
    first.storage().update(&namespaces, ns).await.unwrap();
    drop(first);
    let second = ApiServer::builder(store.clone()).build().await.unwrap();
    let finished = tokio::time::timeout(Duration::from_secs(5), async {
        while second
            .storage()
            .get(&namespaces, None, "gone")
            .await
            .is_ok()
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        finished.is_ok(),
        "the restarted server finishes the namespace"
    );
    assert!(second
        .storage()
        .get(&maps, Some("gone"), "c")
        .await
        .is_err());
}

#[tokio::test]
async fn field_validation_strict_warn_ignore() {
    let api = api().await;
    // Missing required fields are 422 Invalid with the field, not decoder errors.
    let (status, body) = api.call(Method::POST, "/apis/apps/v1/namespaces/default/deployments", Some(json!({"metadata": {"name": "nosel"}, "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}}))).await;
    assert_eq!(status.as_u16(), 422, "{body}");
    assert_eq!(body["details"]["causes"][0]["field"], "spec.selector");
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/pods",
            Some(json!({"metadata": {"name": "nocontainers"}, "spec": {}})),
        )
        .await;
    assert_eq!(status.as_u16(), 422, "{body}");
    let with_unknown = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "u"}, "data": {"a": "1"}, "bogus": true});
    let (status, body) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            Some(with_unknown.clone()),
        )
        .await;
    assert_eq!(status.as_u16(), 400);
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"bogus\""),
        "{body}"
    );
    let (status, headers, body) = api
        .raw(
            Method::POST,
            "/api/v1/namespaces/default/configmaps",
            Some("application/json"),
            serde_json::to_vec(&with_unknown).unwrap(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert!(
        headers
            .get("warning")
            .and_then(|w| w.to_str().ok())
            .is_some_and(|w| w.contains("unknown field")),
        "Warn is the default"
    );
    let stored: Value = serde_json::from_slice(&body).unwrap();
    assert!(stored.get("bogus").is_none(), "unknown fields are dropped");
    let (status, headers, _) = api
        .raw(
            Method::PUT,
            "/api/v1/namespaces/default/configmaps/u?fieldValidation=Ignore",
            Some("application/json"),
            serde_json::to_vec(&with_unknown).unwrap(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers.get("warning").is_none());
    let duplicated =
        br#"{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d", "name": "e"}}"#
            .to_vec();
    let (status, _, body) = api
        .raw(
            Method::POST,
            "/api/v1/namespaces/default/configmaps?fieldValidation=Strict",
            Some("application/json"),
            duplicated,
            None,
        )
        .await;
    assert_eq!(status.as_u16(), 400);
    assert!(String::from_utf8_lossy(&body).contains("duplicate field"));
    let (status, _) = api
        .send(
            Method::PATCH,
            "/api/v1/namespaces/default/configmaps/u?fieldValidation=Strict",
            "application/merge-patch+json",
            Some(json!({"spec": {"x": 1}})),
        )
        .await;
    assert_eq!(
        status.as_u16(),
        400,
        "a patch that adds an unknown field is refused under Strict"
    );
    let (status, _) = api
        .call(
            Method::POST,
            "/api/v1/namespaces/default/configmaps?fieldValidation=Loose",
            Some(cm("x", json!({}))),
        )
        .await;
    assert_eq!(status.as_u16(), 400);
    let openapi = api.ok(Method::GET, "/openapi/v3/api/v1", None).await;
    let patch = &openapi["paths"]["/api/v1/namespaces/{namespace}/configmaps/{name}"]["patch"];
    assert_eq!(patch["parameters"][0]["name"], "fieldValidation");
}

#[tokio::test]
async fn metrics_count_requests_and_watches() {
    let api = api().await;
    api.ok(Method::GET, "/api/v1/namespaces", None).await;
    let _ = api
        .call(Method::GET, "/api/v1/namespaces/default/pods/missing", None)
        .await;
    let watch = api
        .watch("/api/v1/namespaces/default/configmaps?watch=true")
        .await;
    let (status, headers, body) = api
        .raw(Method::GET, "/metrics", None, Vec::new(), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("capstan_apiserver_requests_total{method=\"GET\",code=\"200\"}"),
        "{text}"
    );
    assert!(
        text.contains("capstan_apiserver_requests_total{method=\"GET\",code=\"404\"} 1"),
        "{text}"
    );
    assert!(text.contains("capstan_apiserver_watches 1"), "{text}");
    assert!(text.contains("capstan_store_revision "), "{text}");
    drop(watch);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (_, _, body) = api
        .raw(Method::GET, "/metrics", None, Vec::new(), None)
        .await;
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("capstan_apiserver_watches 0"));
}

#[tokio::test]
async fn namespace_deletion_is_graceful_and_waits_for_finalizers() {
    let api = api().await;
    api.ok(
        Method::POST,
        "/api/v1/namespaces",
        Some(json!({"metadata": {"name": "grace"}})),
    )
    .await;
    let mut running = pod("runner");
    running["spec"]["nodeName"] = json!("some-node");
    api.ok(Method::POST, "/api/v1/namespaces/grace/pods", Some(running))
        .await;
    let mut held = cm("held", json!({}));
    held["metadata"]["finalizers"] = json!(["example.com/hold"]);
    api.ok(
        Method::POST,
        "/api/v1/namespaces/grace/configmaps",
        Some(held),
    )
    .await;
    api.ok(Method::DELETE, "/api/v1/namespaces/grace", None)
        .await;
    // The running pod is terminating gracefully, not gone; the held map waits on its finalizer.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pod = api
        .ok(Method::GET, "/api/v1/namespaces/grace/pods/runner", None)
        .await;
    assert!(pod["metadata"]["deletionTimestamp"].is_string(), "{pod}");
    assert_eq!(pod["metadata"]["deletionGracePeriodSeconds"], 30);
    let ns = api.ok(Method::GET, "/api/v1/namespaces/grace", None).await;
    assert_eq!(ns["status"]["phase"], "Terminating");
    // The kubelet finishes the pod; the finalizer is removed: the namespace goes.
    api.ok(
        Method::DELETE,
        "/api/v1/namespaces/grace/pods/runner?gracePeriodSeconds=0",
        None,
    )
    .await;
    let (status, body) = api
        .send(
            Method::PATCH,
            "/api/v1/namespaces/grace/configmaps/held",
            "application/merge-patch+json",
            Some(json!({"metadata": {"finalizers": null}})),
        )
        .await;
    assert!(status.is_success(), "{body}");
    let gone = tokio::time::timeout(Duration::from_secs(10), async {
        while api
            .call(Method::GET, "/api/v1/namespaces/grace", None)
            .await
            .0
            .as_u16()
            != 404
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(gone.is_ok(), "the namespace goes once its content is gone");
}

/// An Event recorded through events.k8s.io/v1 (kube-runtime's `Recorder`, as a user's
/// controller records them) is a core v1 Event too, where `kubectl describe` looks; core
/// Events are listed and watched through events.k8s.io/v1.
#[tokio::test]
async fn events_are_served_by_both_event_apis() {
    use k8s_openapi::api::core::v1::{Event as CoreEvent, ObjectReference};
    use k8s_openapi::api::events::v1::Event as EventsEvent;
    use kube::api::{ListParams, WatchEvent, WatchParams};
    use kube::runtime::events::{Event, EventType, Recorder, Reporter};
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let client = server.client();
    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: "widget-controller".into(),
            instance: Some("replica-1".into()),
        },
    );
    let regarding = ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("ConfigMap".into()),
        name: Some("settings".into()),
        namespace: Some("default".into()),
        uid: Some("uid-1".into()),
        ..Default::default()
    };
    let event = Event {
        type_: EventType::Normal,
        reason: "Reconciled".into(),
        note: Some("settings are in place".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    let core_api: kube::Api<CoreEvent> = kube::Api::namespaced(client.clone(), "default");
    let events_api: kube::Api<EventsEvent> = kube::Api::namespaced(client.clone(), "default");
    let mut watch = events_api
        .watch(&WatchParams::default(), "0")
        .await
        .unwrap()
        .boxed();
    // Twice: the second publish patches the first's series.
    recorder.publish(&event, &regarding).await.unwrap();
    recorder.publish(&event, &regarding).await.unwrap();
    let core = core_api
        .list(&ListParams::default().fields("involvedObject.name=settings"))
        .await
        .unwrap()
        .items;
    assert_eq!(core.len(), 1, "{core:?}");
    assert_eq!(core[0].message.as_deref(), Some("settings are in place"));
    assert_eq!(core[0].reason.as_deref(), Some("Reconciled"));
    assert_eq!(
        core[0].reporting_component.as_deref(),
        Some("widget-controller")
    );
    assert_eq!(core[0].involved_object.uid.as_deref(), Some("uid-1"));
    assert_eq!(core[0].series.as_ref().and_then(|s| s.count), Some(2));
    // Read back through events.k8s.io/v1, selected by its own field names.
    let listed = events_api
        .list(&ListParams::default().fields("regarding.name=settings"))
        .await
        .unwrap()
        .items;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].note.as_deref(), Some("settings are in place"));
    assert_eq!(
        listed[0].regarding.as_ref().and_then(|r| r.name.as_deref()),
        Some("settings")
    );
    // A core Event (as kubelet and the controllers write them) reaches events.k8s.io/v1
    // watchers.
    let written: CoreEvent = serde_json::from_value(json!({
        "metadata": {"name": "web.1"},
        "involvedObject": {"kind": "Pod", "name": "web", "namespace": "default"},
        "reason": "Pulled", "message": "already present", "type": "Normal",
        "source": {"component": "kubelet"}, "count": 1,
    }))
    .unwrap();
    core_api
        .create(&Default::default(), &written)
        .await
        .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(event)) = watch.next().await {
            if let WatchEvent::Added(e) = event {
                if e.reason.as_deref() == Some("Pulled") {
                    return e;
                }
            }
        }
        panic!("the watch ended");
    })
    .await
    .expect("the core Event reaches the events.k8s.io watch");
    assert_eq!(seen.note.as_deref(), Some("already present"));
    assert_eq!(seen.deprecated_count, Some(1));
    assert_eq!(
        seen.deprecated_source.and_then(|s| s.component).as_deref(),
        Some("kubelet")
    );
}

/// The `default/kubernetes` Service leads to the live API servers: each publishes its
/// advertised address; one that stops takes itself out, one that dies drops out when its Lease
/// expires.
#[tokio::test]
async fn the_kubernetes_service_has_the_live_api_servers_as_endpoints() {
    use capstan_core::apiserver::{ApiConfig, EndpointsConfig};
    use k8s_openapi::api::core::v1::{Endpoints, Service};
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use tokio_util::sync::CancellationToken;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::default());
    let server = |address: &str| {
        let store = store.clone();
        let address = address.to_string();
        async move {
            ApiServer::builder(store)
                .config(ApiConfig {
                    advertise_address: address,
                    ..ApiConfig::default()
                })
                .build()
                .await
                .unwrap()
        }
    };
    let quick = || EndpointsConfig {
        renew_interval: Duration::from_millis(200),
    };
    let first = server("10.1.2.3:7443").await;
    let second = server("10.1.2.4:7443").await;
    let third = server("10.1.2.5:7443").await;
    let stops: Vec<CancellationToken> = (0..3).map(|_| CancellationToken::new()).collect();
    let _first_task = first.publish_endpoints(quick(), stops[0].clone()).unwrap();
    let second_task = second.publish_endpoints(quick(), stops[1].clone()).unwrap();
    let third_task = third.publish_endpoints(quick(), stops[2].clone()).unwrap();
    let client = first.client();
    let endpoints: kube::Api<Endpoints> = kube::Api::namespaced(client.clone(), "default");
    let slices: kube::Api<EndpointSlice> = kube::Api::namespaced(client.clone(), "default");
    let addresses = || async {
        let listed = endpoints.get_opt("kubernetes").await.unwrap();
        let mut ips: Vec<String> = listed
            .and_then(|e| e.subsets)
            .unwrap_or_default()
            .into_iter()
            .flat_map(|s| s.addresses.unwrap_or_default())
            .map(|a| a.ip)
            .collect();
        ips.sort();
        ips
    };
    let wait_for = |wanted: Vec<&'static str>| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let seen = addresses().await;
            if seen == wanted {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "endpoints {seen:?}, wanted {wanted:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    wait_for(vec!["10.1.2.3", "10.1.2.4", "10.1.2.5"]).await;
    let kept = endpoints.get("kubernetes").await.unwrap();
    let port = &kept.subsets.unwrap()[0].ports.clone().unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("https"), 7443));
    let slice = slices.get("kubernetes").await.unwrap();
    assert_eq!(
        slice.metadata.labels.unwrap()["kubernetes.io/service-name"],
        "kubernetes"
    );
    assert_eq!(slice.endpoints.len(), 3);
    assert_eq!(slice.ports.unwrap()[0].port, Some(7443));
    // The Service sends its port 443 to the servers' port.
    let service = kube::Api::<Service>::namespaced(client.clone(), "default")
        .get("kubernetes")
        .await
        .unwrap();
    let service_port = &service.spec.unwrap().ports.unwrap()[0];
    assert_eq!(service_port.port, 443);
    assert_eq!(
        service_port.target_port,
        Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(7443))
    );
    // Stopped: out at once. Died (its task gone without a word): out once its Lease expires.
    stops[1].cancel();
    second_task.await.unwrap();
    assert_eq!(addresses().await, ["10.1.2.3", "10.1.2.5"]);
    third_task.abort();
    wait_for(vec!["10.1.2.3"]).await;
}
