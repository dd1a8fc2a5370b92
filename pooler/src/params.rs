//! Run-time parameters that the pooler keeps in step between a client and the server
//! connection it is lent (`client_encoding`, `DateStyle`, `TimeZone`, …).

use std::collections::HashSet;
use std::sync::{Arc, LazyLock, Mutex};

/// Parameters PostgreSQL reports with ParameterStatus that a client may set at startup and that
/// the pooler therefore tracks, by their canonical spelling.
pub const TRACKED: &[&str] = &[
    "client_encoding",
    "DateStyle",
    "TimeZone",
    "standard_conforming_strings",
    "application_name",
];

/// Pairs of one parameter set, in order.
type Entries = Arc<Vec<(String, String)>>;

/// Every distinct interned parameter set in use, once, so that equal sets share one allocation
/// and comparing two (on every checkout) compares pointers, not strings.
#[derive(Default)]
struct Interner {
    sets: HashSet<Entries>,
    /// The size at which sets no longer in use are dropped (amortised over the insertions).
    prune_at: usize,
}

static INTERNED: LazyLock<Mutex<Interner>> = LazyLock::new(Mutex::default);

/// The shared allocation of the set `entries`.
fn intern(entries: Entries) -> Entries {
    let mut interner = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(shared) = interner.sets.get(entries.as_ref()) {
        return shared.clone();
    }
    interner.sets.insert(entries.clone());
    if interner.sets.len() >= interner.prune_at {
        // Only the interner holds them: no set uses them any more.
        interner.sets.retain(|s| Arc::strong_count(s) > 1);
        interner.prune_at = (2 * interner.sets.len()).max(64);
    }
    entries
}

/// An ordered set of parameter values keyed case-insensitively (GUC names are), with a count
/// of the changes made to it. Interned sets that are equal share their pairs (see
/// [`Interner`]); a set is interned once built, not on every change.
#[derive(Debug, Clone, Default)]
pub struct ParamSet {
    entries: Entries,
    interned: bool,
    changes: u64,
}

impl PartialEq for ParamSet {
    fn eq(&self, other: &ParamSet) -> bool {
        // Two interned sets are equal exactly when they share their pairs.
        Arc::ptr_eq(&self.entries, &other.entries)
            || (!(self.interned && other.interned) && self.entries == other.entries)
    }
}

impl Eq for ParamSet {}

impl ParamSet {
    /// An empty set.
    pub fn new() -> ParamSet {
        ParamSet::default()
    }

    /// Shares the pairs with every equal interned set, so that comparing it with one is a
    /// pointer comparison; for a set kept long and compared often (a client's).
    pub fn intern(&mut self) {
        if !self.interned {
            self.entries = intern(std::mem::take(&mut self.entries));
            self.interned = true;
        }
    }

    /// How many times a value was added or changed; equal counts mean nothing changed.
    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// The value of `name`, if present.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Sets `name` to `value`, keeping the first spelling of the name seen.
    pub fn set(&mut self, name: &str, value: &str) {
        let found = self
            .entries
            .iter()
            .position(|(k, _)| k.eq_ignore_ascii_case(name));
        if found.is_some_and(|i| self.entries[i].1 == value) {
            return;
        }
        // Copied only when shared (interned or cloned); a set being built changes in place.
        let entries = Arc::make_mut(&mut self.entries);
        match found {
            Some(i) => value.clone_into(&mut entries[i].1),
            None => entries.push((name.to_owned(), value.to_owned())),
        }
        self.interned = false;
        self.changes += 1;
    }

    /// All (name, value) pairs in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

/// The canonical spelling of a tracked parameter (`datestyle` -> `DateStyle`), or `None` when
/// the parameter is neither built-in tracked nor listed in `extra` (`track_extra_parameters`).
pub fn canonical<'a>(name: &str, extra: &'a [String]) -> Option<&'a str> {
    TRACKED
        .iter()
        .copied()
        .find(|t| t.eq_ignore_ascii_case(name))
        .or_else(|| {
            extra
                .iter()
                .map(String::as_str)
                .find(|t| t.eq_ignore_ascii_case(name))
        })
}

/// The `name=value` settings of an `options` startup parameter, read as PgBouncer reads it:
/// only `-c name=value` (`-cname=value`) and `--name=value`, separated by whitespace, a
/// backslash keeping the next character (`-c application_name=my\ app`). `None` when
/// anything else is in it.
pub fn startup_options(options: &str) -> Option<Vec<(String, String)>> {
    let mut settings = Vec::new();
    let mut rest = options.trim_start();
    while !rest.is_empty() {
        rest = if let Some(after) = rest.strip_prefix("-c") {
            after.trim_start()
        } else {
            rest.strip_prefix("--")?
        };
        let mut token = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => token.extend(chars.next().map(|(_, c)| c)),
                Some((i, c)) if c.is_whitespace() => break i,
                Some((_, c)) => token.push(c),
                None => break rest.len(),
            }
        };
        let (name, value) = token.split_once('=')?;
        settings.push((name.to_owned(), value.to_owned()));
        rest = rest[end..].trim_start();
    }
    Some(settings)
}

/// Builds one simple-protocol query that brings a server's parameters in line with what the
/// client expects: `SET name TO 'value';` for every differing parameter. `None` when nothing
/// differs, which is the common case and costs no round trip.
pub fn sync_query(wanted: &ParamSet, server: &ParamSet) -> Option<String> {
    let mut sql = String::new();
    for (name, value) in wanted.iter() {
        if server.get(name) == Some(value) {
            continue;
        }
        sql.push_str("SET ");
        sql.push_str(&name.to_ascii_lowercase());
        sql.push_str(" TO ");
        push_literal(&mut sql, value);
        sql.push(';');
    }
    (!sql.is_empty()).then_some(sql)
}

