//! Conformance kit for [`ProxyBackend`]s (feature `testkit`), with real traffic inside network
//! namespaces it creates (root and `ip` needed; see [`Topology::create`]).
//!
//! The topology: a "host" namespace (where the backend runs, as a node's proxy would) joined
//! by veth pairs to a "client" namespace and to one namespace per "pod", each pod running a TCP
//! and a UDP server that answer with the pod's name. The host routes between them and sends
//! the service CIDR nowhere, so a packet for a service address without a rule is lost (and a
//! connection to it hangs). Nothing here has a route off the machine.

use super::{Protocol, ProxyBackend, ServiceEntry, ServicePortName, ServiceTable};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The TCP port pods serve on.
pub const POD_TCP_PORT: u16 = 8080;
/// The UDP port pods serve on.
pub const POD_UDP_PORT: u16 = 5353;
/// The host's address as the client sees it (NodePorts are reached here).
pub const NODE_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
/// The service CIDR, which leads nowhere on the host.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);

static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

/// A host, a client and pods, as network namespaces; removed on drop.
pub struct Topology {
    /// The host namespace's name (under /run/netns).
    pub host: String,
    /// The client namespace's name.
    pub client: String,
    /// The pod namespaces' names, pod `i` at `10.251.i.2`.
    pub pods: Vec<String>,
    stop: Arc<AtomicBool>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Whether this process may create network namespaces (root with `ip`); the reason if not.
pub fn network_namespaces_available() -> Result<(), String> {
    let name = format!(
        "capstan-probe-{}-{}",
        std::process::id(),
        SEQUENCE.fetch_add(1, Ordering::Relaxed)
    );
    ip(&["netns", "add", &name])?;
    ip(&["netns", "del", &name])
}

impl Topology {
    /// Creates the namespaces, links, addresses and routes, and starts `pods` pods' servers.
    pub fn create(pods: usize) -> Result<Topology, String> {
        let id = format!(
            "{}-{}",
            std::process::id(),
            SEQUENCE.fetch_add(1, Ordering::Relaxed)
        );
        let mut topology = Topology {
            host: format!("cap-host-{id}"),
            client: format!("cap-client-{id}"),
            pods: (0..pods).map(|i| format!("cap-pod{i}-{id}")).collect(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        // Namespaces made so far are removed by Drop if a later step fails.
        ip(&["netns", "add", &topology.host])?;
        let host = topology.host.clone();
        ip(&["-n", &host, "link", "set", "lo", "up"])?;
        in_namespace(&host, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| e.to_string())
        })??;
        // The service CIDR leads nowhere: routed to one end of a veth pair whose other end
        // answers no neighbour lookups (the kernel has no dummy devices here). Unlike a
        // blackhole route, packets still pass the filter table's FORWARD chain first, where a
        // proxy rejects connections to Services without endpoints.
        ip(&[
            "-n", &host, "link", "add", "svcsink", "type", "veth", "peer", "name", "svcsink1",
        ])?;
        ip(&["-n", &host, "link", "set", "svcsink", "up"])?;
        ip(&["-n", &host, "link", "set", "svcsink1", "up"])?;
        ip(&["-n", &host, "route", "add", SERVICE_CIDR, "dev", "svcsink"])?;
        let client = topology.client.clone();
        ip(&["netns", "add", &client])?;
        link(
            &host,
            "vclient",
            &NODE_ADDRESS,
            &client,
            &CLIENT_ADDRESS,
            24,
        )?;
        for (i, pod) in topology.pods.clone().iter().enumerate() {
            ip(&["netns", "add", pod])?;
            let host_side = Ipv4Addr::new(10, 251, i as u8, 1);
            link(&host, &format!("vpod{i}"), &host_side, pod, &pod_ip(i), 24)?;
            topology.start_servers(pod, &format!("pod{i}"))?;
        }
        Ok(topology)
    }

