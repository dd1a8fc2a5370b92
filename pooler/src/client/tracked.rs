//! Transaction- and statement-mode relaying of the messages that carry session state:
//! prepared statements are renamed and prepared where needed, session settings recorded,
//! and state that cannot move between server connections pins the client (or is refused).
//!
//! The relay hands every complete client message of interest here; what comes out is the
//! bytes to send the server and the entries of the [`Pipeline`] that say what the server (or
//! the pooler itself) will answer.

use bytes::{Buf, BufMut, BytesMut};

use super::pipeline::{Owed, Pipeline, Skipped, Verdict};
use super::scan::TxState;
use crate::config::Pinning;
use crate::prepared::{self, ClientStatements, Statement, StatementRegistry};
use crate::protocol::{backend, frontend, peek_header, PgError, ProtocolError};
use crate::registry::ClientRecord;
use crate::server::Carried;
use crate::session_state::SessionState;
use crate::sql::{self, Effect};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// A client's state that lives across relays: its statement names, its settings, and
/// whether it is pinned to its server connection (and why).
#[derive(Debug, Default)]
pub struct ClientState {
    /// The client's prepared statements.
    pub statements: ClientStatements,
    /// The client's session settings.
    pub session: SessionState,
    /// Why the client may not give its server connection back, once that happened.
    pub pinned: Option<&'static str>,
}

/// Settings for one relay.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// `max_prepared_statements` per server connection; 0 passes statement names through.
    pub max_prepared: usize,
    /// What to do with state that cannot be carried over (`pinning`).
    pub pinning: Pinning,
}

/// One relay's tracking of client messages and owed responses.
pub struct Tracker<'a> {
    /// The client's state; `None` stands for the default, made only when something is kept.
    client: &'a mut Option<Box<ClientState>>,
    registry: &'a StatementRegistry,
    pinned_clients: &'a AtomicUsize,
    /// The client's registry record, which shows it pinned.
    record: &'a ClientRecord,
    policy: Policy,
    pipeline: Pipeline,
    /// Bytes of a passed-through message body still to copy.
    remaining: usize,
    /// After a refused extended-protocol message, client messages up to Sync are dropped,
    /// as PostgreSQL itself skips them after an error.
    skip_until_sync: bool,
    /// Bytes of a dropped message still to discard.
    skipping: usize,
    /// What the last unnamed Parse does, applied when it is bound.
    unnamed_effect: Effect,
    /// A message whose answer is not tracked was forwarded: only a ReadyForQuery shows
    /// the connection idle.
    untracked: bool,
}

/// The most answers of the pooler's own (to a Parse the connection already has, a Close)
/// that may wait for a client: a client that sends such messages without reading would
/// otherwise queue answers without end. Answers the server owes need no bound of their own:
/// the server stops reading when the client stops, and so does the relay. In the README.
pub const MAX_LOCAL_ANSWERS: usize = 65_536;

/// The largest Parse, Bind, Describe, Close or Query held whole to be looked at; bigger ones
/// are streamed or refused (see `Tracker::oversized`), so that one message cannot make the
/// pooler hold up to `max_packet_size` for a client. In the README.
pub const MAX_INSPECTED_MESSAGE: usize = 16 << 20;

/// What [`MAX_INSPECTED_MESSAGE`] refuses or pins, in messages to the client.
const OVERSIZED: &str = "a message over 16 MiB";

/// What processing client bytes found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientEvent {
    /// Everything complete was processed; more bytes are needed.
    NeedMore,
    /// The client sent Terminate (left in the buffer, not forwarded).
    Terminate,
    /// The client went over a limit of the pooler (the message says which); it is to be
    /// told (SQLSTATE 54000) and closed.
    OverLimit(&'static str),
}

impl<'a> Tracker<'a> {
    /// A tracker for one relay.
    pub fn new(
        client: &'a mut Option<Box<ClientState>>,
        registry: &'a StatementRegistry,
        pinned_clients: &'a AtomicUsize,
        record: &'a ClientRecord,
        policy: Policy,
    ) -> Self {
        Tracker {
            client,
            registry,
            pinned_clients,
            record,
            policy,
            pipeline: Pipeline::default(),
            remaining: 0,
            skip_until_sync: false,
            skipping: 0,
            unnamed_effect: Effect::Other,
            untracked: false,
        }
    }

