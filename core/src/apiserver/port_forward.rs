//! `pods/portforward`: kubectl's port forwarding. The client upgrades the connection to
//! SPDY/3.1 (`X-Stream-Protocol-Version: portforward.k8s.io`) and opens, per forwarded
//! connection, an error stream and a data stream tagged with the same `requestID` and the pod
//! `port`. Each data stream becomes one tunnel to the node agent
//! (`POST /portForward/{namespace}/{pod}?port=N`, upgraded to raw TCP), which connects to the
//! pod through its runtime. Failures are written on the error stream, as Kubernetes does.
//!
//! kubectl 1.31+ first offers the SPDY stream tunnelled in a websocket
//! (`SPDY/3.1+portforward.k8s.io`); that offer is declined, and kubectl falls back to the plain
//! SPDY upgrade served here.

use super::handler::Ctx;
use super::node_proxy::{body_text, encode, node_base};
use super::spdy::{self, Decoder, Encoder, Frame, FLAG_FIN};
use super::{ApiError, ApiState};
use axum::body::Body;
use axum::http::{header, Request, Response, StatusCode};
use bytes::{Bytes, BytesMut};
use hyper_util::rt::TokioIo;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The SPDY subprotocol of port forwarding.
const PROTOCOL: &str = "portforward.k8s.io";

/// Frames queued towards the client per session.
const OUTGOING_FRAMES: usize = 64;

/// Chunks queued from the client per forwarded connection.
const INCOMING_CHUNKS: usize = 16;

/// Answers a port-forward request: 101 and a SPDY session, or a clear error.
pub(crate) async fn serve(ctx: &mut Ctx, name: &str) -> Result<Response<Body>, ApiError> {
    let upgrade_header = ctx
        .headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    if upgrade_header == "websocket" {
        return Err(ApiError::bad_request(
            "port forwarding over websockets is not supported by this server; it is served over SPDY/3.1 (portforward.k8s.io), which kubectl falls back to",
        ));
    }
    let Some(upgrade) = ctx
        .upgrade
        .take()
        .filter(|_| upgrade_header.starts_with("spdy/3.1"))
    else {
        return Err(ApiError::bad_request(
            "Upgrade request required: port forwarding is served over SPDY/3.1 (portforward.k8s.io)",
        ));
    };
    let pod = super::handler::get_object(ctx, name).await?;
    let node = pod
        .pointer("/spec/nodeName")
        .and_then(|v| v.as_str())
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request(format!("pod {name} does not have a host assigned"))
        })?;
    let target = Target {
        base: node_base(&ctx.state, node).await?,
        namespace: ctx.path.namespace.clone().unwrap_or_default(),
        pod: name.to_string(),
    };
    let state = ctx.state.clone();
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => session(TokioIo::new(upgraded), state, Arc::new(target)).await,
            Err(err) => tracing::debug!("port-forward upgrade failed: {err}"),
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(header::CONNECTION, "Upgrade")
        .header(header::UPGRADE, "SPDY/3.1")
        .header("X-Stream-Protocol-Version", PROTOCOL)
        .body(Body::empty())
        .map_err(|e| ApiError::internal(e.to_string()))
}

/// Where a session's tunnels go.
struct Target {
    base: String,
    namespace: String,
    pod: String,
}

/// The streams of one forwarded connection, joined by `requestID`.
#[derive(Default)]
struct PendingRequest {
    error: Option<u32>,
}

