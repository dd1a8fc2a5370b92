//! End to end on real pods: the chart's operator and the poolers it runs are containers on
//! a real node (tests/controlplane/node-up.sh: containerd, kubelet, kube-proxy, CoreDNS),
//! in front of the harness's PostgreSQL, which stays a host process.
//!
//! How pods reach PostgreSQL: the node's bridge `weir0` has the host address 10.244.0.1
//! (the pods' gateway); the test cluster listens on it besides 127.0.0.1, and its
//! pg_hba.conf lets the pod subnet 10.244.0.0/24 in with a password. Pods reach the API
//! server the same way: kube-proxy sends the `kubernetes` Service to 10.244.0.1.
//!
//! One test runs the scenarios in order on one cluster; a failing step names itself.
//! Needs root (containerd, bridge, iptables): set WEIR_E2E_PODS=0 to skip it.

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use kube::Api;
use weir_operator::api::ConnectionPool;
use weir_tests::k8s::{eventually, workspace, ControlPlane, OPERATOR_BIN_ENV};
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions};

const NS: &str = "pods";
const POOL: &str = "orders";
const NODE_IP: &str = "10.244.0.1";
const WAIT: Duration = Duration::from_secs(180);
/// The PostgreSQL max_connections the `auto` pool reads.
const MAX_CONNECTIONS: u32 = 60;
/// Short operator timings so that the scenarios run in seconds. No settle time: pods are
/// added only once every running pod reports the ConfigMap with the smaller pool sizes in
/// its /status (a 2 s timer once let a scale-up overshoot the budget, 51 of 48). /status is
/// read every 2 s; NearBudget turns at half the budget held for 4 s, which the load reaches.
const OPERATOR_ARGS: &str = r#"["--config-settle-seconds=0","--pod-status-interval-seconds=2","--near-budget-percent=50","--near-budget-seconds=4","--lease-duration-seconds=6","--lease-renew-grace-seconds=2","--database-cache-seconds=1","--resync-seconds=20"]"#;
/// How often server connections are sampled while pools scale.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

struct Env {
    plane: ControlPlane,
    pg: PgCluster,
}

