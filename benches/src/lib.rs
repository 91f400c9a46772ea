//! `capstan-benches`: macro harnesses named `<area>-perf`, each printing one JSON object per
//! line — `{"bench", "case", "metric", "value", "unit", "baseline", "ratio"}` — with every
//! figure beside a baseline measured in the same run where one applies. This library holds what
//! the harnesses share: the figure format, bounded-concurrency request runs and the local etcd they can start for baselines.

mod concurrently;
mod etcd_endpoints;
mod figure;
mod resident;

pub use concurrently::concurrently;
pub use etcd_endpoints::etcd_endpoints;
pub use figure::{Bench, Figure, Mode};
pub use resident::resident_mib;
