//! Startup-phase packets: the untagged `length, code, payload` packets a client sends before
//! anything else (SSLRequest, GSSENCRequest, CancelRequest, StartupMessage).

use bytes::{Buf, BytesMut};

use super::reader::Reader;
use super::ProtocolError;

/// Largest startup-phase packet accepted, length word included (PostgreSQL's
/// `MAX_STARTUP_PACKET_LENGTH`); it keeps an unauthenticated peer from making us buffer much.
pub const MAX_STARTUP_PACKET_LEN: usize = 10_000;

/// Newest minor version of protocol 3 this codec speaks. Clients asking for more get a
/// NegotiateProtocolVersion naming this one (see [`Startup::needs_negotiation`]).
pub const NEWEST_MINOR_VERSION: u16 = 0;

/// Request codes sit where a protocol version would, with major version 1234.
const SSL_REQUEST_CODE: u32 = (1234 << 16) | 5679;
const GSSENC_REQUEST_CODE: u32 = (1234 << 16) | 5680;
const CANCEL_REQUEST_CODE: u32 = (1234 << 16) | 5678;

/// Options with this prefix are protocol-level extensions rather than server settings.
const PROTOCOL_OPTION_PREFIX: &str = "_pq_.";

/// One decoded startup-phase packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Startup {
    /// The client asks to switch to TLS; answer a single byte, `S` or `N`.
    SslRequest,
    /// The client asks for GSSAPI encryption; answer `G` or `N`.
    GssEncRequest,
    /// Cancel the query running on the session identified by this key; nothing is answered.
    Cancel {
        /// Process id from the BackendKeyData the client was given.
        process_id: i32,
        /// Secret key from that BackendKeyData.
        secret_key: i32,
    },
    /// A StartupMessage opening a session with protocol 3.`minor`.
    Startup {
        /// Always 3; other majors are rejected while decoding.
        major: u16,
        /// Requested minor version; anything above [`NEWEST_MINOR_VERSION`] is accepted and
        /// answered with NegotiateProtocolVersion.
        minor: u16,
        /// The session parameters (`user`, `database`, settings...).
        params: StartupParams,
    },
}

impl Startup {
    /// Whether a StartupMessage must be answered with NegotiateProtocolVersion before
    /// authentication, as PostgreSQL does: the client asked for a newer minor version than
    /// [`NEWEST_MINOR_VERSION`] or for `_pq_.` protocol options that are not supported.
    pub fn needs_negotiation(&self) -> bool {
        match self {
            Startup::Startup { minor, params, .. } => {
                *minor > NEWEST_MINOR_VERSION || !params.protocol_options().is_empty()
            }
            _ => false,
        }
    }
}

/// The name/value pairs of a StartupMessage, in the order the client sent them.
///
/// Built only by [`decode_startup`], which guarantees a non-empty `user`. Protocol options
/// (`_pq_.*`) are kept apart because they are not settings to forward to a server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StartupParams {
    pairs: Vec<(String, String)>,
    protocol_options: Vec<String>,
}

impl StartupParams {
    /// The value of parameter `name`. When a client repeats a name the last value wins, as in
    /// PostgreSQL.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// All pairs in arrival order, repeats included, protocol options excluded.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + '_ {
        self.pairs.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// The role to log in as; never empty once decoded.
    pub fn user(&self) -> &str {
        self.get("user").unwrap_or_default()
    }

    /// The database to connect to; when absent or empty it defaults to the user name, as in
    /// PostgreSQL.
    pub fn database(&self) -> &str {
        match self.get("database") {
            Some(db) if !db.is_empty() => db,
            _ => self.user(),
        }
    }

    /// Names of the `_pq_.` protocol options the client requested, none of which this codec
    /// implements; they belong in the NegotiateProtocolVersion reply.
    pub fn protocol_options(&self) -> &[String] {
        &self.protocol_options
    }
}

