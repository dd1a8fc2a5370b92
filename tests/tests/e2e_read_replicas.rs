//! End to end: a ConnectionPool's read-only pool (`spec.readReplicas`) on a real control
//! plane (kube-apiserver with kwok nodes, see tests/controlplane) with the operator as a
//! local process, in front of a real PostgreSQL primary and two streaming-replication
//! standbys made with pg_basebackup.
//!
//! The standbys run with different max_connections (both above the primary's, as hot
//! standby requires), so the read-only budget shows it was read from the standbys and
//! sized for the tighter one. kwok pods run no pooler: that the poolers spread reads over
//! the standbys is the pooler's own tests' concern (pooler_hosts).

use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{Api, ResourceExt};
use weir_operator::api::ConnectionPool;
use weir_tests::k8s::{eventually, ControlPlane, Crd, Operator, OperatorFixture, OperatorSetup};
use weir_tests::net;
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions};

const NS: &str = "reads";
const POOL: &str = "orders";
const WAIT: Duration = Duration::from_secs(60);
const OPERATOR_ARGS: &[&str] = &[
    "--poll-pod-status=false",
    "--config-settle-seconds=2",
    "--leader-elect=false",
    "--database-cache-seconds=1",
    "--resync-seconds=20",
];
/// The primary's max_connections: 40 − 3 reserved − 6 headroom = 31 over 1 + 1 pods.
const PRIMARY_MAX: u32 = 40;
/// The standbys' max_connections; the first is the tighter one: 70 − 3 − 11 = 56 over the
/// 2 read-only pods + 1 surge pod = 18 per pod.
const STANDBY_MAX: [u32; 2] = [70, 90];

struct Env {
    plane: ControlPlane,
    primary: PgCluster,
    standbys: [PgCluster; 2],
    operator: Operator,
}

impl Env {
    fn client(&self) -> kube::Client {
        self.plane.client()
    }

    async fn pool(&self) -> anyhow::Result<ConnectionPool> {
        Ok(Api::<ConnectionPool>::namespaced(self.client(), NS)
            .get(POOL)
            .await?)
    }

    /// `kubectl apply` of `manifest` in the test namespace: its stderr on refusal.
    async fn apply(&self, manifest: &str) -> anyhow::Result<Result<(), String>> {
        let out = self
            .plane
            .kubectl_with_input(&["apply", "-n", NS, "-f", "-"], Some(manifest))
            .await?;
        Ok(if out.success() {
            Ok(())
        } else {
            Err(out.stderr)
        })
    }

    /// The pool's manifest with `read_replicas` (YAML under `spec`, indented by two).
    fn manifest(&self, name: &str, read_replicas: &str) -> String {
        format!(
            "apiVersion: weir.dev/v1alpha1
kind: ConnectionPool
metadata:
  name: {name}
spec:
  database:
    host: {host}
    port: {port}
    dbname: orders
    credentialsSecret: {{name: orders-db-app}}
    maxConnections: auto
  replicas: 1
{read_replicas}",
            host = self.primary.host(),
            port = self.primary.port(),
        )
    }

    /// The `readReplicas` block over both standbys, the tighter one first.
    fn both_standbys(&self) -> String {
        let [a, b] = &self.standbys;
        format!(
            "  readReplicas:
    hosts:
      - {{host: {}, port: {}}}
      - {{host: {}, port: {}}}
    replicas: 2
",
            a.host(),
            a.port(),
            b.host(),
            b.port()
        )
    }

