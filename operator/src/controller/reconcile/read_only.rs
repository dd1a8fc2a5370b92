//! The read-only pool of a ConnectionPool with `spec.readReplicas`: observe the standbys,
//! render and apply the `<name>-ro` objects, report them; delete them once the spec stops
//! asking. A standby problem blocks only the read-only pool, never the primary one.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Api, ResourceExt};

use super::{
    apply_children, blocker, delete_child, delete_legacy_peers_service, kube_error, observe_peers,
    probe_tls, ready_endpoints, Blocker, Context, Error,
};
use crate::api::condition::READ_ONLY_READY;
use crate::api::{
    read_only_name, BudgetStatus, ConnectionPool, MaxConnections, ReadOnlyPoolStatus,
    UserPoolStatus,
};
use crate::controller::conditions::{reason, Status, Verdict};
use crate::controller::database::Target;
use crate::controller::rollout::{self, Observation};
use crate::render::read_only::{self, standby_key};
use crate::render::{names, Observed, RenderError};

/// What one pass over the read-only pool found: its status and its condition.
pub(super) struct Outcome {
    pub status: ReadOnlyPoolStatus,
    pub ready: Verdict,
}

/// Reconciles the read-only pool; `None` when the spec asks for none (its objects are then
/// deleted after a spec change).
pub(super) async fn reconcile(
    ctx: &Context,
    pool: &ConnectionPool,
    namespace: &str,
    primary: &Observed,
    spec_changed: bool,
) -> Result<Option<Outcome>, Error> {
    let name = read_only_name(&pool.name_any());
    let Some(standbys) = &pool.spec.read_replicas else {
        if spec_changed {
            delete_all(ctx, pool, namespace, &name).await?;
            delete_legacy_peers_service(ctx, pool, namespace, &name).await?;
        }
        return Ok(None);
    };
    delete_legacy_peers_service(ctx, pool, namespace, &name).await?;
    let (pod_ips, peers_in_force) = observe_peers(ctx, namespace, &name).await?;
    let mut observed = Observed {
        pod_ips,
        peers_in_force,
        ..primary.clone()
    };
    let problem = match observe_standbys(ctx, pool, &observed).await {
        Ok(seen) => {
            observed.standbys = seen;
            None
        }
        Err(problem) => Some(problem),
    };
    let old = pool
        .status
        .as_ref()
        .and_then(|s| s.read_only.clone())
        .unwrap_or_default();
    let derived = read_only::derived(pool, standbys);
    let (mut status, failed) = match read_only::render(pool, &observed) {
        Ok(Some(rendered)) => {
            let reports = ctx.read_pods(namespace, &name).await;
            apply_children(ctx, &derived, namespace, &rendered, reports.as_ref()).await?;
            let primary_like = rendered.status(&derived);
            let status = ReadOnlyPoolStatus {
                budget: Some(BudgetStatus::from(&rendered.sizing.budget)),
                users: UserPoolStatus::list(&rendered.sizing, &rendered.users),
                endpoint: primary_like.endpoint,
                app_secret_name: primary_like.app_secret_name,
                ..ReadOnlyPoolStatus::default()
            };
            (status, None)
        }
        Ok(None) => return Ok(None),
        Err(e) => {
            let failed = match (&e, &problem) {
                (RenderError::StandbyNotObserved(_), Some(p)) => p.clone(),
                _ => blocker(&e, None),
            };
            // The running read-only pods keep their last good sizes, which the status keeps.
            let kept = ReadOnlyPoolStatus {
                budget: old.budget.clone(),
                users: old.users.clone(),
                endpoint: old.endpoint.clone(),
                app_secret_name: old.app_secret_name.clone(),
                ..ReadOnlyPoolStatus::default()
            };
            (kept, Some(failed))
        }
    };
    let deployment = Api::<Deployment>::namespaced(ctx.client.clone(), namespace)
        .get_opt(&name)
        .await
        .map_err(kube_error::<Deployment>("get", &name))?;
    let seen = match &deployment {
        Some(d) => Some(Observation::of(
            d,
            ready_endpoints(ctx, namespace, &name).await?,
        )),
        None => None,
    };
    status.replicas = seen.as_ref().map(|s| s.replicas);
    status.ready_replicas = seen.as_ref().map(|s| s.ready);
    let ready = match failed {
        Some(b) => Verdict::new(
            READ_ONLY_READY,
            Status::False,
            b.reason,
            format!("the read-only pool is not updated: {}", b.message),
        ),
        None => {
            let verdict = rollout::ready(seen.as_ref(), standbys.replicas);
            Verdict::new(
                READ_ONLY_READY,
                verdict.status,
                verdict.reason,
                verdict.message,
            )
        }
    };
    Ok(Some(Outcome { status, ready }))
}

