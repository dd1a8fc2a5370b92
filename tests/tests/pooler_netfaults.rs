//! Real network faults between the pooler and PostgreSQL, under steady load in transaction
//! mode. PostgreSQL runs inside a network namespace of its own ([`NetNs`]), reached over a
//! veth pair; faults are nftables rules inside that namespace: a blackhole (every packet to and
//! from the server's port dropped, no RST) and random loss. This kernel has no `netem`, so
//! delay comes from [`DelayRelay`], a TCP relay in the test process that holds each chunk back.
//! A restart is `pg_ctl restart -m fast`'s signal (SIGINT) and a start on the same port.
//!
//! For each fault: every failure a client sees carries a SQLSTATE and nothing hangs; in a
//! blackhole, every server connection the pooler held is closed by its timeouts while the
//! blackhole still lasts; after healing, new transactions succeed, the pool's counts return to
//! normal and a full `default_pool_size` of concurrent transactions gets a server each. Each
//! test prints a row (failed transactions, longest client stall, recovery time): `cargo test
//! -p weir-tests --test pooler_netfaults -- --nocapture`. The same runs against PgBouncer
//! 1.25.2 are a measurement run by hand (`-- --ignored --nocapture`), as they take minutes.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::{Client, SimpleQueryMessage};
use weir_tests::delay::DelayRelay;
use weir_tests::fixture::sqlstate;
use weir_tests::net;
use weir_tests::netns::NetNs;
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions};
use weir_tests::weir::WeirProcess;

const USER: &str = "app";
const PASSWORD: &str = "app-secret";
const DATABASE: &str = "postgres";
/// `default_pool_size`: fewer servers than clients, so clients also wait for each other.
const POOL: usize = 4;
/// Clients running transactions all the time.
const CLIENTS: usize = 8;
/// `query_timeout`, `server_connect_timeout`, `server_login_retry`, `query_wait_timeout` (s).
const QUERY_TIMEOUT: u64 = 2;
const CONNECT_TIMEOUT: u64 = 1;
const LOGIN_RETRY: u64 = 1;
const WAIT_TIMEOUT: u64 = 5;
/// `tcp_user_timeout` (ms) where a scenario relies on it instead of `query_timeout`, with
/// `tcp_keepidle` and `tcp_keepintvl` (s) so that a lost answer is noticed too.
const USER_TIMEOUT_MS: u64 = 1500;
const KEEPIDLE: u64 = 1;
/// How long loss and delay last, and the least a blackhole lasts (which lasts until the
/// timeouts have closed every server connection).
const FAULT_TIME: Duration = Duration::from_secs(2);
/// Packets dropped by the loss fault, in each direction (%).
const LOSS_PERCENT: u8 = 20;
/// One-way delay of the delay fault.
const DELAY: Duration = Duration::from_millis(200);
/// A client call or awaited state that takes this long counts as hung: far beyond every
/// timeout configured here, far below the operating system's own (minutes).
const HANG: Duration = Duration::from_secs(60);

/// The pooler under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pooler {
    Weir,
    PgBouncer,
}

/// The fault injected into the path from the pooler to PostgreSQL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    /// Every packet dropped without a RST, with `query_timeout` set.
    Blackhole,
    /// Every packet dropped without a RST, with only `tcp_user_timeout` set.
    BlackholeUserTimeout,
    /// `LOSS_PERCENT` % of the packets dropped each way.
    Loss,
    /// `DELAY` added each way.
    Delay,
    /// PostgreSQL restarted with a fast shutdown.
    Restart,
    /// The same with `target_session_attrs=read-write`, so that Weir holds clients while the
    /// server is away (`failover_hold`; PgBouncer has no such option).
    RestartHeld,
}

impl Fault {
    fn describe(self) -> String {
        match self {
            Fault::Blackhole => format!("blackhole, query_timeout={QUERY_TIMEOUT}"),
            Fault::BlackholeUserTimeout => {
                format!(
                    "blackhole, tcp_user_timeout={USER_TIMEOUT_MS} \
                     tcp_keepidle=tcp_keepintvl={KEEPIDLE}"
                )
            }
            Fault::Loss => format!("loss {LOSS_PERCENT} % each way for {FAULT_TIME:?}"),
            Fault::Delay => format!("delay {DELAY:?} each way for {FAULT_TIME:?} (relay)"),
            Fault::Restart => "restart -m fast".into(),
            Fault::RestartHeld => "restart -m fast, target_session_attrs=read-write".into(),
        }
    }

