//! End to end: the operator against a real Kubernetes control plane (tests/controlplane:
//! kube-apiserver, controller manager and scheduler, with kwok standing in for kubelets),
//! in front of a real PostgreSQL for `maxConnections: auto`.
//!
//! The operator runs as a local process (target/debug/weir-operator with the harness's
//! kubeconfig), not as a pod: kwok runs no containers, so an in-cluster operator could not
//! run, and a local process lets the test kill and restart it at will. Its reach is the
//! same: it only talks to the API server, and to PostgreSQL, which listens on loopback.
//!
//! Starting the control plane takes 10-20 s, so one test runs every scenario as a
//! sequence of named steps on one control plane; a failing step names itself.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _};
use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use weir_operator::api::ConnectionPool;
use weir_tests::k8s::{
    eventually, workspace, ControlPlane, Crd, Operator, OperatorFixture, OperatorSetup,
};
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions};

const NS: &str = "e2e";
const WAIT: Duration = Duration::from_secs(60);
/// Short timings so that the scenarios run in seconds: pods get 2 s to reload a
/// ConfigMap, a lease expires 6 s after its last renewal. kwok pods run no pooler, so
/// there is no /status to read: the settle time alone gates adding pods (e2e_pods checks
/// the /status gate on real pods).
const OPERATOR_ARGS: &[&str] = &[
    "--poll-pod-status=false",
    "--config-settle-seconds=2",
    "--lease-duration-seconds=6",
    "--lease-renew-grace-seconds=2",
    "--database-cache-seconds=1",
    "--resync-seconds=20",
];
/// The PostgreSQL max_connections the `auto` pools read.
const MAX_CONNECTIONS: i64 = 60;

struct Env {
    plane: ControlPlane,
    pg: PgCluster,
    operator: Operator,
    standby: Option<Operator>,
}

impl Env {
    fn pools(&self) -> Api<ConnectionPool> {
        Api::namespaced(self.plane.client(), NS)
    }

    async fn pool(&self, name: &str) -> anyhow::Result<ConnectionPool> {
        self.pools()
            .get(name)
            .await
            .with_context(|| format!("reading ConnectionPool {name}"))
    }

    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.plane.kubectl_ok(args).await
    }

    /// `kubectl apply` of `manifest` in the test namespace.
    async fn apply(&self, manifest: &str) -> anyhow::Result<()> {
        let out = self
            .plane
            .kubectl_with_input(&["apply", "-n", NS, "-f", "-"], Some(manifest))
            .await?;
        ensure!(out.success(), "{}", out.stderr);
        Ok(())
    }

    async fn kubectl_ns(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", NS];
        all.extend_from_slice(args);
        self.plane.kubectl_ok(&all).await
    }

    /// Waits until the pool's condition `type_` has `status` (and `reason`, when given)
    /// for its current generation.
    async fn wait_condition(
        &self,
        name: &str,
        type_: &str,
        status: &str,
        reason: Option<&str>,
    ) -> anyhow::Result<ConnectionPool> {
        eventually(
            &format!("{name}: {type_}={status} {reason:?}"),
            WAIT,
            || async {
                let pool = self.pool(name).await?;
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
            },
        )
        .await
    }

    async fn events(&self, pool: &str) -> anyhow::Result<Vec<(String, String)>> {
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
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(r, m)| (r.to_owned(), m.to_owned()))
            .collect())
    }

    async fn wait_event(&self, pool: &str, reason: &str) -> anyhow::Result<String> {
        eventually(&format!("{pool}: Event {reason}"), WAIT, || async {
            self.events(pool)
                .await?
                .into_iter()
                .find(|(r, _)| r == reason)
                .map(|(_, m)| m)
                .context("not published yet")
        })
        .await
    }

    async fn deployment(&self, name: &str) -> anyhow::Result<Option<Deployment>> {
        Ok(Api::<Deployment>::namespaced(self.plane.client(), NS)
            .get_opt(name)
            .await?)
    }

    /// Names of every object of the pool's (children, ReplicaSets, Pods, EndpointSlices).
    async fn labelled(&self, selector: &str) -> anyhow::Result<Vec<String>> {
        let text = self
            .kubectl_ns(&[
                "get",
                "deploy,rs,pod,svc,cm,secret,pdb,sa,endpointslices",
                "-l",
                selector,
                "-o",
                "name",
            ])
            .await?;
        Ok(text.lines().map(str::to_owned).collect())
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

/// The indented comment line after the first line starting with `marker` (the examples'
/// format, see operator/tests/examples.rs).
fn quoted_after<'a>(text: &'a str, marker: &str) -> Option<&'a str> {
    let mut lines = text.lines().skip_while(|l| !l.starts_with(marker));
    lines.next()?;
    lines.next()?.strip_prefix("#   ")
}

