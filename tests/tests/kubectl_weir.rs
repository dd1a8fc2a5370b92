//! `kubectl weir` against a real API server (tests/controlplane, kwok's nodes) and a real
//! PostgreSQL: `status` and `explain-budget` show the budget the operator computed from the
//! database, `explain-budget -f` agrees offline, and `console` finds its login in the
//! operator's auth Secret. Reading the pods themselves (pod proxy, port-forward) needs real
//! pods: tests/tests/e2e_pods.rs covers that.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{ensure, Context as _};
use kube::Api;
use weir_operator::api::{BudgetStatus, ConnectionPool};
use weir_tests::k8s::{
    eventually, operator_binary, ControlPlane, Crd, Operator, OperatorFixture, OperatorSetup,
    Output,
};
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions};

const NS: &str = "plugin";
const WAIT: Duration = Duration::from_secs(60);
const MAX_CONNECTIONS: u32 = 60;

struct Env {
    plane: ControlPlane,
    /// Where `kubectl-weir` was built, next to the operator under test.
    plugin_dir: PathBuf,
    pg: PgCluster,
    _operator: Operator,
}

impl Env {
    async fn weir(&self, args: &[&str]) -> anyhow::Result<Output> {
        self.plane.kubectl_weir(&self.plugin_dir, args).await
    }

    async fn weir_ok(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self.weir(args).await?;
        ensure!(
            out.success(),
            "kubectl weir {args:?} failed: {}{}",
            out.stdout,
            out.stderr
        );
        Ok(out.stdout)
    }

    fn manifest(&self) -> String {
        format!(
            "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: orders\n  \
             namespace: {NS}\nspec:\n  replicas: 2\n  maxConnectionsPercent: 80\n  database:\n    \
             host: 127.0.0.1\n    port: {}\n    dbname: orders\n    \
             credentialsSecret: {{name: orders-db-app}}\n    maxConnections: auto\n    \
             reservedPercent: 10\n",
            self.pg.port()
        )
    }

    /// Waits until the operator has reported the budget and both (kwok) pods are Ready.
    async fn ready_pool(&self) -> anyhow::Result<(ConnectionPool, BudgetStatus)> {
        eventually("orders Ready with a budget", WAIT, || async {
            let pool = Api::<ConnectionPool>::namespaced(self.plane.client(), NS)
                .get("orders")
                .await?;
            let status = pool.status.clone().context("no status")?;
            let ready = status
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            ensure!(
                ready && status.observed_generation == pool.metadata.generation,
                "{status:?}"
            );
            let budget = status.budget.context("no budget")?;
            Ok((pool, budget))
        })
        .await
    }

    async fn pod_names(&self) -> anyhow::Result<Vec<String>> {
        let text = self
            .plane
            .kubectl_ok(&[
                "get",
                "pods",
                "-n",
                NS,
                "-l",
                "weir.dev/pool=orders",
                "-o",
                "jsonpath={range .items[*]}{.metadata.name}{\"\\n\"}{end}",
            ])
            .await?;
        Ok(text.lines().map(str::to_owned).collect())
    }
}

async fn setup() -> anyhow::Result<Env> {
    let (fixture, pg) = tokio::try_join!(
        OperatorFixture::start(OperatorSetup {
            namespace: NS,
            crd: Crd::Apply,
            credentials: &[("orders-db-app", "app", "app-secret")],
            operator: ("op", &["--leader-elect=false"]),
        }),
        async {
            let pg = PgCluster::start_with(PgOptions {
                max_connections: MAX_CONNECTIONS,
                ..PgOptions::default()
            })
            .await?;
            pg.create_role("app", "app-secret", PasswordMethod::Scram)
                .await?;
            pg.create_database("orders", "app").await?;
            Ok::<_, anyhow::Error>(pg)
        },
    )?;
    let OperatorFixture { plane, operator } = fixture;
    let plugin_dir = operator_binary()
        .await?
        .parent()
        .context("the operator binary has no directory")?
        .to_owned();
    Ok(Env {
        plane,
        plugin_dir,
        pg,
        _operator: operator,
    })
}

