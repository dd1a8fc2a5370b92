//! The operator under faults (issue 16, item 5), on a real control plane (kube-apiserver,
//! etcd, kwok) in front of a real PostgreSQL:
//!
//! - the database unreachable: a condition and an Event say so, the last known budget is
//!   kept and a scale asked for meanwhile waits, until the database is back;
//! - the operator killed (SIGKILL) again and again in the middle of a scale up and down;
//! - the API server away (its process stopped, etcd kept) while the database's
//!   `max_connections` is lowered: the operator reconnects and shrinks the pools.
//!
//! Throughout, every change of the pool's Deployment, ConfigMap and Pods is recorded from
//! watches, replayed in etcd revision order, and every state is checked: the pods that may
//! exist (replicas plus surge, or more while surplus pods terminate) times the per-pod
//! server connections never exceed what the database allows.
//!
//! The API server's outage lasts [`OUTAGE_ENV`] seconds (15 by default, to keep CI short);
//! `operator_survives_a_minute_without_the_api_server` runs the full minute by hand.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::ListParams;
use kube::runtime::{watcher, WatchStreamExt as _};
use kube::{Api, Resource, ResourceExt};
use weir_operator::api::ConnectionPool;
use weir_tests::k8s::{eventually, Crd, OperatorFixture, OperatorSetup};
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions};

const NS: &str = "faults";
const POOL: &str = "orders";
const WAIT: Duration = Duration::from_secs(120);
/// Names the API server outage's length in seconds.
const OUTAGE_ENV: &str = "WEIR_APISERVER_OUTAGE_SECONDS";
const CI_OUTAGE: Duration = Duration::from_secs(15);
/// The outage, run by hand.
const FULL_OUTAGE: Duration = Duration::from_secs(60);
/// kwok pods run no pooler: the settle time alone gates adding pods. A short lease, so
/// that the outage costs the leadership.
const OPERATOR_ARGS: &[&str] = &[
    "--poll-pod-status=false",
    "--config-settle-seconds=2",
    "--lease-duration-seconds=6",
    "--lease-renew-grace-seconds=2",
    "--database-cache-seconds=1",
    "--database-timeout-seconds=2",
    "--resync-seconds=20",
];
const IDENTITY: &str = "op-faults";
const MAX_CONNECTIONS: u32 = 100;
/// `max_connections` after the change made while the API server is away.
const LOWERED: u32 = 60;
/// PostgreSQL's default `superuser_reserved_connections`, which the pools cannot use.
const SUPERUSER_RESERVED: u32 = 3;

// --- the recorded history -----------------------------------------------------------

/// One observed change of one object, at its etcd revision.
#[derive(Debug, Clone)]
enum Change {
    Deployment {
        name: String,
        /// Replicas plus maxSurge: the most pods it may run; `None` once deleted.
        pods: Option<u32>,
    },
    Config {
        name: String,
        /// `max_db_connections` in its pgbouncer.ini; `None` once deleted.
        per_pod: Option<u32>,
    },
    Pod {
        name: String,
        exists: bool,
    },
}

/// Every change seen by the watches, and the database's limit from a revision on.
#[derive(Default)]
struct Recorded {
    changes: Vec<(u64, Change)>,
    limits: Vec<(u64, u32)>,
}