/// Decodes one startup-phase packet from the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. The length word is checked as soon as it
/// arrives, so an absurd length fails immediately. The packet is consumed only when it decodes
/// successfully; on error the caller answers with [`ProtocolError::to_pg_error`] and closes.
/// A StartupMessage with major version 3 and any minor version is accepted (see
/// [`Startup::needs_negotiation`]); it must end with a NUL after its last pair and name a
/// non-empty `user`, and all names and values must be UTF-8.
pub fn decode_startup(buf: &mut BytesMut) -> Result<Option<Startup>, ProtocolError> {
    let Some(len_word) = buf.get(..4) else {
        return Ok(None);
    };
    let declared = i32::from_be_bytes([len_word[0], len_word[1], len_word[2], len_word[3]]);
    let len = match usize::try_from(declared) {
        Ok(len) if (8..=MAX_STARTUP_PACKET_LEN).contains(&len) => len,
        _ => return Err(ProtocolError::InvalidStartupLength(declared)),
    };
    let Some(packet) = buf.get(4..len) else {
        return Ok(None);
    };
    let startup = parse_packet(packet, declared)?;
    buf.advance(len);
    Ok(Some(startup))
}

/// Parses a complete packet after its length word; `declared` is that word.
fn parse_packet(packet: &[u8], declared: i32) -> Result<Startup, ProtocolError> {
    let mut r = Reader::new(packet, "startup");
    let code = r.u32("protocol version")?;
    let fixed_len = |expected: i32| {
        if declared == expected {
            Ok(())
        } else {
            Err(ProtocolError::InvalidStartupLength(declared))
        }
    };
    match code {
        SSL_REQUEST_CODE => fixed_len(8).map(|()| Startup::SslRequest),
        GSSENC_REQUEST_CODE => fixed_len(8).map(|()| Startup::GssEncRequest),
        CANCEL_REQUEST_CODE => {
            fixed_len(16)?;
            let process_id = r.i32("process id")?;
            let secret_key = r.i32("secret key")?;
            Ok(Startup::Cancel {
                process_id,
                secret_key,
            })
        }
        _ => {
            let (major, minor) = ((code >> 16) as u16, (code & 0xffff) as u16);
            if major != 3 {
                return Err(ProtocolError::UnsupportedVersion { major, minor });
            }
            let params = parse_params(r)?;
            Ok(Startup::Startup {
                major,
                minor,
                params,
            })
        }
    }
}

/// Parses `name\0value\0 ... \0`, requiring the final NUL to be the packet's last byte.
fn parse_params(mut r: Reader<'_>) -> Result<StartupParams, ProtocolError> {
    let mut params = StartupParams::default();
    loop {
        if r.remaining() == 0 {
            return Err(ProtocolError::InvalidStartupLayout(
                "expected terminator as last byte",
            ));
        }
        let name = r.cbytes("parameter name").map_err(|_| {
            ProtocolError::InvalidStartupLayout("parameter name lacks its NUL terminator")
        })?;
        if name.is_empty() {
            break;
        }
        let value = r.cbytes("parameter value").map_err(|_| {
            ProtocolError::InvalidStartupLayout("parameter value missing or unterminated")
        })?;
        let name = utf8(name, "parameter name")?;
        let value = utf8(value, "parameter value")?;
        if name.starts_with(PROTOCOL_OPTION_PREFIX) {
            params.protocol_options.push(name.to_owned());
        } else {
            params.pairs.push((name.to_owned(), value.to_owned()));
        }
    }
    if r.remaining() != 0 {
        return Err(ProtocolError::InvalidStartupLayout(
            "expected terminator as last byte",
        ));
    }
    if params.get("user").is_none_or(str::is_empty) {
        return Err(ProtocolError::MissingUser);
    }
    Ok(params)
}