impl Env {
    async fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.plane.kubectl_ok(args).await
    }

    async fn kubectl_ns(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut all = vec!["-n", NS];
        all.extend_from_slice(args);
        self.plane.kubectl_ok(&all).await
    }

    async fn apply(&self, manifest: &str) -> anyhow::Result<()> {
        let out = self
            .plane
            .kubectl_with_input(&["apply", "-n", NS, "-f", "-"], Some(manifest))
            .await?;
        ensure!(out.success(), "{}", out.stderr);
        Ok(())
    }

    async fn pool(&self) -> anyhow::Result<ConnectionPool> {
        Api::<ConnectionPool>::namespaced(self.plane.client(), NS)
            .get(POOL)
            .await
            .context("reading the ConnectionPool")
    }

    /// Waits until the pool has reconciled its latest spec, `replicas` pods are Ready and
    /// no other pod of it is left (terminating ones included).
    async fn wait_pool_ready(&self, replicas: i32) -> anyhow::Result<ConnectionPool> {
        eventually(
            &format!("{POOL} Ready with {replicas} ready pods"),
            WAIT,
            || async {
                let pool = self.pool().await?;
                let status = pool.status.clone().context("no status yet")?;
                let ready = status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True");
                ensure!(
                    ready
                        && status.observed_generation == pool.metadata.generation
                        && status.ready_replicas == Some(replicas)
                        && status.replicas == Some(replicas),
                    "{status:?}"
                );
                let deployment = self
                    .kubectl_ns(&[
                        "get",
                        "deployment",
                        POOL,
                        "-o",
                        "jsonpath={.status.readyReplicas}/{.status.replicas}/{.status.updatedReplicas}",
                    ])
                    .await?;
                let want = format!("{replicas}/{replicas}/{replicas}");
                ensure!(deployment == want, "deployment {deployment}, want {want}");
                // Terminating pods still hold server connections until they have drained.
                let selector = status.selector.clone().context("no selector")?;
                let pods = self
                    .kubectl_ns(&["get", "pods", "-l", &selector, "-o", "name"])
                    .await?;
                let count = pods.lines().count();
                ensure!(
                    count == usize::try_from(replicas)?,
                    "{count} pods, terminating ones included"
                );
                Ok(pool)
            },
        )
        .await
    }

    /// Starts a pgbench pod with `args`, reaching the pool by the Service's DNS name from
    /// the `<pool>-app` Secret, and waits until it runs.
    async fn start_pgbench(&self, name: &str, args: &[&str]) -> anyhow::Result<()> {
        let args = serde_json::to_string(args)?;
        let env: String = [
            ("PGHOST", "host"),
            ("PGPORT", "port"),
            ("PGDATABASE", "dbname"),
            ("PGUSER", "user"),
            ("PGPASSWORD", "password"),
        ]
        .iter()
        .map(|(var, key)| {
            format!(
                "    - {{name: {var}, valueFrom: {{secretKeyRef: {{name: {POOL}-app, key: {key}}}}}}}\n"
            )
        })
        .collect();
        let manifest = format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}}}\nspec:\n  restartPolicy: Never\n  \
             securityContext: {{runAsNonRoot: true, runAsUser: 65532, runAsGroup: 65532, \
             seccompProfile: {{type: RuntimeDefault}}}}\n  containers:\n  - name: pgbench\n    \
             image: localhost/weir-pgbench:15\n    imagePullPolicy: Never\n    args: {args}\n    \
             securityContext: {{allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, \
             capabilities: {{drop: [ALL]}}}}\n    env:\n{env}"
        );
        self.apply(&manifest).await?;
        self.kubectl_ns(&[
            "wait",
            "--for=jsonpath={.status.phase}=Running",
            &format!("pod/{name}"),
            "--timeout=120s",
        ])
        .await?;
        Ok(())
    }

    async fn pod_phase(&self, name: &str) -> anyhow::Result<String> {
        self.kubectl_ns(&["get", "pod", name, "-o", "jsonpath={.status.phase}"])
            .await
    }

    /// Waits for a pgbench pod to end, and returns its report; fails unless it exited 0.
    async fn finish_pgbench(&self, name: &str) -> anyhow::Result<Pgbench> {
        let phase = eventually(&format!("pod {name} to end"), WAIT, || async {
            let phase = self.pod_phase(name).await?;
            ensure!(phase == "Succeeded" || phase == "Failed", "{phase}");
            Ok(phase)
        })
        .await?;
        let log = self.kubectl_ns(&["logs", name]).await?;
        ensure!(phase == "Succeeded", "pgbench failed:\n{log}");
        self.kubectl_ns(&["delete", "pod", name, "--wait=false"])
            .await?;
        Pgbench::parse(&log)
    }
}

/// What pgbench reported.
#[derive(Debug)]
struct Pgbench {
    processed: u64,
    failed: u64,
    tps: f64,
}

impl Pgbench {
    fn parse(log: &str) -> anyhow::Result<Pgbench> {
        let field = |prefix: &str| {
            log.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|rest| {
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned()
                })
                .with_context(|| format!("no '{prefix}' in pgbench's output:\n{log}"))
        };
        Ok(Pgbench {
            processed: field("number of transactions actually processed: ")?
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()?,
            failed: field("number of failed transactions: ")?.parse()?,
            tps: field("tps = ")?.parse()?,
        })
    }
}

/// The pool's server connections as PostgreSQL sees them, sampled every [`SAMPLE_EVERY`]
/// until stopped; keeps the highest count.
struct Sampler {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicI64>,
    task: tokio::task::JoinHandle<anyhow::Result<u64>>,
}

