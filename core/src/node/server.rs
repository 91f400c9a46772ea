//! The node agent's HTTP server, which the API server calls for what only the node has:
//! container logs (`/containerLogs/{ns}/{pod}/{container}`), command execution
//! (`/exec/{ns}/{pod}/{container}?command=…`, answered as a stream of [`ExecFrame`]s), port
//! forwarding (`POST /portForward/{ns}/{pod}?port=N`, upgraded to a raw TCP tunnel into the
//! pod's network namespace) and resource usage (`/stats/summary`, a [`StatsSummary`] sampled
//! every `stats_interval`).
//!
//! It reads the runtime and the agent's pod table; it never writes to the API.

use super::AgentShared;
use crate::apiserver::Query;
use crate::runtime::{labels, ContainerInfo, ContainerState, LogOptions, RuntimeError};
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Extension;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};
use tokio_util::sync::CancellationToken;

/// One frame of an exec stream between node and API server: a channel (1 stdout, 2 stderr,
/// 3 status as a JSON `Status`) and its bytes, encoded as `[channel][u32 length BE][bytes]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecFrame {
    /// The channel.
    pub channel: u8,
    /// The bytes.
    pub data: Bytes,
}

impl ExecFrame {
    /// Encodes the frame.
    pub fn encode(&self) -> Bytes {
        let mut out = Vec::with_capacity(5 + self.data.len());
        out.push(self.channel);
        out.extend_from_slice(&(self.data.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.data);
        out.into()
    }

    /// Decodes one frame from the front of `buffer`; returns it and the bytes it used, or
    /// `None` when the buffer holds no whole frame yet.
    pub fn decode(buffer: &[u8]) -> Option<(ExecFrame, usize)> {
        let header = buffer.get(..5)?;
        let length = u32::from_be_bytes([header[1], header[2], header[3], header[4]]) as usize;
        let data = buffer.get(5..5 + length)?;
        Some((
            ExecFrame {
                channel: header[0],
                data: Bytes::copy_from_slice(data),
            },
            5 + length,
        ))
    }
}

/// Usage of one container.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ContainerUsage {
    /// Container name.
    pub name: String,
    /// CPU in nanocores (averaged over the last sampling interval).
    pub usage_nano_cores: u64,
    /// Working-set memory in bytes.
    pub working_set_bytes: u64,
}

/// Usage of one pod.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodUsage {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Containers.
    pub containers: Vec<ContainerUsage>,
}

/// A node's resource usage, as `/stats/summary` serves it.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StatsSummary {
    /// Node name.
    pub node_name: String,
    /// When it was sampled (RFC 3339).
    pub timestamp: String,
    /// The sampling window in seconds.
    pub window_seconds: u64,
    /// Total CPU of the node's pods in nanocores.
    pub node_usage_nano_cores: u64,
    /// Total working-set memory of the node's pods in bytes.
    pub node_working_set_bytes: u64,
    /// Per pod.
    pub pods: Vec<PodUsage>,
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<AgentShared>,
    cancel: CancellationToken,
) {
    let tls = shared.config.server_tls.clone();
    // This node's state reaches the shared routes' handlers as a request extension; the
    // router wrapping them holds nothing but that.
    let router = axum::Router::new().fallback_service(tower::Layer::layer(
        &Extension(shared),
        routes(tls.is_some()),
    ));
    let result = match tls {
        Some(tls) => crate::apiserver::serve_tls(listener, router, tls, cancel).await,
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await
        }
    };
    if let Err(err) = result {
        tracing::warn!("node server stopped: {err}");
    }
}

/// The node server's routes, built once per process: a simulated cluster runs thousands of
/// node agents, and a router is some 15 KB. With `tls`, only the API server gets through.
fn routes(tls: bool) -> axum::Router {
    static PLAIN: OnceLock<axum::Router> = OnceLock::new();
    static GUARDED: OnceLock<axum::Router> = OnceLock::new();
    let build = || {
        axum::Router::new()
            .route("/healthz", get(|| async { "ok" }))
            .route(
                "/containerLogs/{namespace}/{pod}/{container}",
                get(container_logs),
            )
            .route("/exec/{namespace}/{pod}/{container}", post(exec))
            .route("/stats/summary", get(stats_summary))
            .route("/portForward/{namespace}/{pod}", post(port_forward))
    };
    if tls {
        GUARDED
            .get_or_init(|| build().layer(axum::middleware::from_fn(only_the_api_server)))
            .clone()
    } else {
        PLAIN.get_or_init(build).clone()
    }
}

