//! The read-only pool `spec.readReplicas` asks for: the same pooler objects rendered under
//! `<name>-ro`, whose one database entry lists every standby, accepts only servers in
//! recovery and spreads connections over them, sized for the standby with the least room.

use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, Subject};
use kube::ResourceExt;
use weir_pooler::config::{Config, LoadBalanceHosts, TargetSessionAttrs};

use super::{count, meta, postgres_users, render_pooler, Observed, RenderError, Rendered};
use crate::api::rules::NO_STANDBYS;
use crate::api::{
    read_only_name, ConnectionPool, MaxConnections, ReadReplicas, Violation, Violations,
};
use crate::sizing::{self, DatabaseLimits};

/// Renders the read-only pool's objects, owned by `pool`; `None` when the spec asks for none.
/// `observed` holds the read-only pods' peers and the standbys' limits.
pub fn render(pool: &ConnectionPool, observed: &Observed) -> Result<Option<Rendered>, RenderError> {
    let Some(standbys) = &pool.spec.read_replicas else {
        return Ok(None);
    };
    pool.validate()?;
    let owner = meta::owner(pool)?;
    let inputs = inputs(pool, standbys, observed)?;
    let sizing = sizing::compute(&inputs)?;
    let mut rendered = render_pooler(
        &derived(pool, standbys),
        owner,
        observed,
        sizing,
        Some(standbys),
    )?;
    // The primary pool's binding lists the read-only pods' ServiceAccount too.
    rendered.token_review_binding = None;
    Ok(Some(rendered))
}

/// The read-only pool's objects as a YAML stream, introduced like the primary pool's.
pub fn to_yaml_stream(rendered: &Rendered) -> Result<String, crate::yaml::Error> {
    Ok(format!(
        "# Read-only pool over spec.readReplicas, sized for the standby with the least room:\n{}",
        rendered.to_yaml_stream()?
    ))
}

/// The sizing inputs of the read-only pool: the primary's users, surge and share rules, the
/// tightest standby's limits, and the read-only replicas (sized as one when set to 0, so
/// that scaling up from 0 needs no resize first).
pub fn inputs(
    pool: &ConnectionPool,
    standbys: &ReadReplicas,
    observed: &Observed,
) -> Result<sizing::Inputs, RenderError> {
    let limits = standby_limits(standbys, observed)?;
    // Admission requires a standby; an empty list is refused the same way offline.
    let no_standbys = || {
        RenderError::Invalid(Violations(vec![Violation {
            path: "spec.readReplicas.hosts".into(),
            message: NO_STANDBYS.into(),
        }]))
    };
    Ok(sizing::Inputs {
        database: sizing::tightest(&limits).ok_or_else(no_standbys)?,
        // The standbys serve only this pool's reads: it may claim all of their budget.
        share: sizing::Share::Percent(100),
        others_claimed: 0,
        replicas: count(standbys.replicas).max(1),
        max_surge: count(pool.spec.rollout.max_surge),
        max_replicas: None,
        users: postgres_users(&pool.spec),
    })
}

/// Each standby's limits, from the spec or as observed.
fn standby_limits(
    standbys: &ReadReplicas,
    observed: &Observed,
) -> Result<Vec<DatabaseLimits>, RenderError> {
    standbys
        .hosts
        .iter()
        .map(|h| {
            let (max_connections, superuser_reserved) = match standbys.max_connections {
                MaxConnections::Count(n) => (
                    u32::try_from(n).unwrap_or(u32::MAX),
                    count(standbys.superuser_reserved_connections),
                ),
                MaxConnections::Auto => {
                    let key = standby_key(&h.host, h.port);
                    let seen = observed
                        .standbys
                        .get(&key)
                        .ok_or(RenderError::StandbyNotObserved(key))?;
                    (
                        seen.max_connections,
                        seen.superuser_reserved_connections
                            .saturating_add(seen.reserved_connections),
                    )
                }
            };
            Ok(DatabaseLimits {
                max_connections,
                superuser_reserved,
                reserved_percent: count(standbys.reserved_percent),
                used_by_others: count(standbys.used_by_others),
            })
        })
        .collect()
}

/// How [`Observed::standbys`] names a standby.
pub fn standby_key(host: &str, port: i32) -> String {
    format!("{host}:{port}")
}

/// The read-only pool as a ConnectionPool of its own: named `<name>-ro`, running the
/// read-only replicas, without the primary's autoscaling, PodMonitor or NetworkPolicy.
pub fn derived(pool: &ConnectionPool, standbys: &ReadReplicas) -> ConnectionPool {
    let mut ro = pool.clone();
    ro.metadata.name = Some(read_only_name(&pool.name_any()));
    ro.spec.replicas = standbys.replicas;
    ro.spec.autoscaling = None;
    ro.spec.monitoring = None;
    ro.spec.network_policy = None;
    ro.spec.read_replicas = None;
    ro.status = None;
    ro
}

/// Adds the read-only pods' ServiceAccount to the primary pool's token-review binding:
/// the read-only poolers review the same users' tokens.
pub(crate) fn bind_service_account(binding: &mut ClusterRoleBinding, pool: &str) {
    let Some(subjects) = binding.subjects.as_mut() else {
        return;
    };
    let Some(primary) = subjects.first().cloned() else {
        return;
    };
    subjects.push(Subject {
        name: read_only_name(pool),
        ..primary
    });
}

/// Points the configuration's one database entry at the standbys.
pub(crate) fn point_at_standbys(
    config: &mut Config,
    standbys: &ReadReplicas,
) -> Result<(), RenderError> {
    for entry in config.databases.values_mut() {
        entry.host = Some(standbys.host_list());
        entry.port = standbys
            .hosts
            .iter()
            .filter_map(|h| u16::try_from(h.port).ok())
            .collect();
        entry.target_session_attrs = Some(TargetSessionAttrs::Standby);
        entry.load_balance_hosts = Some(LoadBalanceHosts::RoundRobin);
    }
    config.validate().map_err(RenderError::Config)
}

#[cfg(test)]
mod tests;
