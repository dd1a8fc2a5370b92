//! The `auth_file` (userlist.txt): user names and their passwords or secrets.
//!
//! Each entry is two double-quoted fields, `"user" "secret"`, with `""` standing for one
//! quote inside a field; anything after the second field on that line is ignored, as in
//! PgBouncer. Lines starting with `;` (or `#`) are comments. A secret is a plain-text
//! password, an MD5 hash (`md5` + 32 hex digits) or a SCRAM-SHA-256 secret
//! (`SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>`).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::ConfigError;

/// What kind of credential an auth-file secret is, which decides the authentication
/// exchanges it can serve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SecretKind {
    /// A clear-text password: usable for every method.
    Plain,
    /// `md5` followed by 32 lower-case hex digits, as PostgreSQL stores it.
    Md5,
    /// A SCRAM-SHA-256 secret in PostgreSQL's format.
    ScramSha256,
}

/// Classifies a secret the way PostgreSQL does: anything that is neither a well-formed
/// MD5 hash nor a well-formed SCRAM secret is a plain password.
pub fn secret_kind(secret: &str) -> SecretKind {
    if is_md5_hash(secret) {
        SecretKind::Md5
    } else if is_scram_secret(secret) {
        SecretKind::ScramSha256
    } else {
        SecretKind::Plain
    }
}

fn is_md5_hash(secret: &str) -> bool {
    secret.len() == 35
        && secret.starts_with("md5")
        && secret[3..]
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

const SCRAM_PREFIX: &str = "SCRAM-SHA-256$";

fn is_scram_secret(secret: &str) -> bool {
    let Some(rest) = secret.strip_prefix(SCRAM_PREFIX) else {
        return false;
    };
    let Some((iterations_salt, keys)) = rest.split_once('$') else {
        return false;
    };
    let (Some((iterations, salt)), Some((stored_key, server_key))) =
        (iterations_salt.split_once(':'), keys.split_once(':'))
    else {
        return false;
    };
    let is_base64 = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/' || b == b'=')
    };
    iterations.parse::<u32>().is_ok_and(|n| n > 0)
        && is_base64(salt)
        && is_base64(stored_key)
        && is_base64(server_key)
}

/// Parses userlist.txt text. Errors name `path` and the line. A user listed twice keeps
/// the later secret, as in PgBouncer. A secret that starts like a SCRAM secret but is
/// malformed is an error rather than a plain password, because that is always a mistake.
pub fn parse_userlist(text: &str, path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let mut users = BTreeMap::new();
    let mut cursor = Cursor {
        rest: text,
        line: 1,
    };
    loop {
        cursor.skip_whitespace();
        let Some(first) = cursor.rest.chars().next() else {
            return Ok(users);
        };
        if first == ';' || first == '#' {
            cursor.skip_line();
            continue;
        }
        let line = cursor.line;
        let error = |message: &str| ConfigError::at(path, line, None, message);
        if first != '"' {
            return Err(error("expected a double-quoted user name"));
        }
        let user = cursor
            .quoted()
            .ok_or_else(|| error("user name is missing its closing '\"'"))?;
        cursor.skip_blanks();
        if !cursor.rest.starts_with('"') {
            return Err(ConfigError::at(
                path,
                cursor.line,
                Some(&user),
                "expected a double-quoted password or secret after the user name",
            ));
        }
        let secret = cursor.quoted().ok_or_else(|| {
            ConfigError::at(
                path,
                line,
                Some(&user),
                "password is missing its closing '\"'",
            )
        })?;
        if secret.starts_with(SCRAM_PREFIX) && !is_scram_secret(&secret) {
            return Err(ConfigError::at(
                path,
                line,
                Some(&user),
                "malformed SCRAM secret; expected \
                 SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>",
            ));
        }
        cursor.skip_line();
        users.insert(user, secret);
    }
}

/// Reads and parses the userlist.txt at `path`.
pub fn load_userlist(path: &Path) -> Result<BTreeMap<String, String>, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::in_file(path, format!("cannot read auth file: {e}")))?;
    parse_userlist(&text, path)
}

/// Writes users and secrets in userlist.txt form, one `"user" "secret"` line each, which
/// [`parse_userlist`] reads back to the same map.
pub fn render_userlist(users: &BTreeMap<String, String>) -> String {
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    users
        .iter()
        .map(|(user, secret)| format!("{} {}\n", quote(user), quote(secret)))
        .collect()
}

/// Position in the text being parsed, with the current line number.
struct Cursor<'a> {
    rest: &'a str,
    line: usize,
}

