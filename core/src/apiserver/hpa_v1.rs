//! autoscaling/v1 HorizontalPodAutoscalers, served by conversion to and from the stored
//! autoscaling/v2 form (what `kubectl autoscale` and older manifests use). A v1 request is
//! rewritten to its v2 path — bodies converted up, responses (objects, lists, watch events)
//! converted down — so storage, validation and the watch cache see one version. As
//! Kubernetes does, what v1 cannot express (other metrics, behavior, conditions) travels in
//! `autoscaling.alpha.kubernetes.io/*` annotations, so a v1 round trip loses nothing.

use super::body::{body_format, parse_body, BodyFormat};
use super::error::ApiError;
use super::handler::{apply_patch, handle};
use super::ApiState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, request::Parts, HeaderValue, Method, Request, Response, StatusCode};
use futures::StreamExt;
use serde_json::{json, Map, Value};
use std::sync::Arc;

const V1_PREFIX: &str = "/apis/autoscaling/v1/";
const METRICS: &str = "autoscaling.alpha.kubernetes.io/metrics";
const BEHAVIOR: &str = "autoscaling.alpha.kubernetes.io/behavior";
const CONDITIONS: &str = "autoscaling.alpha.kubernetes.io/conditions";
const CURRENT_METRICS: &str = "autoscaling.alpha.kubernetes.io/current-metrics";

/// Whether a request path is an autoscaling/v1 HorizontalPodAutoscaler one.
pub(crate) fn is_v1_hpa(path: &str) -> bool {
    path.strip_prefix(V1_PREFIX)
        .is_some_and(|rest| rest.split('/').any(|s| s == "horizontalpodautoscalers"))
}

fn is_cpu_utilization(metric: &Value) -> bool {
    metric["type"] == "Resource"
        && metric["resource"]["name"] == "cpu"
        && metric["resource"]["target"]["type"] == "Utilization"
}

fn annotations(object: &mut Value) -> &mut Map<String, Value> {
    if !object["metadata"].is_object() {
        object["metadata"] = json!({});
    }
    if !object["metadata"]["annotations"].is_object() {
        object["metadata"]["annotations"] = json!({});
    }
    object["metadata"]["annotations"]
        .as_object_mut()
        .expect("just made an object")
}

fn tidy_annotations(object: &mut Value) {
    if object["metadata"]["annotations"]
        .as_object()
        .is_some_and(Map::is_empty)
    {
        if let Some(meta) = object["metadata"].as_object_mut() {
            meta.remove("annotations");
        }
    }
}

fn take_json_annotation(object: &mut Value, key: &str) -> Option<Value> {
    let text = annotations(object).remove(key)?;
    serde_json::from_str(text.as_str()?).ok()
}

/// An autoscaling/v1 HorizontalPodAutoscaler as autoscaling/v2.
pub fn up(mut object: Value) -> Value {
    object["apiVersion"] = json!("autoscaling/v2");
    let mut metrics: Vec<Value> = Vec::new();
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        if let Some(percent) = spec
            .remove("targetCPUUtilizationPercentage")
            .filter(|v| !v.is_null())
        {
            metrics.push(json!({"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": percent}}}));
        }
    }
    if let Some(Value::Array(others)) = take_json_annotation(&mut object, METRICS) {
        metrics.extend(others);
    }
    if !metrics.is_empty() {
        object["spec"]["metrics"] = Value::Array(metrics);
    }
    if let Some(behavior) = take_json_annotation(&mut object, BEHAVIOR) {
        object["spec"]["behavior"] = behavior;
    }
    let conditions = take_json_annotation(&mut object, CONDITIONS);
    let current_others = take_json_annotation(&mut object, CURRENT_METRICS);
    if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
        let mut current: Vec<Value> = Vec::new();
        if let Some(percent) = status
            .remove("currentCPUUtilizationPercentage")
            .filter(|v| !v.is_null())
        {
            current.push(json!({"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": percent}}}));
        }
        if let Some(Value::Array(others)) = current_others {
            current.extend(others);
        }
        if !current.is_empty() {
            status.insert("currentMetrics".into(), Value::Array(current));
        }
        if let Some(conditions) = conditions {
            status.insert("conditions".into(), conditions);
        }
    }
    tidy_annotations(&mut object);
    object
}

