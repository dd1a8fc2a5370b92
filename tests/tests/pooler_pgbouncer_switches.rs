//! PgBouncer switches weir used to ignore, side by side with PgBouncer 1.25.2 on the same
//! configuration: `disable_pqexec`, `log_pooler_errors`, `log_stats` with `stats_period`,
//! `[pgbouncer]` numbers written in hexadecimal or octal, and the SHOW LISTS / SHOW STATS
//! counts exporters parse.

use std::time::Duration;

use tokio_postgres::Client;
use weir_tests::fixture::{Fixture, DATABASE, PASSWORD, USER};
use weir_tests::parity::{self, cluster, start, POOLERS};
use weir_tests::postgres::PgCluster;
use weir_tests::weir::{connect, WeirProcess};

/// How long a periodic log line or a closed connection may take to show.
const LIMIT: Duration = Duration::from_secs(15);

/// One database, the shared `[pgbouncer]` lines and `extra`.
fn ini(pg: &PgCluster, extra: &str) -> String {
    format!(
        "[databases]\n{DATABASE} = host={} port={}\n[pgbouncer]\n\
         listen_addr = 127.0.0.1\nlisten_port = {{port}}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {{dir}}/userlist.txt\nadmin_users = {USER}\n\
         pool_mode = transaction\nlog_connections = 0\nlog_disconnections = 0\n{extra}",
        pg.host(),
        pg.port()
    )
}

async fn client(pooler: &WeirProcess, database: &str) -> Client {
    connect(pooler.port(), USER, PASSWORD, database)
        .await
        .expect("logging in")
}

/// Every row of a console `SHOW`, as (column, value) pairs.
async fn show(console: &Client, what: &str) -> Vec<Vec<(String, Option<String>)>> {
    parity::rows(console, &format!("SHOW {what}")).await
}

#[tokio::test]
async fn disable_pqexec_closes_a_connection_that_sends_a_simple_query() {
    let pg = cluster().await;
    // Between transactions, inside one (transaction pooling rewrites the stream), and in
    // session pooling (the stream is relayed as it comes).
    for (mode, in_transaction) in [
        ("transaction", false),
        ("transaction", true),
        ("session", true),
    ] {
        for who in POOLERS {
            let extra = format!("disable_pqexec = 1\npool_mode = {mode}\n");
            let pooler = start(who, &ini(&pg, &extra)).await;
            let app = client(&pooler, DATABASE).await;
            let case = format!("{who}, {mode} pooling, in a transaction: {in_transaction}");
            // The extended protocol still works. The statements are kept: dropping one sends
            // Close and Sync, whose answers would be owed before the refusal.
            let select = app.prepare("SELECT 1::int4").await.expect(&case);
            let row = app.query_one(&select, &[]).await.expect(&case);
            assert_eq!(row.get::<_, i32>(0), 1, "{case}");
            let begin = app.prepare("BEGIN").await.expect(&case);
            if in_transaction {
                app.execute(&begin, &[]).await.expect(&case);
            }
            let err = app
                .simple_query("SELECT 1")
                .await
                .expect_err("a simple query is refused");
            let db = err.as_db_error().unwrap_or_else(|| panic!("{case}: {err}"));
            assert_eq!(db.severity(), "FATAL", "{case}");
            assert_eq!(db.code().code(), "08P01", "{case}");
            assert_eq!(db.message(), "PQexec disallowed", "{case}");
            assert!(
                Fixture::eventually(LIMIT, || async { app.is_closed() }).await,
                "{case}: the connection stays open"
            );
            // log_pooler_errors is on by default; the line is written before the error is
            // sent.
            assert!(
                pooler.log().contains("pooler error: PQexec disallowed"),
                "{case}: {}",
                pooler.log()
            );
        }
    }
}

#[tokio::test]
async fn without_disable_pqexec_simple_queries_pass() {
    let pg = cluster().await;
    let pooler = start("weir", &ini(&pg, "disable_pqexec = 0\n")).await;
    let app = client(&pooler, DATABASE).await;
    app.simple_query("SELECT 1").await.expect("a simple query");
}

#[tokio::test]
async fn log_pooler_errors_off_keeps_refusals_out_of_the_log() {
    let pg = cluster().await;
    for who in POOLERS {
        let pooler = start(
            who,
            &ini(&pg, "disable_pqexec = 1\nlog_pooler_errors = 0\n"),
        )
        .await;
        let app = client(&pooler, DATABASE).await;
        app.simple_query("SELECT 1")
            .await
            .expect_err("a simple query is refused");
        assert!(
            !pooler.log().contains("pooler error"),
            "{who}: {}",
            pooler.log()
        );
    }
}

/// The `stats:` line of a log with every number replaced by `N`.
fn stats_shape(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("stats: "))?;
    let from = line.find("stats: ")?;
    let mut shape = String::new();
    let mut in_number = false;
    for c in line[from..].chars() {
        if c.is_ascii_digit() {
            if !in_number {
                shape.push('N');
            }
            in_number = true;
        } else {
            shape.push(c);
            in_number = false;
        }
    }
    Some(shape.trim_end().to_owned())
}

