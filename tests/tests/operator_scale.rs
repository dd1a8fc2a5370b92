//! The operator at scale (issue 18, `make bench`'s operator section): 500 ConnectionPools over
//! 50 databases created at once on the kwok control plane, measured for time until all are
//! Ready, reconcile latency (the operator's own histogram), API requests per reconcile (the
//! API server's audit log), the operator's memory, and API writes in a steady state.
//!
//! The measurement is `#[ignore]`d (minutes, and `make bench` runs it with the control plane's
//! audit log on): `WEIR_CONTROLPLANE_AUDIT=1 cargo test -p weir-tests --test operator_scale
//! -- --ignored --nocapture`. Its arithmetic is tested by the plain tests below.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _};
use weir_tests::k8s::{workspace, ControlPlane, Operator};
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions};
use weir_tests::procfs;

const NS: &str = "scale";
/// The client certificate's user that the operator and kubectl share (tests/controlplane/up.sh).
const ADMIN_USER: &str = "weir-test-admin";
const HISTOGRAM: &str = "weir_operator_reconcile_duration_seconds";

fn knob(name: &str, default: u64) -> anyhow::Result<u64> {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .with_context(|| format!("{name}={v} is not a number")),
        Err(_) => Ok(default),
    }
}

/// The bucket counts (upper bound → cumulative count) of `name`, summed over its labels.
fn histogram_buckets(metrics: &str, name: &str) -> BTreeMap<u64, (f64, f64)> {
    // Keyed by the bound's bits so that +Inf sorts last among positive floats.
    let mut buckets = BTreeMap::new();
    let prefix = format!("{name}_bucket{{");
    for line in metrics.lines().filter(|l| l.starts_with(&prefix)) {
        let Some((labels, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let Some(le) = labels
            .split("le=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
        else {
            continue;
        };
        let bound = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap_or(f64::NAN)
        };
        let (Ok(count), false) = (value.trim().parse::<f64>(), bound.is_nan()) else {
            continue;
        };
        buckets.entry(bound.to_bits()).or_insert((bound, 0.0)).1 += count;
    }
    buckets
}

/// The `q` quantile of a cumulative histogram as Prometheus' histogram_quantile computes it
/// (linear within the bucket); `Err(bound)` when it lies beyond the highest finite bound.
fn quantile(buckets: &BTreeMap<u64, (f64, f64)>, q: f64) -> Option<Result<f64, f64>> {
    let total = buckets.values().last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let (mut lower, mut below) = (0.0, 0.0);
    for &(bound, count) in buckets.values() {
        if count >= rank {
            if bound.is_infinite() {
                return Some(Err(lower));
            }
            let share = if count > below {
                (rank - below) / (count - below)
            } else {
                1.0
            };
            return Some(Ok(lower + (bound - lower) * share));
        }
        (lower, below) = (bound, count);
    }
    Some(Err(lower))
}

/// The value of an unlabelled-or-labelled counter summed over its labels.
fn counter_sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit_once(' ')?.1.trim().parse::<f64>().ok())
        .sum()
}

/// The operator's API requests in an audit log excerpt, split into reads and writes, with the
/// writes by verb and resource. kubectl shares the operator's user; its user agent tells it apart.
#[derive(Debug, Default, PartialEq)]
struct Requests {
    reads: u64,
    reads_by: BTreeMap<String, u64>,
    writes: BTreeMap<String, u64>,
}

impl Requests {
    fn total_writes(&self) -> u64 {
        self.writes.values().sum()
    }
}

