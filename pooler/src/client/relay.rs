//! The relay: moves bytes between a client and the server connection it was lent, in both
//! directions at once, until the connection can be given back or either side goes away.
//!
//! Both directions are driven from one hand-written future so that neither can block the
//! other (a client pipelining queries while the server streams results would deadlock a relay
//! that waits on one side at a time) and so that stopping happens exactly at a message
//! boundary, with no half-sent message left behind.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::AsyncWrite;
use tokio::time::Sleep;
use tokio_util::io::poll_read_buf;

use super::pipeline::Verdict;
use super::scan::{self, ClientStop, Cursor, ReleasePolicy, ServerStop, TxState};
use super::tracked::{ClientEvent, ServerInfo, Tracker};
use crate::params::ParamSet;
use crate::pool::Counts;
use crate::protocol::{backend, ProtocolError};
use crate::server::RelayParts;
use crate::stream::Stream;

/// How much a direction reads at a time.
const READ_CHUNK: usize = 16 * 1024;
/// The least free space a read is given before the buffer grows by a chunk.
const MIN_SPARE: usize = READ_CHUNK / 8;

/// How a relay ended.
#[derive(Debug)]
pub enum Outcome {
    /// The server connection is idle and clean (transaction and statement modes).
    Released,
    /// Statement mode: a statement left a transaction open. The ReadyForQuery reporting it is
    /// the first message in the server buffer and was not forwarded.
    TransactionInStatementMode,
    /// The client said Terminate or closed its socket. `server_idle` tells whether the server
    /// connection is idle and clean.
    ClientGone {
        /// Whether the server connection can be reused.
        server_idle: bool,
    },
    /// The client socket failed.
    ClientFailed(io::Error),
    /// The client sent bytes that are not protocol messages.
    ClientProtocol(ProtocolError),
    /// The client went over a limit of the pooler (the message says which).
    ClientOverLimit(&'static str),
    /// The server closed, failed, or sent garbage.
    ServerFailed(String),
    /// A timeout fired. `server_idle` tells whether the server connection is idle and clean.
    Timeout {
        /// Which timeout.
        kind: TimeoutKind,
        /// Whether the server connection can be reused.
        server_idle: bool,
    },
}

/// Which timeout ended a relay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// `query_timeout`: a query ran too long.
    Query,
    /// `idle_transaction_timeout`: a transaction sat idle too long.
    IdleTransaction,
    /// `client_idle_timeout`: a client holding its connection while idle (session mode, or
    /// pinned) sat idle too long.
    ClientIdle,
}

/// The timeouts a relay enforces (zero disables each).
#[derive(Debug, Clone, Copy, Default)]
pub struct Timeouts {
    /// `query_timeout`.
    pub query: Duration,
    /// `idle_transaction_timeout`.
    pub idle_transaction: Duration,
    /// `client_idle_timeout`.
    pub client_idle: Duration,
}

/// One relay run; a future that resolves to its [`Outcome`].
pub struct Relay<'a> {
    client: &'a mut Stream,
    client_buf: &'a mut BytesMut,
    client_params: &'a mut ParamSet,
    server: RelayParts<'a>,
    tx: &'a mut TxState,
    policy: ReleasePolicy,
    timeouts: Timeouts,
    /// Whether any of `timeouts` is set (most deployments set none): asked at every step.
    timers_enabled: bool,
    max_client_message: usize,
    /// Whether simple-query messages pass (`disable_pqexec` off).
    simple_query: bool,
    c2s: Cursor,
    s2c: Cursor,
    client_done: bool,
    stop: Option<ServerStop>,
    timer: Option<(TimeoutKind, Pin<Box<Sleep>>)>,
    /// Transaction and statement modes: rewriting and state tracking.
    tracker: Option<Tracker<'a>>,
    /// Tracked mode: bytes for the server, rewritten from the client's.
    c2s_out: BytesMut,
    /// Tracked mode: the pooler's own answers, sent before further server bytes.
    s2c_local: BytesMut,
    /// Tracked mode: server bytes to drop (answers to messages the pooler added).
    s2c_skip: usize,
    /// What went by, for statistics.
    counts: &'a mut Counts,
}