    fn start_servers(&mut self, namespace: &str, name: &str) -> Result<(), String> {
        let (tcp, udp) = in_namespace(namespace, || {
            let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, POD_TCP_PORT));
            let udp = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, POD_UDP_PORT));
            (tcp, udp)
        })?;
        let tcp = tcp.map_err(|e| e.to_string())?;
        let udp = udp.map_err(|e| e.to_string())?;
        tcp.set_nonblocking(true).map_err(|e| e.to_string())?;
        udp.set_read_timeout(Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        let (stop, reply) = (self.stop.clone(), name.to_string());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match tcp.accept() {
                    Ok((mut stream, _)) => {
                        let _ = stream.set_nonblocking(false);
                        let _ = stream.write_all(reply.as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        let (stop, reply) = (self.stop.clone(), name.to_string());
        std::thread::spawn(move || {
            let mut buffer = [0u8; 512];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = udp.recv_from(&mut buffer) {
                    let _ = udp.send_to(reply.as_bytes(), from);
                }
            }
        });
        Ok(())
    }

    /// Pod `i`'s address.
    pub fn pod_address(&self, i: usize) -> Ipv4Addr {
        pod_ip(i)
    }

    /// Connects over TCP from the client and returns what the server said, or why it failed;
    /// gives up after `timeout`.
    pub fn tcp_from_client(&self, to: SocketAddr, timeout: Duration) -> Result<String, String> {
        in_namespace(&self.client, move || {
            let mut stream = TcpStream::connect_timeout(&to, timeout).map_err(|e| e.to_string())?;
            stream
                .set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            let mut reply = String::new();
            stream
                .read_to_string(&mut reply)
                .map_err(|e| e.to_string())?;
            Ok(reply)
        })?
    }

    /// Sends a UDP datagram from the client and returns the answer, or why there was none.
    pub fn udp_from_client(&self, to: SocketAddr, timeout: Duration) -> Result<String, String> {
        in_namespace(&self.client, move || {
            let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| e.to_string())?;
            socket
                .set_read_timeout(Some(timeout))
                .map_err(|e| e.to_string())?;
            socket.send_to(b"hello", to).map_err(|e| e.to_string())?;
            let mut buffer = [0u8; 512];
            let (len, _) = socket.recv_from(&mut buffer).map_err(|e| e.to_string())?;
            Ok(String::from_utf8_lossy(&buffer[..len]).into_owned())
        })?
    }

    /// Runs `command` inside the host namespace and returns its standard output.
    pub fn host_command(&self, command: &[&str]) -> Result<String, String> {
        let mut args = vec!["netns", "exec", &self.host];
        args.extend_from_slice(command);
        let out = Command::new("ip")
            .args(&args)
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for name in self.pods.iter().chain([&self.client, &self.host]) {
            let _ = ip(&["netns", "del", name]);
        }
    }
}

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 251, i as u8, 2)
}

/// A veth pair: `host_if` in `host` at `host_ip`, `eth0` in `other` at `other_ip`, which
/// routes everything through the host.
fn link(
    host: &str,
    host_if: &str,
    host_ip: &Ipv4Addr,
    other: &str,
    other_ip: &Ipv4Addr,
    prefix: u8,
) -> Result<(), String> {
    ip(&[
        "-n", host, "link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", other,
    ])?;
    ip(&[
        "-n",
        host,
        "addr",
        "add",
        &format!("{host_ip}/{prefix}"),
        "dev",
        host_if,
    ])?;
    ip(&["-n", host, "link", "set", host_if, "up"])?;
    ip(&[
        "-n",
        other,
        "addr",
        "add",
        &format!("{other_ip}/{prefix}"),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", other, "link", "set", "eth0", "up"])?;
    ip(&["-n", other, "link", "set", "lo", "up"])?;
    ip(&[
        "-n",
        other,
        "route",
        "add",
        "default",
        "via",
        &host_ip.to_string(),
    ])
}

/// Runs `work` on a new thread moved into network namespace `name`.
pub fn in_namespace<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, String> {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        rustix::thread::move_into_link_name_space(
            std::os::fd::AsFd::as_fd(&file),
            Some(rustix::thread::LinkNameSpaceType::Network),
        )
        .map_err(|e| format!("setns {path}: {e}"))?;
        Ok(work())
    })
    .join()
    .map_err(|_| "namespace thread panicked".to_string())?
}

/// What [`check_backend`] may assume of the backend.
#[derive(Debug, Clone, Copy, Default)]
pub struct KitOptions {
    /// The backend serves cluster IPs only where they are local addresses (userspace): the kit
    /// assigns them to the host's loopback first.
    pub local_cluster_ips: bool,
}

fn port_name(name: &str, protocol: Protocol) -> ServicePortName {
    ServicePortName {
        namespace: "default".into(),
        name: name.into(),
        port: String::new(),
        protocol,
    }
}

