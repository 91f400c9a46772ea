//! The audit log: one JSON line per request, in the shape of Kubernetes' `audit.k8s.io/v1`
//! Event at level Metadata — who (user, groups, source address, user agent) did what (verb,
//! URI, object reference) and how it ended (response code) — written by a thread of its own so
//! requests never wait on the disk. Request and response bodies are never logged (they may
//! hold secrets).

use super::UserInfo;
use serde_json::{json, Value};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError, SyncSender, TrySendError};
use std::time::Duration;

/// Lines waiting for the writer before new ones are dropped (and counted).
const QUEUE: usize = 65_536;

/// What one request did, as the audit log records it.
#[derive(Debug, Clone, Default)]
pub struct AuditRecord {
    /// The user, if authenticated.
    pub user: Option<UserInfo>,
    /// The Kubernetes verb (`get`, `list`, `create`, …) or the lowercased HTTP method.
    pub verb: String,
    /// Path and query.
    pub request_uri: String,
    /// The client's address, if known.
    pub source_ip: Option<String>,
    /// The User-Agent header.
    pub user_agent: Option<String>,
    /// The object: resource, subresource, namespace, name, API group and version.
    pub object_ref: Option<Value>,
    /// The response's status code.
    pub code: u16,
    /// When the request arrived.
    pub received: chrono::DateTime<chrono::Utc>,
}

/// Appends audit events to a file.
#[derive(Debug)]
pub struct AuditLog {
    sender: SyncSender<String>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Appends to `path` (created readable by its owner only if absent).
    pub fn to_file(path: &Path) -> std::io::Result<AuditLog> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)?;
        let (sender, receiver) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::new(file);
                loop {
                    match receiver.recv_timeout(Duration::from_millis(200)) {
                        Ok(line) => {
                            if let Err(err) = writeln!(out, "{line}") {
                                tracing::error!("audit log write failed: {err}");
                            }
                        }
                        Err(RecvTimeoutError::Timeout) => {
                            let _ = out.flush();
                        }
                        Err(RecvTimeoutError::Disconnected) => {
                            let _ = out.flush();
                            return;
                        }
                    }
                }
            })?;
        Ok(AuditLog {
            sender,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queues one event.
    pub fn record(&self, record: AuditRecord) {
        let now = chrono::Utc::now();
        let mut event = json!({
            "kind": "Event",
            "apiVersion": "audit.k8s.io/v1",
            "level": "Metadata",
            "auditID": uuid::Uuid::new_v4().to_string(),
            "stage": "ResponseComplete",
            "requestURI": record.request_uri,
            "verb": record.verb,
            "user": match &record.user {
                Some(user) => json!({"username": user.name, "groups": user.groups}),
                None => json!({"username": "system:anonymous", "groups": ["system:unauthenticated"]}),
            },
            "responseStatus": {"metadata": {}, "code": record.code},
            "requestReceivedTimestamp": record.received.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
            "stageTimestamp": now.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        });
        if let Some(ip) = record.source_ip {
            event["sourceIPs"] = json!([ip]);
        }
        if let Some(agent) = record.user_agent {
            event["userAgent"] = json!(agent);
        }
        if let Some(object) = record.object_ref {
            event["objectRef"] = object;
        }
        match self.sender.try_send(event.to_string()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if dropped.is_power_of_two() {
                    tracing::warn!(dropped, "audit log is behind; events dropped");
                }
            }
        }
    }

    /// Events dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
