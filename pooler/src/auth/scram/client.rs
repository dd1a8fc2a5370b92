//! The client side of SCRAM-SHA-256: the pooler logging in to PostgreSQL.

use std::fmt;

use subtle::ConstantTimeEq;

use super::{is_printable, message_text, parse_iterations, Fields, MECHANISM, MECHANISM_PLUS};
use crate::auth::crypto::{self, Key};
use crate::auth::error::AuthError;

/// What the pooler proves to the server with.
///
/// Either the password itself, or the two keys a SCRAM verifier and a client's verified
/// proof provide (`ClientKey` from [`super::ScramServer::client_key`], `ServerKey` from the
/// verifier), which is how a pooler that only stores verifiers can still log in.
#[derive(Clone, PartialEq, Eq)]
pub enum ScramCredential {
    /// A plaintext password; SASLprep'd and salted with what the server sends.
    Password(String),
    /// Precomputed keys; the server's salt and iteration count are then not needed.
    Keys {
        /// `HMAC(SaltedPassword, "Client Key")`, proves the client.
        client_key: [u8; 32],
        /// `HMAC(SaltedPassword, "Server Key")`, checks the server's signature.
        server_key: [u8; 32],
    },
}

// Both variants are enough to log in, so neither belongs in logs.
impl fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ScramCredential::Password(_) => f.write_str("ScramCredential::Password(..)"),
            ScramCredential::Keys { .. } => f.write_str("ScramCredential::Keys { .. }"),
        }
    }
}

/// What the pooler says about channel binding in its gs2 header (RFC 5802 section 6).
#[derive(Clone, PartialEq, Eq)]
pub enum ChannelBinding {
    /// `n`: the connection has nothing to bind to (no TLS, or a certificate without a hash).
    Unsupported,
    /// `y`: the pooler could bind, but the server did not offer SCRAM-SHA-256-PLUS; a server
    /// that did offer it then knows the offer was stripped on the way.
    NotOffered,
    /// `p=tls-server-end-point`: SCRAM-SHA-256-PLUS bound to the server certificate's hash.
    EndPoint(Vec<u8>),
}

impl fmt::Debug for ChannelBinding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelBinding::Unsupported => "Unsupported",
            ChannelBinding::NotOffered => "NotOffered",
            ChannelBinding::EndPoint(_) => "EndPoint(..)",
        })
    }
}

impl ChannelBinding {
    /// The gs2 header that starts the client-first message.
    fn gs2_header(&self) -> &'static str {
        match self {
            ChannelBinding::Unsupported => "n,,",
            ChannelBinding::NotOffered => "y,,",
            ChannelBinding::EndPoint(_) => "p=tls-server-end-point,,",
        }
    }

    /// The `c=` attribute of the client-final message: the gs2 header and the binding data.
    fn attribute(&self) -> String {
        let mut data = self.gs2_header().as_bytes().to_vec();
        if let ChannelBinding::EndPoint(end_point) = self {
            data.extend_from_slice(end_point);
        }
        crypto::b64_encode(data)
    }
}

/// Client side of one SCRAM-SHA-256 exchange: the pooler authenticating to PostgreSQL.
///
/// Call [`ScramClient::client_first`] for the `SASLInitialResponse` data, then feed the
/// server's `AuthenticationSASLContinue` data to [`ScramClient::server_first`] and its
/// `AuthenticationSASLFinal` data to [`ScramClient::server_final`], which proves the server
/// knew the verifier. Any error ends the exchange.
pub struct ScramClient {
    credential: ScramCredential,
    binding: ChannelBinding,
    state: State,
}

/// Where the exchange stands.
enum State {
    Initial,
    AwaitingServerFirst {
        client_nonce: String,
        client_first_bare: String,
    },
    AwaitingServerFinal {
        server_signature: Key,
    },
    /// The server proved itself; no further message is accepted.
    Verified,
    /// Failed; no further message is accepted.
    Finished,
}

impl ScramClient {
    /// Starts an exchange that proves `credential`.
    pub fn new(credential: ScramCredential) -> Self {
        ScramClient {
            credential,
            binding: ChannelBinding::Unsupported,
            state: State::Initial,
        }
    }

