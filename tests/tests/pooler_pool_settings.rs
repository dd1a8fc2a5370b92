//! A pool's effective settings acting on a real PostgreSQL: `server_check_query`'s default,
//! `server_lifetime = 0`, `server_reset_query_always`, the per-user reserve and minimum, and a
//! pool's count surviving a client that leaves while its connection is being checked.

use std::time::Duration;

use tokio_postgres::NoTls;
use weir_tests::fixture::{self, backend_pid, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;

/// The default `<empty>` sends an empty query, which succeeds: the connection is kept.
#[tokio::test]
async fn default_server_check_query_keeps_the_connection() {
    // A delay of 0 checks a connection every time it is lent.
    let fx = Fixture::start(Options::mode("transaction", 1).with("server_check_delay = 0"))
        .await
        .expect("fixture");
    let client = fx.client().await.expect("client");
    let first = backend_pid(&client).await;
    for _ in 0..3 {
        assert_eq!(
            backend_pid(&client).await,
            first,
            "the server connection was replaced after its check; weir's log:\n{}",
            fx.weir.log()
        );
    }
    assert!(
        !fx.weir.log().contains("server_check_query failed"),
        "{}",
        fx.weir.log()
    );
}

/// An empty `server_check_query` turns the check off; a custom one is sent as it is.
#[tokio::test]
async fn custom_server_check_query_runs_and_an_empty_one_runs_nothing() {
    let opts = Options::mode("transaction", 1)
        .with("server_check_delay = 0")
        .with("server_check_query = SELECT weir_no_such_function()");
    let fx = Fixture::start(opts).await.expect("fixture");
    let client = fx.client().await.expect("client");
    let first = backend_pid(&client).await;
    // The failing check closes the connection, and the client is served by a new one.
    assert_ne!(backend_pid(&client).await, first, "the check did not run");

    let opts = Options::mode("transaction", 1)
        .with("server_check_delay = 0")
        .with("server_check_query =");
    let fx = Fixture::start(opts).await.expect("fixture");
    let client = fx.client().await.expect("client");
    let first = backend_pid(&client).await;
    assert_eq!(backend_pid(&client).await, first);
}

/// `server_lifetime = 0` uses each server connection once (PgBouncer's meaning).
#[tokio::test]
async fn server_lifetime_zero_uses_each_connection_once() {
    let fx = Fixture::start(Options::mode("transaction", 1).with("server_lifetime = 0"))
        .await
        .expect("fixture");
    let client = fx.client().await.expect("client");
    let first = backend_pid(&client).await;
    let second = backend_pid(&client).await;
    assert_ne!(first, second, "a connection served a second transaction");
    let closed = Fixture::eventually(Duration::from_secs(10), || async {
        fx.server_connections().await.unwrap_or(-1) == 0
    })
    .await;
    assert!(closed, "a used connection stayed open");
}

/// A `[users]` reserve_pool_size is a pool's reserve even when the database has none.
#[tokio::test]
async fn per_user_reserve_pool_is_used() {
    let opts = Options::mode("transaction", 1)
        .with("reserve_pool_timeout = 0.2")
        .with("query_wait_timeout = 5")
        .with("[users]")
        .with("app = reserve_pool_size=1");
    let fx = Fixture::start(opts).await.expect("fixture");
    let holder = fx.client().await.expect("holder");
    holder.batch_execute("BEGIN").await.expect("BEGIN");
    let waiter = fx.client().await.expect("waiter");
    waiter
        .batch_execute("SELECT 1")
        .await
        .expect("served from the user's reserve");
    assert_eq!(fx.server_connections().await.expect("count"), 2);
    holder.batch_execute("COMMIT").await.expect("COMMIT");
}

/// A `[users]` min_pool_size (a Weir extension) keeps that many connections warm.
#[tokio::test]
async fn per_user_min_pool_size_is_kept_warm() {
    let opts = Options::mode("transaction", 5)
        .with("[users]")
        .with("app = min_pool_size=2");
    let fx = Fixture::start(opts).await.expect("fixture");
    fx.client()
        .await
        .expect("client")
        .batch_execute("SELECT 1")
        .await
        .expect("query");
    let warm = Fixture::eventually(Duration::from_secs(10), || async {
        fx.server_connections().await.unwrap_or(0) == 2
    })
    .await;
    assert!(warm, "the user's min_pool_size = 2 was not reached");
}

/// A client that leaves while its idle connection is being checked takes nothing of the
/// pool's capacity with it: the next client gets a connection.
#[tokio::test]
async fn a_client_leaving_during_the_check_frees_its_place() {
    let opts = Options::mode("transaction", 1)
        .with("server_check_delay = 0")
        .with("server_check_query = SELECT pg_sleep(2)")
        .with("query_wait_timeout = 8");
    let fx = Fixture::start(opts).await.expect("fixture");
    // Opens the pool's one connection (a new connection is not checked).
    fx.client()
        .await
        .expect("first client")
        .batch_execute("SELECT 1")
        .await
        .expect("first query");

    // The connection's driver task is the test's own: aborting it closes the socket at once.
    let (leaver, connection) = net::client_config(fx.weir.port(), USER, PASSWORD, DATABASE)
        .connect(NoTls)
        .await
        .expect("leaver");
    let socket = tokio::spawn(connection);
    let checking = tokio::spawn(async move { leaver.batch_execute("SELECT 1").await });
    let superuser = fx.pg.superuser().await.expect("superuser");
    let in_check = Fixture::eventually(Duration::from_secs(10), || async {
        let n: i64 = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity \
                 WHERE usename = 'app' AND query = 'SELECT pg_sleep(2)' AND state = 'active'",
                &[],
            )
            .await
            .expect("count")
            .get(0);
        n == 1
    })
    .await;
    assert!(in_check, "the check query never ran");
    // The client goes away mid-check.
    socket.abort();
    let _ = socket.await;
    let _ = checking.await;

    let next = fx.client().await.expect("next client");
    next.batch_execute("SELECT 1").await.unwrap_or_else(|e| {
        panic!(
            "the pool lost its place (sqlstate {:?}): {e}; weir's log:\n{}",
            fixture::sqlstate(&e),
            fx.weir.log()
        )
    });
}

/// `server_reset_query_always = 1` runs the reset query at every release in transaction
/// mode, and only then: counted by a reset query that takes a sequence's next value.
#[tokio::test]
async fn server_reset_query_always_resets_at_every_release_in_transaction_mode() {
    for (always, expected) in [(1, 3), (0, 0)] {
        let opts = Options::mode("transaction", 1)
            .with("server_reset_query = SELECT nextval('resets')")
            .with(&format!("server_reset_query_always = {always}"));
        let fx = Fixture::start(opts).await.expect("fixture");
        let direct = fx
            .pg
            .connect(USER, PASSWORD, DATABASE)
            .await
            .expect("direct");
        direct
            .batch_execute("CREATE SEQUENCE resets")
            .await
            .expect("sequence");
        let client = fx.client().await.expect("client");
        for _ in 0..3 {
            client.batch_execute("SELECT 1").await.expect("transaction");
        }
        let resets = || async {
            let row = direct
                .query_one(
                    "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM resets",
                    &[],
                )
                .await
                .expect("count");
            row.get::<_, i64>(0)
        };
        // The last release's reset may still be on its way.
        Fixture::eventually(Duration::from_secs(5), || async {
            resets().await >= expected
        })
        .await;
        assert_eq!(
            resets().await,
            expected,
            "resets after 3 transactions with server_reset_query_always = {always}; weir's log:\n{}",
            fx.weir.log()
        );
    }
}
