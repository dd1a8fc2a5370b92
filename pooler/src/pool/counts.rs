//! What one lent connection carried, added to its pool's statistics when it comes back.

use crate::protocol::backend;

/// What a relay saw go by, for statistics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    /// ReadyForQuery messages: completed requests (queries, syncs).
    pub queries: u64,
    /// ReadyForQuery messages reporting an idle session: completed transactions.
    pub transactions: u64,
    /// ErrorResponses by SQLSTATE class (`"??"` when the code was not seen).
    pub errors: Vec<[u8; 2]>,
    /// Bytes sent to the server.
    pub bytes_received: u64,
    /// Bytes sent to the client.
    pub bytes_sent: u64,
    /// The SQLSTATE of the last error saying the server stopped being a usable primary
    /// ([`super::failover::signals`]).
    pub failover: Option<[u8; 5]>,
}

impl Counts {
    /// Records a ReadyForQuery with `status`.
    pub fn ready(&mut self, status: u8) {
        self.queries += 1;
        if status == b'I' {
            self.transactions += 1;
        }
    }

    /// Records an ErrorResponse whose available bytes are `body` (possibly incomplete).
    pub fn error(&mut self, body: &[u8]) {
        let code = backend::error_code(body);
        self.errors.push(match code {
            Some([a, b, ..]) => [*a, *b],
            _ => *b"??",
        });
        if let Some(code) = code.filter(|c| super::failover::signals(c)) {
            self.failover = <[u8; 5]>::try_from(code).ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_are_counted_by_class_and_failover_codes_kept() {
        let mut counts = Counts::default();
        counts.error(b"SERROR\0C22012\0Mdivision by zero\0\0");
        assert_eq!(counts.failover, None);
        counts.error(b"SFATAL\0C57P01\0Mterminating connection\0\0");
        counts.error(b"SERROR\0Mno code\0\0");
        assert_eq!(counts.errors, [*b"22", *b"57", *b"??"]);
        assert_eq!(counts.failover, Some(*b"57P01"));
    }
}
