//! Cluster DNS over real UDP and TCP sockets on loopback, answering from Services and
//! EndpointSlices in the in-process API, and following their changes.

use capstan_core::apiserver::ApiServer;
use capstan_core::controller::InformerFactory;
use capstan_core::dns::{ClusterDns, DnsConfig};
use capstan_core::store::MemoryStore;
use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, PostParams};
use serde_json::json;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn query(name: &str, record_type: RecordType) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(7)
        .set_message_type(MessageType::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    message.to_vec().unwrap()
}

async fn ask_udp(server: SocketAddr, name: &str, record_type: RecordType) -> Message {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket
        .send_to(&query(name, record_type), server)
        .await
        .unwrap();
    let mut buffer = vec![0u8; 4096];
    let (len, _) = tokio::time::timeout(Duration::from_secs(2), socket.recv_from(&mut buffer))
        .await
        .expect("an answer within 2 s, never a hang")
        .unwrap();
    Message::from_vec(&buffer[..len]).unwrap()
}

async fn ask_tcp(server: SocketAddr, name: &str, record_type: RecordType) -> Message {
    let mut stream = tokio::net::TcpStream::connect(server).await.unwrap();
    let request = query(name, record_type);
    stream.write_u16(request.len() as u16).await.unwrap();
    stream.write_all(&request).await.unwrap();
    let len = stream.read_u16().await.unwrap();
    let mut response = vec![0u8; usize::from(len)];
    stream.read_exact(&mut response).await.unwrap();
    Message::from_vec(&response).unwrap()
}

fn addresses(message: &Message) -> Vec<String> {
    message
        .answers()
        .iter()
        .filter_map(|r| match r.data() {
            RData::A(a) => Some(a.0.to_string()),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_dns_answers_services_endpoints_and_pods() {
    let server = ApiServer::builder(Arc::new(MemoryStore::default()))
        .build()
        .await
        .unwrap();
    let client = server.client();
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let web = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "web"},
                "spec": {"ports": [{"name": "http", "port": 80}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    let web_ip = web.spec.unwrap().cluster_ip.unwrap();
    services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "db"},
                "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}))
            .unwrap(),
        )
        .await
        .unwrap();
    slices
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "db-a", "labels": {"kubernetes.io/service-name": "db"}},
                "addressType": "IPv4",
                "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
                "endpoints": [{"addresses": ["10.244.0.7"], "hostname": "db-0"},
                              {"addresses": ["10.244.0.8"], "hostname": "db-1"}],
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let informers = InformerFactory::in_process(&server);
    let dns = ClusterDns::new(
        &informers,
        DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            domain: "cluster.local".into(),
        },
    )
    .start()
    .await
    .unwrap();
    let at = dns.address();

    // The zone is built once the informers have synced.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = ask_udp(at, "web.default.svc.cluster.local", RecordType::A).await;
        if addresses(&answer) == vec![web_ip.clone()] {
            assert_eq!(answer.response_code(), ResponseCode::NoError);
            assert_eq!(answer.id(), 7);
            break;
        }
        assert!(Instant::now() < deadline, "web never resolved: {answer:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let db = ask_udp(at, "db.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(addresses(&db), vec!["10.244.0.7", "10.244.0.8"]);
    let db1 = ask_tcp(at, "db-1.db.default.svc.cluster.local.", RecordType::A).await;
    assert_eq!(addresses(&db1), vec!["10.244.0.8"]);
    let srv = ask_udp(at, "_pg._tcp.db.default.svc.cluster.local", RecordType::SRV).await;
    assert_eq!(srv.answers().len(), 2);
    assert_eq!(srv.additionals().len(), 2);
    let pod = ask_udp(at, "10-244-1-5.default.pod.cluster.local", RecordType::A).await;
    assert_eq!(addresses(&pod), vec!["10.244.1.5"]);
    let aaaa = ask_udp(at, "web.default.svc.cluster.local", RecordType::AAAA).await;
    assert_eq!(aaaa.response_code(), ResponseCode::NoError);
    assert!(aaaa.answers().is_empty());
    for unknown in [
        "nope.default.svc.cluster.local",
        "example.org",
        "web.default",
    ] {
        let answer = ask_udp(at, unknown, RecordType::A).await;
        assert_eq!(answer.response_code(), ResponseCode::NXDomain, "{unknown}");
    }
    // Garbage gets no answer and does not stop the server.
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(b"not dns", at).await.unwrap();
    let answer = ask_udp(at, "web.default.svc.cluster.local", RecordType::A).await;
    assert_eq!(addresses(&answer), vec![web_ip]);

    // A deleted Service stops resolving.
    services
        .delete("web", &DeleteParams::default())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = ask_udp(at, "web.default.svc.cluster.local", RecordType::A).await;
        if answer.response_code() == ResponseCode::NXDomain {
            break;
        }
        assert!(Instant::now() < deadline, "web still resolves");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    dns.stop().await;
    informers.stop();
}
