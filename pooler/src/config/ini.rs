//! Line-level lexer for PgBouncer's ini dialect, and `%include` expansion.
//!
//! The dialect is small: `[section]` headers, `key = value` lines and `%include path`
//! directives. `;` and `#` start a comment only at the beginning of a line; later in a line
//! they are ordinary characters (so `server_reset_query = DISCARD ALL; ` keeps its `;`).
//! Keys may be quoted (`"my db" = ...`, with `""` for a literal quote) so that database and
//! user names can hold any character. Values are taken verbatim, minus surrounding blanks;
//! the meaning of a value belongs to the section that reads it.

use std::io;
use std::path::{Path, PathBuf};

use super::error::ConfigError;

/// How deep `%include` may nest; deeper nesting is almost surely an include cycle.
pub(crate) const MAX_INCLUDE_DEPTH: usize = 10;

/// One meaningful line of an ini file, with where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IniLine {
    /// The file the line was read from (an included file for included lines).
    pub file: PathBuf,
    /// 1-based line number within `file`.
    pub line: usize,
    /// What the line says.
    pub kind: LineKind,
}

/// The three kinds of meaningful line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LineKind {
    /// `[name]`: the name as written, surrounding blanks removed.
    Section(String),
    /// `key = value`: the key unquoted, the value with surrounding blanks removed.
    Entry { key: String, value: String },
    /// `%include path`: the path as written.
    Include(String),
}

/// Splits `text` into meaningful lines, without following `%include`.
pub(crate) fn lex(text: &str, file: &Path) -> Result<Vec<IniLine>, ConfigError> {
    let mut out = Vec::new();
    // Editors on some systems start UTF-8 files with a byte-order mark.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (index, raw) in text.split('\n').enumerate() {
        let line = index + 1;
        let error = |message: &str| ConfigError::at(file, line, None, message);
        let content = raw.trim();
        if content.is_empty() || content.starts_with(';') || content.starts_with('#') {
            continue;
        }
        let kind = if let Some(rest) = content.strip_prefix("%include") {
            if !rest.is_empty() && !rest.starts_with(char::is_whitespace) {
                return Err(error("expected \"%include <file>\""));
            }
            LineKind::Include(rest.trim().to_owned())
        } else if content.starts_with('%') {
            return Err(error("unknown directive; the only one is %include"));
        } else if let Some(rest) = content.strip_prefix('[') {
            let (name, after) = rest
                .split_once(']')
                .ok_or_else(|| error("section header is missing its closing ']'"))?;
            let after = after.trim_start();
            if !(after.is_empty() || after.starts_with(';') || after.starts_with('#')) {
                return Err(error("unexpected text after section header"));
            }
            LineKind::Section(name.trim().to_owned())
        } else {
            let (key, rest) = split_key(content).map_err(|m| error(&m))?;
            let value = rest
                .trim_start()
                .strip_prefix('=')
                .ok_or_else(|| error("expected \"key = value\""))?;
            LineKind::Entry {
                key,
                value: value.trim().to_owned(),
            }
        };
        out.push(IniLine {
            file: file.to_path_buf(),
            line,
            kind,
        });
    }
    Ok(out)
}

/// Splits off the key at the start of `content`, unquoting it; returns it and the rest.
fn split_key(content: &str) -> Result<(String, &str), String> {
    let Some(quote) = content.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        let end = content
            .find(|c: char| c.is_whitespace() || c == '=')
            .unwrap_or(content.len());
        if end == 0 {
            return Err("expected a name before '='".to_owned());
        }
        return Ok((content[..end].to_owned(), &content[end..]));
    };
    let mut key = String::new();
    let mut chars = content[1..].char_indices();
    while let Some((i, c)) = chars.next() {
        if c != quote {
            key.push(c);
            continue;
        }
        // A doubled quote stands for one literal quote character.
        if content[1 + i + 1..].starts_with(quote) {
            key.push(quote);
            chars.next();
            continue;
        }
        if key.is_empty() {
            return Err("empty quoted name".to_owned());
        }
        return Ok((key, &content[1 + i + 1..]));
    }
    Err(format!("quoted name is missing its closing {quote}"))
}

/// Lexes `text` and replaces every `%include` line by the lines of the file it names, read
/// through `read`. Relative include paths are taken relative to the directory of the file
/// that contains the directive.
pub(crate) fn lex_with_includes(
    text: &str,
    file: &Path,
    read: &mut dyn FnMut(&Path) -> io::Result<String>,
) -> Result<Vec<IniLine>, ConfigError> {
    let mut out = Vec::new();
    expand(text, file, read, 0, &mut out)?;
    Ok(out)
}

