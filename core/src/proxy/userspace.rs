//! [`UserspaceProxy`]: a [`ProxyBackend`] that carries Service traffic through tokio
//! forwarders — a TCP listener or UDP socket per Service address and port, round-robin over
//! the ready endpoints (or sticking to a client's endpoint under ClientIP affinity). It needs
//! no root for NodePorts; cluster IPs are served where they are local addresses of the host
//! (the reference binary assigns them when it may). An entry without endpoints gets no
//! listener, so connections to it are refused by the kernel at once.

use super::{Protocol, ProxyBackend, ProxyError, ServiceEntry, ServiceTable};
use async_trait::async_trait;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;

/// How long connecting to one endpoint may take before the next is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a UDP client's session lives without traffic.
const UDP_SESSION_IDLE: Duration = Duration::from_secs(60);

/// Where a [`UserspaceProxy`] listens.
#[derive(Debug, Clone)]
pub struct UserspaceConfig {
    /// The node addresses NodePorts listen on.
    pub node_addresses: Vec<IpAddr>,
    /// Whether to listen on cluster IPs (which must be local addresses of the host).
    pub cluster_ips: bool,
}

impl Default for UserspaceConfig {
    fn default() -> Self {
        UserspaceConfig {
            node_addresses: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
            cluster_ips: true,
        }
    }
}

/// The userspace proxy backend.
pub struct UserspaceProxy {
    config: UserspaceConfig,
    listeners: Mutex<HashMap<ListenKey, Listener>>,
}

type ListenKey = (SocketAddr, Protocol);

/// A listening socket and the route its task follows.
struct Listener {
    route: watch::Sender<Arc<Route>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a listener sends connections.
#[derive(Debug)]
struct Route {
    endpoints: Vec<SocketAddr>,
    affinity: Option<Duration>,
    next: AtomicUsize,
    sticky: Mutex<HashMap<IpAddr, (SocketAddr, Instant)>>,
}

impl Route {
    fn new(entry: &ServiceEntry) -> Self {
        Route {
            endpoints: entry.endpoints.clone(),
            affinity: entry.affinity,
            next: AtomicUsize::new(0),
            sticky: Mutex::new(HashMap::new()),
        }
    }

    /// The route for a changed `entry`, keeping the clients that stick to endpoints still there.
    fn following(previous: &Route, entry: &ServiceEntry) -> Self {
        let route = Route::new(entry);
        let mut sticky = previous
            .sticky
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        sticky.retain(|_, (endpoint, _)| route.endpoints.contains(endpoint));
        *route.sticky.lock().unwrap_or_else(|e| e.into_inner()) = sticky;
        route
    }

    fn same_as(&self, entry: &ServiceEntry) -> bool {
        self.endpoints == entry.endpoints && self.affinity == entry.affinity
    }

    /// The endpoints to try for `client`, best first.
    fn pick(&self, client: IpAddr) -> Vec<SocketAddr> {
        let n = self.endpoints.len();
        if n == 0 {
            return Vec::new();
        }
        if let Some(timeout) = self.affinity {
            let mut sticky = self.sticky.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((endpoint, at)) = sticky.get(&client) {
                if at.elapsed() < timeout && self.endpoints.contains(endpoint) {
                    let endpoint = *endpoint;
                    sticky.insert(client, (endpoint, Instant::now()));
                    return self.rotated_from(endpoint);
                }
            }
            let first = self.endpoints[self.next.fetch_add(1, Ordering::Relaxed) % n];
            sticky.retain(|_, (_, at)| at.elapsed() < timeout);
            sticky.insert(client, (first, Instant::now()));
            return self.rotated_from(first);
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        (0..n).map(|i| self.endpoints[(start + i) % n]).collect()
    }

    fn rotated_from(&self, first: SocketAddr) -> Vec<SocketAddr> {
        let start = self.endpoints.iter().position(|e| *e == first).unwrap_or(0);
        let n = self.endpoints.len();
        (0..n).map(|i| self.endpoints[(start + i) % n]).collect()
    }
}

impl UserspaceProxy {
    /// A proxy listening where `config` says.
    pub fn new(config: UserspaceConfig) -> Self {
        UserspaceProxy {
            config,
            listeners: Mutex::new(HashMap::new()),
        }
    }

    fn desired<'a>(&self, table: &'a ServiceTable) -> HashMap<ListenKey, &'a ServiceEntry> {
        let mut desired = HashMap::new();
        for (name, entry) in &table.services {
            if entry.endpoints.is_empty() || name.protocol == Protocol::Sctp {
                continue;
            }
            if self.config.cluster_ips {
                for ip in &entry.cluster_ips {
                    desired.insert((SocketAddr::new(*ip, entry.port), name.protocol), entry);
                }
            }
            if let Some(node_port) = entry.node_port {
                for ip in &self.config.node_addresses {
                    desired.insert((SocketAddr::new(*ip, node_port), name.protocol), entry);
                }
            }
        }
        desired
    }
}

