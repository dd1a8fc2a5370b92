//! The server side of SCRAM-SHA-256: the pooler checking a client's proof.

use subtle::ConstantTimeEq;

use super::{is_printable, message_text, Fields, MECHANISM, MECHANISM_PLUS};
use crate::auth::crypto::{self, Key};
use crate::auth::error::AuthError;
use crate::auth::secret::{ScramSecret, Secret};

/// Server side of one SCRAM-SHA-256 exchange: the pooler checks that a client knows the
/// password behind a stored secret.
///
/// Drive it with [`ScramServer::client_first`] then [`ScramServer::client_final`]; any error
/// ends the exchange. After success [`ScramServer::client_key`] yields the client's
/// `ClientKey`, which lets the pooler log in to PostgreSQL with the same verifier (as
/// PgBouncer does) without ever learning the password.
pub struct ScramServer {
    secret: ScramSecret,
    /// Replaced verifiers still in their rotation grace, with the same salt and iterations.
    previous: Vec<ScramSecret>,
    state: State,
    client_key: Option<Key>,
    /// Whether the proof matched `secret` rather than a previous verifier.
    current: bool,
    /// `tls-server-end-point` data of the TLS connection, when there is one: then
    /// SCRAM-SHA-256-PLUS is offered.
    channel_binding: Option<Vec<u8>>,
}

/// Where the exchange stands.
enum State {
    AwaitingClientFirst,
    AwaitingClientFinal {
        /// Expected `c=` value: base64 of the gs2 header the client sent (and of the
        /// channel-binding data under SCRAM-SHA-256-PLUS).
        channel_binding: String,
        /// Client nonce followed by ours, as the client must echo it.
        nonce: String,
        /// `client-first-message-bare "," server-first-message ","`: the start of
        /// AuthMessage, completed by the client-final message without its proof.
        auth_message_prefix: String,
    },
    /// Succeeded or failed; no further message is accepted.
    Finished,
}

impl ScramServer {
    /// Prepares to authenticate `user` against `secret`.
    ///
    /// A plaintext password is turned into a verifier with a fresh random salt; an MD5
    /// hash cannot back SCRAM (the exchange needs keys derived from the password itself),
    /// so it is refused and the caller should fall back to MD5 authentication.
    pub fn new(secret: &Secret, user: &str) -> Result<Self, AuthError> {
        let secret = match secret {
            Secret::Plain(password) => ScramSecret::generate(password),
            Secret::Scram(scram) => scram.clone(),
            Secret::Md5(_) => {
                return Err(AuthError::Unsupported(format!(
                    "user \"{user}\" has an MD5 password hash, which cannot be used for \
                     SCRAM authentication"
                )))
            }
        };
        Ok(ScramServer {
            secret,
            previous: Vec::new(),
            state: State::AwaitingClientFirst,
            client_key: None,
            current: false,
            channel_binding: None,
        })
    }

    /// Also accepts proofs made with the passwords behind `previous` (a rotation's grace).
    /// A client sees one salt and iteration count, so only verifiers sharing those of the
    /// current one can be checked; the others are left out.
    pub fn with_previous(mut self, previous: Vec<ScramSecret>) -> Self {
        let (salt, iterations) = (&self.secret.salt, self.secret.iterations);
        self.previous = previous
            .into_iter()
            .filter(|p| p.salt == *salt && p.iterations == iterations)
            .collect();
        self
    }

    /// The verifier in force (its salt and iteration count are what the client is told).
    pub fn secret(&self) -> &ScramSecret {
        &self.secret
    }

    /// Offers SCRAM-SHA-256-PLUS bound to the TLS connection whose `tls-server-end-point`
    /// data (RFC 5929: a hash of the server's certificate) is `data`.
    pub fn with_channel_binding(mut self, data: Vec<u8>) -> Self {
        self.channel_binding = Some(data);
        self
    }

