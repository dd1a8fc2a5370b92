//! The controller: the only part of the operator that talks to the API server.
//!
//! A kube-runtime [`Controller`] on ConnectionPools reconciles a pool (see [`reconcile`])
//! whenever it, one of its children, a Secret it reads, or another pool on the same
//! database changes, and periodically besides. [`run`] wires it up with leader election
//! (only the replica holding the Lease reconciles), a Prometheus endpoint and graceful
//! shutdown on SIGTERM or Ctrl-C. While leading it also reads every pool's pods' `/status`
//! on a timer and writes what changed into `status.usage` ([`usage`]).

pub mod claims;
pub mod conditions;
pub mod database;
pub mod leader;
pub mod live;
pub mod metrics;
pub mod monitoring;
pub mod pod_status;
pub mod reconcile;
pub mod redis;
pub mod resize;
pub mod rollout;
pub mod tls;
pub mod token_review;
pub mod usage;

use std::net::SocketAddr;
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{controller, watcher, Controller, WatchStreamExt as _};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::api::{ConnectionPool, GROUP};
pub use leader::LeaseSettings;
pub use reconcile::{PodStatusSettings, Settings, FIELD_MANAGER};

/// How long a pool's reconciliation waits for more events about it: one apply of its
/// children sets off a burst of watch events, which then start one reconciliation, not several
/// that each find the watch behind their last apply and apply again.
const DEBOUNCE: std::time::Duration = std::time::Duration::from_millis(500);

/// Label every child carries, which narrows the watches on children to Weir's own.
const MANAGED_BY: &str = "app.kubernetes.io/managed-by=weir-operator";

/// How the operator process runs.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Where `/metrics` and `/healthz` are served.
    pub metrics_address: SocketAddr,
    /// The Lease to compete for; `None` runs the controller unconditionally (one replica
    /// only).
    pub lease: Option<LeaseSettings>,
    /// This process's name in Events.
    pub instance: String,
    /// Timing of reconciliation.
    pub reconcile: Settings,
    /// Watch only this namespace (`None`: the whole cluster). A namespaced install's Role
    /// permits nothing else.
    pub watch_namespace: Option<String>,
    /// Pools reconciled at once (0: no bound).
    pub concurrent_reconciles: u16,
}

/// An API handle for `K` in the watched scope.
fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
    <K as kube::Resource>::DynamicType: Default,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Why the operator could not run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The metrics registry refused a metric.
    #[error(transparent)]
    Metrics(#[from] metrics::MetricsError),
    /// The metrics address cannot be bound.
    #[error("cannot serve metrics on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The lease settings are unusable.
    #[error(transparent)]
    Lease(#[from] leader::InvalidLease),
}

/// Runs the operator until SIGTERM or Ctrl-C: serves metrics, competes for leadership
/// (when configured) and reconciles while leading.
pub async fn run(client: Client, settings: RunSettings) -> Result<(), RunError> {
    if let Some(lease) = &settings.lease {
        lease.check()?;
    }
    let metrics = metrics::Metrics::new()?;
    let (address, server) = metrics::serve(settings.metrics_address, metrics.clone())
        .await
        .map_err(|source| RunError::Bind {
            address: settings.metrics_address,
            source,
        })?;
    info!(%address, "serving /metrics and /healthz");

    let (stop_tx, stop) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        stop_tx.send_replace(true);
    });

    match settings.lease.clone() {
        None => {
            metrics.set_leader(true);
            run_controller(client, &settings, metrics.clone(), stop).await;
        }
        Some(lease) => lead(client, lease, &settings, metrics.clone(), stop).await?,
    }
    metrics.set_leader(false);
    server.abort();
    Ok(())
}

