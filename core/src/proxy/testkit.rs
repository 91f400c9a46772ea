//! Conformance kit for [`ProxyBackend`]s (feature `testkit`), with real traffic inside network
//! namespaces it creates (root and `ip` needed; see [`Topology::create`]).
//!
//! The topology: a "host" namespace (where the backend runs, as a node's proxy would) joined
//! by veth pairs to a "client" namespace and to one namespace per "pod", each pod running a TCP
//! and a UDP server that answer with the pod's name. Every link is dual-stack (IPv4 and IPv6
//! unique local addresses). The host routes between them and sends the service CIDRs nowhere,
//! so a packet for a service address without a rule is lost (and a connection to it hangs).
//! Nothing here has a route off the machine.

use super::{Protocol, ProxyBackend, ServiceEntry, ServicePortName, ServiceTable};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
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
/// The host's IPv6 address as the client sees it.
pub const NODE_ADDRESS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 1);
/// The service CIDR, which leads nowhere on the host.
pub const SERVICE_CIDR: &str = "10.96.0.0/12";
/// The IPv6 service CIDR, which leads nowhere on the host either.
pub const SERVICE_CIDR_V6: &str = "fd00:96::/112";
const CLIENT_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 2);
const CLIENT_ADDRESS_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x250, 0, 0, 0, 0, 0, 2);

static SEQUENCE: AtomicUsize = AtomicUsize::new(0);