    /// Whether the client side is between messages with nothing half-forwarded.
    pub fn at_rest(&self) -> bool {
        self.remaining == 0 && self.skipping == 0 && !self.skip_until_sync
    }

    /// Whether the server owes nothing and the pooler has no answer of its own to send.
    pub fn settled(&self) -> bool {
        self.pipeline.is_empty()
    }

    /// Whether nothing is owed, nothing half-forwarded, and every message forwarded is one
    /// whose answers are tracked: the connection is idle even without a ReadyForQuery.
    pub fn quiet(&self) -> bool {
        self.settled() && self.at_rest() && !self.untracked
    }

    /// Whether the client is pinned to its server connection.
    pub fn pinned(&self) -> bool {
        self.client.as_ref().is_some_and(|c| c.pinned.is_some())
    }

    /// The client's state, made when it has none.
    fn client_mut(&mut self) -> &mut ClientState {
        self.client.get_or_insert_with(Box::default)
    }

    /// The client's statement of this name.
    fn statement(&self, name: &str) -> Option<Arc<Statement>> {
        self.client.as_ref()?.statements.get(name).cloned()
    }

    /// Moves the pooler's own answers that are due into `out`.
    pub fn take_local(&mut self, out: &mut BytesMut) -> bool {
        self.pipeline.take_local(out)
    }

    /// Processes complete client messages from the front of `input`, appending what goes to
    /// the server to `out`.
    pub fn process_client(
        &mut self,
        input: &mut BytesMut,
        out: &mut BytesMut,
        server: &mut Carried,
        tx: &mut TxState,
        max_len: usize,
        simple_query: bool,
    ) -> Result<ClientEvent, ProtocolError> {
        loop {
            if self.skipping > 0 {
                let n = self.skipping.min(input.len());
                input.advance(n);
                self.skipping -= n;
                if self.skipping > 0 {
                    return Ok(ClientEvent::NeedMore);
                }
            }
            if self.remaining > 0 {
                let n = self.remaining.min(input.len());
                out.extend_from_slice(&input[..n]);
                input.advance(n);
                self.remaining -= n;
                if self.remaining > 0 {
                    return Ok(ClientEvent::NeedMore);
                }
            }
            let Some((tag, body)) = peek_header(input, max_len)? else {
                return Ok(ClientEvent::NeedMore);
            };
            if tag == b'X' {
                return Ok(ClientEvent::Terminate);
            }
            if tag == b'Q' && !simple_query {
                return Err(ProtocolError::SimpleQueryDisallowed);
            }
            if self.pipeline.local_answers() >= MAX_LOCAL_ANSWERS {
                return Ok(ClientEvent::OverLimit(
                    "too many requests sent without reading their answers",
                ));
            }
            if self.skip_until_sync && tag != b'S' {
                self.skipping = 5 + body;
                continue;
            }
            match tag {
                b'P' | b'B' | b'D' | b'C' | b'Q' if 5 + body > MAX_INSPECTED_MESSAGE => {
                    if !self.oversized(tag, body, input, out, server, tx) {
                        return Ok(ClientEvent::NeedMore);
                    }
                }
                b'P' | b'B' | b'D' | b'C' | b'Q' => {
                    if input.len() < 5 + body {
                        return Ok(ClientEvent::NeedMore);
                    }
                    // Looked at in place: splitting it off would make the buffer shared
                    // and cost an allocation per message.
                    let inspected = self.inspect(tag, &input[..5 + body], out, server, tx);
                    input.advance(5 + body);
                    if let Err(limit) = inspected {
                        return Ok(ClientEvent::OverLimit(limit));
                    }
                }
                _ => {
                    match tag {
                        b'S' => {
                            self.skip_until_sync = false;
                            self.pipeline.push(Owed::Sync);
                            tx.outstanding += 1;
                            tx.unsynced = false;
                        }
                        b'E' => {
                            self.pipeline.push(Owed::Execute);
                            tx.unsynced = true;
                        }
                        b'F' => {
                            if self.pipeline.push(Owed::Query).is_none() {
                                tx.outstanding += 1;
                            }
                            tx.unsynced = false;
                        }
                        b'c' | b'f' => {
                            let ignored = self.pipeline.copy_in_finished();
                            tx.outstanding = tx.outstanding.saturating_sub(ignored);
                        }
                        // Flush, COPY data: nothing owed.
                        b'H' | b'd' => {}
                        // The server's to answer or reject, in ways not tracked here.
                        _ => self.untracked = true,
                    }
                    out.extend_from_slice(&input[..5]);
                    input.advance(5);
                    self.remaining = body;
                }
            }
        }
    }