/// Runs one SPDY session until the client goes away.
async fn session<IO>(io: IO, state: Arc<ApiState>, target: Arc<Target>)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let (mut reader, mut writer) = tokio::io::split(io);
    let (out_tx, mut out_rx) = mpsc::channel::<Bytes>(OUTGOING_FRAMES);
    let writing = tokio::spawn(async move {
        while let Some(frame) = out_rx.recv().await {
            if writer.write_all(&frame).await.is_err() {
                break;
            }
        }
        let _ = writer.shutdown().await;
    });
    let mut decoder = Decoder::new();
    let mut encoder = Encoder::new();
    let mut buffer = BytesMut::with_capacity(64 * 1024);
    let mut requests: HashMap<String, PendingRequest> = HashMap::new();
    let mut to_pod: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
    let mut tunnels: HashMap<u32, tokio::task::JoinHandle<()>> = HashMap::new();
    'session: loop {
        loop {
            let frame = match decoder.decode(&mut buffer) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!("port-forward session ended: {err}");
                    break 'session;
                }
            };
            tracing::trace!(?frame, "port-forward frame");
            match frame {
                Frame::SynStream {
                    stream, headers, ..
                } => {
                    let header = |name: &str| {
                        headers
                            .iter()
                            .find(|(n, _)| n == name)
                            .map(|(_, v)| v.as_str())
                            .unwrap_or_default()
                    };
                    let request_id = header("requestid").to_string();
                    let port = header("port").parse::<u16>().ok().filter(|p| *p > 0);
                    if out_tx.send(encoder.syn_reply(stream)).await.is_err() {
                        break 'session;
                    }
                    match header("streamtype") {
                        "error" => requests.entry(request_id).or_default().error = Some(stream),
                        "data" => {
                            let error = requests.remove(&request_id).and_then(|r| r.error);
                            let (tx, rx) = mpsc::channel(INCOMING_CHUNKS);
                            to_pod.insert(stream, tx);
                            let tunnel = Tunnel {
                                state: state.clone(),
                                target: target.clone(),
                                port,
                                data: stream,
                                error,
                                out: out_tx.clone(),
                            };
                            tunnels.insert(stream, tokio::spawn(tunnel.run(rx)));
                        }
                        other => {
                            tracing::debug!("port-forward: unknown stream type {other:?}");
                            let _ = out_tx.send(spdy::rst_stream(stream, 1)).await;
                        }
                    }
                }
                Frame::Data {
                    stream,
                    flags,
                    data,
                } => {
                    if let Some(tx) = to_pod.get(&stream) {
                        if !data.is_empty() && tx.send(data).await.is_err() {
                            to_pod.remove(&stream);
                        }
                    }
                    if flags & FLAG_FIN != 0 {
                        // Dropping the sender half-closes the tunnel towards the pod.
                        to_pod.remove(&stream);
                    }
                }
                Frame::RstStream { stream, .. } => {
                    to_pod.remove(&stream);
                    if let Some(task) = tunnels.remove(&stream) {
                        task.abort();
                    }
                }
                Frame::Ping { id } => {
                    if out_tx.send(spdy::ping(id)).await.is_err() {
                        break 'session;
                    }
                }
                Frame::GoAway => break 'session,
                Frame::Ignored => {}
            }
        }
        tunnels.retain(|_, task| !task.is_finished());
        match reader.read_buf(&mut buffer).await {
            Ok(0) => {
                tracing::debug!("port-forward session closed by the client");
                break;
            }
            Err(err) => {
                tracing::debug!("port-forward session ended: {err}");
                break;
            }
            Ok(_) => {}
        }
    }
    for task in tunnels.into_values() {
        task.abort();
    }
    drop(out_tx);
    let _ = writing.await;
}

/// One forwarded connection: a data stream (and its error stream) joined to a node tunnel.
struct Tunnel {
    state: Arc<ApiState>,
    target: Arc<Target>,
    port: Option<u16>,
    data: u32,
    error: Option<u32>,
    out: mpsc::Sender<Bytes>,
}

impl Tunnel {
    async fn run(self, mut from_client: mpsc::Receiver<Bytes>) {
        let opened = match self.port {
            Some(port) => self.open(port).await,
            None => Err("a valid port header is required".to_string()),
        };
        match opened {
            Ok(upgraded) => {
                let (mut read, mut write) = tokio::io::split(TokioIo::new(upgraded));
                let upstream = async {
                    while let Some(chunk) = from_client.recv().await {
                        if write.write_all(&chunk).await.is_err() {
                            break;
                        }
                    }
                    let _ = write.shutdown().await;
                };
                let downstream = async {
                    let mut buffer = vec![0u8; 32 * 1024];
                    loop {
                        match read.read(&mut buffer).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if self
                                    .out
                                    .send(spdy::data(self.data, 0, &buffer[..n]))
                                    .await
                                    .is_err()
                                {
                                    return;
                                }
                            }
                        }
                    }
                };
                tokio::join!(upstream, downstream);
            }
            Err(message) => {
                tracing::debug!("port-forward: {message}");
                if let Some(error) = self.error {
                    let _ = self
                        .out
                        .send(spdy::data(error, 0, message.as_bytes()))
                        .await;
                }
            }
        }
        let _ = self.out.send(spdy::data(self.data, FLAG_FIN, &[])).await;
        if let Some(error) = self.error {
            let _ = self.out.send(spdy::data(error, FLAG_FIN, &[])).await;
        }
    }

    /// Opens the raw TCP tunnel through the pod's node agent.
    async fn open(&self, port: u16) -> Result<hyper::upgrade::Upgraded, String> {
        let uri = format!(
            "{}/portForward/{}/{}?port={port}",
            self.target.base,
            encode(&self.target.namespace),
            encode(&self.target.pod)
        );
        let request = Request::builder()
            .method("POST")
            .uri(uri)
            .header(header::CONNECTION, "Upgrade")
            .header(header::UPGRADE, "tcp")
            .body(Body::empty())
            .map_err(|e| e.to_string())?;
        let response = self
            .state
            .node_client
            .request(request)
            .await
            .map_err(|e| format!("the node agent did not answer: {e}"))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return Err(body_text(response.into_body()).await);
        }
        hyper::upgrade::on(response)
            .await
            .map_err(|e| format!("the node agent's tunnel failed: {e}"))
    }
}
