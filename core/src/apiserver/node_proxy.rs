//! The API server's side of what only nodes have: `pods/log` (streamed), `pods/exec` and
//! `pods/attach` over websockets (`v5.channel.k8s.io`, `v4.channel.k8s.io`), and the
//! `metrics.k8s.io` API (PodMetrics, NodeMetrics) built from each node's `/stats/summary`.
//! `pods/portforward` lives in `port_forward`.
//!
//! It finds a pod's node through the Node object (InternalIP and
//! `status.daemonEndpoints.kubeletEndpoint.Port`) and calls the node agent's server (HTTPS
//! with the API server's client certificate in secure clusters, see `node_tls`).
//! It reads the store, never writes it.

use super::handler::Ctx;
use super::{ApiError, ApiState};
use crate::node::{ExecFrame, StatsSummary};
use axum::body::Body;
use axum::extract::ws::{Message, WebSocket};
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The subprotocols of the exec/attach websocket, most preferred first.
const STREAM_PROTOCOLS: [&str; 3] = ["v5.channel.k8s.io", "v4.channel.k8s.io", "channel.k8s.io"];

pub(super) async fn node_base(state: &ApiState, node_name: &str) -> Result<String, ApiError> {
    let registry = state.registry();
    let nodes = registry
        .get("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let node = state
        .storage
        .get(nodes, None, node_name)
        .await
        .map_err(|_| ApiError::bad_request(format!("node {node_name:?} not found")))?;
    node_base_of(&node, state.node_scheme()).ok_or_else(|| {
        ApiError::bad_request(format!("node {node_name:?} has no reachable agent address"))
    })
}

fn node_base_of(node: &Value, scheme: &str) -> Option<String> {
    let addresses = node.pointer("/status/addresses")?.as_array()?;
    let address = addresses
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .or_else(|| addresses.first())?["address"]
        .as_str()?;
    let port = node
        .pointer("/status/daemonEndpoints/kubeletEndpoint/Port")?
        .as_u64()?;
    let host = if address.contains(':') {
        format!("[{address}]")
    } else {
        address.to_string()
    };
    Some(format!("{scheme}://{host}:{port}"))
}

pub(super) fn encode(value: &str) -> String {
    let mut out = String::new();
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// The pod, its node's agent address and the chosen container.
struct PodTarget {
    namespace: String,
    name: String,
    container: String,
    base: String,
}

async fn target(ctx: &Ctx, name: &str) -> Result<PodTarget, ApiError> {
    let pod = super::handler::get_object(ctx, name).await?;
    let containers: Vec<String> = pod
        .pointer("/spec/containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .chain(
            pod.pointer("/spec/initContainers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten(),
        )
        .filter_map(|c| c["name"].as_str().map(str::to_string))
        .collect();
    let container = match ctx.query.get("container").filter(|c| !c.is_empty()) {
        Some(c) if containers.iter().any(|n| n == c) => c.to_string(),
        Some(c) => {
            return Err(ApiError::bad_request(format!(
                "container {c} is not valid for pod {name}"
            )))
        }
        None => {
            let app: Vec<&str> = pod
                .pointer("/spec/containers")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter_map(|c| c["name"].as_str())
                .collect();
            match app.as_slice() {
                [only] => only.to_string(),
                many => {
                    return Err(ApiError::bad_request(format!(
                        "a container name must be specified for pod {name}, choose one of: [{}]",
                        many.join(" ")
                    )))
                }
            }
        }
    };
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    Ok(PodTarget {
        namespace: ctx.path.namespace.clone().unwrap_or_default(),
        name: name.to_string(),
        container,
        base: node_base(&ctx.state, node).await?,
    })
}

async fn call_node(
    state: &ApiState,
    method: &str,
    uri: &str,
) -> Result<Response<hyper::body::Incoming>, ApiError> {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(format!("building the node request: {e}")))?;
    let response = state
        .node_client
        .request(request)
        .await
        .map_err(|e| ApiError::unavailable(format!("the node agent did not answer: {e}")))?;
    if response.status().is_success() {
        return Ok(response);
    }
    let code = response.status();
    let text = body_text(response.into_body()).await;
    Err(match code {
        StatusCode::NOT_FOUND => ApiError::bad_request(text),
        c if c.is_client_error() => ApiError::bad_request(text),
        _ => ApiError::internal(text),
    })
}

/// A node agent's answer body as text (its error message); empty when it cannot be read.
pub(super) async fn body_text(body: hyper::body::Incoming) -> String {
    body.collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string())
        .unwrap_or_default()
}

/// `GET pods/{name}/log`: the container's output as `text/plain`, streamed while following.
pub(crate) async fn pod_log(ctx: &Ctx, name: &str) -> Result<Response<Body>, ApiError> {
    let target = target(ctx, name).await?;
    let mut query = Vec::new();
    for key in ["follow", "previous", "timestamps"] {
        if ctx.query.bool(key)? {
            query.push(format!("{key}=true"));
        }
    }
    if let Some(tail) = ctx.query.u64("tailLines")? {
        query.push(format!("tailLines={tail}"));
    }
    let uri = format!(
        "{}/containerLogs/{}/{}/{}?{}",
        target.base,
        encode(&target.namespace),
        encode(&target.name),
        encode(&target.container),
        query.join("&")
    );
    let upstream = call_node(&ctx.state, "GET", &uri).await?;
    let mut response = Response::new(Body::new(upstream.into_body()));
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    Ok(response)
}

/// `pods/{name}/exec` and `pods/{name}/attach`: upgrades to a websocket and relays the node's
/// frames. SPDY clients get a clear 400.
pub(crate) async fn pod_stream(
    ctx: &mut Ctx,
    name: &str,
    attach: bool,
) -> Result<Response<Body>, ApiError> {
    let Some(upgrade) = ctx.websocket.take() else {
        let spdy = ctx
            .headers
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().starts_with("spdy"));
        return Err(ApiError::bad_request(if spdy {
            "SPDY streaming is not supported by this server: use a client that speaks websockets (v5.channel.k8s.io or v4.channel.k8s.io), such as kubectl 1.30 or newer"
        } else {
            "Upgrade request required: exec and attach are served over websockets (v5.channel.k8s.io, v4.channel.k8s.io)"
        }));
    };
    let offered = ctx
        .headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .collect::<Vec<_>>();
    if !offered.is_empty()
        && !offered
            .iter()
            .any(|p| STREAM_PROTOCOLS.contains(&p.as_str()))
    {
        return Err(ApiError::bad_request(format!(
            "none of the offered websocket subprotocols {offered:?} is supported; supported: {STREAM_PROTOCOLS:?}"
        )));
    }
    let target = target(ctx, name).await?;
    let uri = if attach {
        format!(
            "{}/containerLogs/{}/{}/{}?follow=true&tailLines=0",
            target.base,
            encode(&target.namespace),
            encode(&target.name),
            encode(&target.container)
        )
    } else {
        let command = ctx.query.all("command");
        if command.is_empty() {
            return Err(ApiError::bad_request(
                "you must specify at least one command for the container",
            ));
        }
        let query: Vec<String> = command
            .iter()
            .map(|c| format!("command={}", encode(c)))
            .collect();
        format!(
            "{}/exec/{}/{}/{}?{}",
            target.base,
            encode(&target.namespace),
            encode(&target.name),
            encode(&target.container),
            query.join("&")
        )
    };
    let state = ctx.state.clone();
    let response = upgrade
        .protocols(STREAM_PROTOCOLS)
        .on_upgrade(move |socket| relay(socket, state, uri, attach));
    Ok(response)
}

