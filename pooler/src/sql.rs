//! Just enough SQL to know what a statement does to session state: splitting a simple-query
//! string into statements and recognising the few kinds that matter in transaction mode.
//! It never rejects text; anything it does not recognise is `Other`. Where it cannot be sure,
//! it errs towards pinning: a needless pin costs a connection, a missed change leaks state.

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
    /// A statement no client may run behind the pooler, whatever `pinning` says: it would
    /// break the pooler's own bookkeeping. The text says why.
    Refuse(&'static str),
    /// Anything else (including `SET LOCAL`, which ends with its transaction).
    Other,
}

/// Why `DEALLOCATE weir_<n>` and `PREPARE weir_<n>` are refused.
pub const RESERVED_NAME: &str =
    "prepared statement names starting with \"weir_\" are reserved for the pooler";

/// Why a query is taken whole as pinning when where its strings end depends on a setting.
const AMBIGUOUS_QUOTING: &str = "a backslash before a quote in a plain string, whose meaning \
     depends on standard_conforming_strings (use E'' strings or double the quote)";

/// The statements of a simple-query string, split at top-level semicolons, skipping
/// comments, quoted strings, quoted identifiers and dollar-quoted bodies. Statements that are
/// only white space and comments are left out. Plain strings are read as PostgreSQL reads
/// them with `standard_conforming_strings` on (a backslash is a character); [`effects`]
/// considers the other reading too.
pub fn statements(sql: &str) -> Statements<'_> {
    Statements {
        sql,
        pos: 0,
        quoting: Quoting::Standard,
    }
}

/// How plain `'…'` strings treat a backslash (`E'…'` strings always take it as an escape).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Quoting {
    /// `standard_conforming_strings = on`, PostgreSQL's default.
    Standard,
    /// `standard_conforming_strings = off`: a backslash escapes the next character.
    Backslash,
}

/// The iterator [`statements`] returns; it allocates nothing.
#[derive(Debug, Clone)]
pub struct Statements<'a> {
    sql: &'a str,
    /// Where the next statement starts; past the end once the last was returned.
    pos: usize,
    quoting: Quoting,
}

impl<'a> Iterator for Statements<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        while self.pos <= self.sql.len() {
            let start = self.pos;
            let end = statement_end(self.sql.as_bytes(), start, self.quoting);
            self.pos = end + 1;
            let stmt = &self.sql[start..end];
            if !strip_comments_start(stmt).is_empty() {
                return Some(stmt);
            }
        }
        None
    }
}

/// Each statement of a simple-query string with what it does to the session.
///
/// Where a plain string holds a backslash, PostgreSQL's split depends on
/// `standard_conforming_strings`, which any client can change: when the two readings split
/// differently and either finds session state, the whole query is one [`Effect::Pin`].
pub fn effects(sql: &str) -> Effects<'_> {
    let ambiguous = sql.as_bytes().contains(&b'\\') && {
        let other = Statements {
            quoting: Quoting::Backslash,
            ..statements(sql)
        };
        !statements(sql).eq(other.clone())
            && statements(sql)
                .chain(other)
                .any(|s| classify(s) != Effect::Other)
    };
    Effects {
        whole: ambiguous.then_some(sql),
        split: statements(sql),
    }
}

/// The iterator [`effects`] returns; it allocates only what [`classify`] does.
#[derive(Debug, Clone)]
pub struct Effects<'a> {
    /// The query, when it is taken whole as one pinning statement.
    whole: Option<&'a str>,
    split: Statements<'a>,
}