/// Reconciles only while this replica holds the lease; steps down and releases it on
/// shutdown.
async fn lead(
    client: Client,
    lease: LeaseSettings,
    settings: &RunSettings,
    metrics: metrics::Metrics,
    stop: watch::Receiver<bool>,
) -> Result<(), RunError> {
    info!(lease = %lease.name, namespace = %lease.namespace, identity = %lease.identity, "competing for leadership");
    let election = leader::Election::start(client.clone(), lease)?;
    let mut leading = election.leading();
    let mut stopping = stop.clone();
    loop {
        let became_leader = tokio::select! {
            _ = stopping.wait_for(|s| *s) => false,
            led = leading.wait_for(|l| *l) => led.is_ok(),
        };
        if !became_leader {
            break;
        }
        info!("leading: starting the controller");
        metrics.set_leader(true);
        let finished = tokio::select! {
            () = run_controller(client.clone(), settings, metrics.clone(), stop.clone()) => true,
            _ = leading.wait_for(|l| !*l) => false,
        };
        metrics.set_leader(false);
        if finished {
            break;
        }
        warn!("lost leadership: controller stopped, standing by");
    }
    election.resign().await;
    Ok(())
}

/// Builds the Controller and runs it until `stop` turns true (letting running
/// reconciliations finish) or the future is dropped (leadership lost).
async fn run_controller(
    client: Client,
    settings: &RunSettings,
    metrics: metrics::Metrics,
    mut stop: watch::Receiver<bool>,
) {
    let ns = settings.watch_namespace.as_deref();
    let pools: Api<ConnectionPool> = scoped(&client, ns);
    let controller = Controller::new(pools.clone(), watcher::Config::default()).with_config(
        controller::Config::default()
            .debounce(DEBOUNCE)
            .concurrency(settings.concurrent_reconciles),
    );
    let store = controller.store();
    let reporter = Reporter {
        controller: "weir-operator".to_owned(),
        instance: Some(settings.instance.clone()),
    };
    let (pods, pod_watch) = watch_pooler_pods(&client, ns, settings.reconcile.pod_status.is_some());
    let (deployments_cache, deployments) = reflector::store();
    let (config_maps_cache, config_maps) = reflector::store();
    let (slices_cache, slices) = reflector::store();
    let (secrets_cache, secrets) = reflector::store();
    let ctx = Arc::new(reconcile::Context::new(
        client.clone(),
        reporter,
        store.clone(),
        reconcile::Caches {
            deployments: deployments_cache,
            config_maps: config_maps_cache,
            slices: slices_cache,
            secrets: reconcile::SecretCache::new(secrets_cache),
        },
        pods,
        metrics,
        settings.reconcile.clone(),
    ));
    let poll = settings
        .reconcile
        .pod_status
        .as_ref()
        .map(|p| tokio::spawn(poll_usage(ctx.clone(), p.interval, p.read.concurrency)));
    let children = watcher::Config::default().labels(MANAGED_BY);
    let secret_store = store.clone();
    let read_store = store.clone();
    let slice_store = store.clone();
    let pool_store = store;
    let claim_changes = claims::ClaimChanges::default();
    let settling = Arc::new(claims::Settling::default());
    let settled = settling.clone().pools(pool_store.clone());
    let live = ctx.live();
    let owned = |secret: &Secret| !pool_owners(secret).is_empty();
    controller
        .watches_stream(
            child_events(scoped(&client, ns), &children, None, &live, every),
            owners::<ServiceAccount>,
        )
        .watches_stream(
            child_events(
                scoped(&client, ns),
                &children,
                Some((config_maps, Box::new(trim_config_map))),
                &live,
                every,
            ),
            owners::<ConfigMap>,
        )
        .watches_stream(
            child_events(scoped(&client, ns), &children, None, &live, every),
            owners::<Service>,
        )
        .watches_stream(
            child_events(
                scoped(&client, ns),
                &children,
                Some((deployments, Box::new(trim_deployment))),
                &live,
                every,
            ),
            owners::<Deployment>,
        )
        .watches_stream(
            child_events(scoped(&client, ns), &children, None, &live, every),
            owners::<PodDisruptionBudget>,
        )
        .watches_stream(
            child_events(scoped(&client, ns), &children, None, &live, every),
            owners::<NetworkPolicy>,
        )
        // The owned Secrets and those the pools read: one watch serves both; only the
        // pools' own Secrets are applied and need a version.
        .watches_stream(
            child_events(
                scoped(&client, ns),
                &watcher::Config::default(),
                Some((secrets, Box::new(move |s| trim_secret(s, &read_store)))),
                &live,
                owned,
            ),
            move |secret| secret_triggers(&secret, &secret_store),
        )
        // Pods coming and going change the pods' [peers] and the pool's readiness.
        .watches_stream(
            child_events(
                scoped(&client, ns),
                &children,
                Some((slices, Box::new(trim_slice))),
                &live,
                |_| false,
            ),
            move |slice| slice_triggers(&slice, &slice_store),
        )
        // A pool's claim shrinking or disappearing resizes the others on its database at
        // once; one growing is told to them once the database's claims settle.
        .watches(pools, watcher::Config::default(), move |pool| {
            let resize = claim_changes.databases_to_resize(&pool);
            let at = std::time::Instant::now();
            resize
                .settled
                .into_iter()
                .for_each(|database| settling.moved(database, at));
            if resize.now.is_empty() {
                return Vec::new();
            }
            let pools = pool_store.state();
            resize
                .now
                .iter()
                .flat_map(|database| claims::sharing_database(&pool, database, &pools))
                .collect()
        })
        .reconcile_on(settled)
        .graceful_shutdown_on(async move {
            let _ = stop.wait_for(|s| *s).await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((pool, _)) => {
                    tracing::debug!(pool = %pool.name, namespace = ?pool.namespace, "reconciled");
                }
                Err(e) => tracing::debug!(error = %e, "reconciliation did not complete"),
            }
        })
        .await;
    if let Some(task) = poll {
        task.abort();
    }
    if let Some(task) = pod_watch {
        task.abort();
    }
}

