//! Message-boundary tracking for the relay, pure and incremental.
//!
//! The relay streams bytes without buffering whole messages, but it must know where messages
//! start to see the few that matter: what the client asks for (Query, Sync, Terminate, the
//! extended-protocol messages that leave work pending until a Sync) and what the server
//! reports (ReadyForQuery with the transaction status, ParameterStatus). Only those two server
//! messages are ever held back until complete; everything else passes as it arrives.

use crate::pool::Counts;
use crate::protocol::{peek_header, ProtocolError};

/// How far a direction of the relay has looked into its buffer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    /// Bytes at the front of the buffer that have been looked at and may be sent on.
    pub scanned: usize,
    /// Body bytes of the current message not yet looked at (0 at a message boundary).
    pub remaining: usize,
}

impl Cursor {
    /// True when everything looked at was sent and the next byte starts a message.
    pub fn at_rest(&self) -> bool {
        self.scanned == 0 && self.remaining == 0
    }
}

/// What the server's protocol state looks like from the pooler's side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxState {
    /// Queries and Syncs sent whose ReadyForQuery has not come back yet.
    pub outstanding: u32,
    /// Extended-protocol messages were sent after the last Sync: the server holds work for
    /// this client even though nothing is outstanding.
    pub unsynced: bool,
    /// The transaction status of the last ReadyForQuery: `I`, `T` or `E`.
    pub status: u8,
}

impl Default for TxState {
    fn default() -> Self {
        TxState {
            outstanding: 0,
            unsynced: false,
            status: b'I',
        }
    }
}

impl TxState {
    /// Idle and in a clean protocol state: safe to give the connection to someone else.
    pub fn is_idle(&self) -> bool {
        self.outstanding == 0 && !self.unsynced && self.status == b'I'
    }
}

/// Why client scanning stopped before the end of the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStop {
    /// More bytes are needed (or the buffer is fully scanned).
    NeedMore,
    /// The client sent Terminate; it starts at `scanned` and is not to be forwarded.
    Terminate,
}

/// Reads a message header at `at`, if five bytes are there: (tag, body length).
fn header(buf: &[u8], at: usize, max_len: usize) -> Result<Option<(u8, usize)>, ProtocolError> {
    match buf.get(at..) {
        Some(rest) => peek_header(rest, max_len),
        None => Ok(None),
    }
}

/// Passes over the body of the current message as far as the buffer goes.
fn pass_body(buf: &[u8], cur: &mut Cursor) {
    let take = cur.remaining.min(buf.len() - cur.scanned);
    cur.scanned += take;
    cur.remaining -= take;
}

/// Scans client bytes from `cur.scanned` on, updating `tx` for every message that starts.
/// A simple query is refused unless `simple_query` (PgBouncer's `disable_pqexec`).
pub fn scan_client(
    buf: &[u8],
    cur: &mut Cursor,
    tx: &mut TxState,
    max_len: usize,
    simple_query: bool,
) -> Result<ClientStop, ProtocolError> {
    loop {
        pass_body(buf, cur);
        if cur.remaining > 0 {
            return Ok(ClientStop::NeedMore);
        }
        let Some((tag, body)) = header(buf, cur.scanned, max_len)? else {
            return Ok(ClientStop::NeedMore);
        };
        match tag {
            b'X' => return Ok(ClientStop::Terminate),
            b'Q' if !simple_query => return Err(ProtocolError::SimpleQueryDisallowed),
            // Simple query, function call and Sync each earn exactly one ReadyForQuery.
            b'Q' | b'F' | b'S' => {
                tx.outstanding += 1;
                tx.unsynced = false;
            }
            // Parse, Bind, Describe, Execute, Close: work the server holds until a Sync.
            b'P' | b'B' | b'D' | b'E' | b'C' => tx.unsynced = true,
            // Flush and COPY data change nothing the pooler tracks; anything else is the
            // server's to reject.
            _ => {}
        }
        cur.scanned += 5;
        cur.remaining = body;
    }
}

