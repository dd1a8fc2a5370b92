//! Messages a client sends: builders for the requests the pooler makes to PostgreSQL itself,
//! and parsers for what the pooler reads from clients.
//!
//! Builders append one complete message to `buf`. Parsers take a
//! [`Message::body`](super::Message::body) whose tag the caller has already matched against
//! [`tag`]; strings they return borrow from the body.

use bytes::{BufMut, BytesMut};

use super::frame::{begin, count16, empty_message, finish, len32, put_cstr};
use super::reader::Reader;
use super::ProtocolError;

/// Type bytes of client messages.
pub mod tag {
    /// Query (simple protocol).
    pub const QUERY: u8 = b'Q';
    /// Parse (extended protocol).
    pub const PARSE: u8 = b'P';
    /// Bind.
    pub const BIND: u8 = b'B';
    /// Describe.
    pub const DESCRIBE: u8 = b'D';
    /// Execute.
    pub const EXECUTE: u8 = b'E';
    /// Close.
    pub const CLOSE: u8 = b'C';
    /// Sync: ends an extended-protocol batch.
    pub const SYNC: u8 = b'S';
    /// Flush.
    pub const FLUSH: u8 = b'H';
    /// Terminate.
    pub const TERMINATE: u8 = b'X';
    /// PasswordMessage, SASLInitialResponse and SASLResponse all share this byte; which one
    /// it is follows from the authentication exchange in progress.
    pub const PASSWORD: u8 = b'p';
    /// CopyData (either direction).
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone (either direction).
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail.
    pub const COPY_FAIL: u8 = b'f';
    /// FunctionCall.
    pub const FUNCTION_CALL: u8 = b'F';
}

/// Protocol version 3.0 as sent in a StartupMessage.
const PROTOCOL_3_0: i32 = 3 << 16;
const SSL_REQUEST_CODE: i32 = (1234 << 16) | 5679;
const CANCEL_REQUEST_CODE: i32 = (1234 << 16) | 5678;

/// A Parse message: prepare `query` as statement `name` (empty = the unnamed statement).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse<'a> {
    /// Statement name; empty for the unnamed statement.
    pub name: &'a str,
    /// SQL text.
    pub query: &'a str,
    /// Declared parameter type OIDs (0 = let the server infer).
    pub param_types: Vec<u32>,
}

/// A Bind message, split just enough to rename the statement it binds.
///
/// Transaction pooling maps a client's statement names onto server-side names, so the pooler
/// rewrites `statement` and passes the rest through untouched (see [`bind_with_statement`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind<'a> {
    /// Destination portal; empty for the unnamed portal.
    pub portal: &'a str,
    /// Source prepared statement; empty for the unnamed statement.
    pub statement: &'a str,
    /// Everything after the two names: parameter formats, values and result formats, already
    /// checked to be well-formed.
    pub rest: &'a [u8],
}

/// Appends a protocol 3.0 StartupMessage with `params` (which must include `user`).
pub fn startup_message(buf: &mut BytesMut, params: &[(&str, &str)]) {
    let start = buf.len();
    buf.put_i32(0);
    buf.put_i32(PROTOCOL_3_0);
    for (name, value) in params {
        put_cstr(buf, name.as_bytes());
        put_cstr(buf, value.as_bytes());
    }
    buf.put_u8(0);
    finish(buf, start);
}

/// Appends an SSLRequest, asking the server to switch to TLS.
pub fn ssl_request(buf: &mut BytesMut) {
    buf.put_i32(8);
    buf.put_i32(SSL_REQUEST_CODE);
}

/// Appends a CancelRequest for the session identified by the given BackendKeyData.
pub fn cancel_request(buf: &mut BytesMut, process_id: i32, secret_key: i32) {
    buf.put_i32(16);
    buf.put_i32(CANCEL_REQUEST_CODE);
    buf.put_i32(process_id);
    buf.put_i32(secret_key);
}

/// Appends a PasswordMessage carrying a cleartext password or an md5 hash string.
pub fn password_message(buf: &mut BytesMut, password: &[u8]) {
    let start = begin(buf, tag::PASSWORD);
    put_cstr(buf, password);
    finish(buf, start);
}

