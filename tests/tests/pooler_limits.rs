//! Limits and pool upkeep against a real PostgreSQL: max_client_conn, query_wait_timeout,
//! the server-connection cap under 500 clients, min_pool_size, the reserve pool, and reaping
//! by server_idle_timeout and server_lifetime.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::Type;
use tokio_postgres::SimpleQueryMessage;
use weir_tests::fixture::{self, backend_pid, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;
use weir_tests::raw::{RawClient, Reply};

#[tokio::test]
async fn max_client_conn_refuses_the_extra_client() {
    let fx = Fixture::start(Options::mode("transaction", 2).with("max_client_conn = 3"))
        .await
        .expect("fixture");
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(fx.client().await.expect("client within the limit"));
    }
    let err = fx.client().await.expect_err("a fourth client");
    let err = err
        .downcast_ref::<tokio_postgres::Error>()
        .expect("a PostgreSQL error");
    assert_eq!(fixture::sqlstate(err), Some("53300"));
    // Leaving frees a place.
    held.pop();
    let ok = Fixture::eventually(Duration::from_secs(5), || async {
        fx.client().await.is_ok()
    })
    .await;
    assert!(ok, "a place freed by a leaving client was not reused");
}

/// `used_clients` from the console's SHOW LISTS: every client connection, logged in or not.
async fn used_clients(console: &tokio_postgres::Client) -> usize {
    let messages = console
        .simple_query("SHOW LISTS")
        .await
        .expect("SHOW LISTS");
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) if row.get(0) == Some("used_clients") => {
                row.get(1).and_then(|n| n.parse().ok())
            }
            _ => None,
        })
        .expect("a used_clients row")
}

/// Asserts that weir ended a connection with exactly one ErrorResponse for
/// client_login_timeout.
fn assert_login_timed_out(replies: &[Reply]) {
    assert_eq!(replies.len(), 1, "{replies:?}");
    assert_eq!(replies[0].error_field(b'C').as_deref(), Some("08P01"));
    let message = replies[0].error_field(b'M').unwrap_or_default();
    assert!(message.contains("client_login_timeout"), "{message}");
}

/// The `clients` count of the HTTP endpoint's `/status` on 127.0.0.1:`port`.
async fn status_clients(port: u16) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect((net::HOST, port))
        .await
        .expect("connect to the HTTP endpoint");
    s.write_all(b"GET /status HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("request");
    let mut raw = String::new();
    s.read_to_string(&mut raw).await.expect("response");
    let body = raw.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let status: serde_json::Value = serde_json::from_str(body).expect("JSON");
    status["clients"].as_u64().expect("a client count")
}

#[tokio::test]
async fn silent_connections_count_against_max_client_conn_until_they_time_out() {
    let http = net::free_port();
    let fx = Fixture::start(
        Options::mode("transaction", 2)
            .with("max_client_conn = 3")
            .with("client_login_timeout = 2")
            // Deferred accept (PgBouncer's default) would keep silent connections in the kernel.
            .with("tcp_defer_accept = 0")
            .with(&format!("admin_users = {USER}"))
            .with("http_listen_addr = 127.0.0.1")
            .with(&format!("http_port = {http}")),
    )
    .await
    .expect("fixture");
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(RawClient::connect(fx.weir.port()).await.expect("connect"));
    }
    let counted = Fixture::eventually(Duration::from_secs(5), || async {
        status_clients(http).await == 3
    })
    .await;
    assert!(
        counted,
        "silent connections are not counted: {}",
        status_clients(http).await
    );
    // The console is never refused, so it can show who fills the limit: the three silent
    // connections and itself.
    let console = net::connect(fx.weir.port(), USER, PASSWORD, "pgbouncer")
        .await
        .unwrap_or_else(|e| panic!("the console is refused: {e}\n{}", fx.weir.log()));
    let counted = Fixture::eventually(Duration::from_secs(5), || async {
        used_clients(&console).await == 4
    })
    .await;
    assert!(counted, "used_clients = {}", used_clients(&console).await);

    let err = fx.client().await.expect_err("a client over the limit");
    let err = err
        .downcast_ref::<tokio_postgres::Error>()
        .expect("a PostgreSQL error");
    assert_eq!(fixture::sqlstate(err), Some("53300"), "{err:?}");

    for mut client in silent {
        assert_login_timed_out(&client.until_closed().await.expect("weir closes it"));
    }
    let admitted = Fixture::eventually(Duration::from_secs(5), || async {
        fx.client().await.is_ok()
    })
    .await;
    assert!(
        admitted,
        "the places of timed-out connections were not freed"
    );
}