fn entry(ip: &str, port: u16, node_port: Option<u16>, endpoints: Vec<SocketAddr>) -> ServiceEntry {
    ServiceEntry {
        cluster_ips: vec![ip.parse().expect("a literal address")],
        port,
        node_port,
        affinity: None,
        endpoints,
    }
}

/// The kit's scenario. Returns the first broken expectation.
///
/// With three pods: a TCP Service (ClusterIP and NodePort) spreads 300 connections over every
/// endpoint, none getting more than twice its fair share; a UDP Service answers; a ClientIP
/// affinity Service sticks; a Service without endpoints is refused within a second; a removed
/// endpoint gets no more connections; syncing one table twice changes nothing; a removed
/// Service stops answering; after cleanup nothing answers.
/// `make_backend` runs inside the host namespace.
pub fn check_backend<B, F, Fut>(
    topology: &Topology,
    options: KitOptions,
    make_backend: F,
) -> Result<(), String>
where
    B: ProxyBackend + 'static,
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<B, super::ProxyError>>,
{
    assert!(topology.pods.len() >= 3, "the kit needs three pods");
    if options.local_cluster_ips {
        for ip in ["10.96.0.10", "10.96.0.11", "10.96.0.12"] {
            ip_in(
                &topology.host,
                &["addr", "add", &format!("{ip}/32"), "dev", "lo"],
            )?;
        }
    }
    let tcp: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::new(IpAddr::V4(pod_ip(i)), POD_TCP_PORT))
        .collect();
    let udp: Vec<SocketAddr> = (0..3)
        .map(|i| SocketAddr::new(IpAddr::V4(pod_ip(i)), POD_UDP_PORT))
        .collect();
    let mut table = ServiceTable::default();
    table.services.insert(
        port_name("web", Protocol::Tcp),
        entry("10.96.0.10", 80, Some(30080), tcp.clone()),
    );
    table.services.insert(
        port_name("web", Protocol::Udp),
        entry("10.96.0.10", 53, None, udp),
    );
    let mut sticky = entry("10.96.0.11", 80, None, tcp.clone());
    sticky.affinity = Some(Duration::from_secs(600));
    table
        .services
        .insert(port_name("sticky", Protocol::Tcp), sticky);
    table.services.insert(
        port_name("empty", Protocol::Tcp),
        entry("10.96.0.12", 80, None, vec![]),
    );

    let (to_host, from_kit) = std::sync::mpsc::channel::<(ServiceTable, bool)>();
    let (to_kit, results) = std::sync::mpsc::channel::<Result<(), String>>();
    let host = {
        let path = format!("/run/netns/{}", topology.host);
        std::thread::spawn(move || {
            let moved = std::fs::File::open(&path)
                .map_err(|e| e.to_string())
                .and_then(|file| {
                    rustix::thread::move_into_link_name_space(
                        std::os::fd::AsFd::as_fd(&file),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| e.to_string())
                });
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            let (Ok(()), Ok(runtime)) = (moved, runtime) else {
                let _ = to_kit.send(Err("cannot enter the host namespace".into()));
                return;
            };
            // The runtime keeps running between requests so userspace listeners stay up.
            runtime.block_on(async move {
                let backend = match make_backend().await {
                    Ok(backend) => backend,
                    Err(err) => {
                        let _ = to_kit.send(Err(format!("creating the backend: {err}")));
                        return;
                    }
                };
                let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
                std::thread::spawn(move || {
                    while let Ok(request) = from_kit.recv() {
                        if tx.send(request).is_err() {
                            return;
                        }
                    }
                });
                while let Some((table, cleanup)) = rx.recv().await {
                    let result = if cleanup {
                        backend.cleanup().await
                    } else {
                        backend.sync(&table).await
                    };
                    if to_kit.send(result.map_err(|e| e.to_string())).is_err() {
                        return;
                    }
                }
            });
        })
    };
    let apply = |table: &ServiceTable, cleanup: bool| -> Result<(), String> {
        if to_host.send((table.clone(), cleanup)).is_err() {
            // The host thread ended early; it said why.
            return Err(results
                .try_recv()
                .ok()
                .and_then(Result::err)
                .unwrap_or_else(|| "the backend thread ended".to_string()));
        }
        results
            .recv_timeout(Duration::from_secs(60))
            .map_err(|_| "the backend did not answer in 60 s".to_string())?
            .map_err(|e| format!("backend: {e}"))
    };
    let outcome = scenario(topology, &table, &apply);
    drop(to_host);
    let _ = host.join();
    outcome
}