/// An autoscaling/v2 HorizontalPodAutoscaler as autoscaling/v1.
pub fn down(mut object: Value) -> Value {
    object["apiVersion"] = json!("autoscaling/v1");
    let mut extra: Vec<(&str, Value)> = Vec::new();
    if let Some(spec) = object.get_mut("spec").and_then(Value::as_object_mut) {
        let metrics = match spec.remove("metrics") {
            Some(Value::Array(m)) => m,
            _ => Vec::new(),
        };
        let (cpu, others): (Vec<Value>, Vec<Value>) =
            metrics.into_iter().partition(is_cpu_utilization);
        if let Some(percent) = cpu
            .first()
            .map(|m| m["resource"]["target"]["averageUtilization"].clone())
        {
            spec.insert("targetCPUUtilizationPercentage".into(), percent);
        }
        if !others.is_empty() {
            extra.push((METRICS, Value::Array(others)));
        }
        if let Some(behavior) = spec.remove("behavior").filter(|b| !b.is_null()) {
            extra.push((BEHAVIOR, behavior));
        }
    }
    if let Some(status) = object.get_mut("status").and_then(Value::as_object_mut) {
        let current = match status.remove("currentMetrics") {
            Some(Value::Array(m)) => m,
            _ => Vec::new(),
        };
        let (cpu, others): (Vec<Value>, Vec<Value>) = current.into_iter().partition(|m| {
            m["type"] == "Resource"
                && m["resource"]["name"] == "cpu"
                && !m["resource"]["current"]["averageUtilization"].is_null()
        });
        if let Some(percent) = cpu
            .first()
            .map(|m| m["resource"]["current"]["averageUtilization"].clone())
        {
            status.insert("currentCPUUtilizationPercentage".into(), percent);
        }
        if !others.is_empty() {
            extra.push((CURRENT_METRICS, Value::Array(others)));
        }
        if let Some(conditions) = status.remove("conditions").filter(|c| !c.is_null()) {
            extra.push((CONDITIONS, conditions));
        }
    }
    for (key, value) in extra {
        annotations(&mut object).insert(key.into(), json!(value.to_string()));
    }
    object
}

/// Converts whatever a v2 response carries (an object, a list, a watch event) to v1.
fn down_any(mut value: Value) -> Value {
    match value["kind"].as_str() {
        Some("HorizontalPodAutoscaler") => down(value),
        Some("HorizontalPodAutoscalerList") => {
            value["apiVersion"] = json!("autoscaling/v1");
            if let Some(items) = value["items"].as_array_mut() {
                for item in items.iter_mut() {
                    *item = down(std::mem::take(item));
                }
            }
            value
        }
        _ if value.get("type").is_some()
            && value["object"]["kind"] == "HorizontalPodAutoscaler" =>
        {
            value["object"] = down(std::mem::take(&mut value["object"]));
            value
        }
        _ => value,
    }
}

async fn inner(state: &Arc<ApiState>, request: Request<Body>) -> Response<Body> {
    Box::pin(handle(State(state.clone()), request)).await
}

fn sub_request(
    parts: &Parts,
    method: Method,
    path_and_query: &str,
    body: Vec<u8>,
) -> Request<Body> {
    let mut builder = Request::builder().method(method).uri(path_and_query);
    for (name, value) in &parts.headers {
        if name != header::CONTENT_LENGTH && name != header::CONTENT_TYPE {
            builder = builder.header(name, value);
        }
    }
    // The caller's identity travels with the request.
    if let Some(certificate) = parts.extensions.get::<super::ClientCertificate>() {
        builder = builder.extension(certificate.clone());
    }
    if let Some(user) = parts.extensions.get::<super::InProcessUser>() {
        builder = builder.extension(user.clone());
    }
    builder
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body))
        .unwrap_or_default()
}