#[tokio::test]
async fn client_login_timeout_runs_once_from_accept() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    // Deferred accept (PgBouncer's default) would keep the silent reference in the kernel.
    let fx = Fixture::start(
        Options::default()
            .with("client_login_timeout = 3")
            .with("tcp_defer_accept = 0"),
    )
    .await
    .expect("fixture");
    let port = fx.weir.port();
    let start = tokio::time::Instant::now();
    let mut late = RawClient::connect(port).await.expect("connect");
    // A reference: a connection that never sends anything, opened half a timeout later.
    tokio::time::sleep_until(start + TIMEOUT / 2).await;
    let reference_opened = tokio::time::Instant::now();
    let mut reference = RawClient::connect(port).await.expect("connect");
    // Near the end of its time, the first client starts and then stalls in authentication.
    tokio::time::sleep_until(start + TIMEOUT * 9 / 10).await;
    late.send_startup(USER, DATABASE).await.expect("startup");
    let request = late.next().await.expect("read").expect("a request");
    assert_eq!(
        request.auth_code(),
        Some(10),
        "not AuthenticationSASL: {request:?}"
    );

    // The login's one deadline ends the first client before the reference, whose own
    // deadline comes half a timeout after it; a second, fresh timeout would end it after.
    let first_closed = tokio::select! {
        biased;
        replies = late.until_closed() => {
            assert_login_timed_out(&replies.expect("weir closes it"));
            "the late client"
        }
        replies = reference.until_closed() => {
            assert_login_timed_out(&replies.expect("weir closes it"));
            "the silent reference"
        }
    };
    assert_eq!(first_closed, "the late client");
    assert_login_timed_out(&reference.until_closed().await.expect("weir closes it"));
    assert!(
        reference_opened.elapsed() >= TIMEOUT / 2,
        "a silent connection was closed long before client_login_timeout"
    );
}

#[tokio::test]
async fn query_wait_timeout_fails_a_waiting_client_clearly() {
    let fx = Fixture::start(Options::mode("transaction", 1).with("query_wait_timeout = 1"))
        .await
        .expect("fixture");
    let holder = fx.client().await.expect("holder");
    let waiter = fx.client().await.expect("waiter");
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let err = waiter
        .batch_execute("SELECT 1")
        .await
        .expect_err("no server connection within query_wait_timeout");
    assert_eq!(fixture::sqlstate(&err), Some("57014"), "{err:?}");
    let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
    assert!(message.contains("query_wait_timeout"), "{message}");
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    // The holder's connection is unharmed and others can get the server again.
    let again = fx.client().await.expect("new client");
    again.batch_execute("SELECT 1").await.expect("query");
}

/// `cl_waiting` of the application pool from the console's SHOW POOLS.
async fn cl_waiting(console: &tokio_postgres::Client) -> usize {
    let messages = console
        .simple_query("SHOW POOLS")
        .await
        .expect("SHOW POOLS");
    messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) if row.get("database") == Some(DATABASE) => {
                row.get("cl_waiting").and_then(|n| n.parse().ok())
            }
            _ => None,
        })
        .expect("a row for the application pool")
}

