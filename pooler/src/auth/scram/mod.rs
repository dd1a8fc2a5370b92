//! SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it, in both directions:
//! [`ScramServer`] checks the pooler's clients, [`ScramClient`] logs the pooler in to the
//! server. This file holds the message grammar both sides share.
//!
//! PostgreSQL's dialect: the username inside the exchange is ignored (the startup packet
//! names the user), no authorization identity; over TLS, `SCRAM-SHA-256-PLUS` with
//! `tls-server-end-point` channel binding, offered to clients and used toward servers.

mod client;
mod server;

pub use client::{ChannelBinding, ScramClient, ScramCredential};
pub use server::ScramServer;

use super::error::AuthError;

/// The SASL mechanism offered to every client and used toward servers without binding.
const MECHANISM: &str = "SCRAM-SHA-256";
/// SCRAM bound to the TLS connection (`tls-server-end-point`), offered to clients over TLS
/// and used toward servers that offer it.
const MECHANISM_PLUS: &str = "SCRAM-SHA-256-PLUS";

/// Iteration counts accepted from a server: at least one round, and few enough that a
/// hostile or misconfigured server cannot make a login burn minutes of CPU.
const ITERATIONS: std::ops::RangeInclusive<u32> = 1..=10_000_000;

/// A SASL message as text; RFC 5802 messages are UTF-8.
fn message_text<'a>(data: &'a [u8], what: &str) -> Result<&'a str, AuthError> {
    std::str::from_utf8(data).map_err(|_| AuthError::protocol(format!("{what} is not UTF-8")))
}

/// Walks the comma-separated `a=value` fields of a SCRAM message in order.
struct Fields<'a> {
    what: &'static str,
    rest: std::iter::Peekable<std::str::Split<'a, char>>,
}

impl<'a> Fields<'a> {
    fn new(text: &'a str, what: &'static str) -> Self {
        Fields {
            what,
            rest: text.split(',').peekable(),
        }
    }

    /// Splits one field into its attribute letter and value, checking the `ALPHA "="` shape.
    fn split(&self, field: &'a str) -> Result<(char, &'a str), AuthError> {
        let mut chars = field.chars();
        match (chars.next(), chars.next()) {
            (Some(name), Some('=')) if name.is_ascii_alphabetic() => Ok((name, &field[2..])),
            _ => Err(AuthError::protocol(format!(
                "{}: expected an attribute, found \"{}\"",
                self.what,
                field.escape_default()
            ))),
        }
    }

    /// The attribute letter of the next field, without consuming it.
    fn peek_name(&mut self) -> Option<char> {
        self.rest.peek().and_then(|field| field.chars().next())
    }

    /// Consumes the next field, which must be attribute `name`, and returns its value.
    fn expect(&mut self, name: char) -> Result<&'a str, AuthError> {
        let what = self.what;
        let field = self.rest.next().ok_or_else(|| {
            AuthError::protocol(format!("{what}: attribute \"{name}\" is missing"))
        })?;
        match self.split(field)? {
            (found, value) if found == name => Ok(value),
            (found, _) => Err(AuthError::protocol(format!(
                "{what}: expected attribute \"{name}\", found \"{found}\""
            ))),
        }
    }

    /// Consumes the remaining fields as optional extensions, which are allowed and ignored
    /// but must still be well-formed.
    fn skip_extensions(&mut self) -> Result<(), AuthError> {
        while let Some(field) = self.rest.next() {
            self.split(field)?;
        }
        Ok(())
    }
}

/// Whether `nonce` is a valid SCRAM nonce: printable ASCII except ',' and at least one byte.
fn is_printable(nonce: &str) -> bool {
    !nonce.is_empty()
        && nonce
            .bytes()
            .all(|b| (0x21..=0x7e).contains(&b) && b != b',')
}

