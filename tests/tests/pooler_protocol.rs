//! Malformed and unusual input on weir's client port, sent over raw TCP sockets: broken
//! startup packets, absurd lengths, old protocol versions, encryption requests, garbage after
//! login and a crowd of connections sending random bytes.
//!
//! Each case checks what weir answers (the ErrorResponse's SQLSTATE, read from the bytes) and
//! that it closes the connection, and then that weir is still running and serves a normal
//! client. The fixtures use `auth_type = trust`, so a raw startup packet is answered with
//! AuthenticationOk at once and no SCRAM exchange has to be spoken by hand.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weir_tests::fixture::{scalar, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;
use weir_tests::tokio_postgres::tls::{NoTlsStream, TlsConnect};

/// Bound on every read from weir; it answers in milliseconds, so this only catches hangs.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// The request codes that sit where a protocol version would.
const SSL_REQUEST: u32 = 80_877_103;
const GSSENC_REQUEST: u32 = 80_877_104;
const CANCEL_REQUEST: u32 = 80_877_102;

/// Protocol version 3.0.
const PROTOCOL_3_0: u32 = 0x0003_0000;

/// A weir accepting the application user with `auth_type = trust`.
async fn trusting(opts: Options) -> Fixture {
    Fixture::start(Options {
        auth_type: "trust",
        ..opts
    })
    .await
    .expect("starting PostgreSQL and weir")
}