/// The child objects of a pool, by kind and name, each checked to be controlled by it.
async fn owned_children(env: &Env, pool: &ConnectionPool) -> anyhow::Result<BTreeSet<String>> {
    let name = pool.name_any();
    let uid = pool.uid().context("pool without uid")?;
    let text = env
        .kubectl_ns(&[
            "get",
            "deploy,svc,cm,secret,pdb,sa",
            "-l",
            &format!("weir.dev/pool={name}"),
            "-o",
            "json",
        ])
        .await?;
    let list: serde_json::Value = serde_json::from_str(&text)?;
    let mut found = BTreeSet::new();
    for item in list["items"].as_array().context("a list")? {
        let id = format!(
            "{}/{}",
            item["kind"].as_str().unwrap_or_default(),
            item["metadata"]["name"].as_str().unwrap_or_default()
        );
        let owners = item["metadata"]["ownerReferences"]
            .as_array()
            .with_context(|| format!("{id} has no owner references"))?;
        ensure!(owners.len() == 1, "{id}: owners {owners:?}");
        let owner = &owners[0];
        ensure!(
            owner["kind"] == "ConnectionPool"
                && owner["name"] == name.as_str()
                && owner["uid"] == uid.as_str()
                && owner["controller"] == true
                && owner.get("blockOwnerDeletion").is_none(),
            "{id}: owner reference {owner}"
        );
        ensure!(found.insert(id.clone()), "{id} twice");
    }
    Ok(found)
}

fn expected_children(name: &str) -> BTreeSet<String> {
    [
        format!("Deployment/{name}"),
        format!("Service/{name}"),
        format!("ConfigMap/{name}-config"),
        format!("Secret/{name}-auth"),
        format!("Secret/{name}-app"),
        format!("PodDisruptionBudget/{name}"),
        format!("ServiceAccount/{name}"),
    ]
    .into()
}

async fn template_and_replica_sets(
    env: &Env,
    name: &str,
) -> anyhow::Result<(serde_json::Value, BTreeSet<String>)> {
    let deployment = env.deployment(name).await?.context("no Deployment")?;
    let template = serde_json::to_value(&deployment.spec.context("no spec")?.template)?;
    let sets = Api::<ReplicaSet>::namespaced(env.plane.client(), NS)
        .list(&ListParams::default().labels(&format!("weir.dev/pool={name}")))
        .await?
        .items
        .iter()
        // Scaled-down ReplicaSets stay as rollout history; only live ones count.
        .filter(|rs| rs.spec.as_ref().and_then(|s| s.replicas).unwrap_or(0) > 0)
        .map(|rs| rs.name_any())
        .collect();
    Ok((template, sets))
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

async fn lease_holder(env: &Env) -> anyhow::Result<String> {
    let lease = Api::<Lease>::namespaced(env.plane.client(), "default")
        .get("weir-operator")
        .await?;
    lease
        .spec
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
        .context("the lease has no holder")
}

// --- steps -------------------------------------------------------------------------

async fn crd_is_documented(env: &mut Env) -> anyhow::Result<()> {
    // The API server publishes a new CRD's OpenAPI schema a moment after it is established.
    eventually("kubectl explain shows the docs", WAIT, || async {
        let spec = squash(&env.kubectl(&["explain", "connectionpool.spec"]).await?);
        for text in [
            "poolMode",
            "maxConnectionsPercent",
            "The PostgreSQL server the poolers connect to",
        ] {
            ensure!(spec.contains(text), "explain lacks {text:?}:\n{spec}");
        }
        let mode = squash(
            &env.kubectl(&["explain", "connectionpool.spec.poolMode"])
                .await?,
        );
        ensure!(
            mode.contains("When a server connection goes back to the pool"),
            "{mode}"
        );
        Ok(())
    })
    .await
}

async fn bad_examples_are_refused(env: &mut Env) -> anyhow::Result<()> {
    let dir = workspace().join("examples/bad");
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    ensure!(files.len() >= 5, "{files:?}");
    let mut admitted = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        let relative = format!(
            "examples/bad/{}",
            file.file_name().unwrap_or_default().to_string_lossy()
        );
        let out = env
            .plane
            .kubectl(&["apply", "-n", NS, "-f", &relative])
            .await?;
        match quoted_after(&text, "# kubectl apply refuses it:") {
            Some(promised) => {
                ensure!(!out.success(), "{relative} was admitted");
                ensure!(
                    squash(&out.stderr).contains(&squash(promised)),
                    "{relative}: expected {promised:?}, got {:?}",
                    out.stderr
                );
            }
            None => {
                ensure!(out.success(), "{relative}: {}", out.stderr);
                admitted.push((relative, text));
            }
        }
    }
    // Admitted but infeasible: reported, with the same message render gives offline.
    for (relative, text) in admitted {
        let promised = quoted_after(
            &text,
            &format!("# weir-operator render -f {relative} says:"),
        )
        .with_context(|| format!("{relative}: no documented render error"))?;
        let message = promised
            .strip_prefix(&format!("weir-operator: {relative}: "))
            .context("render error format")?;
        let name = relative
            .trim_start_matches("examples/bad/")
            .trim_end_matches(".yaml");
        let pool = env
            .wait_condition(name, "BudgetFeasible", "False", Some("BudgetTooSmall"))
            .await?;
        let c = condition(&pool, "BudgetFeasible").context("condition")?;
        ensure!(
            c.message == message,
            "{name}: {:?} != {message:?}",
            c.message
        );
        ensure!(
            env.deployment(name).await?.is_none(),
            "{name} got a Deployment"
        );
        let event = env.wait_event(name, "BudgetInfeasible").await?;
        ensure!(event.contains("smallest fixes"), "{event}");
        env.kubectl_ns(&["delete", "-f", &relative]).await?;
    }
    Ok(())
}

