//! The PodMonitor of a pool: applied while the API server serves the Prometheus Operator's
//! PodMonitor CRD, and reported in the Monitoring condition when it does not.
//!
//! Whether the CRD is served is asked of API discovery at most once per cache period for
//! all pools, so installing the Prometheus Operator later takes effect without a restart
//! of the operator. PodMonitors are not watched (the CRD may be missing): each reconciliation
//! reads the pool's, and applies it only when it is not as the last apply left it.

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use kube::api::{Patch, PatchParams};
use kube::{Api, Client, ResourceExt as _};

use super::conditions::{Status, Verdict};
use super::live::Versions;
use super::reconcile::{rendering_digest, Error, FIELD_MANAGER};
use crate::api::condition::MONITORING;
use crate::api::ConnectionPool;
use crate::render::monitoring::{API_GROUP_VERSION, POD_MONITORS};
use crate::render::PodMonitor;

/// Reasons of the Monitoring condition.
pub mod reason {
    /// The PodMonitor is applied.
    pub const POD_MONITOR_APPLIED: &str = "PodMonitorApplied";
    /// The PodMonitor CRD is not installed, so no PodMonitor exists.
    pub const POD_MONITOR_CRD_MISSING: &str = "PodMonitorCRDMissing";
}

/// Whether the API server serves PodMonitors, asked of discovery at most once per `ttl`.
pub struct Discovery {
    ttl: Duration,
    seen: Mutex<Option<(Instant, bool)>>,
}

impl Discovery {
    /// A cache whose answers are reused for `ttl`.
    pub fn new(ttl: Duration) -> Discovery {
        Discovery {
            ttl,
            seen: Mutex::new(None),
        }
    }

    /// How long an answer is reused: the delay before a missing CRD is looked for again.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Whether `monitoring.coreos.com/v1` serves `podmonitors`.
    pub async fn pod_monitors_served(&self, client: &Client) -> Result<bool, Error> {
        let cached = *self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, served)) = cached.filter(|(at, _)| at.elapsed() < self.ttl) {
            tracing::trace!(age = ?at.elapsed(), served, "PodMonitor discovery cached");
            return Ok(served);
        }
        let served = match client.list_api_group_resources(API_GROUP_VERSION).await {
            Ok(list) => list.resources.iter().any(|r| r.name == POD_MONITORS),
            // The group is not served at all: no Prometheus Operator CRDs.
            Err(kube::Error::Api(s)) if s.code == 404 => false,
            Err(source) => {
                return Err(Error::Kube {
                    verb: "discover",
                    kind: "APIResourceList".to_owned(),
                    name: API_GROUP_VERSION.to_owned(),
                    source,
                })
            }
        };
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), served));
        Ok(served)
    }
}

/// Applies `monitor` when the CRD is served, unless it is as the last apply left it; the
/// Monitoring verdict either way.
pub(super) async fn apply(
    client: &Client,
    discovery: &Discovery,
    live: &Versions,
    namespace: &str,
    pool: &str,
    monitor: &PodMonitor,
) -> Result<Verdict, Error> {
    if !discovery.pod_monitors_served(client).await? {
        return Ok(Verdict::new(
            MONITORING,
            Status::False,
            reason::POD_MONITOR_CRD_MISSING,
            format!(
                "spec.monitoring.podMonitor asks for a PodMonitor, but the API server does not \
                 serve {POD_MONITORS}.{API_GROUP_VERSION} (install the Prometheus Operator's \
                 CRDs); looked for again every {}s",
                discovery.ttl().as_secs()
            ),
        ));
    }
    let api = Api::<PodMonitor>::namespaced(client.clone(), namespace);
    let digest = rendering_digest(monitor)?;
    // Not watched (the CRD may come and go): a read tells an edit or a deletion.
    let current = api.get_opt(pool).await.map_err(kube_error("get", pool))?;
    if let Some(current) = &current {
        live.saw(current);
    }
    if current.is_none() || !live.unchanged::<PodMonitor>(namespace, pool, &digest) {
        let applied = api
            .patch(
                pool,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(monitor),
            )
            .await
            .map_err(kube_error("apply", pool))?;
        live.applied(digest, &applied);
    }
    Ok(Verdict::new(
        MONITORING,
        Status::True,
        reason::POD_MONITOR_APPLIED,
        format!("PodMonitor {pool} scrapes the pooler pods' /metrics"),
    ))
}

/// Deletes the pool's PodMonitor, if the CRD is served and one exists: the spec no longer
/// asks for it.
pub(super) async fn delete(
    client: &Client,
    discovery: &Discovery,
    pool: &ConnectionPool,
    namespace: &str,
) -> Result<(), Error> {
    if !discovery.pod_monitors_served(client).await? {
        return Ok(());
    }
    super::reconcile::delete_if_present::<PodMonitor>(client, pool, namespace, &pool.name_any())
        .await
}

fn kube_error<'a>(verb: &'static str, name: &'a str) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::Kube {
        verb,
        kind: "PodMonitor".to_owned(),
        name: name.to_owned(),
        source,
    }
}
