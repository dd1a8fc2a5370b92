//! One reconciliation of one ConnectionPool: observe, render, apply in a budget-safe order,
//! report.
//!
//! 1. Observe: the referenced Secrets, the database's limits (for `maxConnections: auto`),
//!    and what the other pools on the same database claim.
//! 2. Render the children ([`crate::render`]). If that fails (budget infeasible, Secret
//!    missing, database unreachable), nothing is applied: the running pods keep their
//!    last good configuration, and the status says why nothing changed.
//! 3. Apply the children with server-side apply under one field manager, forcing
//!    ownership, which also puts back whatever was edited or deleted; a child the last apply
//!    left unchanged is skipped ([`super::live`]). Replicas and pool sizes change in the
//!    order [`super::resize`] decides.
//! 4. Write the status (conditions, replica counts, budget) when it changed, and publish
//!    Events for decisions.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{FutureExt as _, TryFutureExt as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use k8s_openapi::NamespaceResourceScope;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tracing::{debug, info, warn, Instrument as _};
use weir_pooler::config::{file_digest, Config};

use super::claims::{self, DatabaseKey, Ledger};
use super::conditions::{self, reason, Status, Verdict};
use super::database::{self, Target};
use super::live::Versions;
use super::metrics::Metrics;
use super::monitoring::{self, Discovery};
use super::pod_status;
use super::resize::{self, Desired, Live, PodsConfig};
use super::rollout::{self, Observation};
use super::tls::ProbeTls;
use super::usage::{self, NearBudgetSettings, PodReport};
use crate::api::condition::{
    BUDGET_FEASIBLE, FITS, INVALID_SPEC, MONITORING, NEAR_BUDGET, PROGRESSING, READ_ONLY_READY,
};
use crate::api::{
    Backend, BudgetStatus, CaSource, ConnectionPool, ConnectionPoolSpec, ConnectionPoolStatus,
    MaxConnections, SslMode, UsageStatus,
};
use crate::render::config::CONFIG_FILE;
use crate::render::{self, names, selector_string, Child, Observed, RenderError, Rendered};
use crate::sizing::{self, SizingError};

mod read_only;

/// The one field manager every object and status is applied under.
pub const FIELD_MANAGER: &str = "weir-operator";

/// Timing of the reconciler.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// How long running pods get to reload a changed ConfigMap before pods are added:
    /// the kubelet's ConfigMap refresh plus the pooler's reload.
    pub settle: Duration,
    /// Bound on asking the database for its limits.
    pub database_timeout: Duration,
    /// How long the database's answer is reused.
    pub database_ttl: Duration,
    /// How often a pool is reconciled without any change (picks up a new
    /// `max_connections`).
    pub resync: Duration,
    /// How long API discovery's answer (is the PodMonitor CRD installed?) is reused.
    pub discovery_ttl: Duration,
    /// The namespace the operator runs in, if known (the NetworkPolicy's default
    /// operator peer).
    pub operator_namespace: Option<String>,
    /// Reading the pooler pods' `/status`; `None` when the operator does not (it then
    /// reports no usage, and only `settle` guards a scale-up).
    pub pod_status: Option<PodStatusSettings>,
}

/// How the pods' `/status` is read and judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodStatusSettings {
    /// Port, timeout and requests in flight.
    pub read: pod_status::ReadSettings,
    /// How often every pool's pods are read.
    pub interval: Duration,
    /// When NearBudget turns true.
    pub near_budget: NearBudgetSettings,
}

/// What the operator remembers of a pool between reads of its pods.
#[derive(Debug, Clone, Default)]
struct Watched {
    /// The digest of the ConfigMap text this operator last left in place.
    config_digest: Option<String>,
    /// Since when server connections have been at or above the NearBudget threshold.
    above_since: Option<Timestamp>,
    /// The status this operator last wrote, and the pool's resource version it wrote over.
    written: Option<Written>,
}

/// A status write the pool cache may not have caught up with yet.
#[derive(Debug, Clone, PartialEq)]
struct Written {
    over_version: Option<String>,
    status: ConnectionPoolStatus,
}

/// The pool's status as last known: the one this operator wrote while the cache still holds
/// the version it wrote over (a stale cache would otherwise re-send the status and its Events).
fn last_known_status(pool: &ConnectionPool, written: Option<&Written>) -> ConnectionPoolStatus {
    match written {
        Some(w) if w.over_version.is_some() && w.over_version == pool.metadata.resource_version => {
            w.status.clone()
        }
        _ => pool.status.clone().unwrap_or_default(),
    }
}

/// The watches' caches of the children a reconciliation reads.
pub struct Caches {
    /// The pools' Deployments.
    pub deployments: Store<Deployment>,
    /// The pools' ConfigMaps.
    pub config_maps: Store<ConfigMap>,
    /// The EndpointSlices of the pools' Services.
    pub slices: Store<EndpointSlice>,
    /// The Secrets in the watched namespaces.
    pub secrets: SecretCache,
}

/// The Secrets in the watched namespaces as their watch delivers them, with data only for
/// those a pool read when the Secret last changed, and the Secrets read since then because a
/// pool started to read them.
pub struct SecretCache {
    watched: Store<Secret>,
    /// Secrets read from the API server because the watched copy has no data, each valid
    /// while the watched copy keeps its resource version.
    read: Mutex<HashMap<ObjectRef<Secret>, Arc<Secret>>>,
}

/// What the cache knows of one Secret.
enum CachedSecret {
    /// It does not exist.
    Absent,
    /// It, data included.
    Present(Arc<Secret>),
    /// Nothing to rely on: read it.
    Unknown,
}

/// The annotation on a watched copy whose data was left out.
const DATA_LEFT_OUT: &str = "weir.dev/cached-without-data";

impl SecretCache {
    /// A cache over the Secret watch's store.
    pub fn new(watched: Store<Secret>) -> SecretCache {
        SecretCache {
            watched,
            read: Mutex::new(HashMap::new()),
        }
    }

    /// Drops the data of a watched copy no pool reads, and marks it.
    pub fn leave_data_out(secret: &mut Secret) {
        secret.data = None;
        secret.string_data = None;
        secret
            .annotations_mut()
            .insert(DATA_LEFT_OUT.to_owned(), "true".to_owned());
    }

    fn lookup(&self, key: &ObjectRef<Secret>) -> CachedSecret {
        if !complete(&self.watched) {
            return CachedSecret::Unknown;
        }
        let Some(watched) = self.watched.get(key) else {
            return CachedSecret::Absent;
        };
        if !watched.annotations().contains_key(DATA_LEFT_OUT) {
            return CachedSecret::Present(watched);
        }
        let mut read = self.read.lock().unwrap_or_else(PoisonError::into_inner);
        match read.get(key) {
            Some(r) if r.resource_version() == watched.resource_version() => {
                CachedSecret::Present(r.clone())
            }
            Some(_) => {
                read.remove(key);
                CachedSecret::Unknown
            }
            None => CachedSecret::Unknown,
        }
    }

    /// Forgets the Secrets read whose watched copy changed or is gone: their data is not
    /// kept past its use.
    fn forget_stale(&self) {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|key, read| {
                self.watched
                    .get(key)
                    .is_some_and(|w| w.resource_version() == read.resource_version())
            });
    }

    fn remember(&self, key: ObjectRef<Secret>, secret: Secret) {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, Arc::new(secret));
    }
}

/// Whether `store` holds a complete list yet.
fn complete<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> bool {
    store
        .wait_until_ready()
        .now_or_never()
        .is_some_and(|r| r.is_ok())
}

/// Everything a reconciliation needs besides the pool.
pub struct Context {
    caches: Caches,
    client: Client,
    reporter: Reporter,
    pools: Store<ConnectionPool>,
    ledger: Ledger,
    databases: database::Cache,
    discovery: Discovery,
    metrics: Metrics,
    settings: Settings,
    failures: Mutex<HashMap<ObjectRef<ConnectionPool>, u32>>,
    pods: Store<Pod>,
    reader: Option<pod_status::Reader>,
    watched: Mutex<HashMap<ObjectRef<ConnectionPool>, Watched>>,
    live: Arc<Versions>,
}