    /// The timeout lines of `[pgbouncer]` for this scenario.
    fn timeouts(self) -> String {
        let query_timeout = if self == Fault::BlackholeUserTimeout {
            0
        } else {
            QUERY_TIMEOUT
        };
        let tcp = if self == Fault::BlackholeUserTimeout {
            format!(
                "tcp_user_timeout = {USER_TIMEOUT_MS}\ntcp_keepidle = {KEEPIDLE}\n\
                 tcp_keepintvl = {KEEPIDLE}\n"
            )
        } else {
            String::new()
        };
        format!(
            "query_timeout = {query_timeout}\n{tcp}\
             server_connect_timeout = {CONNECT_TIMEOUT}\nserver_login_retry = {LOGIN_RETRY}\n\
             query_wait_timeout = {WAIT_TIMEOUT}\n"
        )
    }
}

/// One client call: a connection attempt or a transaction.
struct Call {
    client: usize,
    started: Instant,
    ended: Instant,
    transaction: bool,
    /// `None`: it worked; else the SQLSTATE, `"none (why)"` without one, `"hung"` past
    /// [`HANG`].
    failure: Option<String>,
}

/// What the load clients did, shared with the test.
#[derive(Default)]
struct Calls(Mutex<Vec<Call>>);

impl Calls {
    fn record(&self, call: Call) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(call);
    }

    fn with<T>(&self, f: impl FnOnce(&[Call]) -> T) -> T {
        f(&self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether every client has finished a call begun at or after `since` (with `ok`, a
    /// transaction that committed).
    fn every_client_since(&self, since: Instant, ok: bool) -> bool {
        self.with(|calls| {
            (0..CLIENTS).all(|client| {
                calls.iter().any(|c| {
                    c.client == client
                        && c.started >= since
                        && (!ok || (c.transaction && c.failure.is_none()))
                })
            })
        })
    }

    /// When every client had committed a transaction begun at or after `since`.
    fn all_recovered_at(&self, since: Instant) -> Option<Instant> {
        self.with(|calls| {
            (0..CLIENTS)
                .map(|client| {
                    calls
                        .iter()
                        .filter(|c| {
                            c.client == client
                                && c.started >= since
                                && c.transaction
                                && c.failure.is_none()
                        })
                        .map(|c| c.ended)
                        .min()
                })
                .collect::<Option<Vec<_>>>()
                .and_then(|ends| ends.into_iter().max())
        })
    }
}

/// Clients looping `BEGIN; SELECT 1; COMMIT` (three round trips, simple protocol) through the
/// pooler, reconnecting when their connection is closed.
struct Load {
    calls: Arc<Calls>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let calls = Arc::new(Calls::default());
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..CLIENTS)
            .map(|client| {
                let calls = Arc::clone(&calls);
                let stop = Arc::clone(&stop);
                tokio::spawn(load_client(client, port, calls, stop))
            })
            .collect();
        Load { calls, stop, tasks }
    }

    async fn finish(self) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load client");
        }
    }
}

