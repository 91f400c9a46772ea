//! The service proxy: the userspace backend through the proxy conformance kit (real traffic in
//! network namespaces; needs root), and a [`ServiceProxy`] following Services and EndpointSlices
//! through the in-process API, carrying NodePort traffic on loopback (no root).

use capstan_core::apiserver::ApiServer;
use capstan_core::controller::InformerFactory;
use capstan_core::proxy::testkit::{
    check_backend, network_namespaces_available, KitOptions, Topology,
};
use capstan_core::proxy::{ProxyConfig, ServiceProxy, UserspaceConfig, UserspaceProxy};
use capstan_core::service_gate::missing_service;
use capstan_core::store::MemoryStore;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn userspace_backend_passes_the_proxy_kit() {
    if let Err(why) = network_namespaces_available() {
        return missing_service("root with network namespaces", &why);
    }
    let topology = Topology::create(3).expect("topology");
    let options = KitOptions {
        local_cluster_ips: true,
        ipv6: true,
    };
    check_backend(&topology, options, || async {
        use capstan_core::proxy::testkit::{NODE_ADDRESS, NODE_ADDRESS_V6};
        Ok(UserspaceProxy::new(UserspaceConfig {
            node_addresses: vec![NODE_ADDRESS.into(), NODE_ADDRESS_V6.into()],
            cluster_ips: true,
        }))
    })
    .expect("the userspace backend meets the proxy contract");
}

/// A loopback server answering every connection with `reply`.
fn serve(reply: &'static str) -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            let _ = stream.write_all(reply.as_bytes());
        }
    });
    port
}

fn ask(port: u16) -> Option<String> {
    let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    Some(reply)
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_proxy_follows_services_and_endpoint_slices() {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let client = server.client();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let first = serve("first");
    let second = serve("second");
    let created = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "web"},
                "spec": {"type": "NodePort", "ports": [{"name": "http", "port": 80}]},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let node_port = created.spec.unwrap().ports.unwrap()[0].node_port.unwrap() as u16;
    let slice = |port: u16| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"name": "web-manual", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": ["127.0.0.1"], "conditions": {"ready": true}}],
        }))
        .unwrap()
    };
    let informers = InformerFactory::in_process(&server);
    let backend = Arc::new(UserspaceProxy::new(UserspaceConfig {
        node_addresses: vec![Ipv4Addr::LOCALHOST.into()],
        cluster_ips: false,
    }));
    let config = ProxyConfig {
        min_sync_period: Duration::from_millis(100),
        sync_period: Duration::from_secs(30),
    };
    let proxy = ServiceProxy::new(&informers, backend.clone(), config).start();
    proxy.wait_for_syncs(1).await;
    assert!(proxy.health().is_healthy());
    // `web` and the API server's own `kubernetes` Service.
    assert_eq!(proxy.health().service_ports, 2);
    // The health endpoint, as kube-proxy's /healthz: 200 with the last sync time.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .unwrap();
    let health_port = listener.local_addr().unwrap().port();
    proxy.serve_health(listener);
    let healthz = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect((Ipv4Addr::LOCALHOST, health_port)).unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap();
        reply
    })
    .await
    .unwrap();
    assert!(healthz.starts_with("HTTP/1.0 200"), "{healthz}");
    let body: serde_json::Value =
        serde_json::from_str(healthz.split("\r\n\r\n").nth(1).unwrap()).unwrap();
    assert!(body["lastUpdated"].as_str().is_some(), "{body}");
    assert_eq!(body["servicePorts"], 2);
    // No endpoints yet: nothing listens on the NodePort.
    assert_eq!(ask(node_port), None);

    slices
        .create(&PostParams::default(), &slice(first))
        .await
        .unwrap();
    eventually("the first endpoint", || {
        ask(node_port).as_deref() == Some("first")
    })
    .await;

    let mut current = slices.get("web-manual").await.unwrap();
    current.ports = slice(second).ports;
    slices
        .replace("web-manual", &PostParams::default(), &current)
        .await
        .unwrap();
    eventually("the changed endpoint", || {
        ask(node_port).as_deref() == Some("second")
    })
    .await;

    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    eventually("the NodePort to close", || ask(node_port).is_none()).await;
    eventually("the table without web", || {
        proxy.health().service_ports == 1
    })
    .await;
    proxy.stop().await;
    informers.stop();
}