/// Watches of the pool's Deployment, ConfigMap and Pods, recording every change.
struct History {
    recorded: Arc<Mutex<Recorded>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn revision<K: Resource>(object: &K) -> u64 {
    object
        .meta()
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The `max_db_connections` a pgbouncer.ini gives the pool's database.
fn per_pod(config: &ConfigMap) -> Option<u32> {
    let ini = config.data.as_ref()?.get("pgbouncer.ini")?;
    ini.split(|c: char| c.is_whitespace())
        .filter_map(|word| word.strip_prefix("max_db_connections="))
        .filter_map(|n| n.parse().ok())
        .max()
}

fn deployment_pods(deployment: &Deployment) -> Option<u32> {
    let spec = deployment.spec.as_ref()?;
    let replicas = u32::try_from(spec.replicas.unwrap_or(1)).ok()?;
    let surge = match spec
        .strategy
        .as_ref()
        .and_then(|s| s.rolling_update.as_ref())
        .and_then(|r| r.max_surge.as_ref())
    {
        Some(IntOrString::Int(n)) => u32::try_from(*n).ok()?,
        // A percentage rounds up, of the replicas.
        Some(IntOrString::String(p)) => {
            let percent: u32 = p.trim_end_matches('%').parse().ok()?;
            (replicas * percent).div_ceil(100)
        }
        None => replicas.div_ceil(4),
    };
    Some(replicas + surge)
}

impl History {
    fn start(client: &kube::Client) -> History {
        let recorded = Arc::new(Mutex::new(Recorded::default()));
        let selector = format!("weir.dev/pool={POOL}");
        let tasks = vec![
            record(
                Api::<Deployment>::namespaced(client.clone(), NS),
                &selector,
                recorded.clone(),
                |d, deleted| Change::Deployment {
                    name: d.name_any(),
                    pods: if deleted { None } else { deployment_pods(d) },
                },
            ),
            record(
                Api::<ConfigMap>::namespaced(client.clone(), NS),
                &selector,
                recorded.clone(),
                |c, deleted| Change::Config {
                    name: c.name_any(),
                    per_pod: if deleted { None } else { per_pod(c) },
                },
            ),
            record(
                Api::<Pod>::namespaced(client.clone(), NS),
                &selector,
                recorded.clone(),
                |p, deleted| Change::Pod {
                    name: p.name_any(),
                    exists: !deleted,
                },
            ),
        ];
        History { recorded, tasks }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recorded> {
        self.recorded.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// From `revision` on, the database allows `limit` server connections.
    fn limit_from(&self, revision: u64, limit: u32) {
        self.lock().limits.push((revision, limit));
    }

    /// Replays the changes in revision order and names every state over the limit in
    /// force; also returns how many distinct states were checked.
    fn violations(&self) -> (usize, Vec<String>) {
        let recorded = self.lock();
        let mut changes = recorded.changes.clone();
        changes.sort_by_key(|(rv, _)| *rv);
        let mut limits = recorded.limits.clone();
        limits.sort_unstable();
        let (mut deployment, mut config) = (None, None);
        let mut pods = BTreeSet::new();
        let mut last = None;
        let mut checked = 0;
        let mut bad = Vec::new();
        for (rv, change) in changes {
            match change {
                Change::Deployment { name, pods } if name == POOL => deployment = pods,
                Change::Config { name, per_pod } if name == format!("{POOL}-config") => {
                    config = per_pod;
                }
                Change::Pod { name, exists: true } => {
                    pods.insert(name);
                }
                Change::Pod {
                    name,
                    exists: false,
                } => {
                    pods.remove(&name);
                }
                _ => {}
            }
            let existing = u32::try_from(pods.len()).unwrap_or(u32::MAX);
            let state = (deployment, existing, config);
            if last == Some(state) {
                continue;
            }
            last = Some(state);
            let Some(limit) = limits
                .iter()
                .take_while(|(from, _)| *from <= rv)
                .last()
                .map(|(_, l)| *l)
            else {
                continue;
            };
            checked += 1;
            let may_run = deployment.unwrap_or(0).max(existing);
            let per_pod = config.unwrap_or(0);
            if u64::from(may_run) * u64::from(per_pod) > u64::from(limit) {
                bad.push(format!(
                    "at revision {rv}: {may_run} pods (Deployment allows {deployment:?}, \
                     {existing} exist) x {per_pod} server connections > {limit}"
                ));
            }
        }
        (checked, bad)
    }
}

impl Drop for History {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Spawns a watch on `api` (objects labelled `selector`) recording each change as
/// `describe(object, deleted)`.
fn record<K>(
    api: Api<K>,
    selector: &str,
    recorded: Arc<Mutex<Recorded>>,
    describe: fn(&K, bool) -> Change,
) -> tokio::task::JoinHandle<()>
where
    K: Resource
        + Clone
        + std::fmt::Debug
        + k8s_openapi::serde::de::DeserializeOwned
        + Send
        + 'static,
    K::DynamicType: Default,
{
    let stream = watcher(api, watcher::Config::default().labels(selector)).default_backoff();
    tokio::spawn(async move {
        stream
            .for_each(|event| {
                let recorded = recorded.clone();
                async move {
                    let (object, deleted) = match event {
                        Ok(watcher::Event::Apply(o) | watcher::Event::InitApply(o)) => (o, false),
                        Ok(watcher::Event::Delete(o)) => (o, true),
                        // Errors (the API server away) are retried by the watcher.
                        _ => return,
                    };
                    let change = (revision(&object), describe(&object, deleted));
                    recorded
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .changes
                        .push(change);
                }
            })
            .await;
    })
}

// --- the environment ----------------------------------------------------------------

struct Env {
    fixture: OperatorFixture,
    pg: PgCluster,
    history: History,
    outage: Duration,
}

impl Env {
    fn pools(&self) -> Api<ConnectionPool> {
        Api::namespaced(self.fixture.plane.client(), NS)
    }

    async fn kubectl_ns(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", NS];
        all.extend_from_slice(args);
        self.fixture.plane.kubectl_ok(&all).await
    }

    /// The current etcd revision.
    async fn revision(&self) -> anyhow::Result<u64> {
        let list = Api::<ConfigMap>::namespaced(self.fixture.plane.client(), NS)
            .list_metadata(&ListParams::default().limit(1))
            .await?;
        list.metadata
            .resource_version
            .and_then(|v| v.parse().ok())
            .context("a list without a revision")
    }

    async fn replicas(&self) -> anyhow::Result<Option<i32>> {
        Ok(
            Api::<Deployment>::namespaced(self.fixture.plane.client(), NS)
                .get(POOL)
                .await?
                .spec
                .and_then(|s| s.replicas),
        )
    }

    async fn config_per_pod(&self) -> anyhow::Result<Option<u32>> {
        let config = Api::<ConfigMap>::namespaced(self.fixture.plane.client(), NS)
            .get(&format!("{POOL}-config"))
            .await?;
        Ok(per_pod(&config))
    }

    /// Waits until the pool's `type_` condition is `status` (and `reason`, when given) for
    /// its current generation.
    async fn wait_condition(
        &self,
        type_: &str,
        status: &str,
        reason: Option<&str>,
        limit: Duration,
    ) -> anyhow::Result<ConnectionPool> {
        eventually(&format!("{type_}={status} {reason:?}"), limit, || async {
            let pool = self.pools().get(POOL).await?;
            let c = condition(&pool, type_).with_context(|| format!("no {type_} yet"))?;
            ensure!(
                c.status == status
                    && reason.is_none_or(|r| c.reason == r)
                    && c.observed_generation == pool.metadata.generation,
                "{type_} is {} {} for generation {:?} of {:?}: {}",
                c.status,
                c.reason,
                c.observed_generation,
                pool.metadata.generation,
                c.message
            );
            Ok(pool)
        })
        .await
    }

    /// Whether the pool is Ready with `replicas` and sized for `max_connections`, its
    /// ConfigMap carrying the per-pod size its status gives.
    async fn converged(&self, replicas: i32, max_connections: u32) -> anyhow::Result<()> {
        let pool = self
            .wait_condition("Ready", "True", None, Duration::ZERO)
            .await?;
        let status = pool.status.context("no status")?;
        let budget = status.budget.clone().context("no budget")?;
        ensure!(
            budget.max_connections == i64::from(max_connections),
            "{budget:?}"
        );
        ensure!(status.ready_replicas == Some(replicas), "{status:?}");
        ensure!(self.replicas().await? == Some(replicas));
        let per_pod = self.config_per_pod().await?;
        ensure!(
            per_pod.map(i64::from) == Some(budget.per_pod),
            "ConfigMap {per_pod:?} vs {budget:?}"
        );
        Ok(())
    }

    async fn wait_converged(&self, replicas: i32, max_connections: u32) -> anyhow::Result<()> {
        eventually(
            &format!("{replicas} replicas sized for max_connections {max_connections}"),
            WAIT,
            || self.converged(replicas, max_connections),
        )
        .await
    }

    async fn events(&self) -> anyhow::Result<Vec<(String, String)>> {
        let text = self
            .kubectl_ns(&[
                "get",
                "events",
                "--field-selector",
                &format!("involvedObject.kind=ConnectionPool,involvedObject.name={POOL}"),
                "-o",
                "jsonpath={range .items[*]}{.reason}{\"\\t\"}{.message}{\"\\n\"}{end}",
            ])
            .await?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(r, m)| (r.to_owned(), m.to_owned()))
            .collect())
    }

    /// Kills the operator and starts it again under the same identity (a restarted
    /// container), which takes its lease back at once.
    async fn kill_and_restart(&mut self) -> anyhow::Result<()> {
        self.fixture.operator.kill().await?;
        self.fixture.restart_operator(IDENTITY, OPERATOR_ARGS).await
    }
}

fn condition<'a>(pool: &'a ConnectionPool, type_: &str) -> Option<&'a Condition> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn usable(max_connections: u32) -> u32 {
    max_connections - SUPERUSER_RESERVED
}

// --- steps --------------------------------------------------------------------------

async fn the_pool_becomes_ready(env: &mut Env) -> anyhow::Result<()> {
    env.history.limit_from(0, usable(MAX_CONNECTIONS));
    let manifest = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: {POOL}\n\
         spec:\n  database:\n    host: 127.0.0.1\n    port: {}\n    dbname: orders\n    \
         credentialsSecret: {{name: orders-db-app}}\n    maxConnections: auto\n  replicas: 2\n",
        env.pg.port()
    );
    env.fixture.apply(NS, &manifest).await?;
    env.wait_converged(2, MAX_CONNECTIONS).await
}

