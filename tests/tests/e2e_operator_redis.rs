//! End to end: Redis ConnectionPools on a real Kubernetes API server (tests/controlplane,
//! kwok nodes) in front of a real `redis-server`, started here on a free port with a
//! known `--maxclients`.
//!
//! Proves what the operator does for Redis: an invalid spec is refused at admission, the
//! server's maxclients is read with CONFIG GET and divided across the pods that can exist,
//! the ConfigMap's `[redis]` section and the app Secret carry it, and a server that refuses
//! CONFIG (as managed ones do) is reported until `maxClients` is given.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::Api;
use weir_operator::api::ConnectionPool;
use weir_tests::k8s::{
    eventually, ControlPlane, Crd, Operator, OperatorFixture, OperatorSetup, Output,
};
use weir_tests::net;

const NS: &str = "e2e-redis";
const WAIT: Duration = Duration::from_secs(60);
const MAX_CLIENTS: u32 = 223;
/// The `default` user's password (requirepass).
const PASSWORD: &str = "s3cret:pw";
/// An ACL user that may run everything but CONFIG, like a managed service's user.
const LIMITED: (&str, &str) = ("limited", "lim-pw");

/// A `redis-server` child process, killed on drop.
struct RedisServer {
    _child: tokio::process::Child,
    port: u16,
}

impl RedisServer {
    async fn start() -> anyhow::Result<RedisServer> {
        let port = net::free_port();
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .args(["--maxclients", &MAX_CLIENTS.to_string()])
            .args(["--requirepass", PASSWORD])
            .args(["--user", LIMITED.0, "on", &format!(">{}", LIMITED.1)])
            .args(["~*", "&*", "+@all", "-config"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting redis-server (scripts/ensure-deps.sh installs it)")?;
        net::wait_for_port(port, WAIT).await?;
        Ok(RedisServer {
            _child: child,
            port,
        })
    }
}

struct Env {
    plane: ControlPlane,
    operator: Operator,
    redis: RedisServer,
}

impl Env {
    async fn kubectl_ns(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", NS];
        all.extend_from_slice(args);
        self.plane.kubectl_ok(&all).await
    }

    /// `kubectl apply` of `manifest` in the test namespace.
    async fn apply(&self, manifest: &str) -> anyhow::Result<Output> {
        self.plane
            .kubectl_with_input(&["apply", "-n", NS, "-f", "-"], Some(manifest))
            .await
    }

    /// Waits until the pool's condition `type_` has `status` and `reason` for its current
    /// generation.
    async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: &str,
    ) -> anyhow::Result<ConnectionPool> {
        let pools: Api<ConnectionPool> = Api::namespaced(self.plane.client(), NS);
        eventually(
            &format!("{name}: {type_}={status} {reason}"),
            WAIT,
            || async {
                let pool = pools.get(name).await?;
                let c = condition(&pool, type_).with_context(|| format!("no {type_} yet"))?;
                ensure!(
                    c.status == status
                        && c.reason == reason
                        && c.observed_generation == pool.metadata.generation,
                    "{type_} is {} {}: {}",
                    c.status,
                    c.reason,
                    c.message
                );
                Ok(pool)
            },
        )
        .await
    }

    async fn wait_event(&self, pool: &str, reason: &str) -> anyhow::Result<String> {
        eventually(&format!("{pool}: Event {reason}"), WAIT, || async {
            let text = self
                .kubectl_ns(&[
                    "get",
                    "events",
                    "--field-selector",
                    &format!("involvedObject.kind=ConnectionPool,involvedObject.name={pool}"),
                    "-o",
                    "jsonpath={range .items[*]}{.reason}{\"\\t\"}{.message}{\"\\n\"}{end}",
                ])
                .await?;
            text.lines()
                .filter_map(|l| l.split_once('\t'))
                .find(|(r, _)| *r == reason)
                .map(|(_, m)| m.to_owned())
                .context("not published yet")
        })
        .await
    }
}

fn condition<'a>(pool: &'a ConnectionPool, type_: &str) -> Option<&'a Condition> {
    pool.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_)
}