#[async_trait]
impl ProxyBackend for UserspaceProxy {
    async fn sync(&self, table: &ServiceTable) -> Result<(), ProxyError> {
        let desired = self.desired(table);
        let missing: Vec<(ListenKey, Arc<Route>)> = {
            let mut listeners = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
            listeners.retain(|key, _| desired.contains_key(key));
            let mut missing = Vec::new();
            for (key, entry) in &desired {
                match listeners.get(key) {
                    Some(listener) => {
                        let current = listener.route.borrow().clone();
                        if !current.same_as(entry) {
                            listener
                                .route
                                .send_replace(Arc::new(Route::following(&current, entry)));
                        }
                    }
                    None => missing.push((*key, Arc::new(Route::new(entry)))),
                }
            }
            missing
        };
        let mut first_error = None;
        for ((address, protocol), route) in missing {
            match listen(address, protocol, route).await {
                Ok(listener) => {
                    self.listeners
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert((address, protocol), listener);
                }
                Err(err) => {
                    tracing::warn!(%address, error = %err, "userspace proxy cannot listen");
                    first_error.get_or_insert(err);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn cleanup(&self) -> Result<(), ProxyError> {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
        Ok(())
    }
}

async fn listen(
    address: SocketAddr,
    protocol: Protocol,
    route: Arc<Route>,
) -> Result<Listener, ProxyError> {
    let socket_error = |source| ProxyError::Socket {
        address: format!("{address}/{}", protocol.as_str()),
        source,
    };
    let (tx, rx) = watch::channel(route);
    let task = match protocol {
        Protocol::Udp => {
            let socket = UdpSocket::bind(address).await.map_err(socket_error)?;
            tokio::spawn(serve_udp(Arc::new(socket), rx))
        }
        _ => {
            let listener = TcpListener::bind(address).await.map_err(socket_error)?;
            tokio::spawn(serve_tcp(listener, rx))
        }
    };
    Ok(Listener { route: tx, task })
}

async fn serve_tcp(listener: TcpListener, route: watch::Receiver<Arc<Route>>) {
    loop {
        let Ok((mut client, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let route = route.borrow().clone();
        tokio::spawn(async move {
            for endpoint in route.pick(peer.ip()) {
                let connected =
                    tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint)).await;
                if let Ok(Ok(mut upstream)) = connected {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    return;
                }
                tracing::debug!(%endpoint, "userspace proxy: endpoint unreachable; trying the next");
            }
        });
    }
}

async fn serve_udp(socket: Arc<UdpSocket>, route: watch::Receiver<Arc<Route>>) {
    let sessions: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>> = Arc::default();
    let mut buffer = vec![0u8; 65_536];
    loop {
        let Ok((len, client)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let existing = sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&client)
            .cloned();
        let upstream = match existing {
            Some(upstream) => upstream,
            None => {
                let route = route.borrow().clone();
                let Some(endpoint) = route.pick(client.ip()).first().copied() else {
                    continue;
                };
                let Some(upstream) = udp_session(endpoint).await else {
                    continue;
                };
                sessions
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(client, upstream.clone());
                tokio::spawn(relay_replies(
                    upstream.clone(),
                    socket.clone(),
                    client,
                    sessions.clone(),
                ));
                upstream
            }
        };
        let _ = upstream.send(&buffer[..len]).await;
    }
}

async fn udp_session(endpoint: SocketAddr) -> Option<Arc<UdpSocket>> {
    let local: SocketAddr = match endpoint {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let upstream = UdpSocket::bind(local).await.ok()?;
    upstream.connect(endpoint).await.ok()?;
    Some(Arc::new(upstream))
}

/// Sends an endpoint's replies back to the client until the session idles out.
async fn relay_replies(
    upstream: Arc<UdpSocket>,
    socket: Arc<UdpSocket>,
    client: SocketAddr,
    sessions: Arc<Mutex<HashMap<SocketAddr, Arc<UdpSocket>>>>,
) {
    let mut buffer = vec![0u8; 65_536];
    while let Ok(Ok(len)) = tokio::time::timeout(UDP_SESSION_IDLE, upstream.recv(&mut buffer)).await
    {
        let _ = socket.send_to(&buffer[..len], client).await;
    }
    sessions
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&client);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(endpoints: &[&str], affinity: Option<Duration>) -> ServiceEntry {
        ServiceEntry {
            cluster_ips: vec![],
            port: 80,
            node_port: None,
            affinity,
            endpoints: endpoints.iter().map(|e| e.parse().unwrap()).collect(),
        }
    }

    #[test]
    fn round_robin_visits_every_endpoint_evenly() {
        let route = Route::new(&entry(&["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"], None));
        let mut hits: HashMap<SocketAddr, usize> = HashMap::new();
        for _ in 0..30 {
            let picked = route.pick("10.1.0.1".parse().unwrap());
            assert_eq!(picked.len(), 3);
            *hits.entry(picked[0]).or_default() += 1;
        }
        assert!(hits.values().all(|n| *n == 10), "{hits:?}");
    }

    #[test]
    fn client_ip_affinity_sticks_until_the_endpoint_goes() {
        let route = Route::new(&entry(
            &["10.0.0.1:80", "10.0.0.2:80"],
            Some(Duration::from_secs(60)),
        ));
        let a: IpAddr = "10.1.0.1".parse().unwrap();
        let b: IpAddr = "10.1.0.2".parse().unwrap();
        let first = route.pick(a)[0];
        assert!((0..10).all(|_| route.pick(a)[0] == first));
        assert_ne!(route.pick(b)[0], first);
        let remaining: Vec<&str> = if first.to_string() == "10.0.0.1:80" {
            vec!["10.0.0.2:80"]
        } else {
            vec!["10.0.0.1:80"]
        };
        let shrunk = Route::new(&entry(&remaining, Some(Duration::from_secs(60))));
        assert_eq!(shrunk.pick(a)[0].to_string(), remaining[0]);
    }
}