/// PostgreSQL stopped: BudgetFeasible turns Unknown with an Event, the budget stays, a scale
/// asked for meanwhile is not applied; all of it resolves once PostgreSQL is back.
async fn the_database_away(env: &mut Env) -> anyhow::Result<()> {
    let before = env.pools().get(POOL).await?;
    let budget = before.status.and_then(|s| s.budget).context("no budget")?;
    let per_pod = env.config_per_pod().await?;
    env.pg.stop().await?;
    let pool = env
        .wait_condition(
            "BudgetFeasible",
            "Unknown",
            Some("DatabaseUnreachable"),
            WAIT,
        )
        .await?;
    let c = condition(&pool, "BudgetFeasible").context("BudgetFeasible")?;
    ensure!(
        c.message.contains(&format!("127.0.0.1:{}", env.pg.port())),
        "{}",
        c.message
    );
    eventually("a DatabaseUnreachable Event", WAIT, || async {
        let events = env.events().await?;
        ensure!(
            events.iter().any(|(r, _)| r == "DatabaseUnreachable"),
            "{events:?}"
        );
        Ok(())
    })
    .await?;

    // A scale while the limit is unknown waits for it.
    env.kubectl_ns(&["scale", &format!("cpool/{POOL}"), "--replicas=3"])
        .await?;
    let pool = env
        .wait_condition("Progressing", "False", Some("DatabaseUnreachable"), WAIT)
        .await?;
    let kept = pool
        .status
        .and_then(|s| s.budget)
        .context("no budget kept")?;
    ensure!(kept == budget, "the budget changed: {budget:?} -> {kept:?}");
    ensure!(env.replicas().await? == Some(2), "scaled without a budget");
    ensure!(
        env.config_per_pod().await? == per_pod,
        "resized without a budget"
    );

    let stopped = Instant::now();
    env.pg.start_again().await?;
    env.wait_converged(3, MAX_CONNECTIONS).await?;
    eprintln!(
        "  converged {:?} after PostgreSQL came back",
        stopped.elapsed()
    );
    Ok(())
}

