//! Mapping of etcd-client errors onto [`StoreError`], by gRPC code and etcd's error texts.

use capstan_core::store::{LeaseId, StoreError};
use etcd_client::Error;
use tonic::Code;

/// Classifies an etcd-client error.
pub(crate) fn map_error(err: Error) -> StoreError {
    match err {
        Error::GRpcStatus(status) => {
            let message = status.message();
            if message.contains("required revision has been compacted") {
                StoreError::Compacted {
                    requested: 0,
                    compacted: 0,
                }
            } else if message.contains("future revision") {
                StoreError::FutureRevision {
                    requested: 0,
                    current: 0,
                }
            } else if message.contains("lease not found") {
                StoreError::LeaseNotFound(LeaseId(0))
            } else if message.contains("request is too large") {
                StoreError::ValueTooLarge {
                    key: String::new(),
                    size: 0,
                    limit: capstan_core::store::MAX_VALUE_BYTES,
                }
            } else {
                match status.code() {
                    Code::Unavailable
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::ResourceExhausted
                    | Code::Unknown => StoreError::Unavailable(Box::new(Error::GRpcStatus(status))),
                    _ => StoreError::backend(Error::GRpcStatus(status)),
                }
            }
        }
        Error::LeaseKeepAliveError(message) if message.contains("lease not found") => {
            StoreError::LeaseNotFound(LeaseId(0))
        }
        Error::TransportError(_)
        | Error::IoError(_)
        | Error::WatchError(_)
        | Error::LeaseKeepAliveError(_) => StoreError::Unavailable(Box::new(err)),
        other => StoreError::backend(other),
    }
}
