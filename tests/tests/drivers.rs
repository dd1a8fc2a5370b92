//! The client-driver compatibility matrix: real client drivers through weir in transaction mode
//! and in session mode, each with 20 concurrent clients over a pool of 2 server connections.
//!
//! Every driver works through the same checklist per client: connect with SCRAM-SHA-256, a
//! session `SET` (application_name and TimeZone) that must hold in the next transaction,
//! 1000 parameterised queries, a rolled-back transaction, a server error inside a transaction
//! followed by more work, a result of more than 10 MiB, and the session settings again at the
//! end. With 20 clients over 2 server connections, statements a driver prepared on one server
//! connection are executed on the other in transaction mode.
//!
//! psql, pgbench and tokio-postgres run from here; psycopg, asyncpg, node-postgres, pgx and the
//! JDBC driver are programs under `tests/drivers/`, built by `scripts/install-drivers.sh`. A
//! driver that is not installed fails its row of the matrix; nothing is skipped. All rows run
//! before one assertion lists every failure, next to the matrix itself.
//!
//! The TLS matrix runs the same checklist with weir at `client_tls_sslmode = require` (plain
//! clients are refused) and every driver checking weir's certificate as `verify-full` does:
//! the test CA as the only root, 127.0.0.1 in the certificate's SANs. psql, psycopg and
//! tokio-postgres also require SCRAM-SHA-256-PLUS (`channel_binding=require`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use tokio::process::Command;
use tokio::task::JoinSet;
use weir_tests::drivers::{self, drivers_dir};
use weir_tests::fixture::{self, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;
use weir_tests::postgres::{parse_pgbench, pg_bin};
use weir_tests::tls::{RustlsConnect, TestCa};
use weir_tests::tokio_postgres::{self, Client};

/// `default_pool_size`: far fewer server connections than clients.
const POOL_SIZE: u32 = 2;
/// Concurrent clients per driver.
const CLIENTS: usize = 20;
/// Parameterised queries each client runs in its loop.
const LOOP_QUERIES: usize = 1000;
/// One loop iteration in this many inserts a row; the other iterations of its shape count them.
const INSERT_EVERY: usize = 20;
/// The large result: 10240 rows of 1 KiB text, 10 MiB of payload.
const BIG_ROWS: i32 = 10240;
const BIG_WIDTH: i32 = 1024;
const BIG_BYTES: usize = 10 * 1024 * 1024;
/// Script runs per pgbench client; each run holds 27 queries, so a client sends over 1000.
const PGBENCH_RUNS: usize = 50;
/// Upper bound for one driver's run; the programs give up after 600 s themselves.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(660);
/// How often the server connections are counted while the drivers run.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

const DIVISION_BY_ZERO: &str = "22012";
const IN_FAILED_SQL_TRANSACTION: &str = "25P02";

/// The two matrices run one after the other: each is 20 busy clients on a 2-core machine.
static ONE_MATRIX_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_driver_in_session_mode() {
    run_matrix("session", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_driver_in_transaction_mode() {
    run_matrix("transaction", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_driver_over_tls_with_verify_full() {
    run_matrix("transaction", true).await;
}

/// `verify-full` is checked, not assumed: told to trust another CA, every driver refuses
/// weir's certificate before it logs in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_driver_refuses_a_certificate_from_another_ca() {
    let _one_at_a_time = ONE_MATRIX_AT_A_TIME.lock().await;
    let mut fx = start_target("transaction", true).await;
    let other = TestCa::new("somebody else's CA").expect("CA");
    let tls = fx.tls.as_mut().expect("TLS target");
    tls.ca_file = tls.dir.path().join("other-ca.crt");
    std::fs::write(&tls.ca_file, &other.cert_pem).expect("writing the other CA");
    tls.connect = RustlsConnect::new(&other.cert_pem).expect("TLS client configuration");

    let mut refusals = vec![(
        "tokio-postgres",
        match fx.client().await {
            Ok(_) => Ok(0),
            Err(err) => Err(format!("{err:#}")),
        },
    )];
    let psql = pg_client_command("psql", &fx)
        .args(["-X", "-c", "SELECT 1"])
        .output()
        .await
        .expect("running psql");
    refusals.push((
        "psql",
        if psql.status.success() {
            Ok(0)
        } else {
            Err(String::from_utf8_lossy(&psql.stderr).into_owned())
        },
    ));
    for program in PROGRAMS {
        refusals.push((
            program.driver,
            run_program(program, &fx, "transaction").await,
        ));
    }
    for (driver, result) in refusals {
        let err = result.expect_err(driver).to_lowercase();
        assert!(
            err.contains("certificat") && !err.contains("not installed"),
            "{driver}: {err}"
        );
    }
    assert_eq!(fx.server_connections_seen().await, 0, "nobody logged in");
}

/// TLS toward weir: the CA the clients trust, written where the driver programs read it.
struct ClientTls {
    /// Holds the certificate files for the run.
    dir: tempfile::TempDir,
    ca_file: PathBuf,
    connect: RustlsConnect,
}

/// Weir under test, and how clients reach it.
struct Target {
    fx: Fixture,
    tls: Option<ClientTls>,
}

impl Target {
    fn port(&self) -> u16 {
        self.fx.weir.port()
    }

    /// How tokio-postgres clients make TLS, when they must.
    fn connector(&self) -> Option<RustlsConnect> {
        self.tls.as_ref().map(|tls| tls.connect.clone())
    }

    /// Server connections weir has opened so far (none before a client logs in).
    async fn server_connections_seen(&self) -> i64 {
        self.fx
            .server_connections()
            .await
            .expect("counting server connections")
    }

    /// A client for setting up and checking tables.
    async fn client(&self) -> anyhow::Result<Client> {
        let mut config = net::client_config(self.port(), USER, PASSWORD, DATABASE);
        connect(&mut config, self.connector())
            .await
            .with_context(|| format!("connecting through weir; its log:\n{}", self.fx.weir.log()))
    }
}

/// A tokio-postgres client; over TLS (verified by `tls`) with SCRAM-SHA-256-PLUS required.
async fn connect(
    config: &mut tokio_postgres::Config,
    tls: Option<RustlsConnect>,
) -> anyhow::Result<Client> {
    match tls {
        Some(tls) => {
            config
                .ssl_mode(tokio_postgres::config::SslMode::Require)
                .channel_binding(tokio_postgres::config::ChannelBinding::Require);
            net::connect_tls(config, tls).await
        }
        None => net::connect_with(config).await,
    }
}

/// Weir in `mode` with `client_tls_sslmode = require` when `tls`, its certificate signed by
/// a CA made here.
async fn start_target(mode: &'static str, tls: bool) -> Target {
    let mut opts = Options::mode(mode, POOL_SIZE);
    opts.auth_type = "scram-sha-256";
    if !tls {
        let fx = Fixture::start(opts).await.expect("fixture");
        return Target { fx, tls: None };
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = TestCa::new("weir driver-matrix CA").expect("CA");
    let leaf = ca
        .leaf("weir", &[net::HOST, "localhost"])
        .expect("weir certificate");
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).expect("writing a certificate file");
        path
    };
    let ca_file = write("ca.crt", &ca.cert_pem);
    let cert = write("weir.crt", &leaf.cert_pem);
    let key = write("weir.key", &leaf.key_pem);
    opts = opts
        .with("client_tls_sslmode = require")
        .with(&format!("client_tls_cert_file = {}", cert.display()))
        .with(&format!("client_tls_key_file = {}", key.display()));
    let fx = Fixture::start(opts).await.expect("fixture");
    let connect = RustlsConnect::new(&ca.cert_pem).expect("TLS client configuration");
    Target {
        fx,
        tls: Some(ClientTls {
            dir,
            ca_file,
            connect,
        }),
    }
}

/// What one row of the matrix came to.
struct Outcome {
    driver: String,
    /// Queries sent by all clients together, or why the driver failed.
    result: Result<usize, String>,
    elapsed: Duration,
}

async fn run_matrix(mode: &'static str, tls: bool) {
    let _one_at_a_time = ONE_MATRIX_AT_A_TIME.lock().await;
    let fx = start_target(mode, tls).await;
    let label = if tls {
        format!("{mode} mode over TLS (verify-full)")
    } else {
        format!("{mode} mode")
    };

    let done = AtomicBool::new(false);
    let (outcomes, peak) = tokio::join!(
        async {
            let outcomes = run_every_driver(&fx, mode).await;
            done.store(true, Ordering::Release);
            outcomes
        },
        peak_server_connections(&fx.fx, &done),
    );

    let mut failures: Vec<String> = outcomes
        .iter()
        .filter_map(|o| {
            let err = o.result.as_ref().err()?;
            Some(format!("{} ({label}): {err}", o.driver))
        })
        .collect();
    match &peak {
        Ok(peak) if *peak > i64::from(POOL_SIZE) => failures.push(format!(
            "pool ({label}): {peak} server connections seen, pool size is {POOL_SIZE}"
        )),
        Ok(_) => {}
        Err(err) => failures.push(format!("pool ({label}): {err}")),
    }
    let table = matrix_table(&label, &outcomes, peak.as_ref().ok().copied());
    println!("{table}");
    assert!(
        failures.is_empty(),
        "{} failure(s) in {label}:\n\n{}\n\n{table}\nweir log (last lines):\n{}",
        failures.len(),
        failures.join("\n\n"),
        last_lines(&fx.fx.weir.log(), 40)
    );
}

/// Runs every row of the matrix against `fx`, one driver after another.
async fn run_every_driver(fx: &Target, mode: &str) -> Vec<Outcome> {
    let mut outcomes = Vec::new();
    outcomes.push(timed("tokio-postgres", run_tokio_postgres(fx)).await);
    outcomes.push(timed("psql", run_psql(fx)).await);
    for protocol in ["simple", "extended", "prepared"] {
        let name = format!("pgbench -M {protocol}");
        outcomes.push(timed(&name, run_pgbench(fx, mode, protocol)).await);
    }
    for program in PROGRAMS {
        outcomes.push(timed(program.driver, run_program(program, fx, mode)).await);
    }
    outcomes
}

async fn timed(
    driver: &str,
    run: impl std::future::Future<Output = Result<usize, String>>,
) -> Outcome {
    let started = Instant::now();
    let result = run.await.and_then(|queries| {
        if queries < CLIENTS * LOOP_QUERIES {
            Err(format!(
                "only {queries} queries, expected at least {}",
                CLIENTS * LOOP_QUERIES
            ))
        } else {
            Ok(queries)
        }
    });
    Outcome {
        driver: driver.to_owned(),
        result,
        elapsed: started.elapsed(),
    }
}

/// Counts weir's server connections every [`SAMPLE_EVERY`] until `done`, returning the most seen.
async fn peak_server_connections(fx: &Fixture, done: &AtomicBool) -> Result<i64, String> {
    let mut peak = 0;
    loop {
        let finished = done.load(Ordering::Acquire);
        let now = fx
            .server_connections()
            .await
            .map_err(|err| format!("counting server connections: {err:#}"))?;
        peak = peak.max(now);
        if finished {
            return Ok(peak);
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
}

/// The matrix as a Markdown table, the form the README shows.
fn matrix_table(label: &str, outcomes: &[Outcome], peak: Option<i64>) -> String {
    let mode = label.split_whitespace().next().unwrap_or(label);
    let mut out = format!(
        "driver matrix, {label}: pool size {POOL_SIZE}, {CLIENTS} clients per driver, \
         most server connections seen: {}\n\n\
         | driver | {mode} | queries | seconds |\n|---|---|---|---|\n",
        peak.map_or_else(|| "unknown".to_owned(), |p| p.to_string())
    );
    for o in outcomes {
        let (result, queries) = match &o.result {
            Ok(queries) => ("pass", queries.to_string()),
            Err(_) => ("FAIL", "-".to_owned()),
        };
        let _ = writeln!(
            out,
            "| {} | {result} | {queries} | {:.1} |",
            o.driver,
            o.elapsed.as_secs_f64()
        );
    }
    out
}

fn last_lines(text: &str, count: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(count)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// The checklist's shared parts

/// One query of the parameterised loop; every driver program follows the same plan.
#[derive(Debug, Clone, PartialEq)]
enum LoopStep {
    /// `SELECT a + b`.
    Sum(i32, i32),
    /// `SELECT a || ':' || b`.
    Concat(String, String),
    /// `SELECT count(*) FROM generate_series(1, k)`.
    Series(i32),
    /// Inserts a `loop` row numbered by the iteration.
    Insert(i32),
    /// Counts the `loop` rows inserted so far: the value given.
    Count(i32),
}

fn loop_plan(client: usize) -> Vec<LoopStep> {
    let client = i32::try_from(client).expect("client number");
    let mut inserted = 0;
    (0..LOOP_QUERIES)
        .map(|i| {
            let i32_i = i32::try_from(i).expect("iteration");
            match i % 4 {
                0 => LoopStep::Sum(i32_i, client),
                1 => LoopStep::Concat(format!("c{client}"), format!("q{i}")),
                2 => LoopStep::Series(i32_i % 50 + 1),
                _ if i % INSERT_EVERY == 3 => {
                    inserted += 1;
                    LoopStep::Insert(i32_i)
                }
                _ => LoopStep::Count(inserted),
            }
        })
        .collect()
}

fn loop_inserts() -> i32 {
    let inserts = loop_plan(0)
        .iter()
        .filter(|step| matches!(step, LoopStep::Insert(_)))
        .count();
    i32::try_from(inserts).expect("insert count")
}

fn application_name(driver: &str, client: usize) -> String {
    format!("weir-{driver}-{client}")
}

fn time_zone(client: usize) -> String {
    format!("Etc/GMT-{}", client % 14 + 1)
}

fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

fn table_name(driver: &str) -> String {
    format!("weir_check_{}", driver.replace('-', "_"))
}

/// The text of large-result row `g`: one letter, [`BIG_WIDTH`] times.
fn big_text(g: i32) -> String {
    let letter = char::from(b'A' + u8::try_from(g.rem_euclid(26)).expect("letter"));
    letter
        .to_string()
        .repeat(usize::try_from(BIG_WIDTH).expect("width"))
}

/// Recreates `table` through weir, so each driver starts with its own empty table.
async fn fresh_table(fx: &Target, table: &str) -> Result<(), String> {
    let client = fx.client().await.map_err(|err| format!("setup: {err:#}"))?;
    client
        .batch_execute(&format!(
            "DROP TABLE IF EXISTS {table}; \
             CREATE TABLE {table} (client int NOT NULL, step text NOT NULL, n int NOT NULL)"
        ))
        .await
        .map_err(|err| format!("setup: creating {table}: {err}"))
}

// ---------------------------------------------------------------------------------------------
// tokio-postgres, in this process

/// Runs the checklist with [`CLIENTS`] concurrent tokio-postgres clients. Statements are
/// prepared once per client and executed by name throughout.
async fn run_tokio_postgres(fx: &Target) -> Result<usize, String> {
    let table = table_name("tokio-postgres");
    fresh_table(fx, &table).await?;
    let mut clients = JoinSet::new();
    for n in 0..CLIENTS {
        let mut config = net::client_config(fx.port(), USER, PASSWORD, DATABASE);
        let tls = fx.connector();
        let table = table.clone();
        clients.spawn(async move {
            let mut queries = 0;
            let result = tokio_postgres_client(&mut config, tls, &table, n, &mut queries).await;
            (n, result.map(|()| queries))
        });
    }
    let mut failures = Vec::new();
    let mut total = 0;
    while let Some(joined) = clients.join_next().await {
        match joined {
            Ok((_, Ok(queries))) => total += queries,
            Ok((n, Err(err))) => failures.push(format!("client {n}: {err:#}")),
            Err(err) => failures.push(format!("a client task failed: {err}")),
        }
    }
    if failures.is_empty() {
        Ok(total)
    } else {
        failures.sort();
        Err(failures.join("\n"))
    }
}

fn expect<T: PartialEq + std::fmt::Debug>(
    what: &str,
    actual: T,
    expected: T,
) -> anyhow::Result<()> {
    if actual != expected {
        bail!("{what}: expected {expected:?}, got {actual:?}");
    }
    Ok(())
}

/// Checks that `result` failed with a server error carrying `sqlstate`.
fn expect_sqlstate<T>(
    what: &str,
    result: Result<T, tokio_postgres::Error>,
    sqlstate: &str,
) -> anyhow::Result<()> {
    match result {
        Ok(_) => bail!("{what}: succeeded, expected SQLSTATE {sqlstate}"),
        Err(err) if fixture::sqlstate(&err) == Some(sqlstate) => Ok(()),
        Err(err) => bail!("{what}: expected SQLSTATE {sqlstate}, got {err}"),
    }
}

/// The statements one tokio-postgres client prepares once and then executes by name.
struct Statements {
    sum: tokio_postgres::Statement,
    concat: tokio_postgres::Statement,
    series: tokio_postgres::Statement,
    insert_loop: tokio_postgres::Statement,
    count_loop: tokio_postgres::Statement,
    insert_step: tokio_postgres::Statement,
    count_step: tokio_postgres::Statement,
    settings: tokio_postgres::Statement,
    divide: tokio_postgres::Statement,
    echo: tokio_postgres::Statement,
    big: tokio_postgres::Statement,
}

impl Statements {
    async fn prepare(client: &Client, table: &str) -> Result<Statements, tokio_postgres::Error> {
        Ok(Statements {
            sum: client.prepare("SELECT $1::int + $2::int").await?,
            concat: client.prepare("SELECT $1::text || ':' || $2::text").await?,
            series: client
                .prepare("SELECT count(*)::int FROM generate_series(1, $1::int)")
                .await?,
            insert_loop: client
                .prepare(&format!(
                    "INSERT INTO {table} (client, step, n) VALUES ($1, 'loop', $2)"
                ))
                .await?,
            count_loop: client
                .prepare(&format!(
                    "SELECT count(*)::int FROM {table} WHERE client = $1 AND step = 'loop'"
                ))
                .await?,
            insert_step: client
                .prepare(&format!(
                    "INSERT INTO {table} (client, step, n) VALUES ($1, $2, 0)"
                ))
                .await?,
            count_step: client
                .prepare(&format!(
                    "SELECT count(*)::int FROM {table} WHERE client = $1 AND step = $2"
                ))
                .await?,
            settings: client
                .prepare("SELECT current_setting('application_name'), current_setting('TimeZone')")
                .await?,
            divide: client.prepare("SELECT 1 / $1::int").await?,
            echo: client.prepare("SELECT $1::int").await?,
            big: client
                .prepare(
                    "SELECT g, repeat(chr(65 + mod(g, 26)), $1::int) \
                     FROM generate_series(1, $2::int) AS g",
                )
                .await?,
        })
    }
}

/// Rows of one checklist step a client has in its table.
async fn count_rows(
    client: &Client,
    st: &Statements,
    client_id: i32,
    step: &str,
) -> anyhow::Result<i32> {
    let row = client
        .query_one(&st.count_step, &[&client_id, &step])
        .await?;
    Ok(row.get(0))
}

async fn tokio_postgres_client(
    config: &mut tokio_postgres::Config,
    tls: Option<RustlsConnect>,
    table: &str,
    n: usize,
    queries: &mut usize,
) -> anyhow::Result<()> {
    const DRIVER: &str = "tokio-postgres";
    let mut client = connect(config, tls).await.context("connect")?;
    let client_id = i32::try_from(n)?;
    let wanted_settings = (application_name(DRIVER, n), time_zone(n));

    client
        .batch_execute(&format!(
            "SET application_name = {}",
            quote_literal(&wanted_settings.0)
        ))
        .await
        .context("session SET")?;
    client
        .batch_execute(&format!(
            "SET TIME ZONE {}",
            quote_literal(&wanted_settings.1)
        ))
        .await
        .context("session SET")?;
    *queries += 2;
    let st = Statements::prepare(&client, table)
        .await
        .context("preparing statements")?;

    let tx = client.transaction().await.context("session settings")?;
    let row = tx
        .query_one(&st.settings, &[])
        .await
        .context("session settings")?;
    tx.commit().await.context("session settings")?;
    *queries += 1;
    let settings: (String, String) = (row.get(0), row.get(1));
    expect(
        "settings in the next transaction",
        &settings,
        &wanted_settings,
    )?;

    for step in loop_plan(n) {
        *queries += 1;
        let checked = match &step {
            LoopStep::Sum(a, b) => {
                let row = client.query_one(&st.sum, &[a, b]).await;
                expect("sum", row?.get::<_, i32>(0), a + b)
            }
            LoopStep::Concat(a, b) => {
                let row = client.query_one(&st.concat, &[a, b]).await;
                expect("concat", row?.get::<_, String>(0), format!("{a}:{b}"))
            }
            LoopStep::Series(k) => {
                let row = client.query_one(&st.series, &[k]).await;
                expect("series", row?.get::<_, i32>(0), *k)
            }
            LoopStep::Insert(i) => {
                let inserted = client.execute(&st.insert_loop, &[&client_id, i]).await;
                expect("inserted rows", inserted?, 1)
            }
            LoopStep::Count(expected) => {
                let row = client.query_one(&st.count_loop, &[&client_id]).await;
                expect("loop rows so far", row?.get::<_, i32>(0), *expected)
            }
        };
        checked.with_context(|| format!("parameterised query loop at {step:?}"))?;
    }

    let rolled_back = async {
        let tx = client.transaction().await?;
        tx.execute(&st.insert_step, &[&client_id, &"rolled-back"])
            .await?;
        let inside = tx
            .query_one(&st.count_step, &[&client_id, &"rolled-back"])
            .await?;
        expect(
            "own insert inside the transaction",
            inside.get::<_, i32>(0),
            1,
        )?;
        tx.rollback().await?;
        anyhow::Ok(())
    };
    rolled_back.await.context("rolled-back transaction")?;
    let after = count_rows(&client, &st, client_id, "rolled-back").await;
    expect("rows after the rollback", after?, 0).context("rolled-back transaction")?;
    *queries += 3;

    let recovered = async {
        let mut tx = client.transaction().await?;
        tx.execute(&st.insert_step, &[&client_id, &"before-error"])
            .await?;
        let savepoint = tx.savepoint("before_error").await?;
        let failed = savepoint.query_one(&st.divide, &[&0i32]).await;
        expect_sqlstate("division by zero", failed, DIVISION_BY_ZERO)?;
        savepoint.rollback().await?;
        tx.execute(&st.insert_step, &[&client_id, &"after-error"])
            .await?;
        tx.commit().await?;
        for step in ["before-error", "after-error"] {
            expect(step, count_rows(&client, &st, client_id, step).await?, 1)?;
        }
        anyhow::Ok(())
    };
    recovered
        .await
        .context("error inside a transaction, recovered by a savepoint")?;
    *queries += 5;

    let rolled_back_after_error = async {
        let tx = client.transaction().await?;
        tx.execute(&st.insert_step, &[&client_id, &"doomed"])
            .await?;
        let failed = tx.query_one(&st.divide, &[&0i32]).await;
        expect_sqlstate("division by zero", failed, DIVISION_BY_ZERO)?;
        let failed = tx.query_one(&st.echo, &[&client_id]).await;
        expect_sqlstate(
            "a statement after the error",
            failed,
            IN_FAILED_SQL_TRANSACTION,
        )?;
        tx.rollback().await?;
        let doomed = count_rows(&client, &st, client_id, "doomed").await?;
        expect("rows of the failed transaction", doomed, 0)?;
        let echoed = client.query_one(&st.echo, &[&client_id]).await?;
        expect(
            "work after the rollback",
            echoed.get::<_, i32>(0),
            client_id,
        )
    };
    rolled_back_after_error
        .await
        .context("error inside a transaction, then rollback")?;
    *queries += 5;

    let rows = client
        .query(&st.big, &[&BIG_WIDTH, &BIG_ROWS])
        .await
        .context("large result")?;
    *queries += 1;
    expect("large result rows", rows.len(), usize::try_from(BIG_ROWS)?)?;
    let mut total = 0;
    for (index, row) in rows.iter().enumerate() {
        let g: i32 = row.get(0);
        let text: &str = row.get(1);
        expect("large result row number", usize::try_from(g)?, index + 1)?;
        if text != big_text(g) {
            bail!("large result row {g}: wrong text of length {}", text.len());
        }
        total += text.len();
    }
    if total < BIG_BYTES {
        bail!("large result: {total} bytes, expected at least {BIG_BYTES}");
    }

    let tx = client.transaction().await.context("session settings")?;
    let row = tx
        .query_one(&st.settings, &[])
        .await
        .context("session settings")?;
    tx.commit().await.context("session settings")?;
    let settings: (String, String) = (row.get(0), row.get(1));
    expect("settings after all the work", &settings, &wanted_settings)?;
    let loop_rows = count_rows(&client, &st, client_id, "loop").await?;
    expect("loop rows", loop_rows, loop_inserts())?;
    *queries += 2;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// psql

/// A psql script for one client and exactly what it must print.
struct PsqlScript {
    text: String,
    expected: String,
    queries: usize,
}

impl PsqlScript {
    fn sql(&mut self, line: &str) {
        self.queries += 1;
        self.meta(line);
    }

    fn meta(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn prints(&mut self, line: &str) {
        self.expected.push_str(line);
        self.expected.push('\n');
    }

    /// Prints `FAIL what` unless the `ok` variable (set by `\gset`) is true.
    fn check_ok(&mut self, what: &str) {
        self.meta("\\if :ok");
        self.meta("\\else");
        self.meta(&format!("\\echo FAIL {what}"));
        self.meta("\\endif");
    }
}

/// The checklist as a psql script for client `n`. psql 15 has no protocol-level parameters,
/// so its queries take their values from psql variables; the script stops at any unexpected
/// error (`ON_ERROR_STOP`) and prints `FAIL ...` for any wrong value, which makes its output
/// differ from the expected text.
fn psql_script(n: usize, big_output: &Path) -> PsqlScript {
    let table = table_name("psql");
    let mut s = PsqlScript {
        text: String::new(),
        expected: String::new(),
        queries: 0,
    };
    s.meta(&format!("\\set client {n}"));
    s.meta(&format!("\\set app {}", application_name("psql", n)));
    s.meta(&format!("\\set tz {}", time_zone(n)));
    s.meta("\\set zero 0");
    s.sql("SET application_name = :'app';");
    s.sql("SET TIME ZONE :'tz';");
    let check_settings = |s: &mut PsqlScript, what: &str| {
        s.meta("BEGIN;");
        s.sql(
            "SELECT current_setting('application_name') = :'app' \
             AND current_setting('TimeZone') = :'tz' AS ok \\gset",
        );
        s.meta("COMMIT;");
        s.check_ok(what);
    };
    check_settings(&mut s, "settings in the next transaction");

    for step in loop_plan(n) {
        match step {
            LoopStep::Sum(a, b) => {
                s.meta(&format!("\\set a {a}"));
                s.sql("SELECT :a::int + :client::int;");
                s.prints(&(a + b).to_string());
            }
            LoopStep::Concat(a, b) => {
                s.meta(&format!("\\set a {a}"));
                s.meta(&format!("\\set b {b}"));
                s.sql("SELECT :'a' || ':' || :'b';");
                s.prints(&format!("{a}:{b}"));
            }
            LoopStep::Series(k) => {
                s.meta(&format!("\\set k {k}"));
                s.sql("SELECT count(*) FROM generate_series(1, :k);");
                s.prints(&k.to_string());
            }
            LoopStep::Insert(i) => {
                s.meta(&format!("\\set i {i}"));
                s.sql(&format!(
                    "INSERT INTO {table} (client, step, n) VALUES (:client, 'loop', :i);"
                ));
            }
            LoopStep::Count(expected) => {
                s.sql(&format!(
                    "SELECT count(*) FROM {table} WHERE client = :client AND step = 'loop';"
                ));
                s.prints(&expected.to_string());
            }
        }
    }
    let count_is = |step: &str, expected: usize| {
        format!(
            "SELECT count(*) = {expected} AS ok FROM {table} \
             WHERE client = :client AND step = '{step}' \\gset"
        )
    };
    let insert = |step: &str| {
        format!("INSERT INTO {table} (client, step, n) VALUES (:client, '{step}', 0);")
    };

    // A rolled-back transaction.
    s.meta("BEGIN;");
    s.sql(&insert("rolled-back"));
    s.sql(&count_is("rolled-back", 1));
    s.meta("ROLLBACK;");
    s.check_ok("own insert inside the transaction");
    s.sql(&count_is("rolled-back", 0));
    s.check_ok("rows after the rollback");

    // A server error inside a transaction, recovered by a savepoint.
    s.meta("BEGIN;");
    s.sql(&insert("before-error"));
    s.meta("SAVEPOINT before_error;");
    s.meta("\\set ON_ERROR_STOP 0");
    s.sql("SELECT 1 / :zero;");
    s.meta("\\set err :SQLSTATE");
    s.meta("\\set ON_ERROR_STOP 1");
    s.meta("ROLLBACK TO SAVEPOINT before_error;");
    s.sql(&format!(
        "SELECT :'err' = '{DIVISION_BY_ZERO}' AS ok \\gset"
    ));
    s.check_ok("division by zero: SQLSTATE :err");
    s.sql(&insert("after-error"));
    s.meta("COMMIT;");
    s.sql(&format!(
        "SELECT count(*) = 2 AS ok FROM {table} \
         WHERE client = :client AND step IN ('before-error', 'after-error') \\gset"
    ));
    s.check_ok("rows committed around the error");

    // A server error inside a transaction, then rollback and more work.
    s.meta("BEGIN;");
    s.sql(&insert("doomed"));
    s.meta("\\set ON_ERROR_STOP 0");
    s.sql("SELECT 1 / :zero;");
    s.meta("\\set err1 :SQLSTATE");
    s.sql("SELECT :client;");
    s.meta("\\set err2 :SQLSTATE");
    s.meta("\\set ON_ERROR_STOP 1");
    s.meta("ROLLBACK;");
    s.sql(&format!(
        "SELECT :'err1' = '{DIVISION_BY_ZERO}' AND :'err2' = '{IN_FAILED_SQL_TRANSACTION}' \
         AS ok \\gset"
    ));
    s.check_ok("errors in the failed transaction: SQLSTATE :err1 then :err2");
    s.sql(&count_is("doomed", 0));
    s.check_ok("rows of the failed transaction");
    s.sql("SELECT :client::int;");
    s.prints(&n.to_string());

    // The large result goes to a file, compared with what it must hold after the run.
    let big_output = quote_literal(&big_output.to_string_lossy());
    s.meta(&format!("\\o {big_output}"));
    s.sql(&format!(
        "SELECT g, repeat(chr(65 + mod(g, 26)), {BIG_WIDTH}) \
         FROM generate_series(1, {BIG_ROWS}) AS g;"
    ));
    s.meta("\\o");
    s.sql(&format!("SELECT :ROW_COUNT = {BIG_ROWS} AS ok \\gset"));
    s.check_ok("large result rows: :ROW_COUNT");

    check_settings(&mut s, "settings after all the work");
    s.sql(&count_is(
        "loop",
        usize::try_from(loop_inserts()).expect("inserts"),
    ));
    s.check_ok("loop rows");
    s.meta("\\echo checklist complete");
    s.prints("checklist complete");
    s
}

/// What psql prints for the large result in unaligned tuples-only mode: `g|text` per row.
fn psql_big_output() -> String {
    (1..=BIG_ROWS).fold(String::new(), |mut out, g| {
        let _ = writeln!(out, "{g}|{}", big_text(g));
        out
    })
}

/// A command for PostgreSQL's client `program` through weir, with no `PG*` variables inherited
/// from the caller's environment.
fn pg_client_command(program: &str, fx: &Target) -> Command {
    let mut cmd = Command::new(pg_bin(program));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    cmd.env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .args(["-h", net::HOST, "-p", &fx.port().to_string()])
        .args(["-U", USER, "-d", DATABASE])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(tls) = &fx.tls {
        cmd.env("PGSSLMODE", "verify-full")
            .env("PGSSLROOTCERT", &tls.ca_file)
            .env("PGCHANNELBINDING", "require");
    }
    cmd
}

/// Runs [`CLIENTS`] psql processes at once, each running its [`psql_script`].
async fn run_psql(fx: &Target) -> Result<usize, String> {
    fresh_table(fx, &table_name("psql")).await?;
    let dir = tempfile::tempdir().map_err(|err| format!("creating a script directory: {err}"))?;
    let big_expected = std::sync::Arc::new(psql_big_output());
    let mut runs = JoinSet::new();
    let mut queries = 0;
    for n in 0..CLIENTS {
        let big_output = dir.path().join(format!("client-{n}.big"));
        let script = psql_script(n, &big_output);
        queries += script.queries;
        let path = dir.path().join(format!("client-{n}.psql"));
        std::fs::write(&path, &script.text).map_err(|err| format!("writing {path:?}: {err}"))?;
        let mut cmd = pg_client_command("psql", fx);
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f"])
            .arg(&path);
        let big_expected = big_expected.clone();
        runs.spawn(async move {
            let output = tokio::time::timeout(PROGRAM_TIMEOUT, cmd.output()).await;
            (n, script.expected, output, big_output, big_expected)
        });
    }
    let mut failures = Vec::new();
    while let Some(joined) = runs.join_next().await {
        let (n, expected, output, big_output, big_expected) =
            joined.map_err(|err| format!("a psql task failed: {err}"))?;
        let failure = match output {
            Err(_) => Some(format!("no result within {PROGRAM_TIMEOUT:?}")),
            Ok(Err(err)) => Some(format!("cannot run psql: {err}")),
            Ok(Ok(out)) => {
                let stdout = String::from_utf8_lossy(&out.stdout);
                let stderr = String::from_utf8_lossy(&out.stderr);
                if !out.status.success() {
                    Some(format!(
                        "psql exited with {}:\n{}",
                        out.status,
                        last_lines(&stderr, 10)
                    ))
                } else if let Some(diff) = first_difference(&stdout, &expected) {
                    Some(format!(
                        "{diff}\npsql's errors:\n{}",
                        last_lines(&stderr, 10)
                    ))
                } else {
                    check_big_output(&big_output, &big_expected).err()
                }
            }
        };
        if let Some(failure) = failure {
            failures.push(format!("client {n}: {failure}"));
        }
    }
    if failures.is_empty() {
        Ok(queries)
    } else {
        failures.sort();
        Err(failures.join("\n"))
    }
}

/// Checks the large result psql wrote to `path` against what it must hold.
fn check_big_output(path: &Path, expected: &str) -> Result<(), String> {
    let written = std::fs::read(path).map_err(|err| format!("reading {path:?}: {err}"))?;
    if written != expected.as_bytes() {
        return Err(format!(
            "large result: {} bytes written, expected {} bytes of rows",
            written.len(),
            expected.len()
        ));
    }
    Ok(())
}

/// Where `actual` output first departs from `expected`, line by line; `None` when they match.
fn first_difference(actual: &str, expected: &str) -> Option<String> {
    let mut actual_lines = actual.lines().map(str::trim);
    let mut expected_lines = expected.lines();
    let mut number = 0;
    loop {
        number += 1;
        match (actual_lines.next(), expected_lines.next()) {
            (None, None) => return None,
            (a, e) if a == e => {}
            (a, e) => {
                return Some(format!(
                    "output line {number}: expected {:?}, got {:?}",
                    e.unwrap_or("<end of output>"),
                    a.unwrap_or("<end of output>")
                ))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pgbench

/// The pgbench version of the checklist, one run of which is one pgbench "transaction".
///
/// Each run sets the session settings and checks them in a later transaction, sends 16
/// parameterised queries checking their own results, rolls a transaction back and commits one.
/// The first run of each client also fetches the large result. A check that fails selects no
/// row into `\gset`, which pgbench reports as an error, aborting the client. pgbench cannot go
/// on after a server error (it aborts the client), so the error step is psql's and the other
/// drivers' alone.
fn pgbench_script() -> String {
    let table = table_name("pgbench");
    let mut s = String::new();
    s.push_str("SET application_name = 'weir-pgbench';\nSET TIME ZONE 'Etc/GMT-3';\n");
    let _ = write!(
        s,
        "\\if :iter = 0\n\
         SELECT g, repeat(chr(65 + mod(g, 26)), {BIG_WIDTH}) FROM generate_series(1, {BIG_ROWS}) AS g;\n\
         \\endif\n\
         \\set iter :iter + 1\n\
         \\set a random(1, 1000000)\n\
         \\set b random(1, 1000000)\n"
    );
    for _ in 0..8 {
        s.push_str(
            "SELECT :a::int + :b::int AS s \\gset\n\
             SELECT 1 AS sum_ok WHERE :s::int = :a::int + :b::int \\gset\n",
        );
    }
    let _ = write!(
        s,
        "BEGIN;\n\
         INSERT INTO {table} (client, step, n) VALUES (:client_id, 'rolled-back', :iter);\n\
         ROLLBACK;\n\
         SELECT 1 AS rolled_back WHERE NOT EXISTS \
         (SELECT FROM {table} WHERE client = :client_id AND step = 'rolled-back') \\gset\n\
         BEGIN;\n\
         INSERT INTO {table} (client, step, n) VALUES (:client_id, 'committed', :iter);\n\
         SELECT 1 AS settings_held WHERE current_setting('application_name') = 'weir-pgbench' \
         AND current_setting('TimeZone') = 'Etc/GMT-3' \\gset\n\
         COMMIT;\n\
         SELECT 1 AS committed WHERE (SELECT count(*) FROM {table} \
         WHERE client = :client_id AND step = 'committed') = :iter \\gset\n"
    );
    s
}

/// SQL statements in one run of [`pgbench_script`] (not counting the first run's large result).
const PGBENCH_QUERIES_PER_RUN: usize = 2 + 16 + 4 + 5;
// Each pgbench client sends at least as many queries as the other drivers' clients.
const _: () = assert!(PGBENCH_RUNS * PGBENCH_QUERIES_PER_RUN >= LOOP_QUERIES);

/// Runs [`pgbench_script`] with [`CLIENTS`] clients in `protocol` (`-M`).
///
/// In session mode each pgbench client reconnects for every run (`-C`): pgbench keeps a
/// finished client's connection open until every client is done, so 20 persistent sessions
/// could never all get one of 2 server connections. Each client has its own thread (`-j`)
/// because pgbench prepares statements with a blocking call, which would otherwise stall every
/// client of a thread while one of them waits for a server connection.
async fn run_pgbench(fx: &Target, mode: &str, protocol: &str) -> Result<usize, String> {
    let table = table_name("pgbench");
    fresh_table(fx, &table).await?;
    let dir = tempfile::tempdir().map_err(|err| format!("creating a script directory: {err}"))?;
    let script = dir.path().join("checklist.pgbench");
    std::fs::write(&script, pgbench_script())
        .map_err(|err| format!("writing the script: {err}"))?;
    let mut cmd = pg_client_command("pgbench", fx);
    cmd.args(["-n", "-M", protocol, "-c", &CLIENTS.to_string(), "-j"])
        .arg(CLIENTS.to_string())
        .args(["-t", &PGBENCH_RUNS.to_string(), "-D", "iter=0", "-f"])
        .arg(&script);
    if mode == "session" {
        cmd.arg("-C");
    }
    let output = tokio::time::timeout(PROGRAM_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("no result within {PROGRAM_TIMEOUT:?}"))?
        .map_err(|err| format!("cannot run pgbench: {err}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let summary = parse_pgbench(&stdout);
    let runs = CLIENTS * PGBENCH_RUNS;
    match summary {
        Some(s) if output.status.success() && s.transactions == runs as u64 && s.failed == 0 => {}
        _ => {
            return Err(format!(
                "pgbench exited with {}, expected {runs} runs and no failures:\n{}\n{}",
                output.status,
                last_lines(&stdout, 6),
                last_lines(&stderr, 20)
            ))
        }
    }
    let client = fx.client().await.map_err(|err| format!("{err:#}"))?;
    let committed: i64 = client
        .query_one(
            &format!("SELECT count(*) FROM {table} WHERE step = 'committed'"),
            &[],
        )
        .await
        .map_err(|err| format!("counting committed rows: {err}"))?
        .get(0);
    expect("committed rows", committed, runs as i64).map_err(|err| err.to_string())?;
    Ok(runs * PGBENCH_QUERIES_PER_RUN + CLIENTS)
}

// ---------------------------------------------------------------------------------------------
// Driver programs under tests/drivers/

/// A driver program under `tests/drivers/` and what `scripts/install-drivers.sh` builds for it.
struct Program {
    /// The name it reports in its `ok <driver> <queries> queries` line.
    driver: &'static str,
    /// Its folder under `tests/drivers/`, where it runs.
    dir: &'static str,
    /// Program and arguments; a program with a `/` is a path inside `dir`.
    argv: &'static [&'static str],
    /// What the install script produces, inside `dir`.
    artifact: &'static str,
    /// What the artifact is made from, inside `dir`; a folder stands for every file under it.
    inputs: &'static [&'static str],
}

const PROGRAMS: &[Program] = &[
    Program {
        driver: "psycopg",
        dir: "python",
        argv: &[".venv/bin/python", "psycopg_check.py"],
        artifact: ".venv/.installed",
        inputs: &["requirements.txt"],
    },
    Program {
        driver: "asyncpg",
        dir: "python",
        argv: &[".venv/bin/python", "asyncpg_check.py"],
        artifact: ".venv/.installed",
        inputs: &["requirements.txt"],
    },
    Program {
        driver: "node-pg",
        dir: "node",
        argv: &["node", "pg-check.js"],
        artifact: "node_modules/.installed",
        inputs: &["package.json", "package-lock.json"],
    },
    Program {
        driver: "pgx",
        dir: "go",
        argv: &["bin/pgxcheck"],
        artifact: "bin/pgxcheck",
        inputs: &["go.mod", "go.sum", "main.go"],
    },
    Program {
        driver: "jdbc",
        dir: "java",
        argv: &["java", "-jar", "target/jdbc-check.jar"],
        artifact: "target/jdbc-check.jar",
        inputs: &["pom.xml", "src"],
    },
];

/// Fails unless the program's artifact is installed and newer than each of its inputs.
fn check_installed(program: &Program, dir: &Path) -> Result<(), String> {
    drivers::check_installed(dir, program.artifact, program.inputs)
}

/// Runs a driver program against `fx` and reads the query count from its `ok` line.
async fn run_program(program: &Program, fx: &Target, mode: &str) -> Result<usize, String> {
    let dir = drivers_dir().join(program.dir);
    check_installed(program, &dir)?;
    let (first, rest) = program.argv.split_first().expect("a program");
    let executable = if first.contains('/') {
        dir.join(first)
    } else {
        PathBuf::from(first)
    };
    let mut cmd = Command::new(&executable);
    cmd.args(rest)
        .current_dir(&dir)
        .env("WEIR_HOST", net::HOST)
        .env("WEIR_PORT", fx.port().to_string())
        .env("WEIR_USER", USER)
        .env("WEIR_PASSWORD", PASSWORD)
        .env("WEIR_DB", DATABASE)
        .env("WEIR_MODE", mode)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(tls) = &fx.tls {
        // Programs that can (psycopg, through libpq) also require channel binding.
        cmd.env("WEIR_SSLMODE", "verify-full")
            .env("WEIR_SSLROOTCERT", &tls.ca_file)
            .env("WEIR_CHANNEL_BINDING", "require");
    }
    let output = tokio::time::timeout(PROGRAM_TIMEOUT, cmd.output())
        .await
        .map_err(|_| format!("no result within {PROGRAM_TIMEOUT:?}"))?
        .map_err(|err| {
            format!(
                "cannot run {}: {err}; run scripts/install-drivers.sh",
                executable.display()
            )
        })?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        return Err(format!(
            "exited with {}:\n{}",
            output.status,
            last_lines(&format!("{stdout}{stderr}"), 30)
        ));
    }
    ok_line_queries(&stdout, program.driver).ok_or_else(|| {
        format!(
            "no `ok {} <queries> queries` line in its output:\n{stdout}{stderr}",
            program.driver
        )
    })
}

/// The query count from a program's `ok <driver> <queries> queries` line.
fn ok_line_queries(stdout: &str, driver: &str) -> Option<usize> {
    stdout.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        let matched = words.next() == Some("ok") && words.next() == Some(driver);
        let queries = words.next()?.parse().ok()?;
        (matched && words.next() == Some("queries") && words.next().is_none()).then_some(queries)
    })
}

// ---------------------------------------------------------------------------------------------
// The pure parts, checked without any server

#[test]
fn the_loop_plan_runs_1000_queries_with_50_inserts() {
    let plan = loop_plan(7);
    assert_eq!(plan.len(), LOOP_QUERIES);
    assert_eq!(loop_inserts(), 50);
    assert_eq!(plan[0], LoopStep::Sum(0, 7));
    assert_eq!(plan[1], LoopStep::Concat("c7".into(), "q1".into()));
    assert_eq!(plan[2], LoopStep::Series(3));
    assert_eq!(plan[3], LoopStep::Insert(3));
    assert_eq!(plan[7], LoopStep::Count(1));
    assert_eq!(plan[23], LoopStep::Insert(23));
    assert_eq!(plan[27], LoopStep::Count(2));
    assert_eq!(plan[999], LoopStep::Count(50));
}

#[test]
fn the_large_result_is_over_10_mib() {
    let rows = usize::try_from(BIG_ROWS).unwrap();
    assert_eq!(rows * big_text(1).len(), BIG_BYTES);
    assert_eq!(big_text(1), "B".repeat(1024));
    assert_eq!(big_text(25), "Z".repeat(1024));
    assert_eq!(big_text(26), "A".repeat(1024));
    // Row numbers of 1 to 5 digits, a separator and a newline per row.
    let digits = 9 + 90 * 2 + 900 * 3 + 9000 * 4 + 241 * 5;
    let psql = psql_big_output();
    assert_eq!(psql.len(), BIG_BYTES + digits + 2 * rows);
    assert!(psql.starts_with(&format!("1|{}\n2|C", "B".repeat(1024))));
}

#[test]
fn the_psql_script_expects_every_result_it_prints() {
    let script = psql_script(3, Path::new("/tmp/it's.big"));
    let printed = script.expected.lines().count();
    // 950 loop results (the 50 inserts print nothing), the work after the rollback and the
    // closing line.
    assert_eq!(printed, 950 + 2);
    assert!(script.text.contains("\\o '/tmp/it''s.big'\n"));
    assert!(script.queries > LOOP_QUERIES);
    assert!(script.text.contains("\\set app weir-psql-3\n"));
    assert!(script
        .text
        .contains("\\set ON_ERROR_STOP 0\nSELECT 1 / :zero;\n"));
    assert!(script.expected.ends_with("checklist complete\n"));
    assert_eq!(script.text.matches("\\echo FAIL").count(), 10);
}

#[test]
fn the_pgbench_script_sends_the_queries_it_claims() {
    let script = pgbench_script();
    let statements = script.lines().filter(|l| !l.starts_with('\\')).count();
    // Every statement but the first run's large result, and BEGIN/COMMIT pairs counted too.
    assert_eq!(statements - 1, PGBENCH_QUERIES_PER_RUN);
}

#[test]
fn first_difference_names_the_line() {
    assert_eq!(first_difference("a\nb\n", "a\nb\n"), None);
    assert_eq!(first_difference(" 12 \n", "12\n"), None);
    let diff = first_difference("a\nFAIL x\n", "a\nb\n").unwrap();
    assert!(diff.contains("line 2") && diff.contains("FAIL x"), "{diff}");
    let diff = first_difference("a\n", "a\nb\n").unwrap();
    assert!(diff.contains("<end of output>"), "{diff}");
}

#[test]
fn ok_lines_are_read_strictly() {
    assert_eq!(
        ok_line_queries("ok pgx 20420 queries\n", "pgx"),
        Some(20420)
    );
    assert_eq!(ok_line_queries("noise\nok jdbc 5 queries", "jdbc"), Some(5));
    assert_eq!(ok_line_queries("ok pgx 20420 queries\n", "jdbc"), None);
    assert_eq!(ok_line_queries("ok pgx many queries\n", "pgx"), None);
    assert_eq!(ok_line_queries("ok pgx 3 queries extra\n", "pgx"), None);
    assert_eq!(ok_line_queries("FAIL pgx\n", "pgx"), None);
}

#[test]
fn a_missing_or_stale_artifact_says_what_to_run() {
    let dir = tempfile::tempdir().unwrap();
    let program = Program {
        driver: "x",
        dir: "",
        argv: &["x"],
        artifact: "out/x",
        inputs: &["src"],
    };
    std::fs::create_dir_all(dir.path().join("src/deep")).unwrap();
    std::fs::write(dir.path().join("src/deep/a.txt"), "a").unwrap();
    let err = check_installed(&program, dir.path()).unwrap_err();
    assert!(
        err.contains("not installed") && err.contains("install-drivers.sh"),
        "{err}"
    );

    std::fs::create_dir_all(dir.path().join("out")).unwrap();
    std::fs::write(dir.path().join("out/x"), "built").unwrap();
    let old = SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("src/deep/a.txt"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    check_installed(&program, dir.path()).unwrap();

    std::fs::write(dir.path().join("src/deep/b.txt"), "newer").unwrap();
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("out/x"))
        .unwrap()
        .set_modified(old)
        .unwrap();
    let err = check_installed(&program, dir.path()).unwrap_err();
    assert!(
        err.contains("out of date") && err.contains("b.txt"),
        "{err}"
    );
}
