//! Just enough SQL to know what a statement does to session state: splitting a simple-query
//! string into statements and recognising the few kinds that matter in transaction mode.
//! It never rejects text; anything it does not recognise is `Other`.

/// What a statement means for the session it runs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// `SET [SESSION] name ...`: a session setting to replay on the next server connection.
    /// `name` is lower-case; `SET TIME ZONE` is `timezone`.
    Set {
        /// The setting.
        name: String,
    },
    /// `RESET name`.
    Reset {
        /// The setting.
        name: String,
    },
    /// `RESET ALL`.
    ResetAll,
    /// `DISCARD ALL`: resets everything, deallocates every prepared statement.
    DiscardAll,
    /// `DEALLOCATE ALL` (or `DEALLOCATE PREPARE ALL`).
    DeallocateAll,
    /// State the pooler cannot carry to another server connection: the client must keep its
    /// connection (or be refused). The text says what, for errors and logs.
    Pin(&'static str),
    /// Anything else (including `SET LOCAL`, which ends with its transaction).
    Other,
}

/// The statements of a simple-query string, split at top-level semicolons, skipping
/// comments, quoted strings, quoted identifiers and dollar-quoted bodies. Statements that are
/// only white space and comments are left out.
pub fn statements(sql: &str) -> Statements<'_> {
    Statements { sql, pos: 0 }
}

/// The iterator [`statements`] returns; it allocates nothing.
#[derive(Debug, Clone)]
pub struct Statements<'a> {
    sql: &'a str,
    /// Where the next statement starts; past the end once the last was returned.
    pos: usize,
}

impl<'a> Iterator for Statements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        while self.pos <= self.sql.len() {
            let start = self.pos;
            let end = statement_end(self.sql.as_bytes(), start);
            self.pos = end + 1;
            let stmt = &self.sql[start..end];
            if !strip_comments_start(stmt).is_empty() {
                return Some(stmt);
            }
        }
        None
    }
}

/// Index of the top-level semicolon ending the statement that starts at `i`, or the length.
fn statement_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'\'' | b'"' => i = skip_quoted(b, i),
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p + 1);
            }
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'$' => i = skip_dollar(b, i),
            b';' => return i,
            _ => i += 1,
        }
    }
    b.len()
}

/// Index after a quoted string or identifier starting at `i` (a doubled quote escapes).
fn skip_quoted(b: &[u8], i: usize) -> usize {
    let q = b[i];
    let mut j = i + 1;
    while j < b.len() {
        if b[j] == q {
            if b.get(j + 1) == Some(&q) {
                j += 2;
                continue;
            }
            return j + 1;
        }
        // E'' strings escape with backslashes; skipping the escaped byte is harmless elsewhere.
        if b[j] == b'\\' && q == b'\'' {
            j += 1;
        }
        j += 1;
    }
    b.len()
}

/// Index after a (possibly nested) block comment starting at `i`.
fn skip_block_comment(b: &[u8], i: usize) -> usize {
    let mut depth = 0usize;
    let mut j = i;
    while j + 1 < b.len() {
        if b[j] == b'/' && b[j + 1] == b'*' {
            depth += 1;
            j += 2;
        } else if b[j] == b'*' && b[j + 1] == b'/' {
            depth -= 1;
            j += 2;
            if depth == 0 {
                return j;
            }
        } else {
            j += 1;
        }
    }
    b.len()
}

/// Index after a dollar-quoted body starting at `i`, or `i + 1` when `$` starts no tag
/// (a parameter like `$1`).
fn skip_dollar(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
        j += 1;
    }
    if j >= b.len() || b[j] != b'$' || b[i + 1..j].first().is_some_and(u8::is_ascii_digit) {
        return i + 1;
    }
    let tag = &b[i..=j];
    let body = j + 1;
    b[body..]
        .windows(tag.len())
        .position(|w| w == tag)
        .map_or(b.len(), |p| body + p + tag.len())
}

