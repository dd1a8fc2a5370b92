//! The alerts and the dashboard against a real Prometheus: promtool checks and unit-tests
//! the rules; then real `weir` processes in front of a real PostgreSQL under pgbench load,
//! and the operator against a real API server, are scraped by a real Prometheus (with the
//! labels a PodMonitor adds), and every PromQL expression of the rules and of the dashboard
//! must parse and return series. The test arranges each alert's condition, so an alert's
//! expression returning nothing means it cannot fire on what Weir really exports.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_tests::fixture::{self, Fixture, Options};
use weir_tests::k8s::{workspace, ControlPlane, Operator};
use weir_tests::net;
use weir_tests::postgres::{PasswordMethod, PgCluster};
use weir_tests::prometheus::{self, Prometheus, Target};
use weir_tests::tls::TestCa;
use weir_tests::weir::WeirProcess;

const RULES: &str = "charts/weir/files/weir-rules.yaml";
const RULE_TESTS: &str = "tests/prometheus/weir-rules.test.yaml";
const DASHBOARD: &str = "charts/weir/files/weir-dashboard.json";

/// The namespace every target and ConnectionPool is in.
const NAMESPACE: &str = "shop";

/// How long every expression together may take to return series.
const SERIES_TIMEOUT: Duration = Duration::from_secs(120);

#[tokio::test]
async fn promtool_checks_and_unit_tests_the_rules() {
    let (ok, out) = prometheus::promtool(&["check", "rules", RULES])
        .await
        .expect("promtool");
    assert!(ok, "promtool check rules:\n{out}");
    let (ok, out) = prometheus::promtool(&["test", "rules", RULE_TESTS])
        .await
        .expect("promtool");
    assert!(ok, "promtool test rules:\n{out}");
}

/// Every `expr` of the rules file.
fn rule_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace().join(RULES)).expect("rules file");
    let rules: serde_json::Value = serde_saphyr::from_str(&text).expect("rules YAML");
    let mut out = Vec::new();
    for group in rules["groups"].as_array().expect("groups") {
        for rule in group["rules"].as_array().expect("rules") {
            let name = rule["alert"].as_str().or(rule["record"].as_str());
            let expr = rule["expr"].as_str().expect("expr");
            out.push((format!("rule {}", name.unwrap_or("?")), expr.to_owned()));
        }
    }
    out
}

/// Every panel target of the dashboard with Grafana's variables filled in as a user would:
/// the test's namespace, every pool, a rate window of a few scrapes.
fn dashboard_expressions() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(workspace().join(DASHBOARD)).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let fill = |expr: &str| {
        expr.replace("$namespace", NAMESPACE)
            .replace("$pool", ".+")
            .replace("$__rate_interval", "15s")
    };
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let title = panel["title"].as_str().unwrap_or("?");
            let legend = target["legendFormat"].as_str().unwrap_or("?");
            let expr = target["expr"].as_str().expect("expr");
            out.push((format!("panel {title:?} ({legend})"), fill(expr)));
        }
    }
    out
}

/// The dashboard's variables: `label_values(selector, label)` as (selector, label).
fn dashboard_variables() -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(workspace().join(DASHBOARD)).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON");
    let mut out = Vec::new();
    for variable in dashboard["templating"]["list"].as_array().expect("list") {
        let Some(query) = variable["query"]["query"].as_str() else {
            continue;
        };
        let inner = query
            .strip_prefix("label_values(")
            .and_then(|q| q.strip_suffix(')'))
            .expect("variables are label_values(selector, label)");
        let (selector, label) = inner.rsplit_once(',').expect("selector, label");
        let name = variable["name"].as_str().unwrap_or("?");
        out.push((
            format!("variable ${name}"),
            selector.replace("$namespace", NAMESPACE),
            label.trim().to_owned(),
        ));
    }
    out
}

