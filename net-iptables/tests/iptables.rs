//! The iptables backend with real iptables inside network namespaces (root needed): the proxy
//! conformance kit's traffic checks, cleanup restoring the tables exactly, one jump rule per
//! hook however often it syncs, and refusing to mix iptables variants.

use capstan_core::proxy::testkit::{
    check_backend, in_namespace, network_namespaces_available, KitOptions, Topology,
};
use capstan_core::proxy::{ProxyBackend, ProxyError, ServiceTable};
use capstan_core::service_gate::missing_service;
use capstan_net_iptables::{IptablesConfig, IptablesProxy, NftablesConfig, NftablesProxy, Variant};

fn namespaces() -> bool {
    match network_namespaces_available() {
        Ok(()) => true,
        Err(why) => {
            missing_service("root with network namespaces", &why);
            false
        }
    }
}

/// Runs `work` to completion on a fresh single-threaded runtime inside `namespace`.
fn block_in<T: Send + 'static, F: std::future::Future<Output = T> + 'static>(
    namespace: &str,
    work: impl FnOnce() -> F + Send + 'static,
) -> T {
    in_namespace(namespace, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(work())
    })
    .expect("namespace")
}

/// The host namespace's rules, without comments and counters.
fn saved(topology: &Topology) -> String {
    let raw = topology
        .host_command(&["iptables-save"])
        .expect("iptables-save");
    raw.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| match l.rfind(" [") {
            Some(at) if l.starts_with(':') => &l[..at],
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn iptables_backend_passes_the_proxy_kit_and_cleans_up_exactly() {
    if !namespaces() {
        return;
    }
    let topology = Topology::create(3).expect("topology");
    // A rule of somebody else's, which must survive.
    topology
        .host_command(&[
            "iptables",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-s",
            "10.250.0.0/24",
            "-j",
            "RETURN",
        ])
        .expect("a foreign rule");
    topology
        .host_command(&[
            "iptables",
            "-t",
            "filter",
            "-A",
            "INPUT",
            "-s",
            "10.250.0.9",
            "-j",
            "RETURN",
        ])
        .expect("a foreign filter rule");
    let before = saved(&topology);
    check_backend(&topology, KitOptions::default(), || async {
        IptablesProxy::new(IptablesConfig {
            cluster_cidr: Some("10.251.0.0/16".into()),
            ..IptablesConfig::default()
        })
        .await
    })
    .expect("the iptables backend meets the proxy contract");
    assert_eq!(saved(&topology), before, "cleanup restores the tables");
}

#[test]
fn repeated_syncs_keep_one_jump_per_hook_and_replace_stale_chains() {
    if !namespaces() {
        return;
    }
    let topology = Topology::create(0).expect("topology");
    let host = topology.host.clone();
    let outcome = in_namespace(&host, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let backend = IptablesProxy::new(IptablesConfig::default()).await?;
            let mut table = ServiceTable::default();
            table.services.insert(
                capstan_core::proxy::ServicePortName {
                    namespace: "default".into(),
                    name: "web".into(),
                    port: String::new(),
                    protocol: capstan_core::proxy::Protocol::Tcp,
                },
                capstan_core::proxy::ServiceEntry {
                    cluster_ips: vec!["10.96.0.10".parse().expect("ip")],
                    port: 80,
                    node_port: None,
                    affinity: None,
                    endpoints: vec!["10.251.0.2:8080".parse().expect("endpoint")],
                },
            );
            for _ in 0..3 {
                backend.sync(&table).await?;
            }
            // A new backend (a restarted proxy) with an empty table removes the old chains.
            let restarted = IptablesProxy::new(IptablesConfig::default()).await?;
            restarted.sync(&table).await?;
            let after_restart = restarted.variant();
            restarted.sync(&ServiceTable::default()).await?;
            Ok::<_, ProxyError>(after_restart)
        })
    })
    .expect("namespace thread");
    assert_eq!(outcome.expect("syncs"), Variant::Nft);
    let saved = saved(&topology);
    assert_eq!(
        saved
            .matches("-A PREROUTING -m comment --comment \"capstan service portals\"")
            .count(),
        1,
        "{saved}"
    );
    assert_eq!(
        saved.matches("-j CAPSTAN-EXTERNAL-SERVICES").count(),
        2,
        "{saved}"
    );
    assert!(
        !saved.contains("CAPSTAN-SVC-"),
        "stale chains stay: {saved}"
    );
    assert!(
        !saved.contains("CAPSTAN-SEP-"),
        "stale chains stay: {saved}"
    );
}