    /// A Parse, Bind, Describe, Close or Query too big to hold whole. A Query goes through
    /// unread, which pins the client (what it does cannot be known) or, with
    /// `pinning = refuse`, is refused; a Bind goes through as it arrives once its names are
    /// read (and rewritten); a Parse, Describe or Close that big is refused with 54000.
    /// False when more bytes are needed first.
    fn oversized(
        &mut self,
        tag: u8,
        body: usize,
        input: &mut BytesMut,
        out: &mut BytesMut,
        server: &mut Carried,
        tx: &mut TxState,
    ) -> bool {
        match tag {
            b'Q' => {
                if self.policy.pinning == Pinning::Refuse && !self.pinned() {
                    let mut local = BytesMut::new();
                    backend::error_response(&mut local, &refusal(OVERSIZED));
                    let status = if tx.status == b'I' { b'I' } else { b'E' };
                    backend::ready_for_query(&mut local, status);
                    self.pipeline.push(Owed::Local(local.freeze()));
                    self.skipping = 5 + body;
                    return true;
                }
                self.apply(&Effect::Pin(OVERSIZED), None);
                if self.pipeline.push(Owed::Query).is_none() {
                    tx.outstanding += 1;
                }
                tx.unsynced = false;
                out.extend_from_slice(&input[..5]);
                input.advance(5);
                self.remaining = body;
                true
            }
            b'B' => {
                // The portal's and the statement's names end at the first two NULs.
                let seen = &input[5..input.len().min(5 + body)];
                let mut nuls = seen.iter().enumerate().filter(|(_, &b)| b == 0);
                let names_end = match (nuls.next(), nuls.next()) {
                    (Some((p, _)), Some((n, _))) => (p, 5 + n + 1),
                    _ if seen.len() < body.min(MAX_INSPECTED_MESSAGE) => return false,
                    _ => {
                        self.refuse_oversized(body, out);
                        return true;
                    }
                };
                self.stream_bind(names_end, body, input, out, server);
                tx.unsynced = true;
                true
            }
            _ => {
                self.refuse_oversized(body, out);
                true
            }
        }
    }

    /// Sends the start of a Bind too big to hold whole, its statement name rewritten as
    /// for a whole one, and leaves the rest to stream. `names` is where the portal's name
    /// ends in the body and where the statement's ends in `input`.
    fn stream_bind(
        &mut self,
        (portal_end, names_end): (usize, usize),
        body: usize,
        input: &mut BytesMut,
        out: &mut BytesMut,
        server: &mut Carried,
    ) {
        let rest = 5 + body - names_end;
        let portal = &input[5..5 + portal_end];
        let name = &input[5 + portal_end + 1..names_end - 1];
        let statement = match std::str::from_utf8(name) {
            Ok(n) if !n.is_empty() && self.policy.max_prepared > 0 => self.statement(n),
            _ => None,
        };
        if name.is_empty() {
            let effect = std::mem::replace(&mut self.unnamed_effect, Effect::Other);
            self.apply(&effect, None);
        }
        match statement {
            Some(statement) => {
                let portal = portal.to_vec();
                self.apply(&statement.effect.clone(), Some(&statement.query));
                self.ensure_prepared(&statement, out, server);
                // At most 1 GiB (max_packet_size) plus a short name: fits the length word.
                let len = 4 + portal.len() + 1 + statement.name.len() + 1 + rest;
                out.put_u8(b'B');
                out.put_u32(u32::try_from(len).unwrap_or(u32::MAX));
                out.extend_from_slice(&portal);
                out.put_u8(0);
                out.extend_from_slice(statement.name.as_bytes());
                out.put_u8(0);
            }
            None => out.extend_from_slice(&input[..names_end]),
        }
        input.advance(names_end);
        self.remaining = rest;
        self.pipeline.push(Owed::Bind);
    }

