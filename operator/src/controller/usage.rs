//! How full a pool is, from what its pods' `/status` reported: the `status.usage` numbers,
//! whether the pods run the ConfigMap in place, and the NearBudget condition. Pure: the
//! reading is [`super::pod_status`]'s.
//!
//! Numbers are rounded before they reach the status (connections to 5 % of the budget,
//! waits and waiting clients down to 1-2-5 steps), so that a busy pool's status changes when
//! its picture changes, not at every poll.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use weir_pooler::http::StatusDocument;

use super::conditions::{reason, Status, Verdict};
use super::resize::PodsConfig;
use crate::api::condition::NEAR_BUDGET;
use crate::api::{PodUsage, UsageStatus};

/// What one running pooler pod answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodReport {
    /// The pod's name.
    pub name: String,
    /// Its `/status`, or why it could not be read.
    pub status: Result<StatusDocument, String>,
}

/// When NearBudget turns true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NearBudgetSettings {
    /// The share of the budget, in percent, that open server connections must reach.
    pub percent: u32,
    /// How long they must stay there.
    pub sustain: Duration,
}

/// Whether every running pod runs the ConfigMap whose text has `digest`.
pub fn pods_config(reports: &[PodReport], digest: &str) -> PodsConfig {
    let unreadable: Vec<String> = reports
        .iter()
        .filter_map(|r| r.status.as_ref().err().map(|e| format!("{} ({e})", r.name)))
        .collect();
    if !unreadable.is_empty() {
        return PodsConfig::Unreadable(unreadable);
    }
    let behind: Vec<String> = reports
        .iter()
        .filter(|r| r.status.as_ref().is_ok_and(|s| !runs(s, digest)))
        .map(|r| r.name.clone())
        .collect();
    if behind.is_empty() {
        PodsConfig::Current
    } else {
        PodsConfig::Behind(behind)
    }
}

fn runs(status: &StatusDocument, digest: &str) -> bool {
    status.config_file_digest == digest
}

/// The exact totals over the pods that answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Totals {
    /// Server connections open.
    pub server_connections: u64,
    /// Clients waiting.
    pub waiting: u64,
    /// The longest wait.
    pub longest_wait: Duration,
    /// Pods that answered.
    pub reporting: usize,
}

/// Sums what the pods reported.
pub fn totals(reports: &[PodReport]) -> Totals {
    let mut t = Totals::default();
    for status in reports.iter().filter_map(|r| r.status.as_ref().ok()) {
        t.reporting += 1;
        for pool in &status.pools {
            t.server_connections += pool.server_connections;
            t.waiting += pool.waiting;
            t.longest_wait = t
                .longest_wait
                .max(Duration::from_millis(pool.longest_wait_ms));
        }
    }
    t
}

/// `status.usage` for the pool, `budget` being its budget over all pods and `per_pod` each
/// pod's share; `digest` is the ConfigMap's text digest.
pub fn summarize(reports: &[PodReport], budget: u64, per_pod: u64, digest: &str) -> UsageStatus {
    let t = totals(reports);
    let used = to_step(t.server_connections, budget);
    let pods: Vec<PodUsage> = reports
        .iter()
        .map(|r| {
            let one = totals(std::slice::from_ref(r));
            let ok = r.status.as_ref().ok();
            PodUsage {
                name: r.name.clone(),
                server_connections: ok.map(|_| int(to_step(one.server_connections, per_pod))),
                waiting_clients: ok.map(|_| int(one_two_five(one.waiting))),
                latest_config: ok.is_some_and(|s| runs(s, digest)),
            }
        })
        .collect();
    UsageStatus {
        summary: format!("{used}/{budget}"),
        server_connections: int(used),
        budget: int(budget),
        waiting_clients: int(one_two_five(t.waiting)),
        longest_wait_seconds: int(one_two_five(t.longest_wait.as_secs())),
        pods_reporting: int(t.reporting as u64),
        pods_on_latest_config: int(pods.iter().filter(|p| p.latest_config).count() as u64),
        pods_behind: reports
            .iter()
            .filter(|r| r.status.as_ref().is_ok_and(|s| !runs(s, digest)))
            .map(|r| r.name.clone())
            .collect(),
        pods_unreachable: reports
            .iter()
            .filter(|r| r.status.is_err())
            .map(|r| r.name.clone())
            .collect(),
        pods,
    }
}

