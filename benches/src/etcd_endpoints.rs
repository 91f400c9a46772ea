//! Where the harnesses find etcd: `CAPSTAN_ETCD_ENDPOINTS`, or a local etcd they start.

use capstan_store_etcd::testkit::LocalEtcd;

/// etcd endpoints: `CAPSTAN_ETCD_ENDPOINTS` if set, else a [`LocalEtcd`] started here (kept
/// alive by the returned guard), else `None` with the reason printed to stderr.
pub async fn etcd_endpoints() -> Option<(Vec<String>, Option<LocalEtcd>)> {
    if let Ok(value) = std::env::var("CAPSTAN_ETCD_ENDPOINTS") {
        if !value.trim().is_empty() {
            return Some((
                value.split(',').map(|s| s.trim().to_string()).collect(),
                None,
            ));
        }
    }
    match LocalEtcd::start(23790).await {
        Ok(etcd) => Some((vec![etcd.endpoint()], Some(etcd))),
        Err(err) => {
            eprintln!("etcd unavailable ({err}); etcd figures and baselines are skipped");
            None
        }
    }
}
