//! Leader election on a `coordination.k8s.io/v1` Lease through the API (so it works on every
//! store): candidates take the lease when it is free or its holder stopped renewing for a lease
//! duration; the leader renews every retry period and stops its work when it could not renew
//! within the renew deadline. Expiry is judged by when this candidate last *saw* the lease
//! change, not by the holder's clock.

use super::error::{is_conflict, is_not_found};
use super::ControllerError;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};
use kube::Client;
use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Settings of a [`LeaderElector`].
#[derive(Debug, Clone)]
pub struct LeaderElectionConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This candidate's identity (unique among candidates).
    pub identity: String,
    /// How long a lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before giving up its work.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_period: Duration,
}

impl LeaderElectionConfig {
    /// Kubernetes' defaults (15 s lease, 10 s renew deadline, 2 s retry) for `namespace/name`.
    pub fn new(namespace: &str, name: &str, identity: &str) -> Self {
        LeaderElectionConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

struct Observed {
    record: (Option<String>, Option<String>),
    at: Instant,
}

/// Campaigns for a Lease and runs work while holding it.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaderElectionConfig,
    observed: Mutex<Option<Observed>>,
}

fn now() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

impl LeaderElector {
    /// An elector using `client`.
    pub fn new(client: Client, config: LeaderElectionConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
            observed: Mutex::new(None),
        }
    }

    /// Tries once to take or renew the lease; `Ok(true)` when this candidate holds it.
    pub async fn try_acquire_or_renew(&self) -> Result<bool, ControllerError> {
        let me = self.config.identity.clone();
        let duration = self.config.lease_duration.as_secs().max(1) as i32;
        let current = match self.api.get(&self.config.name).await {
            Ok(lease) => lease,
            Err(err) if is_not_found(&err) => {
                let lease: Lease = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                    "spec": {
                        "holderIdentity": me, "leaseDurationSeconds": duration,
                        "acquireTime": now(), "renewTime": now(), "leaseTransitions": 0,
                    },
                }))?;
                return match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(err) if is_conflict(&err) => Ok(false),
                    Err(err) => Err(err.into()),
                };
            }
            Err(err) => return Err(err.into()),
        };
        let spec = current.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let record = (
            holder.clone(),
            spec.renew_time.as_ref().map(|t| t.0.to_string()),
        );
        let expired = {
            let mut observed = self.observed.lock().unwrap_or_else(|p| p.into_inner());
            let fresh = observed.as_ref().is_none_or(|o| o.record != record);
            if fresh {
                *observed = Some(Observed {
                    record,
                    at: Instant::now(),
                });
            }
            let lease_for =
                Duration::from_secs(spec.lease_duration_seconds.unwrap_or(duration).max(1) as u64);
            observed
                .as_ref()
                .is_some_and(|o| o.at + lease_for <= Instant::now())
        };
        let mine = holder.as_deref() == Some(me.as_str());
        if !mine && holder.is_some() && !expired {
            return Ok(false);
        }
        let mut lease = current;
        let spec = lease.spec.get_or_insert_with(Default::default);
        if !mine {
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(me);
        spec.lease_duration_seconds = Some(duration);
        spec.renew_time = Some(now());
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if is_conflict(&err) => Ok(false),
            Err(err) => Err(err.into()),
        }
    }

    /// Gives the lease up (if held) so another candidate takes over at once.
    pub async fn release(&self) {
        let Ok(mut lease) = self.api.get(&self.config.name).await else {
            return;
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(now());
        let _ = self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await;
    }

    /// Campaigns until `stop` is cancelled. While leading, runs `lead` with a token that is
    /// cancelled when leadership is lost (or on stop); the work is awaited before campaigning
    /// again, so two terms of this candidate never overlap. Releases the lease on stop.
    pub async fn run<F, Fut>(&self, stop: CancellationToken, lead: F)
    where
        F: Fn(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let retry = self.config.retry_period;
        loop {
            // Campaign.
            loop {
                match self.try_acquire_or_renew().await {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(err) => tracing::debug!(error = %err, "leader election attempt failed"),
                }
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(jittered(retry)) => {}
                }
            }
            tracing::info!(lease = %self.config.name, identity = %self.config.identity, "became leader");
            let term = stop.child_token();
            let mut work = tokio::spawn(lead(term.clone()));
            let mut renewed = Instant::now();
            let (stopping, finished) = loop {
                tokio::select! {
                    _ = stop.cancelled() => break (true, false),
                    _ = &mut work => break (false, true),
                    _ = tokio::time::sleep(retry) => {}
                }
                match self.try_acquire_or_renew().await {
                    Ok(true) => renewed = Instant::now(),
                    Ok(false) => break (false, false),
                    Err(err) => {
                        tracing::debug!(error = %err, "lease renewal failed");
                        if renewed.elapsed() >= self.config.renew_deadline {
                            break (false, false);
                        }
                    }
                }
            };
            term.cancel();
            if !finished {
                let _ = work.await;
            }
            tracing::info!(lease = %self.config.name, identity = %self.config.identity, "stopped leading");
            if stopping || stop.is_cancelled() {
                self.release().await;
                return;
            }
        }
    }
}

/// `period` plus up to 20% random jitter, so candidates do not retry in lockstep.
fn jittered(period: Duration) -> Duration {
    let random = uuid::Uuid::new_v4().as_u128() as u64 % 1000;
    period + period.mul_f64(0.2 * random as f64 / 1000.0)
}