fn error_response(err: ApiError) -> Response<Body> {
    let status = StatusCode::from_u16(err.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = Response::new(Body::from(err.status().to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Converts a v2 response to v1: whole JSON bodies at once, watch streams line by line.
async fn convert_response(response: Response<Body>, streaming: bool) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    let is_json = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("json"));
    if !is_json {
        return Response::from_parts(parts, body);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    if streaming {
        let mut pending: Vec<u8> = Vec::new();
        let stream = body.into_data_stream().map(move |chunk| {
            let chunk = chunk?;
            pending.extend_from_slice(&chunk);
            let mut out = Vec::new();
            while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                match serde_json::from_slice::<Value>(&line) {
                    Ok(event) => {
                        out.extend(serde_json::to_vec(&down_any(event)).unwrap_or_default());
                        out.push(b'\n');
                    }
                    Err(_) => out.extend(line),
                }
            }
            Ok::<_, axum::Error>(bytes::Bytes::from(out))
        });
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let converted = match serde_json::from_slice::<Value>(&bytes) {
        Ok(value) => serde_json::to_vec(&down_any(value)).unwrap_or_default(),
        Err(_) => bytes.to_vec(),
    };
    Response::from_parts(parts, Body::from(converted))
}

/// Serves an autoscaling/v1 HorizontalPodAutoscaler request through the v2 resource.
pub(crate) async fn serve(state: Arc<ApiState>, parts: Parts, body: Body) -> Response<Body> {
    let path = parts
        .uri
        .path()
        .replacen("/autoscaling/v1/", "/autoscaling/v2/", 1);
    let query = parts
        .uri
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let target = format!("{path}{query}");
    let streaming =
        query.contains("watch=true") || query.contains("watch=1") || path.contains("/watch/");
    let body = match axum::body::to_bytes(body, state.config.max_body_bytes).await {
        Ok(b) => b,
        Err(_) => return error_response(ApiError::too_large(state.config.max_body_bytes)),
    };
    let response = match parts.method.clone() {
        Method::POST | Method::PUT => {
            let format = match body_format(&parts.headers) {
                Ok(f @ (BodyFormat::Json | BodyFormat::Yaml | BodyFormat::Protobuf)) => f,
                Ok(_) => return error_response(ApiError::unsupported_media_type("a patch type")),
                Err(err) => return error_response(err),
            };
            let object = match parse_body(&body, format) {
                Ok(Some(object)) => object,
                Ok(None) => return error_response(ApiError::bad_request("the body is empty")),
                Err(err) => return error_response(err),
            };
            let upgraded = serde_json::to_vec(&up(object)).unwrap_or_default();
            inner(
                &state,
                sub_request(&parts, parts.method.clone(), &target, upgraded),
            )
            .await
        }
        Method::PATCH => match patch(&state, &parts, &path, &query, &body).await {
            Ok(response) => response,
            Err(err) => return error_response(err),
        },
        method => inner(&state, sub_request(&parts, method, &target, body.to_vec())).await,
    };
    convert_response(response, streaming).await
}

/// A patch to the v1 form: applied to the stored object seen as v1, written back as v2 (retried
/// on conflicting writes).
async fn patch(
    state: &Arc<ApiState>,
    parts: &Parts,
    path: &str,
    query: &str,
    body: &[u8],
) -> Result<Response<Body>, ApiError> {
    let format = body_format(&parts.headers)?;
    let patch = match format {
        BodyFormat::MergePatch | BodyFormat::JsonPatch | BodyFormat::StrategicMergePatch => {
            parse_body(body, format)?.ok_or_else(|| ApiError::bad_request("the patch is empty"))?
        }
        _ => {
            return Err(ApiError::unsupported_media_type(
                "server-side apply of autoscaling/v1 (use autoscaling/v2)",
            ))
        }
    };
    // The object path without a subresource, for the read.
    for _ in 0..5 {
        let current = inner(state, sub_request(parts, Method::GET, path, Vec::new())).await;
        if current.status() != StatusCode::OK {
            return Ok(current);
        }
        let bytes = axum::body::to_bytes(current.into_body(), usize::MAX)
            .await
            .map_err(|e| ApiError::internal(e.to_string()))?;
        let stored: Value =
            serde_json::from_slice(&bytes).map_err(|e| ApiError::internal(e.to_string()))?;
        let version = stored["metadata"]["resourceVersion"].clone();
        let mut as_v1 = down(stored);
        let kind = state
            .registry()
            .get("autoscaling", "v1", "horizontalpodautoscalers")
            .cloned()
            .ok_or_else(ApiError::no_route)?;
        apply_patch(&kind, format, &mut as_v1, &patch)?;
        let explicit = patch
            .pointer("/metadata/resourceVersion")
            .is_some_and(|v| !v.is_null());
        if !explicit {
            as_v1["metadata"]["resourceVersion"] = version;
        }
        let upgraded = serde_json::to_vec(&up(as_v1)).unwrap_or_default();
        let written = inner(
            state,
            sub_request(parts, Method::PUT, &format!("{path}{query}"), upgraded),
        )
        .await;
        if written.status() == StatusCode::CONFLICT && !explicit {
            continue;
        }
        return Ok(written);
    }
    Err(ApiError::too_many_requests(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_and_v2_convert_both_ways_without_loss() {
        let v2 = json!({
            "apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web"},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1, "maxReplicas": 5,
                "metrics": [
                    {"type": "Resource", "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 50}}},
                    {"type": "Resource", "resource": {"name": "memory", "target": {"type": "AverageValue", "averageValue": "100Mi"}}},
                ],
                "behavior": {"scaleDown": {"stabilizationWindowSeconds": 0}},
            },
            "status": {"currentReplicas": 2, "desiredReplicas": 3,
                       "currentMetrics": [{"type": "Resource", "resource": {"name": "cpu", "current": {"averageUtilization": 75}}}],
                       "conditions": [{"type": "AbleToScale", "status": "True"}]},
        });
        let v1 = down(v2.clone());
        assert_eq!(v1["apiVersion"], "autoscaling/v1");
        assert_eq!(v1["spec"]["targetCPUUtilizationPercentage"], 50);
        assert_eq!(v1["status"]["currentCPUUtilizationPercentage"], 75);
        assert!(v1["spec"].get("metrics").is_none());
        assert!(v1["metadata"]["annotations"][METRICS]
            .as_str()
            .unwrap()
            .contains("memory"));
        assert_eq!(up(v1), v2);
        // A plain v1 object.
        let plain = json!({"apiVersion": "autoscaling/v1", "kind": "HorizontalPodAutoscaler", "metadata": {"name": "a"},
                           "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "a"}, "maxReplicas": 3, "targetCPUUtilizationPercentage": 80}});
        let upgraded = up(plain.clone());
        assert_eq!(
            upgraded["spec"]["metrics"][0]["resource"]["target"]["averageUtilization"],
            80
        );
        assert_eq!(down(upgraded), plain);
    }

    #[test]
    fn only_v1_hpa_paths_are_converted() {
        assert!(is_v1_hpa(
            "/apis/autoscaling/v1/namespaces/x/horizontalpodautoscalers"
        ));
        assert!(is_v1_hpa("/apis/autoscaling/v1/horizontalpodautoscalers"));
        assert!(is_v1_hpa(
            "/apis/autoscaling/v1/watch/namespaces/x/horizontalpodautoscalers/a"
        ));
        assert!(!is_v1_hpa(
            "/apis/autoscaling/v2/namespaces/x/horizontalpodautoscalers"
        ));
        assert!(!is_v1_hpa("/apis/apps/v1/namespaces/x/deployments/a/scale"));
    }
}