fn ip_in(namespace: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["-n", namespace];
    all.extend_from_slice(args);
    ip(&all)
}

fn scenario(
    topology: &Topology,
    table: &ServiceTable,
    apply: &dyn Fn(&ServiceTable, bool) -> Result<(), String>,
) -> Result<(), String> {
    let web: SocketAddr = "10.96.0.10:80".parse().expect("literal");
    let web_udp: SocketAddr = "10.96.0.10:53".parse().expect("literal");
    let node_port = SocketAddr::new(IpAddr::V4(NODE_ADDRESS), 30080);
    let sticky: SocketAddr = "10.96.0.11:80".parse().expect("literal");
    let empty: SocketAddr = "10.96.0.12:80".parse().expect("literal");
    let timeout = Duration::from_secs(3);
    apply(table, false)?;

    // Spread: 300 connections, every endpoint hit, none above twice its share.
    let mut hits: HashMap<String, usize> = HashMap::new();
    for _ in 0..300 {
        let reply = topology
            .tcp_from_client(web, timeout)
            .map_err(|e| format!("ClusterIP {web}: {e}"))?;
        *hits.entry(reply).or_default() += 1;
    }
    if hits.len() != 3 || hits.values().any(|n| *n > 200) {
        return Err(format!("300 connections to {web} were spread {hits:?}"));
    }
    let reply = topology
        .tcp_from_client(node_port, timeout)
        .map_err(|e| format!("NodePort {node_port}: {e}"))?;
    if !reply.starts_with("pod") {
        return Err(format!("NodePort answered {reply:?}"));
    }
    let reply = topology
        .udp_from_client(web_udp, timeout)
        .map_err(|e| format!("UDP {web_udp}: {e}"))?;
    if !reply.starts_with("pod") {
        return Err(format!("UDP service answered {reply:?}"));
    }

    // Affinity: one client sticks to one endpoint.
    let first = topology
        .tcp_from_client(sticky, timeout)
        .map_err(|e| format!("ClientIP service: {e}"))?;
    for _ in 0..20 {
        let again = topology.tcp_from_client(sticky, timeout)?;
        if again != first {
            return Err(format!("ClientIP affinity broke: {first} then {again}"));
        }
    }

    // No endpoints: refused, fast.
    let began = Instant::now();
    if let Ok(reply) = topology.tcp_from_client(empty, Duration::from_secs(5)) {
        return Err(format!("a Service without endpoints answered {reply:?}"));
    }
    if began.elapsed() > Duration::from_secs(1) {
        return Err(format!(
            "a Service without endpoints took {:?} to refuse",
            began.elapsed()
        ));
    }

    // Idempotent: the same table again, traffic unchanged.
    apply(table, false)?;
    topology.tcp_from_client(web, timeout)?;

    // A removed endpoint gets no more connections.
    let mut shrunk = table.clone();
    let removed = SocketAddr::new(IpAddr::V4(pod_ip(2)), POD_TCP_PORT);
    for (_, entry) in shrunk.services.iter_mut() {
        entry.endpoints.retain(|e| *e != removed);
    }
    apply(&shrunk, false)?;
    for _ in 0..60 {
        let reply = topology.tcp_from_client(web, timeout)?;
        if reply == "pod2" {
            return Err("a removed endpoint still got a connection".into());
        }
    }

    // A removed Service stops answering.
    let mut fewer = shrunk.clone();
    fewer
        .services
        .retain(|name, _| !(name.name == "sticky" && name.protocol == Protocol::Tcp));
    apply(&fewer, false)?;
    if topology
        .tcp_from_client(sticky, Duration::from_secs(1))
        .is_ok()
    {
        return Err("a removed Service still answered".into());
    }
    topology.tcp_from_client(web, timeout)?;

    // Cleanup: nothing answers.
    apply(&ServiceTable::default(), true)?;
    if topology
        .tcp_from_client(web, Duration::from_secs(1))
        .is_ok()
    {
        return Err("after cleanup the Service still answered".into());
    }
    Ok(())
}