/// A client connection whose connection task is kept: an error the server sends while no
/// request is outstanding (a FATAL between two statements) ends that task, and the driver's
/// next call only says "connection closed".
struct Conn {
    client: Client,
    task: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Conn {
    async fn open(port: u16) -> Result<Conn, tokio_postgres::Error> {
        let config = net::client_config(port, USER, PASSWORD, DATABASE);
        let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
        let task = tokio::spawn(connection);
        Ok(Conn { client, task })
    }

    /// The SQLSTATE of a failed call, else the one the connection itself ended with.
    async fn failure(self, err: &tokio_postgres::Error) -> String {
        if let Some(code) = sqlstate(err) {
            return code.to_owned();
        }
        drop(self.client);
        match tokio::time::timeout(HANG, self.task).await {
            Ok(Ok(Err(ended))) => {
                sqlstate(&ended).map_or_else(|| format!("none ({err}; {ended})"), str::to_owned)
            }
            _ => format!("none ({err})"),
        }
    }
}

async fn load_client(client: usize, port: u16, calls: Arc<Calls>, stop: Arc<AtomicBool>) {
    let mut conn: Option<Conn> = None;
    while !stop.load(Ordering::Relaxed) {
        let started = Instant::now();
        let Some(c) = conn.take() else {
            let attempt = tokio::time::timeout(HANG, Conn::open(port));
            let failure = match attempt.await {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    None
                }
                Ok(Err(err)) => {
                    Some(sqlstate(&err).map_or_else(|| format!("none ({err})"), str::to_owned))
                }
                Err(_) => Some("hung".into()),
            };
            let failed = failure.is_some();
            calls.record(Call {
                client,
                started,
                ended: Instant::now(),
                transaction: false,
                failure,
            });
            if failed {
                // A client backs off a little before connecting again.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            continue;
        };
        // After a failure the client starts over on a new connection, so an error is never
        // an echo of the previous one on a connection the pooler already closed.
        let failure = match tokio::time::timeout(HANG, transaction(&c.client)).await {
            Ok(Ok(())) => {
                conn = Some(c);
                None
            }
            Ok(Err(err)) => Some(c.failure(&err).await),
            Err(_) => Some("hung".into()),
        };
        calls.record(Call {
            client,
            started,
            ended: Instant::now(),
            transaction: true,
            failure,
        });
    }
}

async fn transaction(client: &Client) -> Result<(), tokio_postgres::Error> {
    client.simple_query("BEGIN").await?;
    client.simple_query("SELECT 1").await?;
    client.simple_query("COMMIT").await?;
    Ok(())
}

/// PostgreSQL in its own namespace, the pooler in front of it (through the relay for delay).
/// Fields drop in order: pooler, relay, server, then the namespace.
struct Setup {
    pooler: WeirProcess,
    relay: Option<DelayRelay>,
    pg: PgCluster,
    netns: NetNs,
}

impl Setup {
    /// Starts `which` in transaction mode with `settings` added to `[pgbouncer]` and
    /// `database` to the database entry, reaching the server through a [`DelayRelay`] when
    /// `relay`.
    async fn start(which: Pooler, relay: bool, database: &str, settings: &str) -> Setup {
        let netns = NetNs::create().expect("network namespace");
        let pg = PgCluster::start_with(PgOptions {
            netns: Some(netns.place().clone()),
            ..PgOptions::default()
        })
        .await
        .expect("PostgreSQL in the namespace");
        pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
            .await
            .expect("role");
        let server = SocketAddr::from((netns.address(), pg.port()));
        let relay = if relay {
            Some(DelayRelay::start(server).await.expect("relay"))
        } else {
            None
        };
        let (host, port) = match &relay {
            Some(relay) => (net::HOST.to_owned(), relay.port()),
            None => (netns.address().to_string(), pg.port()),
        };
        let ini = format!(
            "[databases]\n{DATABASE} = host={host} port={port} dbname={DATABASE} {database}\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {{port}}\nunix_socket_dir =\n\
             auth_type = scram-sha-256\nauth_file = {{dir}}/userlist.txt\n\
             pool_mode = transaction\ndefault_pool_size = {POOL}\nmax_client_conn = 100\n\
             admin_users = {USER}\nlog_connections = 0\nlog_disconnections = 0\n{settings}"
        );
        let userlist = format!("\"{USER}\" \"{PASSWORD}\"\n");
        let pooler = match which {
            Pooler::Weir => WeirProcess::start(&ini, &userlist).await,
            Pooler::PgBouncer => WeirProcess::start_pgbouncer(&ini, &userlist).await,
        }
        .expect("pooler");
        Setup {
            pooler,
            relay,
            pg,
            netns,
        }
    }

    /// The row of SHOW POOLS for the test's pool, by column name.
    async fn pool_row(&self) -> HashMap<String, String> {
        let admin = net::connect(self.pooler.port(), USER, PASSWORD, "pgbouncer")
            .await
            .expect("console login");
        let messages = admin.simple_query("SHOW POOLS").await.expect("SHOW POOLS");
        messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) if row.get("database") == Some(DATABASE) => Some(
                    row.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, col)| {
                            (col.name().to_owned(), row.get(i).unwrap_or("").to_owned())
                        })
                        .collect(),
                ),
                _ => None,
            })
            .unwrap_or_default()
    }

    /// Server connections in `columns` of SHOW POOLS, summed.
    async fn servers(&self, columns: &[&str]) -> u64 {
        let row = self.pool_row().await;
        columns
            .iter()
            .map(|c| row.get(*c).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0))
            .sum()
    }
}

