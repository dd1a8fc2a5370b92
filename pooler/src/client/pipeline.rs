//! The responses a server connection still owes, in order.
//!
//! When the pooler rewrites a client's extended-protocol traffic (prepared statements in
//! transaction mode) the response stream no longer matches what the client sent one to one:
//! a Parse the server already knows is answered by the pooler itself, a Parse the pooler adds
//! is answered by the server but not meant for the client. This queue records, for every
//! message sent (or answered locally), what it will produce, so that the pooler's own answers
//! go out exactly where the server's would have, and the server's answers to the pooler's own
//! messages are dropped. After an error the server skips to the next Sync; the queue does too.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;

/// What one message sent to the server (or answered by the pooler) will produce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owed {
    /// ParseComplete. `swallow`: the pooler added this Parse; the client must not see the
    /// answer. `statement`: the server-side name, forgotten if the Parse fails or is skipped.
    Parse {
        /// Drop the server's ParseComplete.
        swallow: bool,
        /// The server-side statement name, when named.
        statement: Option<Arc<str>>,
    },
    /// BindComplete.
    Bind,
    /// ParameterDescription, then RowDescription or NoData.
    DescribeStatement,
    /// RowDescription or NoData.
    DescribePortal,
    /// Rows (or COPY) ending in CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute,
    /// CloseComplete. `evicted`: the pooler added this Close to evict that statement; the
    /// client must not see the answer, and the statement stays prepared if it is skipped.
    Close {
        /// The server-side name of the statement evicted.
        evicted: Option<Arc<str>>,
    },
    /// ReadyForQuery.
    Sync,
    /// Everything up to and including ReadyForQuery (simple query, function call).
    Query,
    /// Bytes the pooler sends the client itself when this point is reached.
    Local(Bytes),
}

/// A message the server skipped after an error, whose bookkeeping is undone: a statement
/// the pooler counted as prepared (`Parse`) or as closed (`Eviction`) was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped<'a> {
    /// A Parse of this server-side statement name failed or was skipped.
    Parse(&'a str),
    /// The Close evicting this statement was skipped: it is still prepared.
    Eviction(&'a Arc<str>),
}

/// What to do with one server message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it to the client.
    Forward,
    /// Drop it: it answers a message the pooler added.
    Swallow,
}

/// The queue of owed responses for one relay.
#[derive(Debug, Default)]
pub struct Pipeline {
    owed: VecDeque<Owed>,
    /// How many entries are [`Owed::Local`].
    local: usize,
    /// The server failed a message and no Sync has been sent since: it skips everything
    /// sent until the next Sync, answering none of it.
    server_skipping: bool,
}

impl Pipeline {
    /// Records what a message just sent (or answered locally) will produce. While the
    /// server skips to Sync after an error, nothing but a Sync is answered: the entry is
    /// handed back instead, for its bookkeeping to be undone.
    pub fn push(&mut self, owed: Owed) -> Option<Owed> {
        if self.server_skipping {
            if !matches!(owed, Owed::Sync) {
                return Some(owed);
            }
            self.server_skipping = false;
        }
        if matches!(owed, Owed::Local(_)) {
            self.local += 1;
        }
        self.owed.push_back(owed);
        None
    }