/// Why server scanning stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerStop {
    /// More bytes are needed (or the buffer is fully scanned).
    NeedMore,
    /// A ReadyForQuery left the connection idle; it is included in `scanned` and nothing after
    /// it is. The connection may be released once `scanned` bytes are sent.
    Idle,
    /// A ReadyForQuery with nothing outstanding reported a transaction, in statement mode.
    /// It starts at `scanned` and is not to be forwarded.
    TransactionInStatementMode,
}

/// Accounts for a ReadyForQuery with `status` and says whether the relay stops there: the
/// connection is idle and may be released, or (statement mode) a transaction was opened.
/// `may_release` says the rest of the relay is at rest too (nothing half-sent by the client,
/// nothing owed, not pinned).
pub fn ready(
    tx: &mut TxState,
    status: u8,
    policy: ReleasePolicy,
    may_release: bool,
    counts: &mut Counts,
) -> Option<ServerStop> {
    tx.outstanding = tx.outstanding.saturating_sub(1);
    tx.status = status;
    counts.ready(status);
    if tx.outstanding != 0 || tx.unsynced || !may_release {
        return None;
    }
    if policy.statement_mode && status != b'I' {
        return Some(ServerStop::TransactionInStatementMode);
    }
    (policy.release_when_idle && status == b'I').then_some(ServerStop::Idle)
}

/// What the server scanner needs to know besides the bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReleasePolicy {
    /// Release at idle ReadyForQuery (transaction and statement modes).
    pub release_when_idle: bool,
    /// Refuse transactions (statement mode).
    pub statement_mode: bool,
}