/// A host, a client and pods, as network namespaces; removed on drop.
pub struct Topology {
    /// The host namespace's name (under /run/netns).
    pub host: String,
    /// The client namespace's name.
    pub client: String,
    /// The pod namespaces' names, pod `i` at `10.251.i.2` and `fd00:251:i::2`.
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
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| e.to_string())?;
            std::fs::write("/proc/sys/net/ipv6/conf/all/forwarding", "1").map_err(|e| e.to_string())
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
        ip(&[
            "-n",
            &host,
            "-6",
            "route",
            "add",
            SERVICE_CIDR_V6,
            "dev",
            "svcsink",
        ])?;
        let client = topology.client.clone();
        ip(&["netns", "add", &client])?;
        link(
            &host,
            "vclient",
            (&NODE_ADDRESS, &NODE_ADDRESS_V6),
            &client,
            (&CLIENT_ADDRESS, &CLIENT_ADDRESS_V6),
        )?;
        for (i, pod) in topology.pods.clone().iter().enumerate() {
            ip(&["netns", "add", pod])?;
            let host_side = Ipv4Addr::new(10, 251, i as u8, 1);
            let host_side_v6 = Ipv6Addr::new(0xfd00, 0x251, i as u16, 0, 0, 0, 0, 1);
            link(
                &host,
                &format!("vpod{i}"),
                (&host_side, &host_side_v6),
                pod,
                (&pod_ip(i), &pod_ip6(i)),
            )?;
            topology.start_servers(pod, &format!("pod{i}"))?;
        }
        Ok(topology)
    }

    fn start_servers(&mut self, namespace: &str, name: &str) -> Result<(), String> {
        // Sockets on `::` take both families (net.ipv6.bindv6only is 0 in a new namespace).
        let (tcp, udp) = in_namespace(namespace, || {
            let tcp = TcpListener::bind((Ipv6Addr::UNSPECIFIED, POD_TCP_PORT));
            let udp = UdpSocket::bind((Ipv6Addr::UNSPECIFIED, POD_UDP_PORT));
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

    /// Pod `i`'s IPv6 address.
    pub fn pod_address_v6(&self, i: usize) -> Ipv6Addr {
        pod_ip6(i)
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
            let any: IpAddr = if to.is_ipv6() {
                Ipv6Addr::UNSPECIFIED.into()
            } else {
                Ipv4Addr::UNSPECIFIED.into()
            };
            let socket = UdpSocket::bind((any, 0)).map_err(|e| e.to_string())?;
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

fn pod_ip6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x251, i as u16, 0, 0, 0, 0, 2)
}

/// A veth pair: `host_if` in `host` at `host_ips` (a /24 and a /64), `eth0` in `other` at
/// `other_ips`, which routes everything through the host. IPv6 addresses skip duplicate
/// address detection so they work at once, and each end knows the other's link-layer address
/// for IPv6 from the start: on a loaded machine, neighbour discovery was seen to give up on a
/// pod's first contact (its entry FAILED after three unanswered probes), which is the
/// kernel's business, not the proxy's under test.
fn link(
    host: &str,
    host_if: &str,
    host_ips: (&Ipv4Addr, &Ipv6Addr),
    other: &str,
    other_ips: (&Ipv4Addr, &Ipv6Addr),
) -> Result<(), String> {
    // Locally administered addresses, one pair per link.
    let pair = host_if.bytes().fold(0u8, |sum, b| sum.wrapping_add(b));
    let host_mac = format!("02:00:00:00:{pair:02x}:01");
    let other_mac = format!("02:00:00:00:{pair:02x}:02");
    ip(&[
        "-n", host, "link", "add", host_if, "address", &host_mac, "type", "veth", "peer", "name",
        "eth0", "address", &other_mac, "netns", other,
    ])?;
    for (namespace, device, (v4, v6)) in [(host, host_if, host_ips), (other, "eth0", other_ips)] {
        let v4 = format!("{v4}/24");
        let v6 = format!("{v6}/64");
        ip(&["-n", namespace, "addr", "add", &v4, "dev", device])?;
        ip(&["-n", namespace, "addr", "add", &v6, "dev", device, "nodad"])?;
        ip(&["-n", namespace, "link", "set", device, "up"])?;
    }
    for (namespace, device, neighbour, mac) in [
        (host, host_if, other_ips.1, &other_mac),
        (other, "eth0", host_ips.1, &host_mac),
    ] {
        let neighbour = neighbour.to_string();
        ip(&[
            "-n",
            namespace,
            "-6",
            "neigh",
            "replace",
            &neighbour,
            "lladdr",
            mac,
            "dev",
            device,
            "nud",
            "permanent",
        ])?;
    }
    ip(&["-n", other, "link", "set", "lo", "up"])?;
    let (gateway, gateway_v6) = (host_ips.0.to_string(), host_ips.1.to_string());
    ip(&["-n", other, "route", "add", "default", "via", &gateway])?;
    ip(&[
        "-n",
        other,
        "-6",
        "route",
        "add",
        "default",
        "via",
        &gateway_v6,
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
    /// The backend serves IPv6: the kit also checks a dual-stack Service on both of its
    /// cluster IPs, an IPv6 NodePort and UDP, and an IPv6 Service without endpoints.
    pub ipv6: bool,
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
        if options.ipv6 {
            for ip in [DUAL_V4, DUAL_V6, EMPTY_V6] {
                let prefix = if ip.contains(':') { 128 } else { 32 };
                let address = format!("{ip}/{prefix}");
                ip_in(
                    &topology.host,
                    &["addr", "add", &address, "dev", "lo", "nodad"],
                )?;
            }
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
    if options.ipv6 {
        // A dual-stack Service: both families' endpoints, each cluster IP served by its own.
        let v6 = |port| (0..3).map(move |i| SocketAddr::new(IpAddr::V6(pod_ip6(i)), port));
        let mut dual = entry(DUAL_V4, 80, Some(30090), tcp.clone());
        dual.cluster_ips
            .push(DUAL_V6.parse().expect("a literal address"));
        dual.endpoints.extend(v6(POD_TCP_PORT));
        dual.endpoints.sort();
        table
            .services
            .insert(port_name("dual", Protocol::Tcp), dual);
        let dual_udp = entry(DUAL_V6, 53, None, v6(POD_UDP_PORT).collect());
        table
            .services
            .insert(port_name("dual", Protocol::Udp), dual_udp);
        table.services.insert(
            port_name("empty6", Protocol::Tcp),
            entry(EMPTY_V6, 80, None, vec![]),
        );
    }

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
    let outcome = scenario(topology, &table, &apply, options);
    drop(to_host);
    let _ = host.join();
    outcome
}

fn ip_in(namespace: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["-n", namespace];
    all.extend_from_slice(args);
    ip(&all)
}

/// The dual-stack Service's addresses and an IPv6 Service without endpoints.
const DUAL_V4: &str = "10.96.0.13";
const DUAL_V6: &str = "fd00:96::13";
const EMPTY_V6: &str = "fd00:96::14";

/// Connects `n` times to `to` and checks every pod answered, none above twice its share.
fn spread(topology: &Topology, to: SocketAddr, n: usize) -> Result<(), String> {
    let mut hits: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let reply = topology
            .tcp_from_client(to, Duration::from_secs(3))
            .map_err(|e| format!("{to}: {e}"))?;
        *hits.entry(reply).or_default() += 1;
    }
    if hits.len() != 3 || hits.values().any(|hit| *hit > 2 * n / 3) {
        return Err(format!("{n} connections to {to} were spread {hits:?}"));
    }
    Ok(())
}

/// Checks a connection to `to` is refused within a second.
fn refused_fast(topology: &Topology, to: SocketAddr) -> Result<(), String> {
    let began = Instant::now();
    if let Ok(reply) = topology.tcp_from_client(to, Duration::from_secs(5)) {
        return Err(format!(
            "a Service without endpoints answered {reply:?} at {to}"
        ));
    }
    if began.elapsed() > Duration::from_secs(1) {
        return Err(format!(
            "a Service without endpoints took {:?} to refuse at {to}",
            began.elapsed()
        ));
    }
    Ok(())
}

/// The IPv6 part: the dual-stack Service on both cluster IPs and its IPv6 NodePort and UDP
/// port, and an IPv6 Service without endpoints refused.
fn dual_stack(topology: &Topology) -> Result<(), String> {
    let at = |ip: &str, port| SocketAddr::new(ip.parse().expect("a literal address"), port);
    spread(topology, at(DUAL_V6, 80), 90)?;
    spread(topology, at(DUAL_V4, 80), 90)?;
    let node_port = SocketAddr::new(IpAddr::V6(NODE_ADDRESS_V6), 30090);
    let reply = topology
        .tcp_from_client(node_port, Duration::from_secs(3))
        .map_err(|e| format!("IPv6 NodePort {node_port}: {e}"))?;
    if !reply.starts_with("pod") {
        return Err(format!("IPv6 NodePort answered {reply:?}"));
    }
    let reply = topology
        .udp_from_client(at(DUAL_V6, 53), Duration::from_secs(3))
        .map_err(|e| format!("IPv6 UDP: {e}"))?;
    if !reply.starts_with("pod") {
        return Err(format!("IPv6 UDP service answered {reply:?}"));
    }
    refused_fast(topology, at(EMPTY_V6, 80))
}

fn scenario(
    topology: &Topology,
    table: &ServiceTable,
    apply: &dyn Fn(&ServiceTable, bool) -> Result<(), String>,
    options: KitOptions,
) -> Result<(), String> {
    let web: SocketAddr = "10.96.0.10:80".parse().expect("literal");
    let web_udp: SocketAddr = "10.96.0.10:53".parse().expect("literal");
    let node_port = SocketAddr::new(IpAddr::V4(NODE_ADDRESS), 30080);
    let sticky: SocketAddr = "10.96.0.11:80".parse().expect("literal");
    let empty: SocketAddr = "10.96.0.12:80".parse().expect("literal");
    let timeout = Duration::from_secs(3);
    apply(table, false)?;

    // Spread: 300 connections, every endpoint hit, none above twice its share.
    spread(topology, web, 300).map_err(|e| format!("ClusterIP: {e}"))?;
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
    refused_fast(topology, empty)?;
    if options.ipv6 {
        dual_stack(topology)?;
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
