//! `capstan-benches`: macro harnesses named `<area>-perf`, each printing one JSON object per
//! line — `{"bench", "case", "metric", "value", "unit", "baseline", "ratio"}` — with every
//! figure beside a baseline measured in the same run where one applies. This library holds what
//! the harnesses share: the figure format and the local etcd they can start for baselines.

mod etcd_endpoints;
mod figure;

pub use etcd_endpoints::etcd_endpoints;
pub use figure::{Figure, Mode};