    /// What an entry the server skipped changed in the connection's prepared set.
    pub fn statement_change(owed: &Owed) -> Option<Skipped<'_>> {
        match owed {
            Owed::Parse {
                statement: Some(name),
                ..
            } => Some(Skipped::Parse(name)),
            Owed::Close {
                evicted: Some(name),
            } => Some(Skipped::Eviction(name)),
            _ => None,
        }
    }

    /// How many of the owed answers are the pooler's own.
    pub fn local_answers(&self) -> usize {
        self.local
    }

    /// Nothing is owed.
    pub fn is_empty(&self) -> bool {
        self.owed.is_empty()
    }

    /// The client ended a COPY FROM STDIN (CopyDone or CopyFail). The server ignores Sync
    /// messages that arrive while it is copying in, so the Syncs sent since the Execute that
    /// started the COPY will never be answered; they are struck off. Returns how many.
    pub fn copy_in_finished(&mut self) -> u32 {
        let Some(execute) = self.owed.iter().rposition(|o| matches!(o, Owed::Execute)) else {
            return 0;
        };
        let before = self.owed.len();
        let mut i = 0;
        self.owed.retain(|o| {
            let keep = i <= execute || !matches!(o, Owed::Sync);
            i += 1;
            keep
        });
        u32::try_from(before - self.owed.len()).unwrap_or(u32::MAX)
    }

    /// Whether the pooler's own answer is at the front, due before any server message.
    pub fn local_due(&self) -> bool {
        matches!(self.owed.front(), Some(Owed::Local(_)))
    }

    /// Takes the pooler's own answers that are due now (they are at the front).
    // Inlined into the relay's loop, which calls it for every server message: left to the
    // compiler, whether it is depends on how the crate splits into codegen units.
    #[inline]
    pub fn take_local(&mut self, out: &mut bytes::BytesMut) -> bool {
        let mut any = false;
        while let Some(Owed::Local(bytes)) = self.owed.front() {
            out.extend_from_slice(bytes);
            self.owed.pop_front();
            self.local -= 1;
            any = true;
        }
        any
    }

    /// Accounts for one server message by its type byte. `undo` receives the statements
    /// whose Parse or evicting Close failed or was skipped, latest first, so the connection's
    /// prepared set stays true.
    // As `take_local`.
    #[inline]
    pub fn on_server_message(&mut self, tag: u8, undo: impl FnMut(Skipped<'_>)) -> Verdict {
        // Asynchronous messages can arrive at any point and answer nothing.
        if matches!(tag, b'N' | b'S' | b'A') {
            return Verdict::Forward;
        }
        let Some(front) = self.owed.front() else {
            return Verdict::Forward;
        };
        if tag == b'E' {
            return self.on_error(undo);
        }
        let (done, verdict) = match (front, tag) {
            (Owed::Parse { swallow, .. }, b'1') => (true, swallow_if(*swallow)),
            (Owed::Bind, b'2') => (true, Verdict::Forward),
            // ParameterDescription comes first; RowDescription or NoData completes it.
            (Owed::DescribeStatement, b't') => (false, Verdict::Forward),
            (Owed::DescribeStatement | Owed::DescribePortal, b'T' | b'n') => {
                (true, Verdict::Forward)
            }
            (Owed::Execute, b'C' | b'I' | b's') => (true, Verdict::Forward),
            (Owed::Close { evicted }, b'3') => (true, swallow_if(evicted.is_some())),
            (Owed::Sync | Owed::Query, b'Z') => (true, Verdict::Forward),
            // Rows, COPY traffic, function results: part of the front's answer.
            _ => (false, Verdict::Forward),
        };
        if done {
            self.owed.pop_front();
        }
        verdict
    }

    /// An ErrorResponse: the front message failed; a simple query goes on to its
    /// ReadyForQuery, extended-protocol messages up to the next Sync are skipped. Their
    /// bookkeeping is undone in reverse, as a statement evicted and then prepared again in
    /// the same pipeline must end up as it was before either.
    fn on_error(&mut self, mut undo: impl FnMut(Skipped<'_>)) -> Verdict {
        let sync = self
            .owed
            .iter()
            .position(|o| matches!(o, Owed::Sync | Owed::Query));
        // No Sync sent yet: what the client sends until its Sync is skipped too.
        self.server_skipping = sync.is_none();
        let end = sync.unwrap_or(self.owed.len());
        for skipped in self.owed.drain(..end).rev() {
            if matches!(skipped, Owed::Local(_)) {
                self.local -= 1;
            }
            if let Some(change) = Self::statement_change(&skipped) {
                undo(change);
            }
        }
        Verdict::Forward
    }
}

fn swallow_if(swallow: bool) -> Verdict {
    if swallow {
        Verdict::Swallow
    } else {
        Verdict::Forward
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(swallow: bool, name: &str) -> Owed {
        Owed::Parse {
            swallow,
            statement: Some(name.into()),
        }
    }

    #[test]
    fn local_answers_are_counted_until_they_leave() {
        let local = || Owed::Local(Bytes::from_static(b"L"));
        let mut p = Pipeline::default();
        p.push(Owed::Bind);
        p.push(local());
        p.push(Owed::Execute);
        p.push(local());
        p.push(Owed::Sync);
        p.push(local());
        assert_eq!(p.local_answers(), 3);
        // An error skips to the Sync, dropping the local answers on the way.
        assert_eq!(p.on_server_message(b'E', |_| {}), Verdict::Forward);
        assert_eq!(p.local_answers(), 1);
        assert_eq!(p.on_server_message(b'Z', |_| {}), Verdict::Forward);
        let mut out = bytes::BytesMut::new();
        assert!(p.take_local(&mut out));
        assert_eq!(p.local_answers(), 0);
        assert!(p.is_empty());
    }

    #[test]
    fn a_local_answer_goes_out_in_order() {
        let mut p = Pipeline::default();
        p.push(Owed::Bind);
        p.push(Owed::Local(Bytes::from_static(b"LOCAL")));
        p.push(Owed::Execute);
        p.push(Owed::Sync);
        let mut out = bytes::BytesMut::new();
        assert!(
            !p.take_local(&mut out),
            "nothing is due before BindComplete"
        );
        assert_eq!(p.on_server_message(b'2', |_| {}), Verdict::Forward);
        assert!(p.take_local(&mut out));
        assert_eq!(&out[..], b"LOCAL");
        assert_eq!(p.on_server_message(b'D', |_| {}), Verdict::Forward);
        assert_eq!(p.on_server_message(b'C', |_| {}), Verdict::Forward);
        assert_eq!(p.on_server_message(b'Z', |_| {}), Verdict::Forward);
        assert!(p.is_empty());
    }

    #[test]
    fn the_answer_to_an_added_parse_is_swallowed() {
        let mut p = Pipeline::default();
        p.push(parse(true, "weir_1"));
        p.push(Owed::Bind);
        assert_eq!(p.on_server_message(b'1', |_| {}), Verdict::Swallow);
        assert_eq!(p.on_server_message(b'2', |_| {}), Verdict::Forward);
        assert!(p.is_empty());
    }

    #[test]
    fn an_error_skips_to_sync_and_forgets_unprepared_statements() {
        let mut p = Pipeline::default();
        p.push(parse(false, "weir_1"));
        p.push(Owed::Bind);
        p.push(Owed::Local(Bytes::from_static(b"X")));
        p.push(parse(true, "weir_2"));
        p.push(Owed::Execute);
        p.push(Owed::Sync);
        let mut forgotten = Vec::new();
        assert_eq!(
            p.on_server_message(b'E', |s| if let Skipped::Parse(n) = s {
                forgotten.push(n.to_owned());
            }),
            Verdict::Forward
        );
        assert_eq!(forgotten, vec!["weir_2", "weir_1"]);
        let mut out = bytes::BytesMut::new();
        assert!(!p.take_local(&mut out), "skipped local answers are dropped");
        assert_eq!(p.on_server_message(b'Z', |_| {}), Verdict::Forward);
        assert!(p.is_empty());
    }

    #[test]
    fn skipped_evictions_and_parses_are_undone_latest_first() {
        let mut p = Pipeline::default();
        p.push(Owed::Execute);
        p.push(Owed::Close {
            evicted: Some("weir_1".into()),
        });
        p.push(parse(true, "weir_3"));
        p.push(Owed::Close {
            evicted: Some("weir_2".into()),
        });
        p.push(parse(true, "weir_1"));
        p.push(Owed::Sync);
        let mut undone = Vec::new();
        p.on_server_message(b'E', |s| {
            undone.push(match s {
                Skipped::Parse(n) => format!("parse {n}"),
                Skipped::Eviction(n) => format!("close {n}"),
            });
        });
        // weir_1 ends up prepared: its Parse is undone before its eviction is.
        assert_eq!(
            undone,
            [
                "parse weir_1",
                "close weir_2",
                "parse weir_3",
                "close weir_1"
            ]
        );
        p.on_server_message(b'Z', |_| {});
        assert!(p.is_empty());
    }

    #[test]
    fn what_is_sent_after_an_error_and_before_sync_is_skipped() {
        let mut p = Pipeline::default();
        p.push(Owed::Bind);
        p.push(Owed::Execute);
        p.on_server_message(b'E', |_| {});
        assert!(p.is_empty());
        // The server skips these: they are handed back, owed by no one.
        assert_eq!(p.push(Owed::Bind), Some(Owed::Bind));
        assert!(p.push(Owed::Local(Bytes::from_static(b"3"))).is_some());
        assert_eq!(p.push(Owed::Query), Some(Owed::Query));
        assert_eq!(p.local_answers(), 0);
        assert_eq!(p.push(Owed::Sync), None);
        p.on_server_message(b'Z', |_| {});
        assert!(p.is_empty());
        // After the Sync, messages are answered again.
        assert_eq!(p.push(Owed::Bind), None);
        assert!(!p.is_empty());
    }

    #[test]
    fn an_error_before_a_sync_already_sent_skips_nothing_after_it() {
        let mut p = Pipeline::default();
        p.push(Owed::Execute);
        p.push(Owed::Sync);
        p.on_server_message(b'E', |_| {});
        assert_eq!(p.push(Owed::Bind), None);
    }

    #[test]
    fn describe_statement_takes_two_messages() {
        let mut p = Pipeline::default();
        p.push(Owed::DescribeStatement);
        p.push(Owed::Sync);
        p.on_server_message(b't', |_| {});
        assert!(!p.is_empty());
        p.on_server_message(b'n', |_| {});
        p.on_server_message(b'Z', |_| {});
        assert!(p.is_empty());
    }

    #[test]
    fn errors_inside_a_simple_query_wait_for_ready_for_query() {
        let mut p = Pipeline::default();
        p.push(Owed::Query);
        p.on_server_message(b'E', |_| {});
        assert!(!p.is_empty());
        p.on_server_message(b'Z', |_| {});
        assert!(p.is_empty());
    }

    #[test]
    fn syncs_sent_during_copy_in_are_struck_off() {
        let mut p = Pipeline::default();
        p.push(Owed::Bind);
        p.push(Owed::Execute);
        p.push(Owed::Sync);
        assert_eq!(p.copy_in_finished(), 1);
        p.push(Owed::Sync);
        p.on_server_message(b'2', |_| {});
        p.on_server_message(b'G', |_| {});
        p.on_server_message(b'C', |_| {});
        p.on_server_message(b'Z', |_| {});
        assert!(p.is_empty());
    }

    #[test]
    fn asynchronous_messages_change_nothing() {
        let mut p = Pipeline::default();
        p.push(Owed::Bind);
        for tag in [b'N', b'S', b'A'] {
            assert_eq!(p.on_server_message(tag, |_| {}), Verdict::Forward);
        }
        assert!(!p.is_empty());
    }
}