impl Sampler {
    async fn start(pg: &PgCluster) -> anyhow::Result<Sampler> {
        let client = pg.superuser().await?;
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicI64::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let task = tokio::spawn(async move {
            let mut samples = 0;
            while !s.load(Ordering::Relaxed) {
                let row = client
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE datname = 'orders' AND usename = 'app' AND client_addr <> '127.0.0.1'",
                        &[],
                    )
                    .await?;
                m.fetch_max(row.get::<_, i64>(0), Ordering::Relaxed);
                samples += 1;
                tokio::time::sleep(SAMPLE_EVERY).await;
            }
            Ok(samples)
        });
        Ok(Sampler { stop, max, task })
    }

    /// The highest count seen, and how many samples were taken.
    async fn stop(self) -> anyhow::Result<(i64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        let samples = self.task.await??;
        Ok((self.max.load(Ordering::Relaxed), samples))
    }
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

/// `helm install` of the chart with the operator image built from this checkout; returns
/// when the operator pod is Ready.
async fn helm_install(env: &Env) -> anyhow::Result<()> {
    let started = Instant::now();
    let plane = &env.plane;
    let out = tokio::process::Command::new(plane.bin_dir().join("helm"))
        .args([
            "install",
            "weir",
            "charts/weir",
            "--namespace",
            "weir-system",
            "--create-namespace",
            "--set",
            "image.repository=localhost/weir,image.tag=test,image.pullPolicy=Never",
            "--set-json",
            &format!("extraArgs={OPERATOR_ARGS}"),
            "--wait",
            "--timeout",
            "180s",
        ])
        .env("KUBECONFIG", plane.kubeconfig())
        .env("HELM_CACHE_HOME", plane.state_dir().join("helm-cache"))
        .env("HELM_CONFIG_HOME", plane.state_dir().join("helm-config"))
        .env("HELM_DATA_HOME", plane.state_dir().join("helm-data"))
        .current_dir(workspace())
        .output()
        .await?;
    ensure!(
        out.status.success(),
        "helm install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    plane.wait_for_crd().await?;
    let ready = env
        .kubectl(&[
            "get",
            "deployment",
            "-n",
            "weir-system",
            "weir-operator",
            "-o",
            "jsonpath={.status.readyReplicas}",
        ])
        .await?;
    ensure!(ready == "1", "operator ready replicas: {ready:?}");
    eprintln!(
        "measure: helm install to operator pod Ready: {}",
        secs(started.elapsed())
    );
    Ok(())
}

/// A ConnectionPool in a namespace enforcing the restricted Pod Security Standard: its
/// pooler pods pass admission and become Ready through their /readyz probe.
async fn pool_becomes_ready(env: &mut Env) -> anyhow::Result<()> {
    let started = Instant::now();
    let manifest = format!(
        "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: {POOL}\n\
         spec:\n  image: localhost/weir:test\n  replicas: 2\n  database:\n    host: {NODE_IP}\n    \
         port: {}\n    dbname: orders\n    credentialsSecret: {{name: orders-db-app}}\n    \
         maxConnections: auto\n",
        env.pg.port()
    );
    env.apply(&manifest).await?;
    let pool = env.wait_pool_ready(2).await?;
    eprintln!(
        "measure: ConnectionPool applied to 2 pooler pods Ready: {}",
        secs(started.elapsed())
    );
    let budget = pool.status.and_then(|s| s.budget).context("budget")?;
    eprintln!("budget: {budget:?}");
    let probe = env
        .kubectl_ns(&[
            "get",
            "deployment",
            POOL,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].readinessProbe.httpGet.path}",
        ])
        .await?;
    ensure!(probe == "/readyz", "readiness probe {probe:?}");
    // The namespace's restricted level is enforced: the pool's pods passed it, this one not.
    let refused = env
        .plane
        .kubectl_with_input(
            &["apply", "-n", NS, "--dry-run=server", "-f", "-"],
            Some(
                "apiVersion: v1\nkind: Pod\nmetadata: {name: lax}\nspec:\n  containers:\n  \
                 - {name: c, image: localhost/weir-pgbench:15}\n",
            ),
        )
        .await?;
    ensure!(
        !refused.success() && refused.stderr.contains("violates PodSecurity \"restricted"),
        "a non-compliant pod was not refused: {}",
        refused.stderr
    );
    Ok(())
}