impl<'a> Iterator for Effects<'a> {
    type Item = (&'a str, Effect);

    fn next(&mut self) -> Option<(&'a str, Effect)> {
        if let Some(sql) = self.whole.take() {
            self.split.pos = usize::MAX;
            return Some((sql, Effect::Pin(AMBIGUOUS_QUOTING)));
        }
        self.split.next().map(|s| (s, classify(s)))
    }
}

/// Whether `c` can continue an identifier, so that a `$` right after it is part of the name.
fn is_ident_byte(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80
}

/// Index of the top-level semicolon ending the statement that starts at `i`, or the length.
fn statement_end(b: &[u8], mut i: usize, quoting: Quoting) -> usize {
    while i < b.len() {
        match b[i] {
            b'\'' => {
                i = skip_quoted(
                    b,
                    i,
                    quoting == Quoting::Backslash || is_escape_string(b, i),
                );
            }
            b'"' => i = skip_quoted(b, i, false),
            b'-' if b.get(i + 1) == Some(&b'-') => i = skip_line_comment(b, i),
            b'/' if b.get(i + 1) == Some(&b'*') => i = skip_block_comment(b, i),
            b'$' if i == 0 || !is_ident_byte(b[i - 1]) => i = skip_dollar(b, i),
            b';' => return i,
            _ => i += 1,
        }
    }
    b.len()
}

/// Whether the quote at `i` opens an `E'…'` string: after an `E` that ends no longer word.
fn is_escape_string(b: &[u8], i: usize) -> bool {
    i >= 1 && b[i - 1].eq_ignore_ascii_case(&b'e') && (i == 1 || !is_ident_byte(b[i - 2]))
}

/// Index after a quoted string or identifier starting at `i`: a doubled quote escapes, and
/// so does a backslash when `backslash` is set.
fn skip_quoted(b: &[u8], i: usize, backslash: bool) -> usize {
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
        if backslash && b[j] == b'\\' {
            j += 1;
        }
        j += 1;
    }
    b.len()
}

/// Index after a `--` comment starting at `i` (past its newline).
fn skip_line_comment(b: &[u8], i: usize) -> usize {
    b[i..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| i + p + 1)
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
/// (a parameter like `$1`). Tags are PostgreSQL's: letters (any non-ASCII byte is one),
/// digits after the first, and `_`.
fn skip_dollar(b: &[u8], i: usize) -> usize {
    let mut j = i + 1;
    while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_' || b[j] >= 0x80) {
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

/// The words of a statement as written: keywords and names, with a quoted name, a string
/// or a dollar-quoted body as one word. White space, comments and the punctuation
/// `( ) = , ;` separate words. Allocates nothing.
#[derive(Debug, Clone)]
struct Words<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Words<'a> {
    fn new(s: &'a [u8]) -> Self {
        Words { s, i: 0 }
    }
}

/// Whether the byte at `i` ends a word (or is a separator before one).
fn ends_word(b: &[u8], i: usize) -> bool {
    b[i].is_ascii_whitespace()
        || matches!(b[i], b'(' | b')' | b'=' | b',' | b';' | b'\'')
        || (b[i] == b'-' && b.get(i + 1) == Some(&b'-'))
        || (b[i] == b'/' && b.get(i + 1) == Some(&b'*'))
}

impl<'a> Iterator for Words<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let b = self.s;
        let mut i = self.i;
        while i < b.len() && b[i] != b'\'' && ends_word(b, i) {
            i = match b[i] {
                b'-' => skip_line_comment(b, i),
                b'/' => skip_block_comment(b, i),
                _ => i + 1,
            };
        }
        if i >= b.len() {
            self.i = i;
            return None;
        }
        let start = i;
        if b[i] == b'\'' {
            i = skip_quoted(b, i, is_escape_string(b, i));
        } else if b[i] == b'$' && skip_dollar(b, i) > i + 1 {
            i = skip_dollar(b, i);
        } else {
            // The first byte ends no word, so each word is at least one byte long. A quoted
            // name starts a word, or continues one after a dot (`a."b"`).
            while i < b.len() && (i == start || !ends_word(b, i)) {
                i = match b[i] {
                    b'"' if i == start || b[i - 1] == b'.' => skip_quoted(b, i, false),
                    b'"' => break,
                    _ => i + 1,
                };
            }
        }
        self.i = i;
        self.s.get(start..i)
    }
}

/// How many leading words classification looks at.
const WORDS: usize = 5;

