//! Pool modes against a real PostgreSQL: what each mode keeps, shares and refuses, with the
//! simple and the extended protocol, COPY, notices and notifications, and the parameters each
//! client set at startup.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio_postgres::types::Type;
use tokio_postgres::{AsyncMessage, NoTls};
use weir_tests::fixture::{self, backend_pid, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;

async fn show(client: &tokio_postgres::Client, setting: &str) -> String {
    let rows = client
        .simple_query(&format!("SHOW {setting}"))
        .await
        .expect("SHOW");
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .expect("a row")
}

#[tokio::test]
async fn session_mode_keeps_state_and_resets_it_for_the_next_client() {
    let fx = Fixture::start(Options::mode("session", 1))
        .await
        .expect("fixture");
    let a = fx.client().await.expect("client a");
    a.batch_execute("SET statement_timeout = '1234ms'")
        .await
        .expect("SET");
    a.batch_execute("BEGIN; SELECT 1; COMMIT")
        .await
        .expect("tx");
    assert_eq!(show(&a, "statement_timeout").await, "1234ms");
    let pid = backend_pid(&a).await;
    drop(a);

    // Pool size 1: the next client gets the same server connection, reset by DISCARD ALL.
    let b = fx.client().await.expect("client b");
    assert_eq!(backend_pid(&b).await, pid);
    assert_eq!(show(&b, "statement_timeout").await, "0");
}

#[tokio::test]
async fn transaction_mode_shares_a_server_between_transactions() {
    let fx = Fixture::start(Options::mode("transaction", 1))
        .await
        .expect("fixture");
    let a = fx.client().await.expect("client a");
    let b = fx.client().await.expect("client b");
    assert_eq!(backend_pid(&a).await, backend_pid(&b).await);

    a.batch_execute("BEGIN").await.expect("BEGIN");
    let waiting = tokio::spawn(async move {
        let row = b.query_one("SELECT 42", &[]).await.expect("query of b");
        row.get::<_, i32>(0)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "b ran while a held the only server connection in a transaction"
    );
    a.batch_execute("COMMIT").await.expect("COMMIT");
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("b finished after a committed")
        .expect("join");
    assert_eq!(answer, 42);
    assert_eq!(fx.server_connections().await.expect("count"), 1);
}

#[tokio::test]
async fn statement_mode_refuses_transaction_blocks() {
    let fx = Fixture::start(Options::mode("statement", 1))
        .await
        .expect("fixture");
    let client = fx.client().await.expect("client");
    client
        .batch_execute("CREATE TABLE t (v int)")
        .await
        .expect("table");

    let err = client
        .batch_execute("BEGIN; INSERT INTO t VALUES (1)")
        .await
        .expect_err("a transaction block in statement mode");
    assert_eq!(fixture::sqlstate(&err), Some("0A000"), "{err:?}");
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(
        message.contains("statement pooling mode"),
        "unexpected message: {message}"
    );
    // Rolled back, and the session goes on outside any transaction.
    let count: i64 = client
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 0);
    client
        .batch_execute("INSERT INTO t VALUES (2)")
        .await
        .expect("autocommit statement");
    let other = fx.client().await.expect("second client");
    let count: i64 = other
        .query_one("SELECT count(*) FROM t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn extended_protocol_and_errors_inside_transactions() {
    let fx = Fixture::start(Options::mode("transaction", 2))
        .await
        .expect("fixture");
    let client = fx.client().await.expect("client");
    for i in 0..200i32 {
        let row = client
            .query_typed_one("SELECT $1::int4 * 2", &[(&i, Type::INT4)])
            .await
            .expect("unnamed extended query");
        assert_eq!(row.get::<_, i32>(0), i * 2);
    }

    client.batch_execute("BEGIN").await.expect("BEGIN");
    let err = client
        .batch_execute("SELECT 1/0")
        .await
        .expect_err("division by zero");
    assert_eq!(fixture::sqlstate(&err), Some("22012"));
    let err = client
        .batch_execute("SELECT 1")
        .await
        .expect_err("statement in an aborted transaction");
    assert_eq!(fixture::sqlstate(&err), Some("25P02"));
    client.batch_execute("ROLLBACK").await.expect("ROLLBACK");
    let row = client
        .query_typed_one("SELECT $1::text", &[(&"after", Type::TEXT)])
        .await
        .expect("after rollback");
    assert_eq!(row.get::<_, &str>(0), "after");
}

#[tokio::test]
async fn copy_in_and_out_stream_through() {
    // Pool size 1 keeps tokio-postgres's two-step COPY on one server connection.
    let fx = Fixture::start(Options::mode("transaction", 1))
        .await
        .expect("fixture");
    let client = fx.client().await.expect("client");
    client
        .batch_execute("CREATE TABLE items (id int, name text)")
        .await
        .expect("table");
    let rows = 100_000;
    let sink = client
        .copy_in("COPY items FROM STDIN")
        .await
        .expect("COPY FROM STDIN");
    futures::pin_mut!(sink);
    let mut chunk = String::new();
    for i in 0..rows {
        chunk.push_str(&format!("{i}\tname-{i}\n"));
        if chunk.len() > 64 * 1024 {
            sink.send(bytes::Bytes::from(std::mem::take(&mut chunk)))
                .await
                .expect("copy data");
        }
    }
    sink.send(bytes::Bytes::from(chunk))
        .await
        .expect("copy data");
    let copied = sink.finish().await.expect("COPY done");
    assert_eq!(copied, rows);

    let stream = client
        .copy_out("COPY (SELECT id, name FROM items ORDER BY id) TO STDOUT")
        .await
        .expect("COPY TO STDOUT");
    futures::pin_mut!(stream);
    let mut out = Vec::new();
    while let Some(chunk) = stream.next().await {
        out.extend_from_slice(&chunk.expect("copy out data"));
    }
    let text = String::from_utf8(out).expect("utf8");
    assert_eq!(text.lines().count() as u64, rows);
    assert_eq!(text.lines().nth(12_345), Some("12345\tname-12345"));

    // A failed COPY is reported and leaves the session usable.
    let err = client
        .batch_execute("COPY items FROM '/nonexistent/file'")
        .await
        .expect_err("server-side COPY from a missing file");
    assert!(fixture::sqlstate(&err).is_some());
    let n: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n as u64, rows);
}

#[tokio::test]
async fn psql_copy_through_the_pooler() {
    let fx = Fixture::start(Options::mode("transaction", 2))
        .await
        .expect("fixture");
    let out = fx
        .psql("CREATE TABLE c AS SELECT g AS v FROM generate_series(1, 1000) g")
        .await
        .expect("psql");
    assert!(out.success(), "{}", out.stderr);
    let out = fx
        .psql("COPY (SELECT sum(v) FROM c) TO STDOUT")
        .await
        .expect("psql");
    assert!(out.success(), "{}", out.stderr);
    assert_eq!(out.stdout.trim(), "500500");
}

/// Connects through weir and forwards the connection's notices and notifications.
async fn listening_client(
    port: u16,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<AsyncMessage>,
) {
    let config = net::client_config(port, USER, PASSWORD, DATABASE);
    let (client, mut connection) = config.connect(NoTls).await.expect("connect");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if tx.send(m).is_err() {
                break;
            }
        }
    });
    (client, rx)
}