/// Waits (polling every 100 ms, up to [`HANG`]) until `check` holds; whether it did.
async fn until<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + HANG;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What one scenario measured.
struct Report {
    pooler: Pooler,
    fault: Fault,
    committed: usize,
    failed_transactions: usize,
    failed_connects: usize,
    /// SQLSTATEs of the failures, with `"none"` and `"hung"` for those without one.
    codes: BTreeSet<String>,
    longest_stall: Duration,
    /// Fault start until every server connection from before it was closed (blackholes).
    freed: Option<Duration>,
    /// Healing until every client had committed again; `None` if that did not happen.
    recovery: Option<Duration>,
    /// Servers in SHOW POOLS with no load: sv_active, sv_idle+sv_used, sv_login+sv_tested.
    pools_after: String,
    /// Whether a full pool of concurrent transactions each got a server afterwards.
    capacity: Result<(), String>,
    /// Backends of the application's role left in PostgreSQL with no load.
    backends_after: i64,
    /// How long until PostgreSQL had no more of them than the pool holds (measured only in
    /// the comparison run: a connection closed into a blackhole leaves its backend waiting
    /// for a FIN that was dropped).
    backends_settled: Option<Duration>,
    /// The pooler's log, for failure messages.
    log: String,
}

impl Report {
    fn row(&self) -> String {
        let secs =
            |d: Option<Duration>| d.map_or("never".into(), |d| format!("{:.2} s", d.as_secs_f64()));
        format!(
            "| {:?} | {} | {} | {} | {} | {:.2} s | {} | {} | {} | {} |",
            self.pooler,
            self.fault.describe(),
            self.committed,
            self.failed_transactions,
            self.failed_connects,
            self.longest_stall.as_secs_f64(),
            if matches!(self.fault, Fault::Blackhole | Fault::BlackholeUserTimeout) {
                secs(self.freed)
            } else {
                "–".into()
            },
            secs(self.recovery),
            self.codes.iter().cloned().collect::<Vec<_>>().join(" "),
            match &self.capacity {
                Ok(()) => format!(
                    "ok; {}; {} backends{}",
                    self.pools_after,
                    self.backends_after,
                    match self.backends_settled {
                        Some(d) if self.backends_after > POOL as i64 =>
                            format!(", ≤{POOL} after {:.1} s", d.as_secs_f64()),
                        Some(_) => String::new(),
                        None => format!(", >{POOL} for {HANG:?}"),
                    }
                ),
                Err(e) => format!("LOST: {e}; {}", self.pools_after),
            },
        )
    }
}

const HEADER: &str =
    "| pooler | fault | committed | failed tx | failed connects | longest stall | \
                      servers closed after | recovery after heal | SQLSTATEs | afterwards |\n\
                      |---|---|---|---|---|---|---|---|---|---|";

