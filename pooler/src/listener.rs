//! Accepting clients: TCP on `listen_addr:listen_port` and the Unix socket in
//! `unix_socket_dir`, each accepted connection counted against `max_client_conn` in the order
//! of arrival and served by its own task.

use std::io;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;

use nix::libc;
use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};
use tokio::net::{TcpListener, UnixListener};

use crate::app::Pooler;
use crate::client;
use crate::config::Settings;
use crate::stream::{Keepalive, Stream};

sockopt_impl!(
    /// `TCP_DEFER_ACCEPT`, which neither socket2 nor nix names; nix's macro builds it.
    TcpDeferAccept,
    Both,
    libc::IPPROTO_TCP,
    libc::TCP_DEFER_ACCEPT,
    libc::c_int
);

/// The `TCP_DEFER_ACCEPT` timeout PgBouncer sets when `tcp_defer_accept` is on.
const DEFER_ACCEPT_SECS: libc::c_int = 45;

/// The sockets the pooler accepts clients on.
#[derive(Debug)]
pub struct Listeners {
    tcp: Vec<TcpListener>,
    unix: Option<(UnixListener, PathBuf)>,
}

/// The sockets bound, the Unix socket already accepting and the TCP ports not yet: whoever
/// reaches the pooler over TCP finds its Unix socket (and its pid file) in place.
#[derive(Debug)]
pub struct Bound {
    tcp: Vec<tokio::net::TcpSocket>,
    tcp_defer_accept: bool,
    unix: Option<(UnixListener, PathBuf)>,
}

/// The TCP addresses `listen_addr` names: a comma-separated list where `*` means every IPv4
/// and IPv6 address.
pub fn tcp_addresses(settings: &Settings) -> Vec<String> {
    let mut out = Vec::new();
    for part in settings
        .listen_addr
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
    {
        if part == "*" {
            out.push("0.0.0.0".to_owned());
            out.push("::".to_owned());
        } else {
            out.push(part.to_owned());
        }
    }
    out
}

impl Listeners {
    /// Binds every configured socket; fails if any cannot be bound. The TCP ports accept
    /// only after [`Bound::listen`].
    pub async fn bind(settings: &Settings) -> io::Result<Bound> {
        let mut tcp = Vec::new();
        for host in tcp_addresses(settings) {
            let addrs: Vec<SocketAddr> =
                tokio::net::lookup_host((host.as_str(), settings.listen_port))
                    .await?
                    .collect();
            for addr in addrs {
                let socket = match addr {
                    SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
                    SocketAddr::V6(_) => {
                        let s = tokio::net::TcpSocket::new_v6()?;
                        // `*` binds v4 and v6 separately; keep the v6 socket v6-only.
                        socket2::SockRef::from(&s).set_only_v6(true)?;
                        s
                    }
                };
                socket.set_reuseaddr(true)?;
                if settings.so_reuseport {
                    socket.set_reuseport(true)?;
                }
                socket.bind(addr).map_err(|e| {
                    io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}"))
                })?;
                tcp.push(socket);
            }
        }
        let unix = if settings.unix_socket_dir.is_empty() {
            None
        } else {
            let path = PathBuf::from(&settings.unix_socket_dir)
                .join(format!(".s.PGSQL.{}", settings.listen_port));
            // A socket file left by a previous run that was killed would block the bind.
            if path.exists() {
                std::fs::remove_file(&path)?;
            }
            let listener = UnixListener::bind(&path).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot listen on {}: {e}", path.display()),
                )
            })?;
            if let Some(group) = settings
                .unix_socket_group
                .as_deref()
                .filter(|g| !g.is_empty())
            {
                let gid = group_id(group)?;
                std::os::unix::fs::chown(&path, None, Some(gid)).map_err(|e| {
                    io::Error::new(
                        e.kind(),
                        format!(
                            "cannot give {} to unix_socket_group {group}: {e}",
                            path.display()
                        ),
                    )
                })?;
            }
            let mode = std::fs::Permissions::from_mode(settings.unix_socket_mode);
            std::fs::set_permissions(&path, mode).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot apply unix_socket_mode to {}: {e}", path.display()),
                )
            })?;
            Some((listener, path))
        };
        Ok(Bound {
            tcp,
            tcp_defer_accept: settings.tcp_defer_accept,
            unix,
        })
    }

    /// Accepts clients until the returned future is dropped.
    pub async fn run(self, pooler: Arc<Pooler>) {
        let mut tasks = tokio::task::JoinSet::new();
        for listener in self.tcp {
            tasks.spawn(accept_tcp(listener, pooler.clone()));
        }
        let unix_path = self.unix.as_ref().map(|(_, p)| p.clone());
        if let Some((listener, _)) = self.unix {
            tasks.spawn(accept_unix(listener, pooler.clone()));
        }
        let _cleanup = unix_path.map(SocketFile);
        // Draining closes the listening sockets: new clients are refused at once (and
        // Kubernetes sends them to another pod), while connected clients are served on.
        tokio::select! {
            () = async { while tasks.join_next().await.is_some() {} } => {}
            () = pooler.drained() => tasks.abort_all(),
        }
    }
}