async fn minimal_reports_an_unreachable_database(env: &mut Env) -> anyhow::Result<()> {
    env.kubectl_ns(&["apply", "-f", "examples/minimal.yaml"])
        .await?;
    let pool = env
        .wait_condition(
            "orders",
            "BudgetFeasible",
            "Unknown",
            Some("DatabaseUnreachable"),
        )
        .await?;
    let c = condition(&pool, "BudgetFeasible").context("condition")?;
    ensure!(c.message.contains("orders-db-rw:5432"), "{}", c.message);
    let ready = condition(&pool, "Ready").context("Ready")?;
    ensure!(
        ready.status == "False" && ready.reason == "DatabaseUnreachable",
        "{ready:?}"
    );
    ensure!(env.deployment("orders").await?.is_none());
    env.wait_event("orders", "DatabaseUnreachable").await?;
    Ok(())
}

async fn minimal_becomes_ready_against_postgres(env: &mut Env) -> anyhow::Result<()> {
    let patch = format!(
        r#"{{"spec":{{"database":{{"host":"127.0.0.1","port":{}}}}}}}"#,
        env.pg.port()
    );
    env.kubectl_ns(&["patch", "cpool", "orders", "--type=merge", "-p", &patch])
        .await?;
    let pool = env.wait_condition("orders", "Ready", "True", None).await?;
    let status = pool.status.clone().context("status")?;
    let budget = status.budget.context("budget")?;
    ensure!(
        budget.max_connections == MAX_CONNECTIONS && budget.superuser_reserved == 3,
        "auto read the database's limits: {budget:?}"
    );
    ensure!(
        budget.pods_max == 3 && budget.per_pod == budget.pool / 3,
        "{budget:?}"
    );
    ensure!(status.ready_replicas == Some(2) && status.replicas == Some(2));
    ensure!(status.app_secret_name.as_deref() == Some("orders-app"));
    let feasible = condition(&pool, "BudgetFeasible").context("BudgetFeasible")?;
    ensure!(feasible.reason == "Fits", "{feasible:?}");
    ensure!(owned_children(env, &pool).await? == expected_children("orders"));
    env.wait_event("orders", "BudgetComputed").await?;

    let table = env.kubectl_ns(&["get", "cpool"]).await?;
    let header = squash(table.lines().next().unwrap_or_default());
    ensure!(
        // USED and WAITING stay empty: kwok pods have no /status to read.
        header == "NAME MODE REPLICAS READY BUDGET PER-POD USED WAITING AGE",
        "{table}"
    );
    let row = squash(table.lines().nth(1).unwrap_or_default());
    let expected = format!("orders transaction 2 2 {} {} ", budget.pool, budget.per_pod);
    ensure!(row.starts_with(&expected), "{row:?} vs {expected:?}");
    Ok(())
}

async fn pools_on_one_database_share_its_budget(env: &mut Env) -> anyhow::Result<()> {
    let manifest = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: reports\n\
         spec:\n  database:\n    host: 127.0.0.1\n    port: {}\n    dbname: orders\n    \
         credentialsSecret: {{name: orders-db-app}}\n    maxConnections: auto\n  \
         maxConnectionsPercent: 20\n",
        env.pg.port()
    );
    let out = env
        .plane
        .kubectl_with_input(&["apply", "-n", NS, "-f", "-"], Some(&manifest))
        .await?;
    ensure!(out.success(), "{}", out.stderr);
    let pool = env
        .wait_condition("reports", "BudgetFeasible", "False", Some("Overcommitted"))
        .await?;
    let c = condition(&pool, "BudgetFeasible").context("condition")?;
    let orders = env.pool("orders").await?;
    let claimed = orders.status.and_then(|s| s.budget).context("budget")?.pool;
    ensure!(
        c.message
            .contains(&format!("plus the {claimed} claimed by other pools")),
        "{}",
        c.message
    );
    env.kubectl_ns(&["delete", "cpool", "reports"]).await?;
    Ok(())
}

async fn scaling_resizes_without_a_rollout(env: &mut Env) -> anyhow::Result<()> {
    let (template, sets) = template_and_replica_sets(env, "orders").await?;
    env.kubectl_ns(&["scale", "cpool/orders", "--replicas=5"])
        .await?;
    let pool = env.wait_condition("orders", "Ready", "True", None).await?;
    let status = pool.status.clone().context("status")?;
    let budget = status.budget.context("budget")?;
    ensure!(budget.pods_max == 6, "{budget:?}");
    ensure!(budget.per_pod == budget.pool / 6, "{budget:?}");
    ensure!(
        budget.pods_max * budget.per_pod <= budget.pool,
        "{budget:?}"
    );
    let shares: i64 = status
        .users
        .iter()
        .map(|u| u.pool_size + u.reserve_pool_size)
        .sum();
    ensure!(shares <= budget.per_pod, "{:?}", status.users);
    ensure!(
        status.ready_replicas == Some(5),
        "{:?}",
        status.ready_replicas
    );

    let config = Api::<ConfigMap>::namespaced(env.plane.client(), NS)
        .get("orders-config")
        .await?;
    let ini = config
        .data
        .and_then(|d| d.get("pgbouncer.ini").cloned())
        .context("no pgbouncer.ini")?;
    ensure!(
        ini.contains(&format!("max_db_connections={}", budget.per_pod)),
        "{ini}"
    );
    let (template_after, sets_after) = template_and_replica_sets(env, "orders").await?;
    ensure!(
        template_after == template,
        "a size-only change altered the pod template"
    );
    ensure!(
        sets_after == sets,
        "new ReplicaSets: {sets:?} -> {sets_after:?}"
    );
    // Pools shrank while pods were added: the pods were added after the settle time.
    let resizing = env.wait_event("orders", "Resizing").await?;
    ensure!(resizing.contains("then 5"), "{resizing}");
    Ok(())
}

