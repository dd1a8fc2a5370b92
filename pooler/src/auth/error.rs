//! Why an authentication exchange failed, and the SQLSTATE the client should see for it.

use thiserror::Error;

/// An authentication failure, in either direction (client to pooler, pooler to server).
///
/// Each variant maps to the SQLSTATE PostgreSQL itself would report, so the pooler can turn
/// it into an `ErrorResponse` without a lookup table of its own.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AuthError {
    /// The peer proved knowledge of a different password than the stored one.
    #[error("password authentication failed")]
    InvalidPassword,
    /// A SASL message was malformed or arrived out of order.
    #[error("SASL protocol violation: {0}")]
    Protocol(String),
    /// The peer asked for something valid but not implemented (channel binding, authzid,
    /// mandatory extensions, or SCRAM against an MD5 hash).
    #[error("unsupported authentication request: {0}")]
    Unsupported(String),
    /// The server could not prove it knows the password; it may be an impostor.
    #[error("server signature in SCRAM exchange does not match")]
    ServerSignatureMismatch,
    /// The server ended the exchange with an `e=` error attribute.
    #[error("server rejected SCRAM authentication: {0}")]
    ServerRejected(String),
}

impl AuthError {
    /// The SQLSTATE code for an `ErrorResponse` carrying this error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            AuthError::InvalidPassword => "28P01",
            AuthError::Protocol(_) => "08P01",
            AuthError::Unsupported(_)
            | AuthError::ServerSignatureMismatch
            | AuthError::ServerRejected(_) => "28000",
        }
    }

    /// Shorthand for a [`AuthError::Protocol`] error.
    pub(crate) fn protocol(detail: impl Into<String>) -> Self {
        AuthError::Protocol(detail.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates() {
        assert_eq!(AuthError::InvalidPassword.sqlstate(), "28P01");
        assert_eq!(AuthError::protocol("x").sqlstate(), "08P01");
        assert_eq!(AuthError::Unsupported("x".into()).sqlstate(), "28000");
        assert_eq!(AuthError::ServerSignatureMismatch.sqlstate(), "28000");
        assert_eq!(AuthError::ServerRejected("x".into()).sqlstate(), "28000");
    }

    #[test]
    fn messages_carry_context() {
        assert_eq!(
            AuthError::protocol("missing nonce").to_string(),
            "SASL protocol violation: missing nonce"
        );
    }
}