/// The statement without leading white space and comments.
fn strip_comments_start(s: &str) -> &str {
    let mut s = s.trim_start();
    loop {
        if let Some(rest) = s.strip_prefix("--") {
            s = rest.find('\n').map_or("", |p| &rest[p + 1..]).trim_start();
        } else if s.starts_with("/*") {
            let end = skip_block_comment(s.as_bytes(), 0);
            s = s.get(end..).unwrap_or("").trim_start();
        } else {
            return s;
        }
    }
}

/// How many leading words classification looks at.
const WORDS: usize = 5;

/// The first [`WORDS`] words of a statement as written (identifier-ish words only; missing
/// ones are empty).
fn words(s: &str) -> [&str; WORDS] {
    // Separators are ASCII, so byte positions next to them are character boundaries; white
    // space is SQL's (ASCII) white space.
    let is_separator = |b: u8| b.is_ascii_whitespace() || matches!(b, b'(' | b'=' | b';');
    let s = strip_comments_start(s);
    let b = s.as_bytes();
    let mut out = [""; WORDS];
    let mut i = 0;
    for slot in &mut out {
        while i < b.len() && is_separator(b[i]) {
            i += 1;
        }
        let start = i;
        while i < b.len() && !is_separator(b[i]) {
            i += 1;
        }
        if start == i {
            break;
        }
        *slot = &s[start..i];
    }
    out
}

/// A word lower-cased on the stack, for matching against keywords. Words longer than any
/// keyword match none.
struct Lower {
    buf: [u8; 16],
    len: usize,
}

impl Lower {
    fn new(word: &str) -> Self {
        let mut buf = [0u8; 16];
        let Some(dst) = buf.get_mut(..word.len()) else {
            // NUL never appears in SQL text, so this matches no keyword (nor "").
            return Self { buf, len: 1 };
        };
        dst.copy_from_slice(word.as_bytes());
        dst.make_ascii_lowercase();
        Self {
            buf,
            len: word.len(),
        }
    }

    fn as_str(&self) -> &str {
        // Lower-casing ASCII bytes keeps a whole-str copy valid UTF-8; the long-word marker
        // is a single NUL.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("\0")
    }
}

/// What one statement does to session state. Runs on every query in transaction mode, so
/// it allocates only for the (rare) statements that change settings.
pub fn classify(stmt: &str) -> Effect {
    let w = words(stmt);
    // Lower-cased as examined: most statements need only their first word.
    let word = |i: usize| Lower::new(w[i]);
    match word(0).as_str() {
        "set" => match word(1).as_str() {
            "local" | "transaction" | "constraints" => Effect::Other,
            "session" if word(2).as_str() == "characteristics" => Effect::Set {
                name: "session characteristics".into(),
            },
            "session" if word(2).as_str() == "authorization" => Effect::Set {
                name: "session_authorization".into(),
            },
            "session" => set_name(w[2], word(2).as_str(), word(3).as_str()),
            first => set_name(w[1], first, word(2).as_str()),
        },
        "reset" => match word(1).as_str() {
            "all" => Effect::ResetAll,
            "session" if word(2).as_str() == "authorization" => Effect::Reset {
                name: "session_authorization".into(),
            },
            "time" => Effect::Reset {
                name: "timezone".into(),
            },
            "" => Effect::Other,
            _ => Effect::Reset {
                name: unquote(w[1]),
            },
        },
        "discard" if word(1).as_str() == "all" => Effect::DiscardAll,
        "discard" if word(1).as_str() == "temp" || word(1).as_str() == "temporary" => Effect::Other,
        "deallocate"
            if word(1).as_str() == "all"
                || (word(1).as_str() == "prepare" && word(2).as_str() == "all") =>
        {
            Effect::DeallocateAll
        }
        "prepare" if word(1).as_str() != "transaction" => Effect::Pin("SQL PREPARE"),
        "listen" => Effect::Pin("LISTEN"),
        "declare" if contains_words(stmt, &["with", "hold"]) => Effect::Pin("a WITH HOLD cursor"),
        "create" if creates_temp(word(1).as_str(), word(2).as_str()) => {
            Effect::Pin("a temporary table")
        }
        _ => pins_in_text(stmt).map_or(Effect::Other, Effect::Pin),
    }
}

