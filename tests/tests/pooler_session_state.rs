//! Transaction mode with session state: protocol-level prepared statements on whichever server
//! connection a client gets, session SETs replayed and never leaked, and the state that cannot
//! move (temporary tables, LISTEN, SQL PREPARE) pinning the client or being refused.

use std::time::Duration;

use futures::StreamExt;
use tokio_postgres::{AsyncMessage, Client, NoTls};
use weir_tests::fixture::{self, scalar, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;
use weir_tests::postgres::parse_pgbench;
use weir_tests::raw::RawClient;

async fn backend_pid(client: &Client) -> String {
    scalar(client, "SELECT pg_backend_pid()").await
}

#[tokio::test]
async fn named_prepared_statements_follow_clients_across_server_connections() {
    let fx = Fixture::start(Options::mode("transaction", 2))
        .await
        .expect("fixture");
    let mut tasks = Vec::new();
    for c in 0..10i64 {
        let client = fx.client().await.expect("client");
        tasks.push(tokio::spawn(async move {
            // tokio-postgres prepares named statements (s0, s1, …) and binds them later:
            // with 10 clients over 2 connections, binds land on connections that never saw
            // the Parse.
            let add = client
                .prepare("SELECT $1::int8 + $2::int8")
                .await
                .expect("prepare");
            let text = client
                .prepare("SELECT $1::text || '!'")
                .await
                .expect("prepare");
            for i in 0..200i64 {
                let row = client.query_one(&add, &[&c, &i]).await.expect("add");
                assert_eq!(row.get::<_, i64>(0), c + i);
                if i % 20 == 0 {
                    let row = client
                        .query_one(&text, &[&format!("c{c}-{i}")])
                        .await
                        .expect("text");
                    assert_eq!(row.get::<_, String>(0), format!("c{c}-{i}!"));
                }
            }
            // Closing a statement and preparing the same text again works.
            drop(add);
            let again = client
                .prepare("SELECT $1::int8 + $2::int8")
                .await
                .expect("again");
            let row = client
                .query_one(&again, &[&1i64, &2i64])
                .await
                .expect("again");
            assert_eq!(row.get::<_, i64>(0), 3);
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert!(fx.server_connections().await.expect("count") <= 2);
}

#[tokio::test]
async fn a_failing_prepared_statement_does_not_confuse_the_connection() {
    let fx = Fixture::start(Options::mode("transaction", 1))
        .await
        .expect("fixture");
    let client = fx.client().await.expect("client");
    let err = client
        .prepare("SELECT * FROM no_such_table WHERE id = $1")
        .await
        .expect_err("parse error");
    assert_eq!(fixture::sqlstate(&err), Some("42P01"));
    let ok = client.prepare("SELECT $1::int4").await.expect("prepare");
    let row = client.query_one(&ok, &[&7i32]).await.expect("query");
    assert_eq!(row.get::<_, i32>(0), 7);
    let err = client
        .query_one("SELECT 1 / $1::int4", &[&0i32])
        .await
        .expect_err("division by zero at execution");
    assert_eq!(fixture::sqlstate(&err), Some("22012"));
    let row = client
        .query_one(&ok, &[&8i32])
        .await
        .expect("after the error");
    assert_eq!(row.get::<_, i32>(0), 8);
}

#[tokio::test]
async fn pgbench_prepared_in_transaction_mode() {
    let fx = Fixture::start(Options::mode("transaction", 5))
        .await
        .expect("fixture");
    let init = fx
        .pgbench_direct(&["-i", "-q", "-s", "1"])
        .await
        .expect("init");
    assert!(init.success(), "{}", init.stderr);
    let out = fx
        .pgbench(&[
            "-n", "-S", "-M", "prepared", "-c", "50", "-j", "2", "-t", "100",
        ])
        .await
        .expect("pgbench");
    assert!(
        out.success(),
        "{}\n{}\n{}",
        out.stdout,
        out.stderr,
        fx.weir.log()
    );
    let summary = parse_pgbench(&out.stdout).expect("report");
    assert_eq!(summary.failed, 0);
    assert_eq!(summary.transactions, 5000);
}

#[tokio::test]
async fn session_settings_are_replayed_on_another_server_connection() {
    let fx = Fixture::start(Options::mode("transaction", 2))
        .await
        .expect("fixture");
    let a = fx.client().await.expect("a");
    let b = fx.client().await.expect("b");
    a.batch_execute("SET statement_timeout = '4321ms'")
        .await
        .expect("SET");
    let first = backend_pid(&a).await;
    // b takes the connection a just returned (the most recently used) and keeps it.
    b.batch_execute("BEGIN").await.expect("BEGIN");
    assert_eq!(backend_pid(&b).await, first);
    // a now runs on the other connection, where its SET is replayed first.
    assert_ne!(backend_pid(&a).await, first);
    assert_eq!(scalar(&a, "SHOW statement_timeout").await, "4321ms");
    // b's connection carried a's setting before; b must not see it.
    assert_eq!(scalar(&b, "SHOW statement_timeout").await, "0");
    b.batch_execute("COMMIT").await.expect("COMMIT");
}

#[tokio::test]
async fn settings_never_leak_to_the_next_client() {
    let fx = Fixture::start(Options::mode("transaction", 1))
        .await
        .expect("fixture");
    fx.pg
        .execute("CREATE ROLE reader NOLOGIN; GRANT reader TO app")
        .await
        .expect("role");
    let a = fx.client().await.expect("a");
    a.batch_execute("CREATE SCHEMA private; SET search_path TO private; SET ROLE reader")
        .await
        .expect("SETs");
    assert_eq!(scalar(&a, "SHOW search_path").await, "private");
    assert_eq!(scalar(&a, "SELECT current_user").await, "reader");

    // One server connection: b uses the very connection a configured.
    let b = fx.client().await.expect("b");
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);
    assert_eq!(scalar(&b, "SELECT current_user").await, "app");
    assert_eq!(scalar(&b, "SHOW search_path").await, "\"$user\", public");
    // …and a keeps its own settings on its next transaction.
    assert_eq!(scalar(&a, "SELECT current_user").await, "reader");
    assert_eq!(scalar(&a, "SHOW search_path").await, "private");
    drop(a);
    let c = fx.client().await.expect("c");
    assert_eq!(scalar(&c, "SELECT current_user").await, "app");
    assert_eq!(scalar(&c, "SHOW search_path").await, "\"$user\", public");
}

#[tokio::test]
async fn rolled_back_and_reset_settings_are_not_replayed() {
    let fx = Fixture::start(Options::mode("transaction", 1))
        .await
        .expect("fixture");
    let a = fx.client().await.expect("a");
    let b = fx.client().await.expect("b");
    a.batch_execute("BEGIN; SET work_mem = '7MB'; ROLLBACK")
        .await
        .expect("rolled back SET");
    // SET LOCAL ends with its transaction.
    a.batch_execute("BEGIN; SET LOCAL work_mem = '9MB'; COMMIT")
        .await
        .expect("SET LOCAL");
    b.batch_execute("SELECT 1").await.expect("b in between");
    assert_eq!(scalar(&a, "SHOW work_mem").await, "4MB");
    a.batch_execute("SET work_mem = '8MB'").await.expect("SET");
    b.batch_execute("SELECT 1").await.expect("b in between");
    assert_eq!(scalar(&a, "SHOW work_mem").await, "8MB");
    a.batch_execute("RESET ALL").await.expect("RESET ALL");
    b.batch_execute("SET work_mem = '6MB'")
        .await
        .expect("b's own");
    assert_eq!(scalar(&a, "SHOW work_mem").await, "4MB");
    assert_eq!(scalar(&b, "SHOW work_mem").await, "6MB");
}

#[tokio::test]
async fn a_temporary_table_pins_the_client_until_it_leaves() {
    let fx = Fixture::start(Options::mode("transaction", 2))
        .await
        .expect("fixture");
    let a = fx.client().await.expect("a");
    a.batch_execute("CREATE TEMP TABLE scratch (v int); INSERT INTO scratch VALUES (1)")
        .await
        .expect("temp table");
    let pinned_pid = backend_pid(&a).await;
    let b = fx.client().await.expect("b");
    for _ in 0..5 {
        assert_ne!(
            backend_pid(&b).await,
            pinned_pid,
            "b got a's pinned connection"
        );
        assert_eq!(scalar(&a, "SELECT count(*) FROM scratch").await, "1");
    }
    drop(a);
    // The pinned connection is reset before anyone else gets it: no temp table survives.
    let empty = Fixture::eventually(Duration::from_secs(5), || async {
        let c = fx.client().await.expect("c");
        let d = fx.client().await.expect("d");
        c.batch_execute("BEGIN").await.expect("BEGIN");
        d.batch_execute("BEGIN").await.expect("BEGIN");
        let temp = scalar(
            &c,
            "SELECT count(*) FROM pg_class WHERE relpersistence = 't'",
        )
        .await
            == "0"
            && scalar(
                &d,
                "SELECT count(*) FROM pg_class WHERE relpersistence = 't'",
            )
            .await
                == "0";
        c.batch_execute("COMMIT").await.expect("COMMIT");
        d.batch_execute("COMMIT").await.expect("COMMIT");
        temp
    })
    .await;
    assert!(empty, "a temporary table survived its client");
}

#[tokio::test]
async fn listen_in_transaction_mode_pins_and_delivers_notifications() {
    let fx = Fixture::start(Options::mode("transaction", 2))
        .await
        .expect("fixture");
    let config = net::client_config(fx.weir.port(), USER, PASSWORD, DATABASE);
    let (listener, mut connection) = config.connect(NoTls).await.expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if tx.send(m).is_err() {
                break;
            }
        }
    });
    listener.batch_execute("LISTEN jobs").await.expect("LISTEN");
    let notifier = fx.client().await.expect("notifier");
    for i in 0..3 {
        notifier
            .batch_execute(&format!("NOTIFY jobs, 'job-{i}'"))
            .await
            .expect("NOTIFY");
    }
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("notification within 10 s")
            .expect("connection alive");
        if let AsyncMessage::Notification(n) = m {
            got.push(n.payload().to_owned());
        }
    }
    assert_eq!(got, vec!["job-0", "job-1", "job-2"]);
}

