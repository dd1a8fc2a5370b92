//! The admin console on the virtual databases `pgbouncer` and `weir`: PgBouncer's column
//! layout, values that follow real activity, every control command, and the refusals.

use std::time::Duration;

use tokio_postgres::{Client, SimpleQueryMessage};
use weir_tests::fixture::{self, Fixture, Options, PASSWORD, USER};
use weir_tests::net;

const STATS_USER: &str = "watcher";
const OUTSIDER: &str = "outsider";
const OTHER_PASSWORD: &str = "other-secret";

/// PgBouncer's SHOW POOLS columns, in order.
const POOLS_COLUMNS: &[&str] = &[
    "database",
    "user",
    "cl_active",
    "cl_waiting",
    "cl_active_cancel_req",
    "cl_waiting_cancel_req",
    "sv_active",
    "sv_active_cancel",
    "sv_being_canceled",
    "sv_idle",
    "sv_used",
    "sv_tested",
    "sv_login",
    "maxwait",
    "maxwait_us",
    "pool_mode",
    "load_balance_hosts",
];

/// PgBouncer's SHOW STATS columns, in order.
const STATS_COLUMNS: &[&str] = &[
    "database",
    "total_server_assignment_count",
    "total_xact_count",
    "total_query_count",
    "total_received",
    "total_sent",
    "total_xact_time",
    "total_query_time",
    "total_wait_time",
    "total_client_parse_count",
    "total_server_parse_count",
    "total_bind_count",
    "avg_server_assignment_count",
    "avg_xact_count",
    "avg_query_count",
    "avg_recv",
    "avg_sent",
    "avg_xact_time",
    "avg_query_time",
    "avg_wait_time",
    "avg_client_parse_count",
    "avg_server_parse_count",
    "avg_bind_count",
];

/// PgBouncer's SHOW DATABASES columns, in order.
const DATABASES_COLUMNS: &[&str] = &[
    "name",
    "host",
    "port",
    "database",
    "force_user",
    "pool_size",
    "min_pool_size",
    "reserve_pool_size",
    "server_lifetime",
    "pool_mode",
    "load_balance_hosts",
    "max_connections",
    "current_connections",
    "max_client_connections",
    "current_client_connections",
    "paused",
    "disabled",
];

/// PgBouncer's SHOW CLIENTS / SHOW SERVERS columns, in order.
const CONNECTION_COLUMNS: &[&str] = &[
    "type",
    "user",
    "database",
    "replication",
    "state",
    "addr",
    "port",
    "local_addr",
    "local_port",
    "connect_time",
    "request_time",
    "wait",
    "wait_us",
    "close_needed",
    "ptr",
    "link",
    "remote_pid",
    "tls",
    "application_name",
    "prepared_statements",
    "id",
];

/// A result set: column names and rows of optional text.
struct Rows {
    columns: Vec<String>,
    rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    fn get(&self, row: usize, column: &str) -> Option<&str> {
        let i = self
            .columns
            .iter()
            .position(|c| c == column)
            .unwrap_or_else(|| panic!("no column {column} in {:?}", self.columns));
        self.rows[row][i].as_deref()
    }

    /// The first row whose `column` is `value`.
    fn find(&self, column: &str, value: &str) -> Option<usize> {
        (0..self.rows.len()).find(|&r| self.get(r, column) == Some(value))
    }

    fn num(&self, row: usize, column: &str) -> i64 {
        self.get(row, column)
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{column} is not a number"))
    }
}