/// Waits until the pool's `[peers]` lists exactly its pods' IPs, and there are `replicas`
/// pods (none starting or terminating besides).
async fn wait_for_peers(env: &Env, pool: &str, replicas: usize) -> anyhow::Result<()> {
    let client = env.plane.client();
    eventually("[peers] lists every pod", WAIT, || async {
        let pods = Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), NS)
            .list(&ListParams::default().labels(&format!("weir.dev/pool={pool}")))
            .await?;
        ensure!(pods.items.len() == replicas, "{} pods", pods.items.len());
        let ips: BTreeSet<String> = pods
            .items
            .iter()
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        ensure!(ips.len() == pods.items.len(), "pods without an IP yet");
        let config = Api::<ConfigMap>::namespaced(client.clone(), NS)
            .get(&format!("{pool}-config"))
            .await?;
        let ini = config
            .data
            .and_then(|d| d.get("pgbouncer.ini").cloned())
            .context("no pgbouncer.ini")?;
        let peers = weir_operator::render::peers::in_force(None, Some(&ini));
        let hosts: BTreeSet<String> = peers.values().cloned().collect();
        ensure!(hosts == ips, "[peers] {peers:?} vs pods {ips:?}");
        ensure!(hosts.len() == peers.len(), "an IP with two ids: {peers:?}");
        Ok(())
    })
    .await
}

/// The pods' `[peers]` follow the pods: one entry per pod IP, distinct ids, and the pods
/// find their own id from their IP. The headless `-peers` Service an earlier version listed
/// the pods with is deleted (the pool's Service lists them, ready or not).
async fn peers_follow_the_pods(env: &mut Env) -> anyhow::Result<()> {
    wait_for_peers(env, "orders", 5).await?;
    let uid = env.pool("orders").await?.uid().context("uid")?;
    env.apply(&format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: orders-peers\n  labels:\n    \
         app.kubernetes.io/managed-by: weir-operator\n    weir.dev/pool: orders\n  \
         ownerReferences:\n  - {{apiVersion: weir.dev/v1alpha1, kind: ConnectionPool, name: orders, \
         uid: {uid}, controller: true}}\nspec:\n  clusterIP: None\n  publishNotReadyAddresses: true\n  \
         selector: {{app.kubernetes.io/name: weir, weir.dev/pool: orders}}\n  ports:\n  - \
         {{name: pooler, port: 6432, targetPort: pooler}}\n"
    ))
    .await?;
    let services = Api::<Service>::namespaced(env.plane.client(), NS);
    eventually("an earlier version's peers Service to go", WAIT, || async {
        ensure!(
            services.get_opt("orders-peers").await?.is_none(),
            "still there"
        );
        Ok(())
    })
    .await?;
    wait_for_peers(env, "orders", 5).await?;
    // One of that name the pool does not own stays, through reconciliations of the pool.
    env.apply(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: orders-peers\n  labels:\n    \
         app.kubernetes.io/managed-by: weir-operator\n    weir.dev/pool: orders\nspec:\n  \
         selector: {app: someone-else}\n  ports:\n  - {name: pooler, port: 6432}\n",
    )
    .await?;
    let reconciles = || async {
        let text = env.operator.metrics().await?;
        metric(&text, "weir_operator_reconciles_total{result=\"success\"}").context("no counter")
    };
    let before = reconciles().await?;
    env.kubectl_ns(&[
        "annotate",
        "cpool",
        "orders",
        "weir.test/nudge=1",
        "--overwrite",
    ])
    .await?;
    eventually("the pool to be reconciled again", WAIT, || async {
        ensure!(reconciles().await? >= before + 2.0, "not yet");
        Ok(())
    })
    .await?;
    ensure!(
        services.get_opt("orders-peers").await?.is_some(),
        "a Service the pool does not own was deleted"
    );
    env.kubectl_ns(&["delete", "service", "orders-peers"])
        .await?;
    let deployment = env.deployment("orders").await?.context("deployment")?;
    let container = deployment
        .spec
        .and_then(|s| s.template.spec)
        .map(|p| p.containers[0].clone())
        .context("pod spec")?;
    let args = container.args.unwrap_or_default();
    ensure!(
        args.starts_with(&["--peer-address".to_owned(), "$(POD_IP)".to_owned()]),
        "{args:?}"
    );
    Ok(())
}

async fn credential_rotation_keeps_pods(env: &mut Env) -> anyhow::Result<()> {
    let (template, sets) = template_and_replica_sets(env, "orders").await?;
    env.pg
        .execute("ALTER ROLE app PASSWORD 'rotated-secret'")
        .await?;
    let secret = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: orders-db-app\n\
                  stringData:\n  username: app\n  password: rotated-secret\n";
    let out = env
        .plane
        .kubectl_with_input(&["apply", "-n", NS, "-f", "-"], Some(secret))
        .await?;
    ensure!(out.success(), "{}", out.stderr);
    let auth = Api::<Secret>::namespaced(env.plane.client(), NS);
    eventually("userlist.txt carries the new password", WAIT, || async {
        let s = auth.get("orders-auth").await?;
        let file = s
            .data
            .and_then(|d| d.get("userlist.txt").cloned())
            .context("no userlist.txt")?;
        ensure!(String::from_utf8_lossy(&file.0).contains("rotated-secret"));
        Ok(())
    })
    .await?;
    env.wait_condition("orders", "Ready", "True", None).await?;
    let (template_after, sets_after) = template_and_replica_sets(env, "orders").await?;
    ensure!(
        template_after == template,
        "a credential change altered the pod template"
    );
    ensure!(sets_after == sets, "{sets:?} -> {sets_after:?}");
    Ok(())
}

