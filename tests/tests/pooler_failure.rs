//! Weir when things go wrong around it: PostgreSQL restarting or going away, a server
//! connection killed under a running query, clients vanishing mid-transaction, cancels, and a
//! database that cannot be reached at all. Each test checks what the affected client is told
//! (the SQLSTATE), that unaffected clients never notice, and that the pool recovers.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_tests::fixture::{self, sqlstate, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;
use weir_tests::raw::{self, RawClient};
use weir_tests::tokio_postgres::{self, Client, NoTls, SimpleQueryMessage};
use weir_tests::weir::WeirProcess;

/// Upper bound for anything that should happen "promptly"; never a performance assertion.
const PROMPTLY: Duration = Duration::from_secs(10);

/// The first column of the first row `sql` returns, via the simple protocol (which works in
/// every pool mode).
async fn scalar(client: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let messages = client.simple_query(sql).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(row.get(0).unwrap_or("NULL").to_owned()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql} returned no row")))
}

/// Application backends PostgreSQL shows as idle inside a transaction.
async fn idle_in_transaction(f: &Fixture) -> i64 {
    let su = f.pg.superuser().await.expect("superuser connection");
    su.query_one(
        "SELECT count(*) FROM pg_stat_activity \
         WHERE usename = $1 AND state LIKE 'idle in transaction%'",
        &[&USER],
    )
    .await
    .expect("counting idle transactions")
    .get(0)
}

#[tokio::test]
async fn idle_clients_keep_working_across_a_server_restart() {
    let f = Fixture::start(Options::mode("transaction", 3))
        .await
        .unwrap();
    let mut clients = Vec::new();
    for i in 0..5 {
        let client = f.client().await.unwrap();
        assert_eq!(
            scalar(&client, &format!("SELECT {i}")).await.unwrap(),
            i.to_string()
        );
        clients.push(client);
    }
    assert!(f.server_connections().await.unwrap() >= 1);
    let before = f.pg.postmaster_pid();

    f.pg.restart().await.unwrap();
    assert_ne!(f.pg.postmaster_pid(), before);
    assert_eq!(f.server_connections().await.unwrap(), 0);

    // Every server connection weir held died with the old postmaster; no client may see it.
    for (i, client) in clients.iter().enumerate() {
        let answer = scalar(client, &format!("SELECT {i} * 10")).await;
        assert_eq!(
            answer.unwrap_or_else(|e| panic!("client {i}: {e:#}\nweir log:\n{}", f.weir.log())),
            (i * 10).to_string()
        );
    }
    // And they run concurrently again, sharing the pool's three places.
    let mut running = tokio::task::JoinSet::new();
    for (i, client) in clients.into_iter().enumerate() {
        running.spawn(async move {
            let sql = format!("SELECT {i} FROM pg_sleep(0.2)");
            scalar(&client, &sql).await.map(|a| (i, a))
        });
    }
    let mut answered = Vec::new();
    while let Some(joined) = running.join_next().await {
        let (i, answer) = joined.unwrap().unwrap();
        assert_eq!(answer, i.to_string());
        answered.push(i);
    }
    answered.sort_unstable();
    assert_eq!(answered, vec![0, 1, 2, 3, 4]);
}

