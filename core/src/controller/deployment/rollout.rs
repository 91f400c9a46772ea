//! The arithmetic of a rolling update, as pure functions over replica counts (Kubernetes'
//! rules): how far the new ReplicaSet may scale up within `maxSurge`, and how far the old ones
//! may scale down within `maxUnavailable` — unhealthy old pods first, then healthy ones, oldest
//! ReplicaSet first.

use k8s_openapi::api::apps::v1::DeploymentStrategy;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

/// Replica counts of one ReplicaSet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    /// `spec.replicas`.
    pub replicas: i32,
    /// `status.availableReplicas`.
    pub available: i32,
}

/// A count or a percentage of `total` (rounded up or down); absent means 25%.
pub(crate) fn resolve(value: Option<&IntOrString>, total: i32, round_up: bool) -> i32 {
    match value {
        None => resolve(Some(&IntOrString::String("25%".into())), total, round_up),
        Some(IntOrString::Int(n)) => (*n).max(0),
        Some(IntOrString::String(s)) => {
            let percent: f64 = s.trim_end_matches('%').parse().unwrap_or(25.0);
            let exact = total as f64 * percent / 100.0;
            let rounded = if round_up {
                exact.ceil()
            } else {
                exact.floor()
            };
            rounded.max(0.0) as i32
        }
    }
}

/// `(maxSurge, maxUnavailable)` as pod counts for `desired` replicas: surge rounds up,
/// unavailability rounds down, and both zero means one may be unavailable.
pub fn surge_and_unavailable(strategy: Option<&DeploymentStrategy>, desired: i32) -> (i32, i32) {
    let rolling = strategy.and_then(|s| s.rolling_update.as_ref());
    let surge = resolve(rolling.and_then(|r| r.max_surge.as_ref()), desired, true);
    let unavailable = resolve(
        rolling.and_then(|r| r.max_unavailable.as_ref()),
        desired,
        false,
    );
    if surge == 0 && unavailable == 0 {
        (0, 1)
    } else {
        (surge, unavailable.min(desired))
    }
}

/// The replicas the new ReplicaSet should have: up to `desired`, keeping every ReplicaSet's
/// total within `desired + surge`.
pub fn new_replicas(desired: i32, surge: i32, new: i32, old_total: i32) -> i32 {
    if new >= desired {
        return desired;
    }
    let max_total = desired + surge;
    let current = new + old_total;
    if current >= max_total {
        return new;
    }
    (new + (max_total - current)).min(desired)
}

/// The replicas each old ReplicaSet (oldest first) should have so that at least
/// `desired - unavailable` pods stay available.
pub fn scale_down_old(desired: i32, unavailable: i32, new: Counts, old: &[Counts]) -> Vec<i32> {
    let mut targets: Vec<i32> = old.iter().map(|c| c.replicas).collect();
    let old_total: i32 = targets.iter().sum();
    if old_total == 0 {
        return targets;
    }
    let all_total = old_total + new.replicas;
    let min_available = desired - unavailable;
    let new_unavailable = (new.replicas - new.available).max(0);
    let max_scaled_down = all_total - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return targets;
    }
    // Unhealthy pods first: they do not count toward availability anyway.
    let mut cleaned = 0;
    for (target, counts) in targets.iter_mut().zip(old) {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = (*target - counts.available).max(0);
        let scaled = unhealthy.min(max_scaled_down - cleaned);
        *target -= scaled;
        cleaned += scaled;
    }
    // Then healthy pods, as far as availability allows.
    let available: i32 = new.available
        + targets
            .iter()
            .zip(old)
            .map(|(t, c)| c.available.min(*t))
            .sum::<i32>();
    if available <= min_available {
        return targets;
    }
    let budget = (available - min_available).min(max_scaled_down - cleaned);
    let mut scaled_down = 0;
    for target in targets.iter_mut() {
        if scaled_down >= budget {
            break;
        }
        let step = (*target).min(budget - scaled_down);
        *target -= step;
        scaled_down += step;
    }
    targets
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::RollingUpdateDeployment;
    use proptest::prelude::*;

    fn strategy(surge: IntOrString, unavailable: IntOrString) -> DeploymentStrategy {
        DeploymentStrategy {
            type_: Some("RollingUpdate".into()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(surge),
                max_unavailable: Some(unavailable),
            }),
        }
    }

    #[test]
    fn percentages_round_surge_up_and_unavailability_down() {
        let s = strategy(
            IntOrString::String("25%".into()),
            IntOrString::String("25%".into()),
        );
        assert_eq!(surge_and_unavailable(Some(&s), 10), (3, 2));
        let none = strategy(IntOrString::Int(0), IntOrString::Int(0));
        assert_eq!(surge_and_unavailable(Some(&none), 3), (0, 1));
        assert_eq!(surge_and_unavailable(None, 4), (1, 1));
    }

    #[test]
    fn the_new_replica_set_grows_within_the_surge() {
        assert_eq!(new_replicas(3, 1, 0, 3), 1);
        assert_eq!(new_replicas(3, 1, 1, 3), 1);
        assert_eq!(new_replicas(3, 1, 1, 2), 2);
        assert_eq!(new_replicas(3, 1, 5, 0), 3);
    }

    #[test]
    fn old_replica_sets_shrink_unhealthy_first_then_within_availability() {
        let new = Counts {
            replicas: 1,
            available: 0,
        };
        // 3 desired, 1 unavailable allowed: one old pod may go while the new one starts.
        assert_eq!(
            scale_down_old(
                3,
                1,
                new,
                &[Counts {
                    replicas: 3,
                    available: 3
                }]
            ),
            [2]
        );
        // An old ReplicaSet whose pods are not available is scaled down first.
        let old = [
            Counts {
                replicas: 2,
                available: 0,
            },
            Counts {
                replicas: 3,
                available: 3,
            },
        ];
        assert_eq!(
            scale_down_old(
                3,
                0,
                Counts {
                    replicas: 0,
                    available: 0
                },
                &old
            ),
            [0, 3]
        );
    }

    proptest! {
        /// Whatever the counts, scaling down never goes below zero, never raises a count, and
        /// never leaves fewer available pods than desired - maxUnavailable when there were
        /// at least that many.
        #[test]
        fn scale_down_keeps_minimum_availability(
            desired in 0i32..20, unavailable in 0i32..5,
            new_r in 0i32..20, new_a in 0i32..20,
            olds in proptest::collection::vec((0i32..20, 0i32..20), 0..4),
        ) {
            let new = Counts { replicas: new_r, available: new_a.min(new_r) };
            let old: Vec<Counts> = olds.iter().map(|&(r, a)| Counts { replicas: r, available: a.min(r) }).collect();
            let targets = scale_down_old(desired, unavailable, new, &old);
            let before: i32 = new.available + old.iter().map(|c| c.available).sum::<i32>();
            let after: i32 = new.available + targets.iter().zip(&old).map(|(t, c)| c.available.min(*t)).sum::<i32>();
            for (t, c) in targets.iter().zip(&old) {
                prop_assert!(*t >= 0 && *t <= c.replicas);
            }
            let floor = (desired - unavailable).min(before);
            prop_assert!(after >= floor, "available {after} < {floor}");
        }
    }
}
