//! The fields of ErrorResponse and NoticeResponse: a list of `(type byte, string)` pairs ended
//! by a zero byte.

use std::fmt;

use bytes::{BufMut, BytesMut};

use super::frame::put_cstr;
use super::reader::Reader;
use super::ProtocolError;

/// Field type bytes, as defined by the protocol's "Error and Notice Message Fields".
const FIELD_SEVERITY_LOCALIZED: u8 = b'S';
const FIELD_SEVERITY: u8 = b'V';
const FIELD_CODE: u8 = b'C';
const FIELD_MESSAGE: u8 = b'M';
const FIELD_DETAIL: u8 = b'D';
const FIELD_HINT: u8 = b'H';

/// How serious a reported condition is, in PostgreSQL's vocabulary.
///
/// `Error`, `Fatal` and `Panic` appear in ErrorResponse; the rest in NoticeResponse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Severity {
    /// The current command failed; the session continues.
    Error,
    /// The session is being terminated.
    Fatal,
    /// The whole server is going down.
    Panic,
    /// A warning notice.
    Warning,
    /// An informational notice.
    Notice,
    /// Debugging output (DEBUG1 to DEBUG5 are all sent as `DEBUG`).
    Debug,
    /// Information the user asked for (e.g. VACUUM VERBOSE).
    Info,
    /// Server log output echoed to the client.
    Log,
}

impl Severity {
    /// The non-localized name sent on the wire, e.g. `"ERROR"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
            Severity::Panic => "PANIC",
            Severity::Warning => "WARNING",
            Severity::Notice => "NOTICE",
            Severity::Debug => "DEBUG",
            Severity::Info => "INFO",
            Severity::Log => "LOG",
        }
    }

    /// Parses a non-localized severity name; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Severity> {
        Some(match name {
            "ERROR" => Severity::Error,
            "FATAL" => Severity::Fatal,
            "PANIC" => Severity::Panic,
            "WARNING" => Severity::Warning,
            "NOTICE" => Severity::Notice,
            "DEBUG" => Severity::Debug,
            "INFO" => Severity::Info,
            "LOG" => Severity::Log,
            _ => return None,
        })
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error or notice as PostgreSQL reports it: severity, SQLSTATE, message and optional
/// detail, hint and further fields.
///
/// The pooler builds these to report its own failures to clients (so drivers see the same
/// shape as from a server) and parses them from servers, e.g. to log why a login failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgError {
    /// How serious the condition is.
    pub severity: Severity,
    /// Translated severity text (field `S`) when the server sent one that differs from
    /// [`Severity::as_str`]; `None` means the English name.
    pub localized_severity: Option<String>,
    /// Five-character SQLSTATE, e.g. `"53300"`.
    pub code: String,
    /// Primary human-readable message.
    pub message: String,
    /// Optional secondary message with more detail.
    pub detail: Option<String>,
    /// Optional suggestion of what to do about it.
    pub hint: Option<String>,
    /// Every other field (position, where, schema, routine...) as `(type byte, value)`, in
    /// arrival order, so that nothing a server said is lost when the error is passed on.
    pub other: Vec<(u8, String)>,
}

impl PgError {
    /// A report with the given severity, SQLSTATE and message, and no other fields.
    pub fn new(severity: Severity, code: impl Into<String>, message: impl Into<String>) -> Self {
        PgError {
            severity,
            localized_severity: None,
            code: code.into(),
            message: message.into(),
            detail: None,
            hint: None,
            other: Vec::new(),
        }
    }

    /// An `ERROR`: the command failed, the session goes on.
    pub fn error(code: impl Into<String>, message: impl Into<String>) -> Self {
        PgError::new(Severity::Error, code, message)
    }

    /// A `FATAL` error: the connection is closed after sending it.
    pub fn fatal(code: impl Into<String>, message: impl Into<String>) -> Self {
        PgError::new(Severity::Fatal, code, message)
    }

    /// Adds a detail message.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Adds a hint.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// The value of the field with type byte `field_type` (`b'M'` message, `b'P'` position...),
    /// whether it has a dedicated member or sits in [`PgError::other`].
    pub fn field(&self, field_type: u8) -> Option<&str> {
        match field_type {
            FIELD_SEVERITY_LOCALIZED => Some(
                self.localized_severity
                    .as_deref()
                    .unwrap_or(self.severity.as_str()),
            ),
            FIELD_SEVERITY => Some(self.severity.as_str()),
            FIELD_CODE => Some(&self.code),
            FIELD_MESSAGE => Some(&self.message),
            FIELD_DETAIL => self.detail.as_deref(),
            FIELD_HINT => self.hint.as_deref(),
            _ => self
                .other
                .iter()
                .find(|(t, _)| *t == field_type)
                .map(|(_, v)| v.as_str()),
        }
    }

    /// Appends the field list (the whole message body) to `buf`.
    pub(crate) fn encode_fields(&self, buf: &mut BytesMut) {
        let severity = self.severity.as_str();
        let localized = self.localized_severity.as_deref().unwrap_or(severity);
        let mut put = |field_type: u8, value: &str| {
            buf.put_u8(field_type);
            put_cstr(buf, value.as_bytes());
        };
        put(FIELD_SEVERITY_LOCALIZED, localized);
        put(FIELD_SEVERITY, severity);
        put(FIELD_CODE, &self.code);
        put(FIELD_MESSAGE, &self.message);
        if let Some(detail) = &self.detail {
            put(FIELD_DETAIL, detail);
        }
        if let Some(hint) = &self.hint {
            put(FIELD_HINT, hint);
        }
        for (field_type, value) in &self.other {
            // A zero type byte would end the list early on the receiving side.
            if *field_type != 0 {
                put(*field_type, value);
            }
        }
        buf.put_u8(0);
    }