/// `kubectl rollout restart` of the poolers while pgbench connects through the Service's
/// DNS name for every transaction: no transaction fails.
async fn rollout_restart_under_load(env: &mut Env) -> anyhow::Result<()> {
    env.start_pgbench(
        "bench-rollout",
        &["-n", "-C", "-c", "4", "-j", "2", "-T", "30"],
    )
    .await?;
    let started = Instant::now();
    env.kubectl_ns(&["rollout", "restart", &format!("deployment/{POOL}")])
        .await?;
    env.kubectl_ns(&[
        "rollout",
        "status",
        &format!("deployment/{POOL}"),
        "--timeout=120s",
    ])
    .await?;
    env.wait_pool_ready(2).await?;
    let rollout = started.elapsed();
    let phase = env.pod_phase("bench-rollout").await?;
    ensure!(
        phase == "Running",
        "pgbench ended ({phase}) before the rollout did: the load did not cover it"
    );
    let report = env.finish_pgbench("bench-rollout").await?;
    eprintln!(
        "measure: rollout restart of 2 poolers {} (old pods gone), pgbench -C -c 4: {} transactions, {} failed, {:.0} tps",
        secs(rollout),
        report.processed,
        report.failed,
        report.tps
    );
    ensure!(report.failed == 0 && report.processed > 0, "{report:?}");
    Ok(())
}

