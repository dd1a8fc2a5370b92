//! Replication connections through the pooler (`replication=database` / `replication=true`,
//! as PgBouncer 1.23+ allows): `pg_recvlogical`, `pg_receivewal` and `pg_basebackup` work
//! through weir as they do straight against PostgreSQL, each on a server connection of its own that closes
//! with the client and never serves anyone else.

use std::time::Duration;

use weir_tests::fixture::{self, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;
use weir_tests::postgres::{pg_bin, pg_tool, CommandOutput, PgOptions};
use weir_tests::raw::RawClient;
use weir_tests::weir::WeirProcess;

/// Bound on one run of a replication tool; each finishes in well under a second.
const TOOL_LIMIT: Duration = Duration::from_secs(30);

/// The harness's client authentication plus replication connections for every role.
const HBA: &str = "\
local   all          postgres                 trust
local   all          all                      md5
host    all          postgres  127.0.0.1/32   trust
host    all          all       127.0.0.1/32   md5
host    replication  all       127.0.0.1/32   md5
";

/// PostgreSQL with logical decoding, the application role allowed to replicate, and weir in
/// transaction mode in front.
async fn replicating() -> (Fixture, Options) {
    let opts = Options {
        postgres: PgOptions {
            extra_conf: vec![
                "wal_level = logical".into(),
                "max_wal_senders = 10".into(),
                "max_replication_slots = 10".into(),
            ],
            hba: Some(HBA.into()),
            ..PgOptions::default()
        },
        ..Options::mode("transaction", 2)
    };
    let f = Fixture::start(opts.clone()).await.expect("fixture");
    let su = f.pg.superuser().await.expect("superuser");
    su.batch_execute(&format!("ALTER ROLE {USER} REPLICATION"))
        .await
        .expect("granting REPLICATION");
    (f, opts)
}

async fn tool(port: u16, program: &str, args: &[&str]) -> CommandOutput {
    let out = pg_tool(
        program,
        (net::HOST, port),
        (USER, PASSWORD),
        args,
        TOOL_LIMIT,
    )
    .await
    .expect(program);
    assert_eq!(out.status, 0, "{program} {args:?} failed: {}", out.stderr);
    out
}

/// Walsender backends of the application role: replication connections open on the server.
async fn walsenders(f: &Fixture) -> i64 {
    let su = f.pg.superuser().await.expect("superuser");
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE usename = $1 AND backend_type = 'walsender'",
        &[&USER],
    )
    .await
    .expect("counting walsenders")
    .get(0)
}

/// Starts `pg_recvlogical --start` on `slot` through `port`, writing to `file`; it streams
/// until stopped (or its connection ends: `--no-loop`).
fn start_recvlogical(port: u16, slot: &str, file: &std::path::Path) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::new(pg_bin("pg_recvlogical"));
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("PG") {
            cmd.env_remove(key);
        }
    }
    let port = port.to_string();
    let path = file.to_string_lossy().into_owned();
    cmd.env("PGPASSWORD", PASSWORD)
        .args(["-h", net::HOST, "-p", &port, "-U", USER, "-d", DATABASE])
        .args([
            "--slot",
            slot,
            "--start",
            "--no-loop",
            "-F",
            "0",
            "-f",
            &path,
        ])
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("starting pg_recvlogical")
}

/// Runs `pg_recvlogical --start` on `slot` through `port` until its output holds every line
/// of `want`, then stops it.
async fn receive_changes(port: u16, slot: &str, want: &[String]) {
    let dir = tempfile::tempdir().expect("a directory for the output");
    let file = dir.path().join("changes.txt");
    let mut child = start_recvlogical(port, slot, &file);
    let got = Fixture::eventually(TOOL_LIMIT, || async {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        want.iter().all(|w| text.contains(w.as_str()))
    })
    .await;
    let _ = child.start_kill();
    let _ = child.wait().await;
    let text = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(
        got,
        "pg_recvlogical through port {port} did not stream {want:?}; it wrote:\n{text}"
    );
}