/// Each standby's limits, by `host:port`, when `readReplicas.maxConnections` is `auto`;
/// the poolers' own credentials and TLS settings log in, as for the primary.
async fn observe_standbys(
    ctx: &Context,
    pool: &ConnectionPool,
    observed: &Observed,
) -> Result<std::collections::BTreeMap<String, crate::render::ObservedDatabase>, Blocker> {
    let mut seen = std::collections::BTreeMap::new();
    let (Some(standbys), Some(db)) = (&pool.spec.read_replicas, &pool.spec.database) else {
        return Ok(seen);
    };
    if standbys.max_connections != MaxConnections::Auto {
        return Ok(seen);
    }
    let secret_problem = |what: String| Blocker {
        reason: reason::SECRET_PROBLEM.to_owned(),
        message: format!(
            "readReplicas.maxConnections is auto, but the credentials to read it are unusable: \
             {what}"
        ),
    };
    let creds = &db.credentials_secret;
    let value = |key: &str| {
        observed
            .secrets
            .get(&creds.name)
            .and_then(|data| data.get(key))
            .and_then(|v| String::from_utf8(v.clone()).ok())
            .ok_or_else(|| {
                secret_problem(format!("Secret {:?} has no UTF-8 key {key:?}", creds.name))
            })
    };
    let (user, password) = (value(&creds.username_key)?, value(&creds.password_key)?);
    let tls =
        probe_tls(&pool.spec, &observed.secrets, &observed.config_maps).map_err(secret_problem)?;
    for host in &standbys.hosts {
        let target = Target {
            host: host.host.clone(),
            port: u16::try_from(host.port).map_err(|_| Blocker {
                reason: crate::api::condition::INVALID_SPEC.to_owned(),
                message: format!("standby port {} is not a TCP port", host.port),
            })?,
            dbname: db.dbname.clone(),
            user: user.clone(),
            password: password.clone(),
            tls: tls.clone(),
        };
        let limits = ctx
            .databases
            .observe(&target, ctx.settings.database_timeout)
            .await
            .map_err(|e| Blocker {
                reason: reason::STANDBY_UNREACHABLE.to_owned(),
                message: e.to_string(),
            })?;
        seen.insert(standby_key(&host.host, host.port), limits);
    }
    Ok(seen)
}

/// Deletes every object of the read-only pool `name`; those already gone are skipped.
async fn delete_all(
    ctx: &Context,
    pool: &ConnectionPool,
    namespace: &str,
    name: &str,
) -> Result<(), Error> {
    delete_child::<Deployment>(ctx, pool, namespace, name).await?;
    delete_child::<PodDisruptionBudget>(ctx, pool, namespace, name).await?;
    delete_child::<Service>(ctx, pool, namespace, name).await?;
    delete_child::<ConfigMap>(ctx, pool, namespace, &names::config_map(name)).await?;
    delete_child::<Secret>(ctx, pool, namespace, &names::auth_secret(name)).await?;
    delete_child::<Secret>(ctx, pool, namespace, &names::app_secret(name)).await?;
    delete_child::<ServiceAccount>(ctx, pool, namespace, name).await
}
