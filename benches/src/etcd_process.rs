//! A throwaway etcd on loopback for harnesses run without `CAPSTAN_ETCD_ENDPOINTS`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An etcd child process with its own data directory; killed on drop.
pub struct LocalEtcd {
    child: Child,
    _data: tempfile::TempDir,
    /// Its client URL.
    pub endpoint: String,
}

impl LocalEtcd {
    /// Starts `etcd` from PATH on the given loopback ports and waits until it answers.
    pub async fn start(client_port: u16, peer_port: u16) -> std::io::Result<Self> {
        let data = tempfile::tempdir()?;
        let client = format!("http://127.0.0.1:{client_port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new("etcd")
            .args(["--name", "bench", "--data-dir"])
            .arg(data.path())
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &format!("bench={peer}"),
                "--max-request-bytes",
                "1638400",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let etcd = LocalEtcd {
            child,
            _data: data,
            endpoint: client,
        };
        for _ in 0..100 {
            if etcd_client::Client::connect([&etcd.endpoint], None)
                .await
                .is_ok()
            {
                let mut client = etcd_client::Client::connect([&etcd.endpoint], None)
                    .await
                    .map_err(std::io::Error::other)?;
                if client.status().await.is_ok() {
                    return Ok(etcd);
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(std::io::Error::other("etcd did not become ready"))
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// etcd endpoints: `CAPSTAN_ETCD_ENDPOINTS` if set, else a [`LocalEtcd`] started here (kept
/// alive by the returned guard), else `None` with the reason printed to stderr.
pub async fn etcd_endpoints() -> Option<(Vec<String>, Option<LocalEtcd>)> {
    if let Ok(value) = std::env::var("CAPSTAN_ETCD_ENDPOINTS") {
        if !value.trim().is_empty() {
            return Some((
                value.split(',').map(|s| s.trim().to_string()).collect(),
                None,
            ));
        }
    }
    match LocalEtcd::start(23790, 23800).await {
        Ok(etcd) => Some((vec![etcd.endpoint.clone()], Some(etcd))),
        Err(err) => {
            eprintln!("etcd unavailable ({err}); etcd figures and baselines are skipped");
            None
        }
    }
}