/// Clients waiting for the pool's one connection get it in the order they asked for it, and
/// one that leaves while waiting leaves no hole: the connection goes on to the next client and
/// nobody stays counted as waiting.
#[tokio::test]
async fn waiting_clients_are_served_in_arrival_order_past_one_that_left() {
    let fx = Fixture::start(Options::mode("transaction", 1).with(&format!("admin_users = {USER}")))
        .await
        .expect("fixture");
    let console = net::connect(fx.weir.port(), USER, PASSWORD, "pgbouncer")
        .await
        .expect("console");
    let other = fx.client().await.expect("client");
    other
        .batch_execute("CREATE SEQUENCE served")
        .await
        .expect("sequence");
    let holder = fx.client().await.expect("holder");
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let mut waiters = Vec::new();
    let mut leaver = None;
    for (queued, name) in ["first", "leaver", "second", "third"]
        .into_iter()
        .enumerate()
    {
        if name == "leaver" {
            let mut raw = RawClient::connect(fx.weir.port()).await.expect("connect");
            raw.send_startup(USER, DATABASE).await.expect("startup");
            raw.authenticate(USER, PASSWORD)
                .await
                .expect("authentication")
                .expect("logged in");
            while raw
                .next()
                .await
                .expect("login")
                .is_some_and(|r| r.tag != b'Z')
            {}
            raw.send(b'Q', b"SELECT nextval('served')\0")
                .await
                .expect("query");
            leaver = Some(raw);
        } else {
            let client = fx.client_named(name).await.expect("client");
            waiters.push(tokio::spawn(async move {
                fixture::scalar(&client, "SELECT nextval('served')").await
            }));
        }
        let in_line = Fixture::eventually(Duration::from_secs(10), || async {
            cl_waiting(&console).await == queued + 1
        })
        .await;
        assert!(
            in_line,
            "{name} is not waiting: {}",
            cl_waiting(&console).await
        );
    }
    // Its socket closes while it waits.
    drop(leaver);
    let left = Fixture::eventually(Duration::from_secs(10), || async {
        cl_waiting(&console).await == 3
    })
    .await;
    assert!(
        left,
        "the leaver still waits: {}",
        cl_waiting(&console).await
    );
    holder.batch_execute("COMMIT").await.expect("COMMIT");
    let mut order = Vec::new();
    for waiter in waiters {
        order.push(waiter.await.expect("waiter"));
    }
    assert_eq!(order, ["1", "2", "3"], "served out of arrival order");
    assert_eq!(cl_waiting(&console).await, 0);
    assert_eq!(
        fixture::scalar(&other, "SELECT nextval('served')").await,
        "4"
    );
    assert_eq!(fx.server_connections().await.expect("count"), 1);
}

#[tokio::test]
async fn five_hundred_clients_share_five_server_connections() {
    let fx = Fixture::start(Options::mode("transaction", 5))
        .await
        .expect("fixture");
    let max_seen = Arc::new(AtomicI64::new(0));
    let done = Arc::new(tokio::sync::Notify::new());
    let sampler = {
        let max_seen = max_seen.clone();
        let done = done.clone();
        let pg = fx.pg.superuser().await.expect("superuser");
        tokio::spawn(async move {
            loop {
                let n: i64 = pg
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity \
                         WHERE usename = 'app' AND backend_type = 'client backend'",
                        &[],
                    )
                    .await
                    .expect("sample")
                    .get(0);
                max_seen.fetch_max(n, Ordering::Relaxed);
                tokio::select! {
                    () = done.notified() => return,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        })
    };
    let mut tasks = Vec::new();
    for c in 0..500i64 {
        let client = fx.client().await.expect("client");
        tasks.push(tokio::spawn(async move {
            let mut sum = 0i64;
            for i in 0..10i64 {
                // Unnamed statements: named ones need the prepared-statement support.
                let row = client
                    .query_typed_one("SELECT $1::int8 + 1", &[(&(c * 100 + i), Type::INT8)])
                    .await
                    .expect("query");
                sum += row.get::<_, i64>(0);
            }
            sum
        }));
    }
    for (c, t) in tasks.into_iter().enumerate() {
        let c = c as i64;
        let expected: i64 = (0..10).map(|i| c * 100 + i + 1).sum();
        assert_eq!(t.await.expect("client task"), expected);
    }
    done.notify_one();
    sampler.await.expect("sampler");
    let max = max_seen.load(Ordering::Relaxed);
    assert!(max >= 1, "the sampler never saw a server connection");
    assert!(max <= 5, "saw {max} server connections for a pool of 5");
}

#[tokio::test]
async fn min_pool_size_is_kept_warm() {
    let fx = Fixture::start(Options::mode("transaction", 5).with("min_pool_size = 3"))
        .await
        .expect("fixture");
    // The pool exists once a client has used it.
    fx.client()
        .await
        .expect("client")
        .batch_execute("SELECT 1")
        .await
        .expect("query");
    let warm = Fixture::eventually(Duration::from_secs(10), || async {
        fx.server_connections().await.unwrap_or(0) == 3
    })
    .await;
    assert!(warm, "min_pool_size = 3 was not reached");
    // Server connections killed from outside are noticed and replaced.
    let superuser = fx.pg.superuser().await.expect("superuser");
    let killed: Vec<i32> = superuser
        .query(
            "SELECT pid FROM pg_stat_activity \
             WHERE usename = 'app' AND backend_type = 'client backend'",
            &[],
        )
        .await
        .expect("pids")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(killed.len(), 3);
    superuser
        .execute(
            "SELECT pg_terminate_backend(pid) FROM unnest($1::int4[]) AS pid",
            &[&killed],
        )
        .await
        .expect("terminate");
    let gone = Fixture::eventually(Duration::from_secs(10), || async {
        let left: i64 = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int4[])",
                &[&killed],
            )
            .await
            .expect("count")
            .get(0);
        left == 0
    })
    .await;
    assert!(gone, "terminated backends did not exit");
    let client = fx.client().await.expect("client after the kill");
    client
        .batch_execute("SELECT 1")
        .await
        .expect("query after the kill");
    let rewarmed = Fixture::eventually(Duration::from_secs(10), || async {
        fx.server_connections().await.unwrap_or(0) == 3
    })
    .await;
    assert!(rewarmed, "min_pool_size was not restored");
}