    /// Declares channel binding as `binding`; with [`ChannelBinding::EndPoint`] the exchange
    /// is SCRAM-SHA-256-PLUS.
    pub fn with_channel_binding(mut self, binding: ChannelBinding) -> Self {
        self.binding = binding;
        self
    }

    /// The SASL mechanism to name in the `SASLInitialResponse`.
    pub fn mechanism(&self) -> &'static str {
        match self.binding {
            ChannelBinding::EndPoint(_) => MECHANISM_PLUS,
            _ => MECHANISM,
        }
    }

    /// Whether the exchange binds to the TLS connection (SCRAM-SHA-256-PLUS).
    pub fn is_bound(&self) -> bool {
        matches!(self.binding, ChannelBinding::EndPoint(_))
    }

    /// Whether the exchange is over, the server's signature checked, with binding: only then
    /// is the login known to have been bound to this TLS connection.
    pub fn verified_bound(&self) -> bool {
        self.is_bound() && matches!(self.state, State::Verified)
    }

    /// The client-first message (`n,,n=,r=<nonce>`, or `p=tls-server-end-point,,n=,r=<nonce>`
    /// when bound), sent with [`ScramClient::mechanism`]. Calling it again starts the
    /// exchange over with a new nonce.
    pub fn client_first(&mut self) -> Vec<u8> {
        // Like libpq: the server takes the user name from the startup packet.
        self.client_first_with("", crypto::random_nonce())
    }

    fn client_first_with(&mut self, user: &str, client_nonce: String) -> Vec<u8> {
        let client_first_bare = format!("n={},r={client_nonce}", escape_saslname(user));
        let message = format!("{}{client_first_bare}", self.binding.gs2_header()).into_bytes();
        self.state = State::AwaitingServerFirst {
            client_nonce,
            client_first_bare,
        };
        message
    }

    /// Handles the server-first message and returns the client-final message with the
    /// proof. Rejects a nonce that does not extend ours and iteration counts outside
    /// `1..=10_000_000`.
    pub fn server_first(&mut self, data: &[u8]) -> Result<Vec<u8>, AuthError> {
        let State::AwaitingServerFirst {
            client_nonce,
            client_first_bare,
        } = std::mem::replace(&mut self.state, State::Finished)
        else {
            return Err(AuthError::protocol("unexpected server-first-message"));
        };
        let server_first = message_text(data, "server-first-message")?;
        let mut fields = Fields::new(server_first, "server-first-message");
        if fields.peek_name() == Some('m') {
            return Err(AuthError::Unsupported(
                "server requires an unsupported SCRAM extension".into(),
            ));
        }
        let nonce = fields.expect('r')?;
        let extends_ours = nonce.len() > client_nonce.len() && nonce.starts_with(&client_nonce);
        if !extends_ours || !is_printable(nonce) {
            return Err(AuthError::protocol(
                "server nonce does not extend the client nonce",
            ));
        }
        let salt = crypto::b64_decode(fields.expect('s')?)
            .filter(|salt| !salt.is_empty())
            .ok_or_else(|| AuthError::protocol("malformed salt in server-first-message"))?;
        let iterations = parse_iterations(fields.expect('i')?)?;
        fields.skip_extensions()?;

        let (client_key, server_key) = match &self.credential {
            ScramCredential::Password(password) => {
                let salted = crypto::salted_password(password, &salt, iterations);
                crypto::client_and_server_keys(&salted)
            }
            ScramCredential::Keys {
                client_key,
                server_key,
            } => (*client_key, *server_key),
        };

        // Unbound, the gs2 header "n,," is "biws" in base64.
        let without_proof = format!("c={},r={nonce}", self.binding.attribute());
        let auth_message = [
            client_first_bare.as_bytes(),
            b",",
            server_first.as_bytes(),
            b",",
            without_proof.as_bytes(),
        ];
        let stored_key = crypto::sha256(&client_key);
        let client_signature = crypto::hmac_sha256(&stored_key, &auth_message);
        let proof = crypto::xor(&client_key, &client_signature);
        self.state = State::AwaitingServerFinal {
            server_signature: crypto::hmac_sha256(&server_key, &auth_message),
        };
        Ok(format!("{without_proof},p={}", crypto::b64_encode(proof)).into_bytes())
    }

    /// Handles the server-final message: succeeds only if the server's signature proves it
    /// holds the verifier for our credential.
    pub fn server_final(&mut self, data: &[u8]) -> Result<(), AuthError> {
        let State::AwaitingServerFinal { server_signature } =
            std::mem::replace(&mut self.state, State::Finished)
        else {
            return Err(AuthError::protocol("unexpected server-final-message"));
        };
        let text = message_text(data, "server-final-message")?;
        let mut fields = Fields::new(text, "server-final-message");
        if fields.peek_name() == Some('e') {
            let error = fields.expect('e')?;
            return Err(AuthError::ServerRejected(
                error.escape_default().to_string(),
            ));
        }
        let verifier = crypto::b64_decode_key(fields.expect('v')?)
            .ok_or_else(|| AuthError::protocol("malformed signature in server-final-message"))?;
        fields.skip_extensions()?;
        if bool::from(verifier.ct_eq(&server_signature)) {
            self.state = State::Verified;
            Ok(())
        } else {
            Err(AuthError::ServerSignatureMismatch)
        }
    }
}