    /// The SASL mechanisms to list in `AuthenticationSASL`, in order of preference.
    pub fn mechanisms(&self) -> &'static [&'static str] {
        if self.channel_binding.is_some() {
            &[MECHANISM_PLUS, MECHANISM]
        } else {
            &[MECHANISM]
        }
    }

    /// Handles `SASLInitialResponse` (the chosen mechanism and the client-first message) and
    /// returns the server-first message to send in `AuthenticationSASLContinue`.
    pub fn client_first(&mut self, mechanism: &str, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        self.client_first_with_nonce(mechanism, data, crypto::random_nonce())
    }

    fn client_first_with_nonce(
        &mut self,
        mechanism: &str,
        data: &[u8],
        server_nonce: String,
    ) -> Result<Vec<u8>, AuthError> {
        // Whatever happens, this message cannot be replayed into the same exchange.
        if !matches!(
            std::mem::replace(&mut self.state, State::Finished),
            State::AwaitingClientFirst
        ) {
            return Err(AuthError::protocol("unexpected SASLInitialResponse"));
        }
        let plus = match mechanism {
            MECHANISM => false,
            MECHANISM_PLUS if self.channel_binding.is_some() => true,
            _ => {
                return Err(AuthError::protocol(format!(
                    "client selected an invalid SASL authentication mechanism \"{}\"",
                    mechanism.escape_default()
                )))
            }
        };
        let text = message_text(data, "client-first-message")?;
        let (flag, gs2_header, bare) = split_gs2_header(text)?;
        let channel_binding = match (flag, plus, &self.channel_binding) {
            (Gs2Flag::Bind, true, Some(data)) => {
                crypto::b64_encode([gs2_header.as_bytes(), data].concat())
            }
            (Gs2Flag::None, false, _) => crypto::b64_encode(gs2_header),
            // "y" says: I could bind, but I think you cannot. We offered PLUS, so someone
            // removed it on the way (RFC 5802's downgrade check).
            (Gs2Flag::ClientCould, false, None) => crypto::b64_encode(gs2_header),
            (Gs2Flag::ClientCould, ..) | (Gs2Flag::Bind, ..) | (Gs2Flag::None, true, _) => {
                return Err(AuthError::protocol(
                    "SCRAM channel binding negotiation error",
                ))
            }
        };

        let mut fields = Fields::new(bare, "client-first-message");
        if fields.peek_name() == Some('m') {
            return Err(AuthError::Unsupported(
                "client requires an unsupported SCRAM extension".into(),
            ));
        }
        // PostgreSQL takes the user from the startup packet; libpq even sends "n=".
        fields.expect('n')?;
        let client_nonce = fields.expect('r')?;
        if !is_printable(client_nonce) {
            return Err(AuthError::protocol(
                "client nonce is empty or has non-printable characters",
            ));
        }
        fields.skip_extensions()?;

        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            crypto::b64_encode(&self.secret.salt),
            self.secret.iterations
        );
        self.state = State::AwaitingClientFinal {
            channel_binding,
            nonce,
            auth_message_prefix: format!("{bare},{server_first},"),
        };
        Ok(server_first.into_bytes())
    }

    /// Handles the client-final message (`SASLResponse`): checks the channel binding, the
    /// nonce and the proof, and returns the server-final message for
    /// `AuthenticationSASLFinal`. A wrong proof is [`AuthError::InvalidPassword`].
    pub fn client_final(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::AwaitingClientFinal {
            channel_binding,
            nonce,
            auth_message_prefix,
        } = std::mem::replace(&mut self.state, State::Finished)
        else {
            return Err(AuthError::protocol("unexpected SASLResponse"));
        };
        let text = message_text(data, "client-final-message")?;
        // The proof comes last and base64 has no commas, so the last comma ends the part
        // that AuthMessage covers.
        let (without_proof, proof_field) = text
            .rsplit_once(',')
            .ok_or_else(|| AuthError::protocol("client-final-message is incomplete"))?;

        let mut fields = Fields::new(without_proof, "client-final-message");
        if fields.expect('c')? != channel_binding.as_str() {
            return Err(AuthError::protocol(
                "unexpected channel binding in client-final-message",
            ));
        }
        if fields.expect('r')? != nonce {
            return Err(AuthError::protocol(
                "nonce in client-final-message does not match",
            ));
        }
        fields.skip_extensions()?;
        let proof = Fields::new(proof_field, "client-final-message").expect('p')?;
        let proof = crypto::b64_decode_key(proof)
            .ok_or_else(|| AuthError::protocol("malformed proof in client-final-message"))?;

        let auth_message = [auth_message_prefix.as_bytes(), without_proof.as_bytes()];
        let candidates = std::iter::once(&self.secret).chain(&self.previous);
        for (i, verifier) in candidates.enumerate() {
            let client_signature = crypto::hmac_sha256(&verifier.stored_key, &auth_message);
            let client_key = crypto::xor(&proof, &client_signature);
            let matches: bool = crypto::sha256(&client_key)
                .ct_eq(&verifier.stored_key)
                .into();
            if matches {
                let server_signature = crypto::hmac_sha256(&verifier.server_key, &auth_message);
                self.client_key = Some(client_key);
                self.current = i == 0;
                return Ok(format!("v={}", crypto::b64_encode(server_signature)).into_bytes());
            }
        }
        Err(AuthError::InvalidPassword)
    }

    /// Whether the verified proof was made with the current password, not a previous one.
    pub fn matched_current(&self) -> bool {
        self.client_key.is_some() && self.current
    }

    /// The `ClientKey` recovered from a verified proof, or `None` before success.
    ///
    /// With the verifier's `ServerKey` it is enough to run the client side of SCRAM against
    /// a server holding the same verifier (see [`super::ScramCredential::Keys`]).
    pub fn client_key(&self) -> Option<[u8; 32]> {
        self.client_key
    }
}