async fn relay(mut socket: WebSocket, state: Arc<ApiState>, uri: String, attach: bool) {
    let send = |channel: u8, data: &[u8]| {
        let mut message = Vec::with_capacity(data.len() + 1);
        message.push(channel);
        message.extend_from_slice(data);
        Message::Binary(message.into())
    };
    let failure = |message: String| {
        json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError"})
            .to_string()
    };
    let method = if attach { "GET" } else { "POST" };
    match call_node(&state, method, &uri).await {
        Err(err) => {
            let _ = socket.send(send(3, failure(err.message).as_bytes())).await;
        }
        Ok(response) => {
            let mut body = response.into_body();
            let mut buffer: Vec<u8> = Vec::new();
            loop {
                let frame = tokio::select! {
                    frame = body.frame() => frame,
                    // A client that goes away ends the relay.
                    incoming = socket.recv() => match incoming {
                        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                        Some(Ok(_)) => continue,
                    },
                };
                let Some(frame) = frame else { break };
                let Ok(frame) = frame else { break };
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if attach {
                    if socket.send(send(1, &data)).await.is_err() {
                        return;
                    }
                    continue;
                }
                buffer.extend_from_slice(&data);
                while let Some((frame, used)) = ExecFrame::decode(&buffer) {
                    buffer.drain(..used);
                    if socket.send(send(frame.channel, &frame.data)).await.is_err() {
                        return;
                    }
                }
            }
            if attach {
                let status = json!({"metadata": {}, "status": "Success"}).to_string();
                let _ = socket.send(send(3, status.as_bytes())).await;
            }
        }
    }
    let _ = socket
        .send(Message::Close(Some(axum::extract::ws::CloseFrame {
            code: axum::extract::ws::close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

fn cpu_quantity(nano_cores: u64) -> String {
    format!("{nano_cores}n")
}

fn memory_quantity(bytes: u64) -> String {
    format!("{}Ki", bytes / 1024)
}

async fn summaries(state: &ApiState) -> Result<Vec<StatsSummary>, ApiError> {
    let registry = state.registry();
    let nodes = registry
        .get("", "v1", "nodes")
        .ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let list = state.storage.list(nodes, None, None, None, None).await?;
    let calls = list
        .items
        .iter()
        .filter_map(|node| node_base_of(node, state.node_scheme()))
        .map(|base| async move {
            let response = tokio::time::timeout(
                Duration::from_secs(5),
                call_node(state, "GET", &format!("{base}/stats/summary")),
            )
            .await
            .ok()?
            .ok()?;
            let bytes = response.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice::<StatsSummary>(&bytes).ok()
        });
    Ok(futures::future::join_all(calls)
        .await
        .into_iter()
        .flatten()
        .collect())
}

/// `metrics.k8s.io/v1beta1` `pods` and `nodes`: get and list.
pub(crate) async fn metrics(ctx: &Ctx, verb: &str) -> Result<Value, ApiError> {
    if !matches!(verb, "get" | "list") {
        return Err(ApiError::method_not_allowed(format!(
            "{verb} is not supported on {}",
            ctx.kind.resource_name()
        )));
    }
    let summaries = summaries(&ctx.state).await?;
    let api_version = ctx.kind.api_version();
    let name = ctx.path.name.as_deref();
    let mut items = Vec::new();
    if ctx.kind.kind == "NodeMetrics" {
        for summary in &summaries {
            if name.is_some_and(|n| n != summary.node_name) {
                continue;
            }
            items.push(json!({
                "kind": "NodeMetrics", "apiVersion": api_version,
                "metadata": {"name": summary.node_name, "creationTimestamp": summary.timestamp},
                "timestamp": summary.timestamp, "window": format!("{}s", summary.window_seconds),
                "usage": {"cpu": cpu_quantity(summary.node_usage_nano_cores), "memory": memory_quantity(summary.node_working_set_bytes)},
            }));
        }
    } else {
        let namespace = ctx.path.namespace.as_deref();
        for summary in &summaries {
            for pod in &summary.pods {
                if namespace.is_some_and(|n| n != pod.namespace)
                    || name.is_some_and(|n| n != pod.name)
                {
                    continue;
                }
                let containers: Vec<Value> = pod
                    .containers
                    .iter()
                    .map(|c| json!({"name": c.name, "usage": {"cpu": cpu_quantity(c.usage_nano_cores), "memory": memory_quantity(c.working_set_bytes)}}))
                    .collect();
                items.push(json!({
                    "kind": "PodMetrics", "apiVersion": api_version,
                    "metadata": {"name": pod.name, "namespace": pod.namespace, "creationTimestamp": summary.timestamp},
                    "timestamp": summary.timestamp, "window": format!("{}s", summary.window_seconds),
                    "containers": containers,
                }));
            }
        }
    }
    if let Some(name) = name {
        return items
            .into_iter()
            .next()
            .ok_or_else(|| ApiError::not_found(&ctx.kind.resource_name(), name));
    }
    items.sort_by(|a, b| {
        (
            a["metadata"]["namespace"].as_str(),
            a["metadata"]["name"].as_str(),
        )
            .cmp(&(
                b["metadata"]["namespace"].as_str(),
                b["metadata"]["name"].as_str(),
            ))
    });
    Ok(json!({
        "kind": format!("{}List", ctx.kind.kind), "apiVersion": api_version,
        "metadata": {}, "items": items,
    }))
}