/// Appends a SASLInitialResponse choosing `mechanism`, with the client's first message.
pub fn sasl_initial_response(buf: &mut BytesMut, mechanism: &str, data: &[u8]) {
    let start = begin(buf, tag::PASSWORD);
    put_cstr(buf, mechanism.as_bytes());
    buf.put_i32(len32(data.len()));
    buf.put_slice(data);
    finish(buf, start);
}

/// Appends a SASLResponse; its body is the mechanism's data, unframed.
pub fn sasl_response(buf: &mut BytesMut, data: &[u8]) {
    let start = begin(buf, tag::PASSWORD);
    buf.put_slice(data);
    finish(buf, start);
}

/// Appends a simple-protocol Query.
pub fn query(buf: &mut BytesMut, sql: &str) {
    let start = begin(buf, tag::QUERY);
    put_cstr(buf, sql.as_bytes());
    finish(buf, start);
}

/// Appends Sync.
pub fn sync(buf: &mut BytesMut) {
    empty_message(buf, tag::SYNC);
}

/// Appends Flush.
pub fn flush(buf: &mut BytesMut) {
    empty_message(buf, tag::FLUSH);
}

/// Appends Terminate.
pub fn terminate(buf: &mut BytesMut) {
    empty_message(buf, tag::TERMINATE);
}

/// Appends Parse, preparing `sql` as statement `name` with the given parameter type OIDs.
///
/// # Panics
/// With more than 65535 parameter types, which the protocol cannot express.
pub fn parse(buf: &mut BytesMut, name: &str, sql: &str, param_types: &[u32]) {
    let start = begin(buf, tag::PARSE);
    put_cstr(buf, name.as_bytes());
    put_cstr(buf, sql.as_bytes());
    buf.put_u16(count16(param_types.len(), "parameter types"));
    for oid in param_types {
        buf.put_u32(*oid);
    }
    finish(buf, start);
}

/// Appends Bind from its parts: parameter format codes (none = all text, one = applies to
/// all), parameter values (`None` = NULL) and result format codes.
///
/// # Panics
/// With more than 65535 formats or values, or a value over 2 GiB.
pub fn bind(
    buf: &mut BytesMut,
    portal: &str,
    statement: &str,
    param_formats: &[i16],
    params: &[Option<&[u8]>],
    result_formats: &[i16],
) {
    let start = begin(buf, tag::BIND);
    put_cstr(buf, portal.as_bytes());
    put_cstr(buf, statement.as_bytes());
    buf.put_u16(count16(param_formats.len(), "parameter formats"));
    for format in param_formats {
        buf.put_i16(*format);
    }
    buf.put_u16(count16(params.len(), "parameters"));
    for param in params {
        match param {
            Some(value) => {
                buf.put_i32(len32(value.len()));
                buf.put_slice(value);
            }
            None => buf.put_i32(-1),
        }
    }
    buf.put_u16(count16(result_formats.len(), "result formats"));
    for format in result_formats {
        buf.put_i16(*format);
    }
    finish(buf, start);
}

/// Appends Bind with new portal and statement names and the unchanged `rest` of a parsed
/// [`Bind`].
pub fn bind_with_statement(buf: &mut BytesMut, portal: &str, statement: &str, rest: &[u8]) {
    let start = begin(buf, tag::BIND);
    put_cstr(buf, portal.as_bytes());
    put_cstr(buf, statement.as_bytes());
    buf.put_slice(rest);
    finish(buf, start);
}

/// Appends Describe of a statement (`kind` = `b'S'`) or portal (`b'P'`).
pub fn describe(buf: &mut BytesMut, kind: u8, name: &str) {
    kind_and_name(buf, tag::DESCRIBE, kind, name);
}

/// Appends Close of a statement (`kind` = `b'S'`) or portal (`b'P'`).
pub fn close(buf: &mut BytesMut, kind: u8, name: &str) {
    kind_and_name(buf, tag::CLOSE, kind, name);
}

