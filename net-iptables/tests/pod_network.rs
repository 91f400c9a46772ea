//! The host-gw pod network with real routes inside network namespaces (root needed): two
//! "hosts" joined by a veth pair, each with a "pod" namespace behind it. Host A runs the
//! [`PodNetwork`] over the in-process API with [`NetlinkRoutes`]; host B is programmed directly
//! from the same Nodes. A pod on A reaches a pod on B by pod IP only once routes are in; the
//! cluster and service ranges are blackholed; deleting node B removes its route; cleanup
//! leaves host A's table as it was.

use capstan_core::apiserver::ApiServer;
use capstan_core::cidr::{IpCidr, Ipv4Cidr, Ipv6Cidr};
use capstan_core::controller::InformerFactory;
use capstan_core::pod_network::{HostRoutes, PodNetwork, PodNetworkConfig, RouteBackend};
use capstan_core::proxy::testkit::{in_namespace, network_namespaces_available};
use capstan_core::service_gate::missing_service;
use capstan_core::store::MemoryStore;
use capstan_net_iptables::NetlinkRoutes;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

/// Whether `host` routes `address` into a blackhole (the kernel refuses to resolve a route
/// for it: "Invalid argument").
fn blackholed(host: &str, address: &str) -> bool {
    let out = Command::new("ip")
        .args(["-n", host, "route", "get", address])
        .output()
        .expect("ip");
    // IPv4 refuses to route into a blackhole; IPv6 names the blackhole route.
    (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Invalid argument"))
        || String::from_utf8_lossy(&out.stdout).starts_with("blackhole")
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Two hosts (`10.250.9.1`, `10.250.9.2` on one link), pod `10.244.1.2` behind A and pod
/// `10.244.2.2` behind B; removed on drop.
struct TwoHosts {
    names: Vec<String>,
}

impl TwoHosts {
    fn create() -> TwoHosts {
        let id = std::process::id();
        let hosts = TwoHosts {
            names: ["ha", "hb", "pa", "pb"]
                .iter()
                .map(|n| format!("cap-{n}-{id}"))
                .collect(),
        };
        for name in &hosts.names {
            ip(&["netns", "add", name]);
            ip(&["-n", name, "link", "set", "lo", "up"]);
        }
        let (a, b) = (hosts.host_a(), hosts.host_b());
        for host in [a, b] {
            in_namespace(host, || {
                std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").expect("ip_forward")
            })
            .expect("namespace");
        }
        ip(&[
            "-n", a, "link", "add", "uplink", "type", "veth", "peer", "name", "uplink", "netns", b,
        ]);
        for (host, address) in [(a, "10.250.9.1/24"), (b, "10.250.9.2/24")] {
            ip(&["-n", host, "addr", "add", address, "dev", "uplink"]);
            ip(&["-n", host, "link", "set", "uplink", "up"]);
        }
        for (host, pod, subnet) in [(a, &hosts.names[2], 1), (b, &hosts.names[3], 2)] {
            ip(&[
                "-n", host, "link", "add", "vpod", "type", "veth", "peer", "name", "eth0", "netns",
                pod,
            ]);
            let gateway = format!("10.244.{subnet}.1");
            ip(&[
                "-n",
                host,
                "addr",
                "add",
                &format!("{gateway}/24"),
                "dev",
                "vpod",
            ]);
            ip(&["-n", host, "link", "set", "vpod", "up"]);
            let pod_ip = format!("10.244.{subnet}.2/24");
            ip(&["-n", pod, "addr", "add", &pod_ip, "dev", "eth0"]);
            ip(&["-n", pod, "link", "set", "eth0", "up"]);
            ip(&["-n", pod, "route", "add", "default", "via", &gateway]);
        }
        hosts
    }

    fn host_a(&self) -> &str {
        &self.names[0]
    }

    fn host_b(&self) -> &str {
        &self.names[1]
    }

    fn pod_a(&self) -> &str {
        &self.names[2]
    }

    fn pod_b(&self) -> &str {
        &self.names[3]
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = Command::new("ip").args(["netns", "del", name]).output();
        }
    }
}

const POD_B: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 244, 2, 2)), 8080);

/// Serves `reply` on 8080 inside `namespace`, forever (the namespace's removal ends it).
fn serve(namespace: &str, reply: &'static str) {
    let listener = in_namespace(namespace, || {
        TcpListener::bind((Ipv4Addr::UNSPECIFIED, 8080))
    })
    .expect("namespace")
    .expect("bind");
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(reply.as_bytes());
        }
    });
}

/// Connects from `namespace` to `to`: what the server said, or why it failed.
fn connect_from(namespace: &str, to: SocketAddr) -> Result<String, String> {
    in_namespace(namespace, move || {
        let mut stream =
            TcpStream::connect_timeout(&to, Duration::from_secs(2)).map_err(|e| e.to_string())?;
        let mut reply = String::new();
        stream
            .read_to_string(&mut reply)
            .map_err(|e| e.to_string())?;
        Ok(reply)
    })?
}

fn node(name: &str, cidr: &str, address: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"podCIDR": cidr, "podCIDRs": [cidr]},
        "status": {"addresses": [{"type": "InternalIP", "address": address}]},
    }))
    .expect("node")
}

