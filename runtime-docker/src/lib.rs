//! `capstan-runtime-docker`: the `ContainerRuntime` backend on the Docker Engine API (bollard).
//!
//! Not built yet: the `ContainerRuntime` trait and this backend arrive with the node-agent issue
//! (E). The crate exists so the workspace layout is fixed from the start; it exports nothing.
