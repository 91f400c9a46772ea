//! A throwaway etcd on loopback (feature `testkit`): started from `etcd` on `PATH` with its own
//! data directory, stoppable and restartable on the same ports and data, killed on drop. For
//! tests and benchmarks that need an etcd of their own (a restart test, a baseline run).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// An etcd child process.
pub struct LocalEtcd {
    child: Option<Child>,
    data: tempfile::TempDir,
    client_port: u16,
}

impl LocalEtcd {
    /// Starts etcd with client port `client_port` and peer port `client_port + 1` on
    /// 127.0.0.1, and waits until it answers.
    pub async fn start(client_port: u16) -> std::io::Result<Self> {
        let mut etcd = LocalEtcd {
            child: None,
            data: tempfile::tempdir()?,
            client_port,
        };
        etcd.restart().await?;
        Ok(etcd)
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// The running process's id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process (SIGKILL); the data stays.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the process again on the same ports and data (stopping it first if running), and
    /// waits until it answers.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.client_port + 1);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data.path().join("etcd.log"))?;
        let child = Command::new("etcd")
            .args(["--name", "local", "--data-dir"])
            .arg(self.data.path().join("data"))
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
                &format!("local={peer}"),
                "--max-request-bytes",
                "1638400",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()?;
        self.child = Some(child);
        for _ in 0..150 {
            if let Ok(mut client) = etcd_client::Client::connect([&client], None).await {
                if client.status().await.is_ok() {
                    return Ok(());
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(std::io::Error::other(
            "etcd did not become ready within 15 s",
        ))
    }
}

impl Drop for LocalEtcd {
    fn drop(&mut self) {
        self.stop();
    }
}
