//! Messages a server sends: builders for the replies the pooler writes to clients itself, and
//! parsers for what the pooler reads from PostgreSQL.
//!
//! Builders append one complete message (header included) to `buf`. Parsers take a
//! [`Message::body`](super::Message::body) whose tag the caller has already matched against
//! [`tag`].

use bytes::{BufMut, Bytes, BytesMut};

use super::error::PgError;
use super::frame::{begin, count16, empty_message, finish, len32, put_cstr};
use super::reader::Reader;
use super::ProtocolError;

/// Type bytes of server messages.
pub mod tag {
    /// AuthenticationOk / ...Password / ...SASL, told apart by the first body word.
    pub const AUTHENTICATION: u8 = b'R';
    /// ParameterStatus: a run-time setting the client should know about.
    pub const PARAMETER_STATUS: u8 = b'S';
    /// BackendKeyData: the key a client needs to send a CancelRequest.
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// ReadyForQuery, carrying the transaction status.
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// ErrorResponse.
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse.
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// CommandComplete, carrying the command tag.
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// EmptyQueryResponse: the query string was empty.
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// RowDescription.
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// DataRow.
    pub const DATA_ROW: u8 = b'D';
    /// NegotiateProtocolVersion.
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
    /// ParseComplete.
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete.
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete.
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// NoData: the statement or portal returns no rows.
    pub const NO_DATA: u8 = b'n';
    /// ParameterDescription.
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// PortalSuspended: Execute's row limit was reached.
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// NotificationResponse (LISTEN/NOTIFY).
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// CopyInResponse.
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// CopyOutResponse.
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// CopyBothResponse (replication).
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// CopyData (either direction).
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone (either direction).
    pub const COPY_DONE: u8 = b'c';
    /// FunctionCallResponse.
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
}

/// Authentication request codes (first word of an `R` message).
const AUTH_OK: i32 = 0;
const AUTH_CLEARTEXT_PASSWORD: i32 = 3;
const AUTH_MD5_PASSWORD: i32 = 5;
const AUTH_SASL: i32 = 10;
const AUTH_SASL_CONTINUE: i32 = 11;
const AUTH_SASL_FINAL: i32 = 12;

/// Type OID of `text`, used for every column the pooler describes itself.
const TEXT_OID: u32 = 25;

/// An authentication request or result, as carried by an `R` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// Authentication succeeded.
    Ok,
    /// Send the password in clear text.
    CleartextPassword,
    /// Send `md5(md5(password || user) || salt)`.
    Md5Password {
        /// Four random bytes to hash with.
        salt: [u8; 4],
    },
    /// Start SASL; the server offers these mechanisms, most preferred first.
    Sasl {
        /// Mechanism names, e.g. `SCRAM-SHA-256`.
        mechanisms: Vec<String>,
    },
    /// A SASL challenge (for SCRAM, the server-first-message).
    SaslContinue(Bytes),
    /// The SASL outcome (for SCRAM, the server-final-message with the server signature).
    SaslFinal(Bytes),
    /// A method the pooler does not implement (Kerberos, GSSAPI, SSPI...), by code.
    Unsupported(i32),
}

/// One column of a RowDescription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FieldDescription<'a> {
    /// Column name.
    pub name: &'a str,
    /// OID of the source table, or 0.
    pub table_oid: u32,
    /// Attribute number in that table, or 0.
    pub column_id: i16,
    /// OID of the column's data type.
    pub type_oid: u32,
    /// `pg_type.typlen` (negative for variable width).
    pub type_size: i16,
    /// `pg_attribute.atttypmod`.
    pub type_modifier: i32,
    /// 0 for text, 1 for binary.
    pub format: i16,
}

/// Appends AuthenticationOk.
pub fn authentication_ok(buf: &mut BytesMut) {
    auth_simple(buf, AUTH_OK);
}

/// Appends AuthenticationCleartextPassword.
pub fn authentication_cleartext_password(buf: &mut BytesMut) {
    auth_simple(buf, AUTH_CLEARTEXT_PASSWORD);
}

/// Appends AuthenticationMD5Password with the given salt.
pub fn authentication_md5_password(buf: &mut BytesMut, salt: [u8; 4]) {
    let start = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(AUTH_MD5_PASSWORD);
    buf.put_slice(&salt);
    finish(buf, start);
}

