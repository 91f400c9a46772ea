//! Prometheus metrics of the API server, served at `/metrics` in the text exposition format:
//! requests by method and status code, requests in flight, open watches, and the store revision.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters and gauges of one API server.
#[derive(Default)]
pub(crate) struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    watches: Arc<AtomicI64>,
}

/// Counts one open watch for as long as it lives.
pub(crate) struct OpenWatch(Arc<AtomicI64>);

impl Drop for OpenWatch {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Metrics {
    /// Records a finished request.
    pub(crate) fn record(&self, method: &str, code: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|p| p.into_inner());
        *requests.entry((method.to_string(), code)).or_default() += 1;
    }

    /// Registers an open watch; dropping the guard closes it.
    pub(crate) fn open_watch(&self) -> OpenWatch {
        self.watches.fetch_add(1, Ordering::Relaxed);
        OpenWatch(self.watches.clone())
    }

    /// The exposition text.
    pub(crate) fn render(&self, in_flight: usize, revision: Option<i64>) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP capstan_apiserver_requests_total Requests served, by method and status code.\n",
        );
        out.push_str("# TYPE capstan_apiserver_requests_total counter\n");
        for ((method, code), count) in self
            .requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            let _ = writeln!(
                out,
                "capstan_apiserver_requests_total{{method=\"{method}\",code=\"{code}\"}} {count}"
            );
        }
        out.push_str("# HELP capstan_apiserver_requests_in_flight Requests being served (watches excluded).\n");
        out.push_str("# TYPE capstan_apiserver_requests_in_flight gauge\n");
        let _ = writeln!(out, "capstan_apiserver_requests_in_flight {in_flight}");
        out.push_str("# HELP capstan_apiserver_watches Open watches.\n# TYPE capstan_apiserver_watches gauge\n");
        let _ = writeln!(
            out,
            "capstan_apiserver_watches {}",
            self.watches.load(Ordering::Relaxed)
        );
        if let Some(revision) = revision {
            out.push_str("# HELP capstan_store_revision The store's current revision.\n# TYPE capstan_store_revision gauge\n");
            let _ = writeln!(out, "capstan_store_revision {revision}");
        }
        out
    }
}