fn operator_requests(audit: &str) -> Requests {
    let mut out = Requests::default();
    for line in audit.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let user = event["user"]["username"].as_str().unwrap_or_default();
        let agent = event["userAgent"].as_str().unwrap_or_default();
        if user != ADMIN_USER || agent.starts_with("kubectl") {
            continue;
        }
        let verb = event["verb"].as_str().unwrap_or_default();
        let object = &event["objectRef"];
        let mut resource = object["resource"].as_str().unwrap_or("?").to_owned();
        if let Some(sub) = object["subresource"].as_str() {
            resource = format!("{resource}/{sub}");
        }
        let request = format!("{verb} {resource}");
        if matches!(verb, "get" | "list" | "watch") {
            out.reads += 1;
            *out.reads_by.entry(request).or_default() += 1;
        } else {
            *out.writes.entry(request).or_default() += 1;
        }
    }
    out
}

/// One client's requests in an audit log excerpt: how many, and the first and last time.
#[derive(Debug, PartialEq)]
struct Client {
    requests: u64,
    first: jiff::Timestamp,
    last: jiff::Timestamp,
}

impl Client {
    /// Requests per second between its first and last request.
    fn rate(&self) -> f64 {
        let span = self.last.duration_since(self.first).as_secs_f64();
        if span > 0.0 {
            self.requests as f64 / span
        } else {
            0.0
        }
    }
}

/// Every user's requests in an audit log excerpt (the control plane's own controllers
/// included), busiest first: a client-side rate limit shows as a steady rate over a long span.
fn clients(audit: &str) -> Vec<(String, Client)> {
    let mut by_user: BTreeMap<String, Client> = BTreeMap::new();
    for line in audit.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(at) = event["requestReceivedTimestamp"]
            .as_str()
            .and_then(|t| t.parse::<jiff::Timestamp>().ok())
        else {
            continue;
        };
        let user = event["user"]["username"].as_str().unwrap_or("?").to_owned();
        let client = by_user.entry(user).or_insert(Client {
            requests: 0,
            first: at,
            last: at,
        });
        client.requests += 1;
        client.first = client.first.min(at);
        client.last = client.last.max(at);
    }
    let mut clients: Vec<(String, Client)> = by_user.into_iter().collect();
    clients.sort_by(|a, b| b.1.requests.cmp(&a.1.requests).then(a.0.cmp(&b.0)));
    clients
}

/// Resident and peak resident memory of a process, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let field = |name| procfs::status_kib(pid, name).unwrap_or(0);
    (field("VmRSS"), field("VmHWM"))
}

fn audit_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn audit_since(path: &Path, offset: u64) -> anyhow::Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let start = usize::try_from(offset)?.min(bytes.len());
    Ok(String::from_utf8_lossy(&bytes[start..]).into_owned())
}

/// The loopback address that database `d` is reached at: 127.0.0.1, 127.0.0.2, ...
fn database_host(d: u64) -> String {
    format!("127.0.0.{}", d + 1)
}

