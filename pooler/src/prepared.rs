//! Protocol-level prepared statements in transaction mode.
//!
//! A client names its statements (`P_0`, `s1`, …) as if it owned one server connection. The
//! pooler gives every distinct statement text (with its parameter types) one pooler-wide
//! server-side name, remembers per client which of its names means which statement, and per
//! server connection which statements that connection has prepared (bounded by
//! `max_prepared_statements`, least recently used evicted), so a statement is prepared on
//! whichever connection the client gets next, once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::Bytes;

use crate::sql::{self, Effect};

/// The prefix of the names statements get on the server. A client's own names are mapped to
/// these; a client naming one directly would reach statements prepared for other clients.
pub const SERVER_NAME_PREFIX: &str = "weir_";

/// Whether a protocol-level statement name is one the pooler gives statements on the server.
pub fn is_server_name(name: &str) -> bool {
    name.starts_with(SERVER_NAME_PREFIX)
}

/// A statement as the server prepares it: the pooler-wide name and the Parse body after the
/// name (query text, parameter types), ready to send again.
#[derive(Debug, PartialEq, Eq)]
pub struct Statement {
    /// The server-side name, `weir_<n>`.
    pub name: Arc<str>,
    /// The query text.
    pub query: String,
    /// The parameter type OIDs the client declared.
    pub param_types: Vec<u32>,
    /// What executing it does to session state, worked out once.
    pub effect: Effect,
}

/// A statement's identity: its text and declared parameter types.
type StatementKey = (String, Vec<u32>);

/// The most named statements one client may hold (transaction and statement modes), and the
/// most bytes of statement text among them. Past either, the client is told (SQLSTATE 54000)
/// and closed. Documented in the README.
pub const MAX_CLIENT_STATEMENTS: usize = 10_000;
/// See [`MAX_CLIENT_STATEMENTS`].
pub const MAX_CLIENT_STATEMENT_BYTES: usize = 64 << 20;

/// Pooler-wide statement names: one per distinct (query, parameter types) that some client
/// still names. The registry holds statements weakly: a statement no client names any more
/// is forgotten (a later Parse of the same text gets a new name), so the registry is bounded
/// by what the clients hold.
#[derive(Debug, Default)]
pub struct StatementRegistry {
    names: Mutex<Names>,
    next: AtomicU64,
}

#[derive(Debug, Default)]
struct Names {
    by_key: HashMap<StatementKey, Weak<Statement>>,
    /// Entries after the last sweep of forgotten statements; the next sweep comes at twice
    /// that, which keeps sweeping amortised constant time per new statement.
    swept_at: usize,
}

impl StatementRegistry {
    /// The statement for this text and these types, named on first sight.
    pub fn statement(&self, query: &str, param_types: &[u32]) -> Arc<Statement> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let key = (query.to_owned(), param_types.to_vec());
        if let Some(s) = names.by_key.get(&key).and_then(Weak::upgrade) {
            return s;
        }
        if names.by_key.len() >= (2 * names.swept_at).max(1024) {
            names.by_key.retain(|_, s| s.strong_count() > 0);
            names.swept_at = names.by_key.len();
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let statement = Arc::new(Statement {
            name: format!("{SERVER_NAME_PREFIX}{n}").into(),
            query: key.0.clone(),
            param_types: key.1.clone(),
            effect: sql::classify(query),
        });
        names.by_key.insert(key, Arc::downgrade(&statement));
        statement
    }

    /// How many distinct statements clients hold.
    pub fn len(&self) -> usize {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        names
            .by_key
            .values()
            .filter(|s| s.strong_count() > 0)
            .count()
    }

    /// Whether none has been seen.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The statements one server connection has prepared, least recently used evicted first.
#[derive(Debug, Default)]
pub struct PreparedSet {
    used: HashMap<Arc<str>, u64>,
    clock: u64,
}

impl PreparedSet {
    /// Whether `name` is prepared here; marks it used.
    pub fn touch(&mut self, name: &Arc<str>) -> bool {
        self.clock += 1;
        match self.used.get_mut(name) {
            Some(t) => {
                *t = self.clock;
                true
            }
            None => false,
        }
    }

    /// Records `name` as prepared. While that makes more than `capacity`, the least recently
    /// used other names are returned, which the caller must Close on the server.
    pub fn insert(&mut self, name: Arc<str>, capacity: usize) -> Vec<Arc<str>> {
        self.clock += 1;
        self.used.insert(name.clone(), self.clock);
        let mut victims = Vec::new();
        while self.used.len() > capacity.max(1) {
            let Some(victim) = self
                .used
                .iter()
                .filter(|(n, _)| **n != name)
                .min_by_key(|(_, t)| **t)
                .map(|(n, _)| n.clone())
            else {
                break;
            };
            self.used.remove(&victim);
            victims.push(victim);
        }
        victims
    }

    /// Records `name` as prepared again after its eviction did not happen, as the least
    /// recently used: it may leave the set over capacity until the next insert.
    pub fn restore(&mut self, name: Arc<str>) {
        self.used.entry(name).or_insert(0);
    }

    /// Forgets `name` (its Parse failed or was skipped).
    pub fn remove(&mut self, name: &str) {
        self.used.remove(name);
    }

    /// Forgets everything (after DISCARD ALL / DEALLOCATE ALL on the server).
    pub fn clear(&mut self) {
        self.used.clear();
    }