/// A pooler "pod" serving /metrics on its own HTTP port, with the target labels it gets.
async fn pod(
    pg: &PgCluster,
    opts: Options,
    userlist: Option<String>,
    pool: &str,
    name: &str,
) -> (WeirProcess, Target) {
    let http = net::free_port();
    let opts = Options {
        userlist,
        ..opts
            .with(&format!("http_listen_addr = {}", net::HOST))
            .with(&format!("http_port = {http}"))
    };
    let weir = Fixture::start_weir(pg, &opts).await.expect("weir");
    let target = Target {
        address: format!("{}:{http}", net::HOST),
        labels: vec![
            ("namespace", NAMESPACE.to_owned()),
            ("pod", name.to_owned()),
            ("pool", pool.to_owned()),
        ],
    };
    (weir, target)
}

fn connection_pool(name: &str, port: u16, percent: u32) -> String {
    format!(
        "apiVersion: weir.dev/v1alpha1\nkind: ConnectionPool\nmetadata:\n  name: {name}\n\
         spec:\n  database:\n    host: 127.0.0.1\n    port: {port}\n    dbname: {db}\n    \
         credentialsSecret: {{name: app-db}}\n    maxConnections: auto\n  \
         maxConnectionsPercent: {percent}\n",
        db = fixture::DATABASE,
    )
}