/// A startup-phase packet: length word, `code`, then `payload`.
fn packet(code: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(8 + payload.len()).expect("a small packet");
    let mut out = Vec::new();
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A StartupMessage for protocol `version` with the given parameters.
fn startup(version: u32, params: &[(&str, &str)]) -> Vec<u8> {
    let mut payload = Vec::new();
    for (name, value) in params {
        payload.extend_from_slice(name.as_bytes());
        payload.push(0);
        payload.extend_from_slice(value.as_bytes());
        payload.push(0);
    }
    payload.push(0);
    packet(version, &payload)
}

/// The StartupMessage of the application user for its database.
fn app_startup() -> Vec<u8> {
    startup(PROTOCOL_3_0, &[("user", USER), ("database", DATABASE)])
}

/// A regular message: tag, length word, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(4 + body.len()).expect("a small message");
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple Query message.
fn query(sql: &str) -> Vec<u8> {
    let mut body = sql.as_bytes().to_vec();
    body.push(0);
    message(b'Q', &body)
}

async fn connect(f: &Fixture) -> TcpStream {
    TcpStream::connect((net::HOST, f.weir.port()))
        .await
        .expect("connecting to weir")
}

async fn send(stream: &mut TcpStream, bytes: &[u8]) {
    stream.write_all(bytes).await.expect("sending to weir");
}

/// Reads exactly `buf.len()` bytes; false at a clean end of stream or a reset (weir closing
/// while unread input remains makes the kernel answer with a reset).
async fn read_fully(stream: &mut TcpStream, buf: &mut [u8]) -> bool {
    match tokio::time::timeout(READ_LIMIT, stream.read_exact(buf)).await {
        Err(_) => panic!("weir sent nothing within {READ_LIMIT:?}"),
        Ok(Ok(_)) => true,
        Ok(Err(e))
            if matches!(
                e.kind(),
                io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
            ) =>
        {
            false
        }
        Ok(Err(e)) => panic!("reading from weir: {e}"),
    }
}

/// The next message from weir, or `None` once it closed the connection.
async fn next_message(stream: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut header = [0u8; 5];
    if !read_fully(stream, &mut header).await {
        return None;
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let mut body = vec![0; len as usize - 4];
    assert!(
        read_fully(stream, &mut body).await,
        "weir cut a message short"
    );
    Some((header[0], body))
}

/// A single-byte answer to an encryption request.
async fn next_byte(stream: &mut TcpStream) -> u8 {
    let mut byte = [0u8; 1];
    assert!(
        read_fully(stream, &mut byte).await,
        "closed instead of answering"
    );
    byte[0]
}

/// Field `field` of an ErrorResponse body.
fn error_field(body: &[u8], field: u8) -> Option<String> {
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        if kind == field {
            return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
        }
        rest = &tail[end + 1..];
    }
    None
}

/// Expects an ErrorResponse followed by the end of the connection; returns (SQLSTATE,
/// message).
async fn expect_error_and_close(stream: &mut TcpStream) -> (String, String) {
    let (tag, body) = next_message(stream)
        .await
        .expect("weir closed the connection without an ErrorResponse");
    assert_eq!(
        char::from(tag),
        'E',
        "expected an ErrorResponse, got {:?}",
        String::from_utf8_lossy(&body)
    );
    assert_eq!(error_field(&body, b'V').as_deref(), Some("FATAL"));
    let code = error_field(&body, b'C').expect("an ErrorResponse without a SQLSTATE");
    let text = error_field(&body, b'M').unwrap_or_default();
    assert_closed(stream).await;
    (code, text)
}

/// Expects weir to close the connection without sending anything (more).
async fn assert_closed(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    match tokio::time::timeout(READ_LIMIT, stream.read_to_end(&mut rest)).await {
        Err(_) => panic!("weir kept the connection open"),
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => panic!("reading from weir: {e}"),
    }
    assert!(rest.is_empty(), "unexpected bytes before close: {rest:?}");
}

/// Reads the rest of a login (or a query's answer) up to ReadyForQuery; returns the message
/// tags seen and the text of every DataRow's first column.
async fn until_ready(stream: &mut TcpStream) -> (Vec<u8>, Vec<String>) {
    let mut tags = Vec::new();
    let mut values = Vec::new();
    loop {
        let (tag, body) = next_message(stream)
            .await
            .expect("weir closed the connection");
        assert_ne!(
            tag,
            b'E',
            "unexpected error: {:?}",
            error_field(&body, b'M')
        );
        tags.push(tag);
        if tag == b'D' {
            // Column count (2 bytes), then the first column's length and bytes.
            let len = i32::from_be_bytes([body[2], body[3], body[4], body[5]]);
            let len = usize::try_from(len).expect("a non-NULL column");
            values.push(String::from_utf8_lossy(&body[6..6 + len]).into_owned());
        }
        if tag == b'Z' {
            return (tags, values);
        }
    }
}

/// Expects the answer to a trust login: AuthenticationOk first, then up to ReadyForQuery.
async fn expect_login(stream: &mut TcpStream) {
    let (tag, body) = next_message(stream).await.expect("closed during login");
    assert_eq!(char::from(tag), 'R', "{:?}", error_field(&body, b'M'));
    assert_eq!(body, 0u32.to_be_bytes(), "not AuthenticationOk");
    let (tags, _) = until_ready(stream).await;
    assert!(tags.contains(&b'K'), "no BackendKeyData in {tags:?}");
}

/// Runs `sql` on a logged-in raw connection and returns the first column of its rows.
async fn raw_query(stream: &mut TcpStream, sql: &str) -> Vec<String> {
    send(stream, &query(sql)).await;
    until_ready(stream).await.1
}

/// A raw connection logged in as the application user.
async fn raw_login(f: &Fixture) -> TcpStream {
    let mut stream = connect(f).await;
    send(&mut stream, &app_startup()).await;
    expect_login(&mut stream).await;
    stream
}

/// Weir is still running and a normal client gets its answer.
async fn assert_healthy(f: &mut Fixture) {
    assert_eq!(
        f.weir
            .wait_exit(Duration::from_millis(50))
            .await
            .expect("weir ended abnormally"),
        None,
        "weir exited; log:\n{}",
        f.weir.log()
    );
    let client = f.client().await.expect("a normal client logs in");
    assert_eq!(scalar(&client, "SELECT 1").await, "1");
}

#[tokio::test]
async fn a_truncated_startup_packet_then_close() {
    let mut f = trusting(Options::default()).await;
    let mut stream = connect(&f).await;
    let whole = app_startup();
    send(&mut stream, &whole[..whole.len() / 2]).await;
    stream.shutdown().await.unwrap();
    // Nothing to answer: the client is gone before it finished asking.
    assert_closed(&mut stream).await;
    assert_healthy(&mut f).await;

    // Only the length word, then silence on a still-open socket: weir waits for the rest,
    // and a whole packet afterwards still logs in.
    let mut stream = connect(&f).await;
    send(&mut stream, &whole[..4]).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&mut stream, &whole[4..]).await;
    expect_login(&mut stream).await;
    assert_eq!(
        raw_query(&mut stream, "SELECT 'patient'").await,
        ["patient"]
    );
    assert_healthy(&mut f).await;
}