fn utf8<'a>(raw: &'a [u8], field: &'static str) -> Result<&'a str, ProtocolError> {
    std::str::from_utf8(raw).map_err(|_| ProtocolError::InvalidUtf8 {
        message: "startup",
        field,
    })
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;
    use crate::protocol::frontend;

    /// Frames a startup packet by hand: length word, code, payload.
    fn packet(code: u32, payload: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        buf.put_i32((8 + payload.len()) as i32);
        buf.put_u32(code);
        buf.put_slice(payload);
        buf
    }

    fn decode_one(mut buf: BytesMut) -> Result<Option<Startup>, ProtocolError> {
        let out = decode_startup(&mut buf);
        if matches!(out, Ok(Some(_))) {
            assert!(buf.is_empty(), "whole packet consumed");
        }
        out
    }

    fn params_of(startup: Startup) -> (u16, StartupParams) {
        match startup {
            Startup::Startup {
                major: 3,
                minor,
                params,
            } => (minor, params),
            other => panic!("expected a StartupMessage, got {other:?}"),
        }
    }

    #[test]
    fn ssl_and_gssenc_requests() {
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        assert_eq!(&buf[..], &[0, 0, 0, 8, 4, 210, 22, 47]);
        assert_eq!(decode_one(buf), Ok(Some(Startup::SslRequest)));
        assert_eq!(
            decode_one(packet(GSSENC_REQUEST_CODE, b"")),
            Ok(Some(Startup::GssEncRequest))
        );
        assert_eq!(
            decode_one(packet(SSL_REQUEST_CODE, b"xx")),
            Err(ProtocolError::InvalidStartupLength(10))
        );
    }

    #[test]
    fn cancel_request() {
        let mut buf = BytesMut::new();
        frontend::cancel_request(&mut buf, 4242, -7);
        assert_eq!(
            decode_one(buf),
            Ok(Some(Startup::Cancel {
                process_id: 4242,
                secret_key: -7
            }))
        );
        // Protocol 3.2 allows longer keys; this codec negotiates 3.0, where the key is 4 bytes.
        assert_eq!(
            decode_one(packet(CANCEL_REQUEST_CODE, &[0; 12])),
            Err(ProtocolError::InvalidStartupLength(20))
        );
        assert_eq!(
            decode_one(packet(CANCEL_REQUEST_CODE, &[0; 4])),
            Err(ProtocolError::InvalidStartupLength(12))
        );
    }

    #[test]
    fn protocol_3_0_startup_round_trips() {
        let mut buf = BytesMut::new();
        frontend::startup_message(
            &mut buf,
            &[
                ("user", "alice"),
                ("database", "shop"),
                ("application_name", "psql"),
            ],
        );
        let (minor, params) = params_of(decode_one(buf).expect("valid").expect("complete"));
        assert_eq!(minor, 0);
        assert_eq!(params.user(), "alice");
        assert_eq!(params.database(), "shop");
        assert_eq!(params.get("application_name"), Some("psql"));
        assert_eq!(params.get("missing"), None);
        let pairs: Vec<_> = params.iter().collect();
        assert_eq!(
            pairs,
            [
                ("user", "alice"),
                ("database", "shop"),
                ("application_name", "psql")
            ]
        );
        assert!(params.protocol_options().is_empty());
    }

    #[test]
    fn protocol_3_2_is_accepted_and_flagged_for_negotiation() {
        let payload = b"user\0bob\0_pq_.compression\0on\0\0";
        let startup = decode_one(packet((3 << 16) | 2, payload))
            .expect("valid")
            .expect("complete");
        assert!(startup.needs_negotiation());
        let (minor, params) = params_of(startup);
        assert_eq!(minor, 2);
        assert_eq!(params.protocol_options(), ["_pq_.compression"]);
        assert_eq!(params.get("_pq_.compression"), None);
        assert_eq!(params.database(), "bob", "database defaults to user");
    }

    #[test]
    fn plain_3_0_needs_no_negotiation() {
        let startup = decode_one(packet(3 << 16, b"user\0u\0\0"))
            .expect("valid")
            .expect("complete");
        assert!(!startup.needs_negotiation());
        assert!(!Startup::SslRequest.needs_negotiation());
    }

    #[test]
    fn other_major_versions_are_rejected() {
        let err = decode_one(packet(2 << 16, b"user\0u\0\0")).expect_err("2.0");
        assert_eq!(
            err,
            ProtocolError::UnsupportedVersion { major: 2, minor: 0 }
        );
        assert_eq!(err.sqlstate(), "0A000");
        assert_eq!(
            decode_one(packet((4 << 16) | 1, b"user\0u\0\0")),
            Err(ProtocolError::UnsupportedVersion { major: 4, minor: 1 })
        );
        // An unknown 1234.x request code is just another unsupported version.
        assert_eq!(
            decode_one(packet((1234 << 16) | 9999, b"")),
            Err(ProtocolError::UnsupportedVersion {
                major: 1234,
                minor: 9999
            })
        );
    }

    #[test]
    fn absurd_lengths_fail_on_the_length_word_alone() {
        for len in [0i32, 3, 7, 10_001, i32::MAX, -1, i32::MIN] {
            let mut buf = BytesMut::new();
            buf.put_i32(len);
            let err = decode_startup(&mut buf).expect_err("bad length");
            assert_eq!(err, ProtocolError::InvalidStartupLength(len));
            assert_eq!(err.sqlstate(), "08P01");
            assert_eq!(buf.len(), 4, "nothing consumed");
        }
    }

    #[test]
    fn the_limit_itself_is_accepted() {
        let filler = "x".repeat(MAX_STARTUP_PACKET_LEN - 8 - "user\0u\0a\0\0\0".len());
        let payload = format!("user\0u\0a\0{filler}\0\0");
        let buf = packet(3 << 16, payload.as_bytes());
        assert_eq!(buf.len(), MAX_STARTUP_PACKET_LEN);
        let (_, params) = params_of(decode_one(buf).expect("valid").expect("complete"));
        assert_eq!(params.get("a").map(str::len), Some(filler.len()));
    }

    #[test]
    fn truncated_packets_wait_for_more() {
        let mut full = BytesMut::new();
        frontend::startup_message(&mut full, &[("user", "alice")]);
        for cut in 0..full.len() {
            let mut buf = BytesMut::from(&full[..cut]);
            assert_eq!(decode_startup(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut);
        }
    }

    #[test]
    fn leaves_following_bytes_alone() {
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        buf.put_slice(b"\x16\x03\x01");
        assert_eq!(decode_startup(&mut buf), Ok(Some(Startup::SslRequest)));
        assert_eq!(&buf[..], b"\x16\x03\x01");
    }

    #[test]
    fn missing_user_is_rejected() {
        for payload in [&b"database\0db\0\0"[..], b"user\0\0\0"] {
            let err = decode_one(packet(3 << 16, payload)).expect_err("no user");
            assert_eq!(err, ProtocolError::MissingUser);
            assert_eq!(err.sqlstate(), "28000");
        }
    }

    #[test]
    fn layout_errors() {
        let cases: [&[u8]; 6] = [
            b"",                       // no terminator at all
            b"user\0alice\0",          // pairs without the final NUL
            b"user\0alice",            // unterminated value
            b"user",                   // unterminated name
            b"user\0",                 // name without value
            b"user\0alice\0\0garbage", // bytes after the terminator
        ];
        for payload in cases {
            assert!(
                matches!(
                    decode_one(packet(3 << 16, payload)),
                    Err(ProtocolError::InvalidStartupLayout(_))
                ),
                "payload {payload:?}"
            );
        }
    }

    #[test]
    fn non_utf8_is_rejected() {
        assert_eq!(
            decode_one(packet(3 << 16, b"user\0\xff\0\0")),
            Err(ProtocolError::InvalidUtf8 {
                message: "startup",
                field: "parameter value"
            })
        );
        assert_eq!(
            decode_one(packet(3 << 16, b"\xc3(\0x\0user\0u\0\0")),
            Err(ProtocolError::InvalidUtf8 {
                message: "startup",
                field: "parameter name"
            })
        );
    }

    #[test]
    fn repeated_names_last_wins_and_empty_database_defaults() {
        let payload = b"user\0a\0user\0b\0database\0\0\0";
        let (_, params) = params_of(
            decode_one(packet(3 << 16, payload))
                .expect("valid")
                .expect("complete"),
        );
        assert_eq!(params.user(), "b");
        assert_eq!(params.database(), "b");
        assert_eq!(params.iter().count(), 3);
    }
}