/// Runs pgbench through `port` (8 clients sleeping 0.3 s per transaction: with a pool of 2
/// they queue for about a second) until `stop` is set.
async fn load(port: u16, script: std::path::PathBuf, stop: Arc<AtomicBool>) {
    let script = script.display().to_string();
    // Bounded: at most 60 rounds of 3 s.
    for _ in 0..60 {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let out = weir_tests::postgres::pgbench(
            net::HOST,
            port,
            fixture::USER,
            fixture::PASSWORD,
            fixture::DATABASE,
            &["-n", "-f", &script, "-c", "8", "-j", "2", "-T", "3"],
        )
        .await
        .expect("pgbench");
        assert!(out.success(), "pgbench: {}\n{}", out.stdout, out.stderr);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_and_dashboard_expression_returns_series() {
    let started = Instant::now();
    prometheus::binaries().expect("prometheus and promtool");

    let pg = PgCluster::start().await.expect("postgres");
    pg.create_role(fixture::USER, fixture::PASSWORD, PasswordMethod::Scram)
        .await
        .expect("role");
    pg.create_database(fixture::DATABASE, fixture::USER)
        .await
        .expect("database");

    // orders-a: TLS towards clients with a certificate expiring tomorrow.
    let ca = TestCa::new("observability").expect("CA");
    let cert = ca
        .leaf_expiring("weir", &["127.0.0.1"], Duration::from_secs(86_400))
        .expect("certificate");
    let files = tempfile::tempdir().expect("tempdir");
    let (cert_file, key_file) = (files.path().join("tls.crt"), files.path().join("tls.key"));
    std::fs::write(&cert_file, &cert.cert_pem).expect("cert");
    std::fs::write(&key_file, &cert.key_pem).expect("key");
    let script = files.path().join("sleep.sql");
    std::fs::write(&script, "SELECT pg_sleep(0.3);\n").expect("script");
    let tls = Options::mode("transaction", 2)
        .with("client_tls_sslmode = allow")
        .with(&format!("client_tls_cert_file = {}", cert_file.display()))
        .with(&format!("client_tls_key_file = {}", key_file.display()));
    let (orders_a, a) = pod(&pg, tls, None, "orders", "orders-a").await;
    // orders-b: the same pool without TLS, so its configuration differs (drift).
    let plain = Options::mode("transaction", 2);
    let (orders_b, b) = pod(&pg, plain.clone(), None, "orders", "orders-b").await;
    // billing-a: its auth file's password is not the server's, so server logins fail.
    let wrong = "not-the-server-password";
    let userlist = Some(format!("\"{}\" \"{wrong}\"\n", fixture::USER));
    let (billing, c) = pod(&pg, plain, userlist, "billing", "billing-a").await;
    // gone-a: a pod nothing answers for.
    let gone = Target {
        address: format!("{}:{}", net::HOST, net::free_port()),
        labels: vec![
            ("namespace", NAMESPACE.to_owned()),
            ("pod", "gone-a".to_owned()),
            ("pool", "gone".to_owned()),
        ],
    };

    // The operator with two pools on one database: billing's claim over-commits it.
    let plane = ControlPlane::start().await.expect("control plane");
    eprintln!("observability: control plane up in {:?}", plane.startup);
    plane
        .kubectl_ok(&["create", "namespace", NAMESPACE])
        .await
        .expect("namespace");
    plane
        .kubectl_ok(&[
            "apply",
            "--server-side",
            "-f",
            &workspace()
                .join("crds/connectionpools.weir.dev.yaml")
                .display()
                .to_string(),
        ])
        .await
        .expect("CRD");
    plane.wait_for_crd().await.expect("CRD served");
    plane
        .create_credentials(NAMESPACE, "app-db", fixture::USER, fixture::PASSWORD)
        .await
        .expect("credentials");
    let operator = Operator::start(&plane, "op-a", &["--leader-elect=false"])
        .await
        .expect("operator");
    for manifest in [
        connection_pool("orders", pg.port(), 50),
        connection_pool("billing", pg.port(), 80),
    ] {
        let out = plane
            .kubectl_with_input(&["apply", "-n", NAMESPACE, "-f", "-"], Some(&manifest))
            .await
            .expect("kubectl");
        assert!(out.success(), "{}", out.stderr);
    }
    let operator_target = Target {
        address: format!("{}:{}", net::HOST, operator.metrics_port()),
        labels: vec![
            ("namespace", "weir-system".to_owned()),
            ("pod", "weir-operator-0".to_owned()),
        ],
    };

    let prom = Prometheus::start(&[a, b, c, gone, operator_target])
        .await
        .expect("prometheus");

    // Load: both orders pods saturated, a division by zero, and failing logins to billing.
    let stop = Arc::new(AtomicBool::new(false));
    let loads = [orders_a.port(), orders_b.port()]
        .map(|port| tokio::spawn(load(port, script.clone(), Arc::clone(&stop))));
    let client = net::connect(
        orders_a.port(),
        fixture::USER,
        fixture::PASSWORD,
        fixture::DATABASE,
    )
    .await
    .expect("client");
    let division = client.simple_query("SELECT 1/0").await;
    assert!(division.is_err(), "SELECT 1/0 succeeded");
    let billing_port = billing.port();
    let logins = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            // Bounded: 600 attempts, 200 ms apart.
            for _ in 0..600 {
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                let refused =
                    net::connect(billing_port, fixture::USER, wrong, fixture::DATABASE).await;
                assert!(refused.is_err(), "billing logged in with a wrong password");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    let scraping = Instant::now();
    let mut pending: Vec<(String, String)> = rule_expressions();
    pending.extend(dashboard_expressions());
    let mut variables = dashboard_variables();
    let deadline = Instant::now() + SERIES_TIMEOUT;
    let mut last = Vec::new();
    while Instant::now() < deadline && !(pending.is_empty() && variables.is_empty()) {
        last.clear();
        let mut still = Vec::new();
        for (what, expr) in pending {
            match prom.query(&expr).await {
                Ok(series) if !series.is_empty() => {}
                Ok(_) => {
                    last.push(format!("{what}: no series from {expr}"));
                    still.push((what, expr));
                }
                Err(e) => panic!("{what}: Prometheus refuses {expr}: {e:#}"),
            }
        }
        pending = still;
        let mut still = Vec::new();
        for (what, selector, label) in variables {
            let series = match prom.query(&selector).await {
                Ok(series) => series,
                Err(e) => panic!("{what}: Prometheus refuses {selector}: {e:#}"),
            };
            if !series.iter().any(|s| s.labels.contains_key(&label)) {
                last.push(format!("{what}: no {label} label on {selector}"));
                still.push((what, selector, label));
            }
        }
        variables = still;
        if !last.is_empty() {
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for task in loads {
        task.await.expect("load");
    }
    logins.await.expect("failing logins");
    assert!(
        last.is_empty(),
        "after {SERIES_TIMEOUT:?}:\n{}\noperator log:\n{}\norders-a log:\n{}",
        last.join("\n"),
        operator.log(),
        orders_a.log()
    );
    eprintln!(
        "observability: every expression returned series {:?} after Prometheus started, \
         {:?} in all",
        scraping.elapsed(),
        started.elapsed()
    );
}