/// The pool's certificate Secret, as cert-manager would write it; `content` stands in for
/// the PEM files, which nothing reads here (kwok runs no containers).
fn tls_secret(content: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: secure-tls\ntype: kubernetes.io/tls\n\
         stringData:\n  tls.crt: \"{content} certificate\"\n  tls.key: \"{content} key\"\n"
    )
}

async fn tls_secrets_are_mounted_and_rotate_without_a_rollout(env: &mut Env) -> anyhow::Result<()> {
    env.apply(&tls_secret("first")).await?;
    env.apply("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: db-ca\ndata:\n  ca.crt: a CA\n")
        .await?;
    // A database of its own (never contacted: maxConnections is a number), so that this
    // pool's budget does not compete with orders'.
    env.apply(
        "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: secure\n\
         spec:\n  database:\n    host: secure-db.e2e.svc\n    dbname: orders\n    \
         credentialsSecret: {name: orders-db-app}\n    maxConnections: 100\n  replicas: 1\n  \
         tls:\n    client: {secretName: secure-tls, mode: require}\n    \
         server: {ca: {configMap: {name: db-ca}}}\n",
    )
    .await?;
    env.wait_condition("secure", "Ready", "True", None).await?;

    let deployment = env.deployment("secure").await?.context("no Deployment")?;
    let pod = deployment
        .spec
        .and_then(|s| s.template.spec)
        .context("no pod spec")?;
    let volumes = pod.volumes.unwrap_or_default();
    let client = volumes
        .iter()
        .find(|v| v.name == "tls-client")
        .and_then(|v| v.secret.as_ref())
        .context("no tls-client Secret volume")?;
    ensure!(
        client.secret_name.as_deref() == Some("secure-tls") && client.items.is_none(),
        "{client:?}"
    );
    let ca = volumes
        .iter()
        .find(|v| v.name == "tls-server-ca")
        .and_then(|v| v.config_map.as_ref())
        .context("no tls-server-ca ConfigMap volume")?;
    ensure!(ca.name == "db-ca", "{ca:?}");
    let mounts = pod.containers[0].volume_mounts.clone().unwrap_or_default();
    for (name, path) in [
        ("tls-client", "/etc/weir/tls/client"),
        ("tls-server-ca", "/etc/weir/tls/server-ca"),
    ] {
        let m = mounts
            .iter()
            .find(|m| m.name == name)
            .with_context(|| format!("{name} is not mounted"))?;
        ensure!(
            m.mount_path == path && m.read_only == Some(true) && m.sub_path.is_none(),
            "{m:?}"
        );
    }
    let config = Api::<ConfigMap>::namespaced(env.plane.client(), NS)
        .get("secure-config")
        .await?;
    let ini = config
        .data
        .and_then(|d| d.get("pgbouncer.ini").cloned())
        .context("no pgbouncer.ini")?;
    for line in [
        "client_tls_sslmode = require",
        "client_tls_cert_file = /etc/weir/tls/client/tls.crt",
        "client_tls_key_file = /etc/weir/tls/client/tls.key",
        "server_tls_sslmode = verify-full",
        "server_tls_ca_file = /etc/weir/tls/server-ca/ca.crt",
    ] {
        ensure!(ini.lines().any(|l| l == line), "{line:?} missing:\n{ini}");
    }
    let app = Api::<Secret>::namespaced(env.plane.client(), NS)
        .get("secure-app")
        .await?;
    let uri = app
        .data
        .and_then(|d| d.get("uri").cloned())
        .context("no uri")?;
    let uri = String::from_utf8_lossy(&uri.0).into_owned();
    ensure!(uri.ends_with("?sslmode=require"), "{uri}");

    // cert-manager renews the certificate: the pods keep running, the kubelet swaps the
    // mounted files. A scale after the renewal proves a reconcile has seen it.
    let (template, sets) = template_and_replica_sets(env, "secure").await?;
    env.apply(&tls_secret("renewed")).await?;
    env.kubectl_ns(&["scale", "cpool/secure", "--replicas=2"])
        .await?;
    eventually("the scale is applied", WAIT, || async {
        let d = env.deployment("secure").await?.context("no Deployment")?;
        ensure!(d.spec.and_then(|s| s.replicas) == Some(2));
        Ok(())
    })
    .await?;
    env.wait_condition("secure", "Ready", "True", None).await?;
    let (template_after, sets_after) = template_and_replica_sets(env, "secure").await?;
    ensure!(
        template_after == template,
        "a renewed certificate altered the pod template"
    );
    ensure!(sets_after == sets, "{sets:?} -> {sets_after:?}");

    env.kubectl_ns(&["delete", "cpool", "secure"]).await?;
    env.kubectl_ns(&["delete", "secret", "secure-tls"]).await?;
    env.kubectl_ns(&["delete", "configmap", "db-ca"]).await?;
    // Later steps count every managed object: wait until the garbage collector is done.
    eventually("the secure pool's children are collected", WAIT, || async {
        let left = env.labelled("weir.dev/pool=secure").await?;
        ensure!(left.is_empty(), "left: {left:?}");
        Ok(())
    })
    .await?;
    Ok(())
}