/// A store of the pooler pods (the children's label, running or not), kept by a watch
/// task; empty and unwatched when the operator does not read the pods' status.
fn watch_pooler_pods(
    client: &Client,
    namespace: Option<&str>,
    enabled: bool,
) -> (Store<Pod>, Option<tokio::task::JoinHandle<()>>) {
    let (store, writer) = reflector::store::<Pod>();
    if !enabled {
        return (store, None);
    }
    let config = watcher::Config::default().labels(&format!("{MANAGED_BY},{POOLER_PODS}"));
    let stream = watcher(scoped::<Pod>(client, namespace), config)
        .default_backoff()
        // Only names, labels, phase and IP are read: the rest is not kept.
        .modify(|pod| {
            pod.managed_fields_mut().clear();
            pod.spec = None;
            if let Some(status) = pod.status.as_mut() {
                *status = k8s_openapi::api::core::v1::PodStatus {
                    phase: status.phase.take(),
                    pod_ip: status.pod_ip.take(),
                    ..Default::default()
                };
            }
        })
        .reflect(writer);
    let task = tokio::spawn(async move {
        stream
            .for_each(|event| async move {
                if let Err(e) = event {
                    warn!(error = %e, "watching pooler pods failed; retrying");
                }
            })
            .await;
    });
    (store, Some(task))
}

/// Label of the pooler pods among the children.
const POOLER_PODS: &str = "app.kubernetes.io/component=pooler";

/// Every `interval`, reads the pods of every pool (`concurrency` pools at once; the reader
/// bounds the requests in flight) and writes what changed.
async fn poll_usage(
    ctx: Arc<reconcile::Context>,
    interval: std::time::Duration,
    concurrency: usize,
) {
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        ctx.forget_deleted();
        futures::stream::iter(ctx.pools())
            .for_each_concurrent(concurrency.max(1), |pool| {
                let ctx = ctx.clone();
                async move { ctx.refresh_usage(&pool).await }
            })
            .await;
    }
}

