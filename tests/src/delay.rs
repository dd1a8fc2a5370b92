//! A TCP relay that delays what it forwards, for network-delay faults.
//!
//! The kernel here has no `netem` queueing discipline, so delay is not made by the kernel:
//! [`DelayRelay`] listens on loopback, connects each accepted connection to a target, and
//! holds every chunk it reads for the current delay before writing it on, in both directions,
//! keeping the order and not limiting throughput. The delay can be changed while connections
//! run (a fault starting and healing under load).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// A delaying relay to one target; dropping it stops accepting (open connections run on until
/// either end closes).
pub struct DelayRelay {
    port: u16,
    delay_ms: Arc<AtomicU64>,
    acceptor: JoinHandle<()>,
}

impl DelayRelay {
    /// Starts relaying from a free loopback port to `target`, with no delay yet.
    pub async fn start(target: SocketAddr) -> anyhow::Result<DelayRelay> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .context("binding the relay")?;
        let port = listener.local_addr().context("relay address")?.port();
        let delay_ms = Arc::new(AtomicU64::new(0));
        let delay = Arc::clone(&delay_ms);
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let delay = Arc::clone(&delay);
                tokio::spawn(async move {
                    // A target that cannot be reached closes the client, as a refused connect.
                    if let Ok(server) = TcpStream::connect(target).await {
                        splice(client, server, delay).await;
                    }
                });
            }
        });
        Ok(DelayRelay {
            port,
            delay_ms,
            acceptor,
        })
    }

    /// The loopback port the relay listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Sets the one-way delay of everything read from now on (zero heals).
    pub fn set_delay(&self, delay: Duration) {
        let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.delay_ms.store(ms, Ordering::Relaxed);
    }
}

impl Drop for DelayRelay {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// Relays both directions of one connection until either end closes.
async fn splice(client: TcpStream, server: TcpStream, delay: Arc<AtomicU64>) {
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = direction(client_read, server_write, Arc::clone(&delay));
    let down = direction(server_read, client_write, delay);
    // One side closing ends both, as a connection reset would.
    tokio::select! {
        () = up => {}
        () = down => {}
    }
}

/// Reads chunks from `from` and writes each to `to` once the delay in force when it was read
/// has passed.
async fn direction(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, delay: Arc<AtomicU64>) {
    let (queue, mut queued) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let due = Instant::now() + Duration::from_millis(delay.load(Ordering::Relaxed));
                    if queue.send((due, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        while let Some((due, chunk)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    // The writer drains what was read before the reader saw the end.
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn relays_both_ways_and_holds_chunks_back() {
        let echo = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.unwrap();
        let target = echo.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut sock, _) = echo.accept().await.unwrap();
            let mut buf = [0u8; 5];
            sock.read_exact(&mut buf).await.unwrap();
            sock.write_all(&buf).await.unwrap();
        });
        let relay = DelayRelay::start(target).await.unwrap();
        relay.set_delay(Duration::from_millis(100));
        let mut client = TcpStream::connect((Ipv4Addr::LOCALHOST, relay.port()))
            .await
            .unwrap();
        let started = Instant::now();
        client.write_all(b"hello").await.unwrap();
        let mut back = [0u8; 5];
        client.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"hello");
        // Held once each way: a lower bound, which a slow machine cannot break.
        assert!(started.elapsed() >= Duration::from_millis(200));
    }
}