fn squash(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn pool_manifest(name: &str, port: u16, redis_extra: &str, extra: &str) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: {name}\n\
         spec:\n  replicas: 3\n  redis:\n    host: 127.0.0.1\n    port: {port}\n{redis_extra}{extra}"
    )
}

async fn invalid_specs_are_refused_at_admission(env: &Env) -> anyhow::Result<()> {
    let both =
        "  database:\n    host: db\n    dbname: orders\n    credentialsSecret: {name: x}\n    \
                maxConnections: 100\n";
    let cases = [
        (
            pool_manifest("both", env.redis.port, "", both),
            "set exactly one of database (a PostgreSQL server) and redis (a Redis server)",
        ),
        (
            pool_manifest(
                "idle",
                env.redis.port,
                "    privatePool: {maxIdlePerDb: 2, minIdlePerDb: 5}\n",
                "",
            ),
            "minIdlePerDb must be between 0 and maxIdlePerDb",
        ),
        (
            pool_manifest("noclients", env.redis.port, "    maxClients: 0\n", ""),
            "maxClients must be at least 1",
        ),
    ];
    for (manifest, message) in cases {
        let out = env.apply(&manifest).await?;
        ensure!(!out.success(), "admitted:\n{manifest}");
        ensure!(
            squash(&out.stderr).contains(message),
            "expected {message:?}, got {}",
            out.stderr
        );
    }
    Ok(())
}

async fn maxclients_is_read_and_divided(env: &Env) -> anyhow::Result<()> {
    env.plane
        .create_credentials(NS, "cache-auth", "default", PASSWORD)
        .await?;
    let manifest = pool_manifest(
        "cache",
        env.redis.port,
        "    credentialsSecret: {name: cache-auth}\n    sharedConnections: 3\n    \
         privatePool: {enabled: true, minIdlePerDb: 1}\n",
        "",
    );
    let out = env.apply(&manifest).await?;
    ensure!(out.success(), "{}", out.stderr);
    let pool = env
        .wait_condition("cache", "BudgetFeasible", "True", "Fits")
        .await?;
    let status = pool.status.clone().context("status")?;
    let budget = status.budget.context("budget")?;
    // 223 − ceil(223 × 15 %) = 223 − 34 = 189 for 3 replicas + 1 surge: 47 each.
    let headroom = i64::from((MAX_CLIENTS * 15).div_ceil(100));
    let per_pod = (i64::from(MAX_CLIENTS) - headroom) / 4;
    ensure!(
        budget.max_connections == i64::from(MAX_CLIENTS)
            && budget.reserved_headroom == headroom
            && budget.pods_max == 4
            && budget.per_pod == per_pod,
        "{budget:?}"
    );
    ensure!(
        status.endpoint.as_deref() == Some("cache.e2e-redis.svc:6379"),
        "{:?}",
        status.endpoint
    );
    ensure!(status.app_secret_name.as_deref() == Some("cache-app"));
    env.wait_event("cache", "BudgetComputed").await?;

    let client = env.plane.client();
    let config: ConfigMap = Api::namespaced(client.clone(), NS)
        .get("cache-config")
        .await?;
    let ini = config
        .data
        .as_ref()
        .and_then(|d| d.get("pgbouncer.ini"))
        .context("pgbouncer.ini")?;
    let redis = ini
        .split_once("\n[redis]\n")
        .context("a [redis] section")?
        .1;
    for line in [
        "listen_port = 6379".to_owned(),
        format!("server = 127.0.0.1:{}", env.redis.port),
        "auth_file = /etc/weir/auth/userlist.txt".to_owned(),
        "shared_connections = 3".to_owned(),
        format!("max_server_connections = {per_pod}"),
        "private_conn_pool_enabled = 1".to_owned(),
        "private_conn_idle_time_sec = 60".to_owned(),
        "private_conn_pool_max_idle_per_db = 1000".to_owned(),
        "private_conn_pool_min_idle_per_db = 1".to_owned(),
    ] {
        ensure!(redis.lines().any(|l| l == line), "no {line:?} in\n{redis}");
    }

    let app: Secret = Api::namespaced(client.clone(), NS).get("cache-app").await?;
    let data = app.data.context("app Secret data")?;
    let value = |key: &str| {
        data.get(key)
            .map(|v| String::from_utf8_lossy(&v.0).into_owned())
            .with_context(|| format!("no {key}"))
    };
    ensure!(
        value("uri")? == "redis://default:s3cret%3Apw@cache.e2e-redis.svc:6379/0",
        "{}",
        value("uri")?
    );
    ensure!(value("port")? == "6379" && value("username")? == "default");
    ensure!(value("password")? == PASSWORD);

    let service: Service = Api::namespaced(client, NS).get("cache").await?;
    let ports = service.spec.and_then(|s| s.ports).context("ports")?;
    ensure!(
        ports.len() == 1 && ports[0].name.as_deref() == Some("redis") && ports[0].port == 6379,
        "{ports:?}"
    );
    Ok(())
}