/// Appends AuthenticationSASL offering `mechanisms`, most preferred first.
pub fn authentication_sasl(buf: &mut BytesMut, mechanisms: &[&str]) {
    let start = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(AUTH_SASL);
    for mechanism in mechanisms {
        put_cstr(buf, mechanism.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, start);
}

/// Appends AuthenticationSASLContinue carrying a mechanism-specific challenge.
pub fn authentication_sasl_continue(buf: &mut BytesMut, data: &[u8]) {
    auth_with_data(buf, AUTH_SASL_CONTINUE, data);
}

/// Appends AuthenticationSASLFinal carrying the mechanism's final data.
pub fn authentication_sasl_final(buf: &mut BytesMut, data: &[u8]) {
    auth_with_data(buf, AUTH_SASL_FINAL, data);
}

fn auth_simple(buf: &mut BytesMut, code: i32) {
    buf.put_u8(tag::AUTHENTICATION);
    buf.put_i32(8);
    buf.put_i32(code);
}

fn auth_with_data(buf: &mut BytesMut, code: i32, data: &[u8]) {
    let start = begin(buf, tag::AUTHENTICATION);
    buf.put_i32(code);
    buf.put_slice(data);
    finish(buf, start);
}

/// Appends ParameterStatus reporting `name = value`.
pub fn parameter_status(buf: &mut BytesMut, name: &str, value: &str) {
    let start = begin(buf, tag::PARAMETER_STATUS);
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, value.as_bytes());
    finish(buf, start);
}

/// Appends BackendKeyData, the key a client must quote in a CancelRequest.
pub fn backend_key_data(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
    buf.put_u8(tag::BACKEND_KEY_DATA);
    buf.put_i32(12);
    buf.put_i32(process_id);
    buf.put_i32(secret_key);
}

/// Appends ReadyForQuery with transaction status `b'I'` (idle), `b'T'` (in a transaction) or
/// `b'E'` (in a failed transaction).
pub fn ready_for_query(buf: &mut BytesMut, status: u8) {
    buf.put_u8(tag::READY_FOR_QUERY);
    buf.put_i32(5);
    buf.put_u8(status);
}

/// Appends an ErrorResponse carrying `err`.
pub fn error_response(buf: &mut BytesMut, err: &PgError) {
    let start = begin(buf, tag::ERROR_RESPONSE);
    err.encode_fields(buf);
    finish(buf, start);
}

/// Appends a NoticeResponse carrying `notice`.
pub fn notice_response(buf: &mut BytesMut, notice: &PgError) {
    let start = begin(buf, tag::NOTICE_RESPONSE);
    notice.encode_fields(buf);
    finish(buf, start);
}

/// Appends CommandComplete with a command tag such as `"SELECT 3"` or `"SHOW"`.
pub fn command_complete(buf: &mut BytesMut, command_tag: &str) {
    let start = begin(buf, tag::COMMAND_COMPLETE);
    put_cstr(buf, command_tag.as_bytes());
    finish(buf, start);
}

/// Appends EmptyQueryResponse, the reply to an empty query string.
pub fn empty_query_response(buf: &mut BytesMut) {
    empty_message(buf, tag::EMPTY_QUERY_RESPONSE);
}

/// Appends ParseComplete; the pooler sends it itself when a client's Parse maps onto a
/// statement already prepared on the server.
pub fn parse_complete(buf: &mut BytesMut) {
    empty_message(buf, tag::PARSE_COMPLETE);
}

/// Appends CloseComplete; the pooler sends it itself when it keeps a server-side statement
/// the client asked to close.
pub fn close_complete(buf: &mut BytesMut) {
    empty_message(buf, tag::CLOSE_COMPLETE);
}

/// Appends a RowDescription of text columns (type `text`, text format) named `columns`, the
/// shape of every result set the pooler produces itself (e.g. the admin console).
///
/// # Panics
/// With more than 65535 columns, which the protocol cannot express.
pub fn row_description(buf: &mut BytesMut, columns: &[&str]) {
    let start = begin(buf, tag::ROW_DESCRIPTION);
    buf.put_u16(count16(columns.len(), "columns"));
    for name in columns {
        put_cstr(buf, name.as_bytes());
        buf.put_u32(0); // not from a table
        buf.put_i16(0); // no attribute number
        buf.put_u32(TEXT_OID);
        buf.put_i16(-1); // variable width
        buf.put_i32(-1); // no type modifier
        buf.put_i16(0); // text format
    }
    finish(buf, start);
}