/// Runs `fault` under load against `which` and measures it; `thorough` also waits for the
/// server's own backends to settle.
async fn run(which: Pooler, fault: Fault, thorough: bool) -> Report {
    let database = if fault == Fault::RestartHeld {
        "target_session_attrs=read-write"
    } else {
        ""
    };
    let setup = Setup::start(which, fault == Fault::Delay, database, &fault.timeouts()).await;
    let warm = Instant::now();
    let load = Load::start(setup.pooler.port());
    // Every client has committed once: the pool is full and serving.
    assert!(
        until(|| async { load.calls.every_client_since(warm, true) }).await,
        "the load never got going; log:\n{}",
        setup.pooler.log()
    );

    let fault_at = Instant::now();
    let mut freed = None;
    match fault {
        Fault::Blackhole | Fault::BlackholeUserTimeout => {
            setup.netns.blackhole(setup.pg.port()).expect("blackhole");
            // While nothing gets through, no server connection can log in, so any counted as
            // active, idle or used is one from before: wait until the pooler closed them all.
            let closed =
                until(|| async { setup.servers(&["sv_active", "sv_idle", "sv_used"]).await == 0 })
                    .await;
            if closed {
                freed = Some(fault_at.elapsed());
            }
            // Clients are answered during the fault, not only once it heals.
            let answered = until(|| async { load.calls.every_client_since(fault_at, false) }).await;
            assert!(
                answered || which == Pooler::PgBouncer,
                "a client hung in the blackhole"
            );
            let rest = FAULT_TIME.saturating_sub(fault_at.elapsed());
            tokio::time::sleep(rest).await;
            setup.netns.heal().expect("heal");
        }
        Fault::Loss => {
            setup
                .netns
                .lose(setup.pg.port(), LOSS_PERCENT)
                .expect("loss");
            tokio::time::sleep(FAULT_TIME).await;
            setup.netns.heal().expect("heal");
        }
        Fault::Delay => {
            let relay = setup.relay.as_ref().expect("relay");
            relay.set_delay(DELAY);
            tokio::time::sleep(FAULT_TIME).await;
            relay.set_delay(Duration::ZERO);
        }
        Fault::Restart | Fault::RestartHeld => setup.pg.restart().await.expect("restart"),
    }
    let healed = Instant::now();
    until(|| async { load.calls.all_recovered_at(healed).is_some() }).await;
    let recovery = load
        .calls
        .all_recovered_at(healed)
        .map(|at| at.duration_since(healed));
    let calls = Arc::clone(&load.calls);
    load.finish().await;

    // With no load, every server connection is back in the pool.
    until(|| async { setup.servers(&["sv_active"]).await == 0 }).await;
    let capacity = full_pool(&setup).await;
    let row = setup.pool_row().await;
    let col = |c: &str| row.get(c).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let pools_after = format!(
        "cl_waiting {} sv_active {} sv_idle+used {} sv_login+tested {}",
        col("cl_waiting"),
        col("sv_active"),
        col("sv_idle") + col("sv_used"),
        col("sv_login") + col("sv_tested"),
    );
    let backends_after = setup.pg.backends(USER, DATABASE).await.unwrap_or(-1);
    let settling = Instant::now();
    let settled = !thorough
        || until(|| async {
            setup
                .pg
                .backends(USER, DATABASE)
                .await
                .is_ok_and(|n| n <= POOL as i64)
        })
        .await;
    let backends_settled = settled.then(|| settling.elapsed());

    let (committed, failed_transactions, failed_connects, codes, longest_stall) =
        calls.with(|calls| {
            let committed = calls
                .iter()
                .filter(|c| c.transaction && c.failure.is_none())
                .count();
            let failed_tx = calls
                .iter()
                .filter(|c| c.transaction && c.failure.is_some())
                .count();
            let failed_connects = calls
                .iter()
                .filter(|c| !c.transaction && c.failure.is_some())
                .count();
            let codes = calls.iter().filter_map(|c| c.failure.clone()).collect();
            let longest = calls
                .iter()
                .map(|c| c.ended.duration_since(c.started))
                .max()
                .unwrap_or_default();
            (committed, failed_tx, failed_connects, codes, longest)
        });
    let report = Report {
        pooler: which,
        fault,
        committed,
        failed_transactions,
        failed_connects,
        codes,
        longest_stall,
        freed,
        recovery,
        pools_after,
        capacity,
        backends_after,
        backends_settled,
        log: setup.pooler.log(),
    };
    println!("{HEADER}\n{}", report.row());
    report
}

/// A full `default_pool_size` of clients each opens a transaction and holds it while the
/// others open theirs: each must get a server of its own.
async fn full_pool(setup: &Setup) -> Result<(), String> {
    let mut clients = Vec::new();
    for _ in 0..POOL {
        clients.push(
            net::connect(setup.pooler.port(), USER, PASSWORD, DATABASE)
                .await
                .map_err(|e| format!("{e:#}"))?,
        );
    }
    let opened = futures::future::join_all(clients.iter().map(|c| async move {
        c.simple_query("BEGIN").await?;
        let rows = c.simple_query("SELECT pg_backend_pid()").await?;
        Ok::<_, tokio_postgres::Error>(rows.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
            _ => None,
        }))
    }))
    .await;
    let mut pids = BTreeSet::new();
    for result in opened {
        match result {
            Ok(Some(pid)) => {
                pids.insert(pid);
            }
            Ok(None) => return Err("no backend pid".into()),
            Err(e) => return Err(format!("{e} ({:?})", sqlstate(&e))),
        }
    }
    for c in &clients {
        c.simple_query("COMMIT").await.map_err(|e| e.to_string())?;
    }
    if pids.len() != POOL {
        return Err(format!("{} servers for {POOL} transactions", pids.len()));
    }
    Ok(())
}