#[tokio::test]
async fn absurd_startup_lengths_are_protocol_violations() {
    let mut f = trusting(Options::default()).await;
    for len in [0xFFFF_FFFFu32, 0x7FFF_FFFF, 3, 0, 10_001] {
        let mut stream = connect(&f).await;
        send(&mut stream, &len.to_be_bytes()).await;
        let (code, text) = expect_error_and_close(&mut stream).await;
        assert_eq!(code, "08P01", "length {len:#x}: {text}");
        assert!(text.contains("startup packet"), "{text}");
        assert_healthy(&mut f).await;
    }
}

#[tokio::test]
async fn protocol_version_2_is_not_supported() {
    let mut f = trusting(Options::default()).await;
    let mut stream = connect(&f).await;
    send(
        &mut stream,
        &startup(0x0002_0000, &[("user", USER), ("database", DATABASE)]),
    )
    .await;
    let (code, text) = expect_error_and_close(&mut stream).await;
    assert_eq!(code, "0A000", "{text}");
    assert!(text.contains("2.0"), "{text}");
    assert_healthy(&mut f).await;
}

#[tokio::test]
async fn a_newer_minor_version_is_negotiated_down() {
    let mut f = trusting(Options::default()).await;
    let mut stream = connect(&f).await;
    let params = [
        ("user", USER),
        ("database", DATABASE),
        ("_pq_.made_up_option", "on"),
    ];
    send(&mut stream, &startup(0x0003_0005, &params)).await;
    let (tag, body) = next_message(&mut stream).await.expect("closed");
    assert_eq!(char::from(tag), 'v', "expected NegotiateProtocolVersion");
    // The newest version supported (3.0, encoded as PostgreSQL does, major in the high half),
    // then the unsupported options by name.
    assert_eq!(&body[..4], &PROTOCOL_3_0.to_be_bytes());
    assert_eq!(&body[4..8], &1u32.to_be_bytes());
    assert_eq!(&body[8..], b"_pq_.made_up_option\0");
    expect_login(&mut stream).await;
    assert_eq!(
        raw_query(&mut stream, "SELECT 'negotiated'").await,
        ["negotiated"]
    );
    assert_healthy(&mut f).await;
}

#[tokio::test]
async fn startup_refusals_name_the_problem() {
    let mut f = trusting(Options::default()).await;
    let cases: [(&[(&str, &str)], &str); 4] = [
        (&[("database", DATABASE)], "28000"),
        (&[("user", USER), ("database", "no_such_db")], "3D000"),
        (&[("user", "mallory"), ("database", DATABASE)], "28P01"),
        (
            &[("user", USER), ("database", DATABASE), ("made_up", "1")],
            "08P01",
        ),
    ];
    for (params, expected) in cases {
        let mut stream = connect(&f).await;
        send(&mut stream, &startup(PROTOCOL_3_0, params)).await;
        let (code, text) = expect_error_and_close(&mut stream).await;
        assert_eq!(code, expected, "{params:?}: {text}");
    }
    assert_eq!(f.server_connections().await.unwrap(), 0);
    assert_healthy(&mut f).await;
}

/// A driver that pipelines its first queries behind the startup packet, far more than the
/// sockets hold, and reads only once all is written: weir's refusal must not reset the
/// connection under the write, and the FATAL must come before an orderly end of the stream.
#[tokio::test]
async fn a_refused_client_still_writing_gets_its_error_and_an_orderly_close() {
    let mut f = trusting(Options::default()).await;
    let (mut reader, mut writer) = connect(&f).await.into_split();
    let mut batch = startup(PROTOCOL_3_0, &[("user", USER), ("database", "no_such_db")]);
    let big = query(&format!("SELECT '{}'", "x".repeat(1 << 20)));
    for _ in 0..8 {
        batch.extend_from_slice(&big);
    }
    let written = tokio::time::timeout(READ_LIMIT, writer.write_all(&batch))
        .await
        .expect("weir neither took nor refused the batch");
    let mut received = Vec::new();
    let end = tokio::time::timeout(READ_LIMIT, reader.read_to_end(&mut received))
        .await
        .expect("weir kept the connection open");
    let replies = weir_tests::raw::replies(&received);
    let codes: Vec<_> = replies.iter().map(|r| r.error_field(b'C')).collect();
    assert!(
        written.is_ok(),
        "the write failed: {written:?}; received {codes:?}"
    );
    assert!(end.is_ok(), "the connection was reset, not closed: {end:?}");
    assert_eq!(codes, [Some("3D000".to_owned())]);
    drop(writer);
    assert_healthy(&mut f).await;
}