/// Over TLS, only callers whose (CA-verified) certificate puts them in `system:masters` — the
/// API server — reach the node's logs, exec and port-forward.
async fn only_the_api_server(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let allowed = request
        .extensions()
        .get::<crate::apiserver::ClientCertificate>()
        .and_then(|c| crate::authn::user_of_certificate(c.der()))
        .is_some_and(|user| user.groups.iter().any(|g| g == crate::authz::MASTERS_GROUP));
    if allowed {
        next.run(request).await
    } else {
        Failure(StatusCode::FORBIDDEN, "forbidden".into()).into_response()
    }
}

/// An error answer of the node server: a status and a plain-text message.
struct Failure(StatusCode, String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        (self.0, self.1).into_response()
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> Failure {
    Failure(status, message.into())
}

fn parse_query(raw: Option<&str>) -> Result<Query, Failure> {
    Query::parse(raw).map_err(|e| error(StatusCode::BAD_REQUEST, e.message.clone()))
}

/// The instances of a pod's container, newest first.
async fn instances(
    shared: &AgentShared,
    namespace: &str,
    pod: &str,
    container: &str,
) -> Result<Vec<ContainerInfo>, Failure> {
    let pod = shared.pod(namespace, pod).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on this node"),
        )
    })?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let selector = BTreeMap::from([
        (labels::POD_UID.to_string(), uid),
        (labels::CONTAINER.to_string(), container.to_string()),
    ]);
    let mut list = shared
        .runtime
        .list_containers(&selector)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    list.sort_by_key(|c| std::cmp::Reverse(c.restart_count()));
    if list.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!(
                "container {container:?} in pod {namespace}/{} is waiting to start",
                pod.metadata.name.as_deref().unwrap_or_default()
            ),
        ));
    }
    Ok(list)
}

async fn container_logs(
    Extension(shared): Extension<Arc<AgentShared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure> {
    let query = parse_query(query.as_deref())?;
    let list = instances(&shared, &namespace, &pod, &container).await?;
    let target = if query.bool("previous").unwrap_or(false) {
        match list.get(1) {
            Some(previous) => previous,
            None => {
                return Err(error(
                    StatusCode::BAD_REQUEST,
                    format!("previous terminated container {container:?} in pod {pod:?} not found"),
                ))
            }
        }
    } else {
        &list[0]
    };
    let tail_lines = query.get("tailLines").and_then(|v| v.parse().ok());
    let options = LogOptions {
        follow: query.bool("follow").unwrap_or(false),
        tail_lines,
        timestamps: query.bool("timestamps").unwrap_or(false),
    };
    match shared.runtime.logs(&target.id, options).await {
        Ok(stream) => {
            let body = Body::from_stream(stream.map(|r| r.map_err(std::io::Error::other)));
            Ok(([(header::CONTENT_TYPE, "text/plain")], body).into_response())
        }
        Err(RuntimeError::NotFound(what)) => Err(error(StatusCode::NOT_FOUND, what)),
        Err(err) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, err.to_string())),
    }
}

async fn exec(
    Extension(shared): Extension<Arc<AgentShared>>,
    Path((namespace, pod, container)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Response, Failure> {
    let query = parse_query(query.as_deref())?;
    let command: Vec<String> = query
        .all("command")
        .into_iter()
        .map(str::to_string)
        .collect();
    if command.is_empty() {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "you must specify at least one command",
        ));
    }
    let list = instances(&shared, &namespace, &pod, &container).await?;
    if !matches!(list[0].state, ContainerState::Running { .. }) {
        return Err(error(
            StatusCode::BAD_REQUEST,
            format!("container {container} is not running"),
        ));
    }
    let output = shared
        .runtime
        .exec(&list[0].id, &command, Duration::from_secs(300))
        .await;
    let status = match &output {
        Ok(out) if out.exit_code == 0 => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(out) => serde_json::json!({
            "metadata": {}, "status": "Failure",
            "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code {}", out.exit_code),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": out.exit_code.to_string()}]},
        }),
        Err(err) => serde_json::json!({
            "metadata": {}, "status": "Failure", "message": err.to_string(), "reason": "InternalError",
        }),
    };
    let mut frames = Vec::new();
    if let Ok(out) = &output {
        if !out.stdout.is_empty() {
            frames.extend_from_slice(
                &ExecFrame {
                    channel: 1,
                    data: out.stdout.clone().into(),
                }
                .encode(),
            );
        }
        if !out.stderr.is_empty() {
            frames.extend_from_slice(
                &ExecFrame {
                    channel: 2,
                    data: out.stderr.clone().into(),
                }
                .encode(),
            );
        }
    }
    frames.extend_from_slice(
        &ExecFrame {
            channel: 3,
            data: status.to_string().into(),
        }
        .encode(),
    );
    Ok(([(header::CONTENT_TYPE, "application/octet-stream")], frames).into_response())
}