impl Context {
    /// A context reading pools from `pools`, children from `caches` and pooler pods from
    /// `pods`, publishing Events as `reporter`.
    pub fn new(
        client: Client,
        reporter: Reporter,
        pools: Store<ConnectionPool>,
        caches: Caches,
        pods: Store<Pod>,
        metrics: Metrics,
        settings: Settings,
    ) -> Context {
        Context {
            caches,
            reader: settings
                .pod_status
                .as_ref()
                .map(|p| pod_status::Reader::new(p.read.clone())),
            pods,
            watched: Mutex::new(HashMap::new()),
            live: Arc::default(),
            databases: database::Cache::new(settings.database_ttl),
            discovery: Discovery::new(settings.discovery_ttl),
            client,
            reporter,
            pools,
            ledger: Ledger::default(),
            metrics,
            settings,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// The children's versions, which the child watches feed.
    pub fn live(&self) -> Arc<Versions> {
        self.live.clone()
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ConnectionPool>, u32>> {
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn watched(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<ConnectionPool>, Watched>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The `/status` of the pool's running pods, or why the pods are not known yet; `None`
    /// when the operator does not read it.
    async fn read_pods(
        &self,
        namespace: &str,
        pool: &str,
    ) -> Option<Result<Vec<PodReport>, String>> {
        let reader = self.reader.as_ref()?;
        // Before the pod watch has listed once, no pods would read as every pod current.
        let listed = tokio::time::timeout(POD_LIST_WAIT, self.pods.wait_until_ready()).await;
        if !matches!(listed, Ok(Ok(()))) {
            return Some(Err("the pooler pods have not been listed yet".to_owned()));
        }
        let targets = pod_status::running_pods(&self.pods, namespace, pool);
        Some(Ok(reader.read_all(&targets).await))
    }

    /// `status.usage` and the NearBudget verdict from the pods' reports, moving the pool's
    /// time above the threshold along.
    fn judge_usage(
        &self,
        key: &ObjectRef<ConnectionPool>,
        reports: &[PodReport],
        budget: &BudgetStatus,
    ) -> Option<(UsageStatus, Verdict)> {
        let settings = self.settings.pod_status.as_ref()?;
        let pool_budget = u64::try_from(budget.pool).unwrap_or(0);
        let per_pod = u64::try_from(budget.per_pod).unwrap_or(0);
        let now = Timestamp::now();
        let mut watched = self.watched();
        let entry = watched.entry(key.clone()).or_default();
        let digest = entry.config_digest.clone().unwrap_or_default();
        let usage = usage::summarize(reports, pool_budget, per_pod, &digest);
        entry.above_since = usage::above_since(
            entry.above_since,
            &usage::totals(reports),
            pool_budget,
            &settings.near_budget,
            now,
        );
        let verdict = usage::near_budget(&usage, entry.above_since, &settings.near_budget, now);
        Some((usage, verdict))
    }

    /// Reads the pool's pods and writes `status.usage` and NearBudget when they changed: the
    /// periodic poll, between reconciliations. Pools this operator has not reconciled yet
    /// are left to their first reconciliation.
    pub async fn refresh_usage(&self, pool: &ConnectionPool) {
        let key = ObjectRef::from(pool);
        let (Some(namespace), Some(old)) = (pool.namespace(), pool.status.as_ref()) else {
            return;
        };
        let known = self
            .watched()
            .get(&key)
            .is_some_and(|w| w.config_digest.is_some());
        let Some(budget) = old.budget.as_ref().filter(|_| known) else {
            return;
        };
        if pool.metadata.deletion_timestamp.is_some() {
            return;
        }
        let name = pool.name_any();
        let Some(Ok(reports)) = self.read_pods(&namespace, &name).await else {
            return;
        };
        let Some((usage, verdict)) = self.judge_usage(&key, &reports, budget) else {
            return;
        };
        let mut status = old.clone();
        status.usage = Some(usage);
        status.conditions = conditions::merge(
            &old.conditions,
            &[verdict],
            pool.metadata.generation,
            &now(),
        );
        if status == *old {
            return;
        }
        // Only over the status this poll started from: a reconciliation in between wins.
        match write_status(self, pool, &namespace, &status, pool.resource_version()).await {
            Ok(()) => publish_events(self, pool, old, &status).await,
            Err(e) => debug!(pool = %name, namespace = %namespace, error = %e, "usage not written"),
        }
    }

    /// Forgets pools that no longer exist.
    pub fn forget_deleted(&self) {
        let pools = self.pools.state();
        self.watched()
            .retain(|key, _| pools.iter().any(|p| ObjectRef::from(p.as_ref()) == *key));
    }

    /// The pools to poll.
    pub fn pools(&self) -> Vec<Arc<ConnectionPool>> {
        self.pools.state()
    }
}

/// How soon a read-only pool that is not ready yet is looked at again.
const READ_ONLY_RECHECK: Duration = Duration::from_secs(5);

/// How soon a pool that is not ready yet is looked at again without any event.
const NOT_READY_RECHECK: Duration = Duration::from_secs(30);

/// How long a reconciliation waits for the pod watch's first list.
const POD_LIST_WAIT: Duration = Duration::from_secs(10);

/// Now, to the second (as the API server keeps it).
fn now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or_default())
}

/// Applies the pool's whole status under [`FIELD_MANAGER`]; with `resource_version`, only
/// if the pool is still at that version.
async fn write_status(
    ctx: &Context,
    pool: &ConnectionPool,
    namespace: &str,
    status: &ConnectionPoolStatus,
    resource_version: Option<String>,
) -> Result<(), Error> {
    let name = pool.name_any();
    let api: Api<ConnectionPool> = Api::namespaced(ctx.client.clone(), namespace);
    let mut patch = serde_json::json!({
        "apiVersion": ConnectionPool::api_version(&()),
        "kind": ConnectionPool::kind(&()),
        "status": status,
    });
    if let Some(version) = resource_version {
        patch["metadata"] = serde_json::json!({ "resourceVersion": version });
    }
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(kube_error::<ConnectionPool>("update the status of", &name))?;
    debug!(pool = %name, namespace = %namespace, "status updated");
    Ok(())
}

/// What differs between two statuses, for the debug log: the names of the fields, a changed
/// condition as `Type: OldReason -> NewReason` (its message alone changing shows the same
/// reason twice).
fn status_changes(old: &ConnectionPoolStatus, new: &ConnectionPoolStatus) -> String {
    let (Ok(serde_json::Value::Object(a)), Ok(serde_json::Value::Object(b))) =
        (serde_json::to_value(old), serde_json::to_value(new))
    else {
        return String::new();
    };
    let fields: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
    let mut changes = Vec::new();
    for field in fields.into_iter().filter(|f| a.get(*f) != b.get(*f)) {
        if field != "conditions" {
            changes.push(field.clone());
            continue;
        }
        for c in &new.conditions {
            match old.conditions.iter().find(|o| o.type_ == c.type_) {
                Some(o) if o == c => {}
                Some(o) => changes.push(format!("{}: {} -> {}", c.type_, o.reason, c.reason)),
                None => changes.push(format!("{}: {}", c.type_, c.reason)),
            }
        }
        for o in &old.conditions {
            if !new.conditions.iter().any(|c| c.type_ == o.type_) {
                changes.push(format!("{}: gone", o.type_));
            }
        }
    }
    changes.join(", ")
}

/// Why a reconciliation failed; it is retried with [`backoff`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pool lacks metadata every child needs.
    #[error("the ConnectionPool has no metadata.{0}")]
    MissingMetadata(&'static str),
    /// A call to the API server failed.
    #[error("cannot {verb} {kind} {name:?}: {source}")]
    Kube {
        /// What was attempted.
        verb: &'static str,
        /// The object's kind.
        kind: String,
        /// The object's name.
        name: String,
        /// The client's error.
        #[source]
        source: kube::Error,
    },
    /// `maxConnections: auto` and the database's limits cannot be read (also reported in
    /// the status; retried with backoff).
    #[error("{0}")]
    Database(String),
    /// The operator broke one of its own invariants (a bug to report).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

impl Error {
    /// A short label for the errors metric.
    pub fn cause(&self) -> &'static str {
        match self {
            Error::MissingMetadata(_) => "metadata",
            Error::Kube { .. } => "kubernetes_api",
            Error::Database(_) => "database",
            Error::Internal(_) => "internal",
        }
    }
}

fn kube_error<'a, K: Resource<DynamicType = ()>>(
    verb: &'static str,
    name: &'a str,
) -> impl FnOnce(kube::Error) -> Error + 'a {
    move |source| Error::Kube {
        verb,
        kind: K::kind(&()).into_owned(),
        name: name.to_owned(),
        source,
    }
}

/// The retry delay after the `attempt`-th consecutive failure: 1 s doubling up to 5 min.
pub fn backoff(attempt: u32) -> Duration {
    let exponent = attempt.clamp(1, 10) - 1;
    Duration::from_secs(1 << exponent).min(Duration::from_secs(300))
}

/// Reconciles one pool; the entry point the kube-runtime Controller calls.
pub async fn reconcile(pool: Arc<ConnectionPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = Instant::now();
    // Every log line of one reconciliation carries the object and a reconcile id.
    let span = tracing::info_span!(
        "reconcile",
        pool = %pool.name_any(),
        namespace = pool.namespace().as_deref().unwrap_or_default(),
        generation = pool.metadata.generation.unwrap_or_default(),
        reconcile_id = RECONCILE_IDS.fetch_add(1, Ordering::Relaxed),
    );
    let result = reconcile_pool(&pool, &ctx).instrument(span).await;
    ctx.metrics
        .reconciled(started.elapsed(), result.as_ref().err().map(Error::cause));
    if result.is_ok() {
        ctx.failures().remove(&ObjectRef::from(pool.as_ref()));
    }
    result
}

/// Numbers reconciliations in this process, to tell one's log lines from another's.
static RECONCILE_IDS: AtomicU64 = AtomicU64::new(1);

/// What the Controller does after a failed reconciliation: retry with backoff.
pub fn error_policy(pool: Arc<ConnectionPool>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = {
        let mut failures = ctx.failures();
        let count = failures.entry(ObjectRef::from(pool.as_ref())).or_insert(0);
        *count = count.saturating_add(1);
        *count
    };
    let delay = backoff(attempt);
    warn!(
        pool = %pool.name_any(),
        namespace = %pool.namespace().unwrap_or_default(),
        error = %error,
        attempt,
        retry_in = ?delay,
        "reconciliation failed"
    );
    Action::requeue(delay)
}

/// Why the children were not applied.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Blocker {
    reason: String,
    message: String,
}

