//! `capstan-benches`: macro harnesses named `<area>-perf`, each printing one JSON object per
//! line — `{"bench", "case", "metric", "value", "unit", "baseline", "ratio"}` — with every
//! figure beside a baseline measured in the same run where one applies.
//!
//! Each harness is a module here (`scheduler_perf` for `scheduler-perf`, …) with a `main`; the
//! binaries only install the allocator and call it, so the code the harnesses share — the
//! figure format, bounded-concurrency request runs, the local etcd they can start for
//! baselines, and the instances of the generic library code they use — is compiled once.

pub mod api_perf;
mod concurrently;
pub mod controller_perf;
mod cpu_time;
mod etcd_endpoints;
mod figure;
pub mod podstart_perf;
pub mod proxy_perf;
mod resident;
pub mod scale_perf;
pub mod scheduler_perf;
pub mod store_perf;

pub use concurrently::concurrently;
pub use cpu_time::cpu_seconds;
pub use etcd_endpoints::etcd_endpoints;
pub use figure::{Bench, Figure, Mode};
pub use resident::resident_mib;
