//! PostgreSQL frontend/backend protocol, version 3: a pure, allocation-light codec.
//!
//! Nothing here does I/O. Decoders take bytes that a connection task has read into a
//! [`bytes::BytesMut`] and split complete packets off its front without copying; builders
//! append complete messages to an output buffer. Every decoder and parser is total: malformed,
//! truncated or oversized input yields a [`ProtocolError`], never a panic, and no buffer is sized
//! from a length the peer declared before that length has been checked against a limit.
//!
//! Layout, by concern:
//! - [`startup`](decode_startup): the untagged packets a client sends before authentication.
//! - [`frame`](decode_message): the `tag, length, body` framing of every later message.
//! - [`backend`]: what a server sends (builders for the pooler's own replies, parsers for what
//!   the pooler reads from PostgreSQL).
//! - [`frontend`]: what a client sends (builders for the pooler's own requests to PostgreSQL,
//!   parsers for what the pooler reads from clients).
//! - [`PgError`]: the fields of ErrorResponse and NoticeResponse.

pub mod backend;
mod error;
mod frame;
pub mod frontend;
mod harness;
mod reader;
mod startup;

pub use error::{PgError, Severity};
pub use frame::{decode_message, peek_header, Message, HEADER_LEN};
pub use harness::exercise_decoders;
pub use startup::{
    decode_startup, Startup, StartupParams, MAX_STARTUP_PACKET_LEN, NEWEST_MINOR_VERSION,
};

/// A violation of the wire protocol found while decoding a peer's bytes.
///
/// Each variant maps to the SQLSTATE PostgreSQL itself would report (see
/// [`ProtocolError::sqlstate`]), so the pooler can answer a misbehaving client with the same
/// ErrorResponse a real server would send before closing the connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The length word of a startup-phase packet is outside `8..=MAX_STARTUP_PACKET_LEN`, or
    /// does not match the fixed size of the request it announces.
    #[error("invalid length of startup packet: {0} bytes")]
    InvalidStartupLength(i32),
    /// The client asked for a protocol major version other than 3.
    #[error("unsupported frontend protocol {major}.{minor}: the server supports 3.0 to 3.{newest}", newest = NEWEST_MINOR_VERSION)]
    UnsupportedVersion {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
    },
    /// The parameter list of a StartupMessage is not a sequence of NUL-terminated name/value
    /// pairs followed by one final NUL that ends the packet.
    #[error("invalid startup packet layout: {0}")]
    InvalidStartupLayout(&'static str),
    /// The StartupMessage names no user (or an empty one).
    #[error("no PostgreSQL user name specified in startup packet")]
    MissingUser,
    /// A message header declares a length smaller than the length word itself.
    #[error("invalid length {len} in message of type {}", tag_display(*.tag))]
    InvalidMessageLength {
        /// Message type byte.
        tag: u8,
        /// Declared length, as sent.
        len: i32,
    },
    /// A message header declares a length above the configured limit.
    #[error("message of type {} declares {len} bytes, above the limit of {max}", tag_display(*.tag))]
    MessageTooLarge {
        /// Message type byte.
        tag: u8,
        /// Declared length, as sent.
        len: usize,
        /// The limit it was checked against.
        max: usize,
    },
    /// A message body ended before one of its fields was complete.
    #[error("{message} message is truncated: {field} is incomplete")]
    Truncated {
        /// Message kind, e.g. "Parse".
        message: &'static str,
        /// The field being read.
        field: &'static str,
    },
    /// A string field has no NUL terminator inside the message body.
    #[error("{message} message: {field} lacks its NUL terminator")]
    MissingTerminator {
        /// Message kind.
        message: &'static str,
        /// The string field.
        field: &'static str,
    },
    /// A string field is not valid UTF-8.
    #[error("{message} message: {field} is not valid UTF-8")]
    InvalidUtf8 {
        /// Message kind (or "startup" for startup parameters).
        message: &'static str,
        /// The string field.
        field: &'static str,
    },
    /// Bytes remain in a message body after its last field.
    #[error("{message} message has {extra} unexpected trailing bytes")]
    TrailingBytes {
        /// Message kind.
        message: &'static str,
        /// Number of bytes left over.
        extra: usize,
    },
    /// An ErrorResponse or NoticeResponse names a severity this codec does not know.
    #[error("unknown severity {0:?} in error or notice message")]
    UnknownSeverity(String),
    /// A simple-query message while `disable_pqexec` is on; PgBouncer's words.
    #[error("PQexec disallowed")]
    SimpleQueryDisallowed,
    /// A field holds a value the protocol does not allow there.
    #[error("{message} message: invalid {field} {value}")]
    InvalidField {
        /// Message kind.
        message: &'static str,
        /// The field.
        field: &'static str,
        /// The offending value (bytes are shown as their numeric value).
        value: i64,
    },
}