async fn drift_is_put_back(env: &mut Env) -> anyhow::Result<()> {
    let services = Api::<Service>::namespaced(env.plane.client(), NS);
    let old_uid = services.get("orders").await?.uid();
    env.kubectl_ns(&["delete", "service", "orders"]).await?;
    eventually("the deleted Service is back", WAIT, || async {
        let s = services.get("orders").await?;
        ensure!(s.uid() != old_uid, "still the old Service");
        Ok(())
    })
    .await?;

    let default_image = env
        .deployment("orders")
        .await?
        .and_then(|d| d.spec?.template.spec?.containers.first()?.image.clone())
        .context("no image")?;
    env.kubectl_ns(&[
        "patch",
        "deployment",
        "orders",
        "-p",
        r#"{"spec":{"replicas":9,"template":{"spec":{"containers":[{"name":"weir","image":"example.invalid/other:1"}]}}}}"#,
    ])
    .await?;
    eventually("the edited Deployment is put back", WAIT, || async {
        let spec = env
            .deployment("orders")
            .await?
            .and_then(|d| d.spec)
            .context("no Deployment")?;
        let image = spec
            .template
            .spec
            .and_then(|p| p.containers.first()?.image.clone());
        ensure!(
            spec.replicas == Some(5) && image.as_deref() == Some(default_image.as_str()),
            "replicas {:?}, image {image:?}",
            spec.replicas
        );
        Ok(())
    })
    .await?;

    // The pods the excursion started are gone before the rendering is recorded: [peers]
    // follows the pods.
    wait_for_peers(env, "orders", 5).await?;
    let configs = Api::<ConfigMap>::namespaced(env.plane.client(), NS);
    let rendered = configs.get("orders-config").await?.data;
    env.kubectl_ns(&[
        "patch",
        "configmap",
        "orders-config",
        "--type=merge",
        "-p",
        r#"{"data":{"pgbouncer.ini":"[pgbouncer]\nmax_db_connections = 1000\n"}}"#,
    ])
    .await?;
    eventually("the edited ConfigMap is put back", WAIT, || async {
        ensure!(configs.get("orders-config").await?.data == rendered);
        Ok(())
    })
    .await?;
    env.wait_condition("orders", "Ready", "True", None).await?;
    Ok(())
}