/// The API server stopped for the outage while `max_connections` is lowered: the operator
/// finds out once it is back, and shrinks the pools.
async fn the_api_server_away(env: &mut Env) -> anyhow::Result<()> {
    let plane = &env.fixture.plane;
    // Nothing is written while the API server is away: every later revision comes after
    // the lower limit, and must fit it.
    let last = env.revision().await?;
    plane.stop_apiserver().await?;
    let stopped = Instant::now();
    env.pg
        .execute(&format!("ALTER SYSTEM SET max_connections = {LOWERED}"))
        .await?;
    env.pg.restart().await?;
    // The rest of the outage, with the control plane otherwise running.
    tokio::time::sleep(env.outage.saturating_sub(stopped.elapsed())).await;
    plane.start_apiserver().await?;
    let away = stopped.elapsed();
    env.history.limit_from(last + 1, usable(LOWERED));
    let back = Instant::now();
    env.wait_converged(2, LOWERED).await?;
    eprintln!(
        "  API server away {away:?}; converged {:?} after it came back",
        back.elapsed()
    );
    ensure!(env.fixture.operator.running(), "the operator exited");
    let log = env.fixture.operator.log();
    ensure!(
        log.contains("stepping down") || log.contains("lost leadership"),
        "the outage went unnoticed"
    );
    Ok(())
}

