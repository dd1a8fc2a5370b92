//! The cancel key a client is given in BackendKeyData, laid out as PgBouncer 1.21+ lays it out
//! when peering is on (`peer_id` > 0), so that whichever process of a peered group receives a
//! CancelRequest can tell which process issued the key and forward it there.
//!
//! The key is 8 bytes as sent on the wire: bytes 0–3 the process id (sign bit clear), bytes
//! 4–7 the secret. With peering, bytes 1 and 2 carry the issuing peer id (low byte first)
//! and the two low bits of byte 7 a forwarding count, both bits set when the key is issued.
//! Weir forwards a key only while both bits are set and clears them when it does, so a
//! forwarded cancel is never forwarded again, by Weir or by PgBouncer: no loop is possible.

/// The two low bits of byte 7: PgBouncer's time-to-live of a forwarded cancel.
const TTL_MASK: u8 = 0x03;

/// A client's cancel key: the process id and secret a CancelRequest carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CancelKey {
    /// The process id the client was told.
    pub process_id: i32,
    /// The secret the client was told.
    pub secret_key: i32,
}

/// What to do with a CancelRequest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// The key was issued here: look the client up with this key.
    Local(CancelKey),
    /// The key was issued by peer `peer`: send it this key (marked as forwarded).
    Forward {
        /// The peer id that issued the key.
        peer: u16,
        /// The key to send, its forwarding bits cleared.
        key: CancelKey,
    },
    /// The key belongs to another peer but was already forwarded once: drop it.
    AlreadyForwarded,
}

impl CancelKey {
    fn to_bytes(self) -> [u8; 8] {
        let mut b = [0; 8];
        b[..4].copy_from_slice(&self.process_id.to_be_bytes());
        b[4..].copy_from_slice(&self.secret_key.to_be_bytes());
        b
    }

    fn from_bytes(b: [u8; 8]) -> CancelKey {
        CancelKey {
            process_id: i32::from_be_bytes([b[0], b[1], b[2], b[3]]),
            secret_key: i32::from_be_bytes([b[4], b[5], b[6], b[7]]),
        }
    }

    /// A new key from 8 random bytes. With peering (`peer_id` > 0) the peer id and a full
    /// forwarding count are stamped in; the process id is kept positive, like a real PID,
    /// because some tools mishandle negative ones.
    pub fn issue(random: [u8; 8], peer_id: u16) -> CancelKey {
        let mut b = random;
        b[0] &= 0x7f;
        if peer_id > 0 {
            let [low, high] = peer_id.to_le_bytes();
            b[1] = low;
            b[2] = high;
            b[7] |= TTL_MASK;
        }
        CancelKey::from_bytes(b)
    }

    /// The peer id stamped into the key (meaningful only when peering is on).
    pub fn peer_id(self) -> u16 {
        let b = self.to_bytes();
        u16::from_le_bytes([b[1], b[2]])
    }

    fn with_ttl(self, ttl: u8) -> CancelKey {
        let mut b = self.to_bytes();
        b[7] = (b[7] & !TTL_MASK) | (ttl & TTL_MASK);
        CancelKey::from_bytes(b)
    }

    fn ttl(self) -> u8 {
        self.to_bytes()[7] & TTL_MASK
    }

    /// Where a CancelRequest carrying this key goes, for a process whose own peer id is
    /// `own` (0: peering off, every key is local).
    pub fn route(self, own: u16) -> Route {
        if own == 0 {
            return Route::Local(self);
        }
        let peer = self.peer_id();
        if peer == own {
            // A peer may have counted the forwarding down; keys are stored as issued.
            Route::Local(self.with_ttl(TTL_MASK))
        } else if self.ttl() != TTL_MASK {
            Route::AlreadyForwarded
        } else {
            Route::Forward {
                peer,
                key: self.with_ttl(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_peering_keys_are_random_positive_and_local() {
        let key = CancelKey::issue([0xff; 8], 0);
        assert_eq!(key.process_id, 0x7fff_ffff);
        assert_eq!(key.secret_key, -1);
        assert_eq!(key.route(0), Route::Local(key));
    }

    #[test]
    fn the_peer_id_sits_in_bytes_one_and_two_low_byte_first() {
        // PgBouncer: cancel_key[1] = id & 0xff, cancel_key[2] = id >> 8, cancel_key[7] |= 3.
        let key = CancelKey::issue([0x80, 0, 0, 0x11, 0x22, 0x33, 0x44, 0x54], 0x1234);
        assert_eq!(
            key.to_bytes(),
            [0x00, 0x34, 0x12, 0x11, 0x22, 0x33, 0x44, 0x57]
        );
        assert_eq!(key.peer_id(), 0x1234);
        assert!(key.process_id > 0);
    }

    #[test]
    fn own_keys_are_local_even_after_a_peer_counted_them_down() {
        let key = CancelKey::issue([7; 8], 3);
        assert_eq!(key.route(3), Route::Local(key));
        for ttl in 0..3 {
            assert_eq!(key.with_ttl(ttl).route(3), Route::Local(key));
        }
    }

    #[test]
    fn a_foreign_key_is_forwarded_once_and_never_again() {
        let key = CancelKey::issue([9; 8], 2);
        let Route::Forward { peer, key: sent } = key.route(1) else {
            panic!("a fresh foreign key is forwarded");
        };
        assert_eq!(peer, 2);
        assert_eq!(sent.peer_id(), 2);
        assert_eq!(sent.ttl(), 0);
        // Whoever receives it, except its owner, drops it.
        assert_eq!(sent.route(1), Route::AlreadyForwarded);
        assert_eq!(sent.route(3), Route::AlreadyForwarded);
        assert_eq!(sent.route(2), Route::Local(key));
        // PgBouncer counts down by one; such a key is not forwarded again either.
        assert_eq!(key.with_ttl(2).route(1), Route::AlreadyForwarded);
    }
}