/// Parses an iteration count: decimal digits only, within [`ITERATIONS`].
fn parse_iterations(text: &str) -> Result<u32, AuthError> {
    let invalid = || AuthError::protocol(format!("invalid iteration count \"{text}\""));
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let iterations: u32 = text.parse().map_err(|_| invalid())?;
    if ITERATIONS.contains(&iterations) {
        Ok(iterations)
    } else {
        Err(invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::crypto;
    use crate::auth::secret::{ScramSecret, Secret};
    use rand::Rng;

    #[test]
    fn fields_parse_in_order() {
        let mut fields = Fields::new("r=abc,s=c2FsdA==,i=4096,x=ext", "test");
        assert_eq!(fields.peek_name(), Some('r'));
        assert_eq!(fields.expect('r').unwrap(), "abc");
        assert_eq!(fields.expect('s').unwrap(), "c2FsdA==");
        assert_eq!(fields.expect('i').unwrap(), "4096");
        fields.skip_extensions().unwrap();
        assert_eq!(fields.peek_name(), None);
    }

    #[test]
    fn fields_reject_bad_shapes() {
        assert!(Fields::new("s=1", "t").expect('r').is_err());
        assert!(Fields::new("r", "t").expect('r').is_err());
        assert!(Fields::new("rr=1", "t").expect('r').is_err());
        let mut fields = Fields::new("r=1", "t");
        fields.expect('r').unwrap();
        assert!(fields.expect('s').is_err());
        assert!(Fields::new("r=1,=x", "t").skip_extensions().is_err());
        assert!(Fields::new("r=1,,", "t").skip_extensions().is_err());
        assert!(Fields::new("1=1", "t").skip_extensions().is_err());
        // A multi-byte first character must not be sliced in the middle.
        assert!(Fields::new("é=1", "t").skip_extensions().is_err());
    }

    #[test]
    fn printable_nonces() {
        assert!(is_printable("fyko+d2lbbFgONRv9qkxdawL"));
        assert!(is_printable("%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"));
        assert!(!is_printable(""));
        assert!(!is_printable("a b"));
        assert!(!is_printable("a\u{7f}"));
        assert!(!is_printable("é"));
    }

    #[test]
    fn iteration_counts() {
        assert_eq!(parse_iterations("4096"), Ok(4096));
        assert_eq!(parse_iterations("1"), Ok(1));
        assert_eq!(parse_iterations("10000000"), Ok(10_000_000));
        for bad in ["", "0", "10000001", "99999999999", "+1", "-1", "1e3", " 1"] {
            assert!(parse_iterations(bad).is_err(), "{bad}");
        }
    }

    fn round_trip(secret: &Secret, password: &str) -> Result<(), AuthError> {
        let mut server = ScramServer::new(secret, "alice")?;
        let mut client = ScramClient::new(ScramCredential::Password(password.to_owned()));
        let first = client.client_first();
        let server_first = server.client_first(MECHANISM, &first)?;
        let client_final = client.server_first(&server_first)?;
        let server_final = server.client_final(&client_final)?;
        client.server_final(&server_final)
    }

    #[test]
    fn round_trip_with_plain_and_scram_secrets() {
        let plain = Secret::Plain("s3cret".into());
        let scram = Secret::Scram(ScramSecret::generate("s3cret"));
        for secret in [&plain, &scram] {
            assert_eq!(round_trip(secret, "s3cret"), Ok(()));
            assert_eq!(round_trip(secret, "wrong"), Err(AuthError::InvalidPassword));
        }
    }

    #[test]
    fn previous_verifiers_with_the_same_salt_log_in_but_do_not_count_as_current() {
        let new = ScramSecret::generate("new");
        let old_same_salt = ScramSecret::from_password("old", &new.salt, new.iterations);
        let old_other_salt = ScramSecret::generate("older");
        let exchange = |password: &str| {
            let mut server = ScramServer::new(&Secret::Scram(new.clone()), "alice")
                .unwrap()
                .with_previous(vec![old_same_salt.clone(), old_other_salt.clone()]);
            let mut client = ScramClient::new(ScramCredential::Password(password.to_owned()));
            let first = client.client_first();
            let server_first = server.client_first(MECHANISM, &first).unwrap();
            let client_final = client.server_first(&server_first).unwrap();
            let verdict = server
                .client_final(&client_final)
                .and_then(|last| client.server_final(&last));
            (verdict, server.matched_current())
        };
        assert_eq!(exchange("new"), (Ok(()), true));
        assert_eq!(exchange("old"), (Ok(()), false));
        // A verifier with another salt cannot be checked against the salt the client saw.
        assert_eq!(exchange("older"), (Err(AuthError::InvalidPassword), false));
        assert_eq!(exchange("wrong"), (Err(AuthError::InvalidPassword), false));
    }

    #[test]
    fn a_decoy_answers_like_a_stored_verifier_and_refuses_every_password() {
        let salt_and_iterations = |first: Vec<u8>| {
            let text = String::from_utf8(first).unwrap();
            text.split_once(",s=").unwrap().1.to_owned()
        };
        let decoy = Secret::Scram(ScramSecret::decoy("mallory"));
        let firsts: Vec<String> = (0..2)
            .map(|_| {
                let mut server = ScramServer::new(&decoy, "mallory").unwrap();
                let first = server.client_first(MECHANISM, b"n,,n=,r=abc").unwrap();
                salt_and_iterations(first)
            })
            .collect();
        assert_eq!(firsts[0], firsts[1]);
        assert!(firsts[0].ends_with(",i=4096"), "{}", firsts[0]);
        for password in ["", "mallory", "s3cret"] {
            assert_eq!(
                round_trip(&decoy, password),
                Err(AuthError::InvalidPassword)
            );
        }
    }

    /// A pooler-to-server exchange where the pooler declares `binding` and the server offers
    /// PLUS over a connection whose end-point hash is `server_end_point`, if any.
    fn bound_round_trip(
        binding: ChannelBinding,
        server_end_point: Option<Vec<u8>>,
    ) -> Result<(), AuthError> {
        let secret = Secret::Scram(ScramSecret::generate("s3cret"));
        let mut server = ScramServer::new(&secret, "alice")?;
        if let Some(data) = server_end_point {
            server = server.with_channel_binding(data);
        }
        let mut client = ScramClient::new(ScramCredential::Password("s3cret".into()))
            .with_channel_binding(binding);
        let first = client.client_first();
        let server_first = server.client_first(client.mechanism(), &first)?;
        let client_final = client.server_first(&server_first)?;
        let server_final = server.client_final(&client_final)?;
        assert!(!client.verified_bound());
        client.server_final(&server_final)?;
        assert_eq!(client.verified_bound(), client.is_bound());
        Ok(())
    }

    #[test]
    fn scram_sha_256_plus_toward_a_server_binds_the_end_point() {
        let end_point = vec![7; 32];
        let bound = ScramClient::new(ScramCredential::Password("pw".into()))
            .with_channel_binding(ChannelBinding::EndPoint(end_point.clone()));
        assert_eq!(bound.mechanism(), "SCRAM-SHA-256-PLUS");
        assert!(bound.is_bound());
        assert_eq!(
            bound_round_trip(ChannelBinding::EndPoint(end_point.clone()), Some(end_point)),
            Ok(())
        );
        // A different certificate on the server's side of the connection (a man in the
        // middle) makes the binding data differ.
        let err = bound_round_trip(ChannelBinding::EndPoint(vec![7; 32]), Some(vec![8; 32]));
        assert!(err.is_err(), "{err:?}");
        // "y" where the server offered PLUS: the offer was stripped, the server refuses.
        let err = bound_round_trip(ChannelBinding::NotOffered, Some(vec![7; 32]));
        assert!(err.is_err(), "{err:?}");
        // "y" and "n" toward a server that does not offer PLUS log in unbound.
        for binding in [ChannelBinding::NotOffered, ChannelBinding::Unsupported] {
            let client = ScramClient::new(ScramCredential::Password("pw".into()))
                .with_channel_binding(binding.clone());
            assert_eq!(client.mechanism(), "SCRAM-SHA-256");
            assert!(!client.is_bound());
            assert_eq!(bound_round_trip(binding, None), Ok(()));
        }
    }

    #[test]
    fn bound_client_first_and_final_carry_the_gs2_header_and_data() {
        let mut client = ScramClient::new(ScramCredential::Password("pw".into()))
            .with_channel_binding(ChannelBinding::EndPoint(vec![1, 2, 3]));
        let first = String::from_utf8(client.client_first()).unwrap();
        assert!(
            first.starts_with("p=tls-server-end-point,,n=,r="),
            "{first}"
        );
        let nonce = &first["p=tls-server-end-point,,n=,r=".len()..];
        let server_first = format!("r={nonce}xyz,s=c2FsdA==,i=1");
        let last =
            String::from_utf8(client.server_first(server_first.as_bytes()).unwrap()).unwrap();
        let expected = crypto::b64_encode(b"p=tls-server-end-point,,\x01\x02\x03");
        assert!(last.starts_with(&format!("c={expected},r=")), "{last}");

        let mut client = ScramClient::new(ScramCredential::Password("pw".into()))
            .with_channel_binding(ChannelBinding::NotOffered);
        let first = String::from_utf8(client.client_first()).unwrap();
        assert!(first.starts_with("y,,n=,r="), "{first}");
        let server_first = format!("r={}xyz,s=c2FsdA==,i=1", &first[8..]);
        let last =
            String::from_utf8(client.server_first(server_first.as_bytes()).unwrap()).unwrap();
        assert!(last.starts_with("c=eSws,r="), "{last}");
    }

    #[test]
    fn round_trip_applies_saslprep_on_both_sides() {
        let secret = Secret::Scram(ScramSecret::generate("\u{fb01}x"));
        assert_eq!(round_trip(&secret, "fix"), Ok(()));
    }

    #[test]
    fn recovered_client_key_logs_in_to_another_server() {
        let secret = Secret::Scram(ScramSecret::generate("s3cret"));
        let Secret::Scram(verifier) = &secret else {
            unreachable!()
        };

        // First hop: a client proves the password to the pooler.
        let mut pooler = ScramServer::new(&secret, "alice").unwrap();
        assert_eq!(pooler.client_key(), None);
        let mut client = ScramClient::new(ScramCredential::Password("s3cret".into()));
        let server_first = pooler.client_first(MECHANISM, &client.client_first());
        let client_final = client.server_first(&server_first.unwrap()).unwrap();
        pooler.client_final(&client_final).unwrap();
        let client_key = pooler.client_key().unwrap();

        // Second hop: the pooler logs in to the database holding the same verifier,
        // without ever having seen the password.
        let mut database = ScramServer::new(&secret, "alice").unwrap();
        let mut pooler_client = ScramClient::new(ScramCredential::Keys {
            client_key,
            server_key: verifier.server_key,
        });
        let server_first = database.client_first(MECHANISM, &pooler_client.client_first());
        let client_final = pooler_client.server_first(&server_first.unwrap());
        let server_final = database.client_final(&client_final.unwrap()).unwrap();
        assert_eq!(pooler_client.server_final(&server_final), Ok(()));
    }

    #[test]
    fn keys_with_wrong_server_key_detect_impostor() {
        let secret = Secret::Scram(ScramSecret::generate("s3cret"));
        let other = ScramSecret::generate("s3cret");
        let mut server = ScramServer::new(&secret, "alice").unwrap();
        let mut client = ScramClient::new(ScramCredential::Password("s3cret".into()));
        let sf = server
            .client_first(MECHANISM, &client.client_first())
            .unwrap();
        let cf = client.server_first(&sf).unwrap();
        let _ = server.client_final(&cf).unwrap();
        let client_key = server.client_key().unwrap();

        let mut server = ScramServer::new(&secret, "alice").unwrap();
        let mut client = ScramClient::new(ScramCredential::Keys {
            client_key,
            server_key: other.server_key,
        });
        let sf = server
            .client_first(MECHANISM, &client.client_first())
            .unwrap();
        let cf = client.server_first(&sf).unwrap();
        let final_message = server.client_final(&cf).unwrap();
        assert_eq!(
            client.server_final(&final_message),
            Err(AuthError::ServerSignatureMismatch)
        );
    }

    /// Random bytes, often built from SCRAM-looking pieces so the parsers get past their
    /// first checks.
    fn fuzz_input(rng: &mut impl Rng) -> Vec<u8> {
        const PIECES: &[&[u8]] = &[
            b"n,,",
            b"y,,",
            b"p=x,,",
            b"n=",
            b"r=",
            b"s=",
            b"i=",
            b"c=",
            b"p=",
            b"v=",
            b"e=",
            b"m=",
            b"biws",
            b"eSws",
            b",",
            b"=",
            b"4096",
            b"99999999999",
            b"c2FsdA==",
            b"\xff",
            b"\xc3",
            b"a=",
            b"0",
        ];
        let mut out = Vec::new();
        for _ in 0..rng.gen_range(0..12) {
            if rng.gen_bool(0.7) {
                out.extend_from_slice(PIECES[rng.gen_range(0..PIECES.len())]);
            } else {
                out.push(rng.gen());
            }
        }
        out
    }

    #[test]
    fn random_input_never_panics() {
        let secret = Secret::Scram(ScramSecret::from_password("pw", b"salt", 1));
        let mut rng = rand::thread_rng();
        for _ in 0..3000 {
            let noise = fuzz_input(&mut rng);

            // Each step gets noise alone and noise behind a valid-looking start.
            let mut server = ScramServer::new(&secret, "u").unwrap();
            let _ = server.client_first(MECHANISM, &noise);
            let mut server = ScramServer::new(&secret, "u").unwrap();
            let server_first = server.client_first(MECHANISM, b"n,,n=,r=abc").unwrap();
            let nonce = std::str::from_utf8(&server_first).unwrap()[2..]
                .split(',')
                .next()
                .unwrap()
                .to_owned();
            let data = [format!("c=biws,r={nonce}").as_bytes(), &noise].concat();
            let _ = server.client_final(&data);
            assert_eq!(server.client_key(), None);

            let mut client = ScramClient::new(ScramCredential::Password("pw".into()));
            client.client_first();
            let _ = client.server_first(&noise);
            // A fresh start, since the failed step above ended the exchange.
            let first = client.client_first();
            let client_nonce = std::str::from_utf8(&first).unwrap()[8..].to_owned();
            let data = [format!("r={client_nonce}").as_bytes(), &noise].concat();
            let _ = client.server_first(&data);

            let mut client = ScramClient::new(ScramCredential::Password("pw".into()));
            let mut server = ScramServer::new(&secret, "u").unwrap();
            let server_first = server.client_first(MECHANISM, &client.client_first());
            client.server_first(&server_first.unwrap()).unwrap();
            let data = [b"v=".as_slice(), &noise].concat();
            assert!(client.server_final(&data).is_err());
        }
    }
}