#[tokio::test]
async fn sql_prepare_pins_and_keeps_working() {
    let fx = Fixture::start(Options::mode("transaction", 2))
        .await
        .expect("fixture");
    let a = fx.client().await.expect("a");
    let b = fx.client().await.expect("b");
    a.batch_execute("PREPARE double(int) AS SELECT $1 * 2")
        .await
        .expect("PREPARE");
    for i in 0..5 {
        b.batch_execute("SELECT 1").await.expect("b");
        assert_eq!(
            scalar(&a, &format!("EXECUTE double({i})")).await,
            (i * 2).to_string()
        );
    }
}

#[tokio::test]
async fn pinning_refuse_explains_itself() {
    let fx = Fixture::start(Options::mode("transaction", 2).with("pinning = refuse"))
        .await
        .expect("fixture");
    let a = fx.client().await.expect("a");
    let err = a
        .batch_execute("CREATE TEMP TABLE t (v int)")
        .await
        .expect_err("refused");
    assert_eq!(fixture::sqlstate(&err), Some("0A000"));
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(message.contains("temporary table"), "{message}");
    // Refused before reaching the server: nothing was created, and the client goes on.
    assert_eq!(
        scalar(
            &a,
            "SELECT count(*) FROM pg_class WHERE relpersistence = 't'"
        )
        .await,
        "0"
    );
    let err = a
        .query_one("SELECT pg_advisory_lock($1::int8)", &[&1i64])
        .await
        .expect_err("refused in the extended protocol too");
    assert_eq!(fixture::sqlstate(&err), Some("0A000"));
    assert_eq!(scalar(&a, "SELECT 41 + 1").await, "42");
}