    /// Refuses an extended-protocol message too big to hold whole: an error, then the
    /// message and everything up to the next Sync are skipped.
    fn refuse_oversized(&mut self, body: usize, out: &mut BytesMut) {
        let e = PgError::error(
            "54000",
            format!("{OVERSIZED} cannot be prepared or described in transaction pooling mode"),
        );
        self.refuse_extended(e, out);
        self.skipping = 5 + body;
    }

    /// Handles one complete Parse, Bind, Describe, Close or Query message. Err names the
    /// limit the client went over.
    fn inspect(
        &mut self,
        tag: u8,
        msg: &[u8],
        out: &mut BytesMut,
        server: &mut Carried,
        tx: &mut TxState,
    ) -> Result<(), &'static str> {
        let body = &msg[5..];
        if tag == b'Q' {
            self.query(msg, out, server, tx);
            return Ok(());
        }
        tx.unsynced = true;
        let mapping = self.policy.max_prepared > 0;
        match tag {
            b'P' => {
                let Ok(parse) = frontend::parse_parse(body) else {
                    // Not UTF-8 or malformed: the server judges it as it is.
                    out.extend_from_slice(msg);
                    self.pipeline.push(Owed::Parse {
                        swallow: false,
                        statement: None,
                    });
                    return Ok(());
                };
                if parse.name.is_empty() || !mapping {
                    let effect = sql::classify(parse.query);
                    if self.refused_extended(&effect, out) {
                        return Ok(());
                    }
                    self.unnamed_effect = effect;
                    out.extend_from_slice(msg);
                    self.pipeline.push(Owed::Parse {
                        swallow: false,
                        statement: None,
                    });
                    return Ok(());
                }
                let statement = self.registry.statement(parse.query, &parse.param_types);
                if self.refused_extended(&statement.effect, out) {
                    return Ok(());
                }
                self.client_mut()
                    .statements
                    .insert(parse.name, statement.clone())?;
                if server.has_statement(&statement.name) {
                    self.pipeline.push(Owed::Local(prepared::PARSE_COMPLETE));
                } else {
                    self.prepare(&statement, false, out, server);
                }
            }
            b'B' => {
                let Ok(bind) = frontend::parse_bind(body) else {
                    out.extend_from_slice(msg);
                    self.pipeline.push(Owed::Bind);
                    return Ok(());
                };
                if bind.statement.is_empty() {
                    let effect = std::mem::replace(&mut self.unnamed_effect, Effect::Other);
                    self.apply(&effect, None);
                    out.extend_from_slice(msg);
                } else if let Some(statement) =
                    mapping.then(|| self.statement(bind.statement)).flatten()
                {
                    self.apply(&statement.effect.clone(), Some(&statement.query));
                    self.ensure_prepared(&statement, out, server);
                    frontend::bind_with_statement(out, bind.portal, &statement.name, bind.rest);
                } else if mapping && prepared::is_server_name(bind.statement) {
                    // Another client's statement on this connection: not this client's to use.
                    self.refuse_extended(no_such_statement(bind.statement), out);
                    return Ok(());
                } else {
                    // Unknown to the pooler: the server says so in its own words.
                    out.extend_from_slice(msg);
                }
                self.pipeline.push(Owed::Bind);
            }
            b'D' | b'C' => {
                let parsed = if tag == b'D' {
                    frontend::parse_describe(body)
                } else {
                    frontend::parse_close(body)
                };
                let statement = match parsed {
                    Ok((b'S', name)) if mapping && !name.is_empty() => {
                        Some((name.to_owned(), self.statement(name)))
                    }
                    _ => None,
                };
                match (tag, statement) {
                    (b'C', Some((name, _))) => {
                        // Server-side statements are shared; only the client's name goes.
                        if let Some(client) = self.client.as_deref_mut() {
                            client.statements.remove(&name);
                        }
                        self.pipeline.push(Owed::Local(prepared::CLOSE_COMPLETE));
                    }
                    (b'D', Some((_, Some(statement)))) => {
                        self.ensure_prepared(&statement, out, server);
                        frontend::describe(out, b'S', &statement.name);
                        self.pipeline.push(Owed::DescribeStatement);
                    }
                    (b'D', Some((name, None))) if prepared::is_server_name(&name) => {
                        self.refuse_extended(no_such_statement(&name), out);
                    }
                    _ => {
                        out.extend_from_slice(msg);
                        self.pipeline.push(match (tag, parsed) {
                            (b'C', _) => Owed::Close { evicted: None },
                            (_, Ok((b'S', _))) => Owed::DescribeStatement,
                            _ => Owed::DescribePortal,
                        });
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// A simple query: every statement in it is classified; state that cannot be carried
    /// over pins the client or, with `pinning = refuse`, the whole query is refused.
    fn query(&mut self, msg: &[u8], out: &mut BytesMut, server: &mut Carried, tx: &mut TxState) {
        let body = &msg[5..];
        let sql = body.strip_suffix(&[0]).unwrap_or(body);
        // Most queries are one statement that changes nothing: judged on the bytes as sent.
        if !sql::plain_query(sql) {
            let text = String::from_utf8_lossy(sql);
            if let Some(e) = self.refusal_in(&text) {
                let mut local = BytesMut::new();
                backend::error_response(&mut local, &e);
                self.pipeline.push(Owed::Local(local.freeze()));
                // The server's ReadyForQuery ends the exchange, as after any query, so the
                // connection is released; answering it here would leave it lent.
                frontend::sync(out);
                self.pipeline.push(Owed::Sync);
                tx.outstanding += 1;
                tx.unsynced = false;
                return;
            }
            for (stmt, effect) in sql::effects(&text) {
                self.apply(&effect, Some(stmt));
                if matches!(effect, Effect::DiscardAll | Effect::DeallocateAll) {
                    server.apply(&effect);
                }
            }
        }
        out.extend_from_slice(msg);
        if self.pipeline.push(Owed::Query).is_none() {
            tx.outstanding += 1;
        }
        tx.unsynced = false;
    }

    /// The error refusing a whole simple query, if any statement in it is refused: refusal is
    /// all or nothing (a reserved statement name can only be in a query that mentions it).
    fn refusal_in(&self, text: &str) -> Option<PgError> {
        let refusing_pins = self.policy.pinning == Pinning::Refuse && !self.pinned();
        let names_reserved = || {
            text.as_bytes()
                .windows(5)
                .any(|w| w.eq_ignore_ascii_case(b"weir_"))
        };
        if !refusing_pins && !names_reserved() {
            return None;
        }
        sql::effects(text).find_map(|(_, e)| self.refusal_of(&e))
    }

    /// Records what a statement about to run does to the session.
    fn apply(&mut self, effect: &Effect, stmt: Option<&str>) {
        if matches!(effect, Effect::Refuse(_) | Effect::Other) {
            return;
        }
        let client = self.client.get_or_insert_with(Box::default);
        let session = &mut client.session;
        match effect {
            Effect::Set { name } => session.set(name, stmt.unwrap_or_default()),
            Effect::Reset { name } => session.reset(name),
            Effect::ResetAll => session.reset_all(),
            Effect::DiscardAll => {
                session.reset_all();
                client.statements.clear();
            }
            Effect::DeallocateAll => client.statements.clear(),
            Effect::Pin(what) => {
                if client.pinned.is_none() {
                    tracing::debug!(reason = what, "client pinned to its server connection");
                    client.pinned = Some(what);
                    self.pinned_clients.fetch_add(1, Ordering::Relaxed);
                    self.record.set_pinned(true);
                }
            }
            Effect::Refuse(_) | Effect::Other => {}
        }
    }

    /// The error refusing a statement with this effect: always for a reserved name, and for
    /// state that would pin with `pinning = refuse` while the client is not pinned yet.
    fn refusal_of(&self, effect: &Effect) -> Option<PgError> {
        match effect {
            Effect::Refuse(why) => Some(PgError::error("42939", *why)),
            Effect::Pin(what) if self.policy.pinning == Pinning::Refuse && !self.pinned() => {
                Some(refusal(what))
            }
            _ => None,
        }
    }

    /// Answers an extended-protocol message that is refused ([`Self::refusal_of`]) with an
    /// error and skips to the next Sync, as the server would after an error. True if refused.
    fn refused_extended(&mut self, effect: &Effect, out: &mut BytesMut) -> bool {
        let Some(e) = self.refusal_of(effect) else {
            return false;
        };
        self.refuse_extended(e, out);
        true
    }

    /// Answers an extended-protocol message with `e` and skips to the next Sync, as the
    /// server would after an error. The server is asked to flush: the error is due after its
    /// answers so far, and the client's own Flush is skipped with everything up to Sync.
    fn refuse_extended(&mut self, e: PgError, out: &mut BytesMut) {
        let mut local = BytesMut::new();
        backend::error_response(&mut local, &e);
        self.pipeline.push(Owed::Local(local.freeze()));
        self.skip_until_sync = true;
        frontend::flush(out);
    }

    /// Makes sure `statement` is prepared on the server before what follows, adding a Parse
    /// whose answer the client will not see.
    fn ensure_prepared(&mut self, statement: &Statement, out: &mut BytesMut, server: &mut Carried) {
        if !server.has_statement(&statement.name) {
            self.prepare(statement, true, out, server);
        }
    }

    /// Sends a Parse of `statement` under its server-side name, evicting the least recently
    /// used statement first when the connection is full.
    fn prepare(
        &mut self,
        statement: &Statement,
        swallow: bool,
        out: &mut BytesMut,
        server: &mut Carried,
    ) {
        for victim in server.add_statement(statement.name.clone(), self.policy.max_prepared) {
            frontend::close(out, b'S', &victim);
            self.owe_statement(
                Owed::Close {
                    evicted: Some(victim),
                },
                server,
            );
        }
        prepared::encode_parse(out, statement);
        self.owe_statement(
            Owed::Parse {
                swallow,
                statement: Some(statement.name.clone()),
            },
            server,
        );
    }

    /// Records a Parse or evicting Close sent; when the server is skipping to Sync after an
    /// error, it will not run, and the connection's prepared set is put back.
    fn owe_statement(&mut self, owed: Owed, server: &mut Carried) {
        if let Some(skipped) = self.pipeline.push(owed) {
            if let Some(s) = Pipeline::statement_change(&skipped) {
                undo(server, s);
            }
        }
    }

    /// Whether the pooler's own answers are due before the next server message.
    pub fn local_due(&self) -> bool {
        self.pipeline.local_due()
    }

    /// Accounts for one server message.
    pub fn on_server_message(
        &mut self,
        tag: u8,
        info: ServerInfo,
        server: &mut Carried,
    ) -> Verdict {
        let verdict = self
            .pipeline
            .on_server_message(tag, |skipped| undo(server, skipped));
        match info {
            ServerInfo::Error => self.client_mut().session.on_error(),
            ServerInfo::Rollback => self.client_mut().session.on_command_complete("ROLLBACK"),
            ServerInfo::Ready(status) => match self.client.as_deref_mut() {
                Some(client) => {
                    let session = &mut client.session;
                    session.on_ready(status);
                    if status == b'I' && session.take_unsure() {
                        server.session_unknown();
                    } else if status == b'I' {
                        // What ran here is now this connection's state.
                        server.adopt_session(session.applied());
                    }
                }
                // A client without state has the default session: nothing pending, nothing
                // failed, nothing applied, and a ReadyForQuery changes none of that.
                None if status == b'I' => server.adopt_session(&[]),
                None => {}
            },
            ServerInfo::Other => {}
        }
        verdict
    }
}

/// Puts a connection's prepared set back as it was before a message the server skipped.
fn undo(server: &mut Carried, skipped: Skipped<'_>) {
    match skipped {
        Skipped::Parse(name) => server.forget_statement(name),
        Skipped::Eviction(name) => server.restore_statement(name.clone()),
    }
}

/// PostgreSQL's error for a statement name it does not know.
fn no_such_statement(name: &str) -> PgError {
    PgError::error(
        "26000",
        format!("prepared statement \"{name}\" does not exist"),
    )
}

/// What the relay read of a server message, for session-state tracking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerInfo {
    /// ErrorResponse.
    Error,
    /// CommandComplete `ROLLBACK`.
    Rollback,
    /// ReadyForQuery with this status.
    Ready(u8),
    /// Anything else.
    Other,
}

fn refusal(what: &str) -> PgError {
    PgError::error(
        "0A000",
        format!("{what} is not supported in transaction pooling mode"),
    )
    .with_hint("the pooler is configured with pinning = refuse; use session pooling for this client, or pinning = pin")
}
