//! `proxy-perf`: how long the iptables and nftables proxy backends take to program a node, inside a network
//! namespace it creates (root needed):
//!
//! - `iptables-full-{N}svc`: the first sync of N Services x 10 endpoints (ClusterIP and
//!   NodePort) on a fresh host, beside raw `iptables-restore` of the same rules (what
//!   `iptables-save` shows after the sync) into another fresh host — the ratio is the backend's
//!   overhead (target <= 1.1);
//! - `iptables-incremental-{N}svc`: one Service's endpoints changed, synced after the full sync
//!   (target <= 100 ms at 10k Services), beside the full sync's raw restore.
//!
//! Cases without a variant run on iptables-legacy; `iptables-nft-*` on iptables over nf_tables
//! (slower to restore large rule sets). `nftables-full-{N}svc` and `nftables-incremental-{N}svc`
//! measure the nftables backend the same way, beside raw `nft -f` of the same transaction texts
//! (the full one into a fresh host, then the delta on top). `--quick` runs 1000 Services only;
//! `--services N` and `--variant legacy|nft|nftables` narrow a run. Anchor: kube-proxy's partial syncs cut network
//! programming p50 from ~27 s to ~5 s at 5000 nodes; a 696k-line restore took 12.8 s.

use crate::{Bench, Mode};
use capstan_core::proxy::testkit::{in_namespace, network_namespaces_available, Topology};
use capstan_core::proxy::{Protocol, ProxyBackend, ServiceEntry, ServicePortName, ServiceTable};
use capstan_net_iptables::{IptablesConfig, IptablesProxy, NftablesConfig, NftablesProxy, Variant};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BENCH: Bench = Bench("proxy-perf");
const ENDPOINTS: usize = 10;

fn table(services: usize, generation: u8) -> ServiceTable {
    let mut table = ServiceTable::default();
    for i in 0..services {
        let cluster_ip = Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8);
        let endpoints = (0..ENDPOINTS)
            .map(|e| {
                // Service 0's endpoints move with the generation: the one change.
                let third = if i == 0 { generation } else { 0 };
                let ip = Ipv4Addr::new(10, 244, ((i * ENDPOINTS + e) / 250 % 250) as u8, third);
                let ip = Ipv4Addr::new(
                    ip.octets()[0],
                    ip.octets()[1],
                    ip.octets()[2],
                    (e + 1) as u8 + third,
                );
                SocketAddr::new(IpAddr::V4(ip), 8080)
            })
            .collect();
        table.services.insert(
            ServicePortName {
                namespace: "default".into(),
                name: format!("svc-{i}"),
                port: "http".into(),
                protocol: Protocol::Tcp,
            },
            ServiceEntry {
                cluster_ips: vec![IpAddr::V4(cluster_ip)],
                port: 80,
                // NodePorts are unique: the first 2768 Services get one.
                node_port: (i < 2768).then(|| 30000 + i as u16),
                affinity: None,
                endpoints,
            },
        );
    }
    table
}

/// (full sync, incremental sync, the rules as iptables-save prints them).
fn backend_syncs(
    services: usize,
    variant: Variant,
) -> Result<(Duration, Duration, String), String> {
    let topology = Topology::create(0)?;
    let host = topology.host.clone();
    let (full, incremental) = in_namespace(&host, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let backend = IptablesProxy::new(IptablesConfig {
                variant: Some(variant),
                ..IptablesConfig::default()
            })
            .await
            .map_err(|e| e.to_string())?;
            let first = table(services, 0);
            let began = Instant::now();
            backend.sync(&first).await.map_err(|e| e.to_string())?;
            let full = began.elapsed();
            let changed = table(services, 100);
            let began = Instant::now();
            backend.sync(&changed).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((full, began.elapsed()))
        })
    })??;
    let saved = topology.host_command(&[&save_binary(variant)])?;
    Ok((full, incremental, saved))
}

fn save_binary(variant: Variant) -> String {
    match variant {
        Variant::Nft => "iptables-nft-save".into(),
        Variant::Legacy => "iptables-legacy-save".into(),
    }
}

/// How long `program args` inside namespace `host` takes to read `input` and finish.
fn timed_in(host: &str, program: &[&str], input: &str) -> Result<Duration, String> {
    let began = Instant::now();
    let mut child = Command::new("ip")
        .args(["netns", "exec", host])
        .args(program)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    child
        .stdin
        .take()
        .ok_or("no stdin")?
        .write_all(input.as_bytes())
        .map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(began.elapsed())
}

