//! Cluster DNS: [`ClusterDns`] answers Kubernetes' DNS names for Services and Pods (see the
//! zone module for the names) over UDP and TCP, following Services and EndpointSlices through
//! shared informers. It is authoritative for the cluster domain and forwards nothing: any
//! other name is NXDOMAIN at once.

mod responder;
mod zone;

use crate::controller::InformerFactory;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use zone::ClusterZone;

/// How long the zone waits after a change before rebuilding, gathering the changes after it.
const REBUILD_DELAY: Duration = Duration::from_millis(50);
/// How long a TCP client may take to send its query.
const TCP_TIMEOUT: Duration = Duration::from_secs(5);

/// Where and for which domain a [`ClusterDns`] answers.
#[derive(Debug, Clone)]
pub struct DnsConfig {
    /// The address to serve on, UDP and TCP (port 0 picks one, the same for both).
    pub listen: SocketAddr,
    /// The cluster domain (Kubernetes' default: `cluster.local`).
    pub domain: String,
}

impl Default for DnsConfig {
    fn default() -> Self {
        DnsConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 53)),
            domain: "cluster.local".into(),
        }
    }
}

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// Its sockets could not be bound.
    #[error("cannot serve DNS on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// A cluster DNS server, not yet started.
pub struct ClusterDns {
    informers: InformerFactory,
    config: DnsConfig,
}

/// A running [`ClusterDns`]; stopped by [`stop`](RunningDns::stop) or on drop.
pub struct RunningDns {
    address: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ClusterDns {
    /// A server answering from `informers`' Services and EndpointSlices.
    pub fn new(informers: &InformerFactory, config: DnsConfig) -> Self {
        ClusterDns {
            informers: informers.clone(),
            config,
        }
    }

    /// Binds the sockets and starts answering.
    pub async fn start(self) -> Result<RunningDns, DnsError> {
        let bind_error = |address, source| DnsError::Bind { address, source };
        let udp = UdpSocket::bind(self.config.listen)
            .await
            .map_err(|e| bind_error(self.config.listen, e))?;
        let address = udp
            .local_addr()
            .map_err(|e| bind_error(self.config.listen, e))?;
        let tcp = TcpListener::bind(address)
            .await
            .map_err(|e| bind_error(address, e))?;
        let zone = Arc::new(RwLock::new(Arc::new(ClusterZone::default())));
        let stop = CancellationToken::new();
        let tasks = vec![
            tokio::spawn(follow(
                self.informers,
                self.config.domain,
                zone.clone(),
                stop.clone(),
            )),
            tokio::spawn(serve_udp(udp, zone.clone(), stop.clone())),
            tokio::spawn(serve_tcp(tcp, zone, stop.clone())),
        ];
        Ok(RunningDns {
            address,
            stop,
            tasks,
        })
    }
}

impl RunningDns {
    /// The address it answers on.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Stops answering.
    pub async fn stop(mut self) {
        self.stop.cancel();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }
}

impl Drop for RunningDns {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type SharedZone = Arc<RwLock<Arc<ClusterZone>>>;

fn current(zone: &SharedZone) -> Arc<ClusterZone> {
    zone.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Rebuilds the zone whenever Services or EndpointSlices change.
async fn follow(
    informers: InformerFactory,
    domain: String,
    zone: SharedZone,
    stop: CancellationToken,
) {
    let services = informers.informer::<Service>();
    let slices = informers.informer::<EndpointSlice>();
    let mut service_changes = services.subscribe();
    let mut slice_changes = slices.subscribe();
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = async { services.wait_synced().await; slices.wait_synced().await } => {}
    }
    loop {
        let service_list = services.list();
        let slice_list = slices.list();
        let built = ClusterZone::build(
            &domain,
            service_list.iter().map(|s| &**s),
            slice_list.iter().map(|s| &**s),
        );
        *zone.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(built);
        tokio::select! {
            _ = stop.cancelled() => return,
            change = service_changes.next() => if change.is_none() { return },
            change = slice_changes.next() => if change.is_none() { return },
        }
        // Changes come in bursts (a rollout touches many slices): one rebuild per burst.
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(REBUILD_DELAY) => {}
        }
    }
}

async fn serve_udp(socket: UdpSocket, zone: SharedZone, stop: CancellationToken) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let received = tokio::select! {
            _ = stop.cancelled() => return,
            received = socket.recv_from(&mut buffer) => received,
        };
        let Ok((len, client)) = received else {
            continue;
        };
        if let Some(response) = responder::respond(&current(&zone), &buffer[..len], true) {
            let _ = socket.send_to(&response, client).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, zone: SharedZone, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _)) = accepted else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let zone = zone.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(TCP_TIMEOUT, answer_tcp(stream, &zone)).await;
        });
    }
}

/// Answers length-prefixed queries on one connection until the client closes it.
async fn answer_tcp(mut stream: TcpStream, zone: &SharedZone) -> std::io::Result<()> {
    loop {
        let len = stream.read_u16().await?;
        let mut request = vec![0u8; usize::from(len)];
        stream.read_exact(&mut request).await?;
        let Some(response) = responder::respond(&current(zone), &request, false) else {
            return Ok(());
        };
        let Ok(len) = u16::try_from(response.len()) else {
            return Ok(());
        };
        stream.write_u16(len).await?;
        stream.write_all(&response).await?;
    }
}
