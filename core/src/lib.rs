//! Capstan core: the object model, the resource registry, selectors and quantities, the
//! [`store::Store`] trait with its in-process backends, and typed object storage.
//!
//! Backends with heavy dependencies live in their own crates (`capstan-store-etcd`,
//! `capstan-runtime-docker`, `capstan-net-iptables`); this crate builds and tests with no
//! Docker, no etcd, no protoc and no root.

pub mod apiserver;
pub mod authn;
pub mod authz;
pub mod cidr;
pub mod controller;
pub mod dns;
pub mod node;
pub mod patch;
pub mod pki;
pub mod pod_network;
pub mod proxy;
pub mod quantity;
pub mod registry;
pub mod runtime;
pub mod scheduler;
pub mod selector;
mod service_addresses;
#[cfg(feature = "testkit")]
pub mod service_gate;
pub mod storage;
pub mod store;
pub mod taints;
pub mod validation;