/// Under load, the pool's status shows its usage as the pods' /status reports it, the
/// printer columns show used/budget and waiting clients, and NearBudget turns (with an
/// Event).
async fn usage_shows_in_status_under_load(env: &mut Env) -> anyhow::Result<()> {
    env.start_pgbench("bench-usage", &["-n", "-c", "40", "-j", "2", "-T", "25"])
        .await?;
    let started = Instant::now();
    let pool = eventually("NearBudget to turn True under load", WAIT, || async {
        let pool = env.pool().await?;
        let status = pool.status.clone().context("no status")?;
        let near = status
            .conditions
            .iter()
            .find(|c| c.type_ == "NearBudget")
            .context("no NearBudget condition")?;
        ensure!(near.status == "True", "{near:?}");
        Ok(pool)
    })
    .await?;
    let turned = started.elapsed();
    let status = pool.status.context("no status")?;
    let budget = status.budget.context("no budget")?;
    let usage = status.usage.context("no usage")?;
    eprintln!("usage: {usage:?}");
    ensure!(usage.budget == budget.pool, "{usage:?}");
    ensure!(
        usage.server_connections * 2 >= budget.pool && usage.server_connections <= budget.pool,
        "{usage:?}"
    );
    ensure!(
        usage.summary == format!("{}/{}", usage.server_connections, budget.pool),
        "{usage:?}"
    );
    ensure!(
        usage.pods_reporting == 2 && usage.pods_on_latest_config == 2,
        "{usage:?}"
    );
    ensure!(
        usage.pods_behind.is_empty() && usage.pods_unreachable.is_empty(),
        "{usage:?}"
    );
    ensure!(
        usage.pods.len() == 2 && usage.pods.iter().all(|p| p.latest_config),
        "{usage:?}"
    );
    let table = env.kubectl_ns(&["get", "cpool", POOL]).await?;
    eprintln!("kubectl get cpool:\n{table}");
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    ensure!(
        header.contains(&"USED") && header.contains(&"WAITING"),
        "{table}"
    );
    ensure!(table.contains(&format!(" {} ", usage.summary)), "{table}");
    let events = env
        .kubectl_ns(&[
            "get",
            "events",
            "--field-selector",
            "reason=NearBudget",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .await?;
    ensure!(
        events.contains("stayed at or above 50 %"),
        "events: {events:?}"
    );
    // What one poll of one pod costs: the /status document, read here from the node.
    let ips = env
        .kubectl_ns(&[
            "get",
            "pods",
            "-l",
            &status.selector.context("no selector")?,
            "-o",
            "jsonpath={.items[*].status.podIP}",
        ])
        .await?;
    let ip = ips.split_whitespace().next().context("no pod IP")?;
    let document = http_get(ip, 8080, "/status").await?;
    eprintln!(
        "measure: NearBudget True {} after pgbench -c 40 started; one pod's /status answer is {} bytes of body",
        secs(turned),
        document.len()
    );
    let report = env.finish_pgbench("bench-usage").await?;
    ensure!(report.failed == 0 && report.processed > 0, "{report:?}");
    Ok(())
}

/// The body of `GET path` from `host:port`.
async fn http_get(host: &str, port: u16, path: &str) -> anyhow::Result<String> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut socket = tokio::net::TcpStream::connect((host, port)).await?;
    socket
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = String::new();
    socket.read_to_string(&mut raw).await?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header")?;
    ensure!(head.starts_with("HTTP/1.1 200"), "{head}");
    Ok(body.to_owned())
}

/// Scaling 2 → 5 → 2 under load: the server connections PostgreSQL sees never exceed the
/// pool's budget, and new pods wait until every running pod reports the smaller pool sizes.
async fn scaling_stays_within_the_budget(env: &mut Env) -> anyhow::Result<()> {
    let budget = env
        .pool()
        .await?
        .status
        .and_then(|s| s.budget)
        .context("budget")?
        .pool;
    let sampler = Sampler::start(&env.pg).await?;
    env.start_pgbench(
        "bench-scale",
        &["-n", "-C", "-c", "40", "-j", "2", "-T", "45"],
    )
    .await?;
    let started = Instant::now();
    env.kubectl_ns(&["scale", &format!("cpool/{POOL}"), "--replicas=5"])
        .await?;
    env.wait_pool_ready(5).await?;
    let up = started.elapsed();
    let started = Instant::now();
    env.kubectl_ns(&["scale", &format!("cpool/{POOL}"), "--replicas=2"])
        .await?;
    env.wait_pool_ready(2).await?;
    let down = started.elapsed();
    let phase = env.pod_phase("bench-scale").await?;
    ensure!(
        phase == "Running",
        "pgbench ended ({phase}) before scaling did: the load did not cover it"
    );
    let (max, samples) = sampler.stop().await?;
    let report = env.finish_pgbench("bench-scale").await?;
    eprintln!(
        "measure: scale 2→5 {}, 5→2 {} (old pods gone); server connections at most {max} of the budget {budget} \
         ({samples} samples every {SAMPLE_EVERY:?}); pgbench -C -c 40: {} transactions, {} failed, {:.0} tps",
        secs(up),
        secs(down),
        report.processed,
        report.failed,
        report.tps
    );
    ensure!(
        max > 0,
        "no server connection was ever seen: the sampler saw no load"
    );
    ensure!(max <= budget, "{max} server connections, budget {budget}");
    // The pods were added because the running ones reported the new ConfigMap, not on a
    // timer (there is none).
    let resizing = env
        .kubectl_ns(&[
            "get",
            "events",
            "--field-selector",
            "reason=Resizing",
            "-o",
            "jsonpath={.items[*].message}",
        ])
        .await?;
    ensure!(
        resizing.contains("until every running pod runs the new pool sizes")
            && resizing.contains("then 5"),
        "Resizing events: {resizing:?}"
    );
    let table = env.kubectl_ns(&["get", "cpool", POOL]).await?;
    eprintln!("kubectl get cpool after scaling back to 2:\n{table}");
    Ok(())
}

/// The operator pod deleted right after a change it has to carry out: its successor (the
/// Deployment's next pod, which takes over the leader Lease) finishes the work.
async fn operator_successor_finishes(env: &mut Env) -> anyhow::Result<()> {
    let selector = "app.kubernetes.io/component=operator";
    let before = env
        .kubectl(&[
            "get",
            "pods",
            "-n",
            "weir-system",
            "-l",
            selector,
            "-o",
            "name",
        ])
        .await?;
    env.kubectl_ns(&["scale", &format!("cpool/{POOL}"), "--replicas=3"])
        .await?;
    let started = Instant::now();
    // Scaling up first shrinks every pod's share and waits for the pods to report it in
    // their /status before adding one, so the operator is mid-way when its pod
    // goes; whether the Deployment had its third replica by then is told, not asserted.
    env.kubectl(&["delete", "pods", "-n", "weir-system", "-l", selector])
        .await?;
    let replicas = env
        .kubectl_ns(&["get", "deployment", POOL, "-o", "jsonpath={.spec.replicas}"])
        .await?;
    let holder = eventually("a new operator pod to lead", WAIT, || async {
        let holder = env
            .kubectl(&[
                "get",
                "lease",
                "-n",
                "weir-system",
                "weir-operator",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .await?;
        let pod = format!("pod/{holder}");
        ensure!(
            !holder.is_empty() && !before.lines().any(|p| p == pod),
            "the leader is still {holder:?}"
        );
        env.kubectl(&["get", "-n", "weir-system", &pod]).await?;
        Ok(holder)
    })
    .await?;
    env.wait_pool_ready(3).await?;
    eprintln!(
        "measure: operator pod deleted (deployment at {replicas} replicas once it was gone); successor {holder} led and 3 pods were Ready after {}",
        secs(started.elapsed())
    );
    Ok(())
}

/// `kubectl weir status` reads every pod's /status through the API server's pod proxy, and
/// `kubectl weir console` runs SHOW POOLS on every pod through port-forwards, logging in as
/// the pool's stats user with its password from the operator's auth Secret.
async fn kubectl_weir_reads_the_pods(env: &mut Env) -> anyhow::Result<()> {
    let patch = r#"{"spec":{"parameters":{"stats_users":"app"}}}"#;
    env.kubectl_ns(&["patch", "cpool", POOL, "--type=merge", "-p", patch])
        .await?;
    let pool = env.wait_pool_ready(2).await?;
    let selector = pool.status.and_then(|s| s.selector).context("selector")?;
    let pods = env
        .kubectl_ns(&["get", "pods", "-l", &selector, "-o", "name"])
        .await?;
    let pods: Vec<&str> = pods
        .lines()
        .filter_map(|p| p.strip_prefix("pod/"))
        .collect();
    // The plugin built next to the binaries the node's image was made of.
    let plugin_dir = operator_bin()
        .parent()
        .context("the operator binary has no directory")?
        .to_owned();
    let status = env
        .plane
        .kubectl_weir(&plugin_dir, &["status", "-n", NS, POOL])
        .await?;
    eprintln!(
        "$ kubectl weir status -n {NS} {POOL}\n{}{}",
        status.stdout, status.stderr
    );
    ensure!(status.success(), "{}", status.stderr);
    for pod in &pods {
        let row = status
            .stdout
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{pod} ")))
            .with_context(|| format!("no row for {pod}"))?;
        ensure!(!row.contains("unreadable"), "{row}");
    }
    // The pods reload the new stats_users after the kubelet refreshes their ConfigMap.
    let console = eventually("SHOW POOLS on every pod", WAIT, || async {
        let out = env
            .plane
            .kubectl_weir(
                &plugin_dir,
                &["console", "-n", NS, POOL, "--", "SHOW POOLS"],
            )
            .await?;
        ensure!(out.success(), "{}{}", out.stdout, out.stderr);
        Ok(out.stdout)
    })
    .await?;
    eprintln!("$ kubectl weir console -n {NS} {POOL} -- SHOW POOLS\n{console}");
    let mut lines = console.lines();
    let header = lines.next().unwrap_or_default();
    ensure!(
        header.starts_with("POD ") && header.contains("CL_ACTIVE"),
        "{console}"
    );
    let rows: Vec<&str> = lines.collect();
    for pod in &pods {
        ensure!(
            rows.iter().any(|r| r.starts_with(&format!("{pod} "))),
            "no SHOW POOLS row for {pod}:\n{console}"
        );
    }
    Ok(())
}

macro_rules! step {
    ($env:expr, $step:ident) => {{
        let started = Instant::now();
        let result = $step($env).await;
        eprintln!("step {}: {:?}", stringify!($step), started.elapsed());
        if let Err(e) = result {
            let logs = $env
                .plane
                .kubectl(&[
                    "logs",
                    "-n",
                    "weir-system",
                    "-l",
                    "app.kubernetes.io/component=operator",
                    "--tail=40",
                ])
                .await
                .map(|o| o.stdout + &o.stderr)
                .unwrap_or_default();
            let pods = $env
                .plane
                .kubectl(&["get", "pods", "-A", "-o", "wide"])
                .await
                .map(|o| o.stdout)
                .unwrap_or_default();
            panic!(
                "step {} failed: {e:#}\npods:\n{pods}\noperator log:\n{logs}",
                stringify!($step)
            );
        }
    }};
}

/// The operator binary the node's image is built from (and `kubectl-weir` lies beside).
fn operator_bin() -> std::path::PathBuf {
    std::env::var_os(OPERATOR_BIN_ENV)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/weir-operator"))
}

async fn setup() -> anyhow::Result<Env> {
    let operator_bin = operator_bin();
    let bins = operator_bin
        .parent()
        .context("the operator binary has no directory")?
        .to_owned();
    let plane = ControlPlane::start_with_real_node(&bins).await?;
    eprintln!(
        "measure: control plane and real node up in {}",
        secs(plane.startup)
    );
    // Pods reach PostgreSQL on the node's bridge address.
    let hba = "local all postgres trust\nlocal all all md5\n\
               host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 md5\n\
               host all all 10.244.0.0/24 scram-sha-256\n";
    let pg = PgCluster::start_with(PgOptions {
        max_connections: MAX_CONNECTIONS,
        extra_conf: vec![format!("listen_addresses = '127.0.0.1,{NODE_IP}'")],
        hba: Some(hba.to_owned()),
        ..PgOptions::default()
    })
    .await?;
    pg.create_role("app", "app-secret", PasswordMethod::Scram)
        .await?;
    pg.create_database("orders", "app").await?;
    let init = pg
        .pgbench("app", "app-secret", "orders", &["-i", "-q", "-s", "1"])
        .await?;
    if !init.success() {
        bail!("pgbench -i failed: {}", init.stderr);
    }
    plane.kubectl_ok(&["create", "namespace", NS]).await?;
    plane
        .kubectl_ok(&[
            "label",
            "namespace",
            NS,
            "pod-security.kubernetes.io/enforce=restricted",
        ])
        .await?;
    plane
        .create_credentials(NS, "orders-db-app", "app", "app-secret")
        .await?;
    let env = Env { plane, pg };
    helm_install(&env).await?;
    Ok(env)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_end_to_end() {
    if std::env::var("WEIR_E2E_PODS").as_deref() == Ok("0") {
        eprintln!("e2e_pods: skipped (WEIR_E2E_PODS=0)");
        return;
    }
    let started = Instant::now();
    let mut env = match setup().await {
        Ok(env) => env,
        Err(e) => panic!("setup failed: {e:#}"),
    };
    let env = &mut env;
    step!(env, pool_becomes_ready);
    step!(env, rollout_restart_under_load);
    step!(env, usage_shows_in_status_under_load);
    step!(env, kubectl_weir_reads_the_pods);
    step!(env, scaling_stays_within_the_budget);
    step!(env, operator_successor_finishes);
    eprintln!("e2e_pods: {:?} in all", started.elapsed());
}