/// The first [`WORDS`] words of a statement (missing ones are empty).
fn words(s: &[u8]) -> [&[u8]; WORDS] {
    let mut out: [&[u8]; WORDS] = [b""; WORDS];
    for (slot, word) in out.iter_mut().zip(Words::new(s)) {
        *slot = word;
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
    fn new(word: &[u8]) -> Self {
        let mut buf = [0u8; 16];
        let Some(dst) = buf.get_mut(..word.len()) else {
            // NUL never appears in SQL text, so this matches no keyword (nor "").
            return Self { buf, len: 1 };
        };
        dst.copy_from_slice(word);
        dst.make_ascii_lowercase();
        Self {
            buf,
            len: word.len(),
        }
    }

    fn as_str(&self) -> &str {
        // Keywords are ASCII: a word that is not valid UTF-8 (a long one cut short, or
        // invalid bytes) is one no keyword matches.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("\0")
    }
}

/// What one statement does to session state. Runs on every query in transaction mode, so
/// it allocates only for the (rare) statements that change settings.
pub fn classify(stmt: &str) -> Effect {
    classify_bytes(stmt.as_bytes())
}

/// Whether a simple-query string (as sent, not necessarily UTF-8) certainly changes no
/// session state: one statement (a `;` may end it) that [`classify`] finds to be
/// [`Effect::Other`]. Then [`effects`] finds only `Other` too; false means only it can tell.
/// Judged on the bytes in about one pass, for the common query that needs nothing more.
pub fn plain_query(sql: &[u8]) -> bool {
    // With no other `;`, every reading of the quotes splits into this statement, or into it
    // and the `;` with white space; the two classify alike.
    let end = match memchr::memchr(b';', sql) {
        Some(p) if sql[p + 1..].iter().all(u8::is_ascii_whitespace) => p,
        Some(_) => return false,
        None => sql.len(),
    };
    classify_bytes(&sql[..end]) == Effect::Other
}

/// [`classify`] on bytes: text that is not UTF-8 is judged as if its invalid bytes were
/// replacement characters (non-ASCII, like them).
fn classify_bytes(stmt: &[u8]) -> Effect {
    let first = first_word(stmt);
    // Most statements (SELECT, INSERT, ...) start with none of these: their text decides.
    KEYWORDS
        .iter()
        .any(|k| first.eq_ignore_ascii_case(k))
        .then(|| by_keywords(Lower::new(first).as_str(), stmt))
        .flatten()
        .unwrap_or_else(|| pins_in_text(stmt).map_or(Effect::Other, Effect::Pin))
}

/// The first word as [`Words`] finds it; a statement that starts with letters and a word's
/// end (most do) needs no more than a look at those letters.
fn first_word(stmt: &[u8]) -> &[u8] {
    let letters = stmt.iter().take_while(|b| b.is_ascii_alphabetic()).count();
    if letters > 0 && (letters == stmt.len() || ends_word(stmt, letters)) {
        return &stmt[..letters];
    }
    Words::new(stmt).next().unwrap_or_default()
}

/// The first words [`by_keywords`] knows.
const KEYWORDS: [&[u8]; 11] = [
    b"set",
    b"reset",
    b"discard",
    b"deallocate",
    b"prepare",
    b"listen",
    b"load",
    b"declare",
    b"create",
    b"explain",
    b"do",
];

/// What a statement's leading keywords say it does, given its first word lower-cased; None
/// when only its text can tell.
fn by_keywords(first: &str, stmt: &[u8]) -> Option<Effect> {
    let w = words(stmt);
    let word = |i: usize| Lower::new(w[i]);
    Some(match first {
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
        "deallocate" => match (word(1).as_str(), word(2).as_str()) {
            ("all", _) | ("prepare", "all") => Effect::DeallocateAll,
            ("prepare", _) if reserved(w[2]) => Effect::Refuse(RESERVED_NAME),
            _ if reserved(w[1]) => Effect::Refuse(RESERVED_NAME),
            _ => Effect::Other,
        },
        "prepare" if word(1).as_str() == "transaction" => Effect::Other,
        "prepare" if reserved(w[1]) => Effect::Refuse(RESERVED_NAME),
        "prepare" => Effect::Pin("SQL PREPARE"),
        "listen" => Effect::Pin("LISTEN"),
        // A loaded library (auto_explain, …) stays in the backend for everyone after.
        "load" => Effect::Pin("LOAD of a library"),
        "declare" if has_words(stmt, b"with", b"hold") => Effect::Pin("a WITH HOLD cursor"),
        "create" if w[1..].iter().any(|w| is_temp(w)) => Effect::Pin("a temporary table"),
        "explain" if Words::new(stmt).any(is_temp) => Effect::Pin("a temporary table"),
        // An anonymous code block can change anything, also through dynamic SQL.
        "do" if DO_STATE_WORDS.iter().any(|w| has_word(stmt, w)) => {
            Effect::Pin("a DO block that may change session state")
        }
        _ => return None,
    })
}

/// Words that, anywhere in a DO block, may change session state.
const DO_STATE_WORDS: [&[u8]; 8] = [
    b"set",
    b"reset",
    b"execute",
    b"listen",
    b"prepare",
    b"temp",
    b"temporary",
    b"hold",
];

/// `SET <first> <second>`: `written` is the first word as the client wrote it, `first` and
/// `second` lower-cased.
fn set_name(written: &[u8], first: &str, second: &str) -> Effect {
    let name = match (first, second) {
        ("time", "zone") => "timezone".to_owned(),
        ("role", _) => "role".to_owned(),
        ("names", _) => "client_encoding".to_owned(),
        ("", _) => return Effect::Other,
        _ => unquote(written),
    };
    Effect::Set { name }
}

fn unquote(name: &[u8]) -> String {
    let start = name.iter().position(|&c| c != b'"').unwrap_or(name.len());
    let end = name
        .iter()
        .rposition(|&c| c != b'"')
        .map_or(start, |p| p + 1);
    String::from_utf8_lossy(&name[start..end]).to_ascii_lowercase()
}

/// Whether a prepared statement name (as written) is one the pooler uses on the server. Any
/// case counts: refusing a quoted `"WEIR_1"` too is harmless.
fn reserved(name: &[u8]) -> bool {
    let start = name.iter().position(|&c| c != b'"').unwrap_or(name.len());
    starts_with_ci(&name[start..], b"weir_")
}

fn is_temp(word: &[u8]) -> bool {
    word.eq_ignore_ascii_case(b"temp") || word.eq_ignore_ascii_case(b"temporary")
}

/// Whether the statement has the word `first` followed by the word `second`.
fn has_words(stmt: &[u8], first: &[u8], second: &[u8]) -> bool {
    let mut words = Words::new(stmt).peekable();
    while let Some(w) = words.next() {
        if w.eq_ignore_ascii_case(first)
            && words.peek().is_some_and(|n| n.eq_ignore_ascii_case(second))
        {
            return true;
        }
    }
    false
}

/// Whether `word` (lower-case) appears in `b` as a whole word, in any case, quoted or not.
fn has_word(b: &[u8], word: &[u8]) -> bool {
    (0..b.len()).any(|i| {
        starts_with_ci(&b[i..], word)
            && (i == 0 || !is_ident_byte(b[i - 1]))
            && b.get(i + word.len()).is_none_or(|&c| !is_ident_byte(c))
    })
}

/// Session state taken anywhere in a statement's text: a session-level advisory lock or
/// `set_config`, a temporary table (`SELECT ... INTO TEMP`, `pg_temp.`), a dblink
/// connection. Case-insensitive, strings and comments included; the pattern that starts
/// first names the state.
fn pins_in_text(b: &[u8]) -> Option<&'static str> {
    // Every pattern of `pin_at` but INTO has an underscore 2 (pg_), 3 (set_config) or 6
    // (dblink_connect) bytes after its start, and INTO starts with an i: only those places
    // are worth a look, and most statements have few.
    let mut found: Option<(usize, &'static str)> = None;
    let mut look = |i: usize| {
        if found.is_none_or(|(at, _)| i < at) {
            if let Some(pin) = pin_at(b, i) {
                found = Some((i, pin));
            }
        }
    };
    // Each back offset belongs to one first letter (dblink_, set_config, pg_), and INTO must
    // start a word: `pin_at` is asked only where its own first test would pass.
    let starts = |i: Option<usize>, letter: u8| i.filter(|&i| b[i].to_ascii_lowercase() == letter);
    underscores_and_is(b, |at| {
        if b[at] == b'_' {
            for (back, letter) in [(6, b'd'), (3, b's'), (2, b'p')] {
                starts(at.checked_sub(back), letter).map(&mut look);
            }
        } else if at == 0 || !is_ident_byte(b[at - 1]) {
            look(at);
        }
    });
    found.map(|(_, pin)| pin)
}

/// Calls `f` with every position of `b` that holds an underscore or an i in either case, in
/// order; looks at eight bytes at a time.
fn underscores_and_is(b: &[u8], mut f: impl FnMut(usize)) {
    const fn splat(byte: u8) -> u64 {
        u64::from_le_bytes([byte; 8])
    }
    /// The high bit of every byte of `v` that is zero, and no other bit.
    fn zero_bytes(v: u64) -> u64 {
        const LOW7: u64 = splat(0x7F);
        !(((v & LOW7) + LOW7) | v) & splat(0x80)
    }
    let mut k = 0;
    while k < b.len() {
        let w = match b.get(k..k + 8).map(<[u8; 8]>::try_from) {
            Some(Ok(eight)) => u64::from_le_bytes(eight),
            // The last few bytes, zero-padded.
            _ => b[k..].iter().rev().fold(0, |w, &x| (w << 8) | u64::from(x)),
        };
        // Zero padding matches neither; `| 0x20` folds only I onto i.
        let mut marks = zero_bytes(w ^ splat(b'_')) | zero_bytes((w | splat(0x20)) ^ splat(b'i'));
        while marks != 0 {
            f(k + marks.trailing_zeros() as usize / 8);
            marks &= marks - 1;
        }
        k += 8;
    }
}

/// The session state a pattern of [`pins_in_text`] starting at `i` takes, if one does.
fn pin_at(b: &[u8], i: usize) -> Option<&'static str> {
    let rest = &b[i..];
    match b[i].to_ascii_lowercase() {
        b'p' if starts_with_ci(rest, b"pg_advisory_lock")
            || starts_with_ci(rest, b"pg_try_advisory_lock") =>
        {
            Some("a session advisory lock")
        }
        b'p' if starts_with_ci(rest, b"pg_temp") => Some("a temporary table"),
        b's' if starts_with_ci(rest, b"set_config")
            && !local_set_config(&rest[b"set_config".len()..]) =>
        {
            Some("a session-level set_config")
        }
        b'd' if starts_with_ci(rest, b"dblink_connect") => Some("a dblink connection"),
        b'i' if (i == 0 || !is_ident_byte(b[i - 1])) && into_temp(rest) => {
            Some("a temporary table")
        }
        _ => None,
    }
}

