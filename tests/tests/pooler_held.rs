//! What one client can hold, whatever it does: a lent server connection comes back (or is
//! closed) within the configured timeouts, a query its client abandoned is cancelled, and the
//! memory spent on one client is bounded. Each test uses a single-connection pool and checks
//! that another client gets through, or that the pooler refused the client with a SQLSTATE.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_tests::fixture::{scalar, Fixture, Options, DATABASE, USER};
use weir_tests::procfs;
use weir_tests::raw::RawClient;

/// Upper bound for anything that should happen "promptly"; never a performance assertion.
const PROMPTLY: Duration = Duration::from_secs(20);

/// A transaction-mode pool of one connection, trusting clients, with `settings`.
async fn one_connection(settings: &[&str]) -> Fixture {
    let mut opts = Options {
        auth_type: "trust",
        ..Options::mode("transaction", 1)
    };
    for s in settings {
        opts = opts.with(s);
    }
    Fixture::start(opts).await.expect("fixture")
}

/// Checks that a new client gets the pool's only server connection.
async fn another_client_gets_through(f: &Fixture) {
    let other = f.client().await.expect("another client logs in");
    let answer = tokio::time::timeout(PROMPTLY, scalar(&other, "SELECT 'through'"))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the server connection was not freed; weir log:\n{}",
                f.weir.log()
            )
        });
    assert_eq!(answer, "through");
}

/// A message as the client sends it.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(
        &u32::try_from(body.len() + 4)
            .expect("a small message")
            .to_be_bytes(),
    );
    out.extend_from_slice(body);
    out
}

/// A Parse of `query` named `name`.
fn parse(name: &str, query: &str) -> Vec<u8> {
    let mut body = Vec::new();
    for s in [name, query] {
        body.extend_from_slice(s.as_bytes());
        body.push(0);
    }
    body.extend_from_slice(&0u16.to_be_bytes());
    message(b'P', &body)
}

/// A logged-in protocol connection through weir (the fixture trusts clients), driven by hand.
async fn raw_login(f: &Fixture) -> TcpStream {
    match RawClient::trust_login(f.weir.port(), USER, DATABASE).await {
        Ok(client) => client.into_stream(),
        Err(err) => panic!(
            "logging in through weir: {err:#}; weir log:\n{}",
            f.weir.log()
        ),
    }
}

/// Reads one message: its type and body; None once the connection is closed.
async fn read_message(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let tag = stream.read_u8().await.ok()?;
    let len = stream.read_u32().await.ok()?;
    let mut body = vec![0; len as usize - 4];
    stream.read_exact(&mut body).await.ok()?;
    Some((tag, body))
}

/// Reads until an ErrorResponse and returns its SQLSTATE and text; then checks that the
/// connection is closed.
async fn error_then_close(stream: &mut TcpStream) -> (String, String) {
    let read = async {
        loop {
            let (tag, body) = read_message(stream).await.expect("an ErrorResponse");
            if tag == b'E' {
                return body;
            }
        }
    };
    let body = tokio::time::timeout(PROMPTLY, read)
        .await
        .expect("no ErrorResponse came");
    let field = |code: u8| {
        body.split(|&b| b == 0)
            .find(|f| f.first() == Some(&code))
            .map(|f| String::from_utf8_lossy(&f[1..]).into_owned())
            .unwrap_or_default()
    };
    let closed = tokio::time::timeout(PROMPTLY, read_message(stream)).await;
    assert!(matches!(closed, Ok(None)), "the connection stayed open");
    (field(b'C'), field(b'M'))
}

/// Whether PostgreSQL shows backend `pid` running a query.
async fn is_active(f: &Fixture, pid: i32) -> bool {
    let su = f.pg.superuser().await.expect("superuser connection");
    su.query_opt(
        "SELECT 1 FROM pg_stat_activity WHERE pid = $1 AND state = 'active'",
        &[&pid],
    )
    .await
    .expect("reading pg_stat_activity")
    .is_some()
}