/// Appends `value` as an SQL string literal that is correct whatever
/// `standard_conforming_strings` says.
fn push_literal(sql: &mut String, value: &str) {
    if value.contains('\\') {
        sql.push_str("E'");
        for c in value.chars() {
            match c {
                '\\' => sql.push_str("\\\\"),
                '\'' => sql.push_str("''"),
                c => sql.push(c),
            }
        }
    } else {
        sql.push('\'');
        for c in value.chars() {
            if c == '\'' {
                sql.push('\'');
            }
            sql.push(c);
        }
    }
    sql.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_options_read_as_pgbouncer_reads_them() {
        let pairs = |v: &[(&str, &str)]| {
            Some(
                v.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(startup_options(""), pairs(&[]));
        assert_eq!(
            startup_options("-c TimeZone=UTC  -cDateStyle=ISO --application_name=x "),
            pairs(&[
                ("TimeZone", "UTC"),
                ("DateStyle", "ISO"),
                ("application_name", "x")
            ])
        );
        assert_eq!(
            startup_options(r"-c application_name=my\ app\\ -c a=b=c -c e="),
            pairs(&[("application_name", r"my app\"), ("a", "b=c"), ("e", "")])
        );
        for bad in ["-X", "TimeZone=UTC", "-c TimeZone", "-c", "--", "-c a=b -f"] {
            assert_eq!(startup_options(bad), None, "{bad}");
        }
    }

    #[test]
    fn names_are_case_insensitive() {
        let mut p = ParamSet::new();
        p.set("DateStyle", "ISO, MDY");
        p.set("datestyle", "ISO, DMY");
        assert_eq!(p.get("DATESTYLE"), Some("ISO, DMY"));
        assert_eq!(p.iter().count(), 1);
        assert_eq!(p.iter().next().map(|(k, _)| k), Some("DateStyle"));
    }

    #[test]
    fn changes_count_real_changes_and_equality_ignores_them() {
        let mut a = ParamSet::new();
        a.set("TimeZone", "UTC");
        assert_eq!(a.changes(), 1);
        a.set("timezone", "UTC");
        assert_eq!(a.changes(), 1, "setting the same value is no change");
        a.set("TimeZone", "Europe/Paris");
        assert_eq!(a.changes(), 2);
        let mut b = ParamSet::new();
        b.set("TimeZone", "Europe/Paris");
        assert_eq!(a, b);
        assert_ne!(a.changes(), b.changes());
    }

    #[test]
    fn equal_sets_share_their_pairs_and_unused_ones_are_dropped() {
        let mut a = ParamSet::new();
        a.set("TimeZone", "UTC");
        a.set("application_name", "interned-test");
        let mut c = ParamSet::new();
        c.set("TimeZone", "UTC");
        c.set("application_name", "interned-test");
        assert_eq!(a, c, "equal before interning too");
        a.intern();
        assert_eq!(a, c, "an interned set and an equal one that is not");
        c.intern();
        assert_eq!(a, c);
        assert!(Arc::ptr_eq(&a.entries, &c.entries));
        let mut b = ParamSet::new();
        b.set("application_name", "interned-test");
        b.set("TimeZone", "Europe/Paris");
        b.intern();
        assert_ne!(a, b);
        b.set("TimeZone", "UTC");
        // Same pairs in another order are another set, interned or not.
        assert_ne!(a, b);
        b.intern();
        assert_ne!(a, b);
        // Changing an interned set leaves the others as they were.
        c.set("TimeZone", "Europe/Paris");
        assert_ne!(a, c);
        assert_eq!(a.get("TimeZone"), Some("UTC"));
        // Sets nobody holds any more go at the next pruning; those in use stay.
        for i in 0..200 {
            let mut t = ParamSet::new();
            t.set("application_name", &format!("passing-{i}"));
            t.intern();
        }
        let interned = INTERNED.lock().unwrap_or_else(|p| p.into_inner());
        assert!(interned.sets.len() < 200, "{}", interned.sets.len());
        assert!(interned.sets.contains(&a.entries));
    }

    #[test]
    fn canonical_spelling_comes_from_the_tracked_lists() {
        let extra = vec!["IntervalStyle".to_owned()];
        assert_eq!(canonical("timezone", &extra), Some("TimeZone"));
        assert_eq!(canonical("intervalstyle", &extra), Some("IntervalStyle"));
        assert_eq!(canonical("search_path", &extra), None);
    }

    #[test]
    fn sync_query_sets_only_what_differs() {
        let mut wanted = ParamSet::new();
        wanted.set("TimeZone", "Europe/Paris");
        wanted.set("application_name", "it's");
        wanted.set("client_encoding", "UTF8");
        let mut server = ParamSet::new();
        server.set("timezone", "UTC");
        server.set("client_encoding", "UTF8");
        assert_eq!(
            sync_query(&wanted, &server).as_deref(),
            Some("SET timezone TO 'Europe/Paris';SET application_name TO 'it''s';")
        );
        server.set("TimeZone", "Europe/Paris");
        server.set("application_name", "it's");
        assert_eq!(sync_query(&wanted, &server), None);
    }

    #[test]
    fn backslashes_use_an_escape_string() {
        let mut wanted = ParamSet::new();
        wanted.set("application_name", r"a\b'c");
        let q = sync_query(&wanted, &ParamSet::new());
        assert_eq!(q.as_deref(), Some(r"SET application_name TO E'a\\b''c';"));
    }
}
