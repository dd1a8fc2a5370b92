//! Ready and Progressing, read off the pooler Deployment and the Service's endpoints.

use k8s_openapi::api::apps::v1::Deployment;

use super::conditions::{reason, Status, Verdict};
use crate::api::condition::{PROGRESSING, READY};

/// What the Deployment and the endpoints say.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Observation {
    /// Pods that exist (`status.replicas`).
    pub replicas: i32,
    /// Pods of the current revision (`status.updatedReplicas`).
    pub updated: i32,
    /// Ready pods (`status.readyReplicas`).
    pub ready: i32,
    /// Whether the Deployment controller has seen the latest spec.
    pub observed: bool,
    /// Ready endpoints of the Service.
    pub endpoints: u32,
}

impl Observation {
    /// Reads a Deployment's status and the endpoint count.
    pub fn of(deployment: &Deployment, endpoints: u32) -> Observation {
        let status = deployment.status.clone().unwrap_or_default();
        let generation = deployment.metadata.generation;
        Observation {
            replicas: status.replicas.unwrap_or(0),
            updated: status.updated_replicas.unwrap_or(0),
            ready: status.ready_replicas.unwrap_or(0),
            observed: generation.is_some() && status.observed_generation >= generation,
            endpoints,
        }
    }
}

/// Ready: every one of `want` pods is of the current revision and ready, no old pod is
/// left, and clients can reach them through the Service.
pub fn ready(seen: Option<&Observation>, want: i32) -> Verdict {
    let Some(seen) = seen else {
        return Verdict::new(
            READY,
            Status::False,
            reason::DEPLOYMENT_MISSING,
            "the pooler Deployment does not exist yet",
        );
    };
    let counts = format!(
        "{}/{want} pods ready, {} of the current revision, {} in all",
        seen.ready, seen.updated, seen.replicas
    );
    if !seen.observed || seen.updated < want || seen.ready < want || seen.replicas > want {
        return Verdict::new(READY, Status::False, reason::PODS_NOT_READY, counts);
    }
    if want > 0 && seen.endpoints == 0 {
        return Verdict::new(
            READY,
            Status::False,
            reason::NO_ENDPOINTS,
            format!("{counts}, but the Service has no ready endpoint yet"),
        );
    }
    Verdict::new(
        READY,
        Status::True,
        reason::POOLERS_READY,
        format!("{counts}; {} ready endpoints", seen.endpoints),
    )
}

/// Progressing: a rollout or a held-back resize (with its reason and message) is under way.
pub fn progressing(
    seen: Option<&Observation>,
    want: i32,
    held: Option<(&'static str, String)>,
) -> Verdict {
    if let Some((reason, message)) = held {
        return Verdict::new(PROGRESSING, Status::True, reason, message);
    }
    match seen {
        Some(s) if s.observed && s.updated >= want && s.replicas <= want && s.ready >= want => {
            Verdict::new(
                PROGRESSING,
                Status::False,
                reason::UP_TO_DATE,
                format!("{want} pods of the current revision"),
            )
        }
        _ => Verdict::new(
            PROGRESSING,
            Status::True,
            reason::ROLLING_OUT,
            format!(
                "rolling out {want} pods ({} of the current revision so far)",
                seen.map_or(0, |s| s.updated)
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentStatus;

    fn seen(replicas: i32, updated: i32, ready: i32, endpoints: u32) -> Observation {
        Observation {
            replicas,
            updated,
            ready,
            observed: true,
            endpoints,
        }
    }

    #[test]
    fn ready_needs_every_pod_current_ready_and_reachable() {
        assert_eq!(ready(None, 2).reason, reason::DEPLOYMENT_MISSING);
        assert_eq!(ready(Some(&seen(2, 1, 2, 2)), 2).status, Status::False);
        assert_eq!(ready(Some(&seen(3, 2, 3, 3)), 2).status, Status::False);
        assert_eq!(
            ready(Some(&seen(2, 2, 2, 0)), 2).reason,
            reason::NO_ENDPOINTS
        );
        let ok = ready(Some(&seen(2, 2, 2, 2)), 2);
        assert_eq!(
            (ok.status, ok.reason.as_str()),
            (Status::True, reason::POOLERS_READY)
        );
        let mut stale = seen(2, 2, 2, 2);
        stale.observed = false;
        assert_eq!(ready(Some(&stale), 2).status, Status::False);
    }

    #[test]
    fn progressing_reports_holds_and_rollouts() {
        let held = progressing(
            Some(&seen(2, 2, 2, 2)),
            5,
            Some((reason::RESIZING, "waiting".into())),
        );
        assert_eq!(
            (held.status, held.reason.as_str()),
            (Status::True, reason::RESIZING)
        );
        let rolling = progressing(Some(&seen(3, 1, 2, 2)), 2, None);
        assert_eq!(rolling.reason, reason::ROLLING_OUT);
        assert_eq!(progressing(None, 2, None).status, Status::True);
        let done = progressing(Some(&seen(2, 2, 2, 2)), 2, None);
        assert_eq!(
            (done.status, done.reason.as_str()),
            (Status::False, reason::UP_TO_DATE)
        );
    }

    #[test]
    fn observation_reads_the_deployment_status() {
        let mut d = Deployment::default();
        d.metadata.generation = Some(4);
        d.status = Some(DeploymentStatus {
            replicas: Some(3),
            updated_replicas: Some(2),
            ready_replicas: Some(1),
            observed_generation: Some(4),
            ..DeploymentStatus::default()
        });
        assert_eq!(Observation::of(&d, 1), seen(3, 2, 1, 1));
        d.metadata.generation = Some(5);
        assert!(!Observation::of(&d, 1).observed);
    }
}