/// What applying the children left behind.
struct Applied {
    deployment: Deployment,
    /// The Progressing reason and message of what is held back, and when to look again.
    hold: Option<(&'static str, String, Duration)>,
}

async fn reconcile_pool(pool: &ConnectionPool, ctx: &Context) -> Result<Action, Error> {
    // The enclosing span of kube-runtime names why this reconciliation runs.
    tracing::debug!("reconciling");
    let name = pool.name_any();
    let namespace = pool
        .namespace()
        .ok_or(Error::MissingMetadata("namespace"))?;
    if pool.metadata.deletion_timestamp.is_some() {
        // The garbage collector removes the children through their owner references; the
        // cluster-scoped token-review binding has none and goes here.
        super::token_review::release(&ctx.client, pool, &namespace).await?;
        ctx.watched().remove(&ObjectRef::from(pool));
        return Ok(Action::await_change());
    }
    let started = Instant::now();
    let secrets = read_secrets(ctx, &namespace, &pool.spec).await?;
    let config_maps = read_config_maps(ctx, &namespace, &pool.spec).await?;
    let database = observe_database(ctx, pool, &secrets, &config_maps).await;
    let max_clients = observe_max_clients(ctx, pool, &secrets).await;
    let (pod_ips, peers_in_force) = observe_peers(ctx, &namespace, &name).await?;
    let api_server = observe_api_server(ctx, &pool.spec).await;
    let key = ObjectRef::from(pool);
    let old = last_known_status(
        pool,
        ctx.watched().get(&key).and_then(|w| w.written.as_ref()),
    );

    // Pools on one database are sized one at a time, each seeing the others' claims: only
    // the sizing is, not the reads before nor the writes after it.
    let observed_at = Instant::now();
    let sizing_turn = ctx.ledger.lock(&DatabaseKey::of(pool)).await;
    let sized_at = Instant::now();
    let pools = ctx.pools.state();
    ctx.ledger.retain_existing(&pools);
    ctx.live
        .retain_owners(&pools.iter().filter_map(|p| p.uid()).collect());
    ctx.caches.secrets.forget_stale();
    ctx.metrics.retain_budgets(
        &pools
            .iter()
            .filter_map(|p| Some((p.namespace()?, p.name_any())))
            .collect(),
    );
    let observed = Observed {
        database: database.as_ref().ok().copied().flatten(),
        max_clients: max_clients.as_ref().ok().copied().flatten(),
        others_claimed: ctx.ledger.others_claimed(pool, &pools),
        secrets,
        config_maps,
        pod_ips,
        peers_in_force,
        operator_namespace: ctx.settings.operator_namespace.clone(),
        api_server,
        standbys: BTreeMap::new(),
    };
    let database_problem = database.err().or(max_clients.err());
    let (budget, derivation) = budget_verdict(pool, &observed, database_problem.as_ref());
    if let Some(derivation) = &derivation {
        ctx.metrics.set_budget(&namespace, &name, derivation);
    }
    let rendering = render::render(pool, &observed);
    let old_claim = old.budget.as_ref().map(|b| b.pool);
    let new_claim = match &rendering {
        Ok(rendered) => rendered.status(pool).budget.map(|b| b.pool),
        Err(_) => old_claim,
    };
    // Until the status is written, the others size against the larger of the two claims.
    ctx.ledger
        .record(pool, claims::while_applying(old_claim, new_claim));
    drop(sizing_turn);
    let reports = ctx.read_pods(&namespace, &name).await;

    // Only a spec change can stop asking for an optional child, which is then deleted
    // (whether or not the rest renders).
    let spec_changed = pool.metadata.generation != old.observed_generation;
    if spec_changed && pool.spec.network_policy.is_none() {
        delete_network_policy(ctx, pool, &namespace).await?;
    }
    if spec_changed && pool.spec.pod_monitor().is_none() {
        monitoring::delete(&ctx.client, &ctx.discovery, pool, &namespace).await?;
    }
    delete_legacy_peers_service(ctx, pool, &namespace, &name).await?;
    let mut monitored = None;
    let (mut status, applied, blocker) = match rendering {
        Ok(rendered) => {
            let binding = rendered.token_review_binding.as_ref();
            super::token_review::sync(&ctx.client, &ctx.live, pool, &namespace, binding).await?;
            let applied =
                apply_children(ctx, pool, &namespace, &rendered, reports.as_ref()).await?;
            if let Some(monitor) = &rendered.pod_monitor {
                monitored = Some(
                    monitoring::apply(
                        &ctx.client,
                        &ctx.discovery,
                        &ctx.live,
                        &namespace,
                        &name,
                        monitor,
                    )
                    .await?,
                );
            }
            (rendered.status(pool), Some(applied), None)
        }
        Err(e) => {
            let blocker = blocker(&e, database_problem.as_ref());
            info!(pool = %name, namespace = %namespace, reason = %blocker.reason, "not applying: {}", blocker.message);
            // What runs still runs with the last good sizes, which the status keeps.
            let kept = ConnectionPoolStatus {
                budget: old.budget.clone(),
                users: old.users.clone(),
                selector: Some(selector_string(&name)),
                endpoint: old.endpoint.clone(),
                app_secret_name: old.app_secret_name.clone(),
                ..ConnectionPoolStatus::default()
            };
            (kept, None, Some(blocker))
        }
    };

    let applied_at = Instant::now();
    let deployment = match &applied {
        Some(a) => Some(a.deployment.clone()),
        None => Api::<Deployment>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&name)
            .await
            .map_err(kube_error::<Deployment>("get", &name))?,
    };
    let seen = match &deployment {
        Some(d) => Some(Observation::of(
            d,
            ready_endpoints(ctx, &namespace, &name).await?,
        )),
        None => None,
    };
    let want = pool.spec.replicas;
    let hold = applied.as_ref().and_then(|a| a.hold.clone());
    let progressing = match &blocker {
        Some(b) => Verdict::new(
            PROGRESSING,
            Status::False,
            b.reason.clone(),
            format!("changes are not applied: {}", b.message),
        ),
        None => rollout::progressing(
            seen.as_ref(),
            want,
            hold.as_ref().map(|h| (h.0, h.1.clone())),
        ),
    };
    let ready = match (&blocker, &seen) {
        (Some(b), None) => Verdict::new(
            crate::api::condition::READY,
            Status::False,
            b.reason.clone(),
            b.message.clone(),
        ),
        _ => rollout::ready(seen.as_ref(), want),
    };
    let read_only = read_only::reconcile(ctx, pool, &namespace, &observed, spec_changed).await?;
    let generation = pool.metadata.generation;
    let crd_missing = monitored
        .as_ref()
        .is_some_and(|m| m.status == Status::False);
    let mut verdicts: Vec<Verdict> = [ready.clone(), progressing, budget]
        .into_iter()
        .chain(monitored)
        .chain(read_only.as_ref().map(|r| r.ready.clone()))
        .collect();
    let judged = match (&reports, &status.budget) {
        (Some(Ok(reports)), Some(budget)) => {
            ctx.judge_usage(&ObjectRef::from(pool), reports, budget)
        }
        _ => None,
    };
    if let Some((usage, near_budget)) = judged {
        status.usage = Some(usage);
        verdicts.push(near_budget);
    }
    status.conditions = conditions::merge(&old.conditions, &verdicts, generation, &now());
    if pool.spec.pod_monitor().is_none() {
        status.conditions.retain(|c| c.type_ != MONITORING);
    }
    if read_only.is_none() {
        status.conditions.retain(|c| c.type_ != READ_ONLY_READY);
    }
    let read_only_settling = read_only
        .as_ref()
        .is_some_and(|r| r.ready.status != Status::True);
    status.read_only = read_only.map(|r| r.status);
    status.observed_generation = generation;
    status.replicas = seen.map(|s| s.replicas);
    status.ready_replicas = seen.map(|s| s.ready);

    publish_events(ctx, pool, &old, &status).await;
    if status != old {
        debug!(changed = %status_changes(&old, &status), "status changed");
        write_status(ctx, pool, &namespace, &status, None).await?;
        ctx.watched().entry(key).or_default().written = Some(Written {
            over_version: pool.resource_version(),
            status: status.clone(),
        });
    }
    ctx.ledger
        .record(pool, status.budget.as_ref().map(|b| b.pool));