/// The existing pool an EndpointSlice concerns: the one whose Service it serves (the pool
/// turns Ready with its endpoints, and its pods' `[peers]` follow them); the slices carry
/// the Service's name as a label.
fn slice_triggers(
    slice: &EndpointSlice,
    pools: &Store<ConnectionPool>,
) -> Option<ObjectRef<ConnectionPool>> {
    let service = slice.labels().get("kubernetes.io/service-name")?;
    let pool = ObjectRef::new(service).within(&slice.namespace()?);
    pools.get(&pool).is_some().then_some(pool)
}

/// The pools a Secret change concerns: its owner (for the rendered Secrets) and every pool
/// in its namespace that reads it.
/// A watch's cache and what it keeps of each object.
type Cache<K> = (reflector::store::Writer<K>, Box<dyn FnMut(&mut K) + Send>);

/// The objects a watch of `api` delivers, each event recorded in `live` for the objects
/// `relevant` picks and, trimmed to what reconciliations read, in `cache` when there is one.
fn child_events<K>(
    api: Api<K>,
    config: &watcher::Config,
    mut cache: Option<Cache<K>>,
    live: &Arc<live::Versions>,
    relevant: impl Fn(&K) -> bool + Send + 'static,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> + Send + 'static
where
    K: Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    let live = live.clone();
    watcher(api, config.clone())
        .default_backoff()
        .map_ok(move |event| {
            if let Some((cache, trim)) = cache.as_mut() {
                cache.apply_watcher_event(&event.clone().modify(trim));
            }
            live.observe(&event, &relevant);
            event
        })
        .touched_objects()
}

/// What a reconciliation reads of a cached ConfigMap: all but the field managers other than
/// this operator's applies, which keep only their time.
fn trim_config_map(config_map: &mut ConfigMap) {
    if let Some(managers) = config_map.metadata.managed_fields.as_mut() {
        managers.retain(|m| {
            m.manager.as_deref() == Some(FIELD_MANAGER) && m.operation.as_deref() == Some("Apply")
        });
        managers.iter_mut().for_each(|m| m.fields_v1 = None);
    }
}

/// What a reconciliation reads of a cached Deployment: its metadata, replicas and status;
/// not the field managers nor the pod template.
fn trim_deployment(deployment: &mut Deployment) {
    deployment.metadata.managed_fields = None;
    if let Some(spec) = deployment.spec.as_mut() {
        spec.template = Default::default();
    }
}

/// What a reconciliation reads of a cached Secret: the data of those some pool reads (its
/// credentials, TLS keys), only the metadata of the others, marked as such.
fn trim_secret(secret: &mut Secret, pools: &Store<ConnectionPool>) {
    secret.metadata.managed_fields = None;
    let namespace = secret.namespace();
    let name = secret.name_any();
    let read = pools
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace)
        .any(|p| reconcile::referenced_secrets(&p.spec).contains(&name));
    if !read {
        reconcile::SecretCache::leave_data_out(secret);
    }
}

/// What a reconciliation reads of a cached EndpointSlice: all but its field managers.
fn trim_slice(slice: &mut EndpointSlice) {
    slice.metadata.managed_fields = None;
}

/// A watch mapper to the pools owning a child (what `Controller::owns` triggers).
fn owners<K: Resource<DynamicType = ()>>(child: K) -> Vec<ObjectRef<ConnectionPool>> {
    pool_owners(&child)
}

/// Records every object of a child watch.
fn every<K>(_: &K) -> bool {
    true
}

/// The pools among `object`'s owners.
fn pool_owners<K: Resource<DynamicType = ()>>(object: &K) -> Vec<ObjectRef<ConnectionPool>> {
    let namespace = object.namespace();
    object
        .owner_references()
        .iter()
        .filter(|o| {
            o.kind == ConnectionPool::kind(&()) && o.api_version.split('/').next() == Some(GROUP)
        })
        .map(|o| {
            let r = ObjectRef::new(&o.name);
            match &namespace {
                Some(ns) => r.within(ns),
                None => r,
            }
        })
        .collect()
}