/// The line of `text` that starts with `label`, with runs of blanks squashed.
fn line(text: &str, label: &str) -> anyhow::Result<String> {
    text.lines()
        .find(|l| l.starts_with(label))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .with_context(|| format!("no line {label:?} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_weir_on_a_real_api_server() {
    if let Err(e) = scenario().await {
        panic!("{e:#}");
    }
}

async fn scenario() -> anyhow::Result<()> {
    let env = setup().await?;
    let manifest = env.manifest();
    let applied = env
        .plane
        .kubectl_with_input(&["apply", "-f", "-"], Some(&manifest))
        .await?;
    ensure!(applied.success(), "{}", applied.stderr);
    let (_, b) = env.ready_pool().await?;
    ensure!(b.max_connections == i64::from(MAX_CONNECTIONS), "{b:?}");

    // status: the arithmetic of .status.budget, and a row per pod (kwok runs no containers,
    // so each says why its /status could not be read).
    let status = env.weir_ok(&["status", "-n", NS]).await?;
    eprintln!("{status}");
    let header = line(&status, "ConnectionPool plugin/orders:")?;
    ensure!(
        header.contains("2/2 pods ready, Ready=True, BudgetFeasible=True"),
        "{header}"
    );
    ensure!(
        line(&status, "  database budget:")?
            == format!(
                "database budget: max_connections {} − {} superuser-reserved − {} headroom − {} \
                 used by others = {}",
                b.max_connections,
                b.superuser_reserved,
                b.reserved_headroom,
                b.used_by_others,
                b.database
            ),
        "{status}"
    );
    ensure!(
        line(&status, "  this pool:")?
            == format!(
                "this pool: {} (other pools claim 0); {} pods at most × {} per pod \
                 (max_db_connections) ≤ {}",
                b.pool, b.pods_max, b.per_pod, b.pool
            ),
        "{status}"
    );
    let pods = env.pod_names().await?;
    ensure!(pods.len() == 2, "{pods:?}");
    for pod in &pods {
        let row = line(&status, &format!("  {pod} "))?;
        ensure!(
            row.starts_with(&format!(
                "{pod} true - - - - {} /status unreadable",
                b.per_pod
            )),
            "{row}"
        );
    }

    // explain-budget, live and offline with the database's numbers, agree with the status.
    let live = env.weir_ok(&["explain-budget", "-n", NS, "orders"]).await?;
    eprintln!("{live}");
    let headroom = (u64::from(MAX_CONNECTIONS) * 10).div_ceil(100);
    for (label, value) in [
        ("max_connections", b.max_connections),
        ("- superuser reserved", b.superuser_reserved),
        ("- headroom", i64::try_from(headroom)?),
        ("= database budget", b.database),
        ("pool budget", b.pool),
        ("pods at most", b.pods_max),
        ("per pod", b.per_pod),
        ("user app", b.per_pod),
    ] {
        let got = line(&live, label)?;
        let want = format!("{label} {value} ");
        ensure!(
            got.starts_with(&want),
            "{got:?} does not start with {want:?}"
        );
    }
    ensure!(
        line(&live, "pool budget")?.contains(&format!(
            "floor({} × maxConnectionsPercent 80 / 100)",
            b.database
        )),
        "{live}"
    );
    ensure!(!live.contains("differs"), "{live}");
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("orders.yaml");
    std::fs::write(&file, &manifest)?;
    let offline = env
        .weir_ok(&[
            "explain-budget",
            "-f",
            &file.to_string_lossy(),
            "--max-connections",
            &MAX_CONNECTIONS.to_string(),
            "--superuser-reserved",
            &b.superuser_reserved.to_string(),
        ])
        .await?;
    let numbers = |text: &str| -> Vec<String> {
        text.lines()
            .skip(2)
            .map(|l| {
                let mut parts = l.split("  ").map(str::trim).filter(|p| !p.is_empty());
                format!(
                    "{} {}",
                    parts.next().unwrap_or(""),
                    parts.next().unwrap_or("")
                )
            })
            .collect()
    };
    ensure!(
        numbers(&offline)
            .iter()
            .take(9)
            .eq(numbers(&live).iter().take(9)),
        "offline:\n{offline}\nlive:\n{live}"
    );

    // render is the operator's offline render.
    let rendered = env
        .weir_ok(&[
            "render",
            "-f",
            &file.to_string_lossy(),
            "--max-connections",
            "60",
        ])
        .await?;
    ensure!(
        rendered.contains(&format!("max_db_connections={}", b.per_pod))
            && rendered.contains("kind: Deployment"),
        "{rendered}"
    );

    // console: without a console user it says how to name one; with one, every pod is
    // tried (and kwok's pods, having no containers, cannot be reached).
    let refused = env
        .weir(&["console", "-n", NS, "orders", "--", "SHOW POOLS"])
        .await?;
    ensure!(
        !refused.success() && refused.stderr.contains("no console user"),
        "{refused:?}"
    );
    env.plane
        .kubectl_ok(&[
            "patch",
            "cpool",
            "orders",
            "-n",
            NS,
            "--type=merge",
            "-p",
            r#"{"spec":{"parameters":{"stats_users":"app"}}}"#,
        ])
        .await?;
    env.ready_pool().await?;
    let tried = env
        .weir(&["console", "-n", NS, "orders", "--", "SHOW POOLS"])
        .await?;
    ensure!(
        !tried.success() && tried.stderr.contains("2 of 2 pods did not answer"),
        "{tried:?}"
    );
    for pod in &pods {
        ensure!(
            tried.stdout.contains(&format!("error: {pod}: ")),
            "{tried:?}"
        );
    }
    Ok(())
}