/// Statements that change session state in ways the statement classifier once missed: each
/// either pins (and is reset when its client leaves), is refused, or is tracked and undone.
const HIDDEN_STATE: &[&str] = &[
    "SELECT set_config('search_path', 'private', false)",
    "select 1, PG_CATALOG.SET_CONFIG ( 'search_path' , 'private' , (1 = 2) )",
    // standard_conforming_strings is on: the backslash is a character and the quote ends
    // the string, so the SET is a statement of its own.
    "SELECT '\\'; SET search_path = private; --'",
    "SET/**/search_path = private",
    "SELECT 1 AS x$a$; SET search_path = private; SELECT 1 AS y$a$",
    "DO $$ BEGIN EXECUTE 'SET search_path = private'; END $$",
];

const DEFAULT_PATH: &str = "\"$user\", public";

#[tokio::test]
async fn hidden_session_state_never_reaches_another_client() {
    let fx = Fixture::start(Options::mode("transaction", 1).with("pinning = refuse"))
        .await
        .expect("fixture");
    fx.pg
        .execute("CREATE SCHEMA private AUTHORIZATION app")
        .await
        .expect("schema");
    for sql in HIDDEN_STATE {
        let a = fx.client().await.expect("a");
        // Refused or tracked: either way nothing may reach the next client.
        let _ = a.batch_execute(sql).await;
        // One server connection: b gets the very connection a just used.
        let b = fx.client().await.expect("b");
        assert_eq!(
            scalar(&b, "SHOW search_path").await,
            DEFAULT_PATH,
            "{sql} leaked to another client"
        );
    }
}