#[tokio::test]
async fn extended_protocol_without_sync_is_bounded_by_idle_transaction_timeout() {
    let f = one_connection(&["idle_transaction_timeout = 1"]).await;
    let mut stream = raw_login(&f).await;
    let mut batch = parse("", "SELECT 1");
    // Bind (unnamed portal and statement, no parameters, no result formats), Execute.
    batch.extend(message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    batch.extend(message(b'E', &[0, 0, 0, 0, 0]));
    stream.write_all(&batch).await.unwrap();
    another_client_gets_through(&f).await;
    let (code, message) = error_then_close(&mut stream).await;
    assert_eq!(code, "25P03", "{message}");
}

#[tokio::test]
async fn half_a_message_is_bounded_by_idle_transaction_timeout() {
    let f = one_connection(&["idle_transaction_timeout = 1"]).await;
    let mut stream = raw_login(&f).await;
    let whole = message(b'Q', b"SELECT 'never finished'\0");
    stream.write_all(&whole[..10]).await.unwrap();
    another_client_gets_through(&f).await;
    let (code, message) = error_then_close(&mut stream).await;
    assert_eq!(code, "25P03", "{message}");
}

#[tokio::test]
async fn the_query_of_a_client_that_vanished_is_cancelled() {
    let f = one_connection(&[]).await;
    let mut stream = raw_login(&f).await;
    stream
        .write_all(&message(b'Q', b"SELECT pg_sleep(60)\0"))
        .await
        .unwrap();
    let pid = f.active_backend("SELECT pg_sleep", PROMPTLY).await;
    drop(stream);
    let stopped = Fixture::eventually(PROMPTLY, || async { !is_active(&f, pid).await }).await;
    assert!(stopped, "the abandoned query kept running");
    another_client_gets_through(&f).await;
}

#[tokio::test]
async fn query_timeout_frees_the_connection_of_a_client_that_does_not_read() {
    let f = one_connection(&["query_timeout = 1"]).await;
    let mut stream = raw_login(&f).await;
    // About a gigabyte of result, which the client never reads.
    stream
        .write_all(&message(
            b'Q',
            b"SELECT repeat('x', 1000) FROM generate_series(1, 1000000)\0",
        ))
        .await
        .unwrap();
    another_client_gets_through(&f).await;
    drop(stream);
}

#[tokio::test]
async fn query_timeout_is_not_extended_by_a_client_reading_slowly() {
    let f = one_connection(&["query_timeout = 2"]).await;
    let mut stream = raw_login(&f).await;
    stream
        .write_all(&message(
            b'Q',
            b"SELECT repeat('x', 1000) FROM generate_series(1, 1000000)\0",
        ))
        .await
        .unwrap();
    // Read steadily but slowly: the pooler makes progress every few hundred milliseconds,
    // and the whole answer (a gigabyte) would take over a minute at this pace.
    let mut chunk = vec![0; 256 << 10];
    let trickle = async {
        while let Ok(n) = stream.read(&mut chunk).await {
            if n == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(PROMPTLY * 3, trickle)
        .await
        .expect("the slowly read query was never timed out");
    another_client_gets_through(&f).await;
}

#[tokio::test]
async fn a_pinned_client_is_closed_by_client_idle_timeout() {
    let f = one_connection(&["client_idle_timeout = 1"]).await;
    let pinned = f.client().await.unwrap();
    // A session advisory lock pins the client to its server connection.
    scalar(&pinned, "SELECT pg_advisory_lock(42)").await;
    another_client_gets_through(&f).await;
    assert!(
        pinned.simple_query("SELECT 1").await.is_err(),
        "the idle pinned client was not closed"
    );
    // Its connection was reset before reuse: the lock is gone.
    let other = f.client().await.unwrap();
    assert_eq!(scalar(&other, "SELECT pg_try_advisory_lock(42)").await, "t");
}

#[tokio::test]
async fn a_client_waiting_for_a_connection_is_read_no_further_than_pkt_buf() {
    let f = one_connection(&[]).await;
    let holder = f.client().await.unwrap();
    holder.batch_execute("BEGIN").await.unwrap();
    let stream = raw_login(&f).await;
    // A query of 256 MiB (under max_packet_size) sent while the pool's connection is taken.
    const ANNOUNCED: usize = 256 << 20;
    let mut header = vec![b'Q'];
    header.extend_from_slice(&u32::try_from(ANNOUNCED + 4).unwrap().to_be_bytes());
    let chunk = vec![b' '; 1 << 20];
    let mut sent = stream.try_write(&header).unwrap();
    while sent < ANNOUNCED {
        match stream.try_write(&chunk[..chunk.len().min(ANNOUNCED - sent)]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                // Stuck: the pooler stopped reading (not a timing assertion: a pooler that
                // reads on would be caught by the byte count below all the same).
                if tokio::time::timeout(Duration::from_secs(3), stream.writable())
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(e) => panic!("writing to weir: {e}"),
        }
    }
    // What the pooler holds is what the sockets could not: a few MiB of kernel buffers.
    assert!(
        sent < 64 << 20,
        "weir read {} MiB from a client waiting for a connection",
        sent >> 20
    );
    holder.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn answers_the_pooler_owes_a_client_that_does_not_read_are_bounded() {
    let f = one_connection(&[]).await;
    let mut stream = raw_login(&f).await;
    // The first Parse goes to the server, which answers only at a Sync; every repeat is
    // answered by the pooler itself, queued behind the server's answer.
    let repeat = parse("s", "SELECT 1");
    let mut batch = Vec::new();
    for _ in 0..70_000 {
        batch.extend_from_slice(&repeat);
    }
    // The pooler may close before reading it all.
    let _ = stream.write_all(&batch).await;
    let (code, message) = error_then_close(&mut stream).await;
    assert_eq!(code, "54000", "{message}");
    another_client_gets_through(&f).await;
}

#[tokio::test]
async fn the_statement_names_of_one_client_are_bounded() {
    let f = one_connection(&[]).await;
    let mut stream = raw_login(&f).await;
    let mut batch = Vec::new();
    for i in 0..10_001 {
        batch.extend(parse(&format!("s{i}"), "SELECT 1"));
        if i % 100 == 99 {
            batch.extend(message(b'S', &[]));
        }
    }
    batch.extend(message(b'S', &[]));
    // The answers (about 50 KiB) wait in the socket buffers until read.
    stream.write_all(&batch).await.unwrap();
    let (code, message) = error_then_close(&mut stream).await;
    assert_eq!(code, "54000", "{message}");
    another_client_gets_through(&f).await;
}

/// The most memory the weir process has had resident, in MiB (VmHWM).
fn peak_mib(f: &Fixture) -> u64 {
    let kib = procfs::status_kib(f.weir.pid(), "VmHWM").expect("VmHWM in weir's /proc status");
    kib >> 10
}

/// Reads messages until ReadyForQuery; returns the first column of the first DataRow.
async fn first_value(stream: &mut TcpStream) -> Vec<u8> {
    let mut value = None;
    loop {
        let (tag, body) = tokio::time::timeout(PROMPTLY, read_message(stream))
            .await
            .expect("an answer")
            .expect("the connection stayed open");
        assert_ne!(tag, b'E', "{}", String::from_utf8_lossy(&body));
        match tag {
            b'D' if value.is_none() => value = Some(body[6..].to_vec()),
            b'Z' => return value.expect("a row"),
            _ => {}
        }
    }
}

/// Big enough to show in the pooler's peak memory if held whole.
const BIG: usize = 128 << 20;

#[tokio::test]
async fn a_message_over_max_packet_size_is_refused_after_its_header() {
    let f = one_connection(&["max_packet_size = 1048576"]).await;
    let mut stream = raw_login(&f).await;
    let mut header = vec![b'Q'];
    header.extend_from_slice(&(300u32 << 20).to_be_bytes());
    stream.write_all(&header).await.unwrap();
    let (code, message) = error_then_close(&mut stream).await;
    assert_eq!(code, "08P01", "{message}");
    another_client_gets_through(&f).await;
}

#[tokio::test]
async fn a_big_bind_streams_through_in_transaction_mode() {
    let f = one_connection(&[]).await;
    let mut stream = raw_login(&f).await;
    // A named statement taking one bytea (OID 17).
    let mut body = b"big\0SELECT length($1)\0".to_vec();
    body.extend_from_slice(&1u16.to_be_bytes());
    body.extend_from_slice(&17u32.to_be_bytes());
    let mut batch = message(b'P', &body);
    batch.extend(message(b'S', &[]));
    stream.write_all(&batch).await.unwrap();
    while read_message(&mut stream).await.expect("ParseComplete").0 != b'Z' {}

    // Bind: portal "", statement "big", one binary parameter of BIG bytes, text results.
    let mut body = b"\0big\0".to_vec();
    body.extend_from_slice(&[0, 1, 0, 1, 0, 1]);
    body.extend_from_slice(&u32::try_from(BIG).unwrap().to_be_bytes());
    body.resize(body.len() + BIG, b'x');
    body.extend_from_slice(&[0, 0]);
    let mut batch = message(b'B', &body);
    drop(body);
    batch.extend(message(b'E', &[0, 0, 0, 0, 0]));
    batch.extend(message(b'S', &[]));
    stream.write_all(&batch).await.unwrap();
    drop(batch);
    assert_eq!(first_value(&mut stream).await, BIG.to_string().as_bytes());
    let peak = peak_mib(&f);
    assert!(peak < 64, "weir's peak memory was {peak} MiB");
}

#[tokio::test]
async fn a_big_query_streams_through_in_transaction_mode() {
    let f = one_connection(&[]).await;
    let mut stream = raw_login(&f).await;
    let mut sql = b"SELECT length('".to_vec();
    sql.resize(sql.len() + BIG, b'x');
    sql.extend_from_slice(b"')\0");
    let query = message(b'Q', &sql);
    drop(sql);
    stream.write_all(&query).await.unwrap();
    drop(query);
    assert_eq!(first_value(&mut stream).await, BIG.to_string().as_bytes());
    let peak = peak_mib(&f);
    assert!(peak < 64, "weir's peak memory was {peak} MiB");
}

#[tokio::test]
async fn a_query_too_big_to_inspect_is_refused_with_pinning_refuse() {
    let f = one_connection(&["pinning = refuse"]).await;
    let mut stream = raw_login(&f).await;
    // What a query that big does cannot be known, so it would pin the client.
    let mut sql = b"SELECT length('".to_vec();
    sql.resize(sql.len() + (17 << 20), b'x');
    sql.extend_from_slice(b"')\0");
    stream.write_all(&message(b'Q', &sql)).await.unwrap();
    let (tag, body) = read_message(&mut stream).await.expect("an answer");
    assert_eq!(tag, b'E', "{}", String::from_utf8_lossy(&body));
    assert!(body.windows(6).any(|w| w == b"C0A000"), "{body:?}");
    assert_eq!(
        read_message(&mut stream).await.expect("ReadyForQuery").0,
        b'Z'
    );
    // The session goes on.
    stream
        .write_all(&message(b'Q', b"SELECT 'on'\0"))
        .await
        .unwrap();
    assert_eq!(first_value(&mut stream).await, b"on");
}