async fn a_restart_mid_way_leaves_no_duplicates_or_orphans(env: &mut Env) -> anyhow::Result<()> {
    let manifest = "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  \
                    name: restart\nspec:\n  database:\n    host: other-db\n    dbname: other\n    \
                    credentialsSecret: {name: orders-db-app}\n    maxConnections: 50\n  \
                    replicas: 2\n";
    let out = env
        .plane
        .kubectl_with_input(&["apply", "-n", NS, "-f", "-"], Some(manifest))
        .await?;
    ensure!(out.success(), "{}", out.stderr);
    // Killed as soon as the first child (the ServiceAccount) appears, while the others are
    // being applied: some may exist, others not.
    let accounts = Api::<ServiceAccount>::namespaced(env.plane.client(), NS);
    let deadline = Instant::now() + WAIT;
    while accounts.get_opt("restart").await?.is_none() {
        ensure!(
            Instant::now() < deadline,
            "no child of the new pool appeared"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    env.operator.kill().await?;
    let partial = env.labelled("weir.dev/pool=restart").await?;
    eprintln!("  after the kill, the new pool had: {partial:?}");
    env.operator = Operator::start(&env.plane, "op-a2", OPERATOR_ARGS).await?;
    eventually(
        "the restarted operator leads and reconciles",
        WAIT,
        || async {
            ensure!(lease_holder(env).await? == "op-a2");
            let done = metric(
                &env.operator.metrics().await?,
                "weir_operator_reconciles_total{result=\"success\"}",
            );
            ensure!(done.is_some_and(|n| n >= 2.0), "{done:?}");
            Ok(())
        },
    )
    .await?;

    for name in ["orders", "restart"] {
        let pool = env.wait_condition(name, "Ready", "True", None).await?;
        ensure!(
            owned_children(env, &pool).await? == expected_children(name),
            "{name}: children differ"
        );
        let (_, sets) = template_and_replica_sets(env, name).await?;
        ensure!(sets.len() == 1, "{name}: ReplicaSets {sets:?}");
    }
    // Everything the operator manages belongs to a pool that exists.
    let mut uids = BTreeSet::new();
    for name in ["orders", "restart"] {
        uids.insert(env.pool(name).await?.uid().context("uid")?);
    }
    let text = env
        .kubectl_ns(&[
            "get",
            "deploy,svc,cm,secret,pdb,sa",
            "-l",
            "app.kubernetes.io/managed-by=weir-operator",
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.metadata.ownerReferences[0].uid}{\"\\n\"}{end}",
        ])
        .await?;
    for line in text.lines() {
        let (name, owner) = line.split_once(' ').unwrap_or((line, ""));
        ensure!(uids.contains(owner), "orphan {name} (owner {owner:?})");
    }
    // Two pools of 7 children each.
    ensure!(text.lines().count() == 14, "{text}");
    Ok(())
}

async fn a_standby_takes_over_the_lease(env: &mut Env) -> anyhow::Result<()> {
    let standby = Operator::start(&env.plane, "op-b", OPERATOR_ARGS).await?;
    let leader = env.operator.identity().to_owned();
    eventually("the first operator leads", WAIT, || async {
        ensure!(lease_holder(env).await? == leader);
        let leading = metric(&env.operator.metrics().await?, "weir_operator_leader");
        let waiting = metric(&standby.metrics().await?, "weir_operator_leader");
        ensure!(
            leading == Some(1.0) && waiting == Some(0.0),
            "{leading:?} {waiting:?}"
        );
        Ok(())
    })
    .await?;
    let reconciled = metric(
        &env.operator.metrics().await?,
        "weir_operator_reconciles_total{result=\"success\"}",
    );
    ensure!(reconciled.is_some_and(|n| n > 0.0), "{reconciled:?}");

    env.operator.terminate(Duration::from_secs(20)).await?;
    let started = Instant::now();
    eventually("the standby takes the lease", WAIT, || async {
        ensure!(lease_holder(env).await? == "op-b");
        Ok(())
    })
    .await?;
    eprintln!("  takeover after {:?}", started.elapsed());
    env.kubectl_ns(&["scale", "cpool/restart", "--replicas=3"])
        .await?;
    eventually("the new leader reconciles", WAIT, || async {
        let replicas = env
            .deployment("restart")
            .await?
            .and_then(|d| d.spec?.replicas);
        ensure!(replicas == Some(3), "{replicas:?}");
        Ok(())
    })
    .await?;
    env.standby = Some(standby);
    Ok(())
}

async fn deleting_pools_collects_every_child(env: &mut Env) -> anyhow::Result<()> {
    env.kubectl_ns(&["delete", "cpool", "orders", "restart"])
        .await?;
    eventually("every child is garbage-collected", WAIT, || async {
        let left = env.labelled("weir.dev/pool").await?;
        ensure!(left.is_empty(), "left: {left:?}");
        Ok(())
    })
    .await?;
    env.kubectl_ns(&["get", "secret", "orders-db-app"]).await?;
    Ok(())
}

/// A user that logs in with ServiceAccount tokens: the pool's ServiceAccount is bound to the
/// chart's TokenReview role, its pods get an API token, and the binding (cluster-scoped, so
/// not garbage-collected) goes when the users no longer need it and with the pool.
async fn token_users_get_exactly_the_token_review_binding(env: &mut Env) -> anyhow::Result<()> {
    let pool = |accounts: &str| {
        format!(
            "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: tokens\n\
             spec:\n  database:\n    host: tokens-db.e2e.svc\n    dbname: orders\n    \
             credentialsSecret: {{name: orders-db-app}}\n    maxConnections: 100\n  replicas: 1\n  \
             users:\n    - user: app\n      credentialsSecret: {{name: orders-db-app, passwordKey: password}}\n\
             {accounts}  tls:\n    client: {{secretName: secure-tls}}\n"
        )
    };
    env.apply(&tls_secret("tokens")).await?;
    env.apply(&pool(
        "      serviceAccounts: [{name: api}, {name: job, namespace: batch}]\n",
    ))
    .await?;
    env.wait_condition("tokens", "Ready", "True", None).await?;
    let binding = "weir-token-review.e2e.tokens";
    let subjects = env
        .kubectl(&["get", "clusterrolebinding", binding, "-o",
            "jsonpath={.roleRef.name} {.subjects[*].kind}/{.subjects[*].namespace}/{.subjects[*].name}"])
        .await?;
    ensure!(
        subjects.trim() == "weir-token-review ServiceAccount/e2e/tokens",
        "{subjects}"
    );
    let sa = "system:serviceaccount:e2e:tokens";
    for (verb, resource, allowed) in [
        ("create", "tokenreviews.authentication.k8s.io", "yes"),
        ("create", "subjectaccessreviews.authorization.k8s.io", "no"),
        ("get", "secrets", "no"),
    ] {
        let out = env
            .plane
            .kubectl(&["auth", "can-i", verb, resource, "--as", sa, "-n", NS])
            .await?;
        ensure!(
            out.stdout.trim() == allowed,
            "{sa} {verb} {resource}: {}",
            out.stdout
        );
    }
    let pool_now = env.pool("tokens").await?;
    ensure!(
        pool_now.metadata.finalizers.as_deref()
            == Some(&["weir.dev/token-review-binding".to_owned()][..]),
        "{:?}",
        pool_now.metadata.finalizers
    );
    let deployment = env.deployment("tokens").await?.context("no Deployment")?;
    let automount = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|p| p.automount_service_account_token);
    ensure!(automount == Some(true), "{automount:?}");
    let ini = Api::<ConfigMap>::namespaced(env.plane.client(), NS)
        .get("tokens-config")
        .await?
        .data
        .and_then(|d| d.get("pgbouncer.ini").cloned())
        .unwrap_or_default();
    ensure!(ini.contains("service_accounts=e2e/api,batch/job"), "{ini}");

    // No more token users: the binding and the finalizer go.
    env.apply(&pool("")).await?;
    eventually("the binding to go with the token users", WAIT, || async {
        let out = env
            .plane
            .kubectl(&["get", "clusterrolebinding", binding])
            .await?;
        ensure!(!out.success(), "still there");
        let finalizers = env
            .pool("tokens")
            .await?
            .metadata
            .finalizers
            .unwrap_or_default();
        ensure!(finalizers.is_empty(), "{finalizers:?}");
        Ok(())
    })
    .await?;

    // Back, then the pool is deleted: the binding goes with it.
    env.apply(&pool("      serviceAccounts: [{name: api}]\n"))
        .await?;
    eventually("the binding to come back", WAIT, || async {
        env.kubectl(&["get", "clusterrolebinding", binding]).await
    })
    .await?;
    env.kubectl_ns(&["delete", "cpool", "tokens", "--wait=true", "--timeout=60s"])
        .await?;
    let out = env
        .plane
        .kubectl(&["get", "clusterrolebinding", binding])
        .await?;
    ensure!(!out.success(), "the binding outlived its pool");
    Ok(())
}

// --- the test ------------------------------------------------------------------------

macro_rules! step {
    ($env:expr, $step:ident) => {
        if let Err(e) = weir_tests::k8s::timed_step(stringify!($step), $step($env)).await {
            weir_tests::k8s::step_failed(
                stringify!($step),
                &e,
                &$env
                    .standby
                    .as_ref()
                    .map_or_else(|| $env.operator.log(), Operator::log),
            );
        }
    };
}

/// What the Helm chart installed (the fixture runs `helm install` as a user would, with no
/// operator replicas): the operator under test runs as a local process (there is no
/// container engine, so a pod of the chart's Deployment could not run the binary), while the
/// chart provides the CRD, the ServiceAccount and the RBAC objects, which are checked here.
async fn chart_objects(plane: &ControlPlane) -> anyhow::Result<()> {
    for object in [
        "clusterrole/weir-operator",
        "clusterrolebinding/weir-operator",
        "clusterrole/weir-connectionpools-edit",
        "clusterrole/weir-connectionpools-view",
        "clusterrole/weir-token-review",
        "clusterrole/weir-operator-token-review-binder",
        "clusterrolebinding/weir-operator-token-review-binder",
    ] {
        plane.kubectl_ok(&["get", object]).await?;
    }
    for object in [
        "serviceaccount/weir-operator",
        "role/weir-operator-leader-election",
        "rolebinding/weir-operator-leader-election",
        "deployment/weir-operator",
    ] {
        plane
            .kubectl_ok(&["get", "-n", "weir-system", object])
            .await?;
    }
    // The chart's operator may do what the controller needs, and no more than that.
    let sa = "system:serviceaccount:weir-system:weir-operator";
    for (verb, resource, allowed) in [
        ("patch", "connectionpools.weir.dev/status", "yes"),
        ("patch", "deployments.apps", "yes"),
        ("watch", "secrets", "yes"),
        // Pooler pods are watched for their IPs (to read /status), never written.
        ("watch", "pods", "yes"),
        ("delete", "pods", "no"),
        // The Services' endpoints are watched, never written.
        ("watch", "endpointslices.discovery.k8s.io", "yes"),
        ("create", "endpointslices.discovery.k8s.io", "no"),
        ("delete", "nodes", "no"),
        ("create", "clusterroles.rbac.authorization.k8s.io", "no"),
        (
            "create",
            "clusterrolebindings.rbac.authorization.k8s.io",
            "yes",
        ),
        // Read before an apply, which is skipped when the binding is as the last one left it.
        (
            "get",
            "clusterrolebindings.rbac.authorization.k8s.io",
            "yes",
        ),
        (
            "bind",
            "clusterroles.rbac.authorization.k8s.io/weir-token-review",
            "yes",
        ),
        (
            "bind",
            "clusterroles.rbac.authorization.k8s.io/cluster-admin",
            "no",
        ),
        ("create", "tokenreviews.authentication.k8s.io", "no"),
    ] {
        let out = plane
            .kubectl(&["auth", "can-i", verb, resource, "--as", sa, "-n", NS])
            .await?;
        let answer = out.stdout.trim().to_owned();
        anyhow::ensure!(
            answer == allowed,
            "can the chart's operator {verb} {resource}? expected {allowed}, got {answer}"
        );
    }
    Ok(())
}

async fn setup() -> anyhow::Result<Env> {
    let (fixture, pg) = tokio::try_join!(
        OperatorFixture::start(OperatorSetup {
            namespace: NS,
            crd: Crd::Helm,
            credentials: &[("orders-db-app", "app", "app-secret")],
            operator: ("op-a", OPERATOR_ARGS),
        }),
        async {
            let pg = PgCluster::start_with(PgOptions {
                max_connections: u32::try_from(MAX_CONNECTIONS)?,
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
    eprintln!("control plane up in {:?}", plane.startup);
    chart_objects(&plane).await?;
    Ok(Env {
        plane,
        pg,
        operator,
        standby: None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_end_to_end() {
    let started = Instant::now();
    let mut env = match setup().await {
        Ok(env) => env,
        Err(e) => panic!("setup failed: {e:#}"),
    };
    let env = &mut env;
    step!(env, crd_is_documented);
    step!(env, bad_examples_are_refused);
    step!(env, minimal_reports_an_unreachable_database);
    step!(env, minimal_becomes_ready_against_postgres);
    step!(env, pools_on_one_database_share_its_budget);
    step!(env, scaling_resizes_without_a_rollout);
    step!(env, peers_follow_the_pods);
    step!(env, credential_rotation_keeps_pods);
    step!(env, tls_secrets_are_mounted_and_rotate_without_a_rollout);
    step!(env, token_users_get_exactly_the_token_review_binding);
    step!(env, drift_is_put_back);
    step!(env, a_restart_mid_way_leaves_no_duplicates_or_orphans);
    step!(env, a_standby_takes_over_the_lease);
    step!(env, deleting_pools_collects_every_child);
    if let Some(standby) = &env.standby {
        if let Err(e) = standby.terminate(Duration::from_secs(20)).await {
            panic!("the operator did not stop cleanly: {e:#}");
        }
    }
    eprintln!("e2e_operator: {:?} in all", started.elapsed());
    assert!(
        !env.operator.running(),
        "{} still runs after it was terminated",
        env.operator.identity()
    );
}