#[tokio::test]
async fn pg_recvlogical_streams_changes_through_weir_and_pgbouncer() {
    let (f, opts) = replicating().await;
    let bouncer = WeirProcess::start_pgbouncer(
        &fixture::ini(&f.pg, &opts),
        &format!("\"{USER}\" \"{PASSWORD}\"\n"),
    )
    .await
    .expect("starting PgBouncer");
    let app = f.client().await.expect("client");
    app.batch_execute("CREATE TABLE changes (id int PRIMARY KEY, note text)")
        .await
        .expect("table");
    for (pooler, port) in [("pgbouncer", bouncer.port()), ("weir", f.weir.port())] {
        let slot = format!("slot_{pooler}");
        let conn = ["-d", DATABASE, "--slot", &slot];
        tool(
            port,
            "pg_recvlogical",
            &[&conn[..], &["--create-slot", "-P", "test_decoding"]].concat(),
        )
        .await;
        app.batch_execute(&format!(
            "INSERT INTO changes SELECT g, '{pooler} ' || g FROM generate_series(1, 3) g; \
             DELETE FROM changes"
        ))
        .await
        .expect("changes");
        let want: Vec<String> = (1..=3)
            .map(|id| format!("INSERT: id[integer]:{id} note[text]:'{pooler} {id}'"))
            .collect();
        receive_changes(port, &slot, &want).await;
        // The slot is free again once the stopped client's connection is gone.
        assert!(
            Fixture::eventually(Duration::from_secs(10), || async {
                walsenders(&f).await == 0
            })
            .await,
            "{pooler}: the walsender stayed open after its client left"
        );
        tool(
            port,
            "pg_recvlogical",
            &[&conn[..], &["--drop-slot"]].concat(),
        )
        .await;
    }
    assert!(
        Fixture::eventually(Duration::from_secs(10), || async {
            walsenders(&f).await == 0
        })
        .await,
        "walsenders left open"
    );
    // Ordinary clients are still served from the pool.
    assert_eq!(
        fixture::scalar(&app, "SELECT count(*) FROM changes").await,
        "0"
    );
}

#[tokio::test]
async fn pg_receivewal_and_pg_basebackup_through_weir() {
    let (f, opts) = replicating().await;
    // Physical replication clients always ask for database "replication" (libpq sets it);
    // as with PgBouncer, the configuration names where that goes.
    let ini = fixture::ini(&f.pg, &opts).replacen(
        "[databases]\n",
        &format!(
            "[databases]\nreplication = host={} port={} dbname={DATABASE}\n",
            f.pg.host(),
            f.pg.port()
        ),
        1,
    );
    let weir = WeirProcess::start(&ini, &format!("\"{USER}\" \"{PASSWORD}\"\n"))
        .await
        .expect("starting weir");
    let dir = tempfile::tempdir().expect("a directory for the WAL");
    let app = f.client().await.expect("client");
    app.batch_execute("CREATE TABLE filler AS SELECT g FROM generate_series(1, 1000) g")
        .await
        .expect("some WAL");
    let lsn = fixture::scalar(&app, "SELECT pg_current_wal_lsn()::text").await;
    let path = dir.path().to_string_lossy().into_owned();
    tool(
        weir.port(),
        "pg_receivewal",
        &["-D", &path, "--no-loop", "--endpos", &lsn, "-n"],
    )
    .await;
    let files = std::fs::read_dir(dir.path())
        .expect("reading the WAL directory")
        .count();
    assert!(files > 0, "pg_receivewal wrote no WAL");
    // A base backup streams its WAL over a second replication connection alongside.
    let backup = tempfile::tempdir().expect("a directory for the backup");
    let backup_path = backup.path().join("data").to_string_lossy().into_owned();
    tool(
        weir.port(),
        "pg_basebackup",
        &["-D", &backup_path, "-c", "fast", "--no-sync"],
    )
    .await;
    assert!(
        backup.path().join("data/PG_VERSION").exists(),
        "pg_basebackup wrote no data directory"
    );
    assert!(
        Fixture::eventually(Duration::from_secs(10), || async {
            walsenders(&f).await == 0
        })
        .await,
        "the walsender stayed open"
    );
}

/// A replication client's `options` and tracked parameters (`application_name`, …) reach
/// its walsender in the startup packet, as PgBouncer sends them: logical and physical
/// connections `SHOW` them, and `pg_recvlogical` works with options set.
#[tokio::test]
async fn options_and_parameters_reach_the_walsender_through_weir_and_pgbouncer() {
    let (f, opts) = replicating().await;
    let bouncer = WeirProcess::start_pgbouncer(
        &fixture::ini(&f.pg, &opts),
        &format!("\"{USER}\" \"{PASSWORD}\"\n"),
    )
    .await
    .expect("starting PgBouncer");
    let options = "options='-c work_mem=7777kB -c extra_float_digits=2'";
    for (pooler, port) in [("pgbouncer", bouncer.port()), ("weir", f.weir.port())] {
        for replication in ["database", "true"] {
            let conninfo = format!(
                "dbname={DATABASE} replication={replication} application_name=cdc-{pooler} \
                 {options}"
            );
            let out = tool(
                port,
                "psql",
                &[
                    "-d",
                    &conninfo,
                    "-Atc",
                    "SHOW work_mem",
                    "-c",
                    "SHOW extra_float_digits",
                    "-c",
                    "SHOW application_name",
                ],
            )
            .await;
            assert_eq!(
                out.stdout,
                format!("7777kB\n2\ncdc-{pooler}\n"),
                "{pooler}, replication={replication}"
            );
        }
        let slot = format!("opts_{pooler}");
        let conninfo = format!("dbname={DATABASE} {options}");
        let conn = ["-d", &conninfo, "--slot", &slot];
        tool(
            port,
            "pg_recvlogical",
            &[&conn[..], &["--create-slot", "-P", "test_decoding"]].concat(),
        )
        .await;
        tool(
            port,
            "pg_recvlogical",
            &[&conn[..], &["--drop-slot"]].concat(),
        )
        .await;
    }
}