/// What a client-first message's gs2 header says about channel binding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Gs2Flag {
    /// `n`: the client does not bind.
    None,
    /// `y`: the client could bind but believes the server cannot.
    ClientCould,
    /// `p=tls-server-end-point`: the client binds.
    Bind,
}

/// Splits the gs2 header (with its trailing comma) off a client-first message, returning
/// the channel-binding flag, the header and the client-first-message-bare.
fn split_gs2_header(text: &str) -> Result<(Gs2Flag, &str, &str), AuthError> {
    let (flag, rest) = text
        .split_once(',')
        .ok_or_else(|| AuthError::protocol("client-first-message has no gs2 header"))?;
    let flag = match flag {
        "n" => Gs2Flag::None,
        "y" => Gs2Flag::ClientCould,
        "p=tls-server-end-point" => Gs2Flag::Bind,
        _ if flag.starts_with("p=") => {
            return Err(AuthError::Unsupported(format!(
                "client requires SCRAM channel binding type \"{}\", which is not supported",
                flag[2..].escape_default()
            )))
        }
        _ => {
            return Err(AuthError::protocol(format!(
                "unexpected channel-binding flag \"{}\"",
                flag.escape_default()
            )))
        }
    };
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or_else(|| AuthError::protocol("client-first-message has an incomplete gs2 header"))?;
    if authzid.starts_with("a=") {
        return Err(AuthError::Unsupported(
            "client uses an authorization identity, which is not supported".into(),
        ));
    }
    if !authzid.is_empty() {
        return Err(AuthError::protocol(
            "client-first-message has a malformed gs2 header",
        ));
    }
    let header = &text[..text.len() - bare.len()];
    Ok((flag, header, bare))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_FIRST: &[u8] = b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
    const SERVER_NONCE: &str = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const FINAL_NO_PROOF: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn pencil() -> Secret {
        let salt = crypto::b64_decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        Secret::Scram(ScramSecret::from_password("pencil", &salt, 4096))
    }

    /// A server that has answered RFC 7677's client-first message.
    fn rfc_server() -> ScramServer {
        let mut server = ScramServer::new(&pencil(), "user").unwrap();
        let first = server
            .client_first_with_nonce(MECHANISM, CLIENT_FIRST, SERVER_NONCE.into())
            .unwrap();
        assert_eq!(String::from_utf8(first).unwrap(), SERVER_FIRST);
        server
    }

    fn client_first_error(data: &str) -> AuthError {
        let mut server = ScramServer::new(&pencil(), "user").unwrap();
        server.client_first(MECHANISM, data.as_bytes()).unwrap_err()
    }

    fn client_final_error(data: &str) -> AuthError {
        rfc_server().client_final(data.as_bytes()).unwrap_err()
    }

    #[test]
    fn rfc7677_test_vector() {
        let mut server = rfc_server();
        let last = server.client_final(CLIENT_FINAL.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(last).unwrap(), SERVER_FINAL);
        assert_eq!(
            crypto::b64_encode(server.client_key().unwrap()),
            "pg/JI9Z+hkSpLRa5btpe9GVrDHJcSEN0viVTVXaZbos="
        );
    }

    #[test]
    fn wrong_proof_is_invalid_password() {
        let mut proof =
            crypto::b64_decode_key("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=").unwrap();
        proof[0] ^= 1;
        let message = format!("{FINAL_NO_PROOF},p={}", crypto::b64_encode(proof));
        let mut server = rfc_server();
        assert_eq!(
            server.client_final(message.as_bytes()),
            Err(AuthError::InvalidPassword)
        );
        assert_eq!(server.client_key(), None);
        // The exchange is over: a retry with the right proof is refused.
        assert!(matches!(
            server.client_final(CLIENT_FINAL.as_bytes()),
            Err(AuthError::Protocol(_))
        ));
    }

    #[test]
    fn mechanisms_offer_only_scram_sha_256() {
        let server = ScramServer::new(&pencil(), "user").unwrap();
        assert_eq!(server.mechanisms(), ["SCRAM-SHA-256"]);
        let server = server.with_channel_binding(vec![1, 2, 3]);
        assert_eq!(server.mechanisms(), ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
    }

    #[test]
    fn md5_secret_cannot_do_scram() {
        let err = ScramServer::new(&Secret::Md5("md5".to_owned() + &"0".repeat(32)), "bob")
            .err()
            .unwrap();
        assert!(matches!(err, AuthError::Unsupported(ref m) if m.contains("\"bob\"")));
        assert_eq!(err.sqlstate(), "28000");
    }

    #[test]
    fn plain_secret_gets_random_salt() {
        let secret = Secret::Plain("pw".into());
        let mut a = ScramServer::new(&secret, "u").unwrap();
        let mut b = ScramServer::new(&secret, "u").unwrap();
        let a = a.client_first(MECHANISM, b"n,,n=,r=x").unwrap();
        let b = b.client_first(MECHANISM, b"n,,n=,r=x").unwrap();
        assert_ne!(a, b);
        assert!(String::from_utf8(a).unwrap().ends_with(",i=4096"));
    }

    #[test]
    fn accepts_y_flag_empty_username_and_extensions() {
        let mut server = ScramServer::new(&pencil(), "user").unwrap();
        let first = server
            .client_first(MECHANISM, b"y,,n=,r=abc,x=ext")
            .unwrap();
        let first = String::from_utf8(first).unwrap();
        let nonce = first[2..].split(',').next().unwrap();
        assert!(nonce.starts_with("abc") && nonce.len() == 3 + 24);
        // With "y" the client must echo "y,," ("eSws"), not "n,," ("biws").
        let wrong = format!("c=biws,r={nonce},p={}", crypto::b64_encode([0u8; 32]));
        assert!(matches!(
            server.client_final(wrong.as_bytes()),
            Err(AuthError::Protocol(_))
        ));
    }

    #[test]
    fn scram_sha_256_plus_checks_the_binding_data() {
        let plus = || {
            ScramServer::new(&pencil(), "user")
                .unwrap()
                .with_channel_binding(vec![1, 2, 3])
        };
        let mut server = plus();
        let first = server
            .client_first("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc")
            .unwrap();
        let nonce = std::str::from_utf8(&first).unwrap()[2..]
            .split(',')
            .next()
            .unwrap();
        let proof = crypto::b64_encode([0u8; 32]);
        let bound = crypto::b64_encode(b"p=tls-server-end-point,,\x01\x02\x03");
        // The right binding data gets as far as the proof.
        let right = format!("c={bound},r={nonce},p={proof}");
        assert!(matches!(
            server.client_final(right.as_bytes()),
            Err(AuthError::InvalidPassword)
        ));
        let mut server = plus();
        server
            .client_first("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc")
            .unwrap();
        let other = crypto::b64_encode(b"p=tls-server-end-point,,\x09");
        let wrong = format!("c={other},r={nonce},p={proof}");
        let err = server.client_final(wrong.as_bytes()).unwrap_err();
        assert!(
            err.to_string().contains("unexpected channel binding"),
            "{err}"
        );

        // "y" while PLUS was offered: the offer was stripped on the way.
        let err = plus()
            .client_first("SCRAM-SHA-256", b"y,,n=,r=abc")
            .unwrap_err();
        assert!(err.to_string().contains("negotiation error"), "{err}");
        // PLUS without a TLS connection to bind to is not offered, so not accepted.
        let err = ScramServer::new(&pencil(), "user")
            .unwrap()
            .client_first("SCRAM-SHA-256-PLUS", b"p=tls-server-end-point,,n=,r=abc")
            .unwrap_err();
        assert!(err.to_string().contains("invalid SASL"), "{err}");
    }

    #[test]
    fn rejects_channel_binding_authzid_and_extensions() {
        for (message, unsupported) in [
            // Binding asked for under the mechanism without it.
            ("p=tls-server-end-point,,n=,r=abc", false),
            ("n,a=admin,n=,r=abc", true),
            ("n,,m=ext,n=,r=abc", true),
            ("x,,n=,r=abc", false),
            ("n,junk,n=,r=abc", false),
        ] {
            let err = client_first_error(message);
            assert_eq!(
                matches!(err, AuthError::Unsupported(_)),
                unsupported,
                "{message}: {err}"
            );
        }
        assert!(client_first_error("p=tls-unique,,n=,r=abc")
            .to_string()
            .contains("channel binding"));
    }

    #[test]
    fn rejects_malformed_client_first() {
        for message in [
            "",
            "n",
            "n,",
            "n,,",
            "n,,n=",
            "n,,r=abc",
            "n,,n=,r=",
            "n,,n=,r=a b",
            "n,,n=,s=abc",
            "n,,n=,r=abc,",
            "n,,n=,r=abc,junk",
            "n,,n=,r=abc,1=x",
        ] {
            assert!(
                matches!(client_first_error(message), AuthError::Protocol(_)),
                "{message}"
            );
        }
        let mut server = ScramServer::new(&pencil(), "user").unwrap();
        assert!(server.client_first(MECHANISM, b"n,,n=\xff,r=abc").is_err());
    }

    #[test]
    fn rejects_other_mechanisms() {
        for mechanism in ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1", ""] {
            let mut server = ScramServer::new(&pencil(), "user").unwrap();
            assert!(matches!(
                server.client_first(mechanism, CLIENT_FIRST),
                Err(AuthError::Protocol(_))
            ));
        }
    }

    #[test]
    fn rejects_malformed_client_final() {
        let proof = "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        let nonce = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
        for message in [
            String::new(),
            proof.to_owned(),
            format!("c=biws,{nonce}"),
            format!("c=biws,{proof}"),
            format!("{nonce},c=biws,{proof}"),
            format!("c=eSws,{nonce},{proof}"),
            format!("c=biws,r=rOprNGfwEbeRWgbNEkqO,{proof}"),
            format!("c=biws,{nonce}X,{proof}"),
            format!("c=biws,{nonce},p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ"),
            format!("c=biws,{nonce},p=dHzbZapWIk4jUhN+Ute9"),
            format!("c=biws,{nonce},p=!!!!"),
            format!("c=biws,{nonce},{proof},x=trailing"),
            format!("c=biws,{nonce},,{proof}"),
        ] {
            assert!(
                matches!(client_final_error(&message), AuthError::Protocol(_)),
                "{message}"
            );
        }
        // Extensions before the proof are covered by the signature and ignored.
        assert_eq!(
            client_final_error(&format!("c=biws,{nonce},x=ext,{proof}")),
            AuthError::InvalidPassword
        );
    }

    #[test]
    fn messages_out_of_order_are_protocol_errors() {
        let mut server = ScramServer::new(&pencil(), "user").unwrap();
        assert!(matches!(
            server.client_final(CLIENT_FINAL.as_bytes()),
            Err(AuthError::Protocol(_))
        ));
        let mut server = rfc_server();
        assert!(matches!(
            server.client_first(MECHANISM, CLIENT_FIRST),
            Err(AuthError::Protocol(_))
        ));
    }
}