#[test]
fn refuses_to_program_nft_while_legacy_holds_our_chains() {
    if !namespaces() {
        return;
    }
    let topology = Topology::create(0).expect("topology");
    topology
        .host_command(&["iptables-legacy", "-t", "nat", "-N", "CAPSTAN-SERVICES"])
        .expect("a legacy chain");
    let host = topology.host.clone();
    let result = in_namespace(&host, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime
            .block_on(IptablesProxy::new(IptablesConfig {
                variant: Some(Variant::Nft),
                ..IptablesConfig::default()
            }))
            .map(|_| ())
    })
    .expect("namespace thread");
    match result {
        Err(ProxyError::Unsupported(why)) => assert!(why.contains("legacy"), "{why}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    topology
        .host_command(&["iptables-legacy", "-t", "nat", "-X", "CAPSTAN-SERVICES"])
        .expect("remove the legacy chain");
}

#[test]
fn nftables_backend_passes_the_proxy_kit_and_cleans_up_exactly() {
    if !namespaces() {
        return;
    }
    let topology = Topology::create(3).expect("topology");
    let ruleset = || {
        topology
            .host_command(&["nft", "list", "ruleset"])
            .expect("nft list ruleset")
    };
    let before = ruleset();
    let options = KitOptions {
        ipv6: true,
        ..KitOptions::default()
    };
    check_backend(&topology, options, || async {
        NftablesProxy::new(NftablesConfig {
            cluster_cidr: Some("10.251.0.0/16".into()),
            ipv6: Some(true),
            ..NftablesConfig::default()
        })
        .await
    })
    .expect("the nftables backend meets the proxy contract");
    assert_eq!(ruleset(), before, "cleanup leaves the ruleset as it was");
}

/// A UDP client keeps its source port; after its endpoint is removed, its next datagram must
/// reach the remaining endpoint, not the one its old flow was DNATed to.
fn udp_flows_follow_endpoint_changes<B: ProxyBackend + 'static>(
    topology: &Topology,
    backend: B,
    client_port: u16,
) {
    use capstan_core::proxy::testkit::POD_UDP_PORT;
    use capstan_core::proxy::{Protocol, ServiceEntry, ServicePortName};
    use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
    use std::time::Duration;
    let backend = std::sync::Arc::new(backend);
    let sync = |endpoints: Vec<usize>| {
        let mut table = ServiceTable::default();
        table.services.insert(
            ServicePortName {
                namespace: "default".into(),
                name: "dns".into(),
                port: "dns".into(),
                protocol: Protocol::Udp,
            },
            ServiceEntry {
                cluster_ips: vec!["10.96.0.20".parse().expect("ip")],
                port: 53,
                node_port: None,
                affinity: None,
                endpoints: endpoints
                    .iter()
                    .map(|i| SocketAddr::new(topology.pod_address(*i).into(), POD_UDP_PORT))
                    .collect(),
            },
        );
        let backend = backend.clone();
        block_in(
            &topology.host,
            move || async move { backend.sync(&table).await },
        )
        .expect("sync");
    };
    let socket = in_namespace(&topology.client, move || {
        UdpSocket::bind((Ipv4Addr::UNSPECIFIED, client_port))
    })
    .expect("namespace")
    .expect("bind");
    socket
        .set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let ask = || {
        socket.send_to(b"who", ("10.96.0.20", 53)).expect("send");
        let mut buffer = [0u8; 64];
        let (len, _) = socket.recv_from(&mut buffer).expect("an answer");
        String::from_utf8_lossy(&buffer[..len]).into_owned()
    };
    sync(vec![0]);
    assert_eq!(ask(), "pod0");
    assert_eq!(ask(), "pod0");
    sync(vec![1]);
    assert_eq!(
        ask(),
        "pod1",
        "the flow to the removed endpoint was forgotten"
    );
    let backend = backend.clone();
    block_in(
        &topology.host,
        move || async move { backend.cleanup().await },
    )
    .expect("cleanup");
}

#[test]
fn stale_udp_flows_are_forgotten_by_both_backends() {
    if !namespaces() {
        return;
    }
    let topology = Topology::create(3).expect("topology");
    let iptables = block_in(&topology.host, move || {
        IptablesProxy::new(IptablesConfig::default())
    })
    .expect("iptables");
    udp_flows_follow_endpoint_changes(&topology, iptables, 40053);
    let nftables = block_in(&topology.host, move || {
        NftablesProxy::new(NftablesConfig::default())
    })
    .expect("nftables");
    udp_flows_follow_endpoint_changes(&topology, nftables, 40054);
}
