//! Kubernetes-style status conditions: what the controller concluded, merged into what the
//! status said before so that `lastTransitionTime` moves only when a condition flips.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Reasons the controller gives beyond those in [`crate::api::condition`].
pub mod reason {
    /// `maxConnections: auto` and the database could not be asked for its limits.
    pub const DATABASE_UNREACHABLE: &str = "DatabaseUnreachable";
    /// `readReplicas.maxConnections: auto` and a standby could not be asked for its limits.
    pub const STANDBY_UNREACHABLE: &str = "StandbyUnreachable";
    /// A Redis pool without `maxClients` and the server could not be asked for it.
    pub const REDIS_UNREACHABLE: &str = "RedisUnreachable";
    /// A Redis pool without `maxClients` whose server will not tell its maxclients
    /// (CONFIG disabled, as on many managed services).
    pub const MAX_CLIENTS_UNKNOWN: &str = "MaxClientsUnknown";
    /// A Secret the spec names does not exist, lacks a key, or holds an unusable value.
    pub const SECRET_PROBLEM: &str = "SecretProblem";
    /// The spec or a setting in it cannot be turned into a pooler configuration.
    pub const INVALID_CONFIGURATION: &str = "InvalidConfiguration";
    /// Every pod of the current revision is ready and the Service has ready endpoints.
    pub const POOLERS_READY: &str = "PoolersReady";
    /// The Deployment does not exist yet.
    pub const DEPLOYMENT_MISSING: &str = "DeploymentMissing";
    /// Pods of the current revision are missing or not ready yet.
    pub const PODS_NOT_READY: &str = "PodsNotReady";
    /// The pods are ready but the Service has no ready endpoint yet.
    pub const NO_ENDPOINTS: &str = "NoEndpoints";
    /// The Deployment is replacing or adding pods.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// Pool sizes or replicas are being changed in steps that keep the budget.
    pub const RESIZING: &str = "Resizing";
    /// Nothing is changing.
    pub const UP_TO_DATE: &str = "UpToDate";
    /// Pooler pods' `/status` cannot be read: usage is unknown and pods are not added.
    pub const POD_STATUS_UNAVAILABLE: &str = "PodStatusUnavailable";
    /// NearBudget is true: usage stayed above the threshold for the sustained period.
    pub const SUSTAINED_HIGH_USAGE: &str = "SustainedHighUsage";
    /// NearBudget is false.
    pub const WITHIN_BUDGET: &str = "WithinBudget";
}

/// The three states of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// The condition holds.
    True,
    /// It does not.
    False,
    /// It cannot be decided now.
    Unknown,
}

impl Status {
    /// The API spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }

    /// `True` or `False`.
    pub fn from_bool(value: bool) -> Status {
        if value {
            Status::True
        } else {
            Status::False
        }
    }
}

/// One condition as the controller decided it, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    /// The condition type (see [`crate::api::condition`]).
    pub type_: &'static str,
    /// Whether it holds.
    pub status: Status,
    /// A CamelCase reason.
    pub reason: String,
    /// A sentence for people.
    pub message: String,
}

impl Verdict {
    /// A verdict with the given parts.
    pub fn new(
        type_: &'static str,
        status: Status,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Verdict {
        Verdict {
            type_,
            status,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// The API server's limit on a condition message.
const MAX_MESSAGE: usize = 32_768;

/// Replaces the conditions named in `verdicts`, keeping each one's `lastTransitionTime`
/// when its status did not change; conditions of other types are kept as they are.
pub fn merge(
    existing: &[Condition],
    verdicts: &[Verdict],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let mut merged: Vec<Condition> = verdicts
        .iter()
        .map(|v| {
            let previous = existing.iter().find(|c| c.type_ == v.type_);
            let last_transition_time = match previous {
                Some(p) if p.status == v.status.as_str() => p.last_transition_time.clone(),
                _ => now.clone(),
            };
            Condition {
                type_: v.type_.to_owned(),
                status: v.status.as_str().to_owned(),
                reason: v.reason.clone(),
                message: truncate(&v.message, MAX_MESSAGE),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect();
    merged.extend(
        existing
            .iter()
            .filter(|c| !verdicts.iter().any(|v| v.type_ == c.type_))
            .cloned(),
    );
    merged
}

/// The condition of `type_`, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether a condition is new or differs from its previous version in status, reason or
/// message: the moments worth an Event.
pub fn changed(before: &[Condition], after: &Condition) -> bool {
    find(before, &after.type_).is_none_or(|b| {
        b.status != after.status || b.reason != after.reason || b.message != after.message
    })
}

fn truncate(text: &str, limit: usize) -> String {
    if text.len() <= limit {
        return text.to_owned();
    }
    let mut end = limit;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(seconds: i64) -> Time {
        Time(Timestamp::from_second(seconds).expect("valid"))
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = merge(
            &[],
            &[Verdict::new("Ready", Status::False, "PodsNotReady", "0/2")],
            Some(1),
            &at(100),
        );
        assert_eq!(first[0].last_transition_time, at(100));
        assert_eq!(first[0].observed_generation, Some(1));

        let same = merge(
            &first,
            &[Verdict::new("Ready", Status::False, "NoEndpoints", "1/2")],
            Some(2),
            &at(200),
        );
        assert_eq!(same[0].last_transition_time, at(100));
        assert_eq!(same[0].reason, "NoEndpoints");
        assert_eq!(same[0].observed_generation, Some(2));

        let flipped = merge(
            &same,
            &[Verdict::new("Ready", Status::True, "PoolersReady", "2/2")],
            Some(2),
            &at(300),
        );
        assert_eq!(flipped[0].last_transition_time, at(300));
        assert_eq!(flipped[0].status, "True");
    }

    #[test]
    fn other_condition_types_are_kept() {
        let foreign = Condition {
            type_: "Custom".into(),
            status: "True".into(),
            reason: "X".into(),
            message: String::new(),
            observed_generation: None,
            last_transition_time: at(1),
        };
        let merged = merge(
            std::slice::from_ref(&foreign),
            &[Verdict::new("Ready", Status::Unknown, "Waiting", "")],
            None,
            &at(5),
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[1], foreign);
    }

    #[test]
    fn changes_are_detected_by_status_reason_and_message() {
        let before = merge(
            &[],
            &[Verdict::new("BudgetFeasible", Status::True, "Fits", "a")],
            None,
            &at(1),
        );
        let same = merge(
            &before,
            &[Verdict::new("BudgetFeasible", Status::True, "Fits", "a")],
            Some(3),
            &at(2),
        );
        assert!(!changed(&before, &same[0]));
        let other = merge(
            &before,
            &[Verdict::new("BudgetFeasible", Status::True, "Fits", "b")],
            None,
            &at(2),
        );
        assert!(changed(&before, &other[0]));
        assert!(changed(&[], &other[0]));
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let text = "é".repeat(20_000);
        let cut = truncate(&text, MAX_MESSAGE);
        assert!(cut.len() <= MAX_MESSAGE);
        assert!(cut.chars().all(|c| c == 'é'));
    }
}