#[tokio::test]
async fn a_cancel_request_with_an_unknown_key_is_dropped_silently() {
    let mut f = trusting(Options::default()).await;
    let mut stream = connect(&f).await;
    let mut key = Vec::new();
    key.extend_from_slice(&12345i32.to_be_bytes());
    key.extend_from_slice(&67890i32.to_be_bytes());
    send(&mut stream, &packet(CANCEL_REQUEST, &key)).await;
    assert_closed(&mut stream).await;
    assert_healthy(&mut f).await;
}

#[tokio::test]
async fn encryption_requests_are_declined_and_login_goes_on() {
    let mut f = trusting(Options::default()).await;

    let mut stream = connect(&f).await;
    send(&mut stream, &packet(SSL_REQUEST, &[])).await;
    assert_eq!(char::from(next_byte(&mut stream).await), 'N');
    send(&mut stream, &app_startup()).await;
    expect_login(&mut stream).await;
    assert_eq!(raw_query(&mut stream, "SELECT 40 + 2").await, ["42"]);

    let mut stream = connect(&f).await;
    send(&mut stream, &packet(GSSENC_REQUEST, &[])).await;
    assert_eq!(char::from(next_byte(&mut stream).await), 'N');
    send(&mut stream, &app_startup()).await;
    expect_login(&mut stream).await;
    assert_eq!(
        raw_query(&mut stream, "SELECT 'gss declined'").await,
        ["gss declined"]
    );

    // libpq's order when both are wanted: GSS first, then TLS, then the startup packet.
    let mut stream = connect(&f).await;
    send(&mut stream, &packet(GSSENC_REQUEST, &[])).await;
    assert_eq!(char::from(next_byte(&mut stream).await), 'N');
    send(&mut stream, &packet(SSL_REQUEST, &[])).await;
    assert_eq!(char::from(next_byte(&mut stream).await), 'N');
    send(&mut stream, &app_startup()).await;
    expect_login(&mut stream).await;

    assert_healthy(&mut f).await;
}

#[tokio::test]
async fn bytes_sent_before_the_answer_to_an_ssl_request_are_refused() {
    let mut f = trusting(Options::default()).await;
    let mut stream = connect(&f).await;
    // One write: the startup packet rides along with the request instead of waiting for 'N'.
    let mut bytes = packet(SSL_REQUEST, &[]);
    bytes.extend_from_slice(&app_startup());
    send(&mut stream, &bytes).await;
    let (code, text) = expect_error_and_close(&mut stream).await;
    assert_eq!(code, "08P01", "{text}");
    assert_healthy(&mut f).await;
}

/// A TLS connector that is willing to ask for TLS but can never complete a handshake, so the
/// driver sends SSLRequest (sslmode=prefer) and carries on in the clear when told 'N'.
struct WouldLikeTls;

/// The handshake that never happens.
struct NoHandshake;

impl Future for NoHandshake {
    type Output = Result<NoTlsStream, io::Error>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(Err(io::Error::other("this client has no TLS")))
    }
}

impl<S> TlsConnect<S> for WouldLikeTls {
    type Stream = NoTlsStream;
    type Error = io::Error;
    type Future = NoHandshake;

    fn connect(self, _: S) -> NoHandshake {
        NoHandshake
    }
}

#[tokio::test]
async fn a_driver_preferring_tls_falls_back_to_plain_text() {
    let mut f = trusting(Options::default()).await;
    let config = net::client_config(f.weir.port(), USER, PASSWORD, DATABASE);
    let socket = connect(&f).await;
    let (client, connection) = config.connect_raw(socket, WouldLikeTls).await.unwrap();
    tokio::spawn(async move {
        let _ = connection.await;
    });
    assert_eq!(
        scalar(&client, "SELECT 'in the clear'").await,
        "in the clear"
    );
    assert_healthy(&mut f).await;
}

