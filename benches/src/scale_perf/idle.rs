//! Idle `capstan up`: the resident memory of the reference binary (embedded store, simulated
//! runtime, one node agent, proxy, DNS) once it has settled, beside that of an idle etcd — the
//! store alone of a Kubernetes control plane — started in the same run. Target: under 60 MB
//! (a k3s server idles at about 1.4 GB with its workload).

use crate::{resident_mib, Bench};
use capstan_store_etcd::testkit::LocalEtcd;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// How long both processes idle before they are measured.
const SETTLE: Duration = Duration::from_secs(10);
/// The line `capstan up` prints once every component is ready.
const READY: &str = "use it with";

/// Stops `capstan up` (SIGTERM, as a user would) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Measures and prints `idle-up` / `idle_rss_mib`. The `capstan` binary must sit beside this
/// one (`cargo build --release --bin capstan`).
pub async fn run(bench: Bench) -> Result<(), String> {
    let binary = std::env::current_exe()
        .map_err(|e| e.to_string())?
        .with_file_name("capstan");
    if !binary.exists() {
        return Err(format!(
            "{} is missing: build it first with `cargo build --release --bin capstan`",
            binary.display()
        ));
    }
    let etcd = match LocalEtcd::start(23990).await {
        Ok(etcd) => Some(etcd),
        Err(err) => {
            eprintln!("scale-perf: no etcd baseline ({err})");
            None
        }
    };
    let data = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut child = Command::new(&binary)
        .args([
            "up",
            "--runtime",
            "sim",
            "--listen",
            "127.0.0.1:26443",
            "--data-dir",
        ])
        .arg(data.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{}: {e}", binary.display()))?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let capstan = Running(child);
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains(READY) {
                let _ = ready_tx.send(());
            }
        }
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .map_err(|_| "capstan up did not become ready within 60 s".to_string())?;
    tokio::time::sleep(SETTLE).await;
    let rss = resident_mib(Some(capstan.0.id()), "VmRSS");
    let baseline = etcd
        .as_ref()
        .and_then(LocalEtcd::pid)
        .map(|pid| resident_mib(Some(pid), "VmRSS"));
    drop(capstan);
    bench.figure("idle-up", "idle_rss_mib", rss, "MiB", baseline);
    Ok(())
}