fn int(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// `value` rounded to the nearest multiple of 5 % of `scale` (exact below a scale of 40).
pub fn to_step(value: u64, scale: u64) -> u64 {
    let step = (scale / 20).max(1);
    (value + step / 2) / step * step
}

/// `value` rounded down to 0, 1, 2, 5, 10, 20, 50, 100, ...
pub fn one_two_five(value: u64) -> u64 {
    if value == 0 {
        return 0;
    }
    let mut decade = 1u64;
    while let Some(next) = decade.checked_mul(10).filter(|n| *n <= value) {
        decade = next;
    }
    [5, 2]
        .into_iter()
        .find_map(|m| decade.checked_mul(m).filter(|v| *v <= value))
        .unwrap_or(decade)
}

/// Since when open server connections have been at or above the threshold: `since` carried
/// over while they stay there, `now` when they get there, `None` below it.
pub fn above_since(
    since: Option<Timestamp>,
    totals: &Totals,
    budget: u64,
    settings: &NearBudgetSettings,
    now: Timestamp,
) -> Option<Timestamp> {
    let above = totals.reporting > 0
        && budget > 0
        && totals.server_connections * 100 >= budget * u64::from(settings.percent);
    above.then(|| since.unwrap_or(now))
}

/// The NearBudget condition: true once connections have stayed at or above the threshold
/// for the sustained period; unknown when no pod's status can be read.
pub fn near_budget(
    usage: &UsageStatus,
    since: Option<Timestamp>,
    settings: &NearBudgetSettings,
    now: Timestamp,
) -> Verdict {
    let threshold = format!(
        "{} % of the budget of {} for {} s",
        settings.percent,
        usage.budget,
        settings.sustain.as_secs()
    );
    if usage.pods_reporting == 0 && !usage.pods_unreachable.is_empty() {
        return Verdict::new(
            NEAR_BUDGET,
            Status::Unknown,
            reason::POD_STATUS_UNAVAILABLE,
            format!(
                "the /status of {} cannot be read",
                usage.pods_unreachable.join(", ")
            ),
        );
    }
    let sustained = since.is_some_and(|s| {
        Duration::try_from(now.duration_since(s)).unwrap_or_default() >= settings.sustain
    });
    let now_seen = format!(
        "{} server connections open, {} clients waiting",
        usage.summary, usage.waiting_clients
    );
    if sustained {
        Verdict::new(
            NEAR_BUDGET,
            Status::True,
            reason::SUSTAINED_HIGH_USAGE,
            format!("server connections stayed at or above {threshold} ({now_seen})"),
        )
    } else {
        Verdict::new(
            NEAR_BUDGET,
            Status::False,
            reason::WITHIN_BUDGET,
            format!("server connections have not stayed at or above {threshold}"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use weir_pooler::http::PoolStatus;

    fn pod(name: &str, digest: &str, servers: u64, waiting: u64, wait_ms: u64) -> PodReport {
        PodReport {
            name: name.into(),
            status: Ok(StatusDocument {
                config_file_digest: digest.into(),
                pools: vec![PoolStatus {
                    database: "orders".into(),
                    user: "app".into(),
                    server_connections: servers,
                    waiting,
                    longest_wait_ms: wait_ms,
                    ..PoolStatus::default()
                }],
                ..StatusDocument::default()
            }),
        }
    }

    fn down(name: &str) -> PodReport {
        PodReport {
            name: name.into(),
            status: Err("timed out".into()),
        }
    }

    const SETTINGS: NearBudgetSettings = NearBudgetSettings {
        percent: 90,
        sustain: Duration::from_secs(60),
    };

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_000_000 + seconds).expect("valid")
    }

    #[test]
    fn pods_run_the_config_map_only_when_all_report_its_digest() {
        let current = [pod("a", "d2", 1, 0, 0), pod("b", "d2", 1, 0, 0)];
        assert_eq!(pods_config(&current, "d2"), PodsConfig::Current);
        assert_eq!(pods_config(&[], "d2"), PodsConfig::Current);
        let mixed = [pod("a", "d1", 1, 0, 0), pod("b", "d2", 1, 0, 0)];
        assert_eq!(
            pods_config(&mixed, "d2"),
            PodsConfig::Behind(vec!["a".into()])
        );
        let silent = [pod("a", "d1", 1, 0, 0), down("b")];
        assert_eq!(
            pods_config(&silent, "d2"),
            PodsConfig::Unreadable(vec!["b (timed out)".into()])
        );
    }

    #[test]
    fn usage_adds_up_the_pods_and_names_the_ones_behind() {
        let reports = [
            pod("a", "new", 19, 3, 1500),
            pod("b", "old", 21, 4, 7200),
            down("c"),
        ];
        let u = summarize(&reports, 48, 24, "new");
        assert_eq!(u.summary, "40/48");
        assert_eq!((u.server_connections, u.budget), (40, 48));
        assert_eq!((u.waiting_clients, u.longest_wait_seconds), (5, 5));
        assert_eq!((u.pods_reporting, u.pods_on_latest_config), (2, 1));
        assert_eq!(u.pods_behind, ["b"]);
        assert_eq!(u.pods_unreachable, ["c"]);
        assert_eq!(u.pods[0].server_connections, Some(19));
        assert_eq!(u.pods[1].waiting_clients, Some(2));
        assert!(u.pods[0].latest_config && !u.pods[1].latest_config);
        assert_eq!(u.pods[2].server_connections, None);
    }

    #[test]
    fn small_changes_of_a_busy_pool_do_not_change_its_usage() {
        // Budget 200: steps of 10 connections.
        let one = summarize(&[pod("a", "d", 183, 23, 900)], 200, 200, "d");
        let two = summarize(&[pod("a", "d", 178, 27, 400)], 200, 200, "d");
        assert_eq!(one, two);
        assert_eq!(one.summary, "180/200");
    }

    #[test]
    fn rounding_steps() {
        assert_eq!(to_step(7, 30), 7);
        assert_eq!(to_step(44, 48), 44);
        assert_eq!(to_step(45, 48), 46);
        assert_eq!(to_step(0, 0), 0);
        let rounded: Vec<u64> = [0, 1, 2, 3, 4, 5, 9, 10, 19, 20, 49, 50, 99, 100, 2_500]
            .into_iter()
            .map(one_two_five)
            .collect();
        assert_eq!(
            rounded,
            [0, 1, 2, 2, 2, 5, 5, 10, 10, 20, 20, 50, 50, 100, 2_000]
        );
        assert_eq!(one_two_five(u64::MAX), 10_000_000_000_000_000_000);
    }

    #[test]
    fn near_budget_turns_only_after_the_sustained_period_and_back() {
        let busy = [pod("a", "d", 22, 2, 0), pod("b", "d", 22, 0, 0)];
        let quiet = [pod("a", "d", 10, 0, 0), pod("b", "d", 10, 0, 0)];
        let t = totals(&busy);
        let since = above_since(None, &t, 48, &SETTINGS, at(0));
        assert_eq!(since, Some(at(0)));
        let usage = summarize(&busy, 48, 24, "d");
        let v = near_budget(&usage, since, &SETTINGS, at(30));
        assert_eq!(
            (v.status, v.reason.as_str()),
            (Status::False, reason::WITHIN_BUDGET)
        );
        // Still above a minute later: the first moment is kept.
        let since = above_since(since, &t, 48, &SETTINGS, at(60));
        assert_eq!(since, Some(at(0)));
        let v = near_budget(&usage, since, &SETTINGS, at(60));
        assert_eq!(
            (v.status, v.reason.as_str()),
            (Status::True, reason::SUSTAINED_HIGH_USAGE)
        );
        assert!(v.message.contains("44/48"), "{}", v.message);
        // Below the threshold: back to false at once.
        let since = above_since(since, &totals(&quiet), 48, &SETTINGS, at(61));
        assert_eq!(since, None);
        let v = near_budget(&summarize(&quiet, 48, 24, "d"), since, &SETTINGS, at(61));
        assert_eq!(v.status, Status::False);
    }

    #[test]
    fn near_budget_is_unknown_when_no_pod_answers() {
        let usage = summarize(&[down("a")], 48, 24, "d");
        let since = above_since(Some(at(0)), &totals(&[down("a")]), 48, &SETTINGS, at(99));
        assert_eq!(since, None);
        let v = near_budget(&usage, since, &SETTINGS, at(99));
        assert_eq!(
            (v.status, v.reason.as_str()),
            (Status::Unknown, reason::POD_STATUS_UNAVAILABLE)
        );
        // No pods at all (scaled to zero): nothing is near the budget.
        let v = near_budget(&summarize(&[], 48, 24, "d"), None, &SETTINGS, at(99));
        assert_eq!(v.status, Status::False);
    }
}