async fn stats_summary(Extension(shared): Extension<Arc<AgentShared>>) -> Response {
    let sampled = shared
        .stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let body = match sampled.is_empty() {
        true => Bytes::from(serde_json::to_vec(&StatsSummary::default()).unwrap_or_default()),
        false => sampled,
    };
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// `POST /portForward/{namespace}/{pod}?port=N` with `Upgrade: tcp`: connects to the pod's
/// port through the runtime, answers 101 and relays bytes both ways until either side closes.
async fn port_forward(
    Extension(shared): Extension<Arc<AgentShared>>,
    Path((namespace, pod)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    mut request: axum::extract::Request,
) -> Result<Response, Failure> {
    let query = parse_query(query.as_deref())?;
    let port: u16 = query
        .get("port")
        .and_then(|p| p.parse().ok())
        .filter(|p| *p > 0)
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "a port between 1 and 65535 is required",
            )
        })?;
    let upgrade = request
        .extensions_mut()
        .remove::<hyper::upgrade::OnUpgrade>()
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                "port forwarding needs Upgrade: tcp",
            )
        })?;
    let found = shared.pod(&namespace, &pod).ok_or_else(|| {
        error(
            StatusCode::NOT_FOUND,
            format!("pod {namespace}/{pod} is not on this node"),
        )
    })?;
    let uid = found.metadata.uid.clone().unwrap_or_default();
    let selector = BTreeMap::from([(labels::POD_UID.to_string(), uid)]);
    let sandbox = shared
        .runtime
        .list_sandboxes(&selector)
        .await
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
        .into_iter()
        .find(|s| s.ready)
        .ok_or_else(|| {
            error(
                StatusCode::BAD_REQUEST,
                format!("pod {namespace}/{pod} has no running sandbox"),
            )
        })?;
    let mut connection = shared.runtime.connect(&sandbox, port).await.map_err(|e| {
        error(
            StatusCode::BAD_GATEWAY,
            format!("error forwarding port {port} to pod {namespace}/{pod}: {e}"),
        )
    })?;
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => {
                let mut upgraded = hyper_util::rt::TokioIo::new(upgraded);
                let _ = tokio::io::copy_bidirectional(&mut upgraded, &mut connection).await;
            }
            Err(err) => tracing::debug!("port-forward upgrade failed: {err}"),
        }
    });
    Ok(Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "tcp")
        .body(Body::empty())
        .unwrap_or_default())
}

/// A container's CPU counter and when it was read, by [`container_number`].
type CpuSamples = HashMap<u64, (u64, SystemTime)>;

/// A number for container id `id` (a node keeps a sample per container between rounds, and
/// the hash of an id is a fraction of the id's size; two ids sharing one would cost one
/// round's CPU rate, no more).
fn container_number(id: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hasher::write(&mut hasher, id.as_bytes());
    std::hash::Hasher::finish(&hasher)
}

/// Samples every running container's usage each `stats_interval` and keeps the summary, as
/// `/stats/summary` serves it (its JSON: the text is a fraction of the decoded form's size).
pub(crate) async fn collect_stats(shared: Arc<AgentShared>, cancel: CancellationToken) {
    let mut previous = CpuSamples::new();
    let mut ticker = tokio::time::interval(shared.config.stats_interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {}
        }
        // A round can take a while on a busy engine; stopping the agent does not wait for it.
        let round = tokio::select! {
            _ = cancel.cancelled() => return,
            round = sample_usage(&shared, &previous) => round,
        };
        if let Some((summary, seen)) = round {
            previous = seen;
            let text = Bytes::from(serde_json::to_vec(&summary).unwrap_or_default());
            *shared.stats.lock().unwrap_or_else(|p| p.into_inner()) = text;
        }
    }
}

