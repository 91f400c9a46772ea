//! `capstan-examples`: the reference orchestrator built from Capstan and short example programs.
//!
//! The reference binary `capstan` arrives with the API server (issue B1). Until then the
//! examples show the storage layer on its own: `cargo run -p capstan-examples --example
//! object_storage` keeps Kubernetes objects in the embedded durable store.