fn block_on<T>(work: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(work)
}

/// The cluster and service ranges, and a dual-stack cluster's IPv6 service range.
fn blackholes() -> Vec<IpCidr> {
    let mut ranges: Vec<IpCidr> = ["10.244.0.0/16", "10.96.0.0/12"]
        .iter()
        .map(|c| Ipv4Cidr::parse(c).expect("cidr").into())
        .collect();
    ranges.push(Ipv6Cidr::parse("fd00:10:96::/112").expect("cidr").into());
    ranges
}

#[test]
fn pods_on_two_hosts_reach_each_other_through_host_gw_routes() {
    if let Err(why) = network_namespaces_available() {
        return missing_service("root with network namespaces", &why);
    }
    let hosts = TwoHosts::create();
    serve(hosts.pod_b(), "pod-b");
    let before = connect_from(hosts.pod_a(), POD_B);
    assert!(before.is_err(), "no route yet, yet A reached B: {before:?}");
    let table_before = ip(&["-n", hosts.host_a(), "route", "show"]);
    let table_before_v6 = ip(&["-n", hosts.host_a(), "-6", "route", "show"]);

    // Host B: programmed straight from the Nodes.
    let nodes = [
        node("a", "10.244.1.0/24", "10.250.9.1"),
        node("b", "10.244.2.0/24", "10.250.9.2"),
    ];
    let for_b = HostRoutes::build(&nodes, "b", &blackholes());
    in_namespace(hosts.host_b(), move || {
        block_on(NetlinkRoutes::new().sync(&for_b))
    })
    .expect("namespace")
    .expect("host B routes");

    // Host A: the PodNetwork over the in-process API, in A's namespace.
    let (host_a, pod_a) = (hosts.host_a().to_string(), hosts.pod_a().to_string());
    in_namespace(&host_a.clone(), move || {
        block_on(async move {
            let server = ApiServer::builder(Arc::new(MemoryStore::default()))
                .build()
                .await
                .expect("server");
            let api: Api<Node> = Api::all(server.client());
            for node in &nodes {
                api.create(&PostParams::default(), node)
                    .await
                    .expect("node");
            }
            let informers = InformerFactory::in_process(&server);
            let mut config = PodNetworkConfig::new("a", blackholes());
            config.sync_period = Duration::from_millis(500);
            let network =
                PodNetwork::new(&informers, Arc::new(NetlinkRoutes::new()), config).start();
            tokio::time::timeout(
                Duration::from_secs(10),
                network.wait_for(|routes| routes.routes.len() == 1),
            )
            .await
            .expect("host A synced its route to B");

            let ours = ip(&["-n", &host_a, "route", "show", "proto", "201"]);
            assert!(
                ours.contains("10.244.2.0/24 via 10.250.9.2"),
                "route to B's pods: {ours}"
            );
            assert!(ours.contains("blackhole 10.244.0.0/16"), "{ours}");
            assert!(ours.contains("blackhole 10.96.0.0/12"), "{ours}");
            let ours_v6 = ip(&["-n", &host_a, "-6", "route", "show", "proto", "201"]);
            assert!(ours_v6.contains("blackhole fd00:10:96::/112"), "{ours_v6}");
            assert_eq!(
                connect_from(&pod_a, POD_B).as_deref(),
                Ok("pod-b"),
                "a pod on host A reaches a pod on host B by pod IP"
            );
            // Addresses nobody owns go nowhere.
            for nowhere in ["10.244.77.7", "10.96.0.10", "fd00:10:96::a"] {
                assert!(blackholed(&host_a, nowhere), "{nowhere} is blackholed");
            }
            assert!(
                !blackholed(&host_a, "10.244.2.2"),
                "the more specific route wins"
            );

            // A route deleted behind its back comes back at the next full sync.
            ip(&["-n", &host_a, "route", "del", "10.244.2.0/24"]);
            let mut repaired = false;
            for _ in 0..50 {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let ours = ip(&["-n", &host_a, "route", "show", "proto", "201"]);
                if ours.contains("10.244.2.0/24 via 10.250.9.2") {
                    repaired = true;
                    break;
                }
            }
            assert!(repaired, "the periodic sync restores a deleted route");

            // Node B goes away: its route goes, its pods fall into the blackhole.
            api.delete("b", &DeleteParams::default())
                .await
                .expect("delete b");
            tokio::time::timeout(
                Duration::from_secs(10),
                network.wait_for(|routes| routes.routes.is_empty()),
            )
            .await
            .expect("host A dropped the route to B");
            assert!(blackholed(&host_a, "10.244.2.2"));
            assert!(connect_from(&pod_a, POD_B).is_err());

            network.stop().await;
            NetlinkRoutes::new().cleanup().await.expect("cleanup");
            informers.stop();
        })
    })
    .expect("namespace");
    let table_after = ip(&["-n", hosts.host_a(), "route", "show"]);
    assert_eq!(
        table_after, table_before,
        "cleanup removes exactly our routes"
    );
    let table_after_v6 = ip(&["-n", hosts.host_a(), "-6", "route", "show"]);
    assert_eq!(table_after_v6, table_before_v6, "and our IPv6 blackhole");
}