/// Runs `fault` against Weir and checks what the module documentation promises; `None` when
/// skipped.
async fn weir_survives(fault: Fault) -> Option<Report> {
    if let Some(why) = NetNs::unavailable() {
        eprintln!("SKIPPED: network faults need network namespaces: {why}");
        return None;
    }
    let report = run(Pooler::Weir, fault, false).await;
    let unclear: Vec<&String> = report
        .codes
        .iter()
        .filter(|c| c.starts_with("none") || *c == "hung")
        .collect();
    assert!(
        unclear.is_empty(),
        "failures without a SQLSTATE: {}\npooler log:\n{}",
        report.row(),
        report.log
    );
    if matches!(fault, Fault::Blackhole | Fault::BlackholeUserTimeout) {
        assert!(
            report.freed.is_some(),
            "server connections outlived the timeouts in the blackhole: {}",
            report.row()
        );
    }
    assert!(report.recovery.is_some(), "no recovery: {}", report.row());
    assert_eq!(report.capacity, Ok(()), "{}", report.row());
    assert!(report.committed > 0, "{}", report.row());
    Some(report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blackhole_with_query_timeout() {
    weir_survives(Fault::Blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn blackhole_with_tcp_user_timeout() {
    weir_survives(Fault::BlackholeUserTimeout).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn packet_loss() {
    weir_survives(Fault::Loss).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delay() {
    weir_survives(Fault::Delay).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_under_load() {
    weir_survives(Fault::Restart).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restart_under_load_held() {
    let report = weir_survives(Fault::RestartHeld).await;
    // Held, not refused: only a transaction in flight at the shutdown fails, one per client.
    if let Some(report) = report {
        assert!(report.failed_transactions <= CLIENTS, "{}", report.row());
    }
}

/// The comparison table: every fault against Weir and against PgBouncer 1.25.2, one after the
/// other (minutes; by hand: `-- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "measurement: compares with PgBouncer, run by hand"]
async fn compare_with_pgbouncer() {
    if let Some(why) = NetNs::unavailable() {
        eprintln!("SKIPPED: network faults need network namespaces: {why}");
        return;
    }
    let mut rows = Vec::new();
    for fault in [
        Fault::Blackhole,
        Fault::BlackholeUserTimeout,
        Fault::Loss,
        Fault::Delay,
        Fault::Restart,
        Fault::RestartHeld,
    ] {
        for which in [Pooler::Weir, Pooler::PgBouncer] {
            if which == Pooler::PgBouncer && fault == Fault::RestartHeld {
                continue;
            }
            rows.push(run(which, fault, true).await.row());
        }
    }
    println!("{HEADER}\n{}", rows.join("\n"));
}

/// A client whose query outlives `query_timeout` on a server that cannot be reached is told
/// (57014) at once, while the pooler still tries to cancel the query, not after the cancel is
/// given up; the connection's place is given back once it is (`server_connect_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_is_told_without_waiting_for_the_cancel() {
    if let Some(why) = NetNs::unavailable() {
        eprintln!("SKIPPED: network faults need network namespaces: {why}");
        return;
    }
    let setup = Setup::start(
        Pooler::Weir,
        false,
        "",
        "query_timeout = 1\nserver_connect_timeout = 5\nserver_login_retry = 1\n",
    )
    .await;
    let client = net::connect(setup.pooler.port(), USER, PASSWORD, DATABASE)
        .await
        .expect("login");
    client
        .simple_query("SELECT 1")
        .await
        .expect("before the fault");
    setup.netns.blackhole(setup.pg.port()).expect("blackhole");

    let err = client
        .simple_query("SELECT 1")
        .await
        .expect_err("a query into the blackhole");
    assert_eq!(sqlstate(&err), Some("57014"), "{err}");
    // The cancel cannot connect, so the connection (whose query may still run) still counts.
    assert_eq!(
        setup.servers(&["sv_active"]).await,
        1,
        "the client was told only after the cancel was given up: {:?}",
        setup.pool_row().await
    );
    assert!(
        until(|| async { setup.servers(&["sv_active", "sv_idle", "sv_used"]).await == 0 }).await,
        "the abandoned connection was never closed: {:?}",
        setup.pool_row().await
    );

    setup.netns.heal().expect("heal");
    let client = net::connect(setup.pooler.port(), USER, PASSWORD, DATABASE)
        .await
        .expect("login after healing");
    client
        .simple_query("SELECT 1")
        .await
        .expect("after healing");
}
