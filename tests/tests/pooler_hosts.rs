//! Host lists in `[databases]`: `host=a,b` with `port=1,2`, `load_balance_hosts` and
//! `target_session_attrs`, against real PostgreSQL clusters (a primary read-only by default,
//! and a streaming standby), and side by side with PgBouncer 1.25.2 for what PgBouncer also
//! does.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_postgres::Client;
use weir_tests::fixture::{scalar, sqlstate, Fixture};
use weir_tests::net;
use weir_tests::postgres::{PasswordMethod, PgCluster, PgOptions};
use weir_tests::weir::WeirProcess;

const USER: &str = "app";
const PASSWORD: &str = "app-secret";

/// A cluster with the application role, listening on 127.0.0.1 and 127.0.0.2 (so a host list
/// of both reaches one server by two names), read-only by default when `read_only`.
async fn cluster(read_only: bool) -> PgCluster {
    let mut opts = PgOptions {
        hba: Some(
            "local all postgres trust\nlocal all all md5\n\
             host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.0/8 md5\n\
             host replication postgres 127.0.0.1/32 trust\n"
                .into(),
        ),
        ..PgOptions::default()
    };
    opts.extra_conf
        .push("listen_addresses = '127.0.0.1,127.0.0.2'".into());
    let pg = PgCluster::start_with(opts).await.expect("cluster");
    pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("role");
    if read_only {
        // After the role exists: a read-only server cannot create it.
        pg.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            .await
            .expect("read-only");
        pg.execute("SELECT pg_reload_conf()").await.expect("reload");
    }
    pg
}

/// A session-mode pooler ini whose `postgres` database is `conn`.
fn ini(conn: &str) -> String {
    format!(
        "[databases]\npostgres = {conn} dbname=postgres\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {{port}}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {{dir}}/userlist.txt\npool_mode = session\n\
         default_pool_size = 4\nserver_login_retry = 1\n"
    )
}

fn userlist() -> String {
    format!("\"{USER}\" \"{PASSWORD}\"\n")
}

async fn client(pooler: &WeirProcess) -> Client {
    net::connect(pooler.port(), USER, PASSWORD, "postgres")
        .await
        .unwrap_or_else(|e| panic!("login through the pooler: {e}\n{}", pooler.log()))
}

/// Which server each of two clients held at once (session mode: one server each) reached:
/// its address and port as the server sees them.
async fn two_sessions(pooler: &WeirProcess) -> Vec<String> {
    let (a, b) = (client(pooler).await, client(pooler).await);
    let sql = "SELECT host(inet_server_addr()) || ':' || current_setting('port')";
    vec![scalar(&a, sql).await, scalar(&b, sql).await]
}

#[tokio::test]
async fn host_lists_round_robin_or_stick_like_pgbouncer() {
    let pg = cluster(false).await;
    let p = pg.port();
    let both: BTreeSet<String> = [format!("127.0.0.1:{p}"), format!("127.0.0.2:{p}")].into();
    for pgbouncer in [false, true] {
        let start = |text: String| async move {
            if pgbouncer {
                WeirProcess::start_pgbouncer(&text, &userlist()).await
            } else {
                WeirProcess::start(&text, &userlist()).await
            }
        };
        let rr = start(ini(&format!("host=127.0.0.1,127.0.0.2 port={p}")))
            .await
            .expect("pooler");
        let seen: BTreeSet<String> = two_sessions(&rr).await.into_iter().collect();
        assert_eq!(
            seen,
            both,
            "round-robin spreads new connections\n{}",
            rr.log()
        );

        let sticky = start(ini(&format!(
            "host=127.0.0.1,127.0.0.2 port={p} load_balance_hosts=disable"
        )))
        .await
        .expect("pooler");
        let seen = two_sessions(&sticky).await;
        assert_eq!(
            seen,
            vec![format!("127.0.0.1:{p}"); 2],
            "disable keeps the first host"
        );
    }
}

#[tokio::test]
async fn port_lists_and_target_session_attrs_pick_the_right_server() {
    let (rw, ro) = (cluster(false).await, cluster(true).await);
    let (prw, pro) = (rw.port(), ro.port());
    let pair = format!("host=127.0.0.1,127.0.0.1 port={pro},{prw}");
    let at = |port: u16| vec![format!("127.0.0.1:{port}"); 2];

    // One port per host: round-robin reaches both servers.
    let weir = WeirProcess::start(&ini(&pair), &userlist()).await.unwrap();
    let seen: BTreeSet<String> = two_sessions(&weir).await.into_iter().collect();
    assert_eq!(seen, at(pro).into_iter().chain(at(prw)).collect());

    for (attrs, want) in [
        ("read-write", prw),
        ("primary", pro),
        ("read-only", pro),
        ("prefer-standby", pro),
    ] {
        let conn = format!("{pair} load_balance_hosts=disable target_session_attrs={attrs}");
        let weir = WeirProcess::start(&ini(&conn), &userlist()).await.unwrap();
        assert_eq!(
            two_sessions(&weir).await,
            at(want),
            "{attrs}\n{}",
            weir.log()
        );
    }

    // A host that cannot be reached is skipped, as libpq does.
    let dead = net::free_port();
    let conn = format!("host=127.0.0.1,127.0.0.1 port={dead},{prw} load_balance_hosts=disable");
    let weir = WeirProcess::start(&ini(&conn), &userlist()).await.unwrap();
    assert_eq!(two_sessions(&weir).await, at(prw));
}

