//! Integration tests of capstan-core: the store conformance kit against the in-process
//! backends. One test binary for the crate keeps link time down.

mod api_extensions;
mod apiserver;
mod controllers;
mod dns;
mod node_agent;
mod proxy;
mod registry_storage;
mod scheduler;
mod security;
mod store_embedded;
mod store_memory;
mod workloads;