    /// Waits until condition `type_` has `status` and `reason` for the current generation.
    async fn wait_condition(
        &self,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> anyhow::Result<ConnectionPool> {
        eventually(&format!("{type_}={status} {reason}"), WAIT, || async {
            let pool = self.pool().await?;
            let c = condition(&pool, type_).with_context(|| format!("no {type_} yet"))?;
            ensure!(
                c.status == status
                    && c.reason == reason
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

    /// Whether the object `kind/name` exists in the test namespace.
    async fn exists(&self, object: &str) -> anyhow::Result<bool> {
        let out = self
            .plane
            .kubectl_ok(&["get", "-n", NS, object, "--ignore-not-found", "-o", "name"])
            .await?;
        Ok(!out.trim().is_empty())
    }
}

fn condition<'a>(pool: &'a ConnectionPool, type_: &str) -> Option<&'a Condition> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

/// Every kind of invalid `readReplicas` is refused by the API server with its rule's message.
async fn invalid_specs_are_refused_at_admission(env: &Env) -> anyhow::Result<()> {
    let cases = [
        (
            "  readReplicas: {hosts: []}\n",
            "hosts must list at least one standby",
        ),
        (
            "  readReplicas: {hosts: [{host: s1, port: 0}]}\n",
            "port must be between 1 and 65535",
        ),
        (
            "  readReplicas: {hosts: [{host: 's1,s2'}]}\n",
            "without blanks or commas",
        ),
        (
            "  readReplicas: {hosts: [{host: s1}], replicas: -1}\n",
            "replicas must not be negative",
        ),
        (
            "  readReplicas: {hosts: [{host: s1}], maxConnections: 0}\n",
            "maxConnections must be a number of at least 1, or auto",
        ),
    ];
    for (block, message) in cases {
        let refused = env.apply(&env.manifest("refused", block)).await?;
        let stderr = refused
            .err()
            .with_context(|| format!("{block:?} was accepted"))?;
        ensure!(stderr.contains(message), "{block:?}: {stderr}");
    }
    let long = "a".repeat(61);
    let refused = env
        .apply(&env.manifest(&long, "  readReplicas: {hosts: [{host: s1}]}\n"))
        .await?;
    let stderr = refused.err().context("a 61-character name was accepted")?;
    ensure!(stderr.contains("at most 60 characters"), "{stderr}");
    Ok(())
}

/// The read-only Deployment, Service, ConfigMap and Secret appear, owned by the pool,
/// with the budget of the tighter standby as read from it.
async fn the_read_only_pool_is_sized_from_the_standbys(env: &Env) -> anyhow::Result<()> {
    env.apply(&env.manifest(POOL, &env.both_standbys()))
        .await?
        .map_err(anyhow::Error::msg)?;
    env.wait_condition("Ready", "True", "PoolersReady").await?;
    let pool = env
        .wait_condition("ReadOnlyReady", "True", "PoolersReady")
        .await?;
    let status = pool.status.as_ref().context("status")?;
    let primary = status.budget.as_ref().context("primary budget")?;
    ensure!(
        (primary.max_connections, primary.per_pod) == (i64::from(PRIMARY_MAX), 15),
        "{primary:?}"
    );
    let ro = status.read_only.as_ref().context("status.readOnly")?;
    let budget = ro.budget.as_ref().context("status.readOnly.budget")?;
    ensure!(
        (
            budget.max_connections,
            budget.database,
            budget.pods_max,
            budget.per_pod
        ) == (i64::from(STANDBY_MAX[0]), 56, 3, 18),
        "{budget:?}"
    );
    ensure!(
        ro.endpoint.as_deref() == Some("orders-ro.reads.svc:5432")
            && ro.app_secret_name.as_deref() == Some("orders-ro-app")
            && ro.ready_replicas == Some(2),
        "{ro:?}"
    );

    let uid = pool.uid().context("uid")?;
    let deployment = Api::<Deployment>::namespaced(env.client(), NS)
        .get("orders-ro")
        .await?;
    ensure!(
        deployment.spec.as_ref().and_then(|s| s.replicas) == Some(2),
        "read-only replicas: {:?}",
        deployment.spec.as_ref().map(|s| s.replicas)
    );
    let owners = deployment.owner_references();
    ensure!(
        owners.len() == 1 && owners[0].uid == uid,
        "owners: {owners:?}"
    );
    ensure!(
        env.exists("service/orders-ro").await?,
        "no Service orders-ro"
    );

    let config = Api::<ConfigMap>::namespaced(env.client(), NS)
        .get("orders-ro-config")
        .await?;
    let ini = config
        .data
        .as_ref()
        .and_then(|d| d.get("pgbouncer.ini"))
        .context("pgbouncer.ini")?;
    let [a, b] = &env.standbys;
    let entry = format!(
        "orders = dbname=orders host={},{} port={},{} load_balance_hosts=round-robin \
         target_session_attrs=standby max_db_connections=18",
        a.host(),
        b.host(),
        a.port(),
        b.port()
    );
    ensure!(ini.lines().any(|l| l == entry), "{entry:?} not in\n{ini}");

    let secret = Api::<Secret>::namespaced(env.client(), NS)
        .get("orders-ro-app")
        .await?;
    let data = secret.data.as_ref().context("app Secret data")?;
    let text = |key: &str| String::from_utf8_lossy(&data[key].0).into_owned();
    ensure!(
        text("user") == "app"
            && text("uri")
                .starts_with("postgresql://app:app-secret@orders-ro.reads.svc:5432/orders"),
        "{} {}",
        text("user"),
        text("uri")
    );
    Ok(())
}

/// An unreachable standby blocks only the read-only pool, which keeps its last sizes.
async fn an_unreachable_standby_blocks_only_the_read_only_pool(env: &Env) -> anyhow::Result<()> {
    let dead = net::free_port();
    let block = format!(
        "{}      - {{host: {}, port: {dead}}}\n",
        env.both_standbys().replace("    replicas: 2\n", ""),
        net::HOST
    ) + "    replicas: 2\n";
    env.apply(&env.manifest(POOL, &block))
        .await?
        .map_err(anyhow::Error::msg)?;
    let pool = env
        .wait_condition("ReadOnlyReady", "False", "StandbyUnreachable")
        .await?;
    let status = pool.status.as_ref().context("status")?;
    let ro = status.read_only.as_ref().context("status.readOnly")?;
    ensure!(
        ro.budget.as_ref().map(|b| b.per_pod) == Some(18),
        "kept budget: {ro:?}"
    );
    let ready = condition(&pool, "Ready").context("Ready")?;
    ensure!(ready.status == "True", "primary: {ready:?}");
    env.apply(&env.manifest(POOL, &env.both_standbys()))
        .await?
        .map_err(anyhow::Error::msg)?;
    env.wait_condition("ReadOnlyReady", "True", "PoolersReady")
        .await
        .map(drop)
}

/// Removing `readReplicas` deletes every read-only object and its status; the primary
/// pool stays.
async fn removing_read_replicas_prunes_the_read_only_pool(env: &Env) -> anyhow::Result<()> {
    env.apply(&env.manifest(POOL, ""))
        .await?
        .map_err(anyhow::Error::msg)?;
    eventually("the read-only objects to go", WAIT, || async {
        let mut left = Vec::new();
        for object in [
            "deployment/orders-ro",
            "service/orders-ro",
            "configmap/orders-ro-config",
            "secret/orders-ro-app",
            "secret/orders-ro-auth",
            "poddisruptionbudget/orders-ro",
            "serviceaccount/orders-ro",
        ] {
            if env.exists(object).await? {
                left.push(object);
            }
        }
        ensure!(left.is_empty(), "still there: {left:?}");
        Ok(())
    })
    .await?;
    let pool = env.wait_condition("Ready", "True", "PoolersReady").await?;
    let status = pool.status.as_ref().context("status")?;
    ensure!(
        status.read_only.is_none() && condition(&pool, "ReadOnlyReady").is_none(),
        "{:?}",
        status.read_only
    );
    ensure!(
        env.exists("deployment/orders").await?,
        "the primary Deployment went too"
    );
    Ok(())
}

/// The primary, and its two standbys with their own max_connections.
async fn databases() -> anyhow::Result<(PgCluster, [PgCluster; 2])> {
    let started = Instant::now();
    let primary = PgCluster::start_with(PgOptions {
        max_connections: PRIMARY_MAX,
        hba: Some(
            "local all postgres trust\nlocal all all md5\n\
             host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.0/8 md5\n\
             host replication postgres 127.0.0.1/32 trust\n"
                .into(),
        ),
        ..PgOptions::default()
    })
    .await?;
    primary
        .create_role("app", "app-secret", PasswordMethod::Scram)
        .await?;
    primary.create_database("orders", "app").await?;
    let standby = |max| {
        let primary = &primary;
        async move {
            PgCluster::start_standby_with(primary, &[format!("max_connections = {max}")]).await
        }
    };
    let (a, b) = tokio::try_join!(standby(STANDBY_MAX[0]), standby(STANDBY_MAX[1]))?;
    eprintln!("primary and standbys up in {:?}", started.elapsed());
    Ok((primary, [a, b]))
}

async fn setup() -> anyhow::Result<Env> {
    // PostgreSQL and the operator's control plane start side by side.
    let (databases, fixture) = tokio::try_join!(
        databases(),
        OperatorFixture::start(OperatorSetup {
            namespace: NS,
            crd: Crd::Apply,
            credentials: &[("orders-db-app", "app", "app-secret")],
            operator: ("op-reads", OPERATOR_ARGS),
        }),
    )?;
    let (primary, standbys) = databases;
    let OperatorFixture { plane, operator } = fixture;
    eprintln!("control plane up in {:?}", plane.startup);
    Ok(Env {
        plane,
        primary,
        standbys,
        operator,
    })
}

macro_rules! step {
    ($env:expr, $step:ident) => {
        if let Err(e) = weir_tests::k8s::timed_step(stringify!($step), $step($env)).await {
            weir_tests::k8s::step_failed(stringify!($step), &e, &$env.operator.log());
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_pools_on_a_real_api_server() {
    let started = Instant::now();
    let env = match setup().await {
        Ok(env) => env,
        Err(e) => panic!("setup failed: {e:#}"),
    };
    let env = &env;
    step!(env, invalid_specs_are_refused_at_admission);
    step!(env, the_read_only_pool_is_sized_from_the_standbys);
    step!(env, an_unreachable_standby_blocks_only_the_read_only_pool);
    step!(env, removing_read_replicas_prunes_the_read_only_pool);
    eprintln!("e2e_read_replicas: {:?} in all", started.elapsed());
}