async fn a_server_refusing_config_needs_max_clients(env: &Env) -> anyhow::Result<()> {
    // Pools on one server share its budget: the first pool's claim goes with it.
    env.kubectl_ns(&["delete", "cpool", "cache", "--wait=true"])
        .await?;
    let limited = "cache-limited";
    env.plane
        .create_credentials(NS, "limited-auth", LIMITED.0, LIMITED.1)
        .await?;
    let manifest = pool_manifest(
        limited,
        env.redis.port,
        "    credentialsSecret: {name: limited-auth}\n",
        "",
    );
    let out = env.apply(&manifest).await?;
    ensure!(out.success(), "{}", out.stderr);
    let pool = env
        .wait_condition(limited, "BudgetFeasible", "Unknown", "MaxClientsUnknown")
        .await?;
    let c = condition(&pool, "BudgetFeasible").context("condition")?;
    ensure!(
        c.message.contains("NOPERM") && c.message.contains("set spec.redis.maxClients"),
        "{}",
        c.message
    );
    let event = env.wait_event(limited, "MaxClientsUnknown").await?;
    ensure!(event.contains("spec.redis.maxClients"), "{event}");
    ensure!(
        env.kubectl_ns(&["get", "deploy", limited, "--ignore-not-found"])
            .await?
            .is_empty(),
        "a Deployment without a budget"
    );

    env.kubectl_ns(&[
        "patch",
        "cpool",
        limited,
        "--type=merge",
        "-p",
        r#"{"spec":{"redis":{"maxClients":100}}}"#,
    ])
    .await?;
    let pool = env
        .wait_condition(limited, "BudgetFeasible", "True", "Fits")
        .await?;
    let budget = pool.status.and_then(|s| s.budget).context("budget")?;
    // 100 − 15 = 85 over 4 pods.
    ensure!(
        budget.max_connections == 100 && budget.per_pod == 21,
        "{budget:?}"
    );
    Ok(())
}

async fn setup() -> anyhow::Result<Env> {
    let (redis, fixture) = tokio::try_join!(
        RedisServer::start(),
        OperatorFixture::start(OperatorSetup {
            namespace: NS,
            crd: Crd::Apply,
            credentials: &[],
            operator: (
                "op-redis",
                &["--database-timeout-seconds=2", "--resync-seconds=20"],
            ),
        }),
    )?;
    let OperatorFixture { plane, operator } = fixture;
    eprintln!("control plane up in {:?}", plane.startup);
    Ok(Env {
        plane,
        operator,
        redis,
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
async fn redis_pools_end_to_end() {
    let started = Instant::now();
    let env = match setup().await {
        Ok(env) => env,
        Err(e) => panic!("setup failed: {e:#}"),
    };
    step!(&env, invalid_specs_are_refused_at_admission);
    step!(&env, maxclients_is_read_and_divided);
    step!(&env, a_server_refusing_config_needs_max_clients);
    eprintln!("e2e_operator_redis: {:?} in all", started.elapsed());
}