fn expand(
    text: &str,
    file: &Path,
    read: &mut dyn FnMut(&Path) -> io::Result<String>,
    depth: usize,
    out: &mut Vec<IniLine>,
) -> Result<(), ConfigError> {
    for line in lex(text, file)? {
        let LineKind::Include(target) = &line.kind else {
            out.push(line);
            continue;
        };
        if target.is_empty() {
            return Err(ConfigError::at(
                file,
                line.line,
                None,
                "%include needs a file name",
            ));
        }
        if depth >= MAX_INCLUDE_DEPTH {
            return Err(ConfigError::at(
                file,
                line.line,
                None,
                format!("%include nested more than {MAX_INCLUDE_DEPTH} deep (an include cycle?)"),
            ));
        }
        let path = resolve_relative(file, Path::new(target));
        let included = read(&path).map_err(|e| {
            ConfigError::at(
                file,
                line.line,
                None,
                format!("cannot read included file {}: {e}", path.display()),
            )
        })?;
        expand(&included, &path, read, depth + 1, out)?;
    }
    Ok(())
}

/// `target` itself when absolute, otherwise `target` inside the directory holding `base`.
pub(crate) fn resolve_relative(base: &Path, target: &Path) -> PathBuf {
    match base.parent() {
        Some(dir) if target.is_relative() => dir.join(target),
        _ => target.to_path_buf(),
    }
}