/// Scales 3 → 5 → 2 killing the operator at every step it takes, and once more right after
/// each scale is asked for.
async fn kills_during_a_scale(env: &mut Env) -> anyhow::Result<()> {
    for replicas in [5, 2] {
        env.kubectl_ns(&[
            "scale",
            &format!("cpool/{POOL}"),
            &format!("--replicas={replicas}"),
        ])
        .await?;
        env.kill_and_restart().await?;
        let mut kills = 1;
        // Each time the Deployment or ConfigMap moves, kill it before the next step.
        let mut seen = (env.replicas().await?, env.config_per_pod().await?);
        let deadline = Instant::now() + WAIT;
        loop {
            let now = (env.replicas().await?, env.config_per_pod().await?);
            if now != seen {
                seen = now;
                env.kill_and_restart().await?;
                kills += 1;
            }
            if env.converged(replicas, MAX_CONNECTIONS).await.is_ok() {
                break;
            }
            ensure!(
                Instant::now() < deadline,
                "no progress to {replicas}: {now:?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        eprintln!("  scaled to {replicas} with {kills} kills");
    }
    Ok(())
}

/// Every state the watches saw fits the database's limit.
async fn no_state_exceeded_the_budget(env: &mut Env) -> anyhow::Result<()> {
    // The watches catch up with the last writes.
    let now = env.revision().await?;
    eventually("the watches reach the present", WAIT, || async {
        let newest = env
            .history
            .lock()
            .changes
            .iter()
            .map(|(rv, _)| *rv)
            .max()
            .unwrap_or(0);
        ensure!(newest > 0, "nothing recorded");
        Ok(newest)
    })
    .await?;
    let (checked, bad) = env.history.violations();
    eprintln!("  {checked} states checked up to revision {now}");
    ensure!(checked >= 6, "only {checked} states seen");
    ensure!(bad.is_empty(), "over the budget:\n{}", bad.join("\n"));
    Ok(())
}

// --- the test -----------------------------------------------------------------------

async fn setup(outage: Duration) -> anyhow::Result<Env> {
    let started = Instant::now();
    let options = PgOptions {
        max_connections: MAX_CONNECTIONS,
        ..PgOptions::default()
    };
    let (fixture, pg) = tokio::try_join!(
        OperatorFixture::start(OperatorSetup {
            namespace: NS,
            crd: Crd::Apply,
            credentials: &[("orders-db-app", "app", "app-secret")],
            operator: (IDENTITY, OPERATOR_ARGS),
        }),
        async {
            let pg = PgCluster::start_with(options).await?;
            pg.create_role("app", "app-secret", PasswordMethod::Scram)
                .await?;
            pg.create_database("orders", "app").await?;
            Ok::<_, anyhow::Error>(pg)
        },
    )?;
    eprintln!("control plane up in {:?}", fixture.plane.startup);
    let history = History::start(&fixture.plane.client());
    eprintln!("set up in {:?}", started.elapsed());
    Ok(Env {
        fixture,
        pg,
        history,
        outage,
    })
}

macro_rules! step {
    ($env:expr, $step:ident) => {
        if let Err(e) = weir_tests::k8s::timed_step(stringify!($step), $step($env)).await {
            weir_tests::k8s::step_failed(stringify!($step), &e, &$env.fixture.operator.log());
        }
    };
}

async fn under_faults(outage: Duration) {
    let started = Instant::now();
    let mut env = match setup(outage).await {
        Ok(env) => env,
        Err(e) => panic!("setup failed: {e:#}"),
    };
    let env = &mut env;
    step!(env, the_pool_becomes_ready);
    step!(env, the_database_away);
    step!(env, kills_during_a_scale);
    step!(env, the_api_server_away);
    step!(env, no_state_exceeded_the_budget);
    eprintln!("e2e_operator_faults: {:?} in all", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_recovers_from_faults_within_its_budget() {
    let outage = std::env::var(OUTAGE_ENV)
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(CI_OUTAGE, Duration::from_secs);
    under_faults(outage).await;
}

/// The minute without the API server; run by hand (`--ignored`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a minute-long outage: run by hand"]
async fn operator_survives_a_minute_without_the_api_server() {
    under_faults(FULL_OUTAGE).await;
}

#[test]
fn states_over_the_limit_are_found_in_revision_order() {
    let history = History {
        recorded: Arc::default(),
        tasks: Vec::new(),
    };
    history.limit_from(0, 57);
    let config = |per_pod| Change::Config {
        name: format!("{POOL}-config"),
        per_pod: Some(per_pod),
    };
    let deployment = |pods| Change::Deployment {
        name: POOL.into(),
        pods: Some(pods),
    };
    {
        let mut recorded = history.lock();
        // Seen out of order: the ConfigMap shrank (rv 3) before the Deployment grew (rv 4).
        recorded.changes = vec![
            (1, config(19)),
            (2, deployment(3)),
            (4, deployment(6)),
            (3, config(9)),
        ];
    }
    let (checked, bad) = history.violations();
    assert_eq!((checked, bad.len()), (4, 0), "{bad:?}");
    history.lock().changes.push((5, config(19)));
    let (_, bad) = history.violations();
    assert_eq!(bad.len(), 1, "{bad:?}");
    assert!(bad[0].contains("6 pods"), "{bad:?}");
}
