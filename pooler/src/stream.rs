//! A byte stream that is TCP, a Unix-domain socket, or TLS over TCP.
//!
//! Clients reach the pooler over all three, and a `[databases]` host that starts with `/` is
//! a socket directory, so both halves of the data path need one type for any transport. The
//! TLS variant is boxed: plain TCP, the hot path, stays as small and direct as before.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::TlsStream;

/// A connected socket of either kind.
#[derive(Debug)]
pub enum Stream {
    /// A TCP connection (Nagle disabled: the protocol is request/response).
    Tcp(TcpStream),
    /// A Unix-domain socket connection.
    Unix(UnixStream),
    /// TLS over TCP, toward a client (server side of TLS) or a server (client side).
    Tls(Box<TlsStream<TcpStream>>),
}

/// How long a closing connection waits for its peer to stop sending.
pub const LINGER_TIME: Duration = Duration::from_secs(1);

/// How many bytes a closing connection reads and discards at most.
pub const LINGER_BYTES: usize = 64 << 20;

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
    /// `SO_SNDBUF`/`SO_RCVBUF` (`tcp_socket_buffer`); 0 leaves the kernel's sizes.
    pub socket_buffer: u32,
}

impl Keepalive {
    /// The keepalive settings of `[pgbouncer]`, for every socket.
    pub fn of(config: &crate::config::Config) -> Keepalive {
        let s = &config.pgbouncer;
        Keepalive {
            enabled: s.tcp_keepalive,
            idle: s.tcp_keepidle,
            interval: s.tcp_keepintvl,
            count: s.tcp_keepcnt,
            user_timeout: s.tcp_user_timeout,
            socket_buffer: s.tcp_socket_buffer,
        }
    }
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
        if keepalive.socket_buffer > 0 {
            let size = keepalive.socket_buffer as usize;
            sock.set_send_buffer_size(size)?;
            sock.set_recv_buffer_size(size)?;
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
            Stream::Tls(s) => (
                tcp(s.get_ref().0.peer_addr()),
                tcp(s.get_ref().0.local_addr()),
            ),
            Stream::Unix(_) => (Endpoint::unix(unix_port), Endpoint::unix(unix_port)),
        }
    }

    /// The first byte the peer sent on a plain TCP connection, left unread; `None` for
    /// other streams or when the peer closed without a word.
    pub async fn peek_tcp_byte(&self) -> io::Result<Option<u8>> {
        let Stream::Tcp(s) = self else {
            return Ok(None);
        };
        let mut first = [0u8; 1];
        Ok((s.peek(&mut first).await? == 1).then_some(first[0]))
    }

    /// The OS user id of the process at the other end of a Unix-domain socket (SO_PEERCRED),
    /// for PgBouncer's peer logins; `None` over TCP.
    pub fn peer_uid(&self) -> Option<u32> {
        match self {
            Stream::Unix(s) => s.peer_cred().ok().map(|c| c.uid()),
            _ => None,
        }
    }

    /// The client's IP address over TCP (and TLS); `None` for a Unix-domain socket.
    pub fn peer_ip(&self) -> Option<std::net::IpAddr> {
        match self {
            Stream::Tcp(s) => s.peer_addr().ok().map(|a| a.ip()),
            Stream::Tls(s) => s.get_ref().0.peer_addr().ok().map(|a| a.ip()),
            Stream::Unix(_) => None,
        }
    }

    /// The OS user name of the process at the other end of a Unix-domain socket.
    pub fn peer_os_user(&self) -> Option<String> {
        let uid = nix::unistd::Uid::from_raw(self.peer_uid()?);
        nix::unistd::User::from_uid(uid)
            .ok()
            .flatten()
            .map(|u| u.name)
    }

    /// Whether the peer of a Unix-domain socket runs as this process's own OS user.
    pub fn peer_is_own_user(&self) -> bool {
        self.peer_uid() == Some(nix::unistd::getuid().as_raw())
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The verified certificate the peer presented over TLS, if any.
    pub fn peer_certificate(&self) -> Option<&rustls::pki_types::CertificateDer<'static>> {
        match self {
            Stream::Tls(s) => s.get_ref().1.peer_certificates()?.first(),
            _ => None,
        }
    }

    /// The application protocol agreed by ALPN, if any.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        match self {
            Stream::Tls(s) => s.get_ref().1.alpn_protocol(),
            _ => None,
        }
    }

    /// Decrypted bytes that rustls holds and nobody has read yet: the socket may be drained
    /// while these wait, so readiness of the socket alone does not tell.
    fn tls_buffered(&mut self) -> bool {
        let state = match self {
            Stream::Tls(s) => match s.as_mut() {
                TlsStream::Client(c) => c.get_mut().1.process_new_packets(),
                TlsStream::Server(c) => c.get_mut().1.process_new_packets(),
            },
            _ => return false,
        };
        // A protocol error surfaces on the next read; report it as readable.
        state.map_or(true, |s| {
            s.plaintext_bytes_to_read() > 0 || s.peer_has_closed()
        })
    }

    /// Whether the peer has sent something (or closed) that nobody has read yet.
    ///
    /// An idle server connection must have nothing to say: PostgreSQL writes a FATAL and closes
    /// when it shuts down or kills a backend, so unread bytes mean the connection is unusable.
    /// The check asks the reactor's cached readiness first (`try_read` does, before any
    /// system call) and only then the kernel.
    pub fn has_unread_input(&self) -> bool {
        // Consuming the byte is harmless: a connection with input is discarded anyway.
        let mut probe = [0u8; 1];
        let read = match self {
            Stream::Tcp(s) => s.try_read(&mut probe),
            Stream::Tls(s) => s.get_ref().0.try_read(&mut probe),
            Stream::Unix(s) => s.try_read(&mut probe),
        };
        match read {
            Ok(_) => true,
            Err(e) => e.kind() != io::ErrorKind::WouldBlock,
        }
    }

    /// Waits until the stream can be read, without reading. Over TLS, output still held by
    /// rustls is sent first, since the peer may be waiting for it before it says more.
    pub async fn readable(&mut self) -> io::Result<()> {
        if let Stream::Tls(_) = self {
            tokio::io::AsyncWriteExt::flush(self).await?;
            if self.tls_buffered() {
                return Ok(());
            }
        }
        std::future::poll_fn(|cx| self.poll_socket_readable(cx)).await
    }

    /// Readiness of the socket underneath, through its one reader slot rather than
    /// `readable()`'s list of waiters: the stream has one reader, and the slot costs less per
    /// wait.
    fn poll_socket_readable(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            Stream::Tcp(s) => s.poll_read_ready(cx),
            Stream::Tls(s) => s.get_ref().0.poll_read_ready(cx),
            Stream::Unix(s) => s.poll_read_ready(cx),
        }
    }

    /// Ends the connection so that what was written last still arrives: the write side is shut
    /// (FIN, after TLS's close_notify), then what the peer still sends is read and discarded
    /// until it closes too, for at most [`LINGER_TIME`] and [`LINGER_BYTES`]. Closed with
    /// unread input, the socket would send a reset instead, which fails the peer's pending
    /// writes and can discard the reply it has not read yet.
    pub async fn linger(&mut self) {
        self.linger_within(LINGER_TIME, LINGER_BYTES).await;
    }

    async fn linger_within(&mut self, time: Duration, bytes: usize) {
        let drain = async {
            if self.shutdown().await.is_err() {
                return;
            }
            let mut sink = vec![0u8; 16 << 10];
            let mut left = bytes;
            while left > 0 {
                match self.read(&mut sink).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(time, drain).await;
    }

    /// Writes what the socket accepts now without waiting; for best-effort goodbyes.
    pub fn try_write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_write(buf),
            Stream::Unix(s) => s.try_write(buf),
            Stream::Tls(_) => {
                let waker = futures::task::noop_waker();
                let mut cx = Context::from_waker(&waker);
                let written = match Pin::new(&mut *self).poll_write(&mut cx, buf) {
                    Poll::Ready(r) => r?,
                    Poll::Pending => return Err(io::ErrorKind::WouldBlock.into()),
                };
                let _ = Pin::new(self).poll_flush(&mut cx);
                Ok(written)
            }
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
    pub fn try_read_buf(&mut self, buf: &mut bytes::BytesMut) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.try_read_buf(buf),
            Stream::Unix(s) => s.try_read_buf(buf),
            Stream::Tls(_) => self
                .read_now(buf)
                .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into())),
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
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
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
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_flush(cx),
            Stream::Unix(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One end of a connection as the console shows it: an IP address and port, or `unix` and
/// the listening port for a Unix-domain socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The address.
    pub addr: Host,
    /// The port.
    pub port: u16,
}