#[tokio::test]
async fn reserve_pool_is_used_only_after_reserve_pool_timeout() {
    let opts = Options::mode("transaction", 1)
        .with("reserve_pool_size = 1")
        .with("reserve_pool_timeout = 0.5")
        .with("query_wait_timeout = 10");
    let fx = Fixture::start(opts).await.expect("fixture");
    let holder = fx.client().await.expect("holder");
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    assert_eq!(fx.server_connections().await.expect("count"), 1);

    let waiter = fx.client().await.expect("waiter");
    let started = tokio::time::Instant::now();
    waiter
        .batch_execute("SELECT 1")
        .await
        .expect("served from the reserve");
    assert!(
        started.elapsed() >= Duration::from_millis(400),
        "the reserve was used before reserve_pool_timeout"
    );
    assert_eq!(fx.server_connections().await.expect("count"), 2);
    holder.batch_execute("COMMIT").await.expect("COMMIT");
}

#[tokio::test]
async fn reserve_pool_does_not_help_before_its_timeout() {
    let opts = Options::mode("transaction", 1)
        .with("reserve_pool_size = 1")
        .with("reserve_pool_timeout = 30")
        .with("query_wait_timeout = 1");
    let fx = Fixture::start(opts).await.expect("fixture");
    let holder = fx.client().await.expect("holder");
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let waiter = fx.client().await.expect("waiter");
    let err = waiter
        .batch_execute("SELECT 1")
        .await
        .expect_err("query_wait_timeout comes before reserve_pool_timeout");
    assert_eq!(fixture::sqlstate(&err), Some("57014"));
    assert_eq!(fx.server_connections().await.expect("count"), 1);
}

#[tokio::test]
async fn idle_server_connections_are_closed_after_server_idle_timeout() {
    let fx = Fixture::start(Options::mode("transaction", 3).with("server_idle_timeout = 1"))
        .await
        .expect("fixture");
    let client = fx.client().await.expect("client");
    client.batch_execute("SELECT 1").await.expect("query");
    assert!(fx.server_connections().await.expect("count") >= 1);
    let reaped = Fixture::eventually(Duration::from_secs(10), || async {
        fx.server_connections().await.unwrap_or(-1) == 0
    })
    .await;
    assert!(
        reaped,
        "idle server connection outlived server_idle_timeout"
    );
    // The client itself is still connected and gets a fresh server connection.
    client
        .batch_execute("SELECT 1")
        .await
        .expect("query after reaping");
}

#[tokio::test]
async fn server_connections_are_replaced_after_server_lifetime() {
    let fx = Fixture::start(Options::mode("transaction", 1).with("server_lifetime = 1"))
        .await
        .expect("fixture");
    let client = fx.client().await.expect("client");
    let first = backend_pid(&client).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let second = backend_pid(&client).await;
    assert_ne!(first, second, "server connection outlived server_lifetime");
}