#[tokio::test]
async fn notices_and_notifications_pass_through() {
    let fx = Fixture::start(Options::mode("session", 3))
        .await
        .expect("fixture");
    let (listener, mut messages) = listening_client(fx.weir.port()).await;
    listener
        .batch_execute("DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$; LISTEN weir_test")
        .await
        .expect("notice and listen");
    let notifier = fx.client().await.expect("notifier");
    notifier
        .batch_execute("NOTIFY weir_test, 'ping'")
        .await
        .expect("notify");

    let mut saw_notice = false;
    let mut payload = None;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while payload.is_none() {
        let m = tokio::time::timeout_at(deadline, messages.recv())
            .await
            .expect("messages within 10 s")
            .expect("connection alive");
        match m {
            AsyncMessage::Notice(n) => {
                saw_notice |= n.message() == "hello from the server";
            }
            AsyncMessage::Notification(n) => {
                assert_eq!(n.channel(), "weir_test");
                payload = Some(n.payload().to_owned());
            }
            _ => {}
        }
    }
    assert!(saw_notice, "the NOTICE did not reach the client");
    assert_eq!(payload.as_deref(), Some("ping"));
}

#[tokio::test]
async fn each_client_keeps_its_own_startup_and_reported_parameters() {
    let fx = Fixture::start(Options::mode("transaction", 1))
        .await
        .expect("fixture");
    let alpha = fx.client_named("alpha").await.expect("alpha");
    let beta = fx.client_named("beta").await.expect("beta");
    let default_zone = show(&beta, "TimeZone").await;
    alpha
        .batch_execute("SET TimeZone = 'Asia/Tokyo'")
        .await
        .expect("SET TimeZone");
    for _ in 0..5 {
        // One server connection serves both, switched over on every transaction.
        assert_eq!(show(&alpha, "application_name").await, "alpha");
        assert_eq!(show(&beta, "application_name").await, "beta");
        assert_eq!(show(&alpha, "TimeZone").await, "Asia/Tokyo");
        assert_eq!(show(&beta, "TimeZone").await, default_zone);
    }
    assert_eq!(backend_pid(&alpha).await, backend_pid(&beta).await);
}

