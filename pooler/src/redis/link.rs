//! One connection to Redis: the login handshake, then a task that writes queued commands
//! (batched, so a pipeline costs one write) and hands each reply to whoever sent its command,
//! in order. RESP3 pushes go to the connection's push sink, if one is set.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};

use super::backend::Slot;
use super::resp::{self, Command};

/// How long opening and logging in to a Redis connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Commands queued per connection before senders wait.
const QUEUE: usize = 4096;

/// Who a connection logs in as and how it is set up: connections are only shared or reused
/// among clients with the same login.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Login {
    /// The ACL user (`None`: the password alone, as user `default`).
    pub user: Option<String>,
    /// The password, if any.
    pub password: Option<String>,
    /// The RESP version, 2 or 3.
    pub proto: u8,
    /// The selected database.
    pub db: u32,
}

impl Login {
    /// The same login in database `db`.
    pub fn in_db(&self, db: u32) -> Login {
        Login { db, ..self.clone() }
    }
}

/// A command waiting for its reply.
#[derive(Debug)]
struct Request {
    wire: Bytes,
    reply: oneshot::Sender<Bytes>,
    /// `wire` holds a command before the client's whose reply is dropped (`ASKING`, or a
    /// `MULTI` weir already answered).
    skip_first: bool,
}

/// Where RESP3 pushes of a connection go.
pub type PushSink = Arc<Mutex<Option<mpsc::UnboundedSender<Bytes>>>>;

/// An open, logged-in connection to Redis; dropping it closes the connection.
#[derive(Debug)]
pub struct Link {
    id: u64,
    tx: mpsc::Sender<Request>,
    alive: Arc<AtomicBool>,
    push: PushSink,
    /// The reply to the handshake's HELLO, which a client's HELLO is answered with.
    pub hello: Bytes,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Link {
    /// Opens a connection to `addr` and logs in as `login`; `slot` (its place in the
    /// backend's connection budget) is given back when the connection closes, either way.
    pub async fn open(addr: &str, login: &Login, slot: Slot) -> Result<Link, String> {
        let (stream, hello, rest) = connect(addr, login).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let alive = Arc::new(AtomicBool::new(true));
        let push: PushSink = Arc::default();
        tokio::spawn(run(stream, rest, rx, alive.clone(), push.clone(), slot));
        Ok(Link {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            tx,
            alive,
            push,
            hello,
        })
    }

    /// A number that tells this connection apart from every other.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// Whether the connection is still open.
    pub fn is_alive(&self) -> bool {
        self.alive.load(Ordering::Acquire)
    }

    /// Queues a command; the receiver gets its reply, or an error if the connection is lost.
    pub async fn send(&self, wire: Bytes) -> oneshot::Receiver<Bytes> {
        self.send_request(wire, false).await
    }

    /// Queues `first` and then `wire` in one write, so no other client's command comes
    /// between them; the receiver gets the reply to `wire` only.
    pub async fn send_after(&self, first: &[u8], wire: &[u8]) -> oneshot::Receiver<Bytes> {
        let mut both = BytesMut::with_capacity(first.len() + wire.len());
        both.extend_from_slice(first);
        both.extend_from_slice(wire);
        self.send_request(both.freeze(), true).await
    }

    async fn send_request(&self, wire: Bytes, skip_first: bool) -> oneshot::Receiver<Bytes> {
        let (reply, rx) = oneshot::channel();
        // A closed connection drops the request, and with it the reply sender.
        let _ = self
            .tx
            .send(Request {
                wire,
                reply,
                skip_first,
            })
            .await;
        rx
    }

    /// Sends RESP3 pushes to `sink` from now on (`None`: drop them).
    pub fn set_push_sink(&self, sink: Option<mpsc::UnboundedSender<Bytes>>) {
        *self.push.lock().unwrap_or_else(|p| p.into_inner()) = sink;
    }
}

/// Opens a TCP connection and runs the handshake: `HELLO proto [AUTH user password]`, then
/// `SELECT db`. Returns the stream, the HELLO reply and any bytes read past the handshake.
pub async fn connect(addr: &str, login: &Login) -> Result<(TcpStream, Bytes, BytesMut), String> {
    let work = async {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("ERR weir: cannot connect to Redis at {addr}: {e}"))?;
        let _ = stream.set_nodelay(true);
        let proto = login.proto.to_string();
        let mut hello = vec!["HELLO", proto.as_str()];
        if let Some(password) = &login.password {
            hello.extend(["AUTH", login.user.as_deref().unwrap_or("default"), password]);
        }
        let mut out = Command::from_args(hello).wire.to_vec();
        let db = login.db.to_string();
        if login.db != 0 {
            out.extend_from_slice(&Command::from_args(["SELECT", db.as_str()]).wire);
        }
        stream
            .write_all(&out)
            .await
            .map_err(|e| format!("ERR weir: Redis at {addr}: {e}"))?;
        let mut buf = BytesMut::new();
        let hello = read_frame(&mut stream, &mut buf, addr).await?;
        if resp::is_error(&hello) {
            return Err(error_text(&hello));
        }
        if login.db != 0 {
            let selected = read_frame(&mut stream, &mut buf, addr).await?;
            if resp::is_error(&selected) {
                return Err(error_text(&selected));
            }
        }
        Ok((stream, hello, buf))
    };
    tokio::time::timeout(CONNECT_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("ERR weir: Redis at {addr} did not answer in time")))
}

