//! The order of a resize: which of the ConfigMap (per-pod pool sizes) and the Deployment's
//! replicas may change now without the pods together exceeding the budget.
//!
//! Running pods keep their old pool sizes until the kubelet has refreshed the mounted
//! ConfigMap and the pooler has reloaded it, which takes a while. So:
//! - more replicas are added only once the ConfigMap has been left alone for the settle
//!   time (if the per-pod size shrinks, that is the new size reaching the old pods first);
//! - a larger per-pod size is written only once no more pods exist than the new budget
//!   divides by (on a scale-down, the surplus pods go first).

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// What exists now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Live {
    /// The Deployment's replicas; `None` when there is no Deployment yet.
    pub replicas: Option<i32>,
    /// The per-pod size (`max_db_connections`) in the ConfigMap; `None` when there is no
    /// ConfigMap or it cannot be read.
    pub per_pod: Option<u32>,
    /// When this operator last changed the ConfigMap.
    pub config_changed_at: Option<Timestamp>,
    /// Pooler pods that exist, terminating ones included (only consulted when the per-pod
    /// size grows).
    pub pods: u32,
}

/// What the rendering asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Desired {
    /// `spec.replicas`.
    pub replicas: i32,
    /// The new per-pod size.
    pub per_pod: u32,
    /// The most pods the new budget is divided by.
    pub pods_max: u32,
}

/// Why part of a change is held back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// Replicas stay until running pods have had time to reload the ConfigMap.
    Settling {
        /// Time left.
        remaining: Duration,
        /// Replicas kept for now.
        replicas: i32,
    },
    /// The larger pool sizes wait until the surplus pods are gone.
    PodsStopping {
        /// Pods that exist.
        pods: u32,
        /// Pods the new sizes allow.
        pods_max: u32,
    },
}

impl Hold {
    /// When to look again.
    pub fn recheck_after(&self) -> Duration {
        match self {
            Hold::Settling { remaining, .. } => (*remaining).max(Duration::from_secs(1)),
            Hold::PodsStopping { .. } => Duration::from_secs(3),
        }
    }

    /// A sentence for the Progressing condition.
    pub fn message(&self, desired: &Desired) -> String {
        match self {
            Hold::Settling {
                remaining,
                replicas,
            } => format!(
                "keeping {replicas} replicas for {}s more so that running pods reload the new \
                 pool sizes before pods are added (then {})",
                remaining.as_secs().max(1),
                desired.replicas
            ),
            Hold::PodsStopping { pods, pods_max } => format!(
                "{pods} pods exist, more than the {pods_max} the new budget is divided by; \
                 pools grow to {} per pod once the surplus pods have stopped",
                desired.per_pod
            ),
        }
    }
}

/// What to apply now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan {
    /// Whether to write the new ConfigMap.
    pub apply_config: bool,
    /// The replicas to put on the Deployment.
    pub replicas: i32,
    /// What is held back, if anything.
    pub hold: Option<Hold>,
}

