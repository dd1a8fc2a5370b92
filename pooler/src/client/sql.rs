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

/// Splits a simple-query string into its statements at top-level semicolons, skipping
/// comments, quoted strings, quoted identifiers and dollar-quoted bodies.
pub fn statements(sql: &str) -> Vec<&str> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut start = 0;
    let mut i = 0;
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
            b';' => {
                push_statement(&mut out, &sql[start..i]);
                i += 1;
                start = i;
            }
            _ => i += 1,
        }
    }
    push_statement(&mut out, &sql[start..]);
    out
}

fn push_statement<'a>(out: &mut Vec<&'a str>, s: &'a str) {
    if !strip_comments_start(s).is_empty() {
        out.push(s);
    }
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

/// The first `n` words of a statement, lower-cased (identifier-ish words only).
fn words(s: &str, n: usize) -> Vec<String> {
    strip_comments_start(s)
        .split(|c: char| c.is_whitespace() || c == '(' || c == '=' || c == ';')
        .filter(|w| !w.is_empty())
        .take(n)
        .map(str::to_ascii_lowercase)
        .collect()
}

/// What one statement does to session state.
pub fn classify(stmt: &str) -> Effect {
    let w = words(stmt, 5);
    let word = |i: usize| w.get(i).map(String::as_str).unwrap_or("");
    match word(0) {
        "set" => match word(1) {
            "local" | "transaction" | "constraints" => Effect::Other,
            "session" if word(2) == "characteristics" => Effect::Set {
                name: "session characteristics".into(),
            },
            "session" if word(2) == "authorization" => Effect::Set {
                name: "session_authorization".into(),
            },
            "session" => set_name(word(2), word(3)),
            name => set_name(name, word(2)),
        },
        "reset" => match word(1) {
            "all" => Effect::ResetAll,
            "session" if word(2) == "authorization" => Effect::Reset {
                name: "session_authorization".into(),
            },
            "time" => Effect::Reset {
                name: "timezone".into(),
            },
            "" => Effect::Other,
            name => Effect::Reset {
                name: unquote(name),
            },
        },
        "discard" if word(1) == "all" => Effect::DiscardAll,
        "discard" if word(1) == "temp" || word(1) == "temporary" => Effect::Other,
        "deallocate" if word(1) == "all" || (word(1) == "prepare" && word(2) == "all") => {
            Effect::DeallocateAll
        }
        "prepare" if word(1) != "transaction" => Effect::Pin("SQL PREPARE"),
        "listen" => Effect::Pin("LISTEN"),
        "declare" if contains_words(stmt, &["with", "hold"]) => Effect::Pin("a WITH HOLD cursor"),
        "create" if creates_temp(&w) => Effect::Pin("a temporary table"),
        _ if takes_session_advisory_lock(stmt) => Effect::Pin("a session advisory lock"),
        _ if selects_into_temp(stmt) => Effect::Pin("a temporary table"),
        _ => Effect::Other,
    }
}

fn set_name(first: &str, second: &str) -> Effect {
    let name = match (first, second) {
        ("time", "zone") => "timezone".to_owned(),
        ("role", _) => "role".to_owned(),
        ("names", _) => "client_encoding".to_owned(),
        ("", _) => return Effect::Other,
        (name, _) => unquote(name),
    };
    Effect::Set { name }
}

fn unquote(name: &str) -> String {
    name.trim_matches('"').to_ascii_lowercase()
}

fn creates_temp(w: &[String]) -> bool {
    matches!(
        (w.get(1).map(String::as_str), w.get(2).map(String::as_str)),
        (Some("temp" | "temporary"), _) | (Some("local" | "global"), Some("temp" | "temporary"))
    )
}

// Classification runs on every query in transaction mode: these scan the text in place
// rather than lower-casing a copy of it.
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

fn contains_ignoring_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

fn takes_session_advisory_lock(stmt: &str) -> bool {
    ["pg_advisory_lock", "pg_try_advisory_lock"]
        .iter()
        .any(|f| contains_ignoring_case(stmt, f))
}

fn selects_into_temp(stmt: &str) -> bool {
    contains_words(stmt, &["into", "temp"]) || contains_words(stmt, &["into", "temporary"])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_top_level_semicolons_only() {
        let sql = "SET a = 'x;y'; SELECT \"a;b\" -- c;d\n; SELECT $$ e;f $$; /* g; */ SELECT $1;";
        let parts = statements(sql);
        assert_eq!(parts.len(), 4, "{parts:?}");
        assert_eq!(parts[0].trim(), "SET a = 'x;y'");
        assert!(parts[2].contains("$$ e;f $$"));
        assert!(parts[3].contains("SELECT $1"));
        assert!(statements("  ;  ; -- nothing\n").is_empty());
    }

    #[test]
    fn dollar_tags_and_nested_comments() {
        let sql = "DO $body$ BEGIN PERFORM 1; END $body$; /* a /* b; */ c; */ SELECT 2";
        assert_eq!(statements(sql).len(), 2);
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
    fn never_panics_on_odd_text() {
        for s in [
            "", ";", "$", "$$", "$a", "'", "\"", "/*", "--", "E'\\", "$1$", "set", "reset",
        ] {
            let _ = statements(s);
            let _ = classify(s);
        }
    }
}