/// Appends a DataRow; `None` is SQL NULL.
///
/// # Panics
/// With more than 65535 values or a value over 2 GiB, which the protocol cannot express.
pub fn data_row(buf: &mut BytesMut, values: &[Option<&[u8]>]) {
    let start = begin(buf, tag::DATA_ROW);
    buf.put_u16(count16(values.len(), "values"));
    for value in values {
        match value {
            Some(bytes) => {
                buf.put_i32(len32(bytes.len()));
                buf.put_slice(bytes);
            }
            None => buf.put_i32(-1),
        }
    }
    finish(buf, start);
}

/// Appends NegotiateProtocolVersion: the client asked for a newer minor version or for
/// protocol options than are supported; `newest_minor` (of major version 3) will be used and
/// `unrecognized` lists the `_pq_.` options that are ignored.
///
/// The wire field holds the full version number, major in the high 16 bits, as PostgreSQL
/// servers send it and libpq 18 requires.
pub fn negotiate_protocol_version(buf: &mut BytesMut, newest_minor: u16, unrecognized: &[&str]) {
    let start = begin(buf, tag::NEGOTIATE_PROTOCOL_VERSION);
    buf.put_u32((3 << 16) | u32::from(newest_minor));
    buf.put_i32(len32(unrecognized.len()));
    for option in unrecognized {
        put_cstr(buf, option.as_bytes());
    }
    finish(buf, start);
}

/// Parses an Authentication (`R`) body. SASL payloads share `body`'s memory.
pub fn parse_authentication(body: &Bytes) -> Result<Authentication, ProtocolError> {
    const MSG: &str = "Authentication";
    let mut r = Reader::new(body, MSG);
    let code = r.i32("request code")?;
    let auth = match code {
        AUTH_OK => Authentication::Ok,
        AUTH_CLEARTEXT_PASSWORD => Authentication::CleartextPassword,
        AUTH_MD5_PASSWORD => Authentication::Md5Password {
            salt: r.array("salt")?,
        },
        AUTH_SASL => {
            let mut mechanisms = Vec::new();
            loop {
                let name = r.cstr("mechanism")?;
                if name.is_empty() {
                    break;
                }
                mechanisms.push(name.to_owned());
            }
            Authentication::Sasl { mechanisms }
        }
        // The payload is everything after the 4-byte code.
        AUTH_SASL_CONTINUE => return Ok(Authentication::SaslContinue(body.slice(4..))),
        AUTH_SASL_FINAL => return Ok(Authentication::SaslFinal(body.slice(4..))),
        // Other methods may carry data of their own; there is nothing to validate here.
        other => return Ok(Authentication::Unsupported(other)),
    };
    r.finish()?;
    Ok(auth)
}

/// Parses a ParameterStatus body into `(name, value)`.
pub fn parse_parameter_status(body: &[u8]) -> Result<(String, String), ProtocolError> {
    let mut r = Reader::new(body, "ParameterStatus");
    let name = r.cstr("name")?.to_owned();
    let value = r.cstr("value")?.to_owned();
    r.finish()?;
    Ok((name, value))
}

/// Parses a BackendKeyData body into `(process_id, secret_key)`.
///
/// Only the 4-byte key of protocol 3.0 is accepted: the pooler always asks servers for 3.0.
pub fn parse_backend_key_data(body: &[u8]) -> Result<(i32, i32), ProtocolError> {
    let mut r = Reader::new(body, "BackendKeyData");
    let process_id = r.i32("process id")?;
    let secret_key = r.i32("secret key")?;
    r.finish()?;
    Ok((process_id, secret_key))
}

/// Parses a ReadyForQuery body into its transaction status: `b'I'`, `b'T'` or `b'E'`.
pub fn parse_ready_for_query(body: &[u8]) -> Result<u8, ProtocolError> {
    const MSG: &str = "ReadyForQuery";
    let mut r = Reader::new(body, MSG);
    let status = r.u8("transaction status")?;
    r.finish()?;
    match status {
        b'I' | b'T' | b'E' => Ok(status),
        other => Err(ProtocolError::InvalidField {
            message: MSG,
            field: "transaction status",
            value: i64::from(other),
        }),
    }
}

/// Parses an ErrorResponse or NoticeResponse body, keeping fields without a dedicated member
/// in [`PgError::other`].
pub fn parse_error_response(body: &[u8]) -> Result<PgError, ProtocolError> {
    PgError::decode_fields(body, "ErrorResponse")
}