#[tokio::test]
async fn a_server_connection_killed_mid_query_fails_only_its_client() {
    let f = Fixture::start(Options::mode("transaction", 2).with("query_wait_timeout = 10"))
        .await
        .unwrap();
    let victim = f.client().await.unwrap();
    let bystander = f.client().await.unwrap();
    assert_eq!(
        scalar(&bystander, "SELECT 'before'").await.unwrap(),
        "before"
    );

    let sleeping = tokio::spawn(async move {
        let result = victim.simple_query("SELECT pg_sleep(30)").await;
        (result, victim)
    });
    let pid = f.active_backend("SELECT pg_sleep", PROMPTLY).await;
    // The second server connection serves the bystander meanwhile.
    assert_eq!(
        scalar(&bystander, "SELECT 'during'").await.unwrap(),
        "during"
    );

    let su = f.pg.superuser().await.unwrap();
    let terminated: bool = su
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);

    let (result, victim) = tokio::time::timeout(PROMPTLY, sleeping)
        .await
        .expect("the killed query did not end")
        .unwrap();
    let err = result.expect_err("the killed query succeeded");
    // PostgreSQL's own farewell reaches the client: terminated by administrator command.
    assert_eq!(sqlstate(&err), Some("57P01"), "{err:#}");
    assert!(
        victim.simple_query("SELECT 1").await.is_err(),
        "the victim's session outlived its server connection"
    );

    assert_eq!(scalar(&bystander, "SELECT 'after'").await.unwrap(), "after");
    let newcomer = f.client().await.unwrap();
    assert_eq!(scalar(&newcomer, "SELECT 'new'").await.unwrap(), "new");

    // The killed connection's place was given back: two transactions can be open at once
    // (with a leaked place the second would wait out query_wait_timeout).
    bystander.batch_execute("BEGIN").await.unwrap();
    newcomer.batch_execute("BEGIN").await.unwrap();
    assert_eq!(scalar(&bystander, "SELECT 'b'").await.unwrap(), "b");
    assert_eq!(scalar(&newcomer, "SELECT 'n'").await.unwrap(), "n");
    assert_eq!(f.server_connections().await.unwrap(), 2);
    bystander.batch_execute("COMMIT").await.unwrap();
    newcomer.batch_execute("COMMIT").await.unwrap();
}

/// What a driver sees that pipelines a big batch behind a query whose server connection is
/// killed: every write of the batch goes through (weir takes the rest instead of resetting the
/// connection), then weir's FATAL, then an orderly end of the stream.
#[tokio::test]
async fn a_pipelining_client_gets_the_fatal_when_its_server_connection_dies() {
    let f = Fixture::start(Options {
        auth_type: "trust",
        ..Options::mode("transaction", 1)
    })
    .await
    .unwrap();
    let mut stream = raw_login(f.weir.port()).await;
    stream
        .write_all(&raw::extended_query("SELECT pg_sleep(60)"))
        .await
        .unwrap();
    let pid = f.active_backend("SELECT pg_sleep", PROMPTLY).await;
    // More than every socket buffer on the way holds: the sleeping server reads none of it,
    // so weir has unread input from this client when the server connection dies.
    let query = raw::extended_query(&format!("SELECT '{}'", "x".repeat(1 << 20)));
    let (mut reader, mut writer) = stream.into_split();
    let batch = tokio::spawn(async move {
        for _ in 0..16 {
            writer.write_all(&query).await?;
        }
        Ok::<_, std::io::Error>(writer)
    });
    let su = f.pg.superuser().await.unwrap();
    let terminated: bool = su
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(terminated);

    let written = tokio::time::timeout(PROMPTLY, batch)
        .await
        .expect("the batch was neither taken nor refused")
        .unwrap();
    let mut received = Vec::new();
    let end = tokio::time::timeout(PROMPTLY, reader.read_to_end(&mut received))
        .await
        .expect("weir kept the connection open");
    let codes: Vec<String> = raw::replies(&received)
        .iter()
        .filter_map(|r| r.error_field(b'C'))
        .collect();
    assert!(
        written.is_ok(),
        "the batch's write failed: {:?}; received errors {codes:?}",
        written.err()
    );
    assert!(end.is_ok(), "the connection was reset, not closed: {end:?}");
    // The server's own reason (relayed, then weir's FATAL with it) when its farewell reached
    // weir, a lost connection otherwise.
    assert!(!codes.is_empty(), "no error before the end");
    assert!(
        codes.iter().all(|c| c == "57P01" || c == "08006"),
        "{codes:?}"
    );
    // Weir recovers: the pool's only place was given back.
    let next = f.client().await.unwrap();
    assert_eq!(scalar(&next, "SELECT 'next'").await.unwrap(), "next");
}