/// Decides the next step from `live` towards `desired`.
pub fn plan(live: &Live, desired: &Desired, now: Timestamp, settle: Duration) -> Plan {
    let Some(live_replicas) = live.replicas else {
        // Nothing runs yet: everything at once, configuration first.
        return Plan {
            apply_config: true,
            replicas: desired.replicas,
            hold: None,
        };
    };
    let grows = live.per_pod.is_some_and(|p| desired.per_pod > p);
    let shrinks = live.per_pod.is_some_and(|p| desired.per_pod < p);
    let mut hold = None;

    let apply_config = !(grows && live.pods > desired.pods_max);
    if !apply_config {
        hold = Some(Hold::PodsStopping {
            pods: live.pods,
            pods_max: desired.pods_max,
        });
    }

    let mut replicas = desired.replicas;
    if desired.replicas > live_replicas {
        let remaining = if shrinks && apply_config {
            // The ConfigMap changes in this very step.
            Some(settle)
        } else {
            live.config_changed_at.and_then(|changed| {
                // A change stamped in the future (clock skew) counts as just made.
                let elapsed = Duration::try_from(now.duration_since(changed)).unwrap_or_default();
                settle.checked_sub(elapsed).filter(|r| !r.is_zero())
            })
        };
        if let Some(remaining) = remaining {
            replicas = live_replicas;
            hold = hold.or(Some(Hold::Settling {
                remaining,
                replicas: live_replicas,
            }));
        }
    }
    Plan {
        apply_config,
        replicas,
        hold,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SETTLE: Duration = Duration::from_secs(60);

    fn now() -> Timestamp {
        Timestamp::from_second(1_000_000).expect("valid")
    }

    fn ago(seconds: i64) -> Option<Timestamp> {
        Some(Timestamp::from_second(1_000_000 - seconds).expect("valid"))
    }

    fn live(replicas: i32, per_pod: u32, changed: Option<Timestamp>, pods: u32) -> Live {
        Live {
            replicas: Some(replicas),
            per_pod: Some(per_pod),
            config_changed_at: changed,
            pods,
        }
    }

    fn desired(replicas: i32, per_pod: u32, pods_max: u32) -> Desired {
        Desired {
            replicas,
            per_pod,
            pods_max,
        }
    }

    #[test]
    fn a_new_pool_gets_everything_at_once() {
        let fresh = Live {
            replicas: None,
            per_pod: None,
            config_changed_at: None,
            pods: 0,
        };
        let p = plan(&fresh, &desired(3, 20, 4), now(), SETTLE);
        assert_eq!(
            p,
            Plan {
                apply_config: true,
                replicas: 3,
                hold: None
            }
        );
    }

    #[test]
    fn scale_up_with_smaller_pools_writes_config_first_and_waits() {
        // 2 -> 5 replicas: per pod 27 -> 13.
        let d = desired(5, 13, 6);
        let p = plan(&live(2, 27, ago(3600), 3), &d, now(), SETTLE);
        assert!(p.apply_config);
        assert_eq!(p.replicas, 2);
        assert_eq!(
            p.hold,
            Some(Hold::Settling {
                remaining: SETTLE,
                replicas: 2
            })
        );
        assert!(p.hold.is_some_and(|h| h.message(&d).contains("then 5")));

        // Next look: the ConfigMap holds 13 since 20 s.
        let p = plan(&live(2, 13, ago(20), 2), &d, now(), SETTLE);
        assert_eq!(p.replicas, 2);
        assert_eq!(
            p.hold.map(|h| h.recheck_after()),
            Some(Duration::from_secs(40))
        );

        // Settled: add the pods.
        let p = plan(&live(2, 13, ago(61), 2), &d, now(), SETTLE);
        assert_eq!((p.apply_config, p.replicas, p.hold), (true, 5, None));
    }

    #[test]
    fn scale_down_with_larger_pools_removes_pods_first() {
        // 5 -> 2 replicas: per pod 13 -> 27.
        let d = desired(2, 27, 3);
        let p = plan(&live(5, 13, ago(3600), 6), &d, now(), SETTLE);
        assert!(!p.apply_config);
        assert_eq!(p.replicas, 2);
        assert_eq!(
            p.hold,
            Some(Hold::PodsStopping {
                pods: 6,
                pods_max: 3
            })
        );
        // The surplus pods are gone: grow the pools.
        let p = plan(&live(2, 13, ago(3600), 2), &d, now(), SETTLE);
        assert_eq!((p.apply_config, p.replicas, p.hold), (true, 2, None));
    }

    #[test]
    fn changes_that_cannot_overshoot_go_through_at_once() {
        // Smaller pools, fewer or the same pods.
        let p = plan(&live(4, 20, ago(5), 4), &desired(3, 10, 4), now(), SETTLE);
        assert_eq!((p.apply_config, p.replicas, p.hold), (true, 3, None));
        // Larger pools and more pods because the budget grew, config settled long ago.
        let p = plan(
            &live(2, 10, ago(3600), 2),
            &desired(3, 20, 4),
            now(),
            SETTLE,
        );
        assert_eq!((p.apply_config, p.replicas, p.hold), (true, 3, None));
        // Same sizes, more pods, autoscaler style.
        let p = plan(
            &live(2, 10, ago(3600), 2),
            &desired(6, 10, 7),
            now(),
            SETTLE,
        );
        assert_eq!((p.apply_config, p.replicas, p.hold), (true, 6, None));
    }

    #[test]
    fn a_recent_config_change_holds_new_pods() {
        let p = plan(&live(2, 10, ago(10), 2), &desired(3, 10, 4), now(), SETTLE);
        assert_eq!(p.replicas, 2);
        assert!(matches!(p.hold, Some(Hold::Settling { .. })));
    }

    #[test]
    fn an_unreadable_config_is_simply_replaced() {
        let l = Live {
            replicas: Some(2),
            per_pod: None,
            config_changed_at: None,
            pods: 9,
        };
        let p = plan(&l, &desired(4, 10, 5), now(), SETTLE);
        assert_eq!((p.apply_config, p.replicas, p.hold), (true, 4, None));
    }
}