impl Cursor<'_> {
    fn advance(&mut self, bytes: usize) {
        self.line += self.rest[..bytes].matches('\n').count();
        self.rest = &self.rest[bytes..];
    }

    fn skip_whitespace(&mut self) {
        let end = self
            .rest
            .find(|c: char| !c.is_whitespace())
            .unwrap_or(self.rest.len());
        self.advance(end);
    }

    fn skip_blanks(&mut self) {
        let end = self
            .rest
            .find(|c: char| c != ' ' && c != '\t')
            .unwrap_or(self.rest.len());
        self.advance(end);
    }

    fn skip_line(&mut self) {
        let end = self.rest.find('\n').unwrap_or(self.rest.len());
        self.advance(end);
    }

    /// Reads a double-quoted field starting at the cursor; `None` if it never closes.
    fn quoted(&mut self) -> Option<String> {
        let body = self.rest.strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = body.char_indices();
        while let Some((i, c)) = chars.next() {
            if c != '"' {
                value.push(c);
            } else if body[i + 1..].starts_with('"') {
                value.push('"');
                chars.next();
            } else {
                self.advance(1 + i + 1);
                return Some(value);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    const SCRAM: &str = "SCRAM-SHA-256$4096:c2FsdHNhbHQ=$c3RvcmVka2V5c3RvcmVka2V5c3RvcmVka2V5c3RvcmU=:c2VydmVya2V5c2VydmVya2V5c2VydmVya2V5c2Vydg==";

    fn parse(text: &str) -> BTreeMap<String, String> {
        parse_userlist(text, Path::new("userlist.txt")).expect("valid userlist")
    }

    fn parse_err(text: &str) -> ConfigError {
        parse_userlist(text, Path::new("userlist.txt")).expect_err("must fail")
    }

    #[test]
    fn plain_md5_and_scram_secrets() {
        let text = format!(
            "; comment\n\"alice\" \"s3cret\"\n\n  \"admin\" \"md545f2603610af569b6155c45067268c6b\"\n\
             \"app\"\t\"{SCRAM}\" extra fields are ignored\n"
        );
        let users = parse(&text);
        assert_eq!(users.len(), 3);
        assert_eq!(users["alice"], "s3cret");
        assert_eq!(secret_kind(&users["alice"]), SecretKind::Plain);
        assert_eq!(secret_kind(&users["admin"]), SecretKind::Md5);
        assert_eq!(users["app"], SCRAM);
        assert_eq!(secret_kind(&users["app"]), SecretKind::ScramSha256);
    }

    #[test]
    fn secret_classification_edges() {
        assert_eq!(secret_kind(""), SecretKind::Plain);
        // Upper-case hex or a wrong length is a plain password, as PostgreSQL sees it.
        assert_eq!(
            secret_kind("md545F2603610AF569B6155C45067268C6B"),
            SecretKind::Plain
        );
        assert_eq!(secret_kind("md5abc"), SecretKind::Plain);
        assert_eq!(secret_kind("SCRAM-SHA-256$0:a$b:c"), SecretKind::Plain);
        assert_eq!(
            secret_kind("SCRAM-SHA-256$10:a$b:c"),
            SecretKind::ScramSha256
        );
    }

    #[test]
    fn doubled_quotes_escape_and_empty_fields_are_allowed() {
        let users = parse("\"say \"\"hi\"\"\" \"pa\"\"ss\"\n\"nopass\" \"\"\n");
        assert_eq!(users["say \"hi\""], "pa\"ss");
        assert_eq!(users["nopass"], "");
    }

    #[test]
    fn later_entries_win_and_hash_comments_work() {
        let users = parse("# hash comment\n\"u\" \"one\"\n\"u\" \"two\"\n");
        assert_eq!(users.len(), 1);
        assert_eq!(users["u"], "two");
    }

    #[test]
    fn errors_name_file_and_line() {
        let e = parse_err("\"ok\" \"x\"\nbob \"x\"\n");
        assert_eq!(e.file, PathBuf::from("userlist.txt"));
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("double-quoted user name"), "{e}");

        let e = parse_err("\n\n\"bob\"\n\"x\"\n");
        assert_eq!(e.line, Some(3));
        assert_eq!(e.key.as_deref(), Some("bob"));
        assert!(e.message.contains("password or secret"), "{e}");

        let e = parse_err("\"bob\" \"unterminated\n");
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("closing"), "{e}");

        let e = parse_err("\"bob");
        assert!(e.message.contains("user name is missing"), "{e}");

        let e = parse_err("\"bob\" \"SCRAM-SHA-256$4096:salt\"\n");
        assert_eq!(e.key.as_deref(), Some("bob"));
        assert!(e.message.contains("malformed SCRAM secret"), "{e}");
        assert_eq!(
            e.to_string(),
            "userlist.txt:1: bob: malformed SCRAM secret; expected \
             SCRAM-SHA-256$<iterations>:<salt>$<storedkey>:<serverkey>"
        );
    }

    #[test]
    fn render_round_trips() {
        let mut users = BTreeMap::new();
        users.insert("alice".to_owned(), "s3cret".to_owned());
        users.insert("we\"ird name".to_owned(), "p\"w ; # x".to_owned());
        users.insert(
            "md5user".to_owned(),
            "md545f2603610af569b6155c45067268c6b".to_owned(),
        );
        users.insert("scram".to_owned(), SCRAM.to_owned());
        users.insert("empty".to_owned(), String::new());
        users.insert("multi\nline".to_owned(), "a\nb".to_owned());
        let text = render_userlist(&users);
        assert!(text.contains("\"alice\" \"s3cret\"\n"));
        assert_eq!(parse(&text), users);
        assert_eq!(render_userlist(&BTreeMap::new()), "");
    }

    #[test]
    fn load_reads_the_file_and_reports_missing_ones() {
        let dir = std::env::temp_dir().join(format!("weir-userlist-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("userlist.txt");
        std::fs::write(&path, "\"u\" \"p\"\n").expect("write");
        assert_eq!(load_userlist(&path).expect("loads")["u"], "p");
        let missing = dir.join("missing.txt");
        let e = load_userlist(&missing).expect_err("missing");
        assert_eq!(e.file, missing);
        assert!(e.message.contains("cannot read auth file"), "{e}");
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }
}