/// Parses a CommandComplete body into its command tag, e.g. `"INSERT 0 1"`.
pub fn parse_command_complete(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body, "CommandComplete");
    let command_tag = r.cstr("command tag")?;
    r.finish()?;
    Ok(command_tag)
}

/// Parses a RowDescription body into its columns.
pub fn parse_row_description(body: &[u8]) -> Result<Vec<FieldDescription<'_>>, ProtocolError> {
    const MSG: &str = "RowDescription";
    /// Smallest encoding of one column: empty name plus 18 bytes of attributes.
    const MIN_FIELD_LEN: usize = 19;
    let mut r = Reader::new(body, MSG);
    let count = usize::from(r.u16("column count")?);
    let mut fields = Vec::with_capacity(count.min(r.remaining() / MIN_FIELD_LEN));
    for _ in 0..count {
        fields.push(FieldDescription {
            name: r.cstr("column name")?,
            table_oid: r.u32("table oid")?,
            column_id: r.i16("column number")?,
            type_oid: r.u32("type oid")?,
            type_size: r.i16("type size")?,
            type_modifier: r.i32("type modifier")?,
            format: r.i16("format code")?,
        });
    }
    r.finish()?;
    Ok(fields)
}

/// Parses a DataRow body into its values, `None` for SQL NULL; values borrow from `body`.
pub fn parse_data_row(body: &[u8]) -> Result<Vec<Option<&[u8]>>, ProtocolError> {
    const MSG: &str = "DataRow";
    let mut r = Reader::new(body, MSG);
    let count = usize::from(r.u16("column count")?);
    // Each value takes at least its 4-byte length word.
    let mut values = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        let len = r.i32("value length")?;
        values.push(match len {
            -1 => None,
            len => {
                let n = usize::try_from(len).map_err(|_| ProtocolError::InvalidField {
                    message: MSG,
                    field: "value length",
                    value: i64::from(len),
                })?;
                Some(r.bytes(n, "value")?)
            }
        });
    }
    r.finish()?;
    Ok(values)
}

/// Parses a NegotiateProtocolVersion body into the newest minor version the server supports
/// (of major version 3) and the protocol options it did not recognize.
pub fn parse_negotiate_protocol_version(body: &[u8]) -> Result<(u16, Vec<&str>), ProtocolError> {
    const MSG: &str = "NegotiateProtocolVersion";
    let mut r = Reader::new(body, MSG);
    let version = r.u32("protocol version")?;
    if version >> 16 != 3 {
        return Err(ProtocolError::InvalidField {
            message: MSG,
            field: "protocol version",
            value: i64::from(version),
        });
    }
    let count = r.i32("option count")?;
    let count = usize::try_from(count).map_err(|_| ProtocolError::InvalidField {
        message: MSG,
        field: "option count",
        value: i64::from(count),
    })?;
    // Each option takes at least its NUL, which bounds the allocation by the body size.
    let mut options = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        options.push(r.cstr("option name")?);
    }
    r.finish()?;
    Ok(((version & 0xffff) as u16, options))
}

/// The SQLSTATE class (first two characters of the `C` field) of an ErrorResponse body.
pub fn error_class(body: &[u8]) -> Option<[u8; 2]> {
    error_code(body).and_then(|code| Some([*code.first()?, *code.get(1)?]))
}