/// An error reply's text without its marker and line end.
fn error_text(frame: &[u8]) -> String {
    let text = String::from_utf8_lossy(frame);
    text.trim_start_matches(['-', '!'])
        .trim_end()
        .lines()
        .last()
        .unwrap_or("ERR")
        .to_owned()
}

/// Reads one whole reply from `stream`, `buf` holding what was read past it.
pub(super) async fn read_frame(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    addr: &str,
) -> Result<Bytes, String> {
    loop {
        match resp::frame_len(buf) {
            Ok(Some(n)) => return Ok(buf.split_to(n).freeze()),
            Ok(None) => {}
            Err(e) => return Err(format!("ERR weir: Redis at {addr}: {e}")),
        }
        resp::reserve_read(buf);
        match stream.read_buf(buf).await {
            Ok(0) => return Err(format!("ERR weir: Redis at {addr} closed the connection")),
            Ok(_) => {}
            Err(e) => return Err(format!("ERR weir: Redis at {addr}: {e}")),
        }
    }
}

/// The connection's task: writes what is queued, matches replies to requests in order.
async fn run(
    mut stream: TcpStream,
    mut inbuf: BytesMut,
    mut rx: mpsc::Receiver<Request>,
    alive: Arc<AtomicBool>,
    push: PushSink,
    slot: Slot,
) {
    let mut waiting = std::collections::VecDeque::new();
    let mut out = BytesMut::new();
    let (mut rd, mut wr) = stream.split();
    'conn: loop {
        if deliver(&mut inbuf, &mut waiting, &push).is_err() {
            break;
        }
        resp::reserve_read(&mut inbuf);
        tokio::select! {
            request = rx.recv() => {
                let Some(first) = request else { break };
                let mut next = Some(first);
                while let Some(r) = next {
                    out.extend_from_slice(&r.wire);
                    if r.skip_first {
                        waiting.push_back(None);
                    }
                    waiting.push_back(Some(r.reply));
                    next = rx.try_recv().ok();
                }
                if wr.write_all(&out).await.is_err() {
                    break 'conn;
                }
                out.clear();
            }
            read = rd.read_buf(&mut inbuf) => {
                if !matches!(read, Ok(n) if n > 0) {
                    break;
                }
            }
        }
    }
    alive.store(false, Ordering::Release);
    drop(slot);
}

/// Hands every complete reply in `inbuf` to the request it answers.
fn deliver(
    inbuf: &mut BytesMut,
    waiting: &mut std::collections::VecDeque<Option<oneshot::Sender<Bytes>>>,
    push: &PushSink,
) -> Result<(), resp::RespError> {
    while let Some(n) = resp::frame_len(inbuf)? {
        let frame = inbuf.split_to(n).freeze();
        if resp::is_push(&frame) {
            if let Some(sink) = push.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
                let _ = sink.send(frame);
            }
            continue;
        }
        match waiting.pop_front() {
            // The client may have gone; its reply is then dropped.
            Some(Some(reply)) => drop(reply.send(frame)),
            Some(None) => {}
            None => return Err(resp::RespError("reply without a command")),
        }
    }
    Ok(())
}
