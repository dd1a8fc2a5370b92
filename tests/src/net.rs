//! Ports and client connections on the loopback interface.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use tokio_postgres::{Client, Config, NoTls};

/// The address every server started by the harness listens on.
pub const HOST: &str = "127.0.0.1";

/// How long a client connection attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Ports already handed out by this process; never handing one out twice keeps two tests
/// running in parallel from being given the same port before either has bound it.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// Returns a loopback TCP port that is free right now and was not returned before by this
/// process, for a server a test is about to start.
///
/// The port is only probed, not held, so another process may still take it before the server
/// binds; callers that can tell "address in use" apart retry with a new port.
pub fn free_port() -> u16 {
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        // Binding port 0 makes the kernel pick an unused port; errors here mean the machine
        // has no loopback, which no test can survive, so a panic with the reason is right.
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap_or_else(|err| panic!("cannot bind a loopback port: {err}"));
        let port = listener
            .local_addr()
            .unwrap_or_else(|err| panic!("cannot read a bound port: {err}"))
            .port();
        if handed_out.insert(port) {
            return port;
        }
    }
}

/// Waits until something accepts TCP connections on loopback `port`, for servers whose
/// readiness is not otherwise observable; fails after `timeout`.
pub async fn wait_for_port(port: u16, timeout: Duration) -> anyhow::Result<()> {
    wait_for_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, port)), timeout).await
}

/// Waits until something accepts TCP connections on `addr`; fails after `timeout`.
pub async fn wait_for_addr(addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        );
        // Polling a port of the ephemeral range that nothing listens on can connect a socket
        // to itself (the kernel picks that very port as its source): that is no listener.
        if let Ok(Ok(stream)) = attempt.await {
            let looped = matches!(
                (stream.local_addr(), stream.peer_addr()),
                (Ok(local), Ok(peer)) if local == peer
            );
            if !looped {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            bail!("nothing accepted connections on {addr} within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A tokio-postgres configuration for `user` on loopback `port`, without TLS negotiation,
/// so tests can adjust it (e.g. `application_name`) before connecting.
pub fn client_config(port: u16, user: &str, password: &str, db: &str) -> Config {
    client_config_at(HOST, port, user, password, db)
}

/// As [`client_config`], for a server on `host` rather than loopback.
pub fn client_config_at(host: &str, port: u16, user: &str, password: &str, db: &str) -> Config {
    let mut config = Config::new();
    config
        .host(host)
        .port(port)
        .user(user)
        .password(password)
        .dbname(db)
        .connect_timeout(CONNECT_TIMEOUT);
    config
}

/// Connects `config` and drives the connection on a spawned task, returning the client; the
/// error keeps the underlying `tokio_postgres::Error` so tests can inspect its SQLSTATE.
pub async fn connect_with(config: &Config) -> anyhow::Result<Client> {
    let (client, connection) = config.connect(NoTls).await.with_context(|| {
        format!(
            "connecting to port {:?} as {:?}",
            config.get_ports(),
            config.get_user().unwrap_or_default()
        )
    })?;
    // A broken connection surfaces as an error on the client's next call, so the task's own
    // result carries nothing more.
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// As [`connect_with`], over TLS made by `tls` (as `sslmode` in `config` asks).
pub async fn connect_tls(
    config: &Config,
    tls: crate::tls::RustlsConnect,
) -> anyhow::Result<Client> {
    let (client, connection) = config.connect(tls).await.with_context(|| {
        format!(
            "connecting over TLS to port {:?} as {:?}",
            config.get_ports(),
            config.get_user().unwrap_or_default()
        )
    })?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Connects as `user` with `password` to database `db` on loopback `port`; see
/// [`connect_with`].
pub async fn connect(port: u16, user: &str, password: &str, db: &str) -> anyhow::Result<Client> {
    connect_with(&client_config(port, user, password, db)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct() {
        let ports: BTreeSet<u16> = (0..50).map(|_| free_port()).collect();
        assert_eq!(ports.len(), 50);
        assert!(!ports.contains(&0));
    }

    #[tokio::test]
    async fn wait_for_port_sees_a_listener() {
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        wait_for_port(port, Duration::from_secs(5)).await.unwrap();
    }

    #[tokio::test]
    async fn wait_for_port_gives_up() {
        let port = free_port();
        let started = Instant::now();
        let err = wait_for_port(port, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(err.to_string().contains(&port.to_string()), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn client_config_targets_loopback() {
        let config = client_config(6432, "alice", "secret", "app");
        assert_eq!(config.get_ports(), &[6432]);
        assert_eq!(config.get_user(), Some("alice"));
        assert_eq!(config.get_password(), Some(&b"secret"[..]));
        assert_eq!(config.get_dbname(), Some("app"));
    }
}