#[tokio::test]
async fn no_acceptable_server_is_a_clear_error_and_costs_no_capacity() {
    let ro = cluster(true).await;
    let conn = format!(
        "host=127.0.0.1 port={} target_session_attrs=read-write",
        ro.port()
    );
    let weir = WeirProcess::start(&ini(&conn), &userlist()).await.unwrap();
    for attempt in 0..6 {
        let err = net::connect(weir.port(), USER, PASSWORD, "postgres")
            .await
            .expect_err("no read-write server");
        let err = err
            .downcast_ref::<tokio_postgres::Error>()
            .expect("a PostgreSQL error");
        // Later attempts within server_login_retry repeat the reason under 08006.
        let want = if attempt == 0 { "08000" } else { "08" };
        let code = sqlstate(err).unwrap_or_default();
        assert!(code.starts_with(want), "{err:?}");
        let message = err.as_db_error().map(|e| e.message()).unwrap_or_default();
        assert!(message.contains("session is read-only"), "{message}");
        assert!(
            message.contains("target_session_attrs=read-write"),
            "{message}"
        );
    }
    // The refused connections were closed, not kept.
    let closed = Fixture::eventually(Duration::from_secs(10), || async {
        ro.backends(USER, "postgres").await.ok() == Some(0)
    })
    .await;
    assert!(closed, "refused server connections must be closed");

    // Once the server takes writes, the whole pool (default_pool_size = 4) is there.
    ro.execute("ALTER SYSTEM RESET default_transaction_read_only")
        .await
        .unwrap();
    ro.execute("SELECT pg_reload_conf()").await.unwrap();
    let back = Fixture::eventually(Duration::from_secs(10), || async {
        net::connect(weir.port(), USER, PASSWORD, "postgres")
            .await
            .is_ok()
    })
    .await;
    assert!(back, "{}", weir.log());
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(client(&weir).await);
    }
    for c in &held {
        assert_eq!(scalar(c, "SHOW transaction_read_only").await, "off");
    }
}

#[tokio::test]
async fn a_streaming_standby_is_told_from_its_primary() {
    let primary = cluster(false).await;
    let standby = PgCluster::start_standby_of(&primary)
        .await
        .expect("standby");
    let (pp, ps) = (primary.port(), standby.port());
    let at = |port: u16| vec![format!("127.0.0.1:{port}"); 2];
    // The primary comes first, so only a check of each server can pick the standby.
    let pair = format!("host=127.0.0.1,127.0.0.1 port={pp},{ps} load_balance_hosts=disable");
    for (attrs, want) in [
        ("standby", ps),
        ("prefer-standby", ps),
        ("read-only", ps),
        ("primary", pp),
        ("read-write", pp),
        ("any", pp),
    ] {
        let conn = format!("{pair} target_session_attrs={attrs}");
        let weir = WeirProcess::start(&ini(&conn), &userlist()).await.unwrap();
        assert_eq!(
            two_sessions(&weir).await,
            at(want),
            "{attrs}\n{}",
            weir.log()
        );
    }
    // With the standby alone, primary finds nothing and says why.
    let alone = format!("host=127.0.0.1 port={ps} target_session_attrs=primary");
    let weir = WeirProcess::start(&ini(&alone), &userlist()).await.unwrap();
    let err = net::connect(weir.port(), USER, PASSWORD, "postgres")
        .await
        .expect_err("no primary");
    assert!(
        format!("{err:#}").contains("server is in hot standby mode"),
        "{err:#}"
    );
}

/// Relays between the pooler and the server on `server_port`, leaving out the server's
/// ParameterStatus messages named `hidden`, as a PostgreSQL older than 14 (which reports
/// neither) would.
async fn hide_parameters(mut pooler: TcpStream, server_port: u16, hidden: &[&str]) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", server_port)).await else {
        return;
    };
    let (mut from_server, mut to_server) = server.into_split();
    let (mut from_pooler, mut to_pooler) = pooler.split();
    let upstream = tokio::io::copy(&mut from_pooler, &mut to_server);
    let downstream = relay_without(&mut from_server, &mut to_pooler, hidden);
    let _ = tokio::join!(upstream, downstream);
}

/// Copies messages from `from` to `to` until either closes, dropping the hidden reports.
async fn relay_without(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    hidden: &[&str],
) -> std::io::Result<()> {
    loop {
        let mut head = [0u8; 5];
        from.read_exact(&mut head).await?;
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        from.read_exact(&mut body).await?;
        let name = body.split(|b| *b == 0).next().unwrap_or_default();
        if head[0] == b'S' && hidden.iter().any(|h| h.as_bytes() == name) {
            continue;
        }
        to.write_all(&head).await?;
        to.write_all(&body).await?;
    }
}

#[tokio::test]
async fn servers_that_do_not_report_their_role_are_asked() {
    let ro = cluster(true).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let server_port = ro.port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            tokio::spawn(hide_parameters(
                sock,
                server_port,
                &["in_hot_standby", "default_transaction_read_only"],
            ));
        }
    });
    // Plain: the relay reads the server's messages.
    let conn = |attrs: &str| {
        ini(&format!(
            "host=127.0.0.1 port={port} target_session_attrs={attrs}"
        )) + "server_tls_sslmode = disable\n"
    };
    let weir = WeirProcess::start(&conn("read-write"), &userlist())
        .await
        .unwrap();
    let err = net::connect(weir.port(), USER, PASSWORD, "postgres")
        .await
        .expect_err("read-only server");
    assert!(
        format!("{err:#}").contains("session is read-only"),
        "{err:#}"
    );
    let weir = WeirProcess::start(&conn("read-only"), &userlist())
        .await
        .unwrap();
    let client = client(&weir).await;
    assert_eq!(scalar(&client, "SHOW transaction_read_only").await, "on");
    assert!(
        scalar(&client, "SHOW in_hot_standby").await == "off",
        "the relay hides only the reports"
    );
}