/// A logged-in protocol connection through weir (the fixture trusts clients), driven by hand.
async fn raw_login(port: u16) -> TcpStream {
    RawClient::trust_login(port, USER, DATABASE)
        .await
        .expect("logged in through weir")
        .into_stream()
}

/// Reads messages until ReadyForQuery and returns its transaction status; panics on an
/// ErrorResponse.
async fn ready_status(stream: &mut TcpStream) -> u8 {
    loop {
        let tag = stream.read_u8().await.expect("reading a message type");
        let len = stream.read_u32().await.expect("reading a message length");
        let mut body = vec![0; len as usize - 4];
        stream
            .read_exact(&mut body)
            .await
            .expect("reading a message body");
        assert_ne!(tag, b'E', "{}", String::from_utf8_lossy(&body));
        if tag == b'Z' {
            return body[0];
        }
    }
}

/// Checks that a client left a transaction open and vanished without a trace: the next client
/// on the single server connection sees no uncommitted row and no open transaction, and
/// PostgreSQL soon has no backend idle in a transaction.
async fn assert_no_dirty_connection(f: &Fixture) {
    let next = f.client().await.expect("the next client logs in");
    assert_eq!(
        scalar(&next, "SELECT count(*) FROM marks")
            .await
            .expect("a query on the next client"),
        "0"
    );
    // An INSERT assigns a transaction id; a fresh transaction that only reads has none.
    assert_eq!(
        scalar(&next, "SELECT pg_current_xact_id_if_assigned()")
            .await
            .expect("a query on the next client"),
        "NULL"
    );
    let clean = Fixture::eventually(PROMPTLY, || async { idle_in_transaction(f).await == 0 }).await;
    assert!(clean, "a backend stayed idle in transaction");
    assert_eq!(
        scalar(&next, "SELECT 'clean'")
            .await
            .expect("a query on the next client"),
        "clean"
    );
}