    /// Parses a field list. Severity is taken from the non-localized `V` field when present
    /// (servers since 9.6 send it), else from `S`; severity, code and message are required, as
    /// the protocol promises they are always present.
    ///
    /// Field values are decoded lossily: before the session's client_encoding is settled a
    /// server may phrase messages in another encoding, and a garbled character in an error
    /// text is better than losing the error.
    pub(crate) fn decode_fields(body: &[u8], message: &'static str) -> Result<Self, ProtocolError> {
        let mut r = Reader::new(body, message);
        let mut localized = None;
        let mut severity = None;
        let mut code = None;
        let mut text = None;
        let mut detail = None;
        let mut hint = None;
        let mut other = Vec::new();
        loop {
            let field_type = r.u8("field type")?;
            if field_type == 0 {
                break;
            }
            let value = String::from_utf8_lossy(r.cbytes("field value")?).into_owned();
            match field_type {
                FIELD_SEVERITY_LOCALIZED => localized = Some(value),
                FIELD_SEVERITY => severity = Some(value),
                FIELD_CODE => code = Some(value),
                FIELD_MESSAGE => text = Some(value),
                FIELD_DETAIL => detail = Some(value),
                FIELD_HINT => hint = Some(value),
                _ => other.push((field_type, value)),
            }
        }
        r.finish()?;
        let missing = |field| ProtocolError::Truncated { message, field };
        let Some(name) = severity.as_ref().or(localized.as_ref()) else {
            return Err(missing("severity field"));
        };
        let severity = Severity::from_name(name)
            .ok_or_else(|| ProtocolError::UnknownSeverity(name.clone()))?;
        let localized_severity = localized.filter(|s| s != severity.as_str());
        Ok(PgError {
            severity,
            localized_severity,
            code: code.ok_or_else(|| missing("SQLSTATE field"))?,
            message: text.ok_or_else(|| missing("message field"))?,
            detail,
            hint,
            other,
        })
    }
}

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(detail) = &self.detail {
            write!(f, "; detail: {detail}")?;
        }
        if let Some(hint) = &self.hint {
            write!(f, "; hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PgError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(err: &PgError) -> PgError {
        let mut buf = BytesMut::new();
        err.encode_fields(&mut buf);
        PgError::decode_fields(&buf, "ErrorResponse").expect("round trip")
    }

    #[test]
    fn severity_names_round_trip() {
        for s in [
            Severity::Error,
            Severity::Fatal,
            Severity::Panic,
            Severity::Warning,
            Severity::Notice,
            Severity::Debug,
            Severity::Info,
            Severity::Log,
        ] {
            assert_eq!(Severity::from_name(s.as_str()), Some(s));
        }
        assert_eq!(Severity::from_name("error"), None);
    }

    #[test]
    fn builders_set_fields() {
        let err = PgError::fatal("53300", "too many clients")
            .with_detail("pool is full")
            .with_hint("raise max_client_conn");
        assert_eq!(err.severity, Severity::Fatal);
        assert_eq!(err.field(b'C'), Some("53300"));
        assert_eq!(err.field(b'D'), Some("pool is full"));
        assert_eq!(err.field(b'H'), Some("raise max_client_conn"));
        assert_eq!(err.field(b'S'), Some("FATAL"));
        assert_eq!(err.field(b'P'), None);
        assert_eq!(
            err.to_string(),
            "FATAL: too many clients (SQLSTATE 53300); detail: pool is full; hint: raise max_client_conn"
        );
        assert_eq!(PgError::error("42P01", "x").severity, Severity::Error);
    }

    #[test]
    fn fields_round_trip_with_unknown_ones_kept() {
        let mut err = PgError::error("42601", "syntax error at or near \"selec\"");
        err.other = vec![
            (b'P', "1".into()),
            (b'F', "scan.l".into()),
            (b'R', "scanner_yyerror".into()),
        ];
        err.localized_severity = Some("FEHLER".into());
        assert_eq!(round_trip(&err), err);
        assert_eq!(round_trip(&err).field(b'F'), Some("scan.l"));
        let plain = PgError::new(Severity::Notice, "00000", "hello").with_hint("h");
        assert_eq!(round_trip(&plain), plain);
    }

    #[test]
    fn severity_falls_back_to_localized_field() {
        let body = b"SWARNING\0C01000\0Mcareful\0\0";
        let err = PgError::decode_fields(body, "NoticeResponse").expect("valid");
        assert_eq!(err.severity, Severity::Warning);
        assert_eq!(err.localized_severity, None);
    }

    #[test]
    fn malformed_field_lists_are_rejected() {
        let cases: [&[u8]; 7] = [
            b"",                            // no terminator
            b"SERROR\0",                    // no terminator after fields
            b"SERROR",                      // unterminated value
            b"C00000\0Mm\0\0",              // no severity
            b"SERROR\0Mm\0\0",              // no code
            b"VERROR\0C00000\0\0",          // no message
            b"SERROR\0C00000\0Mm\0\0extra", // trailing bytes
        ];
        for body in cases {
            assert!(
                PgError::decode_fields(body, "ErrorResponse").is_err(),
                "{body:?}"
            );
        }
        let unknown = PgError::decode_fields(b"VBOGUS\0C0\0Mm\0\0", "ErrorResponse");
        assert_eq!(unknown, Err(ProtocolError::UnknownSeverity("BOGUS".into())));
    }

    #[test]
    fn non_utf8_text_is_kept_lossily() {
        let err = PgError::decode_fields(b"VERROR\0C28P01\0Mpasswort f\xfcr\0\0", "ErrorResponse")
            .expect("lossy");
        assert_eq!(err.message, "passwort f\u{fffd}r");
    }
}