fn kind_and_name(buf: &mut BytesMut, message_tag: u8, kind: u8, name: &str) {
    let start = begin(buf, message_tag);
    buf.put_u8(kind);
    put_cstr(buf, name.as_bytes());
    finish(buf, start);
}

/// Appends Execute of `portal`, returning at most `max_rows` rows (0 = no limit).
pub fn execute(buf: &mut BytesMut, portal: &str, max_rows: i32) {
    let start = begin(buf, tag::EXECUTE);
    put_cstr(buf, portal.as_bytes());
    buf.put_i32(max_rows);
    finish(buf, start);
}

/// Parses a PasswordMessage body into the password bytes, without the terminating NUL.
/// The NUL must end the body, as PostgreSQL checks.
pub fn parse_password_message(body: &[u8]) -> Result<&[u8], ProtocolError> {
    let mut r = Reader::new(body, "PasswordMessage");
    let password = r.cbytes("password")?;
    r.finish()?;
    Ok(password)
}

/// Parses a SASLInitialResponse body into the chosen mechanism and the client's first
/// message; a declared length of -1 (no initial data) yields an empty slice.
pub fn parse_sasl_initial_response(body: &[u8]) -> Result<(&str, &[u8]), ProtocolError> {
    const MSG: &str = "SASLInitialResponse";
    let mut r = Reader::new(body, MSG);
    let mechanism = r.cstr("mechanism")?;
    let len = r.i32("data length")?;
    let data = match len {
        -1 => &[][..],
        len => {
            let n = usize::try_from(len).map_err(|_| ProtocolError::InvalidField {
                message: MSG,
                field: "data length",
                value: i64::from(len),
            })?;
            r.bytes(n, "data")?
        }
    };
    r.finish()?;
    Ok((mechanism, data))
}

/// Parses a Query body into its SQL text.
pub fn parse_query(body: &[u8]) -> Result<&str, ProtocolError> {
    let mut r = Reader::new(body, "Query");
    let sql = r.cstr("query")?;
    r.finish()?;
    Ok(sql)
}

/// Parses a Parse body.
pub fn parse_parse(body: &[u8]) -> Result<Parse<'_>, ProtocolError> {
    let mut r = Reader::new(body, "Parse");
    let name = r.cstr("statement name")?;
    let query = r.cstr("query")?;
    let count = usize::from(r.u16("parameter type count")?);
    // Checked before allocating so the count cannot ask for more than the body holds.
    let raw = r.bytes(count * 4, "parameter types")?;
    let param_types = raw
        .chunks_exact(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    r.finish()?;
    Ok(Parse {
        name,
        query,
        param_types,
    })
}

/// Parses a Bind body into its names and the raw remainder, after checking that the remainder
/// is well-formed (format codes, values with lengths that fit, result formats, nothing after).
pub fn parse_bind(body: &[u8]) -> Result<Bind<'_>, ProtocolError> {
    const MSG: &str = "Bind";
    let mut r = Reader::new(body, MSG);
    let portal = r.cstr("portal name")?;
    let statement = r.cstr("statement name")?;
    let rest = r.rest();

    let mut check = Reader::new(rest, MSG);
    let formats = usize::from(check.u16("parameter format count")?);
    check.bytes(formats * 2, "parameter formats")?;
    let params = check.u16("parameter count")?;
    for _ in 0..params {
        let len = check.i32("parameter length")?;
        if len == -1 {
            continue;
        }
        let n = usize::try_from(len).map_err(|_| ProtocolError::InvalidField {
            message: MSG,
            field: "parameter length",
            value: i64::from(len),
        })?;
        check.bytes(n, "parameter value")?;
    }
    let results = usize::from(check.u16("result format count")?);
    check.bytes(results * 2, "result formats")?;
    check.finish()?;
    Ok(Bind {
        portal,
        statement,
        rest,
    })
}

/// Parses a Close body into its kind (`b'S'` statement, `b'P'` portal) and name.
pub fn parse_close(body: &[u8]) -> Result<(u8, &str), ProtocolError> {
    parse_kind_and_name(body, "Close")
}