fn starts_with_ci(b: &[u8], prefix: &[u8]) -> bool {
    b.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
}

/// Whether `s` starts with the words `INTO [LOCAL | GLOBAL] TEMP[ORARY]`.
fn into_temp(s: &[u8]) -> bool {
    let mut words = Words::new(s);
    if !words
        .next()
        .is_some_and(|w| w.eq_ignore_ascii_case(b"into"))
    {
        return false;
    }
    match words.next() {
        Some(w) if w.eq_ignore_ascii_case(b"local") || w.eq_ignore_ascii_case(b"global") => {
            words.next().is_some_and(is_temp)
        }
        Some(w) => is_temp(w),
        None => false,
    }
}

/// Whether the text after a `set_config` is a call whose last argument is literally true
/// (`is_local`: the setting ends with the transaction) under either reading of backslashes.
/// Anything else, a parameter included, may be session-level.
fn local_set_config(after: &[u8]) -> bool {
    [Quoting::Standard, Quoting::Backslash]
        .into_iter()
        .all(|quoting| last_argument(after, quoting).is_some_and(is_true))
}

/// The last argument of the call whose name `b` follows (white space and a closing quote of
/// the name may come first), trimmed; `None` when `b` does not continue with a whole call.
fn last_argument(b: &[u8], quoting: Quoting) -> Option<&[u8]> {
    let mut i = usize::from(b.first() == Some(&b'"'));
    while b.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    if b.get(i) != Some(&b'(') {
        return None;
    }
    let mut depth = 0usize;
    let mut last = i + 1;
    while i < b.len() {
        match b[i] {
            b'\'' => {
                let escapes = quoting == Quoting::Backslash || is_escape_string(b, i);
                i = skip_quoted(b, i, escapes);
                continue;
            }
            b'"' => {
                i = skip_quoted(b, i, false);
                continue;
            }
            b'$' if !is_ident_byte(b[i - 1]) => {
                i = skip_dollar(b, i);
                continue;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                i = skip_line_comment(b, i);
                continue;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(b, i);
                continue;
            }
            b'(' => depth += 1,
            b')' => {
                depth -= 1;
                if depth == 0 {
                    return Some(b[last..i].trim_ascii());
                }
            }
            b',' if depth == 1 => last = i + 1,
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether an argument is the boolean literal true as written.
fn is_true(arg: &[u8]) -> bool {
    ["true", "'true'", "'t'", "'on'", "'yes'", "'1'"]
        .iter()
        .any(|t| arg.eq_ignore_ascii_case(t.as_bytes()))
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

    fn pins(sql: &str) -> bool {
        effects(sql).any(|(_, e)| matches!(e, Effect::Pin(_)))
    }

    fn sets(sql: &str) -> Vec<String> {
        effects(sql)
            .filter_map(|(_, e)| match e {
                Effect::Set { name } => Some(name),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn session_level_set_config_pins_wherever_it_is() {
        for sql in [
            "SELECT set_config('search_path', 'x', false)",
            "select SET_CONFIG('search_path','x',FALSE)",
            "SELECT pg_catalog.set_config('role', 'r', false)",
            "SELECT \"set_config\" ('search_path', 'x', false)",
            "SELECT length(set_config('a.b', 'x', false))",
            "SELECT 1 FROM t WHERE set_config('a.b', f(1, 2), 1 = 0) IS NOT NULL",
            "SELECT set_config('a.b', 'x', $3)",
            "SELECT set_config('a.b', 'x', true), set_config('c.d', 'y', false)",
            "SELECT set_config('a.b', 'x', 'true')::text || set_config('a', 'b' /* c */, off)",
            "WITH s AS (SELECT set_config('a.b', 'x', false)) SELECT * FROM s",
            "SELECT set_config",
        ] {
            assert!(matches!(classify(sql), Effect::Pin(_)), "{sql}");
        }
        for sql in [
            "SELECT set_config('search_path', 'x', true)",
            "SELECT set_config('request.jwt', $1, TRUE), set_config('role', $2, true)",
            "SELECT set_config('a.b', f(',', ')'), true)",
            "SELECT set_config('a.b', 'x', 't')",
            "SELECT current_setting('search_path')",
        ] {
            assert_eq!(classify(sql), Effect::Other, "{sql}");
        }
        // Local only if it is local under both readings of backslashes.
        assert!(matches!(
            classify(r"SELECT set_config('a', '\', true), set_config('b', 'c', false) --')"),
            Effect::Pin(_)
        ));
    }

    #[test]
    fn a_backslash_cannot_hide_a_statement() {
        // standard_conforming_strings on (the default): '\' is a whole string, the SET is
        // real; off: it is all one string. Either way the query pins.
        let hidden = r"SELECT '\'; SET search_path = x; --'";
        assert_eq!(statements(hidden).count(), 2);
        assert!(pins(hidden));
        assert!(pins(r"SELECT '\''; SET search_path = x; --'"));
        assert!(pins(r"SELECT 'a\'; LISTEN x; SELECT '"));
        // E'' strings escape with backslashes whatever the setting: no ambiguity.
        let escaped = r"SELECT E'\';SET search_path=x;--'";
        assert_eq!(statements(escaped).count(), 1);
        assert!(!pins(escaped));
        assert_eq!(sets(escaped), Vec::<String>::new());
        let real = r"SELECT e'\\'; SET search_path = x";
        assert_eq!(sets(real), vec!["search_path".to_owned()]);
        // A word ending in e is no E prefix.
        assert_eq!(statements(r"SELECT some'\'; SET a = b").count(), 2);
        // Backslashes that do not move a string's end change nothing.
        assert!(!pins(r"SELECT 'C:\path', '\\'; SET work_mem = '1MB'"));
        assert_eq!(
            sets(r"SELECT 'C:\path'; SET work_mem = '1MB'"),
            vec!["work_mem".to_owned()]
        );
        // Ambiguous but harmless either way: nothing to track, nothing pins.
        assert!(!pins(r"SELECT 'a\'; SELECT 'b'"));
        assert!(!pins(r"SELECT '\'"));
    }

    #[test]
    fn dollars_inside_names_open_no_quote() {
        let sql = "SELECT 1 AS x$a$; SET search_path = x; SELECT 1 AS y$a$";
        assert_eq!(statements(sql).count(), 3);
        assert_eq!(sets(sql), vec!["search_path".to_owned()]);
        // Tags may hold any letter, non-ASCII ones included.
        let quoted = "SELECT $é$ ; SET search_path = x; $é$";
        assert_eq!(statements(quoted).count(), 1);
        assert!(sets(quoted).is_empty());
        assert_eq!(statements("SELECT $1; SET a = b").count(), 2);
    }

    #[test]
    fn comments_and_quotes_between_words_do_not_hide_a_set() {
        for sql in [
            "SET/**/search_path = x",
            "SET /* a /* nested */ comment */ search_path TO x",
            "SET -- c\nsearch_path TO x",
            "SET\"search_path\"=x",
            "/* c */ set search_path=x",
        ] {
            assert_eq!(
                classify(sql),
                Effect::Set {
                    name: "search_path".into()
                },
                "{sql}"
            );
        }
        assert_eq!(
            classify("SET my.setting = 1"),
            Effect::Set {
                name: "my.setting".into()
            }
        );
        assert!(matches!(classify("LISTEN/**/x"), Effect::Pin(_)));
        assert!(matches!(
            classify("DECLARE c CURSOR WITH/* */HOLD FOR SELECT 1"),
            Effect::Pin(_)
        ));
    }

    #[test]
    fn state_that_cannot_move_pins_however_it_is_made() {
        for sql in [
            "CREATE OR REPLACE TEMP VIEW v AS SELECT 1",
            "CREATE GLOBAL TEMPORARY TABLE t (a int)",
            "CREATE TABLE pg_temp.t (a int)",
            "CREATE TABLE PG_TEMP.t AS SELECT 1",
            "SELECT 1 INTO LOCAL TEMP t",
            "SELECT 1 INTO/**/TEMP t",
            "EXPLAIN ANALYZE CREATE TEMP TABLE t AS SELECT 1",
            "SELECT dblink_connect('c', 'dbname=x')",
            "SELECT pg_advisory_lock_shared(1)",
            "LOAD 'auto_explain'",
        ] {
            assert!(matches!(classify(sql), Effect::Pin(_)), "{sql}");
        }
    }

    #[test]
    fn do_blocks_that_may_change_state_pin() {
        for sql in [
            "DO $$ BEGIN EXECUTE 'SET search_path = x'; END $$",
            "do $x$ begin SET search_path = x; end $x$",
            "DO LANGUAGE plpgsql $$ BEGIN PERFORM set_config('a.b', 'c', false); END $$",
            "DO 'BEGIN EXECUTE ''LISTEN x''; END'",
        ] {
            assert!(matches!(classify(sql), Effect::Pin(_)), "{sql}");
        }
        assert_eq!(
            classify("DO $$ BEGIN PERFORM pg_sleep(0); END $$"),
            Effect::Other
        );
    }

    #[test]
    fn the_pooler_statement_names_are_refused() {
        for sql in [
            "DEALLOCATE weir_3",
            "deallocate prepare WEIR_3",
            "DEALLOCATE \"weir_3\"",
            "DEALLOCATE/**/weir_3",
            "PREPARE weir_3 AS SELECT 1",
            "PREPARE weir_3(int) AS SELECT $1",
        ] {
            assert_eq!(classify(sql), Effect::Refuse(RESERVED_NAME), "{sql}");
        }
        assert_eq!(classify("DEALLOCATE mine"), Effect::Other);
        assert_eq!(classify("DEALLOCATE PREPARE mine"), Effect::Other);
        assert!(matches!(
            classify("PREPARE mine AS SELECT 1"),
            Effect::Pin(_)
        ));
        assert_eq!(classify("PREPARE TRANSACTION 'weir_1'"), Effect::Other);
    }

    #[test]
    fn plain_queries_are_told_apart_from_the_bytes_alone() {
        for sql in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = 82713;",
            "select 1",
            "  INSERT INTO t (a, b) VALUES (1, 'x') ;\n",
            "UPDATE t SET a = 'it''s' WHERE b = $$ dollar $$",
            "WITH x AS (SELECT 1) SELECT * FROM x",
            "/* note */ DELETE FROM t -- gone\n",
            "SET LOCAL work_mem = '1MB';",
            "SELECT set_config('a.b', 'x', true)",
            "SELECT 'caf\u{e9}'",
            "BEGIN;",
        ] {
            assert!(plain_query(sql.as_bytes()), "{sql}");
        }
        for sql in [
            "SET search_path = x",
            "set work_mem = 1;",
            "SELECT 1; SET search_path = x",
            "SELECT 1; SELECT 2",
            "SELECT 1;;",
            "SELECT pg_advisory_lock(1);",
            "LISTEN x",
            "DEALLOCATE weir_1",
            "DISCARD ALL",
            "RESET ALL",
            "SELECT 1 INTO TEMP t",
            "PREPARE q AS SELECT 1",
        ] {
            assert!(!plain_query(sql.as_bytes()), "{sql}");
        }
        // A `;` before the end, even quoted, leaves it to the full scan.
        assert!(!plain_query(b"SELECT 'x;y'"));
        // Bytes that are not UTF-8 are judged as their replacement characters would be.
        assert!(plain_query(b"SELECT '\xff\xfe'"));
        assert!(!plain_query(b"SET \xff = 1"));
    }

    mod shortcuts_agree_with_the_full_scan {
        use super::super::*;
        use proptest::prelude::*;

        /// Pieces of SQL that move statement boundaries, hide text or change state.
        const PIECES: &[&str] = &[
            "SELECT",
            "select",
            "INSERT INTO t VALUES",
            "with",
            "SET",
            "set",
            "RESET",
            "LOCAL",
            "session",
            "time zone",
            "all",
            "DISCARD",
            "DEALLOCATE",
            "prepare",
            "transaction",
            "LISTEN",
            "load",
            "DECLARE c CURSOR",
            "WITH HOLD",
            "hold",
            "CREATE",
            "explain",
            "DO",
            "temp",
            "Temporary",
            "into",
            "pg_temp.",
            "pg_advisory_lock(1)",
            "pg_try_advisory_lock",
            "set_config(",
            "set_config('a', 'b', true)",
            "true",
            "false",
            "dblink_connect",
            "weir_1",
            "\"weir_2\"",
            "search_path",
            "x",
            "1",
            ";",
            ";",
            "'",
            "''",
            "'a;b'",
            "E'",
            "e'\\'",
            "\\",
            "\"",
            "$$",
            "$a$",
            "$1",
            "x$a$",
            "--",
            "\n",
            "/*",
            "*/",
            "(",
            ")",
            ",",
            "=",
            ".",
            "\u{e9}",
            "\u{a0}",
            " ",
            "\t",
        ];

        fn query() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                8 => proptest::sample::select(PIECES).prop_map(|p| p.as_bytes().to_vec()),
                1 => any::<u8>().prop_map(|b| vec![b]),
            ];
            let sep = proptest::sample::select(&[" ", " ", "", "\n"][..]);
            proptest::collection::vec((piece, sep), 0..12).prop_map(|parts| {
                parts
                    .into_iter()
                    .flat_map(|(p, s)| p.into_iter().chain(s.bytes()))
                    .collect()
            })
        }

        /// [`classify_bytes`] without its shortcuts: every first word goes to `by_keywords`
        /// and every byte to `pin_at`.
        fn classify_slowly(stmt: &[u8]) -> Effect {
            let first = Words::new(stmt).next().unwrap_or_default();
            by_keywords(Lower::new(first).as_str(), stmt).unwrap_or_else(|| {
                (0..stmt.len())
                    .find_map(|i| pin_at(stmt, i))
                    .map_or(Effect::Other, Effect::Pin)
            })
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4000))]

            #[test]
            fn the_shortcuts_change_no_classification(sql in query()) {
                prop_assert_eq!(classify_bytes(&sql), classify_slowly(&sql));
            }

            #[test]
            fn the_first_word_is_the_one_words_finds(sql in query()) {
                let slowly = Words::new(&sql).next().unwrap_or_default();
                prop_assert_eq!(first_word(&sql), slowly);
            }

            #[test]
            fn every_underscore_and_i_is_found(sql in proptest::collection::vec(any::<u8>(), 0..40)) {
                let slowly: Vec<usize> = (0..sql.len())
                    .filter(|&i| matches!(sql[i], b'_' | b'i' | b'I'))
                    .collect();
                let mut found = Vec::new();
                underscores_and_is(&sql, |at| found.push(at));
                prop_assert_eq!(found, slowly);
            }

            #[test]
            fn plain_means_every_effect_is_other(sql in query()) {
                let text = String::from_utf8_lossy(&sql);
                if plain_query(&sql) {
                    let found: Vec<_> = effects(&text).collect();
                    prop_assert!(found.iter().all(|(_, e)| *e == Effect::Other), "{found:?}");
                }
            }

            #[test]
            fn one_statement_with_nothing_to_track_is_plain(sql in query()) {
                let text = String::from_utf8_lossy(&sql);
                let semicolons = sql.iter().filter(|&&c| c == b';').count();
                let last = sql.iter().rposition(|c| !c.is_ascii_whitespace());
                let ends_with_only_semicolon = semicolons == 0
                    || (semicolons == 1 && last.is_some_and(|p| sql[p] == b';'));
                let found: Vec<_> = effects(&text).collect();
                if ends_with_only_semicolon && found.len() == 1 && found[0].1 == Effect::Other {
                    prop_assert!(plain_query(&sql));
                }
            }
        }
    }

    #[test]
    fn never_panics_on_odd_text() {
        for s in [
            "",
            ";",
            "$",
            "$$",
            "$a",
            "'",
            "\"",
            "/*",
            "--",
            "E'\\",
            "$1$",
            "set",
            "reset",
            "set_config(",
            "set_config('a', (",
            "SET \"",
            "do $",
            "x$",
            "into",
            "\\'",
            "é'\\",
        ] {
            let _ = effects(s).count();
            let _ = statements(s).count();
            let _ = classify(s);
            let _ = plain_query(s.as_bytes());
        }
    }
}