#[tokio::test]
async fn large_results_stream_without_loss() {
    let fx = Fixture::start(Options::mode("transaction", 2))
        .await
        .expect("fixture");
    let client = fx.client().await.expect("client");
    // 20,000 rows of 1,000 bytes: 20 MB through the relay.
    let rows = client
        .query(
            "SELECT g, repeat('x', 1000) FROM generate_series(1, 20000) g",
            &[],
        )
        .await
        .expect("large query");
    assert_eq!(rows.len(), 20_000);
    let total: usize = rows.iter().map(|r| r.get::<_, &str>(1).len()).sum();
    assert_eq!(total, 20_000_000);
    assert_eq!(rows[19_999].get::<_, i32>(0), 20_000);
}

#[tokio::test]
async fn pipelined_queries_from_many_clients_all_get_their_own_answers() {
    let fx = Fixture::start(Options::mode("transaction", 2))
        .await
        .expect("fixture");
    let mut tasks = Vec::new();
    for c in 0..20i32 {
        let client = fx.client().await.expect("client");
        tasks.push(tokio::spawn(async move {
            // tokio-postgres pipelines concurrent queries on one connection.
            let queries = (0..50i32).map(|i| {
                let client = &client;
                async move {
                    let v = c * 1000 + i;
                    let row = client
                        .query_typed_one("SELECT $1::int4", &[(&v, Type::INT4)])
                        .await
                        .expect("query");
                    assert_eq!(row.get::<_, i32>(0), v);
                }
            });
            futures::future::join_all(queries).await;
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    assert!(fx.server_connections().await.expect("count") <= 2);
}

/// A TCP proxy to PostgreSQL on `upstream` whose new connections, while `hold` is true, are
/// announced on `arrived`, kept waiting until `hold` turns false, and announced again once
/// both ends have closed.
async fn holding_proxy(
    upstream: u16,
    hold: tokio::sync::watch::Receiver<bool>,
    arrived: tokio::sync::mpsc::UnboundedSender<&'static str>,
) -> u16 {
    let listener = tokio::net::TcpListener::bind((net::HOST, 0))
        .await
        .expect("proxy listens");
    let port = listener.local_addr().expect("proxy address").port();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let mut hold = hold.clone();
            let arrived = arrived.clone();
            tokio::spawn(async move {
                let held = *hold.borrow_and_update();
                if held {
                    let _ = arrived.send("held");
                    let _ = hold.wait_for(|held| !*held).await;
                }
                if let Ok(mut server) = tokio::net::TcpStream::connect((net::HOST, upstream)).await
                {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                if held {
                    let _ = arrived.send("closed");
                }
            });
        }
    });
    port
}

/// Whether a query containing `text` is waiting for a lock, as PostgreSQL sees it.
async fn waits_for_lock(observer: &tokio_postgres::Client, text: &str) -> bool {
    let rows = observer
        .query(
            "SELECT 1 FROM pg_stat_activity WHERE wait_event_type = 'Lock' \
             AND query LIKE '%' || $1 || '%' AND pid <> pg_backend_pid()",
            &[&text],
        )
        .await
        .expect("pg_stat_activity");
    !rows.is_empty()
}

#[tokio::test]
async fn a_cancel_never_stops_the_next_client_of_its_connection() {
    let mut fx = Fixture::start(Options::mode("transaction", 1))
        .await
        .expect("fixture");
    // Weir reaches PostgreSQL through a proxy that can hold a cancel request on its way, so
    // the connection can change hands while a cancel for its previous holder is in flight.
    let (hold, hold_rx) = tokio::sync::watch::channel(false);
    let (arrived_tx, mut arrived) = tokio::sync::mpsc::unbounded_channel();
    let proxy = holding_proxy(fx.pg.port(), hold_rx, arrived_tx).await;
    let ini = fixture::ini(&fx.pg, &Options::mode("transaction", 1)).replace(
        &format!("port={} ", fx.pg.port()),
        &format!("port={proxy} "),
    );
    fx.weir = weir_tests::weir::WeirProcess::start(&ini, &format!("\"{USER}\" \"{PASSWORD}\"\n"))
        .await
        .expect("weir through the proxy");
    let locker = fx
        .pg
        .connect(USER, PASSWORD, DATABASE)
        .await
        .expect("locker");
    let a = fx.client().await.expect("a");
    let b = fx.client().await.expect("b");
    // The one server connection is opened (through the proxy) before cancels are held.
    a.simple_query("SELECT 1").await.expect("warm up");

    // A cancel while a's query runs still stops it.
    locker
        .simple_query("SELECT pg_advisory_lock(1), pg_advisory_lock(2)")
        .await
        .expect("locks");
    let token = a.cancel_token();
    let a = tokio::spawn(async move {
        let err = a
            .simple_query("SELECT pg_advisory_xact_lock(1) /* first */")
            .await
            .expect_err("cancelled");
        assert_eq!(fixture::sqlstate(&err), Some("57014"), "{err}");
        a
    });
    assert!(
        Fixture::eventually(Duration::from_secs(30), || waits_for_lock(&locker, "first")).await,
        "a's first query never waited for the lock"
    );
    token.cancel_query(NoTls).await.expect("cancel");
    let a = a.await.expect("a's first query");

    // Now the race: a's cancel is forwarded while a's query runs, and held; a's query ends;
    // b, waiting for the one connection, must not be hit by the cancel meant for a.
    hold.send_replace(true);
    let a_query = tokio::spawn(async move {
        a.simple_query("SELECT pg_advisory_xact_lock(1) /* second */")
            .await
            .map(|_| ())
    });
    assert!(
        Fixture::eventually(Duration::from_secs(30), || waits_for_lock(
            &locker, "second"
        ))
        .await,
        "a's second query never waited for the lock"
    );
    let cancel = tokio::spawn(async move { token.cancel_query(NoTls).await });
    let held = tokio::time::timeout(Duration::from_secs(30), arrived.recv())
        .await
        .unwrap_or_else(|_| {
            panic!(
                "weir did not forward a cancel for a running query; its log:\n{}",
                fx.weir.log()
            )
        });
    assert_eq!(held, Some("held"));
    let b_query = tokio::spawn(async move {
        b.simple_query("SELECT pg_advisory_xact_lock(2) /* b */")
            .await
            .map(|_| ())
    });
    locker
        .simple_query("SELECT pg_advisory_unlock(1)")
        .await
        .expect("unlock 1");
    a_query
        .await
        .expect("a's task")
        .expect("a's query finished before its cancel landed");
    // Give b's query the chance to start on the connection before the cancel lands (it never
    // does while a cancel for a is in flight, so this wait is bounded).
    let _ = Fixture::eventually(Duration::from_secs(2), || {
        waits_for_lock(&locker, "/* b */")
    })
    .await;
    hold.send_replace(false);
    cancel.await.expect("cancel task").expect("cancel sent");
    // PostgreSQL has acted on the cancel once it closes the connection that carried it.
    let closed = tokio::time::timeout(Duration::from_secs(30), arrived.recv())
        .await
        .expect("the cancel is delivered");
    assert_eq!(closed, Some("closed"));
    locker
        .simple_query("SELECT pg_advisory_unlock(2)")
        .await
        .expect("unlock 2");
    if let Err(err) = b_query.await.expect("b's task") {
        panic!(
            "b's query failed: {err} (SQLSTATE {:?})",
            fixture::sqlstate(&err)
        );
    }
}