/// Parses a Describe body into its kind (`b'S'` statement, `b'P'` portal) and name.
pub fn parse_describe(body: &[u8]) -> Result<(u8, &str), ProtocolError> {
    parse_kind_and_name(body, "Describe")
}

fn parse_kind_and_name<'a>(
    body: &'a [u8],
    message: &'static str,
) -> Result<(u8, &'a str), ProtocolError> {
    let mut r = Reader::new(body, message);
    let kind = r.u8("kind")?;
    if kind != b'S' && kind != b'P' {
        return Err(ProtocolError::InvalidField {
            message,
            field: "kind",
            value: i64::from(kind),
        });
    }
    let name = r.cstr("name")?;
    r.finish()?;
    Ok((kind, name))
}

/// Parses an Execute body into the portal name and the row limit (0 = no limit).
pub fn parse_execute(body: &[u8]) -> Result<(&str, i32), ProtocolError> {
    let mut r = Reader::new(body, "Execute");
    let portal = r.cstr("portal name")?;
    let max_rows = r.i32("row limit")?;
    r.finish()?;
    Ok((portal, max_rows))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_message, Message};

    fn only_message(f: impl FnOnce(&mut BytesMut), expected_tag: u8) -> Message {
        let mut buf = BytesMut::new();
        f(&mut buf);
        let msg = decode_message(&mut buf, 1 << 20)
            .expect("valid")
            .expect("complete");
        assert!(buf.is_empty(), "builder wrote exactly one message");
        assert_eq!(msg.tag, expected_tag);
        msg
    }

    #[test]
    fn password_message_round_trips() {
        let msg = only_message(|b| password_message(b, b"md5abcdef"), b'p');
        assert_eq!(&msg.body[..], b"md5abcdef\0");
        assert_eq!(parse_password_message(&msg.body), Ok(&b"md5abcdef"[..]));
        assert_eq!(parse_password_message(b"\0"), Ok(&b""[..]));
        assert!(parse_password_message(b"secret").is_err(), "no NUL");
        assert!(
            parse_password_message(b"sec\0ret\0").is_err(),
            "NUL before the end"
        );
        assert!(parse_password_message(b"").is_err());
    }

    #[test]
    fn sasl_initial_response_round_trips() {
        let first = b"n,,n=,r=rOprNGfwEbeRWgbNEkqO";
        let msg = only_message(|b| sasl_initial_response(b, "SCRAM-SHA-256", first), b'p');
        assert_eq!(
            parse_sasl_initial_response(&msg.body),
            Ok(("SCRAM-SHA-256", &first[..]))
        );
        assert_eq!(
            parse_sasl_initial_response(b"SCRAM-SHA-256\0\xff\xff\xff\xff"),
            Ok(("SCRAM-SHA-256", &b""[..]))
        );
        assert!(
            parse_sasl_initial_response(b"M\0\xff\xff\xff\xfe").is_err(),
            "length -2"
        );
        assert!(
            parse_sasl_initial_response(b"M\0\0\0\0\x05abc").is_err(),
            "short data"
        );
        assert!(
            parse_sasl_initial_response(b"M\0\0\0\0\x01abc").is_err(),
            "trailing data"
        );
        assert!(
            parse_sasl_initial_response(b"M\0\0\0").is_err(),
            "short length"
        );
        assert!(parse_sasl_initial_response(b"M").is_err(), "no NUL");
    }

    #[test]
    fn sasl_response_body_is_the_data() {
        let msg = only_message(|b| sasl_response(b, b"c=biws,r=x,p=y"), b'p');
        assert_eq!(&msg.body[..], b"c=biws,r=x,p=y");
    }

    #[test]
    fn query_round_trips() {
        let msg = only_message(|b| query(b, "select 1"), b'Q');
        assert_eq!(parse_query(&msg.body), Ok("select 1"));
        assert!(parse_query(b"select 1").is_err());
        assert!(parse_query(b"select 1\0\0").is_err());
        assert!(parse_query(b"select \xff\0").is_err());
    }

    #[test]
    fn empty_messages() {
        for (builder, t) in [
            (sync as fn(&mut BytesMut), b'S'),
            (flush, b'H'),
            (terminate, b'X'),
        ] {
            assert!(only_message(builder, t).body.is_empty());
        }
    }

    #[test]
    fn parse_round_trips() {
        let msg = only_message(|b| parse(b, "s1", "select $1::int, $2", &[23, 0]), b'P');
        assert_eq!(
            parse_parse(&msg.body),
            Ok(Parse {
                name: "s1",
                query: "select $1::int, $2",
                param_types: vec![23, 0]
            })
        );
        let unnamed = only_message(|b| parse(b, "", "begin", &[]), b'P');
        assert_eq!(
            parse_parse(&unnamed.body),
            Ok(Parse {
                name: "",
                query: "begin",
                param_types: vec![]
            })
        );
        assert!(
            parse_parse(b"s\0q\0\xff\xff").is_err(),
            "65535 types claimed, none sent"
        );
        assert!(parse_parse(b"s\0q\0\0\x01\0\0\0").is_err(), "short oid");
        assert!(parse_parse(b"s\0q\0\0\0x").is_err(), "trailing");
        assert!(parse_parse(b"s\0q\0").is_err(), "no count");
    }

    #[test]
    fn bind_round_trips_and_renames() {
        let values: [Option<&[u8]>; 3] = [Some(b"42"), None, Some(b"")];
        let msg = only_message(|b| bind(b, "p1", "s1", &[0], &values, &[1, 0]), b'B');
        let parsed = parse_bind(&msg.body).expect("valid");
        assert_eq!((parsed.portal, parsed.statement), ("p1", "s1"));

        let renamed = only_message(
            |b| bind_with_statement(b, parsed.portal, "weir_7", parsed.rest),
            b'B',
        );
        let mut expected = BytesMut::new();
        bind(&mut expected, "p1", "weir_7", &[0], &values, &[1, 0]);
        assert_eq!(&expected[5..], &renamed.body[..]);
        let again = parse_bind(&renamed.body).expect("valid");
        assert_eq!((again.statement, again.rest), ("weir_7", parsed.rest));
    }

    #[test]
    fn bind_rejects_malformed_remainders() {
        let cases: [&[u8]; 7] = [
            b"p\0s\0",                               // nothing after the names
            b"p\0s\0\0\x02\0\0",                     // two formats announced, one sent
            b"p\0s\0\0\0\0\x01\0\0\0\x05ab\0\0",     // value overruns
            b"p\0s\0\0\0\0\x01\xff\xff\xff\xfe\0\0", // length -2
            b"p\0s\0\0\0\0\0",                       // no result format count
            b"p\0s\0\0\0\0\0\0\0x",                  // trailing byte
            b"p\0s",                                 // unterminated statement name
        ];
        for body in cases {
            assert!(parse_bind(body).is_err(), "{body:?}");
        }
        let minimal = parse_bind(b"\0\0\0\0\0\0\0\0").expect("valid");
        assert_eq!(
            (minimal.portal, minimal.statement, minimal.rest.len()),
            ("", "", 6)
        );
    }

    #[test]
    fn describe_and_close_round_trip() {
        let msg = only_message(|b| describe(b, b'S', "s1"), b'D');
        assert_eq!(parse_describe(&msg.body), Ok((b'S', "s1")));
        let msg = only_message(|b| close(b, b'P', ""), b'C');
        assert_eq!(parse_close(&msg.body), Ok((b'P', "")));
        assert!(matches!(
            parse_close(b"Xs1\0"),
            Err(ProtocolError::InvalidField { field: "kind", .. })
        ));
        assert!(parse_describe(b"S").is_err());
        assert!(parse_describe(b"").is_err());
        assert!(parse_describe(b"Ss\0\0").is_err());
    }

    #[test]
    fn execute_round_trips() {
        let msg = only_message(|b| execute(b, "p1", 100), b'E');
        assert_eq!(parse_execute(&msg.body), Ok(("p1", 100)));
        assert!(parse_execute(b"p1\0\0\0").is_err());
        assert!(parse_execute(b"p1\0\0\0\0\0\0").is_err());
    }
}