impl ProtocolError {
    /// The SQLSTATE PostgreSQL uses for this kind of failure: `08P01` (protocol_violation) for
    /// malformed packets and oversized messages (as PostgreSQL's "invalid message length"),
    /// `0A000` (feature_not_supported) for an unsupported protocol version, `28000`
    /// (invalid_authorization_specification) for a missing user and `22021`
    /// (character_not_in_repertoire) for text that is not UTF-8.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            ProtocolError::UnsupportedVersion { .. } => "0A000",
            ProtocolError::MissingUser => "28000",
            ProtocolError::InvalidUtf8 { .. } => "22021",
            ProtocolError::InvalidStartupLength(_)
            | ProtocolError::InvalidStartupLayout(_)
            | ProtocolError::InvalidMessageLength { .. }
            | ProtocolError::MessageTooLarge { .. }
            | ProtocolError::Truncated { .. }
            | ProtocolError::MissingTerminator { .. }
            | ProtocolError::TrailingBytes { .. }
            | ProtocolError::UnknownSeverity(_)
            | ProtocolError::SimpleQueryDisallowed
            | ProtocolError::InvalidField { .. } => "08P01",
        }
    }

    /// The FATAL ErrorResponse to send the peer before closing the connection, carrying this
    /// error's SQLSTATE and text.
    pub fn to_pg_error(&self) -> PgError {
        PgError::fatal(self.sqlstate(), self.to_string())
    }
}

/// Renders a message type byte for error texts: the letter when printable, hex otherwise.
fn tag_display(tag: u8) -> String {
    if tag.is_ascii_graphic() {
        format!("'{}'", char::from(tag))
    } else {
        format!("0x{tag:02x}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_follow_postgres() {
        assert_eq!(ProtocolError::InvalidStartupLength(3).sqlstate(), "08P01");
        let version = ProtocolError::UnsupportedVersion { major: 2, minor: 0 };
        assert_eq!(version.sqlstate(), "0A000");
        assert_eq!(ProtocolError::MissingUser.sqlstate(), "28000");
        let big = ProtocolError::MessageTooLarge {
            tag: b'Q',
            len: 10,
            max: 5,
        };
        assert_eq!(big.sqlstate(), "08P01");
        let utf8 = ProtocolError::InvalidUtf8 {
            message: "Query",
            field: "query",
        };
        assert_eq!(utf8.sqlstate(), "22021");
    }

    #[test]
    fn display_names_the_tag_readably() {
        let printable = ProtocolError::InvalidMessageLength { tag: b'Q', len: 2 };
        assert_eq!(
            printable.to_string(),
            "invalid length 2 in message of type 'Q'"
        );
        let binary = ProtocolError::InvalidMessageLength { tag: 0, len: -1 };
        assert_eq!(
            binary.to_string(),
            "invalid length -1 in message of type 0x00"
        );
        let version = ProtocolError::UnsupportedVersion { major: 2, minor: 0 };
        assert_eq!(
            version.to_string(),
            "unsupported frontend protocol 2.0: the server supports 3.0 to 3.0"
        );
    }

    #[test]
    fn to_pg_error_is_fatal_with_the_sqlstate() {
        let err = ProtocolError::MissingUser.to_pg_error();
        assert_eq!(err.severity, Severity::Fatal);
        assert_eq!(err.code, "28000");
        assert_eq!(
            err.message,
            "no PostgreSQL user name specified in startup packet"
        );
    }
}