/// `pools` ConnectionPools spread evenly over `databases`, together claiming 90 % of each.
fn pool_manifest(pools: u64, databases: u64, pg_port: u16) -> String {
    let percent = 90 / pools.div_ceil(databases);
    (0..pools)
        .map(|i| {
            let d = i % databases;
            format!(
                "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: pool-{i}\n\
                 spec:\n  database:\n    host: {}\n    port: {pg_port}\n    dbname: db{d}\n    \
                 credentialsSecret: {{name: db-app}}\n    maxConnections: auto\n  \
                 maxConnectionsPercent: {percent}\n  replicas: 1\n",
                database_host(d)
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

/// Creates the objects of `manifest` with ten `kubectl create` at once, each without the
/// harness's per-command time limit: on a loaded machine 500 creations outlast it.
async fn create_at_once(plane: &ControlPlane, manifest: &str) -> anyhow::Result<()> {
    let documents: Vec<&str> = manifest.split("---\n").collect();
    let mut creators = Vec::new();
    for chunk in documents.chunks(documents.len().div_ceil(10).max(1)) {
        let mut cmd = tokio::process::Command::new(plane.bin_dir().join("kubectl"));
        cmd.arg("--kubeconfig")
            .arg(plane.kubeconfig())
            .args(["create", "-n", NS, "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().context("starting kubectl create")?;
        let mut stdin = child.stdin.take().context("kubectl's stdin")?;
        let text = chunk.join("---\n");
        creators.push(tokio::spawn(async move {
            tokio::io::AsyncWriteExt::write_all(&mut stdin, text.as_bytes()).await?;
            drop(stdin);
            let out = child.wait_with_output().await?;
            ensure!(
                out.status.success(),
                "kubectl create: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            anyhow::Ok(())
        }));
    }
    for creator in creators {
        creator.await??;
    }
    Ok(())
}

async fn ready_count(plane: &ControlPlane) -> anyhow::Result<u64> {
    let out = plane
        .kubectl_ok(&[
            "get",
            "cpool",
            "-n",
            NS,
            "-o",
            "jsonpath={range .items[*]}{.status.conditions[?(@.type==\"Ready\")].status}{\"\\n\"}{end}",
        ])
        .await?;
    Ok(out.lines().filter(|l| l.trim() == "True").count() as u64)
}

fn seconds(q: Option<Result<f64, f64>>) -> String {
    match q {
        None => "n/a".into(),
        Some(Ok(v)) => format!("{:.0} ms", v * 1000.0),
        Some(Err(bound)) => format!("> {bound} s"),
    }
}

fn verdict(met: bool) -> &'static str {
    if met {
        "met"
    } else {
        "**not met**"
    }
}

#[tokio::test]
#[ignore = "minutes long; make bench runs it with WEIR_CONTROLPLANE_AUDIT=1"]
async fn operator_at_scale() -> anyhow::Result<()> {
    ensure!(
        std::env::var("WEIR_CONTROLPLANE_AUDIT").as_deref() == Ok("1"),
        "set WEIR_CONTROLPLANE_AUDIT=1: API requests are counted from the API server's audit log"
    );
    let pools = knob("OPERATOR_SCALE_POOLS", 500)?;
    let databases = knob("OPERATOR_SCALE_DATABASES", 50)?;
    let steady = Duration::from_secs(knob("OPERATOR_SCALE_STEADY_SECONDS", 60)?);
    let limit = Duration::from_secs(knob("OPERATOR_SCALE_LIMIT_SECONDS", 600)?);
    // The controller-manager's default 20 requests/s would bound the Deployments' rollout
    // (about five of its requests each), not the operator: 0 keeps the defaults.
    let client_qps = knob("OPERATOR_SCALE_CONTROL_PLANE_QPS", 200)?;

    ensure!(
        databases <= 250,
        "at most 250 databases (one loopback address each)"
    );

    let plane = match client_qps {
        0 => ControlPlane::start().await?,
        qps => ControlPlane::start_with_client_qps(u32::try_from(qps)?).await?,
    };
    let audit = plane.state_dir().join("logs/audit.log");
    // One PostgreSQL listens on a loopback address per database: the operator budgets per
    // server (host and port), so it sees as many servers, each with its own max_connections.
    let addresses = (0..databases).map(database_host).collect::<Vec<_>>();
    let pg = PgCluster::start_with(PgOptions {
        max_connections: 400,
        extra_conf: vec![format!("listen_addresses = '{}'", addresses.join(","))],
        hba: Some(
            "host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.0/8 scram-sha-256\n".into(),
        ),
        ..PgOptions::default()
    })
    .await?;
    pg.create_role("app", "app-secret", PasswordMethod::Scram)
        .await?;
    for d in 0..databases {
        pg.create_database(&format!("db{d}"), "app").await?;
    }
    let crd = workspace().join("crds/connectionpools.weir.dev.yaml");
    plane
        .kubectl_ok(&["apply", "-f", &crd.to_string_lossy()])
        .await?;
    plane.wait_for_crd().await?;
    plane.kubectl_ok(&["create", "namespace", NS]).await?;
    plane
        .create_credentials(NS, "db-app", "app", "app-secret")
        .await?;
    // One replica without leader election (no Lease renewals to count); kwok pods have no
    // /status to poll; a 20 s resync so that the steady state includes resyncs of every pool.
    let operator = Operator::start(
        &plane,
        "scale",
        &[
            "--leader-elect=false",
            "--poll-pod-status=false",
            "--resync-seconds=20",
        ],
    )
    .await?;
    let mut before = String::new();
    for _ in 0..200 {
        if let Ok(m) = operator.metrics().await {
            before = m;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ensure!(!before.is_empty(), "no /metrics: {}", operator.log());

    let offset = audit_len(&audit);
    let started = Instant::now();
    create_at_once(&plane, &pool_manifest(pools, databases, pg.port())).await?;
    let created = started.elapsed();
    let mut ready = 0;
    while ready < pools {
        ensure!(
            started.elapsed() < limit,
            "{ready}/{pools} Ready after {limit:?}; operator log tail: {}",
            operator
                .log()
                .lines()
                .rev()
                .take(20)
                .collect::<Vec<_>>()
                .join("\n")
        );
        ensure!(
            operator.running(),
            "the operator exited: {}",
            operator.log()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        ready = ready_count(&plane).await?;
    }
    let all_ready = started.elapsed();
    let at_ready = operator.metrics().await?;
    let (rss_ready, _) = memory_kib(operator.pid());
    let burst_audit = audit_since(&audit, offset)?;
    if let Ok(path) = std::env::var("OPERATOR_SCALE_AUDIT") {
        std::fs::write(&path, &burst_audit).with_context(|| format!("writing {path}"))?;
    }
    let burst = operator_requests(&burst_audit);
    let busiest = clients(&burst_audit);

    // Let trailing reconciles (status of the last pools, their Deployments' progress) finish.
    tokio::time::sleep(Duration::from_secs(10)).await;
    let steady_offset = audit_len(&audit);
    let steady_metrics_before = operator.metrics().await?;
    tokio::time::sleep(steady).await;
    let steady_metrics_after = operator.metrics().await?;
    let quiet = operator_requests(&audit_since(&audit, steady_offset)?);
    let (rss, peak) = memory_kib(operator.pid());
    if let Ok(path) = std::env::var("OPERATOR_SCALE_LOG") {
        std::fs::write(&path, operator.log()).with_context(|| format!("writing {path}"))?;
    }

    let reconciles_burst = counter_sum(&at_ready, "weir_operator_reconciles_total")
        - counter_sum(&before, "weir_operator_reconciles_total");
    let reconciles_steady = counter_sum(&steady_metrics_after, "weir_operator_reconciles_total")
        - counter_sum(&steady_metrics_before, "weir_operator_reconciles_total");
    let buckets = histogram_buckets(&at_ready, HISTOGRAM);
    let (p50, p99) = (quantile(&buckets, 0.5), quantile(&buckets, 0.99));
    let per_reconcile = |r: &Requests| {
        if reconciles_burst > 0.0 {
            format!(
                "{:.1} ({:.1} reads, {:.1} writes)",
                (r.reads + r.total_writes()) as f64 / reconciles_burst,
                r.reads as f64 / reconciles_burst,
                r.total_writes() as f64 / reconciles_burst
            )
        } else {
            "n/a".into()
        }
    };

    let mut table = String::from("## Operator at scale\n\n");
    writeln!(table,
        "{pools} ConnectionPools over {databases} databases (one PostgreSQL listening on a \
         loopback address per database, so that the operator budgets {databases} servers), created by ten \
         concurrent `kubectl create` ({:.1} s), kwok nodes, one operator replica (`--leader-elect=false \
         --poll-pod-status=false --resync-seconds=20`), {}.\n",
        created.as_secs_f64(),
        match client_qps {
            0 => "the controller-manager and scheduler at their default client rate limits (20 and 50 requests/s)".to_owned(),
            qps => format!("the controller-manager and scheduler allowed {qps} requests/s each (their defaults, 20 and 50, would bound the Deployments' rollout)"),
        }
    )?;
    writeln!(table, "| measure | value | target | |")?;
    writeln!(table, "|---|--:|--:|---|")?;
    writeln!(
        table,
        "| all Ready after creation | {:.1} s | ≤ 60 s | {} |",
        all_ready.as_secs_f64(),
        verdict(all_ready <= Duration::from_secs(60))
    )?;
    writeln!(
        table,
        "| reconciles until all Ready | {reconciles_burst:.0} | | |"
    )?;
    writeln!(table, "| reconcile latency p50 | {} | | |", seconds(p50))?;
    writeln!(
        table,
        "| reconcile latency p99 | {} | ≤ 1 s | {} |",
        seconds(p99),
        verdict(matches!(p99, Some(Ok(v)) if v <= 1.0))
    )?;
    writeln!(
        table,
        "| API requests per reconcile until all Ready | {} | | |",
        per_reconcile(&burst)
    )?;
    writeln!(table,
        "| operator RSS when all Ready / after the steady state (peak) | {:.1} MiB / {:.1} MiB ({:.1} MiB) | | |",
        rss_ready as f64 / 1024.0,
        rss as f64 / 1024.0,
        peak as f64 / 1024.0
    )?;
    writeln!(table,
        "| steady state, {} s: reconciles / API reads / API writes | {reconciles_steady:.0} / {} / {} | 0 writes | {} |",
        steady.as_secs(),
        quiet.reads,
        quiet.total_writes(),
        verdict(quiet.total_writes() == 0)
    )?;
    writeln!(
        table,
        "\nWrites until all Ready, by verb and resource: {:?}",
        burst.writes
    )?;
    writeln!(
        table,
        "\nReads until all Ready, by verb and resource: {:?}",
        burst.reads_by
    )?;
    writeln!(
        table,
        "\nThe busiest API clients until all Ready (requests, span, rate):\n"
    )?;
    for (user, client) in busiest.iter().take(8) {
        writeln!(
            table,
            "- {user}: {} over {:.1} s, {:.1}/s",
            client.requests,
            client.last.duration_since(client.first).as_secs_f64(),
            client.rate()
        )?;
    }
    if !quiet.writes.is_empty() {
        writeln!(table, "Writes in the steady state: {:?}", quiet.writes)?;
    }
    print!("\n{table}");
    if let Ok(path) = std::env::var("OPERATOR_SCALE_REPORT") {
        std::fs::write(&path, &table).with_context(|| format!("writing {path}"))?;
    }
    // Writing with nothing changing is a hot loop, a defect rather than a slow machine.
    if quiet.total_writes() > 0 {
        bail!("the operator wrote in a steady state: {:?}", quiet.writes);
    }
    Ok(())
}

#[test]
fn histogram_quantiles_interpolate_like_prometheus() {
    let metrics = "\
# TYPE weir_operator_reconcile_duration_seconds histogram
weir_operator_reconcile_duration_seconds_bucket{result=\"success\",le=\"0.01\"} 40
weir_operator_reconcile_duration_seconds_bucket{result=\"success\",le=\"0.05\"} 80
weir_operator_reconcile_duration_seconds_bucket{result=\"success\",le=\"+Inf\"} 98
weir_operator_reconcile_duration_seconds_bucket{result=\"error\",le=\"0.01\"} 0
weir_operator_reconcile_duration_seconds_bucket{result=\"error\",le=\"0.05\"} 0
weir_operator_reconcile_duration_seconds_bucket{result=\"error\",le=\"+Inf\"} 2
weir_operator_reconcile_duration_seconds_sum{result=\"success\"} 3.5
weir_operator_reconcile_duration_seconds_count{result=\"success\"} 98
";
    let b = histogram_buckets(metrics, HISTOGRAM);
    assert_eq!(b.len(), 3);
    // Rank 50 of 100: 10 into the 40..80 bucket spanning 0.01..0.05.
    let p50 = quantile(&b, 0.5).unwrap().unwrap();
    assert!((p50 - 0.02).abs() < 1e-9, "{p50}");
    // Rank 99 lies in +Inf: only "above 0.05 s" is known.
    assert_eq!(quantile(&b, 0.99), Some(Err(0.05)));
    assert_eq!(quantile(&BTreeMap::new(), 0.5), None);
    assert_eq!(
        counter_sum(metrics, "weir_operator_reconcile_duration_seconds_count"),
        98.0
    );
}

#[test]
fn audit_events_count_the_operators_requests_only() {
    let log = [
        r#"{"verb":"get","user":{"username":"weir-test-admin"},"userAgent":"","objectRef":{"resource":"deployments"}}"#,
        r#"{"verb":"patch","user":{"username":"weir-test-admin"},"userAgent":"","objectRef":{"resource":"connectionpools","subresource":"status"}}"#,
        r#"{"verb":"create","user":{"username":"weir-test-admin"},"userAgent":"","objectRef":{"resource":"configmaps"}}"#,
        r#"{"verb":"create","user":{"username":"weir-test-admin"},"userAgent":"kubectl/v1.34.4 (linux/amd64)","objectRef":{"resource":"connectionpools"}}"#,
        r#"{"verb":"update","user":{"username":"system:kube-scheduler"},"userAgent":"kube-scheduler/v1.34.4","objectRef":{"resource":"pods"}}"#,
        "not json",
    ]
    .join("\n");
    let r = operator_requests(&log);
    assert_eq!(r.reads, 1);
    assert_eq!(
        r.reads_by,
        BTreeMap::from([("get deployments".to_owned(), 1)])
    );
    assert_eq!(
        r.writes,
        BTreeMap::from([
            ("create configmaps".to_owned(), 1),
            ("patch connectionpools/status".to_owned(), 1),
        ])
    );
    assert_eq!(r.total_writes(), 2);
}

#[test]
fn clients_are_ranked_by_requests_with_their_rate() {
    let event = |user: &str, at: &str| {
        format!(
            r#"{{"verb":"get","user":{{"username":"{user}"}},"requestReceivedTimestamp":"{at}"}}"#
        )
    };
    let log = [
        event(
            "system:serviceaccount:kube-system:deployment-controller",
            "2026-12-06T00:00:00.000000Z",
        ),
        event(
            "system:serviceaccount:kube-system:deployment-controller",
            "2026-12-06T00:00:09.000000Z",
        ),
        event(
            "system:serviceaccount:kube-system:deployment-controller",
            "2026-12-06T00:00:10.000000Z",
        ),
        event("weir-test-admin", "2026-12-06T00:00:01.500000Z"),
        r#"{"verb":"get","user":{"username":"no-time"}}"#.to_owned(),
    ]
    .join("\n");
    let ranked = clients(&log);
    assert_eq!(ranked.len(), 2);
    assert_eq!(
        ranked[0].0,
        "system:serviceaccount:kube-system:deployment-controller"
    );
    assert_eq!(ranked[0].1.requests, 3);
    assert!((ranked[0].1.rate() - 0.3).abs() < 1e-9);
    assert_eq!(ranked[1].1.rate(), 0.0, "a single request has no rate");
}

#[test]
fn pools_spread_over_databases_within_their_budget() {
    let manifest = pool_manifest(20, 2, 5432);
    assert_eq!(manifest.matches("kind: ConnectionPool").count(), 20);
    // Ten pools per database at 9 % each claim 90 % of it.
    assert_eq!(manifest.matches("maxConnectionsPercent: 9\n").count(), 20);
    let third = manifest.split("---\n").nth(3).unwrap();
    assert!(third.contains("name: pool-3\n") && third.contains("host: 127.0.0.2\n"));
    assert!(third.contains("dbname: db1\n"), "{third}");
}