#[tokio::test]
async fn garbage_after_login_is_a_protocol_violation() {
    let mut f = trusting(Options::default()).await;
    let mut stream = raw_login(&f).await;
    send(&mut stream, &[0xff; 16]).await;
    let (code, text) = expect_error_and_close(&mut stream).await;
    assert_eq!(code, "08P01", "{text}");
    assert_healthy(&mut f).await;

    // The same after a query has already been served on the connection.
    let mut stream = raw_login(&f).await;
    assert_eq!(raw_query(&mut stream, "SELECT 'first'").await, ["first"]);
    send(&mut stream, &[b'Q', 0, 0, 0, 2]).await;
    let (code, text) = expect_error_and_close(&mut stream).await;
    assert_eq!(code, "08P01", "{text}");
    assert_healthy(&mut f).await;
}

#[tokio::test]
async fn a_message_above_max_packet_size_is_a_protocol_violation() {
    let mut f = trusting(Options::default().with("max_packet_size = 65536")).await;

    // Just under the limit passes through.
    let mut stream = raw_login(&f).await;
    let filler = "x".repeat(60_000);
    let rows = raw_query(&mut stream, &format!("SELECT length('{filler}')")).await;
    assert_eq!(rows, ["60000"]);

    // Over it, whether the length is huge or merely too big, the client is cut off with the
    // SQLSTATE PostgreSQL uses for an invalid message length.
    for len in [0x7FFF_FFFFu32, 100_000] {
        let mut stream = raw_login(&f).await;
        let mut bytes = vec![b'Q'];
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(b"SELECT 1");
        send(&mut stream, &bytes).await;
        let (code, text) = expect_error_and_close(&mut stream).await;
        assert_eq!(code, "08P01", "length {len}: {text}");
        assert_healthy(&mut f).await;
    }
}

#[tokio::test]
async fn a_huge_message_length_under_the_default_limit_ends_the_session() {
    let mut f = trusting(Options::default()).await;
    let mut stream = raw_login(&f).await;
    let mut bytes = vec![b'Q'];
    bytes.extend_from_slice(&0x7FFF_FFFFu32.to_be_bytes());
    bytes.extend_from_slice(b"SELECT 1");
    send(&mut stream, &bytes).await;
    // Whoever notices first (weir, or PostgreSQL refusing a message over 1 GB), the client
    // is told with a connection-class error and the connection ends.
    let (code, text) = expect_error_and_close(&mut stream).await;
    assert_eq!(&code[..2], "08", "{code}: {text}");
    assert_healthy(&mut f).await;
}

/// A small deterministic generator (xorshift64*), so a failing case can be replayed.
struct Noise(u64);

impl Noise {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next().to_be_bytes()[0]).collect()
    }
}

#[tokio::test]
async fn a_hundred_connections_sending_random_bytes() {
    let mut f = trusting(Options::default()).await;
    let port = f.weir.port();

    let mut storm = tokio::task::JoinSet::new();
    for seed in 1..=100u64 {
        storm.spawn(async move {
            let mut noise = Noise(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15));
            let len = 16 + usize::try_from(noise.next() % 240).unwrap();
            let bytes = noise.bytes(len);
            let mut stream = TcpStream::connect((net::HOST, port)).await.unwrap();
            send(&mut stream, &bytes).await;
            stream.shutdown().await.unwrap();
            let first = next_message(&mut stream).await;
            if first.is_some() {
                // Whatever weir said, it said it once and hung up.
                assert_closed(&mut stream).await;
            }
            (seed, bytes, first)
        });
    }
    // A normal client is served throughout.
    let client = f.client().await.unwrap();
    for i in 0..20 {
        assert_eq!(scalar(&client, &format!("SELECT {i}")).await, i.to_string());
    }

    let mut refused = 0;
    while let Some(joined) = storm.join_next().await {
        let (seed, bytes, first) = joined.unwrap();
        let declared = i32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        let plausible = (8..=10_000).contains(&declared);
        match first {
            Some((b'E', body)) => {
                let code = error_field(&body, b'C').unwrap_or_default();
                assert!(
                    code == "08P01" || plausible,
                    "seed {seed}: SQLSTATE {code} for {bytes:02x?}"
                );
                refused += 1;
            }
            // A length weir could believe makes it wait for the rest, then see the close.
            None => assert!(plausible, "seed {seed}: closed without an error"),
            Some((tag, _)) => panic!("seed {seed}: unexpected message {tag:#x} for {bytes:02x?}"),
        }
    }
    assert!(refused >= 95, "only {refused} connections were refused");
    assert_healthy(&mut f).await;
}