#[tokio::test]
async fn log_stats_writes_pgbouncers_stats_line_every_stats_period() {
    let pg = cluster().await;
    let mut shapes = Vec::new();
    for who in POOLERS {
        let pooler = start(who, &ini(&pg, "stats_period = 1\n")).await;
        let app = client(&pooler, DATABASE).await;
        app.query_one("SELECT 1", &[]).await.expect(who);
        assert!(
            Fixture::eventually(LIMIT, || async { stats_shape(&pooler.log()).is_some() }).await,
            "{who} logs no stats line: {}",
            pooler.log()
        );
        shapes.push(stats_shape(&pooler.log()));
    }
    assert_eq!(
        shapes[1].as_deref(),
        Some(
            "stats: N xacts/s, N queries/s, N client parses/s, N server parses/s, N binds/s, \
             in N B/s, out N B/s, xact N us, query N us, wait N us"
        )
    );
    assert_eq!(shapes[0], shapes[1], "the line reads as PgBouncer's");
}

#[tokio::test]
async fn log_stats_off_logs_no_stats_line() {
    let pg = cluster().await;
    let quiet = start("weir", &ini(&pg, "stats_period = 1\nlog_stats = 0\n")).await;
    // Started after `quiet`, with the same period: once it has logged, `quiet` has had a
    // period too.
    let loud = start("weir", &ini(&pg, "stats_period = 1\n")).await;
    assert!(
        Fixture::eventually(LIMIT, || async { stats_shape(&loud.log()).is_some() }).await,
        "no stats line with log_stats on"
    );
    assert_eq!(stats_shape(&quiet.log()), None, "{}", quiet.log());
}

#[tokio::test]
async fn pgbouncer_numbers_take_hexadecimal_octal_and_negative_values() {
    let pg = cluster().await;
    for who in POOLERS {
        let pooler = start(
            who,
            &ini(
                &pg,
                "default_pool_size = 010\nmax_client_conn = 0x14\nmax_db_connections = -1\n",
            ),
        )
        .await;
        // A negative limit is no limit.
        let app = client(&pooler, DATABASE).await;
        app.query_one("SELECT 1", &[]).await.expect(who);
        let console = client(&pooler, "pgbouncer").await;
        let dbs = show(&console, "DATABASES").await;
        let row = dbs
            .iter()
            .find(|r| {
                r.iter()
                    .any(|(c, v)| c == "name" && v.as_deref() == Some(DATABASE))
            })
            .unwrap_or_else(|| panic!("{who}: no row for {DATABASE}"));
        let pool_size = row
            .iter()
            .find(|(c, _)| c == "pool_size")
            .map(|(_, v)| v.clone());
        assert_eq!(pool_size, Some(Some("8".to_owned())), "{who}: 010 is octal");
        let config = show(&console, "CONFIG").await;
        let max_client_conn = config
            .iter()
            .find(|r| r[0].1.as_deref() == Some("max_client_conn"))
            .map(|r| r[1].1.clone());
        assert_eq!(
            max_client_conn,
            Some(Some("20".to_owned())),
            "{who}: 0x14 is hexadecimal"
        );
    }
}

#[tokio::test]
async fn show_lists_and_stats_print_numbers_as_pgbouncer_does() {
    let pg = cluster().await;
    let mut lists = Vec::new();
    for who in POOLERS {
        let pooler = start(who, &ini(&pg, "")).await;
        let app = client(&pooler, DATABASE).await;
        app.query_one("SELECT 1", &[]).await.expect(who);
        let console = client(&pooler, "pgbouncer").await;
        let rows = show(&console, "LISTS").await;
        let names: Vec<String> = rows.iter().filter_map(|r| r[0].1.clone()).collect();
        for row in &rows {
            assert!(row[1].1.is_some(), "{who}: NULL in SHOW LISTS {row:?}");
        }
        lists.push(names);
        for what in ["STATS", "STATS_TOTALS", "STATS_AVERAGES", "TOTALS"] {
            for row in show(&console, what).await {
                for (column, value) in &row {
                    assert!(value.is_some(), "{who}: SHOW {what} {column} is NULL");
                }
            }
        }
    }
    assert_eq!(lists[0], lists[1], "SHOW LISTS rows");
}

#[tokio::test]
async fn cancel_wait_timeout_drops_a_cancel_that_cannot_be_forwarded() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let pg = cluster().await;
    // Peer 2 accepts connections and never answers: a forwarded cancel would wait on it.
    let silent_peer = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("binding");
    let silent_port = silent_peer.local_addr().expect("address").port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent_peer.accept().await {
            open.push(stream);
        }
    });
    let extra = format!(
        "peer_id = 1\ncancel_wait_timeout = 1\n[peers]\n1 = host=127.0.0.1 port={{port}}\n\
         2 = host=127.0.0.1 port={silent_port}\n"
    );
    let pooler = start("weir", &ini(&pg, &extra)).await;
    // A key issued by peer 2 (bytes 1 and 2, low byte first), forwarding bits set.
    let key = [0x12, 2, 0, 0x34, 0x56, 0x78, 0x9a, 0xbf];
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", pooler.port()))
        .await
        .expect("connects");
    let mut packet = 16u32.to_be_bytes().to_vec();
    packet.extend_from_slice(&80_877_102u32.to_be_bytes());
    packet.extend_from_slice(&key);
    stream.write_all(&packet).await.expect("CancelRequest sent");
    let mut answer = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut answer))
        .await
        .expect("weir closes the cancel connection")
        .expect("read");
    assert!(answer.is_empty(), "{answer:?}");
    assert!(
        Fixture::eventually(LIMIT, || async {
            pooler
                .log()
                .contains("not forwarded within cancel_wait_timeout")
        })
        .await,
        "{}",
        pooler.log()
    );
    held.abort();
}