impl Bound {
    /// The local addresses of the TCP sockets.
    pub fn tcp_local_addrs(&self) -> Vec<SocketAddr> {
        self.tcp
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }

    /// Opens the TCP ports: from here on, clients are accepted there too.
    pub fn listen(self) -> io::Result<Listeners> {
        let mut tcp = Vec::new();
        for socket in self.tcp {
            let listener = socket.listen(1024)?;
            if self.tcp_defer_accept {
                nix::sys::socket::setsockopt(&listener, TcpDeferAccept, &DEFER_ACCEPT_SECS)
                    .map_err(io::Error::from)?;
            }
            tcp.push(listener);
        }
        Ok(Listeners {
            tcp,
            unix: self.unix,
        })
    }
}

/// The id of `unix_socket_group`: a number, or a group name (as PgBouncer reads it).
fn group_id(group: &str) -> io::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("could not find unix_socket_group {group:?}"),
        )),
        Err(e) => Err(io::Error::other(format!(
            "could not look up unix_socket_group {group:?}: {e}"
        ))),
    }
}

/// Removes the Unix socket file when the listeners stop.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

async fn accept_tcp(listener: TcpListener, pooler: Arc<Pooler>) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let counted = pooler.client_connected();
                let keepalive = Keepalive::of(&pooler.config());
                match Stream::tcp(socket, &keepalive) {
                    Ok(stream) => {
                        let serve =
                            client::serve(pooler.clone(), stream, peer.to_string(), counted);
                        tokio::spawn(serve);
                    }
                    Err(e) => tracing::warn!(%peer, error = %e, "could not set up a client socket"),
                }
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

async fn accept_unix(listener: UnixListener, pooler: Arc<Pooler>) {
    loop {
        match listener.accept().await {
            Ok((socket, _)) => {
                let counted = pooler.client_connected();
                tokio::spawn(client::serve(
                    pooler.clone(),
                    Stream::Unix(socket),
                    "unix".to_owned(),
                    counted,
                ));
            }
            Err(e) => accept_failed(e).await,
        }
    }
}

/// Out of file descriptors and similar: log, pause briefly, keep accepting.
async fn accept_failed(e: io::Error) {
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_unix_socket_gets_unix_socket_mode() {
        let dir = std::env::temp_dir().join(format!("weir-listener-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let settings = Settings {
            unix_socket_dir: dir.to_string_lossy().into_owned(),
            unix_socket_mode: 0o640,
            listen_port: 6999,
            ..Settings::default()
        };
        let listeners = Listeners::bind(&settings).await.unwrap();
        let path = dir.join(".s.PGSQL.6999");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        drop(listeners);
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[tokio::test]
    async fn tcp_defer_accept_sets_the_option_on_the_listeners() {
        let deferred = |on: bool| async move {
            let settings = Settings {
                listen_addr: "127.0.0.1".into(),
                listen_port: 0,
                unix_socket_dir: String::new(),
                tcp_defer_accept: on,
                ..Settings::default()
            };
            let listeners = Listeners::bind(&settings).await.unwrap().listen().unwrap();
            nix::sys::socket::getsockopt(&listeners.tcp[0], TcpDeferAccept).unwrap()
        };
        // The kernel keeps the time as retransmissions and rounds it up when read back.
        assert!(deferred(true).await >= DEFER_ACCEPT_SECS);
        assert_eq!(deferred(false).await, 0);
    }

    #[tokio::test]
    async fn the_unix_socket_accepts_before_the_tcp_port_does() {
        let dir = std::env::temp_dir().join(format!("weir-listen-order-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let settings = Settings {
            listen_addr: "127.0.0.1".into(),
            listen_port: 0,
            unix_socket_dir: dir.to_string_lossy().into_owned(),
            ..Settings::default()
        };
        let bound = Listeners::bind(&settings).await.unwrap();
        let addr = bound.tcp_local_addrs()[0];
        let unix = tokio::net::UnixStream::connect(dir.join(".s.PGSQL.0")).await;
        let early = tokio::net::TcpStream::connect(addr).await;
        let listeners = bound.listen().unwrap();
        let late = tokio::net::TcpStream::connect(addr).await;
        drop(listeners);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(unix.is_ok(), "{unix:?}");
        let refused = early.expect_err("the TCP port accepted before listen");
        assert_eq!(refused.kind(), io::ErrorKind::ConnectionRefused);
        assert!(late.is_ok(), "{late:?}");
    }

    #[test]
    fn unix_socket_group_is_a_number_or_a_name() {
        assert_eq!(group_id("4242").unwrap(), 4242);
        assert_eq!(group_id("root").unwrap(), 0);
        let e = group_id("no-such-group-here").unwrap_err();
        assert!(e.to_string().contains("could not find"), "{e}");
    }
}
