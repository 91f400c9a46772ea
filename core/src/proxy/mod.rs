//! The service proxy: what kube-proxy does. [`ServiceProxy`] watches Services and
//! EndpointSlices, builds the node's desired [`ServiceTable`] and hands it to a
//! [`ProxyBackend`], which makes the data path carry exactly that table. Backends: the
//! [`UserspaceProxy`] here (tokio forwarders, no root) and iptables in `capstan-net-iptables`.
//! The conformance kit every backend runs is [`testkit`] (feature `testkit`).

mod error;
mod health;
mod runner;
mod service_table;
#[cfg(feature = "testkit")]
pub mod testkit;
mod userspace;

pub use error::ProxyError;
pub use health::ProxyHealth;
pub use runner::{ProxyConfig, RunningProxy, ServiceProxy};
pub use service_table::{Protocol, ServiceEntry, ServicePortName, ServiceTable};
pub use userspace::{UserspaceConfig, UserspaceProxy};

use async_trait::async_trait;

/// A service data path a node can program.
///
/// The contract:
/// - [`sync`](Self::sync) is full, idempotent and level-triggered: after it returns `Ok`,
///   connections to every entry's cluster IPs and NodePort reach one of its endpoints (chosen
///   with equal probability, or sticking to the client's previous endpoint under ClientIP
///   affinity), connections to an entry without endpoints are refused promptly, and nothing
///   of an entry absent from the table remains. Calling it twice with one table changes
///   nothing. A failed sync may have applied part of the table; the next sync repairs it.
/// - [`cleanup`](Self::cleanup) removes everything this backend created, and nothing else.
/// - Neither panics on any table.
#[async_trait]
pub trait ProxyBackend: Send + Sync {
    /// Makes the data path carry exactly `table`.
    async fn sync(&self, table: &ServiceTable) -> Result<(), ProxyError>;

    /// Removes everything this backend created.
    async fn cleanup(&self) -> Result<(), ProxyError>;
}
