//! Container probes (exec, httpGet, tcpSocket) and the threshold bookkeeping that turns their
//! results into "started", "ready" and "alive".
//!
//! Probes run inside the pod: exec through the runtime, network probes through
//! [`ContainerRuntime::connect`] into the sandbox. A runtime without real processes cannot be
//! reached over the network; its network probes succeed.

use crate::runtime::{ContainerRuntime, RuntimeError, SandboxInfo};
use k8s_openapi::api::core::v1::{Container, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// The outcome of one probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProbeResult {
    Success,
    Failure(String),
}

/// Where a probe's consecutive results stand.
#[derive(Debug, Clone)]
pub(crate) struct ProbeTracker {
    successes: i32,
    failures: i32,
    next_at: Instant,
    /// The thresholded verdict so far (`None` before the first decision).
    pub verdict: Option<bool>,
    pub last_message: String,
}

impl ProbeTracker {
    pub fn new(probe: &Probe, started: Instant) -> Self {
        ProbeTracker {
            successes: 0,
            failures: 0,
            next_at: started
                + Duration::from_secs(probe.initial_delay_seconds.unwrap_or(0).max(0) as u64),
            verdict: None,
            last_message: String::new(),
        }
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_at
    }

    pub fn next_at(&self) -> Instant {
        self.next_at
    }

    /// Records a result; returns the new verdict.
    pub fn record(&mut self, probe: &Probe, result: ProbeResult, now: Instant) -> Option<bool> {
        self.next_at = now + Duration::from_secs(probe.period_seconds.unwrap_or(10).max(1) as u64);
        match result {
            ProbeResult::Success => {
                self.failures = 0;
                self.successes += 1;
                if self.successes >= probe.success_threshold.unwrap_or(1).max(1) {
                    self.verdict = Some(true);
                }
            }
            ProbeResult::Failure(message) => {
                self.successes = 0;
                self.failures += 1;
                self.last_message = message;
                if self.failures >= probe.failure_threshold.unwrap_or(3).max(1) {
                    self.verdict = Some(false);
                }
            }
        }
        self.verdict
    }
}

fn resolve_port(port: &IntOrString, container: &Container) -> Option<u16> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(name) => container
            .ports
            .as_deref()
            .unwrap_or_default()
            .iter()
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.container_port).ok())
            .or_else(|| name.parse().ok()),
    }
}

/// Runs `probe` once against a container.
pub(crate) async fn run(
    runtime: &dyn ContainerRuntime,
    sandbox: &SandboxInfo,
    container_id: &str,
    container: &Container,
    probe: &Probe,
) -> ProbeResult {
    let timeout = Duration::from_secs(probe.timeout_seconds.unwrap_or(1).max(1) as u64);
    let outcome = tokio::time::timeout(timeout, async {
        if let Some(exec) = &probe.exec {
            let command = exec.command.clone().unwrap_or_default();
            return match runtime.exec(container_id, &command, timeout).await {
                Ok(out) if out.exit_code == 0 => ProbeResult::Success,
                Ok(out) => ProbeResult::Failure(format!(
                    "command {command:?} exited with {}: {}",
                    out.exit_code,
                    String::from_utf8_lossy(&out.stdout).trim()
                )),
                Err(err) => ProbeResult::Failure(err.to_string()),
            };
        }
        let (port, http) = if let Some(http) = &probe.http_get {
            (resolve_port(&http.port, container), Some(http))
        } else if let Some(tcp) = &probe.tcp_socket {
            (resolve_port(&tcp.port, container), None)
        } else {
            return ProbeResult::Success;
        };
        let Some(port) = port else {
            return ProbeResult::Failure("the probe's port is not a valid port".into());
        };
        let mut connection = match runtime.connect(sandbox, port).await {
            Ok(c) => c,
            Err(RuntimeError::Unsupported(_)) => return ProbeResult::Success,
            Err(err) => return ProbeResult::Failure(err.to_string()),
        };
        let Some(http) = http else {
            return ProbeResult::Success;
        };
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        let mut request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\nConnection: close\r\n",
            sandbox.ip.map(|ip| ip.to_string()).unwrap_or_default()
        );
        for header in http.http_headers.as_deref().unwrap_or_default() {
            request.push_str(&format!("{}: {}\r\n", header.name, header.value));
        }
        request.push_str("\r\n");
        if let Err(err) = connection.write_all(request.as_bytes()).await {
            return ProbeResult::Failure(format!("writing the request: {err}"));
        }
        let mut head = Vec::new();
        let mut buffer = [0u8; 256];
        while !head.contains(&b'\n') && head.len() < 4096 {
            match connection.read(&mut buffer).await {
                Ok(0) => break,
                Ok(n) => head.extend_from_slice(&buffer[..n]),
                Err(err) => return ProbeResult::Failure(format!("reading the response: {err}")),
            }
        }
        let line = String::from_utf8_lossy(&head);
        let code: Option<u16> = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok());
        match code {
            Some(code) if (200..400).contains(&code) => ProbeResult::Success,
            Some(code) => ProbeResult::Failure(format!("HTTP probe failed with statuscode: {code}")),
            None => ProbeResult::Failure("malformed HTTP response".into()),
        }
    })
    .await;
    outcome.unwrap_or_else(|_| ProbeResult::Failure(format!("probe timed out after {timeout:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_decide_the_verdict() {
        let probe = Probe {
            failure_threshold: Some(2),
            success_threshold: Some(1),
            period_seconds: Some(1),
            ..Probe::default()
        };
        let now = Instant::now();
        let mut tracker = ProbeTracker::new(&probe, now);
        assert!(tracker.due(now));
        assert_eq!(
            tracker.record(&probe, ProbeResult::Failure("x".into()), now),
            None
        );
        assert!(!tracker.due(now));
        assert_eq!(
            tracker.record(&probe, ProbeResult::Failure("x".into()), now),
            Some(false)
        );
        assert_eq!(
            tracker.record(&probe, ProbeResult::Success, now),
            Some(true)
        );
    }
}
