//! `capstan-net-iptables`: the `ProxyBackend` that programs iptables (nat) atomically.
//!
//! Not built yet: the `ProxyBackend` trait and this backend arrive with the services and
//! networking issue (G). The crate exists so the workspace layout is fixed from the start; it
//! exports nothing.