    // Where a slow reconciliation spent its time.
    let ms = |from: Instant, to: Instant| to.duration_since(from).as_millis();
    let done = Instant::now();
    debug!(
        observe_ms = ms(started, observed_at),
        sizing_wait_ms = ms(observed_at, sized_at),
        apply_ms = ms(sized_at, applied_at),
        status_ms = ms(applied_at, done),
        "reconciled"
    );
    if let Some(problem) = database_problem {
        return Err(Error::Database(problem.message));
    }
    Ok(match hold {
        Some((_, _, recheck)) => Action::requeue(recheck),
        // Look for the PodMonitor CRD again once discovery's answer expires.
        None if crd_missing => Action::requeue(ctx.discovery.ttl().min(ctx.settings.resync)),
        // The read-only pool's children name a pool that does not exist, so their changes
        // wake nobody: look again shortly until it is ready.
        None if read_only_settling => Action::requeue(READ_ONLY_RECHECK),
        // The Deployment and the endpoints are watched; this only bounds a missed event.
        None if ready.status != Status::True && blocker.is_none() => {
            Action::requeue(NOT_READY_RECHECK.min(ctx.settings.resync))
        }
        None => Action::requeue(ctx.settings.resync),
    })
}

/// The data of every Secret the spec names, by name; missing ones are left out (rendering
/// names them).
async fn read_secrets(
    ctx: &Context,
    namespace: &str,
    spec: &ConnectionPoolSpec,
) -> Result<BTreeMap<String, BTreeMap<String, Vec<u8>>>, Error> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let mut secrets = BTreeMap::new();
    for name in referenced_secrets(spec) {
        let key = ObjectRef::new(&name).within(namespace);
        let secret = match ctx.caches.secrets.lookup(&key) {
            CachedSecret::Absent => continue,
            CachedSecret::Present(secret) => secret,
            CachedSecret::Unknown => {
                let Some(secret) = api
                    .get_opt(&name)
                    .await
                    .map_err(kube_error::<Secret>("read", &name))?
                else {
                    continue;
                };
                ctx.caches.secrets.remember(key, secret.clone());
                Arc::new(secret)
            }
        };
        let data = secret
            .data
            .iter()
            .flatten()
            .map(|(k, v)| (k.clone(), v.0.clone()))
            .collect();
        secrets.insert(name, data);
    }
    Ok(secrets)
}

/// The data of every ConfigMap the spec names (TLS CAs), by name; missing ones are left
/// out (rendering names them).
async fn read_config_maps(
    ctx: &Context,
    namespace: &str,
    spec: &ConnectionPoolSpec,
) -> Result<BTreeMap<String, BTreeMap<String, String>>, Error> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), namespace);
    let mut config_maps = BTreeMap::new();
    let mut names: Vec<String> = render::tls::config_map_keys(spec)
        .into_iter()
        .map(|(name, _)| name)
        .collect();
    names.sort();
    names.dedup();
    for name in names {
        if let Some(config_map) = api
            .get_opt(&name)
            .await
            .map_err(kube_error::<ConfigMap>("read", &name))?
        {
            config_maps.insert(name, config_map.data.unwrap_or_default());
        }
    }
    Ok(config_maps)
}

/// The names of the Secrets `spec` reads (credentials and TLS), without repetition.
pub fn referenced_secrets(spec: &ConnectionPoolSpec) -> Vec<String> {
    let server = spec
        .database
        .as_ref()
        .map(|db| &db.credentials_secret)
        .or_else(|| spec.redis.as_ref()?.credentials_secret.as_ref());
    let mut names: Vec<String> = server.iter().map(|c| c.name.clone()).collect();
    if let Some(users) = &spec.users {
        names.extend(users.iter().map(|u| u.credentials_secret.name.clone()));
    }
    names.extend(
        render::tls::secret_keys(spec)
            .into_iter()
            .map(|(name, _)| name),
    );
    names.sort();
    names.dedup();
    names
}

/// For `maxConnections: auto`, the database's limits; `Ok(None)` when the spec gives them.
async fn observe_database(
    ctx: &Context,
    pool: &ConnectionPool,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    config_maps: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<Option<render::ObservedDatabase>, Blocker> {
    let Some(db) = pool
        .spec
        .database
        .as_ref()
        .filter(|db| db.max_connections == MaxConnections::Auto)
    else {
        return Ok(None);
    };
    let creds = &db.credentials_secret;
    let secret_problem = |what: String| Blocker {
        reason: reason::SECRET_PROBLEM.to_owned(),
        message: format!(
            "maxConnections is auto, but the credentials to read it are unusable: {what}"
        ),
    };
    let data = secrets
        .get(&creds.name)
        .ok_or_else(|| secret_problem(format!("Secret {:?} not found", creds.name)))?;
    let value = |key: &str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.clone()).ok())
            .ok_or_else(|| {
                secret_problem(format!("Secret {:?} has no UTF-8 key {key:?}", creds.name))
            })
    };
    let target = Target {
        host: db.host.clone(),
        port: u16::try_from(db.port).map_err(|_| Blocker {
            reason: INVALID_SPEC.to_owned(),
            message: format!("spec.database.port {} is not a TCP port", db.port),
        })?,
        dbname: db.dbname.clone(),
        user: value(&creds.username_key)?,
        password: value(&creds.password_key)?,
        tls: probe_tls(&pool.spec, secrets, config_maps).map_err(|what| Blocker {
            reason: reason::SECRET_PROBLEM.to_owned(),
            message: format!(
                "maxConnections is auto, but the TLS settings to read it with are unusable: \
                 {what}"
            ),
        })?,
    };
    ctx.databases
        .observe(&target, ctx.settings.database_timeout)
        .await
        .map(Some)
        .map_err(|e| Blocker {
            reason: reason::DATABASE_UNREACHABLE.to_owned(),
            message: e.to_string(),
        })
}

/// The probe's TLS: `spec.tls.server` with its files read from the API; the pooler's
/// default, prefer, without it.
fn probe_tls(
    spec: &ConnectionPoolSpec,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
    config_maps: &BTreeMap<String, BTreeMap<String, String>>,
) -> Result<ProbeTls, String> {
    let Some(server) = spec.tls.as_ref().and_then(|t| t.server.as_ref()) else {
        return Ok(ProbeTls {
            mode: SslMode::Prefer,
            ca: None,
            client_certificate: None,
        });
    };
    let secret_key = |name: &str, key: &str| -> Result<Vec<u8>, String> {
        secrets
            .get(name)
            .ok_or_else(|| format!("Secret {name:?} not found"))?
            .get(key)
            .cloned()
            .ok_or_else(|| format!("Secret {name:?} has no key {key:?}"))
    };
    let ca = match &server.ca {
        Some(CaSource {
            secret: Some(s), ..
        }) => Some(secret_key(&s.name, &s.key)?),
        Some(CaSource {
            config_map: Some(c),
            ..
        }) => Some(
            config_maps
                .get(&c.name)
                .ok_or_else(|| format!("ConfigMap {:?} not found", c.name))?
                .get(&c.key)
                .ok_or_else(|| format!("ConfigMap {:?} has no key {:?}", c.name, c.key))?
                .clone()
                .into_bytes(),
        ),
        _ => None,
    };
    let client_certificate = match &server.client_certificate_secret_name {
        Some(name) => Some((
            secret_key(name, render::tls::TLS_CERT)?,
            secret_key(name, render::tls::TLS_KEY)?,
        )),
        None => None,
    };
    Ok(ProbeTls {
        mode: server.effective_mode(),
        ca,
        client_certificate,
    })
}

/// For a Redis pool without `maxClients`, the server's maxclients; `Ok(None)` otherwise.
async fn observe_max_clients(
    ctx: &Context,
    pool: &ConnectionPool,
    secrets: &BTreeMap<String, BTreeMap<String, Vec<u8>>>,
) -> Result<Option<u32>, Blocker> {
    let Some(spec) = pool.spec.redis.as_ref().filter(|r| r.max_clients.is_none()) else {
        return Ok(None);
    };
    let secret_problem = |what: String| Blocker {
        reason: reason::SECRET_PROBLEM.to_owned(),
        message: format!(
            "spec.redis.maxClients is not set, but the credentials to read maxclients with \
             are unusable: {what}"
        ),
    };
    // The server credentials, else the first listed user: the poolers log in as either.
    let value = |name: &str, key: &str| {
        secrets
            .get(name)
            .ok_or_else(|| secret_problem(format!("Secret {name:?} not found")))?
            .get(key)
            .and_then(|v| String::from_utf8(v.clone()).ok())
            .ok_or_else(|| secret_problem(format!("Secret {name:?} has no UTF-8 key {key:?}")))
    };
    let auth = match (
        &spec.credentials_secret,
        pool.spec.users.iter().flatten().next(),
    ) {
        (Some(c), _) => Some((
            value(&c.name, &c.username_key)?,
            value(&c.name, &c.password_key)?,
        )),
        (None, Some(u)) => Some((
            u.user.clone(),
            value(
                &u.credentials_secret.name,
                &u.credentials_secret.password_key,
            )?,
        )),
        (None, None) => None,
    };
    let target = super::redis::Target {
        host: spec.host.clone(),
        port: u16::try_from(spec.port).map_err(|_| Blocker {
            reason: INVALID_SPEC.to_owned(),
            message: format!("spec.redis.port {} is not a TCP port", spec.port),
        })?,
        auth,
    };
    super::redis::probe(&target, ctx.settings.database_timeout)
        .await
        .map(Some)
        .map_err(|e| Blocker {
            reason: if e.is_refusal() {
                reason::MAX_CLIENTS_UNKNOWN
            } else {
                reason::REDIS_UNREACHABLE
            }
            .to_owned(),
            message: e.to_string(),
        })
}

