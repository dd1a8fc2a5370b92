//! One decode path over arbitrary bytes, shared by the fuzz target and the randomized unit
//! test so both exercise exactly the same code.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};

use super::backend::{self, Authentication};
use super::frontend;
use super::{decode_message, decode_startup, peek_header, Message, Startup, HEADER_LEN};

/// Frame limit used by the harness: small, so the oversize path is reached often.
const HARNESS_MAX_LEN: usize = 64 * 1024;

/// Feeds `data` through the decoders as a connection would: startup packets first (an
/// encryption request may precede the real one), then regular messages until the bytes run
/// out or an error would close the connection. Every body also goes through every `parse_*`
/// function regardless of its tag, to reach each parser with hostile input.
///
/// Whatever a parser accepts is rebuilt with the matching builder and must reproduce the
/// original bytes; `Err` names the first codec that did not. Returns the number of regular
/// messages framed. It never panics, whatever `data` holds: that is what fuzzing checks.
pub fn exercise_decoders(data: &[u8]) -> Result<usize, &'static str> {
    let mut buf = BytesMut::from(data);
    let mut started = false;
    // At most an SSLRequest and a GSSENCRequest may precede the packet that starts the session.
    for _ in 0..3 {
        let before = buf.clone().freeze();
        let Ok(Some(startup)) = decode_startup(&mut buf) else {
            break;
        };
        check_startup(&startup, &before[..before.len() - buf.len()])?;
        if !matches!(startup, Startup::SslRequest | Startup::GssEncRequest) {
            started = true;
            break;
        }
    }
    // Without a valid startup packet, treat the input as a stream of regular messages instead
    // so the framing and parsers are reached either way.
    if !started {
        buf = BytesMut::from(data);
    }
    let mut framed = 0;
    loop {
        let header = peek_header(&buf, HARNESS_MAX_LEN);
        let before = buf.len();
        match decode_message(&mut buf, HARNESS_MAX_LEN) {
            Ok(Some(msg)) => {
                if header != Ok(Some((msg.tag, msg.body.len())))
                    || before - buf.len() != HEADER_LEN + msg.body.len()
                {
                    return Err("framing");
                }
                framed += 1;
                parse_everything(&msg)?;
            }
            Ok(None) | Err(_) => return Ok(framed),
        }
    }
}

/// Checks what the startup decoder accepted against a rebuilt packet where the packet's form
/// is fully determined by the decoded value.
fn check_startup(startup: &Startup, consumed: &[u8]) -> Result<(), &'static str> {
    let mut rebuilt = BytesMut::new();
    match startup {
        Startup::SslRequest => frontend::ssl_request(&mut rebuilt),
        Startup::Cancel {
            process_id,
            secret_key,
        } => {
            frontend::cancel_request(&mut rebuilt, *process_id, *secret_key);
        }
        Startup::Startup { params, .. } => {
            black_box((params.user(), params.database(), params.iter().count()));
            black_box(startup.needs_negotiation());
            return if params.user().is_empty() {
                Err("startup user")
            } else {
                Ok(())
            };
        }
        Startup::GssEncRequest => return Ok(()),
    }
    if rebuilt[..] == consumed[..] {
        Ok(())
    } else {
        Err("startup")
    }
}

/// Runs every parser on `msg.body` and checks each accepted result by rebuilding it.
fn parse_everything(msg: &Message) -> Result<(), &'static str> {
    let body = &msg.body;

    check_authentication(body)?;
    if let Ok((name, value)) = backend::parse_parameter_status(body) {
        rebuilt(
            body,
            |b| backend::parameter_status(b, &name, &value),
            "ParameterStatus",
        )?;
    }
    if let Ok((pid, key)) = backend::parse_backend_key_data(body) {
        rebuilt(
            body,
            |b| backend::backend_key_data(b, pid, key),
            "BackendKeyData",
        )?;
    }
    if let Ok(status) = backend::parse_ready_for_query(body) {
        rebuilt(
            body,
            |b| backend::ready_for_query(b, status),
            "ReadyForQuery",
        )?;
    }
    // Field order and lossy text make ErrorResponse re-encoding inexact; parsing must still be
    // total.
    black_box(backend::parse_error_response(body).ok());
    if let Ok(command_tag) = backend::parse_command_complete(body) {
        rebuilt(
            body,
            |b| backend::command_complete(b, command_tag),
            "CommandComplete",
        )?;
    }
    // The builder only writes text columns, so only parsing is exercised here.
    black_box(backend::parse_row_description(body).ok());
    if let Ok(values) = backend::parse_data_row(body) {
        rebuilt(body, |b| backend::data_row(b, &values), "DataRow")?;
    }
    if let Ok((minor, options)) = backend::parse_negotiate_protocol_version(body) {
        rebuilt(
            body,
            |b| backend::negotiate_protocol_version(b, minor, &options),
            "NegotiateProtocolVersion",
        )?;
    }

    if let Ok(password) = frontend::parse_password_message(body) {
        rebuilt(
            body,
            |b| frontend::password_message(b, password),
            "PasswordMessage",
        )?;
    }
    if let Ok((mechanism, data)) = frontend::parse_sasl_initial_response(body) {
        // A length of -1 and an empty payload decode alike; only the latter re-encodes.
        if !data.is_empty() {
            rebuilt(
                body,
                |b| frontend::sasl_initial_response(b, mechanism, data),
                "SASLInitialResponse",
            )?;
        }
    }
    if let Ok(sql) = frontend::parse_query(body) {
        rebuilt(body, |b| frontend::query(b, sql), "Query")?;
    }
    if let Ok(p) = frontend::parse_parse(body) {
        rebuilt(
            body,
            |b| frontend::parse(b, p.name, p.query, &p.param_types),
            "Parse",
        )?;
    }
    if let Ok(bind) = frontend::parse_bind(body) {
        rebuilt(
            body,
            |b| frontend::bind_with_statement(b, bind.portal, bind.statement, bind.rest),
            "Bind",
        )?;
    }
    if let Ok((kind, name)) = frontend::parse_close(body) {
        rebuilt(body, |b| frontend::close(b, kind, name), "Close")?;
    }
    if let Ok((kind, name)) = frontend::parse_describe(body) {
        rebuilt(body, |b| frontend::describe(b, kind, name), "Describe")?;
    }
    if let Ok((portal, max_rows)) = frontend::parse_execute(body) {
        rebuilt(body, |b| frontend::execute(b, portal, max_rows), "Execute")?;
    }
    Ok(())
}

