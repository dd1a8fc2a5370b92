//! The order of a resize: which of the ConfigMap (per-pod pool sizes) and the Deployment's
//! replicas may change now without the pods together exceeding the budget.
//!
//! Running pods keep their old pool sizes until the kubelet has refreshed the mounted
//! ConfigMap and the pooler has reloaded it, which takes a while. So:
//! - more replicas are added only once every running pod reports (in its `/status`) the
//!   digest of the ConfigMap this step leaves in place, and the ConfigMap has been left
//!   alone for the settle time besides (if the per-pod size shrinks, that is the new size
//!   reaching the old pods first); a pod whose status cannot be read holds them too;
//! - a larger per-pod size is written only once no more pods exist than the new budget
//!   divides by (on a scale-down, the surplus pods go first).

use std::time::Duration;

use crate::controller::conditions::reason;

use k8s_openapi::jiff::Timestamp;

/// Whether the running pods run the ConfigMap this step leaves in place, by the digest
/// their `/status` reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PodsConfig {
    /// Every running pod runs it.
    Current,
    /// These pods run an older configuration.
    Behind(Vec<String>),
    /// These pods' status cannot be read (with why).
    Unreadable(Vec<String>),
}

/// What exists now.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// What the running pods report; `None` when the operator does not read their status
    /// (then only the settle time stands between a smaller ConfigMap and new pods).
    pub pods_config: Option<PodsConfig>,
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
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Replicas stay until every running pod reports the ConfigMap in place.
    PodsBehind {
        /// The pods still on an older configuration.
        pods: Vec<String>,
        /// Replicas kept for now.
        replicas: i32,
    },
    /// Replicas stay because some pods' status cannot be read.
    StatusUnavailable {
        /// The pods, with why (or why no pod is known).
        pods: Vec<String>,
        /// Replicas kept for now.
        replicas: i32,
    },
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
            Hold::PodsBehind { .. } => Duration::from_secs(2),
            Hold::PodsStopping { .. } | Hold::StatusUnavailable { .. } => Duration::from_secs(3),
        }
    }

    /// The Progressing condition's reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Hold::StatusUnavailable { .. } => reason::POD_STATUS_UNAVAILABLE,
            _ => reason::RESIZING,
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
            Hold::PodsBehind { pods, replicas } => format!(
                "keeping {replicas} replicas until every running pod runs the new pool sizes \
                 (still on an older configuration: {}), then {}",
                pods.join(", "),
                desired.replicas
            ),
            Hold::StatusUnavailable { pods, replicas } => format!(
                "keeping {replicas} replicas until every running pod is known to run the new \
                 pool sizes (then {}); /status unavailable: {}",
                desired.replicas,
                pods.join(", ")
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
#[derive(Debug, Clone, PartialEq, Eq)]
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
        let reported = match &live.pods_config {
            Some(PodsConfig::Behind(pods)) => Some(Hold::PodsBehind {
                pods: pods.clone(),
                replicas: live_replicas,
            }),
            Some(PodsConfig::Unreadable(pods)) => Some(Hold::StatusUnavailable {
                pods: pods.clone(),
                replicas: live_replicas,
            }),
            Some(PodsConfig::Current) | None => None,
        };
        if let Some(held) = reported {
            return Plan {
                apply_config,
                replicas: live_replicas,
                hold: hold.or(Some(held)),
            };
        }
        // The settle time stays as a minimum after the pods have reported.
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
            pods_config: None,
        }
    }

    fn reporting(replicas: i32, per_pod: u32, pods_config: PodsConfig) -> Live {
        Live {
            pods_config: Some(pods_config),
            ..live(replicas, per_pod, ago(3600), replicas.unsigned_abs())
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
            pods_config: None,
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
        assert!(p
            .hold
            .as_ref()
            .is_some_and(|h| h.message(&d).contains("then 5")));

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
    fn scale_up_waits_for_every_pod_to_report_the_smaller_pools() {
        // 2 -> 5 replicas, per pod 27 -> 13: the ConfigMap is written in this step, so the
        // pods cannot run it yet.
        let d = desired(5, 13, 6);
        let behind = PodsConfig::Behind(vec!["a".into(), "b".into()]);
        let p = plan(&reporting(2, 27, behind.clone()), &d, now(), SETTLE);
        assert!(p.apply_config);
        assert_eq!(p.replicas, 2);
        let hold = p.hold.expect("held");
        assert_eq!(hold.reason(), reason::RESIZING);
        assert!(hold.message(&d).contains("older configuration: a, b"));
        assert!(hold.message(&d).contains("then 5"));

        // Written long ago, but one pod still runs the old file: the timer alone no longer
        // lets pods in.
        let p = plan(&reporting(2, 13, behind), &d, now(), SETTLE);
        assert_eq!(p.replicas, 2);
        assert!(matches!(p.hold, Some(Hold::PodsBehind { .. })));

        // Every pod reports it: add the pods.
        let p = plan(&reporting(2, 13, PodsConfig::Current), &d, now(), SETTLE);
        assert_eq!((p.apply_config, p.replicas, p.hold), (true, 5, None));
    }

    #[test]
    fn the_settle_time_stays_a_minimum_once_pods_report() {
        let l = Live {
            config_changed_at: ago(10),
            ..reporting(2, 13, PodsConfig::Current)
        };
        let p = plan(&l, &desired(5, 13, 6), now(), SETTLE);
        assert_eq!(p.replicas, 2);
        assert!(matches!(p.hold, Some(Hold::Settling { .. })));
    }

    #[test]
    fn unreadable_pods_hold_new_pods_and_say_why() {
        let d = desired(5, 13, 6);
        let unreadable = PodsConfig::Unreadable(vec!["a: timed out".into()]);
        let p = plan(&reporting(2, 13, unreadable.clone()), &d, now(), SETTLE);
        assert_eq!(p.replicas, 2);
        let hold = p.hold.expect("held");
        assert_eq!(hold.reason(), reason::POD_STATUS_UNAVAILABLE);
        assert!(
            hold.message(&d).contains("a: timed out"),
            "{}",
            hold.message(&d)
        );
        // Scaling down or keeping the replicas does not need the pods' word.
        let p = plan(
            &reporting(5, 13, unreadable),
            &desired(3, 13, 4),
            now(),
            SETTLE,
        );
        assert_eq!((p.replicas, p.hold), (3, None));
    }

    #[test]
    fn an_unreadable_config_is_simply_replaced() {
        let l = Live {
            replicas: Some(2),
            per_pod: None,
            config_changed_at: None,
            pods: 9,
            pods_config: None,
        };
        let p = plan(&l, &desired(4, 10, 5), now(), SETTLE);
        assert_eq!((p.apply_config, p.replicas, p.hold), (true, 4, None));
    }
}