/// Escapes a name for the `n=` attribute, where ',' and '=' are written `=2C` and `=3D`.
fn escape_saslname(name: &str) -> String {
    name.replace('=', "=3D").replace(',', "=2C")
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLIENT_NONCE: &str = "rOprNGfwEbeRWgbNEkqO";
    const SERVER_FIRST: &str =
        "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096";
    const CLIENT_FINAL: &str = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,\
                                p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
    const SERVER_FINAL: &str = "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=";

    fn pencil_client() -> ScramClient {
        let mut client = ScramClient::new(ScramCredential::Password("pencil".into()));
        let first = client.client_first_with("user", CLIENT_NONCE.into());
        assert_eq!(first, b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO");
        client
    }

    fn server_first_error(data: &str) -> AuthError {
        pencil_client().server_first(data.as_bytes()).unwrap_err()
    }

    fn server_final_error(data: &str) -> AuthError {
        let mut client = pencil_client();
        client.server_first(SERVER_FIRST.as_bytes()).unwrap();
        client.server_final(data.as_bytes()).unwrap_err()
    }

    #[test]
    fn rfc7677_test_vector() {
        let mut client = pencil_client();
        let last = client.server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(last).unwrap(), CLIENT_FINAL);
        assert_eq!(client.server_final(SERVER_FINAL.as_bytes()), Ok(()));
    }

    #[test]
    fn rfc7677_test_vector_with_keys() {
        let salt = crypto::b64_decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let salted = crypto::salted_password("pencil", &salt, 4096);
        let (client_key, server_key) = crypto::client_and_server_keys(&salted);
        let mut client = ScramClient::new(ScramCredential::Keys {
            client_key,
            server_key,
        });
        client.client_first_with("user", CLIENT_NONCE.into());
        let last = client.server_first(SERVER_FIRST.as_bytes()).unwrap();
        assert_eq!(String::from_utf8(last).unwrap(), CLIENT_FINAL);
        assert_eq!(client.server_final(SERVER_FINAL.as_bytes()), Ok(()));
    }

    #[test]
    fn client_first_looks_like_libpq() {
        let mut client = ScramClient::new(ScramCredential::Password("pw".into()));
        let first = String::from_utf8(client.client_first()).unwrap();
        let nonce = first.strip_prefix("n,,n=,r=").unwrap();
        assert_eq!(nonce.len(), 24);
        assert!(is_printable(nonce));
        let again = String::from_utf8(client.client_first()).unwrap();
        assert_ne!(first, again);
    }

    #[test]
    fn saslname_escaping() {
        assert_eq!(escape_saslname("a=b,c"), "a=3Db=2Cc");
        assert_eq!(escape_saslname(""), "");
    }

    #[test]
    fn rejects_bad_server_nonce() {
        for message in [
            "r=,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkq,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=XOprNGfwEbeRWgbNEkqOabc,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
            "r=rOprNGfwEbeRWgbNEkqO a,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        ] {
            assert!(
                matches!(server_first_error(message), AuthError::Protocol(_)),
                "{message}"
            );
        }
    }

    #[test]
    fn rejects_malformed_server_first() {
        let nonce = "r=rOprNGfwEbeRWgbNEkqOabc";
        for message in [
            String::new(),
            "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".to_owned(),
            nonce.to_owned(),
            format!("{nonce},i=4096"),
            format!("{nonce},s=W22ZaJ0SNY7soEsUEjb6gQ=="),
            format!("{nonce},i=4096,s=W22ZaJ0SNY7soEsUEjb6gQ=="),
            format!("{nonce},s=,i=4096"),
            format!("{nonce},s=W22ZaJ0SNY7soEsUEjb6gQ,i=4096"),
            format!("{nonce},s=W22Z aJ0SNY7soEsUEjb6gQ==,i=4096"),
            format!("{nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=0"),
            format!("{nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1"),
            format!("{nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096x"),
            format!("{nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=10000001"),
            format!("{nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4294967296"),
            format!("{nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"),
            format!("{nonce},s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,bogus"),
        ] {
            assert!(
                matches!(server_first_error(&message), AuthError::Protocol(_)),
                "{message}"
            );
        }
        assert!(matches!(
            server_first_error("m=ext,r=rOprNGfwEbeRWgbNEkqOabc,s=c2FsdA==,i=1"),
            AuthError::Unsupported(_)
        ));
        assert!(pencil_client().server_first(b"r=\xff\xfe").is_err());
    }

    #[test]
    fn accepts_server_first_extensions() {
        let message = format!("{SERVER_FIRST},x=future");
        assert!(pencil_client().server_first(message.as_bytes()).is_ok());
    }

    #[test]
    fn verifies_server_signature() {
        let mut forged = crypto::b64_decode_key(&SERVER_FINAL[2..]).unwrap();
        forged[31] ^= 0x80;
        let forged = format!("v={}", crypto::b64_encode(forged));
        assert_eq!(
            server_final_error(&forged),
            AuthError::ServerSignatureMismatch
        );
    }

    #[test]
    fn rejects_malformed_server_final() {
        for message in [
            "",
            "v=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5n",
            "x=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=,",
        ] {
            assert!(
                matches!(server_final_error(message), AuthError::Protocol(_)),
                "{message}"
            );
        }
        assert_eq!(
            server_final_error("e=invalid-proof"),
            AuthError::ServerRejected("invalid-proof".into())
        );
    }

    #[test]
    fn messages_out_of_order_are_protocol_errors() {
        let mut client = ScramClient::new(ScramCredential::Password("pencil".into()));
        assert!(matches!(
            client.server_first(SERVER_FIRST.as_bytes()),
            Err(AuthError::Protocol(_))
        ));
        let mut client = pencil_client();
        assert!(matches!(
            client.server_final(SERVER_FINAL.as_bytes()),
            Err(AuthError::Protocol(_))
        ));
        // A failed step ends the exchange.
        assert!(matches!(
            client.server_first(SERVER_FIRST.as_bytes()),
            Err(AuthError::Protocol(_))
        ));
        let mut client = pencil_client();
        client.server_first(SERVER_FIRST.as_bytes()).unwrap();
        client.server_final(SERVER_FINAL.as_bytes()).unwrap();
        assert!(client.server_final(SERVER_FINAL.as_bytes()).is_err());
    }

    #[test]
    fn credential_debug_hides_secrets() {
        let shown = format!(
            "{:?} {:?}",
            ScramCredential::Password("hunter2".into()),
            ScramCredential::Keys {
                client_key: [0xab; 32],
                server_key: [0xcd; 32]
            }
        );
        assert!(!shown.contains("hunter2") && !shown.contains("171"));
    }
}