/// Rebuilds an accepted Authentication body; unsupported methods decode nothing beyond their
/// code, so there is nothing to compare for them.
fn check_authentication(body: &Bytes) -> Result<(), &'static str> {
    let Ok(auth) = backend::parse_authentication(body) else {
        return Ok(());
    };
    let mut b = BytesMut::new();
    match &auth {
        Authentication::Ok => backend::authentication_ok(&mut b),
        Authentication::CleartextPassword => backend::authentication_cleartext_password(&mut b),
        Authentication::Md5Password { salt } => backend::authentication_md5_password(&mut b, *salt),
        Authentication::Sasl { mechanisms } => {
            let names: Vec<&str> = mechanisms.iter().map(String::as_str).collect();
            backend::authentication_sasl(&mut b, &names);
        }
        Authentication::SaslContinue(data) => backend::authentication_sasl_continue(&mut b, data),
        Authentication::SaslFinal(data) => backend::authentication_sasl_final(&mut b, data),
        Authentication::Unsupported(_) => return Ok(()),
    }
    same(body, &b, "Authentication")
}

/// Builds one message with `build` and compares its body with `body`.
fn rebuilt(
    body: &Bytes,
    build: impl FnOnce(&mut BytesMut),
    what: &'static str,
) -> Result<(), &'static str> {
    let mut b = BytesMut::new();
    build(&mut b);
    same(body, &b, what)
}

/// Compares `body` with the body of the single message in `message`.
fn same(body: &[u8], message: &[u8], what: &'static str) -> Result<(), &'static str> {
    match message.get(HEADER_LEN..) {
        Some(rebuilt) if rebuilt == body => Ok(()),
        _ => Err(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Marsaglia's xorshift64: deterministic, dependency-free randomness for the test.
    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// Builds an input that is mostly valid protocol with random damage, so the random walk
    /// gets past the length checks into the parsers, mixed with plain noise.
    fn random_input(rng: &mut XorShift, out: &mut Vec<u8>) {
        out.clear();
        let mut buf = BytesMut::new();
        if rng.below(2) == 0 {
            frontend::startup_message(&mut buf, &[("user", "u"), ("database", "d")]);
        }
        let messages = rng.below(6);
        for _ in 0..messages {
            match rng.below(12) {
                0 => frontend::query(&mut buf, "select 1"),
                1 => frontend::parse(&mut buf, "s", "select $1", &[23]),
                2 => frontend::bind(&mut buf, "", "s", &[0], &[Some(b"1"), None], &[0]),
                3 => frontend::execute(&mut buf, "", 0),
                4 => frontend::describe(&mut buf, b'S', "s"),
                5 => frontend::sasl_initial_response(&mut buf, "SCRAM-SHA-256", b"n,,n=,r=x"),
                6 => backend::authentication_sasl(&mut buf, &["SCRAM-SHA-256"]),
                7 => backend::data_row(&mut buf, &[Some(b"x"), None]),
                8 => backend::error_response(&mut buf, &crate::protocol::PgError::error("0", "m")),
                9 => backend::row_description(&mut buf, &["a"]),
                10 => backend::negotiate_protocol_version(&mut buf, 0, &["_pq_.x"]),
                _ => {
                    let noise = rng.below(40);
                    for _ in 0..noise {
                        buf.extend_from_slice(&[rng.next() as u8]);
                    }
                }
            }
        }
        out.extend_from_slice(&buf);
        // Damage: flip, insert or truncate a few bytes.
        let edits = rng.below(4);
        for _ in 0..edits {
            if out.is_empty() {
                break;
            }
            let at = rng.below(out.len() as u64) as usize;
            match rng.below(3) {
                0 => out[at] = rng.next() as u8,
                1 => out.insert(at, rng.next() as u8),
                _ => out.truncate(at),
            }
        }
    }

    #[test]
    fn random_inputs_never_panic_and_round_trip() {
        let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
        let mut input = Vec::new();
        let mut framed = 0usize;
        for i in 0..100_000 {
            if i % 2 == 0 {
                random_input(&mut rng, &mut input);
            } else {
                // Pure noise, with lengths around the header and startup sizes.
                input.clear();
                let len = rng.below(64);
                input.extend((0..len).map(|_| rng.next() as u8));
            }
            framed += exercise_decoders(&input)
                .unwrap_or_else(|what| panic!("{what} did not round-trip for {input:?}"));
        }
        // The structured inputs must actually reach the parsers.
        assert!(framed > 50_000, "only {framed} messages framed");
    }

    #[test]
    fn well_formed_session_frames_every_message() {
        let mut buf = BytesMut::new();
        frontend::ssl_request(&mut buf);
        frontend::startup_message(&mut buf, &[("user", "alice")]);
        frontend::query(&mut buf, "select 1");
        frontend::sync(&mut buf);
        assert_eq!(exercise_decoders(&buf), Ok(2));
    }
}
