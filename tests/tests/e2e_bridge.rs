//! End to end from the control plane to the data path: the configuration the operator
//! rendered in a real cluster runs real `weir` poolers in front of a real PostgreSQL, and
//! under load the database never sees more server connections than the budget in
//! `status`.
//!
//! kwok runs no containers, so the test plays the kubelet: for each replica it puts the
//! ConfigMap's pgbouncer.ini and the Secret's userlist.txt into a directory and starts
//! `weir` on them. Only what a pod has to itself changes: the listening ports (all pods
//! share this machine's loopback) and the auth file's path (the mount point becomes the
//! directory). The operator runs as a local process with the harness's kubeconfig, since
//! no pod can run here.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::Api;
use weir_operator::api::ConnectionPool;
use weir_tests::k8s::{
    eventually, localize_pgbouncer_ini, ControlPlane, Crd, OperatorFixture, OperatorSetup,
};
use weir_tests::net;
use weir_tests::postgres::{self, parse_pgbench, PasswordMethod, PgCluster, PgOptions};
use weir_tests::weir::WeirProcess;

const NS: &str = "bridge";
const USER: &str = "app";
const PASSWORD: &str = "app-secret";
const DATABASE: &str = "orders";
const REPLICAS: usize = 3;

/// Server connections of the pool's user right now, leaving out the operator's own short
/// visits to read max_connections.
const COUNT_SERVER_CONNECTIONS: &str = "SELECT count(*) FROM pg_stat_activity \
     WHERE usename = 'app' AND datname = 'orders' AND backend_type = 'client backend' \
     AND application_name <> 'weir-operator'";

async fn ready_pool(plane: &ControlPlane) -> anyhow::Result<ConnectionPool> {
    let pools: Api<ConnectionPool> = Api::namespaced(plane.client(), NS);
    eventually("the pool is Ready", Duration::from_secs(60), || async {
        let pool = pools.get("shop").await?;
        let ready = pool
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == "Ready"))
            .context("no Ready condition")?;
        ensure!(
            ready.status == "True",
            "{}: {}",
            ready.reason,
            ready.message
        );
        Ok(pool)
    })
    .await
}

async fn run() -> anyhow::Result<()> {
    let started = Instant::now();
    // The pod IPs kwok invents lead to no pooler (the test's poolers share loopback and
    // cannot all take the pooler's fixed HTTP port), so /status is not read: the settle
    // time alone gates adding pods, and this test never adds any.
    let (fixture, pg) = tokio::try_join!(
        OperatorFixture::start(OperatorSetup {
            namespace: NS,
            crd: Crd::Apply,
            credentials: &[("shop-db", USER, PASSWORD)],
            operator: (
                "bridge",
                &["--leader-elect=false", "--poll-pod-status=false"]
            ),
        }),
        async {
            let pg = PgCluster::start_with(PgOptions {
                max_connections: 40,
                ..PgOptions::default()
            })
            .await?;
            pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
                .await?;
            pg.create_database(DATABASE, USER).await?;
            let init = pg
                .pgbench(USER, PASSWORD, DATABASE, &["-i", "-s", "1", "-q"])
                .await?;
            ensure!(init.success(), "pgbench -i: {}", init.stderr);
            Ok(pg)
        },
    )?;
    let OperatorFixture { plane, operator } = fixture;
    eprintln!("control plane up in {:?}", plane.startup);
    let manifest = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: shop\n\
         spec:\n  database:\n    host: {host}\n    port: {port}\n    dbname: {DATABASE}\n    \
         credentialsSecret: {{name: shop-db}}\n    maxConnections: auto\n  \
         replicas: {REPLICAS}\n  poolMode: transaction\n",
        host = net::HOST,
        port = pg.port(),
    );
    let out = plane
        .kubectl_with_input(&["apply", "-n", NS, "-f", "-"], Some(&manifest))
        .await?;
    ensure!(out.success(), "{}", out.stderr);
    let pool = ready_pool(&plane)
        .await
        .with_context(|| format!("operator log:\n{}", operator.log()))?;
    let budget = pool
        .status
        .as_ref()
        .and_then(|s| s.budget.clone())
        .context("no budget")?;
    eprintln!("budget: {budget:?}");
    ensure!(budget.max_connections == 40, "{budget:?}");

    // What the kubelet would mount.
    let config = Api::<ConfigMap>::namespaced(plane.client(), NS)
        .get("shop-config")
        .await?;
    let ini = config
        .data
        .and_then(|d| d.get("pgbouncer.ini").cloned())
        .context("no pgbouncer.ini")?;
    let auth = Api::<Secret>::namespaced(plane.client(), NS)
        .get("shop-auth")
        .await?;
    let userlist = auth
        .data
        .and_then(|d| d.get("userlist.txt").cloned())
        .context("no userlist.txt")?;
    let userlist = String::from_utf8(userlist.0).context("userlist.txt is not UTF-8")?;

    let mut poolers = Vec::new();
    for _ in 0..REPLICAS {
        let local = localize_pgbouncer_ini(&ini, net::free_port())?;
        poolers.push(WeirProcess::start(&local, &userlist).await?);
    }

    // Sample the server connections while pgbench drives every pooler with more clients
    // than the budget has connections.
    let done = Arc::new(AtomicBool::new(false));
    let most = Arc::new(AtomicI64::new(0));
    let observer = pg.superuser().await?;
    let sampler = {
        let (done, most) = (Arc::clone(&done), Arc::clone(&most));
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                let row = observer.query_one(COUNT_SERVER_CONNECTIONS, &[]).await?;
                most.fetch_max(row.get(0), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            anyhow::Ok(())
        })
    };
    let runs = poolers.iter().map(|p| {
        postgres::pgbench(
            net::HOST,
            p.port(),
            USER,
            PASSWORD,
            DATABASE,
            &["-n", "-c", "12", "-j", "2", "-T", "8"],
        )
    });
    let results = futures::future::join_all(runs).await;
    done.store(true, Ordering::Relaxed);
    sampler.await.context("sampler task")??;

    for (result, pooler) in results.into_iter().zip(&poolers) {
        let out = result?;
        let summary = parse_pgbench(&out.stdout).with_context(|| {
            format!(
                "pgbench through port {}: {}\n{}\nweir log:\n{}",
                pooler.port(),
                out.stdout,
                out.stderr,
                pooler.log()
            )
        })?;
        ensure!(
            out.success() && summary.transactions > 0 && summary.failed == 0,
            "pgbench through port {}: {summary:?}\n{}",
            pooler.port(),
            out.stderr
        );
    }
    let most = most.load(Ordering::Relaxed);
    let running = i64::try_from(REPLICAS)? * budget.per_pod;
    eprintln!(
        "most server connections seen: {most} (budget {}, {REPLICAS} pods x {} per pod)",
        budget.pool, budget.per_pod
    );
    ensure!(most > 0, "no server connection was ever seen");
    ensure!(most <= running, "{most} > {REPLICAS} x {}", budget.per_pod);
    ensure!(
        most <= budget.pool,
        "{most} > the pool's budget {}",
        budget.pool
    );

    drop(poolers);
    operator.terminate(Duration::from_secs(20)).await?;
    eprintln!("e2e_bridge: {:?} in all", started.elapsed());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_configuration_keeps_the_database_within_budget() {
    if let Err(e) = run().await {
        panic!("{e:#}");
    }
}