/// How many containers' stats are read from the runtime at once.
const STATS_CONCURRENCY: usize = 8;

/// One sampling round: the node's running containers (one listing), their stats read
/// concurrently, CPU rates against `previous`. `None` when the runtime cannot list.
async fn sample_usage(
    shared: &AgentShared,
    previous: &CpuSamples,
) -> Option<(StatsSummary, CpuSamples)> {
    let pods: HashMap<String, (String, String)> = shared
        .pods
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .values()
        .filter_map(|pod| {
            Some((
                pod.metadata.uid.clone()?,
                (
                    pod.metadata.namespace.clone().unwrap_or_default(),
                    pod.metadata.name.clone().unwrap_or_default(),
                ),
            ))
        })
        .collect();
    let selector = BTreeMap::from([(labels::NODE.to_string(), shared.config.name.clone())]);
    let containers = match shared.runtime.list_containers(&selector).await {
        Ok(containers) => containers,
        Err(err) => {
            tracing::debug!("stats: listing containers failed: {err}");
            return None;
        }
    };
    let running = containers.into_iter().filter(|c| {
        matches!(c.state, ContainerState::Running { .. })
            && c.labels
                .get(labels::POD_UID)
                .is_some_and(|uid| pods.contains_key(uid))
    });
    let sampled: Vec<(ContainerInfo, crate::runtime::ContainerStats)> =
        futures::stream::iter(running)
            .map(|container| async move {
                let stats = shared.runtime.stats(&container.id).await.ok()?;
                Some((container, stats))
            })
            .buffer_unordered(STATS_CONCURRENCY)
            .filter_map(|sample| async move { sample })
            .collect()
            .await;
    let mut summary = StatsSummary {
        node_name: shared.config.name.clone(),
        timestamp: super::pod_status::time_string(SystemTime::now()),
        window_seconds: shared.config.stats_interval.as_secs().max(1),
        ..StatsSummary::default()
    };
    let mut seen = HashMap::new();
    let mut by_pod: BTreeMap<String, PodUsage> = BTreeMap::new();
    for (container, stats) in sampled {
        let number = container_number(&container.id);
        let nano_cores = match previous.get(&number) {
            Some((cpu, at)) => {
                let elapsed = stats
                    .timestamp
                    .duration_since(*at)
                    .unwrap_or_default()
                    .as_nanos()
                    .max(1);
                (u128::from(stats.cpu_usage_nanos.saturating_sub(*cpu)) * 1_000_000_000 / elapsed)
                    as u64
            }
            None => 0,
        };
        seen.insert(number, (stats.cpu_usage_nanos, stats.timestamp));
        summary.node_usage_nano_cores += nano_cores;
        summary.node_working_set_bytes += stats.memory_bytes;
        let uid = container
            .labels
            .get(labels::POD_UID)
            .cloned()
            .unwrap_or_default();
        let (namespace, name) = pods.get(&uid).cloned().unwrap_or_default();
        let usage = by_pod.entry(uid).or_insert_with(|| PodUsage {
            namespace,
            name,
            containers: Vec::new(),
        });
        usage.containers.push(ContainerUsage {
            name: container.container_name().to_string(),
            usage_nano_cores: nano_cores,
            working_set_bytes: stats.memory_bytes,
        });
    }
    summary.pods = by_pod.into_values().collect();
    for pod in &mut summary.pods {
        pod.containers.sort_by(|a, b| a.name.cmp(&b.name));
    }
    Some((summary, seen))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let frame = ExecFrame {
            channel: 2,
            data: Bytes::from_static(b"oops"),
        };
        let mut buffer = frame.encode().to_vec();
        buffer.extend_from_slice(&[1, 0, 0]);
        let (decoded, used) = ExecFrame::decode(&buffer).unwrap();
        assert_eq!(decoded, frame);
        assert_eq!(used, 9);
        assert!(ExecFrame::decode(&buffer[used..]).is_none());
    }
}