/// Raw `iptables-restore` of `rules` into a fresh namespace.
fn raw_restore(rules: &str, variant: Variant) -> Result<Duration, String> {
    let topology = Topology::create(0)?;
    let restore = save_binary(variant).replace("-save", "-restore");
    timed_in(&topology.host, &[&restore, "-w", "5", "--noflush"], rules)
}

/// (full sync, incremental sync, their `nft -f` texts) of the nftables backend.
fn nftables_syncs(services: usize) -> Result<(Duration, Duration, String, String), String> {
    let topology = Topology::create(0)?;
    let host = topology.host.clone();
    in_namespace(&host, move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let backend = NftablesProxy::new(NftablesConfig::default())
                .await
                .map_err(|e| e.to_string())?;
            let first = table(services, 0);
            let changed = table(services, 100);
            let full_text = backend.sync_text(&first, None);
            let delta_text = backend.sync_text(&changed, Some(&first));
            let began = Instant::now();
            backend.sync(&first).await.map_err(|e| e.to_string())?;
            let full = began.elapsed();
            let began = Instant::now();
            backend.sync(&changed).await.map_err(|e| e.to_string())?;
            Ok::<_, String>((full, began.elapsed(), full_text, delta_text))
        })
    })?
}

/// Raw `nft -f` of each text in turn, into one fresh namespace.
fn raw_nft(texts: &[&str]) -> Result<Vec<Duration>, String> {
    let topology = Topology::create(0)?;
    texts
        .iter()
        .map(|text| timed_in(&topology.host, &["nft", "-f", "-"], text))
        .collect()
}

/// Runs the harness with the command line's arguments.
pub fn main() {
    if let Err(why) = network_namespaces_available() {
        capstan_core::service_gate::missing_service("root with network namespaces", &why);
        return;
    }
    let mode = Mode::from_args();
    let args: Vec<String> = std::env::args().collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1).cloned())
    };
    let sizes: Vec<usize> = match value_of("--services").and_then(|n| n.parse().ok()) {
        Some(n) => vec![n],
        None => match mode {
            Mode::Quick => vec![1000],
            Mode::Standard => vec![1000, 5000, 10_000],
        },
    };
    // iptables-nft restores large rule sets several times slower than legacy (and worse than
    // linearly), so the standard sizes run on legacy and nft is measured at 1000 Services.
    let mut runs: Vec<(usize, Variant)> = sizes.iter().map(|n| (*n, Variant::Legacy)).collect();
    let mut nftables_sizes = sizes.clone();
    match value_of("--variant").as_deref() {
        Some("nft") => {
            runs.iter_mut().for_each(|r| r.1 = Variant::Nft);
            nftables_sizes.clear();
        }
        Some("legacy") => nftables_sizes.clear(),
        Some("nftables") => runs.clear(),
        _ => runs.push((1000, Variant::Nft)),
    }
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    for services in nftables_sizes {
        eprintln!("proxy-perf: {services} services x {ENDPOINTS} endpoints (nftables)");
        let (full, incremental, full_text, delta_text) =
            nftables_syncs(services).expect("nftables backend syncs");
        let raw = raw_nft(&[&full_text, &delta_text]).expect("raw nft -f");
        BENCH.figure(
            format!("nftables-full-{services}svc"),
            "sync_ms",
            ms(full),
            "ms",
            Some(ms(raw[0])),
        );
        BENCH.figure(
            format!("nftables-incremental-{services}svc"),
            "sync_ms",
            ms(incremental),
            "ms",
            Some(ms(raw[1])),
        );
    }
    for (services, variant) in runs {
        let prefix = match variant {
            Variant::Nft => "iptables-nft",
            Variant::Legacy => "iptables",
        };
        eprintln!("proxy-perf: {services} services x {ENDPOINTS} endpoints ({variant:?})");
        let (full, incremental, saved) = backend_syncs(services, variant).expect("backend syncs");
        let raw = raw_restore(&saved, variant).expect("raw iptables-restore");
        BENCH.figure(
            format!("{prefix}-full-{services}svc"),
            "sync_ms",
            ms(full),
            "ms",
            Some(ms(raw)),
        );
        BENCH.figure(
            format!("{prefix}-incremental-{services}svc"),
            "sync_ms",
            ms(incremental),
            "ms",
            Some(ms(raw)),
        );
    }
}
