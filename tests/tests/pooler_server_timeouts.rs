//! Bounds on waiting for a server: `server_connect_timeout` covers connect, TLS and login
//! (against a "server" that accepts and never answers, and one that stalls mid-login), and
//! also every query the pooler sends itself; a server given up on costs the pool no place.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use weir_tests::fixture::{scalar, Fixture};
use weir_tests::net;
use weir_tests::postgres::{PasswordMethod, PgCluster};
use weir_tests::weir::WeirProcess;

const USER: &str = "app";
const PASSWORD: &str = "app-secret";
const SILENT: u8 = 0;
const STALL_IN_LOGIN: u8 = 1;
const FORWARD: u8 = 2;

fn ini(port: u16, extra: &str) -> String {
    format!(
        "[databases]\npostgres = host=127.0.0.1 port={port} dbname=postgres\n\
         [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {{port}}\nunix_socket_dir =\n\
         auth_type = scram-sha-256\nauth_file = {{dir}}/userlist.txt\npool_mode = session\n\
         default_pool_size = 1\nserver_login_retry = 1\nserver_connect_timeout = 1\n\
         query_wait_timeout = 10\n{extra}"
    )
}

async fn start_weir(port: u16, extra: &str) -> WeirProcess {
    WeirProcess::start(&ini(port, extra), &format!("\"{USER}\" \"{PASSWORD}\"\n"))
        .await
        .expect("weir")
}

/// Reads one length-prefixed startup-phase packet; its first four body bytes, if any.
async fn read_packet(sock: &mut TcpStream) -> std::io::Result<u32> {
    let len = sock.read_u32().await? as usize;
    let mut body = vec![0; len.saturating_sub(4)];
    sock.read_exact(&mut body).await?;
    Ok(body
        .get(..4)
        .map_or(0, |b| u32::from_be_bytes([b[0], b[1], b[2], b[3]])))
}

/// One connection to the stand-in server, as `mode` says: say nothing; take the startup
/// packet, ask for an md5 password and never answer it; or relay to the real server.
async fn serve(mut sock: TcpStream, mode: u8, real_port: u16) -> std::io::Result<()> {
    match mode {
        SILENT => {
            let mut sink = Vec::new();
            sock.read_to_end(&mut sink).await?;
        }
        STALL_IN_LOGIN => {
            // An SSLRequest (80877103) is declined; then comes the real startup packet.
            if read_packet(&mut sock).await? == 80_877_103 {
                sock.write_all(b"N").await?;
                read_packet(&mut sock).await?;
            }
            sock.write_all(&[b'R', 0, 0, 0, 12, 0, 0, 0, 5, 1, 2, 3, 4])
                .await?;
            let mut sink = Vec::new();
            sock.read_to_end(&mut sink).await?;
        }
        _ => {
            let mut real = TcpStream::connect(("127.0.0.1", real_port)).await?;
            tokio::io::copy_bidirectional(&mut sock, &mut real).await?;
        }
    }
    Ok(())
}

/// A loopback listener standing in for a server, behaving as `mode` holds at each accept.
async fn stand_in(mode: Arc<AtomicU8>, real_port: u16) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    tokio::spawn(async move {
        while let Ok((sock, _)) = listener.accept().await {
            let mode = mode.load(Ordering::SeqCst);
            tokio::spawn(serve(sock, mode, real_port));
        }
    });
    port
}

#[tokio::test]
async fn a_silent_or_stalled_server_fails_the_login_in_time_and_costs_no_place() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
        .await
        .unwrap();
    let mode = Arc::new(AtomicU8::new(SILENT));
    let port = stand_in(mode.clone(), pg.port()).await;
    let weir = start_weir(port, "").await;

    for stall in [SILENT, STALL_IN_LOGIN] {
        mode.store(stall, Ordering::SeqCst);
        // Past an earlier failure's server_login_retry, the login is tried afresh.
        let timed_out = Fixture::eventually(Duration::from_secs(10), || async {
            match net::connect(weir.port(), USER, PASSWORD, "postgres").await {
                Ok(_) => panic!("a stalled server cannot log anyone in"),
                Err(e) => format!("{e:#}").contains("server login timed out"),
            }
        })
        .await;
        assert!(timed_out, "mode {stall}\n{}", weir.log());
    }

    // The single place (default_pool_size = 1) is free again once the server answers.
    mode.store(FORWARD, Ordering::SeqCst);
    let back = Fixture::eventually(Duration::from_secs(10), || async {
        net::connect(weir.port(), USER, PASSWORD, "postgres")
            .await
            .is_ok()
    })
    .await;
    assert!(back, "{}", weir.log());
    let client = net::connect(weir.port(), USER, PASSWORD, "postgres")
        .await
        .unwrap();
    assert_eq!(scalar(&client, "SELECT 1").await, "1");
}

#[tokio::test]
async fn the_poolers_own_queries_are_bounded() {
    let pg = PgCluster::start().await.unwrap();
    pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
        .await
        .unwrap();
    // A reset that would hold the only server connection for a minute.
    let weir = start_weir(pg.port(), "server_reset_query = SELECT pg_sleep(60)\n").await;
    let first = net::connect(weir.port(), USER, PASSWORD, "postgres")
        .await
        .unwrap();
    let first_pid = scalar(&first, "SELECT pg_backend_pid()").await;
    drop(first);

    // The reset is given up after server_connect_timeout and its connection closed, so the
    // next client gets a fresh one well within query_wait_timeout.
    let next = net::connect(weir.port(), USER, PASSWORD, "postgres")
        .await
        .unwrap();
    let pid = scalar(&next, "SELECT pg_backend_pid()").await;
    assert_ne!(pid, first_pid, "{}", weir.log());
}
