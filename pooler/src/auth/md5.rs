//! PostgreSQL's MD5 password scheme (`AuthenticationMD5Password`).
//!
//! The stored hash is `"md5" + hex(md5(password ++ user))`; on the wire the client proves it
//! knows that hash by sending `"md5" + hex(md5(hex_hash ++ salt))` for a 4-byte random salt.

use ::md5::{Digest, Md5};
use subtle::ConstantTimeEq;

use super::secret::Secret;

/// Lowercase hex digits, as PostgreSQL writes MD5 hashes.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// `"md5"` followed by the lowercase hex MD5 digest of the concatenated parts.
fn md5_hex(parts: &[&[u8]]) -> String {
    let mut hasher = Md5::new();
    for part in parts {
        hasher.update(part);
    }
    let mut out = String::with_capacity(35);
    out.push_str("md5");
    for byte in hasher.finalize() {
        out.push(char::from(HEX[usize::from(byte >> 4)]));
        out.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    out
}

/// The hash PostgreSQL stores for `user`'s `password`: `"md5" + hex(md5(password ++ user))`.
pub fn password_hash(user: &str, password: &str) -> String {
    md5_hex(&[password.as_bytes(), user.as_bytes()])
}

/// The response to an MD5 challenge: `"md5" + hex(md5(hex_part ++ salt))`, where `hash` is a
/// stored hash with its `"md5"` prefix (a missing prefix is tolerated).
pub fn salted_response(hash: &str, salt: [u8; 4]) -> String {
    let hex_part = hash.strip_prefix("md5").unwrap_or(hash);
    md5_hex(&[hex_part.as_bytes(), &salt])
}

/// Checks a client's MD5 response against a plaintext or MD5 secret in constant time; a SCRAM
/// verifier cannot answer an MD5 challenge, so it never matches.
pub fn verify(secret: &Secret, user: &str, salt: [u8; 4], response: &str) -> bool {
    let expected = match secret {
        Secret::Plain(password) => salted_response(&password_hash(user, password), salt),
        Secret::Md5(hash) => salted_response(hash, salt),
        Secret::Scram(_) => return false,
    };
    expected.as_bytes().ct_eq(response.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::secret::ScramSecret;

    // Expected values computed independently with Python's hashlib.
    const ALICE_HASH: &str = "md54a0a68b43b6cd5cf266fa02f196e2371";
    const ALICE_RESPONSE: &str = "md598a0412b9c31436fc53776e863350083";
    const SALT: [u8; 4] = [1, 2, 3, 4];

    #[test]
    fn password_hash_known_values() {
        assert_eq!(password_hash("alice", "secret"), ALICE_HASH);
        // md5("foobar"): the password and the user are simply concatenated.
        assert_eq!(
            password_hash("bar", "foo"),
            "md53858f62230ac3c915f300c664312c63f"
        );
    }

    #[test]
    fn salted_response_known_value() {
        assert_eq!(salted_response(ALICE_HASH, SALT), ALICE_RESPONSE);
        assert_eq!(salted_response(&ALICE_HASH[3..], SALT), ALICE_RESPONSE);
    }

    #[test]
    fn verify_plain_and_md5_secrets() {
        let plain = Secret::Plain("secret".into());
        let md5 = Secret::Md5(ALICE_HASH.into());
        for secret in [&plain, &md5] {
            assert!(verify(secret, "alice", SALT, ALICE_RESPONSE));
            assert!(!verify(secret, "alice", [4, 3, 2, 1], ALICE_RESPONSE));
            assert!(!verify(secret, "alice", SALT, &ALICE_RESPONSE[..34]));
            assert!(!verify(secret, "alice", SALT, ""));
        }
        // A plaintext secret is hashed with the user at hand; a stored hash already has one.
        assert!(!verify(&plain, "bob", SALT, ALICE_RESPONSE));
        assert!(verify(&md5, "bob", SALT, ALICE_RESPONSE));
    }

    #[test]
    fn verify_never_accepts_scram_secrets() {
        let scram = Secret::Scram(ScramSecret::from_password("secret", b"salt", 16));
        assert!(!verify(&scram, "alice", SALT, ALICE_RESPONSE));
    }
}