/// Whether a database or user name must be quoted to be read back unchanged: anything
/// beyond letters, digits and `_` is quoted, except the fallback name `*` itself.
pub(crate) fn needs_quoting(name: &str) -> bool {
    name != "*" && (name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
}

/// Writes `name` as an ini key, double-quoting it when [`needs_quoting`] says so.
pub(crate) fn render_key(name: &str) -> String {
    if needs_quoting(name) {
        format!("\"{}\"", name.replace('"', "\"\""))
    } else {
        name.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn entry(key: &str, value: &str) -> LineKind {
        LineKind::Entry {
            key: key.into(),
            value: value.into(),
        }
    }

    fn kinds(text: &str) -> Vec<LineKind> {
        lex(text, Path::new("t.ini"))
            .expect("lexes")
            .into_iter()
            .map(|l| l.kind)
            .collect()
    }

    fn lex_error(text: &str) -> ConfigError {
        lex(text, Path::new("t.ini")).expect_err("must fail")
    }

    #[test]
    fn sections_entries_comments_and_blank_lines() {
        let text = "; leading comment\n\n  # another\n[databases]\nfoo = host=a\n\
                    [ pgbouncer ] ; trailing comment\n\tlisten_port=6432\r\n";
        assert_eq!(
            kinds(text),
            vec![
                LineKind::Section("databases".into()),
                entry("foo", "host=a"),
                LineKind::Section("pgbouncer".into()),
                entry("listen_port", "6432"),
            ]
        );
    }

    #[test]
    fn line_numbers_count_every_line() {
        let lines = lex("\n; c\n[a]\n\nk = v\n", Path::new("x.ini")).expect("lexes");
        let numbers: Vec<usize> = lines.iter().map(|l| l.line).collect();
        assert_eq!(numbers, vec![3, 5]);
        assert_eq!(lines[1].file, PathBuf::from("x.ini"));
    }

    #[test]
    fn comment_characters_later_in_a_line_are_kept() {
        assert_eq!(
            kinds("q = DISCARD ALL; # not a comment"),
            vec![entry("q", "DISCARD ALL; # not a comment")]
        );
    }

    #[test]
    fn values_may_be_empty_or_contain_equals_signs() {
        assert_eq!(
            kinds("foodb =\nbar = host=x dbname=y\nx=   "),
            vec![
                entry("foodb", ""),
                entry("bar", "host=x dbname=y"),
                entry("x", ""),
            ]
        );
    }

    #[test]
    fn quoted_keys() {
        assert_eq!(
            kinds("\"my db\" = host=a\n'it''s' = b\n\"say \"\"hi\"\"\"=c\n\"a=b\" = d"),
            vec![
                entry("my db", "host=a"),
                entry("it's", "b"),
                entry("say \"hi\"", "c"),
                entry("a=b", "d"),
            ]
        );
    }

    #[test]
    fn unquoted_keys_may_hold_punctuation() {
        assert_eq!(
            kinds("app@corp.example = pool_size=1\n* = host=x"),
            vec![
                entry("app@corp.example", "pool_size=1"),
                entry("*", "host=x")
            ]
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let e = lex_error("[databases]\nfoo host=a\n");
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("key = value"), "{e}");
        assert!(lex_error("[databases\n").message.contains("']'"));
        assert!(lex_error("[a] b\n")
            .message
            .contains("after section header"));
        assert!(lex_error("= value\n").message.contains("name before"));
        assert!(lex_error("\"open = 1\n").message.contains("closing"));
        assert!(lex_error("\"\" = 1\n")
            .message
            .contains("empty quoted name"));
        assert!(lex_error("%includefoo\n").message.contains("%include"));
        assert!(lex_error("%define x\n")
            .message
            .contains("unknown directive"));
        assert!(lex_error("\"a\" b = 1\n").message.contains("key = value"));
    }

    #[test]
    fn include_lines_are_lexed() {
        assert_eq!(
            kinds("%include  other.ini  \n"),
            vec![LineKind::Include("other.ini".into())]
        );
    }

    fn fake_files(files: &[(&str, &str)]) -> HashMap<PathBuf, String> {
        files
            .iter()
            .map(|(p, t)| (PathBuf::from(p), (*t).to_owned()))
            .collect()
    }

    #[test]
    fn includes_are_expanded_in_place_relative_to_the_including_file() {
        let files = fake_files(&[
            (
                "/etc/weir/dbs.ini",
                "[databases]\na = host=x\n%include more/users.ini\n",
            ),
            ("/etc/weir/more/users.ini", "[users]\nbob = pool_size=1\n"),
            ("/abs/p.ini", "[pgbouncer]\nlisten_port = 1\n"),
        ]);
        let mut read = |p: &Path| {
            files
                .get(p)
                .cloned()
                .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such file"))
        };
        let main = "%include dbs.ini\n%include /abs/p.ini\nlast = 1\n";
        let lines = lex_with_includes(main, Path::new("/etc/weir/pgbouncer.ini"), &mut read)
            .expect("expands");
        let summary: Vec<(String, usize)> = lines
            .iter()
            .map(|l| (l.file.display().to_string(), l.line))
            .collect();
        assert_eq!(
            summary,
            vec![
                ("/etc/weir/dbs.ini".into(), 1),
                ("/etc/weir/dbs.ini".into(), 2),
                ("/etc/weir/more/users.ini".into(), 1),
                ("/etc/weir/more/users.ini".into(), 2),
                ("/abs/p.ini".into(), 1),
                ("/abs/p.ini".into(), 2),
                ("/etc/weir/pgbouncer.ini".into(), 3),
            ]
        );
    }

    #[test]
    fn include_errors_point_at_the_directive() {
        let mut missing = |_: &Path| -> io::Result<String> {
            Err(io::Error::new(io::ErrorKind::NotFound, "gone"))
        };
        let e = lex_with_includes(
            "\n%include nope.ini\n",
            Path::new("/d/main.ini"),
            &mut missing,
        )
        .expect_err("must fail");
        assert_eq!(e.file, PathBuf::from("/d/main.ini"));
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("/d/nope.ini"), "{e}");
        assert!(e.message.contains("gone"), "{e}");

        let mut cycle = |_: &Path| Ok("%include self.ini\n".to_owned());
        let e = lex_with_includes("%include self.ini", Path::new("/d/self.ini"), &mut cycle)
            .expect_err("cycle");
        assert!(e.message.contains("nested more than"), "{e}");

        let mut never = |_: &Path| -> io::Result<String> { Ok(String::new()) };
        let e =
            lex_with_includes("%include \n", Path::new("m.ini"), &mut never).expect_err("no name");
        assert!(e.message.contains("file name"), "{e}");
    }

    #[test]
    fn errors_inside_included_files_name_that_file() {
        let mut read = |_: &Path| Ok("[a]\nbroken line\n".to_owned());
        let e = lex_with_includes("%include inc.ini", Path::new("/d/m.ini"), &mut read)
            .expect_err("must fail");
        assert_eq!(e.file, PathBuf::from("/d/inc.ini"));
        assert_eq!(e.line, Some(2));
    }

    #[test]
    fn key_quoting_round_trips() {
        for name in [
            "plain_1", "*", "my db", "a\"b", "it's", "x=y", "app@corp", "é",
        ] {
            let text = format!("{} = v", render_key(name));
            assert_eq!(kinds(&text), vec![entry(name, "v")], "{text}");
        }
        assert!(!needs_quoting("Plain_9"));
        assert!(needs_quoting("a.b"));
    }
}
