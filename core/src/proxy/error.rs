//! Errors of proxy backends.

/// Why a proxy backend could not program its data path.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// A system command (iptables-restore, ip) failed. Retryable: the next sync tries again.
    #[error("{command} failed: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status and error output.
        detail: String,
    },
    /// A socket could not be bound or used. Retryable.
    #[error("{address}: {source}")]
    Socket {
        /// The address.
        address: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The host is set up in a way this backend refuses to work with (e.g. rules of the other
    /// iptables variant). Fatal until an operator fixes the host.
    #[error("unsupported host setup: {0}")]
    Unsupported(String),
}