/// A value PostgreSQL would not take is refused at login, in PostgreSQL's words; a false
/// one is an ordinary connection.
#[tokio::test]
async fn the_replication_parameter_is_checked_at_login() {
    let f = Fixture::start(Options {
        auth_type: "trust",
        ..Options::mode("transaction", 2)
    })
    .await
    .expect("fixture");
    let mut c = RawClient::connect(f.weir.port()).await.expect("connecting");
    c.send_startup_with(USER, DATABASE, &[("replication", "sometimes")])
        .await
        .expect("startup");
    let replies = c.until_closed().await.expect("the refusal");
    let error = replies.iter().find(|r| r.tag == b'E').expect("an error");
    assert_eq!(error.error_field(b'C').as_deref(), Some("22023"));

    let mut c = RawClient::connect(f.weir.port()).await.expect("connecting");
    c.send_startup_with(USER, DATABASE, &[("replication", "off")])
        .await
        .expect("startup");
    loop {
        let reply = c.next().await.expect("login").expect("an answer");
        assert_ne!(reply.tag, b'E', "an ordinary connection is refused");
        if reply.tag == b'Z' {
            break;
        }
    }
}

/// KILL_CLIENT ends a replication client as any other: its walsender goes with it, and
/// `pg_recvlogical` sees its connection close.
#[tokio::test]
async fn kill_client_ends_a_replication_connection() {
    let (f, opts) = replicating().await;
    let weir = WeirProcess::start(
        &fixture::ini(&f.pg, &opts.with(&format!("admin_users = {USER}"))),
        &format!("\"{USER}\" \"{PASSWORD}\"\n"),
    )
    .await
    .expect("starting weir with a console user");
    let conn = ["-d", DATABASE, "--slot", "killed"];
    tool(
        weir.port(),
        "pg_recvlogical",
        &[&conn[..], &["--create-slot", "-P", "test_decoding"]].concat(),
    )
    .await;
    let dir = tempfile::tempdir().expect("a directory for the output");
    let mut child = start_recvlogical(weir.port(), "killed", &dir.path().join("out.txt"));
    assert!(
        Fixture::eventually(TOOL_LIMIT, || async { walsenders(&f).await == 1 }).await,
        "pg_recvlogical never streamed"
    );
    let admin = net::connect(weir.port(), USER, PASSWORD, "pgbouncer")
        .await
        .expect("console");
    let rows: Vec<_> = admin
        .simple_query("SHOW CLIENTS")
        .await
        .expect("SHOW CLIENTS")
        .into_iter()
        .filter_map(|m| match m {
            weir_tests::tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    let row = rows
        .iter()
        .find(|r| r.try_get("application_name").ok().flatten() == Some("pg_recvlogical"))
        .expect("pg_recvlogical in SHOW CLIENTS");
    // As PgBouncer names it; the console's own row is an ordinary connection.
    assert_eq!(row.try_get("replication").ok().flatten(), Some("logical"));
    assert!(rows
        .iter()
        .any(|r| r.try_get("replication").ok().flatten() == Some("none")));
    let id = row
        .try_get("id")
        .ok()
        .flatten()
        .map(str::to_owned)
        .expect("an id");
    admin
        .simple_query(&format!("KILL_CLIENT {id}"))
        .await
        .expect("KILL_CLIENT");
    let exited = tokio::time::timeout(TOOL_LIMIT, child.wait())
        .await
        .expect("pg_recvlogical still running after KILL_CLIENT")
        .expect("waiting for pg_recvlogical");
    assert!(!exited.success(), "pg_recvlogical saw no error");
    assert!(
        Fixture::eventually(Duration::from_secs(10), || async {
            walsenders(&f).await == 0
        })
        .await,
        "the walsender outlived its killed client"
    );
}