#[tokio::test]
async fn a_client_vanishing_mid_transaction_leaves_no_dirty_connection() {
    let f = Fixture::start(Options {
        auth_type: "trust",
        ..Options::mode("transaction", 1)
    })
    .await
    .unwrap();
    let direct = f.pg.connect(USER, PASSWORD, DATABASE).await.unwrap();
    direct
        .batch_execute("CREATE TABLE marks (who text)")
        .await
        .unwrap();

    // A driver that drops its connection mid-transaction (it says Terminate on the way out).
    let client = f.client().await.unwrap();
    client
        .batch_execute("BEGIN; INSERT INTO marks VALUES ('driver')")
        .await
        .unwrap();
    assert_eq!(idle_in_transaction(&f).await, 1);
    drop(client);
    assert_no_dirty_connection(&f).await;

    // A socket that simply closes mid-transaction, without a word.
    let mut stream = raw_login(f.weir.port()).await;
    let sql = b"BEGIN; INSERT INTO marks VALUES ('raw')\0";
    let len = u32::try_from(sql.len() + 4).unwrap();
    stream.write_all(b"Q").await.unwrap();
    stream.write_all(&len.to_be_bytes()).await.unwrap();
    stream.write_all(sql).await.unwrap();
    assert_eq!(ready_status(&mut stream).await, b'T');
    assert_eq!(idle_in_transaction(&f).await, 1);
    drop(stream);
    assert_no_dirty_connection(&f).await;

    let rows: i64 = direct
        .query_one("SELECT count(*) FROM marks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 0, "an abandoned transaction was committed");
}

#[tokio::test]
async fn a_cancel_through_weir_stops_the_running_query() {
    let f = Fixture::start(Options::default()).await.unwrap();
    let client = f.client().await.unwrap();
    let bystander = f.client().await.unwrap();
    let token = client.cancel_token();

    let started = Instant::now();
    let sleeping = tokio::spawn(async move {
        let result = client.simple_query("SELECT pg_sleep(30)").await;
        (result, client)
    });
    f.active_backend("SELECT pg_sleep", PROMPTLY).await;
    token.cancel_query(NoTls).await.unwrap();

    let (result, client) = tokio::time::timeout(PROMPTLY, sleeping)
        .await
        .expect("the cancelled query did not end")
        .unwrap();
    let err = result.expect_err("the cancelled query succeeded");
    assert_eq!(sqlstate(&err), Some("57014"), "{err:#}");
    assert!(started.elapsed() < PROMPTLY);

    // Only the query was cancelled: the session and the other client go on.
    assert_eq!(
        scalar(&client, "SELECT 'still here'").await.unwrap(),
        "still here"
    );
    assert_eq!(
        scalar(&bystander, "SELECT 'unaffected'").await.unwrap(),
        "unaffected"
    );
}

#[tokio::test]
async fn an_unreachable_database_fails_login_with_a_connection_error() {
    let mut f = Fixture::start(Options::default()).await.unwrap();
    // Nothing listens on a port just handed out as free.
    let closed = net::free_port();
    let opts = Options::default();
    let ini = fixture::ini(&f.pg, &opts).replacen(
        "[databases]\n",
        &format!(
            "[databases]\ndown = host={} port={closed} dbname={DATABASE}\n",
            net::HOST
        ),
        1,
    );
    f.weir = WeirProcess::start(&ini, &format!("\"{USER}\" \"{PASSWORD}\"\n"))
        .await
        .unwrap();

    for attempt in 0..3 {
        let config = net::client_config(f.weir.port(), USER, PASSWORD, "down");
        let err = tokio::time::timeout(PROMPTLY, config.connect(NoTls))
            .await
            .expect("login to an unreachable database hung")
            .err()
            .unwrap_or_else(|| panic!("attempt {attempt} logged in to a closed port"));
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("attempt {attempt}: no ErrorResponse: {err:#}"));
        assert_eq!(&db.code().code()[..2], "08", "attempt {attempt}: {db:?}");
        if attempt == 0 {
            assert!(db.message().contains("could not connect"), "{db:?}");
            assert!(db.message().contains(&closed.to_string()), "{db:?}");
        }
    }

    assert_eq!(
        f.weir.wait_exit(Duration::from_millis(100)).await.unwrap(),
        None
    );
    let client = f.client().await.unwrap();
    assert_eq!(
        scalar(&client, "SELECT 'reachable'").await.unwrap(),
        "reachable"
    );
}

#[tokio::test]
async fn a_stopped_server_gives_a_connection_error_and_weir_recovers() {
    let mut f = Fixture::start(Options::mode("transaction", 2))
        .await
        .unwrap();
    let client = f.client().await.unwrap();
    assert_eq!(scalar(&client, "SELECT 1").await.unwrap(), "1");

    f.pg.stop().await.unwrap();
    let err = tokio::time::timeout(PROMPTLY, scalar(&client, "SELECT 2"))
        .await
        .expect("a query while the server is down hung")
        .expect_err("a query succeeded without a server");
    let code = sqlstate(&err).unwrap_or_else(|| panic!("no ErrorResponse: {err:#}"));
    assert_eq!(&code[..2], "08", "{err:#}");
    assert_eq!(
        f.weir.wait_exit(Duration::from_millis(100)).await.unwrap(),
        None
    );

    f.pg.start_again().await.unwrap();
    // server_login_retry (1 s in the fixture) may refuse logins for a moment after a failure.
    let mut answer = None;
    let deadline = Instant::now() + PROMPTLY;
    while answer.is_none() && Instant::now() < deadline {
        if let Ok(client) = f.client().await {
            answer = scalar(&client, "SELECT 'back'").await.ok();
        }
        if answer.is_none() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    assert_eq!(
        answer.as_deref(),
        Some("back"),
        "weir log:\n{}",
        f.weir.log()
    );
    assert!(f.server_connections().await.unwrap() >= 1);
}
