//! Operating the pooler: the HTTP endpoint (metrics, health, status), live reload of pool
//! sizes under load, graceful drain on SIGTERM, and an existing PgBouncer configuration.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use weir_tests::fixture::{self, backend_pid, Fixture, Options};
use weir_tests::net;
use weir_tests::weir::{Signal, WeirProcess};

/// GET `path` on 127.0.0.1:`port`, returning (status code, body).
async fn http_get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to the HTTP endpoint");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("response");
    let code = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

/// Prometheus text lines `name{labels} value` for one metric name.
fn samples(text: &str, name: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            Some((key.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn with_http(opts: Options) -> (Options, u16) {
    let port = net::free_port();
    let opts = opts
        .with("http_listen_addr = 127.0.0.1")
        .with(&format!("http_port = {port}"));
    (opts, port)
}

#[tokio::test]
async fn metrics_and_status_agree_with_the_pool() {
    let (opts, http) = with_http(Options::mode("transaction", 3));
    let fx = Fixture::start(opts).await.expect("fixture");
    assert_eq!(http_get(http, "/healthz").await.0, 200);
    assert_eq!(http_get(http, "/readyz").await.0, 200);
    assert_eq!(http_get(http, "/nope").await.0, 404);

    let client = fx.client().await.expect("client");
    for _ in 0..25 {
        client.batch_execute("SELECT 1").await.expect("query");
    }
    let err = client.batch_execute("SELECT 1/0").await.expect_err("error");
    assert_eq!(fixture::sqlstate(&err), Some("22012"));
    // tokio-postgres reports the error before the ReadyForQuery behind it has arrived, so a
    // BEGIN sent at once could join the same relay (a pipelining client keeps its
    // connection) and hold its counts back; a completed query first ends that relay.
    client.batch_execute("SELECT 1").await.expect("query");
    client.batch_execute("BEGIN").await.expect("BEGIN");

    // A relay's counts are published as its connection is given back, a moment after the
    // client has its answer.
    let mut scrape = http_get(http, "/metrics").await;
    for _ in 0..50 {
        if scrape.1.contains("weir_errors_total{class=\"22\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        scrape = http_get(http, "/metrics").await;
    }
    let (code, text) = scrape;
    assert_eq!(code, 200);
    let labels = "{database=\"app\",user=\"app\"}";
    let servers = samples(&text, "weir_server_connections");
    let active = servers["weir_server_connections{database=\"app\",state=\"active\",user=\"app\"}"];
    assert_eq!(
        active, 1.0,
        "one server connection is held by the open transaction"
    );
    assert_eq!(
        samples(&text, "weir_pool_size")[&format!("weir_pool_size{labels}")],
        3.0
    );
    let errors = samples(&text, "weir_errors_total");
    assert_eq!(
        errors.get("weir_errors_total{class=\"22\",database=\"app\",user=\"app\"}"),
        Some(&1.0),
        "{text}\n{}",
        fx.weir.log()
    );
    assert_eq!(
        samples(&text, "weir_client_connections")["weir_client_connections"],
        1.0
    );
    assert!(text.contains("weir_pool_wait_seconds_bucket"));

    let (code, body) = http_get(http, "/status").await;
    assert_eq!(code, 200);
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["config_generation"], 1);
    assert_eq!(status["pools"][0]["database"], "app");
    assert_eq!(status["pools"][0]["size"], 3);
    assert_eq!(status["pools"][0]["active"], 1);
    assert_eq!(
        status["pools"][0]["server_connections"].as_u64(),
        Some(fx.server_connections().await.expect("count") as u64)
    );
    client.batch_execute("COMMIT").await.expect("COMMIT");
    // Counters are added when a server connection comes back: 25 + the error + SELECT 1 +
    // BEGIN + COMMIT.
    let counted = Fixture::eventually(Duration::from_secs(5), || async {
        let (_, text) = http_get(http, "/metrics").await;
        samples(&text, "weir_queries_total").get(&format!("weir_queries_total{labels}"))
            == Some(&29.0)
    })
    .await;
    assert!(counted, "weir_queries_total did not reach 29");
}

/// The `/status` of a running pooler, parsed.
async fn status_of(http: u16) -> serde_json::Value {
    let (_, body) = http_get(http, "/status").await;
    serde_json::from_str(&body).expect("JSON")
}

/// `/status` names the configuration file in force by the digest of its text (what the
/// operator compares with its ConfigMap before adding pods), and tells how long the
/// longest-waiting client has waited.
#[tokio::test]
async fn status_reports_the_file_in_force_and_the_longest_wait() {
    let (opts, http) = with_http(Options::mode("transaction", 1));
    let fx = Fixture::start(opts).await.expect("fixture");
    let text = std::fs::read_to_string(fx.weir.config_path()).expect("weir.ini");
    let status = status_of(http).await;
    assert_eq!(
        status["config_file_digest"],
        weir_pooler::config::file_digest(&text)
    );

    // One client holds the only server connection, a second one waits for it.
    let holder = fx.client().await.expect("client");
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let waiter = fx.client().await.expect("client");
    let waited = tokio::spawn(async move { waiter.batch_execute("SELECT 1").await });
    let waiting = Fixture::eventually(Duration::from_secs(10), || async {
        let pool = &status_of(http).await["pools"][0];
        pool["waiting"] == 1 && pool["longest_wait_ms"].as_u64().is_some_and(|ms| ms > 0)
    })
    .await;
    assert!(waiting, "no wait reported: {}", status_of(http).await);
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    waited.await.expect("join").expect("the waiting query");
    let pool = &status_of(http).await["pools"][0];
    assert_eq!(
        (&pool["waiting"], &pool["longest_wait_ms"]),
        (&0.into(), &0.into())
    );

    // A rewritten file is the file in force once loaded, even when it configures the same.
    let touched = format!("{text}\n; touched\n");
    fx.weir.rewrite_config(&touched).expect("rewrite");
    let digest = weir_pooler::config::file_digest(&touched);
    let followed = Fixture::eventually(Duration::from_secs(10), || async {
        status_of(http).await["config_file_digest"] == digest.as_str()
    })
    .await;
    assert!(followed, "the digest did not follow the file");
    assert_eq!(status_of(http).await["config_generation"], 1);
}

/// Creates pgbench's tables and starts its TPC-B-like load through weir: 12 clients for
/// `seconds`.
async fn tpcb_load(
    fx: &Fixture,
    seconds: u32,
) -> tokio::task::JoinHandle<anyhow::Result<weir_tests::postgres::CommandOutput>> {
    let init = fx
        .pgbench_direct(&["-i", "-q", "-s", "1"])
        .await
        .expect("init");
    assert!(init.success(), "{}", init.stderr);
    let port = fx.weir.port();
    let seconds = seconds.to_string();
    tokio::spawn(async move {
        weir_tests::postgres::pgbench(
            net::HOST,
            port,
            fixture::USER,
            fixture::PASSWORD,
            fixture::DATABASE,
            &["-n", "-c", "12", "-j", "2", "-T", &seconds],
        )
        .await
    })
}

#[tokio::test]
async fn a_reload_resizes_the_pool_under_load_without_errors() {
    let (opts, http) = with_http(Options::mode("transaction", 6));
    let fx = Fixture::start(opts.clone()).await.expect("fixture");
    let bench = tpcb_load(&fx, 8).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut smaller = opts.clone();
    smaller.pool_size = 2;
    fx.weir
        .rewrite_config(&fixture::ini(&fx.pg, &smaller))
        .expect("rewrite the configuration");
    // The file watch notices the change; the pool shrinks as connections come back.
    let shrunk = Fixture::eventually(Duration::from_secs(5), || async {
        fx.server_connections().await.unwrap_or(99) <= 2
    })
    .await;
    assert!(
        shrunk,
        "server connections did not follow the new pool size"
    );
    let mut peak = 0;
    while !bench.is_finished() {
        peak = peak.max(fx.server_connections().await.expect("count"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        peak <= 2,
        "saw {peak} server connections after shrinking to 2"
    );
    let out = bench.await.expect("join").expect("pgbench");
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let summary = weir_tests::postgres::parse_pgbench(&out.stdout).expect("report");
    eprintln!(
        "reload pool_size 6 -> 2 under pgbench -c 12: {} transactions, {} failed, peak {peak} \
         server connections after the reload",
        summary.transactions, summary.failed
    );
    assert_eq!(summary.failed, 0);
    let (_, body) = http_get(http, "/status").await;
    let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(status["config_generation"], 2);
    assert_eq!(status["pools"][0]["size"], 2);
}

#[tokio::test]
async fn a_reload_applies_from_the_next_transaction_of_a_client_already_connected() {
    // A session keeps the configuration and its pool's settings as it read them last and
    // checks at every transaction whether they are still those in force: both kinds of
    // setting must change for clients that stay connected across the reload.
    let (opts, http) = with_http(Options::mode("transaction", 2));
    let fx = Fixture::start(opts.clone()).await.expect("fixture");
    let (a, b) = (fx.client().await.expect("a"), fx.client().await.expect("b"));
    // Two server connections, given back in the order a, b: b's is the most recently used.
    a.batch_execute("BEGIN").await.expect("a begins");
    b.batch_execute("BEGIN").await.expect("b begins");
    let first = backend_pid(&a).await;
    let second = backend_pid(&b).await;
    assert_ne!(first, second);
    a.batch_execute("COMMIT").await.expect("a commits");
    b.batch_execute("COMMIT").await.expect("b commits");
    // Without server_round_robin the most recently used idle connection is lent.
    assert_eq!(backend_pid(&a).await, second);
    a.batch_execute("SELECT pg_sleep(1.5)")
        .await
        .expect("no query_timeout yet");

    let mut changed = opts.clone();
    changed.settings.push("server_round_robin = 1".into());
    changed.settings.push("query_timeout = 1".into());
    fx.weir
        .rewrite_config(&fixture::ini(&fx.pg, &changed))
        .expect("rewrite the configuration");
    let reloaded = Fixture::eventually(Duration::from_secs(5), || async {
        let (_, body) = http_get(http, "/status").await;
        serde_json::from_str::<serde_json::Value>(&body)
            .is_ok_and(|status| status["config_generation"] == 2)
    })
    .await;
    assert!(reloaded, "the configuration was not reloaded");

    // A pool setting: with server_round_robin the connection idle longest is lent.
    let lent = backend_pid(&b).await;
    assert_eq!(
        lent, first,
        "a connected client was lent the most recently used connection after the reload"
    );
    // A pooler-wide setting: query_timeout now ends the same client's long query.
    let e = a
        .batch_execute("SELECT pg_sleep(5)")
        .await
        .expect_err("query_timeout did not apply to a connected client");
    assert_eq!(fixture::sqlstate(&e), Some("57014"), "{e}");
}

/// Threads of process `pid` named `name` (tokio names its workers after the runtime).
fn threads_named(pid: u32, name: &str) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("the pooler's threads")
        .filter_map(Result::ok)
        .filter(|task| {
            std::fs::read_to_string(task.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .count()
}

#[tokio::test]
async fn worker_threads_sets_the_threads_and_one_runs_without_work_stealing() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (setting, threads, scheduler) in [
        (Some(1), 1, "current-thread"),
        (Some(3), 3, "multi-thread"),
        (
            None,
            cpus,
            if cpus == 1 {
                "current-thread"
            } else {
                "multi-thread"
            },
        ),
    ] {
        let mut opts = Options::mode("transaction", 2);
        if let Some(n) = setting {
            opts = opts.with(&format!("worker_threads = {n}"));
        }
        let (opts, http) = with_http(opts);
        let fx = Fixture::start(opts).await.expect("fixture");
        // Clients are served on either scheduler, several at once.
        let clients = futures::future::join_all((0..4).map(|_| fx.client())).await;
        for client in clients {
            let client = client.expect("client");
            let rows = client.simple_query("SELECT 1").await.expect("query");
            assert!(!rows.is_empty());
        }
        let (_, body) = http_get(http, "/status").await;
        let status: serde_json::Value = serde_json::from_str(&body).expect("JSON");
        assert_eq!(status["worker_threads"], threads, "{setting:?}: {body}");
        assert_eq!(status["scheduler"], scheduler, "{setting:?}: {body}");
        if scheduler == "multi-thread" {
            let named = threads_named(fx.weir.pid(), "weir-worker");
            assert!(named >= threads, "{setting:?}: {named} worker threads");
        }
    }
}

#[tokio::test]
async fn a_reload_applies_max_db_connections_under_load_without_errors() {
    let (opts, http) = with_http(Options::mode("transaction", 6));
    let fx = Fixture::start(opts.clone()).await.expect("fixture");
    // Writes a limit into the configuration, waits for the file watch to load it (within a
    // second or so), then for the server connections to come down to it.
    let apply_limit = |limit: i64, generation: u64| {
        let ini = fixture::ini(
            &fx.pg,
            &opts.clone().with(&format!("max_db_connections = {limit}")),
        );
        let fx = &fx;
        async move {
            fx.weir.rewrite_config(&ini).expect("rewrite");
            let loaded = Fixture::eventually(Duration::from_secs(10), || async {
                let (_, body) = http_get(http, "/status").await;
                serde_json::from_str::<serde_json::Value>(&body)
                    .is_ok_and(|s| s["config_generation"] == generation)
            })
            .await;
            assert!(loaded, "max_db_connections = {limit} was not loaded");
            let followed = Fixture::eventually(Duration::from_secs(5), || async {
                fx.server_connections().await.unwrap_or(99) <= limit
            })
            .await;
            assert!(followed, "server connections did not come down to {limit}");
        }
    };
    let bench = tpcb_load(&fx, 10).await;
    let busy = Fixture::eventually(Duration::from_secs(5), || async {
        fx.server_connections().await.unwrap_or(0) > 3
    })
    .await;
    assert!(busy, "the pool never used more than 3 connections");
    // A limit that was not there before: connections reopen under it as they come back.
    apply_limit(3, 2).await;
    // Lowering a limit in force.
    apply_limit(2, 3).await;
    let mut samples = Vec::new();
    while !bench.is_finished() {
        samples.push(fx.server_connections().await.expect("count"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        samples.iter().all(|n| *n <= 2),
        "server connections above the limit of 2: {samples:?}\n{}",
        fx.weir.log()
    );
    let out = bench.await.expect("join").expect("pgbench");
    assert!(out.success(), "{}\n{}", out.stdout, out.stderr);
    let summary = weir_tests::postgres::parse_pgbench(&out.stdout).expect("report");
    eprintln!(
        "reload max_db_connections none -> 3 -> 2 under pgbench -c 12: {} transactions, {} \
         failed, peak {} server connections under the limit of 2",
        summary.transactions,
        summary.failed,
        samples.iter().max().copied().unwrap_or(0)
    );
    assert_eq!(summary.failed, 0);
    assert!(summary.transactions > 0);
}

#[tokio::test]
async fn sigterm_drains_without_breaking_a_transaction() {
    let (opts, http) = with_http(Options::mode("transaction", 4).with("shutdown_timeout = 20"));
    let mut fx = Fixture::start(opts).await.expect("fixture");
    let init = fx
        .pgbench_direct(&["-i", "-q", "-s", "1"])
        .await
        .expect("init");
    assert!(init.success(), "{}", init.stderr);
    // Each transaction takes a while, so SIGTERM lands inside many of them.
    let script = fx.weir.dir().join("slow.sql");
    std::fs::write(
        &script,
        "BEGIN;\n\
         UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1 + :client_id;\n\
         SELECT pg_sleep(0.05);\n\
         INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (1, 1, 1 + :client_id, 1, now());\n\
         END;\n",
    )
    .expect("script");
    let port = fx.weir.port();
    let script_arg = format!("-f{}", script.display());
    let bench = tokio::spawn(async move {
        weir_tests::postgres::pgbench(
            net::HOST,
            port,
            fixture::USER,
            fixture::PASSWORD,
            fixture::DATABASE,
            &["-n", "-c", "10", "-j", "2", "-T", "30", &script_arg],
        )
        .await
    });
    // A transaction the test holds open keeps weir draining while it looks.
    let holder = fx.client().await.expect("holder");
    holder
        .batch_execute("BEGIN; SELECT 1")
        .await
        .expect("BEGIN");
    tokio::time::sleep(Duration::from_secs(3)).await;
    fx.weir.signal(Signal::SIGTERM).expect("SIGTERM");
    let sent = Instant::now();
    // Readiness fails at once; new clients are refused.
    let unready = Fixture::eventually(Duration::from_secs(2), || async {
        http_get(http, "/readyz").await.0 == 503
    })
    .await;
    assert!(unready, "/readyz still reported ready while draining");
    assert!(
        fx.client().await.is_err(),
        "a new client was accepted while draining"
    );
    // The open transaction finishes normally, then its client is let go.
    holder
        .batch_execute("SELECT 2; COMMIT")
        .await
        .expect("the open transaction commits");
    let exit = fx
        .weir
        .wait_exit(Duration::from_secs(25))
        .await
        .expect("weir exit");
    assert_eq!(
        exit,
        Some(0),
        "weir did not exit cleanly within shutdown_timeout"
    );
    let drained_after = sent.elapsed();
    assert!(drained_after < Duration::from_secs(20));
    let out = bench.await.expect("join").expect("pgbench");
    // pgbench stops when its connections are let go; what matters is where it stopped.
    let aborted: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("aborted in command"))
        .collect();
    assert!(
        !aborted.is_empty(),
        "pgbench clients were never let go:\n{}",
        out.stderr
    );
    for line in &aborted {
        assert!(
            line.contains("command 0"),
            "a client was cut off inside a transaction: {line}"
        );
    }
    // Every transaction that started committed whole: each history row has its update.
    let pg = fx
        .pg
        .connect(fixture::USER, fixture::PASSWORD, fixture::DATABASE)
        .await
        .expect("pg");
    let row = pg
        .query_one(
            "SELECT (SELECT count(*) FROM pgbench_history)::int8, \
                    (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts)::int8",
            &[],
        )
        .await
        .expect("consistency");
    let (history, balance): (i64, i64) = (row.get(0), row.get(1));
    assert!(history > 0, "no transaction completed");
    assert_eq!(history, balance, "a transaction was applied half-way");
    eprintln!(
        "SIGTERM drain under pgbench -c 10: exited after {:.1} s, {history} transactions \
         committed whole, {} clients let go between transactions, none inside one",
        drained_after.as_secs_f64(),
        aborted.len()
    );
    let idle_in_tx = pg
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE state LIKE 'idle in transaction%'",
            &[],
        )
        .await
        .expect("count")
        .get::<_, i64>(0);
    assert_eq!(idle_in_tx, 0);
}

#[tokio::test]
async fn sigterm_lets_idle_clients_go_at_once() {
    // Idle clients are woken by the shutdown itself, not by their next query: with a long
    // shutdown_timeout, weir can only exit promptly if it let them go.
    let mut fx = Fixture::start(Options::mode("transaction", 2).with("shutdown_timeout = 120"))
        .await
        .expect("fixture");
    let mut clients = Vec::new();
    for _ in 0..3 {
        let c = fx.client().await.expect("client");
        c.simple_query("SELECT 1").await.expect("query");
        clients.push(c);
    }
    fx.weir.signal(Signal::SIGTERM).expect("SIGTERM");
    let status = fx
        .weir
        .wait_exit(Duration::from_secs(60))
        .await
        .expect("wait");
    assert_eq!(
        status,
        Some(0),
        "weir did not exit after letting idle clients go"
    );
    for c in &clients {
        assert!(
            Fixture::eventually(Duration::from_secs(5), || async { c.is_closed() }).await,
            "an idle client was not let go"
        );
    }
}

#[tokio::test]
async fn an_existing_pgbouncer_configuration_runs_unchanged() {
    let fx = Fixture::start(Options::mode("transaction", 2))
        .await
        .expect("fixture");
    // The shape of PgBouncer's sample configuration, including settings weir does not
    // implement (they are named in warnings, never fatal).
    let ini = format!(
        ";; database name = connect string\n\
         [databases]\n\
         app = host={host} port={port} dbname=app\n\
         * = host={host} port={port}\n\
         \n\
         [users]\n\
         app = pool_mode=transaction max_user_connections=10\n\
         \n\
         [pgbouncer]\n\
         logfile = {{dir}}/pgbouncer.log\n\
         pidfile = {{dir}}/pgbouncer.pid\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_type = scram-sha-256\n\
         auth_file = {{dir}}/userlist.txt\n\
         admin_users = postgres\n\
         stats_users = stats, postgres\n\
         pool_mode = session\n\
         server_reset_query = DISCARD ALL\n\
         ignore_startup_parameters = extra_float_digits\n\
         max_client_conn = 100\n\
         default_pool_size = 20\n\
         reserve_pool_size = 0\n\
         log_connections = 1\n\
         log_disconnections = 1\n\
         log_pooler_errors = 1\n\
         stats_period = 60\n\
         client_tls_sslmode = disable\n\
         server_tls_sslmode = prefer\n\
         dns_max_ttl = 15\n\
         ;; a comment at the end\n",
        host = fx.pg.host(),
        port = fx.pg.port()
    );
    let userlist = format!("\"{}\" \"{}\"\n", fixture::USER, fixture::PASSWORD);
    let weir = WeirProcess::start(&ini, &userlist)
        .await
        .expect("weir with a PgBouncer config");
    let client = net::connect(weir.port(), fixture::USER, fixture::PASSWORD, "app")
        .await
        .expect("connect");
    let rows = client.simple_query("SELECT 6 * 7").await.expect("query");
    let answer = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(answer.as_deref(), Some("42"));
    let log = std::fs::read_to_string(weir.dir().join("pgbouncer.log")).expect("logfile written");
    assert!(
        log.contains("dns_max_ttl"),
        "unsupported settings are named: {log}"
    );
    assert!(weir.dir().join("pgbouncer.pid").exists(), "pidfile written");
}
