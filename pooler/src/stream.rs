//! A byte stream that is either TCP or a Unix-domain socket.
//!
//! Clients reach the pooler over both, and a `[databases]` host that starts with `/` is a
//! socket directory, so both halves of the data path need one type for either transport.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A connected socket of either kind.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection (Nagle disabled: the protocol is request/response).
    Tcp(TcpStream),
    /// A Unix-domain socket connection.
    Unix(UnixStream),
}

/// TCP keepalive settings, as `tcp_keepalive`, `tcp_keepidle`, `tcp_keepintvl` and
/// `tcp_keepcnt` configure them (zero leaves the operating system's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Keepalive {
    /// Whether keepalive probes are enabled at all.
    pub enabled: bool,
    /// Idle time before the first probe.
    pub idle: Duration,
    /// Time between probes.
    pub interval: Duration,
    /// Unanswered probes before the connection is dropped.
    pub count: u32,
    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged.
    pub user_timeout: Duration,
}

impl Stream {
    /// Prepares a freshly connected TCP stream: no Nagle delay, keepalive as configured.
    pub fn tcp(stream: TcpStream, keepalive: &Keepalive) -> io::Result<Stream> {
        stream.set_nodelay(true)?;
        let sock = socket2::SockRef::from(&stream);
        if keepalive.enabled {
            let mut ka = socket2::TcpKeepalive::new();
            if !keepalive.idle.is_zero() {
                ka = ka.with_time(keepalive.idle);
            }
            if !keepalive.interval.is_zero() {
                ka = ka.with_interval(keepalive.interval);
            }
            if keepalive.count > 0 {
                ka = ka.with_retries(keepalive.count);
            }
            sock.set_tcp_keepalive(&ka)?;
        }
        if !keepalive.user_timeout.is_zero() {
            sock.set_tcp_user_timeout(Some(keepalive.user_timeout))?;
        }
        Ok(Stream::Tcp(stream))
    }

    /// The peer's and the local end of the connection, as the admin console shows them;
    /// a Unix-domain socket shows as `unix` with `unix_port`.
    pub fn endpoints(&self, unix_port: u16) -> (Endpoint, Endpoint) {
        let tcp = |a: io::Result<std::net::SocketAddr>| match a {
            Ok(a) => Endpoint::tcp(a),
            Err(_) => Endpoint::unix(unix_port),
        };
        match self {
            Stream::Tcp(s) => (tcp(s.peer_addr()), tcp(s.local_addr())),
            Stream::Unix(_) => (Endpoint::unix(unix_port), Endpoint::unix(unix_port)),
        }
    }

    /// Whether the peer has sent something (or closed) that nobody has read yet.
    ///
    /// An idle server connection must have nothing to say: PostgreSQL writes a FATAL and closes
    /// when it shuts down or kills a backend, so unread bytes mean the connection is unusable.
    /// The check asks the reactor's cached readiness first and only then the kernel.
    pub fn has_unread_input(&self) -> bool {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let ready = match self {
            Stream::Tcp(s) => s.poll_read_ready(&mut cx),
            Stream::Unix(s) => s.poll_read_ready(&mut cx),
        };
        if !matches!(ready, Poll::Ready(_)) {
            return false;
        }
        // Consuming the byte is harmless: a connection with input is discarded anyway.
        let mut probe = [0u8; 1];
        let read = match self {
            Stream::Tcp(s) => s.try_read(&mut probe),
            Stream::Unix(s) => s.try_read(&mut probe),
        };
        match read {
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Waits until the stream can be read, without reading.
    pub async fn readable(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.readable().await,
            Stream::Unix(s) => s.readable().await,
        }
    }

    /// Writes what the socket accepts now without waiting; for best-effort goodbyes.
    pub fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
        }
    }

    /// Reads what is available now without waiting, appending to `buf`; `None` when there
    /// was nothing after all. Unlike [`Stream::try_read_buf`], a short read tells the reactor
    /// that the socket is drained, so the next read waits for readiness instead of first
    /// trying, and failing, in a system call: one fewer per transaction on the hot path.
    pub fn read_now(&mut self, buf: &mut bytes::BytesMut) -> Option<io::Result<usize>> {
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        match tokio_util::io::poll_read_buf(Pin::new(self), &mut cx, buf) {
            Poll::Ready(r) => Some(r),
            Poll::Pending => None,
        }
    }

    /// Reads what is available without waiting, appending to `buf`.
    pub fn try_read_buf(&self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read_buf(buf),
            Stream::Unix(s) => s.try_read_buf(buf),
        }
    }
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Unix(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// One end of a connection as the console shows it: an IP address and port, or `unix` and
/// the listening port for a Unix-domain socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The address (`unix` for a Unix-domain socket).
    pub addr: String,
    /// The port.
    pub port: u16,
}

impl Endpoint {
    /// The endpoint of a TCP socket address.
    pub fn tcp(addr: std::net::SocketAddr) -> Endpoint {
        Endpoint {
            addr: addr.ip().to_string(),
            port: addr.port(),
        }
    }

    /// A Unix-domain socket served on `port`.
    pub fn unix(port: u16) -> Endpoint {
        Endpoint {
            addr: "unix".to_owned(),
            port,
        }
    }
}