fn secret_triggers(
    secret: &Secret,
    pools: &Store<ConnectionPool>,
) -> Vec<ObjectRef<ConnectionPool>> {
    let namespace = secret.namespace();
    let name = secret.name_any();
    let mut triggers = pool_owners(secret);
    triggers.extend(
        pools
            .state()
            .iter()
            .filter(|p| p.namespace() == namespace)
            .filter(|p| reconcile::referenced_secrets(&p.spec).contains(&name))
            .map(|p| ObjectRef::from(p.as_ref())),
    );
    triggers.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    triggers.dedup();
    triggers
}

/// Resolves on SIGTERM (how Kubernetes stops a pod) or Ctrl-C.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the operator");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use kube::runtime::reflector;

    fn pool(namespace: &str, name: &str, users: &str) -> ConnectionPool {
        let yaml = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: {name}\n  \
             namespace: {namespace}\nspec:\n  database:\n    host: db\n    dbname: app\n    \
             credentialsSecret: {{name: db-creds}}\n    maxConnections: 100\n{users}"
        );
        crate::api::from_yaml(&yaml).expect("valid pool")
    }

    #[test]
    fn secrets_wake_their_owner_and_their_readers() {
        let (store, mut writer) = reflector::store::<ConnectionPool>();
        for p in [
            pool("shop", "a", ""),
            pool(
                "shop",
                "b",
                "  users:\n    - {user: x, credentialsSecret: {name: x-creds}}\n",
            ),
            pool("other", "c", ""),
        ] {
            writer.apply_watcher_event(&watcher::Event::Apply(p));
        }
        let names = |secret: &Secret| -> Vec<String> {
            secret_triggers(secret, &store)
                .into_iter()
                .map(|r| format!("{}/{}", r.namespace.unwrap_or_default(), r.name))
                .collect()
        };
        let mut secret = Secret::default();
        secret.metadata.namespace = Some("shop".into());
        secret.metadata.name = Some("db-creds".into());
        assert_eq!(names(&secret), ["shop/a", "shop/b"]);
        secret.metadata.name = Some("x-creds".into());
        assert_eq!(names(&secret), ["shop/b"]);

        secret.metadata.name = Some("a-auth".into());
        secret.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "weir.dev/v1alpha1".into(),
            kind: "ConnectionPool".into(),
            name: "a".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        assert_eq!(names(&secret), ["shop/a"]);
        secret.metadata.owner_references = Some(vec![OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "a".into(),
            uid: "u".into(),
            controller: Some(true),
            block_owner_deletion: None,
        }]);
        assert!(names(&secret).is_empty());
    }

    #[test]
    fn a_slice_wakes_the_pool_of_its_service() {
        let (store, mut writer) = reflector::store::<ConnectionPool>();
        writer.apply_watcher_event(&watcher::Event::Apply(pool("shop", "orders", "")));
        let slice = |namespace: &str, service: &str| {
            let mut slice = EndpointSlice::default();
            slice.metadata.namespace = Some(namespace.into());
            slice.metadata.name = Some(format!("{service}-x7k2p"));
            slice.metadata.labels =
                Some([("kubernetes.io/service-name".to_owned(), service.to_owned())].into());
            slice
        };
        let woken = slice_triggers(&slice("shop", "orders"), &store).expect("its pool");
        assert_eq!(
            (woken.namespace.as_deref(), woken.name.as_str()),
            (Some("shop"), "orders")
        );
        // Another namespace's, an unknown Service's, and an earlier version's peers Service's
        // slices wake nobody.
        assert!(slice_triggers(&slice("other", "orders"), &store).is_none());
        assert!(slice_triggers(&slice("shop", "orders-ro"), &store).is_none());
        assert!(slice_triggers(&slice("shop", "orders-peers"), &store).is_none());
        assert!(slice_triggers(&EndpointSlice::default(), &store).is_none());
    }
}
