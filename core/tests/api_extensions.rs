//! Server-side apply and managedFields, CustomResourceDefinitions, SelfSubjectAccessReview and
//! protobuf bodies, through the API server's router.

use super::apiserver::{api, next_event, Api};
use axum::http::{Method, StatusCode};
use prost::Message;
use serde_json::{json, Value};

const APPLY: &str = "application/apply-patch+yaml";

fn managers(object: &Value) -> Vec<(String, String)> {
    object["metadata"]["managedFields"]
        .as_array()
        .map(|l| {
            l.iter()
                .map(|e| {
                    (
                        e["manager"].as_str().unwrap_or("").to_string(),
                        e["operation"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn deployment_config(replicas: Option<i64>, image: &str, with_env: bool) -> Value {
    let mut container = json!({"name": "app", "image": image});
    if with_env {
        container["env"] = json!([{"name": "MODE", "value": "fast"}]);
    }
    let mut spec = json!({
        "selector": {"matchLabels": {"app": "web"}},
        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [container]}}
    });
    if let Some(r) = replicas {
        spec["replicas"] = json!(r);
    }
    json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}, "spec": spec})
}

const WEB: &str = "/apis/apps/v1/namespaces/default/deployments/web";

async fn apply(
    api: &Api,
    uri: &str,
    manager: &str,
    force: bool,
    body: Value,
) -> (StatusCode, Value) {
    let uri = format!("{uri}?fieldManager={manager}&force={force}");
    api.send(Method::PATCH, &uri, APPLY, Some(body)).await
}

#[tokio::test]
async fn server_side_apply_creates_tracks_conflicts_and_removes() {
    let api = api().await;
    // Absent: the apply creates (201) and its manager owns what it applied.
    let (status, created) = apply(
        &api,
        WEB,
        "ci",
        false,
        deployment_config(Some(2), "a", true),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        managers(&created),
        vec![("ci".to_string(), "Apply".to_string())]
    );
    let fields = &created["metadata"]["managedFields"][0]["fieldsV1"];
    assert!(fields["f:spec"]["f:replicas"].is_object(), "{fields}");
    assert!(
        fields["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]["f:image"]
            .is_object(),
        "{fields}"
    );
    // Defaulted fields belong to nobody.
    assert!(fields["f:spec"].get("f:strategy").is_none());

    // Applying the same configuration again changes nothing.
    let (status, again) = apply(
        &api,
        WEB,
        "ci",
        false,
        deployment_config(Some(2), "a", true),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        again["metadata"]["resourceVersion"],
        created["metadata"]["resourceVersion"]
    );

    // Another manager's update takes the fields it changed.
    let (status, scaled) = api
        .send(
            Method::PATCH,
            &format!("{WEB}?fieldManager=scaler"),
            "application/merge-patch+json",
            Some(json!({"spec": {"replicas": 5}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{scaled}");
    assert!(managers(&scaled).contains(&("scaler".into(), "Update".into())));

    // A different value for the scaler's field is a conflict naming both, and changes nothing.
    let (status, conflict) = apply(
        &api,
        WEB,
        "ci",
        false,
        deployment_config(Some(3), "b", true),
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{conflict}");
    assert_eq!(conflict["reason"], "Conflict");
    assert_eq!(
        conflict["details"]["causes"][0]["reason"],
        "FieldManagerConflict"
    );
    assert_eq!(conflict["details"]["causes"][0]["field"], ".spec.replicas");
    assert!(
        conflict["message"].as_str().unwrap().contains("\"scaler\""),
        "{conflict}"
    );
    let current = api.ok(Method::GET, WEB, None).await;
    assert_eq!(current["spec"]["replicas"], 5);
    assert_eq!(
        current["spec"]["template"]["spec"]["containers"][0]["image"],
        "a"
    );

    // Leaving the field out is no conflict; fields no longer applied and owned by nobody
    // else go (env), shared ones stay (replicas, the scaler's).
    let (status, dropped) =
        apply(&api, WEB, "ci", false, deployment_config(None, "b", false)).await;
    assert_eq!(status, StatusCode::OK, "{dropped}");
    let container = &dropped["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container["image"], "b");
    assert!(container.get("env").is_none(), "{container}");
    assert_eq!(dropped["spec"]["replicas"], 5);

    // Forcing takes the field from the scaler.
    let (status, forced) = apply(
        &api,
        WEB,
        "ci",
        true,
        deployment_config(Some(3), "b", false),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{forced}");
    assert_eq!(forced["spec"]["replicas"], 3);
    assert!(
        !managers(&forced).iter().any(|(m, _)| m == "scaler"),
        "{:?}",
        managers(&forced)
    );

    // Bad apply requests are refused clearly.
    let (status, missing_manager) = api
        .send(
            Method::PATCH,
            WEB,
            APPLY,
            Some(deployment_config(None, "b", false)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{missing_manager}");
    let mut no_kind = deployment_config(None, "b", false);
    no_kind.as_object_mut().unwrap().remove("kind");
    let (status, _) = apply(&api, WEB, "ci", false, no_kind).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = api
        .raw(
            Method::PATCH,
            &format!("{WEB}?fieldManager=ci"),
            Some(APPLY),
            b"spec: [unclosed".to_vec(),
            None,
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let after = api.ok(Method::GET, WEB, None).await;
    assert_eq!(
        after["metadata"]["resourceVersion"],
        forced["metadata"]["resourceVersion"]
    );
}

#[tokio::test]
async fn every_write_records_its_manager() {
    let api = api().await;
    let (status, created) = api
        .send(
            Method::POST,
            "/api/v1/namespaces/default/configmaps?fieldManager=maker",
            "application/json",
            Some(json!({"metadata": {"name": "c"}, "data": {"a": "1"}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(
        managers(&created),
        vec![("maker".to_string(), "Update".to_string())]
    );
    let mut replaced = created.clone();
    replaced["data"]["b"] = json!("2");
    let (status, updated) = api
        .send(
            Method::PUT,
            "/api/v1/namespaces/default/configmaps/c?fieldManager=editor",
            "application/json",
            Some(replaced),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let entries = updated["metadata"]["managedFields"].as_array().unwrap();
    let editor = entries.iter().find(|e| e["manager"] == "editor").unwrap();
    assert_eq!(editor["fieldsV1"], json!({"f:data": {"f:b": {}}}));
    let maker = entries.iter().find(|e| e["manager"] == "maker").unwrap();
    assert_eq!(maker["fieldsV1"], json!({"f:data": {"f:a": {}}}));
    // The same content again writes nothing; at a stale resourceVersion it is a conflict.
    let (status, same) = api
        .call(
            Method::PUT,
            "/api/v1/namespaces/default/configmaps/c",
            Some(updated.clone()),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        same["metadata"]["resourceVersion"],
        updated["metadata"]["resourceVersion"]
    );
    let mut stale = updated.clone();
    stale["metadata"]["resourceVersion"] = created["metadata"]["resourceVersion"].clone();
    let (status, _) = api
        .call(
            Method::PUT,
            "/api/v1/namespaces/default/configmaps/c",
            Some(stale),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT);
}

fn widget_crd(printer: bool) -> Value {
    let mut version = json!({
        "name": "v1", "served": true, "storage": true,
        "subresources": {"status": {}, "scale": {"specReplicasPath": ".spec.size", "statusReplicasPath": ".status.size", "labelSelectorPath": ".status.selector"}},
        "schema": {"openAPIV3Schema": {"type": "object", "properties": {
            "spec": {"type": "object", "required": ["size"], "properties": {
                "size": {"type": "integer", "minimum": 0, "maximum": 10},
                "color": {"type": "string", "enum": ["red", "blue"]}}},
            "status": {"type": "object", "properties": {"size": {"type": "integer"}, "selector": {"type": "string"}}}}}}
    });
    if printer {
        version["additionalPrinterColumns"] = json!([{"name": "Size", "type": "integer", "jsonPath": ".spec.size"},
                   {"name": "Color", "type": "string", "jsonPath": ".spec.color", "priority": 1}]);
    }
    json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.org"},
        "spec": {"group": "example.org", "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
            "versions": [version]}
    })
}

const WIDGETS: &str = "/apis/example.org/v1/namespaces/default/widgets";

#[tokio::test]
async fn custom_resource_definitions_serve_validate_and_clean_up() {
    let api = api().await;
    // Not served before the definition.
    let (status, _) = api.call(Method::GET, WIDGETS, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, crd) = api
        .call(
            Method::POST,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(widget_crd(true)),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{crd}");
    assert_eq!(
        crd["metadata"]["finalizers"],
        json!(["customresourcecleanup.apiextensions.k8s.io"])
    );

    // Served at once: discovery, established status, CRUD.
    let group = api.ok(Method::GET, "/apis/example.org/v1", None).await;
    let names: Vec<&str> = group["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["widgets", "widgets/status", "widgets/scale"]);
    assert_eq!(group["resources"][0]["shortNames"], json!(["wd"]));
    let stored = api
        .ok(
            Method::GET,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.org",
            None,
        )
        .await;
    let established = stored["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["type"] == "Established" && c["status"] == "True");
    assert!(established, "{stored}");

    let mut watch = api.watch(&format!("{WIDGETS}?watch=true")).await;
    let (status, created) = api
        .call(
            Method::POST,
            WIDGETS,
            Some(
                json!({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w1"},
                        "spec": {"size": 2, "color": "red", "extra": "pruned"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert!(
        created["spec"].get("extra").is_none(),
        "unknown fields are pruned: {created}"
    );
    let event = next_event(&mut watch).await;
    assert_eq!(
        (
            event["type"].as_str(),
            event["object"]["metadata"]["name"].as_str()
        ),
        (Some("ADDED"), Some("w1"))
    );

    // Schema violations are 422s with field paths; Strict field validation refuses unknown fields.
    let (status, invalid) = api
        .call(
            Method::POST,
            WIDGETS,
            Some(
                json!({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w2"},
                        "spec": {"size": 11, "color": "green"}}),
            ),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{invalid}");
    let fields: Vec<&str> = invalid["details"]["causes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, vec!["spec.color", "spec.size"]);
    let (status, missing) = api
        .call(
            Method::POST,
            WIDGETS,
            Some(json!({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        missing["details"]["causes"][0]["reason"],
        "FieldValueRequired"
    );
    let (status, strict) = api
        .call(
            Method::POST,
            &format!("{WIDGETS}?fieldValidation=Strict"),
            Some(json!({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w2"}, "spec": {"size": 1, "bogus": 1}})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{strict}");
    assert!(
        strict["message"]
            .as_str()
            .unwrap()
            .contains("unknown field \"spec.bogus\""),
        "{strict}"
    );
    let (status, _) = api.call(Method::GET, &format!("{WIDGETS}/w2"), None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "nothing was created by the refused requests"
    );

    // Status and scale subresources use the definition's paths.
    let status_write = json!({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w1"},
                              "spec": {"size": 9}, "status": {"size": 2, "selector": "app=w"}});
    let after_status = api
        .ok(
            Method::PUT,
            &format!("{WIDGETS}/w1/status"),
            Some(status_write),
        )
        .await;
    assert_eq!(
        after_status["spec"]["size"], 2,
        "a status write changes only status"
    );
    assert_eq!(after_status["status"]["size"], 2);
    let scale = api
        .ok(Method::GET, &format!("{WIDGETS}/w1/scale"), None)
        .await;
    assert_eq!(
        (
            scale["spec"]["replicas"].as_i64(),
            scale["status"]["selector"].as_str()
        ),
        (Some(2), Some("app=w"))
    );
    let (status, scaled) = api
        .send(
            Method::PATCH,
            &format!("{WIDGETS}/w1/scale"),
            "application/merge-patch+json",
            Some(json!({"spec": {"replicas": 4}})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{scaled}");
    assert_eq!(
        api.ok(Method::GET, &format!("{WIDGETS}/w1"), None).await["spec"]["size"],
        4
    );

    // Printer columns in tables.
    let (_, _, body) = api
        .raw(
            Method::GET,
            WIDGETS,
            None,
            Vec::new(),
            Some("application/json;as=Table;v=v1;g=meta.k8s.io"),
        )
        .await;
    let table: Value = serde_json::from_slice(&body).unwrap();
    let columns: Vec<&str> = table["columnDefinitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(columns, vec!["Name", "Size", "Color"]);
    assert_eq!(table["rows"][0]["cells"], json!(["w1", 4, "red"]));

    // Server-side apply works on custom kinds too.
    let (status, applied) = apply(
        &api,
        &format!("{WIDGETS}/w3"),
        "ci",
        false,
        json!({"apiVersion": "example.org/v1", "kind": "Widget", "metadata": {"name": "w3"}, "spec": {"size": 1}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{applied}");

    // Deleting the definition deletes its objects, then stops serving the kind.
    let (status, _) = api
        .call(
            Method::DELETE,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.org",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, _) = api
            .call(
                Method::GET,
                "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/widgets.example.org",
                None,
            )
            .await;
        if status == StatusCode::NOT_FOUND {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the definition was not removed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, _) = api.call(Method::GET, WIDGETS, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Re-created, the kind starts empty.
    api.ok(
        Method::POST,
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
        Some(widget_crd(false)),
    )
    .await;
    let list = api.ok(Method::GET, WIDGETS, None).await;
    assert_eq!(list["items"], json!([]));

    // Invalid definitions are refused with field paths.
    let mut bad = widget_crd(false);
    bad["metadata"]["name"] = json!("gadgets.example.org");
    bad["spec"]["names"]["plural"] = json!("gadgets");
    bad["spec"]["scope"] = json!("Everywhere");
    let (status, refused) = api
        .call(
            Method::POST,
            "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
            Some(bad),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["details"]["causes"][0]["field"], "spec.scope");
}

#[tokio::test]
async fn access_reviews_answer_for_the_caller() {
    let api = api().await;
    let (status, review) = api
        .call(
            Method::POST,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some(json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                        "spec": {"resourceAttributes": {"verb": "create", "resource": "pods", "namespace": "default"}}})),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{review}");
    assert_eq!(review["status"]["allowed"], true);
    let (status, _) = api
        .call(
            Method::POST,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            Some(json!({"spec": {}})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    let (status, _) = api
        .call(
            Method::GET,
            "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn protobuf_bodies_create_workloads() {
    use k8s_pb::api::apps::v1 as apps;
    use k8s_pb::api::core::v1 as core;
    use k8s_pb::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
    use k8s_pb::apimachinery::pkg::runtime::{TypeMeta, Unknown};
    let api = api().await;
    let labels: std::collections::BTreeMap<String, String> =
        [("app".to_string(), "pb".to_string())].into();
    let deployment = apps::Deployment {
        metadata: Some(ObjectMeta {
            name: Some("pb".into()),
            labels: labels.clone(),
            ..Default::default()
        }),
        spec: Some(apps::DeploymentSpec {
            replicas: Some(1),
            selector: Some(LabelSelector {
                match_labels: labels.clone(),
                ..Default::default()
            }),
            template: Some(core::PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels,
                    ..Default::default()
                }),
                spec: Some(core::PodSpec {
                    containers: vec![core::Container {
                        name: Some("app".into()),
                        image: Some("busybox".into()),
                        resources: Some(Default::default()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }),
            strategy: Some(Default::default()),
            ..Default::default()
        }),
        status: Some(Default::default()),
    };
    let unknown = Unknown {
        type_meta: Some(TypeMeta {
            api_version: Some("apps/v1".into()),
            kind: Some("Deployment".into()),
        }),
        raw: Some(deployment.encode_to_vec()),
        content_encoding: Some(String::new()),
        content_type: Some(String::new()),
    };
    let mut body = b"k8s\0".to_vec();
    body.extend(unknown.encode_to_vec());
    let (status, _, response) = api
        .raw(
            Method::POST,
            "/apis/apps/v1/namespaces/default/deployments?fieldManager=kubectl-create",
            Some("application/vnd.kubernetes.protobuf"),
            body,
            None,
        )
        .await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&response)
    );
    let stored = api
        .ok(
            Method::GET,
            "/apis/apps/v1/namespaces/default/deployments/pb",
            None,
        )
        .await;
    assert_eq!(
        stored["spec"]["template"]["spec"]["containers"][0]["image"],
        "busybox"
    );
    assert_eq!(
        managers(&stored),
        vec![("kubectl-create".to_string(), "Update".to_string())]
    );
}

#[tokio::test]
async fn watches_older_than_the_cache_history_expire() {
    use capstan_core::apiserver::{ApiConfig, ApiServer};
    use capstan_core::store::{MemoryStore, Store};
    use std::sync::Arc;
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let server = ApiServer::builder(store)
        .config(ApiConfig {
            watch_history: 4,
            ..ApiConfig::default()
        })
        .build()
        .await
        .unwrap();
    let client = server.client();
    let maps: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client, "default");
    // Start the cache, note a revision, then push it out of the cache's history.
    let first = maps
        .list(&kube::api::ListParams::default().match_any())
        .await
        .unwrap();
    let rv = first.metadata.resource_version.unwrap();
    for i in 0..10 {
        let cm = serde_json::from_value(json!({"metadata": {"name": format!("h{i}")}})).unwrap();
        maps.create(&kube::api::PostParams::default(), &cm)
            .await
            .unwrap();
    }
    let mut events = maps
        .watch(&kube::api::WatchParams::default(), &rv)
        .await
        .unwrap()
        .boxed();
    use futures::StreamExt;
    match events.next().await {
        Some(Err(kube::Error::Api(status))) => assert_eq!(status.code, 410, "{status:?}"),
        Some(Ok(kube::core::WatchEvent::Error(status))) => assert_eq!(status.code, 410),
        other => panic!("expected 410 Gone, got {other:?}"),
    }
}