/// Scans server bytes from `cur.scanned` on. `client_at_rest` says whether the client side
/// has nothing unsent; only then can an idle ReadyForQuery release the connection.
/// `on_parameter` receives every complete ParameterStatus body.
#[allow(clippy::too_many_arguments)]
pub fn scan_server(
    buf: &[u8],
    cur: &mut Cursor,
    tx: &mut TxState,
    policy: ReleasePolicy,
    client_at_rest: bool,
    max_len: usize,
    counts: &mut Counts,
    mut on_parameter: impl FnMut(&[u8]),
) -> Result<ServerStop, ProtocolError> {
    loop {
        pass_body(buf, cur);
        if cur.remaining > 0 {
            return Ok(ServerStop::NeedMore);
        }
        let Some((tag, body)) = header(buf, cur.scanned, max_len)? else {
            return Ok(ServerStop::NeedMore);
        };
        match tag {
            // Read whole: ReadyForQuery and ParameterStatus to act on, ErrorResponse to count
            // by its SQLSTATE class, which a partial body may not yet contain.
            b'Z' | b'S' | b'E' => {
                let start = cur.scanned + 5;
                let Some(content) = buf.get(start..start + body) else {
                    return Ok(ServerStop::NeedMore);
                };
                if tag == b'S' {
                    on_parameter(content);
                } else if tag == b'E' {
                    counts.error(content);
                } else {
                    let [status] = content else {
                        return Err(ProtocolError::InvalidMessageLength {
                            tag,
                            len: i32::try_from(body + 4).unwrap_or(i32::MAX),
                        });
                    };
                    match ready(tx, *status, policy, client_at_rest, counts) {
                        Some(ServerStop::Idle) => {
                            cur.scanned = start + body;
                            return Ok(ServerStop::Idle);
                        }
                        Some(stop) => return Ok(stop),
                        None => {}
                    }
                }
                cur.scanned = start + body;
            }
            _ => {
                cur.scanned += 5;
                cur.remaining = body;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&u32::try_from(body.len() + 4).unwrap_or(0).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// `scan_server` as most tests call it: counts dropped, parameter reports ignored.
    fn scan_reply(
        server: &[u8],
        cur: &mut Cursor,
        tx: &mut TxState,
        policy: ReleasePolicy,
        client_at_rest: bool,
    ) -> Result<ServerStop, ProtocolError> {
        scan_server(
            server,
            cur,
            tx,
            policy,
            client_at_rest,
            1 << 20,
            &mut Counts::default(),
            |_| {},
        )
    }

    const TX: ReleasePolicy = ReleasePolicy {
        release_when_idle: true,
        statement_mode: false,
    };

    #[test]
    fn a_query_is_outstanding_until_ready_for_query() {
        let mut tx = TxState::default();
        let mut cur = Cursor::default();
        let client = msg(b'Q', b"select 1\0");
        assert_eq!(
            scan_client(&client, &mut cur, &mut tx, 1 << 20, true),
            Ok(ClientStop::NeedMore)
        );
        assert_eq!(cur.scanned, client.len());
        assert_eq!(tx.outstanding, 1);

        let mut server = msg(b'C', b"SELECT 1\0");
        server.extend(msg(b'Z', b"I"));
        let mut scur = Cursor::default();
        let stop = scan_reply(&server, &mut scur, &mut tx, TX, true);
        assert_eq!(stop, Ok(ServerStop::Idle));
        assert_eq!(scur.scanned, server.len());
        assert!(tx.is_idle());
    }

    #[test]
    fn pipelined_syncs_release_only_after_the_last() {
        let mut tx = TxState::default();
        let mut client = Vec::new();
        for _ in 0..2 {
            client.extend(msg(b'P', b"\0select 1\0\0\0"));
            client.extend(msg(b'B', b"\0\0\0\0\0\0\0\0"));
            client.extend(msg(b'E', b"\0\0\0\0\0"));
            client.extend(msg(b'S', b""));
        }
        let mut cur = Cursor::default();
        scan_client(&client, &mut cur, &mut tx, 1 << 20, true).unwrap_or(ClientStop::NeedMore);
        assert_eq!(tx.outstanding, 2);
        let server = msg(b'Z', b"I");
        let mut scur = Cursor::default();
        let stop = scan_reply(&server, &mut scur, &mut tx, TX, true);
        assert_eq!(stop, Ok(ServerStop::NeedMore));
        let mut scur = Cursor::default();
        let stop = scan_reply(&server, &mut scur, &mut tx, TX, true);
        assert_eq!(stop, Ok(ServerStop::Idle));
    }

    #[test]
    fn unsynced_parse_keeps_the_connection() {
        let mut tx = TxState {
            outstanding: 1,
            ..TxState::default()
        };
        let client = msg(b'P', b"s1\0select 1\0\0\0");
        let mut cur = Cursor::default();
        let _ = scan_client(&client, &mut cur, &mut tx, 1 << 20, true);
        let server = msg(b'Z', b"I");
        let mut scur = Cursor::default();
        let stop = scan_reply(&server, &mut scur, &mut tx, TX, true);
        assert_eq!(stop, Ok(ServerStop::NeedMore));
        assert!(tx.unsynced);
    }

    #[test]
    fn client_not_at_rest_blocks_release() {
        let mut tx = TxState {
            outstanding: 1,
            ..TxState::default()
        };
        let server = msg(b'Z', b"I");
        let mut scur = Cursor::default();
        let stop = scan_reply(&server, &mut scur, &mut tx, TX, false);
        assert_eq!(stop, Ok(ServerStop::NeedMore));
    }

    #[test]
    fn transaction_in_statement_mode_is_caught_before_forwarding() {
        let mut tx = TxState {
            outstanding: 1,
            ..TxState::default()
        };
        let mut server = msg(b'C', b"BEGIN\0");
        let before = server.len();
        server.extend(msg(b'Z', b"T"));
        let policy = ReleasePolicy {
            release_when_idle: true,
            statement_mode: true,
        };
        let mut scur = Cursor::default();
        let stop = scan_reply(&server, &mut scur, &mut tx, policy, true);
        assert_eq!(stop, Ok(ServerStop::TransactionInStatementMode));
        assert_eq!(scur.scanned, before);
    }

    #[test]
    fn terminate_is_not_forwarded() {
        let mut tx = TxState::default();
        let mut client = msg(b'Q', b"select 1\0");
        let before = client.len();
        client.extend(msg(b'X', b""));
        let mut cur = Cursor::default();
        let stop = scan_client(&client, &mut cur, &mut tx, 1 << 20, true);
        assert_eq!(stop, Ok(ClientStop::Terminate));
        assert_eq!(cur.scanned, before);
    }

    #[test]
    fn big_messages_stream_through_in_pieces() {
        let body = vec![7u8; 100_000];
        let whole = msg(b'D', &body);
        let mut tx = TxState::default();
        let mut cur = Cursor::default();
        // Feed the scanner 1000 bytes more each time, as reads would.
        let mut fed = 0;
        while fed < whole.len() {
            fed = (fed + 1000).min(whole.len());
            let stop = scan_reply(&whole[..fed], &mut cur, &mut tx, TX, true);
            assert_eq!(stop, Ok(ServerStop::NeedMore));
            assert_eq!(cur.scanned, fed);
        }
        assert_eq!(cur.remaining, 0);
    }

    #[test]
    fn parameter_status_waits_until_complete() {
        let whole = msg(b'S', b"TimeZone\0UTC\0");
        let mut tx = TxState::default();
        let mut cur = Cursor::default();
        let mut seen = Vec::new();
        let stop = scan_server(
            &whole[..8],
            &mut cur,
            &mut tx,
            TX,
            true,
            1 << 20,
            &mut Counts::default(),
            |b| seen.push(b.to_vec()),
        );
        assert_eq!(stop, Ok(ServerStop::NeedMore));
        assert_eq!(cur.scanned, 0);
        let _ = scan_server(
            &whole,
            &mut cur,
            &mut tx,
            TX,
            true,
            1 << 20,
            &mut Counts::default(),
            |b| seen.push(b.to_vec()),
        );
        assert_eq!(seen, vec![b"TimeZone\0UTC\0".to_vec()]);
        assert_eq!(cur.scanned, whole.len());
    }

    #[test]
    fn counts_requests_transactions_and_error_classes() {
        let mut counts = Counts::default();
        let mut tx = TxState {
            outstanding: 2,
            ..TxState::default()
        };
        let mut server = msg(b'E', b"SERROR\0C22012\0Mdivision by zero\0\0");
        server.extend(msg(b'Z', b"E"));
        server.extend(msg(b'Z', b"I"));
        let mut cur = Cursor::default();
        let _ = scan_server(
            &server,
            &mut cur,
            &mut tx,
            TX,
            true,
            1 << 20,
            &mut counts,
            |_| {},
        );
        assert_eq!(counts.queries, 2);
        assert_eq!(counts.transactions, 1);
        assert_eq!(counts.errors, vec![*b"22"]);
    }

    #[test]
    fn an_error_split_across_reads_is_counted_by_its_class() {
        let mut counts = Counts::default();
        let mut tx = TxState {
            outstanding: 1,
            ..TxState::default()
        };
        let mut server = msg(b'E', b"SERROR\0VERROR\0C22012\0Mdivision by zero\0\0");
        server.extend(msg(b'Z', b"I"));
        let mut cur = Cursor::default();
        // Only the first few bytes of the body have arrived: nothing is counted yet.
        let stop = scan_server(
            &server[..9],
            &mut cur,
            &mut tx,
            TX,
            true,
            1 << 20,
            &mut counts,
            |_| {},
        );
        assert_eq!(stop.ok(), Some(ServerStop::NeedMore));
        assert!(counts.errors.is_empty());
        let stop = scan_server(
            &server,
            &mut cur,
            &mut tx,
            TX,
            true,
            1 << 20,
            &mut counts,
            |_| {},
        );
        assert_eq!(stop.ok(), Some(ServerStop::Idle));
        assert_eq!(counts.errors, vec![*b"22"]);
    }

    #[test]
    fn bad_lengths_are_protocol_errors() {
        let mut tx = TxState::default();
        let mut cur = Cursor::default();
        let bad = [b'Q', 0, 0, 0, 3];
        assert!(scan_client(&bad, &mut cur, &mut tx, 1 << 20, true).is_err());
        let huge = [b'Q', 0x7f, 0xff, 0xff, 0xff];
        let mut cur = Cursor::default();
        assert!(scan_client(&huge, &mut cur, &mut tx, 1 << 20, true).is_err());
    }
}