impl<'a> Relay<'a> {
    /// Prepares a relay. `client_buf` may already hold client bytes read before the server
    /// connection was lent; they are forwarded first.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: &'a mut Stream,
        client_buf: &'a mut BytesMut,
        client_params: &'a mut ParamSet,
        server: RelayParts<'a>,
        tx: &'a mut TxState,
        policy: ReleasePolicy,
        timeouts: Timeouts,
        max_client_message: usize,
        simple_query: bool,
        tracker: Option<Tracker<'a>>,
        counts: &'a mut Counts,
    ) -> Relay<'a> {
        // Sized for what the client sent before the relay: most transactions are one
        // message, passed on as it came.
        let c2s_out = match tracker {
            Some(_) => BytesMut::with_capacity(client_buf.len()),
            None => BytesMut::new(),
        };
        Relay {
            client,
            client_buf,
            client_params,
            server,
            tx,
            policy,
            timeouts,
            timers_enabled: !(timeouts.query.is_zero()
                && timeouts.idle_transaction.is_zero()
                && timeouts.client_idle.is_zero()),
            max_client_message,
            simple_query,
            c2s: Cursor::default(),
            s2c: Cursor::default(),
            client_done: false,
            stop: None,
            timer: None,
            tracker,
            c2s_out,
            s2c_local: BytesMut::new(),
            s2c_skip: 0,
            counts,
        }
    }

    /// Tracked mode: whether the client side has nothing half-sent.
    fn client_at_rest(&self) -> bool {
        match &self.tracker {
            Some(t) => self.c2s_out.is_empty() && t.at_rest() && !self.client_done,
            None => self.c2s.at_rest() && !self.client_done,
        }
    }

    /// Tracked mode: processes buffered client messages into `c2s_out`.
    fn process_client(&mut self) -> Result<(), Outcome> {
        if let Some(t) = &mut self.tracker {
            let event = t
                .process_client(
                    self.client_buf,
                    &mut self.c2s_out,
                    self.server.carried,
                    self.tx,
                    self.max_client_message,
                    self.simple_query,
                )
                .map_err(Outcome::ClientProtocol)?;
            match event {
                ClientEvent::NeedMore => {}
                ClientEvent::Terminate => self.client_done = true,
                ClientEvent::OverLimit(limit) => return Err(Outcome::ClientOverLimit(limit)),
            }
        }
        Ok(())
    }

    /// Tracked mode: scans server bytes, consulting the pipeline at every message.
    fn scan_server_tracked(&mut self) -> Result<(), ProtocolError> {
        let client_at_rest = self.client_at_rest();
        let Some(tracker) = self.tracker.as_mut() else {
            return Ok(());
        };
        loop {
            let take = self
                .s2c
                .remaining
                .min(self.server.buf.len() - self.s2c.scanned);
            self.s2c.scanned += take;
            self.s2c.remaining -= take;
            if self.s2c.remaining > 0 || tracker.local_due() {
                return Ok(());
            }
            let Some((tag, body)) = crate::protocol::peek_header(
                &self.server.buf[self.s2c.scanned..],
                usize::MAX >> 1,
            )?
            else {
                return Ok(());
            };
            let start = self.s2c.scanned + 5;
            let whole = matches!(tag, b'Z' | b'C' | b'S' | b'E');
            if whole && self.server.buf.len() < start + body {
                return Ok(());
            }
            let info = match tag {
                b'E' => {
                    self.counts.error(&self.server.buf[start..start + body]);
                    ServerInfo::Error
                }
                b'C' => {
                    if &self.server.buf[start..start + body] == b"ROLLBACK\0" {
                        ServerInfo::Rollback
                    } else {
                        ServerInfo::Other
                    }
                }
                b'Z' => match self.server.buf[start..start + body] {
                    [status] => ServerInfo::Ready(status),
                    _ => {
                        return Err(ProtocolError::InvalidMessageLength {
                            tag,
                            len: i32::try_from(body + 4).unwrap_or(i32::MAX),
                        })
                    }
                },
                b'S' => {
                    if let Ok((name, value)) =
                        backend::parse_parameter_status(&self.server.buf[start..start + body])
                    {
                        self.server.params.set(&name, &value);
                        if self.client_params.get(&name).is_some() {
                            self.client_params.set(&name, &value);
                        }
                    }
                    ServerInfo::Other
                }
                _ => ServerInfo::Other,
            };
            if tracker.on_server_message(tag, info, self.server.carried) == Verdict::Swallow {
                self.s2c_skip = 5 + body;
                return Ok(());
            }
            if let ServerInfo::Ready(status) = info {
                let may_release = client_at_rest && tracker.settled() && !tracker.pinned();
                if let Some(stop) =
                    scan::ready(self.tx, status, self.policy, may_release, self.counts)
                {
                    if stop == ServerStop::Idle {
                        self.s2c.scanned = start + body;
                    }
                    self.stop = Some(stop);
                    return Ok(());
                }
            }
            if whole {
                self.s2c.scanned = start + body;
            } else {
                self.s2c.scanned = start;
                self.s2c.remaining = body;
            }
        }
    }

    /// Scans newly arrived client bytes.
    fn scan_client(&mut self) -> Result<(), ProtocolError> {
        match scan::scan_client(
            self.client_buf,
            &mut self.c2s,
            self.tx,
            self.max_client_message,
            self.simple_query,
        )? {
            ClientStop::NeedMore => {}
            ClientStop::Terminate => self.client_done = true,
        }
        Ok(())
    }

    /// Scans newly arrived server bytes.
    fn scan_server(&mut self) -> Result<(), ProtocolError> {
        let client_at_rest = self.c2s.at_rest() && !self.client_done;
        let params = &mut *self.client_params;
        let server_params = &mut self.server.params;
        let stop = scan::scan_server(
            self.server.buf,
            &mut self.s2c,
            self.tx,
            self.policy,
            client_at_rest,
            usize::MAX >> 1,
            self.counts,
            |body| {
                if let Ok((name, value)) = backend::parse_parameter_status(body) {
                    server_params.set(&name, &value);
                    // Only parameters the client tracks follow the server's reports.
                    if params.get(&name).is_some() {
                        params.set(&name, &value);
                    }
                }
            },
        )?;
        if stop != ServerStop::NeedMore {
            self.stop = Some(stop);
        }
        Ok(())
    }

    /// Whether the client has sent part of a message: a header or body not yet complete, or
    /// bytes not yet written to the server.
    fn client_mid_message(&self) -> bool {
        match &self.tracker {
            Some(t) => !t.at_rest() || !self.client_buf.is_empty() || !self.c2s_out.is_empty(),
            None => !self.c2s.at_rest() || self.client_buf.len() > self.c2s.scanned,
        }
    }

    /// Whether nothing sent to the server is half a message (bytes of the client's message
    /// went out but not all of them).
    fn server_input_whole(&self) -> bool {
        match &self.tracker {
            Some(t) => t.at_rest() && self.c2s_out.is_empty(),
            None => self.c2s.remaining == 0 && self.c2s.scanned == 0,
        }
    }

    /// Whether the server connection is idle and clean: nothing owed either way, nothing
    /// half-sent to it, nothing of its unread.
    fn server_idle(&self) -> bool {
        let settled = self.tracker.as_ref().is_none_or(Tracker::settled);
        self.tx.is_idle()
            && settled
            && self.server_input_whole()
            && self.s2c.at_rest()
            && self.server.buf.is_empty()
    }

    /// Tracked mode: a Flush (or stray COPY data) with nothing pending earns no
    /// ReadyForQuery, yet leaves the connection idle; it goes back as soon as all is
    /// answered, rather than at the client's next Sync while others wait for it.
    fn idle_without_ready(&self) -> bool {
        self.policy.release_when_idle
            && self.client_buf.is_empty()
            && !self.client_done
            && self.s2c_skip == 0
            && self.s2c_local.is_empty()
            && self
                .tracker
                .as_ref()
                .is_some_and(|t| t.quiet() && !t.pinned())
            && self.server_idle()
    }

    /// The timeout that applies in the current state, if any. A client that has not read all
    /// of an answer is still running its query; one with extended-protocol work not yet
    /// synced, or half a message sent, holds the connection as a transaction does; a pinned
    /// client idles on its connection as a session-mode client does.
    fn wanted_timer(&self) -> Option<(TimeoutKind, Duration)> {
        let t = &self.timeouts;
        let answering = self.s2c.scanned > 0 || self.s2c.remaining > 0;
        let pinned = self.tracker.as_ref().is_some_and(Tracker::pinned);
        if self.tx.outstanding > 0 || answering || !self.s2c_local.is_empty() {
            (!t.query.is_zero()).then_some((TimeoutKind::Query, t.query))
        } else if self.tx.status != b'I' || self.tx.unsynced || self.client_mid_message() {
            (!t.idle_transaction.is_zero())
                .then_some((TimeoutKind::IdleTransaction, t.idle_transaction))
        } else if !self.policy.release_when_idle || pinned {
            (!t.client_idle.is_zero()).then_some((TimeoutKind::ClientIdle, t.client_idle))
        } else {
            None
        }
    }

    /// Re-arms the timer when the state calls for a different timeout; activity restarts it,
    /// except that `query_timeout` counts from the client's last request (`client_sent`), as
    /// PgBouncer's does: an answer streaming out, however slowly, does not extend it.
    fn rearm_timer(&mut self, client_sent: bool) {
        match self.wanted_timer() {
            None => self.timer = None,
            Some((kind, after)) => {
                let deadline = tokio::time::Instant::now() + after;
                match &mut self.timer {
                    Some((TimeoutKind::Query, _)) if kind == TimeoutKind::Query && !client_sent => {
                    }
                    Some((k, sleep)) if *k == kind => sleep.as_mut().reset(deadline),
                    _ => self.timer = Some((kind, Box::pin(tokio::time::sleep_until(deadline)))),
                }
            }
        }
    }
}

