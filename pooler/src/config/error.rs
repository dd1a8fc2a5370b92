//! Errors and warnings produced while reading configuration.
//!
//! Both carry the same location (file, line, key) so an operator can jump straight to the
//! offending line; they render as `file:line: key: message`, leaving out unknown parts.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A configuration that cannot be used: a syntax error, a bad value, a failed cross-field
/// check or an unreadable file. Loading stops at the first one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{}", location_prefixed(file, *line, key.as_deref(), message))]
pub struct ConfigError {
    /// The file the problem is in; empty when the check ran on an in-memory [`Config`]
    /// (see [`Config::validate`]).
    ///
    /// [`Config`]: crate::config::Config
    /// [`Config::validate`]: crate::config::Config::validate
    pub file: PathBuf,
    /// 1-based line number, when the problem belongs to one line.
    pub line: Option<usize>,
    /// The setting, database or user name the problem is about.
    pub key: Option<String>,
    /// What is wrong, and what was expected.
    pub message: String,
}

/// Something in the configuration that weir ignores or works around but that the operator
/// should know about, such as an unknown setting, a PgBouncer feature weir does not
/// implement, or a minimum pool size above a limit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigWarning {
    /// The file the line is in.
    pub file: PathBuf,
    /// 1-based line number, when the warning belongs to one line.
    pub line: Option<usize>,
    /// The setting, database or user name the warning is about.
    pub key: Option<String>,
    /// What was ignored, and why.
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&location_prefixed(
            &self.file,
            self.line,
            self.key.as_deref(),
            &self.message,
        ))
    }
}

impl ConfigError {
    /// An error located at `file:line`, about `key`.
    pub(crate) fn at(
        file: &Path,
        line: usize,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: Some(line),
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }

    /// An error about a whole file (it cannot be read, or lacks a section).
    pub(crate) fn in_file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            line: None,
            key: None,
            message: message.into(),
        }
    }
}

impl ConfigWarning {
    /// A warning located at `file:line`, about `key`.
    pub(crate) fn at(
        file: &Path,
        line: usize,
        key: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        ConfigWarning {
            file: file.to_path_buf(),
            line: Some(line),
            key: key.map(str::to_owned),
            message: message.into(),
        }
    }
}

/// A value that does not parse as its setting's type. It carries only the explanation;
/// the caller adds file, line and key when turning it into a [`ConfigError`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{0}")]
pub struct ValueError(pub String);

impl ValueError {
    /// The usual "expected X, got \"Y\"" explanation.
    pub(crate) fn expected(what: &str, got: &str) -> Self {
        ValueError(format!("expected {what}, got {got:?}"))
    }
}

/// Renders `file:line: key: message`, leaving out the parts that are unknown.
fn location_prefixed(file: &Path, line: Option<usize>, key: Option<&str>, message: &str) -> String {
    let mut out = String::new();
    if !file.as_os_str().is_empty() {
        out.push_str(&file.display().to_string());
        if let Some(line) = line {
            out.push_str(&format!(":{line}"));
        }
        out.push_str(": ");
    } else if let Some(line) = line {
        out.push_str(&format!("line {line}: "));
    }
    if let Some(key) = key {
        out.push_str(key);
        out.push_str(": ");
    }
    out.push_str(message);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_includes_every_known_part() {
        let e = ConfigError::at(
            Path::new("pgbouncer.ini"),
            12,
            Some("max_client_conn"),
            "expected a whole number, got \"lots\"",
        );
        assert_eq!(
            e.to_string(),
            "pgbouncer.ini:12: max_client_conn: expected a whole number, got \"lots\""
        );
    }

    #[test]
    fn display_omits_missing_parts() {
        let e = ConfigError::in_file(Path::new("/etc/weir/pgbouncer.ini"), "cannot read");
        assert_eq!(e.to_string(), "/etc/weir/pgbouncer.ini: cannot read");

        let e = ConfigError {
            file: PathBuf::new(),
            line: None,
            key: Some("listen_port".into()),
            message: "must not be 0".into(),
        };
        assert_eq!(e.to_string(), "listen_port: must not be 0");

        let w = ConfigWarning::at(Path::new("a.ini"), 3, None, "section ignored");
        assert_eq!(w.to_string(), "a.ini:3: section ignored");
    }

    #[test]
    fn value_error_quotes_what_it_got() {
        let e = ValueError::expected("a whole number", "lots");
        assert_eq!(e.to_string(), "expected a whole number, got \"lots\"");
    }
}