/// `SET <first> <second>`: `written` is the first word as the client wrote it, `first` and
/// `second` lower-cased.
fn set_name(written: &str, first: &str, second: &str) -> Effect {
    let name = match (first, second) {
        ("time", "zone") => "timezone".to_owned(),
        ("role", _) => "role".to_owned(),
        ("names", _) => "client_encoding".to_owned(),
        ("", _) => return Effect::Other,
        _ => unquote(written),
    };
    Effect::Set { name }
}

fn unquote(name: &str) -> String {
    name.trim_matches('"').to_ascii_lowercase()
}

fn creates_temp(first: &str, second: &str) -> bool {
    matches!(
        (first, second),
        ("temp" | "temporary", _) | ("local" | "global", "temp" | "temporary")
    )
}

fn contains_words(stmt: &str, seq: &[&str]) -> bool {
    let mut start = stmt.split_whitespace();
    loop {
        let mut probe = start.clone();
        if seq
            .iter()
            .all(|s| probe.next().is_some_and(|w| w.eq_ignore_ascii_case(s)))
        {
            return true;
        }
        if start.next().is_none() {
            return false;
        }
    }
}

/// Session state taken anywhere in a statement's text: a session-level advisory lock, or
/// `SELECT ... INTO TEMP`. One pass over the bytes, case-insensitive, no copy.
fn pins_in_text(stmt: &str) -> Option<&'static str> {
    let b = stmt.as_bytes();
    for i in 0..b.len() {
        let rest = &b[i..];
        match b[i].to_ascii_lowercase() {
            b'p' if starts_with_ci(rest, b"pg_advisory_lock")
                || starts_with_ci(rest, b"pg_try_advisory_lock") =>
            {
                return Some("a session advisory lock");
            }
            b'i' if (i == 0 || b[i - 1].is_ascii_whitespace()) && into_temp(rest) => {
                return Some("a temporary table");
            }
            _ => {}
        }
    }
    None
}