/// Reads into `buf`, growing it by a chunk when it is nearly full.
fn poll_fill(
    stream: &mut Stream,
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    // The buffer a client read after an idle wait is small; it grows only when nearly full,
    // so a short request costs no reallocation.
    if buf.capacity() - buf.len() < MIN_SPARE {
        buf.reserve(READ_CHUNK);
    }
    poll_read_buf(Pin::new(stream), cx, buf)
}

impl Future for Relay<'_> {
    type Output = Outcome;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Outcome> {
        let this = self.get_mut();
        if this.timer.is_none() && this.timers_enabled {
            this.rearm_timer(true);
        }
        // Bytes read before the relay started are scanned first (tracked mode processes them
        // in its loop).
        if this.tracker.is_none()
            && this.c2s.scanned == 0
            && this.c2s.remaining == 0
            && !this.client_buf.is_empty()
        {
            if let Err(e) = this.scan_client() {
                return Poll::Ready(Outcome::ClientProtocol(e));
            }
        }
        // A read that returned Pending has registered this task's waker: polling it again
        // before this poll returns would only repeat the readiness check.
        let mut client_read_pending = false;
        let mut server_read_pending = false;
        loop {
            let mut progressed = false;
            let mut client_sent = false;

            // Client -> server: send what is ready (the client is read below).
            if this.tracker.is_some() {
                if !this.c2s_out.is_empty() {
                    match Pin::new(&mut this.server.stream).poll_write(cx, &this.c2s_out) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Outcome::ServerFailed(
                                "server stopped reading".into(),
                            ))
                        }
                        Poll::Ready(Ok(n)) => {
                            this.c2s_out.advance(n);
                            this.counts.bytes_received += n as u64;
                            client_sent = true;
                            progressed = true;
                        }
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Outcome::ServerFailed(e.to_string()))
                        }
                        Poll::Pending => {}
                    }
                }
                if this.c2s_out.is_empty() && !this.client_done && this.stop.is_none() {
                    if let Err(outcome) = this.process_client() {
                        return Poll::Ready(outcome);
                    }
                    if !this.c2s_out.is_empty() {
                        progressed = true;
                    }
                }
            } else {
                if this.c2s.scanned > 0 {
                    match Pin::new(&mut this.server.stream)
                        .poll_write(cx, &this.client_buf[..this.c2s.scanned])
                    {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Outcome::ServerFailed(
                                "server stopped reading".into(),
                            ))
                        }
                        Poll::Ready(Ok(n)) => {
                            this.client_buf.advance(n);
                            this.c2s.scanned -= n;
                            this.counts.bytes_received += n as u64;
                            client_sent = true;
                            progressed = true;
                        }
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Outcome::ServerFailed(e.to_string()))
                        }
                        Poll::Pending => {}
                    }
                }
            }

            // Server -> client: send what was scanned, then the pooler's own answers, then
            // read more.
            if this.s2c.scanned > 0 {
                match Pin::new(&mut *this.client)
                    .poll_write(cx, &this.server.buf[..this.s2c.scanned])
                {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Outcome::ClientFailed(io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        this.server.buf.advance(n);
                        this.s2c.scanned -= n;
                        this.counts.bytes_sent += n as u64;
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Outcome::ClientFailed(e)),
                    Poll::Pending => {}
                }
            }
            // One batch of the pooler's own answers at a time: the rest wait, counted, in
            // the pipeline (MAX_LOCAL_ANSWERS) while the client does not read.
            if this.s2c.scanned == 0 && this.s2c.remaining == 0 && this.s2c_local.is_empty() {
                if let Some(t) = &mut this.tracker {
                    if t.take_local(&mut this.s2c_local) {
                        progressed = true;
                    }
                }
            }
            if this.s2c.scanned == 0 && !this.s2c_local.is_empty() {
                match Pin::new(&mut *this.client).poll_write(cx, &this.s2c_local) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Outcome::ClientFailed(io::ErrorKind::WriteZero.into()))
                    }
                    Poll::Ready(Ok(n)) => {
                        this.s2c_local.advance(n);
                        this.counts.bytes_sent += n as u64;
                        progressed = true;
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Outcome::ClientFailed(e)),
                    Poll::Pending => {}
                }
            }
            if this.s2c.scanned == 0 && this.s2c_local.is_empty() && this.s2c_skip > 0 {
                let n = this.s2c_skip.min(this.server.buf.len());
                this.server.buf.advance(n);
                this.s2c_skip -= n;
                if n > 0 {
                    progressed = true;
                }
            }
            let s2c_idle = this.s2c.scanned == 0 && this.s2c_local.is_empty();
            if s2c_idle && this.stop.is_none() {
                // Bytes already buffered are scanned before reading more.
                if this.tracker.is_some() && this.s2c_skip == 0 && !this.server.buf.is_empty() {
                    let before = (this.s2c.scanned, this.s2c_skip, this.stop.is_some());
                    if let Err(e) = this.scan_server_tracked() {
                        return Poll::Ready(Outcome::ServerFailed(e.to_string()));
                    }
                    if (this.s2c.scanned, this.s2c_skip, this.stop.is_some()) != before {
                        progressed = true;
                    }
                }
                if (!progressed || this.tracker.is_none()) && !server_read_pending {
                    match poll_fill(this.server.stream, this.server.buf, cx) {
                        Poll::Ready(Ok(0)) => {
                            return Poll::Ready(Outcome::ServerFailed(
                                "server closed the connection unexpectedly".into(),
                            ))
                        }
                        Poll::Ready(Ok(_)) => {
                            progressed = true;
                            if this.tracker.is_none() {
                                if let Err(e) = this.scan_server() {
                                    return Poll::Ready(Outcome::ServerFailed(e.to_string()));
                                }
                            }
                        }
                        Poll::Ready(Err(e)) => {
                            return Poll::Ready(Outcome::ServerFailed(e.to_string()))
                        }
                        Poll::Pending => server_read_pending = true,
                    }
                }
            }

            // Client: read more once nothing else moves. Every Pending below comes after
            // this read (a client blocked writing to us while we wait to write to it would
            // otherwise deadlock), but a wake-up cannot tell which socket fired, and the one
            // that ends a transaction is the server's answer: read first, the client's socket
            // would be asked for nothing at every transaction's end.
            let client_drained = match this.tracker {
                Some(_) => this.c2s_out.is_empty(),
                None => this.c2s.scanned == 0,
            };
            if !progressed
                && client_drained
                && !this.client_done
                && this.stop.is_none()
                && !client_read_pending
            {
                match poll_fill(this.client, this.client_buf, cx) {
                    Poll::Ready(Ok(0)) => this.client_done = true,
                    Poll::Ready(Ok(_)) => {
                        progressed = true;
                        if this.tracker.is_none() {
                            if let Err(e) = this.scan_client() {
                                return Poll::Ready(Outcome::ClientProtocol(e));
                            }
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Outcome::ClientFailed(e)),
                    Poll::Pending => client_read_pending = true,
                }
            }

            // Endings, checked only once everything due has been written.
            if this.s2c.scanned == 0 && this.s2c_local.is_empty() {
                match this.stop {
                    Some(ServerStop::Idle) => return Poll::Ready(Outcome::Released),
                    Some(ServerStop::TransactionInStatementMode) => {
                        return Poll::Ready(Outcome::TransactionInStatementMode)
                    }
                    _ => {}
                }
            }
            if this.stop.is_none() && this.idle_without_ready() {
                return Poll::Ready(Outcome::Released);
            }
            if this.client_done && this.c2s.scanned == 0 && this.c2s_out.is_empty() {
                return Poll::Ready(Outcome::ClientGone {
                    server_idle: this.server_idle(),
                });
            }

            if progressed {
                if this.timers_enabled {
                    this.rearm_timer(client_sent);
                }
                continue;
            }
            if let Some((kind, sleep)) = &mut this.timer {
                if sleep.as_mut().poll(cx).is_ready() {
                    let kind = *kind;
                    return Poll::Ready(Outcome::Timeout {
                        kind,
                        server_idle: this.server_idle(),
                    });
                }
            }
            // TLS may hold written bytes until flushed; for TCP this does nothing. Errors
            // show on the next read or write.
            let _ = Pin::new(&mut *this.client).poll_flush(cx);
            let _ = Pin::new(&mut this.server.stream).poll_flush(cx);
            return Poll::Pending;
        }
    }
}