/// The BudgetFeasible condition, decided from the sizing alone (independent of Secrets), and
/// the budget derivation when one could be made (for the metrics).
fn budget_verdict(
    pool: &ConnectionPool,
    observed: &Observed,
    database_problem: Option<&Blocker>,
) -> (Verdict, Option<sizing::Budget>) {
    if let Some(problem) = database_problem {
        let verdict = Verdict::new(
            BUDGET_FEASIBLE,
            Status::Unknown,
            problem.reason.clone(),
            format!(
                "the server's connection limit is needed but unknown: {}",
                problem.message
            ),
        );
        return (verdict, None);
    }
    let inputs = match render::sizing_inputs(pool, observed) {
        Ok(inputs) => inputs,
        Err(e) => {
            let verdict = Verdict::new(
                BUDGET_FEASIBLE,
                Status::Unknown,
                INVALID_SPEC,
                e.to_string(),
            );
            return (verdict, None);
        }
    };
    match sizing::compute(&inputs) {
        Ok(sizing) => {
            let b = &sizing.budget;
            let verdict = Verdict::new(
                BUDGET_FEASIBLE,
                Status::True,
                FITS,
                format!(
                    "{} pods at most x {} server connections each = {} of this pool's budget \
                     of {} (database budget {}, other pools claim {})",
                    b.pods_max,
                    b.per_pod,
                    sizing.committed(),
                    b.pool,
                    b.database,
                    b.others_claimed
                ),
            );
            (verdict, Some(*b))
        }
        Err(SizingError::Infeasible(infeasible)) => {
            let verdict = Verdict::new(
                BUDGET_FEASIBLE,
                Status::False,
                infeasible.reason(),
                format!("connection budget does not fit: {infeasible}"),
            );
            (verdict, Some(*infeasible.shortfall.budget()))
        }
        Err(e @ SizingError::Invalid(_)) => {
            let verdict = Verdict::new(BUDGET_FEASIBLE, Status::False, INVALID_SPEC, e.to_string());
            (verdict, None)
        }
    }
}

/// The reason and message for a rendering that failed.
fn blocker(error: &RenderError, database_problem: Option<&Blocker>) -> Blocker {
    if let (RenderError::DatabaseNotObserved | RenderError::MaxClientsNotObserved, Some(problem)) =
        (error, database_problem)
    {
        return problem.clone();
    }
    let reason = match error {
        RenderError::Invalid(_) | RenderError::MissingMetadata(_) | RenderError::Backend(_) => {
            INVALID_SPEC
        }
        RenderError::DatabaseNotObserved => reason::DATABASE_UNREACHABLE,
        RenderError::StandbyNotObserved(_) => reason::STANDBY_UNREACHABLE,
        RenderError::MaxClientsNotObserved => reason::MAX_CLIENTS_UNKNOWN,
        RenderError::Sizing(SizingError::Infeasible(infeasible)) => infeasible.reason(),
        RenderError::Sizing(SizingError::Invalid(_)) => INVALID_SPEC,
        RenderError::MissingSecret(_)
        | RenderError::MissingSecretKey { .. }
        | RenderError::MissingConfigMap(_)
        | RenderError::MissingConfigMapKey { .. }
        | RenderError::BadSecretValue { .. } => reason::SECRET_PROBLEM,
        RenderError::Parameter { .. }
        | RenderError::Tls { .. }
        | RenderError::Duration(_)
        | RenderError::UnboundedDrain
        | RenderError::Config(_) => reason::INVALID_CONFIGURATION,
    };
    Blocker {
        reason: reason.to_owned(),
        message: error.to_string(),
    }
}

/// Applies `object` with server-side apply, taking over fields others changed.
async fn apply<K>(client: &Client, namespace: &str, object: &K) -> Result<K, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    Api::<K>::namespaced(client.clone(), namespace)
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(object),
        )
        .await
        .map_err(kube_error::<K>("apply", &name))
}

/// A rendered child that does not serialize: a defect of the rendering, never of the input.
#[derive(Debug)]
pub(super) struct Unserializable;

impl From<Unserializable> for Error {
    fn from(_: Unserializable) -> Error {
        Error::Internal("a rendered child does not serialize")
    }
}

/// The digest of a rendered child, which tells one rendering from another.
pub(super) fn rendering_digest<K: Serialize>(object: &K) -> Result<String, Unserializable> {
    let rendering = serde_json::to_string(object).map_err(|_| Unserializable)?;
    Ok(file_digest(&rendering))
}

/// Applies `object` unless the live child is as this operator's last apply of the same
/// rendering left it (`missing`: known not to exist); `None` when skipped.
async fn apply_child<K>(
    ctx: &Context,
    namespace: &str,
    object: &K,
    missing: bool,
) -> Result<Option<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let name = object.meta().name.clone().unwrap_or_default();
    let digest = rendering_digest(object)?;
    if !missing && ctx.live.unchanged::<K>(namespace, &name, &digest) {
        return Ok(None);
    }
    let applied = apply(&ctx.client, namespace, object).await?;
    ctx.live.applied(digest, &applied);
    Ok(Some(applied))
}

/// The child `name` as it is live: from its watch's cache when that holds a complete list
/// and has caught up with this process's last apply of it, read otherwise.
async fn live_child<K>(
    ctx: &Context,
    cache: &Store<K>,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    if complete(cache) && ctx.live.caught_up::<K>(namespace, name) {
        let cached = cache.get(&ObjectRef::new(name).within(namespace));
        return Ok(cached.map(|k| K::clone(&k)));
    }
    let read = Api::<K>::namespaced(ctx.client.clone(), namespace)
        .get_opt(name)
        .await
        .map_err(kube_error::<K>("get", name))?;
    // What was just read is at least as fresh as what the watch delivered.
    read.iter().for_each(|k| ctx.live.saw(k));
    Ok(read)
}

/// The EndpointSlices of the Service `service`: from the watch's cache once that holds a
/// complete list (the slices only report, nothing here writes them), listed otherwise.
async fn service_slices(
    ctx: &Context,
    namespace: &str,
    service: &str,
) -> Result<Vec<EndpointSlice>, Error> {
    let of_service = |s: &EndpointSlice| {
        s.labels()
            .get("kubernetes.io/service-name")
            .map(String::as_str)
            == Some(service)
    };
    if complete(&ctx.caches.slices) {
        return Ok(ctx
            .caches
            .slices
            .state_filter(|s| s.namespace().as_deref() == Some(namespace) && of_service(s))
            .iter()
            .map(|s| EndpointSlice::clone(s))
            .collect());
    }
    let listed = Api::<EndpointSlice>::namespaced(ctx.client.clone(), namespace)
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={service}")))
        .await
        .map_err(kube_error::<EndpointSlice>("list", service))?;
    Ok(listed.items)
}