/// The SQLSTATE of an ErrorResponse body (at least two bytes), if its code field is there.
pub fn error_code(body: &[u8]) -> Option<&[u8]> {
    let mut rest = body;
    while let Some((&field, tail)) = rest.split_first() {
        if field == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if field == b'C' && end >= 2 {
            return Some(&tail[..end]);
        }
        rest = &tail[end + 1..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_message, Message, Severity};

    #[test]
    fn error_codes() {
        assert_eq!(
            error_code(b"SFATAL\0C57P01\0Mterminating\0\0"),
            Some(&b"57P01"[..])
        );
        assert_eq!(error_code(b"SFATAL\0Mno code\0\0"), None);
    }

    #[test]
    fn error_classes() {
        assert_eq!(
            error_class(b"SERROR\0C22012\0Mdivision by zero\0\0"),
            Some(*b"22")
        );
        assert_eq!(error_class(b"Mx\0"), None);
    }

    /// Decodes the single message a builder wrote, checking its tag.
    fn only_message(mut buf: BytesMut, expected_tag: u8) -> Message {
        let msg = decode_message(&mut buf, 1 << 20)
            .expect("valid")
            .expect("complete");
        assert!(buf.is_empty(), "builder wrote exactly one message");
        assert_eq!(msg.tag, expected_tag);
        msg
    }

    fn built(f: impl FnOnce(&mut BytesMut)) -> BytesMut {
        let mut buf = BytesMut::new();
        f(&mut buf);
        buf
    }

    fn auth_of(buf: BytesMut) -> Authentication {
        let msg = only_message(buf, tag::AUTHENTICATION);
        parse_authentication(&msg.body).expect("valid authentication")
    }

    #[test]
    fn authentication_round_trips() {
        assert_eq!(auth_of(built(authentication_ok)), Authentication::Ok);
        assert_eq!(
            &built(authentication_ok)[..],
            &[b'R', 0, 0, 0, 8, 0, 0, 0, 0],
            "exact wire bytes"
        );
        assert_eq!(
            auth_of(built(authentication_cleartext_password)),
            Authentication::CleartextPassword
        );
        assert_eq!(
            auth_of(built(|b| authentication_md5_password(b, [1, 2, 3, 4]))),
            Authentication::Md5Password { salt: [1, 2, 3, 4] }
        );
        assert_eq!(
            auth_of(built(|b| authentication_sasl(
                b,
                &["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]
            ))),
            Authentication::Sasl {
                mechanisms: vec!["SCRAM-SHA-256-PLUS".into(), "SCRAM-SHA-256".into()]
            }
        );
        assert_eq!(
            auth_of(built(|b| authentication_sasl_continue(
                b,
                b"r=abc,s=c2FsdA==,i=4096"
            ))),
            Authentication::SaslContinue(Bytes::from_static(b"r=abc,s=c2FsdA==,i=4096"))
        );
        assert_eq!(
            auth_of(built(|b| authentication_sasl_final(b, b"v=sig"))),
            Authentication::SaslFinal(Bytes::from_static(b"v=sig"))
        );
    }

    #[test]
    fn authentication_rejects_malformed_and_flags_unsupported() {
        let parse = |bytes: &'static [u8]| parse_authentication(&Bytes::from_static(bytes));
        assert_eq!(parse(b"\0\0\0\x07"), Ok(Authentication::Unsupported(7)));
        assert_eq!(
            parse(b"\0\0\0\x08gss-token"),
            Ok(Authentication::Unsupported(8))
        );
        assert!(parse(b"").is_err());
        assert!(parse(b"\0\0\0").is_err());
        assert!(parse(b"\0\0\0\0x").is_err(), "Ok with trailing bytes");
        assert!(parse(b"\0\0\0\x05\x01\x02\x03").is_err(), "short salt");
        assert!(
            parse(b"\0\0\0\x05\x01\x02\x03\x04\x05").is_err(),
            "long salt"
        );
        assert!(
            parse(b"\0\0\0\x0aSCRAM-SHA-256\0").is_err(),
            "list not terminated"
        );
        assert!(parse(b"\0\0\0\x0aSCRAM").is_err(), "name not terminated");
        assert_eq!(
            parse(b"\0\0\0\x0b"),
            Ok(Authentication::SaslContinue(Bytes::new())),
            "empty challenge is the mechanism's business"
        );
    }

    #[test]
    fn parameter_status_round_trips() {
        let msg = only_message(
            built(|b| parameter_status(b, "TimeZone", "Europe/Paris")),
            b'S',
        );
        assert_eq!(
            parse_parameter_status(&msg.body),
            Ok(("TimeZone".to_owned(), "Europe/Paris".to_owned()))
        );
        assert!(parse_parameter_status(b"name\0").is_err());
        assert!(parse_parameter_status(b"name\0value\0x").is_err());
    }

    #[test]
    fn backend_key_data_round_trips() {
        let msg = only_message(built(|b| backend_key_data(b, 1234, i32::MIN)), b'K');
        assert_eq!(parse_backend_key_data(&msg.body), Ok((1234, i32::MIN)));
        assert!(parse_backend_key_data(&[0; 7]).is_err());
        assert!(
            parse_backend_key_data(&[0; 36]).is_err(),
            "3.2 long keys are not negotiated"
        );
    }

    #[test]
    fn ready_for_query_round_trips() {
        for status in [b'I', b'T', b'E'] {
            let msg = only_message(built(|b| ready_for_query(b, status)), b'Z');
            assert_eq!(parse_ready_for_query(&msg.body), Ok(status));
        }
        assert!(matches!(
            parse_ready_for_query(b"X"),
            Err(ProtocolError::InvalidField { value: 88, .. })
        ));
        assert!(parse_ready_for_query(b"").is_err());
        assert!(parse_ready_for_query(b"II").is_err());
    }

    #[test]
    fn error_and_notice_round_trip() {
        let err = PgError::fatal("53300", "no more connections allowed").with_hint("wait");
        let msg = only_message(built(|b| error_response(b, &err)), b'E');
        assert_eq!(parse_error_response(&msg.body), Ok(err));
        let notice = PgError::new(Severity::Warning, "01000", "pool nearly full");
        let msg = only_message(built(|b| notice_response(b, &notice)), b'N');
        assert_eq!(parse_error_response(&msg.body), Ok(notice));
    }

    #[test]
    fn command_complete_round_trips() {
        let msg = only_message(built(|b| command_complete(b, "SELECT 3")), b'C');
        assert_eq!(parse_command_complete(&msg.body), Ok("SELECT 3"));
        assert!(parse_command_complete(b"SELECT 3").is_err());
        assert!(parse_command_complete(b"SELECT\0\0").is_err());
    }

    #[test]
    fn empty_messages() {
        for (builder, t) in [
            (empty_query_response as fn(&mut BytesMut), b'I'),
            (parse_complete, b'1'),
            (close_complete, b'3'),
        ] {
            assert!(only_message(built(builder), t).body.is_empty());
        }
    }

    #[test]
    fn row_description_round_trips() {
        let msg = only_message(built(|b| row_description(b, &["database", "user"])), b'T');
        let fields = parse_row_description(&msg.body).expect("valid");
        assert_eq!(fields.len(), 2);
        assert_eq!(
            fields[1],
            FieldDescription {
                name: "user",
                table_oid: 0,
                column_id: 0,
                type_oid: TEXT_OID,
                type_size: -1,
                type_modifier: -1,
                format: 0,
            }
        );
        let empty = only_message(built(|b| row_description(b, &[])), b'T');
        assert_eq!(parse_row_description(&empty.body), Ok(vec![]));
        // Claims 65535 columns with none present: an error, not a huge allocation.
        assert!(parse_row_description(&[0xff, 0xff]).is_err());
    }

    #[test]
    fn data_row_round_trips() {
        let values: [Option<&[u8]>; 4] = [Some(b"pgbench"), None, Some(b""), Some(&[0, 1, 2])];
        let msg = only_message(built(|b| data_row(b, &values)), b'D');
        assert_eq!(parse_data_row(&msg.body), Ok(values.to_vec()));
        assert!(parse_data_row(&[0xff, 0xff]).is_err());
        assert!(
            parse_data_row(b"\0\x01\xff\xff\xff\xfe").is_err(),
            "length -2"
        );
        assert!(
            parse_data_row(b"\0\x01\0\0\0\x05abc").is_err(),
            "value overruns the body"
        );
        assert!(
            parse_data_row(b"\0\x01\0\0\0\x01abc").is_err(),
            "trailing bytes"
        );
    }

    #[test]
    fn negotiate_protocol_version_round_trips() {
        let buf = built(|b| negotiate_protocol_version(b, 0, &["_pq_.compression"]));
        // Version word is the full 3.0, not a bare minor.
        assert_eq!(&buf[5..9], &[0, 3, 0, 0]);
        let msg = only_message(buf, b'v');
        assert_eq!(
            parse_negotiate_protocol_version(&msg.body),
            Ok((0, vec!["_pq_.compression"]))
        );
        let none = only_message(built(|b| negotiate_protocol_version(b, 2, &[])), b'v');
        assert_eq!(
            parse_negotiate_protocol_version(&none.body),
            Ok((2, vec![]))
        );
        assert!(
            parse_negotiate_protocol_version(b"\0\0\0\0\0\0\0\0").is_err(),
            "major 0"
        );
        assert!(parse_negotiate_protocol_version(b"\0\x03\0\0\xff\xff\xff\xff").is_err());
        assert!(parse_negotiate_protocol_version(b"\0\x03\0\0\x7f\xff\xff\xff").is_err());
    }
}