#[tokio::test]
async fn hidden_session_state_pins_and_is_reset_when_its_client_leaves() {
    let fx = Fixture::start(Options::mode("transaction", 1))
        .await
        .expect("fixture");
    fx.pg
        .execute("CREATE SCHEMA private AUTHORIZATION app")
        .await
        .expect("schema");
    for sql in HIDDEN_STATE {
        let a = fx.client().await.expect("a");
        a.batch_execute(sql).await.expect(sql);
        assert_eq!(scalar(&a, "SHOW search_path").await, "private", "{sql}");
        // Pinned or tracked, a keeps its setting across transactions.
        assert_eq!(scalar(&a, "SHOW search_path").await, "private", "{sql}");
        drop(a);
        let b = fx.client().await.expect("b");
        assert_eq!(
            scalar(&b, "SHOW search_path").await,
            DEFAULT_PATH,
            "{sql} leaked to the next client"
        );
    }
}

#[tokio::test]
async fn deallocating_a_pooler_statement_name_is_refused() {
    let fx = Fixture::start(Options::mode("transaction", 1))
        .await
        .expect("fixture");
    let a = fx.client().await.expect("a");
    let b = fx.client().await.expect("b");
    let add = b.prepare("SELECT $1::int8 + 1").await.expect("prepare");
    assert_eq!(
        b.query_one(&add, &[&1i64])
            .await
            .expect("bind")
            .get::<_, i64>(0),
        2
    );
    let name = scalar(&b, "SELECT name FROM pg_prepared_statements").await;
    assert!(name.starts_with("weir_"), "{name}");
    for sql in [
        format!("DEALLOCATE {name}"),
        format!("deallocate prepare \"{name}\""),
        format!("PREPARE {name} AS SELECT 1"),
    ] {
        let err = a.batch_execute(&sql).await.expect_err(&sql);
        assert_eq!(fixture::sqlstate(&err), Some("42939"), "{sql}: {err}");
        // b's statement still works on the one server connection.
        let row = b.query_one(&add, &[&2i64]).await.expect("bind after");
        assert_eq!(row.get::<_, i64>(0), 3);
    }
    assert_eq!(scalar(&a, "SELECT 41 + 1").await, "42");
}