/// Applies the children in [`Rendered::children`] order, with replicas and the ConfigMap
/// held back where [`resize::plan`] says so.
async fn apply_children(
    ctx: &Context,
    pool: &ConnectionPool,
    namespace: &str,
    rendered: &Rendered,
    reports: Option<&Result<Vec<PodReport>, String>>,
) -> Result<Applied, Error> {
    let name = pool.name_any();
    let live_deployment = live_child(ctx, &ctx.caches.deployments, namespace, &name).await?;
    let config_name = names::config_map(&name);
    let live_config = live_child(ctx, &ctx.caches.config_maps, namespace, &config_name).await?;

    let desired = Desired {
        replicas: pool.spec.replicas,
        per_pod: rendered.sizing.max_db_connections(),
        pods_max: rendered.sizing.budget.pods_max,
    };
    let per_pod = live_config
        .as_ref()
        .and_then(|cm| configured_per_pod(cm, &pool.spec));
    let pods = if per_pod.is_some_and(|p| desired.per_pod > p) {
        count_pods(ctx, namespace, &name).await?
    } else {
        0
    };
    let rendered_digest = config_digest(&rendered.config_map);
    let live = Live {
        replicas: live_deployment
            .as_ref()
            .and_then(|d| d.spec.as_ref()?.replicas),
        per_pod,
        config_changed_at: live_config.as_ref().and_then(last_applied_at),
        pods,
        // Judged against the ConfigMap this step leaves in place: if it is not written
        // now, the pods do not run it, and no pods are added.
        pods_config: reports.map(|r| match r {
            Ok(reports) => usage::pods_config(reports, &rendered_digest),
            Err(why) => PodsConfig::Unreadable(vec![why.clone()]),
        }),
    };
    let plan = resize::plan(&live, &desired, Timestamp::now(), ctx.settings.settle);
    let in_place = if plan.apply_config {
        Some(rendered_digest)
    } else {
        live_config.as_ref().map(config_digest)
    };
    ctx.watched()
        .entry(ObjectRef::from(pool))
        .or_default()
        .config_digest = in_place;

    // What comes before the Deployment in the rendered order (what its pods mount and run
    // as) is applied at once; then the Deployment together with what comes after it.
    let mut stages: [Vec<BoxFuture<'_, Result<(), Error>>>; 2] = [Vec::new(), Vec::new()];
    let mut stage = 0;
    let mut pods = None;
    for child in rendered.children() {
        let apply = match child {
            Child::ServiceAccount(o) => apply_child(ctx, namespace, o, false).map_ok(drop).boxed(),
            Child::ConfigMap(o) if plan.apply_config => {
                apply_child(ctx, namespace, o, false).map_ok(drop).boxed()
            }
            Child::ConfigMap(_) => continue,
            Child::Secret(o) => apply_child(ctx, namespace, o, false).map_ok(drop).boxed(),
            Child::Service(o) => apply_child(ctx, namespace, o, false).map_ok(drop).boxed(),
            Child::PodDisruptionBudget(o) => {
                apply_child(ctx, namespace, o, false).map_ok(drop).boxed()
            }
            Child::NetworkPolicy(o) => apply_child(ctx, namespace, o, false).map_ok(drop).boxed(),
            Child::Deployment(o) => {
                pods = Some(o);
                stage = 1;
                continue;
            }
        };
        stages[stage].push(apply);
    }
    let [before, after] = stages;
    futures::future::try_join_all(before).await?;
    let mut pods = pods
        .ok_or(Error::Internal("the rendered children hold no Deployment"))?
        .clone();
    if let Some(spec) = pods.spec.as_mut() {
        spec.replicas = Some(plan.replicas);
    }
    let missing = live_deployment.is_none();
    let (applied, _) = futures::future::try_join(
        apply_child(ctx, namespace, &pods, missing),
        futures::future::try_join_all(after),
    )
    .await?;
    let deployment = applied
        .or_else(|| live_deployment.clone())
        .ok_or(Error::Internal(
            "the Deployment is neither applied nor live",
        ))?;

    if let Some(hold) = &plan.hold {
        info!(pool = %name, namespace = %namespace, "resize in steps: {}", hold.message(&desired));
    }
    Ok(Applied {
        deployment,
        hold: plan
            .hold
            .map(|h| (h.reason(), h.message(&desired), h.recheck_after())),
    })
}

/// The digest of a ConfigMap's pgbouncer.ini text, as a pooler running it reports it.
fn config_digest(config_map: &ConfigMap) -> String {
    let text = config_map.data.as_ref().and_then(|d| d.get(CONFIG_FILE));
    file_digest(text.map_or("", String::as_str))
}

/// The per-pod server connection cap in a ConfigMap's pgbouncer.ini, if it can be read:
/// the database's max_db_connections, or the `[redis]` max_server_connections.
fn configured_per_pod(config_map: &ConfigMap, spec: &ConnectionPoolSpec) -> Option<u32> {
    let text = config_map.data.as_ref()?.get(CONFIG_FILE)?;
    match spec.backend().ok()? {
        Backend::Postgres(db) => {
            let loaded = Config::parse(text, Path::new(CONFIG_FILE)).ok()?;
            Some(loaded.config.max_db_connections_for(&db.dbname))
        }
        Backend::Redis(_) => render::redis::configured_per_pod(text),
    }
}

/// When this operator last changed the object: the API server stamps a field manager's
/// entry whenever that manager changes a value, and leaves it alone on no-op applies.
fn last_applied_at<K: Resource>(object: &K) -> Option<Timestamp> {
    object
        .meta()
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some(FIELD_MANAGER))
        .filter(|m| m.operation.as_deref() == Some("Apply"))
        .filter_map(|m| m.time.as_ref().map(|t| t.0))
        .max()
}

/// Pooler pods of `pool` that exist, terminating ones included (they still hold server
/// connections while they drain).
async fn count_pods(ctx: &Context, namespace: &str, pool: &str) -> Result<u32, Error> {
    let pods = Api::<Pod>::namespaced(ctx.client.clone(), namespace)
        .list_metadata(&ListParams::default().labels(&selector_string(pool)))
        .await
        .map_err(kube_error::<Pod>("list", pool))?;
    Ok(u32::try_from(pods.items.len()).unwrap_or(u32::MAX))
}

/// The pooler pods' IPs, ready or not (the endpoints of the pool's Service), and the peer
/// ids in force in the pool's ConfigMap.
async fn observe_peers(
    ctx: &Context,
    namespace: &str,
    pool: &str,
) -> Result<(BTreeSet<String>, BTreeMap<u16, String>), Error> {
    // The Service's slices list every pod with an address, ready or not.
    let ips = service_slices(ctx, namespace, pool)
        .await?
        .iter()
        .flat_map(|s| &s.endpoints)
        .flat_map(|e| e.addresses.iter().cloned())
        .collect();
    let config_name = names::config_map(pool);
    let in_force = live_child(ctx, &ctx.caches.config_maps, namespace, &config_name)
        .await?
        .map(|cm| {
            let annotation = cm.annotations().get(render::peers::PEER_IDS_ANNOTATION);
            let ini = cm.data.as_ref().and_then(|d| d.get(CONFIG_FILE));
            render::peers::in_force(annotation.map(String::as_str), ini.map(String::as_str))
        })
        .unwrap_or_default();
    Ok((ips, in_force))
}

/// Deletes the headless Service an earlier version listed the pods of `service` with
/// (`<service>-peers`): the pool's own Service lists them now.
pub(super) async fn delete_legacy_peers_service(
    ctx: &Context,
    pool: &ConnectionPool,
    namespace: &str,
    service: &str,
) -> Result<(), Error> {
    delete_child::<Service>(ctx, pool, namespace, &names::legacy_peers_service(service)).await
}

/// Deletes the pool's NetworkPolicy, if any: the spec no longer asks for one.
async fn delete_network_policy(
    ctx: &Context,
    pool: &ConnectionPool,
    namespace: &str,
) -> Result<(), Error> {
    delete_child::<NetworkPolicy>(ctx, pool, namespace, &pool.name_any()).await
}

/// Deletes `pool`'s child `name` (see [`delete_if_present`]) unless the watches know it
/// does not exist.
pub(super) async fn delete_child<K>(
    ctx: &Context,
    pool: &ConnectionPool,
    namespace: &str,
    name: &str,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    if ctx.live.known_absent::<K>(namespace, name) {
        return Ok(());
    }
    delete_if_present::<K>(&ctx.client, pool, namespace, name).await
}