fn starts_with_ci(b: &[u8], prefix: &[u8]) -> bool {
    b.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Whether `b` starts with the words `INTO TEMP` or `INTO TEMPORARY`.
fn into_temp(b: &[u8]) -> bool {
    let Some(after) = b.get(4..).filter(|_| starts_with_ci(b, b"into")) else {
        return false;
    };
    let next = after.iter().take_while(|c| c.is_ascii_whitespace()).count();
    if next == 0 {
        return false;
    }
    let word = &after[next..];
    let word = &word[..word
        .iter()
        .position(u8::is_ascii_whitespace)
        .unwrap_or(word.len())];
    word.eq_ignore_ascii_case(b"temp") || word.eq_ignore_ascii_case(b"temporary")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let sql = "SET a = 'x;y'; SELECT \"a;b\" -- c;d\n; SELECT $$ e;f $$; /* g; */ SELECT $1;";
        let parts: Vec<&str> = statements(sql).collect();
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert_eq!(parts[0].trim(), "SET a = 'x;y'");
        assert!(parts[2].contains("$$ e;f $$"));
        assert!(parts[3].contains("SELECT $1"));
        assert_eq!(statements("  ;  ; -- nothing\n").count(), 0);
    }

    #[test]
    fn dollar_tags_and_nested_comments() {
        let sql = "DO $body$ BEGIN PERFORM 1; END $body$; /* a /* b; */ c; */ SELECT 2";
        assert_eq!(statements(sql).count(), 2);
    }

    #[test]
    fn recognises_session_settings() {
        let set = |s: &str| classify(s);
        assert_eq!(
            set("SET search_path TO a, b"),
            Effect::Set {
                name: "search_path".into()
            }
        );
        assert_eq!(
            set("set SESSION statement_timeout = 5"),
            Effect::Set {
                name: "statement_timeout".into()
            }
        );
        assert_eq!(
            set("SET TIME ZONE 'UTC'"),
            Effect::Set {
                name: "timezone".into()
            }
        );
        assert_eq!(
            set("SET ROLE reader"),
            Effect::Set {
                name: "role".into()
            }
        );
        assert_eq!(
            set("SET \"Search_Path\"=x"),
            Effect::Set {
                name: "search_path".into()
            }
        );
        assert_eq!(
            set("/* hi */ SET work_mem='64MB'"),
            Effect::Set {
                name: "work_mem".into()
            }
        );
        assert_eq!(set("SET LOCAL work_mem = '1MB'"), Effect::Other);
        assert_eq!(
            set("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
            Effect::Other
        );
        assert_eq!(
            set("RESET work_mem"),
            Effect::Reset {
                name: "work_mem".into()
            }
        );
        assert_eq!(set("reset all"), Effect::ResetAll);
        assert_eq!(set("DISCARD ALL"), Effect::DiscardAll);
        assert_eq!(set("DEALLOCATE ALL"), Effect::DeallocateAll);
        assert_eq!(set("DEALLOCATE PREPARE ALL"), Effect::DeallocateAll);
    }

    #[test]
    fn recognises_state_that_pins() {
        assert!(matches!(
            classify("CREATE TEMP TABLE t (a int)"),
            Effect::Pin(_)
        ));
        assert!(matches!(
            classify("create local temporary table t (a int)"),
            Effect::Pin(_)
        ));
        assert!(matches!(
            classify("SELECT pg_advisory_lock(1)"),
            Effect::Pin(_)
        ));
        assert!(matches!(
            classify("SELECT pg_try_advisory_lock(1)"),
            Effect::Pin(_)
        ));
        assert_eq!(classify("SELECT pg_advisory_xact_lock(1)"), Effect::Other);
        assert!(matches!(classify("LISTEN jobs"), Effect::Pin(_)));
        assert!(matches!(
            classify("DECLARE c CURSOR WITH HOLD FOR SELECT 1"),
            Effect::Pin(_)
        ));
        assert_eq!(classify("DECLARE c CURSOR FOR SELECT 1"), Effect::Other);
        assert!(matches!(classify("PREPARE q AS SELECT 1"), Effect::Pin(_)));
        assert!(matches!(
            classify("SELECT * INTO TEMP t2 FROM t"),
            Effect::Pin(_)
        ));
        assert_eq!(classify("CREATE TABLE t (a int)"), Effect::Other);
        assert_eq!(classify("SELECT 'set search_path'"), Effect::Other);
    }

    #[test]
    fn long_words_keep_their_names_and_match_no_keyword() {
        assert_eq!(
            classify("SET idle_in_transaction_session_timeout = 0"),
            Effect::Set {
                name: "idle_in_transaction_session_timeout".into()
            }
        );
        assert_eq!(
            classify("set session Default_Transaction_Isolation TO 'serializable'"),
            Effect::Set {
                name: "default_transaction_isolation".into()
            }
        );
        assert_eq!(
            classify("RESET idle_in_transaction_session_timeout"),
            Effect::Reset {
                name: "idle_in_transaction_session_timeout".into()
            }
        );
        assert_eq!(
            classify("\tSET\r\n\tsearch_path\nTO x"),
            Effect::Set {
                name: "search_path".into()
            }
        );
        assert_eq!(classify("SETTLEMENTS_ARE_NOT_A_KEYWORD x"), Effect::Other);
        assert_eq!(classify("résumé = 1"), Effect::Other);
    }

    #[test]
    fn pins_found_anywhere_in_the_text_match_whole_words_only() {
        assert!(matches!(
            classify("select 1 into\n\tTemporary t2"),
            Effect::Pin(_)
        ));
        assert!(matches!(
            classify("WITH x AS (SELECT 1) SELECT PG_ADVISORY_LOCK(7)"),
            Effect::Pin(_)
        ));
        assert_eq!(classify("SELECT 1 INTO temps FROM t"), Effect::Other);
        assert_eq!(classify("SELECT 1 INTO TEMPx"), Effect::Other);
        assert_eq!(classify("SELECT 1 INTOTEMP t"), Effect::Other);
        assert_eq!(classify("SELECT 'xinto temp'"), Effect::Other);
        assert_eq!(classify("SELECT pg_advisory_unlock(1)"), Effect::Other);
    }

    #[test]
    fn never_panics_on_odd_text() {
        for s in [
            "", ";", "$", "$$", "$a", "'", "\"", "/*", "--", "E'\\", "$1$", "set", "reset",
        ] {
            let _ = statements(s).count();
            let _ = classify(s);
        }
    }
}