#[tokio::test]
async fn a_refused_query_gives_its_connection_back() {
    let fx = Fixture::start(
        Options::mode("transaction", 1)
            .with("pinning = refuse")
            .with("query_wait_timeout = 10"),
    )
    .await
    .expect("fixture");
    let a = fx.client().await.expect("a");
    let b = fx.client().await.expect("b");
    a.simple_query("SELECT 1").await.expect("a's connection");
    let err = a
        .batch_execute("CREATE TEMP TABLE t (v int)")
        .await
        .expect_err("refused");
    assert_eq!(fixture::sqlstate(&err), Some("0A000"));
    // a is idle again, so the one server connection is free for b.
    assert_eq!(scalar(&b, "SELECT 41 + 1").await, "42");
    assert_eq!(scalar(&a, "SELECT 6 * 7").await, "42");
}

#[tokio::test]
async fn a_set_kept_past_a_savepoint_rollback_never_reaches_another_client() {
    let fx = Fixture::start(Options::mode("transaction", 1))
        .await
        .expect("fixture");
    let a = fx.client().await.expect("a");
    let b = fx.client().await.expect("b");
    // ROLLBACK TO SAVEPOINT reports the tag ROLLBACK, but the SET before it commits.
    a.batch_execute(
        "BEGIN; SET search_path = private; SAVEPOINT s; SELECT 1; ROLLBACK TO s; COMMIT",
    )
    .await
    .expect("transaction");
    assert_eq!(scalar(&b, "SHOW search_path").await, DEFAULT_PATH);
    a.batch_execute("BEGIN; SET work_mem = '7MB'; SAVEPOINT s")
        .await
        .expect("savepoint");
    let _ = a.batch_execute("SELECT 1/0").await;
    a.batch_execute("ROLLBACK TO s; COMMIT")
        .await
        .expect("recovered");
    assert_eq!(scalar(&b, "SHOW work_mem").await, "4MB");
}

/// A client cannot Bind or Describe a statement the pooler prepared for another client by
/// naming its server-side `weir_<n>` directly: it gets PostgreSQL's 26000, as if the
/// statement did not exist, and its session goes on.
#[tokio::test]
async fn another_clients_server_statement_cannot_be_used_by_name() {
    let fx = Fixture::start(Options::mode("transaction", 1))
        .await
        .expect("fixture");
    let owner = fx.client().await.expect("owner");
    let secret = owner
        .prepare("SELECT 'owner only'::text")
        .await
        .expect("prepare");
    owner.query_one(&secret, &[]).await.expect("owner runs it");
    let name = scalar(&owner, "SELECT name FROM pg_prepared_statements").await;
    assert!(name.starts_with("weir_"), "{name}");

    let mut other = RawClient::connect(fx.weir.port()).await.expect("connect");
    other.send_startup(USER, DATABASE).await.expect("startup");
    other
        .authenticate(USER, PASSWORD)
        .await
        .expect("auth exchange")
        .expect("logged in");
    while other.next().await.expect("read").expect("open").tag != b'Z' {}

    let cstr = |s: &str| [s.as_bytes(), &[0]].concat();
    // Bind "" to the owner's statement, Execute, Sync.
    let mut bind = cstr("");
    bind.extend_from_slice(&cstr(&name));
    bind.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    other.send(b'B', &bind).await.expect("bind");
    other
        .send(b'E', &[&cstr("")[..], &[0, 0, 0, 0]].concat())
        .await
        .expect("execute");
    other.send(b'S', &[]).await.expect("sync");
    // Describe the owner's statement, Sync.
    other
        .send(b'D', &[&b"S"[..], &cstr(&name)].concat())
        .await
        .expect("describe");
    other.send(b'S', &[]).await.expect("sync");

    let mut codes = Vec::new();
    let mut ready = 0;
    while ready < 2 {
        let reply = other.next().await.expect("read").expect("still open");
        match reply.tag {
            b'E' => codes.push(reply.error_field(b'C').unwrap_or_default()),
            b'D' | b'T' => panic!("the other client's statement ran or was described"),
            b'Z' => ready += 1,
            _ => {}
        }
    }
    assert_eq!(codes, ["26000", "26000"]);
    // The owner's statement is untouched.
    owner
        .query_one(&secret, &[])
        .await
        .expect("owner runs it again");
}