/// Deletes the object `name` if it exists and `pool` owns it: an object of that name someone
/// else made stays. A read first, so that a reconcile of a pool that never had the object
/// writes nothing; the delete is of the object read (a uid precondition), not of one made
/// under the same name meanwhile.
pub(super) async fn delete_if_present<K>(
    client: &Client,
    pool: &ConnectionPool,
    namespace: &str,
    name: &str,
) -> Result<(), Error>
where
    K: Resource<Scope = NamespaceResourceScope, DynamicType = ()>
        + Clone
        + Debug
        + DeserializeOwned,
{
    let api = Api::<K>::namespaced(client.clone(), namespace);
    let Some(present) = api
        .get_metadata_opt(name)
        .await
        .map_err(kube_error::<K>("get", name))?
    else {
        return Ok(());
    };
    let owner = pool.uid();
    if !present
        .owner_references()
        .iter()
        .any(|o| Some(&o.uid) == owner.as_ref())
    {
        return Ok(());
    }
    let only_this = DeleteParams {
        preconditions: Some(Preconditions {
            uid: present.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &only_this).await {
        Ok(_) => Ok(()),
        // Gone, or replaced, between the read and the delete.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(e) => Err(kube_error::<K>("delete", name)(e)),
    }
}

/// The API server's endpoints (address → ports), which the NetworkPolicy's egress admits
/// when a user logs in with ServiceAccount tokens; none when there is no such policy, or
/// when they cannot be read (a namespaced install may not read `default`), in which case
/// the policy falls back to the usual ports on any address.
async fn observe_api_server(
    ctx: &Context,
    spec: &ConnectionPoolSpec,
) -> BTreeMap<String, Vec<i32>> {
    let reviews_tokens = spec
        .users
        .iter()
        .flatten()
        .any(|u| u.service_accounts.as_ref().is_some_and(|s| !s.is_empty()));
    if spec.network_policy.is_none() || !reviews_tokens {
        return BTreeMap::new();
    }
    let slices = match Api::<EndpointSlice>::namespaced(ctx.client.clone(), "default")
        .list(&ListParams::default().labels("kubernetes.io/service-name=kubernetes"))
        .await
    {
        Ok(slices) => slices,
        Err(e) => {
            debug!(error = %e, "cannot read the API server's endpoints; egress to it by port only");
            return BTreeMap::new();
        }
    };
    let mut endpoints = BTreeMap::new();
    for slice in &slices.items {
        let ports: Vec<i32> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.port)
            .collect();
        for address in slice.endpoints.iter().flat_map(|e| &e.addresses) {
            endpoints
                .entry(address.clone())
                .or_insert_with(Vec::new)
                .extend(ports.iter().copied());
        }
    }
    endpoints
}

/// Ready endpoints of the pool's Service.
async fn ready_endpoints(ctx: &Context, namespace: &str, service: &str) -> Result<u32, Error> {
    let ready = service_slices(ctx, namespace, service)
        .await?
        .iter()
        .flat_map(|s| &s.endpoints)
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .count();
    Ok(u32::try_from(ready).unwrap_or(u32::MAX))
}

/// An Event for each decision that changed: the budget computed or found infeasible, the
/// database unreachable, a Secret or setting that blocks applying, a resize in steps.
async fn publish_events(
    ctx: &Context,
    pool: &ConnectionPool,
    old: &ConnectionPoolStatus,
    new: &ConnectionPoolStatus,
) {
    let mut events = Vec::new();
    let budget = conditions::find(&new.conditions, BUDGET_FEASIBLE);
    // A budget that still fits is told again only when this pool's own sizing moved, not
    // each time another pool of the database changes what it claims.
    let sized =
        |s: &ConnectionPoolStatus| s.budget.as_ref().map(|b| (b.pool, b.per_pod, b.pods_max));
    let told = |c: &&k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition| {
        conditions::changed(&old.conditions, c)
            && (c.status != "True"
                || conditions::find(&old.conditions, BUDGET_FEASIBLE)
                    .is_none_or(|b| b.status != c.status || b.reason != c.reason)
                || sized(old) != sized(new))
    };
    if let Some(c) = budget.filter(told) {
        let (type_, reason) = match c.status.as_str() {
            "True" => (EventType::Normal, "BudgetComputed".to_owned()),
            "False" => (EventType::Warning, "BudgetInfeasible".to_owned()),
            _ => (EventType::Warning, c.reason.clone()),
        };
        events.push((type_, reason, c.message.clone()));
    }
    if let Some(c) = conditions::find(&new.conditions, PROGRESSING) {
        let before = conditions::find(&old.conditions, PROGRESSING);
        let flipped = before.is_none_or(|b| b.status != c.status || b.reason != c.reason);
        let already_told = budget.is_some_and(|b| b.reason == c.reason);
        if flipped && !already_told {
            match (c.status.as_str(), c.reason.as_str()) {
                ("True", reason::RESIZING) => {
                    events.push((EventType::Normal, c.reason.clone(), c.message.clone()))
                }
                ("True", reason::POD_STATUS_UNAVAILABLE) => {
                    events.push((EventType::Warning, c.reason.clone(), c.message.clone()))
                }
                ("False", reason::UP_TO_DATE) | ("True", _) => {}
                _ => events.push((EventType::Warning, c.reason.clone(), c.message.clone())),
            }
        }
    }
    if let Some(c) = conditions::find(&new.conditions, NEAR_BUDGET) {
        let before = conditions::find(&old.conditions, NEAR_BUDGET).map(|b| b.status.as_str());
        match (before, c.status.as_str()) {
            (Some("True"), "True") => {}
            (_, "True") => events.push((
                EventType::Warning,
                NEAR_BUDGET.to_owned(),
                c.message.clone(),
            )),
            (Some("True"), "False") => {
                events.push((EventType::Normal, c.reason.clone(), c.message.clone()))
            }
            _ => {}
        }
    }
    if let Some(c) = conditions::find(&new.conditions, MONITORING) {
        let before = conditions::find(&old.conditions, MONITORING);
        if before.is_none_or(|b| b.status != c.status) {
            let type_ = match c.status.as_str() {
                "True" => EventType::Normal,
                _ => EventType::Warning,
            };
            events.push((type_, c.reason.clone(), c.message.clone()));
        }
    }
    let reference = pool.object_ref(&());
    // A recorder of its own each time: a shared one folds Events of the same reason into
    // a series that keeps the first note, hiding e.g. the newly computed budget.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    for (type_, reason, note) in events {
        let event = Event {
            type_,
            reason,
            note: Some(note.chars().take(1000).collect()),
            action: "Reconcile".to_owned(),
            secondary: None,
        };
        if let Err(e) = recorder.publish(&event, &reference).await {
            warn!(pool = %pool.name_any(), error = %e, "cannot publish an Event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_come_from_the_watch_or_from_a_read_while_its_copy_is_unchanged() {
        use kube::runtime::watcher::Event as WatchEvent;
        let secret = |name: &str, version: &str| {
            let mut s = Secret::default();
            s.metadata.name = Some(name.into());
            s.metadata.namespace = Some("shop".into());
            s.metadata.resource_version = Some(version.into());
            s.data = Some(
                [(
                    "password".to_owned(),
                    k8s_openapi::ByteString(b"pw".to_vec()),
                )]
                .into(),
            );
            s
        };
        let without_data = |mut s: Secret| {
            SecretCache::leave_data_out(&mut s);
            s
        };
        let key = |name: &str| ObjectRef::new(name).within("shop");
        let (store, mut writer) = kube::runtime::reflector::store::<Secret>();
        let cache = SecretCache::new(store);
        assert!(
            matches!(cache.lookup(&key("db")), CachedSecret::Unknown),
            "not listed yet"
        );

        writer.apply_watcher_event(&WatchEvent::Init);
        writer.apply_watcher_event(&WatchEvent::InitApply(secret("read", "1")));
        writer.apply_watcher_event(&WatchEvent::InitApply(without_data(secret("db", "2"))));
        writer.apply_watcher_event(&WatchEvent::InitDone);
        assert!(matches!(cache.lookup(&key("gone")), CachedSecret::Absent));
        assert!(matches!(cache.lookup(&key("read")), CachedSecret::Present(s) if s.data.is_some()));
        assert!(
            matches!(cache.lookup(&key("db")), CachedSecret::Unknown),
            "its data was left out"
        );
        cache.remember(key("db"), secret("db", "2"));
        assert!(matches!(cache.lookup(&key("db")), CachedSecret::Present(s) if s.data.is_some()));
        writer.apply_watcher_event(&WatchEvent::Apply(without_data(secret("db", "3"))));
        assert!(
            matches!(cache.lookup(&key("db")), CachedSecret::Unknown),
            "changed since it was read"
        );
        writer.apply_watcher_event(&WatchEvent::Delete(secret("read", "4")));
        assert!(matches!(cache.lookup(&key("read")), CachedSecret::Absent));
        cache.remember(key("db"), secret("db", "3"));
        cache.forget_stale();
        assert!(
            matches!(cache.lookup(&key("db")), CachedSecret::Present(_)),
            "still the watched version"
        );
        writer.apply_watcher_event(&WatchEvent::Delete(without_data(secret("db", "5"))));
        cache.forget_stale();
        assert!(
            cache.read.lock().unwrap().is_empty(),
            "deleted: its data is dropped"
        );
    }
    use crate::render::ObservedDatabase;

    fn pool(extra: &str) -> ConnectionPool {
        let yaml = format!(
            "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: orders\n  \
             namespace: shop\n  uid: u-1\nspec:\n  database:\n    host: db\n    dbname: orders\n    \
             credentialsSecret: {{name: db-app}}\n    maxConnections: 100\n{extra}"
        );
        crate::api::from_yaml(&yaml).expect("valid pool")
    }

    fn observed() -> Observed {
        let creds = BTreeMap::from([
            ("username".to_owned(), b"app".to_vec()),
            ("password".to_owned(), b"secret".to_vec()),
        ]);
        Observed {
            database: None,
            others_claimed: 0,
            secrets: BTreeMap::from([("db-app".to_owned(), creds)]),
            config_maps: BTreeMap::new(),
            ..Observed::default()
        }
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        let delays: Vec<u64> = (1..=11).map(|a| backoff(a).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        assert_eq!(backoff(0), Duration::from_secs(1));
    }

    #[test]
    fn budget_verdicts_name_the_sizing_outcome() {
        let (fits, derivation) = budget_verdict(&pool(""), &observed(), None);
        assert!(derivation.is_some());
        assert_eq!((fits.status, fits.reason.as_str()), (Status::True, FITS));
        assert!(fits.message.contains("3 pods at most"), "{}", fits.message);

        let too_small = pool("  replicas: 10\n  maxConnectionsPercent: 5\n");
        let (v, _) = budget_verdict(&too_small, &observed(), None);
        assert_eq!(
            (v.status, v.reason.as_str()),
            (Status::False, "BudgetTooSmall")
        );
        assert!(v.message.starts_with("connection budget does not fit"));

        let mut crowded = observed();
        crowded.others_claimed = 80;
        let (v, derivation) = budget_verdict(&pool(""), &crowded, None);
        assert_eq!(v.reason, "Overcommitted");
        assert_eq!(derivation.map(|b| b.others_claimed), Some(80));

        let problem = Blocker {
            reason: reason::DATABASE_UNREACHABLE.into(),
            message: "cannot connect".into(),
        };
        let (v, derivation) = budget_verdict(&pool(""), &observed(), Some(&problem));
        assert!(derivation.is_none());
        assert_eq!(
            (v.status, v.reason.as_str()),
            (Status::Unknown, reason::DATABASE_UNREACHABLE)
        );
    }

    #[test]
    fn render_failures_map_to_reasons() {
        let missing = RenderError::MissingSecret("x".into());
        assert_eq!(blocker(&missing, None).reason, reason::SECRET_PROBLEM);
        let problem = Blocker {
            reason: reason::DATABASE_UNREACHABLE.into(),
            message: "no route".into(),
        };
        assert_eq!(
            blocker(&RenderError::DatabaseNotObserved, Some(&problem)),
            problem
        );
        assert_eq!(
            blocker(&RenderError::UnboundedDrain, None).reason,
            reason::INVALID_CONFIGURATION
        );
    }

    #[test]
    fn the_rendered_config_map_reads_back_its_per_pod_cap() {
        let mut seen = observed();
        seen.database = Some(ObservedDatabase {
            max_connections: 100,
            superuser_reserved_connections: 3,
            reserved_connections: 0,
        });
        let rendered = render::render(&pool(""), &seen).expect("renders");
        assert_eq!(
            configured_per_pod(&rendered.config_map, &pool("").spec),
            Some(rendered.sizing.max_db_connections())
        );
        assert_eq!(
            configured_per_pod(&ConfigMap::default(), &pool("").spec),
            None
        );
    }

    #[test]
    fn children_are_applied_in_the_rendered_order() {
        // apply_children applies exactly this list: what precedes the Deployment, then the
        // Deployment with what follows it.
        let rendered = render::render(&pool(""), &observed()).expect("renders");
        let kinds: Vec<&str> = rendered
            .children()
            .iter()
            .map(|c| match c {
                Child::ServiceAccount(_) => "ServiceAccount",
                Child::ConfigMap(_) => "ConfigMap",
                Child::Secret(_) => "Secret",
                Child::Service(_) => "Service",
                Child::Deployment(_) => "Deployment",
                Child::PodDisruptionBudget(_) => "PodDisruptionBudget",
                Child::NetworkPolicy(_) => "NetworkPolicy",
            })
            .collect();
        assert_eq!(
            kinds,
            [
                "ServiceAccount",
                "ConfigMap",
                "Secret",
                "Secret",
                "Service",
                "Deployment",
                "PodDisruptionBudget"
            ]
        );
        let secrets: Vec<_> = [&rendered.auth_secret, &rendered.app_secret]
            .iter()
            .map(|s| s.name_any())
            .collect();
        assert_eq!(secrets, ["orders-auth", "orders-app"]);
    }

    #[test]
    fn secrets_are_listed_once() {
        let p = pool(
            "  users:\n    - {user: a, credentialsSecret: {name: shared}}\n    \
             - {user: b, credentialsSecret: {name: shared}}\n    \
             - {user: c, credentialsSecret: {name: db-app}}\n",
        );
        assert_eq!(referenced_secrets(&p.spec), ["db-app", "shared"]);
    }

    const TLS: &str = "  tls:\n    client: {secretName: pool-tls}\n    server:\n      \
                       ca: {configMap: {name: db-ca}}\n      \
                       clientCertificateSecretName: db-client\n";

    #[test]
    fn tls_secrets_are_read_and_watched() {
        // A renewed certificate triggers a reconcile (which changes nothing in the pods).
        let p = pool(TLS);
        assert_eq!(
            referenced_secrets(&p.spec),
            ["db-app", "db-client", "pool-tls"]
        );
    }

    #[test]
    fn the_probe_gets_the_server_side_tls() {
        let p = pool(TLS);
        let pem = |text: &str| text.as_bytes().to_vec();
        let mut secrets = observed().secrets;
        let mut config_maps = BTreeMap::new();
        let err = probe_tls(&p.spec, &secrets, &config_maps).expect_err("no CA yet");
        assert_eq!(err, r#"ConfigMap "db-ca" not found"#);
        config_maps.insert(
            "db-ca".to_owned(),
            BTreeMap::from([("ca.crt".to_owned(), "CA".to_owned())]),
        );
        let err = probe_tls(&p.spec, &secrets, &config_maps).expect_err("no certificate");
        assert_eq!(err, r#"Secret "db-client" not found"#);
        secrets.insert(
            "db-client".to_owned(),
            BTreeMap::from([("tls.crt".to_owned(), pem("CRT"))]),
        );
        let err = probe_tls(&p.spec, &secrets, &config_maps).expect_err("no key");
        assert_eq!(err, r#"Secret "db-client" has no key "tls.key""#);
        if let Some(data) = secrets.get_mut("db-client") {
            data.insert("tls.key".to_owned(), pem("KEY"));
        }
        let tls = probe_tls(&p.spec, &secrets, &config_maps).expect("complete");
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.ca, Some(pem("CA")));
        assert_eq!(tls.client_certificate, Some((pem("CRT"), pem("KEY"))));
        // Without spec.tls.server: the pooler's default, prefer.
        let plain = probe_tls(&pool("").spec, &secrets, &config_maps).expect("plain");
        assert_eq!((plain.mode, plain.ca), (SslMode::Prefer, None));
    }

    #[test]
    fn the_last_apply_time_is_read_from_managed_fields() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::ManagedFieldsEntry;
        let entry = |manager: &str, operation: &str, second: i64| ManagedFieldsEntry {
            manager: Some(manager.into()),
            operation: Some(operation.into()),
            time: Some(Time(Timestamp::from_second(second).expect("valid"))),
            ..ManagedFieldsEntry::default()
        };
        let mut cm = ConfigMap::default();
        assert_eq!(last_applied_at(&cm), None);
        cm.metadata.managed_fields = Some(vec![
            entry(FIELD_MANAGER, "Apply", 100),
            entry("kubectl-edit", "Update", 500),
            entry(FIELD_MANAGER, "Update", 400),
        ]);
        assert_eq!(last_applied_at(&cm), Timestamp::from_second(100).ok());
    }

    #[test]
    fn a_status_change_is_logged_by_field_and_condition_reason() {
        let condition = |type_: &str, reason: &str, message: &str| {
            k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: type_.into(),
                status: "True".into(),
                reason: reason.into(),
                message: message.into(),
                observed_generation: Some(1),
                last_transition_time: now(),
            }
        };
        let old = ConnectionPoolStatus {
            conditions: vec![
                condition("Ready", "PodsNotReady", "0/1"),
                condition("BudgetFeasible", "Fits", "others claim 150"),
                condition("Monitoring", "Applied", ""),
            ],
            replicas: Some(0),
            ..ConnectionPoolStatus::default()
        };
        assert_eq!(status_changes(&old, &old), "");
        let new = ConnectionPoolStatus {
            conditions: vec![
                condition("Ready", "PoolersReady", "1/1"),
                condition("BudgetFeasible", "Fits", "others claim 180"),
                condition("Progressing", "UpToDate", ""),
            ],
            replicas: Some(1),
            ready_replicas: Some(1),
            ..ConnectionPoolStatus::default()
        };
        assert_eq!(
            status_changes(&old, &new),
            "Ready: PodsNotReady -> PoolersReady, BudgetFeasible: Fits -> Fits, \
             Progressing: UpToDate, Monitoring: gone, readyReplicas, replicas"
        );
    }

    #[test]
    fn a_status_written_over_the_cached_version_stands_for_the_stale_cache() {
        let mut cached = pool("");
        cached.metadata.resource_version = Some("7".into());
        cached.status = Some(ConnectionPoolStatus {
            observed_generation: Some(1),
            ..ConnectionPoolStatus::default()
        });
        let written = Written {
            over_version: Some("7".into()),
            status: ConnectionPoolStatus {
                observed_generation: Some(2),
                ..ConnectionPoolStatus::default()
            },
        };
        assert_eq!(
            last_known_status(&cached, Some(&written)),
            written.status,
            "the cache still holds the version the write replaced"
        );
        cached.metadata.resource_version = Some("8".into());
        assert_eq!(
            last_known_status(&cached, Some(&written)).observed_generation,
            Some(1),
            "the cache moved on: it is the truth, edits by others included"
        );
        assert_eq!(
            last_known_status(&cached, None).observed_generation,
            Some(1)
        );
        let unversioned = Written {
            over_version: None,
            ..written
        };
        let mut fresh = pool("");
        fresh.metadata.resource_version = None;
        assert_eq!(
            last_known_status(&fresh, Some(&unversioned)),
            ConnectionPoolStatus::default()
        );
    }
}