    /// How many statements are prepared.
    pub fn len(&self) -> usize {
        self.used.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.used.is_empty()
    }
}

/// One client's statement names.
#[derive(Debug, Default)]
pub struct ClientStatements {
    by_name: HashMap<String, Arc<Statement>>,
    /// Bytes of statement text the names refer to.
    text_bytes: usize,
}

impl ClientStatements {
    /// How many named statements the client has.
    pub fn count(&self) -> usize {
        self.by_name.len()
    }

    /// Binds the client's `name` to `statement`. Err names the limit this would go over
    /// ([`MAX_CLIENT_STATEMENTS`], [`MAX_CLIENT_STATEMENT_BYTES`]); nothing changes then.
    pub fn insert(&mut self, name: &str, statement: Arc<Statement>) -> Result<(), &'static str> {
        let replaced = self.by_name.get(name).map(|s| s.query.len());
        if replaced.is_none() && self.by_name.len() >= MAX_CLIENT_STATEMENTS {
            return Err("too many prepared statements on one client connection");
        }
        let text_bytes = self.text_bytes - replaced.unwrap_or(0) + statement.query.len();
        if text_bytes > MAX_CLIENT_STATEMENT_BYTES {
            return Err("too much prepared statement text on one client connection");
        }
        self.text_bytes = text_bytes;
        self.by_name.insert(name.to_owned(), statement);
        Ok(())
    }

    /// The statement the client calls `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<Statement>> {
        self.by_name.get(name)
    }

    /// Forgets the client's `name` (Close).
    pub fn remove(&mut self, name: &str) {
        if let Some(s) = self.by_name.remove(name) {
            self.text_bytes -= s.query.len();
        }
    }

    /// Forgets all (DISCARD ALL, DEALLOCATE ALL).
    pub fn clear(&mut self) {
        self.by_name.clear();
        self.text_bytes = 0;
    }
}

/// Encodes a Parse message for `statement` under its server-side name.
pub fn encode_parse(out: &mut bytes::BytesMut, statement: &Statement) {
    crate::protocol::frontend::parse(
        out,
        &statement.name,
        &statement.query,
        &statement.param_types,
    );
}

/// A complete ParseComplete message.
pub const PARSE_COMPLETE: Bytes = Bytes::from_static(&[b'1', 0, 0, 0, 4]);
/// A complete CloseComplete message.
pub const CLOSE_COMPLETE: Bytes = Bytes::from_static(&[b'3', 0, 0, 0, 4]);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_text_and_types_share_a_name() {
        let r = StatementRegistry::default();
        let a = r.statement("SELECT $1", &[23]);
        let b = r.statement("SELECT $1", &[23]);
        let c = r.statement("SELECT $1", &[25]);
        assert_eq!(a.name, b.name);
        assert_ne!(a.name, c.name);
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn statements_no_client_holds_are_forgotten() {
        let r = StatementRegistry::default();
        let kept = r.statement("SELECT 'kept'", &[]);
        for i in 0..5000 {
            drop(r.statement(&format!("SELECT {i}"), &[]));
        }
        assert_eq!(r.len(), 1);
        let stored = r
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .len();
        assert!(stored <= 2048, "{stored} entries kept for 1 live statement");
        assert_eq!(r.statement("SELECT 'kept'", &[]).name, kept.name);
    }

    #[test]
    fn a_client_holds_a_bounded_number_of_statements() {
        let r = StatementRegistry::default();
        let mut c = ClientStatements::default();
        let s = r.statement("SELECT 1", &[]);
        for i in 0..MAX_CLIENT_STATEMENTS {
            c.insert(&format!("s{i}"), s.clone()).unwrap();
        }
        assert!(c.insert("one more", s.clone()).is_err());
        // Renaming an existing name is no growth.
        c.insert("s0", r.statement("SELECT 2", &[])).unwrap();
        c.remove("s1");
        c.insert("one more", s).unwrap();
        assert_eq!(c.count(), MAX_CLIENT_STATEMENTS);

        let mut c = ClientStatements::default();
        let big = r.statement(&"x".repeat(MAX_CLIENT_STATEMENT_BYTES / 2 + 1), &[]);
        c.insert("a", big.clone()).unwrap();
        assert!(c.insert("b", big.clone()).is_err());
        c.clear();
        c.insert("b", big).unwrap();
    }

    #[test]
    fn least_recently_used_is_evicted() {
        let mut s = PreparedSet::default();
        let (a, b, c): (Arc<str>, Arc<str>, Arc<str>) = ("a".into(), "b".into(), "c".into());
        assert!(s.insert(a.clone(), 2).is_empty());
        assert!(s.insert(b.clone(), 2).is_empty());
        assert!(s.touch(&a));
        assert_eq!(s.insert(c.clone(), 2), vec![b.clone()]);
        assert!(s.touch(&a) && s.touch(&c) && !s.touch(&b));
        // A restored statement goes first, and the set shrinks back to capacity.
        s.restore(b.clone());
        let d: Arc<str> = "d".into();
        assert_eq!(s.insert(d.clone(), 2), vec![b.clone(), a.clone()]);
        assert!(s.touch(&c) && s.touch(&d));
        s.remove("c");
        assert_eq!(s.len(), 1);
        s.clear();
        assert!(s.is_empty());
    }

    #[test]
    fn client_names_are_private_to_the_client() {
        let r = StatementRegistry::default();
        let mut one = ClientStatements::default();
        let two = ClientStatements::default();
        one.insert("P_0", r.statement("SELECT 1", &[])).unwrap();
        assert!(one.get("P_0").is_some());
        assert!(two.get("P_0").is_none());
        one.remove("P_0");
        assert!(one.get("P_0").is_none());
    }
}