async fn show(admin: &Client, sql: &str) -> Rows {
    let msgs = admin
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let mut out = Rows {
        columns: Vec::new(),
        rows: Vec::new(),
    };
    for m in msgs {
        match m {
            SimpleQueryMessage::RowDescription(cols) => {
                out.columns = cols.iter().map(|c| c.name().to_owned()).collect();
            }
            SimpleQueryMessage::Row(row) => {
                out.rows.push(
                    (0..row.len())
                        .map(|i| row.get(i).map(str::to_owned))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    out
}

async fn admin(fx: &Fixture) -> Client {
    net::connect(fx.weir.port(), USER, PASSWORD, "pgbouncer")
        .await
        .unwrap_or_else(|e| panic!("admin login: {e}\n{}", fx.weir.log()))
}

async fn run(admin: &Client, sql: &str) {
    admin
        .simple_query(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

async fn fixture(mode: &'static str, size: u32) -> Fixture {
    let mut opts = Options::mode(mode, size)
        .with(&format!("admin_users = {USER}"))
        .with(&format!("stats_users = {STATS_USER}"));
    opts.userlist = Some(format!(
        "\"{USER}\" \"{PASSWORD}\"\n\"{STATS_USER}\" \"{OTHER_PASSWORD}\"\n\
         \"{OUTSIDER}\" \"{OTHER_PASSWORD}\"\n"
    ));
    Fixture::start(opts).await.expect("fixture")
}

#[tokio::test]
async fn show_commands_use_pgbouncer_columns_and_follow_activity() {
    let fx = fixture("transaction", 3).await;
    let app = fx.client().await.expect("client");
    for _ in 0..5 {
        app.simple_query("SELECT 1").await.expect("select");
    }
    // A held transaction keeps exactly one server connection lent.
    app.simple_query("BEGIN; SELECT 1").await.expect("begin");
    let admin = admin(&fx).await;

    let pools = show(&admin, "SHOW POOLS").await;
    assert_eq!(pools.columns, POOLS_COLUMNS);
    let r = pools.find("database", "app").expect("app pool");
    assert_eq!(pools.get(r, "user"), Some(USER));
    assert_eq!(pools.num(r, "sv_active"), 1);
    assert_eq!(pools.num(r, "cl_active"), 1);
    assert_eq!(pools.num(r, "cl_waiting"), 0);
    assert_eq!(pools.num(r, "sv_active") + pools.num(r, "sv_idle"), 1);
    assert_eq!(pools.get(r, "pool_mode"), Some("transaction"));

    let stats = show(&admin, "show stats;").await;
    assert_eq!(stats.columns, STATS_COLUMNS);
    let r = stats.find("database", "app").expect("app stats");
    assert!(stats.num(r, "total_query_count") >= 5);
    assert!(stats.num(r, "total_xact_count") >= 5);
    assert!(stats.num(r, "total_server_assignment_count") >= 5);
    assert!(stats.num(r, "total_received") > 0);
    assert!(stats.num(r, "total_sent") > 0);

    let dbs = show(&admin, "SHOW DATABASES").await;
    assert_eq!(dbs.columns, DATABASES_COLUMNS);
    let r = dbs.find("name", "app").expect("app database");
    assert_eq!(dbs.get(r, "pool_size"), Some("3"));
    assert_eq!(dbs.num(r, "current_connections"), 1);
    assert_eq!(dbs.num(r, "current_client_connections"), 1);
    assert_eq!(dbs.get(r, "paused"), Some("0"));
    assert!(dbs.find("name", "pgbouncer").is_some());

    let servers = show(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.columns, CONNECTION_COLUMNS);
    assert_eq!(servers.rows.len(), 1);
    assert_eq!(servers.get(0, "state"), Some("active"));
    assert_eq!(servers.get(0, "type"), Some("S"));
    let clients = show(&admin, "SHOW CLIENTS").await;
    // PgBouncer's columns in place, then Weir's own `pinned`.
    assert_eq!(clients.columns, [CONNECTION_COLUMNS, &["pinned"]].concat());
    // The application client and this console session.
    assert_eq!(clients.rows.len(), 2);
    let r = clients.find("database", "app").expect("app client");
    assert_eq!(clients.get(r, "state"), Some("active"));
    assert_eq!(clients.get(r, "link"), servers.get(0, "ptr"));
    assert!(clients.find("database", "pgbouncer").is_some());

    let users = show(&admin, "SHOW USERS").await;
    assert!(users.find("name", USER).is_some());
    let config = show(&admin, "SHOW CONFIG").await;
    assert_eq!(config.columns, ["key", "value", "default", "changeable"]);
    let r = config.find("key", "pool_mode").expect("pool_mode");
    assert_eq!(config.get(r, "value"), Some("transaction"));
    let lists = show(&admin, "SHOW LISTS").await;
    let r = lists.find("list", "pools").expect("pools");
    assert_eq!(lists.num(r, "items"), 1);
    let state = show(&admin, "SHOW STATE").await;
    let r = state.find("key", "active").expect("active");
    assert_eq!(state.get(r, "value"), Some("yes"));
    let version = show(&admin, "SHOW VERSION").await;
    assert!(version
        .get(0, "version")
        .is_some_and(|v| v.contains("Weir")));

    // Once the transaction ends the connection is idle again.
    app.simple_query("COMMIT").await.expect("commit");
    let pools = show(&admin, "SHOW POOLS").await;
    let r = pools.find("database", "app").expect("app pool");
    assert_eq!(pools.num(r, "sv_active"), 0);
    assert_eq!(pools.num(r, "sv_idle"), 1);

    // psql works too, on the `weir` name as well.
    let out = weir_tests::postgres::psql(
        net::HOST,
        fx.weir.port(),
        USER,
        PASSWORD,
        "weir",
        "SHOW POOLS",
    )
    .await
    .expect("psql");
    assert!(out.success(), "{}", out.stderr);
    assert!(out.stdout.starts_with("app|app|"), "{}", out.stdout);
}

#[tokio::test]
async fn show_clients_shows_which_clients_are_pinned() {
    let fx = fixture("transaction", 3).await;
    let pinned = fx.client_named("pinned").await.expect("client");
    let free = fx.client_named("free").await.expect("client");
    // A session advisory lock cannot move between server connections: it pins.
    pinned
        .simple_query("SELECT pg_advisory_lock(1)")
        .await
        .expect("advisory lock");
    free.simple_query("SELECT 1").await.expect("select");
    let admin = admin(&fx).await;

    let clients = show(&admin, "SHOW CLIENTS").await;
    let r = clients
        .find("application_name", "pinned")
        .expect("the pinned client");
    assert_eq!(clients.get(r, "pinned"), Some("1"));
    let r = clients
        .find("application_name", "free")
        .expect("the other client");
    assert_eq!(clients.get(r, "pinned"), Some("0"));
}

#[tokio::test]
async fn pause_resume_disable_enable_reconnect_kill_reload_set() {
    let fx = fixture("transaction", 2).await;
    let admin = admin(&fx).await;
    let app = fx.client().await.expect("client");
    app.simple_query("SELECT 1").await.expect("select");

    // PAUSE returns once the database's server connections are closed; queries then wait.
    run(&admin, "PAUSE app").await;
    assert!(
        Fixture::eventually(Duration::from_secs(5), || async {
            fx.server_connections().await.ok() == Some(0)
        })
        .await
    );
    let dbs = show(&admin, "SHOW DATABASES").await;
    let r = dbs.find("name", "app").expect("app");
    assert_eq!(dbs.get(r, "paused"), Some("1"));
    let waiting = tokio::spawn(async move { app.simple_query("SELECT 2").await.map(|_| app) });
    let cl_waiting = || async {
        let pools = show(&admin, "SHOW POOLS").await;
        let r = pools.find("database", "app").expect("app");
        pools.num(r, "cl_waiting")
    };
    assert!(
        Fixture::eventually(Duration::from_secs(5), || async { cl_waiting().await == 1 }).await,
        "the client never waited"
    );
    // The client was waiting by `seen`: at the next SHOW it has waited at least as long.
    let seen = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "a query ran while paused");
    let lower_us = i64::try_from(seen.elapsed().as_micros()).expect("small");
    let pools = show(&admin, "SHOW POOLS").await;
    let r = pools.find("database", "app").expect("app");
    assert_eq!(pools.num(r, "cl_waiting"), 1);
    let waited_us = pools.num(r, "maxwait") * 1_000_000 + pools.num(r, "maxwait_us");
    assert!(
        waited_us >= lower_us,
        "maxwait {waited_us} µs < {lower_us} µs"
    );
    run(&admin, "RESUME app").await;
    let app = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("query after RESUME")
        .expect("join")
        .expect("query");

    // DISABLE refuses new clients of the database; ENABLE admits them again.
    run(&admin, "DISABLE app").await;
    let err = fx.client().await.expect_err("disabled database");
    let code = err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(fixture::sqlstate)
        .map(str::to_owned);
    assert_eq!(code.as_deref(), Some("08004"), "{err:#}");
    app.simple_query("SELECT 1").await.expect("existing client");
    run(&admin, "ENABLE app").await;
    fx.client().await.expect("client after ENABLE");

    // RECONNECT: the next transaction runs on a new server connection.
    let pid = |rows: Vec<SimpleQueryMessage>| {
        rows.into_iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
    };
    let before = pid(app
        .simple_query("SELECT pg_backend_pid()")
        .await
        .expect("pid"));
    run(&admin, "RECONNECT app").await;
    let after = pid(app
        .simple_query("SELECT pg_backend_pid()")
        .await
        .expect("pid"));
    assert!(before.is_some() && before != after, "{before:?} {after:?}");

    // KILL: existing clients lose their pool; new ones wait for RESUME.
    run(&admin, "KILL app").await;
    assert!(app.simple_query("SELECT 1").await.is_err());
    let state = show(&admin, "SHOW DATABASES").await;
    let r = state.find("name", "app").expect("app");
    assert_eq!(state.get(r, "paused"), Some("1"));
    run(&admin, "RESUME").await;
    let fresh = fx.client().await.expect("client after RESUME");
    fresh.simple_query("SELECT 1").await.expect("select");

    // RELOAD and SET.
    run(&admin, "RELOAD").await;
    run(&admin, "SET default_pool_size = 4").await;
    let config = show(&admin, "SHOW CONFIG").await;
    let r = config.find("key", "default_pool_size").expect("key");
    assert_eq!(config.get(r, "value"), Some("4"));
    let dbs = show(&admin, "SHOW DATABASES").await;
    let r = dbs.find("name", "app").expect("app");
    assert_eq!(dbs.get(r, "pool_size"), Some("4"));
    for bad in ["SET no_such_setting = 1", "SET default_pool_size = many"] {
        let e = admin.simple_query(bad).await.expect_err(bad);
        assert_eq!(fixture::sqlstate(&e), Some("22023"), "{bad}: {e}");
    }
    let e = admin
        .simple_query("PAUSE nowhere")
        .await
        .expect_err("unknown db");
    assert_eq!(fixture::sqlstate(&e), Some("3D000"));
}

#[tokio::test]
async fn refusals_and_shutdown() {
    let mut fx = fixture("transaction", 2).await;
    let admin = admin(&fx).await;

    let e = admin
        .simple_query("SELECT 1")
        .await
        .expect_err("unknown command");
    assert_eq!(fixture::sqlstate(&e), Some("42601"), "{e}");
    assert!(e.to_string().contains("SELECT") || format!("{e:?}").contains("SELECT"));
    let e = admin
        .simple_query("SHOW NOTHING")
        .await
        .expect_err("unknown subject");
    assert_eq!(fixture::sqlstate(&e), Some("42601"));
    // The session survives errors.
    show(&admin, "SHOW VERSION").await;
    let e = admin
        .simple_query("KILL_CLIENT 999999")
        .await
        .expect_err("no such client");
    assert_eq!(fixture::sqlstate(&e), Some("42704"));

    // A user in neither list is refused at login.
    let err = net::connect(fx.weir.port(), OUTSIDER, OTHER_PASSWORD, "pgbouncer")
        .await
        .expect_err("outsider");
    let code = err
        .downcast_ref::<tokio_postgres::Error>()
        .and_then(fixture::sqlstate)
        .map(str::to_owned);
    assert_eq!(code.as_deref(), Some("42501"), "{err:#}");

    // A stats user may look but not touch.
    let stats = net::connect(fx.weir.port(), STATS_USER, OTHER_PASSWORD, "pgbouncer")
        .await
        .expect("stats user");
    let pools = show(&stats, "SHOW POOLS").await;
    assert_eq!(pools.columns, POOLS_COLUMNS);
    let e = stats
        .simple_query("PAUSE")
        .await
        .expect_err("stats user PAUSE");
    assert_eq!(fixture::sqlstate(&e), Some("42501"));
    // The extended query protocol is refused.
    let e = stats.query("SHOW POOLS", &[]).await.expect_err("extended");
    assert_eq!(fixture::sqlstate(&e), Some("08P01"), "{e}");

    // SHUTDOWN drains and the process exits.
    run(&admin, "SHUTDOWN WAIT_FOR_CLIENTS").await;
    let exit = fx
        .weir
        .wait_exit(Duration::from_secs(20))
        .await
        .expect("wait");
    assert_eq!(exit, Some(0), "{}", fx.weir.log());
}

/// The first value of the first row.
fn scalar(rows: Vec<SimpleQueryMessage>) -> Option<String> {
    rows.into_iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

/// A session-mode client named `name` that has run a query, so it holds a server
/// connection, and that connection's backend pid.
async fn holding_client(fx: &Fixture, name: &str) -> (Client, String) {
    let client = fx.client_named(name).await.expect(name);
    let pid = client
        .simple_query("SELECT pg_backend_pid()")
        .await
        .map(scalar)
        .expect("pid")
        .expect("a pid");
    (client, pid)
}

#[tokio::test]
async fn clients_and_servers_are_listed_one_by_one_and_kill_client_ends_one() {
    let fx = fixture("session", 2).await;
    let (victim, victim_pid) = holding_client(&fx, "victim").await;
    let (bystander, bystander_pid) = holding_client(&fx, "bystander").await;
    // Both server connections are held (session mode), so a third client waits.
    let patient = fx.client_named("patient").await.expect("patient");
    let waiting = tokio::spawn(async move {
        let r = patient.simple_query("SELECT 42").await.map(scalar);
        (patient, r)
    });
    let admin = admin(&fx).await;
    let mut clients = show(&admin, "SHOW CLIENTS").await;
    for _ in 0..50 {
        if clients.find("state", "waiting").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        clients = show(&admin, "SHOW CLIENTS").await;
    }
    let servers = show(&admin, "SHOW SERVERS").await;
    assert_eq!(servers.rows.len(), 2, "two server connections");
    assert_eq!(clients.rows.len(), 4, "three clients and the console");

    // Each server row names its backend and the client holding it, and the other way round.
    let s = servers
        .find("remote_pid", &victim_pid)
        .expect("the victim's backend");
    assert_eq!(servers.get(s, "state"), Some("active"));
    assert_eq!(servers.get(s, "database"), Some("app"));
    assert_eq!(servers.get(s, "addr"), Some(net::HOST));
    assert_eq!(
        servers.get(s, "port"),
        Some(fx.pg.port().to_string().as_str())
    );
    let c = clients
        .find("application_name", "victim")
        .expect("victim row");
    assert_eq!(clients.get(c, "link"), servers.get(s, "ptr"));
    assert_eq!(servers.get(s, "link"), clients.get(c, "ptr"));
    assert_eq!(clients.get(c, "state"), Some("active"));
    assert_eq!(clients.get(c, "addr"), Some(net::HOST));
    assert!(clients.num(c, "port") > 0);
    assert_eq!(
        clients.get(c, "local_port"),
        Some(fx.weir.port().to_string().as_str())
    );
    assert!(clients
        .get(c, "connect_time")
        .is_some_and(|t| t.ends_with(" UTC")));
    assert!(servers.find("remote_pid", &bystander_pid).is_some());
    let w = clients
        .find("application_name", "patient")
        .expect("patient row");
    assert_eq!(clients.get(w, "state"), Some("waiting"));
    assert_eq!(clients.get(w, "link"), None);
    let ids: std::collections::HashSet<_> = (0..clients.rows.len())
        .map(|r| clients.num(r, "id"))
        .collect();
    assert_eq!(ids.len(), clients.rows.len(), "client ids are unique");

    // KILL_CLIENT ends that client alone; its server connection is closed and its place
    // goes to the waiting client.
    let id = clients.num(c, "id");
    run(&admin, &format!("KILL_CLIENT {id}")).await;
    assert!(
        victim.simple_query("SELECT 1").await.is_err(),
        "the killed client still works"
    );
    let (_patient, answer) = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the waiting client got the freed place")
        .expect("join");
    assert_eq!(answer.expect("patient query").as_deref(), Some("42"));
    bystander
        .simple_query("SELECT 1")
        .await
        .expect("the other client is untouched");
    let clients = show(&admin, "SHOW CLIENTS").await;
    assert!(clients.find("application_name", "victim").is_none());
    assert_eq!(clients.rows.len(), 3);
    let pg = fx
        .pg
        .connect(fixture::USER, fixture::PASSWORD, fixture::DATABASE)
        .await
        .expect("pg");
    let gone = Fixture::eventually(Duration::from_secs(5), || async {
        let pid: i32 = victim_pid.parse().expect("pid");
        pg.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
            &[&pid],
        )
        .await
        .map(|r| r.get::<_, i64>(0))
        .ok()
            == Some(0)
    })
    .await;
    assert!(gone, "the killed client's server connection is still open");
}

/// After a shutdown that waits for servers: weir stays up while `app`'s transaction runs,
/// the transaction commits, and weir then exits cleanly.
async fn exits_once_committed(fx: &mut Fixture, app: &Client) {
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        fx.weir
            .wait_exit(Duration::from_millis(10))
            .await
            .expect("wait"),
        None,
        "exited with a transaction still running"
    );
    app.batch_execute("SELECT 2; COMMIT")
        .await
        .expect("the running transaction commits");
    let exit = fx
        .weir
        .wait_exit(Duration::from_secs(10))
        .await
        .expect("wait");
    assert_eq!(exit, Some(0), "{}", fx.weir.log());
}

#[tokio::test]
async fn shutdown_modes_wait_as_pgbouncer_does() {
    // WAIT_FOR_SERVERS: a running transaction finishes, then the process exits even though
    // its client is still connected.
    let mut fx = fixture("transaction", 2).await;
    let admin_client = admin(&fx).await;
    let app = fx.client().await.expect("client");
    app.batch_execute("BEGIN; SELECT 1").await.expect("BEGIN");
    run(&admin_client, "SHUTDOWN WAIT_FOR_SERVERS").await;
    exits_once_committed(&mut fx, &app).await;

    // SIGINT does the same.
    let mut fx = fixture("transaction", 2).await;
    let app = fx.client().await.expect("client");
    app.batch_execute("BEGIN; SELECT 1").await.expect("BEGIN");
    fx.weir
        .signal(weir_tests::weir::Signal::SIGINT)
        .expect("SIGINT");
    exits_once_committed(&mut fx, &app).await;

    // Plain SHUTDOWN exits at once, open transaction or not.
    let mut fx = fixture("transaction", 2).await;
    let admin_client = admin(&fx).await;
    let app = fx.client().await.expect("client");
    app.batch_execute("BEGIN; SELECT 1").await.expect("BEGIN");
    let _ = admin_client.simple_query("SHUTDOWN").await;
    let exit = fx
        .weir
        .wait_exit(Duration::from_secs(5))
        .await
        .expect("wait");
    assert_eq!(exit, Some(0), "{}", fx.weir.log());
}

#[tokio::test]
async fn show_stats_averages_follow_the_stats_period() {
    let mut opts = Options::mode("transaction", 2)
        .with(&format!("admin_users = {USER}"))
        .with("stats_period = 1");
    opts.userlist = Some(format!("\"{USER}\" \"{PASSWORD}\"\n"));
    let fx = Fixture::start(opts).await.expect("fixture");
    let app = fx.client().await.expect("client");
    let admin = admin(&fx).await;
    // Steady traffic across more than one whole period.
    let started = std::time::Instant::now();
    let mut averaged = None;
    while started.elapsed() < Duration::from_secs(10) {
        for _ in 0..20 {
            app.simple_query("SELECT 1").await.expect("select");
        }
        if started.elapsed() > Duration::from_millis(2500) {
            let stats = show(&admin, "SHOW STATS").await;
            let r = stats.find("database", "app").expect("app stats");
            averaged = Some((
                stats.num(r, "avg_xact_count"),
                stats.num(r, "avg_query_count"),
            ));
            if averaged.is_some_and(|(x, _)| x > 0) {
                break;
            }
        }
    }
    let (xacts, queries) = averaged.expect("SHOW STATS ran");
    assert!(xacts > 0, "avg_xact_count stayed 0 under steady traffic");
    assert!(
        queries >= xacts,
        "{queries} queries/s < {xacts} transactions/s"
    );
}

#[tokio::test]
async fn wait_close_returns_once_reconnect_has_closed_every_old_connection() {
    let fx = fixture("transaction", 3).await;
    let app = fx.client().await.expect("client");
    // A held transaction keeps one server connection lent through RECONNECT.
    app.simple_query("BEGIN; SELECT 1").await.expect("begin");
    let admin = admin(&fx).await;
    // Nothing to close yet: returns at once.
    run(&admin, "WAIT_CLOSE").await;
    run(&admin, "RECONNECT app").await;

    let waiter = tokio::spawn(async move { run(&admin, "WAIT_CLOSE app").await });
    // The old connection is still lent (a state, seen from a second console session after
    // WAIT_CLOSE was sent): WAIT_CLOSE must still be waiting for it.
    let other = net::connect(fx.weir.port(), USER, PASSWORD, "pgbouncer")
        .await
        .expect("second admin");
    let servers = show(&other, "SHOW SERVERS").await;
    assert!(
        servers.find("state", "active").is_some(),
        "the lent connection"
    );
    assert!(
        !waiter.is_finished(),
        "WAIT_CLOSE returned with a connection left to close"
    );
    app.simple_query("COMMIT").await.expect("commit");
    // Returned, the old connection is closed, and WAIT_CLOSE returns.
    waiter.await.expect("waiter");
    let servers = show(&other, "SHOW SERVERS").await;
    assert!(servers.rows.is_empty(), "the old connection is closed");
    let e = net::connect(fx.weir.port(), USER, PASSWORD, "pgbouncer")
        .await
        .expect("admin")
        .simple_query("WAIT_CLOSE nowhere")
        .await
        .expect_err("unknown db");
    assert_eq!(fixture::sqlstate(&e), Some("3D000"));
}