/// The address of an [`Endpoint`], kept as an address rather than as text: every client's
/// registry record holds two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Host {
    /// An IP address.
    Ip(std::net::IpAddr),
    /// A Unix-domain socket (shown as `unix`).
    Unix,
}

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Host::Ip(ip) => ip.fmt(f),
            Host::Unix => f.write_str("unix"),
        }
    }
}

impl Endpoint {
    /// The endpoint of a TCP socket address.
    pub fn tcp(addr: std::net::SocketAddr) -> Endpoint {
        Endpoint {
            addr: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    /// A Unix-domain socket served on `port`.
    pub fn unix(port: u16) -> Endpoint {
        Endpoint {
            addr: Host::Unix,
            port,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_show_as_the_console_printed_them() {
        let v4 = Endpoint::tcp("10.0.0.7:5432".parse().unwrap());
        assert_eq!(v4.addr.to_string(), "10.0.0.7");
        let v6 = Endpoint::tcp("[::1]:5432".parse().unwrap());
        assert_eq!(v6.addr.to_string(), "::1");
        assert_eq!(Endpoint::unix(6432).addr.to_string(), "unix");
    }

    #[tokio::test]
    async fn keepalive_and_user_timeout_reach_the_socket() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let keepalive = Keepalive {
            enabled: true,
            idle: Duration::from_secs(60),
            interval: Duration::from_secs(10),
            count: 6,
            user_timeout: Duration::from_millis(2500),
            socket_buffer: 0,
        };
        let stream = Stream::tcp(TcpStream::connect(addr).await.unwrap(), &keepalive).unwrap();
        let Stream::Tcp(tcp) = &stream else {
            panic!("a TCP stream")
        };
        let sock = socket2::SockRef::from(tcp);
        assert!(sock.keepalive().unwrap());
        assert_eq!(sock.keepalive_time().unwrap(), Duration::from_secs(60));
        assert_eq!(sock.keepalive_interval().unwrap(), Duration::from_secs(10));
        assert_eq!(sock.keepalive_retries().unwrap(), 6);
        assert_eq!(
            sock.tcp_user_timeout().unwrap(),
            Some(Duration::from_millis(2500))
        );
    }

    /// A connected pair: ours as a [`Stream`], the peer's as a plain socket.
    async fn pair() -> (Stream, TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        (Stream::Tcp(accepted.unwrap().0), connected.unwrap())
    }

    #[tokio::test]
    async fn lingering_sends_fin_and_takes_the_peer_s_input_until_it_closes() {
        let (mut ours, mut peer) = pair().await;
        // Input nobody reads: closing over it at once would answer the peer with a reset.
        peer.write_all(&[b'x'; 64 << 10]).await.unwrap();
        ours.write_all(b"goodbye").await.unwrap();
        let peer_side = async {
            // The peer goes on writing, then reads the last words and an orderly end.
            let written = peer.write_all(&[b'y'; 1 << 20]).await;
            let mut got = Vec::new();
            let end = peer.read_to_end(&mut got).await;
            drop(peer);
            (written, end, got)
        };
        let ((written, end, got), ()) = tokio::join!(peer_side, ours.linger());
        assert!(written.is_ok(), "{written:?}");
        assert!(end.is_ok(), "{end:?}");
        assert_eq!(got, b"goodbye");
    }

    #[tokio::test]
    async fn lingering_stops_at_its_time_bound_when_the_peer_stays() {
        let (mut ours, _peer) = pair().await;
        ours.linger_within(Duration::from_millis(20), usize::MAX)
            .await;
    }

    #[tokio::test]
    async fn lingering_stops_at_its_byte_bound_when_the_peer_keeps_sending() {
        let (mut ours, mut peer) = pair().await;
        let flood = tokio::spawn(async move {
            let chunk = [b'z'; 64 << 10];
            while peer.write_all(&chunk).await.is_ok() {}
        });
        ours.linger_within(Duration::from_secs(3600), 1 << 20).await;
        drop(ours);
        flood.await.unwrap();
    }

    #[tokio::test]
    async fn tcp_socket_buffer_sizes_both_buffers() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (connected, _accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let keepalive = Keepalive {
            socket_buffer: 8192,
            ..Keepalive::default()
        };
        let stream = Stream::tcp(connected.unwrap(), &keepalive).unwrap();
        let Stream::Tcp(tcp) = &stream else {
            panic!("a TCP stream")
        };
        let sock = socket2::SockRef::from(tcp);
        // Linux doubles the size asked for, for its bookkeeping.
        assert_eq!(sock.send_buffer_size().unwrap(), 16384);
        assert_eq!(sock.recv_buffer_size().unwrap(), 16384);
    }
}
